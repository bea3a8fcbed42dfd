/* sce (ops/sce.py) in any compute format, on inputs and an output of any float format. Python
 * side: mergestore/ops/lane_sce.py; tests/ops/test_lane_sce.py compares both with torch.
 *
 * torch's sce over the stacked task vectors tv_i = RC(x_i - b) (RC: rounded to the compute
 * format, a no-op in fp32), in three passes over the inputs, each recomputing tv_i per tile:
 *   1. select (select_topk < 1): var = torch.var(tvs, dim=0, unbiased=False), per element
 *      Welford's update in double over the inputs in order (torch's WelfordOps), m2 / N cast
 *      to float and RC; its magnitude bits are stored (u32, the order of var.abs()) with a
 *      histogram of their upper 16 bits and the count of nonzeros. Python finds the top-k cut
 *      (v, last): an element is kept when its bits are > v, or == v before flat index last
 *      (the rank rule of ops.sparsify.first_ranks).
 *   2. weights: per input, torch's cascade sum (cascade.h) of RC(m_i * m_i), m_i = tv_i times
 *      its 0/1 selection; Python takes mean = RC(sum / numel) and the weights.
 *   3. combine: vote = RC(0 + m_0 + ... + m_N-1) >= 0 (the dim-0 sum in order, from 0);
 *      e_i = w_i * [sign(m_i) == vote]; out = RC(b + RC(RC(sum_i RC(m_i e_i)) /
 *      max(RC(sum_i e_i), lo))), each dim-0 sum in order from 0 in fp32, rounded once.
 * Products by a 0/1 selection are taken as torch takes them (-x * 0 is -0; inf * 0 is NaN). */
#include "formats.h"

#include "cascade.h"

#define SCE_MAX 4 /* torch's dim-0 sum adds in order from 0 up to 4 rows (ops/lanes.py) */

/* The tile of each input's task vector, RC(RC(x_i) - RC(b)), times its selection. */
ALWAYS_INLINE static inline void load_deltas(float tv[][TILE], const void *base, int base_fmt,
                                             const void **xs, const int *fmts, Py_ssize_t k,
                                             int cfmt, Py_ssize_t s, Py_ssize_t m,
                                             const float *keep) {
    float b[TILE];
    load_tile(b, base, base_fmt, cfmt, s, m);
    for (Py_ssize_t i = 0; i < k; i++) {
        load_tile(tv[i], xs[i], fmts[i], cfmt, s, m);
        for (Py_ssize_t j = 0; j < m; j++) tv[i][j] = tv[i][j] - b[j];
        round_tile(tv[i], m, cfmt);
        if (keep)
            for (Py_ssize_t j = 0; j < m; j++) tv[i][j] = tv[i][j] * keep[j];
    }
}

/* keep[j] = 1 or 0: var bits above v, or equal to v at a flat index before `last`. */
ALWAYS_INLINE static inline void load_keep(float *keep, const uint32_t *var, Py_ssize_t s,
                                           Py_ssize_t m, int64_t v, int64_t last) {
    for (Py_ssize_t j = 0; j < m; j++) {
        int64_t u = var[s + j];
        keep[j] = (u > v || (u == v && s + j < last)) ? 1.0f : 0.0f;
    }
}

/* Pass 1: var's magnitude bits into var_out, their upper-16-bit histogram; returns nnz. */
HOT static int64_t sce_var(uint32_t *var_out, int64_t *hist, const void *base, int base_fmt,
                           const void **xs, const int *fmts, Py_ssize_t k, int cfmt,
                           Py_ssize_t n) {
    float tv[SCE_MAX][TILE], v[TILE];
    double mean[TILE], m2[TILE];
    int64_t nnz = 0;
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        load_deltas(tv, base, base_fmt, xs, fmts, k, cfmt, s, m, NULL);
        for (Py_ssize_t j = 0; j < m; j++) mean[j] = m2[j] = 0.0;
        for (Py_ssize_t i = 0; i < k; i++) {
            const double count = (double)(i + 1);
            if (i == 2) { /* not a power of two: a true division */
                for (Py_ssize_t j = 0; j < m; j++) {
                    double x = tv[i][j], d = x - mean[j];
                    mean[j] = mean[j] + d / count;
                    m2[j] = m2[j] + d * (x - mean[j]);
                }
            } else { /* 1, 2, 4: dividing by a power of two is multiplying, exactly */
                const double inv = 1.0 / count;
                for (Py_ssize_t j = 0; j < m; j++) {
                    double x = tv[i][j], d = x - mean[j];
                    mean[j] = mean[j] + d * inv;
                    m2[j] = m2[j] + d * (x - mean[j]);
                }
            }
        }
        const double kd = (double)k;
        for (Py_ssize_t j = 0; j < m; j++) v[j] = (float)(m2[j] / kd);
        round_tile(v, m, cfmt);
        for (Py_ssize_t j = 0; j < m; j++) {
            uint32_t u;
            memcpy(&u, &v[j], 4);
            u &= 0x7FFFFFFFu;
            var_out[s + j] = u;
            hist[u >> 16]++;
            nnz += u != 0;
        }
    }
    return nnz;
}

/* Pass 2: per input, torch's cascade sum of RC(m_i * m_i) over all n elements. */
HOT static void sce_sumsq(float *sums, const void *base, int base_fmt, const void **xs,
                          const int *fmts, Py_ssize_t k, int cfmt, Py_ssize_t n,
                          const uint32_t *var, int64_t v, int64_t last) {
    float tv[SCE_MAX][TILE], keep[TILE];
    Cascade c[SCE_MAX];
    for (Py_ssize_t i = 0; i < k; i++) cascade_init(&c[i], n);
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        if (var) load_keep(keep, var, s, m, v, last);
        load_deltas(tv, base, base_fmt, xs, fmts, k, cfmt, s, m, var ? keep : NULL);
        for (Py_ssize_t i = 0; i < k; i++) {
            for (Py_ssize_t j = 0; j < m; j++) tv[i][j] = tv[i][j] * tv[i][j];
            round_tile(tv[i], m, cfmt);
            cascade_feed(&c[i], tv[i], s, m);
        }
    }
    for (Py_ssize_t i = 0; i < k; i++) sums[i] = cascade_end(&c[i]);
}

/* Pass 3: the sign election and the weighted disjoint mean, elements start .. start + n of
 * the tensor (var and the cut are the whole tensor's). */
HOT static void sce_combine(void *out, int out_fmt, const void *base, int base_fmt,
                            const void **xs, const int *fmts, Py_ssize_t k, int cfmt,
                            Py_ssize_t n, const uint32_t *var, int64_t v, int64_t last,
                            Py_ssize_t start, const float *w, float lo) {
    float tv[SCE_MAX][TILE], keep[TILE], b[TILE], vote[TILE], num[TILE], den[TILE], p[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        if (var) load_keep(keep, var - start, start + s, m, v, last);
        load_deltas(tv, base, base_fmt, xs, fmts, k, cfmt, s, m, var ? keep : NULL);
        for (Py_ssize_t j = 0; j < m; j++) vote[j] = 0.0f;
        for (Py_ssize_t i = 0; i < k; i++)
            for (Py_ssize_t j = 0; j < m; j++) vote[j] = vote[j] + tv[i][j];
        round_tile(vote, m, cfmt);
        for (Py_ssize_t j = 0; j < m; j++) {
            vote[j] = vote[j] >= 0.0f ? 1.0f : -1.0f; /* NaN votes -1 */
            num[j] = den[j] = 0.0f;
        }
        for (Py_ssize_t i = 0; i < k; i++) {
            const float wi = w[i];
            for (Py_ssize_t j = 0; j < m; j++) {
                float t = tv[i][j];
                /* sign(t) == vote: 0 and NaN agree with neither vote */
                float agree = (t > 0.0f && vote[j] > 0.0f) || (t < 0.0f && vote[j] < 0.0f);
                float e = wi * agree;
                p[j] = t * e;
                den[j] = den[j] + e;
            }
            round_tile(p, m, cfmt);
            for (Py_ssize_t j = 0; j < m; j++) num[j] = num[j] + p[j];
        }
        round_tile(num, m, cfmt);
        round_tile(den, m, cfmt);
        for (Py_ssize_t j = 0; j < m; j++) num[j] = num[j] / (den[j] < lo ? lo : den[j]);
        round_tile(num, m, cfmt);
        load_tile(b, base, base_fmt, cfmt, s, m);
        for (Py_ssize_t j = 0; j < m; j++) num[j] = b[j] + num[j];
        round_tile(num, m, cfmt);
        narrow(out, out_fmt, s, num, m);
    }
}

/* The low 16 bits' histogram of the values whose upper 16 bits are hi. */
HOT static void u32_hist_lo(const uint32_t *u, Py_ssize_t n, uint32_t hi, int64_t *hist) {
    for (Py_ssize_t j = 0; j < n; j++)
        if ((u[j] >> 16) == hi) hist[u[j] & 0xFFFFu]++;
}

/* The index of the need-th (1-based) value equal to v, or -1. */
HOT static Py_ssize_t u32_nth_equal(const uint32_t *u, Py_ssize_t n, uint32_t v, int64_t need) {
    for (Py_ssize_t j = 0; j < n; j++)
        if (u[j] == v && --need == 0) return j;
    return -1;
}

/* ------------------------------------------------------------------ argument handling */

/* The inputs [base, x1, ...] (1 to SCE_MAX besides the base) of one length n (n < 0: any). */
static int get_sce_inputs(PyObject *xs_o, PyObject *fmts_o, int cfmt, Py_ssize_t n,
                          Inputs *in) {
    if (check_fmt(cfmt) < 0 || get_inputs(xs_o, fmts_o, n, in) < 0) return -1;
    if (in->k < 2 || in->k > SCE_MAX + 1) {
        PyErr_Format(PyExc_ValueError, "the base and 1 to %d inputs, got %zd arrays", SCE_MAX,
                     in->k);
        inputs_release(in);
        return -1;
    }
    return 0;
}

/* An optional u32 buffer of n elements (None: no selection). */
static int get_var(PyObject *o, Py_ssize_t n, int writable, Buf *b) {
    b->held = 0;
    if (o == Py_None) return 0;
    if (get_buf(o, b, writable, 4, "var") < 0) return -1;
    if (b->view.len / 4 != n) {
        release(b);
        PyErr_Format(PyExc_ValueError, "var: %zd elements, expected %zd", b->view.len / 4, n);
        return -1;
    }
    return 0;
}

/* sce_var(var_out_u32, hist_i64[65536], [base, x1, ...], fmts, compute_fmt) -> nnz */
PyObject *py_sce_var(PyObject *self, PyObject *args) {
    PyObject *var_o, *hist_o, *xs_o, *fmts_o;
    int cfmt;
    if (!PyArg_ParseTuple(args, "OOOOi", &var_o, &hist_o, &xs_o, &fmts_o, &cfmt)) return NULL;
    Inputs in;
    if (get_sce_inputs(xs_o, fmts_o, cfmt, -1, &in) < 0) return NULL;
    Py_ssize_t n = in.bufs[0].view.len / fmt_size[in.fmts[0]];
    Buf var, hist;
    if (get_var(var_o, n, 1, &var) < 0 || !var.held) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "var: a buffer is needed");
        inputs_release(&in);
        return NULL;
    }
    if (get_buf(hist_o, &hist, 1, 8, "hist") < 0 || hist.view.len != 65536 * 8) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "hist: 65536 int64 counts");
        release(&hist);
        release(&var);
        inputs_release(&in);
        return NULL;
    }
    int64_t nnz;
    Py_BEGIN_ALLOW_THREADS
    nnz = sce_var(var.view.buf, hist.view.buf, in.ptrs[0], in.fmts[0], in.ptrs + 1, in.fmts + 1,
                  in.k - 1, cfmt, n);
    Py_END_ALLOW_THREADS
    release(&hist);
    release(&var);
    inputs_release(&in);
    return PyLong_FromLongLong(nnz);
}

/* sce_sumsq([base, x1, ...], fmts, compute_fmt, var_u32_or_None, v, last) -> [sums] */
PyObject *py_sce_sumsq(PyObject *self, PyObject *args) {
    PyObject *xs_o, *fmts_o, *var_o;
    int cfmt;
    long long v, last;
    if (!PyArg_ParseTuple(args, "OOiOLL", &xs_o, &fmts_o, &cfmt, &var_o, &v, &last))
        return NULL;
    Inputs in;
    if (get_sce_inputs(xs_o, fmts_o, cfmt, -1, &in) < 0) return NULL;
    Py_ssize_t n = in.bufs[0].view.len / fmt_size[in.fmts[0]];
    Buf var;
    if (get_var(var_o, n, 0, &var) < 0) {
        inputs_release(&in);
        return NULL;
    }
    float sums[SCE_MAX];
    Py_ssize_t k = in.k - 1;
    Py_BEGIN_ALLOW_THREADS
    sce_sumsq(sums, in.ptrs[0], in.fmts[0], in.ptrs + 1, in.fmts + 1, k, cfmt, n,
              var.held ? var.view.buf : NULL, v, last);
    Py_END_ALLOW_THREADS
    release(&var);
    inputs_release(&in);
    PyObject *list = PyList_New(k);
    if (!list) return NULL;
    for (Py_ssize_t i = 0; i < k; i++) PyList_SET_ITEM(list, i, PyFloat_FromDouble(sums[i]));
    return list;
}

/* sce_combine(out, out_fmt, [base, x1, ...], fmts, compute_fmt, var_u32_or_None, v, last,
 *             start, weights, lo): var is the whole tensor's, the rest columns from start */
PyObject *py_sce_combine(PyObject *self, PyObject *args) {
    PyObject *out_o, *xs_o, *fmts_o, *var_o, *w_o;
    int out_fmt, cfmt;
    long long v, last;
    Py_ssize_t start;
    double lo;
    if (!PyArg_ParseTuple(args, "OiOOiOLLnOd", &out_o, &out_fmt, &xs_o, &fmts_o, &cfmt, &var_o,
                          &v, &last, &start, &w_o, &lo))
        return NULL;
    Py_ssize_t n = -1;
    Buf out, var;
    Inputs in;
    if (get_fmt_buf(out_o, out_fmt, &n, 1, &out, "out") < 0) return NULL;
    if (get_sce_inputs(xs_o, fmts_o, cfmt, n, &in) < 0) {
        release(&out);
        return NULL;
    }
    float w[SCE_MAX];
    Py_ssize_t k = in.k - 1;
    var.held = 0;
    int bad = get_floats(w_o, w, k) < 0;
    if (!bad && var_o != Py_None) {
        bad = get_buf(var_o, &var, 0, 4, "var") < 0;
        if (!bad && (start < 0 || start + n > var.view.len / 4)) {
            PyErr_SetString(PyExc_ValueError, "var: shorter than start + the columns");
            bad = 1;
        }
    }
    if (bad) {
        release(&var);
        inputs_release(&in);
        release(&out);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    sce_combine(out.view.buf, out_fmt, in.ptrs[0], in.fmts[0], in.ptrs + 1, in.fmts + 1, k, cfmt,
                n, var.held ? (const uint32_t *)var.view.buf + start : NULL, v, last, start, w,
                (float)lo);
    Py_END_ALLOW_THREADS
    release(&var);
    inputs_release(&in);
    release(&out);
    Py_RETURN_NONE;
}

/* u32_hist_lo(values_u32, hi, hist_i64[65536]) */
PyObject *py_u32_hist_lo(PyObject *self, PyObject *args) {
    PyObject *u_o, *hist_o;
    unsigned long hi;
    if (!PyArg_ParseTuple(args, "OkO", &u_o, &hi, &hist_o)) return NULL;
    Buf u, hist;
    if (get_buf(u_o, &u, 0, 4, "values") < 0) return NULL;
    if (get_buf(hist_o, &hist, 1, 8, "hist") < 0 || hist.view.len != 65536 * 8) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "hist: 65536 int64 counts");
        release(&hist);
        release(&u);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    u32_hist_lo(u.view.buf, u.view.len / 4, (uint32_t)hi, hist.view.buf);
    Py_END_ALLOW_THREADS
    release(&hist);
    release(&u);
    Py_RETURN_NONE;
}

/* u32_nth_equal(values_u32, v, need) -> index or -1 */
PyObject *py_u32_nth_equal(PyObject *self, PyObject *args) {
    PyObject *u_o;
    unsigned long v;
    long long need;
    if (!PyArg_ParseTuple(args, "OkL", &u_o, &v, &need)) return NULL;
    Buf u;
    if (get_buf(u_o, &u, 0, 4, "values") < 0) return NULL;
    Py_ssize_t r;
    Py_BEGIN_ALLOW_THREADS
    r = need > 0 ? u32_nth_equal(u.view.buf, u.view.len / 4, (uint32_t)v, need) : -1;
    Py_END_ALLOW_THREADS
    release(&u);
    return PyLong_FromSsize_t(r);
}
