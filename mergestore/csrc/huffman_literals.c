/* A decoder of our own for the literal-only zstd frames the store writes (the `h` byte planes:
 * every byte a Huffman-coded literal, no sequences; store/codecs/huffman.py makes them with
 * zstd's ZSTD_compressSequencesAndLiterals). Python twin: python-zstandard's decoder
 * (store/codecs/zstd.py decompress), which the caller falls back to whenever this one declines.
 *
 * Why: zstd's portable Huffman loop decodes at most 2 symbols per table lookup, and
 * python-zstandard's bundled zstd has no assembly loop; an exponent plane (~2.5 bits per byte)
 * fits ~4 symbols in an 11-bit lookup, and a plane of 1-bit codes (the XOR of exponents that
 * rarely change) 11. Here each lookup emits up to 8 symbols (a table built per Huffman table,
 * ~2^tableLog entries; 8 rather than 4 decodes such planes ~40% faster), two blocks that share
 * a table are decoded at once (8 streams: each stream is a chain of dependent lookups, and 8
 * chains keep the core busier than 4; 1.2-1.3x on this store's planes), and the output goes
 * straight into the caller's buffer (no fresh bytes object per plane).
 *
 * What it decodes: RFC 8878 frames with a content size and no dictionary or checksum, whose
 * blocks are raw, RLE, or compressed with zero sequences (literals raw, RLE, Huffman with a
 * new table, or treeless with the previous one; 1 or 4 streams), table log at most 11. It
 * makes zstd's checks (sizes, stream ends, weights) and declines (returns 0) on anything else,
 * valid or not: the caller then runs zstd, which decodes it or raises its own error. So the
 * bytes are always zstd's (tests/codecs/test_huffman_literals.py fuzzes both against each
 * other).
 */
#include "native.h"

#define HLOG_MAX 11          /* zstd's encoder writes literal tables of at most 11 bits */
#define ZBLOCK_MAX (1 << 17) /* zstd's largest block */
#define WINDOW_MAX (1u << 27) /* zstd's default window limit for decoding */
#define MULTI_MAX 8          /* symbols per lookup of the multi-symbol table */

typedef struct {
    uint8_t sym, nb;
} One;

typedef struct {
    uint64_t syms; /* up to MULTI_MAX symbols, first in the low byte */
    uint8_t nb;    /* bits they take */
    uint8_t n;     /* how many */
} Multi;

typedef struct {
    int log; /* 0: no table yet */
    One one[1 << HLOG_MAX];
    Multi multi[1 << HLOG_MAX];
} Table;

static inline int highbit(uint32_t v) { return 31 - __builtin_clz(v); } /* v > 0 */

static inline uint64_t le64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* ------------------------------------------------------------------ backward bit streams */

/* A backward bit stream as zstd reads it: from the bit below the end marker (the highest set
 * bit of the last byte) down to bit 0 of the first byte; bits below the start read as zero.
 * `rem` counts the bits not yet read (negative once a read went past the start). */
typedef struct {
    const uint8_t *src;
    Py_ssize_t rem;
} Back;

static int back_init(Back *b, const uint8_t *src, Py_ssize_t size) {
    if (size < 1 || src[size - 1] == 0) return -1;
    b->src = src;
    b->rem = 8 * size - 8 + highbit(src[size - 1]);
    return 0;
}

/* The next 64 bits, the next one to read at bit 63. */
static inline uint64_t back_window(const Back *b) {
    if (b->rem <= 0) return 0;
    Py_ssize_t top = b->rem - 1, byte = top >> 3;
    if (byte >= 7) return le64(b->src + byte - 7) << (7 - (top & 7));
    uint64_t v = 0;
    for (Py_ssize_t i = 0; i <= byte; i++) v |= (uint64_t)b->src[i] << (8 * i);
    return v << (63 - top);
}

static inline uint32_t back_read(Back *b, int n) {
    if (n == 0) return 0;
    uint32_t v = (uint32_t)(back_window(b) >> (64 - n));
    b->rem -= n;
    return v;
}

/* ------------------------------------------------------------------ FSE-coded weights */

/* FSE table description (RFC 8878 4.1.1) of at most 256 symbols; returns its size in bytes,
 * or -1. Bits past `size` read as zero, as zstd reads them from its padded copy. */
static Py_ssize_t read_ncount(int16_t *norm, int *n_sym, int *log, const uint8_t *src,
                              Py_ssize_t size) {
    Py_ssize_t pos = 0; /* bit position */
#define NC_BITS(n)                                                                       \
    ({                                                                                   \
        uint64_t v_ = 0;                                                                 \
        Py_ssize_t byte_ = pos >> 3;                                                     \
        for (int i_ = 0; i_ < 4; i_++)                                                   \
            if (byte_ + i_ < size) v_ |= (uint64_t)src[byte_ + i_] << (8 * i_);          \
        (uint32_t)(v_ >> (pos & 7)) & ((1u << (n)) - 1);                                 \
    })
    int acc = (int)NC_BITS(4) + 5;
    pos = 4;
    if (acc > 15) return -1;
    *log = acc;
    int remaining = (1 << acc) + 1, threshold = 1 << acc, nb = acc + 1;
    int s = 0, previous0 = 0;
    memset(norm, 0, 256 * sizeof(int16_t));
    for (;;) {
        if (previous0) {
            uint32_t r;
            while ((r = NC_BITS(2)) == 3) {
                s += 3;
                pos += 2;
            }
            s += (int)r;
            pos += 2;
            if (s >= 256) break;
        }
        int max = (2 * threshold - 1) - remaining, count;
        uint32_t low = NC_BITS(nb - 1);
        if ((int)low < max) {
            count = (int)low;
            pos += nb - 1;
        } else {
            count = (int)NC_BITS(nb);
            if (count >= threshold) count -= max;
            pos += nb;
        }
        count--;
        remaining -= count < 0 ? -count : count;
        norm[s++] = (int16_t)count;
        previous0 = !count;
        if (remaining < threshold) {
            if (remaining <= 1) break;
            nb = highbit((uint32_t)remaining) + 1;
            threshold = 1 << (nb - 1);
        }
        if (s >= 256) break;
    }
#undef NC_BITS
    if (remaining != 1 || s > 256) return -1;
    Py_ssize_t bytes = (pos + 7) >> 3;
    if (bytes > size) return -1;
    *n_sym = s;
    return bytes;
}

typedef struct {
    uint8_t sym, nb;
    uint16_t base;
} FseCell;

/* The FSE decoding table of a normalized distribution (RFC 8878 4.1.1). */
static int fse_table(FseCell *t, const int16_t *norm, int n_sym, int log) {
    int size = 1 << log, high = size - 1;
    uint32_t next[256];
    for (int s = 0; s < n_sym; s++) {
        if (norm[s] == -1) {
            t[high--].sym = (uint8_t)s;
            next[s] = 1;
        } else {
            next[s] = (uint32_t)norm[s];
        }
    }
    int step = (size >> 1) + (size >> 3) + 3, mask = size - 1, p = 0;
    for (int s = 0; s < n_sym; s++) {
        for (int i = 0; i < norm[s]; i++) {
            t[p].sym = (uint8_t)s;
            do p = (p + step) & mask;
            while (p > high);
        }
    }
    if (p != 0) return -1;
    for (int u = 0; u < size; u++) {
        uint32_t ns = next[t[u].sym]++;
        t[u].nb = (uint8_t)(log - highbit(ns));
        t[u].base = (uint16_t)((ns << t[u].nb) - (uint32_t)size);
    }
    return 0;
}

/* Huffman weights coded with FSE, two interleaved states (RFC 8878 4.2.1.2, zstd's
 * FSE_decompress_wksp with at most 255 outputs); returns how many, or -1. */
static int fse_weights(uint8_t *w, const uint8_t *src, Py_ssize_t size) {
    int16_t norm[256];
    int n_sym, log;
    Py_ssize_t h = read_ncount(norm, &n_sym, &log, src, size);
    if (h < 0 || log > 6) return -1;
    FseCell t[64];
    if (fse_table(t, norm, n_sym, log) < 0) return -1;
    Back b;
    if (back_init(&b, src + h, size - h) < 0) return -1;
    uint32_t s1 = back_read(&b, log), s2 = back_read(&b, log);
    if (b.rem < 0) return -1;
    int n = 0;
    for (;;) {
        if (n > 253) return -1;
        w[n++] = t[s1].sym;
        s1 = t[s1].base + back_read(&b, t[s1].nb);
        if (b.rem < 0) {
            w[n++] = t[s2].sym;
            break;
        }
        if (n > 253) return -1;
        w[n++] = t[s2].sym;
        s2 = t[s2].base + back_read(&b, t[s2].nb);
        if (b.rem < 0) {
            w[n++] = t[s1].sym;
            break;
        }
    }
    return n;
}

/* ------------------------------------------------------------------ Huffman tables */

/* The multi-symbol entries of indices [i0, i0 + 2^(log - nbits)), whose first `depth` symbols
 * `syms` took `nbits` bits: each entry gets as many more whole codes as fit in the log bits of
 * its index (up to MULTI_MAX), as decoding them one by one with the single-symbol table would.
 * Each symbol's cells are a run aligned to its length (a complete canonical code, weight 1
 * first), so a run of the next symbol is filled as a block: about one step per entry. */
static void fill_multi(Multi *m, const One *one, int log, uint32_t i0, int nbits, int depth,
                       uint64_t syms) {
    int b = log - nbits;
    uint32_t len = 1u << b;
    Multi here = {syms, (uint8_t)nbits, (uint8_t)depth};
    if (depth == MULTI_MAX) {
        for (uint32_t j = 0; j < len; j++) m[i0 + j] = here;
        return;
    }
    for (uint32_t p = 0; p < len;) {
        One c = one[p << nbits];
        if (c.nb <= b) {
            fill_multi(m, one, log, i0 + p, nbits + c.nb, depth + 1,
                       syms | (uint64_t)c.sym << (8 * depth));
            p += 1u << (b - c.nb);
        } else {
            m[i0 + p++] = here; /* the next code does not fit: these bits are read again */
        }
    }
}

/* Read a Huffman table description (RFC 8878 4.2.1) into `t`; returns its size or -1. */
static Py_ssize_t read_table(Table *t, const uint8_t *src, Py_ssize_t size) {
    uint8_t w[256];
    int n;
    Py_ssize_t used;
    if (size < 1) return -1;
    int hb = src[0];
    if (hb >= 128) {
        n = hb - 127;
        used = 1 + (n + 1) / 2;
        if (used > size) return -1;
        for (int i = 0; i < n; i += 2) {
            w[i] = src[1 + i / 2] >> 4;
            w[i + 1] = src[1 + i / 2] & 15;
        }
    } else {
        used = 1 + hb;
        if (used > size) return -1;
        n = fse_weights(w, src + 1, hb);
        if (n < 0) return -1;
    }
    /* zstd's HUF_readStats: weights up to 12, the last symbol's weight implied */
    uint32_t total = 0, rank[16] = {0};
    for (int i = 0; i < n; i++) {
        if (w[i] > 12) return -1;
        rank[w[i]]++;
        total += (1u << w[i]) >> 1;
    }
    if (total == 0) return -1;
    int log = highbit(total) + 1;
    if (log > 12) return -1;
    uint32_t rest = (1u << log) - total;
    if (rest == 0 || (rest & (rest - 1))) return -1;
    int last = highbit(rest) + 1;
    w[n++] = (uint8_t)last;
    rank[last]++;
    if (rank[1] < 2 || (rank[1] & 1)) return -1;
    if (log > HLOG_MAX) return -1; /* valid, but not ours: zstd decodes it */
    /* single-symbol table: weight 1 first, each symbol in order over 2^(w-1) cells */
    uint32_t start[16], pos = 0;
    for (int k = 1; k <= log; k++) {
        start[k] = pos;
        pos += rank[k] << (k - 1);
    }
    for (int s = 0; s < n; s++) {
        int k = w[s];
        if (!k) continue;
        uint32_t len = 1u << (k - 1);
        One e = {(uint8_t)s, (uint8_t)(log + 1 - k)};
        for (uint32_t j = 0; j < len; j++) t->one[start[k] + j] = e;
        start[k] += len;
    }
    /* multi-symbol table: as many whole codes (up to 4) as fit in the log bits of the index */
    fill_multi(t->multi, t->one, log, 0, 0, 0, 0);
    t->log = log;
    return used;
}

/* ------------------------------------------------------------------ Huffman streams */

/* The careful loop: one symbol at a time, to the exact end of the stream. */
static int stream_tail(const Table *t, Back *b, uint8_t *op, uint8_t *end) {
    int log = t->log;
    while (op < end) {
        One e = t->one[back_window(b) >> (64 - log)];
        *op++ = e.sym;
        b->rem -= e.nb;
    }
    return b->rem == 0 ? 0 : -1;
}

static int decode_1stream(const Table *t, const uint8_t *src, Py_ssize_t size, uint8_t *dst,
                          Py_ssize_t n) {
    Back b;
    if (back_init(&b, src, size) < 0) return -1;
    return stream_tail(t, &b, dst, dst + n);
}

/* A block's four streams (RFC 8878 4.2.2): each to its quarter of the output. */
typedef struct {
    const Table *t;
    Back b[4];
    uint8_t *op[4], *oend[4];
} Job;

/* A frame's Huffman tables: two, so that a new one can be read while a job waiting to be
 * decoded holds another. */
typedef struct {
    Table slot[2];
    Table *cur;        /* the last one read (treeless blocks reuse it), NULL before the first */
    const Table *busy; /* the waiting job's, NULL when none waits */
} Frame;

static int job_open(Job *j, const Table *t, const uint8_t *src, Py_ssize_t size, uint8_t *dst,
                    Py_ssize_t n) {
    if (size < 10) return -1;
    Py_ssize_t len[4];
    len[0] = src[0] | (src[1] << 8);
    len[1] = src[2] | (src[3] << 8);
    len[2] = src[4] | (src[5] << 8);
    len[3] = size - 6 - len[0] - len[1] - len[2];
    if (len[3] < 0) return -1;
    const uint8_t *s = src + 6;
    for (int k = 0; k < 4; k++) {
        if (back_init(&j->b[k], s, len[k]) < 0) return -1;
        s += len[k];
    }
    Py_ssize_t seg = (n + 3) / 4;
    for (int k = 0; k < 4; k++) {
        j->op[k] = dst + k * seg;
        j->oend[k] = k < 3 ? j->op[k] + seg : dst + n;
    }
    j->t = t;
    return 0;
}

/* The fast loop over the streams of nj jobs (1 or 2: 4 or 8 streams, whose chains of lookups
 * the core overlaps); it emits up to MULTI_MAX symbols per lookup (an 8-byte store) and 5
 * lookups per stream between reloads (5 x 11 bits fit the 57 bits a reload guarantees), while
 * every stream has 8 bytes behind it and 5 * MULTI_MAX bytes of output ahead. */
static inline __attribute__((always_inline)) void fast_loop(Job *const *jobs, const int nj) {
    const int N = 4 * nj;
    for (int k = 0; k < N; k++)
        if (jobs[k >> 2]->b[k & 3].rem < 64 + 64) return;
    const Multi *m = jobs[0]->t->multi; /* fast8's jobs share their table */
    const int shift = 64 - jobs[0]->t->log;
    const uint8_t *ptr[8], *start[8];
    uint64_t bits[8];
    uint8_t *op[8], *oend[8];
    /* Fast state per stream: the 8 bytes at ptr[k], shifted left so that the next bit is bit
     * 63, with a marker bit set just below the data: the bits read since the last reload are
     * ctz(bits) + 1 - (the marker's first place), so no step keeps a count. The marker starts
     * 1 to 8 bits up, leaving at least 56 bits of data, 5 lookups of 11. */
    for (int k = 0; k < N; k++) {
        Job *j = jobs[k >> 2];
        Back *b = &j->b[k & 3];
        Py_ssize_t top = b->rem - 1, back = (top - 55) >> 3;
        unsigned used = (unsigned)(63 - (top - 8 * back));
        start[k] = b->src;
        ptr[k] = b->src + back;
        bits[k] = (le64(ptr[k]) << used) | (1ull << (used - 1));
        op[k] = j->op[k & 3];
        oend[k] = j->oend[k & 3];
    }
    for (;;) {
        /* iterations that stay safe: each reads back at most 7 bytes (ptr - src >= 7 at its
         * start) and writes at most 5 * MULTI_MAX bytes ahead */
        Py_ssize_t iters = PY_SSIZE_T_MAX;
        for (int k = 0; k < N; k++) {
            Py_ssize_t a = (ptr[k] - start[k]) / 7, o = (oend[k] - op[k]) / (5 * MULTI_MAX);
            iters = a < iters ? a : iters;
            iters = o < iters ? o : iters;
        }
        if (iters <= 0) break;
        for (; iters > 0; iters--) {
#pragma GCC unroll 5
            for (int r = 0; r < 5; r++) {
#pragma GCC unroll 8
                for (int k = 0; k < N; k++) {
                    Multi e = m[bits[k] >> shift];
                    memcpy(op[k], &e.syms, 8);
                    op[k] += e.n;
                    bits[k] <<= e.nb;
                }
            }
#pragma GCC unroll 8
            for (int k = 0; k < N; k++) {
                unsigned used = (unsigned)__builtin_ctzll(bits[k]) + 1;
                ptr[k] -= (used - 1) >> 3;
                used -= ((used - 1) >> 3) << 3;
                bits[k] = (le64(ptr[k]) << used) | (1ull << (used - 1));
            }
        }
    }
    for (int k = 0; k < N; k++) {
        Job *j = jobs[k >> 2];
        j->b[k & 3].rem = (ptr[k] - start[k]) * 8 + 63 - __builtin_ctzll(bits[k]);
        j->op[k & 3] = op[k];
    }
}

HOT static void fast4(Job *j) {
    Job *js[1] = {j};
    fast_loop(js, 1);
}

HOT static void fast8(Job *a, Job *b) {
    Job *js[2] = {a, b};
    fast_loop(js, 2);
}

/* The rest of a job's streams, one symbol at a time to their exact ends. */
static int job_finish(Job *j) {
    fast4(j);
    for (int k = 0; k < 4; k++)
        if (stream_tail(j->t, &j->b[k], j->op[k], j->oend[k]) < 0) return -1;
    return 0;
}

/* ------------------------------------------------------------------ frames */

/* One compressed block holding literals only, into dst (room for `room` bytes); returns the
 * bytes written, or -1 to decline. A block of 4 Huffman streams is opened into `job` (job->t
 * set) for the caller to decode, maybe with the next one; others are decoded here. `f`: the
 * frame's tables; a new one goes into the slot that the waiting job's is not. */
static Py_ssize_t literals_block(Frame *f, const uint8_t *src, Py_ssize_t size, uint8_t *dst,
                                 Py_ssize_t room, Py_ssize_t block_max, Job *job) {
    job->t = NULL;
    if (size < 2) return -1;
    int type = src[0] & 3, fmt = (src[0] >> 2) & 3;
    Py_ssize_t hsize, lit, csize = 0;
    int streams = 1;
    if (type < 2) { /* raw or RLE literals */
        if (fmt == 0 || fmt == 2) {
            hsize = 1;
            lit = src[0] >> 3;
        } else if (fmt == 1) {
            hsize = 2;
            lit = (src[0] >> 4) | (src[1] << 4);
        } else {
            if (size < 3) return -1;
            hsize = 3;
            lit = (src[0] >> 4) | (src[1] << 4) | ((Py_ssize_t)src[2] << 12);
        }
        csize = type == 0 ? lit : 1;
    } else {
        uint64_t h = 0;
        hsize = fmt < 2 ? 3 : fmt + 2;
        if (size < hsize) return -1;
        for (int i = 0; i < hsize; i++) h |= (uint64_t)src[i] << (8 * i);
        int bits = fmt < 2 ? 10 : fmt == 2 ? 14 : 18;
        streams = fmt == 0 ? 1 : 4;
        lit = (Py_ssize_t)((h >> 4) & ((1u << bits) - 1));
        csize = (Py_ssize_t)((h >> (4 + bits)) & ((1u << bits) - 1));
        if (streams == 4 && lit < 6) return -1;
    }
    if (lit > block_max || lit > room || hsize + csize > size) return -1;
    /* the sequences section: one byte, zero sequences, ending the block */
    if (hsize + csize + 1 != size || src[hsize + csize] != 0) return -1;
    const uint8_t *p = src + hsize;
    if (type == 0) {
        memcpy(dst, p, (size_t)lit);
    } else if (type == 1) {
        memset(dst, p[0], (size_t)lit);
    } else {
        if (lit == 0 || csize == 0) return -1;
        if (type == 2) {
            Table *t = f->busy == &f->slot[0] ? &f->slot[1] : &f->slot[0];
            Py_ssize_t th = read_table(t, p, csize);
            if (th < 0 || th >= csize) return -1;
            p += th;
            csize -= th;
            f->cur = t;
        } else if (f->cur == NULL) {
            return -1; /* treeless with no table before it */
        }
        if (streams == 1) {
            if (decode_1stream(f->cur, p, csize, dst, lit) < 0) return -1;
        } else if (job_open(job, f->cur, p, csize, dst, lit) < 0) {
            return -1;
        }
    }
    return lit;
}

/* A whole frame into dst[0:n]; 1 when decoded, 0 when declined (the caller runs zstd). Its
 * 4-stream blocks are decoded two at a time (fast8). */
static int decode_frame(Frame *f, const uint8_t *src, Py_ssize_t size, uint8_t *dst, Py_ssize_t n) {
    if (size < 6 || src[0] != 0x28 || src[1] != 0xB5 || src[2] != 0x2F || src[3] != 0xFD)
        return 0;
    int fhd = src[4], fcs_flag = fhd >> 6, single = (fhd >> 5) & 1;
    if ((fhd & 0x08) || (fhd & 0x04) || (fhd & 0x03)) return 0; /* reserved, checksum, dict */
    if (fcs_flag == 0 && !single) return 0;                        /* no content size */
    Py_ssize_t pos = 5;
    uint64_t window = 0;
    if (!single) {
        int wd = src[pos++], wlog = 10 + (wd >> 3);
        if (wlog > 27) return 0;
        window = (1ull << wlog) + ((1ull << wlog) / 8) * (uint64_t)(wd & 7);
    }
    int fcs_size = fcs_flag == 0 ? 1 : fcs_flag == 1 ? 2 : fcs_flag == 2 ? 4 : 8;
    if (pos + fcs_size > size) return 0;
    uint64_t fcs = 0;
    for (int i = 0; i < fcs_size; i++) fcs |= (uint64_t)src[pos + i] << (8 * i);
    if (fcs_size == 2) fcs += 256;
    pos += fcs_size;
    if (single) window = fcs;
    if (fcs != (uint64_t)n || n == 0 || window > WINDOW_MAX) return 0;
    Py_ssize_t block_max = window < ZBLOCK_MAX ? (Py_ssize_t)window : ZBLOCK_MAX;
    Py_ssize_t out = 0;
    f->cur = NULL;
    f->busy = NULL; /* set while jobs[0] is opened and waits for a second one */
    Job jobs[2];
    for (;;) {
        if (pos + 3 > size) return 0;
        uint32_t bh = src[pos] | (src[pos + 1] << 8) | ((uint32_t)src[pos + 2] << 16);
        pos += 3;
        int last = bh & 1, type = (bh >> 1) & 3;
        Py_ssize_t bsize = bh >> 3;
        if (type == 3 || bsize > block_max) return 0;
        if (type == 1) {
            if (pos + 1 > size || bsize > n - out) return 0;
            memset(dst + out, src[pos], (size_t)bsize);
            pos += 1;
            out += bsize;
        } else {
            if (pos + bsize > size) return 0;
            if (type == 0) {
                if (bsize > n - out) return 0;
                memcpy(dst + out, src + pos, (size_t)bsize);
                out += bsize;
            } else {
                Job *job = &jobs[f->busy != NULL];
                Py_ssize_t r = literals_block(f, src + pos, bsize, dst + out, n - out, block_max, job);
                if (r < 0) return 0;
                out += r;
                if (job->t != NULL && f->busy != NULL) {
                    if (jobs[0].t == jobs[1].t) fast8(&jobs[0], &jobs[1]);
                    if (job_finish(&jobs[0]) < 0 || job_finish(&jobs[1]) < 0) return 0;
                    f->busy = NULL;
                } else if (job->t != NULL) {
                    f->busy = job->t;
                }
            }
            pos += bsize;
        }
        if (last) break;
    }
    if (f->busy != NULL && job_finish(&jobs[0]) < 0) return 0;
    return pos == size && out == n;
}

/* decode_frame for other C files (byte_planes.c): 1 decoded, 0 declined (dst holds garbage).
 * Call without the GIL. */
int huf_literals_into(const uint8_t *src, Py_ssize_t size, uint8_t *dst, Py_ssize_t n) {
    Frame *f = PyMem_RawMalloc(sizeof(Frame));
    if (f == NULL) return 0;
    int ok = decode_frame(f, src, size, dst, n);
    PyMem_RawFree(f);
    return ok;
}

/* huf_literals(dst, frame) -> bool: decode a literal-only zstd frame into dst (writable, the
 * frame's exact content size); False: declined (dst holds garbage), decode it with zstd. */
PyObject *py_huf_literals(PyObject *self, PyObject *args) {
    Buf dst, src;
    if (get_dst_src(args, &dst, &src, "frame") < 0) return NULL;
    int ok = 0;
    Frame *f = PyMem_RawMalloc(sizeof(Frame));
    if (f == NULL) {
        release(&src);
        release(&dst);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    ok = decode_frame(f, src.view.buf, src.view.len, dst.view.buf, dst.view.len);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(f);
    release(&src);
    release(&dst);
    return PyBool_FromLong(ok);
}
