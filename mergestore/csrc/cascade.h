/* torch's fp32 cascade_sum (SumKernel.cpp), fed in order: shared by merge_reduce.c (torch-order
 * sums and model_stock) and rng.c (dare/della's L1 rescale). See merge_reduce.c's head comment
 * for the order. */
#ifndef MERGESTORE_CASCADE_H
#define MERGESTORE_CASCADE_H
#include "native.h"

#define LANES 8
#define ROW 32 /* four vectors of eight lanes */
#define LEVELS 4

/* torch's cascade_sum over n fp32 values, fed in order (cascade_feed), read by cascade_end. */
typedef struct {
    Py_ssize_t n, vec_end, row_end, rows, step;
    int lp, finished_rows;
    float acc[LEVELS][ROW];
    float tail;
    Py_ssize_t row; /* rows fed */
} Cascade;

static int ceil_log2(Py_ssize_t x) {
    int r = 0;
    if (x <= 1) return 0;
    for (Py_ssize_t v = x - 1; v; v >>= 1) r++;
    return r;
}

static void cascade_init(Cascade *c, Py_ssize_t n) {
    memset(c, 0, sizeof *c);
    c->n = n;
    int vec = n >= LANES; /* under 8 elements: the scalar path, rows of 4 scalars */
    Py_ssize_t width = vec ? ROW : 4;
    Py_ssize_t units = vec ? n / LANES : n; /* vectors, or scalars */
    c->rows = units / 4;
    c->row_end = c->rows * width;
    c->vec_end = vec ? units * LANES : c->row_end;
    int lp = ceil_log2(c->rows) / LEVELS;
    c->lp = lp < 4 ? 4 : lp;
    c->step = (Py_ssize_t)1 << c->lp;
}

/* Levels 1.. take the level below after every `step` rows of level 0, as torch's loop. */
static inline void cascade_row_done(Cascade *c, Py_ssize_t width) {
    c->row++;
    if (c->row % c->step != 0) return;
    Py_ssize_t mask = c->step - 1;
    for (int j = 1; j < LEVELS; j++) {
        for (Py_ssize_t k = 0; k < width; k++) {
            c->acc[j][k] += c->acc[j - 1][k];
            c->acc[j - 1][k] = 0.0f;
        }
        if ((c->row & (mask << (j * c->lp))) != 0) break;
    }
}

static inline void cascade_close_rows(Cascade *c, Py_ssize_t width) {
    if (c->finished_rows) return;
    for (int j = 1; j < LEVELS; j++)
        for (Py_ssize_t k = 0; k < width; k++) c->acc[0][k] += c->acc[j][k];
    c->finished_rows = 1;
}

/* Elements s .. s + m of the sequence (s a multiple of ROW unless it is the first call). */
HOT static void cascade_feed(Cascade *c, const float *restrict v, Py_ssize_t s, Py_ssize_t m) {
    int vec = c->n >= LANES;
    Py_ssize_t width = vec ? ROW : 4;
    Py_ssize_t j = 0;
    /* whole rows: a tile starts on a row (s is a multiple of ROW), so rows are whole here */
    if (vec) {
        float row[ROW];
        memcpy(row, c->acc[0], sizeof row);
        while (j + ROW <= m && s + j < c->row_end) {
            for (Py_ssize_t k = 0; k < ROW; k++) row[k] += v[j + k];
            j += ROW;
            if ((c->row + 1) % c->step == 0) { /* the cascade reads and clears level 0 */
                memcpy(c->acc[0], row, sizeof row);
                cascade_row_done(c, width);
                memcpy(row, c->acc[0], sizeof row);
            } else {
                c->row++;
            }
        }
        memcpy(c->acc[0], row, sizeof row);
    }
    while (j < m && s + j < c->row_end) {
        Py_ssize_t at = (s + j) % width;
        Py_ssize_t take = width - at;
        if (take > m - j) take = m - j;
        for (Py_ssize_t k = 0; k < take; k++) c->acc[0][at + k] += v[j + k];
        j += take;
        if (at + take == width) cascade_row_done(c, width);
    }
    if (j < m || s + j >= c->row_end) cascade_close_rows(c, width);
    if (vec) {
        /* leftover whole vectors, into the first vector */
        for (; j < m && s + j < c->vec_end; j++) c->acc[0][(s + j) % LANES] += v[j];
        /* the scalar tail, summed from 0 */
        for (; j < m; j++) c->tail += v[j];
    } else {
        for (; j < m; j++) c->acc[0][0] += v[j]; /* the tail into the first accumulator */
    }
}

static float cascade_end(Cascade *c) {
    int vec = c->n >= LANES;
    Py_ssize_t width = vec ? ROW : 4;
    cascade_close_rows(c, width);
    float r;
    if (vec) {
        for (int q = 1; q < 4; q++)
            for (int l = 0; l < LANES; l++) c->acc[0][l] += c->acc[0][q * LANES + l];
        r = c->tail;
        for (int l = 0; l < LANES; l++) r += c->acc[0][l];
    } else {
        r = c->acc[0][0];
        for (int q = 1; q < 4; q++) r += c->acc[0][q];
    }
    return 0.0f + r; /* the output starts at 0 and takes the sum */
}

#endif
