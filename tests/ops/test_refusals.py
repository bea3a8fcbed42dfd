"""Everything a caller can get wrong is refused with a one-line MergeError."""

from __future__ import annotations

import pytest
import torch

from mergestore.errors import MergeError
from mergestore.ops import TensorContext, get_method, merge_tensor, validate_params

CTX = TensorContext("w")
X = torch.ones(4)


def refuse(match, method, base, inputs, shared, per_input, **kw):
    with pytest.raises(MergeError, match=match) as info:
        merge_tensor(method, base, inputs, shared, per_input, CTX, **kw)
    assert "\n" not in str(info.value)


def test_unknown_method():
    refuse(
        r"unknown merge method 'tiess' \(did you mean 'ties'\?\) \(known: .*ties",
        "tiess",
        X,
        [X],
        {},
        [{}],
    )


def test_unknown_and_misplaced_params():
    refuse(
        r"unknown parameter 'densty' for input 0 \(did you mean 'density'\?\)",
        "ties",
        X,
        [X],
        {},
        [{"weight": 1, "densty": 0.5}],
    )
    refuse(r"unknown parameter 'gamma' as shared", "ties", X, [X], {"gamma": 1}, [{"weight": 1}])
    refuse(r"'weight' is per-input", "ties", X, [X], {"weight": 1.0}, [{"weight": 1}])
    refuse(r"'normalize' is shared", "ties", X, [X], {}, [{"weight": 1, "normalize": True}])


@pytest.mark.parametrize(
    ("shared", "per_input", "match"),
    [
        ({"normalize": "yes"}, [{"weight": 1.0}], r"'normalize' must be true or false"),
        ({"lambda": True}, [{"weight": 1.0}], r"'lambda' must be a number"),
        ({}, [{"weight": "0.5"}], r"'weight' for input 0 must be a number"),
        ({}, [{"weight": float("nan")}], r"'weight' for input 0 must be a number"),
    ],
)
def test_wrong_types(shared, per_input, match):
    refuse(match, "ties", X, [X], shared, per_input)


def test_int_param_and_nullable_param():
    refuse(r"'max_iter' must be an integer", "karcher", None, [X, X], {"max_iter": 2.5}, [{}, {}])
    # None is valid for passthrough's scale, and ints are accepted for float params
    assert torch.equal(merge_tensor("passthrough", None, [X], {}, [{"scale": None}], CTX), X)
    assert torch.equal(merge_tensor("passthrough", None, [X], {}, [{"scale": 2}], CTX), 2 * X)


def test_missing_required_params():
    refuse(
        r"missing required parameter 'weight' for input 1",
        "ties",
        X,
        [X, X],
        {},
        [{"weight": 1}, {}],
    )
    refuse(r"missing required parameter 't'", "slerp", X, [X], {}, [{}])
    refuse(r"missing required parameter 'weight' for input 0", "linear", None, [X], {}, [{}])


@pytest.mark.parametrize(
    ("method", "base", "n", "match"),
    [
        ("slerp", X, 2, r"slerp: needs exactly 1 non-base inputs, got 2"),
        ("slerp", None, 1, r"slerp: a base model is required"),
        ("nuslerp", None, 1, r"nuslerp: needs exactly 2 non-base inputs, got 1"),
        ("nuslerp", X, 3, r"nuslerp: needs exactly 2 non-base inputs, got 3"),
        ("model_stock", X, 1, r"model_stock: needs at least 2 non-base inputs, got 1"),
        ("passthrough", None, 2, r"passthrough: needs exactly 1 inputs, got 2"),
        ("linear", None, 0, r"linear: needs at least 1 inputs, got 0"),
        ("linear", X, 1, r"linear: takes no separate base"),
        ("nearswap", X, 2, r"nearswap: needs exactly 1 non-base inputs"),
        ("ties", None, 1, r"ties: a base model is required"),
    ],
)
def test_input_counts_and_base_rules(method, base, n, match):
    spec = get_method(method)
    per = [{p.name: 0.5 for p in spec.per_input_params if p.required}] * n
    shared = {p.name: 0.5 for p in spec.shared_params if p.required}
    refuse(match, method, base, [X] * n, shared, per)


def test_parameter_count_must_match_inputs():
    refuse(r"parameters for 1 inputs, expected 2", "ties", X, [X, X], {}, [{"weight": 1.0}])


@pytest.mark.parametrize("method", ["della", "della_linear"])
@pytest.mark.parametrize(("density", "epsilon"), [(0.1, 0.15), (0.9, 0.1), (0.5, 0.5)])
def test_della_invalid_epsilon(method, density, epsilon):
    per = [{"weight": 1.0, "density": density, "epsilon": epsilon}]
    refuse(r"epsilon .* must keep density .* inside \(0, 1\)", method, X, [X * 2], {}, per)
    # the declaration's check is also what the config layer calls
    with pytest.raises(MergeError):
        validate_params(get_method(method), {}, per, has_base=True)
    # and the kernel refuses on its own when called directly
    with pytest.raises(MergeError):
        get_method(method).kernel(X, [X * 2], get_method(method).defaults(), per, CTX)


def test_della_edge_densities_are_fine():
    # density 1 (no pruning) and 0 (all pruned) skip the epsilon rule, as in mergekit
    for d in (1.0, 0.0):
        per = [{"weight": 1.0, "density": d, "epsilon": 0.15}]
        merge_tensor("della", X, [X * 2], {}, per, CTX)


def test_differing_non_float_tensors():
    a, b = torch.arange(4), torch.arange(4).flip(0)
    refuse(r"non-float tensor 'w' differs", "linear", None, [a, b], {}, [{"weight": 1}] * 2)
    refuse(r"non-float tensor 'w' differs", "linear", None, [a, a.float()], {}, [{"weight": 1}] * 2)


def test_shape_mismatch_and_bad_dtype():
    refuse(r"shape mismatch", "linear", None, [X, torch.ones(5)], {}, [{"weight": 1}] * 2)
    refuse(
        r"dtype must be a floating-point",
        "linear",
        None,
        [X],
        {},
        [{"weight": 1}],
        dtype=torch.int32,
    )


def test_multislerp_balanced_antipodes():
    v = torch.tensor([1.0, 0.0])
    per = [{"weight": 1.0}] * 4
    refuse(r"multislerp: the weighted mean direction", "multislerp", None, [v, -v, v, -v], {}, per)


def test_validate_params_alone_applies_defaults_and_counts_inputs():
    # What the config layer calls before any tensor is read.
    shared, per = validate_params(get_method("ties"), {"lambda": 2}, [{"weight": 1}])
    assert shared == {"normalize": True, "rescale": False, "lambda": 2.0, "int8_mask": False}
    assert per == [{"weight": 1.0, "density": 1.0}]
    with pytest.raises(MergeError, match=r"slerp: needs exactly 1 non-base inputs, got 2"):
        validate_params(get_method("slerp"), {"t": 0.5}, [{}, {}])
    with pytest.raises(MergeError, match=r"slerp: a base model is required"):
        validate_params(get_method("slerp"), {"t": 0.5}, [{}], has_base=False)
