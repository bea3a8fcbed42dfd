/* mergestore._native: fused kernels for the hot loops, each one pass over memory, GIL released.
 *
 * Every function here has a pure Python/torch twin (mergestore/native.py says which), and
 * the tests check that both give the same bits. The arithmetic is written out so that it is
 * exactly torch's on CPU:
 *   - bf16 results are fp32 results rounded to nearest even (rne16 below);
 *   - fp32 operations are plain IEEE operations, never contracted into FMAs
 *     (built with -ffp-contract=off) and never reordered;
 *   - sums run in a fixed order, so results do not depend on threads.
 * The one documented difference: the payload of a NaN result (torch's vectorized conversion
 * writes 0xFFFF, its scalar one 0x7FC0; the kernels keep the NaN's own upper bits).
 *
 * Hot functions are compiled twice (for x86-64-v3, i.e. AVX2 + FMA, and for baseline x86-64) and
 * picked at load time.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define HOT
#endif

/* Helpers inlined into each clone, so they are compiled for its instruction set too. */
#if defined(__GNUC__)
#define ALWAYS_INLINE __attribute__((always_inline))
#else
#define ALWAYS_INLINE
#endif

#define TILE 512 /* elements per tile: a few KiB of fp32 accumulators stay in L1 */

/* ------------------------------------------------------------------ conversions */

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* fp32 -> bf16, round to nearest even. No NaN test: every NaN these kernels meet has zero low
 * 16 bits (widened from bf16, or made by x86 arithmetic, which writes the default NaN
 * 0xFFC00000 or propagates an operand's payload), so rounding adds no carry and keeps it a
 * NaN. Dropping the select made the GTA kernels ~30% faster. */
static inline uint16_t rne16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* IEEE half precision (fp16) in portable C: bit arithmetic with selects rather than branches,
 * so the generic kernels vectorize (still ~8x slower than bf16's shifts; x86 CPUs with F16C
 * get the vector kernels further down). Both directions are exact IEEE conversions, round to
 * nearest even as torch converts; a NaN stays a NaN (its payload may differ from torch's
 * canonical 0x7E00). */
#define HAVE_F16 1 /* always (plain C); exported so Python can tell this build from an older one */

ALWAYS_INLINE static inline float f16_to_f32(uint16_t h) {
    uint32_t em = h & 0x7FFFu;
    uint32_t normal = (em << 13) + (112u << 23); /* rebias the exponent: 127 - 15 */
    uint32_t infnan = (em << 13) | 0x7F800000u;
    float sub = (float)em * 5.9604644775390625e-8f; /* subnormal or zero: em * 2^-24, exact */
    uint32_t subu;
    memcpy(&subu, &sub, 4);
    uint32_t u = em >= 0x7C00u ? infnan : (em < 0x400u ? subu : normal);
    u |= (uint32_t)(h & 0x8000u) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

ALWAYS_INLINE static inline uint16_t rne_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = u & 0x80000000u;
    u ^= sign;
    /* inf or NaN, or too large for fp16 (>= 2^16) */
    uint32_t big = u > 0x7F800000u ? 0x7E00u : 0x7C00u;
    /* subnormal or zero result (< 2^-14): add 0.5 to align the 10 result bits at the bottom,
     * the float addition rounding them to nearest even, then drop the magic's bits */
    float a;
    memcpy(&a, &u, 4);
    a += 0.5f;
    uint32_t au;
    memcpy(&au, &a, 4);
    uint32_t small = au - 0x3F000000u;
    /* normal: rebias, round to nearest even on the 13 dropped bits (a carry may make it inf) */
    uint32_t normal = (u + 0xC8000FFFu + ((u >> 13) & 1u)) >> 13;
    uint32_t r = u >= 0x47800000u ? big : (u < 0x38800000u ? small : normal);
    return (uint16_t)(r | (sign >> 16));
}

static float f16_table[65536];

static void init_f16_table(void) {
    for (uint32_t h = 0; h < 65536; h++) {
        uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
        float f;
        if (exp == 0) {
            f = ldexpf((float)man, -24); /* zero or subnormal: exact */
            uint32_t u;
            memcpy(&u, &f, 4);
            u |= sign;
            memcpy(&f, &u, 4);
        } else {
            uint32_t u = exp == 31 ? (sign | 0x7F800000u | (man << 13))
                                   : (sign | ((exp + 112u) << 23) | (man << 13));
            memcpy(&f, &u, 4);
        }
        f16_table[h] = f;
    }
}

/* ------------------------------------------------------------------ buffers */

typedef struct {
    Py_buffer view;
    int held;
} Buf;

static void release(Buf *b) {
    if (b->held) PyBuffer_Release(&b->view);
    b->held = 0;
}

static int get_buf(PyObject *obj, Buf *b, int writable, Py_ssize_t itemsize, const char *what) {
    b->held = 0;
    if (PyObject_GetBuffer(obj, &b->view, (writable ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS) <
        0)
        return -1;
    b->held = 1;
    if (b->view.len % itemsize != 0) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes is not a whole number of %zd-byte items",
                     what, b->view.len, itemsize);
        release(b);
        return -1;
    }
    return 0;
}

/* A Python sequence of buffers of the same length, as an array of pointers. */
typedef struct {
    Py_ssize_t n;
    Buf *bufs;
    const uint16_t **ptrs;
} BufList;

static void release_list(BufList *l) {
    if (l->bufs) {
        for (Py_ssize_t i = 0; i < l->n; i++) release(&l->bufs[i]);
        PyMem_Free(l->bufs);
    }
    PyMem_Free((void *)l->ptrs);
    l->bufs = NULL;
    l->ptrs = NULL;
}

static int get_list(PyObject *seq, BufList *l, Py_ssize_t len, const char *what) {
    l->bufs = NULL;
    l->ptrs = NULL;
    PyObject *fast = PySequence_Fast(seq, "expected a sequence of buffers");
    if (!fast) return -1;
    l->n = PySequence_Fast_GET_SIZE(fast);
    l->bufs = PyMem_Calloc(l->n ? l->n : 1, sizeof(Buf));
    l->ptrs = PyMem_Calloc(l->n ? l->n : 1, sizeof(uint16_t *));
    if (!l->bufs || !l->ptrs) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < l->n; i++) {
        if (get_buf(PySequence_Fast_GET_ITEM(fast, i), &l->bufs[i], 0, 2, what) < 0) {
            Py_DECREF(fast);
            return -1;
        }
        if (l->bufs[i].view.len != len) {
            Py_DECREF(fast);
            PyErr_Format(PyExc_ValueError, "%s: buffers of different lengths", what);
            return -1;
        }
        l->ptrs[i] = l->bufs[i].view.buf;
    }
    Py_DECREF(fast);
    return 0;
}

static int get_floats(PyObject *seq, float *out, Py_ssize_t n) {
    PyObject *fast = PySequence_Fast(seq, "expected a sequence of floats");
    if (!fast) return -1;
    if (PySequence_Fast_GET_SIZE(fast) != n) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "one weight per input");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        double d = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(fast, i));
        if (d == -1.0 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
        out[i] = (float)d;
    }
    Py_DECREF(fast);
    return 0;
}

/* ------------------------------------------------------------------ bf16 GTA kernels */

#define K16(name) name##_bf16
#define TO_F32 bf16_to_f32
#define ROUND rne16
#include "_native_gta16.h"
#undef K16
#undef TO_F32
#undef ROUND

#define K16(name) name##_f16
#define TO_F32 f16_to_f32
#define ROUND rne_f16
#include "_native_gta16.h"
#undef K16
#undef TO_F32
#undef ROUND

/* fp16 task arithmetic and linear with AVX2 + F16C, eight elements at a time: the generic
 * versions above convert by bit arithmetic (GCC does not vectorize _Float16 conversions),
 * about 8x slower than the bf16 kernels. The same operations in the same order; vcvtps2ph
 * rounds to nearest even, as torch does. Picked at run time (have_f16c). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define F16C_TARGET __attribute__((target("avx2,fma,f16c")))
#define RNE_PH (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

static int have_f16c = 0;

F16C_TARGET static inline __m256 load8_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

F16C_TARGET static inline __m256 round8_f16(__m256 v) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, RNE_PH));
}

F16C_TARGET static inline float round1_f16(float v) {
    return _cvtsh_ss(_cvtss_sh(v, RNE_PH));
}

/* gta_sum_f16 (see _native_gta16.h), vectorized. */
F16C_TARGET static void gta_sum_f16c(uint16_t *out, const uint16_t *base, const uint16_t **xs,
                                     Py_ssize_t k, const float *w, int deltas, Py_ssize_t n,
                                     float divisor, int normalize, float lam, int has_lam) {
    float acc[TILE], bf[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE, v = m & ~(Py_ssize_t)7;
        const uint16_t *b = base + s;
        for (Py_ssize_t j = 0; j < v; j += 8) {
            _mm256_storeu_ps(acc + j, _mm256_setzero_ps());
            _mm256_storeu_ps(bf + j, load8_f16(b + j));
        }
        for (Py_ssize_t j = v; j < m; j++) acc[j] = 0.0f, bf[j] = _cvtsh_ss(b[j]);
        for (Py_ssize_t i = 0; i < k; i++) {
            const uint16_t *x = xs[i] + s;
            const __m256 wv = _mm256_set1_ps(w[i]);
            for (Py_ssize_t j = 0; j < v; j += 8) {
                __m256 d = load8_f16(x + j);
                if (!deltas) d = round8_f16(_mm256_sub_ps(d, _mm256_loadu_ps(bf + j)));
                __m256 t = round8_f16(_mm256_mul_ps(d, wv));
                _mm256_storeu_ps(acc + j, _mm256_add_ps(_mm256_loadu_ps(acc + j), t));
            }
            for (Py_ssize_t j = v; j < m; j++) {
                float d = _cvtsh_ss(x[j]);
                if (!deltas) d = round1_f16(d - bf[j]);
                acc[j] += round1_f16(d * w[i]);
            }
        }
        const __m256 dv = _mm256_set1_ps(divisor), lv = _mm256_set1_ps(lam);
        for (Py_ssize_t j = 0; j < v; j += 8) {
            __m256 r = round8_f16(_mm256_loadu_ps(acc + j));
            if (normalize) r = round8_f16(_mm256_div_ps(r, dv));
            if (has_lam) r = round8_f16(_mm256_mul_ps(r, lv));
            __m128i o = _mm256_cvtps_ph(_mm256_add_ps(_mm256_loadu_ps(bf + j), r), RNE_PH);
            _mm_storeu_si128((__m128i *)(out + s + j), o);
        }
        for (Py_ssize_t j = v; j < m; j++) {
            float r = round1_f16(acc[j]);
            if (normalize) r = round1_f16(r / divisor);
            if (has_lam) r = round1_f16(r * lam);
            out[s + j] = _cvtss_sh(bf[j] + r, RNE_PH);
        }
    }
}

/* gta_consensus_f16 (see _native_gta16.h), vectorized. */
F16C_TARGET static void gta_consensus_f16c(uint16_t *out, const uint16_t *base,
                                           const uint16_t **ds, Py_ssize_t k, const float *w,
                                           Py_ssize_t n, int normalize, float lam, int has_lam) {
    float vote[TILE], merged[TILE], divisor[TILE];
    const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
    const __m256 minus = _mm256_set1_ps(-1.0f);
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE, v = m & ~(Py_ssize_t)7;
        for (Py_ssize_t i = 0; i < k; i++) {
            const uint16_t *d = ds[i] + s;
            const __m256 wv = _mm256_set1_ps(w[i]);
            for (Py_ssize_t j = 0; j < v; j += 8) {
                __m256 D = round8_f16(_mm256_mul_ps(load8_f16(d + j), wv));
                _mm256_storeu_ps(vote + j, i ? _mm256_add_ps(_mm256_loadu_ps(vote + j), D) : D);
            }
            for (Py_ssize_t j = v; j < m; j++) {
                float D = round1_f16(_cvtsh_ss(d[j]) * w[i]);
                vote[j] = i ? vote[j] + D : D;
            }
        }
        for (Py_ssize_t j = 0; j < v; j += 8) {
            __m256 ge = _mm256_cmp_ps(round8_f16(_mm256_loadu_ps(vote + j)), zero, _CMP_GE_OQ);
            _mm256_storeu_ps(vote + j, _mm256_blendv_ps(minus, one, ge));
            _mm256_storeu_ps(merged + j, zero);
            _mm256_storeu_ps(divisor + j, zero);
        }
        for (Py_ssize_t j = v; j < m; j++) {
            vote[j] = round1_f16(vote[j]) >= 0.0f ? 1.0f : -1.0f;
            merged[j] = divisor[j] = 0.0f;
        }
        for (Py_ssize_t i = 0; i < k; i++) {
            const uint16_t *d = ds[i] + s;
            const __m256 wv = _mm256_set1_ps(w[i]);
            for (Py_ssize_t j = 0; j < v; j += 8) {
                __m256 D = round8_f16(_mm256_mul_ps(load8_f16(d + j), wv));
                __m256 gt = _mm256_cmp_ps(_mm256_mul_ps(D, _mm256_loadu_ps(vote + j)), zero,
                                          _CMP_GT_OQ);
                __m256 agree = _mm256_and_ps(gt, one);
                _mm256_storeu_ps(merged + j,
                                 _mm256_add_ps(_mm256_loadu_ps(merged + j), _mm256_mul_ps(D, agree)));
                _mm256_storeu_ps(divisor + j, _mm256_add_ps(_mm256_loadu_ps(divisor + j),
                                                            _mm256_mul_ps(agree, wv)));
            }
            for (Py_ssize_t j = v; j < m; j++) {
                float D = round1_f16(_cvtsh_ss(d[j]) * w[i]);
                float agree = (D * vote[j]) > 0.0f ? 1.0f : 0.0f;
                merged[j] += D * agree;
                divisor[j] += agree * w[i];
            }
        }
        const __m256 lv = _mm256_set1_ps(lam);
        const uint16_t *b = base + s;
        for (Py_ssize_t j = 0; j < v; j += 8) {
            __m256 r = round8_f16(_mm256_loadu_ps(merged + j));
            if (normalize) {
                __m256 dv = round8_f16(_mm256_loadu_ps(divisor + j));
                dv = _mm256_blendv_ps(dv, one, _mm256_cmp_ps(dv, zero, _CMP_EQ_OQ));
                r = round8_f16(_mm256_div_ps(r, dv));
            }
            if (has_lam) r = round8_f16(_mm256_mul_ps(r, lv));
            __m128i o = _mm256_cvtps_ph(_mm256_add_ps(load8_f16(b + j), r), RNE_PH);
            _mm_storeu_si128((__m128i *)(out + s + j), o);
        }
        for (Py_ssize_t j = v; j < m; j++) {
            float r = round1_f16(merged[j]);
            if (normalize) {
                float dv = round1_f16(divisor[j]);
                r = round1_f16(r / (dv == 0.0f ? 1.0f : dv));
            }
            if (has_lam) r = round1_f16(r * lam);
            out[s + j] = _cvtss_sh(_cvtsh_ss(b[j]) + r, RNE_PH);
        }
    }
}

/* out = x - base rounded to fp16 (sub_hist16's first step), vectorized. */
F16C_TARGET static void sub_f16c(uint16_t *out, const uint16_t *x, const uint16_t *b,
                                 Py_ssize_t m) {
    Py_ssize_t v = m & ~(Py_ssize_t)7;
    for (Py_ssize_t j = 0; j < v; j += 8) {
        __m256 d = _mm256_sub_ps(load8_f16(x + j), load8_f16(b + j));
        _mm_storeu_si128((__m128i *)(out + j), _mm256_cvtps_ph(d, RNE_PH));
    }
    for (Py_ssize_t j = v; j < m; j++) out[j] = _cvtss_sh(_cvtsh_ss(x[j]) - _cvtsh_ss(b[j]), RNE_PH);
}

/* linear_f16 (see _native_gta16.h), vectorized. */
F16C_TARGET static void linear_f16c(uint16_t *out, const uint16_t **xs, Py_ssize_t k,
                                    const float *w, Py_ssize_t n, int normalize, float wsum) {
    float acc[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE, v = m & ~(Py_ssize_t)7;
        for (Py_ssize_t j = 0; j < m; j++) acc[j] = 0.0f;
        for (Py_ssize_t i = 0; i < k; i++) {
            const uint16_t *x = xs[i] + s;
            const __m256 wv = _mm256_set1_ps(w[i]);
            for (Py_ssize_t j = 0; j < v; j += 8)
                _mm256_storeu_ps(acc + j,
                                 _mm256_fmadd_ps(load8_f16(x + j), wv, _mm256_loadu_ps(acc + j)));
            for (Py_ssize_t j = v; j < m; j++) acc[j] = fmaf(_cvtsh_ss(x[j]), w[i], acc[j]);
        }
        const __m256 sv = _mm256_set1_ps(wsum);
        for (Py_ssize_t j = 0; j < v; j += 8) {
            __m256 a = _mm256_loadu_ps(acc + j);
            if (normalize) a = _mm256_div_ps(a, sv);
            _mm_storeu_si128((__m128i *)(out + s + j), _mm256_cvtps_ph(a, RNE_PH));
        }
        for (Py_ssize_t j = v; j < m; j++)
            out[s + j] = _cvtss_sh(normalize ? acc[j] / wsum : acc[j], RNE_PH);
    }
}
#define HAVE_F16C_KERNELS 1
#else
#define HAVE_F16C_KERNELS 0
#endif

/* The buffers both GTA kernels take: out, base, one array per input, and the weights. */
typedef struct {
    Buf out, base;
    BufList xs;
    float *w;
} GtaArgs;

static void gta_release(GtaArgs *g) {
    PyMem_Free(g->w);
    g->w = NULL;
    release_list(&g->xs);
    release(&g->base);
    release(&g->out);
}

static int gta_acquire(GtaArgs *g, PyObject *out_o, PyObject *base_o, PyObject *xs_o,
                       PyObject *w_o) {
    memset(g, 0, sizeof *g);
    if (get_buf(out_o, &g->out, 1, 2, "out") < 0 || get_buf(base_o, &g->base, 0, 2, "base") < 0)
        goto fail;
    if (g->base.view.len != g->out.view.len) {
        PyErr_SetString(PyExc_ValueError, "base and out differ in length");
        goto fail;
    }
    if (get_list(xs_o, &g->xs, g->out.view.len, "inputs") < 0) goto fail;
    g->w = PyMem_Calloc(g->xs.n ? g->xs.n : 1, sizeof(float));
    if (!g->w) {
        PyErr_NoMemory();
        goto fail;
    }
    if (get_floats(w_o, g->w, g->xs.n) < 0) goto fail;
    return 0;
fail:
    gta_release(g);
    return -1;
}

static PyObject *py_gta_sum_bf16(PyObject *self, PyObject *args) {
    PyObject *out_o, *base_o, *xs_o, *w_o;
    int deltas, normalize, has_lam, f16 = 0;
    double divisor, lam;
    GtaArgs g;
    if (!PyArg_ParseTuple(args, "OOOOpdpdp|p", &out_o, &base_o, &xs_o, &w_o, &deltas, &divisor,
                          &normalize, &lam, &has_lam, &f16) ||
        gta_acquire(&g, out_o, base_o, xs_o, w_o) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
#if HAVE_F16C_KERNELS
    if (f16 && have_f16c)
        gta_sum_f16c(g.out.view.buf, g.base.view.buf, g.xs.ptrs, g.xs.n, g.w, deltas,
                     g.out.view.len / 2, (float)divisor, normalize, (float)lam, has_lam);
    else
#endif
    if (f16)
        gta_sum_f16(g.out.view.buf, g.base.view.buf, g.xs.ptrs, g.xs.n, g.w, deltas,
                    g.out.view.len / 2, (float)divisor, normalize, (float)lam, has_lam);
    else
        gta_sum_bf16(g.out.view.buf, g.base.view.buf, g.xs.ptrs, g.xs.n, g.w, deltas,
                     g.out.view.len / 2, (float)divisor, normalize, (float)lam, has_lam);
    Py_END_ALLOW_THREADS
    gta_release(&g);
    Py_RETURN_NONE;
}

static PyObject *py_gta_consensus_bf16(PyObject *self, PyObject *args) {
    PyObject *out_o, *base_o, *ds_o, *w_o;
    int normalize, has_lam, f16 = 0;
    double lam;
    GtaArgs g;
    if (!PyArg_ParseTuple(args, "OOOOpdp|p", &out_o, &base_o, &ds_o, &w_o, &normalize, &lam,
                          &has_lam, &f16) ||
        gta_acquire(&g, out_o, base_o, ds_o, w_o) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
#if HAVE_F16C_KERNELS
    if (f16 && have_f16c)
        gta_consensus_f16c(g.out.view.buf, g.base.view.buf, g.xs.ptrs, g.xs.n, g.w,
                           g.out.view.len / 2, normalize, (float)lam, has_lam);
    else
#endif
    if (f16)
        gta_consensus_f16(g.out.view.buf, g.base.view.buf, g.xs.ptrs, g.xs.n, g.w,
                          g.out.view.len / 2, normalize, (float)lam, has_lam);
    else
        gta_consensus_bf16(g.out.view.buf, g.base.view.buf, g.xs.ptrs, g.xs.n, g.w,
                           g.out.view.len / 2, normalize, (float)lam, has_lam);
    Py_END_ALLOW_THREADS
    gta_release(&g);
    Py_RETURN_NONE;
}

static PyObject *py_linear_bf16(PyObject *self, PyObject *args) {
    PyObject *out_o, *xs_o, *w_o;
    int normalize, f16 = 0;
    double wsum;
    if (!PyArg_ParseTuple(args, "OOOpd|p", &out_o, &xs_o, &w_o, &normalize, &wsum, &f16))
        return NULL;
    Buf out;
    BufList xs = {0};
    float *w = NULL;
    PyObject *ret = NULL;
    if (get_buf(out_o, &out, 1, 2, "out") < 0) return NULL;
    if (get_list(xs_o, &xs, out.view.len, "inputs") < 0) goto done;
    w = PyMem_Calloc(xs.n ? xs.n : 1, sizeof(float));
    if (!w || get_floats(w_o, w, xs.n) < 0) goto done;
    Py_BEGIN_ALLOW_THREADS
#if HAVE_F16C_KERNELS
    if (f16 && have_f16c)
        linear_f16c(out.view.buf, xs.ptrs, xs.n, w, out.view.len / 2, normalize, (float)wsum);
    else
#endif
    if (f16)
        linear_f16(out.view.buf, xs.ptrs, xs.n, w, out.view.len / 2, normalize, (float)wsum);
    else
        linear_bf16(out.view.buf, xs.ptrs, xs.n, w, out.view.len / 2, normalize, (float)wsum);
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyMem_Free(w);
    release_list(&xs);
    release(&out);
    return ret;
}

/* ------------------------------------------------------------------ 16-bit rank cuts */

/* out = x - base rounded to bf16 (or fp16 with f16), and hist[|out| bits] += 1 over the 15
 * magnitude bits. Two interleaved 32-bit histograms per tile, so runs of equal bins do not
 * serialize on one counter. */
HOT static int sub_hist16(uint16_t *out, const uint16_t *x, const uint16_t *b, Py_ssize_t n,
                          int64_t *hist, int f16) {
    uint32_t *h = calloc(2 * 32768, sizeof(uint32_t));
    if (!h) return -1;
    uint32_t *h0 = h, *h1 = h + 32768;
    Py_ssize_t since_flush = 0;
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        uint16_t *o = out + s;
        if (!f16)
            for (Py_ssize_t j = 0; j < m; j++)
                o[j] = rne16(bf16_to_f32(x[s + j]) - bf16_to_f32(b[s + j]));
#if HAVE_F16C_KERNELS
        else if (have_f16c)
            sub_f16c(o, x + s, b + s, m);
#endif
        else
            for (Py_ssize_t j = 0; j < m; j++)
                o[j] = rne_f16(f16_to_f32(x[s + j]) - f16_to_f32(b[s + j]));
        Py_ssize_t j = 0;
        for (; j + 2 <= m; j += 2) {
            h0[o[j] & 0x7FFF]++;
            h1[o[j + 1] & 0x7FFF]++;
        }
        for (; j < m; j++) h0[o[j] & 0x7FFF]++;
        since_flush += m;
        if (since_flush > ((Py_ssize_t)1 << 30) || s + TILE >= n) { /* no 32-bit overflow */
            for (int k = 0; k < 32768; k++) {
                hist[k] += (int64_t)h0[k] + h1[k];
                h0[k] = h1[k] = 0;
            }
            since_flush = 0;
        }
    }
    free(h);
    return 0;
}

static PyObject *py_sub_hist_bf16(PyObject *self, PyObject *args) {
    PyObject *out_o, *x_o, *b_o, *h_o;
    int f16 = 0;
    if (!PyArg_ParseTuple(args, "OOOO|p", &out_o, &x_o, &b_o, &h_o, &f16)) return NULL;
    Buf out, x, b, h;
    PyObject *ret = NULL;
    if (get_buf(out_o, &out, 1, 2, "out") < 0) return NULL;
    if (get_buf(x_o, &x, 0, 2, "x") < 0) goto d1;
    if (get_buf(b_o, &b, 0, 2, "base") < 0) goto d2;
    if (get_buf(h_o, &h, 1, 8, "hist") < 0) goto d3;
    if (x.view.len != out.view.len || b.view.len != out.view.len || h.view.len != 8 * 32768) {
        PyErr_SetString(PyExc_ValueError, "sub_hist_bf16: lengths do not match");
        goto d4;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = sub_hist16(out.view.buf, x.view.buf, b.view.buf, out.view.len / 2, h.view.buf, f16);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        PyErr_NoMemory();
        goto d4;
    }
    ret = Py_None;
    Py_INCREF(ret);
d4:
    release(&h);
d3:
    release(&b);
d2:
    release(&x);
d1:
    release(&out);
    return ret;
}

/* Index of the need-th (1-based) element of p whose magnitude bits equal v; -1 if fewer.
 * Counts whole runs of 4096 first (a vectorized loop), then scans the run holding it. */
HOT static Py_ssize_t nth_equal16(const uint16_t *p, Py_ssize_t n, uint16_t v, Py_ssize_t need) {
    if (need <= 0) return -1;
    Py_ssize_t seen = 0;
    for (Py_ssize_t s = 0; s < n; s += 4096) {
        Py_ssize_t m = n - s < 4096 ? n - s : 4096, c = 0;
        for (Py_ssize_t j = 0; j < m; j++) c += (p[s + j] & 0x7FFF) == v;
        if (seen + c < need) {
            seen += c;
            continue;
        }
        for (Py_ssize_t j = 0; j < m; j++)
            if ((p[s + j] & 0x7FFF) == v && ++seen == need) return s + j;
    }
    return -1;
}

/* Index of the need-th (1-based) element whose magnitude bits equal v; -1 if fewer. */
static PyObject *py_nth_equal16(PyObject *self, PyObject *args) {
    PyObject *o;
    unsigned int v;
    Py_ssize_t need;
    if (!PyArg_ParseTuple(args, "OIn", &o, &v, &need)) return NULL;
    Buf a;
    if (get_buf(o, &a, 0, 2, "bits") < 0) return NULL;
    const uint16_t *p = a.view.buf;
    Py_ssize_t n = a.view.len / 2, found;
    Py_BEGIN_ALLOW_THREADS
    found = nth_equal16(p, n, (uint16_t)v, need);
    Py_END_ALLOW_THREADS
    release(&a);
    return PyLong_FromSsize_t(found);
}

/* A cut: mode 0 keeps nothing, 1 everything, 2 the largest (bits > v, or == v before `last`),
 * 3 the smallest (bits < v, or == v before `last`); `last` is a flat index.
 * Between breakpoints a cut is a range of magnitude bits [lo, hi]: */
static void cut_range(int mode, int v, int ties_in, int *lo, int *hi) {
    switch (mode) {
        case 0: *lo = 1, *hi = 0; break;
        case 1: *lo = 0, *hi = 0xFFFF; break;
        case 2: *lo = ties_in ? v : v + 1, *hi = 0xFFFF; break;
        default: *lo = 0, *hi = ties_in ? v : v - 1; break;
    }
}

/* Multiply by 0 the elements with magnitude bits outside [lo1, hi1] or inside [lo2, hi2]: a
 * signed zero, or NaN for an infinity or NaN (as delta * mask does): bf16's (inf 0x7F80,
 * NaN 0x7FC0) or with f16 fp16's (0x7C00, 0x7E00). */
HOT static void zero_outside(uint16_t *d, Py_ssize_t n, int lo1, int hi1, int lo2, int hi2,
                             int f16) {
    const int inf = f16 ? 0x7C00 : 0x7F80;
    const uint16_t nan = f16 ? 0x7E00 : 0x7FC0;
    for (Py_ssize_t j = 0; j < n; j++) {
        int bits = d[j] & 0x7FFF;
        int keep = (bits >= lo1) & (bits <= hi1) & !((bits >= lo2) & (bits <= hi2));
        uint16_t dropped = bits >= inf ? nan : (uint16_t)(d[j] & 0x8000);
        d[j] = keep ? d[j] : dropped;
    }
}

/* Multiply by 0 every element of the flat tensor `data` that is not in cut 1, or is in cut 2
 * when mode2 >= 0 (bf16, or fp16 with f16). */
static void apply_cuts16(uint16_t *data, Py_ssize_t n, int m1, int v1, Py_ssize_t l1, int m2,
                         int v2, Py_ssize_t l2, int f16) {
    /* breakpoints where a cut stops taking its ties */
    Py_ssize_t b1 = l1 < 0 ? 0 : (l1 > n ? n : l1);
    Py_ssize_t b2 = m2 < 0 ? 0 : (l2 < 0 ? 0 : (l2 > n ? n : l2));
    Py_ssize_t cuts[4] = {0, b1 < b2 ? b1 : b2, b1 < b2 ? b2 : b1, n};
    for (int seg = 0; seg < 3; seg++) {
        Py_ssize_t s = cuts[seg], e = cuts[seg + 1];
        if (e <= s) continue;
        int lo1, hi1, lo2 = 1, hi2 = 0;
        cut_range(m1, v1, s < b1, &lo1, &hi1);
        if (m2 >= 0) cut_range(m2, v2, s < b2, &lo2, &hi2);
        zero_outside(data + s, e - s, lo1, hi1, lo2, hi2, f16);
    }
}

static PyObject *py_apply_cuts16(PyObject *self, PyObject *args) {
    PyObject *o;
    Py_ssize_t l1, l2;
    int m1, m2, f16 = 0;
    unsigned int v1, v2;
    if (!PyArg_ParseTuple(args, "OiIniIn|p", &o, &m1, &v1, &l1, &m2, &v2, &l2, &f16))
        return NULL;
    Buf a;
    if (get_buf(o, &a, 1, 2, "data") < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    apply_cuts16(a.view.buf, a.view.len / 2, m1, (int)v1, l1, m2, (int)v2, l2, f16);
    Py_END_ALLOW_THREADS
    release(&a);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ row ranks */

/* The stable ascending order of one row's magnitudes (bf16 bits, sign ignored; NaNs equal to
 * each other and above +inf): order[t] is the column of the t-th smallest, ties by column.
 * Two stable counting passes over the key bytes; `key` and `tmp` are scratch of cols. */
static inline void stable_order16(const uint16_t *m, Py_ssize_t cols, uint16_t *key,
                                  uint32_t *tmp, uint32_t *order) {
    Py_ssize_t lo[256] = {0}, hi[256] = {0};
    for (Py_ssize_t j = 0; j < cols; j++) {
        uint16_t k = m[j] & 0x7FFF;
        key[j] = k > 0x7F80 ? 0x7F81 : k; /* every NaN the same key, above inf */
        lo[key[j] & 0xFF]++;
        hi[key[j] >> 8]++;
    }
    Py_ssize_t sl = 0, sh = 0;
    for (int v = 0; v < 256; v++) {
        Py_ssize_t cl = lo[v], ch = hi[v];
        lo[v] = sl, hi[v] = sh;
        sl += cl, sh += ch;
    }
    for (Py_ssize_t j = 0; j < cols; j++) tmp[lo[key[j] & 0xFF]++] = (uint32_t)j;
    for (Py_ssize_t t = 0; t < cols; t++) order[hi[key[tmp[t]] >> 8]++] = tmp[t];
}

/* 1-based ascending ranks within each row of |delta| (bf16 magnitude bits, cols per row),
 * ties by index (a stable sort), as della's `torch.sort(stable=True)` gives them; NaNs rank
 * above +inf and equal to each other. */
HOT static int row_ranks_bf16(const uint16_t *mag, Py_ssize_t rows, Py_ssize_t cols,
                              int64_t *out, uint16_t *out16) {
    uint16_t *key = malloc((size_t)cols * sizeof(uint16_t));
    uint32_t *a = malloc((size_t)cols * sizeof(uint32_t));
    uint32_t *b = malloc((size_t)cols * sizeof(uint32_t));
    if (!key || !a || !b) {
        free(key), free(a), free(b);
        return -1;
    }
    for (Py_ssize_t r = 0; r < rows; r++) {
        stable_order16(mag + r * cols, cols, key, a, b);
        if (out16) { /* the rank as torch's int64 -> bf16 conversion gives it */
            uint16_t *o = out16 + r * cols;
            for (Py_ssize_t t = 0; t < cols; t++) o[b[t]] = rne16((float)(t + 1));
        } else {
            int64_t *o = out + r * cols;
            for (Py_ssize_t t = 0; t < cols; t++) o[b[t]] = t + 1;
        }
    }
    free(key), free(a), free(b);
    return 0;
}

/* della's keep-probabilities (sparsify.della_magprune, bf16 work dtype) straight from the
 * magnitudes: per row, rank r (as bf16), lo = min rank = 1, hi = max rank = bf16(cols),
 * q = clamp((r - lo) / (hi - lo), 0, 1), p = base_p + (q * 2) * eps, every operation rounded
 * to bf16 as torch rounds it. torch multiplies a bf16 tensor by a Python float taken as an
 * fp32 scalar, but adds one rounded to bf16 first (`float + tensor`; measured, both
 * checked against torch by tests/test_native.py). p depends only on the rank, so it is
 * computed once per rank and scattered to each row's columns in rank order. */
HOT static int della_probs_bf16(const uint16_t *mag, Py_ssize_t rows, Py_ssize_t cols,
                                float base_p, float eps, uint16_t *out) {
    uint16_t *key = malloc((size_t)cols * sizeof(uint16_t));
    uint32_t *a = malloc((size_t)cols * sizeof(uint32_t));
    uint32_t *b = malloc((size_t)cols * sizeof(uint32_t));
    uint16_t *by_rank = malloc((size_t)cols * sizeof(uint16_t));
    if (!key || !a || !b || !by_rank) {
        free(key), free(a), free(b), free(by_rank);
        return -1;
    }
    const float lo = bf16_to_f32(rne16(1.0f));
    const float hi = bf16_to_f32(rne16((float)cols));
    const float span = bf16_to_f32(rne16(hi - lo));
    const float base16 = bf16_to_f32(rne16(base_p));
    for (Py_ssize_t t = 0; t < cols; t++) {
        float r = bf16_to_f32(rne16((float)(t + 1)));
        float q = bf16_to_f32(rne16(bf16_to_f32(rne16(r - lo)) / span));
        if (q == q) q = q < 0.0f ? 0.0f : (q > 1.0f ? 1.0f : q); /* clamp keeps a NaN */
        float s = bf16_to_f32(rne16(q * 2.0f));
        float w = bf16_to_f32(rne16(s * eps));
        by_rank[t] = rne16(base16 + w);
    }
    for (Py_ssize_t r = 0; r < rows; r++) {
        stable_order16(mag + r * cols, cols, key, a, b);
        uint16_t *o = out + r * cols;
        for (Py_ssize_t t = 0; t < cols; t++) o[b[t]] = by_rank[t];
    }
    free(key), free(a), free(b), free(by_rank);
    return 0;
}

/* The buffers of a per-row kernel: rows x cols 16-bit magnitudes, and an output of `size`
 * bytes per element; both acquired and checked against the shape, or an exception set. */
static int get_rows(PyObject *m_o, PyObject *out_o, Py_ssize_t rows, Py_ssize_t cols,
                    Py_ssize_t size, const char *name, Buf *m, Buf *out) {
    if (rows < 0 || cols < 0 || cols > 0xFFFFFFFFLL) {
        PyErr_Format(PyExc_ValueError, "%s: bad shape", name);
        return -1;
    }
    if (get_buf(m_o, m, 0, 2, "magnitudes") < 0) return -1;
    if (get_buf(out_o, out, 1, size, "out") < 0) {
        release(m);
        return -1;
    }
    if (m->view.len != 2 * rows * cols || out->view.len != size * rows * cols) {
        PyErr_Format(PyExc_ValueError, "%s: buffers do not match the shape", name);
        release(out);
        release(m);
        return -1;
    }
    return 0;
}

static PyObject *py_della_probs_bf16(PyObject *self, PyObject *args) {
    PyObject *m_o, *out_o;
    Py_ssize_t rows, cols;
    double base_p, eps;
    Buf m, out;
    if (!PyArg_ParseTuple(args, "OOnndd", &m_o, &out_o, &rows, &cols, &base_p, &eps) ||
        get_rows(m_o, out_o, rows, cols, 2, "della_probs_bf16", &m, &out) < 0)
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = della_probs_bf16(m.view.buf, rows, cols, (float)base_p, (float)eps, out.view.buf);
    Py_END_ALLOW_THREADS
    release(&out);
    release(&m);
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_row_ranks_bf16(PyObject *self, PyObject *args) {
    PyObject *m_o, *out_o;
    Py_ssize_t rows, cols;
    int as_bf16 = 0;
    Buf m, out;
    if (!PyArg_ParseTuple(args, "OOnn|p", &m_o, &out_o, &rows, &cols, &as_bf16) ||
        get_rows(m_o, out_o, rows, cols, as_bf16 ? 2 : 8, "row_ranks_bf16", &m, &out) < 0)
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = row_ranks_bf16(m.view.buf, rows, cols, as_bf16 ? NULL : out.view.buf,
                        as_bf16 ? out.view.buf : NULL);
    Py_END_ALLOW_THREADS
    release(&out);
    release(&m);
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ drop masks */

/* Philox4x64-10 (Salmon et al., Random123), the generator numpy.random.Philox runs. */
static inline uint64_t mulhilo64(uint64_t a, uint64_t b, uint64_t *hi) {
    __uint128_t p = (__uint128_t)a * b;
    *hi = (uint64_t)(p >> 64);
    return (uint64_t)p;
}

/* LANES blocks at once: the rounds of one block are a chain of dependent multiplies, so
 * independent blocks side by side keep the multiplier busy (about 4x the throughput). */
#define PHILOX_LANES 8

static inline void philox4x64_10_lanes(uint64_t c0[PHILOX_LANES], uint64_t c1[PHILOX_LANES],
                                       uint64_t c2[PHILOX_LANES], uint64_t c3[PHILOX_LANES],
                                       uint64_t k0, uint64_t k1) {
    for (int r = 0; r < 10; r++) {
        if (r > 0) {
            k0 += 0x9E3779B97F4A7C15ULL;
            k1 += 0xBB67AE8584CAA73BULL;
        }
        for (int l = 0; l < PHILOX_LANES; l++) {
            uint64_t hi0, hi1;
            uint64_t lo0 = mulhilo64(0xD2E7470EE14C6C93ULL, c0[l], &hi0);
            uint64_t lo1 = mulhilo64(0xCA5A826395121157ULL, c2[l], &hi1);
            uint64_t n0 = hi1 ^ c1[l] ^ k0, n2 = hi0 ^ c3[l] ^ k1;
            c0[l] = n0;
            c1[l] = lo1;
            c2[l] = n2;
            c3[l] = lo0;
        }
    }
}

/* keep[j] = u_j < p_j, 1 or 0 in p's dtype (bf16 or fp32), where u is the stream
 * numpy.random.Generator(numpy.random.Philox(key=k)).random(n, dtype=float32) draws: the
 * counter starts at 0 and is incremented before each block of four 64-bit outputs; each output
 * gives two 32-bit words, low half first; u = (word >> 8) * 2^-24. */
HOT static void philox_keep(void *out, const void *probs, int one_p, Py_ssize_t n, int bf16,
                            uint64_t k0, uint64_t k1) {
    /* one_p: `probs` holds a single probability for every element (dare's density) */
    const Py_ssize_t per = 8 * PHILOX_LANES; /* floats per round of lanes */
    uint64_t ctr[4] = {0, 0, 0, 0};
    uint64_t c0[PHILOX_LANES], c1[PHILOX_LANES], c2[PHILOX_LANES], c3[PHILOX_LANES];
    float u[8 * PHILOX_LANES];
    for (Py_ssize_t s = 0; s < n; s += per) {
        for (int l = 0; l < PHILOX_LANES; l++) { /* the next counters, with carries */
            if (++ctr[0] == 0 && ++ctr[1] == 0 && ++ctr[2] == 0) ++ctr[3];
            c0[l] = ctr[0], c1[l] = ctr[1], c2[l] = ctr[2], c3[l] = ctr[3];
        }
        philox4x64_10_lanes(c0, c1, c2, c3, k0, k1);
        for (int l = 0; l < PHILOX_LANES; l++) {
            uint64_t w[4] = {c0[l], c1[l], c2[l], c3[l]};
            for (int i = 0; i < 4; i++) {
                u[8 * l + 2 * i] = (float)((uint32_t)w[i] >> 8) * (1.0f / 16777216.0f);
                u[8 * l + 2 * i + 1] = (float)((uint32_t)(w[i] >> 32) >> 8) * (1.0f / 16777216.0f);
            }
        }
        Py_ssize_t m = n - s < per ? n - s : per;
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

static PyObject *py_philox_keep(PyObject *self, PyObject *args) {
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

/* ------------------------------------------------------------------ byte planes */

/* out[j] = rotr16(hi[j] << 8 | lo[j], rot) ^ ref[j] (ref may be NULL). */
HOT static void join2(uint16_t *out, const uint8_t *lo, const uint8_t *hi, Py_ssize_t n, int rot,
                      const uint16_t *ref) {
    if (ref) {
        for (Py_ssize_t j = 0; j < n; j++) {
            uint16_t w = (uint16_t)(((uint16_t)hi[j] << 8) | lo[j]);
            w = rot ? (uint16_t)((w >> rot) | (w << (16 - rot))) : w;
            out[j] = w ^ ref[j];
        }
    } else {
        for (Py_ssize_t j = 0; j < n; j++) {
            uint16_t w = (uint16_t)(((uint16_t)hi[j] << 8) | lo[j]);
            out[j] = rot ? (uint16_t)((w >> rot) | (w << (16 - rot))) : w;
        }
    }
}

static PyObject *py_join2(PyObject *self, PyObject *args) {
    PyObject *out_o, *lo_o, *hi_o, *ref_o;
    int rot;
    if (!PyArg_ParseTuple(args, "OOOiO", &out_o, &lo_o, &hi_o, &rot, &ref_o)) return NULL;
    if (rot < 0 || rot > 15) {
        PyErr_SetString(PyExc_ValueError, "join2: rotation out of range");
        return NULL;
    }
    Buf out, lo, hi, ref = {.held = 0};
    PyObject *ret = NULL;
    if (get_buf(out_o, &out, 1, 2, "out") < 0) return NULL;
    if (get_buf(lo_o, &lo, 0, 1, "lo") < 0) goto d1;
    if (get_buf(hi_o, &hi, 0, 1, "hi") < 0) goto d2;
    if (ref_o != Py_None && get_buf(ref_o, &ref, 0, 2, "reference") < 0) goto d3;
    Py_ssize_t n = out.view.len / 2;
    if (lo.view.len != n || hi.view.len != n || (ref.held && ref.view.len != out.view.len)) {
        PyErr_SetString(PyExc_ValueError, "join2: plane lengths do not match");
        goto d4;
    }
    Py_BEGIN_ALLOW_THREADS
    join2(out.view.buf, lo.view.buf, hi.view.buf, n, rot, ref.held ? ref.view.buf : NULL);
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
d4:
    release(&ref);
d3:
    release(&hi);
d2:
    release(&lo);
d1:
    release(&out);
    return ret;
}

/* ------------------------------------------------------------------ delta statistics */

typedef struct {
    double dd, l1, mx, bb, aa;
    int64_t nnz;
} Stats;

/* GCC vector extensions: explicit 4-lane fp64 arithmetic whatever the target (AVX2 registers,
 * or pairs of SSE2 ones), so the sums below have one fixed order. */
typedef double v4d __attribute__((vector_size(32)));
typedef int64_t v4l __attribute__((vector_size(32)));

typedef struct {
    v4d dd[2], l1[2], mx[2], bb[2], aa[2];
    v4l nz[2];
} Lanes;

static inline void lanes_add(Lanes *L, int h, v4d b, v4d a) {
    const v4l abs_mask = {INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX};
    v4d d = b - a;
    v4d ad = (v4d)((v4l)d & abs_mask);
    L->dd[h] += d * d;
    L->l1[h] += ad;
    v4l take = (ad > L->mx[h]) | (ad != ad); /* NaN propagates */
    L->mx[h] = (v4d)(((v4l)ad & take) | ((v4l)L->mx[h] & ~take));
    L->bb[h] += b * b;
    L->aa[h] += a * a;
    L->nz[h] -= (d != 0.0); /* a true comparison is -1 */
}

static Stats lanes_total(Lanes *L) {
    Stats st = {0, 0, 0, 0, 0, 0};
    for (int h = 0; h < 2; h++)
        for (int k = 0; k < 4; k++) {
            st.dd += L->dd[h][k];
            st.l1 += L->l1[h][k];
            double m = L->mx[h][k];
            st.mx = (m > st.mx || m != m) ? m : st.mx;
            st.bb += L->bb[h][k];
            st.aa += L->aa[h][k];
            st.nnz += L->nz[h][k];
        }
    return st;
}

/* Sums over B - A in fp64: 8 interleaved lanes, added up at the end (a fixed order), the last
 * n % 8 elements padded with zeros (which add nothing). max propagates NaN; nnz counts elements
 * whose delta is not zero (NaN counts). CONV(i) widens element i of b or a to double. */
#define STATS_LANES                                                          \
    for (int h = 0; h < 2; h++) {                                            \
        v4d bv, av;                                                          \
        memcpy(&bv, bx + 4 * h, sizeof bv);                                  \
        memcpy(&av, ax + 4 * h, sizeof av);                                  \
        lanes_add(&L, h, bv, av);                                            \
    }

#define STATS_BODY(LOAD)                                                     \
    Lanes L;                                                                 \
    memset(&L, 0, sizeof L);                                                 \
    double bx[8], ax[8];                                                     \
    Py_ssize_t j = 0;                                                        \
    for (; j + 8 <= n; j += 8) {                                             \
        for (int k = 0; k < 8; k++) bx[k] = LOAD(b, j + k);                  \
        for (int k = 0; k < 8; k++) ax[k] = LOAD(a, j + k);                  \
        STATS_LANES                                                          \
    }                                                                        \
    if (j < n) {                                                             \
        for (int k = 0; k < 8; k++) {                                        \
            bx[k] = j + k < n ? LOAD(b, j + k) : 0.0;                        \
            ax[k] = j + k < n ? LOAD(a, j + k) : 0.0;                        \
        }                                                                    \
        STATS_LANES                                                          \
    }                                                                        \
    return lanes_total(&L);

#define LOAD_BF16(p, i) ((double)bf16_to_f32((p)[i]))
#define LOAD_F16(p, i) ((double)f16_table[(p)[i]])
#define LOAD_SAME(p, i) ((double)(p)[i])

HOT static Stats stats_bf16(const uint16_t *b, const uint16_t *a, Py_ssize_t n) { STATS_BODY(LOAD_BF16) }
HOT static Stats stats_f16(const uint16_t *b, const uint16_t *a, Py_ssize_t n) { STATS_BODY(LOAD_F16) }
HOT static Stats stats_f32(const float *b, const float *a, Py_ssize_t n) { STATS_BODY(LOAD_SAME) }
HOT static Stats stats_f64(const double *b, const double *a, Py_ssize_t n) { STATS_BODY(LOAD_SAME) }

/* delta_stats(b, a, dtype) -> (dd, l1, max_abs, bb, aa, nnz) with dtype "BF16", "F16",
 * "F32" or "F64": sums of squares of B - A, of |B - A|, of B^2 and of A^2, in fp64. */
static PyObject *py_delta_stats(PyObject *self, PyObject *args) {
    PyObject *b_o, *a_o;
    const char *dtype;
    if (!PyArg_ParseTuple(args, "OOs", &b_o, &a_o, &dtype)) return NULL;
    Py_ssize_t size;
    int code;
    if (!strcmp(dtype, "BF16")) code = 0, size = 2;
    else if (!strcmp(dtype, "F16")) code = 1, size = 2;
    else if (!strcmp(dtype, "F32")) code = 2, size = 4;
    else if (!strcmp(dtype, "F64")) code = 3, size = 8;
    else {
        PyErr_Format(PyExc_ValueError, "delta_stats: unsupported dtype %s", dtype);
        return NULL;
    }
    Buf b, a;
    if (get_buf(b_o, &b, 0, size, "b") < 0) return NULL;
    if (get_buf(a_o, &a, 0, size, "a") < 0) {
        release(&b);
        return NULL;
    }
    if (a.view.len != b.view.len) {
        release(&a);
        release(&b);
        PyErr_SetString(PyExc_ValueError, "blocks of different lengths cannot be compared");
        return NULL;
    }
    Py_ssize_t n = b.view.len / size;
    Stats st;
    Py_BEGIN_ALLOW_THREADS
    switch (code) {
        case 0: st = stats_bf16(b.view.buf, a.view.buf, n); break;
        case 1: st = stats_f16(b.view.buf, a.view.buf, n); break;
        case 2: st = stats_f32(b.view.buf, a.view.buf, n); break;
        default: st = stats_f64(b.view.buf, a.view.buf, n); break;
    }
    Py_END_ALLOW_THREADS
    release(&a);
    release(&b);
    return Py_BuildValue("(dddddL)", st.dd, st.l1, st.mx, st.bb, st.aa, (long long)st.nnz);
}

/* ------------------------------------------------------------------ module */

static PyMethodDef methods[] = {
    {"gta_sum_bf16", py_gta_sum_bf16, METH_VARARGS,
     "gta_sum_bf16(out, base, inputs, weights, deltas, divisor, normalize, lam, has_lam, "
     "f16=False): bf16, or fp16 with f16"},
    {"gta_consensus_bf16", py_gta_consensus_bf16, METH_VARARGS,
     "gta_consensus_bf16(out, base, deltas, weights, normalize, lam, has_lam, f16=False)"},
    {"linear_bf16", py_linear_bf16, METH_VARARGS,
     "linear_bf16(out, inputs, weights, normalize, weight_sum, f16=False)"},
    {"sub_hist_bf16", py_sub_hist_bf16, METH_VARARGS,
     "sub_hist_bf16(out, x, base, hist, f16=False): x - base and its magnitude histogram"},
    {"nth_equal16", py_nth_equal16, METH_VARARGS, "nth_equal16(bits, v, need) -> index or -1"},
    {"apply_cuts16", py_apply_cuts16, METH_VARARGS,
     "apply_cuts16(data, mode1, v1, last1, mode2, v2, last2, f16=False)"},
    {"della_probs_bf16", py_della_probs_bf16, METH_VARARGS,
     "della_probs_bf16(magnitudes, out, rows, cols, base_p, eps): della's bf16 keep "
     "probabilities from the row ranks of the magnitudes (sparsify.della_magprune)."},
    {"row_ranks_bf16", py_row_ranks_bf16, METH_VARARGS,
     "row_ranks_bf16(magnitudes, out, rows, cols, as_bf16=False): 1-based stable ranks within "
     "each row, as int64 or rounded to bf16"},
    {"philox_keep", py_philox_keep, METH_VARARGS,
     "philox_keep(out, probs, key_lo, key_hi, bf16): Bernoulli keep mask, numpy's Philox stream "
     "(probs: one per element, or one for all)"},
    {"join2", py_join2, METH_VARARGS, "join2(out, lo, hi, rot, reference_or_None)"},
    {"delta_stats", py_delta_stats, METH_VARARGS,
     "delta_stats(b, a, dtype) -> (dd, l1, max_abs, bb, aa, nnz)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "mergestore._native",
                                    "Fused kernels (see mergestore/native.py).", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) {
    init_f16_table();
#if HAVE_F16C_KERNELS
    __builtin_cpu_init();
    have_f16c = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                __builtin_cpu_supports("f16c") && !getenv("MERGESTORE_NO_F16C");
#endif
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "HAVE_F16", HAVE_F16) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
