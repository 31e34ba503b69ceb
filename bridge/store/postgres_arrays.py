"""Array parameters as PostgreSQL array literals in one text parameter (session 56).

Why: asyncpg encodes a list parameter by checking the list, and then each element, against
`collections.abc`'s Iterable, Sized and Mapping (`_is_array_iterable`, to find nested arrays):
an ABC's isinstance is ~1,700 instructions, and an accept under the sending rules sent 18 arrays
(its facts' numbers, prefixes and signs; its parts; its ledger entry): ~13 k instructions an
array, ~234 k of each accept's ~1.8 M (callgrind, `scripts/bench_pg_accept.py`). A str
parameter is copied as it is. The statement casts it (`$n::text::text[]`): the server parses
the literal (`array_in`, the element type's input function for each element), the same values
the binary array gave, NULLs included.

Each element is quoted (a backslash before every `"` and `\\`), so any text stands for itself:
commas, braces, spaces, the word NULL, the empty string; an unquoted NULL is SQL's NULL. bytea
elements are written in the hex form (`\\x...`, its backslash escaped inside the quotes). Text
values cannot hold NUL (the server refuses it either way)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any


def _escaped(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"')


def text_array(values: Iterable[str | None]) -> str:
    """A text[] literal of `values`. (Escaped only when a value holds a quote or a backslash,
    found by two scans in C: `str.translate` with a table looked up every character in a dict
    and raised and cleared a KeyError for each one it left alone, ~100 instructions a character.)

    Session 58: one `join` of the whole list first, the elements quoted by its separator, and
    checked once, in C (no backslash, and no quote but the separators'): an element built in
    Python (two concatenations in a comprehension) was ~1,600 instructions, 80 k for a batch's
    50 message ids. A None, a quote or a backslash in any element falls back to the
    element-wise form, which gives the same literal."""
    if type(values) is not list:
        values = list(values)
    if values:
        if values[0] is None and values[-1] is None and values.count(None) == len(values):
            return _repeated("{NULL}", len(values))  # a column of NULLs (an error code, a route)
        try:
            body = '","'.join(values)  # type: ignore[arg-type]  # a None: TypeError
        except TypeError:
            pass
        else:
            if "\\" not in body and body.count('"') == 2 * (len(values) - 1):
                return '{"' + body + '"}'
    return (
        "{"
        + ",".join(
            [
                "NULL" if v is None else '"' + (_escaped(v) if "\\" in v or '"' in v else v) + '"'
                for v in values
            ]
        )
        + "}"
    )


def _repeated(one: str, n: int) -> str:
    """The literal of n times the element of `one`, a one-element literal (session 59): a
    batch's columns often hold one value (its parts' seq 1, the step's time, an SMSC, NULLs),
    written once and repeated in C; an int's decimal text is ~1,100 instructions (a 13-digit
    time), and NULLs went element by element."""
    return "{" + ",".join([one[1:-1]] * n) + "}"


# The literal of n ints by one printf-style format (session 64), n up to _INT_FORMS_N.
_INT_FORMS_N = 256
_INT_FORMS = tuple("{" + ",".join(["%d"] * n) + "}" for n in range(_INT_FORMS_N))


def int_array(values: Iterable[int | None]) -> str:
    """An int[] or bigint[] literal of `values` (ints: a bool is written as its int).

    Session 58: ints (bools and int subclasses too) written by `int.__repr__` mapped in C,
    which gives a bool's and an IntEnum's number as `str(int(v))` does (~25% fewer
    instructions for 50 ids' times; the number's decimal text is most of what is left).
    Session 64: up to _INT_FORMS_N of them by one "%d" format kept by their count, which
    writes each number's text straight into the literal (no str an element, no join): 50
    distinct 13-digit times 71.3 k -> 50.2 k instructions (callgrind, Python 3.11), the
    owner's batches' times, counts and seqs. "%d" writes a bool, an int subclass and a float
    as `str(int(v))` does; anything it refuses (a None, a str) raises TypeError there and is
    written element by element as before (NaN and infinities raise as `int()` raises)."""
    if type(values) is not list and type(values) is not tuple:
        values = list(values)  # read twice when the fast form fails
    n = len(values)
    if n > 1 and values[-1] == values[0] and values.count(values[0]) == n:
        return _repeated(int_array(values[:1]), n)  # one value (_repeated)
    try:
        if n < _INT_FORMS_N:
            return _INT_FORMS[n] % (values if type(values) is tuple else tuple(values))
        return "{" + ",".join(map(int.__repr__, values)) + "}"
    except TypeError:
        pass
    return "{" + ",".join(["NULL" if v is None else str(int(v)) for v in values]) + "}"


def bytea_array(values: Iterable[bytes | bytearray | memoryview | None]) -> str:
    """A bytea[] literal of `values`, each in bytea's hex form.

    Session 63: a list of bytes written by `bytes.hex` mapped in C and one join, the quotes and
    the hex prefix as the separator (an element built in Python, two concatenations of its
    hex text in a comprehension, was ~4 k instructions for a 140-octet part); a None or another
    bytes-like type (bytes.hex refuses it: TypeError) element by element as before."""
    if type(values) is not list and type(values) is not tuple:
        values = list(values)
    if values:
        try:
            return '{"\\\\x' + '","\\\\x'.join(map(bytes.hex, values)) + '"}'
        except TypeError:
            pass
    return "{" + ",".join(["NULL" if v is None else '"\\\\x' + v.hex() + '"' for v in values]) + "}"


def bool_array(values: Iterable[bool | None]) -> str:
    """A bool[] literal of `values`."""
    return "{" + ",".join(["NULL" if v is None else ("t" if v else "f") for v in values]) + "}"


_ENCODERS: dict[str, Callable[[Iterable[Any]], str]] = {
    "text": text_array,
    "int": int_array,
    "bigint": int_array,
    "bool": bool_array,
    "bytea": bytea_array,
}
_CAST = re.compile(r"\$(\d+)::(text|int|bigint|bool|bytea)\[\](?![\w\[])")
_PARAM = re.compile(r"\$(\d+)(?!\d)")


@lru_cache(maxsize=1024)
def literal_form(sql: str) -> tuple[str, tuple[tuple[int, Callable[[Iterable[Any]], str]], ...]]:
    """`sql` with each parameter used only as `$n::T[]` (T one of _ENCODERS, every use the
    same T) cast from text instead (`$n::text::T[]`), and (index, encoder) for each: the
    statements that still pass Python lists (the owner's steps, the no-rules accept) send
    literals as the rules' accept does (session 57). A parameter used otherwise anywhere in
    the statement (bare, or cast to another type) is left as it was. Unchanged `sql` and no
    pairs when there is nothing to do."""
    casts: dict[str, set[str]] = {}
    for n, t in _CAST.findall(sql):
        casts.setdefault(n, set()).add(t)
    if not casts:
        return sql, ()
    uses: dict[str, int] = {}
    for n in _PARAM.findall(sql):
        uses[n] = uses.get(n, 0) + 1
    cast_uses: dict[str, int] = {}
    for n, _t in _CAST.findall(sql):
        cast_uses[n] = cast_uses.get(n, 0) + 1
    keep = {
        n: next(iter(ts)) for n, ts in casts.items() if len(ts) == 1 and uses[n] == cast_uses[n]
    }
    if not keep:
        return sql, ()
    out = _CAST.sub(lambda m: f"${m[1]}::text::{m[2]}[]" if m[1] in keep else m[0], sql)
    return out, tuple(sorted((int(n) - 1, _ENCODERS[t]) for n, t in keep.items()))


def as_literals(sql: str, args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
    """The statement and arguments to send: the array arguments of literal_form's parameters
    as literals (None stays NULL). A str or bytes where an array is due is refused, as asyncpg
    refused it."""
    out, pairs = literal_form(sql)
    if not pairs:
        return sql, args
    new = list(args)
    for i, encode in pairs:
        if i >= len(new):
            return sql, args  # too few arguments: asyncpg says so, as before
        v = new[i]
        if v is None:
            continue
        if isinstance(v, (str, bytes, bytearray, memoryview)):
            raise TypeError(f"an array is expected for ${i + 1}, not {type(v).__name__}")
        new[i] = encode(v)
    return out, tuple(new)
