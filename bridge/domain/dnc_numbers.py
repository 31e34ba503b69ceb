"""A sorted set of E.164 numbers held as 64-bit integers: a do-not-contact import of a national
registry (tens of millions of numbers) in bounded memory.

Why: the import held each number as a str in a set, a sorted list and the store's entries,
~250 bytes per number over the process's baseline (1,000,000 numbers: peak RSS +271 MB; ten
million, ~2.5 GB, in the daemon itself for the HTTP route). Here a number is 8 bytes in an
``array('q')``: E.164 is '+' and at most 15 digits, the first not 0 (phone.normalize), so with
the '+' dropped it is an integer below 10**15, and '+' re-added gives the same string back.
Numbers come in runs of RUN, each sorted and deduplicated as a short Python list; the runs are
merged (``heapq.merge``, repeats dropped) into one array: ~16 bytes per number at the merge's
peak, never a Python object per number. Input already in order (a sorted registry, or a
SortedNumbers handed on) stays one run: no merge.
"""

from __future__ import annotations

import heapq
import re
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from itertools import groupby
from operator import itemgetter

RUN = 100_000  # numbers sorted at a time as Python ints: ~4 MB
_E164 = re.compile(r"\+[1-9][0-9]{0,14}")


def _key(e164: str) -> int:
    if not _E164.fullmatch(e164):
        raise ValueError(f"{e164!r} is not an E.164 number (+, then 1-15 digits, the first not 0)")
    return int(e164[1:])


class SortedNumbers:
    """Immutable, sorted, unique E.164 numbers; iterates as E.164 strings in order."""

    __slots__ = ("_keys",)

    def __init__(self, keys: array[int]) -> None:
        self._keys = keys  # sorted, unique: built by NumberSorter only

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return (f"+{k}" for k in self._keys)

    def __contains__(self, e164: object) -> bool:
        if not isinstance(e164, str) or not _E164.fullmatch(e164):
            return False
        key = int(e164[1:])
        i = bisect_left(self._keys, key)
        return i < len(self._keys) and self._keys[i] == key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SortedNumbers) and self._keys == other._keys

    def __hash__(self) -> int:  # a value, like the frozenset it replaces; not hashed in practice
        return hash(len(self._keys))

    def __repr__(self) -> str:
        return f"SortedNumbers({len(self._keys)} numbers)"


class NumberSorter:
    """Collects numbers one at a time, in any order and with repeats; `build` sorts them."""

    __slots__ = ("_buf", "_runs")

    def __init__(self) -> None:
        self._buf: list[int] = []
        self._runs: list[array[int]] = []

    def add(self, e164: str) -> None:
        self._buf.append(_key(e164))
        if len(self._buf) >= RUN:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        self._buf.sort()
        run = array("q", map(itemgetter(0), groupby(self._buf)))  # repeats dropped, all in C
        self._buf = []
        last = self._runs[-1] if self._runs else None
        if last is not None and last[-1] <= run[0]:
            # In order after the previous run: one run, nothing to merge.
            last.extend(run[1:] if last[-1] == run[0] else run)
        else:
            self._runs.append(run)

    def build(self) -> SortedNumbers:
        """The numbers added, sorted and unique; the sorter is empty afterwards."""
        self._flush()
        runs, self._runs = self._runs, []
        if len(runs) <= 1:
            return SortedNumbers(runs[0] if runs else array("q"))
        out = array("q")
        append = out.append
        last = -1
        for key in heapq.merge(*runs):
            if key != last:
                append(key)
                last = key
        return SortedNumbers(out)


def sorted_numbers(numbers: Iterable[str]) -> SortedNumbers:
    """`numbers` sorted and unique, read once (an iterator is fine); a SortedNumbers as it is."""
    if isinstance(numbers, SortedNumbers):
        return numbers
    sorter = NumberSorter()
    for n in numbers:
        sorter.add(n)
    return sorter.build()
