/* The shared half of mergestore._native's C sources (mergestore/csrc/): float conversions
 * exactly as torch converts, buffer helpers, the F16C helpers, and each kernel family's entry
 * points. The families, each in its own file beside its Python twin (mergestore/native.py
 * lists them):
 *   merge_arith.c  (+ merge_arith16.h)  GTA and linear arithmetic, 16-bit compute  ops/lane16.py
 *   merge_arith32.c  the same with fp32 compute, inputs and output in any format  ops/lanes.py
 *   merge_elementwise.c  nearswap and ram, any compute format  ops/lane_elementwise.py
 *   merge_reduce.c  torch-order sums and norms; model_stock, fp32 and bf16  ops/lane_reduce.py
 *   merge_sce.c    sce in any compute format (variance top-k, election)  ops/lane_sce.py
 *   merge_sphere.c  slerp, nuslerp and multislerp's whole-tensor passes  ops/lane_sphere.py
 *   merge_karcher.c  karcher's fused iteration passes, fp32    ops/lane_karcher.py
 *   merge_karcher16.c  karcher's passes in bf16 compute, torch's bf16 dot  ops/lane_karcher16.py
 *   sleef_f32.c    fp32 acos/sin/cos with torch's (SLEEF's) bits   ops/lane_math.py
 *   rank_cuts.c    magnitude rank cuts, row ranks, della's probabilities  ops/sparsify.py
 *   cut_select.c   ties/breadcrumbs cuts in one pass; the fused bf16 cut + combine  ops/cuts.py
 *   delta_stats.c  fp64 statistics of B - A              diff.py (block_stats)
 *   byte_planes.c  byte-plane joins, splits and sample histograms  store/codecs/byteplane.py
 *   sparse_planes.c  planes of almost only zero bytes ("s")   store/codecs/sparse.py
 *   huffman_literals.c  literal-only zstd frames decoded (zstd declines to)  store/codecs/huffman.py
 *   huffman_encode.c  literal-only zstd frames made, one table per plane   store/codecs/huffman.py
 *   rng.c          Philox keep masks; dare/della's fp32 mask + L1 rescale   ops/context.py
 *                  (keep_mask), ops/sparsify.py (keep_rescale32's twin: rescaled_masked_)
 *   formats.c (+ formats.h)  any-format arrays: widen/narrow, compute-format tiles, the
 *                  argument handling the lane kernels share (no kernels of its own)
 *   module.c       the module's method table and start-up
 *
 * Every kernel has a pure Python/torch twin, and the tests check that both give the same
 * bits. The arithmetic is written out so that it is exactly torch's on CPU:
 *   - bf16 results are fp32 results rounded to nearest even (rne16 below);
 *   - fp32 operations are plain IEEE operations, never contracted into FMAs
 *     (built with -ffp-contract=off) and never reordered;
 *   - sums run in a fixed order, so results do not depend on threads.
 * The one documented difference: the payload of a NaN result (torch's vectorized conversion
 * writes 0xFFFF, its scalar one 0x7FC0; the kernels keep the NaN's own upper bits).
 *
 * Hot functions are compiled twice (for x86-64-v3, i.e. AVX2 + FMA, and for baseline x86-64),
 * the elementwise ones (HOT4) three times (x86-64-v4, AVX-512, too), and picked at load time.
 */
#ifndef MERGESTORE_NATIVE_H
#define MERGESTORE_NATIVE_H
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* MERGESTORE_NO_CLONES: no clones, the code is compiled once for the -march given (the
 * tests build each target's code this way and check it against the twins, see
 * tests/test_native_clones.py; a build for one known CPU may use it too). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(MERGESTORE_NO_CLONES)
#define HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define HOT
#endif
/* HOT with an AVX-512 clone too (x86-64-v4): 16 lanes for elementwise float work (dare/della's
 * passes in rng.c and merge_arith32.c; the GTA sum and consensus, linear, widen/narrow and the
 * finiteness check: 1.07-1.15x on this machine's AVX-512 against the v3 clone, 1M-element
 * blocks). The same IEEE operations per element in the same order (no contraction, no
 * reassociation: sums keep their explicit lanes), so the same bits. Byte shuffles (join2,
 * split2) stay HOT: memory-bound, no faster with it. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(MERGESTORE_NO_CLONES)
#define HOT4 __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HOT4
#endif

/* Helpers inlined into each clone, so they are compiled for its instruction set too. */
#if defined(__GNUC__)
#define ALWAYS_INLINE __attribute__((always_inline))
#else
#define ALWAYS_INLINE
#endif

#define TILE 512 /* elements per tile: a few KiB of fp32 accumulators stay in L1 */

/* The register loops over 1 to 4 inputs (merge_arith16.h, merge_few32.h), in a function
 * with `xs`, `k` and `w`: FEW_INPUTS_OF(T) names the streams x0..x3 of element type T and
 * their weights w0..w3 (those past k alias the first and are never read); FEW_INPUTS is its
 * 16-bit case; FEW_SWITCH expands LOOP once for the input count, with the terms T(0) ..
 * T(k - 1). */
#define FEW_INPUTS_OF(T)                                                                       \
    const T *x0 = xs[0], *x1 = xs[k > 1 ? 1 : 0], *x2 = xs[k > 2 ? 2 : 0],                     \
            *x3 = xs[k > 3 ? 3 : 0];                                                           \
    const float w0 = w[0], w1 = w[k > 1 ? 1 : 0], w2 = w[k > 2 ? 2 : 0], w3 = w[k > 3 ? 3 : 0]
#define FEW_INPUTS FEW_INPUTS_OF(uint16_t)
#define FEW_SWITCH(LOOP, T)                                                                    \
    switch (k) {                                                                               \
    case 1: LOOP(T(0)); break;                                                                 \
    case 2: LOOP(T(0); T(1)); break;                                                           \
    case 3: LOOP(T(0); T(1); T(2)); break;                                                     \
    default: LOOP(T(0); T(1); T(2); T(3)); break;                                              \
    }

/* ------------------------------------------------------------------ rotations */

/* Words rotated left or right by rot bits, 0 <= rot < their width (0 leaves them): the byte
 * planes' rotation (byte_planes.c, byte_planes32.c, sparse_planes.c). */
static inline uint16_t rotl16(uint16_t w, int rot) {
    return rot ? (uint16_t)((w << rot) | (w >> (16 - rot))) : w;
}
static inline uint16_t rotr16(uint16_t w, int rot) {
    return rot ? (uint16_t)((w >> rot) | (w << (16 - rot))) : w;
}
static inline uint32_t rotl32(uint32_t w, int rot) {
    return rot ? (w << rot) | (w >> (32 - rot)) : w;
}
static inline uint32_t rotr32(uint32_t w, int rot) {
    return rot ? (w >> rot) | (w << (32 - rot)) : w;
}

/* ------------------------------------------------------------------ conversions */

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* fp32 -> bf16, round to nearest even. No NaN test: every NaN these kernels meet has zero low
 * 16 bits (widened from bf16, or made by x86 arithmetic, which writes the default NaN
 * 0xFFC00000 or propagates an operand's payload), so rounding adds no carry and keeps it a
 * NaN. Dropping the select made the GTA kernels ~30% faster. */
static inline uint16_t rne16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* f rounded to bf16 (nearest even), as a float: rne16 then bf16_to_f32, in one. */
static inline float r16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    memcpy(&f, &u, 4);
    return f;
}

/* IEEE half precision (fp16) in portable C: bit arithmetic with selects rather than branches,
 * so the generic kernels vectorize (still ~8x slower than bf16's shifts; x86 CPUs with F16C
 * get the vector kernels further down). Both directions are exact IEEE conversions, round to
 * nearest even as torch converts; a NaN stays a NaN (its payload may differ from torch's
 * canonical 0x7E00). */
#define HAVE_F16 1 /* always (plain C); exported so Python can tell this build from an older one */

/* rne16 for any fp32 value: a NaN (whatever its payload, which could carry into the exponent)
 * becomes bf16's quiet NaN 0x7FC0 with its sign, as torch converts. */
static inline uint16_t rne16_nan(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (u & 0x7FFFFFFFu) > 0x7F800000u ? (uint16_t)((u >> 16) | 0x7FC0u) : rne16(f);
}

ALWAYS_INLINE static inline float f16_to_f32(uint16_t h) {
    uint32_t em = h & 0x7FFFu;
    uint32_t normal = (em << 13) + (112u << 23); /* rebias the exponent: 127 - 15 */
    uint32_t infnan = (em << 13) | 0x7F800000u;
    float sub = (float)em * 5.9604644775390625e-8f; /* subnormal or zero: em * 2^-24, exact */
    uint32_t subu;
    memcpy(&subu, &sub, 4);
    uint32_t u = em >= 0x7C00u ? infnan : (em < 0x400u ? subu : normal);
    u |= (uint32_t)(h & 0x8000u) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

ALWAYS_INLINE static inline uint16_t rne_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = u & 0x80000000u;
    u ^= sign;
    /* inf or NaN, or too large for fp16 (>= 2^16) */
    uint32_t big = u > 0x7F800000u ? 0x7E00u : 0x7C00u;
    /* subnormal or zero result (< 2^-14): add 0.5 to align the 10 result bits at the bottom,
     * the float addition rounding them to nearest even, then drop the magic's bits */
    float a;
    memcpy(&a, &u, 4);
    a += 0.5f;
    uint32_t au;
    memcpy(&au, &a, 4);
    uint32_t small = au - 0x3F000000u;
    /* normal: rebias, round to nearest even on the 13 dropped bits (a carry may make it inf) */
    uint32_t normal = (u + 0xC8000FFFu + ((u >> 13) & 1u)) >> 13;
    uint32_t r = u >= 0x47800000u ? big : (u < 0x38800000u ? small : normal);
    return (uint16_t)(r | (sign >> 16));
}

extern float f16_table[65536]; /* fp16 bits -> float (module.c fills it) */

/* ------------------------------------------------------------------ buffers */

typedef struct {
    Py_buffer view;
    int held;
} Buf;

static inline void release(Buf *b) {
    if (b->held) PyBuffer_Release(&b->view);
    b->held = 0;
}

static inline int get_buf(PyObject *obj, Buf *b, int writable, Py_ssize_t itemsize, const char *what) {
    b->held = 0;
    if (PyObject_GetBuffer(obj, &b->view, (writable ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS) <
        0)
        return -1;
    b->held = 1;
    if (b->view.len % itemsize != 0) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes is not a whole number of %zd-byte items",
                     what, b->view.len, itemsize);
        release(b);
        return -1;
    }
    return 0;
}

/* The (dst, src) arguments of a byte kernel: dst writable, both C-contiguous bytes. -1 with
 * the error set and nothing held if either is not; `src_what` names src in the error. */
static inline int get_dst_src(PyObject *args, Buf *dst, Buf *src, const char *src_what) {
    PyObject *dst_o, *src_o;
    if (!PyArg_ParseTuple(args, "OO", &dst_o, &src_o)) return -1;
    if (get_buf(dst_o, dst, 1, 1, "dst") < 0) return -1;
    if (get_buf(src_o, src, 0, 1, src_what) < 0) {
        release(dst);
        return -1;
    }
    return 0;
}

/* A Python sequence of buffers of the same length, as an array of pointers. */
typedef struct {
    Py_ssize_t n;
    Buf *bufs;
    const uint16_t **ptrs;
} BufList;

static inline void release_list(BufList *l) {
    if (l->bufs) {
        for (Py_ssize_t i = 0; i < l->n; i++) release(&l->bufs[i]);
        PyMem_Free(l->bufs);
    }
    PyMem_Free((void *)l->ptrs);
    l->bufs = NULL;
    l->ptrs = NULL;
}

static inline int get_list(PyObject *seq, BufList *l, Py_ssize_t len, const char *what) {
    l->bufs = NULL;
    l->ptrs = NULL;
    PyObject *fast = PySequence_Fast(seq, "expected a sequence of buffers");
    if (!fast) return -1;
    l->n = PySequence_Fast_GET_SIZE(fast);
    l->bufs = PyMem_Calloc(l->n ? l->n : 1, sizeof(Buf));
    l->ptrs = PyMem_Calloc(l->n ? l->n : 1, sizeof(uint16_t *));
    if (!l->bufs || !l->ptrs) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < l->n; i++) {
        if (get_buf(PySequence_Fast_GET_ITEM(fast, i), &l->bufs[i], 0, 2, what) < 0) {
            Py_DECREF(fast);
            return -1;
        }
        if (l->bufs[i].view.len != len) {
            Py_DECREF(fast);
            PyErr_Format(PyExc_ValueError, "%s: buffers of different lengths", what);
            return -1;
        }
        l->ptrs[i] = l->bufs[i].view.buf;
    }
    Py_DECREF(fast);
    return 0;
}

static inline int get_floats(PyObject *seq, float *out, Py_ssize_t n) {
    PyObject *fast = PySequence_Fast(seq, "expected a sequence of floats");
    if (!fast) return -1;
    if (PySequence_Fast_GET_SIZE(fast) != n) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "one weight per input");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        double d = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(fast, i));
        if (d == -1.0 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
        out[i] = (float)d;
    }
    Py_DECREF(fast);
    return 0;
}


/* ------------------------------------------------------------------ F16C */

/* x86 CPUs with AVX2 + F16C convert eight fp16 values at once; picked at run time (have_f16c). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define F16C_TARGET __attribute__((target("avx2,fma,f16c")))
#define RNE_PH (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

extern int have_f16c; /* module.c: the CPU has AVX2, FMA and F16C */

F16C_TARGET static inline __m256 load8_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

F16C_TARGET static inline __m256 round8_f16(__m256 v) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, RNE_PH));
}

F16C_TARGET static inline float round1_f16(float v) {
    return _cvtsh_ss(_cvtss_sh(v, RNE_PH));
}

/* dst[j] = src[j] widened from fp16, m elements. */
F16C_TARGET static inline void widen_f16c(float *dst, const uint16_t *src, Py_ssize_t m) {
    Py_ssize_t v = m & ~(Py_ssize_t)7;
    for (Py_ssize_t j = 0; j < v; j += 8) _mm256_storeu_ps(dst + j, load8_f16(src + j));
    for (Py_ssize_t j = v; j < m; j++) dst[j] = _cvtsh_ss(src[j]);
}

/* dst[j] = src[j] rounded to fp16 (nearest even), m elements. */
F16C_TARGET static inline void narrow_f16c(uint16_t *dst, const float *src, Py_ssize_t m) {
    Py_ssize_t v = m & ~(Py_ssize_t)7;
    for (Py_ssize_t j = 0; j < v; j += 8)
        _mm_storeu_si128((__m128i *)(dst + j), _mm256_cvtps_ph(_mm256_loadu_ps(src + j), RNE_PH));
    for (Py_ssize_t j = v; j < m; j++) dst[j] = _cvtss_sh(src[j], RNE_PH);
}

#define HAVE_F16C_KERNELS 1
#else
#define HAVE_F16C_KERNELS 0
#endif

/* ------------------------------------------------------------------ any-format arrays */

/* Float format codes of the lanes (ops/lanes.py FMT); formats.h has their helpers. */
enum { FMT_BF16 = 0, FMT_F16 = 1, FMT_F32 = 2 };

/* ------------------------------------------------------------------ entry points */

/* merge_arith.c */
PyObject *py_gta_sum_bf16(PyObject *self, PyObject *args);
PyObject *py_gta_consensus_bf16(PyObject *self, PyObject *args);
PyObject *py_linear_bf16(PyObject *self, PyObject *args);
/* merge_arith32.c */
PyObject *py_gta_sum32(PyObject *self, PyObject *args);
PyObject *py_gta_consensus32(PyObject *self, PyObject *args);
PyObject *py_gta_cut32(PyObject *self, PyObject *args);
PyObject *py_linear32(PyObject *self, PyObject *args);
PyObject *py_convert(PyObject *self, PyObject *args);
PyObject *py_gta_keep32(PyObject *self, PyObject *args);
/* merge_elementwise.c */
PyObject *py_nearswap(PyObject *self, PyObject *args);
PyObject *py_ram(PyObject *self, PyObject *args);
/* merge_reduce.c */
PyObject *py_torch_sum32(PyObject *self, PyObject *args);
PyObject *py_model_stock_stats32(PyObject *self, PyObject *args);
PyObject *py_model_stock_mix32(PyObject *self, PyObject *args);
/* merge_sce.c */
PyObject *py_sce_var(PyObject *self, PyObject *args);
PyObject *py_sce_sumsq(PyObject *self, PyObject *args);
PyObject *py_sce_combine(PyObject *self, PyObject *args);
PyObject *py_u32_hist_lo(PyObject *self, PyObject *args);
PyObject *py_u32_nth_equal(PyObject *self, PyObject *args);
/* merge_sphere.c */
PyObject *py_sphere_norms(PyObject *self, PyObject *args);
PyObject *py_nuslerp_dot(PyObject *self, PyObject *args);
PyObject *py_nuslerp_mix(PyObject *self, PyObject *args);
PyObject *py_multislerp_pass(PyObject *self, PyObject *args);
PyObject *py_slerp_chunks(PyObject *self, PyObject *args);
PyObject *py_slerp_mix(PyObject *self, PyObject *args);
/* merge_karcher.c */
PyObject *py_karcher_scale(PyObject *self, PyObject *args);
PyObject *py_karcher_first_mean(PyObject *self, PyObject *args);
PyObject *py_karcher_tangent(PyObject *self, PyObject *args);
PyObject *py_karcher_update(PyObject *self, PyObject *args);
PyObject *py_karcher_out(PyObject *self, PyObject *args);
PyObject *py_karcher_x_first_mean(PyObject *self, PyObject *args);
PyObject *py_karcher_x_dots(PyObject *self, PyObject *args);
PyObject *py_karcher_x_tangent(PyObject *self, PyObject *args);
/* merge_karcher16.c */
PyObject *py_karcher16_norm(PyObject *self, PyObject *args);
PyObject *py_karcher16_scale(PyObject *self, PyObject *args);
PyObject *py_karcher16_first(PyObject *self, PyObject *args);
PyObject *py_karcher16_dots(PyObject *self, PyObject *args);
PyObject *py_karcher16_dots_onednn(PyObject *self, PyObject *args);
PyObject *py_onednn_dot_kinds(PyObject *self, PyObject *args);
PyObject *py_karcher16_tangent(PyObject *self, PyObject *args);
PyObject *py_karcher16_update(PyObject *self, PyObject *args);
PyObject *py_karcher16_out(PyObject *self, PyObject *args);
PyObject *py_mkl_def_sdot(PyObject *self, PyObject *args);
/* sleef_f32.c */
float sleef_acosf(float d);
int sleef_sinf(float d, float *out); /* 0: |d| >= 125 or NaN, not reproduced */
int sleef_cosf(float d, float *out);
PyObject *py_sleef_f32(PyObject *self, PyObject *args);
PyObject *py_sleef_f32_array(PyObject *self, PyObject *args);
/* rank_cuts.c */
PyObject *py_sub_hist_bf16(PyObject *self, PyObject *args);
PyObject *py_nth_equal16(PyObject *self, PyObject *args);
PyObject *py_apply_cuts16(PyObject *self, PyObject *args);
PyObject *py_della_probs_bf16(PyObject *self, PyObject *args);
PyObject *py_row_ranks_bf16(PyObject *self, PyObject *args);
/* della's bf16 keep-probability of each rank 1 .. cols (for rng.c's della_keep_sums16) */
void della_rank_probs_bf16(Py_ssize_t cols, float base_p, float eps, uint16_t *by_rank);
/* An fp32 delta's one or two magnitude cuts (ops/lanes.py, _cut32): mode 0 keeps nothing,
 * 1 everything, 2 the largest (bits > v, or == v at flat indices before `last`), 3 the
 * smallest (bits < v, or == v before `last`); mode2 < 0: no second cut, else elements in the
 * second cut are dropped too (breadcrumbs' outliers). */
typedef struct {
    int mode1, mode2;
    int64_t v1, v2;
    Py_ssize_t last1, last2;
} Cuts32;
void cut_tile32(uint32_t *d, Py_ssize_t start, Py_ssize_t m, const Cuts32 *c);
void cut_tile16(uint16_t *d, Py_ssize_t start, Py_ssize_t m, const Cuts32 *c);
/* a piece [s, e) of a tile over which a 16-bit cut keeps magnitude bits in [lo1, hi1] and not
 * in [lo2, hi2] */
typedef struct {
    Py_ssize_t s, e;
    int lo1, hi1, lo2, hi2;
} CutSeg16;
int cut_segs16(Py_ssize_t start, Py_ssize_t m, const Cuts32 *c, CutSeg16 seg[3]);
int get_cuts32(PyObject *o, Cuts32 *c);
/* cut_select.c */
PyObject *py_find_cuts(PyObject *self, PyObject *args);
PyObject *py_gta_cut16(PyObject *self, PyObject *args);
PyObject *py_finite(PyObject *self, PyObject *args);
int finite_values(const void *x, int fmt, Py_ssize_t n); /* for merge_arith.c */
/* rng.c */
PyObject *py_philox_keep(PyObject *self, PyObject *args);
PyObject *py_keep_rescale32(PyObject *self, PyObject *args);
PyObject *py_keep_sums32(PyObject *self, PyObject *args);
PyObject *py_della_keep_sums32(PyObject *self, PyObject *args);
PyObject *py_keep_sums16(PyObject *self, PyObject *args);
PyObject *py_della_keep_sums16(PyObject *self, PyObject *args);
PyObject *py_gta_keep16(PyObject *self, PyObject *args);
/* byte_planes.c */
PyObject *py_join2(PyObject *self, PyObject *args);
PyObject *py_split2(PyObject *self, PyObject *args);
PyObject *py_hist8(PyObject *self, PyObject *args);
PyObject *py_plane_plan(PyObject *self, PyObject *args);
PyObject *py_bplane16_into(PyObject *self, PyObject *args);
PyObject *py_estimate_ratio(PyObject *self, PyObject *args);
/* byte_planes.c: a byte-plane payload's header, and the arguments of split2 and split4, for
 * byte_planes32.c too */
int bplane_header(const uint8_t *p, Py_ssize_t size, Py_ssize_t n, int width, uint32_t *len);
int split_args(PyObject *args, int width, const char *name, Buf *rows, Buf *w, Buf *ref,
               int *rot, Py_ssize_t *n, Py_ssize_t *stride);
/* byte_planes32.c */
PyObject *py_join4(PyObject *self, PyObject *args);
PyObject *py_split4(PyObject *self, PyObject *args);
PyObject *py_bplane32_into(PyObject *self, PyObject *args);
/* huffman_literals.c and sparse_planes.c, for byte_planes.c's whole-block decode */
int huf_literals_into(const uint8_t *src, Py_ssize_t size, uint8_t *dst, Py_ssize_t n);
int sparse_decode_into(uint8_t *dst, Py_ssize_t n, const uint8_t *src, Py_ssize_t size);
int sparse_join2_into(uint16_t *out, const uint8_t *dense, Py_ssize_t n, int dense_hi,
                      const uint8_t *src, Py_ssize_t size, int rot, const uint16_t *ref);
/* sparse_planes.c */
PyObject *py_sparse_encode(PyObject *self, PyObject *args);
PyObject *py_sparse_decode(PyObject *self, PyObject *args);
PyObject *py_join2_sparse(PyObject *self, PyObject *args);
PyObject *py_huf_literals(PyObject *self, PyObject *args);
PyObject *py_huf_encode(PyObject *self, PyObject *args);
PyObject *py_huf_bound(PyObject *self, PyObject *arg);
/* delta_stats.c */
PyObject *py_delta_stats(PyObject *self, PyObject *args);

#endif
