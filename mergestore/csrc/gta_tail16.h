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

/* The same tail with each element's D_i in registers, for 1 to 4 inputs (cut_select.c's
 * cut_sum_few and cut_vote_few, rng.c's keep_few16): loops over j < m that write out[j] from
 * base[j], with normalize, divisor, lam and has_lam taken from the caller's scope. DS declares
 * d0 .. d(k-1), each D_i, from b (base[j] widened); SUM is their sum in input order (0.0f + d0
 * + ... for the weighted sum, whose tile starts from +0; d0 + ... for the vote); AGREES is
 * GTA16_AGREE(0); ... GTA16_AGREE(k-1). w0 .. w(k-1) are the weights. */
#define GTA16_AGREE(i)                                                                       \
    do {                                                                                     \
        const float agree = (d##i * vote) > 0.0f ? 1.0f : 0.0f;                              \
        merged += d##i * agree;                                                              \
        divs += agree * w##i;                                                                \
    } while (0)
#define GTA16_VOTE_LOOP(DS, SUM, AGREES)                                                     \
    for (Py_ssize_t j = 0; j < m; j++) {                                                     \
        const float b = bf16_to_f32(base[j]);                                                \
        DS;                                                                                  \
        const float vote = r16(SUM) >= 0.0f ? 1.0f : -1.0f;                                  \
        float merged = 0.0f, divs = 0.0f;                                                    \
        AGREES;                                                                              \
        float r = r16(merged);                                                               \
        if (normalize) {                                                                     \
            float dv = r16(divs);                                                            \
            r = r16(r / (dv == 0.0f ? 1.0f : dv));                                           \
        }                                                                                    \
        if (has_lam) r = r16(r * lam);                                                       \
        out[j] = rne16(b + r);                                                               \
    }
#define GTA16_SUM_LOOP(DS, SUM)                                                              \
    for (Py_ssize_t j = 0; j < m; j++) {                                                     \
        const float b = bf16_to_f32(base[j]);                                                \
        DS;                                                                                  \
        float r = r16(SUM);                                                                  \
        if (normalize) r = r16(r / divisor);                                                 \
        if (has_lam) r = r16(r * lam);                                                       \
        out[j] = rne16(b + r);                                                               \
    }

/* Those loops for k = 1 to 4 inputs (k in the caller's scope), D(i) declaring d##i. The sum
 * starts from +0, as the tile's does (0 + -0 is +0); the vote from d0. With no tail, the sum's
 * loop is expanded with the tail flags as constants, so that it tests no flag per element
 * (with the flags as variables it ran ~15% slower in gta_cut16's breadcrumbs). */
#define GTA16_SUM_K(D)                                                                       \
    switch (k) {                                                                             \
    case 1: GTA16_SUM_LOOP(D(0), 0.0f + d0); break;                                          \
    case 2: GTA16_SUM_LOOP(D(0); D(1), 0.0f + d0 + d1); break;                               \
    case 3: GTA16_SUM_LOOP(D(0); D(1); D(2), 0.0f + d0 + d1 + d2); break;                    \
    default: GTA16_SUM_LOOP(D(0); D(1); D(2); D(3), 0.0f + d0 + d1 + d2 + d3); break;        \
    }
#define GTA16_SUM_FEW(D)                                                                     \
    if (!normalize && !has_lam) {                                                            \
        const int normalize = 0, has_lam = 0; /* shadowing: constants for this expansion */  \
        GTA16_SUM_K(D)                                                                       \
    } else {                                                                                 \
        GTA16_SUM_K(D)                                                                       \
    }
#define GTA16_VOTE_FEW(D)                                                                    \
    switch (k) {                                                                             \
    case 1: GTA16_VOTE_LOOP(D(0), d0, GTA16_AGREE(0)); break;                                \
    case 2: GTA16_VOTE_LOOP(D(0); D(1), d0 + d1, GTA16_AGREE(0); GTA16_AGREE(1)); break;     \
    case 3:                                                                                  \
        GTA16_VOTE_LOOP(D(0); D(1); D(2), d0 + d1 + d2,                                      \
                        GTA16_AGREE(0); GTA16_AGREE(1); GTA16_AGREE(2));                     \
        break;                                                                               \
    default:                                                                                 \
        GTA16_VOTE_LOOP(D(0); D(1); D(2); D(3), d0 + d1 + d2 + d3,                           \
                        GTA16_AGREE(0); GTA16_AGREE(1); GTA16_AGREE(2); GTA16_AGREE(3));     \
        break;                                                                               \
    }
