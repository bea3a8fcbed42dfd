/* torch's fp32 2-norm (torch.norm, linalg.vector_norm of a contiguous fp32 tensor or row), fed
 * in order: shared by merge_reduce.c (model_stock) and merge_sphere.c (nuslerp, multislerp).
 * See merge_reduce.c's head comment for the order. */
#ifndef MERGESTORE_TORCH_NORM_H
#define MERGESTORE_TORCH_NORM_H
#include "native.h"

#define LANES 8 /* as cascade.h: torch's AVX2 vectors of eight floats */

/* torch's fp32 2-norm, fed in order. */
typedef struct {
    Py_ssize_t vec_end;
    float acc[LANES];
    float sum; /* the lanes' sum, then the tail added to it */
    int lanes_done;
} Norm;

static void norm_init(Norm *q, Py_ssize_t n) {
    memset(q, 0, sizeof *q);
    q->vec_end = n - n % LANES;
}

static inline void norm_close_lanes(Norm *q) {
    if (q->lanes_done) return;
    q->sum = q->acc[0];
    for (int l = 1; l < LANES; l++) q->sum = q->sum + q->acc[l];
    q->lanes_done = 1;
}

/* Elements s .. s + m of the sequence, s a multiple of 8 (a tile's start). */
HOT static void norm_feed(Norm *q, const float *restrict v, Py_ssize_t s, Py_ssize_t m) {
    Py_ssize_t vec = q->vec_end - s; /* this tile's whole vectors: a multiple of 8, or m */
    vec = vec < 0 ? 0 : (vec > m ? m : vec);
    float acc[LANES];
    memcpy(acc, q->acc, sizeof acc);
    Py_ssize_t j = 0;
    for (; j + LANES <= vec; j += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += v[j + l] * v[j + l];
    memcpy(q->acc, acc, sizeof acc);
    if (j < m) norm_close_lanes(q);
    for (; j < m; j++) q->sum = q->sum + v[j] * v[j];
}

static float norm_end(Norm *q) {
    norm_close_lanes(q);
    return sqrtf(q->sum);
}

#endif
