"""A faster `__init__` for frozen, slotted dataclasses on the per-message paths.

Why: a frozen dataclass's generated `__init__` stores each field with
`object.__setattr__(self, name, value)` (a global lookup, an attribute lookup and a call that
searches the class for the slot, per field) to get past its own `__setattr__`, which refuses.
A message builds about 40 such values across the accept and the pipeline; measured here a
20-field frozen init costs 1.9 µs against 0.24 µs unfrozen. Until session 52 this init stored
through each slot's own descriptor (`__set__`, about half the cost: still a method-wrapper call
with an argument tuple, ~700 instructions a field). Now it lends the instance, for the length
of the init, a private subclass adding no slot whose attribute stores are object's own: each
field is a plain slot store the interpreter specialises, and two `__class__` assignments
(counted under callgrind: an 8-field `ReceiptIn` 7.8 k -> 4.7 k instructions, a 4-field one
4.8 k -> 4.1 k). The class stays frozen exactly as before (assignment after construction still
raises `FrozenInstanceError`, equality and hashing are unchanged, the instance is of its class
before the init returns or runs `__post_init__`); an instance of a subclass is built the old
way, through the descriptors.

Only plain shapes are rewritten: fields with `init=False` or `InitVar`s, or named as one of
this init's own names (`self`, `_type`, `_FACTORY`...), keep the dataclass's own `__init__`
(none of the hot classes has them). Defaults, default factories, `kw_only`
and `__post_init__` behave as in the generated one; tests/unit/test_fastinit.py compares
signatures and results with it for every class that uses this.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")


class _Factory:
    """The "no value given" default of a field with a default factory (shown as dataclasses
    shows its own)."""

    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _Factory()
# object's own `__class__` store, past a frozen class's `__setattr__` (which refuses).
_SET_CLASS = object.__dict__["__class__"].__set__


def fast_init(cls: type[T]) -> type[T]:
    if not (dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen):  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__}: fast_init is for frozen dataclasses")
    if "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__}: fast_init needs slots=True")
    fields = dataclasses.fields(cls)
    # InitVars are not fields but are parameters: a count that differs means one is there.
    if (
        any(not f.init for f in fields)
        or len(fields) != len(inspect.signature(cls.__init__).parameters) - 1
    ):
        return cls
    # The instance is built as `_Open`, a subclass of `cls` adding no slot whose attribute
    # assignment is object's own (both `__setattr__` and `__delattr__` must be object's, or the
    # type keeps the Python-level hook): each field is then a plain slot store, which the
    # interpreter specialises (STORE_ATTR_SLOT), where a descriptor's `__set__` called from
    # Python is a method-wrapper call with an argument tuple (~700 instructions a field). The
    # instance is `cls` again before anything else sees it: two `__class__` assignments, paid
    # back from three or four fields on. An instance of a subclass of `cls` (whose layout `_Open`
    # does not share) is built the slower way, through each slot's descriptor.
    opened = type(
        f"{cls.__name__}._Open",
        (cls,),
        {
            "__slots__": (),
            "__setattr__": object.__setattr__,
            "__delattr__": object.__delattr__,
            "__module__": cls.__module__,
        },
    )
    ns: dict[str, Any] = {
        "_FACTORY": _FACTORY,
        "_cls": cls,
        "_Open": opened,
        "_open": _SET_CLASS,
        "_type": type,
    }
    positional, keyword, factories = _parameters(fields, ns)
    fast: list[str] = []
    slow: list[str] = []
    for f in fields:
        ns[f"_s_{f.name}"] = inspect.getattr_static(cls, f.name).__set__
        fast.append(f"        self.{f.name} = {f.name}")
        slow.append(f"        _s_{f.name}(self, {f.name})")
    if any(f.name == "self" or f.name in ns for f in fields):
        # A field named as one of the init's own names (`self`, `_type`, `_s_a`...) would
        # shadow it there: such a class keeps the dataclass's own init.
        return cls
    body = [
        *factories,
        "    if _type(self) is _cls:",
        "        _open(self, _Open)",
        *fast,
        "        self.__class__ = _cls",
        "    else:",
        *(slow or ["        pass"]),
    ]
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    params = ", ".join(["self", *positional, *(["*", *keyword] if keyword else [])])
    source = f"def __init__({params}):\n" + "\n".join(body) + "\n"
    exec(source, ns)  # built from field names only, as dataclasses builds its own
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__annotations__ = dict(cls.__init__.__annotations__)
    cls.__dataclass_init__ = cls.__init__  # type: ignore[attr-defined]  # kept for the tests
    cls.__init__ = init  # type: ignore[method-assign]  # replacing it is the point
    return cls


def _parameters(
    fields: tuple[dataclasses.Field[Any], ...], ns: dict[str, Any]
) -> tuple[list[str], list[str], list[str]]:
    """The generated function's positional and keyword-only parameters (a default by its name in
    `ns`, a factory's by the `_FACTORY` marker) and the lines calling the factories: the same
    signature for fast_init's `__init__` and maker's function."""
    positional: list[str] = []
    keyword: list[str] = []
    factories: list[str] = []
    for f in fields:
        param = f.name
        if f.default is not dataclasses.MISSING:
            ns[f"_d_{f.name}"] = f.default
            param += f"=_d_{f.name}"
        elif f.default_factory is not dataclasses.MISSING:
            ns[f"_f_{f.name}"] = f.default_factory
            param += "=_FACTORY"
            factories.append(f"    if {f.name} is _FACTORY: {f.name} = _f_{f.name}()")
        (keyword if f.kw_only else positional).append(param)
    return positional, keyword, factories


def maker(cls: Callable[P, T], *, checked: bool = True) -> Callable[P, T]:
    """A function that builds `cls(...)`, for the hot paths: the same parameters (names, order,
    defaults, factories, keyword-only ones), the same instance (of `cls` itself, equal, frozen,
    `__post_init__` run), ~1,500 instructions less a call (session 57). Why: calling a class
    whose `__init__` is Python enters the interpreter again from C (`type_call`, `slot_tp_init`,
    a new evaluation loop: ~1,000 instructions on 3.11), and `fast_init` then lends the instance
    `_Open` and takes it back (two `__class__` stores). This is a plain Python function (a call
    the interpreter inlines) that allocates the instance as a subclass adding no slot whose
    `__init__` is object's (`_Alloc()`: no Python init), stores each field as a plain slot store
    and gives the instance its class once. A class `fast_init` leaves with the dataclass's own
    init (init=False fields, `InitVar`s, a field named as one of this function's own names) is
    returned as it is: calling it is then the same thing, as slow as before.
    tests/unit/test_fastinit.py compares it with the class for every class that uses `fast_init`.

    `checked=False`: the function does not run `__post_init__` (its checks and conversions), for
    a caller whose values are proved already, which must say why where it builds one (session
    62: `admission.one_send`'s cash charge, whose Entry's checks were ~2.2 k instructions of
    every billed accept). A class without `__post_init__` is built the same either way."""
    klass: Any = cls
    if "__dataclass_init__" not in klass.__dict__:  # fast_init left it as it was
        return cls
    fields = dataclasses.fields(klass)
    alloc = type(
        f"{klass.__name__}._Alloc",
        (klass,),
        {
            "__slots__": (),
            "__init__": object.__init__,
            "__setattr__": object.__setattr__,
            "__delattr__": object.__delattr__,
            "__module__": klass.__module__,
        },
    )
    ns: dict[str, Any] = {"_FACTORY": _FACTORY, "_cls": klass, "_Alloc": alloc}
    positional, keyword, body = _parameters(fields, ns)
    if any(f.name == "self" or f.name in ns for f in fields):
        return cls
    body.append("    self = _Alloc()")
    body += [f"    self.{f.name} = {f.name}" for f in fields]
    body.append("    self.__class__ = _cls")
    if checked and hasattr(klass, "__post_init__"):
        body.append("    self.__post_init__()")
    body.append("    return self")
    params = ", ".join([*positional, *(["*", *keyword] if keyword else [])])
    source = f"def make({params}):\n" + "\n".join(body) + "\n"
    exec(source, ns)  # built from field names only, as dataclasses builds its own
    make = ns["make"]
    make.__name__ = f"make_{klass.__name__}"
    make.__qualname__ = f"maker({klass.__qualname__})"
    make.__module__ = klass.__module__
    make.__annotations__ = {
        k: v for k, v in klass.__dataclass_init__.__annotations__.items() if k != "return"
    }
    make.__annotations__["return"] = klass.__name__
    make.__doc__ = f"`{klass.__qualname__}(...)`, built faster (bridge.fastinit.maker)."
    return make
