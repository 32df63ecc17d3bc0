/*
 * test_ring.c: C-level tests of the ring, meant to run under AddressSanitizer and UBSan
 * (make -C native check-sanitize).
 *
 * Single-process edge cases first (sizes, header validation, empty, full, wrap-around, corruption,
 * doorbell, futex timeout), then a two-process exchange over a MAP_SHARED mapping: the parent
 * streams checksummed messages of varying lengths to a forked child, which verifies and echoes
 * them back, with small spin budgets so that both futex sleeps and spinning hand-offs happen.
 */
#define _GNU_SOURCE
#include "procpool/ring.h"
#include "testutil.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/time.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void *map_shared(size_t size) {
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED);
    return p;
}

static void test_sizes(void) {
    CHECK_EQ(pp_segment_size(0), 0);
    CHECK_EQ(pp_segment_size(4095), 0);
    CHECK_EQ(pp_segment_size(6000), 0);
    CHECK_EQ(pp_segment_size(PP_MAX_CAPACITY * 2u), 0);
    CHECK(pp_segment_size(4096) > 2 * 4096);
    CHECK(pp_segment_size(PP_MAX_CAPACITY) > 0);
}

static void test_header_validation(void) {
    uint32_t cap = 4096;
    size_t size = pp_segment_size(cap);
    char *mem = map_shared(size);
    pp_ring_t r;
    CHECK_EQ(pp_segment_check(mem, size), PP_EMAGIC); /* zeroed memory */
    CHECK_EQ(pp_segment_init(mem, size - 1, cap), PP_ESIZE);
    CHECK_EQ(pp_segment_init(mem, size, 1000), PP_EINVAL);
    CHECK_EQ(pp_segment_init(mem, size, cap), PP_OK);
    CHECK_EQ(pp_segment_check(mem, size), PP_OK);
    CHECK_EQ(pp_segment_capacity(mem, size), cap);
    CHECK_EQ(pp_segment_check(mem, size - 1), PP_ESIZE);
    CHECK_EQ(pp_segment_check(mem, 16), PP_ESIZE);
    CHECK_EQ(pp_ring_attach(&r, mem, size, 2), PP_EINVAL);

    mem[0] ^= 1;
    CHECK_EQ(pp_segment_check(mem, size), PP_EMAGIC);
    CHECK_EQ(pp_ring_attach(&r, mem, size, 0), PP_EMAGIC);
    mem[0] ^= 1;
    mem[8] ^= 1; /* version */
    CHECK_EQ(pp_segment_check(mem, size), PP_EVERSION);
    mem[8] ^= 1;
    mem[16] ^= 1; /* segment_size */
    CHECK_EQ(pp_segment_check(mem, size), PP_ESIZE);
    mem[16] ^= 1;
    mem[28] = 0; /* ring_capacity low byte: 4096 stays 4096, so change the next one */
    mem[29] ^= 0x20;
    CHECK_EQ(pp_segment_check(mem, size), PP_ESIZE);
    CHECK_EQ(pp_segment_init(mem, size, cap), PP_OK);
    CHECK_EQ(pp_segment_check(mem, size), PP_OK);
    munmap(mem, size);
}

static void test_single_process(void) {
    uint32_t cap = 4096;
    size_t size = pp_segment_size(cap);
    char *mem = map_shared(size);
    CHECK_EQ(pp_segment_init(mem, size, cap), PP_OK);
    pp_ring_t p, c;
    CHECK_EQ(pp_ring_attach(&p, mem, size, PP_RING_REQUEST), PP_OK);
    CHECK_EQ(pp_ring_attach(&c, mem, size, PP_RING_REQUEST), PP_OK);
    uint32_t maxm = pp_ring_max_message(&p);
    CHECK_EQ(maxm, cap / 2 - PP_RECORD_HEADER);

    const char *data;
    uint32_t len;
    char buf[8192];

    /* empty */
    CHECK_EQ(pp_ring_peek(&c, &data, &len), PP_EEMPTY);
    CHECK_EQ(pp_ring_pop(&c, buf, sizeof(buf)), PP_EEMPTY);
    CHECK_EQ(pp_ring_wait(&c, 0), PP_ETIMEDOUT);

    /* zero-length and bad kind */
    CHECK_EQ(pp_ring_push(&p, NULL, 0, PP_KIND_DATA, 0), PP_OK);
    CHECK_EQ(pp_ring_push(&p, "x", 1, 256, 0), PP_EINVAL);
    CHECK_EQ(pp_ring_pop(&c, buf, sizeof(buf)), 0);

    /* too big, max */
    memset(buf, 'm', sizeof(buf));
    CHECK_EQ(pp_ring_push(&p, buf, maxm + 1, PP_KIND_DATA, 0), PP_ETOOBIG);
    CHECK_EQ(pp_ring_push(&p, buf, maxm, PP_KIND_DATA, 0), PP_OK);
    CHECK_EQ(pp_ring_pop(&c, buf, 100), PP_EPEEK); /* larger than the copy buffer: left in place */
    CHECK_EQ(pp_ring_peek(&c, &data, &len), PP_KIND_DATA);
    CHECK_EQ(len, maxm);
    CHECK(data[0] == 'm' && data[maxm - 1] == 'm');
    pp_ring_release(&c);

    /* full: 100-byte payloads take 112-byte records */
    int pushed = 0;
    while (pp_ring_push(&p, buf, 100, PP_KIND_DATA, 0) == PP_OK) {
        pushed++;
    }
    CHECK(pushed >= (int)(cap / 112) - 1);
    CHECK_EQ(pp_ring_push(&p, buf, 100, PP_KIND_DATA, 0), PP_EFULL);
    CHECK_EQ(pp_ring_pop(&c, buf, sizeof(buf)), 100);
    CHECK_EQ(pp_ring_push(&p, buf, 100, PP_KIND_DATA, 0), PP_OK);
    int popped = 0;
    while (pp_ring_pop(&c, buf, sizeof(buf)) == 100) {
        popped++;
    }
    CHECK_EQ(popped, pushed);
    CHECK_EQ(pp_ring_used(&p), 0);

    /* wrap-around with every length from 0 to 3000, interleaving peek, pop and batches */
    uint64_t seq = 0, rseq = 0;
    for (uint32_t l = 0; l <= 3000 && l <= maxm; l += 7) {
        make_message(buf, l, seq);
        CHECK_EQ(pp_ring_push(&p, buf, l, PP_KIND_DATA, 0), PP_OK);
        seq++;
        char out[8192];
        if (l % 3 == 0) {
            int n = pp_ring_pop(&c, out, sizeof(out));
            CHECK_EQ(n, l);
            verify_message(out, (uint32_t)n, rseq++, l);
        } else {
            CHECK_EQ(pp_ring_peek(&c, &data, &len), PP_KIND_DATA);
            verify_message(data, len, rseq++, l);
            pp_ring_release(&c);
        }
    }
    CHECK_EQ(seq, rseq);

    /* batches */
    uint32_t lens[64];
    char cat[64 * 40];
    for (int i = 0; i < 64; i++) {
        lens[i] = (uint32_t)(i % 40);
    }
    uint32_t total = 0;
    for (int i = 0; i < 64; i++) {
        memset(cat + total, 'a' + i % 26, lens[i]);
        total += lens[i];
    }
    int n = pp_ring_push_many(&p, cat, lens, 64, 0);
    CHECK(n > 0 && n <= 64);
    const char *ptrs[64];
    uint32_t got[64], kinds[64];
    int m = pp_ring_peek_many(&c, ptrs, got, kinds, 64);
    CHECK_EQ(m, n);
    for (int i = 0; i < m; i++) {
        CHECK_EQ(got[i], lens[i]);
        CHECK_EQ(kinds[i], PP_KIND_DATA);
        CHECK(got[i] == 0 || ptrs[i][0] == 'a' + i % 26);
    }
    pp_ring_release(&c);
    n = pp_ring_push_many(&p, cat, lens, 10, 0);
    CHECK_EQ(n, 10);
    uint32_t plens[64];
    CHECK_EQ(pp_ring_pop_many(&c, buf, sizeof(buf), plens, 64), 10);
    CHECK_EQ(pp_ring_pop_many(&c, buf, sizeof(buf), plens, 64), 0);

    /* spill-kind records are left for peek */
    CHECK_EQ(pp_ring_push(&p, "ref", 3, PP_KIND_SPILL, 0), PP_OK);
    CHECK_EQ(pp_ring_pop(&c, buf, sizeof(buf)), PP_EPEEK);
    CHECK_EQ(pp_ring_pop_many(&c, buf, sizeof(buf), plens, 4), PP_EPEEK);
    CHECK_EQ(pp_ring_peek(&c, &data, &len), PP_KIND_SPILL);
    CHECK_EQ(len, 3);
    pp_ring_release(&c);

    /* corruption: a record header claiming more than the ring holds */
    CHECK_EQ(pp_ring_push(&p, "abcd", 4, PP_KIND_DATA, 0), PP_OK);
    char *ring_data = mem + 128 + 384; /* header, then ring 0's control block */
    uint32_t off = (uint32_t)((p.tail_local - 16) & (cap - 1));
    uint32_t bogus = cap;
    memcpy(ring_data + off, &bogus, 4);
    CHECK_EQ(pp_ring_peek(&c, &data, &len), PP_ECORRUPT);

    /* detached handles refuse work */
    pp_ring_detach(&p);
    CHECK_EQ(pp_ring_push(&p, "x", 1, PP_KIND_DATA, 0), PP_ECLOSED);
    CHECK_EQ(pp_ring_wait(&p, 0), PP_ECLOSED);
    munmap(mem, size);
}

static void on_alarm(int signum) { (void)signum; }

static void test_wakeups(void) {
    uint32_t cap = 4096;
    size_t size = pp_segment_size(cap);
    char *mem = map_shared(size);
    CHECK_EQ(pp_segment_init(mem, size, cap), PP_OK);
    pp_ring_t p, c;
    CHECK_EQ(pp_ring_attach(&p, mem, size, PP_RING_RESULT), PP_OK);
    CHECK_EQ(pp_ring_attach(&c, mem, size, PP_RING_RESULT), PP_OK);
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    CHECK(efd >= 0);
    pp_ring_set_doorbell(&p, efd);
    uint64_t v;

    /* not armed: no syscall, eventfd stays quiet */
    CHECK_EQ(pp_ring_push(&p, "a", 1, PP_KIND_DATA, 1), PP_OK);
    CHECK_EQ(pp_ring_wake_syscalls(&p), 0);
    CHECK(read(efd, &v, 8) == -1 && errno == EAGAIN);
    /* arming with data present refuses */
    CHECK_EQ(pp_ring_arm(&c), 1);
    char buf[16];
    CHECK_EQ(pp_ring_pop(&c, buf, sizeof(buf)), 1);
    /* armed: one push rings once; later pushes are silent until re-armed */
    CHECK_EQ(pp_ring_arm(&c), 0);
    CHECK_EQ(pp_ring_push(&p, "b", 1, PP_KIND_DATA, 1), PP_OK);
    CHECK_EQ(pp_ring_push(&p, "c", 1, PP_KIND_DATA, 1), PP_OK);
    CHECK_EQ(pp_ring_wake_syscalls(&p), 1);
    CHECK(read(efd, &v, 8) == 8 && v == 1);
    /* disarm: silent again */
    CHECK_EQ(pp_ring_pop_many(&c, buf, sizeof(buf), (uint32_t[4]){0}, 4), 2);
    CHECK_EQ(pp_ring_arm(&c), 0);
    pp_ring_disarm(&c);
    CHECK_EQ(pp_ring_push(&p, "d", 1, PP_KIND_DATA, 1), PP_OK);
    CHECK_EQ(pp_ring_wake_syscalls(&p), 1);
    CHECK_EQ(pp_ring_pop(&c, buf, sizeof(buf)), 1);

    /* futex wait times out after about the requested time */
    pp_ring_set_spin(&c, 1000, 1000);
    int64_t t0 = mono_ns();
    CHECK_EQ(pp_ring_wait(&c, 30 * 1000000), PP_ETIMEDOUT);
    int64_t dt = mono_ns() - t0;
    CHECK(dt >= 30 * 1000000 && dt < 500 * 1000000);
    CHECK_EQ(pp_ring_blocks(&c), 1);
    CHECK_EQ(pp_ring_spin(&c, 1000), 0);

    /* A timeout too long to add to the clock waits like "forever" (no signed overflow: UBSan
     * watches this in the sanitizer run); a signal ends the wait with PP_EINTR. */
    struct sigaction sa = {0};
    sa.sa_handler = on_alarm;  /* no SA_RESTART: the futex wait returns EINTR */
    CHECK(sigaction(SIGALRM, &sa, NULL) == 0);
    struct itimerval it = {.it_value = {.tv_sec = 0, .tv_usec = 20000}};
    CHECK(setitimer(ITIMER_REAL, &it, NULL) == 0);
    t0 = mono_ns();
    CHECK_EQ(pp_ring_wait(&c, INT64_MAX - 1), PP_EINTR);
    CHECK(mono_ns() - t0 >= 15 * 1000000);
    signal(SIGALRM, SIG_DFL);
    close(efd);
    munmap(mem, size);
}

/* Two processes: the parent streams `count` messages to the child, which verifies each one and
 * echoes it on the result ring; the parent verifies the echoes. Lengths vary from 0 to `maxlen`. */
static void test_two_processes(uint64_t count, uint32_t maxlen, uint32_t spin_ns) {
    uint32_t cap = 1u << 16;
    size_t size = pp_segment_size(cap);
    char *mem = map_shared(size);
    CHECK_EQ(pp_segment_init(mem, size, cap), PP_OK);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        pp_ring_t req, res;
        CHECK_EQ(pp_ring_attach(&req, mem, size, PP_RING_REQUEST), PP_OK);
        CHECK_EQ(pp_ring_attach(&res, mem, size, PP_RING_RESULT), PP_OK);
        pp_ring_set_spin(&req, spin_ns, spin_ns);
        uint64_t s = 42;
        char *buf = malloc(maxlen + 1);
        for (uint64_t i = 0; i < count; i++) {
            const char *data;
            uint32_t len;
            int kind;
            while ((kind = pp_ring_peek(&req, &data, &len)) == PP_EEMPTY) {
                int rc = pp_ring_wait(&req, 5LL * 1000000000);
                CHECK(rc == PP_OK);
            }
            CHECK_EQ(kind, PP_KIND_DATA);
            verify_message(data, len, i, (uint32_t)(next_rand(&s) % (maxlen + 1)));
            memcpy(buf, data, len);
            pp_ring_release(&req);
            while (pp_ring_push(&res, buf, len, PP_KIND_DATA, 1) == PP_EFULL) {
            }
        }
        free(buf);
        _exit(0);
    }
    pp_ring_t req, res;
    CHECK_EQ(pp_ring_attach(&req, mem, size, PP_RING_REQUEST), PP_OK);
    CHECK_EQ(pp_ring_attach(&res, mem, size, PP_RING_RESULT), PP_OK);
    pp_ring_set_spin(&res, spin_ns, spin_ns);
    uint64_t s = 42, sr = 42;
    char *buf = malloc(maxlen + 1);
    char *out = malloc(maxlen + 1);
    uint64_t sent = 0, received = 0;
    uint32_t next_len = (uint32_t)(next_rand(&s) % (maxlen + 1));
    make_message(buf, next_len, 0);
    while (received < count) {
        /* Push as many as fit, then drain, so that the rings both fill and run dry. */
        while (sent < count && pp_ring_push(&req, buf, next_len, PP_KIND_DATA, 1) == PP_OK) {
            sent++;
            if (sent < count) {
                next_len = (uint32_t)(next_rand(&s) % (maxlen + 1));
                make_message(buf, next_len, sent);
            }
            if ((sent & 1023) == 0) {
                break; /* let the echo ring drain now and then */
            }
        }
        int n;
        while ((n = pp_ring_pop(&res, out, maxlen + 1)) >= 0) {
            verify_message(out, (uint32_t)n, received, (uint32_t)(next_rand(&sr) % (maxlen + 1)));
            received++;
        }
        CHECK_EQ(n, PP_EEMPTY);
        if (received < count && sent == count) {
            CHECK_EQ(pp_ring_wait(&res, 5LL * 1000000000), PP_OK);
        }
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    free(buf);
    free(out);
    munmap(mem, size);
}

/* Ping-pong with no spinning at all: every hand-off is a futex sleep and wakeup. */
static void test_blocking_ping_pong(int rounds) {
    uint32_t cap = 4096;
    size_t size = pp_segment_size(cap);
    char *mem = map_shared(size);
    CHECK_EQ(pp_segment_init(mem, size, cap), PP_OK);
    pid_t pid = fork();
    CHECK(pid >= 0);
    int me = pid == 0;
    pp_ring_t in, out;
    CHECK_EQ(pp_ring_attach(&in, mem, size, me ? PP_RING_REQUEST : PP_RING_RESULT), PP_OK);
    CHECK_EQ(pp_ring_attach(&out, mem, size, me ? PP_RING_RESULT : PP_RING_REQUEST), PP_OK);
    pp_ring_set_spin(&in, 0, 0);
    char buf[16];
    for (int i = 0; i < rounds; i++) {
        if (!me) {
            CHECK_EQ(pp_ring_push(&out, (char *)&i, sizeof(i), PP_KIND_DATA, 1), PP_OK);
        }
        int n;
        while ((n = pp_ring_pop(&in, buf, sizeof(buf))) == PP_EEMPTY) {
            CHECK_EQ(pp_ring_wait(&in, 5LL * 1000000000), PP_OK);
        }
        CHECK_EQ(n, sizeof(int));
        int got;
        memcpy(&got, buf, sizeof(got));
        CHECK_EQ(got, i);
        if (me) {
            CHECK_EQ(pp_ring_push(&out, (char *)&i, sizeof(i), PP_KIND_DATA, 1), PP_OK);
        }
    }
    if (me) {
        _exit(0);
    }
    CHECK(pp_ring_blocks(&in) > 0);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    munmap(mem, size);
}

/* Usage: test_ring [messages]: messages of the main two-process stream. The plain run (make check)
 * asks for a few million; the sanitizer run keeps this default so that it stays short. */
#define STRESS_MESSAGES 300000

int main(int argc, char **argv) {
    uint64_t stress = argc > 1 ? strtoull(argv[1], NULL, 10) : STRESS_MESSAGES;
    CHECK(stress > 0);
    test_sizes();
    test_header_validation();
    test_single_process();
    test_wakeups();
    test_two_processes(stress, 300, 20000);
    test_two_processes(20000, 20000, 0);
    test_two_processes(50000, 2000, 2000);
    test_blocking_ping_pong(2000);
    printf("test_ring: all checks passed\n");
    return 0;
}
