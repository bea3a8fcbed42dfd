/* Whole-tensor reductions in torch's order, and model_stock in fp32 and bf16 compute
 * (ops/model_stock.py) on inputs of any float format. Python side: mergestore/ops/lane_reduce.py;
 * tests/ops/test_lanes.py compares both with torch.
 *
 * torch (2.x, CPU, one thread) reduces a contiguous fp32 tensor with its AVX2 kernels (also on
 * AVX-512 machines: these kernels are not built for AVX-512), in these orders (measured
 * against torch on sizes 1 to 3M):
 *   - the 2-norm (torch.norm, linalg.vector_norm): eight lane accumulators acc[i % 8] +=
 *     x * x (a product rounded, then a sum: no FMA) over the whole 8-element vectors, the lanes
 *     added in order, then the tail elements, then the square root;
 *   - the sum (SumKernel.cpp's cascade_sum): rows of four 8-lane vectors accumulated in a
 *     cascade of four levels (each level takes 2^max(4, ceil(log2(rows)) / 4) rows of the one
 *     below), the leftover vectors added to the first, the four vectors added in order, then
 *     the scalar tail summed from 0 plus the eight lanes in order; under 8 elements, four
 *     scalar accumulators the same way. */
#include "formats.h"

#include "cascade.h"
#include "torch_norm.h"

/* ------------------------------------------------------------------ model_stock, fp32 */

#define MS_MAX 8 /* inputs per call: 8 norms and 28 pair products per tile */
#define MS_PAIRS (MS_MAX * (MS_MAX - 1) / 2)

/* The norms |o_i| and the pair dot products o_i . o_j (i < j, in order (0,1), (0,2), ...) of
 * the offsets o_i = x_i - base, each in torch's order. */
HOT static void model_stock_stats32(const void *base, int base_fmt, const void **xs,
                                    const int *fmts, Py_ssize_t k, Py_ssize_t n, float *norms,
                                    float *dots) {
    float b[TILE], o[MS_MAX][TILE], p[TILE];
    Norm nq[MS_MAX];
    Cascade cs[MS_PAIRS];
    for (Py_ssize_t i = 0; i < k; i++) norm_init(&nq[i], n);
    for (Py_ssize_t q = 0; q < k * (k - 1) / 2; q++) cascade_init(&cs[q], n);
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        widen(b, base, base_fmt, s, m);
        for (Py_ssize_t i = 0; i < k; i++) {
            widen(o[i], xs[i], fmts[i], s, m);
            for (Py_ssize_t j = 0; j < m; j++) o[i][j] = o[i][j] - b[j];
            norm_feed(&nq[i], o[i], s, m);
        }
        Py_ssize_t q = 0;
        for (Py_ssize_t i = 0; i < k; i++)
            for (Py_ssize_t i2 = i + 1; i2 < k; i2++, q++) {
                for (Py_ssize_t j = 0; j < m; j++) p[j] = o[i][j] * o[i2][j];
                cascade_feed(&cs[q], p, s, m);
            }
    }
    for (Py_ssize_t i = 0; i < k; i++) norms[i] = norm_end(&nq[i]);
    for (Py_ssize_t q = 0; q < k * (k - 1) / 2; q++) dots[q] = cascade_end(&cs[q]);
}

/* out = ((x_0 + 0 + x_1 + ... + x_k-1) / k) * t + one_minus_t * base, each step rounded to fp32
 * (model_stock's in-place accumulation), stored in the output format. */
HOT static void model_stock_mix32(void *out, int out_fmt, const void *base, int base_fmt,
                                  const void **xs, const int *fmts, Py_ssize_t k, Py_ssize_t n,
                                  float t, float one_minus_t) {
    float acc[TILE], x[TILE];
    const float kf = (float)k;
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        widen(acc, xs[0], fmts[0], s, m);
        for (Py_ssize_t j = 0; j < m; j++) acc[j] = acc[j] + 0.0f;
        for (Py_ssize_t i = 1; i < k; i++) {
            widen(x, xs[i], fmts[i], s, m);
            for (Py_ssize_t j = 0; j < m; j++) acc[j] = acc[j] + x[j];
        }
        widen(x, base, base_fmt, s, m);
        for (Py_ssize_t j = 0; j < m; j++) acc[j] = (acc[j] / kf) * t + one_minus_t * x[j];
        narrow(out, out_fmt, s, acc, m);
    }
}

/* ------------------------------------------------------------------ model_stock, bf16 */

/* model_stock in bf16 compute (mergekit's `dtype: bfloat16`), n a multiple of 16: every
 * elementwise step rounded to bf16 as torch rounds it, and torch's two bf16 reductions:
 *   - the 2-norm (ReduceOpsKernel.cpp's last-dim path for bf16): 16-element vectors widened to
 *     two 8-lane halves, each squared and added to one fp32 8-lane accumulator, so element i
 *     goes to lane i % 8 in order, as in the fp32 norm; the square root rounded to bf16;
 *   - the sum (SumKernel.cpp, bf16 loads): each 16-element vector is loaded as the sum of its
 *     two widened halves, p[16q + l] + p[16q + 8 + l], and those 8-lane vectors go through the
 *     fp32 cascade; the result rounded to bf16. */
HOT static void model_stock_stats16(const void *base, int base_fmt, const void **xs,
                                    const int *fmts, Py_ssize_t k, Py_ssize_t n, float *norms,
                                    float *dots) {
    float b[TILE], o[MS_MAX][TILE], p[TILE], y[TILE / 2];
    Norm nq[MS_MAX];
    Cascade cs[MS_PAIRS];
    for (Py_ssize_t i = 0; i < k; i++) norm_init(&nq[i], n);
    for (Py_ssize_t q = 0; q < k * (k - 1) / 2; q++) cascade_init(&cs[q], n / 2);
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE; /* a multiple of 16 */
        load_tile(b, base, base_fmt, FMT_BF16, s, m);
        for (Py_ssize_t i = 0; i < k; i++) {
            load_tile(o[i], xs[i], fmts[i], FMT_BF16, s, m);
            for (Py_ssize_t j = 0; j < m; j++) o[i][j] = r16(o[i][j] - b[j]);
            norm_feed(&nq[i], o[i], s, m);
        }
        Py_ssize_t q = 0;
        for (Py_ssize_t i = 0; i < k; i++)
            for (Py_ssize_t i2 = i + 1; i2 < k; i2++, q++) {
                for (Py_ssize_t j = 0; j < m; j++) p[j] = r16(o[i][j] * o[i2][j]);
                for (Py_ssize_t v = 0; v < m; v += 16)
                    for (int l = 0; l < 8; l++) y[v / 2 + l] = p[v + l] + p[v + 8 + l];
                cascade_feed(&cs[q], y, s / 2, m / 2);
            }
    }
    for (Py_ssize_t i = 0; i < k; i++) norms[i] = bf16_to_f32(rne16_nan(norm_end(&nq[i])));
    for (Py_ssize_t q = 0; q < k * (k - 1) / 2; q++)
        dots[q] = bf16_to_f32(rne16_nan(cascade_end(&cs[q])));
}

/* out = bf16 steps of model_stock's mix: acc = x_0 + 0, acc += x_i, acc /= k, acc *= t,
 * acc += one_minus_t * base, every result rounded to bf16; stored in the output format. */
HOT static void model_stock_mix16(void *out, int out_fmt, const void *base, int base_fmt,
                                  const void **xs, const int *fmts, Py_ssize_t k, Py_ssize_t n,
                                  float t, float one_minus_t) {
    float acc[TILE], x[TILE];
    const float kf = (float)k;
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        load_tile(acc, xs[0], fmts[0], FMT_BF16, s, m);
        for (Py_ssize_t j = 0; j < m; j++) acc[j] = r16(acc[j] + 0.0f);
        for (Py_ssize_t i = 1; i < k; i++) {
            load_tile(x, xs[i], fmts[i], FMT_BF16, s, m);
            for (Py_ssize_t j = 0; j < m; j++) acc[j] = r16(acc[j] + x[j]);
        }
        load_tile(x, base, base_fmt, FMT_BF16, s, m);
        for (Py_ssize_t j = 0; j < m; j++) {
            float a = r16(r16(acc[j] / kf) * t);
            acc[j] = r16(a + r16(one_minus_t * x[j]));
        }
        narrow(out, out_fmt, s, acc, m);
    }
}

/* ------------------------------------------------------------------ argument handling */

/* torch_sum32(values_f32) -> float: torch's sum of a contiguous fp32 array. */
PyObject *py_torch_sum32(PyObject *self, PyObject *args) {
    PyObject *o;
    if (!PyArg_ParseTuple(args, "O", &o)) return NULL;
    Py_ssize_t n = -1;
    Buf b;
    if (get_fmt_buf(o, FMT_F32, &n, 0, &b, "values") < 0) return NULL;
    Cascade c;
    cascade_init(&c, n);
    Py_BEGIN_ALLOW_THREADS
    cascade_feed(&c, b.view.buf, 0, n);
    Py_END_ALLOW_THREADS
    release(&b);
    return PyFloat_FromDouble(cascade_end(&c));
}

/* model_stock_stats32([base, x1, ...], fmts, bf16=0) -> ([norms], [dots]); bf16: in bf16
 * compute (model_stock_stats16: n a multiple of 16) */
PyObject *py_model_stock_stats32(PyObject *self, PyObject *args) {
    PyObject *xs_o, *fmts_o;
    int bf16 = 0;
    if (!PyArg_ParseTuple(args, "OO|p", &xs_o, &fmts_o, &bf16)) return NULL;
    Inputs in;
    if (get_inputs(xs_o, fmts_o, -1, &in) < 0) return NULL;
    Py_ssize_t k = in.k - 1;
    if (k < 1 || k > MS_MAX) {
        inputs_release(&in);
        return PyErr_Format(PyExc_ValueError, "1 to %d inputs besides the base", MS_MAX);
    }
    Py_ssize_t n = in.bufs[0].view.len / fmt_size[in.fmts[0]];
    if (bf16 && n % 16) {
        inputs_release(&in);
        return PyErr_Format(PyExc_ValueError, "bf16: a multiple of 16 elements, not %zd", n);
    }
    float norms[MS_MAX], dots[MS_MAX * MS_MAX];
    memset(dots, 0xFF, sizeof dots); /* NaN unless computed */
    Py_BEGIN_ALLOW_THREADS
    if (bf16)
        model_stock_stats16(in.ptrs[0], in.fmts[0], in.ptrs + 1, in.fmts + 1, k, n, norms, dots);
    else
        model_stock_stats32(in.ptrs[0], in.fmts[0], in.ptrs + 1, in.fmts + 1, k, n, norms, dots);
    Py_END_ALLOW_THREADS
    inputs_release(&in);
    PyObject *ns = PyList_New(k), *ds = PyList_New(k * (k - 1) / 2);
    if (!ns || !ds) {
        Py_XDECREF(ns);
        Py_XDECREF(ds);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < k; i++) PyList_SET_ITEM(ns, i, PyFloat_FromDouble(norms[i]));
    for (Py_ssize_t q = 0; q < k * (k - 1) / 2; q++)
        PyList_SET_ITEM(ds, q, PyFloat_FromDouble(dots[q]));
    return Py_BuildValue("(NN)", ns, ds);
}

/* model_stock_mix32(out, out_fmt, [base, x1, ...], fmts, t, one_minus_t, bf16=0); bf16: in
 * bf16 compute (model_stock_mix16) */
PyObject *py_model_stock_mix32(PyObject *self, PyObject *args) {
    PyObject *out_o, *xs_o, *fmts_o;
    int out_fmt, bf16 = 0;
    double t, omt;
    if (!PyArg_ParseTuple(args, "OiOOdd|p", &out_o, &out_fmt, &xs_o, &fmts_o, &t, &omt, &bf16))
        return NULL;
    Py_ssize_t n = -1;
    Buf out;
    Inputs in;
    if (get_fmt_buf(out_o, out_fmt, &n, 1, &out, "out") < 0) return NULL;
    if (get_inputs(xs_o, fmts_o, n, &in) < 0) {
        release(&out);
        return NULL;
    }
    if (in.k < 2) {
        inputs_release(&in);
        release(&out);
        return PyErr_Format(PyExc_ValueError, "the base and at least one input");
    }
    Py_BEGIN_ALLOW_THREADS
    if (bf16)
        model_stock_mix16(out.view.buf, out_fmt, in.ptrs[0], in.fmts[0], in.ptrs + 1, in.fmts + 1,
                          in.k - 1, n, (float)t, (float)omt);
    else
        model_stock_mix32(out.view.buf, out_fmt, in.ptrs[0], in.fmts[0], in.ptrs + 1, in.fmts + 1,
                          in.k - 1, n, (float)t, (float)omt);
    Py_END_ALLOW_THREADS
    inputs_release(&in);
    release(&out);
    Py_RETURN_NONE;
}
