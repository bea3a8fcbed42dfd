/* Sparse byte planes (plane code "s"): a plane that is almost all zero bytes (the sign and
 * exponent plane of an XOR delta between a fine-tune and its base) stored as its non-zero bytes
 * and the gaps between them. Python twin: mergestore/store/codecs/sparse.py.
 *
 * Segment: u32 LE count, then the count non-zero bytes in order, then count gaps as LEB128
 * varints (each at most 5 bytes): gap = position - previous position - 1, the first taken from
 * position -1. zstd-1 codes such planes as one sequence per non-zero byte, at 0.75 GB/s in and
 * 1.45 GB/s out on the 2-core Zen 1 VM; this code scans words and writes a byte or two per
 * non-zero byte. */
#include "native.h"

#define SPARSE_MAX_VARINT 5

static inline uint64_t load64(const uint8_t *p) {
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

/* The non-zero bytes of a word, one high bit each (0x80 in each such byte's place). */
static inline uint64_t nonzero_bytes(uint64_t w) {
    const uint64_t low7 = 0x7F7F7F7F7F7F7F7FULL;
    return (((w & low7) + low7) | w) & ~low7;
}

static inline Py_ssize_t varint_len(uint64_t g) {
    Py_ssize_t k = 1;
    while (g >= 128) g >>= 7, k++;
    return k;
}

/* The plane src[0:n] coded into dst (room for cap bytes); returns the segment's size, or -1 if
 * it would not fit in cap. */
HOT static Py_ssize_t sparse_encode(uint8_t *dst, Py_ssize_t cap, const uint8_t *src,
                                    Py_ssize_t n) {
    Py_ssize_t count = 0, j = 0;
    for (; j + 8 <= n; j += 8) count += __builtin_popcountll(nonzero_bytes(load64(src + j)));
    for (; j < n; j++) count += src[j] != 0;
    if (count > UINT32_MAX || 4 + 2 * count > cap) return -1; /* a gap takes a byte at least */
    dst[0] = (uint8_t)count, dst[1] = (uint8_t)(count >> 8);
    dst[2] = (uint8_t)(count >> 16), dst[3] = (uint8_t)(count >> 24);
    uint8_t *val = dst + 4, *gap = dst + 4 + count, *end = dst + cap;
    Py_ssize_t last = -1;
#define EMIT(pos)                                                                 \
    do {                                                                          \
        uint64_t g_ = (uint64_t)((pos) - last - 1);                               \
        if (end - gap < varint_len(g_)) return -1;                                \
        while (g_ >= 128) {                                                       \
            *gap++ = (uint8_t)(g_ | 128);                                         \
            g_ >>= 7;                                                             \
        }                                                                         \
        *gap++ = (uint8_t)g_;                                                     \
        *val++ = src[pos];                                                        \
        last = (pos);                                                             \
    } while (0)
    for (j = 0; j + 8 <= n; j += 8) {
        uint64_t m = nonzero_bytes(load64(src + j));
        while (m) {
            Py_ssize_t pos = j + (__builtin_ctzll(m) >> 3);
            EMIT(pos);
            m &= m - 1;
        }
    }
    for (; j < n; j++)
        if (src[j]) EMIT(j);
#undef EMIT
    return gap - dst;
}

/* A segment's list of (position, byte), read one entry at a time, every field checked. */
typedef struct {
    const uint8_t *val, *gap, *end;
    uint64_t count;
    Py_ssize_t n; /* the plane's length */
} Listing;

/* The segment's count checked against a plane of n bytes: 0, or -1 if malformed. */
static int listing_open(Listing *l, const uint8_t *src, Py_ssize_t size, Py_ssize_t n) {
    if (size < 4) return -1;
    l->count = (uint64_t)src[0] | (uint64_t)src[1] << 8 | (uint64_t)src[2] << 16 |
               (uint64_t)src[3] << 24;
    if (l->count > (uint64_t)n || l->count > (uint64_t)(size - 4) / 2) return -1;
    l->val = src + 4, l->gap = src + 4 + l->count, l->end = src + size, l->n = n;
    return 0;
}

/* Entry i: its position (the one after pos, the previous entry's, -1 before the first) and
 * its byte in *v; -1 if malformed. */
static inline Py_ssize_t listing_next(Listing *l, uint64_t i, Py_ssize_t pos, uint8_t *v) {
    uint64_t g = 0;
    for (int shift = 0;; shift += 7) {
        if (l->gap == l->end || shift == 7 * SPARSE_MAX_VARINT) return -1;
        uint8_t b = *l->gap++;
        g |= (uint64_t)(b & 127) << shift;
        if (!(b & 128)) break;
    }
    if (g >= (uint64_t)(l->n - 1 - pos)) return -1; /* the next position is past the plane */
    *v = l->val[i];
    return *v ? pos + (Py_ssize_t)g + 1 : -1; /* a zero byte is never listed */
}

/* A segment decoded into dst[0:n]; 0, or -1 if it is malformed (dst then holds garbage). */
HOT static int sparse_decode(uint8_t *dst, Py_ssize_t n, const uint8_t *src, Py_ssize_t size) {
    Listing l;
    if (listing_open(&l, src, size, n) < 0) return -1;
    memset(dst, 0, (size_t)n);
    Py_ssize_t pos = -1;
    for (uint64_t i = 0; i < l.count; i++) {
        uint8_t v;
        if ((pos = listing_next(&l, i, pos, &v)) < 0) return -1;
        dst[pos] = v;
    }
    return l.gap == l.end ? 0 : -1; /* every byte of the segment read */
}

/* A 16-bit block from one dense byte plane and one sparse segment, XORed with ref (may be
 * NULL), with no plane buffer for the sparse one: out[j] = rotr16(word_j, rot) ^ ref[j], where
 * word_j holds dense[j] in one byte (the high one if dense_hi) and the segment's byte at j (0
 * if it lists none) in the other. Rotation is a bit permutation, so each listed byte is XORed
 * into its word after the dense pass. The same checks and result as sparse_decode then join2:
 * 0, or -1 if the segment is malformed (out then holds garbage). */
HOT static int join2_sparse(uint16_t *out, const uint8_t *dense, Py_ssize_t n, int dense_hi,
                            const uint8_t *src, Py_ssize_t size, int rot, const uint16_t *ref) {
    Listing l;
    if (listing_open(&l, src, size, n) < 0) return -1;
    const int dshift = dense_hi ? 8 : 0, sshift = dense_hi ? 0 : 8;
    if (ref) {
        for (Py_ssize_t j = 0; j < n; j++) {
            uint16_t w = (uint16_t)((uint16_t)dense[j] << dshift);
            out[j] = rotr16(w, rot) ^ ref[j];
        }
    } else {
        for (Py_ssize_t j = 0; j < n; j++) {
            uint16_t w = (uint16_t)((uint16_t)dense[j] << dshift);
            out[j] = rotr16(w, rot);
        }
    }
    Py_ssize_t pos = -1;
    for (uint64_t i = 0; i < l.count; i++) {
        uint8_t v;
        if ((pos = listing_next(&l, i, pos, &v)) < 0) return -1;
        uint16_t w = (uint16_t)((uint16_t)v << sshift);
        out[pos] ^= rotr16(w, rot);
    }
    return l.gap == l.end ? 0 : -1;
}

/* sparse_decode and join2_sparse for other C files (byte_planes.c); call without the GIL. */
int sparse_decode_into(uint8_t *dst, Py_ssize_t n, const uint8_t *src, Py_ssize_t size) {
    return sparse_decode(dst, n, src, size);
}

int sparse_join2_into(uint16_t *out, const uint8_t *dense, Py_ssize_t n, int dense_hi,
                      const uint8_t *src, Py_ssize_t size, int rot, const uint16_t *ref) {
    return join2_sparse(out, dense, n, dense_hi, src, size, rot, ref);
}

/* sparse_encode(dst, src) -> int: the segment's size in dst, -1 if it does not fit */
PyObject *py_sparse_encode(PyObject *self, PyObject *args) {
    Buf d, s;
    if (get_dst_src(args, &d, &s, "src") < 0) return NULL;
    Py_ssize_t size;
    Py_BEGIN_ALLOW_THREADS
    size = sparse_encode(d.view.buf, d.view.len, s.view.buf, s.view.len);
    Py_END_ALLOW_THREADS
    release(&s);
    release(&d);
    return PyLong_FromSsize_t(size);
}

/* sparse_decode(dst, segment) -> bool: False if the segment is malformed */
PyObject *py_sparse_decode(PyObject *self, PyObject *args) {
    Buf d, s;
    if (get_dst_src(args, &d, &s, "segment") < 0) return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = sparse_decode(d.view.buf, d.view.len, s.view.buf, s.view.len);
    Py_END_ALLOW_THREADS
    release(&s);
    release(&d);
    return PyBool_FromLong(rc == 0);
}

/* join2_sparse(out, dense, dense_hi, segment, rot, reference_or_None) -> bool: False if the
 * segment is malformed */
PyObject *py_join2_sparse(PyObject *self, PyObject *args) {
    PyObject *out_o, *dense_o, *seg_o, *ref_o;
    int dense_hi, rot;
    if (!PyArg_ParseTuple(args, "OOpOiO", &out_o, &dense_o, &dense_hi, &seg_o, &rot, &ref_o))
        return NULL;
    if (rot < 0 || rot > 15) {
        PyErr_SetString(PyExc_ValueError, "join2_sparse: rotation out of range");
        return NULL;
    }
    Buf out, dense, seg, ref = {.held = 0};
    PyObject *ret = NULL;
    if (get_buf(out_o, &out, 1, 2, "out") < 0) return NULL;
    if (get_buf(dense_o, &dense, 0, 1, "dense") < 0) goto d1;
    if (get_buf(seg_o, &seg, 0, 1, "segment") < 0) goto d2;
    if (ref_o != Py_None && get_buf(ref_o, &ref, 0, 2, "reference") < 0) goto d3;
    Py_ssize_t n = out.view.len / 2;
    if (dense.view.len != n || (ref.held && ref.view.len != out.view.len)) {
        PyErr_SetString(PyExc_ValueError, "join2_sparse: plane lengths do not match");
        goto d4;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = join2_sparse(out.view.buf, dense.view.buf, n, dense_hi, seg.view.buf, seg.view.len, rot,
                      ref.held ? ref.view.buf : NULL);
    Py_END_ALLOW_THREADS
    ret = PyBool_FromLong(rc == 0);
d4:
    release(&ref);
d3:
    release(&seg);
d2:
    release(&dense);
d1:
    release(&out);
    return ret;
}
