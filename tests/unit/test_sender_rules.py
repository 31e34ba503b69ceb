"""Assigned source addresses (bridge/domain/senders.py): who may send from what, and whose a
reply's address is."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.domain.senders import (
    EXACT,
    SenderError,
    claim_rank,
    extended_sender,
    extension_base,
    held_alone,
    is_default_source,
    may_send,
    owners,
    parse_entries,
    reply_holders,
)

digits = st.text("0123456789", min_size=1, max_size=20)


# -- the operator's list ---------------------------------------------------------------------------


def test_parse_keeps_order_and_drops_repeats_of_the_same_address() -> None:
    assert parse_entries(["ACME", "+447700900123", "106900*", "acme", "447700900123"]) == (
        "ACME",
        "+447700900123",
        "106900*",
    )
    # A range and the exact base number are different claims.
    assert parse_entries(["106900", "106900*"]) == ("106900", "106900*")
    assert parse_entries([]) == ()
    assert parse_entries(["MY SHOP", "A", "0800123"]) == ("MY SHOP", "A", "0800123")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("ACME", "a list"),
        ({"a": 1}, "a list"),
        ([1], "senders[0]"),
        (["ok", ""], "senders[1]"),
        (["TWELVECHARSX"], "senders[0]"),  # alphanumeric ids are at most 11
        (["1" * 21], "senders[0]"),  # numbers at most 20 digits
        (["*"], "senders[0]"),  # a range needs its base number
        (["+*"], "senders[0]"),
        (["AC*"], "senders[0]"),  # ranges are numeric
        (["10*6"], "senders[0]"),
        (["ACME\n"], "senders[0]"),
        ([" ACME"], "no blank at either end"),
        (["ACME "], "no blank at either end"),
        (["00447700900123"], "with +, not 00"),
        (["00*"], "with +, not 00"),
        (["x"] * 101, "at most 100"),
    ],
)
def test_parse_refuses_bad_entries_naming_them(value: object, words: str) -> None:
    with pytest.raises(SenderError) as raised:
        parse_entries(value)
    assert words in raised.value.message


# -- sending ---------------------------------------------------------------------------------------


def test_may_send_from_its_own_addresses_only() -> None:
    mine = ("ACME", "+447700900123", "106900*")
    for sender in ("ACME", "acme", "Acme", "447700900123", "+447700900123", "106900",
                   "10690012", "1069001234567890", None):  # fmt: skip
        assert may_send("me", mine, sender, (), assigned_only=False), sender
        assert may_send("me", mine, sender, (), assigned_only=True), sender
    for sender in (
        "ACME2",
        "BANK",
        "447700900124",
        "10690",
        "10691",
        "106900ABC",
        "106900123456789012345",
    ):  # fmt: skip  (the last is 21 digits)
        assert not may_send("me", mine, sender, (), assigned_only=False), sender


def test_an_account_without_a_list_follows_the_policy() -> None:
    assert may_send("me", (), "BANK", (), assigned_only=False)
    assert not may_send("me", (), "BANK", (), assigned_only=True)
    assert may_send("me", (), None, (), assigned_only=True)  # the SMSC default is shared


def test_an_address_somebody_holds_is_its_holders_alone() -> None:
    others = [("bank", ("BANK", "30000")), ("reseller", ("106900*",)), ("shop", ("10690012",))]
    # Nobody else may send from a held address, listed or not, open policy or not.
    assert not may_send("me", (), "bank", others, assigned_only=False)
    assert not may_send("me", (), "30000", others, assigned_only=False)
    assert not may_send("me", ("ACME",), "BANK", others, assigned_only=False)
    assert may_send("bank", ("BANK", "30000"), "BANK", others, assigned_only=True)
    # The firmest claim wins: the reseller may not send from its customer's exact number, but
    # from the rest of its range; the customer from its own.
    assert not may_send("reseller", ("106900*",), "10690012", others, assigned_only=False)
    assert may_send("reseller", ("106900*",), "10690013", others, assigned_only=False)
    assert may_send("shop", ("10690012",), "10690012", others, assigned_only=False)
    # An address given to two accounts is both of theirs.
    twice = [("a", ("40000",)), ("b", ("40000",))]
    assert may_send("a", ("40000",), "40000", twice, assigned_only=False)
    assert may_send("b", ("40000",), "40000", twice, assigned_only=False)
    assert not may_send("c", (), "40000", twice, assigned_only=False)
    # The account's own fresh list stands in for whatever the (cached) others say of it.
    stale = [("me", ())]
    assert may_send("me", ("NEW",), "NEW", stale, assigned_only=True)


@given(base=digits, tail=st.text("0123456789", max_size=20))
def test_a_range_holds_every_extension_up_to_twenty_digits(base: str, tail: str) -> None:
    number = base + tail
    rank = claim_rank((base + "*",), number)
    if len(number) <= 20:
        assert rank == len(base)
        assert may_send("me", (base + "*",), number, (), assigned_only=True)
        assert may_send("me", (base + "*",), "+" + number, (), assigned_only=True)
    else:
        assert rank is None


@given(a=digits, b=digits)
def test_a_number_outside_the_range_is_not_held(a: str, b: str) -> None:
    if not b.startswith(a):
        assert claim_rank((a + "*",), b) is None
        assert claim_rank((a,), b) is None


# -- replies ---------------------------------------------------------------------------------------


def test_the_most_specific_holder_owns_a_reply_address() -> None:
    assigned = [
        ("acc_wide", ("1069*",)),
        ("acc_narrow", ("106900*",)),
        ("acc_exact", ("10690012",)),
        ("acc_brand", ("ACME",)),
    ]
    assert owners(assigned, "10690012") == ("acc_exact",)
    assert owners(assigned, "10690013") == ("acc_narrow",)
    assert owners(assigned, "+10690013") == ("acc_narrow",)
    assert owners(assigned, "1069111") == ("acc_wide",)
    assert owners(assigned, "acme") == ("acc_brand",)
    assert owners(assigned, "10700000") == ()
    assert claim_rank(("10690012",), "10690012") == EXACT


def test_an_address_given_to_two_accounts_has_both_as_holders() -> None:
    assigned = [("a", ("106900*",)), ("b", ("106900*", "X")), ("c", ("1069*",))]
    assert owners(assigned, "1069001") == ("a", "b")


@given(
    st.dictionaries(
        st.sampled_from("abcde"),
        st.lists(st.one_of(digits, digits.map(lambda d: d + "*")), max_size=3),
    ),
    digits,
)
def test_owners_all_hold_the_address_and_nobody_holds_it_more_firmly(
    assigned: dict[str, list[str]], address: str
) -> None:
    found = owners(assigned.items(), address)
    ranks = {a: claim_rank(e, address) for a, e in assigned.items()}
    best = max((r for r in ranks.values() if r is not None), default=None)
    if best is None:
        assert found == ()
    else:
        assert found and all(ranks[a] == best for a in found)
        assert all(a in found for a, r in ranks.items() if r == best)


# -- the Alibaba-compatible extension code ---------------------------------------------------------


def test_extension_code_extends_the_one_base() -> None:
    assert extension_base(("ACME", "106900*")) == "106900"
    assert extended_sender(("ACME", "106900*"), "12") == "10690012"
    assert extended_sender(("106900*",), None) == "106900"
    assert extended_sender(("106900*",), "") == "106900"
    # No base, or two: the code has nothing (or no one thing) to extend.
    assert extended_sender(("ACME",), "12") is None
    assert extended_sender(("106900*", "106901*"), "12") is None
    assert extended_sender((), "12") is None
    with pytest.raises(SenderError) as raised:
        extended_sender(("1069000000000000*",), "12345")
    assert "21 digits" in raised.value.message
    assert extended_sender(("1069000000000000*",), "1234") == "10690000000000001234"


def test_refused_waiting_names_what_its_account_may_no_longer_send() -> None:
    from bridge.domain.senders import refused_waiting

    assignments = [("acc_b", ("10690077",)), ("acc_a", ("106900*",))]
    waiting = [
        ("m1", "acc_a", "10690077"),  # held more firmly by B now
        ("m2", "acc_a", "10690012"),  # in A's range
        ("m3", "acc_c", "BANK"),  # nobody holds it; C has no list
        ("m4", "acc_c", "10690099"),  # A's range
    ]
    assert refused_waiting(waiting, assignments, assigned_only=False) == ["m1", "m4"]
    # Under rules.sender_policy assigned, an account without a list sends from no address.
    assert refused_waiting(waiting, assignments, assigned_only=True) == ["m1", "m3", "m4"]


def test_refused_waiting_decides_each_message_as_may_send_does() -> None:
    """It decides once per (account, sender) and reuses the answer: repeats, the same sender
    for several accounts and no sender at all are each answered as may_send answers alone."""
    from bridge.domain.senders import may_send, refused_waiting

    assignments = [("acc_b", ("10690077",)), ("acc_a", ("106900*", "ACME"))]
    lists = dict(assignments)
    senders = ["10690077", "10690012", "BANK", "acme", None, "10690077", "ACME", "BANK"]
    waiting = [
        (f"m{i}_{a}", a, sender)
        for i, sender in enumerate(senders)
        for a in ("acc_a", "acc_b", "acc_c")
    ]
    for assigned_only in (False, True):
        expected = [
            mid
            for mid, a, sender in waiting
            if not may_send(a, lists.get(a, ()), sender, assignments, assigned_only=assigned_only)
        ]
        assert refused_waiting(waiting, assignments, assigned_only=assigned_only) == expected
        assert expected  # some refused, some not
        assert len(expected) < len(waiting)


def test_a_range_does_not_hold_the_smscs_default_source() -> None:
    assigned = [("acc_a", ("1069*",)), ("acc_b", ("10690",))]
    assert reply_holders(assigned, "10691", default=True) == ()
    assert reply_holders(assigned, "10691", default=False) == ("acc_a",)
    assert reply_holders(assigned, "10690", default=True) == ("acc_b",)  # exact
    assert is_default_source("+10690", "10690") and not is_default_source(None, "10690")


def test_held_alone_is_what_only_the_account_holds() -> None:
    """The replies an erasure drops by assignment: the address the account alone holds (not
    one shared, not another's, not the SMSC's default in its range); none when it holds none."""
    assigned = [("acc_a", ("1069*", "ACME", "555")), ("acc_b", ("10690", "555"))]
    pairs = [("s", "10691"), ("s", "10690"), ("s", "acme"), ("s", "555"), ("t", "10692"),
             ("s", "95588")]  # fmt: skip
    assert held_alone("acc_a", assigned, pairs, {"t": "10692"}) == [("s", "10691"), ("s", "acme")]
    assert held_alone("acc_b", assigned, pairs, {}) == [("s", "10690")]
    assert held_alone("acc_c", assigned, pairs, {}) == []
