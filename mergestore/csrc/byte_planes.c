/* Byte planes: the join of a 16-bit block's two byte planes (with rotation and an XOR
 * reference), a whole 16-bit block's decode (header, planes, join), its inverse the split (the
 * encoder's, with the XOR fused in), and the byte histogram of a strided sample that plans
 * each plane's code. Python twins: mergestore/store/codecs/byteplane.py (join_planes' and
 * split_planes' numpy paths, BytePlane.decode_into's per-plane path for bplane16_into, and
 * _plan_plane_numpy for plane_plan). */
#include "native.h"

/* ------------------------------------------------------------------ byte planes */

/* out[j] = rotr16(hi[j] << 8 | lo[j], rot) ^ ref[j] (ref may be NULL). */
HOT static void join2(uint16_t *out, const uint8_t *lo, const uint8_t *hi, Py_ssize_t n, int rot,
                      const uint16_t *ref) {
    if (ref) {
        for (Py_ssize_t j = 0; j < n; j++) {
            uint16_t w = (uint16_t)(((uint16_t)hi[j] << 8) | lo[j]);
            out[j] = rotr16(w, rot) ^ ref[j];
        }
    } else {
        for (Py_ssize_t j = 0; j < n; j++) {
            uint16_t w = (uint16_t)(((uint16_t)hi[j] << 8) | lo[j]);
            out[j] = rotr16(w, rot);
        }
    }
}

PyObject *py_join2(PyObject *self, PyObject *args) {
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

/* The header of a byte-plane payload of `width` planes (n as u64, then each segment's length
 * as u32) checked against the block's n bytes and the payload's size, the segments and the
 * tail included: 1 with the lengths in len, 0 if it does not check out or holds no word. */
int bplane_header(const uint8_t *p, Py_ssize_t size, Py_ssize_t n, int width, uint32_t *len) {
    const Py_ssize_t header = 8 + 4 * (Py_ssize_t)width;
    if (size < header) return 0;
    uint64_t nn;
    memcpy(&nn, p, 8);
    memcpy(len, p + 8, 4 * (size_t)width);
    if (nn != (uint64_t)n || n / width == 0) return 0;
    uint64_t total = (uint64_t)header + (uint64_t)(n % width);
    for (int i = 0; i < width; i++) total += len[i];
    return total == (uint64_t)size;
}

/* A whole 16-bit byte-plane block (codecs/byteplane.py's payload: n as u64, the two segment
 * lengths as u32, the segments, the tail byte) decoded into out[0:n], XORed with ref (may be
 * NULL): each plane raw ("r"), a literal-only Huffman frame ("h", into its scratch buffer) or
 * sparse ("s": one is joined straight into the words; two are decoded into their scratch
 * buffers), then joined. 1 decoded; 0 declined (any other code, a frame huf_literals does
 * not take, any length or segment that does not check out): out then holds garbage and
 * BytePlane.decode_into's Python path decodes the block or raises its error. */
static int bplane16_into(uint8_t *out, Py_ssize_t n, const uint8_t *p, Py_ssize_t size, int rot,
                         const char *codes, const uint8_t *ref, uint8_t *const scratch[2],
                         const Py_ssize_t scratch_n[2]) {
    uint32_t len[2];
    if (strlen(codes) != 2 || !bplane_header(p, size, n, 2, len)) return 0;
    Py_ssize_t n_words = n / 2, n_tail = n % 2;
    const uint8_t *seg[2] = {p + 16, p + 16 + len[0]};
    const uint8_t *plane[2] = {NULL, NULL};
    int n_sparse = (codes[0] == 's') + (codes[1] == 's'), sparse_at = -1;
    for (int i = 0; i < 2; i++) {
        switch (codes[i]) {
        case 'r':
            if (len[i] != (uint64_t)n_words) return 0;
            plane[i] = seg[i];
            break;
        case 'h':
            if (scratch_n[i] < n_words || !huf_literals_into(seg[i], len[i], scratch[i], n_words))
                return 0;
            plane[i] = scratch[i];
            break;
        case 's':
            if (n_sparse == 1) {
                sparse_at = i;
                break;
            }
            if (scratch_n[i] < n_words || sparse_decode_into(scratch[i], n_words, seg[i], len[i]) < 0)
                return 0;
            plane[i] = scratch[i];
            break;
        default:
            return 0;
        }
    }
    uint16_t *words = (uint16_t *)out;
    const uint16_t *ref16 = (const uint16_t *)ref;
    if (sparse_at >= 0) {
        if (sparse_join2_into(words, plane[1 - sparse_at], n_words, sparse_at == 0, seg[sparse_at],
                              len[sparse_at], rot, ref16) < 0)
            return 0;
    } else {
        join2(words, plane[0], plane[1], n_words, rot, ref16);
    }
    if (n_tail) out[n - 1] = (uint8_t)(p[size - 1] ^ (ref ? ref[n - 1] : 0));
    return 1;
}

/* bplane16_into(out, payload, rot, codes, reference_or_None, scratch0, scratch1) -> bool:
 * bplane16_into above with the GIL released (the Python path took ~25 us a block of
 * interpreter time around the same C calls). */
PyObject *py_bplane16_into(PyObject *self, PyObject *args) {
    PyObject *out_o, *pay_o, *ref_o, *s0_o, *s1_o;
    int rot;
    const char *codes;
    if (!PyArg_ParseTuple(args, "OOisOOO", &out_o, &pay_o, &rot, &codes, &ref_o, &s0_o, &s1_o))
        return NULL;
    if (rot < 0 || rot > 15) {
        PyErr_SetString(PyExc_ValueError, "bplane16_into: rotation out of range");
        return NULL;
    }
    Buf out, pay, ref = {.held = 0}, s0, s1;
    PyObject *ret = NULL;
    if (get_buf(out_o, &out, 1, 1, "out") < 0) return NULL;
    if (get_buf(pay_o, &pay, 0, 1, "payload") < 0) goto d1;
    if (ref_o != Py_None && get_buf(ref_o, &ref, 0, 1, "reference") < 0) goto d2;
    if (get_buf(s0_o, &s0, 1, 1, "scratch0") < 0) goto d3;
    if (get_buf(s1_o, &s1, 1, 1, "scratch1") < 0) goto d4;
    int ok = 0;
    if (!ref.held || ref.view.len == out.view.len) {
        uint8_t *scratch[2] = {s0.view.buf, s1.view.buf};
        Py_ssize_t scratch_n[2] = {s0.view.len, s1.view.len};
        Py_BEGIN_ALLOW_THREADS
        ok = bplane16_into(out.view.buf, out.view.len, pay.view.buf, pay.view.len, rot, codes,
                           ref.held ? ref.view.buf : NULL, scratch, scratch_n);
        Py_END_ALLOW_THREADS
    }
    ret = PyBool_FromLong(ok);
    release(&s1);
d4:
    release(&s0);
d3:
    release(&ref);
d2:
    release(&pay);
d1:
    release(&out);
    return ret;
}

/* lo[j], hi[j] = the low and high byte of rotl16(w[j] ^ ref[j], rot) (ref may be NULL). */
HOT static void split2(uint8_t *lo, uint8_t *hi, const uint16_t *w, Py_ssize_t n, int rot,
                       const uint16_t *ref) {
    for (Py_ssize_t j = 0; j < n; j++) {
        uint16_t v = ref ? (uint16_t)(w[j] ^ ref[j]) : w[j];
        v = rotl16(v, rot);
        lo[j] = (uint8_t)v;
        hi[j] = (uint8_t)(v >> 8);
    }
}

/* The arguments (rows, words, rot, reference_or_None) of split2 and split4, for words of
 * `width` bytes: held in rows, w and ref (ref->held 0 for None), the words' count in *n and
 * the rows' stride in *stride. -1 with the error set and nothing held if they do not fit. */
int split_args(PyObject *args, int width, const char *name, Buf *rows, Buf *w, Buf *ref,
               int *rot, Py_ssize_t *n, Py_ssize_t *stride) {
    PyObject *rows_o, *w_o, *ref_o;
    ref->held = 0;
    if (!PyArg_ParseTuple(args, "OOiO", &rows_o, &w_o, rot, &ref_o)) return -1;
    if (*rot < 0 || *rot >= 8 * width) {
        PyErr_Format(PyExc_ValueError, "%s: rotation out of range", name);
        return -1;
    }
    if (get_buf(rows_o, rows, 1, width, "rows") < 0) return -1;
    if (get_buf(w_o, w, 0, width, "words") < 0) goto d1;
    if (ref_o != Py_None && get_buf(ref_o, ref, 0, width, "reference") < 0) goto d2;
    *n = w->view.len / width;
    *stride = rows->view.len / width;
    if (*stride >= *n && (!ref->held || ref->view.len == w->view.len)) return 0;
    PyErr_Format(PyExc_ValueError, "%s: rows or reference do not fit the words", name);
    release(ref);
d2:
    release(w);
d1:
    release(rows);
    return -1;
}

/* split2(rows, words, rot, reference_or_None): rows is a writable C-contiguous uint8 array of
 * 2 rows of at least len(words) bytes each (the encoder's rows with literal slack); row 0 gets
 * the low bytes of the rotated (XORed) words, row 1 the high bytes. */
PyObject *py_split2(PyObject *self, PyObject *args) {
    Buf rows, w, ref;
    int rot;
    Py_ssize_t n, stride;
    if (split_args(args, 2, "split2", &rows, &w, &ref, &rot, &n, &stride) < 0) return NULL;
    uint8_t *lo = rows.view.buf;
    Py_BEGIN_ALLOW_THREADS
    split2(lo, lo + stride, w.view.buf, n, rot, ref.held ? ref.view.buf : NULL);
    Py_END_ALLOW_THREADS
    release(&ref);
    release(&w);
    release(&rows);
    Py_RETURN_NONE;
}

/* counts[b] += how many of p[0], p[step], p[2*step], ... (below n) equal b. Four interleaved
 * tables, so runs of one byte value do not wait on one counter. */
static void hist8(int64_t *counts, const uint8_t *p, Py_ssize_t n, Py_ssize_t step) {
    int64_t t[4][256] = {{0}};
    Py_ssize_t j = 0;
    for (; j + 3 * step < n; j += 4 * step) {
        t[0][p[j]]++;
        t[1][p[j + step]]++;
        t[2][p[j + 2 * step]]++;
        t[3][p[j + 3 * step]]++;
    }
    for (; j < n; j += step) t[0][p[j]]++;
    for (int b = 0; b < 256; b++) counts[b] += t[0][b] + t[1][b] + t[2][b] + t[3][b];
}

/* The (data, step, counts) of hist8 and plane_plan: data C-contiguous bytes, step >= 1, counts a
 * writable int64 array of 256. -1 with the error set and nothing held if they are not. */
static int hist_args(PyObject *d_o, Py_ssize_t step, PyObject *c_o, Buf *d, Buf *c,
                     const char *name) {
    if (step < 1) {
        PyErr_Format(PyExc_ValueError, "%s: step must be at least 1", name);
        return -1;
    }
    if (get_buf(d_o, d, 0, 1, "data") < 0) return -1;
    if (get_buf(c_o, c, 1, 8, "counts") < 0) {
        release(d);
        return -1;
    }
    if (c->view.len != 256 * 8) {
        PyErr_Format(PyExc_ValueError, "%s: counts must hold 256 int64", name);
        release(c);
        release(d);
        return -1;
    }
    return 0;
}

/* hist8(data, step, counts): counts[b] += how many of data[0], data[step], data[2*step], ...
 * equal b (counts: a writable int64 array of 256), as np.bincount(data[::step], minlength=256)
 * counts them. */
PyObject *py_hist8(PyObject *self, PyObject *args) {
    PyObject *d_o, *c_o;
    Py_ssize_t step;
    Buf d, c;
    if (!PyArg_ParseTuple(args, "OnO", &d_o, &step, &c_o) ||
        hist_args(d_o, step, c_o, &d, &c, "hist8") < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    hist8(c.view.buf, d.view.buf, d.view.len, step);
    Py_END_ALLOW_THREADS
    release(&c);
    release(&d);
    Py_RETURN_NONE;
}

/* The order-0 entropy, in bits per byte, of n bytes counted in counts (summed in byte order). */
static double entropy_bits(const int64_t *counts, int64_t n) {
    double bits = 0.0;
    for (int b = 0; b < 256; b++) {
        if (counts[b] > 0) {
            double p = (double)counts[b] / (double)n;
            bits -= p * log2(p);
        }
    }
    return bits;
}

/* plane_plan(data, step, zero_fraction, raw_bits, counts) -> int: the byte counts of
 * data[::step] into counts (a writable int64 array of 256, zeroed here), then the plane's code
 * as byteplane._plan_plane picks it from them: 0 sparse (counts[0] >= zero_fraction * the
 * sample's size), 1 raw (the sample's order-0 entropy >= raw_bits bits per byte), 2 Huffman.
 * One call with the GIL released, where the numpy twin took seven (~60 us a plane). */
PyObject *py_plane_plan(PyObject *self, PyObject *args) {
    PyObject *d_o, *c_o;
    Py_ssize_t step;
    double zero_fraction, raw_bits;
    Buf d, c;
    if (!PyArg_ParseTuple(args, "OnddO", &d_o, &step, &zero_fraction, &raw_bits, &c_o) ||
        hist_args(d_o, step, c_o, &d, &c, "plane_plan") < 0)
        return NULL;
    int code;
    Py_BEGIN_ALLOW_THREADS
    int64_t *counts = c.view.buf;
    memset(counts, 0, 256 * sizeof(int64_t));
    hist8(counts, d.view.buf, d.view.len, step);
    int64_t n = 0;
    for (int b = 0; b < 256; b++) n += counts[b];
    if ((double)counts[0] >= zero_fraction * (double)n) {
        code = 0;
    } else {
        code = entropy_bits(counts, n) >= raw_bits ? 1 : 2;
    }
    Py_END_ALLOW_THREADS
    release(&c);
    release(&d);
    return PyLong_FromLong(code);
}

/* byteplane.estimate_ratio's guess for 16- or 32-bit words: the words 0, step, 2 step, ...
 * (below n_words) rotated left by rot; per byte plane of them 1.0 if the sample's order-0
 * entropy is at least raw_bits, else min(1, bits / 8 * 1.02); their mean. */
static double estimate_ratio(const uint8_t *d, Py_ssize_t n_words, int width, int rot,
                             Py_ssize_t step, double raw_bits) {
    int64_t counts[4][256];
    memset(counts, 0, sizeof(counts));
    int64_t m = 0;
    for (Py_ssize_t j = 0; j < n_words; j += step, m++) {
        uint32_t w;
        if (width == 2) {
            uint16_t h;
            memcpy(&h, d + 2 * j, 2);
            w = rotl16(h, rot);
        } else {
            memcpy(&w, d + 4 * j, 4);
            w = rotl32(w, rot);
        }
        for (int i = 0; i < width; i++) counts[i][(w >> (8 * i)) & 0xFF]++;
    }
    double total = 0.0;
    for (int i = 0; i < width; i++) {
        double bits = entropy_bits(counts[i], m);
        double r = bits / 8 * 1.02;
        total += bits >= raw_bits ? 1.0 : (r < 1.0 ? r : 1.0);
    }
    return total / width;
}

/* estimate_ratio(data, width, rot, step, raw_bits) -> float: estimate_ratio above over the
 * whole words of data (width 2 or 4), with the GIL released; the numpy twin
 * byteplane._estimate_ratio_numpy took ~240 us a 1 MiB block. */
PyObject *py_estimate_ratio(PyObject *self, PyObject *args) {
    PyObject *d_o;
    int width, rot;
    Py_ssize_t step;
    double raw_bits;
    if (!PyArg_ParseTuple(args, "Oiind", &d_o, &width, &rot, &step, &raw_bits)) return NULL;
    if ((width != 2 && width != 4) || rot < 0 || rot >= 8 * width || step < 1) {
        PyErr_SetString(PyExc_ValueError, "estimate_ratio: width 2 or 4, a rotation within the "
                                          "word and a step of at least 1");
        return NULL;
    }
    Buf d;
    if (get_buf(d_o, &d, 0, 1, "data") < 0) return NULL;
    Py_ssize_t n_words = d.view.len / width;
    double ratio = 1.0;
    if (n_words > 0) {
        Py_BEGIN_ALLOW_THREADS
        ratio = estimate_ratio(d.view.buf, n_words, width, rot, step, raw_bits);
        Py_END_ALLOW_THREADS
    }
    release(&d);
    return PyFloat_FromDouble(ratio);
}
