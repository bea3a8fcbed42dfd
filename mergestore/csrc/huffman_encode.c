/* An encoder of our own for the literal-only zstd frames of the `h` byte planes (every byte a
 * Huffman-coded literal, no sequences). Python twin: zstd's ZSTD_compressSequencesAndLiterals
 * (store/codecs/huffman.py), which the caller runs whenever this one declines.
 *
 * Why: zstd counts a histogram and builds a table for every 128 KiB block, ~45% of its literal
 * encode time on this store's planes (0.8-1.05 GB/s in all on one core here; this encoder
 * 1.45-1.7 GB/s). Here one table serves the plane: it comes from the strided sample the
 * plane's plan already counted (byteplane._plan_plane), every byte between the plane's
 * smallest and largest counted once more, so that any byte of the plane has a code (a sample
 * of 8 K misses some in nearly every plane: ~8 of the ~20 an XOR exponent plane holds, ~100
 * of a mantissa plane's 256). The first block carries the table, the others are treeless
 * blocks that reuse it (RFC 8878 3.1.1.3.1.1). The cost: frames ~1% larger than zstd's (the
 * sample's estimate, and code space for bytes that never come). They are ordinary zstd
 * frames: any zstd decodes them (tests/codecs/test_huffman_encode.py checks with zstd's).
 *
 * The frame: a single-segment header with the content size; blocks of 128 KiB, each compressed
 * (literals in 4 streams, zero sequences) or, where that would not be smaller, raw.
 */
#include "native.h"

#define HE_MAXBITS 11        /* longest code, as zstd's encoder limits literals */
#define HE_BLOCK (1 << 17)   /* zstd's largest block */
#define HE_MIN_LIT 1024      /* smaller blocks are stored raw */
#define HE_MAX_FRAME (1 << 27) /* single-segment frames within zstd's default window limit */
#define FSE_LOG 6            /* table log of the FSE-coded weights (zstd allows 5-6) */

typedef struct {
    uint16_t code;
    uint8_t nb;
} Code;

static inline int top_bit(uint32_t v) { return 31 - __builtin_clz(v); } /* v > 0 */

/* ------------------------------------------------------------------ code lengths */

/* Huffman code lengths of the symbols whose count is > 0 (at least 2 of them; the others get
 * 0), at most HE_MAXBITS, forming a complete code (Kraft sum exactly 1, as zstd's weights
 * need); 0, or -1 if it cannot. */
static int code_lengths(uint8_t *len, const uint64_t *count) {
    int order[256], m = 0; /* present symbols by count, ascending (ties by symbol) */
    for (int s = 0; s < 256; s++) {
        len[s] = 0;
        if (!count[s]) continue;
        int j = m++;
        while (j > 0 && count[order[j - 1]] > count[s]) { /* insertion sort */
            order[j] = order[j - 1];
            j--;
        }
        order[j] = s;
    }
    if (m < 2) return -1;
    /* the two-queue construction: leaves 0..m-1 (sorted), internal nodes m..2m-2 */
    uint64_t w[511];
    int parent[511];
    for (int i = 0; i < m; i++) w[i] = count[order[i]];
    int leaf = 0, head = m, root = 2 * m - 2;
    for (int k = m; k <= root; k++) {
        int pick[2];
        for (int t = 0; t < 2; t++) {
            if (leaf < m && (head >= k || w[leaf] <= w[head]))
                pick[t] = leaf++;
            else
                pick[t] = head++;
        }
        w[k] = w[pick[0]] + w[pick[1]];
        parent[pick[0]] = parent[pick[1]] = k;
    }
    int depth[511];
    depth[root] = 0;
    for (int k = root - 1; k >= 0; k--) depth[k] = depth[parent[k]] + 1;
    /* limit to HE_MAXBITS: clip, then lengthen the rarest codes below the limit until the
     * Kraft sum fits, then shorten the commonest codes while it stays within 1 */
    const int64_t full = (int64_t)1 << HE_MAXBITS;
    int64_t kraft = 0;
    for (int i = 0; i < m; i++) {
        if (depth[i] > HE_MAXBITS) depth[i] = HE_MAXBITS;
        kraft += full >> depth[i];
    }
    while (kraft > full) {
        int i = 0;
        while (i < m && depth[i] >= HE_MAXBITS) i++;
        if (i == m) return -1;
        depth[i]++;
        kraft -= full >> depth[i];
    }
    for (int i = m - 1; i >= 0; i--)
        while (depth[i] > 1 && kraft + (full >> depth[i]) <= full) {
            kraft += full >> depth[i];
            depth[i]--;
        }
    if (kraft != full) return -1;
    for (int i = 0; i < m; i++) len[order[i]] = (uint8_t)depth[i];
    return 0;
}

/* ------------------------------------------------------------------ FSE-coded weights */

typedef struct {
    uint8_t *p;
    uint64_t acc;
    int bits;
} BitOut;

static inline void bits_add(BitOut *o, uint64_t v, int n) {
    o->acc |= (v & (((uint64_t)1 << n) - 1)) << o->bits;
    o->bits += n;
}

static inline void bits_flush(BitOut *o) { /* whole bytes out; at most 7 bits stay */
    int nb = o->bits >> 3;
    uint64_t a = o->acc;
    memcpy(o->p, &a, 8);
    o->p += nb;
    o->acc = nb == 8 ? 0 : a >> (8 * nb);
    o->bits &= 7;
}

/* The closing marker bit and the last partial byte; returns the end. */
static inline uint8_t *bits_close(BitOut *o) {
    bits_add(o, 1, 1);
    bits_flush(o);
    return o->p + (o->bits > 0);
}

/* The Huffman weights (RFC 8878 4.2.1.2) of symbols 0..n-1 (the last symbol's, n, is implied)
 * FSE-coded with a table of log FSE_LOG, into dst; returns the bytes written, or -1. */
static int fse_weights_encode(uint8_t *dst, const uint8_t *wt, int n) {
    int cnt[16] = {0}, max_w = 0, distinct = 0;
    for (int i = 0; i < n; i++) {
        distinct += !cnt[wt[i]]++;
        if (wt[i] > max_w) max_w = wt[i];
    }
    if (n < 2 || distinct < 2) return -1; /* zstd writes these directly (4 bits each) */
    const int size = 1 << FSE_LOG;
    int16_t norm[16] = {0};
    int sum = 0, largest = 0;
    for (int v = 0; v <= max_w; v++) {
        if (!cnt[v]) continue;
        int q = (cnt[v] * size + n / 2) / n;
        norm[v] = (int16_t)(q < 1 ? 1 : q);
        sum += norm[v];
        if (cnt[v] > cnt[largest]) largest = v;
    }
    norm[largest] = (int16_t)(norm[largest] + size - sum);
    if (norm[largest] < 1) return -1;
    /* the table description (FSE_writeNCount) */
    BitOut o = {dst, 0, 0};
    bits_add(&o, FSE_LOG - 5, 4);
    int remaining = size + 1, threshold = size, nbits = FSE_LOG + 1, prev0 = 0, s = 0;
    while (s <= max_w && remaining > 1) {
        if (prev0) {
            int start = s;
            while (s <= max_w && !norm[s]) s++;
            while (s >= start + 3) {
                start += 3;
                bits_add(&o, 3, 2);
                bits_flush(&o);
            }
            bits_add(&o, (uint64_t)(s - start), 2);
            bits_flush(&o);
        }
        int c = norm[s++], mx = (2 * threshold - 1) - remaining;
        remaining -= c;
        c++;
        if (c >= threshold) c += mx;
        bits_add(&o, (uint64_t)c, nbits - (c < mx));
        bits_flush(&o);
        prev0 = c == 1;
        if (remaining < 1) return -1;
        while (remaining < threshold) {
            nbits--;
            threshold >>= 1;
        }
    }
    if (remaining != 1) return -1;
    uint8_t *table_end = o.p + (o.bits > 0);
    /* the encoding table (FSE_buildCTable) */
    uint8_t spread[1 << FSE_LOG];
    int step = (size >> 1) + (size >> 3) + 3, pos = 0;
    for (int v = 0; v <= max_w; v++)
        for (int k = 0; k < norm[v]; k++) {
            spread[pos] = (uint8_t)v;
            pos = (pos + step) & (size - 1);
        }
    if (pos != 0) return -1;
    int cumul[17];
    cumul[0] = 0;
    for (int v = 0; v <= max_w; v++) cumul[v + 1] = cumul[v] + norm[v];
    uint16_t state_table[1 << FSE_LOG];
    for (int u = 0; u < size; u++) state_table[cumul[spread[u]]++] = (uint16_t)(size + u);
    uint32_t delta_nb[16];
    int delta_find[16], total = 0;
    for (int v = 0; v <= max_w; v++) {
        if (norm[v] == 0) continue;
        if (norm[v] == 1) {
            delta_nb[v] = ((uint32_t)FSE_LOG << 16) - size;
            delta_find[v] = total - 1;
            total++;
        } else {
            int max_out = FSE_LOG - top_bit((uint32_t)norm[v] - 1);
            delta_nb[v] = ((uint32_t)max_out << 16) - ((uint32_t)norm[v] << max_out);
            delta_find[v] = total - norm[v];
            total += norm[v];
        }
    }
    /* the weights, last first, over two states (FSE_compress_usingCTable): weight i goes to
     * state 1 when i is even, state 2 when odd; the first two coded only set their state */
    o.p = table_end;
    o.acc = 0;
    o.bits = 0;
    uint32_t state[2] = {0, 0};
    for (int i = n - 1; i >= 0; i--) {
        int v = wt[i], k = i & 1;
        if (i >= n - 2) {
            uint32_t nb_out = (delta_nb[v] + (1 << 15)) >> 16;
            uint32_t val = (nb_out << 16) - delta_nb[v];
            state[k] = state_table[(val >> nb_out) + delta_find[v]];
        } else {
            uint32_t nb_out = (state[k] + delta_nb[v]) >> 16;
            bits_add(&o, state[k], (int)nb_out);
            bits_flush(&o);
            state[k] = state_table[(state[k] >> nb_out) + delta_find[v]];
        }
    }
    bits_add(&o, state[1], FSE_LOG);
    bits_flush(&o);
    bits_add(&o, state[0], FSE_LOG);
    bits_flush(&o);
    uint8_t *end = bits_close(&o);
    return (int)(end - dst);
}

/* A Huffman table: each symbol's code (nb 0: not in the table) and its description. */
typedef struct {
    Code codes[256];
    uint8_t desc[256]; /* header byte + weights: < 128 + 8 bytes of slack, or 1 + 64 */
    int size;          /* of desc */
    int sent;          /* desc is in the frame already: blocks may reuse it (treeless) */
} HufTable;

/* The table of these code lengths: its description (RFC 8878 4.2.1: FSE-coded weights, or 4
 * bits each where that fails) and each symbol's canonical code, as zstd's decoder assigns
 * them (weight 1 first, symbols in order). Returns 0, or -1. */
static int huffman_table(HufTable *t, const uint8_t *len) {
    int max_len = 0, last = 0;
    for (int s = 0; s < 256; s++)
        if (len[s]) {
            last = s;
            if (len[s] > max_len) max_len = len[s];
        }
    uint8_t wt[256];
    uint32_t rank[HE_MAXBITS + 2] = {0};
    for (int s = 0; s < 256; s++) {
        wt[s] = len[s] ? (uint8_t)(max_len + 1 - len[s]) : 0;
        rank[wt[s]]++;
    }
    int size = fse_weights_encode(t->desc + 1, wt, last);
    if (size >= 2 && size < 128) {
        t->desc[0] = (uint8_t)size;
        t->size = size + 1;
    } else if (last <= 128) { /* direct: header 127 + count, then two weights per byte */
        t->desc[0] = (uint8_t)(127 + last);
        for (int i = 0; i < last; i += 2)
            t->desc[1 + i / 2] = (uint8_t)(wt[i] << 4 | (i + 1 < last ? wt[i + 1] : 0));
        t->size = 1 + (last + 1) / 2;
    } else {
        return -1;
    }
    uint32_t start[HE_MAXBITS + 2], pos = 0;
    for (int k = 1; k <= max_len; k++) {
        start[k] = pos;
        pos += rank[k] << (k - 1);
    }
    for (int s = 0; s < 256; s++) {
        int k = wt[s];
        t->codes[s].nb = len[s];
        t->codes[s].code = 0;
        if (!k) continue;
        t->codes[s].code = (uint16_t)(start[k] >> (k - 1));
        start[k] += 1u << (k - 1);
    }
    t->sent = 0;
    return 0;
}

/* The table of these counts: the symbols counted (and one more where only one was). Returns
 * 0, or -1. */
static int table_of_counts(HufTable *t, const uint64_t *counts) {
    uint64_t count[256];
    int present = 0;
    for (int s = 0; s < 256; s++) present += (count[s] = counts[s]) > 0;
    for (int s = 0; present < 2; s++) present += !count[s] && (count[s] = 1);
    uint8_t len[256];
    if (code_lengths(len, count) < 0) return -1;
    return huffman_table(t, len);
}

/* ------------------------------------------------------------------ Huffman streams */

/* One code into a stream's bit container (acc, bits). */
#define PUT(acc, bits, sym)                  \
    do {                                     \
        Code c_ = codes[sym];                \
        acc |= (uint64_t)c_.code << (bits); \
        bits += c_.nb;                       \
    } while (0)

/* The container's whole bytes out at p (8 bytes stored: the destination has slack). */
#define FLUSH(p, acc, bits)         \
    do {                            \
        memcpy(p, &(acc), 8);       \
        p += (bits) >> 3;           \
        acc >>= (bits) & ~7;        \
        bits &= 7;                  \
    } while (0)

/* src[0:n] as one Huffman stream (read backward by the decoder, so coded last symbol first)
 * at dst, which has room for n * HE_MAXBITS / 8 + 16 bytes; returns its size. */
HOT static Py_ssize_t huffman_stream(uint8_t *dst, const uint8_t *src, Py_ssize_t n,
                                     const Code *codes) {
    uint8_t *p = dst;
    uint64_t acc = 0;
    int bits = 0;
    Py_ssize_t i = n;
    for (; i >= 4; i -= 4) { /* 4 codes of at most 11 bits on at most 7 bits: 51 bits */
        PUT(acc, bits, src[i - 1]);
        PUT(acc, bits, src[i - 2]);
        PUT(acc, bits, src[i - 3]);
        PUT(acc, bits, src[i - 4]);
        FLUSH(p, acc, bits);
    }
    for (; i > 0; i--) PUT(acc, bits, src[i - 1]);
    BitOut o = {p, acc, bits};
    bits_flush(&o);
    return bits_close(&o) - dst;
}

/* One pair's codes into a stream's bit container (an entry of pair_table). */
#define PUT2(acc, bits, e)                          \
    do {                                            \
        uint32_t e_ = (e);                          \
        acc |= (uint64_t)(e_ & 0x3FFFFF) << (bits); \
        bits += (int)(e_ >> 27);                    \
    } while (0)

/* Two streams at once, two codes a lookup: src0[0:n0] and src1[0:n1] (n1 <= n0 <= n1 + 3)
 * into their own rooms, the same bits as huffman_stream gives each. One stream is a chain of
 * dependent shifts and adds that leaves the core waiting; the pairs halve its links and the
 * second stream fills the wait (planes of this store: 1.15-1.5x huffman_stream). */
HOT static void huffman_2streams_pairs(uint8_t *dst0, uint8_t *dst1, const uint8_t *src0,
                                       const uint8_t *src1, Py_ssize_t n0, Py_ssize_t n1,
                                       const Code *codes, const uint32_t *pairs,
                                       Py_ssize_t *size0, Py_ssize_t *size1) {
    uint8_t *p0 = dst0, *p1 = dst1;
    uint64_t a0 = 0, a1 = 0;
    int b0 = 0, b1 = 0;
    Py_ssize_t i = n0;
    for (; i > n1; i--) PUT(a0, b0, src0[i - 1]);
    FLUSH(p0, a0, b0);
    for (; i >= 4; i -= 4) { /* 2 pairs of at most 22 bits on at most 7 bits: 51 bits */
        uint16_t x0, y0, x1, y1;
        memcpy(&x0, src0 + i - 2, 2);
        memcpy(&y0, src0 + i - 4, 2);
        memcpy(&x1, src1 + i - 2, 2);
        memcpy(&y1, src1 + i - 4, 2);
        PUT2(a0, b0, pairs[x0]);
        PUT2(a1, b1, pairs[x1]);
        PUT2(a0, b0, pairs[y0]);
        PUT2(a1, b1, pairs[y1]);
        FLUSH(p0, a0, b0);
        FLUSH(p1, a1, b1);
    }
    for (; i > 0; i--) {
        PUT(a0, b0, src0[i - 1]);
        PUT(a1, b1, src1[i - 1]);
    }
    BitOut o0 = {p0, a0, b0}, o1 = {p1, a1, b1};
    bits_flush(&o0);
    bits_flush(&o1);
    *size0 = bits_close(&o0) - dst0;
    *size1 = bits_close(&o1) - dst1;
}

#undef PUT
#undef PUT2
#undef FLUSH

/* The code pairs of the bytes lo..hi (every byte of the plane): entry [x | y << 8] is y's
 * code (the byte at the higher address, coded first) with x's above it, in bits 0-21, and
 * their length in bits 27-31. */
HOT static void pair_table(uint32_t *pairs, const Code *codes, int lo, int hi) {
    uint32_t code[256], nb[256]; /* unpacked, and whole rows: the inner loop vectorizes */
    for (int x = 0; x < 256; x++) {
        code[x] = codes[x].code;
        nb[x] = (uint32_t)codes[x].nb << 27;
    }
    for (int y = lo; y <= hi; y++) {
        uint32_t cy = code[y] | nb[y], shift = codes[y].nb, *row = pairs + (y << 8);
        for (int x = 0; x < 256; x++) row[x] = cy + (code[x] << shift) + nb[x];
    }
}

/* The 4 streams of a block's lit literals (RFC 8878 4.2.2: segments of (lit + 3) / 4, the last
 * one shorter) at dst, one after the other; sizes[k] gets each one's size. Returns their
 * total. With `pairs` (pair_table), two streams at a time, each into a room of its own, then
 * moved together. */
static Py_ssize_t huffman_4streams(uint8_t *dst, const uint8_t *src, Py_ssize_t lit,
                                   const Code *codes, const uint32_t *pairs, Py_ssize_t *sizes) {
    Py_ssize_t seg = (lit + 3) / 4, last = lit - 3 * seg;
    uint8_t *q = dst;
    if (pairs) {
        Py_ssize_t room = seg * HE_MAXBITS / 8 + 16; /* huffman_stream's bound */
        uint8_t *at[4] = {dst, dst + room, dst + 2 * room, dst + 3 * room};
        huffman_2streams_pairs(at[0], at[1], src, src + seg, seg, seg, codes, pairs, &sizes[0],
                               &sizes[1]);
        huffman_2streams_pairs(at[2], at[3], src + 2 * seg, src + 3 * seg, seg, last, codes,
                               pairs, &sizes[2], &sizes[3]);
        for (int k = 0; k < 4; k++) {
            memmove(q, at[k], (size_t)sizes[k]); /* q <= at[k]: k rooms hold k streams */
            q += sizes[k];
        }
        return q - dst;
    }
    for (int k = 0; k < 4; k++) {
        sizes[k] = huffman_stream(q, src + k * seg, k < 3 ? seg : last, codes);
        q += sizes[k];
    }
    return q - dst;
}

/* ------------------------------------------------------------------ frames */

static inline void put24(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
}

/* Room a frame of n literals may need (huffman_stream's slack included). */
static Py_ssize_t frame_bound(Py_ssize_t n) { return n + n / 2 + 4096; }

/* One compressed block of lit literals at body (the literals header, the table if t's is not
 * in the frame yet, the jump table and 4 streams, zero sequences); returns its size, or 0 if
 * it would not be smaller than lit. */
static Py_ssize_t compressed_block(uint8_t *body, const uint8_t *src, Py_ssize_t lit, HufTable *t,
                                   const uint32_t *pairs) {
    uint8_t *q = body + 5; /* after the literals header */
    if (!t->sent) {
        memcpy(q, t->desc, (size_t)t->size);
        q += t->size;
    }
    uint8_t *jump = q;
    Py_ssize_t sizes[4];
    q += 6 + huffman_4streams(q + 6, src, lit, t->codes, pairs, sizes);
    Py_ssize_t csize = q - (body + 5);
    if (sizes[0] >= 65536 || sizes[1] >= 65536 || sizes[2] >= 65536 || 5 + csize + 1 >= lit)
        return 0;
    for (int k = 0; k < 3; k++) {
        jump[2 * k] = (uint8_t)sizes[k];
        jump[2 * k + 1] = (uint8_t)(sizes[k] >> 8);
    }
    /* literals header: type (2 with a table, 3 treeless), size format 3 (4 streams, 18-bit
     * sizes), regenerated and compressed sizes */
    uint64_t h = (uint64_t)(t->sent ? 3 : 2) | (3u << 2) | ((uint64_t)lit << 4) |
                 ((uint64_t)csize << 22);
    for (int i = 0; i < 5; i++) body[i] = (uint8_t)(h >> (8 * i));
    *q++ = 0; /* zero sequences */
    t->sent = 1;
    return q - body;
}

/* The literal-only frame of src[0:n] into dst, its one table made of `counts` (every byte of
 * src, all between lo and hi, must have one); returns its size, or -1. `use_pairs` 1: code
 * pairs (pair_table), 0: one code a lookup, -1: pairs where range^2 <= n / 4, the pairs of
 * the plane's range no more than a quarter of its bytes (the table, range rows of 256 entries
 * filled 8 at a time, costs a few us against a plane's encode). The frame is the same either
 * way. */
static Py_ssize_t encode_frame(uint8_t *dst, const uint8_t *src, Py_ssize_t n,
                               const uint64_t *counts, int lo, int hi, int use_pairs) {
    HufTable table, *t = &table;
    if (table_of_counts(t, counts) < 0) return -1;
    uint32_t *pairs = NULL;
    Py_ssize_t range = hi - lo + 1;
    if (use_pairs < 0) use_pairs = range * range <= n / 4;
    if (use_pairs && (pairs = PyMem_RawMalloc(sizeof(uint32_t) << 16)) != NULL)
        pair_table(pairs, t->codes, lo, hi);
    uint8_t *p = dst;
    const uint8_t magic[4] = {0x28, 0xB5, 0x2F, 0xFD};
    memcpy(p, magic, 4);
    p += 4;
    if (n < 65536 + 256) { /* single segment, 2-byte content size (minus 256) */
        *p++ = 0x60;
        *p++ = (uint8_t)(n - 256);
        *p++ = (uint8_t)((n - 256) >> 8);
    } else { /* single segment, 4-byte content size */
        *p++ = 0xA0;
        for (int i = 0; i < 4; i++) *p++ = (uint8_t)((uint64_t)n >> (8 * i));
    }
    for (Py_ssize_t off = 0; off < n; off += HE_BLOCK) {
        Py_ssize_t lit = n - off < HE_BLOCK ? n - off : HE_BLOCK, bsize = 0;
        int last = off + lit == n;
        uint8_t *bh = p, *body = p + 3;
        if (lit >= HE_MIN_LIT) bsize = compressed_block(body, src + off, lit, t, pairs);
        if (bsize > 0) {
            put24(bh, (uint32_t)last | (2u << 1) | ((uint32_t)bsize << 3));
        } else { /* raw block */
            memcpy(body, src + off, (size_t)lit);
            bsize = lit;
            put24(bh, (uint32_t)last | ((uint32_t)bsize << 3));
        }
        p = body + bsize;
    }
    PyMem_RawFree(pairs);
    return p - dst;
}

/* The smallest and largest byte of src[0:n] (n > 0): only they and the bytes between them get
 * codes (a vectorized pass, ~40 us per 512 KiB). */
HOT static void byte_range(const uint8_t *src, Py_ssize_t n, int *lo, int *hi) {
    uint8_t mn = 255, mx = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        mn = src[i] < mn ? src[i] : mn;
        mx = src[i] > mx ? src[i] : mx;
    }
    *lo = mn;
    *hi = mx;
}

/* huf_encode(dst, src, counts, pairs=-1) -> int: the literal-only zstd frame of src (uint8)
 * into dst (writable uint8, at least huf_bound(len(src)) bytes), coded with a table built from
 * `counts` (256 int64, a sample's histogram; each byte between src's smallest and largest is
 * counted once more, so that each of src's bytes has a code). Returns the frame's size, or
 * -1: declined (too small or too large a plane, or no table that zstd takes), so run zstd.
 * `pairs`: encode_frame's use_pairs (for tests: the frame does not depend on it). */
PyObject *py_huf_encode(PyObject *self, PyObject *args) {
    PyObject *dst_o, *src_o, *cnt_o;
    int use_pairs = -1;
    if (!PyArg_ParseTuple(args, "OOO|i", &dst_o, &src_o, &cnt_o, &use_pairs)) return NULL;
    Buf dst, src, cnt;
    if (get_buf(dst_o, &dst, 1, 1, "dst") < 0) return NULL;
    if (get_buf(src_o, &src, 0, 1, "src") < 0) {
        release(&dst);
        return NULL;
    }
    if (get_buf(cnt_o, &cnt, 0, 8, "counts") < 0) {
        release(&src);
        release(&dst);
        return NULL;
    }
    Py_ssize_t n = src.view.len, size = -1;
    if (cnt.view.len != 256 * 8 || dst.view.len < frame_bound(n)) {
        release(&cnt);
        release(&src);
        release(&dst);
        PyErr_SetString(PyExc_ValueError, "huf_encode: 256 counts, and huf_bound(n) bytes out");
        return NULL;
    }
    if (n >= HE_MIN_LIT && n <= HE_MAX_FRAME) {
        Py_BEGIN_ALLOW_THREADS
        uint64_t count[256];
        const int64_t *c = cnt.view.buf;
        int lo, hi;
        byte_range(src.view.buf, n, &lo, &hi);
        for (int s = 0; s < 256; s++) /* clamped: 256 of them sum without overflow */
            count[s] = s < lo || s > hi ? 0
                       : (uint64_t)(c[s] < 0 ? 0 : c[s] > (1ll << 40) ? (1ll << 40) : c[s]) + 1;
        size = encode_frame(dst.view.buf, src.view.buf, n, count, lo, hi, use_pairs);
        Py_END_ALLOW_THREADS
    }
    release(&cnt);
    release(&src);
    release(&dst);
    return PyLong_FromSsize_t(size);
}

/* huf_bound(n) -> int: the dst size huf_encode needs for n bytes. */
PyObject *py_huf_bound(PyObject *self, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "huf_bound: n < 0");
        return NULL;
    }
    return PyLong_FromSsize_t(frame_bound(n));
}
