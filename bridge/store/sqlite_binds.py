"""Adapters that let the sqlite3 module bind None, bool and bytes without its slow path.

Why: the module binds an exact int, float, str or bytearray directly, but sends any other value
(None, a bool, bytes) through its adaptation protocol first, which, with no adapter registered
for the type, asks the protocol class for `__adapt__` and raises and formats an AttributeError
("type object ... has no attribute ...") to learn that it has none: ~3,300 instructions a value
(a 10-value SELECT, timed per value: None 406, bool 480, bytes 636 ns, an int 139). An accept
binds 17 of them (the message row's empty columns, the facts statement's, the segment's and the
idempotency record's bytes). An adapter registered for the type is found by one dict lookup and
called instead, and each of these returns what the module then binds exactly as before (NULL,
the integer, the blob): 1,134 k -> 1,101 k instructions per accepted request (session 50,
`scripts/bench_accept_inproc.py --callgrind`).

Registered once per process, at the import of the store's runner (the registry is the sqlite3
module's own, global: every connection of the process, the tools' included, binds the same).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from functools import lru_cache
from itertools import compress
from operator import is_, is_not, itemgetter
from typing import Any

# C callables, no Python frame per value: dict.get of an empty dict answers None for any key.
_EMPTY: dict[object, None] = {}
_NONE = _EMPTY.get


def register() -> None:
    """Idempotent: registering again replaces the same adapters."""
    sqlite3.register_adapter(type(None), _NONE)
    sqlite3.register_adapter(bool, int)
    sqlite3.register_adapter(bytes, bytes)


register()


# Statements built before the write lock, for the accept's job (session 53). Even with the
# adapters above, each None, bool or bytes value goes through the module's adaptation protocol:
# a (type, protocol) key tuple built, a dict lookup and the adapter's call, ~1,300 instructions
# a value counted under callgrind, against a direct bind for an exact int, float, str or
# bytearray. And a named parameter costs a new str per parameter (its name, made from SQLite's
# C string) and a dict lookup at each execution. So a statement the accept runs inside the
# write lock is rewritten outside it: a parameter whose value is None written as a literal NULL
# in the text (the same value to SQL: an expression, a comparison, an IS or an insert treats a
# bound NULL and the literal alike), named parameters numbered, and bytes passed as bytearray
# (bound as the same blob). The texts are cached, so each rewriting is made once and the
# sqlite3 module's own statement cache finds one str object (its hash kept) each time.

# A literal, a quoted name, or a parameter: a `?` or `:name` inside quotes is not one. What
# this scan cannot read right is refused (`_unread`), not rewritten wrong: a comment (a quote
# or `?` inside it), a numbered `?NNN` (read as `?` then digits), a `$name` or `@name`, a
# [bracketed] or `backquoted` name.
_TOKENS = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|(--|/\*|\?[0-9]|[$@[`])|(\?)|:([A-Za-z_][A-Za-z0-9_]*)"
)


def _unread(m: re.Match[str], sql: str) -> None:
    if m.group(1) is not None:
        raise ValueError(f"{m.group(1)!r} outside quotes, which sqlite_binds cannot rewrite: {sql}")


# As many Nones as a statement has parameters, for map(): the masks below are made by C calls
# (map, is_, compress), not a Python generator step per value.
_NONES = (None,) * 64


def without_nones(sql: str, row: Sequence[Any]) -> tuple[str, Sequence[Any]]:
    """`sql` (positional `?` parameters) and `row` with each None written in the text as NULL
    instead of bound; as they were when `row` holds no None."""
    if None not in row:
        return sql, row
    return _nulled(sql, tuple(map(is_, row, _NONES))), tuple(
        compress(row, map(is_not, row, _NONES))
    )


def rows_without_nones(
    sql: str, rows: Sequence[Sequence[Any]]
) -> tuple[str, Sequence[Sequence[Any]]]:
    """`without_nones` for `executemany`'s rows: only when every row has its Nones in the same
    places (one text for them all); as they were otherwise."""
    if len(rows) == 1:
        text, row = without_nones(sql, rows[0])
        return text, (row,)
    masks = {tuple(map(is_, row, _NONES)) for row in rows}
    if len(masks) != 1:
        return sql, rows
    (mask,) = masks
    if not any(mask):
        return sql, rows
    return _nulled(sql, mask), [tuple(compress(row, map(is_not, row, _NONES))) for row in rows]


@lru_cache(maxsize=256)
def _nulled(sql: str, mask: tuple[bool, ...]) -> str:
    marks = iter(mask)

    def one(m: re.Match[str]) -> str:
        _unread(m, sql)
        if m.group(2) is None:
            if m.group(3) is not None:
                raise ValueError(f"a named parameter in a positional statement: {sql}")
            return m.group(0)
        return "NULL" if next(marks) else "?"

    text = _TOKENS.sub(one, sql)
    if next(marks, None) is not None:
        raise ValueError(f"more values than parameters for {sql}")
    return text


class KnownNones:
    """`rows_without_nones` for rows whose Nones can only be at known places (a type's
    optional fields), the caller saying which of them are None (a tuple of bools, one per
    place, read from the values' own fields): no scan of every value for its mask (`map(is_,
    ...)`, ~1 µs for a 20-value row) and no `compress` to drop them, but the text and an
    `itemgetter` of the other values (one C call) kept per pattern (session 54). A None
    anywhere else is bound, as the sqlite3 module binds one (its adapter)."""

    __slots__ = ("_places", "_sql", "_texts", "_width")

    def __init__(self, sql: str, width: int, places: Sequence[int]) -> None:
        self._sql = sql
        self._width = width
        self._places = tuple(places)
        # At most 2 ** len(places) entries: each pattern made once.
        self._texts: dict[tuple[bool, ...], tuple[str, Callable[[Any], Any] | None]] = {}

    def text(self, nones: tuple[bool, ...]) -> tuple[str, Callable[[Any], Any] | None]:
        """The statement's text for rows with `nones` at the places, and the getter of a row's
        other values, as a tuple (None when there is no None to drop)."""
        got = self._texts.get(nones)
        if got is None:
            if len(nones) != len(self._places):
                raise ValueError(f"{len(nones)} flags for {len(self._places)} places")
            mask = [False] * self._width
            for place, none in zip(self._places, nones, strict=True):
                mask[place] = none
            kept = [i for i, m in enumerate(mask) if not m]
            got = (
                (_nulled(self._sql, tuple(mask)), itemgetter(*kept))
                if any(nones)
                else (self._sql, None)
            )
            self._texts[nones] = got
        return got

    def row(self, row: Sequence[Any], nones: tuple[bool, ...]) -> tuple[str, Sequence[Any]]:
        """One row (`rows` of one, as a tuple of it). The kept pattern looked up here first,
        without `text`'s call (~0.6 k of every one-recipient accept before its lock: session
        62)."""
        got = self._texts.get(nones)
        text, pick = self.text(nones) if got is None else got
        return text, ((row,) if pick is None else (pick(row),))

    def rows(
        self, rows: Sequence[Sequence[Any]], nones: Sequence[tuple[bool, ...]]
    ) -> tuple[str, Sequence[Sequence[Any]]]:
        """As `rows_without_nones`: `rows` (each with its `nones`) under one text when their
        patterns are alike, as they are (the statement with them bound) otherwise; no rows, as
        they are (an accept of no message, as `rows_without_nones` answers)."""
        if not nones:
            return self._sql, rows
        first = nones[0]
        if any(n != first for n in nones):
            return self._sql, rows
        text, pick = self.text(first)
        if pick is None:
            return text, rows
        return text, [pick(row) for row in rows]


def positional(sql: str, args: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """`sql` with named parameters (`:name`, as in `args`) numbered instead (`?1`, `?2` ...),
    each whose value is None written as NULL, and the values in their numbers' order."""
    nones = frozenset(compress(args, map(is_, args.values(), _NONES)))
    text, names = _numbered(sql, nones)
    return text, tuple(map(args.__getitem__, names))


def positional_at(sql: str, args: Mapping[str, Any], name: str) -> tuple[str, tuple[Any, ...], int]:
    """`positional`, and the place of `name`'s value among the values (its value never None)."""
    nones = frozenset(compress(args, map(is_, args.values(), _NONES)))
    text, names = _numbered(sql, nones)
    return text, tuple(map(args.__getitem__, names)), names.index(name)


def positional_plan(
    sql: str, order: Sequence[str], nones: Collection[str]
) -> tuple[str, Callable[[Sequence[Any]], tuple[Any, ...]], tuple[str, ...]]:
    """`positional` for values given as a tuple in `order` (every name `sql` uses, and maybe
    others), those named in `nones` None: the text, a getter of the values in their numbers'
    order (one C call), and the names in that order. Made once per pattern of Nones by the
    caller, which keeps it (session 58: `positional` per call built a frozenset of the Nones,
    looked the text up by it and picked each value by name, ~17 k instructions for the accept's
    13 arguments)."""
    text, names = _numbered(sql, frozenset(nones))
    at = tuple(map(list(order).index, names))
    pick: Callable[[Sequence[Any]], tuple[Any, ...]] = (
        itemgetter(*at) if len(at) > 1 else (lambda row: tuple(row[i] for i in at))
    )
    return text, pick, names


@lru_cache(maxsize=256)
def _numbered(sql: str, nones: frozenset[str]) -> tuple[str, tuple[str, ...]]:
    names: dict[str, int] = {}

    def one(m: re.Match[str]) -> str:
        _unread(m, sql)
        name = m.group(3)
        if name is None:
            if m.group(2) is not None:
                raise ValueError(f"a positional parameter in a named statement: {sql}")
            return m.group(0)
        if name in nones:
            return "NULL"
        return f"?{names.setdefault(name, len(names) + 1)}"

    return _TOKENS.sub(one, sql), tuple(names)


def blob(value: bytes) -> bytearray:
    """bytes as the sqlite3 module binds them without adaptation (the same blob)."""
    return bytearray(value)
