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

from collections.abc import Iterable


def _escaped(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"')


def text_array(values: Iterable[str | None]) -> str:
    """A text[] literal of `values`. (Escaped only when a value holds a quote or a backslash,
    found by two scans in C: `str.translate` with a table looked up every character in a dict
    and raised and cleared a KeyError for each one it left alone, ~100 instructions a character.)"""
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


def int_array(values: Iterable[int | None]) -> str:
    """An int[] or bigint[] literal of `values` (ints: a bool is written as its int)."""
    return "{" + ",".join(["NULL" if v is None else str(int(v)) for v in values]) + "}"


def bytea_array(values: Iterable[bytes | bytearray | memoryview | None]) -> str:
    """A bytea[] literal of `values`, each in bytea's hex form."""
    return "{" + ",".join(["NULL" if v is None else '"\\\\x' + v.hex() + '"' for v in values]) + "}"
