/* mergestore._native: fused kernels for the hot loops, each one pass over memory, GIL released.
 * This file holds the module's method table and start-up; the kernels are in the family files
 * listed in native.h. */
#include "native.h"

float f16_table[65536];

static void init_f16_table(void) {
    for (uint32_t h = 0; h < 65536; h++) {
        uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
        float f;
        if (exp == 0) {
            f = ldexpf((float)man, -24); /* zero or subnormal: exact */
            uint32_t u;
            memcpy(&u, &f, 4);
            u |= sign;
            memcpy(&f, &u, 4);
        } else {
            uint32_t u = exp == 31 ? (sign | 0x7F800000u | (man << 13))
                                   : (sign | ((exp + 112u) << 23) | (man << 13));
            memcpy(&f, &u, 4);
        }
        f16_table[h] = f;
    }
}

#if HAVE_F16C_KERNELS
int have_f16c = 0;
#endif

/* ------------------------------------------------------------------ module */

static PyMethodDef methods[] = {
    {"gta_sum_bf16", py_gta_sum_bf16, METH_VARARGS,
     "gta_sum_bf16(out, base, inputs, weights, deltas, divisor, normalize, lam, has_lam, "
     "f16=False): bf16, or fp16 with f16"},
    {"gta_consensus_bf16", py_gta_consensus_bf16, METH_VARARGS,
     "gta_consensus_bf16(out, base, deltas, weights, normalize, lam, has_lam, f16=False)"},
    {"gta_sum32", py_gta_sum32, METH_VARARGS,
     "gta_sum32(out, out_fmt, base, base_fmt, inputs, fmts, weights, deltas, divisor, normalize, "
     "lam, has_lam): fp32 compute; formats 0 bf16, 1 fp16, 2 fp32"},
    {"gta_cut32", py_gta_cut32, METH_VARARGS,
     "gta_cut32(out, out_fmt, base, base_fmt, inputs, fmts, cuts, start, weights, consensus, "
     "divisor, normalize, lam, has_lam)"},
    {"gta_consensus32", py_gta_consensus32, METH_VARARGS,
     "gta_consensus32(out, out_fmt, base, base_fmt, fp32_deltas, weights, normalize, lam, "
     "has_lam)"},
    {"linear32", py_linear32, METH_VARARGS,
     "linear32(out, out_fmt, inputs, fmts, weights, normalize, weight_sum)"},
    {"nearswap", py_nearswap, METH_VARARGS,
     "nearswap(out, out_fmt, compute_fmt, [base, other], fmts, t, clamp_min)"},
    {"ram", py_ram, METH_VARARGS,
     "ram(out, out_fmt, compute_fmt, [base, x1, ...], fmts, threshold)"},
    {"torch_sum32", py_torch_sum32, METH_VARARGS,
     "torch_sum32(values_f32) -> float: torch's sum of a contiguous fp32 array, in its order"},
    {"model_stock_stats32", py_model_stock_stats32, METH_VARARGS,
     "model_stock_stats32([base, x1, ...], fmts, bf16=0) -> ([|x_i - base|], [pair dot products])"},
    {"model_stock_mix32", py_model_stock_mix32, METH_VARARGS,
     "model_stock_mix32(out, out_fmt, [base, x1, ...], fmts, t, one_minus_t, bf16=0)"},
    {"sce_var", py_sce_var, METH_VARARGS,
     "sce_var(var_out_u32, hist_i64, [base, x1, ...], fmts, compute_fmt) -> nnz: the magnitude "
     "bits of torch.var(x_i - base, dim=0, unbiased=False) and their upper-16-bit histogram"},
    {"sce_sumsq", py_sce_sumsq, METH_VARARGS,
     "sce_sumsq([base, x1, ...], fmts, compute_fmt, var_or_None, v, last) -> torch's sum of "
     "each selected task vector's squares"},
    {"sce_combine", py_sce_combine, METH_VARARGS,
     "sce_combine(out, out_fmt, [base, x1, ...], fmts, compute_fmt, var_or_None, v, last, "
     "start, weights, lo): sce's election and weighted mean"},
    {"u32_hist_lo", py_u32_hist_lo, METH_VARARGS,
     "u32_hist_lo(values_u32, hi, hist): histogram of the low 16 bits of values whose upper "
     "16 bits are hi"},
    {"u32_nth_equal", py_u32_nth_equal, METH_VARARGS,
     "u32_nth_equal(values_u32, v, need) -> index of the need-th value equal to v, or -1"},
    {"sphere_norms", py_sphere_norms, METH_VARARGS,
     "sphere_norms(vectors, fmts, has_base, compute_fmt) -> [torch.norm of each x_i (- base)]"},
    {"nuslerp_dot", py_nuslerp_dot, METH_VARARGS,
     "nuslerp_dot(vectors, fmts, has_base, compute_fmt, n0, n1) -> sum(v0 / n0 * v1 / n1)"},
    {"nuslerp_mix", py_nuslerp_mix, METH_VARARGS,
     "nuslerp_mix(out, out_fmt, vectors, fmts, has_base, compute_fmt, a, c, d, divide): "
     "(a v0 + c v1) (/ d) (+ base)"},
    {"multislerp_pass", py_multislerp_pass, METH_VARARGS,
     "multislerp_pass(stage, out, out_fmt, vectors, fmts, has_base, compute_fmt, ne, weights, "
     "mn, dots, c, q, scale) -> [results]: one of multislerp's four passes"},
    {"slerp_chunks", py_slerp_chunks, METH_VARARGS,
     "slerp_chunks(stage, [a, b], fmts, compute_fmt, chunk, na, nb) -> per chunk: stage 1 "
     "[|a_c|, |b_c|, ...], stage 2 [sum((a_c / na) * (b_c / nb)), ...]"},
    {"slerp_mix", py_slerp_mix, METH_VARARGS,
     "slerp_mix(out, out_fmt, [a, b], fmts, compute_fmt, ca, cb): a ca + b cb in fp32, "
     "rounded to the compute format"},
    {"karcher_scale", py_karcher_scale, METH_VARARGS,
     "karcher_scale(out_f32, x, x_fmt, d): out = x / d in fp32"},
    {"karcher_first_mean", py_karcher_first_mean, METH_VARARGS,
     "karcher_first_mean(mean_f32, units, weights) -> |mean|: mean = sum of a_i u_i in order"},
    {"karcher_tangent", py_karcher_tangent, METH_VARARGS,
     "karcher_tangent(tangent_f32, mean_f32, units, factors, cosines) -> |tangent|"},
    {"karcher_update", py_karcher_update, METH_VARARGS,
     "karcher_update(mean_f32, tangent_f32, cos, sin, step) -> |mean|: the step along the "
     "tangent, in place"},
    {"karcher_x_first_mean", py_karcher_x_first_mean, METH_VARARGS,
     "karcher_x_first_mean(mean_f32, inputs, fmts, norms, weights) -> |mean|: karcher_first_mean "
     "with u_i = x_i / norm_i made from the inputs"},
    {"karcher_x_dots", py_karcher_x_dots, METH_VARARGS,
     "karcher_x_dots(mean_f32, d or None, inputs, fmts, norms, dots) -> [dot(mean, u_i)] or None: "
     "mean /= d in place first; the dots in MKL's generic sdot order"},
    {"karcher_x_tangent", py_karcher_x_tangent, METH_VARARGS,
     "karcher_x_tangent(tangent_f32, mean_f32, inputs, fmts, norms, factors, cosines) -> "
     "|tangent|"},
    {"mkl_def_sdot", py_mkl_def_sdot, METH_VARARGS,
     "mkl_def_sdot(x_f32, y_f32) -> sum of x * y in mkl_blas_def_xsdot's order"},
    {"karcher_out", py_karcher_out, METH_VARARGS,
     "karcher_out(out, out_fmt, mean_f32, scale): scale * mean in the output format"},
    {"karcher16_norm", py_karcher16_norm, METH_VARARGS, "karcher16_norm(x_bf16) -> |x| in fp32"},
    {"karcher16_scale", py_karcher16_scale, METH_VARARGS,
     "karcher16_scale(out_bf16, x_bf16, d): out = x / d in bf16"},
    {"karcher16_first", py_karcher16_first, METH_VARARGS,
     "karcher16_first(units_out, inputs, norms, weights, mean_out) -> |mean|: the unit vectors "
     "and their weighted sum, in bf16"},
    {"karcher16_dots", py_karcher16_dots, METH_VARARGS,
     "karcher16_dots(mean, d or None, units) -> [torch.dot(mean, u_i)], mean /= d first"},
    {"karcher16_dots_onednn", py_karcher16_dots_onednn, METH_VARARGS,
     "karcher16_dots_onednn(kind, mean, d or None, units, chunk) -> oneDNN's bf16 dots"},
    {"onednn_dot_kinds", py_onednn_dot_kinds, METH_NOARGS,
     "onednn_dot_kinds() -> the kinds of oneDNN bf16 dot this CPU can run"},
    {"karcher16_tangent", py_karcher16_tangent, METH_VARARGS,
     "karcher16_tangent(tangent, mean, units, factors, cosines) -> |tangent|, in bf16"},
    {"karcher16_update", py_karcher16_update, METH_VARARGS,
     "karcher16_update(mean, tangent, cos, sin, step) -> |mean|: the step along the geodesic"},
    {"karcher16_out", py_karcher16_out, METH_VARARGS,
     "karcher16_out(out, out_fmt, mean_bf16, scale): scale * mean in the output format"},
    {"sleef_f32", py_sleef_f32, METH_VARARGS,
     "sleef_f32(op, x) -> float or None: torch's fp32 acos (op 0), sin (1) or cos (2) of x; "
     "None for sin/cos of |x| >= 125 or NaN (not reproduced)"},
    {"sleef_f32_array", py_sleef_f32_array, METH_VARARGS,
     "sleef_f32_array(op, x_f32, out_f32) -> count not reproduced (NaN in out)"},
    {"convert", py_convert, METH_VARARGS,
     "convert(out, out_fmt, x, x_fmt): a float format conversion as torch's .to() rounds"},
    {"linear_bf16", py_linear_bf16, METH_VARARGS,
     "linear_bf16(out, inputs, weights, normalize, weight_sum, f16=False)"},
    {"sub_hist_bf16", py_sub_hist_bf16, METH_VARARGS,
     "sub_hist_bf16(out, x, base, hist, f16=False): x - base and its magnitude histogram"},
    {"nth_equal16", py_nth_equal16, METH_VARARGS, "nth_equal16(bits, v, need) -> index or -1"},
    {"apply_cuts16", py_apply_cuts16, METH_VARARGS,
     "apply_cuts16(data, mode1, v1, last1, mode2, v2, last2, f16=False)"},
    {"della_probs_bf16", py_della_probs_bf16, METH_VARARGS,
     "della_probs_bf16(magnitudes, out, rows, cols, base_p, eps): della's bf16 keep "
     "probabilities from the row ranks of the magnitudes (sparsify.della_magprune)."},
    {"row_ranks_bf16", py_row_ranks_bf16, METH_VARARGS,
     "row_ranks_bf16(magnitudes, out, rows, cols, as_bf16=False): 1-based stable ranks within "
     "each row, as int64 or rounded to bf16"},
    {"keep_rescale32", py_keep_rescale32, METH_VARARGS,
     "keep_rescale32(delta_f32, probs_f32, key_lo, key_hi, rescale, eps): dare/della's keep "
     "mask (philox_keep's stream) applied to delta in place, then its L1 rescale"},
    {"keep_sums32", py_keep_sums32, METH_VARARGS,
     "keep_sums32(keep_u8, x, x_fmt, base, base_fmt, probs_f32, key_lo, key_hi, rescale, eps) "
     "-> scale: dare's keep bytes of x - base (fp32) and its L1 rescale's scale"},
    {"della_keep_sums32", py_della_keep_sums32, METH_VARARGS,
     "della_keep_sums32(keep_u8, x, x_fmt, base, base_fmt, rows, table_f32, key_lo, key_hi, "
     "rescale, eps) -> scale: della's keep bytes (row ranks of |x - base|) and scale"},
    {"keep_sums16", py_keep_sums16, METH_VARARGS,
     "keep_sums16(keep_u8, x_u16, base_u16, probs_u16, key_lo, key_hi, rescale, eps) -> scale: "
     "dare's keep bytes of bf16(x - base) and its bf16 L1 rescale's scale"},
    {"della_keep_sums16", py_della_keep_sums16, METH_VARARGS,
     "della_keep_sums16(keep_u8, x_u16, base_u16, rows, base_p, eps, key_lo, key_hi, rescale, "
     "rescale_eps) -> scale: della's bf16 keep bytes (row ranks of |x - base|) and scale"},
    {"gta_keep16", py_gta_keep16, METH_VARARGS,
     "gta_keep16(out, base, inputs, keeps, scales, weights, consensus, divisor, normalize, lam, "
     "has_lam): dare/della's combine over keep bytes (None: all kept), bf16"},
    {"gta_keep32", py_gta_keep32, METH_VARARGS,
     "gta_keep32(out, out_fmt, base, base_fmt, inputs, fmts, keeps, scales, weights, consensus, "
     "divisor, normalize, lam, has_lam): dare/della's combine over keep bytes, fp32"},
    {"philox_keep", py_philox_keep, METH_VARARGS,
     "philox_keep(out, probs, key_lo, key_hi, bf16): Bernoulli keep mask, numpy's Philox stream "
     "(probs: one per element, or one for all)"},
    {"find_cuts", py_find_cuts, METH_VARARGS,
     "find_cuts(inputs, fmts, base, base_fmt, compute_fmt, [[(count, largest), ...] per input], "
     "sample, z, scratch=None) -> [(mode1, v1, last1, mode2, v2, last2, exact) per input]: "
     "ties/breadcrumbs rank cuts of each x - base, in one pass"},
    {"gta_cut16", py_gta_cut16, METH_VARARGS,
     "gta_cut16(out, base, inputs, cuts, start, weights, consensus, divisor, normalize, lam, "
     "has_lam): bf16 cut deltas combined in one pass"},
    {"finite", py_finite, METH_VARARGS, "finite(x, fmt) -> bool: no inf or NaN in x"},
    {"join2", py_join2, METH_VARARGS, "join2(out, lo, hi, rot, reference_or_None)"},
    {"split2", py_split2, METH_VARARGS,
     "split2(rows, words, rot, reference_or_None): the byte planes of rotl(words ^ reference)"},
    {"hist8", py_hist8, METH_VARARGS, "hist8(data, step, counts): byte counts of data[::step]"},
    {"bplane16_into", py_bplane16_into, METH_VARARGS,
     "bplane16_into(out, payload, rot, codes, reference_or_None, scratch0, scratch1) -> bool: "
     "a 16-bit byte-plane block decoded into out; False: declined"},
    {"estimate_ratio", py_estimate_ratio, METH_VARARGS,
     "estimate_ratio(data, width, rot, step, raw_bits) -> float: byteplane.estimate_ratio's "
     "guess from the words data[::step]"},
    {"join4", py_join4, METH_VARARGS, "join4(out, p0, p1, p2, p3, rot, reference_or_None)"},
    {"split4", py_split4, METH_VARARGS,
     "split4(rows, words, rot, reference_or_None): the byte planes of rotl32(words ^ reference)"},
    {"bplane32_into", py_bplane32_into, METH_VARARGS,
     "bplane32_into(out, payload, rot, codes, reference_or_None, s0, s1, s2, s3) -> bool: a "
     "32-bit byte-plane block decoded into out; False: declined"},
    {"plane_plan", py_plane_plan, METH_VARARGS,
     "plane_plan(data, step, zero_fraction, raw_bits, counts) -> int: 0 sparse, 1 raw, 2 Huffman"},
    {"sparse_encode", py_sparse_encode, METH_VARARGS,
     "sparse_encode(dst, plane) -> int: the plane's sparse segment in dst, -1 if it does not fit"},
    {"sparse_decode", py_sparse_decode, METH_VARARGS,
     "sparse_decode(dst, segment) -> bool: a sparse segment decoded into dst (False: malformed)"},
    {"join2_sparse", py_join2_sparse, METH_VARARGS,
     "join2_sparse(out, dense, dense_hi, segment, rot, reference_or_None) -> bool: join2 of a "
     "dense plane and a sparse segment (False: malformed segment)"},
    {"huf_literals", py_huf_literals, METH_VARARGS,
     "huf_literals(dst, frame) -> bool: a literal-only zstd frame decoded into dst (False: "
     "declined, decode it with zstd)"},
    {"huf_encode", py_huf_encode, METH_VARARGS,
     "huf_encode(dst, src, counts) -> int: src as a literal-only zstd frame in dst, coded with a "
     "table from a sample's counts (-1: declined, run zstd)"},
    {"huf_bound", py_huf_bound, METH_O, "huf_bound(n) -> int: the dst size huf_encode needs"},
    {"delta_stats", py_delta_stats, METH_VARARGS,
     "delta_stats(b, a, dtype) -> (dd, l1, max_abs, bb, aa, nnz)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "mergestore._native",
                                    "Fused kernels (see mergestore/native.py).", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) {
    init_f16_table();
#if HAVE_F16C_KERNELS
    __builtin_cpu_init();
    have_f16c = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                __builtin_cpu_supports("f16c") && !getenv("MERGESTORE_NO_F16C");
#endif
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "HAVE_F16", HAVE_F16) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
