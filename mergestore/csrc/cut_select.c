/* Rank cuts of ties and breadcrumbs found in one pass over the inputs, and the fused bf16 cut +
 * combine. Python side: mergestore/ops/cuts.py; twin: ops/sparsify.py's magnitude and
 * magnitude_outliers (first_ranks' tie rule: ties kept by ascending flat index), which
 * tests/ops/test_cuts.py compares bit for bit.
 *
 * A cut keeps the `count` largest (ties) or smallest (breadcrumbs) magnitudes of x - base, in
 * the compute format: fp32 (31 magnitude bits) or bf16 (15 bits, the delta rounded to bf16).
 * The bits of a non-negative float sort as its value (NaN above +inf, as torch's sort of the
 * bit patterns), so a cut is the cut value v (the key of rank r), and the flat index `last`
 * before which the ties at v are kept.
 *
 * How it is found: a sample of the keys (runs of 16 at evenly spaced places) brackets the rank
 * r between two sampled keys, several standard deviations of the sample's rank either side;
 * one pass then counts the keys below the bracket and gathers the keys inside it with their
 * flat indices (in index order), and the exact cut is selected among those few. The sample only
 * chooses the bracket: if r falls outside it, or the bracket holds too many keys, the exact
 * histograms run instead (one pass for 15-bit keys, two for 31-bit), so the result never
 * depends on the sample. Before, every cut took two or three passes with a 32768-bin
 * histogram scatter each (about 1 ns per element); the gather pass is compares and counts. */
#include "formats.h"
#include "gta_tail16.h"

#define RUN 16   /* sampled keys per run */
#define BLOCK 32 /* keys tested at once for the bracket (the gather buffers' slack) */

typedef struct {
    const void *x, *b;
    int xf, bf, cf; /* formats of x and base; compute format FMT_F32 or FMT_BF16 */
    Py_ssize_t n;
} Pair;

/* keys[j] = the magnitude bits of element s + j of x - base in the compute format cf, the base's
 * elements already widened in bt. */
HOT static void keys_with(const float *bt, const void *x, int xf, int cf, Py_ssize_t s,
                          Py_ssize_t m, uint32_t *keys) {
    if (xf == FMT_BF16 && cf == FMT_BF16) { /* the bf16 config: widened in the same pass */
        const uint16_t *p = (const uint16_t *)x + s;
        for (Py_ssize_t j = 0; j < m; j++) keys[j] = rne16(bf16_to_f32(p[j]) - bt[j]) & 0x7FFFu;
        return;
    }
    float xt[TILE];
    widen(xt, x, xf, s, m);
    if (cf == FMT_F32) {
        for (Py_ssize_t j = 0; j < m; j++) {
            float d = xt[j] - bt[j];
            uint32_t u;
            memcpy(&u, &d, 4);
            keys[j] = u & 0x7FFFFFFFu;
        }
    } else {
        for (Py_ssize_t j = 0; j < m; j++) keys[j] = rne16(xt[j] - bt[j]) & 0x7FFFu;
    }
}

/* keys[j] = the magnitude bits of element s + j of x - base in the compute format. */
static void keys_of(const Pair *p, Py_ssize_t s, Py_ssize_t m, uint32_t *keys) {
    float bt[TILE];
    widen(bt, p->b, p->bf, s, m);
    keys_with(bt, p->x, p->xf, p->cf, s, m, keys);
}

typedef struct {
    Py_ssize_t count; /* ranks kept */
    int largest;
    int mode; /* 0 none, 1 all, 2 largest, 3 smallest (native.h: Cuts32) */
    uint32_t v;
    Py_ssize_t last;
    /* the bracket pass */
    Py_ssize_t r; /* the cut value's 1-based ascending rank */
    uint32_t lo, hi;
    int single;                /* lo == hi: only counted */
    Py_ssize_t below, inside, cap;
    uint32_t *keys, *idx;      /* keys inside the bracket and their flat indices */
    int owned;                 /* keys and idx were malloc'd (not carved from the scratch) */
    uint16_t *tile_eq;         /* a one-key bracket: its keys per tile (NULL: none kept) */
} Cut;

static int active(const Cut *c) { return c->mode >= 2; }

/* Index of the need-th (1-based) element whose key is v; -1 if fewer. */
HOT static Py_ssize_t nth_key(const Pair *p, uint32_t v, Py_ssize_t need) {
    uint32_t kt[TILE];
    Py_ssize_t seen = 0;
    for (Py_ssize_t s = 0; s < p->n; s += TILE) {
        Py_ssize_t m = p->n - s < TILE ? p->n - s : TILE, c = 0;
        keys_of(p, s, m, kt);
        for (Py_ssize_t j = 0; j < m; j++) c += kt[j] == v;
        if (seen + c < need) {
            seen += c;
            continue;
        }
        for (Py_ssize_t j = 0; j < m; j++)
            if (kt[j] == v && ++seen == need) return s + j;
    }
    return -1;
}

/* nth_key with the count of keys equal to v in each tile known (a one-key bracket's gather):
 * only the tile holding the need-th is read. */
static Py_ssize_t nth_in_tiles(const Pair *p, const uint16_t *tile_eq, uint32_t v,
                               Py_ssize_t need) {
    uint32_t kt[TILE];
    Py_ssize_t seen = 0;
    for (Py_ssize_t s = 0; s < p->n; s += TILE) {
        Py_ssize_t c = tile_eq[s / TILE];
        if (seen + c < need) {
            seen += c;
            continue;
        }
        Py_ssize_t m = p->n - s < TILE ? p->n - s : TILE;
        keys_of(p, s, m, kt);
        for (Py_ssize_t j = 0; j < m; j++)
            if (kt[j] == v && ++seen == need) return s + j;
        return -1;
    }
    return -1;
}

/* The cut from its value v and the counts of keys below and at v; `tie` finds the flat index
 * of the need-th key equal to v (from the bracket's gathered keys, or by a pass). */
static void settle(const Pair *p, Cut *c, uint32_t v, Py_ssize_t n_less, Py_ssize_t n_eq) {
    Py_ssize_t n = p->n;
    Py_ssize_t need = c->count - (c->largest ? n - n_less - n_eq : n_less);
    c->v = v;
    if (need >= n_eq) {
        c->last = n;
    } else if (need <= 0) {
        c->last = 0;
    } else if (!c->single && c->keys) {
        Py_ssize_t seen = 0;
        c->last = 0;
        for (Py_ssize_t i = 0; i < c->inside; i++)
            if (c->keys[i] == v && ++seen == need) {
                c->last = (Py_ssize_t)c->idx[i] + 1;
                break;
            }
    } else if (c->single && c->tile_eq && v == c->lo) {
        c->last = nth_in_tiles(p, c->tile_eq, v, need) + 1;
    } else {
        c->last = nth_key(p, v, need) + 1;
    }
}

/* ------------------------------------------------------------------ exact histograms */

#define WAYS 4 /* interleaved histogram copies: a run of equal keys waits on no one counter */

/* Every active cut from histograms: the keys' upper 15 bits (all of a 15-bit key), then for
 * 31-bit keys the low 16 bits inside each cut's bucket. */
HOT static int exact_cuts(const Pair *p, Cut *cuts, int k) {
    const int sh = p->cf == FMT_F32 ? 16 : 0;
    uint32_t *h = calloc(WAYS * 32768, sizeof(uint32_t));
    int64_t *hist = calloc(32768, sizeof(int64_t));
    int64_t *low = sh ? calloc(2 * 65536, sizeof(int64_t)) : NULL;
    uint32_t kt[TILE];
    int rc = -1;
    if (!h || !hist || (sh && !low)) goto done;
    Py_ssize_t since = 0;
    for (Py_ssize_t s = 0; s < p->n; s += TILE) {
        Py_ssize_t m = p->n - s < TILE ? p->n - s : TILE, j = 0;
        keys_of(p, s, m, kt);
        for (; j + WAYS <= m; j += WAYS)
            for (int w = 0; w < WAYS; w++) h[w * 32768 + (kt[j + w] >> sh)]++;
        for (; j < m; j++) h[kt[j] >> sh]++;
        since += m;
        if (since > ((Py_ssize_t)1 << 30) || s + TILE >= p->n) { /* no 32-bit overflow */
            for (int b = 0; b < 32768; b++)
                for (int w = 0; w < WAYS; w++) hist[b] += h[w * 32768 + b], h[w * 32768 + b] = 0;
            since = 0;
        }
    }
    uint32_t bucket[2] = {0, 0};
    Py_ssize_t below[2] = {0, 0};
    for (int i = 0; i < k; i++) {
        if (!active(&cuts[i])) continue;
        Py_ssize_t cum = 0;
        int b = 0;
        while (cum + hist[b] < cuts[i].r) cum += hist[b++];
        bucket[i] = (uint32_t)b, below[i] = cum;
        if (!sh) {
            cuts[i].single = 1; /* ties located by a pass */
            settle(p, &cuts[i], (uint32_t)b, cum, hist[b]);
        }
    }
    if (sh) {
        for (Py_ssize_t s = 0; s < p->n; s += TILE) {
            Py_ssize_t m = p->n - s < TILE ? p->n - s : TILE;
            keys_of(p, s, m, kt);
            for (int i = 0; i < k; i++) {
                if (!active(&cuts[i])) continue;
                int64_t *lo = low + i * 65536;
                for (Py_ssize_t j = 0; j < m; j++)
                    if ((kt[j] >> 16) == bucket[i]) lo[kt[j] & 0xFFFF]++;
            }
        }
        for (int i = 0; i < k; i++) {
            if (!active(&cuts[i])) continue;
            const int64_t *lo = low + i * 65536;
            Py_ssize_t cum = below[i], want = cuts[i].r;
            int b = 0;
            while (cum + lo[b] < want) cum += lo[b++];
            cuts[i].single = 1;
            settle(p, &cuts[i], (bucket[i] << 16) | (uint32_t)b, cum, lo[b]);
        }
    }
    rc = 0;
done:
    free(h), free(hist), free(low);
    return rc;
}

/* ------------------------------------------------------------------ the bracket */

/* Sorts n keys (LSD radix, `bytes` bytes: an even number, so the result ends in a). */
static void radix_sort(uint32_t *a, uint32_t *tmp, Py_ssize_t n, int bytes) {
    for (int pass = 0; pass < bytes; pass++) {
        Py_ssize_t cnt[257] = {0};
        int sh = 8 * pass;
        for (Py_ssize_t i = 0; i < n; i++) cnt[((a[i] >> sh) & 0xFF) + 1]++;
        for (int v = 0; v < 256; v++) cnt[v + 1] += cnt[v];
        for (Py_ssize_t i = 0; i < n; i++) tmp[cnt[(a[i] >> sh) & 0xFF]++] = a[i];
        uint32_t *t = a;
        a = tmp, tmp = t;
    }
}

/* The r-th smallest (1-based) of m keys, all in [lo, lo + span]: histograms of at most 65536
 * bins, each level keeping only the bucket that holds rank r. */
static int select_key(const uint32_t *keys, Py_ssize_t m, uint32_t lo, uint32_t span,
                      Py_ssize_t r, uint32_t *v) {
    uint32_t *work = malloc((size_t)(m ? m : 1) * sizeof(uint32_t));
    uint32_t *hist = malloc(65536 * sizeof(uint32_t));
    if (!work || !hist) {
        free(work), free(hist);
        return -1;
    }
    const uint32_t *cur = keys;
    for (;;) {
        uint32_t nb = 256;
        while (nb < 65536 && (Py_ssize_t)nb < m) nb <<= 1;
        int shift = 0;
        while ((span >> shift) >= nb) shift++;
        memset(hist, 0, nb * sizeof(uint32_t));
        for (Py_ssize_t i = 0; i < m; i++) hist[(cur[i] - lo) >> shift]++;
        Py_ssize_t cum = 0;
        uint32_t b = 0;
        while (cum + hist[b] < r) cum += hist[b++];
        if (shift == 0) {
            *v = lo + b;
            break;
        }
        Py_ssize_t c = 0;
        for (Py_ssize_t i = 0; i < m; i++) {
            work[c] = cur[i];
            c += ((cur[i] - lo) >> shift) == b;
        }
        r -= cum, m = c, cur = work;
        lo += b << shift, span = (1u << shift) - 1;
    }
    free(work), free(hist);
    return 0;
}

/* The sampled keys' bracket for each active cut, its gather buffers carved from `scratch` (of
 * `room` entries; malloc'd when NULL); 0 if it is worth a pass, 1 if not. */
static int brackets(const Pair *p, Cut *cuts, int k, Py_ssize_t S, double z, uint32_t *scratch,
                    Py_ssize_t room) {
    uint32_t *smp = malloc(2 * (size_t)S * sizeof(uint32_t));
    if (!smp) return 1;
    Py_ssize_t runs = S / RUN, n = p->n;
    for (Py_ssize_t t = 0; t < runs; t++) {
        Py_ssize_t start = (Py_ssize_t)((double)t * (double)(n - RUN) / (double)(runs - 1));
        keys_of(p, start, RUN, smp + t * RUN);
    }
    radix_sort(smp, smp + S, S, p->cf == FMT_F32 ? 4 : 2);
    int skip = 0;
    for (int i = 0; i < k && !skip; i++) {
        Cut *c = &cuts[i];
        if (!active(c)) continue;
        double q = ((double)c->r - 0.5) / (double)n, pos = q * (double)S;
        double half = z * sqrt((double)S * q * (1.0 - q)) + 4.0;
        Py_ssize_t a = (Py_ssize_t)floor(pos - half), b = (Py_ssize_t)ceil(pos + half);
        c->lo = a <= 0 ? 0 : smp[a];
        c->hi = b >= S - 1 ? 0xFFFFFFFFu : smp[b];
        c->single = c->lo == c->hi;
        /* the sampled share of keys inside [lo, hi] sizes the gather buffers */
        Py_ssize_t first = a <= 0 ? 0 : a, end = b >= S - 1 ? S : b + 1;
        while (first > 0 && smp[first - 1] >= c->lo) first--;
        while (end < S && smp[end] <= c->hi) end++;
        double share = (double)(end - first) / (double)S;
        if (c->single) {
            c->tile_eq = malloc((size_t)((n + TILE - 1) / TILE) * sizeof(uint16_t));
            continue;
        }
        if (share > 0.25) {
            skip = 1;
            break;
        }
        c->cap = (Py_ssize_t)(share * 1.5 * (double)n) + 4096;
        if (scratch && 2 * (c->cap + BLOCK) <= room) {
            /* pooled memory, already paged in: no fresh pages to fault in */
            c->keys = scratch, c->idx = scratch + c->cap + BLOCK;
            scratch += 2 * (c->cap + BLOCK), room -= 2 * (c->cap + BLOCK);
            continue;
        }
        /* too little scratch (a bracket holding many equal keys, as discrete deltas of 16-bit
         * weights give: 10-15% of the keys): for fp32 keys, buffers of its own cost far less
         * than the two histogram passes; bf16's one pass costs about what the gather does,
         * without the buffers' memory */
        if (scratch && p->cf != FMT_F32) {
            skip = 1;
            break;
        }
        c->owned = 1;
        c->keys = malloc((size_t)(c->cap + BLOCK) * sizeof(uint32_t));
        c->idx = malloc((size_t)(c->cap + BLOCK) * sizeof(uint32_t));
        if (!c->keys || !c->idx) skip = 1;
    }
    free(smp);
    return skip;
}


/* One input's cuts of x - base, and how far their search got. */
typedef struct {
    Pair p;
    Cut cuts[2];
    int k;
    int go; /* 1 while the bracket can still give the cuts */
} Job;

#define GT_NAME gather_tile32
#define GT_KEY uint32_t
#define GT_TOP 0xFFFFFFFFu
#include "cut_gather.h"
#undef GT_NAME
#undef GT_KEY
#undef GT_TOP
#define GT_NAME gather_tile16
#define GT_KEY uint16_t
#define GT_TOP 0x7FFFu
#include "cut_gather.h"
#undef GT_NAME
#undef GT_KEY
#undef GT_TOP

/* keys_with for the bf16 compute format, as 16-bit keys. */
HOT static void keys16_with(const float *bt, const void *x, int xf, Py_ssize_t s, Py_ssize_t m,
                            uint16_t *keys) {
    if (xf == FMT_BF16) {
        const uint16_t *p = (const uint16_t *)x + s;
        for (Py_ssize_t j = 0; j < m; j++)
            keys[j] = (uint16_t)(rne16(bf16_to_f32(p[j]) - bt[j]) & 0x7FFFu);
        return;
    }
    float xt[TILE];
    widen(xt, x, xf, s, m);
    for (Py_ssize_t j = 0; j < m; j++) keys[j] = (uint16_t)(rne16(xt[j] - bt[j]) & 0x7FFFu);
}

/* One pass over the base and the inputs of every job still going: the base's tile is widened
 * once for all of them. A job whose buffer overflows stops (its cuts go to the histograms). */
HOT static void gather(Job *jobs, int nj, Py_ssize_t n) {
    uint32_t kt[TILE];
    uint16_t kt16[TILE];
    float bt[TILE];
    const int narrow = nj && jobs[0].p.cf != FMT_F32; /* 15-bit keys */
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        int going = 0;
        for (int t = 0; t < nj; t++) going |= jobs[t].go;
        if (!going) return;
        widen(bt, jobs[0].p.b, jobs[0].p.bf, s, m);
        for (int t = 0; t < nj; t++) {
            Job *job = &jobs[t];
            if (!job->go) continue;
            int full;
            if (narrow) {
                keys16_with(bt, job->p.x, job->p.xf, s, m, kt16);
                full = gather_tile16(job, kt16, s, m);
            } else {
                keys_with(bt, job->p.x, job->p.xf, job->p.cf, s, m, kt);
                full = gather_tile32(job, kt, s, m);
            }
            if (full) job->go = 0;
        }
    }
}

/* Sets up a job's cuts (modes and ranks); whether any needs a search. */
static int prepare(Job *job) {
    int any = 0;
    for (int i = 0; i < job->k; i++) {
        Cut *c = &job->cuts[i];
        c->keys = c->idx = NULL;
        c->tile_eq = NULL;
        c->owned = 0;
        c->below = c->inside = c->cap = 0;
        c->single = 0, c->v = 0, c->last = 0;
        if (c->count >= job->p.n) {
            c->mode = 1;
        } else if (c->count <= 0) {
            c->mode = 0;
        } else {
            c->mode = c->largest ? 2 : 3;
            c->r = c->largest ? job->p.n - c->count + 1 : c->count;
            any = 1;
        }
    }
    return any;
}

/* A job's cuts from its gathered keys (1 if the bracket missed: nothing settled), -1 out of
 * memory. */
static int from_bracket(Job *job) {
    for (int i = 0; i < job->k; i++) {
        Cut *c = &job->cuts[i];
        if (active(c) && !(c->below < c->r && c->r <= c->below + c->inside)) return 1;
    }
    for (int i = 0; i < job->k; i++) {
        Cut *c = &job->cuts[i];
        if (!active(c)) continue;
        if (c->single) {
            settle(&job->p, c, c->lo, c->below, c->inside);
            continue;
        }
        uint32_t v;
        if (select_key(c->keys, c->inside, c->lo, c->hi - c->lo, c->r - c->below, &v) < 0)
            return -1;
        Py_ssize_t less = 0, eq = 0;
        for (Py_ssize_t j = 0; j < c->inside; j++) less += c->keys[j] < v, eq += c->keys[j] == v;
        settle(&job->p, c, v, c->below + less, eq);
    }
    return 0;
}

static void drop_buffers(Job *job) {
    for (int i = 0; i < job->k; i++) {
        Cut *c = &job->cuts[i];
        if (c->owned) free(c->keys), free(c->idx);
        free(c->tile_eq);
        c->keys = c->idx = NULL, c->tile_eq = NULL, c->owned = 0;
    }
}

/* Every job's cuts (see the top of this file), the inputs sharing one base of n elements;
 * exact[t] says job t needed the histograms. 0, or -1 out of memory. */
static int find_cuts(Job *jobs, int nj, Py_ssize_t n, Py_ssize_t sample, double z,
                     uint32_t *scratch, Py_ssize_t room, int *exact) {
    sample -= sample % RUN;
    int sampled = sample >= 2 * RUN && n >= 8 * sample && n <= 0xFFFFFFFFLL;
    Py_ssize_t share = nj ? room / nj : 0;
    for (int t = 0; t < nj; t++) {
        Job *job = &jobs[t];
        int any = prepare(job);
        exact[t] = any;
        uint32_t *mine = scratch ? scratch + t * share : NULL;
        job->go = any && sampled && !brackets(&job->p, job->cuts, job->k, sample, z, mine, share);
    }
    gather(jobs, nj, n);
    int rc = 0;
    for (int t = 0; t < nj && rc == 0; t++) {
        Job *job = &jobs[t];
        if (job->go) {
            int r = from_bracket(job);
            if (r < 0) rc = -1;
            exact[t] = r == 1;
        }
        drop_buffers(job);
        if (rc == 0 && exact[t] && exact_cuts(&job->p, job->cuts, job->k) < 0) rc = -1;
    }
    for (int t = 0; t < nj; t++) drop_buffers(&jobs[t]);
    return rc;
}

/* The (count, largest) pairs of one input's cuts into job->cuts. */
static int get_job_cuts(PyObject *o, Job *job) {
    PyObject *fast = PySequence_Fast(o, "expected a sequence of (count, largest)");
    if (!fast) return -1;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(fast);
    if (k < 1 || k > 2) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "find_cuts: one or two cuts per input");
        return -1;
    }
    job->k = (int)k;
    for (Py_ssize_t i = 0; i < k; i++) {
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "np;a cut is (count, largest)",
                              &job->cuts[i].count, &job->cuts[i].largest)) {
            Py_DECREF(fast);
            return -1;
        }
    }
    Py_DECREF(fast);
    return 0;
}

/* find_cuts(inputs, fmts, base, base_fmt, compute_fmt, [[(count, largest), ...] per input],
 * sample, z, scratch=None) -> [(mode1, v1, last1, mode2, v2, last2, exact) per input]: each
 * input's one or two cuts of x - base (the second as mode -1 if absent), for gta_cut32 /
 * gta_cut16, found in one pass over the base and all the inputs; `exact` says the histograms
 * were needed (sample 0 asks for them). `scratch` (writable, 4-byte items) holds the gathered
 * keys, shared out evenly. */
PyObject *py_find_cuts(PyObject *self, PyObject *args) {
    PyObject *xs_o, *fmts_o, *b_o, *cuts_o, *s_o = Py_None, *ret = NULL, *cl = NULL;
    int bfmt, cf;
    Py_ssize_t sample;
    double z;
    if (!PyArg_ParseTuple(args, "OOOiiOnd|O", &xs_o, &fmts_o, &b_o, &bfmt, &cf, &cuts_o,
                          &sample, &z, &s_o))
        return NULL;
    if (cf != FMT_F32 && cf != FMT_BF16) {
        PyErr_SetString(PyExc_ValueError, "find_cuts: compute in fp32 or bf16");
        return NULL;
    }
    Buf b, sc;
    Inputs in;
    Job *jobs = NULL;
    int *exact = NULL;
    memset(&sc, 0, sizeof sc);
    Py_ssize_t n = -1;
    if (s_o != Py_None && get_buf(s_o, &sc, 1, 4, "scratch") < 0) return NULL;
    if (get_fmt_buf(b_o, bfmt, &n, 0, &b, "base") < 0) goto d1;
    if (get_inputs(xs_o, fmts_o, n, &in) < 0) goto d2;
    cl = PySequence_Fast(cuts_o, "expected one list of cuts per input");
    if (!cl) goto d3;
    if (PySequence_Fast_GET_SIZE(cl) != in.k) {
        PyErr_SetString(PyExc_ValueError, "find_cuts: one list of cuts per input");
        goto d3;
    }
    jobs = PyMem_Calloc(in.k ? in.k : 1, sizeof(Job));
    exact = PyMem_Calloc(in.k ? in.k : 1, sizeof(int));
    if (!jobs || !exact) {
        PyErr_NoMemory();
        goto d3;
    }
    for (Py_ssize_t t = 0; t < in.k; t++) {
        Pair p = {in.ptrs[t], b.view.buf, in.fmts[t], bfmt, cf, n};
        jobs[t].p = p;
        if (get_job_cuts(PySequence_Fast_GET_ITEM(cl, t), &jobs[t]) < 0) goto d3;
    }
    uint32_t *scratch = s_o != Py_None ? sc.view.buf : NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = find_cuts(jobs, (int)in.k, n, sample, z, scratch, sc.view.len / 4, exact);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        PyErr_NoMemory();
        goto d3;
    }
    ret = PyList_New(in.k);
    for (Py_ssize_t t = 0; ret && t < in.k; t++) {
        Cut *c = jobs[t].cuts;
        if (jobs[t].k == 1) c[1].mode = -1, c[1].v = 0, c[1].last = 0;
        PyObject *one = Py_BuildValue("(iIniIni)", c[0].mode, c[0].v, c[0].last, c[1].mode,
                                      c[1].v, c[1].last, exact[t]);
        if (!one) Py_CLEAR(ret);
        else PyList_SET_ITEM(ret, t, one);
    }
d3:
    PyMem_Free(jobs);
    PyMem_Free(exact);
    Py_XDECREF(cl);
    inputs_release(&in);
d2:
    release(&b);
d1:
    release(&sc);
    return ret;
}

/* ------------------------------------------------------------------ bf16 cut + combine */

/* The magnitude bits a piece's cuts keep, [lo1, hi1] minus [lo2, hi2], as one interval: lo and
 * span with bits kept iff (uint32_t)(bits - lo) <= span. rank_cuts.c's cut_range makes every
 * range empty, whole, a prefix [0, v] or a suffix [v, 0xFFFF], so the difference is always one
 * interval (an empty one: lo = 0x10000, span = 0, past every 15-bit magnitude). */
static void kept_interval(const CutSeg16 *g, int *lo, uint32_t *span) {
    int a = g->lo1, b = g->hi1;
    if (g->lo2 <= g->hi2) {
        if (g->lo2 <= a) a = a > g->hi2 + 1 ? a : g->hi2 + 1; /* a prefix (or more) dropped */
        else b = b < g->lo2 - 1 ? b : g->lo2 - 1;              /* a suffix dropped */
    }
    *lo = a <= b ? a : 0x10000;
    *span = a <= b ? (uint32_t)(b - a) : 0u;
}

/* bf16(v * w) for one element, v = bf16(x - b) times the mask of its cut: magnitude bits in
 * the kept interval (lo, span) kept, others a signed zero, or bf16's NaN for an infinity or
 * NaN (as rank_cuts.c's zero_outside, as delta * mask does). */
ALWAYS_INLINE static inline float cut_weigh1(uint16_t x, float b, int lo, uint32_t span,
                                             float w) {
    float v = r16(bf16_to_f32(x) - b);
    uint32_t u;
    memcpy(&u, &v, 4);
    int bits = (int)((u >> 16) & 0x7FFFu);
    uint32_t dropped = bits >= 0x7F80 ? 0x7FC00000u : (u & 0x80000000u);
    u = (uint32_t)(bits - lo) <= span ? u : dropped;
    memcpy(&v, &u, 4);
    return r16(v * w);
}

/* D[j] = cut_weigh1 of one piece of a tile. */
HOT static void cut_weigh16(float *D, const uint16_t *x, const float *bf, Py_ssize_t m,
                            const CutSeg16 *g, float w) {
    int lo;
    uint32_t span;
    kept_interval(g, &lo, &span);
    for (Py_ssize_t j = 0; j < m; j++) D[j] = cut_weigh1(x[j], bf[j], lo, span, w);
}

/* gta_cut16's weighted sum (breadcrumbs) and sign consensus (ties) of 1 to 4 inputs, with any
 * tail, over a tile in which each input's cuts keep one range of magnitude bits (g[i]: no tie
 * boundary inside), each element's D_i held in registers (gta_tail16.h). */
#define CW_D(i) const float d##i = cut_weigh1(x##i[j], b, lo##i, span##i, w##i)
#define CW_IN(i)                                                                             \
    const int c##i = k > i ? i : 0;                                                          \
    const uint16_t *x##i = xs[c##i];                                                         \
    int lo##i;                                                                               \
    uint32_t span##i;                                                                        \
    kept_interval(&g[c##i], &lo##i, &span##i);                                               \
    const float w##i = w[c##i]
HOT static void cut_sum_few(uint16_t *out, const uint16_t *base, const uint16_t **xs,
                            const CutSeg16 *g, Py_ssize_t k, const float *w, Py_ssize_t m,
                            float divisor, int normalize, float lam, int has_lam) {
    CW_IN(0);
    CW_IN(1);
    CW_IN(2);
    CW_IN(3);
    GTA16_SUM_FEW(CW_D)
}

HOT static void cut_vote_few(uint16_t *out, const uint16_t *base, const uint16_t **xs,
                             const CutSeg16 *g, Py_ssize_t k, const float *w, Py_ssize_t m,
                             int normalize, float lam, int has_lam) {
    CW_IN(0);
    CW_IN(1);
    CW_IN(2);
    CW_IN(3);
    GTA16_VOTE_FEW(CW_D)
}
#undef CW_IN
#undef CW_D

/* ties and breadcrumbs(_ties) with bf16 compute in one pass over the inputs, tile by tile: each
 * input's D_i = bf16(d_i * w_i), d_i = x_i - base rounded to bf16 times the mask of its cuts,
 * made once into an fp32 tile (cut_weigh16), then the bf16 GTA tail (gta_tail16.h: the
 * consensus, or the weighted sum): the operations of writing each cut delta (apply_cuts16) and
 * combining them (merge_arith16.h), without a delta per input in memory. `start` is the flat
 * index of element 0 here. 1 to 4 inputs (cut_vote_few for ties, cut_sum_few for breadcrumbs)
 * hold each element's values in registers on every tile without a tie boundary (all but at most
 * two per input); the per-input tiles `dt` are allocated on the first tile that needs them. */
HOT static int gta_cut16(uint16_t *out, const uint16_t *base, const uint16_t **xs,
                         const Cuts32 *cuts, Py_ssize_t k, Py_ssize_t start, const float *w,
                         int consensus, float divisor, Py_ssize_t n, int normalize, float lam,
                         int has_lam) {
    float *dt = NULL;
    const int few = k >= 1 && k <= 4;
    float bf[TILE], acc[TILE];
    CutSeg16 seg[3], one[4];
    const uint16_t *at[4];
    for (Py_ssize_t s = 0; s < n; s += TILE) {
        Py_ssize_t m = n - s < TILE ? n - s : TILE;
        if (few) {
            int whole = 1;
            for (Py_ssize_t i = 0; i < k && whole; i++) {
                whole = cut_segs16(start + s, m, &cuts[i], seg) == 1;
                one[i] = seg[0];
                at[i] = xs[i] + s;
            }
            if (whole && consensus) {
                cut_vote_few(out + s, base + s, at, one, k, w, m, normalize, lam, has_lam);
                continue;
            }
            if (whole) {
                cut_sum_few(out + s, base + s, at, one, k, w, m, divisor, normalize, lam, has_lam);
                continue;
            }
        }
        if (!dt && !(dt = malloc((size_t)(k ? k : 1) * TILE * sizeof(float)))) return -1;
        for (Py_ssize_t j = 0; j < m; j++) bf[j] = bf16_to_f32(base[s + j]);
        for (Py_ssize_t j = 0; j < m; j++) acc[j] = 0.0f;
        for (Py_ssize_t i = 0; i < k; i++) {
            float *D = dt + i * TILE;
            int ns = cut_segs16(start + s, m, &cuts[i], seg);
            for (int g = 0; g < ns; g++)
                cut_weigh16(D + seg[g].s, xs[i] + s + seg[g].s, bf + seg[g].s,
                            seg[g].e - seg[g].s, &seg[g], w[i]);
            if (consensus && i == 0) { /* merge_arith16.h's vote starts from D_0 */
                for (Py_ssize_t j = 0; j < m; j++) acc[j] = D[j];
            } else {
                for (Py_ssize_t j = 0; j < m; j++) acc[j] += D[j];
            }
        }
        gta_tail16(out + s, bf, dt, k, w, acc, consensus, divisor, m, normalize, lam, has_lam);
    }
    free(dt);
    return 0;
}

/* gta_cut16(out, base, inputs, cuts, start, weights, consensus, divisor, normalize, lam,
 * has_lam): bf16 bits (uint16 arrays) */
PyObject *py_gta_cut16(PyObject *self, PyObject *args) {
    PyObject *out_o, *base_o, *xs_o, *cuts_o, *w_o;
    int consensus, normalize, has_lam;
    Py_ssize_t start;
    double divisor, lam;
    if (!PyArg_ParseTuple(args, "OOOOnOpdpdp", &out_o, &base_o, &xs_o, &cuts_o, &start, &w_o,
                          &consensus, &divisor, &normalize, &lam, &has_lam))
        return NULL;
    Py_ssize_t n = -1;
    Buf out, base;
    Inputs in;
    float *w = NULL;
    Cuts32 *cuts = NULL;
    PyObject *ret = NULL, *cs = NULL, *fmts = NULL;
    if (get_fmt_buf(out_o, FMT_BF16, &n, 1, &out, "out") < 0) return NULL;
    if (get_fmt_buf(base_o, FMT_BF16, &n, 0, &base, "base") < 0) goto d1;
    Py_ssize_t k = PySequence_Size(xs_o);
    if (k < 0 || !(fmts = PyList_New(k))) goto d2;
    for (Py_ssize_t i = 0; i < k; i++) PyList_SET_ITEM(fmts, i, PyLong_FromLong(FMT_BF16));
    if (get_inputs(xs_o, fmts, n, &in) < 0) goto d2;
    w = PyMem_Calloc(in.k ? in.k : 1, sizeof(float));
    if (!w) {
        PyErr_NoMemory();
        goto d3;
    }
    if (get_floats(w_o, w, in.k) < 0) goto d4;
    cs = PySequence_Fast(cuts_o, "expected a sequence of cuts");
    if (!cs) goto d4;
    if (PySequence_Fast_GET_SIZE(cs) != in.k) {
        PyErr_SetString(PyExc_ValueError, "gta_cut16: one cut per input");
        goto d4;
    }
    cuts = PyMem_Calloc(in.k ? in.k : 1, sizeof(Cuts32));
    if (!cuts) {
        PyErr_NoMemory();
        goto d4;
    }
    for (Py_ssize_t i = 0; i < in.k; i++)
        if (get_cuts32(PySequence_Fast_GET_ITEM(cs, i), &cuts[i]) < 0) goto d4;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = gta_cut16(out.view.buf, base.view.buf, (const uint16_t **)in.ptrs, cuts, in.k, start, w,
                   consensus, (float)divisor, n, normalize, (float)lam, has_lam);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        PyErr_NoMemory();
        goto d4;
    }
    ret = Py_None;
    Py_INCREF(ret);
d4:
    PyMem_Free(cuts);
    Py_XDECREF(cs);
    PyMem_Free(w);
d3:
    inputs_release(&in);
d2:
    Py_XDECREF(fmts);
    release(&base);
d1:
    release(&out);
    return ret;
}

/* ------------------------------------------------------------------ finite */

/* finite(x, fmt) -> bool: no infinity or NaN in x (bf16, fp16 or fp32), without the two
 * whole-array numpy temporaries `((x & exp) == exp).any()` made (fresh pages to fault in). */
HOT4 static int all_finite(const void *x, int fmt, Py_ssize_t n) {
    for (Py_ssize_t s = 0; s < n; s += 4096) {
        Py_ssize_t m = n - s < 4096 ? n - s : 4096;
        uint32_t bad = 0;
        if (fmt == FMT_F32) {
            const uint32_t *u = (const uint32_t *)x + s;
            for (Py_ssize_t j = 0; j < m; j++) bad |= (u[j] & 0x7F800000u) == 0x7F800000u;
        } else {
            const uint16_t *u = (const uint16_t *)x + s;
            const uint16_t e = fmt == FMT_BF16 ? 0x7F80 : 0x7C00;
            for (Py_ssize_t j = 0; j < m; j++) bad |= (uint32_t)((u[j] & e) == e);
        }
        if (bad) return 0;
    }
    return 1;
}

/* all_finite for other C files (merge_arith.c's frozen-input spans); call without the GIL. */
int finite_values(const void *x, int fmt, Py_ssize_t n) { return all_finite(x, fmt, n); }

PyObject *py_finite(PyObject *self, PyObject *args) {
    PyObject *x_o;
    int fmt;
    if (!PyArg_ParseTuple(args, "Oi", &x_o, &fmt)) return NULL;
    Buf x;
    Py_ssize_t n = -1;
    if (get_fmt_buf(x_o, fmt, &n, 0, &x, "x") < 0) return NULL;
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = all_finite(x.view.buf, fmt, n);
    Py_END_ALLOW_THREADS
    release(&x);
    return PyBool_FromLong(ok);
}
