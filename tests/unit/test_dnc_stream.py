"""bridge/domain/dnc_numbers.py and the streamed parse: the compact sorted set of numbers a
do-not-contact import holds (8 bytes a number), and lines read a piece at a time giving what
the whole text gives."""

from __future__ import annotations

import csv
import io
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.api.admin_rules import _body_lines
from bridge.domain import dnc_numbers
from bridge.domain.dnc import BAD_KEPT, _first_column, parse_dnc_lines
from bridge.domain.dnc_numbers import NumberSorter, SortedNumbers, sorted_numbers
from bridge.store.rules_rows import DncEntries, blocked_ids

# E.164: '+', a first digit 1-9, at most 15 digits in all (the largest is 999,999,999,999,999).
_e164 = st.integers(min_value=1, max_value=10**15 - 1).map(lambda k: f"+{k}")


@settings(max_examples=300, deadline=None)
@given(st.lists(_e164, max_size=60), st.integers(min_value=1, max_value=7))
def test_sorted_unique_as_sorted_set(numbers: list[str], run: int) -> None:
    """Any numbers, in any order, repeated: the same as sorted(set(...)) (in numeric order, the
    store's order too: a string order would put +10 before +9), runs of `run` merged."""
    with patch.object(dnc_numbers, "RUN", run):
        got = sorted_numbers(iter(numbers))
    expected = sorted(set(numbers), key=lambda s: int(s[1:]))
    assert list(got) == expected
    assert len(got) == len(expected)
    for n in numbers:
        assert n in got
    for k in (1, 10**15 - 1, 44):
        assert (f"+{k}" in got) == (f"+{k}" in expected)


def test_ordered_input_stays_one_run() -> None:
    """A sorted registry (or a SortedNumbers handed to the store) is never merged: one array."""
    with patch.object(dnc_numbers, "RUN", 3):
        sorter = NumberSorter()
        for k in [5, 5, 6, 7, 8, 9, 9, 10, 11]:
            sorter.add(f"+8613{k:09d}")
        assert len(sorter._runs) == 1
        got = sorter.build()
    assert len(got) == 7
    assert sorted_numbers(got) is got


@pytest.mark.parametrize("bad", ["+0123456", "8613800138000", "+1234567890123456", "+", "+1_000"])
def test_only_e164_numbers(bad: str) -> None:
    with pytest.raises(ValueError, match=r"not an E\.164 number"):
        sorted_numbers([bad])
    assert bad not in sorted_numbers(["+1234567"])
    assert 1234567 not in sorted_numbers(["+1234567"])


def test_equality_is_by_value() -> None:
    a = sorted_numbers(["+12025550123", "+8613800138000"])
    assert a == sorted_numbers(["+8613800138000", "+12025550123", "+12025550123"])
    assert a != sorted_numbers(["+12025550123"])
    assert hash(a) == hash(sorted_numbers(["+8613800138000", "+12025550123"]))
    assert "2 numbers" in repr(a)


def test_entries_match_as_the_frozenset_did() -> None:
    """The store's DncEntries: exact numbers marked '=', prefixes unmarked; read from a
    generator once, iterated twice (PostgreSQL's transaction may run again)."""
    entries = DncEntries((n for n in ["+8613800138000", "+491701234567"]), ["+86139"])
    listed = ["=+491701234567", "=+8613800138000", "+86139"]
    assert list(entries) == listed
    assert list(entries) == listed
    assert [*entries.chunks(2)] == [listed[:2], listed[2:]]
    assert len(entries) == 3
    rows = [
        ("a", "+8613800138000"),
        ("b", "+8613900000001"),
        ("c", "+4917012345678"),  # longer than the listed +491701234567: not blocked
        ("d", "+491701234567"),
        ("e", "+8613800138001"),
    ]
    assert blocked_ids(rows, entries) == blocked_ids(rows, frozenset(listed)) == ["a", "b", "d"]
    assert 5 not in entries
    assert "=86" not in entries


_LINES = st.sampled_from(
    [
        "msisdn,added",
        "+8613800138000",
        "13900139000,2024-01-01",
        '"+86 137 0013 7000",quoted',
        "+86138*",
        "12345",
        "abc",
        "",
        "   ",
        "# a comment",
        "\ufeff+8613600136000",
        "0086 135-0013-5000",
    ]
)
_ENDS = st.sampled_from(["\n", "\r\n", "\r"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_LINES, _ENDS), max_size=30), st.booleans())
def test_streamed_pieces_parse_as_the_whole_text(lines: list[tuple[str, str]], bom: bool) -> None:
    """A file read line by line (newline=""), a body split at b"\\n", the text in one piece:
    the same list, the same bad lines with the same line numbers."""
    text = ("\ufeff" if bom else "") + "".join(line + end for line, end in lines)
    whole = parse_dnc_lines([text], "CN")
    assert parse_dnc_lines(io.StringIO(text, newline=""), "CN") == whole
    assert parse_dnc_lines(_body_lines(text.encode()), "CN") == whole
    assert parse_dnc_lines(text.splitlines(), "CN") == whole
    assert whole.bad_count == len(whole.bad)


def test_bad_lines_kept_first_100_and_all_counted() -> None:
    text = "+8613800138000\n" + "12345\n" * 250
    parsed = parse_dnc_lines(io.StringIO(text, newline=""), "CN")
    assert parsed.bad_count == 250
    assert len(parsed.bad) == BAD_KEPT == 100
    assert parsed.bad[0].startswith("line 2: ")
    assert parsed.bad[-1].startswith("line 101: ")
    assert list(parsed.numbers) == ["+8613800138000"]


def test_body_lines_decode_each_line_or_refuse() -> None:
    assert list(_body_lines("a\n\nб\r\nc".encode())) == ["a\n", "\n", "б\r\n", "c"]
    assert list(_body_lines(b"")) == []
    with pytest.raises(UnicodeDecodeError):
        parse_dnc_lines(_body_lines(b"+8613800138000\n\xff\n"), "CN")


_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines splits at


@settings(max_examples=500, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from('ab1+ ,"\t\x00*') | st.characters(exclude_characters=_BREAKS),
        max_size=20,
    )
)
def test_first_column_as_the_csv_reader(line: str) -> None:
    """The fast path (nothing quoted: split at the first comma) reads what csv.reader reads."""
    row = next(csv.reader([line]), [])
    assert _first_column(line) == (row[0] if row else "")


def test_sorted_numbers_is_an_iterable_of_e164() -> None:
    got = sorted_numbers(["+8613800138001", "+8613800138000"])
    assert isinstance(got, SortedNumbers)
    assert list(got) == ["+8613800138000", "+8613800138001"]
