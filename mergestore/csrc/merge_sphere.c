/* The whole-tensor passes of nuslerp (flattened) and multislerp (ops/nuslerp.py,
 * ops/multislerp.py) in any compute format, on inputs and an output of any float format.
 * Python side: mergestore/ops/lane_sphere.py, which does the scalar steps between the passes
 * with torch itself on one-element tensors (acos, sin, cos: torch's own functions, so its
 * bits); tests/ops/test_lane_sphere.py compares both with torch.
 *
 * Each pass recomputes the vectors per tile from the inputs: v_i = RC(RC(x_i) - RC(b)) with a
 * base, else RC(x_i) (RC: rounded to the compute format, a no-op in fp32), then does torch's
 * elementwise operations in its order, each rounded by RC, and feeds torch's reductions:
 * norms in torch_norm.h's order, sums over the tensor in cascade.h's, sums over the inputs
 * (dim 0) in order from 0 in fp32, rounded once. */
#include "formats.h"

#include "cascade.h"
#include "torch_norm.h"

#define SPHERE_MAX 4 /* torch's dim-0 sum adds in order from 0 up to 4 rows (ops/lanes.py) */

typedef struct {
    const void *base; /* NULL: no base */
    int base_fmt;
    const void **xs;
    const int *fmts;
    Py_ssize_t k, n;
    int cfmt;
} Vectors;

/* The tile of each v_i. */
ALWAYS_INLINE static inline void load_vectors(float v[][TILE], const Vectors *p, Py_ssize_t s,
                                              Py_ssize_t m) {
    float b[TILE];
    if (p->base) load_tile(b, p->base, p->base_fmt, p->cfmt, s, m);
    for (Py_ssize_t i = 0; i < p->k; i++) {
        load_tile(v[i], p->xs[i], p->fmts[i], p->cfmt, s, m);
        if (p->base) {
            for (Py_ssize_t j = 0; j < m; j++) v[i][j] = v[i][j] - b[j];
            round_tile(v[i], m, p->cfmt);
        }
    }
}

/* |v_i| for each input (torch.norm over the flattened tensor, before its rounding to RC). */
HOT static void sphere_norms(float *norms, const Vectors *p) {
    float v[SPHERE_MAX][TILE];
    Norm q[SPHERE_MAX];
    for (Py_ssize_t i = 0; i < p->k; i++) norm_init(&q[i], p->n);
    for (Py_ssize_t s = 0; s < p->n; s += TILE) {
        Py_ssize_t m = p->n - s < TILE ? p->n - s : TILE;
        load_vectors(v, p, s, m);
        for (Py_ssize_t i = 0; i < p->k; i++) norm_feed(&q[i], v[i], s, m);
    }
    for (Py_ssize_t i = 0; i < p->k; i++) norms[i] = norm_end(&q[i]);
}

/* ------------------------------------------------------------------ nuslerp */

/* cos = sum over the tensor of RC(RC(v_0 / n0) * RC(v_1 / n1)) (before its rounding). */
HOT static float nuslerp_dot(const Vectors *p, float n0, float n1) {
    float v[SPHERE_MAX][TILE];
    Cascade c;
    cascade_init(&c, p->n);
    for (Py_ssize_t s = 0; s < p->n; s += TILE) {
        Py_ssize_t m = p->n - s < TILE ? p->n - s : TILE;
        load_vectors(v, p, s, m);
        for (Py_ssize_t j = 0; j < m; j++) {
            v[0][j] = v[0][j] / n0;
            v[1][j] = v[1][j] / n1;
        }
        round_tile(v[0], m, p->cfmt);
        round_tile(v[1], m, p->cfmt);
        for (Py_ssize_t j = 0; j < m; j++) v[0][j] = v[0][j] * v[1][j];
        round_tile(v[0], m, p->cfmt);
        cascade_feed(&c, v[0], s, m);
    }
    return cascade_end(&c);
}

/* r = RC(RC(a * v_0) + RC(c * v_1)), then RC(r / d) if divide, then RC(b + r) with a base. */
HOT static void nuslerp_mix(void *out, int out_fmt, const Vectors *p, float a, float c, float d,
                            int divide) {
    float v[SPHERE_MAX][TILE], b[TILE];
    for (Py_ssize_t s = 0; s < p->n; s += TILE) {
        Py_ssize_t m = p->n - s < TILE ? p->n - s : TILE;
        load_vectors(v, p, s, m);
        for (Py_ssize_t j = 0; j < m; j++) {
            v[0][j] = a * v[0][j];
            v[1][j] = c * v[1][j];
        }
        round_tile(v[0], m, p->cfmt);
        round_tile(v[1], m, p->cfmt);
        for (Py_ssize_t j = 0; j < m; j++) v[0][j] = v[0][j] + v[1][j];
        round_tile(v[0], m, p->cfmt);
        if (divide) {
            for (Py_ssize_t j = 0; j < m; j++) v[0][j] = v[0][j] / d;
            round_tile(v[0], m, p->cfmt);
        }
        if (p->base) {
            load_tile(b, p->base, p->base_fmt, p->cfmt, s, m);
            for (Py_ssize_t j = 0; j < m; j++) v[0][j] = b[j] + v[0][j];
            round_tile(v[0], m, p->cfmt);
        }
        narrow(out, out_fmt, s, v[0], m);
    }
}

/* ------------------------------------------------------------------ multislerp */

typedef struct {
    float ne[SPHERE_MAX]; /* RC(|v_i| + eps) */
    float w[SPHERE_MAX];  /* the weights, in the compute format */
    float mn;             /* |mean| (stage >= 2) */
    float dots[SPHERE_MAX]; /* <u_i, m> (stage >= 3) */
    float c, q, scale;    /* cos(|step|), sin(|step|) / |step|, sum_i RC(|v_i| w_i) (stage 4) */
} Multi;

/* x rounded to the compute format (RC), as round_tile rounds; cfmt a constant. In bf16 without
 * round_tile's NaN test (rne16's comment): the inputs are loaded through round_tile, and every
 * NaN made from them and from the scalars (rounded to the compute dtype in Python) has zero
 * low 16 bits. */
ALWAYS_INLINE static inline float rc(float x, const int cfmt) {
    if (cfmt == FMT_F32) return x;
    if (cfmt == FMT_BF16) return r16(x);
    return f16_to_f32(rne_f16(x));
}

/* Element j of a cached row in the compute format, and the store of a value exact in it. */
ALWAYS_INLINE static inline float cget(const char *row, Py_ssize_t j, const int cfmt) {
    if (cfmt == FMT_F32) return ((const float *)row)[j];
    if (cfmt == FMT_BF16) return bf16_to_f32(((const uint16_t *)row)[j]);
    return f16_to_f32(((const uint16_t *)row)[j]);
}

/* u_i's element s + j: from its cached row `ci` if there is one, else from its tile `ui`. */
ALWAYS_INLINE static inline float uget(const float *ui, const char *ci, Py_ssize_t s,
                                       Py_ssize_t j, const int cfmt) {
    return ci ? cget(ci, s + j, cfmt) : ui[j];
}

ALWAYS_INLINE static inline void cput(char *row, Py_ssize_t j, float x, const int cfmt) {
    if (cfmt == FMT_F32)
        ((float *)row)[j] = x;
    else if (cfmt == FMT_BF16)
        ((uint16_t *)row)[j] = rne16(x);
    else
        ((uint16_t *)row)[j] = rne_f16(x);
}

/* A tile of values exact in the compute format into elements s .. s + m of a cached row. */
ALWAYS_INLINE static inline void cput_tile(char *row, Py_ssize_t s, const float *v, Py_ssize_t m,
                                           const int cfmt) {
    for (Py_ssize_t j = 0; j < m; j++) cput(row, s + j, v[j], cfmt);
}

/* One pass of multislerp, per tile: u_i = RC(v_i / ne_i); mean = RC(sum_i RC(u_i w_i));
 *   stage 1: returns |mean| (torch.norm, before its rounding);
 *   stage 2: m = RC(mean / mn); returns dots_i = sum over the tensor of RC(u_i m);
 *   stage 3: step = RC(sum_i RC(RC(u_i - RC(dots_i m)) w_i)); returns |step|;
 *   stage 4: out = RC(RC(RC(m c) + RC(step q)) scale), plus the base (RC) if there is one.
 * Each operation is rounded where torch rounds it, in one loop per input (the values stay in
 * registers between the operations).
 * `cache` (NULL, or k + 2 rows of n elements in the compute format) keeps what a pass made for
 * the next ones, so that no pass recomputes another's work: stage 1 writes each u_i and mean,
 * stage 2 reads them and overwrites mean with m, stage 3 reads the u_i and m and writes step,
 * stage 4 reads m and step (and no input but the base). Every cached value is already rounded
 * to the compute format, so it is stored exactly and the bits are those of the passes without
 * a cache. (Caching only mean and step, a third of the memory, was measured 9% slower.)
 * Elements s0 .. s1 only: with a cache, stages 1 and 3 on part of the tensor fill their rows
 * without a norm (sphere_norms of the cached row gives it after), and stage 4 writes its part
 * of out: threads can share a large tensor's elementwise work. Stage 2 takes the whole. */
ALWAYS_INLINE static inline void multislerp_in(int stage, float *result, void *out, int out_fmt,
                                               const Vectors *p, const Multi *g, char *cache,
                                               Py_ssize_t s0, Py_ssize_t s1, const int cfmt) {
    float u[SPHERE_MAX][TILE], mean[TILE], t[TILE], step[TILE], b[TILE];
    Norm q;
    Cascade cs[SPHERE_MAX];
    const Py_ssize_t k = p->k, row = fmt_size[cfmt] * p->n; /* bytes per cached row */
    char *const cu = cache, *const cm = cache ? cu + k * row : NULL;
    char *const cstep = cache ? cm + row : NULL;
    const int whole = s0 == 0 && s1 == p->n; /* else no reduction: fill the cache rows */
    norm_init(&q, p->n);
    for (Py_ssize_t i = 0; i < k; i++) cascade_init(&cs[i], p->n);
    for (Py_ssize_t s = s0; s < s1; s += TILE) {
        Py_ssize_t m = s1 - s < TILE ? s1 - s : TILE;
        const int cached = cache && stage >= 2; /* the u_i (stages 2, 3), mean or m, step */
        if (cached) {
            if (stage == 2)
                for (Py_ssize_t j = 0; j < m; j++) {
                    mean[j] = rc(cget(cm, s + j, cfmt) / g->mn, cfmt);
                    cput(cm, s + j, mean[j], cfmt);
                }
            else
                for (Py_ssize_t j = 0; j < m; j++) mean[j] = cget(cm, s + j, cfmt);
        } else {
            load_vectors(u, p, s, m);
            for (Py_ssize_t j = 0; j < m; j++) mean[j] = 0.0f;
            for (Py_ssize_t i = 0; i < k; i++) {
                const float ne = g->ne[i], w = g->w[i];
                float *ui = u[i];
                for (Py_ssize_t j = 0; j < m; j++) {
                    const float x = rc(ui[j] / ne, cfmt);
                    ui[j] = x;
                    mean[j] = mean[j] + rc(x * w, cfmt);
                }
                if (cache) cput_tile(cu + i * row, s, ui, m, cfmt);
            }
            for (Py_ssize_t j = 0; j < m; j++) mean[j] = rc(mean[j], cfmt);
            if (stage == 1) {
                if (cache) cput_tile(cm, s, mean, m, cfmt);
                if (whole) norm_feed(&q, mean, s, m);
                continue;
            }
            for (Py_ssize_t j = 0; j < m; j++) mean[j] = rc(mean[j] / g->mn, cfmt);
        }
        if (stage == 2) {
            for (Py_ssize_t i = 0; i < k; i++) {
                const char *ci = cached ? cu + i * row : NULL;
                for (Py_ssize_t j = 0; j < m; j++)
                    t[j] = rc(uget(u[i], ci, s, j, cfmt) * mean[j], cfmt);
                cascade_feed(&cs[i], t, s, m);
            }
            continue;
        }
        if (cached && stage == 4) {
            for (Py_ssize_t j = 0; j < m; j++) step[j] = cget(cstep, s + j, cfmt);
        } else {
            for (Py_ssize_t j = 0; j < m; j++) step[j] = 0.0f;
            for (Py_ssize_t i = 0; i < k; i++) {
                const float d = g->dots[i], w = g->w[i];
                const char *ci = cached ? cu + i * row : NULL;
                for (Py_ssize_t j = 0; j < m; j++) {
                    float x = rc(d * mean[j], cfmt);
                    x = rc(uget(u[i], ci, s, j, cfmt) - x, cfmt);
                    step[j] = step[j] + rc(x * w, cfmt);
                }
            }
            for (Py_ssize_t j = 0; j < m; j++) step[j] = rc(step[j], cfmt);
        }
        if (stage == 3) {
            if (cache) cput_tile(cstep, s, step, m, cfmt);
            if (whole) norm_feed(&q, step, s, m);
            continue;
        }
        for (Py_ssize_t j = 0; j < m; j++) {
            const float a = rc(mean[j] * g->c, cfmt), e = rc(step[j] * g->q, cfmt);
            mean[j] = rc(rc(a + e, cfmt) * g->scale, cfmt);
        }
        if (p->base) {
            load_tile(b, p->base, p->base_fmt, cfmt, s, m);
            for (Py_ssize_t j = 0; j < m; j++) mean[j] = rc(mean[j] + b[j], cfmt);
        }
        narrow(out, out_fmt, s, mean, m);
    }
    if ((stage == 1 || stage == 3) && whole) result[0] = norm_end(&q);
    if (stage == 2)
        for (Py_ssize_t i = 0; i < k; i++) result[i] = cascade_end(&cs[i]);
}

/* multislerp_in with the compute format a constant in each branch (the rounding inlined). */
HOT static void multislerp(int stage, float *result, void *out, int out_fmt, const Vectors *p,
                           const Multi *g, void *cache, Py_ssize_t s0, Py_ssize_t s1) {
    if (p->cfmt == FMT_BF16)
        multislerp_in(stage, result, out, out_fmt, p, g, cache, s0, s1, FMT_BF16);
    else if (p->cfmt == FMT_F32)
        multislerp_in(stage, result, out, out_fmt, p, g, cache, s0, s1, FMT_F32);
    else
        multislerp_in(stage, result, out, out_fmt, p, g, cache, s0, s1, FMT_F16);
}

/* ------------------------------------------------------------------ slerp */

/* slerp's chunked reductions over a = v_0 (the base) and b = v_1, in fp32 on the values in the
 * compute format (ops/slerp.py: mergekit works in chunks of `chunk` elements): stage 1 gives
 * per chunk |a_c| and |b_c| (results[2c], results[2c + 1]); stage 2 per chunk the sum of
 * (a / na) * (b / nb) (results[c]). */
HOT static void slerp_chunks(int stage, float *results, const Vectors *p, Py_ssize_t chunk,
                             float na, float nb) {
    float v[SPHERE_MAX][TILE];
    for (Py_ssize_t c0 = 0, q = 0; c0 < p->n; c0 += chunk, q++) {
        Py_ssize_t len = p->n - c0 < chunk ? p->n - c0 : chunk;
        Norm qa, qb;
        Cascade cs;
        norm_init(&qa, len);
        norm_init(&qb, len);
        cascade_init(&cs, len);
        for (Py_ssize_t s = 0; s < len; s += TILE) {
            Py_ssize_t m = len - s < TILE ? len - s : TILE;
            load_tile(v[0], p->xs[0], p->fmts[0], p->cfmt, c0 + s, m);
            load_tile(v[1], p->xs[1], p->fmts[1], p->cfmt, c0 + s, m);
            if (stage == 1) {
                norm_feed(&qa, v[0], s, m);
                norm_feed(&qb, v[1], s, m);
                continue;
            }
            for (Py_ssize_t j = 0; j < m; j++) v[0][j] = (v[0][j] / na) * (v[1][j] / nb);
            cascade_feed(&cs, v[0], s, m);
        }
        if (stage == 1) {
            results[2 * q] = norm_end(&qa);
            results[2 * q + 1] = norm_end(&qb);
        } else {
            results[q] = cascade_end(&cs);
        }
    }
}

/* out = (a * ca + b * cb) in fp32, rounded to the compute format, then to the output's. */
HOT static void slerp_mix(void *out, int out_fmt, const Vectors *p, float ca, float cb) {
    float v[SPHERE_MAX][TILE];
    for (Py_ssize_t s = 0; s < p->n; s += TILE) {
        Py_ssize_t m = p->n - s < TILE ? p->n - s : TILE;
        load_tile(v[0], p->xs[0], p->fmts[0], p->cfmt, s, m);
        load_tile(v[1], p->xs[1], p->fmts[1], p->cfmt, s, m);
        for (Py_ssize_t j = 0; j < m; j++) v[0][j] = v[0][j] * ca + v[1][j] * cb;
        round_tile(v[0], m, p->cfmt);
        narrow(out, out_fmt, s, v[0], m);
    }
}

/* ------------------------------------------------------------------ argument handling */

/* [base, x1, ...] (has_base) or [x1, ...], 1 to SPHERE_MAX vectors, of n elements (n < 0:
 * any). */
static int get_vectors(PyObject *xs_o, PyObject *fmts_o, int has_base, int cfmt, Py_ssize_t n,
                       Inputs *in, Vectors *p) {
    if (check_fmt(cfmt) < 0 || get_inputs(xs_o, fmts_o, n, in) < 0) return -1;
    Py_ssize_t k = in->k - (has_base ? 1 : 0);
    if (k < 1 || k > SPHERE_MAX) {
        PyErr_Format(PyExc_ValueError, "1 to %d vectors besides the base, got %zd", SPHERE_MAX,
                     k);
        inputs_release(in);
        return -1;
    }
    p->base = has_base ? in->ptrs[0] : NULL;
    p->base_fmt = has_base ? in->fmts[0] : 0;
    p->xs = in->ptrs + (has_base ? 1 : 0);
    p->fmts = in->fmts + (has_base ? 1 : 0);
    p->k = k;
    p->n = in->bufs[0].view.len / fmt_size[in->fmts[0]];
    p->cfmt = cfmt;
    return 0;
}

static PyObject *float_list(const float *v, Py_ssize_t k) {
    PyObject *list = PyList_New(k);
    if (!list) return NULL;
    for (Py_ssize_t i = 0; i < k; i++) PyList_SET_ITEM(list, i, PyFloat_FromDouble(v[i]));
    return list;
}

/* sphere_norms(vectors, fmts, has_base, compute_fmt) -> [|v_i|] */
PyObject *py_sphere_norms(PyObject *self, PyObject *args) {
    PyObject *xs_o, *fmts_o;
    int has_base, cfmt;
    if (!PyArg_ParseTuple(args, "OOpi", &xs_o, &fmts_o, &has_base, &cfmt)) return NULL;
    Inputs in;
    Vectors p;
    if (get_vectors(xs_o, fmts_o, has_base, cfmt, -1, &in, &p) < 0) return NULL;
    float norms[SPHERE_MAX];
    Py_BEGIN_ALLOW_THREADS
    sphere_norms(norms, &p);
    Py_END_ALLOW_THREADS
    inputs_release(&in);
    return float_list(norms, p.k);
}

/* nuslerp_dot(vectors, fmts, has_base, compute_fmt, n0, n1) -> float */
PyObject *py_nuslerp_dot(PyObject *self, PyObject *args) {
    PyObject *xs_o, *fmts_o;
    int has_base, cfmt;
    double n0, n1;
    if (!PyArg_ParseTuple(args, "OOpidd", &xs_o, &fmts_o, &has_base, &cfmt, &n0, &n1))
        return NULL;
    Inputs in;
    Vectors p;
    if (get_vectors(xs_o, fmts_o, has_base, cfmt, -1, &in, &p) < 0) return NULL;
    if (p.k != 2) {
        inputs_release(&in);
        return PyErr_Format(PyExc_ValueError, "two vectors besides the base");
    }
    float r;
    Py_BEGIN_ALLOW_THREADS
    r = nuslerp_dot(&p, (float)n0, (float)n1);
    Py_END_ALLOW_THREADS
    inputs_release(&in);
    return PyFloat_FromDouble(r);
}

/* nuslerp_mix(out, out_fmt, vectors, fmts, has_base, compute_fmt, a, c, d, divide) */
PyObject *py_nuslerp_mix(PyObject *self, PyObject *args) {
    PyObject *out_o, *xs_o, *fmts_o;
    int out_fmt, has_base, cfmt, divide;
    double a, c, d;
    if (!PyArg_ParseTuple(args, "OiOOpidddp", &out_o, &out_fmt, &xs_o, &fmts_o, &has_base, &cfmt,
                          &a, &c, &d, &divide))
        return NULL;
    Py_ssize_t n = -1;
    Buf out;
    Inputs in;
    Vectors p;
    if (get_fmt_buf(out_o, out_fmt, &n, 1, &out, "out") < 0) return NULL;
    if (get_vectors(xs_o, fmts_o, has_base, cfmt, n, &in, &p) < 0) {
        release(&out);
        return NULL;
    }
    if (p.k != 2) {
        inputs_release(&in);
        release(&out);
        return PyErr_Format(PyExc_ValueError, "two vectors besides the base");
    }
    Py_BEGIN_ALLOW_THREADS
    nuslerp_mix(out.view.buf, out_fmt, &p, (float)a, (float)c, (float)d, divide);
    Py_END_ALLOW_THREADS
    inputs_release(&in);
    release(&out);
    Py_RETURN_NONE;
}

/* multislerp_pass(stage, out_or_None, out_fmt, vectors, fmts, has_base, compute_fmt, ne,
 *                 weights, mn, dots, c, q, scale, cache_or_None, start, stop) -> [results]
 * (stage 4, or elements start .. stop short of the whole tensor: [])
 * cache: None, or a writable buffer of (k + 2) * n elements of the compute format, the same
 * one for the four stages in order (multislerp's comment). */
PyObject *py_multislerp_pass(PyObject *self, PyObject *args) {
    PyObject *out_o, *xs_o, *fmts_o, *ne_o, *w_o, *dots_o, *cache_o;
    int stage, out_fmt, has_base, cfmt;
    double mn, c, q, scale;
    Py_ssize_t s0, s1;
    if (!PyArg_ParseTuple(args, "iOiOOpiOOdOdddOnn", &stage, &out_o, &out_fmt, &xs_o, &fmts_o,
                          &has_base, &cfmt, &ne_o, &w_o, &mn, &dots_o, &c, &q, &scale,
                          &cache_o, &s0, &s1))
        return NULL;
    if (stage < 1 || stage > 4) return PyErr_Format(PyExc_ValueError, "stage 1 to 4");
    Py_ssize_t n = -1;
    Buf out;
    out.held = 0;
    if (stage == 4 && get_fmt_buf(out_o, out_fmt, &n, 1, &out, "out") < 0) return NULL;
    Inputs in;
    Vectors p;
    if (get_vectors(xs_o, fmts_o, has_base, cfmt, n, &in, &p) < 0) {
        release(&out);
        return NULL;
    }
    Multi g;
    memset(&g, 0, sizeof g);
    if (get_floats(ne_o, g.ne, p.k) < 0 || get_floats(w_o, g.w, p.k) < 0 ||
        get_floats(dots_o, g.dots, p.k) < 0) {
        inputs_release(&in);
        release(&out);
        return NULL;
    }
    g.mn = (float)mn;
    g.c = (float)c;
    g.q = (float)q;
    g.scale = (float)scale;
    Buf cache;
    cache.held = 0;
    if (cache_o != Py_None) {
        if (get_buf(cache_o, &cache, 1, 1, "cache") < 0) {
            inputs_release(&in);
            release(&out);
            return NULL;
        }
        if (cache.view.len != (p.k + 2) * p.n * fmt_size[cfmt]) {
            release(&cache);
            inputs_release(&in);
            release(&out);
            return PyErr_Format(PyExc_ValueError,
                                "cache: (k + 2) * n elements of the compute format");
        }
    }
    int whole = s0 == 0 && s1 == p.n;
    if (s0 < 0 || s0 > s1 || s1 > p.n || (!whole && (stage == 2 || !cache.held))) {
        release(&cache);
        inputs_release(&in);
        release(&out);
        return PyErr_Format(PyExc_ValueError,
                            "start .. stop: within the tensor; part of it only with a cache, "
                            "and not in stage 2");
    }
    float result[SPHERE_MAX];
    Py_BEGIN_ALLOW_THREADS
    multislerp(stage, result, out.held ? out.view.buf : NULL, out_fmt, &p, &g,
               cache.held ? cache.view.buf : NULL, s0, s1);
    Py_END_ALLOW_THREADS
    release(&cache);
    inputs_release(&in);
    release(&out);
    return float_list(result, stage == 4 || !whole ? 0 : (stage == 2 ? p.k : 1));
}

/* slerp_chunks(stage, [a, b], fmts, compute_fmt, chunk, na, nb) -> [results] */
PyObject *py_slerp_chunks(PyObject *self, PyObject *args) {
    PyObject *xs_o, *fmts_o;
    int stage, cfmt;
    Py_ssize_t chunk;
    double na, nb;
    if (!PyArg_ParseTuple(args, "iOOindd", &stage, &xs_o, &fmts_o, &cfmt, &chunk, &na, &nb))
        return NULL;
    if ((stage != 1 && stage != 2) || chunk <= 0 || chunk % TILE)
        return PyErr_Format(PyExc_ValueError, "stage 1 or 2, chunk a multiple of %d", TILE);
    Inputs in;
    Vectors p;
    if (get_vectors(xs_o, fmts_o, 0, cfmt, -1, &in, &p) < 0) return NULL;
    if (p.k != 2) {
        inputs_release(&in);
        return PyErr_Format(PyExc_ValueError, "two vectors");
    }
    Py_ssize_t chunks = (p.n + chunk - 1) / chunk, count = stage == 1 ? 2 * chunks : chunks;
    float *results = PyMem_RawCalloc((size_t)(count ? count : 1), sizeof(float));
    if (!results) {
        inputs_release(&in);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    slerp_chunks(stage, results, &p, chunk, (float)na, (float)nb);
    Py_END_ALLOW_THREADS
    inputs_release(&in);
    PyObject *list = float_list(results, count);
    PyMem_RawFree(results);
    return list;
}

/* slerp_mix(out, out_fmt, [a, b], fmts, compute_fmt, ca, cb) */
PyObject *py_slerp_mix(PyObject *self, PyObject *args) {
    PyObject *out_o, *xs_o, *fmts_o;
    int out_fmt, cfmt;
    double ca, cb;
    if (!PyArg_ParseTuple(args, "OiOOidd", &out_o, &out_fmt, &xs_o, &fmts_o, &cfmt, &ca, &cb))
        return NULL;
    Py_ssize_t n = -1;
    Buf out;
    Inputs in;
    Vectors p;
    if (get_fmt_buf(out_o, out_fmt, &n, 1, &out, "out") < 0) return NULL;
    if (get_vectors(xs_o, fmts_o, 0, cfmt, n, &in, &p) < 0) {
        release(&out);
        return NULL;
    }
    if (p.k != 2) {
        inputs_release(&in);
        release(&out);
        return PyErr_Format(PyExc_ValueError, "two vectors");
    }
    Py_BEGIN_ALLOW_THREADS
    slerp_mix(out.view.buf, out_fmt, &p, (float)ca, (float)cb);
    Py_END_ALLOW_THREADS
    inputs_release(&in);
    release(&out);
    Py_RETURN_NONE;
}
