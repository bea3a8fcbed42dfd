/* The register loops of gta_sum32 (deltas = 0) and linear32 (merge_arith32.c) for their common
 * case, 1 to 4 inputs of one format (and a base of it): the same operations in the same order
 * as the tile loops, each element's sum held in a register instead of a widened tile and a
 * running sum stored and reloaded per input. merge_arith32.c includes this file once per
 * input format, with
 *   F32X(name)  the loop's name for the format (name##_bf16, name##_f32),
 *   XT          the element type of inputs and base (uint16_t, float),
 *   LD(x)       an element as a float (exact),
 *   RB(f)       an fp32 result rounded to bf16 bits: rne16 where every value is x86
 *               arithmetic on bf16-widened operands (a NaN then has zero low 16 bits, so rne16
 *               gives rne16_nan's bits, native.h), rne16_nan where a NaN may carry low bits. */

/* Element j's result v into the bf16 or fp32 output, or into a tile narrowed after the loop. */
#define FEW_TILES(ELEMENT)                                                                     \
    do {                                                                                       \
    float acc[TILE];                                                                           \
    for (Py_ssize_t s = 0; s < n; s += TILE) {                                                 \
        Py_ssize_t m = n - s < TILE ? n - s : TILE;                                            \
        if (out_fmt == FMT_BF16) {                                                             \
            uint16_t *o = (uint16_t *)out;                                                     \
            for (Py_ssize_t j = s; j < s + m; j++) {                                           \
                ELEMENT;                                                                       \
                o[j] = RB(v);                                                                  \
            }                                                                                  \
        } else if (out_fmt == FMT_F32) {                                                       \
            float *o = (float *)out;                                                           \
            for (Py_ssize_t j = s; j < s + m; j++) {                                           \
                ELEMENT;                                                                       \
                o[j] = v;                                                                      \
            }                                                                                  \
        } else {                                                                               \
            for (Py_ssize_t j = s; j < s + m; j++) {                                           \
                ELEMENT;                                                                       \
                acc[j - s] = v;                                                                \
            }                                                                                  \
            narrow(out, out_fmt, s, acc, m);                                                   \
        }                                                                                      \
    }                                                                                          \
    } while (0)

#define LIN_TERM(i) a = fmaf(LD(x##i[j]), w##i, a)
#define LIN_LOOP(TERMS)                                                                        \
    FEW_TILES(float a = 0.0f; TERMS; const float v = normalize ? a / wsum : a)
ALWAYS_INLINE static inline void F32X(linear32_few)(void *out, int out_fmt, const void **xv,
                                                    Py_ssize_t k, const float *w, Py_ssize_t n,
                                                    int normalize, float wsum) {
    const XT **xs = (const XT **)xv;
    FEW_INPUTS_OF(XT);
    FEW_SWITCH(LIN_LOOP, LIN_TERM)
}
#undef LIN_LOOP
#undef LIN_TERM

#define GTA_TERM(i) a = a + (LD(x##i[j]) - b) * w##i
#define GTA_LOOP(TERMS)                                                                        \
    FEW_TILES(const float b = LD(bp[j]); float a = 0.0f; TERMS;                                \
              if (normalize) a = a / divisor; if (has_lam) a = a * lam; const float v = b + a)
ALWAYS_INLINE static inline void F32X(gta_sum32_few)(void *out, int out_fmt, const void *base,
                                                     const void **xv, Py_ssize_t k,
                                                     const float *w, Py_ssize_t n,
                                                     float divisor, int normalize, float lam,
                                                     int has_lam) {
    const XT *bp = (const XT *)base, **xs = (const XT **)xv;
    FEW_INPUTS_OF(XT);
    FEW_SWITCH(GTA_LOOP, GTA_TERM)
}
#undef GTA_LOOP
#undef GTA_TERM
#undef FEW_TILES
