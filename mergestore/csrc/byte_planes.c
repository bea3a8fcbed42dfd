/* Byte planes: the join of a 16-bit block's two byte planes (with rotation and an XOR
 * reference). Python twin: mergestore/store/codecs/byteplane.py (join_planes' numpy path). */
#include "native.h"

/* ------------------------------------------------------------------ byte planes */

/* out[j] = rotr16(hi[j] << 8 | lo[j], rot) ^ ref[j] (ref may be NULL). */
HOT static void join2(uint16_t *out, const uint8_t *lo, const uint8_t *hi, Py_ssize_t n, int rot,
                      const uint16_t *ref) {
    if (ref) {
        for (Py_ssize_t j = 0; j < n; j++) {
            uint16_t w = (uint16_t)(((uint16_t)hi[j] << 8) | lo[j]);
            w = rot ? (uint16_t)((w >> rot) | (w << (16 - rot))) : w;
            out[j] = w ^ ref[j];
        }
    } else {
        for (Py_ssize_t j = 0; j < n; j++) {
            uint16_t w = (uint16_t)(((uint16_t)hi[j] << 8) | lo[j]);
            out[j] = rot ? (uint16_t)((w >> rot) | (w << (16 - rot))) : w;
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
