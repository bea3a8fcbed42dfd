"""Float-aware byte planes: rotate each word, split it into byte planes, code each plane alone.

Why: in a float the exponent bits are highly skewed (weights cluster around a few binades)
while the low mantissa bits are close to uniform. Mixed together in one byte stream, zstd can
only reach ~0.78x on bf16. Split apart, the exponent plane entropy-codes to ~1/3 and the
mantissa planes are stored raw, which is cheap both ways.

Rotation: rotating each word left by `rot` bits moves the sign bit to the bottom. For bf16
(s eeeeeeee mmmmmmm) a rotation by 1 makes the high byte exactly the 8-bit exponent and the low
byte mantissa+sign (ZipNN's trick). For fp32 the top byte is the exponent, the next one the top
mantissa bits. For fp16 (s eeeee mmmmmmmmmm) the high byte becomes 5 exponent bits + the top 3
mantissa bits, which are still skewed and so worth keeping with the exponent.

Each plane is coded as ``h`` (a zstd frame of Huffman-coded literals only, see huffman.py),
``z<level>`` (a regular zstd frame), ``s`` (a plane of almost only zero bytes as its non-zero
bytes and their gaps, see sparse.py; store format 3) or ``r`` (stored raw), decided per block and
recorded in the spec, e.g. ``bplane:w=2,rot=1,planes=r.h`` (planes listed low byte first). ``h``
and ``z`` decode the same way; the code records how the frame was made.

Payload: u64 LE raw length n, then one u32 LE stored length per plane, the plane segments in
order, then the n % w tail bytes that do not fill a whole word, raw.
"""

from __future__ import annotations

import struct
import threading
from typing import ClassVar

from mergestore import native
from mergestore.fast_dataclass import dataclass
from mergestore.lazy_numpy import np  # numpy is imported on first use

from . import sparse, zstd
from .base import MAX_DECODED_BYTES, Buffer, Stage, corrupt, parse_int, parse_params
from .huffman import (
    LITERAL_SLACK,
    compress_literals,
    decompress_literals_into,
    sample_counts,
    sample_step,
)
from .xordelta import xor_bytes

# A plane is stored compressed only if that saves at least this fraction of it.
PLANE_MIN_SAVING = 0.02
# A plane with at least this fraction of zero bytes is coded sparse ("s"; zstd at levels above
# FAST_LEVELS_UP_TO) instead of by literal-only coding, whose Huffman code cannot go below 1 bit
# per byte. The threshold was set for zstd, 2.5x slower than literals both ways (sparse.py is
# faster than both). Measured on XOR deltas of bf16 planes:
# 0.99 zeros: zstd-1 0.018 vs literals 0.127; 0.92 zeros: 0.140 vs 0.150 but zstd 2.5x slower
# both ways; 0.78 zeros: 0.291 vs 0.236. At 0.95 zeros (a heavy fine-tune's sign+exponent
# plane): 0.095 vs 0.141, but zstd took 1.6x the time; raised from 0.95 to 0.97 for speed
# (about +0.02 on such a delta's ratio, nothing on light ones, whose planes are 0.99+ zeros).
SPARSE_ZERO_FRACTION = 0.97
# A plane whose sampled order-0 entropy is at least this many bits per byte is stored raw
# without trying: a Huffman code could save at most ~2% (the sample estimate runs ~0.05 bit low).
RAW_ENTROPY_BITS = 7.8
# A sparse plane ("s", store/codecs/sparse.py) larger than this fraction of the plane is coded
# by zstd-1 instead: its sample had missed non-zero bytes (zstd's matches code dense stretches
# in less than the 2 bytes per non-zero byte "s" takes).
SPARSE_MAX_SIZE = 0.125
# Requested zstd levels up to this code sparse planes as "s" (zstd levels 2-3 came out no
# smaller than level 1 on XOR planes: 0.0178 vs 0.0180, 0.140 vs 0.140, and ~30% slower).
# Higher levels are honoured with zstd.
FAST_LEVELS_UP_TO = 3

_WORD = {1: "<u1", 2: "<u2", 4: "<u4", 8: "<u8"}  # numpy dtypes of little-endian words
_N = struct.Struct("<Q")
_SPLIT = {2: "split2", 4: "split4"}  # the C kernels of split_planes by word width
_WHOLE = {2: "bplane16_into", 4: "bplane32_into"}  # and of a whole block's decode
_tls = threading.local()  # per-thread plane buffers of decode_into (reused: pages already in)


def _plane_buffer(i: int, n: int, scratch: bool) -> np.ndarray:
    """A writable uint8 array of n bytes for plane i: this thread's reused buffer when the
    caller is done with the planes before it decodes again (`scratch`), else a fresh one."""
    if not scratch:
        return np.empty(n, dtype=np.uint8)
    bufs = getattr(_tls, "planes", None)
    if bufs is None:
        bufs = _tls.planes = {}
    buf = bufs.get(i)
    if buf is None or len(buf) < n:
        buf = bufs[i] = np.empty(max(n, 1 << 19), dtype=np.uint8)
    return buf[:n]


def _plane_code_ok(code: str) -> bool:
    if code in ("r", "h", "s"):
        return True
    if code.startswith("z"):
        try:
            parse_int(code[1:], zstd.MIN_LEVEL, zstd.MAX_LEVEL)
        except ValueError:
            return False
        return True
    return False


def split_planes(body: Buffer, width: int, rot: int, reference: Buffer | None = None) -> np.ndarray:
    """Rotate each little-endian word of `body` (XORed with `reference`, if given) left by
    `rot`; return its byte planes as rows.

    Row i holds byte i of every rotated word, followed by LITERAL_SLACK spare bytes (so the
    literal-only compressor can read past the end without a copy): use ``rows[i, :n_words]``.
    For 16- and 32-bit words the C kernels `split2` and `split4` do the XOR, rotation and
    split in one pass.
    """
    words = np.frombuffer(body, dtype=_WORD[width])
    n_words = len(words)
    rows = np.empty((width, n_words + LITERAL_SLACK), dtype=np.uint8)
    split = _SPLIT.get(width) if native.kernels is not None else None
    if split is not None:
        ref = None if reference is None else np.frombuffer(reference, dtype=_WORD[width])
        getattr(native.kernels, split)(rows, words, rot, ref)  # one pass, GIL released
        return rows
    if reference is not None:
        words = words ^ np.frombuffer(reference, dtype=_WORD[width])
    if width == 2 and rot <= 8:
        # Truncating casts into the rows and in-place shifts: ~3x faster than strided column
        # copies, and no temporaries beyond one scratch array.
        tmp = np.empty(n_words, dtype=np.uint16)
        if rot == 0:
            np.copyto(rows[0, :n_words], words, casting="unsafe")
        else:
            np.left_shift(words, rot, out=tmp)
            np.copyto(rows[0, :n_words], tmp, casting="unsafe")  # low byte of word << rot
            np.right_shift(words, 16 - rot, out=tmp)
            np.bitwise_or(rows[0, :n_words], tmp, out=rows[0, :n_words], casting="unsafe")
        np.right_shift(words, 8 - rot, out=tmp)
        np.copyto(rows[1, :n_words], tmp, casting="unsafe")  # bits 8-15 of the rotated word
        return rows
    if rot:
        words = (words << rot) | (words >> (8 * width - rot))
    if width == 1:
        rows[0, :n_words] = words
    else:
        as_bytes = words.astype(_WORD[width], copy=False).view(np.uint8).reshape(-1, width)
        for i in range(width):
            rows[i, :n_words] = as_bytes[:, i]
    return rows


def join_planes(planes: list[np.ndarray], width: int, rot: int) -> np.ndarray:
    """Inverse of `split_planes`: interleave the planes and rotate right; returns the words."""
    if width == 1:
        words = planes[0]
    elif width == 2 and native.kernels is not None:
        words = np.empty(len(planes[0]), dtype=np.uint16)
        native.kernels.join2(words, planes[0], planes[1], rot, None)  # one pass, GIL released
        return words
    elif width == 4 and native.kernels is not None:
        words = np.empty(len(planes[0]), dtype=np.uint32)
        native.kernels.join4(words, *planes, rot, None)  # one pass, GIL released
        return words
    elif width == 2 and rot <= 8:
        lo, hi = planes
        words = np.empty(len(lo), dtype=np.uint16)
        np.copyto(words, hi)
        np.left_shift(words, 8 - rot, out=words)  # hi back to bits 8-rot .. 15-rot
        if rot == 0:
            np.bitwise_or(words, lo, out=words)
            return words
        tmp = np.empty(len(lo), dtype=np.uint16)
        np.copyto(tmp, lo)
        np.bitwise_or(words, np.right_shift(tmp, rot), out=words)
        np.left_shift(tmp, 16 - rot, out=tmp)
        np.bitwise_or(words, tmp, out=words)
        return words
    else:
        as_bytes = np.empty((len(planes[0]), width), dtype=np.uint8)
        for i, plane in enumerate(planes):
            as_bytes[:, i] = plane
        words = as_bytes.view(_WORD[width]).reshape(-1)
    if rot:
        words = (words >> rot) | (words << (8 * width - rot))
    return words


def _plan_plane(plane: np.ndarray, level: int) -> tuple[str, np.ndarray]:
    """Pick a plane code from a byte histogram of a strided sample (~8 K bytes); returns it
    with the sample's counts (the Huffman table of an "h" plane is made of them).

    - near-uniform bytes (mantissa planes): "r", no compression attempt at all;
    - mostly zero bytes (XOR deltas): zstd, whose matches code zero runs far below the 1 bit
      per byte that a Huffman code needs at least;
    - otherwise (exponent planes): literal-only Huffman "h", ~3x faster than zstd's matcher.

    The C kernel plane_plan counts and decides in one call with the GIL released (~17 us a
    512 KiB plane against ~50 us for the numpy twin, _plan_plane_numpy, on Zen 1).
    """
    plan = getattr(native.kernels, "plane_plan", None)  # None: no kernels, or an old build
    if plan is None or not plane.flags.c_contiguous:
        return _plan_plane_numpy(plane, level)
    counts = np.empty(256, dtype=np.int64)
    kind = plan(plane, sample_step(len(plane)), SPARSE_ZERO_FRACTION, RAW_ENTROPY_BITS, counts)
    return _PLANE_CODES[kind] if kind else _sparse_code(level), counts


_PLANE_CODES = ("", "r", "h")  # plane_plan's answer 1 and 2 (0: _sparse_code)


def _sparse_code(level: int) -> str:
    return "s" if level <= FAST_LEVELS_UP_TO else f"z{level}"


def _plan_plane_numpy(plane: np.ndarray, level: int) -> tuple[str, np.ndarray]:
    """_plan_plane without the C kernels (and its twin in tests)."""
    counts = sample_counts(plane)
    n_sample = int(counts.sum())
    if counts[0] >= SPARSE_ZERO_FRACTION * n_sample:
        return _sparse_code(level), counts
    p = counts[counts > 0] / n_sample
    if -(p * np.log2(p)).sum() >= RAW_ENTROPY_BITS:
        return "r", counts
    return "h", counts


def estimate_ratio(data: Buffer, width: int, rot: int, sample_words: int = 8192) -> float:
    """Cheap guess of `encode_adaptive`'s ratio from a strided sample of words (~50 us/MiB).

    Per plane: stored raw (1.0) when the sampled entropy says so, else the order-0 entropy
    plus 2% for the Huffman code's slack. Sparse planes (zstd in practice) are estimated by
    their entropy too, which overstates them: the guess errs towards "plain is small".
    """
    view = memoryview(data).cast("B")
    n_words = len(view) // width
    if n_words == 0:
        return 1.0
    step = max(1, n_words // sample_words)
    if width in _WHOLE and native.kernels is not None:  # one C call, GIL released
        return native.kernels.estimate_ratio(view, width, rot, step, RAW_ENTROPY_BITS)
    return _estimate_ratio_numpy(view, width, rot, step)


def _estimate_ratio_numpy(view: memoryview, width: int, rot: int, step: int) -> float:
    """estimate_ratio's guess from the words 0, step, 2 step, ... (the C kernel's twin)."""
    n_words = len(view) // width
    words = np.frombuffer(view[: n_words * width], dtype=_WORD[width])
    sample = words[::step].copy()
    rows = split_planes(sample.view(np.uint8), width, rot)
    m = len(sample)
    total = 0.0
    for i in range(width):
        counts = np.bincount(rows[i, :m], minlength=256)
        p = counts[counts > 0] / m
        bits = float(-(p * np.log2(p)).sum())
        total += 1.0 if bits >= RAW_ENTROPY_BITS else min(1.0, bits / 8 * 1.02)
    return total / width


def _pack_plane(
    rows: np.ndarray,
    i: int,
    n: int,
    code: str,
    counts: np.ndarray | None = None,
    sparse_cap: int | None = None,
) -> Buffer | None:
    """Plane i compressed as `code` ("h", "s" or "z<level>"; an "h" table from `counts`, a
    sample's, if given); None if literal-only coding fails, or an "s" segment would take more
    than `sparse_cap` bytes (None: any size)."""
    if code == "h":
        return compress_literals(rows[i], n, counts)
    if code == "s":
        return sparse.encode(rows[i, :n], sparse.bound(n) if sparse_cap is None else sparse_cap)
    return zstd.compress(rows[i, :n], int(code[1:]))


@dataclass(frozen=True)
class BytePlane(Stage):
    """Split words of `width` bytes into planes after a left rotation by `rot` bits."""

    width: int
    rot: int
    planes: tuple[str, ...]
    name: ClassVar[str] = "bplane"

    def __post_init__(self) -> None:
        if self.width not in _WORD:
            raise ValueError(f"bplane width {self.width} not one of 1, 2, 4, 8")
        if not 0 <= self.rot < 8 * self.width:
            raise ValueError(f"bplane rotation {self.rot} out of range")
        if len(self.planes) != self.width or not all(map(_plane_code_ok, self.planes)):
            raise ValueError(f"bplane needs {self.width} plane codes, each r, h, s or z<level>")

    # -- encoding ---------------------------------------------------------------------------

    def encode(self, data: Buffer) -> bytes:
        return b"".join(self._encode(data, self.planes)[1])

    @classmethod
    def encode_adaptive(
        cls, data: Buffer, width: int, rot: int, level: int, reference: Buffer | None = None
    ) -> tuple[BytePlane, bytes]:
        """Encode, planning each plane (see `_plan_plane`); returns (stage, payload). With
        `reference` (as long as `data`), what is encoded is data XOR reference (the XOR
        stage's output), without a separate XOR pass for 16-bit words."""
        stage, parts = cls.encode_parts(data, width, rot, level, reference)
        return stage, b"".join(parts)

    @classmethod
    def encode_parts(
        cls, data: Buffer, width: int, rot: int, level: int, reference: Buffer | None = None
    ) -> tuple[BytePlane, tuple[Buffer, ...]]:
        """`encode_adaptive`, the payload left as the buffers it is the concatenation of
        (header, plane segments, tail), for a pack append to write without joining them.
        None of them is a view of `data` or `reference`."""
        return cls(width, rot, ("r",) * width)._encode(data, None, level, reference)

    def _encode(
        self,
        data: Buffer,
        codes: tuple[str, ...] | None,
        level: int = 3,
        reference: Buffer | None = None,
    ) -> tuple[BytePlane, tuple[Buffer, ...]]:
        view = memoryview(data).cast("B")
        n = len(view)
        n_words = n // self.width
        body = n_words * self.width
        ref = None if reference is None else memoryview(reference).cast("B")
        if ref is not None and len(ref) != n:
            raise ValueError("a reference must be as long as the block")
        rows = split_planes(view[:body], self.width, self.rot, None if ref is None else ref[:body])
        tail: Buffer = bytes(view[body:])  # a copy (< width bytes): no part views `data`
        if ref is not None and n > body:
            tail = xor_bytes(tail, ref[body:]).tobytes()
        segments: list[Buffer] = []
        chosen: list[str] = []
        for i in range(self.width):
            plane = rows[i, :n_words]
            if codes is not None:  # fixed plan
                code = codes[i]
                packed = plane if code == "r" else _pack_plane(rows, i, n_words, code)
                if packed is None:  # literal-only refused: any zstd frame decodes the same
                    packed = zstd.compress(plane, 1)
            elif n_words == 0:
                code, packed = "r", plane
            else:  # adaptive: literal-only Huffman for dense planes, zstd for sparse ones
                code, counts = _plan_plane(plane, level)
                cap = int(n_words * SPARSE_MAX_SIZE)
                packed = plane if code == "r" else _pack_plane(rows, i, n_words, code, counts, cap)
                if packed is None and code == "s":  # denser than its sample: zstd's matches
                    code = "z1"
                    packed = _pack_plane(rows, i, n_words, code)
                if packed is None or len(packed) > n_words * (1 - PLANE_MIN_SAVING):
                    code, packed = "r", plane
            segments.append(packed)
            chosen.append(code)
        lengths = (memoryview(s).nbytes for s in segments)
        header = _N.pack(n) + struct.pack(f"<{self.width}I", *lengths)
        stage = self if codes is not None else BytePlane(self.width, self.rot, tuple(chosen))
        return stage, (header, *segments, tail)

    # -- decoding ---------------------------------------------------------------------------

    @property
    def decodes_into(self) -> bool:
        """decode_into runs: 16- or 32-bit words, and the C kernels built."""
        return self.width in _WHOLE and native.kernels is not None

    def decode(self, data: Buffer) -> Buffer:
        if self.decodes_into:
            # A fresh array filled by decode_into: one C call with the GIL released for the
            # usual plane codes (a merge's base blocks come this way, as delta references).
            view = memoryview(data).cast("B")
            n = _N.unpack_from(view)[0] if len(view) >= _N.size else -1
            if 0 <= n <= MAX_DECODED_BYTES:
                out = np.empty(n, dtype=np.uint8)
                self.decode_into(view, out, None)
                return out
        planes, n_tail, tail = self._planes(data)
        words = join_planes(planes, self.width, self.rot)
        if n_tail == 0:
            # A fresh writable array: the XOR stage may work in place; decode_block copies it
            # into bytes once at the end.
            return (words if words.flags.writeable else words.copy()).view(np.uint8)
        return b"".join([words, tail])

    def decode_into(self, data: Buffer, out: np.ndarray, reference: Buffer | None) -> None:
        """Decode a 16- or 32-bit payload straight into `out` (writable uint8, the block's
        length), XORed with `reference` if given: the planes are joined (and XORed) by one C
        pass into the caller's memory, with no intermediate block. Needs the C kernels.

        Planes coded r, h or s decode in one C call with the GIL released (bplane16_into,
        bplane32_into); where it declines (a zstd plane, a frame it does not take, a damaged
        payload), the calls below decode the block or raise the error that names what is
        wrong."""
        assert self.decodes_into
        w = self.width
        codes = "".join(self.planes)
        if len(codes) == w:
            n_words = len(out) // w
            scratch = [_plane_buffer(i, n_words, True) for i in range(w)]
            if getattr(native.kernels, _WHOLE[w])(out, data, self.rot, codes, reference, *scratch):
                return
        # 16-bit: one sparse plane (an XOR delta's sign and exponent) is XORed straight into
        # the joined words: no zeroed plane buffer to fill and read back.
        sparse_at = None
        if w == 2 and self.planes.count("s") == 1:
            sparse_at = self.planes.index("s")
        planes, n_tail, tail = self._planes(data, scratch=True, keep_sparse=sparse_at)
        dense = planes[1 - sparse_at] if sparse_at is not None else planes[0]
        n = len(dense) * w + n_tail
        if len(out) != n or (reference is not None and memoryview(reference).nbytes != n):
            raise corrupt(f"bplane block of {n} bytes does not fit {len(out)} bytes")
        ref = None if reference is None else np.frombuffer(reference, dtype=np.uint8)
        body = n - n_tail
        ref_words = None if ref is None else ref[:body].view(_WORD[w])
        words = out[:body].view(_WORD[w])
        if sparse_at is not None:
            sparse.join_into(words, dense, sparse_at == 0, planes[sparse_at], self.rot, ref_words)
        elif w == 2:
            native.kernels.join2(words, planes[0], planes[1], self.rot, ref_words)
        else:
            native.kernels.join4(words, *planes, self.rot, ref_words)
        if n_tail:
            t = np.frombuffer(tail, dtype=np.uint8)
            out[body:] = t if ref is None else t ^ ref[body:]

    def _planes(
        self, data: Buffer, scratch: bool = False, keep_sparse: int | None = None
    ) -> tuple[list[np.ndarray], int, memoryview]:
        """The decoded planes, the tail length and the tail bytes of a payload. `scratch`:
        literal-only planes may be decoded into this thread's reused buffers (valid until its
        next call with `scratch`). `keep_sparse`: that plane (coded "s") is left as its
        segment, for sparse.join_into."""
        view = memoryview(data).cast("B")
        w = self.width
        header_len = _N.size + 4 * w
        if len(view) < header_len:
            raise corrupt("bplane payload shorter than its header")
        (n,) = _N.unpack_from(view)
        lengths = struct.unpack_from(f"<{w}I", view, _N.size)
        if n > MAX_DECODED_BYTES:
            raise corrupt(f"bplane claims {n} bytes")
        n_words, n_tail = divmod(n, w)
        if header_len + sum(lengths) + n_tail != len(view):
            raise corrupt("bplane segment lengths do not add up to the payload length")
        planes = []
        pos = header_len
        for code, length in zip(self.planes, lengths, strict=True):
            segment = view[pos : pos + length]
            pos += length
            if code == "r":
                if length != n_words:
                    raise corrupt("raw bplane segment has the wrong length")
                planes.append(np.frombuffer(segment, dtype=np.uint8))
            elif code == "s" and keep_sparse == len(planes):
                planes.append(np.frombuffer(segment, dtype=np.uint8))
            elif code == "s":
                out = _plane_buffer(len(planes), n_words, scratch)
                sparse.decode_into(segment, out)
                planes.append(out)
            else:
                out = _plane_buffer(len(planes), n_words, scratch) if code == "h" else None
                if out is not None and n_words and decompress_literals_into(segment, out):
                    planes.append(out)
                    continue
                plane = zstd.decompress(segment, expected_size=n_words)
                planes.append(np.frombuffer(plane, dtype=np.uint8))
        return planes, n_tail, view[pos:]

    # -- spec -------------------------------------------------------------------------------

    def to_spec(self) -> str:
        return f"{self.name}:w={self.width},rot={self.rot},planes={'.'.join(self.planes)}"

    @classmethod
    def from_spec(cls, params: str | None) -> BytePlane:
        p = parse_params(params, ("w", "rot", "planes"))
        width = parse_int(p["w"], 1, 8)
        return cls(width, parse_int(p["rot"], 0, 8 * width - 1), tuple(p["planes"].split(".")))
