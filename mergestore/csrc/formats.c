/* Arrays of any float format (FMT_BF16, FMT_F16, FMT_F32; formats.h): exact widening to
 * fp32, rounding back to nearest even, and the argument handling every lane kernel shares. */
#include "formats.h"

const Py_ssize_t fmt_size[3] = {2, 2, 4};

/* dst[j] = element s + j of src (format fmt) as fp32, exactly. */
HOT4 void widen(float *dst, const void *src, int fmt, Py_ssize_t s, Py_ssize_t m) {
    if (fmt == FMT_F32) {
        memcpy(dst, (const float *)src + s, (size_t)m * sizeof(float));
    } else if (fmt == FMT_BF16) {
        const uint16_t *p = (const uint16_t *)src + s;
        for (Py_ssize_t j = 0; j < m; j++) dst[j] = bf16_to_f32(p[j]);
    } else {
#if HAVE_F16C_KERNELS
        if (have_f16c) {
            widen_f16c(dst, (const uint16_t *)src + s, m);
            return;
        }
#endif
        const uint16_t *p = (const uint16_t *)src + s;
        for (Py_ssize_t j = 0; j < m; j++) dst[j] = f16_table[p[j]];
    }
}

/* Elements s .. s + m of dst (format fmt) = src rounded to the format (nearest even). */
HOT4 void narrow(void *dst, int fmt, Py_ssize_t s, const float *src, Py_ssize_t m) {
    if (fmt == FMT_F32) {
        memcpy((float *)dst + s, src, (size_t)m * sizeof(float));
    } else if (fmt == FMT_BF16) {
        uint16_t *o = (uint16_t *)dst + s;
        for (Py_ssize_t j = 0; j < m; j++) o[j] = rne16_nan(src[j]);
    } else {
#if HAVE_F16C_KERNELS
        if (have_f16c) {
            narrow_f16c((uint16_t *)dst + s, src, m);
            return;
        }
#endif
        uint16_t *o = (uint16_t *)dst + s;
        for (Py_ssize_t j = 0; j < m; j++) o[j] = rne_f16(src[j]);
    }
}

void inputs_release(Inputs *in) {
    if (in->bufs)
        for (Py_ssize_t i = 0; i < in->k; i++) release(&in->bufs[i]);
    PyMem_Free(in->bufs);
    PyMem_Free((void *)in->ptrs);
    PyMem_Free(in->fmts);
    memset(in, 0, sizeof *in);
}

int check_fmt(int fmt) {
    if (fmt < 0 || fmt > 2) {
        PyErr_Format(PyExc_ValueError, "unknown float format code %d", fmt);
        return -1;
    }
    return 0;
}

/* One buffer of n elements of format fmt (n < 0: any whole number, n set from it). */
int get_fmt_buf(PyObject *o, int fmt, Py_ssize_t *n, int writable, Buf *b,
                       const char *what) {
    if (check_fmt(fmt) < 0 || get_buf(o, b, writable, fmt_size[fmt], what) < 0) return -1;
    Py_ssize_t len = b->view.len / fmt_size[fmt];
    if (*n < 0) *n = len;
    if (len != *n) {
        release(b);
        PyErr_Format(PyExc_ValueError, "%s: %zd elements, expected %zd", what, len, *n);
        return -1;
    }
    return 0;
}

int get_inputs(PyObject *xs_o, PyObject *fmts_o, Py_ssize_t n, Inputs *in) {
    memset(in, 0, sizeof *in);
    PyObject *xs = PySequence_Fast(xs_o, "expected a sequence of buffers");
    if (!xs) return -1;
    PyObject *fs = PySequence_Fast(fmts_o, "expected a sequence of format codes");
    if (!fs) {
        Py_DECREF(xs);
        return -1;
    }
    int rc = -1;
    in->k = PySequence_Fast_GET_SIZE(xs);
    if (PySequence_Fast_GET_SIZE(fs) != in->k) {
        PyErr_SetString(PyExc_ValueError, "one format code per input");
        goto done;
    }
    in->bufs = PyMem_Calloc(in->k ? in->k : 1, sizeof(Buf));
    in->ptrs = PyMem_Calloc(in->k ? in->k : 1, sizeof(void *));
    in->fmts = PyMem_Calloc(in->k ? in->k : 1, sizeof(int));
    if (!in->bufs || !in->ptrs || !in->fmts) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < in->k; i++) {
        long f = PyLong_AsLong(PySequence_Fast_GET_ITEM(fs, i));
        if (f == -1 && PyErr_Occurred()) goto done;
        in->fmts[i] = (int)f;
        if (get_fmt_buf(PySequence_Fast_GET_ITEM(xs, i), (int)f, &n, 0, &in->bufs[i], "input") < 0)
            goto done;
        in->ptrs[i] = in->bufs[i].view.buf;
    }
    rc = 0;
done:
    Py_DECREF(fs);
    Py_DECREF(xs);
    if (rc < 0) inputs_release(in);
    return rc;
}
