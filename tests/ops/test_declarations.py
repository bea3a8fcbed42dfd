"""The method declarations: names, lookups, and agreement with mergekit 0.1.5's registry."""

from __future__ import annotations

import pytest
from mergekit_ref import mk

from mergestore.errors import MergeError
from mergestore.ops import BaseRule, Scope, get_method, method_names

ALL_METHODS = {
    "linear",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "slerp",
    "nuslerp",
    "multislerp",
    "karcher",
    "model_stock",
    "sce",
    "nearswap",
    "ram",
    "ramplus_tl",
    "passthrough",
    "arcee_fusion",
}


def test_all_methods_registered():
    assert set(method_names()) == ALL_METHODS
    assert method_names() == sorted(method_names())


def test_unknown_method_names_the_known_ones():
    with pytest.raises(
        MergeError, match=r"unknown merge method 'tise' \(did you mean 'ties'\?\) \(known: .*ties"
    ):
        get_method("tise")


def test_spot_check_defaults():
    # Values from the 0.1.5 defaults table (mergekit-methods.md section 2.1).
    assert get_method("ties").param("normalize").default is True
    assert get_method("dare_ties").param("normalize").default is False
    assert get_method("dare_ties").param("rescale").default is True
    assert get_method("della").param("epsilon").default == 0.15
    assert get_method("breadcrumbs").param("gamma").default == 0.01
    assert get_method("linear").param("weight").required
    assert get_method("linear").param("weight").scope is Scope.INPUT
    assert get_method("slerp").base is BaseRule.REQUIRED
    assert get_method("karcher").param("max_iter").kind is int
    assert get_method("passthrough").param("scale").default is None


_SCOPE = {"shared": Scope.SHARED, "input": Scope.INPUT, "non_base": Scope.NON_BASE}


@pytest.mark.parametrize("name", sorted(ALL_METHODS))
def test_declarations_match_mergekit_registry(name):
    theirs = mk.spec(name)  # mergekit's registry entry, from its own venv (tests/mergekit_ref.py)
    ours = get_method(name)
    assert {p.name for p in ours.params} == {p["name"] for p in theirs["parameters"]}
    for p in theirs["parameters"]:
        mine = ours.param(p["name"])
        assert mine.scope is _SCOPE[p["scope"]], p["name"]
        assert mine.required == p["required"], p["name"]
        if not p["required"]:
            default = p["default"]
            assert mine.default == default and type(mine.default) is type(default), p["name"]
    assert ours.base.value == theirs["base"]
    assert ours.optional_tensor.value == theirs["optional_tensor_policy"]
    # Translate mergekit's contract (total inputs, optional non-base bounds) to ours.
    has_base = ours.base is BaseRule.REQUIRED
    min_nb, max_nb = theirs["min_non_base"], theirs["max_non_base"]
    lo = min_nb if min_nb is not None else theirs["min_inputs"] - int(has_base)
    hi = max_nb if max_nb is not None else theirs["max_inputs"]
    if hi is not None and max_nb is None:
        hi -= int(has_base)
    assert ours.min_inputs == max(lo, 0 if has_base else 1)
    assert ours.max_inputs == hi
