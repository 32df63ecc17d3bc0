/*
 * ring.c: single-producer / single-consumer message rings in a shared-memory segment.
 *
 * See procpool/ring.h for the API and docs/native.md for the layout, the memory-ordering argument
 * and the wakeup protocol. In short:
 *
 *   - head and tail are free-running 64-bit byte positions (never wrapped; the offset in the data
 *     area is pos & mask). The producer alone writes tail, the consumer alone writes head, each in
 *     its own cache-line pair.
 *   - The producer writes a record (header + payload) and then publishes it with a release store
 *     of tail; the consumer acquire-loads tail before reading the record. The consumer releases
 *     space with a release store of head after it has finished reading; the producer acquire-loads
 *     head before overwriting that space.
 *   - A record never straddles the end of the data area: when it does not fit, the producer writes
 *     a padding record up to the end and continues at offset 0.
 *   - A consumer that is about to block sets `sleeping`, issues a seq_cst fence and re-checks tail;
 *     the producer stores tail, issues a seq_cst fence and checks `sleeping`. At least one of them
 *     sees the other's store, so a wakeup cannot be lost, and the producer makes no system call
 *     while the consumer is awake.
 */
#include "procpool/ring.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free to live in shared memory");
/* uint64_t is unsigned long on LP64 platforms: its atomics are the `long` ones. */
_Static_assert(sizeof(uint64_t) != sizeof(long) || ATOMIC_LONG_LOCK_FREE == 2,
               "64-bit atomics must be lock-free to live in shared memory");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics must be lock-free to live in shared memory");
_Static_assert(sizeof(_Atomic uint64_t) == 8, "atomic 64-bit word must have the plain layout");
_Static_assert(sizeof(_Atomic uint32_t) == 4, "atomic 32-bit word must have the plain layout");

/* Internal record kind that fills the space up to the end of the data area. */
#define PP_KIND_PAD 0xFFFFFFFFu

/* Bits of ctl->sleeping: which kind of sleeper the producer has to wake. */
#define PP_SLEEP_FUTEX 1u
#define PP_SLEEP_EVENTFD 2u

/* The segment header: written once by pp_segment_init, read-only afterwards. */
struct pp_segment_header {
    uint64_t magic;
    uint32_t version;
    uint32_t header_size;
    uint64_t segment_size;
    uint32_t ring_count;
    uint32_t ring_capacity;
    uint32_t ctl_size;
    uint32_t reserved;
    uint64_t ring_offset[PP_SEGMENT_RINGS];
} __attribute__((aligned(PP_CACHELINE)));

/* The shared control block of one ring: three separate cache-line pairs so that the producer's
 * stores to tail never invalidate the line the consumer writes (head), and neither of the hot
 * lines is touched by the rarely written wakeup words. */
struct pp_ring_ctl {
    _Alignas(PP_CACHELINE) _Atomic uint64_t tail;     /* written by the producer only */
    _Alignas(PP_CACHELINE) _Atomic uint64_t head;     /* written by the consumer only */
    _Alignas(PP_CACHELINE) _Atomic uint32_t wake_seq; /* futex word, bumped by the producer */
    _Atomic uint32_t sleeping;                        /* PP_SLEEP_* set by the consumer */
};

struct pp_record {
    uint32_t len;
    uint32_t kind;
};

_Static_assert(sizeof(struct pp_record) == PP_RECORD_HEADER, "record header size");
_Static_assert(sizeof(struct pp_segment_header) == PP_CACHELINE, "segment header is one line pair");
_Static_assert(sizeof(struct pp_ring_ctl) == 3 * PP_CACHELINE, "ring control block layout");

static inline uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

static inline uint64_t record_size(uint32_t len) {
    return PP_RECORD_HEADER + align_up(len, PP_RECORD_ALIGN);
}

static inline bool capacity_valid(uint32_t cap) {
    return cap >= PP_MIN_CAPACITY && cap <= PP_MAX_CAPACITY && (cap & (cap - 1)) == 0;
}

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    atomic_signal_fence(memory_order_seq_cst);
#endif
}

/* Shared (not PRIVATE) futex operations: the word lives in a MAP_SHARED mapping used by two
 * processes, so the kernel must key the wait queue on the page, not on the address space. */
static long futex_wait_until(_Atomic uint32_t *word, uint32_t expected, const struct timespec *abs_deadline) {
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, so retries keep the same one. */
    return syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_BITSET, expected, abs_deadline, NULL,
                   FUTEX_BITSET_MATCH_ANY);
}

static long futex_wake(_Atomic uint32_t *word, int count) {
    return syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, count, NULL, NULL, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* segment                                                                                    */

size_t pp_segment_size(uint32_t capacity) {
    if (!capacity_valid(capacity)) {
        return 0;
    }
    uint64_t ring = sizeof(struct pp_ring_ctl) + (uint64_t)capacity;
    uint64_t total = sizeof(struct pp_segment_header) + PP_SEGMENT_RINGS * ring;
    if (total > SIZE_MAX) {
        return 0;
    }
    return (size_t)total;
}

static uint64_t ring_offset(uint32_t capacity, uint32_t index) {
    return sizeof(struct pp_segment_header) + (uint64_t)index * (sizeof(struct pp_ring_ctl) + capacity);
}

int pp_segment_init(void *mem, size_t mem_size, uint32_t capacity) {
    size_t need = pp_segment_size(capacity);
    if (mem == NULL || need == 0 || ((uintptr_t)mem % 8) != 0) {
        return PP_EINVAL;
    }
    if (mem_size < need) {
        return PP_ESIZE;
    }
    struct pp_segment_header *h = mem;
    /* Clear the magic first so that a concurrent attacher never accepts a half-written header. */
    __atomic_store_n(&h->magic, 0, __ATOMIC_RELAXED);
    h->version = PP_SEGMENT_VERSION;
    h->header_size = sizeof(struct pp_segment_header);
    h->segment_size = need;
    h->ring_count = PP_SEGMENT_RINGS;
    h->ring_capacity = capacity;
    h->ctl_size = sizeof(struct pp_ring_ctl);
    h->reserved = 0;
    for (uint32_t i = 0; i < PP_SEGMENT_RINGS; i++) {
        h->ring_offset[i] = ring_offset(capacity, i);
        struct pp_ring_ctl *ctl = (struct pp_ring_ctl *)((char *)mem + h->ring_offset[i]);
        atomic_init(&ctl->tail, 0);
        atomic_init(&ctl->head, 0);
        atomic_init(&ctl->wake_seq, 0);
        atomic_init(&ctl->sleeping, 0);
    }
    /* Release: everything above is visible to whoever acquire-loads the magic. */
    __atomic_store_n(&h->magic, PP_SEGMENT_MAGIC, __ATOMIC_RELEASE);
    return PP_OK;
}

int pp_segment_check(const void *mem, size_t mem_size) {
    if (mem == NULL || ((uintptr_t)mem % 8) != 0) {
        return PP_EINVAL;
    }
    if (mem_size < sizeof(struct pp_segment_header)) {
        return PP_ESIZE;
    }
    const struct pp_segment_header *h = mem;
    if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != PP_SEGMENT_MAGIC) {
        return PP_EMAGIC;
    }
    if (h->version != PP_SEGMENT_VERSION) {
        return PP_EVERSION;
    }
    if (h->header_size != sizeof(struct pp_segment_header) || h->ring_count != PP_SEGMENT_RINGS ||
        h->ctl_size != sizeof(struct pp_ring_ctl) || !capacity_valid(h->ring_capacity)) {
        return PP_ESIZE;
    }
    size_t need = pp_segment_size(h->ring_capacity);
    if (h->segment_size != need || mem_size < need) {
        return PP_ESIZE;
    }
    for (uint32_t i = 0; i < PP_SEGMENT_RINGS; i++) {
        if (h->ring_offset[i] != ring_offset(h->ring_capacity, i)) {
            return PP_ESIZE;
        }
    }
    return PP_OK;
}

uint32_t pp_segment_capacity(const void *mem, size_t mem_size) {
    if (pp_segment_check(mem, mem_size) != PP_OK) {
        return 0;
    }
    return ((const struct pp_segment_header *)mem)->ring_capacity;
}

/* ------------------------------------------------------------------------------------------ */
/* handle                                                                                     */

int pp_ring_attach(pp_ring_t *r, void *mem, size_t mem_size, uint32_t index) {
    if (r == NULL) {
        return PP_EINVAL;
    }
    memset(r, 0, sizeof(*r));
    r->doorbell_fd = -1;
    int rc = pp_segment_check(mem, mem_size);
    if (rc != PP_OK) {
        return rc;
    }
    if (index >= PP_SEGMENT_RINGS) {
        return PP_EINVAL;
    }
    const struct pp_segment_header *h = mem;
    r->ctl = (struct pp_ring_ctl *)((char *)mem + h->ring_offset[index]);
    r->data = (char *)r->ctl + sizeof(struct pp_ring_ctl);
    r->capacity = h->ring_capacity;
    r->mask = (uint64_t)h->ring_capacity - 1;
    /* A record of at most half the capacity always fits once the ring is empty, wherever the
     * write position is (either before the end, or after padding the rest, which is then at most
     * half the ring). This is what makes the padding scheme deadlock-free. */
    r->max_message = h->ring_capacity / 2 - PP_RECORD_HEADER;
    r->spin_min_ns = PP_SPIN_MIN_NS;
    r->spin_max_ns = PP_SPIN_MAX_NS;
    r->spin_ns = PP_SPIN_DEFAULT_NS;
    return pp_ring_resync(r);
}

void pp_ring_detach(pp_ring_t *r) {
    if (r != NULL) {
        r->ctl = NULL;
        r->data = NULL;
    }
}

int pp_ring_resync(pp_ring_t *r) {
    if (r == NULL || r->ctl == NULL) {
        return PP_ECLOSED;
    }
    uint64_t head = atomic_load_explicit(&r->ctl->head, memory_order_acquire);
    uint64_t tail = atomic_load_explicit(&r->ctl->tail, memory_order_acquire);
    r->tail_local = tail;
    r->head_cache = head;
    r->read_pos = head;
    r->head_local = head;
    r->tail_cache = tail;
    return PP_OK;
}

uint32_t pp_ring_max_message(const pp_ring_t *r) { return r->ctl ? r->max_message : 0; }

uint64_t pp_ring_used(const pp_ring_t *r) {
    if (r->ctl == NULL) {
        return 0;
    }
    uint64_t head = atomic_load_explicit(&r->ctl->head, memory_order_acquire);
    uint64_t tail = atomic_load_explicit(&r->ctl->tail, memory_order_acquire);
    return tail - head;
}

void pp_ring_set_doorbell(pp_ring_t *r, int fd) { r->doorbell_fd = fd; }

void pp_ring_set_spin(pp_ring_t *r, uint32_t min_ns, uint32_t max_ns) {
    if (max_ns < min_ns) {
        max_ns = min_ns;
    }
    r->spin_min_ns = min_ns;
    r->spin_max_ns = max_ns;
    r->spin_ns = r->spin_ns < min_ns ? min_ns : (r->spin_ns > max_ns ? max_ns : r->spin_ns);
}

uint64_t pp_ring_wake_syscalls(const pp_ring_t *r) { return r->wake_syscalls; }

uint64_t pp_ring_blocks(const pp_ring_t *r) { return r->blocks; }

/* ------------------------------------------------------------------------------------------ */
/* producer                                                                                   */

/* Write one record at *tailp without publishing it. */
static int write_record(pp_ring_t *r, uint64_t *tailp, const char *data, uint32_t len, uint32_t kind) {
    if (len > r->max_message) {
        return PP_ETOOBIG;
    }
    uint64_t need = record_size(len);
    uint64_t tail = *tailp;
    uint64_t off = tail & r->mask;
    uint64_t to_end = r->capacity - off;
    uint64_t total = need <= to_end ? need : to_end + need;
    if (tail + total - r->head_cache > r->capacity) {
        /* Acquire pairs with the consumer's release of head: its reads of the space we are about
         * to overwrite happened before. */
        r->head_cache = atomic_load_explicit(&r->ctl->head, memory_order_acquire);
        if (tail + total - r->head_cache > r->capacity) {
            return PP_EFULL;
        }
    }
    if (need > to_end) {
        /* to_end >= PP_RECORD_HEADER because offsets and the capacity are multiples of 8. */
        struct pp_record pad = {(uint32_t)(to_end - PP_RECORD_HEADER), PP_KIND_PAD};
        memcpy(r->data + off, &pad, sizeof(pad));
        tail += to_end;
        off = 0;
    }
    struct pp_record rec = {len, kind};
    memcpy(r->data + off, &rec, sizeof(rec));
    if (len > 0) {
        memcpy(r->data + off + PP_RECORD_HEADER, data, len);
    }
    *tailp = tail + need;
    return PP_OK;
}

static inline void publish(pp_ring_t *r, uint64_t tail) {
    r->tail_local = tail;
    /* Release: the record bytes written above become visible before the new tail. */
    atomic_store_explicit(&r->ctl->tail, tail, memory_order_release);
}

int pp_ring_notify(pp_ring_t *r) {
    if (r == NULL || r->ctl == NULL) {
        return PP_ECLOSED;
    }
    struct pp_ring_ctl *ctl = r->ctl;
    /* StoreLoad barrier: our tail store must be globally visible before we read `sleeping`. The
     * consumer does the mirror image (store sleeping, fence, load tail); with both seq_cst fences
     * at least one side sees the other's store, so either the consumer sees the new record and
     * does not sleep, or we see its flag and wake it. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&ctl->sleeping, memory_order_relaxed) == 0) {
        return 0; /* the common, busy case: no system call at all */
    }
    /* Take the flag so that a burst of pushes issues one wakeup, not one per push. */
    uint32_t who = atomic_exchange_explicit(&ctl->sleeping, 0, memory_order_acq_rel);
    if (who == 0) {
        return 0;
    }
    /* Bump the futex word before waking: a consumer that read the old value and has not reached
     * FUTEX_WAIT yet then fails the value check and returns at once instead of sleeping. */
    atomic_fetch_add_explicit(&ctl->wake_seq, 1, memory_order_release);
    int woke = 0;
    if (who & PP_SLEEP_FUTEX) {
        futex_wake(&ctl->wake_seq, 1);
        r->wake_syscalls++;
        woke = 1;
    }
    if ((who & PP_SLEEP_EVENTFD) && r->doorbell_fd >= 0) {
        uint64_t one = 1;
        /* The counter cannot realistically overflow; EAGAIN would mean it is already non-zero,
         * which is just as good a wakeup. */
        ssize_t n = write(r->doorbell_fd, &one, sizeof(one));
        (void)n;
        r->wake_syscalls++;
        woke = 1;
    }
    return woke;
}

int pp_ring_push(pp_ring_t *r, const char *data, uint32_t len, uint32_t kind, int wake) {
    if (r == NULL || r->ctl == NULL) {
        return PP_ECLOSED;
    }
    if (kind > PP_KIND_USER_MAX || (data == NULL && len > 0)) {
        return PP_EINVAL;
    }
    uint64_t tail = r->tail_local;
    int rc = write_record(r, &tail, data, len, kind);
    if (rc != PP_OK) {
        return rc;
    }
    publish(r, tail);
    if (wake) {
        pp_ring_notify(r);
    }
    return PP_OK;
}

int pp_ring_push_many(pp_ring_t *r, const char *buf, const uint32_t *lens, uint32_t n, int wake) {
    if (r == NULL || r->ctl == NULL) {
        return PP_ECLOSED;
    }
    if (n > 0 && (lens == NULL || buf == NULL)) {
        return PP_EINVAL;
    }
    uint64_t tail = r->tail_local;
    const char *p = buf;
    uint32_t i = 0;
    for (; i < n; i++) {
        int rc = write_record(r, &tail, p, lens[i], PP_KIND_DATA);
        if (rc != PP_OK) {
            if (i == 0 && rc != PP_EFULL) {
                return rc;
            }
            break;
        }
        p += lens[i];
    }
    if (i > 0) {
        publish(r, tail);
        if (wake) {
            pp_ring_notify(r);
        }
    }
    return (int)i;
}

/* ------------------------------------------------------------------------------------------ */
/* consumer                                                                                   */

static inline bool has_data(pp_ring_t *r) {
    /* Acquire pairs with the producer's release of tail: the record bytes are visible after it. */
    uint64_t tail = atomic_load_explicit(&r->ctl->tail, memory_order_acquire);
    r->tail_cache = tail;
    return tail != r->read_pos;
}

int pp_ring_peek(pp_ring_t *r, const char **data, uint32_t *len) {
    if (r == NULL || r->ctl == NULL) {
        return PP_ECLOSED;
    }
    uint64_t pos = r->read_pos;
    for (;;) {
        if (pos == r->tail_cache && !has_data(r)) {
            return PP_EEMPTY;
        }
        uint64_t avail = r->tail_cache - pos;
        if (avail > r->capacity || avail < PP_RECORD_HEADER) {
            return PP_ECORRUPT;
        }
        uint64_t off = pos & r->mask;
        uint64_t to_end = r->capacity - off;
        struct pp_record rec;
        memcpy(&rec, r->data + off, sizeof(rec));
        if (rec.kind == PP_KIND_PAD) {
            if ((uint64_t)rec.len + PP_RECORD_HEADER != to_end || to_end > avail) {
                return PP_ECORRUPT;
            }
            bool nothing_outstanding = r->head_local == pos;
            pos += to_end;
            r->read_pos = pos;
            if (nothing_outstanding) {
                /* Give the padding back to the producer right away; nothing else is pending. */
                r->head_local = pos;
                atomic_store_explicit(&r->ctl->head, pos, memory_order_release);
            }
            continue;
        }
        uint64_t need = record_size(rec.len);
        if (rec.kind > PP_KIND_USER_MAX || rec.len > r->max_message || need > avail || need > to_end) {
            return PP_ECORRUPT;
        }
        *data = r->data + off + PP_RECORD_HEADER;
        *len = rec.len;
        r->read_pos = pos + need;
        return (int)rec.kind;
    }
}

int pp_ring_peek_many(pp_ring_t *r, const char **datas, uint32_t *lens, uint32_t *kinds, uint32_t max) {
    uint32_t i = 0;
    for (; i < max; i++) {
        int kind = pp_ring_peek(r, &datas[i], &lens[i]);
        if (kind < 0) {
            if (kind == PP_EEMPTY || i > 0) {
                break; /* report a corrupt record on the next call, after these are consumed */
            }
            return kind;
        }
        kinds[i] = (uint32_t)kind;
    }
    return (int)i;
}

int pp_ring_pop(pp_ring_t *r, char *buf, uint32_t cap) {
    const char *data;
    uint32_t len;
    int kind = pp_ring_peek(r, &data, &len);
    if (kind < 0) {
        return kind;
    }
    if (kind != PP_KIND_DATA || len > cap) {
        /* Un-peek: step back to the start of this record (not to where the call began: a
         * padding record skipped on the way may already have been handed back). */
        r->read_pos -= record_size(len);
        return PP_EPEEK;
    }
    memcpy(buf, data, len);
    pp_ring_release(r);
    return (int)len;
}

int pp_ring_pop_many(pp_ring_t *r, char *buf, uint32_t cap, uint32_t *lens, uint32_t max) {
    uint32_t used = 0;
    uint32_t i = 0;
    for (; i < max; i++) {
        const char *data;
        uint32_t len;
        int kind = pp_ring_peek(r, &data, &len);
        if (kind < 0) {
            if (i == 0 && kind != PP_EEMPTY) {
                return kind;
            }
            break; /* a corrupt record is reported by the next call */
        }
        if (kind != PP_KIND_DATA || len > cap - used) {
            r->read_pos -= record_size(len); /* un-peek, as in pp_ring_pop */
            if (i == 0) {
                return PP_EPEEK;
            }
            break;
        }
        memcpy(buf + used, data, len);
        used += len;
        lens[i] = len;
    }
    pp_ring_release(r);
    return (int)i;
}

void pp_ring_release(pp_ring_t *r) {
    if (r == NULL || r->ctl == NULL || r->read_pos == r->head_local) {
        return;
    }
    r->head_local = r->read_pos;
    /* Release: our reads of the records are complete before the producer may reuse the space. */
    atomic_store_explicit(&r->ctl->head, r->read_pos, memory_order_release);
}

/* Spin until data shows up or `budget` ns have passed since `start`; returns the elapsed time when
 * data was found, -1 otherwise. Only relaxed loads in the loop, then one acquire load. */
static int64_t spin_for(pp_ring_t *r, int64_t start, int64_t budget) {
    for (uint32_t i = 1;; i++) {
        if (atomic_load_explicit(&r->ctl->tail, memory_order_relaxed) != r->read_pos) {
            if (has_data(r)) {
                return now_ns() - start;
            }
        }
        cpu_relax();
        if ((i & 15) == 0) {
            int64_t elapsed = now_ns() - start;
            if (elapsed >= budget) {
                return -1;
            }
        }
    }
}

int pp_ring_spin(pp_ring_t *r, int64_t max_ns) {
    if (r == NULL || r->ctl == NULL) {
        return PP_ECLOSED;
    }
    if (has_data(r)) {
        return 1;
    }
    if (max_ns <= 0) {
        return 0;
    }
    return spin_for(r, now_ns(), max_ns) >= 0 ? 1 : 0;
}

int pp_ring_wait(pp_ring_t *r, int64_t timeout_ns) {
    if (r == NULL || r->ctl == NULL) {
        return PP_ECLOSED;
    }
    if (has_data(r)) {
        return PP_OK;
    }
    if (timeout_ns == 0) {
        return PP_ETIMEDOUT;
    }
    struct pp_ring_ctl *ctl = r->ctl;
    int64_t start = now_ns();
    /* A timeout too long to add to the clock (no overflow: that would be undefined) is forever. */
    bool forever = timeout_ns < 0 || timeout_ns > INT64_MAX - start;
    int64_t deadline = forever ? INT64_MAX : start + timeout_ns;

    /* Spin phase. The budget adapts: it grows towards twice the gaps that spinning bridged and
     * halves whenever spinning was in vain, so a worker fed back to back keeps spinning and an
     * idle one quickly spins only briefly before it sleeps. */
    int64_t budget = r->spin_ns;
    if (timeout_ns > 0 && budget > timeout_ns) {
        budget = timeout_ns;
    }
    if (budget > 0) {
        int64_t found = spin_for(r, start, budget);
        if (found >= 0) {
            uint64_t want = 2 * (uint64_t)found + r->spin_min_ns;
            if (want > r->spin_ns) {
                r->spin_ns = want > r->spin_max_ns ? r->spin_max_ns : (uint32_t)want;
            }
            return PP_OK;
        }
    }
    uint32_t halved = r->spin_ns / 2;
    r->spin_ns = halved < r->spin_min_ns ? r->spin_min_ns : halved;

    /* Block phase. */
    struct timespec abs;
    if (!forever) {
        abs.tv_sec = (time_t)(deadline / 1000000000);
        abs.tv_nsec = (long)(deadline % 1000000000);
    }
    for (;;) {
        atomic_store_explicit(&ctl->sleeping, PP_SLEEP_FUTEX, memory_order_relaxed);
        /* StoreLoad: the flag must be visible before we look at tail (see pp_ring_notify). */
        atomic_thread_fence(memory_order_seq_cst);
        /* Read the futex word before the final check: a wakeup that happens after this load
         * changes the word, and FUTEX_WAIT then returns immediately. */
        uint32_t seq = atomic_load_explicit(&ctl->wake_seq, memory_order_acquire);
        if (has_data(r)) {
            atomic_store_explicit(&ctl->sleeping, 0, memory_order_relaxed);
            return PP_OK;
        }
        if (!forever && now_ns() >= deadline) {
            atomic_store_explicit(&ctl->sleeping, 0, memory_order_relaxed);
            return PP_ETIMEDOUT;
        }
        r->blocks++;
        long rc = futex_wait_until(&ctl->wake_seq, seq, forever ? NULL : &abs);
        int err = rc == -1 ? errno : 0;
        atomic_store_explicit(&ctl->sleeping, 0, memory_order_relaxed);
        if (has_data(r)) {
            return PP_OK;
        }
        if (err == ETIMEDOUT) {
            return PP_ETIMEDOUT;
        }
        if (err == EINTR) {
            return PP_EINTR;
        }
        if (err != 0 && err != EAGAIN) {
            errno = err;
            return PP_ESYS;
        }
        /* Woken (or the word changed) but nothing to read: a stale wakeup; sleep again. */
    }
}

int pp_ring_arm(pp_ring_t *r) {
    if (r == NULL || r->ctl == NULL) {
        return PP_ECLOSED;
    }
    atomic_store_explicit(&r->ctl->sleeping, PP_SLEEP_EVENTFD, memory_order_relaxed);
    /* Same StoreLoad argument as in pp_ring_wait. */
    atomic_thread_fence(memory_order_seq_cst);
    if (has_data(r)) {
        atomic_store_explicit(&r->ctl->sleeping, 0, memory_order_relaxed);
        return 1;
    }
    return 0;
}

void pp_ring_disarm(pp_ring_t *r) {
    if (r != NULL && r->ctl != NULL) {
        atomic_store_explicit(&r->ctl->sleeping, 0, memory_order_relaxed);
    }
}

const char *pp_strerror(int code) {
    switch (code) {
    case PP_OK: return "ok";
    case PP_EEMPTY: return "ring is empty";
    case PP_EFULL: return "ring is full";
    case PP_ETOOBIG: return "message larger than the ring's maximum message size";
    case PP_EINVAL: return "invalid argument";
    case PP_EMAGIC: return "segment header has a wrong magic number";
    case PP_EVERSION: return "segment header has an unsupported version";
    case PP_ESIZE: return "segment sizes do not match the header or the mapping";
    case PP_ECORRUPT: return "ring contains a corrupt record";
    case PP_ETIMEDOUT: return "wait timed out";
    case PP_EINTR: return "wait interrupted by a signal";
    case PP_ECLOSED: return "ring handle is detached";
    case PP_ESYS: return "system call failed";
    case PP_EPEEK: return "next record needs pp_ring_peek";
    default: return "unknown error";
    }
}
