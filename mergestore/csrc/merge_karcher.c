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
