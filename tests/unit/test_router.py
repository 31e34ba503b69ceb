"""Routing: longest prefix, failover order, default route, nothing up."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.smpp.router import Route, Router

ROUTES = [
    Route("+86", ("cmcc_a", "cmcc_b")),
    Route("+8613", ("cm13",)),
    Route("+86138", ("cm138", "cmcc_a")),
    Route("+1", ("us",)),
]
DEFAULT = ("intl_a", "intl_b")


@pytest.fixture
def router() -> Router:
    return Router(ROUTES, DEFAULT)


def all_up(_: str) -> bool:
    return True


@pytest.mark.parametrize(
    ("destination", "expected"),
    [
        ("+8613800138000", ("cm138", "cmcc_a", "intl_a", "intl_b")),
        ("+8613900139000", ("cm13", "intl_a", "intl_b")),
        ("+8615000150000", ("cmcc_a", "cmcc_b", "intl_a", "intl_b")),
        ("+14155550100", ("us", "intl_a", "intl_b")),
        ("+447700900123", ("intl_a", "intl_b")),
        ("+86", ("cmcc_a", "cmcc_b", "intl_a", "intl_b")),  # a prefix matches itself
        ("+8", ("intl_a", "intl_b")),  # shorter than every prefix
        ("", ("intl_a", "intl_b")),
        ("8613800138000", ("intl_a", "intl_b")),  # not E.164: no "+", so no prefix matches
    ],
)
def test_candidates(router: Router, destination: str, expected: tuple[str, ...]) -> None:
    assert router.candidates(destination) == expected


def test_longest_prefix_wins_regardless_of_route_order() -> None:
    for routes in (ROUTES, list(reversed(ROUTES))):
        r = Router(routes, DEFAULT)
        assert r.candidates("+8613800138000")[0] == "cm138"
        assert r.candidates("+8613900139000")[0] == "cm13"
        assert r.candidates("+8618600186000")[0] == "cmcc_a"


def test_shorter_matching_prefix_is_not_a_fallback(router: Router) -> None:
    # +8613 matched: +86's SMSCs are not tried, only the default follows.
    assert "cmcc_b" not in router.candidates("+8613900139000")


def test_default_not_repeated() -> None:
    r = Router([Route("+86", ("a", "b"))], ("b", "c", "a", "d"))
    assert r.candidates("+8613800138000") == ("a", "b", "c", "d")


def test_duplicates_within_a_route_collapse() -> None:
    r = Router([Route("+86", ("a", "b", "a"))], ("c", "c"))
    assert r.candidates("+86138") == ("a", "b", "c")
    assert r.candidates("+1") == ("c",)


def test_a_default_smsc_that_encodes_otherwise_is_no_fallback_for_a_route() -> None:
    """A message is encoded once, for its route's first SMSC: the default route's SMSCs follow
    only when they take the same bytes (found by session 14's third review: a Latin-1 message
    went out through the default SMSC, which had no Latin-1)."""
    enc = {"lat": ("udh8", False, True, 0), "sim": ("udh8", False, False, 0),
           "twin": ("udh8", False, True, 0)}  # fmt: skip
    r = Router([Route("+86139", ("lat",))], ("sim", "twin"), enc)
    assert r.candidates("+8613900000001") == ("lat", "twin")
    assert r.candidates("+4412345") == ("sim", "twin")  # unmatched: the default as it is
    assert r.pick("+8613900000001", lambda n: n == "sim") is None  # waits for its route
    assert r.park_key("+8613900000001", lambda n: n == "sim") == "+86139"
    # Without encodings (or for an SMSC the map does not name) the default follows as before.
    assert Router([Route("+86139", ("lat",))], ("sim",)).candidates("+861390") == ("lat", "sim")


def test_no_default() -> None:
    r = Router([Route("+86", ("a",))], ())
    assert r.candidates("+8613800138000") == ("a",)
    assert r.candidates("+14155550100") == ()
    assert r.pick("+14155550100", all_up) is None


def test_catch_all_prefix() -> None:
    r = Router([Route("+", ("any",)), Route("+86", ("cn",))], ("dflt",))
    assert r.candidates("+8613800138000") == ("cn", "dflt")
    assert r.candidates("+447700900123") == ("any", "dflt")


def test_pick_first_up(router: Router) -> None:
    assert router.pick("+8613800138000", all_up) == "cm138"


@pytest.mark.parametrize(
    ("up", "expected"),
    [
        ({"cm138", "cmcc_a", "intl_a", "intl_b"}, "cm138"),
        ({"cmcc_a", "intl_a", "intl_b"}, "cmcc_a"),
        ({"intl_a", "intl_b"}, "intl_a"),
        ({"intl_b"}, "intl_b"),
        ({"cmcc_b", "cm13", "us"}, None),  # up, but not candidates for this number
        (set(), None),
    ],
)
def test_failover_order(router: Router, up: set[str], expected: str | None) -> None:
    assert router.pick("+8613800138000", up.__contains__) == expected


def test_pick_asks_in_order_and_stops_at_first_up(router: Router) -> None:
    asked: list[str] = []

    def is_up(name: str) -> bool:
        asked.append(name)
        return name == "intl_a"

    assert router.pick("+8613800138000", is_up) == "intl_a"
    assert asked == ["cm138", "cmcc_a", "intl_a"]


def test_none_up(router: Router) -> None:
    assert router.pick("+8613800138000", lambda _: False) is None
    assert router.pick("+447700900123", lambda _: False) is None


@pytest.mark.parametrize(
    ("routes", "default"),
    [
        ([Route("86", ("a",))], ()),
        ([Route("+86a", ("a",))], ()),
        ([Route("", ("a",))], ()),
        ([Route("+86 ", ("a",))], ()),
        ([Route("+86", ())], ()),
        ([Route("+86", ("",))], ()),
        ([Route("+86", ("a",)), Route("+86", ("b",))], ()),
        ([], ("a", "")),
    ],
)
def test_invalid_config(routes: list[Route], default: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        Router(routes, default)


def test_route_is_frozen() -> None:
    route = Route("+86", ("a",))
    with pytest.raises(AttributeError):
        route.prefix = "+1"  # type: ignore[misc]


def brute_force(routes: list[Route], default: tuple[str, ...], dest: str) -> tuple[str, ...]:
    """The rule in its plainest form, to compare the indexed lookup against."""
    matching = [r for r in routes if dest.startswith(r.prefix)]
    if not matching:
        first: list[str] = []
    else:
        best = max(matching, key=lambda r: len(r.prefix))
        first = list(dict.fromkeys(best.smscs))
    return tuple(first + [s for s in dict.fromkeys(default) if s not in first])


_smsc = st.sampled_from(["a", "b", "c", "d", "e"])
_prefixes = st.lists(st.from_regex(r"\A\+[0-9]{0,4}\Z"), unique=True, max_size=8)


@given(
    _prefixes,
    st.data(),
    st.lists(_smsc, max_size=4).map(tuple),
    st.from_regex(r"\A\+[0-9]{0,12}\Z"),
)
@settings(max_examples=400, deadline=None)
def test_matches_brute_force(
    prefixes: list[str], data: st.DataObject, default: tuple[str, ...], dest: str
) -> None:
    routes = [Route(p, tuple(data.draw(st.lists(_smsc, min_size=1, max_size=3)))) for p in prefixes]
    router = Router(routes, default)
    expected = brute_force(routes, default, dest)
    assert router.candidates(dest) == expected
    up = data.draw(st.sets(_smsc))
    assert router.pick(dest, up.__contains__) == next((s for s in expected if s in up), None)


def test_rewired_keys_name_the_routes_whose_first_smsc_now_encodes_otherwise() -> None:
    """Session 35 text review: a reload moving +86 from a Latin-1 SMSC to one without, or
    setting packed_gsm, leaves the messages waiting for it encoded the old way: the dispatcher
    encodes those again (bridge/pipeline/reencode.py)."""
    latin, plain = ("udh8", False, True, 0), ("udh8", False, False, 0)
    enc = {"latin": latin, "plain": plain, "other": plain}
    old = Router([Route("+86", ("latin",)), Route("+44", ("plain",))], ["other"], enc)
    assert Router.rewired_keys(old, old) == []
    moved = Router([Route("+86", ("plain",)), Route("+44", ("plain",))], ["other"], enc)
    assert Router.rewired_keys(old, moved) == ["+86"]
    # The same SMSC set to encode otherwise (packed_gsm) rewires every route it heads.
    packed = {**enc, "plain": ("udh8", True, False, 0)}
    assert Router.rewired_keys(old, Router([Route("+86", ("latin",)), Route("+44", ("plain",))],
                                           ["other"], packed)) == ["+44"]  # fmt: skip
    # +86's route removed: its numbers fall to the default route, which encodes otherwise.
    gone = Router([Route("+44", ("plain",))], ["other"], enc)
    assert Router.rewired_keys(old, gone) == ["default"]
    # A new longer prefix taking numbers of +86 for an SMSC that encodes the same: nothing.
    same = Router([Route("+86", ("latin",)), Route("+8613", ("latin",)), Route("+44", ("plain",))],
                  ["other"], enc)  # fmt: skip
    assert Router.rewired_keys(old, same) == []


def test_a_routes_candidates_are_worked_out_once_and_filtered_by_encoding() -> None:
    """Session 60: the dispatcher asks a message's candidates at every claim; a routed
    prefix's tuple was made through a generator each time. Now built with the Router (its
    table never changes: a reload builds a new one), the same tuple every time, still the
    route's SMSCs then the default's that encode as its first."""
    enc = {"a": 1, "b": 2, "c": 1, "d": 1}
    router = Router([Route("+86", ("a", "b")), Route("+8613", ("b",))], ["c", "b", "d", "a"], enc)
    first = router.candidates("+8612345")
    assert first == ("a", "b", "c", "d")
    assert router.candidates("+8698765") is first
    assert router.candidates("+8613000") == ("b",)  # only "b" encodes as 2
    assert router.candidates("+4412345") == ("c", "b", "d", "a")
    assert router.pick("+8612345", {"c", "d"}.__contains__) == "c"
