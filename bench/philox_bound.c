/* How fast can AVX2 generate Philox4x32-10 words on this CPU? (bench/RESULTS.md, "Why the forward
 * stops at about 60% of the copy".)
 *
 *   gcc -O3 -march=native -o /tmp/philox_bound bench/philox_bound.c && /tmp/philox_bound
 *
 * Prints: the throughput of vpmuludq (four 32 x 32 -> 64-bit products per instruction; a Philox
 * word needs five products, so it bounds the words per second), a rough core clock (a chain of
 * dependent adds, one per cycle), and the words per second of a hand-written AVX2 Philox with 8
 * counters per vector and CHAINS independent vectors per iteration (-DCHAINS=1..4; default 1),
 * checked against a scalar Philox first. One thread.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#ifndef CHAINS
#define CHAINS 1
#endif
#define M0 0xD2511F53u
#define M1 0xCD9E8D57u
#define W0 0x9E3779B9u
#define W1 0xBB67AE85u

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void philox_scalar(uint32_t c[4], uint32_t k0, uint32_t k1) {
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)M0 * c[0], p1 = (uint64_t)M1 * c[2];
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c[1] ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c[3] ^ k1;
        c[1] = (uint32_t)p1;
        c[3] = (uint32_t)p0;
        c[0] = n0;
        c[2] = n2;
        k0 += W0;
        k1 += W1;
    }
}

/* High and low halves of eight 32 x 32 products: even lanes, then odd lanes shifted down. */
static inline void mulhilo(__m256i a, __m256i m, __m256i *hi, __m256i *lo) {
    __m256i even = _mm256_mul_epu32(a, m);
    __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

/* Counters q0 .. q0 + 8 * CHAINS * blocks - 1 (low words only: enough for a rate), word planes. */
__attribute__((noinline)) static void fill(uint32_t *out, uint32_t q0, long blocks, uint32_t k0, uint32_t k1) {
    const __m256i m0 = _mm256_set1_epi32((int)M0), m1 = _mm256_set1_epi32((int)M1);
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (long b = 0; b < blocks; b++) {
        __m256i c0[CHAINS], c1[CHAINS], c2[CHAINS], c3[CHAINS];
        for (int h = 0; h < CHAINS; h++) {
            c0[h] = _mm256_add_epi32(_mm256_set1_epi32((int)(q0 + (uint32_t)(b * CHAINS + h) * 8)), lanes);
            c1[h] = c2[h] = c3[h] = _mm256_setzero_si256();
        }
        uint32_t a = k0, c = k1;
        for (int round = 0; round < 10; round++) {
            __m256i key0 = _mm256_set1_epi32((int)a), key1 = _mm256_set1_epi32((int)c);
            for (int h = 0; h < CHAINS; h++) {
                __m256i hi0, lo0, hi1, lo1;
                mulhilo(c0[h], m0, &hi0, &lo0);
                mulhilo(c2[h], m1, &hi1, &lo1);
                c0[h] = _mm256_xor_si256(_mm256_xor_si256(hi1, c1[h]), key0);
                c1[h] = lo1;
                c2[h] = _mm256_xor_si256(_mm256_xor_si256(hi0, c3[h]), key1);
                c3[h] = lo0;
            }
            a += W0;
            c += W1;
        }
        for (int h = 0; h < CHAINS; h++) {
            uint32_t *o = out + (b * CHAINS + h) * 32;
            _mm256_storeu_si256((__m256i *)o, c0[h]);
            _mm256_storeu_si256((__m256i *)(o + 8), c1[h]);
            _mm256_storeu_si256((__m256i *)(o + 16), c2[h]);
            _mm256_storeu_si256((__m256i *)(o + 24), c3[h]);
        }
    }
}

int main(void) {
    static uint32_t buffer[4096];
    const long n = 100000000;

    __m256i v[12];
    const __m256i m = _mm256_set1_epi64x(M0);
    for (int i = 0; i < 12; i++) v[i] = _mm256_set1_epi64x(i + 3);
    double start = seconds();
    for (long i = 0; i < n; i++) {
        for (int j = 0; j < 12; j++) v[j] = _mm256_mul_epu32(v[j], m);
        __asm__ volatile("" ::"x"(v[0]), "x"(v[1]), "x"(v[2]), "x"(v[3]), "x"(v[4]), "x"(v[5]),
                         "x"(v[6]), "x"(v[7]), "x"(v[8]), "x"(v[9]), "x"(v[10]), "x"(v[11]));
    }
    double rate = 12.0 * n / (seconds() - start);
    printf("vpmuludq ymm: %.2f G/s (4 products each; Philox needs 5 per word: at most %.2f G words/s)\n",
           rate / 1e9, rate * 4 / 5 / 1e9);

    long x = 0;
    start = seconds();
    for (long i = 0; i < 1000000000; i++) __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
    printf("core clock about %.2f GHz\n", 4.0 / (seconds() - start));

    fill(buffer, 0, 1, 0x12345678u, 0x9abcdef0u);
    for (uint32_t lane = 0; lane < 8; lane++) {
        uint32_t c[4] = {lane, 0, 0, 0};
        philox_scalar(c, 0x12345678u, 0x9abcdef0u);
        if (c[0] != buffer[lane] || c[1] != buffer[8 + lane] || c[2] != buffer[16 + lane] || c[3] != buffer[24 + lane]) {
            printf("mismatch with the scalar Philox at counter %u\n", lane);
            return 1;
        }
    }
    const long words = 1L << 28, per_call = 4096, blocks = per_call / (32 * CHAINS);
    for (int repeat = 0; repeat < 3; repeat++) {
        start = seconds();
        for (long i = 0; i < words / per_call; i++) fill(buffer, (uint32_t)(i * per_call / 4), blocks, 1, 2);
        printf("AVX2 Philox4x32-10, %d chain(s): %.2f G words/s\n", CHAINS, words / (seconds() - start) / 1e9);
    }
    return 0;
}
