/* The 16-bit GTA and linear kernels of merge_arith.c, written once for both 16-bit float
 * formats. merge_arith.c includes this file twice, with
 *   K16(name)  the kernel's name for the format (name##_bf16, name##_f16),
 *   TO_F32(h)  the 16-bit value as a float (exact),
 *   ROUND(f)   a float rounded to the format, to nearest even, as torch rounds;
 * torch computes every 16-bit operation in fp32 and rounds its result to the tensor's dtype,
 * so one body gives both formats' bits. */

/* The GTA tail (gta._finish) on one tile, in place on `merged`: r = ROUND(merged); r =
 * ROUND(r / divisor) if normalize (per element when `divisors`, rounded to bf16, 0 -> 1);
 * r = ROUND(r * lam) if has_lam; out = ROUND(base + r). */
ALWAYS_INLINE static inline void K16(finish)(uint16_t *o, const uint16_t *b, float *merged, float *divisors,
                          float divisor, Py_ssize_t m, int normalize, float lam, int has_lam) {
    for (Py_ssize_t j = 0; j < m; j++) merged[j] = TO_F32(ROUND(merged[j]));
    if (normalize && divisors) {
        for (Py_ssize_t j = 0; j < m; j++) {
            float dv = TO_F32(ROUND(divisors[j]));
            dv = dv == 0.0f ? 1.0f : dv;
            merged[j] = TO_F32(ROUND(merged[j] / dv));
        }
    } else if (normalize) {
        for (Py_ssize_t j = 0; j < m; j++) merged[j] = TO_F32(ROUND(merged[j] / divisor));
    }
    if (has_lam)
        for (Py_ssize_t j = 0; j < m; j++) merged[j] = TO_F32(ROUND(merged[j] * lam));
    for (Py_ssize_t j = 0; j < m; j++) o[j] = ROUND(TO_F32(b[j]) + merged[j]);
}

/* gta_sum for 1 to 4 inputs (not deltas), no normalize and no lambda (task_arithmetic): the
 * same operations in the same order, each element's sum held in a register from 0 instead of
 * an fp32 tile stored and reloaded per input, and the tail in the same pass. */
#define GTA_TERM(i) a += TO_F32(ROUND(TO_F32(ROUND(TO_F32(x##i[j]) - b)) * w##i))
#define GTA_LOOP(TERMS)                                                  \
    for (Py_ssize_t j = 0; j < n; j++) {                                 \
        const float b = TO_F32(base[j]);                                 \
        float a = 0.0f;                                                  \
        TERMS;                                                           \
        out[j] = ROUND(b + TO_F32(ROUND(a)));                            \
    }
ALWAYS_INLINE static inline void K16(gta_sum_plain)(uint16_t *out, const uint16_t *base,
                                                    const uint16_t **xs, Py_ssize_t k,
                                                    const float *w, Py_ssize_t n) {
    FEW_INPUTS;
    FEW_SWITCH(GTA_LOOP, GTA_TERM)
}
#undef GTA_LOOP
#undef GTA_TERM

/* out = base + finish(sum_i ROUND(d_i * w_i)), d_i = ROUND(x_i - base) (or x_i if deltas):
 * the no-consensus GTA tail of ops/gta.py (_weighted_delta_sum + _finish). */
HOT4 static void K16(gta_sum)(uint16_t *out, const uint16_t *base, const uint16_t **xs, Py_ssize_t k,
                             const float *w, int deltas, Py_ssize_t n, float divisor,
                             int normalize, float lam, int has_lam) {
    if (!deltas && !normalize && !has_lam && k >= 1 && k <= 4) {
        K16(gta_sum_plain)(out, base, xs, k, w, n);
        return;
    }
    float acc[TILE], bf[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        const uint16_t *b = base + s;
        for (Py_ssize_t j = 0; j < m; j++) acc[j] = 0.0f;
        if (!deltas)
            for (Py_ssize_t j = 0; j < m; j++) bf[j] = TO_F32(b[j]);
        for (Py_ssize_t i = 0; i < k; i++) {
            const uint16_t *x = xs[i] + s;
            const float wi = w[i];
            if (deltas) {
                for (Py_ssize_t j = 0; j < m; j++)
                    acc[j] += TO_F32(ROUND(TO_F32(x[j]) * wi));
            } else {
                for (Py_ssize_t j = 0; j < m; j++) {
                    float d = TO_F32(ROUND(TO_F32(x[j]) - bf[j]));
                    acc[j] += TO_F32(ROUND(d * wi));
                }
            }
        }
        K16(finish)(out + s, b, acc, NULL, divisor, m, normalize, lam, has_lam);
    }
}

/* TIES "sum" consensus over sparsified 16-bit deltas, then the GTA tail (gta._consensus_sums,
 * gta._combine and gta._finish): D_i = ROUND(d_i * w_i); vote = ROUND(D_0 + ... + D_k-1) >= 0
 * ? +1 : -1; agree_i = D_i * vote > 0; merged = ROUND(sum agree_i * D_i); divisor =
 * ROUND(sum agree_i * w_i) (0 -> 1). */
HOT4 static void K16(gta_consensus)(uint16_t *out, const uint16_t *base, const uint16_t **ds,
                                   Py_ssize_t k, const float *w, Py_ssize_t n, int normalize,
                                   float lam, int has_lam) {
    float vote[TILE], merged[TILE], divisor[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        for (Py_ssize_t i = 0; i < k; i++) {
            const uint16_t *d = ds[i] + s;
            const float wi = w[i];
            if (i == 0) {
                for (Py_ssize_t j = 0; j < m; j++) vote[j] = TO_F32(ROUND(TO_F32(d[j]) * wi));
            } else {
                for (Py_ssize_t j = 0; j < m; j++) vote[j] += TO_F32(ROUND(TO_F32(d[j]) * wi));
            }
        }
        for (Py_ssize_t j = 0; j < m; j++) {
            vote[j] = TO_F32(ROUND(vote[j])) >= 0.0f ? 1.0f : -1.0f;
            merged[j] = 0.0f;
            divisor[j] = 0.0f;
        }
        for (Py_ssize_t i = 0; i < k; i++) {
            const uint16_t *d = ds[i] + s;
            const float wi = w[i];
            for (Py_ssize_t j = 0; j < m; j++) {
                float D = TO_F32(ROUND(TO_F32(d[j]) * wi));
                float agree = (D * vote[j]) > 0.0f ? 1.0f : 0.0f;
                merged[j] += D * agree;
                divisor[j] += agree * wi;
            }
        }
        K16(finish)(out + s, base + s, merged, divisor, 0.0f, m, normalize, lam, has_lam);
    }
}

/* linear for 1 to 4 inputs: the same operations in the same order, each element's sum held in
 * a register from 0 instead of an fp32 tile stored and reloaded per input. */
#define LIN_TERM(i) a = fmaf(TO_F32(x##i[j]), w##i, a)
#define LIN_LOOP(TERMS)                                                  \
    for (Py_ssize_t j = 0; j < n; j++) {                                 \
        float a = 0.0f;                                                  \
        TERMS;                                                           \
        out[j] = ROUND(normalize ? a / wsum : a);                        \
    }
ALWAYS_INLINE static inline void K16(linear_few)(uint16_t *out, const uint16_t **xs, Py_ssize_t k,
                                                 const float *w, Py_ssize_t n, int normalize,
                                                 float wsum) {
    FEW_INPUTS;
    FEW_SWITCH(LIN_LOOP, LIN_TERM)
}
#undef LIN_LOOP
#undef LIN_TERM

/* linear (ops/linear.py) on 16-bit inputs: acc = fma(x_i, w_i, acc) in fp32 from 0, in input
 * order (torch's addcmul_ is fused); acc / wsum if normalize; rounded to bf16. */
HOT4 static void K16(linear)(uint16_t *out, const uint16_t **xs, Py_ssize_t k, const float *w,
                            Py_ssize_t n, int normalize, float wsum) {
    if (k >= 1 && k <= 4) {
        K16(linear_few)(out, xs, k, w, n, normalize, wsum);
        return;
    }
    float acc[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        for (Py_ssize_t j = 0; j < m; j++) acc[j] = 0.0f;
        for (Py_ssize_t i = 0; i < k; i++) {
            const uint16_t *x = xs[i] + s;
            const float wi = w[i];
            for (Py_ssize_t j = 0; j < m; j++) acc[j] = fmaf(TO_F32(x[j]), wi, acc[j]);
        }
        if (normalize)
            for (Py_ssize_t j = 0; j < m; j++) acc[j] = acc[j] / wsum;
        for (Py_ssize_t j = 0; j < m; j++) out[s + j] = ROUND(acc[j]);
    }
}
