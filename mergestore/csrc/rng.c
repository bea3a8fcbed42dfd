/* Random keep masks: numpy's Philox4x64-10 stream, compared with p. Python twin:
 * mergestore/ops/context.py (TensorContext.keep_mask's numpy Generator). */
#include "formats.h"
#include "cascade.h"
#include "gta_tail16.h"

/* Prefetch the tile of m elements of `size` bytes at p (the next tile of a stream, while this
 * one is worked on: the draws between two tiles leave the hardware prefetcher behind). */
static inline void prefetch_tile(const void *p, Py_ssize_t m, Py_ssize_t size) {
    for (Py_ssize_t j = 0; j < m * size; j += 64) __builtin_prefetch((const char *)p + j);
}

/* ------------------------------------------------------------------ drop masks */

/* Philox4x64-10 (Salmon et al., Random123), the generator numpy.random.Philox runs. */
static inline uint64_t mulhilo64(uint64_t a, uint64_t b, uint64_t *hi) {
    __uint128_t p = (__uint128_t)a * b;
    *hi = (uint64_t)(p >> 64);
    return (uint64_t)p;
}

/* Blocks of four 64-bit words per group of 64 uniforms (the AVX-512 path's 8 lanes). */
#define PHILOX_LANES 8

/* A block's four output words as 8 uniforms: each 64-bit word gives two 32-bit
 * words, low half first; u = (word >> 8) * 2^-24. */
static inline ALWAYS_INLINE void philox_floats(const uint64_t w[4], float u[8]) {
    for (int i = 0; i < 4; i++) {
        u[2 * i] = (float)((uint32_t)w[i] >> 8) * (1.0f / 16777216.0f);
        u[2 * i + 1] = (float)((uint32_t)(w[i] >> 32) >> 8) * (1.0f / 16777216.0f);
    }
}

/* The round keys: k0 and k1 plus r times the Weyl constants, r = 0 .. 9. */
static inline void philox_keys(uint64_t k0, uint64_t k1, uint64_t ks0[10], uint64_t ks1[10]) {
    for (int r = 0; r < 10; r++) {
        ks0[r] = k0 + (uint64_t)r * 0x9E3779B97F4A7C15ULL;
        ks1[r] = k1 + (uint64_t)r * 0xBB67AE8584CAA73BULL;
    }
}

/* L blocks at once, counters c0 .. c0 + L - 1 in the low word, their words into
 * u in stream order. The rounds of one block are a chain of dependent multiplies; three blocks
 * side by side keep the multiplier busy and still fit the registers (eight spilled to the
 * stack and ran at half the speed on a Zen 1: the loads and stores, not the multiplies). */
static inline ALWAYS_INLINE void philox_blocks(uint64_t c0, const uint64_t ctr[4],
                                               const uint64_t ks0[10], const uint64_t ks1[10],
                                               float *u, const int L) {
    uint64_t a[3], b[3], c[3], d[3];
    for (int l = 0; l < L; l++) {
        a[l] = c0 + (uint64_t)l;
        b[l] = ctr[1], c[l] = ctr[2], d[l] = ctr[3];
    }
    for (int r = 0; r < 10; r++) {
        const uint64_t x0 = ks0[r], x1 = ks1[r];
        for (int l = 0; l < L; l++) {
            uint64_t hi0, hi1;
            uint64_t lo0 = mulhilo64(0xD2E7470EE14C6C93ULL, a[l], &hi0);
            uint64_t lo1 = mulhilo64(0xCA5A826395121157ULL, c[l], &hi1);
            a[l] = hi1 ^ b[l] ^ x0;
            c[l] = hi0 ^ d[l] ^ x1;
            b[l] = lo1;
            d[l] = lo0;
        }
    }
    for (int l = 0; l < L; l++) {
        const uint64_t w[4] = {a[l], b[l], c[l], d[l]};
        philox_floats(w, u + 8 * l);
    }
}

/* `blocks` blocks of the stream (8 uniforms each) into u, counter advanced. Every stream here
 * starts at counter 0 and draws one block per 8 elements of one tensor, so the counter's low
 * word never carries into the others. */
static inline ALWAYS_INLINE void philox_scalar(uint64_t ctr[4], uint64_t k0, uint64_t k1,
                                               float *u, Py_ssize_t blocks) {
    uint64_t ks0[10], ks1[10];
    philox_keys(k0, k1, ks0, ks1);
    Py_ssize_t b = 0;
    for (; b + 3 <= blocks; b += 3)
        philox_blocks(ctr[0] + (uint64_t)b + 1, ctr, ks0, ks1, u + 8 * b, 3);
    for (; b < blocks; b++) philox_blocks(ctr[0] + (uint64_t)b + 1, ctr, ks0, ks1, u + 8 * b, 1);
    ctr[0] += (uint64_t)blocks;
}

/* The same 64 uniforms with AVX-512 (F + DQ): the 8 blocks side by side in the 64-bit lanes of
 * four vectors, the 64 x 64 -> 128-bit products from four 32 x 32 -> 64-bit ones (vpmuludq:
 * there is no 64-bit high multiply), about 2.5x the throughput of the scalar form when it ran
 * eight blocks side by side (it now runs three). Lane j holds block s(j) (0 4 1 5 2 6 3 7 for
 * j = 0 .. 7), so that two unpacks and two lane permutes put the blocks' words back in stream
 * order. Exactly the scalar stream (tests/test_native.py compares both with numpy's).
 * Counters: ctr[0] never wraps within a stream here (each stream starts at 0). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HAVE_PHILOX512 1
#define AVX512 __attribute__((target("avx512f,avx512dq")))

AVX512 static inline __m512i mulhilo_512(__m512i a, __m512i m_lo, __m512i m_hi, __m512i *hi) {
    /* a * m = p00 + (p01 + p10) 2^32 + p11 2^64 with 32 x 32 -> 64-bit parts; t = p10 +
     * (p00 >> 32) and w = (t mod 2^32) + p01 cannot overflow, and a * m = (p00 mod 2^32) +
     * w 2^32 + (p11 + (t >> 32)) 2^64: lo's low half is p00's, its high half w's low half (one
     * masked dword shuffle), hi = p11 + (t >> 32) + (w >> 32). */
    const __m512i low32 = _mm512_set1_epi64(0xFFFFFFFFLL);
    __m512i a_hi = _mm512_srli_epi64(a, 32);
    __m512i p00 = _mm512_mul_epu32(a, m_lo), p01 = _mm512_mul_epu32(a, m_hi);
    __m512i p10 = _mm512_mul_epu32(a_hi, m_lo), p11 = _mm512_mul_epu32(a_hi, m_hi);
    __m512i t = _mm512_add_epi64(p10, _mm512_srli_epi64(p00, 32));
    __m512i w = _mm512_add_epi64(_mm512_and_si512(t, low32), p01);
    *hi = _mm512_add_epi64(_mm512_add_epi64(p11, _mm512_srli_epi64(t, 32)),
                           _mm512_srli_epi64(w, 32));
    return _mm512_mask_shuffle_epi32(p00, (__mmask16)0xAAAA, w, _MM_PERM_CDAB);
}

/* G (1 or 2) groups of 8 blocks: the next 64 G uniforms into u, counter advanced. The rounds
 * of one group are a chain of dependent multiplies (latency-bound); two groups interleaved keep
 * the vector units busy. */
AVX512 static inline ALWAYS_INLINE void philox_groups_512(uint64_t ctr[4], const __m512i ks0[10],
                                                          const __m512i ks1[10], float *u,
                                                          const int G) {
    const __m512i m0_lo = _mm512_set1_epi64(0xE14C6C93LL), m0_hi = _mm512_set1_epi64(0xD2E7470ELL);
    const __m512i m1_lo = _mm512_set1_epi64(0x95121157LL), m1_hi = _mm512_set1_epi64(0xCA5A8263LL);
    const __m512i lane = _mm512_set_epi64(8, 4, 7, 3, 6, 2, 5, 1); /* 1 + s(j), j = 0 .. 7 */
    const __m512i even = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
    const __m512i odd = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
    const __m512 scale = _mm512_set1_ps(1.0f / 16777216.0f);
    __m512i c0[4], c1[4], c2[4], c3[4];
    for (int q = 0; q < G; q++) {
        c0[q] = _mm512_add_epi64(_mm512_set1_epi64((long long)ctr[0]), lane);
        c1[q] = _mm512_set1_epi64((long long)ctr[1]);
        c2[q] = _mm512_set1_epi64((long long)ctr[2]);
        c3[q] = _mm512_set1_epi64((long long)ctr[3]);
        ctr[0] += PHILOX_LANES;
    }
    for (int r = 0; r < 10; r++) {
        for (int q = 0; q < G; q++) {
            __m512i hi0, hi1;
            __m512i lo0 = mulhilo_512(c0[q], m0_lo, m0_hi, &hi0);
            __m512i lo1 = mulhilo_512(c2[q], m1_lo, m1_hi, &hi1);
            c0[q] = _mm512_ternarylogic_epi64(hi1, c1[q], ks0[r], 0x96); /* three-way xor */
            c2[q] = _mm512_ternarylogic_epi64(hi0, c3[q], ks1[r], 0x96);
            c1[q] = lo1;
            c3[q] = lo0;
        }
    }
    for (int q = 0; q < G; q++) {
        /* blocks s(j): lanes 2k hold blocks k, lanes 2k + 1 blocks 4 + k */
        __m512i a01 = _mm512_unpacklo_epi64(c0[q], c1[q]), a23 = _mm512_unpacklo_epi64(c2[q], c3[q]);
        __m512i b01 = _mm512_unpackhi_epi64(c0[q], c1[q]), b23 = _mm512_unpackhi_epi64(c2[q], c3[q]);
        __m512i w[4] = {
            _mm512_permutex2var_epi64(a01, even, a23), /* blocks 0, 1 */
            _mm512_permutex2var_epi64(a01, odd, a23),  /* blocks 2, 3 */
            _mm512_permutex2var_epi64(b01, even, b23), /* blocks 4, 5 */
            _mm512_permutex2var_epi64(b01, odd, b23),  /* blocks 6, 7 */
        };
        for (int k = 0; k < 4; k++) {
            __m512 f = _mm512_cvtepi32_ps(_mm512_srli_epi32(w[k], 8));
            _mm512_storeu_ps(u + 64 * q + 16 * k, _mm512_mul_ps(f, scale));
        }
    }
}

/* `groups` x 64 uniforms of the stream into u, counter advanced as philox_scalar does. */
AVX512 static void philox_uniforms_512(uint64_t ctr[4], uint64_t k0, uint64_t k1, float *u,
                                       Py_ssize_t groups) {
    uint64_t k0s[10], k1s[10];
    philox_keys(k0, k1, k0s, k1s);
    __m512i ks0[10], ks1[10];
    for (int r = 0; r < 10; r++) {
        ks0[r] = _mm512_set1_epi64((long long)k0s[r]);
        ks1[r] = _mm512_set1_epi64((long long)k1s[r]);
    }
    Py_ssize_t g = 0;
    for (; g + 4 <= groups; g += 4) philox_groups_512(ctr, ks0, ks1, u + 64 * g, 4);
    for (; g + 2 <= groups; g += 2) philox_groups_512(ctr, ks0, ks1, u + 64 * g, 2);
    for (; g < groups; g++) philox_groups_512(ctr, ks0, ks1, u + 64 * g, 1);
}

static int philox512 = -1; /* the CPU has AVX-512 F + DQ (and MERGESTORE_NO_AVX512 is unset) */

static int have_philox512(void) {
    if (philox512 < 0) {
        __builtin_cpu_init();
        philox512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                    !getenv("MERGESTORE_NO_AVX512");
    }
    return philox512;
}
#endif

/* `groups` x 64 uniforms of the stream into u (blocks in counter order, 8 uniforms each),
 * counter advanced. */
HOT static void philox_fill(uint64_t ctr[4], uint64_t k0, uint64_t k1, float *u,
                            Py_ssize_t groups) {
#ifdef HAVE_PHILOX512
    if (have_philox512() && ctr[0] <= UINT64_MAX - (uint64_t)(PHILOX_LANES * groups)) {
        philox_uniforms_512(ctr, k0, k1, u, groups);
        return;
    }
#endif
    philox_scalar(ctr, k0, k1, u, PHILOX_LANES * groups);
}

/* keep[j] = u_j < p_j, 1 or 0 in p's dtype (bf16 or fp32), where u is the stream
 * numpy.random.Generator(numpy.random.Philox(key=k)).random(n, dtype=float32) draws: the
 * counter starts at 0 and is incremented before each block of four 64-bit outputs; each output
 * gives two 32-bit words, low half first; u = (word >> 8) * 2^-24. */
HOT static void philox_keep(void *out, const void *probs, int one_p, Py_ssize_t n, int bf16,
                            uint64_t k0, uint64_t k1) {
    /* one_p: `probs` holds a single probability for every element (dare's density) */
    const Py_ssize_t per = TILE; /* floats per call: TILE / 64 rounds of lanes */
    uint64_t ctr[4] = {0, 0, 0, 0};
    float u[TILE];
    for (Py_ssize_t s = 0; s < n; s += per) {
        Py_ssize_t m = n - s < per ? n - s : per;
        philox_fill(ctr, k0, k1, u, (m + 63) / 64);
        if (bf16 && one_p) {
            const float p = bf16_to_f32(*(const uint16_t *)probs);
            uint16_t *o = (uint16_t *)out + s;
            for (Py_ssize_t j = 0; j < m; j++) o[j] = u[j] < p ? 0x3F80 : 0;
        } else if (bf16) {
            const uint16_t *p = (const uint16_t *)probs + s;
            uint16_t *o = (uint16_t *)out + s;
            for (Py_ssize_t j = 0; j < m; j++) o[j] = u[j] < bf16_to_f32(p[j]) ? 0x3F80 : 0;
        } else if (one_p) {
            const float p = *(const float *)probs;
            float *o = (float *)out + s;
            for (Py_ssize_t j = 0; j < m; j++) o[j] = u[j] < p ? 1.0f : 0.0f;
        } else {
            const float *p = (const float *)probs + s;
            float *o = (float *)out + s;
            for (Py_ssize_t j = 0; j < m; j++) o[j] = u[j] < p[j] ? 1.0f : 0.0f;
        }
    }
}

PyObject *py_philox_keep(PyObject *self, PyObject *args) {
    PyObject *out_o, *p_o;
    unsigned long long k0, k1;
    int bf16;
    if (!PyArg_ParseTuple(args, "OOKKp", &out_o, &p_o, &k0, &k1, &bf16)) return NULL;
    Py_ssize_t size = bf16 ? 2 : 4;
    Buf out, p;
    if (get_buf(out_o, &out, 1, size, "out") < 0) return NULL;
    if (get_buf(p_o, &p, 0, size, "probs") < 0) {
        release(&out);
        return NULL;
    }
    int one_p = p.view.len == size && out.view.len != size;
    if (p.view.len != out.view.len && !one_p) {
        release(&p);
        release(&out);
        PyErr_SetString(PyExc_ValueError,
                        "philox_keep: probs must be as long as out, or one value");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    philox_keep(out.view.buf, p.view.buf, one_p, out.view.len / size, bf16, k0, k1);
    Py_END_ALLOW_THREADS
    release(&p);
    release(&out);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ keep, mask and rescale */

/* dare's and della's sparsification of an fp32 delta, in place and in two passes, with the
 * bits of ops/sparsify.py's torch twin (rescaled_masked_ after TensorContext.keep_mask):
 *   mask_j = u_j < p_j (philox_keep's stream); delta_j *= mask_j (1.0f or 0.0f, so a dropped
 *   negative element becomes -0.0 and a NaN stays NaN);
 *   with rescale: before = sum |delta|, after = sum |masked| (torch's cascade order, see
 *   cascade.h); unless either is below eps (as fp32), delta *= before / after (fp32).
 * The torch twin allocates the mask and a |delta| scratch and makes five passes. */
HOT static void keep_rescale32(float *delta, const float *probs, int one_p, Py_ssize_t n,
                               uint64_t k0, uint64_t k1, int rescale, float eps) {
    const Py_ssize_t per = TILE;
    uint64_t ctr[4] = {0, 0, 0, 0};
    float u[TILE], a[TILE], b[TILE];
    Cascade before, after;
    cascade_init(&before, n);
    cascade_init(&after, n);
    for (Py_ssize_t s = 0; s < n; s += per) {
        Py_ssize_t m = n - s < per ? n - s : per;
        philox_fill(ctr, k0, k1, u, (m + 63) / 64);
        float *d = delta + s;
        if (!rescale) {
            for (Py_ssize_t j = 0; j < m; j++)
                d[j] = d[j] * (u[j] < (one_p ? probs[0] : probs[s + j]) ? 1.0f : 0.0f);
            continue;
        }
        for (Py_ssize_t j = 0; j < m; j++) {
            float p = one_p ? probs[0] : probs[s + j];
            a[j] = fabsf(d[j]);
            d[j] = d[j] * (u[j] < p ? 1.0f : 0.0f);
            b[j] = fabsf(d[j]);
        }
        /* per (TILE) is a multiple of ROW (32): tiles start on rows */
        cascade_feed(&before, a, s, m);
        cascade_feed(&after, b, s, m);
    }
    if (!rescale) return;
    float sb = cascade_end(&before), sa = cascade_end(&after);
    if (sb < eps || sa < eps) return;
    float scale = sb / sa;
    if (scale != scale) {
        /* A NaN sum (a NaN or inf in the delta): every element becomes the scale's NaN, as in
         * torch's delta * scale. Written out because where both operands are NaNs x86 returns
         * the first one's, and the compiler orders a product's operands as it likes (the
         * baseline clone put the element's first). */
        for (Py_ssize_t j = 0; j < n; j++) delta[j] = scale;
        return;
    }
    for (Py_ssize_t j = 0; j < n; j++) delta[j] = delta[j] * scale;
}

PyObject *py_keep_rescale32(PyObject *self, PyObject *args) {
    PyObject *d_o, *p_o;
    unsigned long long k0, k1;
    int rescale;
    float eps;
    if (!PyArg_ParseTuple(args, "OOKKpf", &d_o, &p_o, &k0, &k1, &rescale, &eps)) return NULL;
    Buf d, p;
    if (get_buf(d_o, &d, 1, 4, "delta") < 0) return NULL;
    if (get_buf(p_o, &p, 0, 4, "probs") < 0) {
        release(&d);
        return NULL;
    }
    int one_p = p.view.len == 4;
    if (p.view.len != d.view.len && !one_p) {
        release(&p);
        release(&d);
        PyErr_SetString(PyExc_ValueError,
                        "keep_rescale32: probs must be as long as delta, or one value");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    keep_rescale32(d.view.buf, p.view.buf, one_p, d.view.len / 4, k0, k1, rescale, eps);
    Py_END_ALLOW_THREADS
    release(&p);
    release(&d);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ the lane's keep masks */

/* Scale of an L1 rescale: before / after, or 1 when either sum is below eps (as fp32); 1
 * multiplies exactly, so it gives the bits of no rescale. */
static float l1_scale(Cascade *before, Cascade *after, float eps) {
    float sb = cascade_end(before), sa = cascade_end(after);
    if (sb < eps || sa < eps) return 1.0f;
    return sb / sa;
}

/* The first pass of dare's and della's fp32 sparsification on the lane (ops/lane_random.py),
 * for one input: d_j = x_j - base_j in fp32 (both widened exactly), keep_j = u_j < p_j
 * (philox_keep's stream; p one value, or one per element), written as 1/0 bytes; with
 * rescale, the L1 sums of d and of d * keep in torch's order (keep_rescale32's) and the scale
 * they give. Nothing else is stored: gta_keep32 (merge_arith32.c) recomputes d and applies
 * the keep bytes and the scale, so there is no fp32 delta per input in memory. */
HOT4 static float keep_sums32(uint8_t *keep, const void *x, int x_fmt, const void *base,
                             int base_fmt, const float *probs, int one_p, Py_ssize_t n,
                             uint64_t k0, uint64_t k1, int rescale, float eps) {
    uint64_t ctr[4] = {0, 0, 0, 0};
    float u[TILE], d[TILE], bs[TILE], a[TILE], b[TILE];
    Cascade before, after;
    cascade_init(&before, n);
    cascade_init(&after, n);
    const Py_ssize_t xsz = fmt_size[x_fmt], bsz = fmt_size[base_fmt];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        if (s + 2 * TILE <= n) { /* the next tile's inputs, while the draws run */
            prefetch_tile((const char *)x + (s + TILE) * xsz, TILE, xsz);
            prefetch_tile((const char *)base + (s + TILE) * bsz, TILE, bsz);
        }
        widen(d, x, x_fmt, s, m);
        widen(bs, base, base_fmt, s, m);
        for (Py_ssize_t j = 0; j < m; j++) d[j] = d[j] - bs[j];
        philox_fill(ctr, k0, k1, u, (m + 63) / 64);
        uint8_t *kp = keep + s;
        if (one_p) {
            const float p = probs[0];
            for (Py_ssize_t j = 0; j < m; j++) kp[j] = u[j] < p;
        } else {
            const float *p = probs + s;
            for (Py_ssize_t j = 0; j < m; j++) kp[j] = u[j] < p[j];
        }
        if (rescale) { /* s is a multiple of TILE, hence of the cascade's ROW */
            for (Py_ssize_t j = 0; j < m; j++) {
                a[j] = fabsf(d[j]);
                b[j] = fabsf(d[j] * (kp[j] ? 1.0f : 0.0f));
            }
            cascade_feed(&before, a, s, m);
            cascade_feed(&after, b, s, m);
        }
    }
    return rescale ? l1_scale(&before, &after, eps) : 1.0f;
}

/* p[column] = table[rank - 1] for a row of 31-bit keys, rank the 1-based stable ascending
 * rank of the column's key: LSD radix sort, four counting passes of 8 bits (a pass whose digit
 * is the same for every key is skipped), the last one scattering table values to the columns
 * instead of entries. v holds key << 32 | column on entry; v and t (scratch of the same size)
 * are overwritten. The row is cut in STREAMS consecutive parts counted and scattered side by
 * side, each with its own counters placed after the parts before it (so the order stays
 * stable): a run of equal digits, common in deltas of 16-bit weights, then updates STREAMS
 * counters in turn instead of waiting on one. */
#define STREAMS 4
static inline ALWAYS_INLINE void radix_probs31(uint64_t *v, uint64_t *t, Py_ssize_t cols,
                                               const float *table, float *p) {
    uint32_t cnt[STREAMS][256], any = 0, every = UINT32_MAX;
    for (Py_ssize_t j = 0; j < cols; j++) { /* a digit with no differing bit needs no pass */
        uint32_t k = (uint32_t)(v[j] >> 32);
        any |= k;
        every &= k;
    }
    uint32_t differ = any ^ every;
    int passes[4], np = 0;
    for (int pass = 0; pass < 4; pass++)
        if ((differ >> (8 * pass)) & 255) passes[np++] = pass;
    if (np == 0) { /* every key equal: ranks in column order */
        for (Py_ssize_t j = 0; j < cols; j++) p[j] = table[j];
        return;
    }
    Py_ssize_t part = cols / STREAMS; /* the last part also takes the cols % STREAMS left */
    for (int k = 0; k < np; k++) {
        int shift = 32 + 8 * passes[k], last = k == np - 1;
        memset(cnt, 0, sizeof cnt);
        for (Py_ssize_t j = 0; j < part; j++)
            for (int q = 0; q < STREAMS; q++) cnt[q][(v[q * part + j] >> shift) & 255]++;
        for (Py_ssize_t j = STREAMS * part; j < cols; j++) cnt[STREAMS - 1][(v[j] >> shift) & 255]++;
        uint32_t sum = 0;
        for (int d = 0; d < 256; d++)
            for (int q = 0; q < STREAMS; q++) {
                uint32_t x = cnt[q][d];
                cnt[q][d] = sum;
                sum += x;
            }
        if (last) {
            for (Py_ssize_t j = 0; j < part; j++)
                for (int q = 0; q < STREAMS; q++) {
                    uint64_t e = v[q * part + j];
                    p[(uint32_t)e] = table[cnt[q][(e >> shift) & 255]++];
                }
            for (Py_ssize_t j = STREAMS * part; j < cols; j++) {
                uint64_t e = v[j];
                p[(uint32_t)e] = table[cnt[STREAMS - 1][(e >> shift) & 255]++];
            }
            return;
        }
        for (Py_ssize_t j = 0; j < part; j++)
            for (int q = 0; q < STREAMS; q++) {
                uint64_t e = v[q * part + j];
                t[cnt[q][(e >> shift) & 255]++] = e;
            }
        for (Py_ssize_t j = STREAMS * part; j < cols; j++) {
            uint64_t e = v[j];
            t[cnt[STREAMS - 1][(e >> shift) & 255]++] = e;
        }
        uint64_t *sw = v;
        v = t;
        t = sw;
    }
}

/* uu[0 .. cols) = the next cols uniforms of the running stream: u holds TILE of them, *upos
 * the next unused one (TILE: none left, refill). */
static inline void row_uniforms(float *uu, Py_ssize_t cols, float *u, Py_ssize_t *upos,
                                uint64_t ctr[4], uint64_t k0, uint64_t k1) {
    for (Py_ssize_t j = 0; j < cols;) {
        if (*upos == TILE) {
            philox_fill(ctr, k0, k1, u, TILE / 64);
            *upos = 0;
        }
        Py_ssize_t take = TILE - *upos < cols - j ? TILE - *upos : cols - j;
        memcpy(uu + j, u + *upos, (size_t)take * sizeof(float));
        *upos += take;
        j += take;
    }
}

/* della_keep_sums32: keep_sums32 for della on a [rows, cols] tensor (a 1-D tensor is one
 * row), with each element's keep-probability table[rank - 1], rank its 1-based stable rank
 * by |d| within its row (ties by column, NaNs equal and above +inf: torch's stable sort of
 * the magnitudes). `table` holds ops.sparsify._della_probs's value for every rank (it depends
 * on the rank alone). Returns the scale, or -1 (no memory). */
HOT4 static int della_keep_sums32(uint8_t *keep, const void *x, int x_fmt, const void *base,
                                 int base_fmt, Py_ssize_t rows, Py_ssize_t cols,
                                 const float *table, uint64_t k0, uint64_t k1, int rescale,
                                 float eps, float *scale) {
    char *mem = malloc((size_t)cols * (2 * sizeof(uint64_t) + 3 * sizeof(float)));
    if (!mem) return -1;
    uint64_t *v = (uint64_t *)mem, *t = v + cols;
    float *d = (float *)(t + cols), *p = d + cols, *uu = p + cols;
    uint64_t ctr[4] = {0, 0, 0, 0};
    float u[TILE], a[TILE], b[TILE];
    Py_ssize_t upos = TILE, fill = 0, fed = 0, n = rows * cols;
    Cascade before, after;
    cascade_init(&before, n);
    cascade_init(&after, n);
    const Py_ssize_t xsz = fmt_size[x_fmt], bsz = fmt_size[base_fmt];
    for (Py_ssize_t r = 0; r < rows; r++) {
        if (r + 1 < rows && cols <= 8192) { /* the next row, while this one is ranked */
            prefetch_tile((const char *)x + (r + 1) * cols * xsz, cols, xsz);
            prefetch_tile((const char *)base + (r + 1) * cols * bsz, cols, bsz);
        }
        widen(d, x, x_fmt, r * cols, cols);
        widen(p, base, base_fmt, r * cols, cols);
        for (Py_ssize_t j = 0; j < cols; j++) {
            d[j] = d[j] - p[j];
            uint32_t bits;
            memcpy(&bits, &d[j], 4);
            bits &= 0x7FFFFFFFu;
            if (bits > 0x7F800000u) bits = 0x7F800001u; /* every NaN: one key, above +inf */
            v[j] = (uint64_t)bits << 32 | (uint64_t)j;
        }
        radix_probs31(v, t, cols, table, p);
        row_uniforms(uu, cols, u, &upos, ctr, k0, k1); /* this row's, from the running stream */
        uint8_t *kp = keep + r * cols;
        for (Py_ssize_t j = 0; j < cols;) {
            Py_ssize_t take = TILE - fill < cols - j ? TILE - fill : cols - j;
            for (Py_ssize_t e = 0; e < take; e++) {
                float dv = d[j + e];
                int kk = uu[j + e] < p[j + e];
                kp[j + e] = (uint8_t)kk;
                a[fill + e] = fabsf(dv);
                b[fill + e] = fabsf(dv * (kk ? 1.0f : 0.0f));
            }
            fill += take;
            j += take;
            if (fill == TILE) { /* fed at multiples of TILE, as the cascade needs */
                if (rescale) {
                    cascade_feed(&before, a, fed, TILE);
                    cascade_feed(&after, b, fed, TILE);
                }
                fed += TILE;
                fill = 0;
            }
        }
    }
    if (rescale && fill) {
        cascade_feed(&before, a, fed, fill);
        cascade_feed(&after, b, fed, fill);
    }
    free(mem);
    *scale = rescale ? l1_scale(&before, &after, eps) : 1.0f;
    return 0;
}

/* keep_sums32(keep_u8, x, x_fmt, base, base_fmt, probs_f32, key_lo, key_hi, rescale, eps)
 * -> scale */
PyObject *py_keep_sums32(PyObject *self, PyObject *args) {
    PyObject *k_o, *x_o, *b_o, *p_o;
    int x_fmt, b_fmt, rescale;
    unsigned long long k0, k1;
    float eps;
    if (!PyArg_ParseTuple(args, "OOiOiOKKpf", &k_o, &x_o, &x_fmt, &b_o, &b_fmt, &p_o, &k0, &k1,
                          &rescale, &eps))
        return NULL;
    Py_ssize_t n = -1;
    Buf keep, x, base, p;
    if (get_buf(k_o, &keep, 1, 1, "keep") < 0) return NULL;
    n = keep.view.len;
    PyObject *ret = NULL;
    if (get_fmt_buf(x_o, x_fmt, &n, 0, &x, "x") < 0) goto d1;
    if (get_fmt_buf(b_o, b_fmt, &n, 0, &base, "base") < 0) goto d2;
    if (get_buf(p_o, &p, 0, 4, "probs") < 0) goto d3;
    int one_p = p.view.len == 4;
    if (p.view.len != 4 * n && !one_p) {
        PyErr_SetString(PyExc_ValueError, "keep_sums32: probs must be one per element, or one");
        goto d4;
    }
    float scale;
    Py_BEGIN_ALLOW_THREADS
    scale = keep_sums32(keep.view.buf, x.view.buf, x_fmt, base.view.buf, b_fmt, p.view.buf, one_p,
                        n, k0, k1, rescale, eps);
    Py_END_ALLOW_THREADS
    ret = PyFloat_FromDouble(scale);
d4:
    release(&p);
d3:
    release(&base);
d2:
    release(&x);
d1:
    release(&keep);
    return ret;
}

/* della_keep_sums32(keep_u8, x, x_fmt, base, base_fmt, rows, table_f32, key_lo, key_hi,
 * rescale, eps) -> scale */
PyObject *py_della_keep_sums32(PyObject *self, PyObject *args) {
    PyObject *k_o, *x_o, *b_o, *t_o;
    int x_fmt, b_fmt, rescale;
    Py_ssize_t rows;
    unsigned long long k0, k1;
    float eps;
    if (!PyArg_ParseTuple(args, "OOiOinOKKpf", &k_o, &x_o, &x_fmt, &b_o, &b_fmt, &rows, &t_o, &k0,
                          &k1, &rescale, &eps))
        return NULL;
    Py_ssize_t n = -1;
    Buf keep, x, base, tab;
    if (get_buf(k_o, &keep, 1, 1, "keep") < 0) return NULL;
    n = keep.view.len;
    PyObject *ret = NULL;
    if (get_fmt_buf(x_o, x_fmt, &n, 0, &x, "x") < 0) goto d1;
    if (get_fmt_buf(b_o, b_fmt, &n, 0, &base, "base") < 0) goto d2;
    if (get_buf(t_o, &tab, 0, 4, "table") < 0) goto d3;
    Py_ssize_t cols = tab.view.len / 4;
    if (rows < 0 || cols <= 0 || rows * cols != n || cols > 0xFFFFFFFFLL) {
        PyErr_SetString(PyExc_ValueError, "della_keep_sums32: rows * len(table) must be len(keep)");
        goto d4;
    }
    float scale = 1.0f;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = della_keep_sums32(keep.view.buf, x.view.buf, x_fmt, base.view.buf, b_fmt, rows, cols,
                           tab.view.buf, k0, k1, rescale, eps, &scale);
    Py_END_ALLOW_THREADS
    if (rc < 0)
        PyErr_NoMemory();
    else
        ret = PyFloat_FromDouble(scale);
d4:
    release(&tab);
d3:
    release(&base);
d2:
    release(&x);
d1:
    release(&keep);
    return ret;
}

/* ------------------------------------------------------------------ the same in bf16 */

/* torch's sum of a contiguous bf16 tensor (SumKernel.cpp, AVX2 dispatch), fed in order: from
 * 16 elements on, each 16 (a Vectorized<BFloat16>) enter the fp32 cascade as one vector of 8,
 * element l plus element l + 8; the elements after the last whole 16 are added one by one to
 * the final accumulator from 0, before the cascade's lanes; under 16 elements it is the scalar
 * path (rows of 4). The result starts at bf16 0 and takes the fp32 sum, rounded once. */
typedef struct {
    Py_ssize_t n, whole; /* elements; elements in whole vectors of 16 */
    Cascade c;
    float small[16]; /* n < 16: the values, summed at the end */
} Sum16;

static void sum16_init(Sum16 *s, Py_ssize_t n) {
    s->n = n;
    s->whole = n >= 16 ? n / 16 * 16 : 0;
    cascade_init(&s->c, s->whole / 2); /* n >= 16: at least one vector of 8: the vector path */
}

/* Values s .. s + m of the sequence, as fp32 (s a multiple of 32 unless it is the first). */
static inline void sum16_feed(Sum16 *s, const float *v, Py_ssize_t at, Py_ssize_t m) {
    if (s->n < 16) {
        for (Py_ssize_t j = 0; j < m && at + j < 16; j++) s->small[at + j] = v[j]; /* n < 16 */
        return;
    }
    float pair[TILE / 2];
    Py_ssize_t units = 0;
    while (units < m / 16 && at + 16 * units < s->whole) units++;
    for (Py_ssize_t u = 0; u < units; u++)
        for (int l = 0; l < 8; l++) pair[8 * u + l] = v[16 * u + l] + v[16 * u + 8 + l];
    if (units) cascade_feed(&s->c, pair, at / 2, 8 * units);
    for (Py_ssize_t j = 16 * units; j < m; j++) s->c.tail += v[j]; /* past the last whole 16 */
}

static float sum16_end(Sum16 *s) {
    if (s->n >= 16) return bf16_to_f32(rne16(cascade_end(&s->c)));
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    Py_ssize_t rows = s->n / 4;
    for (Py_ssize_t i = 0; i < rows; i++)
        for (int k = 0; k < 4; k++) acc[k] += s->small[4 * i + k];
    for (Py_ssize_t i = rows * 4; i < s->n; i++) acc[0] += s->small[i];
    float r = acc[0];
    for (int k = 1; k < 4; k++) r += acc[k];
    return bf16_to_f32(rne16(0.0f + r));
}

/* The first pass of dare's bf16 sparsification on the lane (ops/lane_random.py, 16-bit
 * compute), for one input: d_j = x_j - base_j rounded to bf16 (as torch.sub), keep_j = u_j <
 * p_j (philox_keep's stream, p bf16: one, or one per element) as 1/0 bytes; with rescale, the
 * L1 sums of d and of d * keep in torch's bf16 order (Sum16) and the scale they give,
 * bf16(before / after), or 1 when either is below eps. Nothing else is stored: gta_keep16
 * recomputes d, applies the keep bytes and the scale (rounded, as torch's d * mask and
 * d * scale), so there is no bf16 delta row per input in memory. The bits of
 * sparsify.bernoulli_ on bf16 (keep_mask, then rescaled_masked(_)). */
HOT4 static float keep_sums16(uint8_t *keep, const uint16_t *x, const uint16_t *base,
                             const uint16_t *probs, int one_p, Py_ssize_t n, uint64_t k0,
                             uint64_t k1, int rescale, float eps) {
    uint64_t ctr[4] = {0, 0, 0, 0};
    float u[TILE], a[TILE], b[TILE];
    Sum16 before, after;
    sum16_init(&before, n);
    sum16_init(&after, n);
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        if (rescale && s + 2 * TILE <= n) { /* the next tile's inputs, while the draws run */
            prefetch_tile(x + s + TILE, TILE, 2);
            prefetch_tile(base + s + TILE, TILE, 2);
        }
        philox_fill(ctr, k0, k1, u, (m + 63) / 64);
        uint8_t *kp = keep + s;
        if (one_p) {
            const float p = bf16_to_f32(probs[0]);
            for (Py_ssize_t j = 0; j < m; j++) kp[j] = u[j] < p;
        } else {
            for (Py_ssize_t j = 0; j < m; j++) kp[j] = u[j] < bf16_to_f32(probs[s + j]);
        }
        if (!rescale) continue;
        const uint16_t *xt = x + s, *bt = base + s;
        for (Py_ssize_t j = 0; j < m; j++) {
            float v = bf16_to_f32(rne16(bf16_to_f32(xt[j]) - bf16_to_f32(bt[j])));
            a[j] = fabsf(v);
            b[j] = fabsf(v * (kp[j] ? 1.0f : 0.0f));
        }
        sum16_feed(&before, a, s, m);
        sum16_feed(&after, b, s, m);
    }
    if (!rescale) return 1.0f;
    float sb = sum16_end(&before), sa = sum16_end(&after);
    if (sb < eps || sa < eps) return 1.0f;
    return bf16_to_f32(rne16(sb / sa));
}

/* p[column] = table[rank - 1] for a row of 16-bit keys (cols <= 65536), rank the 1-based stable
 * ascending rank of the column's key: v holds key << 16 | column on entry (t is scratch of the
 * same size; both are overwritten). radix_probs31's LSD passes on 32-bit entries (half the
 * memory traffic), the same STREAMS parts, over the two bytes of the key (a byte the same in
 * every key skips its pass; the high byte's counters are summed over its range of values only),
 * and the last pass scatters table values to the columns instead of entries. */
static inline ALWAYS_INLINE void radix_probs16(uint32_t *v, uint32_t *t, Py_ssize_t cols,
                                               const float *table, float *p) {
    uint32_t cnt[STREAMS][256], any = 0, every = UINT32_MAX, lo = UINT32_MAX, hi = 0;
    for (Py_ssize_t j = 0; j < cols; j++) {
        uint32_t e = v[j];
        any |= e;
        every &= e;
        lo = e < lo ? e : lo;
        hi = e > hi ? e : hi;
    }
    uint32_t differ = (any ^ every) >> 16;
    int passes[2], np = 0;
    for (int pass = 0; pass < 2; pass++)
        if ((differ >> (8 * pass)) & 255) passes[np++] = pass;
    if (np == 0) { /* every key equal: ranks in column order */
        for (Py_ssize_t j = 0; j < cols; j++) p[j] = table[j];
        return;
    }
    Py_ssize_t part = cols / STREAMS;
    for (int k = 0; k < np; k++) {
        int pass = passes[k], shift = 16 + 8 * pass, last = k == np - 1;
        int d0 = pass ? (int)(lo >> 24) : 0, d1 = pass ? (int)(hi >> 24) : 255;
        memset(cnt, 0, sizeof cnt);
        for (Py_ssize_t j = 0; j < part; j++)
            for (int q = 0; q < STREAMS; q++) cnt[q][(v[q * part + j] >> shift) & 255]++;
        for (Py_ssize_t j = STREAMS * part; j < cols; j++) cnt[STREAMS - 1][(v[j] >> shift) & 255]++;
        uint32_t sum = 0;
        for (int d = d0; d <= d1; d++)
            for (int q = 0; q < STREAMS; q++) {
                uint32_t c = cnt[q][d];
                cnt[q][d] = sum;
                sum += c;
            }
        if (last) {
            for (Py_ssize_t j = 0; j < part; j++)
                for (int q = 0; q < STREAMS; q++) {
                    uint32_t e = v[q * part + j];
                    p[e & 0xFFFFu] = table[cnt[q][(e >> shift) & 255]++];
                }
            for (Py_ssize_t j = STREAMS * part; j < cols; j++) {
                uint32_t e = v[j];
                p[e & 0xFFFFu] = table[cnt[STREAMS - 1][(e >> shift) & 255]++];
            }
            return;
        }
        for (Py_ssize_t j = 0; j < part; j++)
            for (int q = 0; q < STREAMS; q++) {
                uint32_t e = v[q * part + j];
                t[cnt[q][(e >> shift) & 255]++] = e;
            }
        for (Py_ssize_t j = STREAMS * part; j < cols; j++) {
            uint32_t e = v[j];
            t[cnt[STREAMS - 1][(e >> shift) & 255]++] = e;
        }
        uint32_t *sw = v;
        v = t;
        t = sw;
    }
}

/* della_keep_sums16: keep_sums16 for della on a [rows, cols] tensor (a 1-D tensor is one
 * row), each element's keep-probability by_rank[rank - 1] (della_rank_probs_bf16: the bf16
 * probability of each rank, as sparsify._della_probs computes it in bf16), rank its 1-based
 * stable rank by |d| (bf16 magnitude bits) within its row: ties by column, NaNs equal and
 * above +inf (torch's stable sort). Returns 0, or -1 (no memory). */
HOT4 static int della_keep_sums16(uint8_t *keep, const uint16_t *x, const uint16_t *base,
                                 Py_ssize_t rows, Py_ssize_t cols, float base_p, float eps,
                                 uint64_t k0, uint64_t k1, int rescale, float reps,
                                 float *scale) {
    const int narrow_keys = cols <= 65536;
    size_t entry = narrow_keys ? sizeof(uint32_t) : sizeof(uint64_t);
    char *mem = malloc((size_t)cols * (2 * entry + 3 * sizeof(float) + 2 * sizeof(uint16_t)));
    if (!mem) return -1;
    void *v = mem, *t = mem + cols * entry;
    float *p = (float *)(mem + 2 * cols * entry), *uu = p + cols, *table = uu + cols;
    uint16_t *d = (uint16_t *)(table + cols), *by_rank = d + cols;
    della_rank_probs_bf16(cols, base_p, eps, by_rank);
    for (Py_ssize_t q = 0; q < cols; q++) table[q] = bf16_to_f32(by_rank[q]);
    uint64_t ctr[4] = {0, 0, 0, 0};
    float u[TILE], a[TILE], b[TILE];
    Py_ssize_t upos = TILE, fill = 0, fed = 0, n = rows * cols;
    Sum16 before, after;
    sum16_init(&before, n);
    sum16_init(&after, n);
    for (Py_ssize_t r = 0; r < rows; r++) {
        const uint16_t *xr = x + r * cols, *br = base + r * cols;
        if (r + 1 < rows && cols <= 8192) { /* the next row, while this one is ranked */
            prefetch_tile(xr + cols, cols, 2);
            prefetch_tile(br + cols, cols, 2);
        }
        for (Py_ssize_t j = 0; j < cols; j++) {
            d[j] = rne16(bf16_to_f32(xr[j]) - bf16_to_f32(br[j]));
        }
        if (narrow_keys) {
            uint32_t *vv = v;
            for (Py_ssize_t j = 0; j < cols; j++) {
                uint32_t k = d[j] & 0x7FFFu;
                k = k > 0x7F80u ? 0x7F81u : k; /* every NaN: one key, above +inf */
                vv[j] = k << 16 | (uint32_t)j;
            }
            radix_probs16(vv, t, cols, table, p);
        } else {
            uint64_t *vv = v;
            for (Py_ssize_t j = 0; j < cols; j++) {
                uint64_t k = d[j] & 0x7FFFu;
                k = k > 0x7F80u ? 0x7F81u : k;
                vv[j] = k << 32 | (uint64_t)j;
            }
            radix_probs31(vv, t, cols, table, p);
        }
        row_uniforms(uu, cols, u, &upos, ctr, k0, k1); /* this row's, from the running stream */
        uint8_t *kp = keep + r * cols;
        for (Py_ssize_t j = 0; j < cols;) {
            Py_ssize_t take = TILE - fill < cols - j ? TILE - fill : cols - j;
            for (Py_ssize_t e = 0; e < take; e++) {
                float dv = bf16_to_f32(d[j + e]);
                int kk = uu[j + e] < p[j + e];
                kp[j + e] = (uint8_t)kk;
                a[fill + e] = fabsf(dv);
                b[fill + e] = fabsf(dv * (kk ? 1.0f : 0.0f));
            }
            fill += take;
            j += take;
            if (fill == TILE) { /* fed at multiples of TILE, as Sum16 needs */
                if (rescale) {
                    sum16_feed(&before, a, fed, TILE);
                    sum16_feed(&after, b, fed, TILE);
                }
                fed += TILE;
                fill = 0;
            }
        }
    }
    if (rescale && fill) {
        sum16_feed(&before, a, fed, fill);
        sum16_feed(&after, b, fed, fill);
    }
    free(mem);
    *scale = 1.0f;
    if (rescale) {
        float sb = sum16_end(&before), sa = sum16_end(&after);
        if (!(sb < reps || sa < reps)) *scale = bf16_to_f32(rne16(sb / sa));
    }
    return 0;
}


/* gta_keep16 of 1 to 4 inputs, each with keep bytes, over m elements: each element's D_i held
 * in registers, then the sum or the sign consensus and the tail, in the tile code's operations
 * and order (the scale is always multiplied: a scale of 1 multiplies exactly). One straight
 * pass: the hardware prefetcher keeps up with its 2k + 1 streams (fetching each next tile
 * ahead, as the tile loop below does, measured 2-7% slower here). */
#define KD_IN(i)                                                                             \
    const int c##i = k > i ? i : 0;                                                          \
    const uint16_t *x##i = xs[c##i];                                                         \
    const uint8_t *kp##i = keeps[c##i];                                                      \
    const float sc##i = scales[c##i], w##i = w[c##i]
#define KD_D(i)                                                                              \
    const float d##i =                                                                       \
        r16(r16(r16(bf16_to_f32(x##i[j]) - b) * (kp##i[j] ? 1.0f : 0.0f) * sc##i) * w##i)
HOT static void keep_few16(uint16_t *out, const uint16_t *base, const uint16_t **xs,
                           const uint8_t **keeps, const float *scales, Py_ssize_t k,
                           const float *w, int consensus, float divisor, Py_ssize_t m,
                           int normalize, float lam, int has_lam) {
    KD_IN(0);
    KD_IN(1);
    KD_IN(2);
    KD_IN(3);
    if (consensus) {
        GTA16_VOTE_FEW(KD_D)
    } else {
        GTA16_SUM_FEW(KD_D)
    }
}
#undef KD_D
#undef KD_IN

/* dare* and della* in bf16 in one pass over the inputs (ops/lane_random.py), tile by tile:
 * v_i = x_i - base rounded to bf16, times its keep byte (as torch's v * mask; its rounding is
 * exact: v, a signed 0, or the default NaN for an infinity; no keep bytes: all kept), times
 * its scale, rounded (a scale of 1 is skipped: it multiplies exactly), then the GTA tail of
 * merge_arith16.h on these deltas in the same operations and order: D_i = bf16(v_i * w_i);
 * consensus: vote = bf16(D_0 + ... + D_k-1) >= 0 ? +1 : -1, agree_i = D_i * vote > 0,
 * merged = sum agree_i * D_i, divisor = sum agree_i * w_i; else merged = 0 + sum D_i; then
 * finish (rounded to bf16, / divisor, * lam, + base). The bits of ops.lane16.gta_combine over
 * keep_rescale(16)'s rows, with each D_i computed once into an fp32 tile (in registers for 1 to
 * 4 inputs with keep bytes: keep_few16) and no bf16 delta row per input in memory. */
HOT4 static int gta_keep16(uint16_t *out, const uint16_t *base, const uint16_t **xs,
                          const uint8_t **keeps, const float *scales, Py_ssize_t k,
                          const float *w, int consensus, float divisor, Py_ssize_t n,
                          int normalize, float lam, int has_lam) {
    int few = k >= 1 && k <= 4;
    for (Py_ssize_t i = 0; i < k; i++) few = few && keeps[i];
    if (few) {
        keep_few16(out, base, xs, keeps, scales, k, w, consensus, divisor, n, normalize, lam,
                   has_lam);
        return 0;
    }
    float *dt = malloc((size_t)(k ? k : 1) * TILE * sizeof(float));
    if (!dt) return -1;
    float bf[TILE], acc[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        if (s + 2 * TILE <= n) { /* the next tile of every stream (2k + 1 of them) */
            prefetch_tile(base + s + TILE, TILE, 2);
            for (Py_ssize_t i = 0; i < k; i++) {
                prefetch_tile(xs[i] + s + TILE, TILE, 2);
                if (keeps[i]) prefetch_tile(keeps[i] + s + TILE, TILE, 1);
            }
        }
        for (Py_ssize_t j = 0; j < m; j++) bf[j] = bf16_to_f32(base[s + j]);
        for (Py_ssize_t j = 0; j < m; j++) acc[j] = 0.0f;
        for (Py_ssize_t i = 0; i < k; i++) {
            float *D = dt + i * TILE;
            const uint16_t *x = xs[i] + s;
            const float wi = w[i], sc = scales[i];
            for (Py_ssize_t j = 0; j < m; j++) D[j] = r16(bf16_to_f32(x[j]) - bf[j]);
            if (keeps[i]) {
                const uint8_t *kp = keeps[i] + s;
                for (Py_ssize_t j = 0; j < m; j++) D[j] = D[j] * (kp[j] ? 1.0f : 0.0f);
            }
            if (sc != 1.0f)
                for (Py_ssize_t j = 0; j < m; j++) D[j] = r16(D[j] * sc);
            if (consensus && i == 0) { /* merge_arith16.h's vote starts from D_0 */
                for (Py_ssize_t j = 0; j < m; j++) acc[j] = D[j] = r16(D[j] * wi);
            } else {
                for (Py_ssize_t j = 0; j < m; j++) acc[j] += D[j] = r16(D[j] * wi);
            }
        }
        gta_tail16(out + s, bf, dt, k, w, acc, consensus, divisor, m, normalize, lam, has_lam);
    }
    free(dt);
    return 0;
}

/* keep_sums16(keep_u8, x_u16, base_u16, probs_u16, key_lo, key_hi, rescale, eps) -> scale */
PyObject *py_keep_sums16(PyObject *self, PyObject *args) {
    PyObject *k_o, *x_o, *b_o, *p_o;
    unsigned long long k0, k1;
    int rescale;
    float eps;
    if (!PyArg_ParseTuple(args, "OOOOKKpf", &k_o, &x_o, &b_o, &p_o, &k0, &k1, &rescale, &eps))
        return NULL;
    Buf keep, x, base, p;
    PyObject *ret = NULL;
    if (get_buf(k_o, &keep, 1, 1, "keep") < 0) return NULL;
    Py_ssize_t n = keep.view.len;
    if (get_buf(x_o, &x, 0, 2, "x") < 0) goto d1;
    if (get_buf(b_o, &base, 0, 2, "base") < 0) goto d2;
    if (get_buf(p_o, &p, 0, 2, "probs") < 0) goto d3;
    int one_p = p.view.len == 2 && n != 1;
    if (x.view.len != 2 * n || base.view.len != 2 * n || (p.view.len != 2 * n && !one_p)) {
        PyErr_SetString(PyExc_ValueError, "keep_sums16: lengths differ");
        goto d4;
    }
    float scale;
    Py_BEGIN_ALLOW_THREADS
    scale = keep_sums16(keep.view.buf, x.view.buf, base.view.buf, p.view.buf, one_p, n, k0, k1,
                        rescale, eps);
    Py_END_ALLOW_THREADS
    ret = PyFloat_FromDouble(scale);
d4:
    release(&p);
d3:
    release(&base);
d2:
    release(&x);
d1:
    release(&keep);
    return ret;
}

/* della_keep_sums16(keep_u8, x_u16, base_u16, rows, base_p, eps, key_lo, key_hi, rescale,
 * rescale_eps) -> scale */
PyObject *py_della_keep_sums16(PyObject *self, PyObject *args) {
    PyObject *k_o, *x_o, *b_o;
    Py_ssize_t rows;
    double base_p, eps;
    unsigned long long k0, k1;
    int rescale;
    float reps;
    if (!PyArg_ParseTuple(args, "OOOnddKKpf", &k_o, &x_o, &b_o, &rows, &base_p, &eps, &k0, &k1,
                          &rescale, &reps))
        return NULL;
    Buf keep, x, base;
    PyObject *ret = NULL;
    if (get_buf(k_o, &keep, 1, 1, "keep") < 0) return NULL;
    Py_ssize_t n = keep.view.len;
    if (get_buf(x_o, &x, 0, 2, "x") < 0) goto d1;
    if (get_buf(b_o, &base, 0, 2, "base") < 0) goto d2;
    if (x.view.len != 2 * n || base.view.len != 2 * n || rows <= 0 || n % rows != 0 ||
        n / rows > 0xFFFFFFFFLL) {
        PyErr_SetString(PyExc_ValueError, "della_keep_sums16: lengths or rows do not match");
        goto d3;
    }
    float scale = 1.0f;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = della_keep_sums16(keep.view.buf, x.view.buf, base.view.buf, rows, n / rows,
                           (float)base_p, (float)eps, k0, k1, rescale, reps, &scale);
    Py_END_ALLOW_THREADS
    if (rc < 0)
        PyErr_NoMemory();
    else
        ret = PyFloat_FromDouble(scale);
d3:
    release(&base);
d2:
    release(&x);
d1:
    release(&keep);
    return ret;
}

/* gta_keep16(out_u16, base_u16, inputs_u16, keeps (uint8 or None: all kept), scales, weights,
 * consensus, divisor, normalize, lam, has_lam) */
PyObject *py_gta_keep16(PyObject *self, PyObject *args) {
    PyObject *out_o, *base_o, *xs_o, *keeps_o, *sc_o, *w_o;
    int consensus, normalize, has_lam;
    double divisor, lam;
    if (!PyArg_ParseTuple(args, "OOOOOOpdpdp", &out_o, &base_o, &xs_o, &keeps_o, &sc_o, &w_o,
                          &consensus, &divisor, &normalize, &lam, &has_lam))
        return NULL;
    Buf out, base;
    BufList xs = {0};
    float *w = NULL, *scales = NULL;
    Buf *kb = NULL;
    const uint8_t **kp = NULL;
    Py_ssize_t held = 0, n;
    PyObject *ret = NULL, *ks = NULL;
    if (get_buf(out_o, &out, 1, 2, "out") < 0) return NULL;
    n = out.view.len / 2;
    if (get_buf(base_o, &base, 0, 2, "base") < 0) goto d1;
    if (base.view.len != out.view.len) {
        PyErr_SetString(PyExc_ValueError, "gta_keep16: base and out differ in length");
        goto d2;
    }
    if (get_list(xs_o, &xs, out.view.len, "inputs") < 0) goto d3;
    Py_ssize_t k = xs.n;
    w = PyMem_Calloc(k ? k : 1, sizeof(float));
    scales = PyMem_Calloc(k ? k : 1, sizeof(float));
    kb = PyMem_Calloc(k ? k : 1, sizeof(Buf));
    kp = PyMem_Calloc(k ? k : 1, sizeof(uint8_t *));
    if (!w || !scales || !kb || !kp) {
        PyErr_NoMemory();
        goto d3;
    }
    if (get_floats(w_o, w, k) < 0 || get_floats(sc_o, scales, k) < 0) goto d3;
    ks = PySequence_Fast(keeps_o, "expected a sequence of keep buffers");
    if (!ks) goto d3;
    if (PySequence_Fast_GET_SIZE(ks) != k) {
        PyErr_SetString(PyExc_ValueError, "gta_keep16: one keep buffer (or None) per input");
        goto d3;
    }
    for (; held < k; held++) {
        PyObject *o = PySequence_Fast_GET_ITEM(ks, held);
        if (o == Py_None) continue;
        if (get_buf(o, &kb[held], 0, 1, "keep") < 0) goto d3;
        if (kb[held].view.len != n) {
            release(&kb[held]);
            PyErr_SetString(PyExc_ValueError, "gta_keep16: a keep byte per element");
            goto d3;
        }
        kp[held] = kb[held].view.buf;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = gta_keep16(out.view.buf, base.view.buf, xs.ptrs, kp, scales, k, w, consensus,
                    (float)divisor, n, normalize, (float)lam, has_lam);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        PyErr_NoMemory();
        goto d3;
    }
    ret = Py_None;
    Py_INCREF(ret);
d3:
    for (Py_ssize_t i = 0; i < held; i++) release(&kb[i]);
    PyMem_Free(kb);
    PyMem_Free((void *)kp);
    Py_XDECREF(ks);
    PyMem_Free(scales);
    PyMem_Free(w);
    release_list(&xs);
d2:
    release(&base);
d1:
    release(&out);
    return ret;
}
