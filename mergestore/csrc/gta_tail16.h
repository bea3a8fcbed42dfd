/* The bf16 GTA tail over fp32 tiles of weighted deltas, shared by the fused kernels that make
 * each D_i = bf16(v_i * w_i) once per tile (rng.c's gta_keep16 for dare/della, cut_select.c's
 * gta_cut16 for ties/breadcrumbs): merge_arith16.h's gta_consensus / gta_sum tail in the same
 * operations and order. consensus: vote = bf16(D_0 + ... + D_k-1) >= 0 ? +1 : -1, agree_i =
 * D_i * vote > 0, merged = sum agree_i * D_i, divisor = sum agree_i * w_i; else merged = 0 +
 * sum D_i; then finish: rounded to bf16, / divisor (0 -> 1), * lam, + base. */

/* One tile of m elements: dt holds k rows of TILE floats (D_i), acc their running sum as the
 * caller made it (consensus: D_0 + ... from D_0; else 0 + D_0 + ...); bf the base widened. */
ALWAYS_INLINE static inline void gta_tail16(uint16_t *o, const float *bf, const float *dt,
                                            Py_ssize_t k, const float *w, float *acc,
                                            int consensus, float divisor, Py_ssize_t m,
                                            int normalize, float lam, int has_lam) {
    float vote[TILE], divs[TILE];
    if (consensus) {
        for (Py_ssize_t j = 0; j < m; j++) {
            vote[j] = r16(acc[j]) >= 0.0f ? 1.0f : -1.0f;
            acc[j] = 0.0f;
            divs[j] = 0.0f;
        }
        for (Py_ssize_t i = 0; i < k; i++) {
            const float *D = dt + i * TILE;
            const float wi = w[i];
            for (Py_ssize_t j = 0; j < m; j++) {
                float agree = (D[j] * vote[j]) > 0.0f ? 1.0f : 0.0f;
                acc[j] += D[j] * agree;
                divs[j] += agree * wi;
            }
        }
    }
    for (Py_ssize_t j = 0; j < m; j++) acc[j] = r16(acc[j]);
    if (normalize && consensus) {
        for (Py_ssize_t j = 0; j < m; j++) {
            float dv = r16(divs[j]);
            dv = dv == 0.0f ? 1.0f : dv;
            acc[j] = r16(acc[j] / dv);
        }
    } else if (normalize) {
        for (Py_ssize_t j = 0; j < m; j++) acc[j] = r16(acc[j] / divisor);
    }
    if (has_lam)
        for (Py_ssize_t j = 0; j < m; j++) acc[j] = r16(acc[j] * lam);
    for (Py_ssize_t j = 0; j < m; j++) o[j] = rne16(bf[j] + acc[j]);
}
