/* Merge arithmetic with fp32 compute (mergekit's `dtype: float32`) on inputs of any float
 * format, mixed: each input, the base and the output are bf16, fp16 or fp32 (format codes
 * FMT_BF16, FMT_F16, FMT_F32). torch casts every input to fp32 (exact), computes each
 * operation in fp32, and casts the result to the output dtype (round to nearest even); these
 * kernels do the same operations in the same order. Python side: mergestore/ops/lanes.py; the
 * torch twins are the fp32 paths of mergestore/ops/gta.py and mergestore/ops/linear.py
 * (tests/ops/test_lanes.py compares them).
 *
 * torch's fp32 sums over the stacked inputs (dim 0) add in order from 0 for up to 4 rows
 * (measured; 5 or more use several accumulators), so ops/lanes.py takes at most 4 inputs. */
#include "formats.h"

/* gta._finish in fp32 on one tile: merged / divisor (per element when `divisors`, 0 -> 1) if
 * normalize, times lam if has_lam, plus the base; stored in the output format. */
ALWAYS_INLINE static inline void finish32(void *out, int out_fmt, Py_ssize_t s, const float *b,
                                          float *merged, const float *divisors, float divisor,
                                          Py_ssize_t m, int normalize, float lam, int has_lam) {
    if (normalize && divisors) {
        for (Py_ssize_t j = 0; j < m; j++)
            merged[j] = merged[j] / (divisors[j] == 0.0f ? 1.0f : divisors[j]);
    } else if (normalize) {
        for (Py_ssize_t j = 0; j < m; j++) merged[j] = merged[j] / divisor;
    }
    if (has_lam)
        for (Py_ssize_t j = 0; j < m; j++) merged[j] = merged[j] * lam;
    for (Py_ssize_t j = 0; j < m; j++) merged[j] = b[j] + merged[j];
    narrow(out, out_fmt, s, merged, m);
}

/* ------------------------------------------------------------------ few inputs, one format */

/* 1 to 4 inputs, all of format fmt, bf16 or fp32: the register loops of merge_few32.h (fp16
 * stays on the tile loops, whose widen() converts with F16C: f16_to_f32 in a register loop
 * measured 2x slower than them). */
static inline int few_of(const int *fmts, Py_ssize_t k, int fmt) {
    if (k < 1 || k > 4 || fmt == FMT_F16) return 0;
    for (Py_ssize_t i = 0; i < k; i++)
        if (fmts[i] != fmt) return 0;
    return 1;
}

#define F32X(name) name##_bf16
#define XT uint16_t
#define LD(x) bf16_to_f32(x)
#define RB(f) rne16(f)
#include "merge_few32.h"
#undef F32X
#undef XT
#undef LD
#undef RB

#define F32X(name) name##_f32
#define XT float
#define LD(x) (x)
#define RB(f) rne16_nan(f)
#include "merge_few32.h"
#undef F32X
#undef XT
#undef LD
#undef RB

/* out = base + finish(sum_i (x_i - base) * w_i), or sum_i d_i * w_i over given deltas: the
 * no-consensus GTA (task_arithmetic; breadcrumbs over cut deltas) in fp32. */
HOT4 static void gta_sum32(void *out, int out_fmt, const void *base, int base_fmt,
                          const void **xs, const int *fmts, Py_ssize_t k, const float *w,
                          int deltas, Py_ssize_t n, float divisor, int normalize, float lam,
                          int has_lam) {
    if (!deltas && few_of(fmts, k, base_fmt)) {
        if (base_fmt == FMT_BF16)
            gta_sum32_few_bf16(out, out_fmt, base, xs, k, w, n, divisor, normalize, lam, has_lam);
        else
            gta_sum32_few_f32(out, out_fmt, base, xs, k, w, n, divisor, normalize, lam, has_lam);
        return;
    }
    float acc[TILE], bf[TILE], xt[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        widen(bf, base, base_fmt, s, m);
        for (Py_ssize_t j = 0; j < m; j++) acc[j] = 0.0f;
        for (Py_ssize_t i = 0; i < k; i++) {
            const float wi = w[i];
            widen(xt, xs[i], fmts[i], s, m);
            if (deltas) {
                for (Py_ssize_t j = 0; j < m; j++) acc[j] = acc[j] + xt[j] * wi;
            } else {
                for (Py_ssize_t j = 0; j < m; j++) acc[j] = acc[j] + (xt[j] - bf[j]) * wi;
            }
        }
        finish32(out, out_fmt, s, bf, acc, NULL, divisor, m, normalize, lam, has_lam);
    }
}

/* TIES "sum" consensus over fp32 deltas, then the tail (gta.sign_agreement, gta._combine,
 * gta._finish in fp32): D_i = d_i * w_i; vote = (0 + D_0 + ... + D_k-1) >= 0 ? +1 : -1;
 * agree_i = D_i * vote > 0; merged = 0 + sum agree_i * D_i; divisor = 0 + sum agree_i * w_i. */
HOT4 static void gta_consensus32(void *out, int out_fmt, const void *base, int base_fmt,
                                const float **ds, Py_ssize_t k, const float *w, Py_ssize_t n,
                                int normalize, float lam, int has_lam) {
    float vote[TILE], merged[TILE], divisor[TILE], bf[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        for (Py_ssize_t j = 0; j < m; j++) vote[j] = 0.0f;
        for (Py_ssize_t i = 0; i < k; i++) {
            const float *d = ds[i] + s;
            const float wi = w[i];
            for (Py_ssize_t j = 0; j < m; j++) vote[j] = vote[j] + d[j] * wi;
        }
        for (Py_ssize_t j = 0; j < m; j++) {
            vote[j] = vote[j] >= 0.0f ? 1.0f : -1.0f;
            merged[j] = 0.0f;
            divisor[j] = 0.0f;
        }
        for (Py_ssize_t i = 0; i < k; i++) {
            const float *d = ds[i] + s;
            const float wi = w[i];
            for (Py_ssize_t j = 0; j < m; j++) {
                float D = d[j] * wi;
                float agree = (D * vote[j]) > 0.0f ? 1.0f : 0.0f;
                merged[j] = merged[j] + D * agree;
                divisor[j] = divisor[j] + agree * wi;
            }
        }
        widen(bf, base, base_fmt, s, m);
        finish32(out, out_fmt, s, bf, merged, divisor, 0.0f, m, normalize, lam, has_lam);
    }
}

/* ties and breadcrumbs(_ties) in fp32 in one pass over the inputs: d_i = x_i - base (fp32),
 * times the mask of its rank cuts (cut_tile32: the cuts were found beforehand over the whole
 * tensor by cut_select.c's find_cuts; `start` is the flat index of element 0
 * here), then gta_consensus32's arithmetic (consensus) or gta_sum32's over the cut deltas.
 * The same operations in the same order as cutting fp32 deltas and combining them, without
 * an fp32 delta per input in memory. */
HOT static int gta_cut32(void *out, int out_fmt, const void *base, int base_fmt,
                         const void **xs, const int *fmts, const Cuts32 *cuts, Py_ssize_t k,
                         Py_ssize_t start, const float *w, int consensus, float divisor,
                         Py_ssize_t n, int normalize, float lam, int has_lam) {
    float *dt = malloc((size_t)(k ? k : 1) * TILE * sizeof(float));
    if (!dt) return -1;
    float vote[TILE], merged[TILE], divs[TILE], bf[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        widen(bf, base, base_fmt, s, m);
        for (Py_ssize_t i = 0; i < k; i++) {
            float *d = dt + i * TILE;
            widen(d, xs[i], fmts[i], s, m);
            for (Py_ssize_t j = 0; j < m; j++) d[j] = d[j] - bf[j];
            cut_tile32((uint32_t *)d, start + s, m, &cuts[i]);
        }
        for (Py_ssize_t j = 0; j < m; j++) merged[j] = 0.0f;
        if (!consensus) {
            for (Py_ssize_t i = 0; i < k; i++) {
                const float *d = dt + i * TILE;
                const float wi = w[i];
                for (Py_ssize_t j = 0; j < m; j++) merged[j] = merged[j] + d[j] * wi;
            }
            finish32(out, out_fmt, s, bf, merged, NULL, divisor, m, normalize, lam, has_lam);
            continue;
        }
        for (Py_ssize_t j = 0; j < m; j++) vote[j] = 0.0f;
        for (Py_ssize_t i = 0; i < k; i++) {
            const float *d = dt + i * TILE;
            const float wi = w[i];
            for (Py_ssize_t j = 0; j < m; j++) vote[j] = vote[j] + d[j] * wi;
        }
        for (Py_ssize_t j = 0; j < m; j++) {
            vote[j] = vote[j] >= 0.0f ? 1.0f : -1.0f;
            divs[j] = 0.0f;
        }
        for (Py_ssize_t i = 0; i < k; i++) {
            const float *d = dt + i * TILE;
            const float wi = w[i];
            for (Py_ssize_t j = 0; j < m; j++) {
                float D = d[j] * wi;
                float agree = (D * vote[j]) > 0.0f ? 1.0f : 0.0f;
                merged[j] = merged[j] + D * agree;
                divs[j] = divs[j] + agree * wi;
            }
        }
        finish32(out, out_fmt, s, bf, merged, divs, 0.0f, m, normalize, lam, has_lam);
    }
    free(dt);
    return 0;
}

/* dare* and della* in fp32 in one pass over the inputs (ops/lane_random.py): d_i = x_i - base
 * (fp32), times its keep byte (1.0f or 0.0f, as torch multiplies by the mask), times its L1
 * scale (keep_sums32 / della_keep_sums32 in rng.c found both; a scale of 1 is skipped: it
 * multiplies exactly), then gta_consensus32's arithmetic (consensus) or gta_sum32's over the
 * sparsified deltas. The same operations in the same order as ops.gta's fp32 path over
 * sparsify.bernoulli_ / della_magprune's deltas, without an fp32 delta per input in memory. */
HOT4 static int gta_keep32(void *out, int out_fmt, const void *base, int base_fmt,
                          const void **xs, const int *fmts, const uint8_t **keeps,
                          const float *scales, Py_ssize_t k, const float *w, int consensus,
                          float divisor, Py_ssize_t n, int normalize, float lam, int has_lam) {
    float *dt = malloc((size_t)(k ? k : 1) * TILE * sizeof(float));
    if (!dt) return -1;
    float vote[TILE], merged[TILE], divs[TILE], bf[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        if (s + 2 * TILE <= n) { /* the next tile of every stream (2k + 1 of them) */
            Py_ssize_t bsz = fmt_size[base_fmt];
            for (Py_ssize_t j = 0; j < TILE * bsz; j += 64)
                __builtin_prefetch((const char *)base + (s + TILE) * bsz + j);
            for (Py_ssize_t i = 0; i < k; i++) {
                Py_ssize_t xsz = fmt_size[fmts[i]];
                for (Py_ssize_t j = 0; j < TILE * xsz; j += 64)
                    __builtin_prefetch((const char *)xs[i] + (s + TILE) * xsz + j);
                for (Py_ssize_t j = 0; j < TILE; j += 64) __builtin_prefetch(keeps[i] + s + TILE + j);
            }
        }
        widen(bf, base, base_fmt, s, m);
        for (Py_ssize_t i = 0; i < k; i++) {
            float *d = dt + i * TILE;
            const uint8_t *kp = keeps[i] + s;
            widen(d, xs[i], fmts[i], s, m);
            for (Py_ssize_t j = 0; j < m; j++) d[j] = (d[j] - bf[j]) * (kp[j] ? 1.0f : 0.0f);
            const float sc = scales[i];
            if (sc != 1.0f)
                for (Py_ssize_t j = 0; j < m; j++) d[j] = d[j] * sc;
        }
        for (Py_ssize_t j = 0; j < m; j++) merged[j] = 0.0f;
        if (!consensus) {
            for (Py_ssize_t i = 0; i < k; i++) {
                const float *d = dt + i * TILE;
                const float wi = w[i];
                for (Py_ssize_t j = 0; j < m; j++) merged[j] = merged[j] + d[j] * wi;
            }
            finish32(out, out_fmt, s, bf, merged, NULL, divisor, m, normalize, lam, has_lam);
            continue;
        }
        for (Py_ssize_t j = 0; j < m; j++) vote[j] = 0.0f;
        for (Py_ssize_t i = 0; i < k; i++) {
            const float *d = dt + i * TILE;
            const float wi = w[i];
            for (Py_ssize_t j = 0; j < m; j++) vote[j] = vote[j] + d[j] * wi;
        }
        for (Py_ssize_t j = 0; j < m; j++) {
            vote[j] = vote[j] >= 0.0f ? 1.0f : -1.0f;
            divs[j] = 0.0f;
        }
        for (Py_ssize_t i = 0; i < k; i++) {
            const float *d = dt + i * TILE;
            const float wi = w[i];
            for (Py_ssize_t j = 0; j < m; j++) {
                float D = d[j] * wi;
                float agree = (D * vote[j]) > 0.0f ? 1.0f : 0.0f;
                merged[j] = merged[j] + D * agree;
                divs[j] = divs[j] + agree * wi;
            }
        }
        finish32(out, out_fmt, s, bf, merged, divs, 0.0f, m, normalize, lam, has_lam);
    }
    free(dt);
    return 0;
}

/* linear with an fp32 accumulator: acc = fma(x_i, w_i, acc) from 0 in input order (torch's
 * addcmul_ is fused), acc / wsum if normalize, stored in the output format. */
HOT4 static void linear32(void *out, int out_fmt, const void **xs, const int *fmts, Py_ssize_t k,
                         const float *w, Py_ssize_t n, int normalize, float wsum) {
    if (k >= 1 && few_of(fmts, k, fmts[0])) {
        if (fmts[0] == FMT_BF16)
            linear32_few_bf16(out, out_fmt, xs, k, w, n, normalize, wsum);
        else
            linear32_few_f32(out, out_fmt, xs, k, w, n, normalize, wsum);
        return;
    }
    float acc[TILE], xt[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        for (Py_ssize_t j = 0; j < m; j++) acc[j] = 0.0f;
        for (Py_ssize_t i = 0; i < k; i++) {
            const float wi = w[i];
            widen(xt, xs[i], fmts[i], s, m);
            for (Py_ssize_t j = 0; j < m; j++) acc[j] = fmaf(xt[j], wi, acc[j]);
        }
        if (normalize)
            for (Py_ssize_t j = 0; j < m; j++) acc[j] = acc[j] / wsum;
        narrow(out, out_fmt, s, acc, m);
    }
}

/* convert(out, out_fmt, x, x_fmt): x in another format, rounded to nearest even as torch's
 * .to() rounds (16-bit to 16-bit goes through fp32, exactly as torch converts). */
HOT4 static void convert(void *out, int out_fmt, const void *x, int x_fmt, Py_ssize_t n) {
    float t[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        widen(t, x, x_fmt, s, m);
        narrow(out, out_fmt, s, t, m);
    }
}

/* ------------------------------------------------------------------ argument handling */

static float *get_weights(PyObject *w_o, Py_ssize_t k) {
    float *w = PyMem_Calloc(k ? k : 1, sizeof(float));
    if (!w) {
        PyErr_NoMemory();
        return NULL;
    }
    if (get_floats(w_o, w, k) < 0) {
        PyMem_Free(w);
        return NULL;
    }
    return w;
}

/* gta_sum32(out, out_fmt, base, base_fmt, inputs, fmts, weights, deltas, divisor, normalize,
 * lam, has_lam) */
PyObject *py_gta_sum32(PyObject *self, PyObject *args) {
    PyObject *out_o, *base_o, *xs_o, *fmts_o, *w_o;
    int out_fmt, base_fmt, deltas, normalize, has_lam;
    double divisor, lam;
    if (!PyArg_ParseTuple(args, "OiOiOOOpdpdp", &out_o, &out_fmt, &base_o, &base_fmt, &xs_o,
                          &fmts_o, &w_o, &deltas, &divisor, &normalize, &lam, &has_lam))
        return NULL;
    Py_ssize_t n = -1;
    Buf out, base;
    Inputs in;
    float *w = NULL;
    PyObject *ret = NULL;
    if (get_fmt_buf(out_o, out_fmt, &n, 1, &out, "out") < 0) return NULL;
    if (get_fmt_buf(base_o, base_fmt, &n, 0, &base, "base") < 0) goto d1;
    if (get_inputs(xs_o, fmts_o, n, &in) < 0) goto d2;
    if (!(w = get_weights(w_o, in.k))) goto d3;
    Py_BEGIN_ALLOW_THREADS
    gta_sum32(out.view.buf, out_fmt, base.view.buf, base_fmt, in.ptrs, in.fmts, in.k, w, deltas, n,
              (float)divisor, normalize, (float)lam, has_lam);
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
    PyMem_Free(w);
d3:
    inputs_release(&in);
d2:
    release(&base);
d1:
    release(&out);
    return ret;
}

/* gta_consensus32(out, out_fmt, base, base_fmt, deltas (fp32), weights, normalize, lam,
 * has_lam) */
PyObject *py_gta_consensus32(PyObject *self, PyObject *args) {
    PyObject *out_o, *base_o, *ds_o, *w_o;
    int out_fmt, base_fmt, normalize, has_lam;
    double lam;
    if (!PyArg_ParseTuple(args, "OiOiOOpdp", &out_o, &out_fmt, &base_o, &base_fmt, &ds_o, &w_o,
                          &normalize, &lam, &has_lam))
        return NULL;
    Py_ssize_t n = -1;
    Buf out, base;
    Inputs in;
    float *w = NULL;
    PyObject *ret = NULL, *fmts = NULL;
    if (get_fmt_buf(out_o, out_fmt, &n, 1, &out, "out") < 0) return NULL;
    if (get_fmt_buf(base_o, base_fmt, &n, 0, &base, "base") < 0) goto d1;
    Py_ssize_t k = PySequence_Size(ds_o);
    if (k < 0) goto d2;
    fmts = PyList_New(k);
    if (!fmts) goto d2;
    for (Py_ssize_t i = 0; i < k; i++) PyList_SET_ITEM(fmts, i, PyLong_FromLong(FMT_F32));
    if (get_inputs(ds_o, fmts, n, &in) < 0) goto d2;
    if (!(w = get_weights(w_o, in.k))) goto d3;
    Py_BEGIN_ALLOW_THREADS
    gta_consensus32(out.view.buf, out_fmt, base.view.buf, base_fmt, (const float **)in.ptrs, in.k,
                    w, n, normalize, (float)lam, has_lam);
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
    PyMem_Free(w);
d3:
    inputs_release(&in);
d2:
    Py_XDECREF(fmts);
    release(&base);
d1:
    release(&out);
    return ret;
}

/* linear32(out, out_fmt, inputs, fmts, weights, normalize, wsum) */
PyObject *py_linear32(PyObject *self, PyObject *args) {
    PyObject *out_o, *xs_o, *fmts_o, *w_o;
    int out_fmt, normalize;
    double wsum;
    if (!PyArg_ParseTuple(args, "OiOOOpd", &out_o, &out_fmt, &xs_o, &fmts_o, &w_o, &normalize,
                          &wsum))
        return NULL;
    Py_ssize_t n = -1;
    Buf out;
    Inputs in;
    float *w = NULL;
    PyObject *ret = NULL;
    if (get_fmt_buf(out_o, out_fmt, &n, 1, &out, "out") < 0) return NULL;
    if (get_inputs(xs_o, fmts_o, n, &in) < 0) goto d1;
    if (!(w = get_weights(w_o, in.k))) goto d2;
    Py_BEGIN_ALLOW_THREADS
    linear32(out.view.buf, out_fmt, in.ptrs, in.fmts, in.k, w, n, normalize, (float)wsum);
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
    PyMem_Free(w);
d2:
    inputs_release(&in);
d1:
    release(&out);
    return ret;
}

/* convert(out, out_fmt, x, x_fmt) */
PyObject *py_convert(PyObject *self, PyObject *args) {
    PyObject *out_o, *x_o;
    int out_fmt, x_fmt;
    if (!PyArg_ParseTuple(args, "OiOi", &out_o, &out_fmt, &x_o, &x_fmt)) return NULL;
    Py_ssize_t n = -1;
    Buf out, x;
    if (get_fmt_buf(out_o, out_fmt, &n, 1, &out, "out") < 0) return NULL;
    if (get_fmt_buf(x_o, x_fmt, &n, 0, &x, "x") < 0) {
        release(&out);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    convert(out.view.buf, out_fmt, x.view.buf, x_fmt, n);
    Py_END_ALLOW_THREADS
    release(&x);
    release(&out);
    Py_RETURN_NONE;
}

/* gta_cut32(out, out_fmt, base, base_fmt, inputs, fmts, cuts, start, weights, consensus,
 * divisor, normalize, lam, has_lam) */
PyObject *py_gta_cut32(PyObject *self, PyObject *args) {
    PyObject *out_o, *base_o, *xs_o, *fmts_o, *cuts_o, *w_o;
    int out_fmt, base_fmt, consensus, normalize, has_lam;
    Py_ssize_t start;
    double divisor, lam;
    if (!PyArg_ParseTuple(args, "OiOiOOOnOpdpdp", &out_o, &out_fmt, &base_o, &base_fmt, &xs_o,
                          &fmts_o, &cuts_o, &start, &w_o, &consensus, &divisor, &normalize, &lam,
                          &has_lam))
        return NULL;
    Py_ssize_t n = -1;
    Buf out, base;
    Inputs in;
    float *w = NULL;
    Cuts32 *cuts = NULL;
    PyObject *ret = NULL, *cs = NULL;
    if (get_fmt_buf(out_o, out_fmt, &n, 1, &out, "out") < 0) return NULL;
    if (get_fmt_buf(base_o, base_fmt, &n, 0, &base, "base") < 0) goto d1;
    if (get_inputs(xs_o, fmts_o, n, &in) < 0) goto d2;
    if (!(w = get_weights(w_o, in.k))) goto d3;
    cs = PySequence_Fast(cuts_o, "expected a sequence of cuts");
    if (!cs) goto d4;
    if (PySequence_Fast_GET_SIZE(cs) != in.k) {
        PyErr_SetString(PyExc_ValueError, "gta_cut32: one cut per input");
        goto d4;
    }
    cuts = PyMem_Calloc(in.k ? in.k : 1, sizeof(Cuts32));
    if (!cuts) {
        PyErr_NoMemory();
        goto d4;
    }
    for (Py_ssize_t i = 0; i < in.k; i++)
        if (get_cuts32(PySequence_Fast_GET_ITEM(cs, i), &cuts[i]) < 0) goto d4;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = gta_cut32(out.view.buf, out_fmt, base.view.buf, base_fmt, in.ptrs, in.fmts, cuts, in.k,
                   start, w, consensus, (float)divisor, n, normalize, (float)lam, has_lam);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        PyErr_NoMemory();
        goto d4;
    }
    ret = Py_None;
    Py_INCREF(ret);
d4:
    PyMem_Free(cuts);
    Py_XDECREF(cs);
    PyMem_Free(w);
d3:
    inputs_release(&in);
d2:
    release(&base);
d1:
    release(&out);
    return ret;
}

/* gta_keep32(out, out_fmt, base, base_fmt, inputs, fmts, keeps (uint8), scales, weights,
 * consensus, divisor, normalize, lam, has_lam) */
PyObject *py_gta_keep32(PyObject *self, PyObject *args) {
    PyObject *out_o, *base_o, *xs_o, *fmts_o, *keeps_o, *sc_o, *w_o;
    int out_fmt, base_fmt, consensus, normalize, has_lam;
    double divisor, lam;
    if (!PyArg_ParseTuple(args, "OiOiOOOOOpdpdp", &out_o, &out_fmt, &base_o, &base_fmt, &xs_o,
                          &fmts_o, &keeps_o, &sc_o, &w_o, &consensus, &divisor, &normalize, &lam,
                          &has_lam))
        return NULL;
    Py_ssize_t n = -1;
    Buf out, base;
    Inputs in;
    float *w = NULL, *scales = NULL;
    Buf *kb = NULL;
    const uint8_t **kp = NULL;
    Py_ssize_t held = 0;
    PyObject *ret = NULL, *ks = NULL;
    if (get_fmt_buf(out_o, out_fmt, &n, 1, &out, "out") < 0) return NULL;
    if (get_fmt_buf(base_o, base_fmt, &n, 0, &base, "base") < 0) goto d1;
    if (get_inputs(xs_o, fmts_o, n, &in) < 0) goto d2;
    if (!(w = get_weights(w_o, in.k))) goto d3;
    if (!(scales = get_weights(sc_o, in.k))) goto d4;
    ks = PySequence_Fast(keeps_o, "expected a sequence of keep buffers");
    if (!ks) goto d4;
    if (PySequence_Fast_GET_SIZE(ks) != in.k) {
        PyErr_SetString(PyExc_ValueError, "gta_keep32: one keep buffer per input");
        goto d4;
    }
    kb = PyMem_Calloc(in.k ? in.k : 1, sizeof(Buf));
    kp = PyMem_Calloc(in.k ? in.k : 1, sizeof(uint8_t *));
    if (!kb || !kp) {
        PyErr_NoMemory();
        goto d4;
    }
    for (; held < in.k; held++) {
        if (get_buf(PySequence_Fast_GET_ITEM(ks, held), &kb[held], 0, 1, "keep") < 0) goto d4;
        if (kb[held].view.len != n) {
            release(&kb[held]);
            PyErr_SetString(PyExc_ValueError, "gta_keep32: a keep byte per element");
            goto d4;
        }
        kp[held] = kb[held].view.buf;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = gta_keep32(out.view.buf, out_fmt, base.view.buf, base_fmt, in.ptrs, in.fmts, kp, scales,
                    in.k, w, consensus, (float)divisor, n, normalize, (float)lam, has_lam);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        PyErr_NoMemory();
        goto d4;
    }
    ret = Py_None;
    Py_INCREF(ret);
d4:
    for (Py_ssize_t i = 0; i < held; i++) release(&kb[i]);
    PyMem_Free(kb);
    PyMem_Free((void *)kp);
    Py_XDECREF(ks);
    PyMem_Free(scales);
    PyMem_Free(w);
d3:
    inputs_release(&in);
d2:
    release(&base);
d1:
    release(&out);
    return ret;
}
