/*
 * testutil.h: helpers shared by the C tests of the ring (checks, a deterministic message stream).
 */
#ifndef PROCPOOL_TESTUTIL_H
#define PROCPOOL_TESTUTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHECK(cond)                                                                               \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);              \
            exit(1);                                                                              \
        }                                                                                         \
    } while (0)

#define CHECK_EQ(a, b)                                                                            \
    do {                                                                                          \
        long long _a = (long long)(a), _b = (long long)(b);                                       \
        if (_a != _b) {                                                                           \
            fprintf(stderr, "%s:%d: %s == %s failed: %lld != %lld\n", __FILE__, __LINE__, #a, #b, \
                    _a, _b);                                                                      \
            exit(1);                                                                              \
        }                                                                                         \
    } while (0)

static inline int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* xorshift PRNG so that both ends derive the same message stream. */
static inline uint64_t next_rand(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

static inline uint32_t fnv1a(const char *p, uint32_t n) {
    uint32_t h = 2166136261u;
    for (uint32_t i = 0; i < n; i++) {
        h = (h ^ (uint8_t)p[i]) * 16777619u;
    }
    return h;
}

/* Fill `buf` with message `seq` of length `len`: seq and a checksum first, pseudo-random bytes after. */
static inline void make_message(char *buf, uint32_t len, uint64_t seq) {
    uint64_t s = seq * 0x9E3779B97F4A7C15ull + 1;
    for (uint32_t i = 0; i < len; i++) {
        buf[i] = (char)next_rand(&s);
    }
    if (len >= 12) {
        memcpy(buf, &seq, 8);
        uint32_t sum = fnv1a(buf + 12, len - 12);
        memcpy(buf + 8, &sum, 4);
    }
}

static inline void verify_message(const char *buf, uint32_t len, uint64_t seq, uint32_t want_len) {
    CHECK_EQ(len, want_len);
    if (len >= 12) {
        uint64_t got;
        memcpy(&got, buf, 8);
        CHECK_EQ(got, seq);
        uint32_t sum;
        memcpy(&sum, buf + 8, 4);
        CHECK_EQ(sum, fnv1a(buf + 12, len - 12));
    }
}

#endif /* PROCPOOL_TESTUTIL_H */
