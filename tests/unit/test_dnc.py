"""bridge/domain/dnc.py: do-not-contact list import and lookup."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.domain.dnc import DncImport, DncList, blocked, parse_dnc_lines


def parse_dnc_csv(text: str, country: str | None) -> tuple[DncImport, list[str]]:
    """The whole text as one piece (a body or file streams it in lines: test_dnc_stream.py)."""
    parsed = parse_dnc_lines([text], country)
    assert parsed.bad_count == len(parsed.bad)
    return parsed, list(parsed.bad)


def test_parse_numbers_prefixes_header_comments() -> None:
    text = (
        "\ufeffphone,added,reason\n"
        "+8613800138000,2024-01-01,register\n"
        "\n"
        "# operator note\n"
        "13900139000\n"
        "0086 137-0013-7000\n"
        '"+86 136 0013 6000",quoted\n'
        "+86138*\n"
        "1501*,prefix in the list's country\n"
        "+8613800138000\n"  # duplicate
    )
    lst, bad = parse_dnc_csv(text, "CN")
    assert bad == []
    assert set(lst.numbers) == set(
        {"+8613800138000", "+8613900139000", "+8613700137000", "+8613600136000"}
    )
    assert lst.prefixes == ("+86138", "+861501")


@pytest.mark.parametrize(
    ("country", "entry", "prefix"),
    [
        ("GB", "07700*", "+447700"),  # trunk 0 dropped
        ("GB", "7700*", "+447700"),
        ("US", "1202*", "+1202"),  # trunk 1 dropped
        ("US", "202*", "+1202"),
        ("CN", "00861380*", "+861380"),
        ("CN", "+1 (202) *", "+1202"),
        (None, "+4477009*", "+4477009"),
    ],
)
def test_prefix_forms(country: str | None, entry: str, prefix: str) -> None:
    lst, bad = parse_dnc_csv(entry + "\n", country)
    assert bad == []
    assert lst.prefixes == (prefix,)


def test_bad_lines_are_reported_not_fatal() -> None:
    text = "\n".join(
        [
            "number",  # 1: header
            "+8613800138000",  # 2
            "12345",  # 3: not a CN mobile
            "+0123456789",  # 4
            "+86*",  # 5: too short
            "+1*",  # 6
            "abc",  # 7: no number after the header
            "+86abc*",  # 8
            "13800138001",  # 9: fine
            "+8613800138002 trailing words",  # 10
            ",+8613800138003",  # 11: empty first column
        ]
    )
    lst, bad = parse_dnc_csv(text, "CN")
    assert set(lst.numbers) == set({"+8613800138000", "+8613800138001"})
    assert lst.prefixes == ()
    assert [b.split(":", 1)[0] for b in bad] == [
        "line 3",
        "line 4",
        "line 5",
        "line 6",
        "line 7",
        "line 8",
        "line 10",
        "line 11",
    ]
    assert "too short" in bad[2]
    assert "no number" in bad[4]


def test_national_entries_need_a_default_country() -> None:
    lst, bad = parse_dnc_csv("+8613800138000\n13800138000\n138*\n", None)
    assert set(lst.numbers) == set({"+8613800138000"})
    assert [b.split(":", 1)[0] for b in bad] == ["line 2", "line 3"]
    assert "no country code" in bad[0]
    _, bad = parse_dnc_csv("138*\n", "ZZ")
    assert bad and "no supported default country" in bad[0]


def test_header_only_skipped_on_the_first_line() -> None:
    _, bad = parse_dnc_csv("# comment first\nmsisdn\n+8613800138000\n", "CN")
    assert bad == []  # comments and blanks do not count as the first line
    _, bad = parse_dnc_csv("+8613800138000\nmsisdn\n", "CN")
    assert bad == ["line 2: no number in the first column"]


def test_empty_input() -> None:
    lst, bad = parse_dnc_csv("", "CN")
    assert (len(lst.numbers), lst.prefixes, bad) == (0, (), [])


def test_blocked() -> None:
    a = DncList(frozenset({"+8613800138000"}), ("+86139", "+447700900"))
    b = DncList(frozenset({"+12025550123"}), ())
    assert blocked("+8613800138000", [a, b])
    assert blocked("+12025550123", [a, b])
    assert blocked("+8613900000000", [a, b])
    assert blocked("+447700900123", [a, b])
    assert not blocked("+8613800138001", [a, b])
    assert not blocked("+8613", [a, b])  # shorter than the prefix
    assert not blocked("+447700901123", [a, b])
    assert not blocked("+8613900000000", [b])
    assert not blocked("+8613900000000", [])


def test_dnc_list_is_a_value() -> None:
    a = DncList(frozenset({"+1"}), ("+86139",))
    assert a == DncList(frozenset({"+1"}), ("+86139",))
    assert hash(a) == hash(DncList(frozenset({"+1"}), ("+86139",)))


_digits = st.text(alphabet="0123456789", min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_digits, max_size=8),
    st.lists(_digits, max_size=5),
    _digits,
)
def test_blocked_matches_brute_force(nums: list[str], prefixes: list[str], number: str) -> None:
    e164 = "+1" + number
    lst = DncList(frozenset("+1" + n for n in nums), tuple("+1" + p for p in prefixes))
    expected = e164 in lst.numbers or any(e164.startswith(p) for p in lst.prefixes)
    assert blocked(e164, [lst]) == expected
