/*
 * procpool/ring.h: single-producer / single-consumer message rings in a shared-memory segment.
 *
 * One segment holds PP_SEGMENT_RINGS rings (index 0: requests, daemon -> worker; index 1: results,
 * worker -> daemon). The segment memory is created and mapped by the caller (the Python side uses a
 * memfd or a named POSIX shm object); this library only formats, validates and operates on it.
 *
 * Every process that uses a ring keeps its own pp_ring_t handle: process-local cursors and caches
 * that are never shared. A handle is either used as the producer or as the consumer of its ring, and
 * never from two threads at once.
 *
 * Return codes: PP_OK (0) or a negative PP_E* code. Functions that return a count or a record kind
 * return it as a non-negative int instead of PP_OK.
 *
 * Layout, memory ordering and the wakeup protocol are described in docs/native.md.
 */
#ifndef PROCPOOL_RING_H
#define PROCPOOL_RING_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Segment header identity. The magic reads "ppoolrng" in a little-endian hex dump. */
#define PP_SEGMENT_MAGIC 0x676e726c6f6f7070ULL
#define PP_SEGMENT_VERSION 1
#define PP_SEGMENT_RINGS 2
#define PP_RING_REQUEST 0
#define PP_RING_RESULT 1

/* Alignment of the producer-written and consumer-written lines (two 64-byte lines, because the
 * adjacent-line prefetcher pulls in pairs). */
#define PP_CACHELINE 128

/* Ring data capacity: a power of two within these bounds. */
#define PP_MIN_CAPACITY 4096
#define PP_MAX_CAPACITY 1073741824

/* Every record starts with an 8-byte header {uint32 length, uint32 kind}; records are 8-byte aligned. */
#define PP_RECORD_HEADER 8
#define PP_RECORD_ALIGN 8

/* Record kinds visible to callers (the padding record that handles wrap-around is internal). */
#define PP_KIND_DATA 0
#define PP_KIND_SPILL 1
#define PP_KIND_USER_MAX 255

/* Return codes. */
#define PP_OK 0
#define PP_EEMPTY -1     /* nothing to read */
#define PP_EFULL -2      /* not enough free space right now */
#define PP_ETOOBIG -3    /* message longer than pp_ring_max_message() */
#define PP_EINVAL -4     /* bad argument (capacity not a power of two, index, kind, ...) */
#define PP_EMAGIC -5     /* segment header magic does not match */
#define PP_EVERSION -6   /* segment header version does not match */
#define PP_ESIZE -7      /* segment sizes disagree with the header or the mapping */
#define PP_ECORRUPT -8   /* a record header in the ring is inconsistent */
#define PP_ETIMEDOUT -9  /* wait timed out */
#define PP_EINTR -10     /* wait interrupted by a signal: retry after handling it */
#define PP_ECLOSED -11   /* handle is detached */
#define PP_ESYS -12      /* unexpected system call failure (errno is left set) */
#define PP_EPEEK -13     /* next record is not a small data record: read it with pp_ring_peek */

/* Consumer spin budget before blocking, adapted between these bounds (nanoseconds). */
#define PP_SPIN_MIN_NS 2000
#define PP_SPIN_DEFAULT_NS 20000
#define PP_SPIN_MAX_NS 50000

/* Process-local handle. Fields are private; only the size matters to callers. */
typedef struct pp_ring {
    struct pp_ring_ctl *ctl;   /* shared control block (indices, wake words) */
    char *data;                /* shared data area */
    uint64_t mask;             /* capacity - 1 */
    uint32_t capacity;
    uint32_t max_message;
    /* producer side */
    uint64_t tail_local;       /* next write position (mirror of ctl->tail) */
    uint64_t head_cache;       /* last observed consumer position */
    int doorbell_fd;           /* eventfd written when the consumer armed the doorbell, or -1 */
    /* consumer side */
    uint64_t read_pos;         /* position after the last peeked record */
    uint64_t head_local;       /* last published ctl->head */
    uint64_t tail_cache;       /* last observed producer position */
    uint32_t spin_ns;          /* current adaptive spin budget */
    uint32_t spin_min_ns;
    uint32_t spin_max_ns;
    uint32_t reserved;
    /* counters (process-local) */
    uint64_t wake_syscalls;    /* producer: futex wakes + eventfd writes issued */
    uint64_t blocks;           /* consumer: times it went to sleep in the kernel */
} pp_ring_t;

/* --- segment -------------------------------------------------------------------------------- */

/* Bytes needed for a segment whose rings each hold `capacity` data bytes; 0 if capacity is invalid. */
size_t pp_segment_size(uint32_t capacity);

/* Format `mem` (at least pp_segment_size(capacity) bytes, zero or not) as an empty segment. */
int pp_segment_init(void *mem, size_t mem_size, uint32_t capacity);

/* Validate a mapped segment: PP_OK, PP_EMAGIC, PP_EVERSION or PP_ESIZE. */
int pp_segment_check(const void *mem, size_t mem_size);

/* Ring capacity recorded in a valid segment header (0 if the header is invalid). */
uint32_t pp_segment_capacity(const void *mem, size_t mem_size);

/* --- ring handle ---------------------------------------------------------------------------- */

/* Validate the segment and point `r` at ring `index`, loading the current shared indices. */
int pp_ring_attach(pp_ring_t *r, void *mem, size_t mem_size, uint32_t index);

/* Make `r` unusable (every call then returns PP_ECLOSED); call before unmapping the segment. */
void pp_ring_detach(pp_ring_t *r);

/* Reload the process-local cursors from shared memory (for example in a child after fork). */
int pp_ring_resync(pp_ring_t *r);

/* Largest payload one record can carry with this ring (capacity / 2 - header). */
uint32_t pp_ring_max_message(const pp_ring_t *r);

/* Bytes currently in the ring as seen by the caller (an instantaneous, racy estimate). */
uint64_t pp_ring_used(const pp_ring_t *r);

/* Producer: eventfd to write when the consumer has armed its doorbell (-1: none). */
void pp_ring_set_doorbell(pp_ring_t *r, int fd);

/* Consumer: spin budget bounds in nanoseconds (min == max disables adaptation; 0 never spins). */
void pp_ring_set_spin(pp_ring_t *r, uint32_t min_ns, uint32_t max_ns);

/* --- producer ------------------------------------------------------------------------------- */

/* Append one record of `kind` (PP_KIND_DATA, PP_KIND_SPILL or another value <= PP_KIND_USER_MAX).
 * If `wake` is non-zero, wake the consumer afterwards if (and only if) it is asleep.
 * Returns PP_OK, PP_EFULL, PP_ETOOBIG, PP_EINVAL or PP_ECLOSED. */
int pp_ring_push(pp_ring_t *r, const char *data, uint32_t len, uint32_t kind, int wake);

/* Append `n` records of kind PP_KIND_DATA whose payloads are concatenated in `buf` with lengths
 * `lens`, publish them with one index store, then wake once if `wake`. Stops at the first record that
 * does not fit. Returns the number appended (>= 0) or a negative code if the first one failed for a
 * reason other than PP_EFULL (PP_ETOOBIG, PP_ECLOSED). */
int pp_ring_push_many(pp_ring_t *r, const char *buf, const uint32_t *lens, uint32_t n, int wake);

/* Wake the consumer if it announced that it is going to sleep. Returns 1 if a wakeup was issued. */
int pp_ring_notify(pp_ring_t *r);

/* --- consumer ------------------------------------------------------------------------------- */

/* Look at the next record without freeing it: sets *data and *len and returns its kind (>= 0), or
 * PP_EEMPTY, PP_ECORRUPT, PP_ECLOSED. Successive peeks walk forward; the pointers stay valid until
 * pp_ring_release(). */
int pp_ring_peek(pp_ring_t *r, const char **data, uint32_t *len);

/* Peek up to `max` records at once (kinds, pointers and lengths into the arrays). Returns the count
 * (0 when empty) or a negative code. */
int pp_ring_peek_many(pp_ring_t *r, const char **datas, uint32_t *lens, uint32_t *kinds, uint32_t max);

/* Copying fast path for small messages. If the next record is a PP_KIND_DATA record of at most
 * `cap` bytes, copy its payload to `buf`, free it (together with anything peeked before) and return
 * its length. Otherwise return PP_EEMPTY, PP_ECORRUPT, PP_ECLOSED, or PP_EPEEK when the record is
 * larger or of another kind (it is then left in place for pp_ring_peek). */
int pp_ring_pop(pp_ring_t *r, char *buf, uint32_t cap);

/* Batch form of pp_ring_pop: copy up to `max` consecutive small data records back to back into
 * `buf` (at most `cap` bytes in all), their lengths into `lens`, free them and return the count.
 * Stops before a record that does not qualify; returns PP_EPEEK if the very first one does not,
 * 0 when the ring is empty. */
int pp_ring_pop_many(pp_ring_t *r, char *buf, uint32_t cap, uint32_t *lens, uint32_t max);

/* Free every record peeked so far (one release store of the head index). */
void pp_ring_release(pp_ring_t *r);

/* Spin (bounded, adaptive budget clipped to timeout) and then block on the futex word until a record
 * is available. timeout_ns < 0 waits forever; 0 only checks. Returns PP_OK (something to read),
 * PP_ETIMEDOUT, PP_EINTR or PP_ESYS. Never returns PP_OK for an empty ring except after a wrap
 * padding record, where the next peek returns PP_EEMPTY and the caller waits again. */
int pp_ring_wait(pp_ring_t *r, int64_t timeout_ns);

/* Spin only, for at most max_ns: returns 1 if a record is available, 0 otherwise. */
int pp_ring_spin(pp_ring_t *r, int64_t max_ns);

/* Doorbell (eventfd) consumer: announce that the caller is about to block on the eventfd the
 * producer was given. Returns 0 if armed (the ring was empty after the announcement, so blocking is
 * safe), 1 if records are available (not armed: drain instead of blocking). */
int pp_ring_arm(pp_ring_t *r);

/* Withdraw the announcement (after waking up, or when giving up on blocking). */
void pp_ring_disarm(pp_ring_t *r);

/* Process-local counters: wakeup syscalls issued by this producer handle / blocks of this consumer. */
uint64_t pp_ring_wake_syscalls(const pp_ring_t *r);
uint64_t pp_ring_blocks(const pp_ring_t *r);

/* Static text for a return code. */
const char *pp_strerror(int code);

#ifdef __cplusplus
}
#endif

#endif /* PROCPOOL_RING_H */
