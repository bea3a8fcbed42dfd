/* The gather step of one tile for one input's cuts (cut_select.c), for one width of keys:
 * cut_select.c includes this file twice, with
 *   GT_NAME  the function's name,
 *   GT_KEY   the key type: uint32_t for fp32's 31-bit magnitudes, uint16_t for bf16's 15 bits
 *            (twice the keys a vector),
 *   GT_TOP   the largest key the type's arithmetic may meet above a bracket.
 * Per active cut, the keys below its bracket are counted, those inside gathered with their flat
 * indices (or counted per tile, for a one-key bracket: settle finds the tie there). 0, or 1 if
 * a buffer overflowed. */
static inline int GT_NAME(Job *job, const GT_KEY *kt, Py_ssize_t s, Py_ssize_t m) {
    for (int i = 0; i < job->k; i++) {
        Cut *c = &job->cuts[i];
        if (!active(c)) continue;
        const GT_KEY lo = (GT_KEY)c->lo;
        const GT_KEY span = (GT_KEY)((c->hi < GT_TOP ? c->hi : GT_TOP) - c->lo);
        GT_KEY below = 0, eq = 0; /* m <= TILE: no overflow */
        for (Py_ssize_t j = 0; j < m; j++) below += kt[j] < lo;
        c->below += below;
        if (c->single) {
            for (Py_ssize_t j = 0; j < m; j++) eq += kt[j] == lo;
            c->inside += eq;
            if (c->tile_eq) c->tile_eq[s / TILE] = (uint16_t)eq;
            continue;
        }
        for (Py_ssize_t j0 = 0; j0 < m; j0 += BLOCK) {
            Py_ssize_t e = j0 + BLOCK < m ? j0 + BLOCK : m;
            GT_KEY any = 0;
            for (Py_ssize_t j = j0; j < e; j++) any |= (GT_KEY)(kt[j] - lo) <= span;
            if (!any) continue;
            if (c->inside + BLOCK > c->cap) return 1;
            uint32_t mask = 0; /* the block's keys inside, one bit each: only those are copied */
            for (Py_ssize_t j = j0; j < e; j++)
                mask |= (uint32_t)((GT_KEY)(kt[j] - lo) <= span) << (j - j0);
            Py_ssize_t at = c->inside;
            for (; mask; mask &= mask - 1, at++) {
                int t = __builtin_ctz(mask);
                c->keys[at] = kt[j0 + t];
                c->idx[at] = (uint32_t)(s + j0 + t);
            }
            c->inside = at;
        }
    }
    return 0;
}
