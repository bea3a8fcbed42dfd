/* Merge arithmetic: the GTA tail (task_arithmetic, ties, breadcrumbs...) and linear, on 16-bit
 * float bits. Python side: mergestore/ops/lane16.py calls these; the torch twins are the torch
 * paths of mergestore/ops/gta.py and mergestore/ops/linear.py (tests/test_native.py,
 * tests/ops/test_lane16.py compare them). */
#include "native.h"

/* ------------------------------------------------------------------ bf16 GTA kernels */

#define K16(name) name##_bf16
#define TO_F32 bf16_to_f32
#define ROUND rne16
#include "merge_arith16.h"
#undef K16
#undef TO_F32
#undef ROUND

#define K16(name) name##_f16
#define TO_F32 f16_to_f32
#define ROUND rne_f16
#include "merge_arith16.h"
#undef K16
#undef TO_F32
#undef ROUND

/* fp16 task arithmetic and linear with AVX2 + F16C, eight elements at a time: the generic
 * versions above convert by bit arithmetic (GCC does not vectorize _Float16 conversions),
 * about 8x slower than the bf16 kernels. The same operations in the same order; vcvtps2ph
 * rounds to nearest even, as torch does. Picked at run time (have_f16c). */

#if HAVE_F16C_KERNELS
/* gta_sum_f16 (see merge_arith16.h), vectorized. */
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

/* gta_consensus_f16 (see merge_arith16.h), vectorized. */
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


/* linear_f16 (see merge_arith16.h), vectorized. */
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

typedef void (*GtaSum)(uint16_t *out, const uint16_t *base, const uint16_t **xs, Py_ssize_t k,
                       const float *w, int deltas, Py_ssize_t n, float divisor, int normalize,
                       float lam, int has_lam);

#define FROZEN_SPAN 4096 /* elements whose base is checked at once for an infinity or NaN */

/* sum(out, base, xs, ...) with the inputs that are the base array itself (a frozen tensor,
 * not deltas) left out wherever the base is finite: their delta is +0 there, and adding +0 to
 * sums that start from +0 changes no bit. Spans of FROZEN_SPAN elements whose base holds an
 * infinity or NaN take every input (their NaN deltas count, as in torch). The kernels are
 * elementwise, so the spans give the bits of one call over every input. The check reads each
 * base span just before the kernel does (cut_select.c's all_finite, span by span): no pass of
 * its own over the tensor (lane16.live_inputs scanned the whole base first). */
static void gta_sum_frozen(GtaSum sum, uint16_t *out, const uint16_t *base, const uint16_t **xs,
                           Py_ssize_t k, const float *w, int deltas, Py_ssize_t n, float divisor,
                           int normalize, float lam, int has_lam, int fmt) {
    const uint16_t *live[k ? k : 1], *every[k ? k : 1];
    float wl[k ? k : 1];
    Py_ssize_t kl = 0;
    for (Py_ssize_t i = 0; i < k; i++)
        if (deltas || xs[i] != base) {
            live[kl] = xs[i];
            wl[kl++] = w[i];
        }
    if (kl == k) {
        sum(out, base, xs, k, w, deltas, n, divisor, normalize, lam, has_lam);
        return;
    }
    for (Py_ssize_t s = 0; s < n; s += FROZEN_SPAN) {
        Py_ssize_t m = n - s < FROZEN_SPAN ? n - s : FROZEN_SPAN;
        int all = !finite_values(base + s, fmt, m);
        const uint16_t **src = all ? xs : live;
        Py_ssize_t kk = all ? k : kl;
        for (Py_ssize_t i = 0; i < kk; i++) every[i] = src[i] + s;
        sum(out + s, base + s, every, kk, all ? w : wl, deltas, m, divisor, normalize, lam,
            has_lam);
    }
}

PyObject *py_gta_sum_bf16(PyObject *self, PyObject *args) {
    PyObject *out_o, *base_o, *xs_o, *w_o;
    int deltas, normalize, has_lam, f16 = 0;
    double divisor, lam;
    GtaArgs g;
    if (!PyArg_ParseTuple(args, "OOOOpdpdp|p", &out_o, &base_o, &xs_o, &w_o, &deltas, &divisor,
                          &normalize, &lam, &has_lam, &f16) ||
        gta_acquire(&g, out_o, base_o, xs_o, w_o) < 0)
        return NULL;
    GtaSum sum = f16 ? gta_sum_f16 : gta_sum_bf16;
#if HAVE_F16C_KERNELS
    if (f16 && have_f16c) sum = gta_sum_f16c;
#endif
    Py_BEGIN_ALLOW_THREADS
    gta_sum_frozen(sum, g.out.view.buf, g.base.view.buf, g.xs.ptrs, g.xs.n, g.w, deltas,
                   g.out.view.len / 2, (float)divisor, normalize, (float)lam, has_lam,
                   f16 ? FMT_F16 : FMT_BF16);
    Py_END_ALLOW_THREADS
    gta_release(&g);
    Py_RETURN_NONE;
}

PyObject *py_gta_consensus_bf16(PyObject *self, PyObject *args) {
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

PyObject *py_linear_bf16(PyObject *self, PyObject *args) {
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
