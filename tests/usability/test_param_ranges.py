"""Issue 15 item 4: every declared numeric parameter is range-checked before any data is read.

For each method and each numeric parameter, values just outside its declared range (and
+-inf, nan) are refused from the CLI with one line naming the parameter, its range and where
it was set; the store is unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import mergestore.ops  # noqa: F401  (registers the methods)
from mergestore.ops.registry import get_method, method_names
from mergestore.ops.spec import BaseRule, Scope

VALID = {"weight": 0.5, "t": 0.5}


def bad_values(p) -> list[float]:
    b = p.range
    out = [float("inf"), float("-inf"), float("nan")]
    if b.lo is not None:
        out.append(b.lo if b.lo_open else b.lo - 1)
    if b.hi is not None:
        out.append(b.hi if b.hi_open else b.hi + 0.5)
    return out


CASES = [
    (m, p.name, v)
    for m in method_names()
    for p in get_method(m).params
    if p.range is not None
    for v in bad_values(p)
]


def config(method: str, name: str, value: float) -> dict:
    spec = get_method(method)
    n = 1 if spec.max_inputs == 1 else 2
    models = ["dense_small", "frozen"][:n]
    data: dict = {"merge_method": method}
    if spec.base is not BaseRule.IGNORED:
        data["base_model"] = "main"
    params = {p.name: VALID[p.name] for p in spec.params if p.required and p.name != name}
    if spec.param(name).scope is Scope.SHARED:
        data["parameters"] = {**params, name: value}
        data["models"] = [{"model": m} for m in models]
        where = "parameters"
    else:
        data["parameters"] = params
        data["models"] = [{"model": m, "parameters": {name: value}} for m in models]
        where = "models[0] (dense_small)"
    return data, where


def test_every_numeric_parameter_is_declared_with_a_range() -> None:
    assert len({(m, n) for m, n, _ in CASES}) >= 40


@pytest.mark.parametrize(("method", "name", "value"), CASES)
def test_out_of_range_is_refused(ms, fam_store: Path, tmp_path: Path, method, name, value):
    data, where = config(method, name, value)
    y = tmp_path / "c.yml"
    y.write_text(yaml.safe_dump(data))
    r = ms("merge", "--config", y, "-b", "x")
    assert r.code == 1, (r.out, r.err)
    line = r.err.strip()
    assert "\n" not in line and line.startswith("error: ")
    assert name in line and where in line
    rng = str(get_method(method).param(name).range)
    assert rng in line or "finite" in line, line
    assert ms("log", "x").code != 0


def test_filter_is_named(ties) -> None:
    r = ties("--param", 'density=[{"filter": "mlp", "value": 0}, {"value": 0.5}]')
    assert r.code == 1 and "filter 'mlp'" in r.err and "(0, 1]" in r.err


@pytest.mark.parametrize("density", ["1", "0.01", "[0.2, 1]"])
def test_in_range_is_accepted(ties, density: str) -> None:
    r = ties("--param", f"density={density}", "-b", "ok")
    assert r.code == 0, r.err
