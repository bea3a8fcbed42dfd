"""Hand-checkable values for every method on tiny tensors.

Expected values are worked out by hand in the comments (or with an independent plain-Python
formula in fp64), never produced by the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mergestore.ops import TensorContext, merge_tensor

CTX = TensorContext("model.layers.0.mlp.down_proj.weight", seed=1)


def t(*values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def close(a, b, tol=1e-6):
    assert a.shape == torch.as_tensor(b).shape
    torch.testing.assert_close(
        a.double(), torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=0
    )


# --- linear ---------------------------------------------------------------------------------


def test_linear_normalized_and_not():
    x1, x2 = t(1.0, 2.0), t(3.0, -4.0)
    # (1*1 + 3*3) / 4 = 2.5 ; (1*2 + 3*-4) / 4 = -2.5
    out = merge_tensor("linear", None, [x1, x2], {}, [{"weight": 1}, {"weight": 3}], CTX)
    assert torch.equal(out, t(2.5, -2.5))
    out = merge_tensor(
        "linear", None, [x1, x2], {"normalize": False}, [{"weight": 1}, {"weight": 3}], CTX
    )
    assert torch.equal(out, t(10.0, -10.0))


def test_linear_keeps_bf16_and_accumulates_in_fp32():
    # 256 + 1 + 1: bf16 accumulation would lose each 1 (bf16 has 8 significant bits), fp32 keeps
    # them: 258 / 3 = 86, exactly representable in bf16.
    xs = [
        t(256.0, dtype=torch.bfloat16),
        t(1.0, dtype=torch.bfloat16),
        t(1.0, dtype=torch.bfloat16),
    ]
    out = merge_tensor("linear", None, xs, {}, [{"weight": 1}] * 3, CTX)
    assert out.dtype == torch.bfloat16 and out.item() == 86.0


# --- task arithmetic family -----------------------------------------------------------------


def test_task_arithmetic():
    base = t(1.0, 1.0, 1.0)
    x1, x2 = t(2.0, 0.0, 1.0), t(1.0, 3.0, 1.0)
    # deltas [1,-1,0], [0,2,0]; 0.5*d1 + 1*d2 = [0.5, 1.5, 0]; lambda 2 -> [1, 3, 0]; + base
    per = [{"weight": 0.5}, {"weight": 1.0}]
    out = merge_tensor("task_arithmetic", base, [x1, x2], {"lambda": 2.0}, per, CTX)
    assert torch.equal(out, t(2.0, 4.0, 1.0))
    # normalize divides by sum w = 1.5: [1/3, 1, 0] + base
    out = merge_tensor("task_arithmetic", base, [x1, x2], {"normalize": True}, per, CTX)
    close(out, [1 + 1 / 3, 2.0, 1.0])


def test_task_arithmetic_rounds_weights_to_bf16():
    # In bf16 the weight 0.3 becomes 0.30078125 before it multiplies the delta (mergekit).
    base, x = t(0.0, dtype=torch.bfloat16), t(1.0, dtype=torch.bfloat16)
    out = merge_tensor("task_arithmetic", base, [x], {}, [{"weight": 0.3}], CTX)
    assert out.dtype == torch.bfloat16 and out.item() == 0.30078125


def test_ties_trim_elect_and_disjoint_mean():
    base = torch.zeros(4)
    x1, x2 = t(3.0, -1.0, 2.0, -0.5), t(-1.0, 2.0, -3.0, 0.25)
    # density 0.5 keeps the 2 largest |d|: d1 -> [3,0,2,0], d2 -> [0,2,-3,0]
    # equal weights: sum [3,2,-1,0] -> signs [+,+,-,+]; agreeing: d1[0], d2[1], d2[2]
    # merged [3,2,-3,0], divisor [1,1,1,0->1]
    per = [{"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.5}]
    out = merge_tensor("ties", base, [x1, x2], {}, per, CTX)
    assert torch.equal(out, t(3.0, 2.0, -3.0, 0.0))
    # weights 2 and 1: D1 [6,0,4,0], D2 [0,2,-3,0]; sum [6,2,1,0] all +, so the weighted
    # election drops d2's -3. merged [6,2,4,0] / divisor [2,1,2,1] = [3,2,2,0]
    per = [{"weight": 2.0, "density": 0.5}, {"weight": 1.0, "density": 0.5}]
    out = merge_tensor("ties", base, [x1, x2], {}, per, CTX)
    assert torch.equal(out, t(3.0, 2.0, 2.0, 0.0))


def test_ties_tie_rule_keeps_lower_flat_index():
    base = torch.zeros(2, 3)
    x = torch.tensor([[1.0, -2.0, 1.0], [-1.0, 1.0, 0.5]])
    # density 0.5 -> k = 3: keep |-2| (index 1), then among the four 1s the lowest indices 0, 2
    out = merge_tensor("ties", base, [x], {}, [{"weight": 1.0, "density": 0.5}], CTX)
    assert torch.equal(out, torch.tensor([[1.0, -2.0, 1.0], [0.0, 0.0, 0.0]]))


def test_ties_density_edge_cases():
    base, x = torch.zeros(5), t(1.0, 2.0, 3.0, 4.0, 5.0)
    # density 0.1: k = max(1, floor(0.5)) = 1 -> only the 5 survives
    out = merge_tensor("ties", base, [x], {}, [{"weight": 1.0, "density": 0.1}], CTX)
    assert torch.equal(out, t(0.0, 0.0, 0.0, 0.0, 5.0))
    # density 0 -> all zero
    out = merge_tensor("ties", base, [x], {}, [{"weight": 1.0, "density": 0.0}], CTX)
    assert torch.equal(out, torch.zeros(5))


def test_breadcrumbs_drops_smallest_and_top_outlier():
    base = torch.zeros(10)
    d = t(0.1, -5.0, 2.0, -3.0, 0.5, 4.0, -1.0, 0.2, 6.0, -0.3)
    # n=10, target=5, n_top=1, n_bot=4. Ascending |d|: 0.1,0.2,0.3,0.5 (dropped), then ranks
    # 4..8 = 1,2,3,4,5 (kept: indices 6,2,3,5,1), rank 9 = 6 (outlier, dropped)
    per = [{"weight": 1.0, "density": 0.5, "gamma": 0.1}]
    out = merge_tensor("breadcrumbs", base, [base + d], {}, per, CTX)
    assert torch.equal(out, t(0.0, -5.0, 2.0, -3.0, 0.0, 4.0, -1.0, 0.0, 0.0, 0.0))


def test_breadcrumbs_ties_elects_after_trimming():
    base = torch.zeros(4)
    x1, x2 = t(1.0, 2.0, 3.0, 9.0), t(-4.0, -0.5, 1.0, 0.1)
    # density .5, gamma .25: n_top=1, n_bot=1 -> keep ascending ranks 1,2
    # x1: ranks 1,2 = values 2,3 -> [0,2,3,0]
    # x2: ascending |.| .1,.5,1,4 -> ranks 1,2 = -.5, 1 -> [0,-.5,1,0]
    # sum [0,1.5,4,0]: all +; agreeing: x1 at 1,2; x2 at 2. No normalize (default) -> [0,2,4,0]
    per = [{"weight": 1.0, "density": 0.5, "gamma": 0.25}] * 2
    out = merge_tensor("breadcrumbs_ties", base, [x1, x2], {}, per, CTX)
    assert torch.equal(out, t(0.0, 2.0, 4.0, 0.0))


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties", "della", "della_linear"])
def test_random_methods_at_density_one_are_deterministic(method):
    base = t(1.0, 1.0)
    x1, x2 = t(2.0, 3.0), t(0.0, 5.0)
    # no drop: deltas [1,2], [-1,4]; weights .5 each
    per = [{"weight": 0.5, "density": 1.0}, {"weight": 0.5, "density": 1.0}]
    out = merge_tensor(method, base, [x1, x2], {"normalize": False}, per, CTX)
    if method in ("dare_ties", "della"):
        # sum [0, 3]: position 0 elects + (0 counts as +), so only d1's +0.5 agrees
        assert torch.equal(out, t(1.5, 4.0))
    else:
        assert torch.equal(out, t(1.0, 4.0))


def test_dare_mask_is_one_bernoulli_draw_and_l1_rescaled():
    base = torch.zeros(1000)
    x = torch.linspace(-2.0, 2.0, 1000)
    ctx = TensorContext("w", seed=7)
    per = [{"weight": 1.0, "density": 0.3}]
    out = merge_tensor("dare_linear", base, [x], {}, per, ctx)
    # The documented RNG contract: one keep mask for a tensor filled with p, from input 0's
    # Philox stream: element j kept when its float32 uniform is below p.
    u = np.random.Generator(np.random.Philox(key=ctx.philox_key(0))).random(1000, np.float32)
    mask = torch.from_numpy(u < np.float32(0.3)).float()
    l1 = sum(abs(v) for v in x.tolist())
    kept = sum(abs(v) for v, m in zip(x.tolist(), mask.tolist(), strict=True) if m)
    expected = [v * m * (l1 / kept) for v, m in zip(x.tolist(), mask.tolist(), strict=True)]
    close(out, expected, tol=1e-5)
    assert abs(out.abs().sum().item() - l1) < 1e-2  # L1 norm kept, not 1/p


def test_della_keep_probability_is_linear_in_row_rank():
    # One row of 11 distinct magnitudes, d=.5, eps=.4: p(rank r) = .1 + .8 (r-1)/10.
    row = t(0.3, -0.9, 0.1, 0.5, -0.7, 1.1, 0.2, -0.6, 0.8, 0.4, 1.0)
    base = torch.zeros(1, 11)
    ctx = TensorContext("w", seed=3)
    per = [{"weight": 1.0, "density": 0.5, "epsilon": 0.4}]
    out = merge_tensor("della_linear", base, [row.reshape(1, 11)], {"rescale": False}, per, ctx)
    ranks = {i: r + 1 for r, i in enumerate(sorted(range(11), key=lambda i: abs(row[i].item())))}
    probs = torch.tensor([[0.1 + 0.8 * (ranks[i] - 1) / 10 for i in range(11)]])
    u = np.random.Generator(np.random.Philox(key=ctx.philox_key(0))).random(11, np.float32)
    mask = torch.from_numpy(u.reshape(1, 11) < probs.float().numpy()).float()
    assert torch.equal(out, row.reshape(1, 11) * mask)


# --- spherical methods ----------------------------------------------------------------------

R = math.sqrt(0.5)


def test_slerp():
    v0, v1 = t(1.0, 0.0), t(0.0, 1.0)
    # orthogonal unit vectors: theta = pi/2, out = [cos(t pi/2), sin(t pi/2)]
    close(merge_tensor("slerp", v0, [v1], {"t": 0.5}, [{}], CTX), [R, R])
    close(
        merge_tensor("slerp", v0, [v1], {"t": 0.25}, [{}], CTX),
        [math.cos(math.pi / 8), math.sin(math.pi / 8)],
    )
    # magnitudes are not renormalised: [2,0] and [0,1] -> sin(pi/4) * [2, 1]
    close(merge_tensor("slerp", t(2.0, 0.0), [v1], {"t": 0.5}, [{}], CTX), [2 * R, R])
    # colinear -> lerp: (1-t) [1,2] + t [2,4]
    close(merge_tensor("slerp", t(1.0, 2.0), [t(2.0, 4.0)], {"t": 0.25}, [{}], CTX), [1.25, 2.5])


def test_nuslerp_weights_base_and_rows():
    v0, v1 = t(1.0, 0.0), t(0.0, 1.0)
    per = [{"weight": 1.0}, {"weight": 3.0}]  # t = 3/4
    close(
        merge_tensor("nuslerp", None, [v0, v1], {}, per, CTX),
        [math.cos(3 * math.pi / 8), math.sin(3 * math.pi / 8)],
    )
    # with a base: slerp the task vectors [1,0], [0,1] (t = .5) and add the base back
    base = t(1.0, 1.0)
    per = [{"weight": 1.0}, {"weight": 1.0}]
    close(merge_tensor("nuslerp", base, [t(2.0, 1.0), t(1.0, 2.0)], {}, per, CTX), [1 + R, 1 + R])
    # rows independently: row 0 orthogonal -> [R, R]; row 1 colinear -> lerp -> [1, 0]
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    out = merge_tensor("nuslerp", None, [a, b], {"nuslerp_flatten": False}, per, CTX)
    close(out, [[R, R], [1.0, 0.0]])
    # row_wise=True slerps columns: column 0 is [1,1] vs [0,1], column 1 is [0,0] vs [1,0]
    out = merge_tensor(
        "nuslerp", None, [a, b], {"nuslerp_flatten": False, "nuslerp_row_wise": True}, per, CTX
    )
    # column 0: angle pi/4 between [1,1]/sqrt2 and [0,1]; slerp at t=.5 of unnormalised vectors
    th = math.pi / 4
    c0 = [(math.sin(th / 2) * 1 + math.sin(th / 2) * 0) / math.sin(th),
          (math.sin(th / 2) * 1 + math.sin(th / 2) * 1) / math.sin(th)]  # fmt: skip
    # column 1: [0,0] has norm 0 -> unit [0,0], cos 0 -> theta pi/2: sin(pi/4) * [1, 0]
    close(out, [[c0[0], R], [c0[1], 0.0]], tol=1e-6)


def test_multislerp_two_orthogonal_and_single():
    v0, v1 = t(3.0, 0.0), t(0.0, 1.0)
    # units [1,0], [0,1]; mean direction [R,R]; tangents cancel; scale = .5*3 + .5*1 = 2
    per = [{"weight": 1.0}, {"weight": 1.0}]
    close(merge_tensor("multislerp", None, [v0, v1], {}, per, CTX), [2 * R, 2 * R], tol=1e-6)
    # a single input is returned unchanged
    out = merge_tensor("multislerp", None, [v0], {}, [{"weight": 1.0}], CTX)
    assert torch.equal(out, v0)


def _multislerp_reference(vs, ws, eps=1e-8):
    """Plain-Python fp64 multislerp (mergekit-methods.md 2.6)."""
    s = sum(ws)
    ws = [w / s for w in ws]
    norms = [math.sqrt(sum(x * x for x in v)) for v in vs]
    units = [[x / (n + eps) for x in v] for v, n in zip(vs, norms, strict=True)]
    dim = len(vs[0])
    mean = [sum(w * u[j] for w, u in zip(ws, units, strict=True)) for j in range(dim)]
    mn = math.sqrt(sum(x * x for x in mean))
    mean = [x / mn for x in mean]
    tang = []
    for u in units:
        d = sum(a * b for a, b in zip(u, mean, strict=True))
        tang.append([a - d * b for a, b in zip(u, mean, strict=True)])
    g = [sum(w * tv[j] for w, tv in zip(ws, tang, strict=True)) for j in range(dim)]
    ell = math.sqrt(sum(x * x for x in g)) + eps
    scale = sum(w * n for w, n in zip(ws, norms, strict=True))
    return [
        (m * math.cos(ell) + x * math.sin(ell) / ell) * scale for m, x in zip(mean, g, strict=True)
    ]


def test_multislerp_three_inputs_against_fp64_reference():
    vs = [[1.0, 0.2, -0.5], [0.1, 2.0, 0.3], [-0.4, 0.5, 1.5]]
    ws = [0.5, 0.3, 0.2]
    out = merge_tensor(
        "multislerp", None, [t(*v) for v in vs], {}, [{"weight": w} for w in ws], CTX
    )
    close(out, _multislerp_reference(vs, ws), tol=1e-5)


def test_karcher():
    # [2,0] and [0,4]: mean direction [R,R], scale (2 + 4) / 2 = 3
    out = merge_tensor("karcher", None, [t(2.0, 0.0), t(0.0, 4.0)], {}, [{}, {}], CTX)
    close(out, [3 * R, 3 * R], tol=1e-5)


def test_model_stock():
    base = t(0.0, 0.0)
    # offsets [1,1] and [1,0]: cos = 1/sqrt2, t = 2c / (1 + c); average [1, .5]
    c = R
    k = 2 * c / (1 + c)
    out = merge_tensor("model_stock", base, [t(1.0, 1.0), t(1.0, 0.0)], {}, [{}, {}], CTX)
    close(out, [k, 0.5 * k])
    # orthogonal offsets: cos 0 -> t = 0 -> base
    out = merge_tensor("model_stock", base, [t(1.0, 0.0), t(0.0, 1.0)], {}, [{}, {}], CTX)
    close(out, [0.0, 0.0])
    # opposite offsets: 1 + (N-1) c = 0 -> singular -> base kept
    out = merge_tensor("model_stock", base, [t(1.0, 0.0), t(-1.0, 0.0)], {}, [{}, {}], CTX)
    assert torch.equal(out, base)
    # filter_wise: per row. row 0 identical offsets (t=1 -> mean), row 1 orthogonal (base)
    b2 = torch.zeros(2, 2)
    x1 = torch.tensor([[1.0, 2.0], [1.0, 0.0]])
    x2 = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    out = merge_tensor("model_stock", b2, [x1, x2], {"filter_wise": True}, [{}, {}], CTX)
    close(out, [[1.0, 2.0], [0.0, 0.0]])


# --- others ---------------------------------------------------------------------------------


def test_sce():
    base = torch.zeros(3)
    x1, x2 = t(2.0, 0.0, 1.0), t(-1.0, 1.0, 1.0)
    # signs of the sum [1,1,2]: all +. agree: x1 at 0,2; x2 at 1,2.
    # omega = mean squares 5/3, 1 -> 5/8, 3/8.
    # pos0: 5/8*2 / (5/8) = 2; pos1: 3/8*1 / (3/8) = 1; pos2: (5/8 + 3/8) / 1 = 1
    out = merge_tensor("sce", base, [x1, x2], {}, [{}, {}], CTX)
    close(out, [2.0, 1.0, 1.0])
    # select_topk .5: variances [2.25, .25, 0], nnz 2 -> keep 1 position (0).
    # tvs [2,0,0], [-1,0,0]; omega 4/3 and 1/3 -> .8, .2; only x1 agrees at 0 -> 2
    out = merge_tensor("sce", base, [x1, x2], {"select_topk": 0.5}, [{}, {}], CTX)
    close(out, [2.0, 0.0, 0.0])


def test_nearswap():
    a, b = t(0.0, 0.0, 0.0), t(0.5, 0.05, -2.0)
    # w = clamp(.1 / |a-b|) = [.2, 1, .05]; out = w b + (1-w) a
    out = merge_tensor("nearswap", a, [b], {"t": 0.1}, [{}], CTX)
    close(out, [0.1, 0.05, -0.1])


def test_ram_and_ramplus_tl():
    base = torch.zeros(5)
    x1, x2 = t(1.0, 0.05, 2.0, 0.0, 4.0), t(3.0, 0.0, 0.0, 0.5, 0.0)
    # eps .1: active1 [T,F,T,F,T], active2 [T,F,F,T,F]; counts [2,0,1,1,1]
    # pos0 shared -> (1+3)/2; pos1 inactive; the rest unique, summed as-is
    out = merge_tensor("ram", base, [x1, x2], {"epsilon": 0.1}, [{}, {}], CTX)
    close(out, [2.0, 0.0, 2.0, 0.5, 4.0])
    # rho1 = 1 shared / 2 unique = .5, rho2 = 1/1 -> clamp .8; lambda = 1 + .5 rho
    # lambda1 = 1.25, lambda2 = 1.4 scale the unique parts
    shared = {"epsilon": 0.1, "r": 0.5, "alpha": 0.8}
    out = merge_tensor("ramplus_tl", base, [x1, x2], shared, [{}, {}], CTX)
    close(out, [2.0, 0.0, 2.5, 0.7, 5.0])


def test_passthrough():
    x = t(1.0, -2.0)
    assert torch.equal(
        merge_tensor("passthrough", None, [x], {}, [{"scale": 3.0}], CTX), t(3.0, -6.0)
    )
    assert torch.equal(merge_tensor("passthrough", None, [x], {}, [{}], CTX), x)


def test_arcee_fusion_keeps_only_outlying_changes():
    base = torch.zeros(8)
    p = t(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 10.0)
    # 1-D: one KL scalar k > 0, so I = k |p - base|. Sorted I/k: .1 .2 .3 .4 .5 .6 .7 10;
    # q1 = s[1] = .2, median = s[3] = .4, q3 = s[5] = .6 -> threshold k (.4 + 1.5 * .4) = k.
    # Only |p - base| = 10 >= 1 is taken.
    out = merge_tensor("arcee_fusion", base, [p], {}, [{}], CTX)
    close(out, [0.0] * 7 + [10.0])


def test_non_float_tensors_are_copied_when_equal():
    ids = torch.arange(4)
    out = merge_tensor("linear", None, [ids, ids.clone()], {}, [{"weight": 1}, {"weight": 1}], CTX)
    assert torch.equal(out, ids) and out.dtype == torch.int64


def test_mixed_input_dtypes_promote():
    # fp16 + bf16 -> fp32 compute (mergekit 0.1.5), unless dtype is given
    a, b = t(1.0, dtype=torch.float16), t(2.0, dtype=torch.bfloat16)
    per = [{"weight": 1.0}, {"weight": 1.0}]
    assert merge_tensor("linear", None, [a, b], {}, per, CTX).dtype == torch.float32
    out = merge_tensor("linear", None, [a, b], {}, per, CTX, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.item() == 1.5
    out = merge_tensor("linear", None, [a, b], {}, per, CTX, out_dtype=torch.float16)
    assert out.dtype == torch.float16
