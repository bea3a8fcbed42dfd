"""The optional C kernels (mergestore/csrc/, one extension), or None where they were not built.

Each kernel has a torch/numpy twin at its call site, and both give the same bits (tested in
tests/test_native.py). MERGESTORE_NATIVE=0 turns the kernels off, for comparisons and for
benchmarks of the twins. FAMILIES says where each family's two halves are.
"""

from __future__ import annotations

import os
from types import ModuleType

kernels: ModuleType | None
try:
    if os.environ.get("MERGESTORE_NATIVE", "1") == "0":
        raise ImportError("turned off by MERGESTORE_NATIVE=0")
    from mergestore import _native as kernels
except ImportError:  # no compiler at install time: the twins run instead
    kernels = None


# C source (mergestore/csrc/) -> the Python module with its callers and twins, and the kernels.
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "merge_arith.c": (
        "mergestore/ops/lane16.py",  # twins: the torch paths of ops/gta.py and ops/linear.py
        ("gta_sum_bf16", "gta_consensus_bf16", "linear_bf16"),
    ),
    "merge_arith32.c": (
        "mergestore/ops/lanes.py",  # twins: the fp32 torch paths of ops/gta.py, ops/linear.py
        # gta_keep32: dare/della's combine, called from ops/lane_random.py
        ("gta_sum32", "gta_consensus32", "gta_cut32", "gta_keep32", "linear32", "convert"),
    ),
    "merge_elementwise.c": (
        "mergestore/ops/lane_elementwise.py",  # twins: ops/nearswap.py and ops/ram.py
        ("nearswap", "ram"),
    ),
    "merge_reduce.c": (
        "mergestore/ops/lane_reduce.py",  # twin: ops/model_stock.py
        ("torch_sum32", "model_stock_stats32", "model_stock_mix32"),
    ),
    "merge_sce.c": (
        "mergestore/ops/lane_sce.py",  # twin: ops/sce.py
        ("sce_var", "sce_sumsq", "sce_combine", "u32_hist_lo", "u32_nth_equal"),
    ),
    "merge_sphere.c": (
        "mergestore/ops/lane_sphere.py",  # twins: ops/slerp.py, nuslerp.py, multislerp.py
        (
            "sphere_norms",
            "nuslerp_dot",
            "nuslerp_mix",
            "multislerp_pass",
            "slerp_chunks",
            "slerp_mix",
        ),
    ),
    "merge_karcher.c": (
        "mergestore/ops/lane_karcher.py",  # twin: ops/karcher.py
        (
            "karcher_scale",
            "karcher_first_mean",
            "karcher_tangent",
            "karcher_update",
            "karcher_out",
            "karcher_x_first_mean",
            "karcher_x_dots",
            "karcher_x_tangent",
            "mkl_def_sdot",
        ),
    ),
    "merge_karcher16.c": (
        "mergestore/ops/lane_karcher16.py",  # twin: ops/karcher.py
        (
            "karcher16_norm",
            "karcher16_scale",
            "karcher16_first",
            "karcher16_dots",
            "karcher16_dots_onednn",
            "onednn_dot_kinds",
            "karcher16_tangent",
            "karcher16_update",
            "karcher16_out",
        ),
    ),
    # twin: torch itself (MKL's VML for fp32 lives in torch's library; tests/ops/test_lane_math)
    "sleef_f32.c": ("mergestore/ops/lane_math.py", ("sleef_f32", "sleef_f32_array")),
    "rank_cuts.c": (
        "mergestore/ops/sparsify.py",  # the lanes' cuts: cut_select.c, ops/cuts.py
        (
            "sub_hist_bf16",
            "nth_equal16",
            "apply_cuts16",
            "row_ranks_bf16",
            "della_probs_bf16",
        ),
    ),
    "cut_select.c": ("mergestore/ops/cuts.py", ("find_cuts", "gta_cut16", "finite")),
    "delta_stats.c": ("mergestore/diff.py", ("delta_stats",)),
    "byte_planes.c": (
        "mergestore/store/codecs/byteplane.py",
        ("join2", "split2", "hist8", "plane_plan", "bplane16_into", "estimate_ratio"),
    ),
    "byte_planes32.c": (
        "mergestore/store/codecs/byteplane.py",
        ("join4", "split4", "bplane32_into"),
    ),
    "sparse_planes.c": (
        "mergestore/store/codecs/sparse.py",
        ("sparse_encode", "sparse_decode", "join2_sparse"),
    ),
    # twin: python-zstandard's decoder, which huffman.py falls back to when the kernel declines
    "huffman_literals.c": ("mergestore/store/codecs/huffman.py", ("huf_literals",)),
    # twin: zstd's ZSTD_compressSequencesAndLiterals, which huffman.py runs when it declines
    "huffman_encode.c": ("mergestore/store/codecs/huffman.py", ("huf_encode", "huf_bound")),
    # keep_rescale32's twin: ops/sparsify.py (keep_mask, then rescaled_masked_); keep_sums32,
    # della_keep_sums32 and their bf16 versions are the first pass of ops/lane_random.py, and
    # gta_keep16 its bf16 combine (twin: the same, and ops/gta.py)
    "rng.c": (
        "mergestore/ops/context.py",
        (
            "philox_keep",
            "keep_rescale32",
            "keep_sums32",
            "della_keep_sums32",
            "keep_sums16",
            "della_keep_sums16",
            "gta_keep16",
        ),
    ),
}


def describe() -> str:
    """Which kernels run: "native" (the C extension) or "torch" (the twins)."""
    return "native" if kernels is not None else "torch"
