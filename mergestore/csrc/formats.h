/* Arrays of any float format: the lanes' format codes (native.h) widened to fp32 exactly,
 * rounded back to nearest even, tiles in a compute format, and the shared argument handling
 * (formats.c). */
#ifndef MERGESTORE_FORMATS_H
#define MERGESTORE_FORMATS_H

#include "native.h"

/* Each format's element size. */
extern const Py_ssize_t fmt_size[3];

/* A sequence of (buffer, format) inputs of n elements each. */
typedef struct {
    Py_ssize_t k;
    Buf *bufs;
    const void **ptrs;
    int *fmts;
} Inputs;

/* dst[j] = element s + j of src (format fmt) as fp32, exactly. */
void widen(float *dst, const void *src, int fmt, Py_ssize_t s, Py_ssize_t m);
/* Elements s .. s + m of dst (format fmt) = src rounded to the format (nearest even). */
void narrow(void *dst, int fmt, Py_ssize_t s, const float *src, Py_ssize_t m);
int check_fmt(int fmt);
/* One buffer of n elements of format fmt (n < 0: any whole number, n set from it). */
int get_fmt_buf(PyObject *o, int fmt, Py_ssize_t *n, int writable, Buf *b, const char *what);
int get_inputs(PyObject *xs_o, PyObject *fmts_o, Py_ssize_t n, Inputs *in);
void inputs_release(Inputs *in);

/* Tiles in a compute format (merge_elementwise.c, merge_sce.c): torch rounds the result of
 * each operation to the compute dtype; RC below. */
/* Each value of the tile rounded to the compute format (nearest even), as a float. */
ALWAYS_INLINE static inline void round_tile(float *v, Py_ssize_t m, int cfmt) {
    if (cfmt == FMT_F32) return;
    if (cfmt == FMT_BF16) {
        for (Py_ssize_t j = 0; j < m; j++) v[j] = bf16_to_f32(rne16_nan(v[j]));
    } else {
        for (Py_ssize_t j = 0; j < m; j++) v[j] = f16_to_f32(rne_f16(v[j]));
    }
}

/* The tile of elements s .. s + m of x, widened and rounded to the compute format. */
ALWAYS_INLINE static inline void load_tile(float *dst, const void *x, int fmt, int cfmt,
                                           Py_ssize_t s, Py_ssize_t m) {
    widen(dst, x, fmt, s, m);
    if (cfmt != fmt) round_tile(dst, m, cfmt);
}

#endif
