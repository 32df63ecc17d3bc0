/* set_source prelude of the procpoold._ring extension: the real declarations and definitions come
 * from the public header and from native/src/ring.c, which is compiled as a separate source. */
#include "procpool/ring.h"
