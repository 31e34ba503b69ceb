"""fast_init must be indistinguishable from the dataclass's own __init__, only faster."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from dataclasses import InitVar, dataclass, field
from typing import Any

import pytest

import bridge
from bridge.fastinit import fast_init, maker


def _fast_classes() -> list[type]:
    found = []
    for info in pkgutil.walk_packages(bridge.__path__, "bridge."):
        if info.name.startswith("bridge.sim"):
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and value.__module__ == module.__name__
                and "__dataclass_init__" in value.__dict__
            ):
                found.append(value)
    return found


FAST = _fast_classes()


def test_the_hot_classes_use_it() -> None:
    names = {c.__qualname__ for c in FAST}
    assert {"NewMessage", "AcceptBatch", "Facts", "Account", "Receipt", "SubmitResult"} <= names


@pytest.mark.parametrize("cls", FAST, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_same_signature_and_same_result_as_the_dataclass_init(cls: type) -> None:
    fast = inspect.signature(cls.__init__)
    own = inspect.signature(cls.__dataclass_init__)
    assert str(fast) == str(own)  # names, kinds, defaults (by repr), order
    # One distinct object per required parameter; defaults left out. __post_init__ checks may
    # refuse these: then both inits must refuse them the same way.
    args = []
    kwargs = {}
    for p in list(own.parameters.values())[1:]:
        if p.default is not inspect.Parameter.empty:
            continue
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            kwargs[p.name] = object()
        else:
            args.append(object())
    a = object.__new__(cls)
    b = object.__new__(cls)
    outcomes = []
    for init, inst in ((cls.__init__, a), (cls.__dataclass_init__, b)):
        try:
            init(inst, *args, **kwargs)
            outcomes.append(None)
        except Exception as exc:
            outcomes.append(type(exc))
    assert outcomes[0] == outcomes[1]
    if outcomes[0] is None:
        for f in dataclasses.fields(cls):
            assert getattr(a, f.name) == getattr(b, f.name), f.name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(a, dataclasses.fields(cls)[0].name, 1)


@fast_init
@dataclass(frozen=True, slots=True)
class _Shape:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=list)
    d: int = field(default=4, kw_only=True)
    e: tuple[int, ...] = field(default=(), kw_only=True)


@fast_init
@dataclass(frozen=True, slots=True)
class _Checked:
    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("n must not be negative")


@fast_init
@dataclass(frozen=True, slots=True)
class _Child(_Shape):
    f: int = field(default=6, kw_only=True)


def test_defaults_factories_and_keywords() -> None:
    x = _Shape(1)
    assert (x.a, x.b, x.c, x.d, x.e) == (1, "b", [], 4, ())
    y = _Shape(1)
    assert x.c is not y.c  # a fresh list per instance, as the factory promises
    z = _Shape(2, "z", [3], d=5, e=(1,))
    assert (z.a, z.b, z.c, z.d, z.e) == (2, "z", [3], 5, (1,))
    with pytest.raises(TypeError):
        _Shape(1, "b", [], 5)  # type: ignore[misc]  # d is keyword-only
    with pytest.raises(TypeError):
        _Shape()  # type: ignore[call-arg]
    assert _Shape(1) == _Shape(1)


def test_equality_hash_repr_and_frozenness_unchanged() -> None:
    assert _Checked(3) == _Checked(3) and _Checked(3) != _Checked(4)
    assert hash(_Checked(3)) == hash(_Checked(3))
    assert repr(_Checked(3)) == "_Checked(n=3)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        _Checked(3).n = 4  # type: ignore[misc]


def test_post_init_runs() -> None:
    with pytest.raises(ValueError, match="negative"):
        _Checked(-1)


def test_inherited_fields() -> None:
    c = _Child(1, f=7)
    assert (c.a, c.b, c.d, c.f) == (1, "b", 4, 7)
    assert "__dataclass_init__" in _Child.__dict__


def test_init_vars_and_init_false_keep_the_dataclass_init() -> None:
    @dataclass(frozen=True, slots=True)
    class WithInitVar:
        a: int
        scale: InitVar[int] = 1

    @dataclass(frozen=True, slots=True)
    class WithInitFalse:
        a: int
        b: int = field(init=False, default=0)

    own = WithInitVar.__init__, WithInitFalse.__init__
    assert fast_init(WithInitVar).__init__ is own[0]
    assert fast_init(WithInitFalse).__init__ is own[1]


def test_refuses_what_it_cannot_speed_up() -> None:
    @dataclass(slots=True)
    class Unfrozen:
        a: int

    @dataclass(frozen=True)
    class NoSlots:
        a: int

    with pytest.raises(TypeError, match="frozen"):
        fast_init(Unfrozen)
    with pytest.raises(TypeError, match="slots"):
        fast_init(NoSlots)


def test_an_instance_is_its_class_once_built_and_a_subclass_keeps_its_own() -> None:
    # The fast path builds the instance as a private open subclass and sets its class back:
    # nothing outside the init may see that subclass, and an instance of a subclass of a
    # fast_init class (here one that is no dataclass of its own) must stay what it is.
    x = _Shape(1, "x", [2], d=3, e=(4,))
    assert type(x) is _Shape and x.__class__ is _Shape
    assert (x.a, x.b, x.c, x.d, x.e) == (1, "x", [2], 3, (4,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        x.a = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del x.a

    class Plain(_Checked):
        __slots__ = ("extra",)

    p = Plain(5)
    assert type(p) is Plain and p.n == 5
    with pytest.raises(ValueError, match="negative"):
        Plain(-1)
    c = _Child(1, f=7)
    assert type(c) is _Child and (c.a, c.f) == (1, 7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.f = 8  # type: ignore[misc]


def test_a_factory_that_raises_leaves_nothing_half_built() -> None:
    def boom() -> list[int]:
        raise RuntimeError("no list")

    @fast_init
    @dataclass(frozen=True, slots=True)
    class Raising:
        a: int
        b: list[int] = field(default_factory=boom)

    with pytest.raises(RuntimeError, match="no list"):
        Raising(1)
    r = Raising(1, [2])
    assert type(r) is Raising and r.b == [2]


@pytest.mark.parametrize("name", ["self", "_type", "_open", "_Open", "_cls", "_FACTORY", "_s_a"])
def test_a_field_named_as_one_of_the_inits_own_names(name: str) -> None:
    # Review r1 (session 52): the init's body names (`_type`, `_open`, `_Open`, `_cls` new in
    # session 52; `_FACTORY`, `_s_<field>`, `self` before) were shadowed by a field of that
    # name: 'int' object is not callable, a passed value replaced by the factory's, a
    # SyntaxError. Such a class keeps the dataclass's own init.
    ns: dict[str, Any] = {}
    exec(  # a field name is only writable in a class body
        "@dataclass(frozen=True, slots=True)\n"
        f"class X:\n    a: int\n    {name}: list[int] = field(default_factory=list)\n",
        {"dataclass": dataclass, "field": field},
        ns,
    )
    cls = fast_init(ns["X"])
    x = cls(1, [2])
    assert type(x) is cls and x.a == 1 and getattr(x, name) == [2]
    y = cls(a=1)
    assert type(y) is cls and getattr(y, name) == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        x.a = 2


# Session 57: `maker(cls)`, the function the hot paths build their values with instead of calling
# the class: the same parameters and the same instance, for every class that uses fast_init.


@pytest.mark.parametrize("cls", FAST, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_a_maker_takes_the_same_parameters_and_builds_the_same_instance(cls: type) -> None:
    make = maker(cls)
    own = inspect.signature(cls.__dataclass_init__)
    made = inspect.signature(make)
    # names, kinds, defaults (by repr: a factory's is "<factory>"), order
    assert [str(p) for p in made.parameters.values()] == [
        str(p) for p in list(own.parameters.values())[1:]
    ]
    assert made.return_annotation == cls.__name__
    args = []
    kwargs = {}
    for p in list(own.parameters.values())[1:]:
        if p.default is not inspect.Parameter.empty:
            continue
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            kwargs[p.name] = object()
        else:
            args.append(object())
    outcomes: list[Any] = []
    for build in (make, cls):
        try:
            outcomes.append(build(*args, **kwargs))
        except Exception as exc:
            outcomes.append(type(exc))
    a, b = outcomes
    if isinstance(b, type):  # refused by __post_init__: refused alike
        assert a is b
        return
    assert type(a) is cls and a.__class__ is cls
    for f in dataclasses.fields(cls):
        assert getattr(a, f.name) == getattr(b, f.name), f.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(a, dataclasses.fields(cls)[0].name, 1)


def test_a_maker_keeps_defaults_factories_keywords_and_post_init() -> None:
    make = maker(_Shape)
    x = make(1)
    assert x == _Shape(1) and type(x) is _Shape
    assert (x.a, x.b, x.c, x.d, x.e) == (1, "b", [], 4, ())
    assert make(1).c is not x.c  # a fresh list per instance
    z = make(2, "z", [3], d=5, e=(1,))
    assert z == _Shape(2, "z", [3], d=5, e=(1,))
    assert make(a=2, b="z", c=[3], e=(1,), d=5) == z
    with pytest.raises(TypeError):
        make(1, "b", [], 5)  # type: ignore[misc]  # d is keyword-only
    with pytest.raises(TypeError):
        make()  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="negative"):
        maker(_Checked)(-1)
    c = maker(_Child)(1, f=7)
    assert type(c) is _Child and c == _Child(1, f=7)
    assert hash(maker(_Checked)(3)) == hash(_Checked(3))
    assert repr(maker(_Checked)(3)) == "_Checked(n=3)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        del c.a
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.f = 8  # type: ignore[misc]


def test_a_maker_of_a_class_fast_init_left_is_the_class() -> None:
    @dataclass(frozen=True, slots=True)
    class WithInitFalse:
        a: int
        b: int = field(init=False, default=0)

    class Plain(_Checked):
        __slots__ = ("extra",)

    assert maker(fast_init(WithInitFalse)) is WithInitFalse
    assert maker(Plain) is Plain  # a subclass that is no dataclass of its own


@pytest.mark.parametrize("name", ["self", "_Alloc", "_cls", "_FACTORY", "_d_b", "_f_c"])
def test_a_maker_with_a_field_named_as_one_of_its_own_names_is_the_class(name: str) -> None:
    ns: dict[str, Any] = {}
    exec(
        "@dataclass(frozen=True, slots=True)\n"
        f"class X:\n    a: int\n    {name}: int = 0\n    b: int = 1\n"
        "    c: list[int] = field(default_factory=list)\n",
        {"dataclass": dataclass, "field": field},
        ns,
    )
    cls = fast_init(ns["X"])
    make = maker(cls)
    if name == "self":  # fast_init itself keeps the dataclass's init
        assert make is cls
        return
    assert make is cls
    assert cls(1, 2) == cls(1, 2)
