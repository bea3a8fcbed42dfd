/* Byte planes of 32-bit words (fp32 tensors): the join of a block's four byte planes (with
 * rotation and an XOR reference), a whole block's decode (header, planes, join) in one call,
 * and the encoder's split with the XOR fused in. The 16-bit ones are in byte_planes.c. Python
 * twins: mergestore/store/codecs/byteplane.py (join_planes' and split_planes' numpy paths, and
 * BytePlane.decode_into's per-plane path for bplane32_into). */
#include "native.h"
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* Four byte buffers (writable if asked); -1 with the error set and none held if one is not. */
static int get_four(PyObject *const objs[4], Buf b[4], int writable, const char *what) {
    for (int i = 0; i < 4; i++) {
        if (get_buf(objs[i], &b[i], writable, 1, what) < 0) {
            while (i--) release(&b[i]);
            return -1;
        }
    }
    return 0;
}

static void release_four(Buf b[4]) {
    for (int i = 0; i < 4; i++) release(&b[i]);
}

/* out[j] = rotr32(p3[j] << 24 | p2[j] << 16 | p1[j] << 8 | p0[j], rot) ^ ref[j] (ref may be
 * NULL). On x86-64, 16 words at a time by byte and word unpacks (SSE2, in every x86-64): gcc's
 * own vectorization of the loop below widens each byte apart, at half the speed. */
HOT static void join4(uint32_t *restrict out, const uint8_t *const p[4], Py_ssize_t n, int rot,
                      const uint32_t *restrict ref) {
    const uint8_t *restrict p0 = p[0], *restrict p1 = p[1], *restrict p2 = p[2],
                            *restrict p3 = p[3];
    Py_ssize_t j = 0;
#if defined(__SSE2__)
    /* a shift by 32 or more gives 0, so rot = 0 needs no test: (w >> 0) | 0 */
    const __m128i right = _mm_cvtsi32_si128(rot), left = _mm_cvtsi32_si128(32 - rot);
    for (; j + 16 <= n; j += 16) {
        __m128i a = _mm_loadu_si128((const __m128i *)(p0 + j));
        __m128i b = _mm_loadu_si128((const __m128i *)(p1 + j));
        __m128i c = _mm_loadu_si128((const __m128i *)(p2 + j));
        __m128i d = _mm_loadu_si128((const __m128i *)(p3 + j));
        __m128i ab_lo = _mm_unpacklo_epi8(a, b), ab_hi = _mm_unpackhi_epi8(a, b);
        __m128i cd_lo = _mm_unpacklo_epi8(c, d), cd_hi = _mm_unpackhi_epi8(c, d);
        __m128i w[4] = {_mm_unpacklo_epi16(ab_lo, cd_lo), _mm_unpackhi_epi16(ab_lo, cd_lo),
                        _mm_unpacklo_epi16(ab_hi, cd_hi), _mm_unpackhi_epi16(ab_hi, cd_hi)};
        for (int q = 0; q < 4; q++) {
            __m128i v = _mm_or_si128(_mm_srl_epi32(w[q], right), _mm_sll_epi32(w[q], left));
            if (ref) v = _mm_xor_si128(v, _mm_loadu_si128((const __m128i *)(ref + j + 4 * q)));
            _mm_storeu_si128((__m128i *)(out + j + 4 * q), v);
        }
    }
#endif
    for (; j < n; j++) {
        uint32_t w = (uint32_t)p0[j] | (uint32_t)p1[j] << 8 | (uint32_t)p2[j] << 16 |
                     (uint32_t)p3[j] << 24;
        out[j] = rotr32(w, rot) ^ (ref ? ref[j] : 0);
    }
}

/* join4(out, p0, p1, p2, p3, rot, reference_or_None): out (uint32 words) = the rotated join
 * of the planes, XORed with the reference. */
PyObject *py_join4(PyObject *self, PyObject *args) {
    PyObject *out_o, *p_o[4], *ref_o;
    int rot;
    if (!PyArg_ParseTuple(args, "OOOOOiO", &out_o, &p_o[0], &p_o[1], &p_o[2], &p_o[3], &rot,
                          &ref_o))
        return NULL;
    if (rot < 0 || rot > 31) {
        PyErr_SetString(PyExc_ValueError, "join4: rotation out of range");
        return NULL;
    }
    Buf out, planes[4], ref = {.held = 0};
    PyObject *ret = NULL;
    if (get_buf(out_o, &out, 1, 4, "out") < 0) return NULL;
    if (get_four(p_o, planes, 0, "plane") < 0) goto d1;
    if (ref_o != Py_None && get_buf(ref_o, &ref, 0, 4, "reference") < 0) goto d2;
    Py_ssize_t n = out.view.len / 4;
    const uint8_t *p[4];
    for (int i = 0; i < 4; i++) {
        if (planes[i].view.len != n) {
            PyErr_SetString(PyExc_ValueError, "join4: plane lengths do not match");
            goto d3;
        }
        p[i] = planes[i].view.buf;
    }
    if (ref.held && ref.view.len != out.view.len) {
        PyErr_SetString(PyExc_ValueError, "join4: the reference does not fit");
        goto d3;
    }
    Py_BEGIN_ALLOW_THREADS
    join4(out.view.buf, p, n, rot, ref.held ? ref.view.buf : NULL);
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
d3:
    release(&ref);
d2:
    release_four(planes);
d1:
    release(&out);
    return ret;
}

/* A whole 32-bit byte-plane block (codecs/byteplane.py's payload: n as u64, the four segment
 * lengths as u32, the segments, the tail bytes) decoded into out[0:n], XORed with ref (may
 * be NULL): each plane raw ("r"), a literal-only Huffman frame ("h") or sparse ("s"), the
 * last two into their scratch buffers, then joined. 1 decoded; 0 declined (any other code, a
 * frame huf_literals does not take, any length or segment that does not check out): out then
 * holds garbage and BytePlane.decode_into's Python path decodes the block or raises its
 * error. */
static int bplane32_into(uint8_t *out, Py_ssize_t n, const uint8_t *p, Py_ssize_t size, int rot,
                         const char *codes, const uint8_t *ref, uint8_t *const scratch[4],
                         const Py_ssize_t scratch_n[4]) {
    uint32_t len[4];
    if (strlen(codes) != 4 || !bplane_header(p, size, n, 4, len)) return 0;
    Py_ssize_t n_words = n / 4, n_tail = n % 4;
    const uint8_t *plane[4];
    const uint8_t *seg = p + 8 + 4 * 4;
    for (int i = 0; i < 4; seg += len[i], i++) {
        switch (codes[i]) {
        case 'r':
            if (len[i] != (uint64_t)n_words) return 0;
            plane[i] = seg;
            break;
        case 'h':
            if (scratch_n[i] < n_words || !huf_literals_into(seg, len[i], scratch[i], n_words))
                return 0;
            plane[i] = scratch[i];
            break;
        case 's':
            if (scratch_n[i] < n_words || sparse_decode_into(scratch[i], n_words, seg, len[i]) < 0)
                return 0;
            plane[i] = scratch[i];
            break;
        default:
            return 0;
        }
    }
    join4((uint32_t *)out, plane, n_words, rot, (const uint32_t *)ref);
    for (Py_ssize_t t = n - n_tail; t < n; t++)
        out[t] = (uint8_t)(p[size - n + t] ^ (ref ? ref[t] : 0));
    return 1;
}

/* bplane32_into(out, payload, rot, codes, reference_or_None, s0, s1, s2, s3) -> bool:
 * bplane32_into above with the GIL released. */
PyObject *py_bplane32_into(PyObject *self, PyObject *args) {
    PyObject *out_o, *pay_o, *ref_o, *s_o[4];
    int rot;
    const char *codes;
    if (!PyArg_ParseTuple(args, "OOisOOOOO", &out_o, &pay_o, &rot, &codes, &ref_o, &s_o[0],
                          &s_o[1], &s_o[2], &s_o[3]))
        return NULL;
    if (rot < 0 || rot > 31) {
        PyErr_SetString(PyExc_ValueError, "bplane32_into: rotation out of range");
        return NULL;
    }
    Buf out, pay, ref = {.held = 0}, s[4];
    PyObject *ret = NULL;
    if (get_buf(out_o, &out, 1, 1, "out") < 0) return NULL;
    if (get_buf(pay_o, &pay, 0, 1, "payload") < 0) goto d1;
    if (ref_o != Py_None && get_buf(ref_o, &ref, 0, 1, "reference") < 0) goto d2;
    if (get_four(s_o, s, 1, "scratch") < 0) goto d3;
    int ok = 0;
    if (!ref.held || ref.view.len == out.view.len) {
        uint8_t *scratch[4];
        Py_ssize_t scratch_n[4];
        for (int i = 0; i < 4; i++) {
            scratch[i] = s[i].view.buf;
            scratch_n[i] = s[i].view.len;
        }
        Py_BEGIN_ALLOW_THREADS
        ok = bplane32_into(out.view.buf, out.view.len, pay.view.buf, pay.view.len, rot, codes,
                           ref.held ? ref.view.buf : NULL, scratch, scratch_n);
        Py_END_ALLOW_THREADS
    }
    ret = PyBool_FromLong(ok);
    release_four(s);
d3:
    release(&ref);
d2:
    release(&pay);
d1:
    release(&out);
    return ret;
}

/* rows[i][j] = byte i of rotl32(w[j] ^ ref[j], rot) (ref may be NULL), rows `stride` apart.
 * On x86-64, 16 words at a time: a 16 x 4 byte transpose by unpacks (SSE2); the rest, and other
 * CPUs, by the loop below (restrict: the runtime alias checks of six arrays are more than gcc
 * versions a loop for, and it ran scalar). */
HOT static void split4(uint8_t *rows, Py_ssize_t stride, const uint32_t *restrict w, Py_ssize_t n,
                       int rot, const uint32_t *restrict ref) {
    uint8_t *restrict r0 = rows, *restrict r1 = rows + stride, *restrict r2 = rows + 2 * stride,
                      *restrict r3 = rows + 3 * stride;
    Py_ssize_t j = 0;
#if defined(__SSE2__)
    const __m128i left = _mm_cvtsi32_si128(rot), right = _mm_cvtsi32_si128(32 - rot);
    for (; j + 16 <= n; j += 16) {
        __m128i v[4];
        for (int q = 0; q < 4; q++) {
            __m128i x = _mm_loadu_si128((const __m128i *)(w + j + 4 * q));
            if (ref) x = _mm_xor_si128(x, _mm_loadu_si128((const __m128i *)(ref + j + 4 * q)));
            v[q] = _mm_or_si128(_mm_sll_epi32(x, left), _mm_srl_epi32(x, right));
        }
        /* bytes b0..b3 of words 0-15: three rounds of unpacks gather each byte's 8 words */
        __m128i x0 = _mm_unpacklo_epi8(v[0], v[1]), x1 = _mm_unpackhi_epi8(v[0], v[1]);
        __m128i x2 = _mm_unpacklo_epi8(v[2], v[3]), x3 = _mm_unpackhi_epi8(v[2], v[3]);
        __m128i y0 = _mm_unpacklo_epi8(x0, x1), y1 = _mm_unpackhi_epi8(x0, x1);
        __m128i y2 = _mm_unpacklo_epi8(x2, x3), y3 = _mm_unpackhi_epi8(x2, x3);
        __m128i z0 = _mm_unpacklo_epi8(y0, y1), z1 = _mm_unpackhi_epi8(y0, y1);
        __m128i z2 = _mm_unpacklo_epi8(y2, y3), z3 = _mm_unpackhi_epi8(y2, y3);
        _mm_storeu_si128((__m128i *)(r0 + j), _mm_unpacklo_epi64(z0, z2));
        _mm_storeu_si128((__m128i *)(r1 + j), _mm_unpackhi_epi64(z0, z2));
        _mm_storeu_si128((__m128i *)(r2 + j), _mm_unpacklo_epi64(z1, z3));
        _mm_storeu_si128((__m128i *)(r3 + j), _mm_unpackhi_epi64(z1, z3));
    }
#endif
    for (; j < n; j++) {
        uint32_t v = rotl32(ref ? w[j] ^ ref[j] : w[j], rot);
        r0[j] = (uint8_t)v;
        r1[j] = (uint8_t)(v >> 8);
        r2[j] = (uint8_t)(v >> 16);
        r3[j] = (uint8_t)(v >> 24);
    }
}

/* split4(rows, words, rot, reference_or_None): rows is a writable C-contiguous uint8 array of
 * 4 rows of at least len(words) bytes each (the encoder's rows with literal slack); row i gets
 * byte i of the rotated (XORed) words. */
PyObject *py_split4(PyObject *self, PyObject *args) {
    Buf rows, w, ref;
    int rot;
    Py_ssize_t n, stride;
    if (split_args(args, 4, "split4", &rows, &w, &ref, &rot, &n, &stride) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    split4(rows.view.buf, stride, w.view.buf, n, rot, ref.held ? ref.view.buf : NULL);
    Py_END_ALLOW_THREADS
    release(&ref);
    release(&w);
    release(&rows);
    Py_RETURN_NONE;
}
