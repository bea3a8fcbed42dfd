/* karcher (ops/karcher.py) in bf16 compute (mergekit's `dtype: bfloat16`): the passes of its
 * iterations on bf16 arrays (uint16 bits), each of torch's bf16 operations computed in fp32 and
 * rounded to bf16 (r16), in torch's order. Python side: mergestore/ops/lane_karcher16.py, which
 * does the scalar steps; tests/ops/test_lane_karcher16.py compares both with torch.
 *
 * The 2-norms are torch's fp32 ones of the widened values (vector_norm(x.to(float32)):
 * torch_norm.h). The dot product is torch.dot of two bf16 vectors: ATen's bf16 dot with fp32
 * arithmetic (not MKL's), in its AVX2 form: eight 8-lane fp32 accumulators, each 64-element
 * block's element j + 8r + l multiplied and added into accumulator r, lane l (torch fuses the
 * multiply-add; the product of two bf16 values is exact in fp32, so it is the same); the
 * accumulators added as a tree (r + 4, then + 2, then + 1) and the lanes by torch's
 * vec_reduce_all (l + 4, then + 2, then + 1); then the 16-element vectors after the last whole
 * block into one more accumulator (low half then high half), reduced the same way and added;
 * then each remaining element's product added in order (ATen's AVX-512 build sums a bf16 dot
 * in the same order). Above 4096 elements, on AVX-512 CPUs, torch.dot is oneDNN's: its AMX
 * and AVX-512 BF16 forms are below (k16_dots_amx, k16_dots_dp; ops/onednn_dot.py picks);
 * lane_karcher16.reason() says where the lane runs. */
#include "formats.h"

#include "torch_norm.h"

#define K16_MAX 64 /* inputs per call */

/* The fp32 2-norm of a bf16 array, in torch's order. */
HOT static float k16_norm(const uint16_t *x, Py_ssize_t n) {
    Norm q;
    norm_init(&q, n);
    float v[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        for (Py_ssize_t j = 0; j < m; j++) v[j] = bf16_to_f32(x[s + j]);
        norm_feed(&q, v, s, m);
    }
    return norm_end(&q);
}

/* Rounding in these kernels: r16 where torch rounds to bf16, without rne16_nan's NaN test.
 * Every NaN met here comes from x86 arithmetic on values widened from bf16 or on fp32 scalars
 * made from Python floats, so its low 16 bits are zero (the default NaN, or an operand's
 * payload, quieted): r16 keeps it as it is, and its high half is the bf16 that rne16_nan
 * gives (quiet bit and sign included). */

/* The bf16 bits of f, a value already rounded to bf16 (r16's output): its high half. */
static inline uint16_t hi16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16);
}

/* f rounded to bf16, as bits: rne16_nan's result for every value met here (see above), in a
 * form that vectorizes (rne16_nan's select kept these loops scalar). */
static inline uint16_t round16(float f) { return hi16(r16(f)); }

/* out = r16(x / d) (out may be x). */
HOT static void k16_scale(uint16_t *out, const uint16_t *x, Py_ssize_t n, float d) {
    for (Py_ssize_t j = 0; j < n; j++) out[j] = round16(bf16_to_f32(x[j]) / d);
}

/* out = x as bf16 bits, for x already rounded to bf16 (hi16 over a tile: this loop
 * vectorizes). */
static inline void store16(uint16_t *restrict out, const float *restrict x, Py_ssize_t m) {
    for (Py_ssize_t j = 0; j < m; j++) out[j] = hi16(x[j]);
}

/* torch's vec_reduce_all over one AVX2 vector of eight floats. */
static inline float reduce8(const float *v) {
    float a0 = v[0] + v[4], a1 = v[1] + v[5], a2 = v[2] + v[6], a3 = v[3] + v[7];
    return (a0 + a2) + (a1 + a3);
}

/* torch.dot of two bf16 vectors, fed in order (tile by tile). */
typedef struct {
    Py_ssize_t blocks, vecs; /* ends of the 64-element blocks and of the 16-element vectors */
    float acc[8][8], tail[8], rest[16];
    int nrest;
} Dot16;

static void dot16_init(Dot16 *d, Py_ssize_t n) {
    memset(d, 0, sizeof *d);
    d->blocks = n & ~(Py_ssize_t)63;
    d->vecs = n & ~(Py_ssize_t)15;
}

/* The generic form of dot16_blocks_avx2 below. */
HOT static void dot16_blocks_c(float acc[8][8], const uint16_t *x, const uint16_t *y,
                               Py_ssize_t blocks) {
    for (Py_ssize_t b = 0; b < blocks; b++, x += 64, y += 64)
        for (int r = 0; r < 8; r++)
            for (int l = 0; l < 8; l++)
                acc[r][l] = acc[r][l] + bf16_to_f32(x[8 * r + l]) * bf16_to_f32(y[8 * r + l]);
}

#ifdef F16C_TARGET
/* Eight bf16 values widened to fp32. */
F16C_TARGET static inline __m256 widen8(const uint16_t *p) {
    __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}

/* The whole 64-element blocks, with the eight accumulators in registers (compiled from the
 * loop above, they stay in memory). The product of two bf16 values is exact in fp32, so the
 * fused multiply-add rounds once, as the loop's add does. */
F16C_TARGET static void dot16_blocks_avx2(float acc[8][8], const uint16_t *x, const uint16_t *y,
                                          Py_ssize_t blocks) {
    __m256 a0 = _mm256_loadu_ps(acc[0]), a1 = _mm256_loadu_ps(acc[1]);
    __m256 a2 = _mm256_loadu_ps(acc[2]), a3 = _mm256_loadu_ps(acc[3]);
    __m256 a4 = _mm256_loadu_ps(acc[4]), a5 = _mm256_loadu_ps(acc[5]);
    __m256 a6 = _mm256_loadu_ps(acc[6]), a7 = _mm256_loadu_ps(acc[7]);
    for (Py_ssize_t b = 0; b < blocks; b++, x += 64, y += 64) {
        a0 = _mm256_fmadd_ps(widen8(x), widen8(y), a0);
        a1 = _mm256_fmadd_ps(widen8(x + 8), widen8(y + 8), a1);
        a2 = _mm256_fmadd_ps(widen8(x + 16), widen8(y + 16), a2);
        a3 = _mm256_fmadd_ps(widen8(x + 24), widen8(y + 24), a3);
        a4 = _mm256_fmadd_ps(widen8(x + 32), widen8(y + 32), a4);
        a5 = _mm256_fmadd_ps(widen8(x + 40), widen8(y + 40), a5);
        a6 = _mm256_fmadd_ps(widen8(x + 48), widen8(y + 48), a6);
        a7 = _mm256_fmadd_ps(widen8(x + 56), widen8(y + 56), a7);
    }
    _mm256_storeu_ps(acc[0], a0), _mm256_storeu_ps(acc[1], a1);
    _mm256_storeu_ps(acc[2], a2), _mm256_storeu_ps(acc[3], a3);
    _mm256_storeu_ps(acc[4], a4), _mm256_storeu_ps(acc[5], a5);
    _mm256_storeu_ps(acc[6], a6), _mm256_storeu_ps(acc[7], a7);
}
#endif

/* Elements s .. s + m of both vectors (s a multiple of 64: a tile's start). */
static void dot16_feed(Dot16 *d, const uint16_t *x, const uint16_t *y, Py_ssize_t s,
                       Py_ssize_t m) {
    Py_ssize_t j = s, end = s + m;
    Py_ssize_t blocks = ((end < d->blocks ? end : d->blocks) - j) / 64;
    if (blocks > 0) {
#ifdef F16C_TARGET
        if (have_f16c)
            dot16_blocks_avx2(d->acc, x, y, blocks);
        else
#endif
            dot16_blocks_c(d->acc, x, y, blocks);
        j += 64 * blocks;
    }
    for (; j + 16 <= end && j < d->vecs; j += 16)
        for (int h = 0; h < 16; h += 8)
            for (int l = 0; l < 8; l++)
                d->tail[l] = d->tail[l] +
                             bf16_to_f32(x[j - s + h + l]) * bf16_to_f32(y[j - s + h + l]);
    for (; j < end; j++) d->rest[d->nrest++] = bf16_to_f32(x[j - s]) * bf16_to_f32(y[j - s]);
}

static float dot16_end(Dot16 *d) {
    for (int off = 4; off >= 1; off /= 2)
        for (int r = 0; r < off; r++)
            for (int l = 0; l < 8; l++) d->acc[r][l] = d->acc[r][l] + d->acc[r + off][l];
    float sum = reduce8(d->acc[0]);
    sum = sum + reduce8(d->tail);
    for (int i = 0; i < d->nrest; i++) sum = sum + d->rest[i];
    return sum;
}

/* mean = r16(mean / d) first when divide (the rescale of the previous step), then dots[i] =
 * torch.dot(mean, u_i) for each input, in one pass over the mean. */
HOT static void k16_dots(uint16_t *mean, int divide, float d, const uint16_t **u, Py_ssize_t k,
                         Py_ssize_t n, float *dots) {
    Dot16 st[K16_MAX];
    for (Py_ssize_t i = 0; i < k; i++) dot16_init(&st[i], n);
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        if (divide)
            for (Py_ssize_t j = 0; j < m; j++)
                mean[s + j] = round16(bf16_to_f32(mean[s + j]) / d);
        for (Py_ssize_t i = 0; i < k; i++) dot16_feed(&st[i], mean + s, u[i] + s, s, m);
    }
    for (Py_ssize_t i = 0; i < k; i++) dots[i] = dot16_end(&st[i]);
}

/* ------------------------------------------------------------------ oneDNN's dot on AMX */

/* On CPUs with AVX-512 (bw, vl, dq), torch.dot of more than 4096 bf16 elements is not ATen's
 * kernel above but a oneDNN matmul, 1 x n by n x 1 (ATen's mkldnn_matmul); on CPUs with AMX
 * oneDNN runs it as brg_matmul on AMX tiles. Its result: n cut into chunks (the chunk size
 * comes from the Python side: onednn_dot.chunk), each chunk's sum taken from a
 * zeroed fp32 tile by tdpbf16ps over 32 elements at a time (the tail of the last chunk in one
 * shorter step), the chunk sums added in order in fp32, then rounded to bf16. The instruction's
 * own arithmetic (it rounds differently from a sequential fp32 sum, flushes subnormals) is
 * what the bits need, so this runs the instruction itself: one tile row per input, the mean
 * read as a column of pairs (a 4-byte-wide tile of stride 4, the chunk's bytes as they lie). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#include <sys/syscall.h>
#include <unistd.h>
#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16")))
/* GCC's tile builtins do not tell it that they read memory: a barrier keeps stores before
 * them (the tile configuration, a tail) from being dropped or moved past them. */
#define TILE_BARRIER __asm__ volatile("" ::: "memory")
#define AMX_ROWS 16

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} TileConfig;

/* 1 if the CPU has AMX-BF16 and Linux lets this process use its tile data (asked once). */
static int amx_ready(void) {
    static int ready = -1;
    if (ready < 0) {
        unsigned a, b, c, d;
        __asm__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
        int has = (d >> 22 & 1) && (d >> 24 & 1); /* AMX-BF16, AMX-TILE */
        /* ARCH_REQ_XCOMP_PERM (0x1023) for XFEATURE_XTILEDATA (18) */
        ready = has && syscall(SYS_arch_prctl, 0x1023, 18) == 0;
    }
    return ready;
}

/* Tiles: 0 the sums (rows x 1 fp32), 1 the inputs (rows x k bf16), 2 the mean (k / 2 x 1 pair). */
AMX_TARGET static void amx_configure(int rows, int k) {
    TileConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    cfg.rows[0] = (uint8_t)rows, cfg.colsb[0] = 4;
    cfg.rows[1] = (uint8_t)rows, cfg.colsb[1] = (uint16_t)(2 * k);
    cfg.rows[2] = (uint8_t)(k / 2), cfg.colsb[2] = 4;
    TILE_BARRIER;
    _tile_loadconfig(&cfg);
    TILE_BARRIER;
}

/* sums[r] = oneDNN's dot of mean and row r (rows at u, stride elements apart) over j .. e, e - j
 * a multiple of 8, from a zeroed tile (config: rows x 32 on entry and exit). */
AMX_TARGET static void amx_chunk(const uint16_t *mean, const uint16_t *u, Py_ssize_t stride,
                                 int rows, Py_ssize_t j, Py_ssize_t e, float *sums) {
    float c[AMX_ROWS];
    _tile_zero(0);
    for (; j + 32 <= e; j += 32) {
        TILE_BARRIER;
        _tile_loadd(1, u + j, 2 * stride);
        _tile_loadd(2, mean + j, 4);
        _tile_dpbf16ps(0, 1, 2);
    }
    _tile_stored(0, c, 4);
    TILE_BARRIER;
    if (j < e) { /* the tail: one step of e - j elements */
        amx_configure(rows, (int)(e - j));
        _tile_loadd(0, c, 4);
        _tile_loadd(1, u + j, 2 * stride);
        _tile_loadd(2, mean + j, 4);
        _tile_dpbf16ps(0, 1, 2);
        _tile_stored(0, c, 4);
        TILE_BARRIER;
        amx_configure(rows, 32);
    }
    memcpy(sums, c, sizeof(float) * (size_t)rows);
}

/* dots[r] = oneDNN's torch.dot(mean, row r) for rows rows of u, stride elements apart. */
AMX_TARGET static void amx_dots(const uint16_t *mean, const uint16_t *u, Py_ssize_t stride,
                                int rows, Py_ssize_t n, Py_ssize_t chunk, float *dots) {
    float sums[AMX_ROWS];
    amx_configure(rows, 32);
    for (Py_ssize_t s = 0; s < n; s += chunk) {
        amx_chunk(mean, u, stride, rows, s, s + chunk < n ? s + chunk : n, sums);
        for (int r = 0; r < rows; r++) dots[r] = s ? dots[r] + sums[r] : sums[r];
    }
    _tile_release();
}

/* dots[i] = oneDNN's torch.dot(mean, u_i): the inputs in groups of rows evenly spaced in
 * memory (up to 16 a tile), one pass over the mean per group. */
static void k16_dots_amx(const uint16_t *mean, const uint16_t **u, Py_ssize_t k, Py_ssize_t n,
                         Py_ssize_t chunk, float *dots) {
    for (Py_ssize_t i = 0; i < k;) {
        Py_ssize_t rows = 1, stride = k > i + 1 ? u[i + 1] - u[i] : n;
        while (i + rows < k && rows < AMX_ROWS && u[i + rows] - u[i + rows - 1] == stride &&
               stride >= n)
            rows++;
        if (rows == 1) stride = n;
        amx_dots(mean, u[i], stride, (int)rows, n, chunk, dots + i);
        i += rows;
    }
}

/* Without AMX, on CPUs with AVX-512 BF16 (AMD Zen 4, Intel Cooper Lake), oneDNN runs the same
 * matmul as brg_matmul:avx512_core_bf16: chunks of 512 elements (the chunk size from the
 * Python side, onednn_dot.chunk), each summed from zero by vdpbf16ps one pair of
 * elements after another, the chunk sums added in order in fp32. One chunk's sum is a chain
 * of dependent instructions, so this runs 16 chunks at once, one per lane: 16 pairs of each
 * of 16 chunks loaded as 16 rows and transposed, so that each instruction takes the next pair
 * of every chunk. */
#define DP_TARGET __attribute__((target("avx512f,avx512bf16")))

static int dp_ready(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
}

/* r[l] = row l of a 16 x 16 matrix of dwords -> r[c] = its column c. */
DP_TARGET static inline void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
        r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
    }
}

/* One chunk's sum (m elements, m even) from zero, a pair at a time, on lane 0. */
DP_TARGET static float dp_chunk(const uint16_t *a, const uint16_t *b, Py_ssize_t m) {
    __m512 acc = _mm512_setzero_ps();
    for (Py_ssize_t j = 0; j < m; j += 2) {
        uint32_t pa, pb;
        memcpy(&pa, a + j, 4), memcpy(&pb, b + j, 4);
        acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_set1_epi32((int)pa),
                               (__m512bh)_mm512_set1_epi32((int)pb));
    }
    return _mm512_cvtss_f32(acc);
}

/* dots[i] = oneDNN's torch.dot(mean, u_i) in chunks of `chunk` elements (a multiple of 32):
 * groups of 16 whole chunks in the lanes (the mean's rows transposed once for every input),
 * then the chunks after the last group one by one. */
DP_TARGET static void k16_dots_dp(const uint16_t *mean, const uint16_t **u, Py_ssize_t k,
                                  Py_ssize_t n, Py_ssize_t chunk, float *dots) {
    Py_ssize_t groups = n / (16 * chunk);
    __m512 acc[K16_MAX];
    float sums[16];
    for (Py_ssize_t g = 0; g < groups; g++) {
        const Py_ssize_t base = g * 16 * chunk;
        for (Py_ssize_t i = 0; i < k; i++) acc[i] = _mm512_setzero_ps();
        for (Py_ssize_t j = 0; j < chunk; j += 32) {
            __m512i m[16], r[16];
            for (int l = 0; l < 16; l++) m[l] = _mm512_loadu_si512(mean + base + l * chunk + j);
            transpose16(m);
            for (Py_ssize_t i = 0; i < k; i++) {
                for (int l = 0; l < 16; l++) r[l] = _mm512_loadu_si512(u[i] + base + l * chunk + j);
                transpose16(r);
                __m512 a = acc[i];
                for (int p = 0; p < 16; p++) a = _mm512_dpbf16_ps(a, (__m512bh)m[p], (__m512bh)r[p]);
                acc[i] = a;
            }
        }
        for (Py_ssize_t i = 0; i < k; i++) {
            _mm512_storeu_ps(sums, acc[i]);
            for (int l = 0; l < 16; l++) dots[i] = (g || l) ? dots[i] + sums[l] : sums[l];
        }
    }
    for (Py_ssize_t s = groups * 16 * chunk; s < n; s += chunk) {
        Py_ssize_t m = n - s < chunk ? n - s : chunk;
        for (Py_ssize_t i = 0; i < k; i++) {
            float c = dp_chunk(mean + s, u[i] + s, m);
            dots[i] = s ? dots[i] + c : c;
        }
    }
}
#else
static int amx_ready(void) { return 0; }
static int dp_ready(void) { return 0; }
static void k16_dots_amx(const uint16_t *mean, const uint16_t **u, Py_ssize_t k, Py_ssize_t n,
                         Py_ssize_t chunk, float *dots) {
    (void)mean, (void)u, (void)k, (void)n, (void)chunk, (void)dots;
}
static void k16_dots_dp(const uint16_t *mean, const uint16_t **u, Py_ssize_t k, Py_ssize_t n,
                        Py_ssize_t chunk, float *dots) {
    (void)mean, (void)u, (void)k, (void)n, (void)chunk, (void)dots;
}
#endif

/* units_i = r16(x_i / norm_i) and mean = 0 + r16(u_0 * a_0) + r16(u_1 * a_1) + ..., each sum
 * rounded, in one pass; returns |mean| if with_norm, else 0 (a caller that splits the columns
 * over threads takes the norm of the whole mean after: the same values in the same order). */
HOT static float k16_first(uint16_t **units, const uint16_t **x, const float *norms,
                           const float *a, Py_ssize_t k, uint16_t *mean, Py_ssize_t n,
                           int with_norm) {
    Norm q;
    norm_init(&q, n);
    float acc[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        for (Py_ssize_t j = 0; j < m; j++) acc[j] = 0.0f;
        for (Py_ssize_t i = 0; i < k; i++) {
            const uint16_t *xi = x[i] + s;
            uint16_t *ui = units[i] + s;
            const float ni = norms[i], ai = a[i];
            for (Py_ssize_t j = 0; j < m; j++) {
                float uf = r16(bf16_to_f32(xi[j]) / ni);
                ui[j] = hi16(uf);
                acc[j] = r16(acc[j] + r16(uf * ai));
            }
        }
        store16(mean + s, acc, m);
        if (with_norm) norm_feed(&q, acc, s, m);
    }
    return with_norm ? norm_end(&q) : 0.0f;
}

/* tangent = 0 + sum_i r16(f_i * r16(u_i - r16(c_i * mean))), each sum rounded, in input
 * order; returns |tangent| (fp32) if with_norm, else 0 (as k16_first). */
HOT static float k16_tangent(uint16_t *tangent, const uint16_t *mean, const uint16_t **u,
                             const float *f, const float *c, Py_ssize_t k, Py_ssize_t n,
                             int with_norm) {
    Norm q;
    norm_init(&q, n);
    float t[TILE], mv[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        for (Py_ssize_t j = 0; j < m; j++) {
            t[j] = 0.0f;
            mv[j] = bf16_to_f32(mean[s + j]);
        }
        for (Py_ssize_t i = 0; i < k; i++) {
            const uint16_t *ui = u[i] + s;
            const float fi = f[i], ci = c[i];
            for (Py_ssize_t j = 0; j < m; j++) {
                float d = r16(bf16_to_f32(ui[j]) - r16(ci * mv[j]));
                t[j] = r16(t[j] + r16(fi * d));
            }
        }
        store16(tangent + s, t, m);
        if (with_norm) norm_feed(&q, t, s, m);
    }
    return with_norm ? norm_end(&q) : 0.0f;
}

/* mean = r16(r16(cs * mean) + r16(sn * r16(tangent / step))), in place; returns |mean| if
 * with_norm, else 0 (as k16_first). cs and sn are bf16 values (the caller rounds them: torch
 * casts them to the tensor's dtype). */
HOT static float k16_update(uint16_t *mean, const uint16_t *tangent, float cs, float sn,
                            float step, Py_ssize_t n, int with_norm) {
    Norm q;
    norm_init(&q, n);
    float v[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        for (Py_ssize_t j = 0; j < m; j++) {
            float a = r16(cs * bf16_to_f32(mean[s + j]));
            float b = r16(sn * r16(bf16_to_f32(tangent[s + j]) / step));
            v[j] = r16(a + b);
        }
        store16(mean + s, v, m);
        if (with_norm) norm_feed(&q, v, s, m);
    }
    return with_norm ? norm_end(&q) : 0.0f;
}

/* out = r16(scale * mean), in the output's format (scale a bf16 value, as cs above). */
HOT static void k16_out(void *out, int out_fmt, const uint16_t *mean, float scale, Py_ssize_t n) {
    if (out_fmt == FMT_BF16) { /* the rounded product is the output: one loop */
        uint16_t *o = out;
        for (Py_ssize_t j = 0; j < n; j++) o[j] = round16(scale * bf16_to_f32(mean[j]));
        return;
    }
    float v[TILE];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        for (Py_ssize_t j = 0; j < m; j++)
            v[j] = r16(scale * bf16_to_f32(mean[s + j]));
        narrow(out, out_fmt, s, v, m);
    }
}

/* ------------------------------------------------------------------ argument handling */

static int get_bf16(PyObject *o, Py_ssize_t *n, int writable, Buf *b, const char *what) {
    return get_fmt_buf(o, FMT_BF16, n, writable, b, what);
}

/* A sequence of bf16 arrays of n elements into bufs/ptrs (k set to how many were taken, so the
 * caller releases them on any return). */
static int get_bf16_list(PyObject *seq, Py_ssize_t *n, int writable, Buf *bufs, uint16_t **ptrs,
                         Py_ssize_t *k, const char *what) {
    *k = 0;
    PyObject *fast = PySequence_Fast(seq, "expected a sequence of bf16 arrays");
    if (!fast) return -1;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(fast);
    if (len > K16_MAX) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "at most %d %s", K16_MAX, what);
        return -1;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        if (get_bf16(PySequence_Fast_GET_ITEM(fast, i), n, writable, &bufs[i], what) < 0) {
            Py_DECREF(fast);
            return -1;
        }
        ptrs[i] = bufs[i].view.buf;
        *k = i + 1;
    }
    Py_DECREF(fast);
    return 0;
}

static void release_bufs(Buf *bufs, Py_ssize_t k) {
    for (Py_ssize_t i = 0; i < k; i++) release(&bufs[i]);
}

static PyObject *floats_to_list(const float *v, Py_ssize_t k) {
    PyObject *list = PyList_New(k);
    if (!list) return NULL;
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *f = PyFloat_FromDouble(v[i]);
        if (!f) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, f);
    }
    return list;
}

/* karcher16_first(units_out, inputs, norms, weights, mean_out, with_norm=True) -> |mean| */
PyObject *py_karcher16_first(PyObject *self, PyObject *args) {
    PyObject *u_o, *x_o, *n_o, *a_o, *m_o;
    int with_norm = 1;
    if (!PyArg_ParseTuple(args, "OOOOO|p", &u_o, &x_o, &n_o, &a_o, &m_o, &with_norm)) return NULL;
    Py_ssize_t n = -1, ku = 0, kx = 0;
    Buf m, ub[K16_MAX], xb[K16_MAX];
    uint16_t *u[K16_MAX], *x[K16_MAX];
    float norms[K16_MAX], a[K16_MAX];
    if (get_bf16(m_o, &n, 1, &m, "mean") < 0) return NULL;
    int ok = get_bf16_list(u_o, &n, 1, ub, u, &ku, "units") == 0 &&
             get_bf16_list(x_o, &n, 0, xb, x, &kx, "inputs") == 0;
    if (ok && ku != kx) {
        PyErr_SetString(PyExc_ValueError, "one unit array per input");
        ok = 0;
    }
    ok = ok && get_floats(n_o, norms, kx) == 0 && get_floats(a_o, a, kx) == 0;
    float r = 0.0f;
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        r = k16_first(u, (const uint16_t **)x, norms, a, kx, m.view.buf, n, with_norm);
        Py_END_ALLOW_THREADS
    }
    release_bufs(xb, kx);
    release_bufs(ub, ku);
    release(&m);
    return ok ? PyFloat_FromDouble(r) : NULL;
}

enum { DOTS_ATEN, DOTS_AMX, DOTS_DP }; /* whose torch.dot: ATen's, oneDNN's on AMX or AVX-512 */

/* The dot products of the mean (divided by d first unless d_o is None) with every unit. */
static PyObject *dots_of(PyObject *m_o, PyObject *d_o, PyObject *u_o, int whose,
                         Py_ssize_t chunk) {
    double d = 1.0;
    int divide = d_o != Py_None;
    if (divide && (d = PyFloat_AsDouble(d_o)) == -1.0 && PyErr_Occurred()) return NULL;
    Py_ssize_t n = -1, k = 0;
    Buf m, ub[K16_MAX];
    uint16_t *u[K16_MAX];
    float dots[K16_MAX];
    if (get_bf16(m_o, &n, 1, &m, "mean") < 0) return NULL;
    int ok = get_bf16_list(u_o, &n, 0, ub, u, &k, "units") == 0;
    if (ok && whose != DOTS_ATEN && (n % 8 || chunk <= 0 || chunk % 32)) {
        PyErr_SetString(PyExc_ValueError, "n must be a multiple of 8, chunk of 32");
        ok = 0;
    }
    if (ok) {
        const uint16_t **units = (const uint16_t **)u;
        Py_BEGIN_ALLOW_THREADS
        if (whose == DOTS_ATEN) {
            k16_dots(m.view.buf, divide, (float)d, units, k, n, dots);
        } else {
            if (divide) k16_scale(m.view.buf, m.view.buf, n, (float)d);
            if (whose == DOTS_AMX)
                k16_dots_amx(m.view.buf, units, k, n, chunk, dots);
            else
                k16_dots_dp(m.view.buf, units, k, n, chunk, dots);
        }
        Py_END_ALLOW_THREADS
    }
    release_bufs(ub, k);
    release(&m);
    return ok ? floats_to_list(dots, k) : NULL;
}

/* karcher16_dots(mean, d or None, units) -> [torch.dot(mean, u_i)]: mean /= d first if given */
PyObject *py_karcher16_dots(PyObject *self, PyObject *args) {
    PyObject *m_o, *d_o, *u_o;
    if (!PyArg_ParseTuple(args, "OOO", &m_o, &d_o, &u_o)) return NULL;
    return dots_of(m_o, d_o, u_o, DOTS_ATEN, 0);
}

/* karcher16_dots_onednn(kind, mean, d or None, units, chunk) -> [oneDNN's torch.dot(mean,
 * u_i)], kind "amx" (AMX tiles) or "avx512_bf16" (vdpbf16ps), mean /= d first if given; chunk:
 * onednn_dot.chunk(kind, n) */
PyObject *py_karcher16_dots_onednn(PyObject *self, PyObject *args) {
    PyObject *m_o, *d_o, *u_o;
    const char *kind;
    Py_ssize_t chunk;
    if (!PyArg_ParseTuple(args, "sOOOn", &kind, &m_o, &d_o, &u_o, &chunk)) return NULL;
    int amx = strcmp(kind, "amx") == 0;
    if (!amx && strcmp(kind, "avx512_bf16") != 0) {
        PyErr_SetString(PyExc_ValueError, "kind must be 'amx' or 'avx512_bf16'");
        return NULL;
    }
    if (amx ? !amx_ready() : !dp_ready()) {
        PyErr_SetString(PyExc_RuntimeError, amx ? "no AMX-BF16 tiles on this CPU or for this process"
                                                : "no AVX-512 BF16 on this CPU");
        return NULL;
    }
    return dots_of(m_o, d_o, u_o, amx ? DOTS_AMX : DOTS_DP, chunk);
}

/* onednn_dot_kinds() -> the kinds karcher16_dots_onednn can run here: "amx" where the CPU has
 * AMX-BF16 and Linux lets this process use it, "avx512_bf16" where it has AVX-512 BF16 */
PyObject *py_onednn_dot_kinds(PyObject *self, PyObject *args) {
    (void)self, (void)args;
    const char *names[2] = {amx_ready() ? "amx" : NULL, dp_ready() ? "avx512_bf16" : NULL};
    PyObject *kinds = PyList_New(0);
    for (int i = 0; kinds && i < 2; i++) {
        if (!names[i]) continue;
        PyObject *name = PyUnicode_FromString(names[i]);
        if (!name || PyList_Append(kinds, name) < 0) {
            Py_XDECREF(name);
            Py_DECREF(kinds);
            return NULL;
        }
        Py_DECREF(name);
    }
    return kinds;
}

/* karcher16_norm(x) -> |x| */
PyObject *py_karcher16_norm(PyObject *self, PyObject *args) {
    PyObject *x_o;
    if (!PyArg_ParseTuple(args, "O", &x_o)) return NULL;
    Py_ssize_t n = -1;
    Buf x;
    if (get_bf16(x_o, &n, 0, &x, "x") < 0) return NULL;
    float r;
    Py_BEGIN_ALLOW_THREADS
    r = k16_norm(x.view.buf, n);
    Py_END_ALLOW_THREADS
    release(&x);
    return PyFloat_FromDouble(r);
}

/* karcher16_scale(out, x, d): out = x / d (out may be x) */
PyObject *py_karcher16_scale(PyObject *self, PyObject *args) {
    PyObject *out_o, *x_o;
    double d;
    if (!PyArg_ParseTuple(args, "OOd", &out_o, &x_o, &d)) return NULL;
    Py_ssize_t n = -1;
    Buf out, x;
    if (get_bf16(out_o, &n, 1, &out, "out") < 0) return NULL;
    if (get_bf16(x_o, &n, 0, &x, "x") < 0) {
        release(&out);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    k16_scale(out.view.buf, x.view.buf, n, (float)d);
    Py_END_ALLOW_THREADS
    release(&x);
    release(&out);
    Py_RETURN_NONE;
}

/* karcher16_tangent(tangent, mean, units, factors, cosines, with_norm=True) -> |tangent| */
PyObject *py_karcher16_tangent(PyObject *self, PyObject *args) {
    PyObject *t_o, *m_o, *u_o, *f_o, *c_o;
    int with_norm = 1;
    if (!PyArg_ParseTuple(args, "OOOOO|p", &t_o, &m_o, &u_o, &f_o, &c_o, &with_norm)) return NULL;
    Py_ssize_t n = -1, k = 0;
    Buf t, m, ub[K16_MAX];
    uint16_t *u[K16_MAX];
    float f[K16_MAX], c[K16_MAX];
    if (get_bf16(t_o, &n, 1, &t, "tangent") < 0) return NULL;
    if (get_bf16(m_o, &n, 0, &m, "mean") < 0) {
        release(&t);
        return NULL;
    }
    int ok = get_bf16_list(u_o, &n, 0, ub, u, &k, "units") == 0 &&
             get_floats(f_o, f, k) == 0 && get_floats(c_o, c, k) == 0;
    float r = 0.0f;
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        r = k16_tangent(t.view.buf, m.view.buf, (const uint16_t **)u, f, c, k, n, with_norm);
        Py_END_ALLOW_THREADS
    }
    release_bufs(ub, k);
    release(&m);
    release(&t);
    return ok ? PyFloat_FromDouble(r) : NULL;
}

/* karcher16_update(mean, tangent, cos_step, sin_step, step, with_norm=True) -> |mean| */
PyObject *py_karcher16_update(PyObject *self, PyObject *args) {
    PyObject *m_o, *t_o;
    double cs, sn, step;
    int with_norm = 1;
    if (!PyArg_ParseTuple(args, "OOddd|p", &m_o, &t_o, &cs, &sn, &step, &with_norm)) return NULL;
    Py_ssize_t n = -1;
    Buf m, t;
    if (get_bf16(m_o, &n, 1, &m, "mean") < 0) return NULL;
    if (get_bf16(t_o, &n, 0, &t, "tangent") < 0) {
        release(&m);
        return NULL;
    }
    float r;
    Py_BEGIN_ALLOW_THREADS
    r = k16_update(m.view.buf, t.view.buf, (float)cs, (float)sn, (float)step, n, with_norm);
    Py_END_ALLOW_THREADS
    release(&t);
    release(&m);
    return PyFloat_FromDouble(r);
}

/* karcher16_out(out, out_fmt, mean, scale): scale * mean in the output format */
PyObject *py_karcher16_out(PyObject *self, PyObject *args) {
    PyObject *out_o, *m_o;
    int out_fmt;
    double scale;
    if (!PyArg_ParseTuple(args, "OiOd", &out_o, &out_fmt, &m_o, &scale)) return NULL;
    Py_ssize_t n = -1;
    Buf out, m;
    if (get_fmt_buf(out_o, out_fmt, &n, 1, &out, "out") < 0) return NULL;
    if (get_bf16(m_o, &n, 0, &m, "mean") < 0) {
        release(&out);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    k16_out(out.view.buf, out_fmt, m.view.buf, (float)scale, n);
    Py_END_ALLOW_THREADS
    release(&m);
    release(&out);
    Py_RETURN_NONE;
}
