/* Delta statistics: fp64 sums over B - A of two blocks. Python twin: mergestore/diff.py
 * (block_stats' torch path). */
#include "native.h"

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
PyObject *py_delta_stats(PyObject *self, PyObject *args) {
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
