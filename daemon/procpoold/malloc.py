"""Fixed thresholds for the C allocator, so that large values do not cost fresh pages each time.

glibc's ``malloc`` serves a block of 128 KiB or more with an ``mmap`` of its own and unmaps it
when it is freed (the threshold moves up with the blocks freed, but a heap top freed beyond the
trim threshold is given back to the kernel as well). A 1 MiB value that the daemon receives,
decodes, encodes for a worker and sends back thus lands in fresh memory several times, and every
fresh page is a page fault that zeroes the page: 256 faults per MiB, which on a virtual machine
cost ~1 ms per MiB, against ~0.05 ms for the copy itself (a ``bytes`` of 3 MiB made and freed in
a loop: 2.9-4.6 ms each with the defaults, 0.12 ms with the thresholds below).

:func:`tune` fixes both thresholds (which also stops glibc from moving them): blocks below
:data:`MMAP_THRESHOLD` come from the heap, and up to :data:`TRIM_THRESHOLD` of free memory at
the top of a heap is kept for the next large value. The daemon calls it first thing, so the
zygote and every worker forked from it inherit the setting. The price is memory: after a burst
of large values, up to :data:`TRIM_THRESHOLD` of freed memory can stay in a process's RSS.
Other C libraries (musl) have no such knobs; there this does nothing.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("procpoold")

#: Blocks of this size or more still get an mmap of their own (larger than any message).
MMAP_THRESHOLD = 32 << 20
#: Free memory kept at the top of a heap, at most.
TRIM_THRESHOLD = 32 << 20
# mallopt(3) parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune() -> bool:
    """Set the thresholds (see the module's docstring); False where the C library has no
    ``mallopt`` or refuses them."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:
        log.debug("mallopt refused the thresholds; large values use the C library's defaults")
    return ok
