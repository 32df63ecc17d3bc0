/*
 * test_ring_threads.c: two-thread stress of the ring, meant to run under ThreadSanitizer
 * (make -C native check-tsan) and also built plain (make -C native check).
 *
 * ThreadSanitizer cannot follow two processes through a shared mapping, so here two threads of one
 * process play the two ends of a segment: the driver streams checksummed messages of varying
 * lengths over the request ring in bursts and waits for every echo; the echo thread verifies each
 * message and pushes it back on the result ring. A 4 KiB ring with records of up to its maximum
 * size wraps (with padding) every few messages. Every burst drains both rings, so both threads
 * block over and over, cycling through the wait paths: futex without spinning, futex after a short
 * adaptive spin, and the eventfd doorbell (pp_ring_arm + poll). Pushes use pp_ring_push and
 * pp_ring_push_many, reads use pop, pop_many, peek and peek_many.
 *
 * What fails the run:
 *   - a data race between the record bytes written by the producer and read by the consumer (or
 *     overwritten before the consumer released them), which ThreadSanitizer reports when a
 *     release/acquire pair on tail or head is weakened;
 *   - a lost, duplicated, reordered or damaged message (sequence number, length and checksum);
 *   - a lost wakeup: a blocking wait that is not ended by the peer's push within WAIT_LIMIT_MS
 *     although the peer always pushes within milliseconds.
 *
 * Usage: test_ring_threads [messages]   (default 100000)
 */
#define _GNU_SOURCE
#include "procpool/ring.h"
#include "testutil.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#define CAPACITY 4096u
#define BURST_MAX 48
#define BATCH_MAX 16
/* A blocking wait longer than this means the wakeup was lost: the peer is always running. */
#define WAIT_LIMIT_MS 3000

enum wait_mode { WAIT_FUTEX, WAIT_FUTEX_SPIN, WAIT_DOORBELL, WAIT_MODES };

/* One thread's view: the producer handle of one ring and the consumer handle of the other. */
struct end {
    const char *name;
    pp_ring_t out;      /* producer handle */
    pp_ring_t in;       /* consumer handle */
    int in_doorbell;    /* eventfd the peer writes when `in`'s consumer armed the doorbell */
    uint64_t count;     /* messages in the whole run */
    uint32_t max_len;
    uint64_t done;      /* messages this thread has received so far */
    /* statistics, read by main after join */
    uint64_t futex_waits;
    uint64_t doorbell_waits;
    uint64_t doorbell_stale;
    int64_t longest_wait_ns;
};

/* Deterministic length of message `seq`: mostly small, every so often up to the record limit so
 * that the ring wraps with padding records all the time. */
static uint32_t msg_len(uint64_t seq, uint32_t max_len) {
    uint64_t s = seq * 0xD1B54A32D192ED03ull + 7;
    uint64_t r = next_rand(&s);
    if (r % 11 == 0) {
        return max_len / 2 + (uint32_t)((r >> 8) % (max_len / 2 + 1));
    }
    return (uint32_t)((r >> 8) % 200);
}

static void note_wait(struct end *e, int64_t t0) {
    int64_t dt = mono_ns() - t0;
    if (dt > e->longest_wait_ns) {
        e->longest_wait_ns = dt;
    }
    if (dt >= (int64_t)WAIT_LIMIT_MS * 1000000) {
        fprintf(stderr, "%s: lost wakeup: a blocking wait took %.3f s (after %llu messages)\n", e->name,
                (double)dt / 1e9, (unsigned long long)e->done);
        exit(1);
    }
}

/* Block until `in` has a record (or until a wrap padding record was skipped), by `mode`. */
static void block(struct end *e, enum wait_mode mode) {
    int64_t t0 = mono_ns();
    if (mode == WAIT_DOORBELL) {
        if (pp_ring_arm(&e->in) != 0) {
            return; /* records arrived meanwhile: not armed, drain instead */
        }
        struct pollfd pfd = {.fd = e->in_doorbell, .events = POLLIN};
        int n;
        do {
            n = poll(&pfd, 1, WAIT_LIMIT_MS);
        } while (n < 0 && errno == EINTR);
        CHECK(n >= 0);
        pp_ring_disarm(&e->in);
        note_wait(e, t0);
        CHECK(n == 1); /* timed out: lost wakeup (note_wait has already reported it) */
        uint64_t v;
        CHECK(read(e->in_doorbell, &v, sizeof(v)) == (ssize_t)sizeof(v));
        e->doorbell_waits++;
        /* A ring left over from an arm that found data (the producer took the flag just then):
         * harmless, the caller re-checks the ring and arms again. */
        if (pp_ring_used(&e->in) == 0) {
            e->doorbell_stale++;
        }
        return;
    }
    if (mode == WAIT_FUTEX) {
        pp_ring_set_spin(&e->in, 0, 0);
    } else {
        pp_ring_set_spin(&e->in, 500, 20000);
    }
    int rc = pp_ring_wait(&e->in, (int64_t)WAIT_LIMIT_MS * 1000000);
    note_wait(e, t0);
    CHECK_EQ(rc, PP_OK);
    e->futex_waits++;
}

/* Push one record, yielding while the ring is full; `drain` (may be NULL) runs between retries so
 * that the two threads cannot end up both waiting for room. */
static void push_one(struct end *e, const char *data, uint32_t len, void (*drain)(struct end *)) {
    int rc;
    while ((rc = pp_ring_push(&e->out, data, len, PP_KIND_DATA, 1)) == PP_EFULL) {
        if (drain) {
            drain(e);
        }
        sched_yield();
    }
    CHECK_EQ(rc, PP_OK);
}

/* --- echo thread: consumer of the request ring, producer of the result ring ------------------ */

static void *echo_main(void *arg) {
    struct end *e = arg;
    char *copy = malloc(e->max_len);
    const char *ptrs[BATCH_MAX];
    uint32_t lens[BATCH_MAX], kinds[BATCH_MAX];
    char *buf = malloc((size_t)e->max_len * BATCH_MAX);
    CHECK(copy != NULL && buf != NULL);
    uint64_t got = 0;
    while (got < e->count) {
        /* Switch the reading primitive and the wait path every few messages. */
        unsigned style = (unsigned)(got / 7) % 4;
        enum wait_mode mode = (enum wait_mode)((got / 97) % WAIT_MODES);
        int n = 0;
        if (style == 0) {
            int len = pp_ring_pop(&e->in, buf, e->max_len);
            if (len >= 0) {
                verify_message(buf, (uint32_t)len, got, msg_len(got, e->max_len));
                push_one(e, buf, (uint32_t)len, NULL);
                got++;
                n = 1;
            } else {
                CHECK_EQ(len, PP_EEMPTY);
            }
        } else if (style == 1) {
            n = pp_ring_pop_many(&e->in, buf, e->max_len * BATCH_MAX, lens, BATCH_MAX);
            CHECK(n >= 0);
            size_t off = 0;
            for (int i = 0; i < n; i++) {
                verify_message(buf + off, lens[i], got, msg_len(got, e->max_len));
                push_one(e, buf + off, lens[i], NULL);
                off += lens[i];
                got++;
            }
        } else if (style == 2) {
            const char *data;
            uint32_t len;
            int kind = pp_ring_peek(&e->in, &data, &len);
            if (kind >= 0) {
                CHECK_EQ(kind, PP_KIND_DATA);
                verify_message(data, len, got, msg_len(got, e->max_len));
                memcpy(copy, data, len);
                pp_ring_release(&e->in);
                push_one(e, copy, len, NULL);
                got++;
                n = 1;
            } else {
                CHECK_EQ(kind, PP_EEMPTY);
            }
        } else {
            /* Peek a batch in place, copy it out, release it with one store of head, and echo it
             * with push_many (one publication, one wakeup for the whole batch). */
            n = pp_ring_peek_many(&e->in, ptrs, lens, kinds, BATCH_MAX);
            CHECK(n >= 0);
            size_t off = 0;
            for (int i = 0; i < n; i++) {
                CHECK_EQ(kinds[i], PP_KIND_DATA);
                verify_message(ptrs[i], lens[i], got + (uint64_t)i, msg_len(got + (uint64_t)i, e->max_len));
                memcpy(buf + off, ptrs[i], lens[i]);
                off += lens[i];
            }
            pp_ring_release(&e->in);
            int done = 0;
            while (done < n) {
                size_t skip = 0;
                for (int i = 0; i < done; i++) {
                    skip += lens[i];
                }
                int rc = pp_ring_push_many(&e->out, buf + skip, lens + done, (uint32_t)(n - done), 1);
                CHECK(rc >= 0);
                done += rc;
                if (done < n) {
                    sched_yield();
                }
            }
            got += (uint64_t)n;
        }
        e->done = got;
        if (n == 0 && got < e->count) {
            block(e, mode);
        }
    }
    free(copy);
    free(buf);
    return NULL;
}

/* --- driver: producer of the request ring, consumer of the result ring ----------------------- */

static uint64_t received;

static void drain_echoes(struct end *e) {
    char *buf = malloc(e->max_len);
    CHECK(buf != NULL);
    int len;
    while ((len = pp_ring_pop(&e->in, buf, e->max_len)) >= 0) {
        verify_message(buf, (uint32_t)len, received, msg_len(received, e->max_len));
        received++;
    }
    CHECK_EQ(len, PP_EEMPTY);
    e->done = received;
    free(buf);
}

static void drive(struct end *e) {
    char *msg = malloc((size_t)e->max_len * BATCH_MAX);
    CHECK(msg != NULL);
    uint64_t sent = 0, rng = 12345;
    for (uint64_t round = 0; sent < e->count; round++) {
        /* Half the rounds are ping-pongs of one message: the most hand-offs where one thread goes
         * to sleep just as the other pushes. The rest are bursts that fill and wrap the ring. */
        uint64_t r = next_rand(&rng);
        uint64_t end = sent + ((r & 1) ? 1 : 1 + (r >> 1) % BURST_MAX);
        if (end > e->count) {
            end = e->count;
        }
        while (sent < end) {
            uint32_t k = (uint32_t)(1 + next_rand(&rng) % 4);
            if (k > end - sent) {
                k = (uint32_t)(end - sent);
            }
            if (k == 1) {
                uint32_t len = msg_len(sent, e->max_len);
                make_message(msg, len, sent);
                push_one(e, msg, len, drain_echoes);
                sent++;
                continue;
            }
            uint32_t lens[BATCH_MAX];
            size_t off = 0;
            for (uint32_t i = 0; i < k; i++) {
                lens[i] = msg_len(sent + i, e->max_len);
                make_message(msg + off, lens[i], sent + i);
                off += lens[i];
            }
            /* Publish without waking, then wake once explicitly. */
            int rc = pp_ring_push_many(&e->out, msg, lens, k, 0);
            CHECK(rc >= 0);
            pp_ring_notify(&e->out);
            sent += (uint64_t)rc;
            if ((uint32_t)rc < k) {
                drain_echoes(e);
                sched_yield();
            }
        }
        /* Wait for the whole burst to come back: both threads run dry and block. */
        enum wait_mode mode = (enum wait_mode)(round % WAIT_MODES);
        for (;;) {
            drain_echoes(e);
            if (received == sent) {
                break;
            }
            block(e, mode);
        }
    }
    free(msg);
}

int main(int argc, char **argv) {
    uint64_t count = argc > 1 ? strtoull(argv[1], NULL, 10) : 100000;
    CHECK(count > 0);
    size_t size = pp_segment_size(CAPACITY);
    char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(mem != MAP_FAILED);
    CHECK_EQ(pp_segment_init(mem, size, CAPACITY), PP_OK);

    int req_bell = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    int res_bell = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    CHECK(req_bell >= 0 && res_bell >= 0);
    struct end driver = {.name = "driver", .in_doorbell = res_bell, .count = count};
    struct end echo = {.name = "echo", .in_doorbell = req_bell, .count = count};
    CHECK_EQ(pp_ring_attach(&driver.out, mem, size, PP_RING_REQUEST), PP_OK);
    CHECK_EQ(pp_ring_attach(&driver.in, mem, size, PP_RING_RESULT), PP_OK);
    CHECK_EQ(pp_ring_attach(&echo.in, mem, size, PP_RING_REQUEST), PP_OK);
    CHECK_EQ(pp_ring_attach(&echo.out, mem, size, PP_RING_RESULT), PP_OK);
    pp_ring_set_doorbell(&driver.out, req_bell);
    pp_ring_set_doorbell(&echo.out, res_bell);
    driver.max_len = echo.max_len = pp_ring_max_message(&driver.out);

    int64_t t0 = mono_ns();
    pthread_t th;
    CHECK(pthread_create(&th, NULL, echo_main, &echo) == 0);
    drive(&driver);
    CHECK(pthread_join(th, NULL) == 0);
    double secs = (double)(mono_ns() - t0) / 1e9;

    CHECK_EQ(received, count);
    CHECK_EQ(pp_ring_used(&driver.out), 0);
    CHECK_EQ(pp_ring_used(&driver.in), 0);
    uint64_t laps = driver.out.tail_local / CAPACITY;
    printf("test_ring_threads: %llu messages in %.2f s, %llu laps of the request ring; "
           "futex waits %llu/%llu, doorbell waits %llu/%llu (%llu stale), blocks %llu/%llu, "
           "wake syscalls %llu/%llu, longest wait %.1f ms\n",
           (unsigned long long)count, secs, (unsigned long long)laps,
           (unsigned long long)driver.futex_waits, (unsigned long long)echo.futex_waits,
           (unsigned long long)driver.doorbell_waits, (unsigned long long)echo.doorbell_waits,
           (unsigned long long)(driver.doorbell_stale + echo.doorbell_stale),
           (unsigned long long)pp_ring_blocks(&driver.in), (unsigned long long)pp_ring_blocks(&echo.in),
           (unsigned long long)pp_ring_wake_syscalls(&driver.out),
           (unsigned long long)pp_ring_wake_syscalls(&echo.out),
           (double)(driver.longest_wait_ns > echo.longest_wait_ns ? driver.longest_wait_ns
                                                                   : echo.longest_wait_ns) / 1e6);
    /* The run must have exercised what it is for; scale the count down no further than this. */
    if (count >= 10000) {
        CHECK(laps >= 100);
        CHECK(pp_ring_blocks(&driver.in) > 0 && pp_ring_blocks(&echo.in) > 0);
        CHECK(driver.doorbell_waits > 0 && echo.doorbell_waits > 0);
        CHECK(pp_ring_wake_syscalls(&driver.out) > 0 && pp_ring_wake_syscalls(&echo.out) > 0);
    }
    close(req_bell);
    close(res_bell);
    munmap(mem, size);
    printf("test_ring_threads: all checks passed\n");
    return 0;
}
