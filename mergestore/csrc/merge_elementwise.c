/* nearswap and ram (ops/nearswap.py, ops/ram.py) in any compute format, on inputs and an
 * output of any float format (FMT_BF16, FMT_F16, FMT_F32), mixed. Python side:
 * mergestore/ops/lane_elementwise.py; tests/ops/test_lanes.py compares both with torch.
 *
 * torch casts each input to the compute dtype, computes every operation in fp32 and rounds its
 * result to the compute dtype (a no-op for fp32), and casts the result to the output dtype.
 * These kernels do the same operations in the same order on tiles: widen (exact), round to
 * the compute format (RC), then each operation followed by RC, and narrow to the output. */
#include "formats.h"

/* nearswap: d = RC(a - b); w = clamp(RC(RC(1 / max(|d|, lo)) * t), 0, 1);
 * out = RC(RC(w * b) + RC(RC(1 - w) * a)), a the base. torch computes t / x as
 * reciprocal(x) * t (Tensor.__rtruediv__), and a Python scalar factor in fp32. */
HOT static void nearswap(void *out, int out_fmt, int cfmt, const void *base, int base_fmt,
                         const void *other, int other_fmt, Py_ssize_t n, float t, float lo) {
    float a[TILE], b[TILE], w[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        load_tile(a, base, base_fmt, cfmt, s, m);
        load_tile(b, other, other_fmt, cfmt, s, m);
        for (Py_ssize_t j = 0; j < m; j++) w[j] = a[j] - b[j];
        round_tile(w, m, cfmt);
        for (Py_ssize_t j = 0; j < m; j++) {
            float d = fabsf(w[j]);
            w[j] = 1.0f / (d < lo ? lo : d);
        }
        round_tile(w, m, cfmt);
        for (Py_ssize_t j = 0; j < m; j++) w[j] = w[j] * t;
        round_tile(w, m, cfmt);
        for (Py_ssize_t j = 0; j < m; j++) {
            float v = w[j] < 0.0f ? 0.0f : w[j];
            w[j] = v > 1.0f ? 1.0f : v;
        }
        for (Py_ssize_t j = 0; j < m; j++) {
            b[j] = w[j] * b[j];      /* w * b */
            w[j] = 1.0f - w[j];      /* 1 - w */
        }
        round_tile(b, m, cfmt);
        round_tile(w, m, cfmt);
        for (Py_ssize_t j = 0; j < m; j++) w[j] = w[j] * a[j];
        round_tile(w, m, cfmt);
        for (Py_ssize_t j = 0; j < m; j++) w[j] = b[j] + w[j];
        round_tile(w, m, cfmt);
        narrow(out, out_fmt, s, w, m);
    }
}

/* ram: tau_i = RC(x_i - a); active_i = |tau_i| > threshold; c = number of active inputs;
 * term_i = RC(tau_i * active_i * (c == 1) + RC(RC(tau_i * active_i * (c > 1)) / max(c, 1)));
 * out = RC(a + RC(sum_i term_i)), the sum in fp32 in input order (torch's dim-0 sum, rounded
 * once to a 16-bit format). Every product by a 0/1 mask is taken as torch takes it (a negative
 * tau times 0 is -0). */
#define RAM_MAX 4
HOT static void ram(void *out, int out_fmt, int cfmt, const void *base, int base_fmt,
                    const void **xs, const int *fmts, Py_ssize_t k, Py_ssize_t n,
                    float threshold) {
    float a[TILE], tau[RAM_MAX][TILE], cnt[TILE], acc[TILE], t1[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        load_tile(a, base, base_fmt, cfmt, s, m);
        for (Py_ssize_t j = 0; j < m; j++) cnt[j] = 0.0f;
        for (Py_ssize_t i = 0; i < k; i++) {
            load_tile(tau[i], xs[i], fmts[i], cfmt, s, m);
            for (Py_ssize_t j = 0; j < m; j++) tau[i][j] = tau[i][j] - a[j];
            round_tile(tau[i], m, cfmt);
            for (Py_ssize_t j = 0; j < m; j++) {
                float act = fabsf(tau[i][j]) > threshold ? 1.0f : 0.0f;
                tau[i][j] = tau[i][j] * act;
                cnt[j] += act;
            }
        }
        for (Py_ssize_t j = 0; j < m; j++) acc[j] = 0.0f;
        for (Py_ssize_t i = 0; i < k; i++) {
            for (Py_ssize_t j = 0; j < m; j++) t1[j] = tau[i][j] * (cnt[j] > 1.0f ? 1.0f : 0.0f);
            round_tile(t1, m, cfmt); /* no-op: a product by 0 or 1 */
            for (Py_ssize_t j = 0; j < m; j++) t1[j] = t1[j] / (cnt[j] < 1.0f ? 1.0f : cnt[j]);
            round_tile(t1, m, cfmt);
            for (Py_ssize_t j = 0; j < m; j++)
                t1[j] = tau[i][j] * (cnt[j] == 1.0f ? 1.0f : 0.0f) + t1[j];
            round_tile(t1, m, cfmt);
            for (Py_ssize_t j = 0; j < m; j++) acc[j] = acc[j] + t1[j];
        }
        round_tile(acc, m, cfmt);
        for (Py_ssize_t j = 0; j < m; j++) acc[j] = a[j] + acc[j];
        round_tile(acc, m, cfmt);
        narrow(out, out_fmt, s, acc, m);
    }
}

/* ------------------------------------------------------------------ argument handling */

/* out (format out_fmt) and the inputs [base, x1, ...] (formats fmts) of one length. */
static int get_operands(PyObject *out_o, int out_fmt, int cfmt, PyObject *xs_o,
                        PyObject *fmts_o, Py_ssize_t *n, Buf *out, Inputs *in,
                        Py_ssize_t min_k, Py_ssize_t max_k) {
    if (check_fmt(cfmt) < 0) return -1;
    if (get_fmt_buf(out_o, out_fmt, n, 1, out, "out") < 0) return -1;
    if (get_inputs(xs_o, fmts_o, *n, in) < 0) {
        release(out);
        return -1;
    }
    if (in->k < min_k || in->k > max_k) {
        PyErr_Format(PyExc_ValueError, "expected %zd to %zd arrays (the base first), got %zd",
                     min_k, max_k, in->k);
        inputs_release(in);
        release(out);
        return -1;
    }
    return 0;
}

/* nearswap(out, out_fmt, compute_fmt, [base, other], fmts, t, clamp_min) */
PyObject *py_nearswap(PyObject *self, PyObject *args) {
    PyObject *out_o, *xs_o, *fmts_o;
    int out_fmt, cfmt;
    double t, lo;
    if (!PyArg_ParseTuple(args, "OiiOOdd", &out_o, &out_fmt, &cfmt, &xs_o, &fmts_o, &t, &lo))
        return NULL;
    Py_ssize_t n = -1;
    Buf out;
    Inputs in;
    if (get_operands(out_o, out_fmt, cfmt, xs_o, fmts_o, &n, &out, &in, 2, 2) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    nearswap(out.view.buf, out_fmt, cfmt, in.ptrs[0], in.fmts[0], in.ptrs[1], in.fmts[1], n,
             (float)t, (float)lo);
    Py_END_ALLOW_THREADS
    inputs_release(&in);
    release(&out);
    Py_RETURN_NONE;
}

/* ram(out, out_fmt, compute_fmt, [base, x1, ...], fmts, threshold): 1 to RAM_MAX inputs */
PyObject *py_ram(PyObject *self, PyObject *args) {
    PyObject *out_o, *xs_o, *fmts_o;
    int out_fmt, cfmt;
    double threshold;
    if (!PyArg_ParseTuple(args, "OiiOOd", &out_o, &out_fmt, &cfmt, &xs_o, &fmts_o, &threshold))
        return NULL;
    Py_ssize_t n = -1;
    Buf out;
    Inputs in;
    if (get_operands(out_o, out_fmt, cfmt, xs_o, fmts_o, &n, &out, &in, 2, RAM_MAX + 1) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ram(out.view.buf, out_fmt, cfmt, in.ptrs[0], in.fmts[0], in.ptrs + 1, in.fmts + 1, in.k - 1,
        n, (float)threshold);
    Py_END_ALLOW_THREADS
    inputs_release(&in);
    release(&out);
    Py_RETURN_NONE;
}
