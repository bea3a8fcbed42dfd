"""`dataclass`: the standard library's decorator, with its methods made at a third of the cost.

Python 3.11's dataclasses compiles every generated method with its own `exec` (~0.2 ms each):
a frozen class costs ~1.25 ms to define (__init__, __repr__, __eq__, __hash__, __setattr__,
__delattr__), and the 77 classes a merge imports took ~85 ms of its ~0.3 s serial start (as
much as numpy). Here only __init__ is compiled, since it runs once per object and so stays
specialised to the class; __repr__, __eq__, __hash__ and a frozen class's __setattr__ and
__delattr__ are closures over the class's field names, made without compiling (~0.35 ms a
class in all).

The behaviour is the standard library's for what mergestore uses: fields with a default or a
default_factory, the field flags init, repr, compare and hash, __post_init__, frozen, methods
the class defines itself (kept), and dataclasses.fields / replace / asdict / is_dataclass.
Differences: __init__ has no parameter annotations, __repr__ has no guard against an object
that contains itself, and __dataclass_params__ is one shared object per frozen flag. Any other
option (order, slots, kw_only, ...), InitVar or KW_ONLY fields, a dataclass base class or a
class without a docstring goes to dataclasses.dataclass unchanged.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from dataclasses import MISSING, Field, FrozenInstanceError
from operator import attrgetter
from typing import Any, TypeVar

T = TypeVar("T", bound=type)


@dataclasses.dataclass(frozen=True)
class _Frozen:
    """The dataclass parameters (__dataclass_params__) of a frozen class."""


@dataclasses.dataclass
class _Mutable:
    """The dataclass parameters (__dataclass_params__) of a mutable class."""


_PARAMS = {  # shared by every class made here, as each stdlib class has its own equal one
    True: _Frozen.__dataclass_params__,  # type: ignore[attr-defined]
    False: _Mutable.__dataclass_params__,  # type: ignore[attr-defined]
}


class _FactorySentinel:
    """The default of an init parameter whose field has a default_factory."""

    def __repr__(self) -> str:
        return "<factory>"


_HAS_FACTORY = _FactorySentinel()


def dataclass(cls: T | None = None, /, *, frozen: bool = False, **options: Any) -> Any:
    """dataclasses.dataclass(cls, frozen=frozen, **options); see the module's docstring."""

    def wrap(c: T) -> T:
        if options or not _plain(c, frozen):
            return dataclasses.dataclass(c, frozen=frozen, **options)
        return _process(c, frozen)

    return wrap if cls is None else wrap(cls)


def _plain(cls: type, frozen: bool) -> bool:
    """Whether this module handles `cls` itself (else the standard library does)."""
    own = cls.__dict__
    if not own.get("__doc__"):
        return False  # the stdlib writes a docstring from __init__'s signature
    if any(hasattr(base, "__dataclass_fields__") for base in cls.__mro__[1:]):
        return False
    if frozen and ("__setattr__" in own or "__delattr__" in own):
        return False  # the stdlib's error
    for name, annotation in own.get("__annotations__", {}).items():
        text = annotation if isinstance(annotation, str) else repr(annotation)
        if "InitVar" in text or "KW_ONLY" in text:
            return False
        value = own.get(name)
        if isinstance(value, Field) and value.kw_only is True:
            return False
    return True


def _process(cls: T, frozen: bool) -> T:
    # The stdlib makes the fields (defaults, factories, ClassVar, mutable-default checks) and
    # __match_args__, with none of the methods that need compiling.
    dataclasses.dataclass(cls, init=False, repr=False, eq=False)
    cls.__dataclass_params__ = _PARAMS[frozen]  # type: ignore[attr-defined]
    fields = dataclasses.fields(cls)
    _check_no_pseudo_fields(cls, fields)
    own = cls.__dict__
    methods: dict[str, Callable[..., Any]] = {}
    if "__init__" not in own:
        methods["__init__"] = _make_init(cls, fields, frozen)
    if "__repr__" not in own:
        methods["__repr__"] = _make_repr(tuple(f.name for f in fields if f.repr))
    if "__eq__" not in own:
        methods["__eq__"] = _make_eq(_getter([f.name for f in fields if f.compare]))
    class_hash = own.get("__hash__", MISSING)
    explicit_hash = not (class_hash is MISSING or (class_hash is None and "__eq__" in own))
    if not explicit_hash:
        if frozen:
            names = [f.name for f in fields if (f.compare if f.hash is None else f.hash)]
            methods["__hash__"] = _make_hash(_getter(names))
        else:
            cls.__hash__ = None  # type: ignore[assignment]  # eq without frozen: unhashable
    if frozen:
        names = frozenset(f.name for f in fields)
        methods["__setattr__"], methods["__delattr__"] = _make_frozen(cls, names)
    for name, fn in methods.items():
        fn.__qualname__ = f"{cls.__qualname__}.{name}"
        setattr(cls, name, fn)
    abc.update_abstractmethods(cls)
    return cls


def _check_no_pseudo_fields(cls: type, fields: tuple[Field[Any], ...]) -> None:
    """Raise if an InitVar or keyword-only field got past `_plain` (where a Python version
    keeps annotations elsewhere): this __init__ would not take it."""
    real = {f.name for f in fields}
    for f in cls.__dataclass_fields__.values():  # type: ignore[attr-defined]
        text = f.type if isinstance(f.type, str) else repr(f.type)
        init_var = f.name not in real and "InitVar" in text
        if init_var or (f.name in real and f.kw_only is True):
            raise TypeError(
                f"{cls.__qualname__}.{f.name}: InitVar and keyword-only fields need"
                " dataclasses.dataclass, not mergestore.fast_dataclass"
            )


def _make_init(cls: type, fields: tuple[Field[Any], ...], frozen: bool) -> Callable[..., Any]:
    """__init__, compiled for this class's fields (as the stdlib's, without annotations)."""
    names = {f.name for f in fields}
    me = "__dataclass_self__" if "self" in names else "self"
    bound: dict[str, Any] = {"__dc_set__": object.__setattr__, "__dc_factory__": _HAS_FACTORY}
    params, body = [me], []
    seen_default = False
    for f in fields:
        default, factory = f"__dc_d_{f.name}__", f"__dc_f_{f.name}__"
        if f.default is not MISSING:
            bound[default] = f.default
        if f.default_factory is not MISSING:
            bound[factory] = f.default_factory
        if f.init:
            if f.default is not MISSING:
                params.append(f"{f.name}={default}")
                value = f.name
            elif f.default_factory is not MISSING:
                params.append(f"{f.name}=__dc_factory__")
                value = f"{factory}() if {f.name} is __dc_factory__ else {f.name}"
            else:
                if seen_default:
                    raise TypeError(f"non-default argument {f.name!r} follows default argument")
                params.append(f.name)
                value = f.name
            if f.default is not MISSING or f.default_factory is not MISSING:
                seen_default = True
        elif f.default_factory is not MISSING:
            value = f"{factory}()"
        else:
            continue  # left to the class attribute (a default) or unset, as the stdlib does
        assign = f"__dc_set__({me}, {f.name!r}, {value})" if frozen else f"{me}.{f.name} = {value}"
        body.append(assign)
    if hasattr(cls, "__post_init__"):
        body.append(f"{me}.__post_init__()")
    source = (
        f"def __dc_make__({', '.join(bound)}):\n"
        f" def __init__({', '.join(params)}):\n"
        + "".join(f"  {line}\n" for line in body or ["pass"])
        + " return __init__\n"
    )
    namespace: dict[str, Any] = {}
    exec(source, {}, namespace)  # the source is made above from field names
    return namespace["__dc_make__"](**bound)


def _getter(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """A function giving an object's values of `names` as one tuple (a 1-tuple for one)."""
    if len(names) >= 2:
        return attrgetter(*names)
    if names:
        get = attrgetter(names[0])
        return lambda obj: (get(obj),)
    return lambda obj: ()


def _make_repr(names: tuple[str, ...]) -> Callable[[Any], str]:
    def __repr__(self: Any) -> str:
        inner = ", ".join([f"{name}={getattr(self, name)!r}" for name in names])
        return f"{self.__class__.__qualname__}({inner})"

    return __repr__


def _make_eq(values: Callable[[Any], tuple[Any, ...]]) -> Callable[[Any, Any], Any]:
    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is self.__class__:
            return values(self) == values(other)
        return NotImplemented

    return __eq__


def _make_hash(values: Callable[[Any], tuple[Any, ...]]) -> Callable[[Any], int]:
    def __hash__(self: Any) -> int:
        return hash(values(self))

    return __hash__


def _make_frozen(
    cls: type, names: frozenset[str]
) -> tuple[Callable[[Any, str, Any], None], Callable[[Any, str], None]]:
    def __setattr__(self: Any, name: str, value: Any) -> None:
        if type(self) is cls or name in names:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        super(cls, self).__setattr__(name, value)

    def __delattr__(self: Any, name: str) -> None:
        if type(self) is cls or name in names:
            raise FrozenInstanceError(f"cannot delete field {name!r}")
        super(cls, self).__delattr__(name)

    return __setattr__, __delattr__
