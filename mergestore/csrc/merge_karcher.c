/* karcher (ops/karcher.py) in fp32 compute: the fused elementwise passes of its iterations, on
 * inputs of any float format and an output of any. Python side: mergestore/ops/lane_karcher.py,
 * which keeps the unit vectors, the mean and the tangent as fp32 arrays (torch.dot reads them:
 * its BLAS order is MKL's, not reproduced here) and does the scalar steps with torch; tests/ops/
 * test_lane_karcher.py compares both with torch.
 *
 * Each pass does torch's fp32 operations in its order (a product, a difference, a sum, each
 * rounded: no FMA) and the 2-norm of what it writes in torch's order (torch_norm.h), which the
 * next step needs: one pass where torch makes three to six, each into a fresh tensor. */
#include "formats.h"

#include "torch_norm.h"

#define KARCHER_MAX 64 /* inputs per call */

/* out = x / d (x widened from its format; out may be x itself when both are fp32). */
HOT static void karcher_scale(float *out, const void *x, int fmt, Py_ssize_t n, float d) {
    float v[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        widen(v, x, fmt, s, m);
        for (Py_ssize_t j = 0; j < m; j++) out[s + j] = v[j] / d;
    }
}

/* mean = 0 + a_0 u_0 + a_1 u_1 + ... (each product rounded, added in order); returns |mean|. */
HOT static float karcher_first_mean(float *mean, const float **u, const float *a, Py_ssize_t k,
                                    Py_ssize_t n) {
    Norm q;
    norm_init(&q, n);
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        float *t = mean + s;
        for (Py_ssize_t j = 0; j < m; j++) t[j] = 0.0f;
        for (Py_ssize_t i = 0; i < k; i++) {
            const float ai = a[i], *ui = u[i] + s;
            for (Py_ssize_t j = 0; j < m; j++) t[j] = t[j] + ai * ui[j];
        }
        norm_feed(&q, t, s, m);
    }
    return norm_end(&q);
}

/* tangent = 0 + sum_i s_i (u_i - c_i mean), in input order; returns |tangent|. */
HOT static float karcher_tangent(float *tangent, const float *mean, const float **u,
                                 const float *sc, const float *c, Py_ssize_t k, Py_ssize_t n) {
    Norm q;
    norm_init(&q, n);
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        float *t = tangent + s;
        const float *mm = mean + s;
        for (Py_ssize_t j = 0; j < m; j++) t[j] = 0.0f;
        for (Py_ssize_t i = 0; i < k; i++) {
            const float si = sc[i], ci = c[i], *ui = u[i] + s;
            for (Py_ssize_t j = 0; j < m; j++) t[j] = t[j] + si * (ui[j] - ci * mm[j]);
        }
        norm_feed(&q, t, s, m);
    }
    return norm_end(&q);
}

/* mean = cos(step) mean + sin(step) (tangent / step), in place; returns |mean|. */
HOT static float karcher_update(float *mean, const float *tangent, float cs, float sn,
                                float step, Py_ssize_t n) {
    Norm q;
    norm_init(&q, n);
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        float *t = mean + s;
        const float *g = tangent + s;
        for (Py_ssize_t j = 0; j < m; j++) t[j] = cs * t[j] + sn * (g[j] / step);
        norm_feed(&q, t, s, m);
    }
    return norm_end(&q);
}

/* out = scale * mean, in the output's format. */
HOT static void karcher_out(void *out, int out_fmt, const float *mean, float scale, Py_ssize_t n) {
    float v[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        for (Py_ssize_t j = 0; j < m; j++) v[j] = scale * mean[s + j];
        narrow(out, out_fmt, s, v, m);
    }
}

/* ------------------------------------------------------------------ MKL's generic sdot order */

/* torch.dot of two fp32 vectors is MKL's sdot. On CPUs it has no AVX2/AVX-512 kernel for (AMD's
 * among them) MKL runs its generic SSE kernel, mkl_blas_def_xsdot, and for 16-byte-aligned
 * arrays its order is: four vectors of four accumulators, i.e. 16 lanes, lane l summing the
 * products of elements l, l + 16, ... of each whole block of 32 (each product rounded, then
 * added: no FMA); of the last n % 32 elements one block of 16 (lanes 0-15), one of 8 (lanes
 * 0-7), one of 4 (lanes 0-3), as far as they go, then the rest into lane 0 one at a time; then
 * s_l = ((lane l + lane 4+l) + lane 8+l) + lane 12+l for l < 4 and (s0 + s2) + (s1 + s3).
 * Python checks it against MKL's own sdot in the running process before using it
 * (ops/lane_karcher.py): on CPUs where MKL picks another kernel the lane calls MKL. */

/* Lanes of the sum of x[j] * y[j], elements s .. s + m of n (s a multiple of 32). */
HOT4 static void dot_feed(float *restrict acc, const float *restrict x, const float *restrict y,
                         Py_ssize_t s, Py_ssize_t m, Py_ssize_t n) {
    Py_ssize_t body = n - n % 32 - s; /* this tile's whole blocks of 32 */
    body = body < 0 ? 0 : (body > m ? m : body);
    float a[16];
    memcpy(a, acc, sizeof a);
    Py_ssize_t j = 0;
    for (; j < body; j += 16)
        for (int l = 0; l < 16; l++) a[l] = a[l] + x[j + l] * y[j + l];
    Py_ssize_t r = m - j; /* the tail, n % 32 elements, in this tile only */
    for (int w = 16; w >= 4; w /= 2)
        if (r >= w) {
            for (int l = 0; l < w; l++) a[l] = a[l] + x[j + l] * y[j + l];
            j += w;
            r -= w;
        }
    for (; r > 0; r--, j++) a[0] = a[0] + x[j] * y[j];
    memcpy(acc, a, sizeof a);
}

static float dot_end(const float *a) {
    float s[4];
    for (int l = 0; l < 4; l++) s[l] = ((a[l] + a[4 + l]) + a[8 + l]) + a[12 + l];
    return (s[0] + s[2]) + (s[1] + s[3]);
}

/* ------------------------------------------------------------------ passes on the inputs */

/* The same steps with the unit vectors u_i = x_i / |x_i| made tile by tile from the inputs
 * (each value the fp32 quotient karcher_scale writes) instead of kept as fp32 arrays: the dot
 * products are summed here in MKL's order (above), so nothing needs to be materialised for it. */

typedef struct {
    Py_ssize_t k;
    Buf bufs[KARCHER_MAX];
    const void *ptrs[KARCHER_MAX];
    int fmts[KARCHER_MAX];
    float norms[KARCHER_MAX], a[KARCHER_MAX], b[KARCHER_MAX];
} KInputs;

/* u = x_i / norm_i for a tile: in buf, or the input itself when it is fp32 and the norm 1 (the
 * unit vectors kept as fp32 arrays: x / 1 is x). */
static inline const float *unit_tile(float *buf, const KInputs *in, Py_ssize_t i, Py_ssize_t s,
                                     Py_ssize_t m) {
    const float d = in->norms[i];
    if (in->fmts[i] == FMT_F32 && d == 1.0f) return (const float *)in->ptrs[i] + s;
    if (in->fmts[i] == FMT_BF16) { /* inline: widen's call was a seventh of these passes */
        const uint16_t *x = (const uint16_t *)in->ptrs[i] + s;
        for (Py_ssize_t j = 0; j < m; j++) buf[j] = bf16_to_f32(x[j]) / d;
        return buf;
    }
    widen(buf, in->ptrs[i], in->fmts[i], s, m);
    for (Py_ssize_t j = 0; j < m; j++) buf[j] = buf[j] / d;
    return buf;
}

/* mean = 0 + a_0 u_0 + a_1 u_1 + ...; returns |mean|. */
HOT4 static float karcher_x_first_mean(float *mean, const KInputs *in, Py_ssize_t n) {
    Norm q;
    norm_init(&q, n);
    float ub[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        float *t = mean + s;
        for (Py_ssize_t j = 0; j < m; j++) t[j] = 0.0f;
        for (Py_ssize_t i = 0; i < in->k; i++) {
            const float *u = unit_tile(ub, in, i, s, m);
            const float ai = in->a[i];
            for (Py_ssize_t j = 0; j < m; j++) t[j] = t[j] + ai * u[j];
        }
        norm_feed(&q, t, s, m);
    }
    return norm_end(&q);
}

/* mean = mean / d (when divide), then dots[i] = torch.dot(mean, u_i) (when dots). */
HOT4 static void karcher_x_dots(float *mean, int divide, float d, const KInputs *in, int dots,
                               float *out, Py_ssize_t n) {
    float acc[KARCHER_MAX][16];
    memset(acc, 0, sizeof acc);
    float ub[TILE];
    int all_bf16 = 1;
    for (Py_ssize_t i = 0; i < in->k; i++) all_bf16 &= in->fmts[i] == FMT_BF16;
    const Py_ssize_t body = n - n % 32; /* MKL's whole blocks of 32 */
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        float *t = mean + s;
        if (dots && all_bf16 && s + m <= body) { /* the same sums, 16 lanes in registers */
            for (Py_ssize_t j = 0; j < m; j += 16) {
                float v[16];
                for (int l = 0; l < 16; l++) v[l] = divide ? t[j + l] / d : t[j + l];
                memcpy(t + j, v, sizeof v);
                for (Py_ssize_t i = 0; i < in->k; i++) {
                    const uint16_t *x = (const uint16_t *)in->ptrs[i] + s + j;
                    const float di = in->norms[i];
                    float *a = acc[i];
                    for (int l = 0; l < 16; l++) a[l] = a[l] + v[l] * (bf16_to_f32(x[l]) / di);
                }
            }
            continue;
        }
        if (divide)
            for (Py_ssize_t j = 0; j < m; j++) t[j] = t[j] / d;
        if (!dots) continue;
        for (Py_ssize_t i = 0; i < in->k; i++) {
            dot_feed(acc[i], t, unit_tile(ub, in, i, s, m), s, m, n);
        }
    }
    for (Py_ssize_t i = 0; dots && i < in->k; i++) out[i] = dot_end(acc[i]);
}

/* tangent = 0 + sum_i s_i (u_i - c_i mean), in input order; returns |tangent|. */
HOT4 static float karcher_x_tangent(float *tangent, const float *mean, const KInputs *in,
                                   Py_ssize_t n) {
    Norm q;
    norm_init(&q, n);
    int all_bf16 = 1;
    for (Py_ssize_t i = 0; i < in->k; i++) all_bf16 &= in->fmts[i] == FMT_BF16;
    float ub[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        float *t = tangent + s;
        const float *mm = mean + s;
        if (all_bf16 && m % 16 == 0) { /* the same sums, 16 elements at a time in registers */
            for (Py_ssize_t j = 0; j < m; j += 16) {
                float v[16] = {0};
                for (Py_ssize_t i = 0; i < in->k; i++) {
                    const uint16_t *x = (const uint16_t *)in->ptrs[i] + s + j;
                    const float si = in->a[i], ci = in->b[i], d = in->norms[i];
                    for (int l = 0; l < 16; l++)
                        v[l] = v[l] + si * (bf16_to_f32(x[l]) / d - ci * mm[j + l]);
                }
                memcpy(t + j, v, sizeof v);
            }
            norm_feed(&q, t, s, m);
            continue;
        }
        for (Py_ssize_t j = 0; j < m; j++) t[j] = 0.0f;
        for (Py_ssize_t i = 0; i < in->k; i++) {
            const float *u = unit_tile(ub, in, i, s, m);
            const float si = in->a[i], ci = in->b[i];
            for (Py_ssize_t j = 0; j < m; j++) t[j] = t[j] + si * (u[j] - ci * mm[j]);
        }
        norm_feed(&q, t, s, m);
    }
    return norm_end(&q);
}

/* ------------------------------------------------------------------ argument handling */

/* A writable fp32 buffer of n elements (n < 0: any, set). */
static int get_f32(PyObject *o, Py_ssize_t *n, int writable, Buf *b, const char *what) {
    return get_fmt_buf(o, FMT_F32, n, writable, b, what);
}

/* A sequence of k fp32 buffers of n elements, with k floats each from two more sequences. */
typedef struct {
    Py_ssize_t k;
    Buf bufs[KARCHER_MAX];
    const float *ptrs[KARCHER_MAX];
    float a[KARCHER_MAX], b[KARCHER_MAX];
} Units;

static void units_release(Units *u) {
    for (Py_ssize_t i = 0; i < u->k; i++) release(&u->bufs[i]);
    u->k = 0;
}

static int get_units(PyObject *seq, PyObject *a_o, PyObject *b_o, Py_ssize_t n, Units *u) {
    u->k = 0;
    PyObject *fast = PySequence_Fast(seq, "expected a sequence of fp32 arrays");
    if (!fast) return -1;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(fast);
    if (k > KARCHER_MAX) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "at most %d arrays", KARCHER_MAX);
        return -1;
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        Py_ssize_t len = n;
        if (get_f32(PySequence_Fast_GET_ITEM(fast, i), &len, 0, &u->bufs[i], "units") < 0) {
            Py_DECREF(fast);
            units_release(u);
            return -1;
        }
        u->ptrs[i] = u->bufs[i].view.buf;
        u->k = i + 1;
    }
    Py_DECREF(fast);
    if (get_floats(a_o, u->a, k) < 0 || (b_o && get_floats(b_o, u->b, k) < 0)) {
        units_release(u);
        return -1;
    }
    return 0;
}

/* karcher_scale(out_f32, x, x_fmt, d) */
PyObject *py_karcher_scale(PyObject *self, PyObject *args) {
    PyObject *out_o, *x_o;
    int fmt;
    double d;
    if (!PyArg_ParseTuple(args, "OOid", &out_o, &x_o, &fmt, &d)) return NULL;
    Py_ssize_t n = -1;
    Buf out, x;
    if (get_f32(out_o, &n, 1, &out, "out") < 0) return NULL;
    if (get_fmt_buf(x_o, fmt, &n, 0, &x, "x") < 0) {
        release(&out);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    karcher_scale(out.view.buf, x.view.buf, fmt, n, (float)d);
    Py_END_ALLOW_THREADS
    release(&x);
    release(&out);
    Py_RETURN_NONE;
}

/* karcher_first_mean(mean_f32, units, weights) -> |mean| */
PyObject *py_karcher_first_mean(PyObject *self, PyObject *args) {
    PyObject *mean_o, *u_o, *a_o;
    if (!PyArg_ParseTuple(args, "OOO", &mean_o, &u_o, &a_o)) return NULL;
    Py_ssize_t n = -1;
    Buf mean;
    Units u;
    if (get_f32(mean_o, &n, 1, &mean, "mean") < 0) return NULL;
    if (get_units(u_o, a_o, NULL, n, &u) < 0) {
        release(&mean);
        return NULL;
    }
    float r;
    Py_BEGIN_ALLOW_THREADS
    r = karcher_first_mean(mean.view.buf, u.ptrs, u.a, u.k, n);
    Py_END_ALLOW_THREADS
    units_release(&u);
    release(&mean);
    return PyFloat_FromDouble(r);
}

/* karcher_tangent(tangent_f32, mean_f32, units, factors, cosines) -> |tangent| */
PyObject *py_karcher_tangent(PyObject *self, PyObject *args) {
    PyObject *t_o, *mean_o, *u_o, *s_o, *c_o;
    if (!PyArg_ParseTuple(args, "OOOOO", &t_o, &mean_o, &u_o, &s_o, &c_o)) return NULL;
    Py_ssize_t n = -1;
    Buf t, mean;
    Units u;
    if (get_f32(t_o, &n, 1, &t, "tangent") < 0) return NULL;
    if (get_f32(mean_o, &n, 0, &mean, "mean") < 0) {
        release(&t);
        return NULL;
    }
    if (get_units(u_o, s_o, c_o, n, &u) < 0) {
        release(&mean);
        release(&t);
        return NULL;
    }
    float r;
    Py_BEGIN_ALLOW_THREADS
    r = karcher_tangent(t.view.buf, mean.view.buf, u.ptrs, u.a, u.b, u.k, n);
    Py_END_ALLOW_THREADS
    units_release(&u);
    release(&mean);
    release(&t);
    return PyFloat_FromDouble(r);
}

/* karcher_update(mean_f32, tangent_f32, cos_step, sin_step, step) -> |mean| */
PyObject *py_karcher_update(PyObject *self, PyObject *args) {
    PyObject *mean_o, *t_o;
    double cs, sn, step;
    if (!PyArg_ParseTuple(args, "OOddd", &mean_o, &t_o, &cs, &sn, &step)) return NULL;
    Py_ssize_t n = -1;
    Buf mean, t;
    if (get_f32(mean_o, &n, 1, &mean, "mean") < 0) return NULL;
    if (get_f32(t_o, &n, 0, &t, "tangent") < 0) {
        release(&mean);
        return NULL;
    }
    float r;
    Py_BEGIN_ALLOW_THREADS
    r = karcher_update(mean.view.buf, t.view.buf, (float)cs, (float)sn, (float)step, n);
    Py_END_ALLOW_THREADS
    release(&t);
    release(&mean);
    return PyFloat_FromDouble(r);
}

/* karcher_out(out, out_fmt, mean_f32, scale) */
PyObject *py_karcher_out(PyObject *self, PyObject *args) {
    PyObject *out_o, *mean_o;
    int out_fmt;
    double scale;
    if (!PyArg_ParseTuple(args, "OiOd", &out_o, &out_fmt, &mean_o, &scale)) return NULL;
    Py_ssize_t n = -1;
    Buf out, mean;
    if (get_fmt_buf(out_o, out_fmt, &n, 1, &out, "out") < 0) return NULL;
    if (get_f32(mean_o, &n, 0, &mean, "mean") < 0) {
        release(&out);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    karcher_out(out.view.buf, out_fmt, mean.view.buf, (float)scale, n);
    Py_END_ALLOW_THREADS
    release(&mean);
    release(&out);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ the passes on the inputs */

static void kin_release(KInputs *in) {
    for (Py_ssize_t i = 0; i < in->k; i++) release(&in->bufs[i]);
    in->k = 0;
}

/* k inputs (a sequence), their formats and norms, and optional per-input floats a and b. */
static int get_kinputs(PyObject *seq, PyObject *fmts_o, PyObject *norms_o, PyObject *a_o,
                      PyObject *b_o, Py_ssize_t n, KInputs *in) {
    in->k = 0;
    PyObject *fast = PySequence_Fast(seq, "expected a sequence of arrays");
    if (!fast) return -1;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(fast);
    if (k > KARCHER_MAX) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "at most %d arrays", KARCHER_MAX);
        return -1;
    }
    PyObject *ff = PySequence_Fast(fmts_o, "expected a sequence of formats");
    if (!ff || PySequence_Fast_GET_SIZE(ff) != k) {
        if (ff) PyErr_SetString(PyExc_ValueError, "one format per input");
        Py_XDECREF(ff);
        Py_DECREF(fast);
        return -1;
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        long f = PyLong_AsLong(PySequence_Fast_GET_ITEM(ff, i));
        if (f == -1 && PyErr_Occurred()) goto fail;
        in->fmts[i] = (int)f;
        Py_ssize_t len = n;
        if (get_fmt_buf(PySequence_Fast_GET_ITEM(fast, i), in->fmts[i], &len, 0, &in->bufs[i],
                        "inputs") < 0)
            goto fail;
        in->ptrs[i] = in->bufs[i].view.buf;
        in->k = i + 1;
    }
    Py_DECREF(ff);
    Py_DECREF(fast);
    if (get_floats(norms_o, in->norms, k) < 0 || (a_o && get_floats(a_o, in->a, k) < 0) ||
        (b_o && get_floats(b_o, in->b, k) < 0)) {
        kin_release(in);
        return -1;
    }
    return 0;
fail:
    Py_DECREF(ff);
    Py_DECREF(fast);
    kin_release(in);
    return -1;
}

/* karcher_x_first_mean(mean_f32, inputs, fmts, norms, weights) -> |mean| */
PyObject *py_karcher_x_first_mean(PyObject *self, PyObject *args) {
    PyObject *mean_o, *x_o, *f_o, *n_o, *a_o;
    if (!PyArg_ParseTuple(args, "OOOOO", &mean_o, &x_o, &f_o, &n_o, &a_o)) return NULL;
    Py_ssize_t n = -1;
    Buf mean;
    KInputs in;
    if (get_f32(mean_o, &n, 1, &mean, "mean") < 0) return NULL;
    if (get_kinputs(x_o, f_o, n_o, a_o, NULL, n, &in) < 0) {
        release(&mean);
        return NULL;
    }
    float r;
    Py_BEGIN_ALLOW_THREADS
    r = karcher_x_first_mean(mean.view.buf, &in, n);
    Py_END_ALLOW_THREADS
    kin_release(&in);
    release(&mean);
    return PyFloat_FromDouble(r);
}

/* karcher_x_dots(mean_f32, d or None, inputs, fmts, norms, dots) -> [torch.dot(mean, u_i)] or
 * None: mean /= d first (in place) when d is given. */
PyObject *py_karcher_x_dots(PyObject *self, PyObject *args) {
    PyObject *mean_o, *d_o, *x_o, *f_o, *n_o;
    int dots;
    if (!PyArg_ParseTuple(args, "OOOOOp", &mean_o, &d_o, &x_o, &f_o, &n_o, &dots)) return NULL;
    double d = 1.0;
    if (d_o != Py_None && (d = PyFloat_AsDouble(d_o)) == -1.0 && PyErr_Occurred()) return NULL;
    Py_ssize_t n = -1;
    Buf mean;
    KInputs in;
    if (get_f32(mean_o, &n, 1, &mean, "mean") < 0) return NULL;
    if (get_kinputs(x_o, f_o, n_o, NULL, NULL, n, &in) < 0) {
        release(&mean);
        return NULL;
    }
    float out[KARCHER_MAX];
    Py_BEGIN_ALLOW_THREADS
    karcher_x_dots(mean.view.buf, d_o != Py_None, (float)d, &in, dots, out, n);
    Py_END_ALLOW_THREADS
    Py_ssize_t k = in.k;
    kin_release(&in);
    release(&mean);
    if (!dots) Py_RETURN_NONE;
    PyObject *res = PyList_New(k);
    for (Py_ssize_t i = 0; res && i < k; i++) {
        PyObject *v = PyFloat_FromDouble(out[i]);
        if (!v) {
            Py_CLEAR(res);
            break;
        }
        PyList_SET_ITEM(res, i, v);
    }
    return res;
}

/* karcher_x_tangent(tangent_f32, mean_f32, inputs, fmts, norms, factors, cosines) -> |tangent| */
PyObject *py_karcher_x_tangent(PyObject *self, PyObject *args) {
    PyObject *t_o, *mean_o, *x_o, *f_o, *n_o, *s_o, *c_o;
    if (!PyArg_ParseTuple(args, "OOOOOOO", &t_o, &mean_o, &x_o, &f_o, &n_o, &s_o, &c_o))
        return NULL;
    Py_ssize_t n = -1;
    Buf t, mean;
    KInputs in;
    if (get_f32(t_o, &n, 1, &t, "tangent") < 0) return NULL;
    if (get_f32(mean_o, &n, 0, &mean, "mean") < 0) {
        release(&t);
        return NULL;
    }
    if (get_kinputs(x_o, f_o, n_o, s_o, c_o, n, &in) < 0) {
        release(&mean);
        release(&t);
        return NULL;
    }
    float r;
    Py_BEGIN_ALLOW_THREADS
    r = karcher_x_tangent(t.view.buf, mean.view.buf, &in, n);
    Py_END_ALLOW_THREADS
    kin_release(&in);
    release(&mean);
    release(&t);
    return PyFloat_FromDouble(r);
}

/* mkl_def_sdot(x_f32, y_f32) -> the dot product in mkl_blas_def_xsdot's order (for the check
 * against MKL's own sdot, and tests) */
PyObject *py_mkl_def_sdot(PyObject *self, PyObject *args) {
    PyObject *x_o, *y_o;
    if (!PyArg_ParseTuple(args, "OO", &x_o, &y_o)) return NULL;
    Py_ssize_t n = -1;
    Buf x, y;
    if (get_f32(x_o, &n, 0, &x, "x") < 0) return NULL;
    if (get_f32(y_o, &n, 0, &y, "y") < 0) {
        release(&x);
        return NULL;
    }
    float acc[16] = {0};
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t s = 0; s < n; s += TILE)
        dot_feed(acc, (const float *)x.view.buf + s, (const float *)y.view.buf + s, s,
                 n - s < TILE ? n - s : TILE, n);
    Py_END_ALLOW_THREADS
    release(&y);
    release(&x);
    return PyFloat_FromDouble(dot_end(acc));
}
