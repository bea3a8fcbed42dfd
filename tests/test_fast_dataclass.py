"""mergestore.fast_dataclass.dataclass behaves as dataclasses.dataclass: the same class built
by both, from generated field specs, compared on every behaviour mergestore relies on."""

from __future__ import annotations

import ast
import copy
import dataclasses
import importlib
import pkgutil
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mergestore
from mergestore import fast_dataclass
from mergestore.fast_dataclass import dataclass

field_specs = st.fixed_dictionaries(
    {
        "init": st.booleans(),
        "default": st.sampled_from(["none", "value", "factory"]),
        "repr": st.booleans(),
        "compare": st.booleans(),
        "hash": st.sampled_from([None, True, False]),
    }
)


def _build(decorator: Any, fields: list[dict[str, Any]], frozen: bool, post_init: bool) -> Any:
    """One class from the specs, decorated by `decorator`; the TypeError's message if the
    decorator refused it."""
    namespace: dict[str, Any] = {"__doc__": "A generated class.", "__annotations__": {}}
    for i, spec in enumerate(fields):
        name = f"f{i}"
        namespace["__annotations__"][name] = "int"
        kw: dict[str, Any] = {"init": spec["init"], "repr": spec["repr"]}
        kw.update(compare=spec["compare"], hash=spec["hash"])
        if spec["default"] == "value":
            kw["default"] = 100 + i
        elif spec["default"] == "factory":
            kw["default_factory"] = list
        namespace[name] = dataclasses.field(**kw)
    if post_init:

        def __post_init__(self: Any) -> None:
            object.__setattr__(self, "seen", getattr(self, "seen", 0) + 1)

        namespace["__post_init__"] = __post_init__
    cls = type("Generated", (), namespace)
    try:
        return decorator(cls, frozen=frozen)
    except TypeError as e:
        return str(e)


def _args(fields: list[dict[str, Any]], offset: int) -> tuple[list[Any], dict[str, Any]]:
    """Positional values for the init fields without a default, keywords for half the rest."""
    pos, kw = [], {}
    for i, spec in enumerate(fields):
        if not spec["init"]:
            continue
        if spec["default"] == "none":
            pos.append(offset + i)
        elif i % 2:
            kw[f"f{i}"] = offset + i
    return pos, kw


def _outcome(fn: Any) -> Any:
    try:
        return ("ok", fn())
    except Exception as e:  # the kind of error is what is compared
        return ("error", type(e).__name__)


@settings(max_examples=300, deadline=None)
@given(
    fields=st.lists(field_specs, max_size=5),
    frozen=st.booleans(),
    post_init=st.booleans(),
    offsets=st.tuples(st.integers(0, 2), st.integers(0, 2)),
)
def test_same_behaviour_as_the_standard_library(
    fields: list[dict[str, Any]], frozen: bool, post_init: bool, offsets: tuple[int, int]
) -> None:
    ours = _build(dataclass, fields, frozen, post_init)
    theirs = _build(dataclasses.dataclass, fields, frozen, post_init)
    assert type(ours) is type(theirs)
    if isinstance(theirs, str):  # both refused the class (a non-default after a default)
        assert ours == theirs
        return
    assert ours.__match_args__ == theirs.__match_args__
    for a, b in zip(dataclasses.fields(ours), dataclasses.fields(theirs), strict=True):
        assert (a.name, a.init, a.repr, a.compare, a.hash) == (
            b.name,
            b.init,
            b.repr,
            b.compare,
            b.hash,
        )
    assert ours.__dataclass_params__.frozen is frozen
    made = {}
    for which, cls in (("ours", ours), ("theirs", theirs)):
        objs = []
        for offset in (offsets[0] * 1000, offsets[1] * 1000):
            pos, kw = _args(fields, offset)
            objs.append(cls(*pos, **kw))
        made[which] = objs

    def same(fn: Any) -> None:  # fn(ours) and fn(theirs): the same value or kind of error
        assert _outcome(lambda: fn(made["ours"])) == _outcome(lambda: fn(made["theirs"]))

    same(lambda objs: [repr(o) for o in objs])
    same(lambda objs: (objs[0] == objs[1], objs[0] != objs[1], objs[0] == object()))
    same(lambda objs: [vars(o) for o in objs])
    same(lambda objs: dataclasses.asdict(objs[1]))
    same(lambda objs: repr(dataclasses.replace(objs[1])))
    same(lambda objs: dataclasses.replace(objs[1]) == objs[1])
    same(lambda objs: copy.deepcopy(objs[1]) == objs[1])
    same(lambda objs: [hash(o) for o in objs])  # the same values: a hash of the same tuple
    for name in [f"f{i}" for i in range(len(fields))] + ["other"]:
        same(lambda objs, n=name: setattr(objs[0], n, 7))
        same(lambda objs, n=name: delattr(objs[0], n))
    missing = [i for i, s in enumerate(fields) if s["init"] and s["default"] == "none"]
    if missing:  # one positional argument short: the same TypeError
        assert _outcome(lambda: ours(*range(len(missing) - 1))) == _outcome(
            lambda: theirs(*range(len(missing) - 1))
        )


def test_a_default_factory_runs_per_object_and_post_init_once() -> None:
    @dataclass(frozen=True)
    class Box:
        """A box."""

        items: list[int] = dataclasses.field(default_factory=list)
        size: int = dataclasses.field(default=3, compare=False)

        def __post_init__(self) -> None:
            object.__setattr__(self, "runs", getattr(self, "runs", 0) + 1)

    a, b = Box(), Box()
    assert a.items is not b.items and a == b and a.runs == 1
    assert Box([1], 5) == Box([1], 9) and repr(Box([1], 5)).endswith("Box(items=[1], size=5)")
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'size'"):
        a.size = 4


def test_methods_the_class_defines_are_kept() -> None:
    @dataclass
    class Named:
        """A named thing."""

        name: str

        def __repr__(self) -> str:
            return f"<{self.name}>"

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Named) and other.name.lower() == self.name.lower()

    assert repr(Named("a")) == "<a>" and Named("A") == Named("a")
    assert Named.__hash__ is None  # eq without frozen, as the stdlib leaves it


def test_unusual_classes_go_to_the_standard_library() -> None:
    @dataclass(order=True)
    class Ordered:
        """Ordered."""

        x: int

    @dataclass(frozen=True)
    class Base:
        """A base."""

        x: int

    @dataclass(frozen=True)
    class Child(Base):
        """A child."""

        y: int = 0

    assert Ordered(1) < Ordered(2)
    assert Child(1, 2) == Child(1, 2) and repr(Child(1)) == f"{Child.__qualname__}(x=1, y=0)"
    with pytest.raises(TypeError, match="non-frozen"):

        @dataclass
        class Loose(Base):
            """Not frozen under a frozen base."""


def test_mergestore_defines_its_dataclasses_with_this_module() -> None:
    """No module of the package uses dataclasses.dataclass directly (its import cost is the
    reason for fast_dataclass), and every dataclass of the package takes the fast route (so each
    has a docstring: the standard library writes one for a class without)."""
    pkg = Path(mergestore.__file__).parent
    direct = []
    for path in sorted(pkg.rglob("*.py")):
        if path.name == "fast_dataclass.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            imported = isinstance(node, ast.ImportFrom) and node.module == "dataclasses"
            if imported and any(a.name == "dataclass" for a in node.names):
                direct.append(f"{path.name}:{node.lineno}: from dataclasses import dataclass")
            used = isinstance(node, ast.Attribute) and node.attr == "dataclass"
            if used and isinstance(node.value, ast.Name) and node.value.id == "dataclasses":
                direct.append(f"{path.name}:{node.lineno}: dataclasses.dataclass")
    assert direct == []
    for module in pkgutil.walk_packages(mergestore.__path__, "mergestore."):
        importlib.import_module(module.name)
    classes = [
        value
        for name, module in sorted(sys.modules.items())
        if name.startswith("mergestore.")
        for value in vars(module).values()
        if isinstance(value, type) and value.__module__ == name
        if dataclasses.is_dataclass(value)
    ]
    assert len(classes) > 50
    slow = [c.__qualname__ for c in classes if c.__repr__.__module__ != fast_dataclass.__name__]
    assert slow == []


def test_initvar_or_keyword_only_fields_past_the_first_check_raise() -> None:
    """Where a Python version keeps annotations out of the class dict, an InitVar or a
    keyword-only field is still refused after the fields are made (not silently dropped)."""

    @dataclasses.dataclass
    class WithInitVar:
        a: int
        scale: dataclasses.InitVar[int] = 1

    @dataclasses.dataclass
    class WithKeywordOnly:
        a: int = dataclasses.field(kw_only=True)

    for cls in (WithInitVar, WithKeywordOnly):
        with pytest.raises(TypeError, match="need dataclasses.dataclass"):
            fast_dataclass._check_no_pseudo_fields(cls, dataclasses.fields(cls))

    @dataclass
    class Plain:
        """No pseudo-fields."""

        a: int
        b: int = 2

    fast_dataclass._check_no_pseudo_fields(Plain, dataclasses.fields(Plain))
