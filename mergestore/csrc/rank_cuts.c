/* Magnitude rank cuts (ties' magnitude, breadcrumbs' magnitude_outliers), row ranks and della's
 * keep probabilities, on 16-bit float bits. Python twin: mergestore/ops/sparsify.py (the
 * streamed cuts, _native_cut, row ranks and della_magprune). */
#include "formats.h"

#if HAVE_F16C_KERNELS
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

#endif

/* ------------------------------------------------------------------ 16-bit rank cuts */

/* out = x - base in fp32, rounded back to the 16-bit format: `widen` and `narrow` are that
 * format's conversions (bf16_to_f32 and rne16, or f16_to_f32 and rne_f16). Always inlined with
 * constant conversions, so each call compiles to the loop written out for its format. */
ALWAYS_INLINE static inline void sub_round16(uint16_t *out, const uint16_t *x, const uint16_t *b,
                                             Py_ssize_t m, float (*widen)(uint16_t),
                                             uint16_t (*narrow)(float)) {
    for (Py_ssize_t j = 0; j < m; j++) out[j] = narrow(widen(x[j]) - widen(b[j]));
}

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
            sub_round16(o, x + s, b + s, m, bf16_to_f32, rne16);
#if HAVE_F16C_KERNELS
        else if (have_f16c)
            sub_f16c(o, x + s, b + s, m);
#endif
        else
            sub_round16(o, x + s, b + s, m, f16_to_f32, rne_f16);
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

PyObject *py_sub_hist_bf16(PyObject *self, PyObject *args) {
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

/* Index of the need-th (1-based) element of p whose magnitude bits (p & MASK) equal v; -1 if
 * fewer. Counts whole runs of 4096 first (a vectorized loop), then scans the run holding it.
 * (One body once served the 16-bit and the 32-bit element; the fp32 cuts now count x - base.) */
#define NTH_EQUAL(NAME, T, MASK)                                                              \
    HOT static Py_ssize_t NAME(const T *p, Py_ssize_t n, T v, Py_ssize_t need) {              \
        if (need <= 0) return -1;                                                             \
        Py_ssize_t seen = 0;                                                                  \
        for (Py_ssize_t s = 0; s < n; s += 4096) {                                            \
            Py_ssize_t m = n - s < 4096 ? n - s : 4096, c = 0;                                \
            for (Py_ssize_t j = 0; j < m; j++) c += (p[s + j] & (MASK)) == v;                 \
            if (seen + c < need) {                                                            \
                seen += c;                                                                    \
                continue;                                                                     \
            }                                                                                 \
            for (Py_ssize_t j = 0; j < m; j++)                                                \
                if ((p[s + j] & (MASK)) == v && ++seen == need) return s + j;                 \
        }                                                                                     \
        return -1;                                                                            \
    }
NTH_EQUAL(nth_equal16, uint16_t, 0x7FFF)

/* py_nth_equal16: (bits, v, need) over elements of `size` bytes (2; the fp32 and bf16 cuts of
 * the lanes count keys of x - base: cut_select.c). */
static PyObject *nth_equal_py(PyObject *args, int size) {
    PyObject *o;
    unsigned int v;
    Py_ssize_t need;
    if (!PyArg_ParseTuple(args, "OIn", &o, &v, &need)) return NULL;
    Buf a;
    if (get_buf(o, &a, 0, size, "bits") < 0) return NULL;
    Py_ssize_t found;
    Py_BEGIN_ALLOW_THREADS
    found = nth_equal16(a.view.buf, a.view.len / size, (uint16_t)v, need);
    Py_END_ALLOW_THREADS
    release(&a);
    return PyLong_FromSsize_t(found);
}

/* Index of the need-th (1-based) element whose magnitude bits equal v; -1 if fewer. */
PyObject *py_nth_equal16(PyObject *self, PyObject *args) { return nth_equal_py(args, 2); }

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

/* Where cut 1 (b1) and cut 2 (b2, when m2 >= 0) stop taking their ties, clamped to [0, n]; the
 * segments [cuts[k], cuts[k + 1]) between them are each one range of kept magnitude bits. */
static void cut_segments(Py_ssize_t n, Py_ssize_t l1, int m2, Py_ssize_t l2, Py_ssize_t *b1,
                         Py_ssize_t *b2, Py_ssize_t cuts[4]) {
    *b1 = l1 < 0 ? 0 : (l1 > n ? n : l1);
    *b2 = m2 < 0 ? 0 : (l2 < 0 ? 0 : (l2 > n ? n : l2));
    cuts[0] = 0;
    cuts[1] = *b1 < *b2 ? *b1 : *b2;
    cuts[2] = *b1 < *b2 ? *b2 : *b1;
    cuts[3] = n;
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
    Py_ssize_t b1, b2, cuts[4];
    cut_segments(n, l1, m2, l2, &b1, &b2, cuts);
    for (int seg = 0; seg < 3; seg++) {
        Py_ssize_t s = cuts[seg], e = cuts[seg + 1];
        if (e <= s) continue;
        int lo1, hi1, lo2 = 1, hi2 = 0;
        cut_range(m1, v1, s < b1, &lo1, &hi1);
        if (m2 >= 0) cut_range(m2, v2, s < b2, &lo2, &hi2);
        zero_outside(data + s, e - s, lo1, hi1, lo2, hi2, f16);
    }
}

/* Elements start .. start + m of a flat bf16 delta (in d[0..m)) times the mask of its cuts
 * (native.h: Cuts32, with 15-bit magnitudes), as apply_cuts16 does over a whole tensor. */
void cut_tile16(uint16_t *d, Py_ssize_t start, Py_ssize_t m, const Cuts32 *c) {
    CutSeg16 seg[3];
    int ns = cut_segs16(start, m, c, seg);
    for (int i = 0; i < ns; i++)
        zero_outside(d + seg[i].s, seg[i].e - seg[i].s, seg[i].lo1, seg[i].hi1, seg[i].lo2,
                     seg[i].hi2, 0);
}

/* The pieces of elements start .. start + m (at most 3, offsets from start) over which the
 * cuts (15-bit magnitudes) each keep one range of magnitude bits; their number. */
int cut_segs16(Py_ssize_t start, Py_ssize_t m, const Cuts32 *c, CutSeg16 seg[3]) {
    Py_ssize_t b1 = c->last1 < 0 ? 0 : c->last1;
    Py_ssize_t b2 = c->mode2 < 0 ? 0 : (c->last2 < 0 ? 0 : c->last2);
    Py_ssize_t end = start + m;
    Py_ssize_t cuts[4] = {start, b1 < b2 ? b1 : b2, b1 < b2 ? b2 : b1, end};
    int ns = 0;
    for (int i = 0; i < 3; i++) {
        Py_ssize_t s = cuts[i] < start ? start : cuts[i];
        Py_ssize_t e = i == 2 ? end : (cuts[i + 1] > end ? end : cuts[i + 1]);
        if (e <= s) continue;
        CutSeg16 *g = &seg[ns++];
        g->s = s - start, g->e = e - start, g->lo2 = 1, g->hi2 = 0;
        cut_range(c->mode1, (int)c->v1, s < b1, &g->lo1, &g->hi1);
        if (c->mode2 >= 0) cut_range(c->mode2, (int)c->v2, s < b2, &g->lo2, &g->hi2);
    }
    return ns;
}

PyObject *py_apply_cuts16(PyObject *self, PyObject *args) {
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

/* della's bf16 keep-probability of each rank 1 .. cols (sparsify.della_magprune, bf16 work
 * dtype) into by_rank[0 .. cols): rank r (as bf16), lo = min rank = 1, hi = max rank =
 * bf16(cols), q = clamp((r - lo) / (hi - lo), 0, 1), p = base_p + (q * 2) * eps, every
 * operation rounded to bf16 as torch rounds it. torch multiplies a bf16 tensor by a Python
 * float taken as an fp32 scalar, but adds one rounded to bf16 first (`float + tensor`;
 * measured, both checked against torch by tests/test_native.py). p depends only on the rank
 * (each row holds every rank), so della_probs_bf16 and rng.c's della_keep_sums16 compute it
 * once per rank and scatter it in each row's rank order. */
void della_rank_probs_bf16(Py_ssize_t cols, float base_p, float eps, uint16_t *by_rank) {
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
}

/* della's keep-probabilities straight from the magnitudes (bf16 bits, rows x cols): each
 * element's della_rank_probs_bf16 value at its stable rank within its row. */
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
    della_rank_probs_bf16(cols, base_p, eps, by_rank);
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

PyObject *py_della_probs_bf16(PyObject *self, PyObject *args) {
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

PyObject *py_row_ranks_bf16(PyObject *self, PyObject *args) {
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

/* ------------------------------------------------------------------ fp32 rank cuts */

/* The same cuts on fp32 deltas (mergekit's `dtype: float32`): the 31 magnitude bits order the
 * magnitudes (NaNs above +inf, as torch's sort of the bit patterns does). The cuts are found by
 * cut_select.c (find_cuts); applied here per tile inside the combine (gta_cut32). Twin:
 * ops/sparsify.py's fp32 radix select (_kth_smallest, first_ranks). */

static void cut_range32(int mode, int64_t v, int ties_in, int64_t *lo, int64_t *hi) {
    switch (mode) {
        case 0: *lo = 1, *hi = 0; break;
        case 1: *lo = 0, *hi = 0xFFFFFFFFLL; break;
        case 2: *lo = ties_in ? v : v + 1, *hi = 0xFFFFFFFFLL; break;
        default: *lo = 0, *hi = ties_in ? v : v - 1; break;
    }
}

/* A range [lo, hi] of 31-bit magnitudes as (lo, hi - lo) for one unsigned compare, or empty. */
typedef struct {
    uint32_t lo, span;
    int any;
} Range32;

static Range32 range32(int64_t lo, int64_t hi) {
    if (hi > 0x7FFFFFFF) hi = 0x7FFFFFFF;
    if (lo < 0) lo = 0;
    Range32 r = {(uint32_t)lo, (uint32_t)(hi - lo), lo <= hi};
    if (!r.any) r.lo = 0, r.span = 0;
    return r;
}

/* Multiply by 0 the elements with magnitude bits outside r1 or inside r2: a signed zero, or
 * NaN for an infinity or NaN (as delta * mask does). */
HOT static void zero_outside32(uint32_t *d, Py_ssize_t n, Range32 r1, Range32 r2) {
    const uint32_t any1 = (uint32_t)r1.any, any2 = (uint32_t)r2.any;
    for (Py_ssize_t j = 0; j < n; j++) {
        uint32_t v = d[j], bits = v & 0x7FFFFFFFu;
        uint32_t in1 = ((bits - r1.lo) <= r1.span) & any1;
        uint32_t in2 = ((bits - r2.lo) <= r2.span) & any2;
        uint32_t dropped = bits >= 0x7F800000u ? 0x7FC00000u : (v & 0x80000000u);
        d[j] = (in1 & ~in2 & 1u) ? v : dropped;
    }
}

/* Elements start .. start + m of a flat fp32 delta (in d[0..m)) times the mask of its cuts
 * (native.h: Cuts32), as mergekit's delta * mask: a signed zero or NaN where dropped. */
void cut_tile32(uint32_t *d, Py_ssize_t start, Py_ssize_t m, const Cuts32 *c) {
    Py_ssize_t b1 = c->last1 < 0 ? 0 : c->last1;
    Py_ssize_t b2 = c->mode2 < 0 ? 0 : (c->last2 < 0 ? 0 : c->last2);
    Py_ssize_t end = start + m;
    Py_ssize_t cuts[4] = {start, b1 < b2 ? b1 : b2, b1 < b2 ? b2 : b1, end};
    for (int seg = 0; seg < 3; seg++) {
        Py_ssize_t s = cuts[seg] < start ? start : cuts[seg];
        Py_ssize_t e = cuts[seg + 1] > end ? end : cuts[seg + 1];
        if (seg == 2) e = end;
        if (e <= s) continue;
        int64_t lo1, hi1, lo2 = 1, hi2 = 0;
        cut_range32(c->mode1, c->v1, s < b1, &lo1, &hi1);
        if (c->mode2 >= 0) cut_range32(c->mode2, c->v2, s < b2, &lo2, &hi2);
        zero_outside32(d + (s - start), e - s, range32(lo1, hi1), range32(lo2, hi2));
    }
}

/* One Cuts32 from (mode1, v1, last1, mode2, v2, last2). */
int get_cuts32(PyObject *o, Cuts32 *c) {
    unsigned int v1, v2;
    if (!PyArg_ParseTuple(o, "iIniIn;a cut is (mode1, v1, last1, mode2, v2, last2)", &c->mode1,
                          &v1, &c->last1, &c->mode2, &v2, &c->last2))
        return -1;
    c->v1 = v1, c->v2 = v2;
    return 0;
}
