"""Delivery receipts: the text in its real-world spellings, the TLVs, and the state mapping."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.smpp.receipt import (
    MESSAGE_STATE_STAT,
    Receipt,
    ReceiptState,
    format_receipt_text,
    format_smpp_date,
    parse_receipt_text,
    parse_smpp_date,
    receipt_from_fields,
    state_for_stat,
)

STANDARD = (
    "id:0123456789 sub:001 dlvrd:001 submit date:2611290800 done date:2611290801 "
    "stat:DELIVRD err:000 text:Your code is 123456"
)


# ---------------------------------------------------------------- text parsing


def test_parse_standard() -> None:
    assert parse_receipt_text(STANDARD) == {
        "id": "0123456789",
        "sub": "001",
        "dlvrd": "001",
        "submit_date": "2611290800",
        "done_date": "2611290801",
        "stat": "DELIVRD",
        "err": "000",
        "text": "Your code is 123456",
    }


def test_parse_case_insensitive_keys() -> None:
    got = parse_receipt_text(
        "ID:abc SUB:001 DLVRD:001 Submit Date:2611290800 DONE DATE:2611290801 Stat:delivrd "
        "Err:000 Text:hi"
    )
    assert got["id"] == "abc"
    assert got["submit_date"] == "2611290800"
    assert got["done_date"] == "2611290801"
    assert got["stat"] == "delivrd"  # values keep their case; the mapping upper-cases
    assert got["text"] == "hi"


def test_parse_extra_spaces() -> None:
    got = parse_receipt_text(
        "  id: 42   sub : 001  dlvrd:001 submit  date: 2611290800  done date :2611290801   "
        "stat:  UNDELIV   err: 001   text:  x  "
    )
    assert got == {
        "id": "42",
        "sub": "001",
        "dlvrd": "001",
        "submit_date": "2611290800",
        "done_date": "2611290801",
        "stat": "UNDELIV",
        "err": "001",
        "text": "x",
    }


def test_parse_underscore_and_joined_date_keys() -> None:
    got = parse_receipt_text("id:1 submit_date:2611290800 donedate:2611290801 stat:DELIVRD")
    assert got["submit_date"] == "2611290800"
    assert got["done_date"] == "2611290801"


def test_parse_missing_fields() -> None:
    assert parse_receipt_text("id:77 stat:EXPIRED") == {"id": "77", "stat": "EXPIRED"}
    assert parse_receipt_text("stat:DELIVRD err:000") == {"stat": "DELIVRD", "err": "000"}
    assert parse_receipt_text("") == {}
    assert parse_receipt_text("hello world") == {}


def test_parse_empty_values() -> None:
    got = parse_receipt_text("id: sub:001 err: text:")
    assert got == {"id": "", "sub": "001", "err": "", "text": ""}


def test_text_takes_the_rest_verbatim() -> None:
    got = parse_receipt_text("id:1 stat:DELIVRD err:000 text:id:2 stat:UNDELIV   a:b  ")
    assert got["id"] == "1"
    assert got["stat"] == "DELIVRD"
    assert got["text"] == "id:2 stat:UNDELIV   a:b"


def test_field_order_does_not_matter() -> None:
    got = parse_receipt_text("stat:REJECTD err:012 id:X9 dlvrd:000 sub:001")
    assert got == {"stat": "REJECTD", "err": "012", "id": "X9", "dlvrd": "000", "sub": "001"}


def test_unknown_vendor_field_does_not_bleed() -> None:
    got = parse_receipt_text("id:5 mccmnc:46000 stat:DELIVRD foo:bar err:000")
    assert got == {"id": "5", "stat": "DELIVRD", "err": "000"}


def test_key_must_start_a_word() -> None:
    # "msgid:" and "substat:" are not "id:" and "stat:".
    assert parse_receipt_text("msgid:9 substat:X") == {}


def test_first_occurrence_wins() -> None:
    assert parse_receipt_text("id:1 id:2 stat:DELIVRD")["id"] == "1"


def test_newlines_and_tabs_are_whitespace() -> None:
    got = parse_receipt_text("id:7\nstat:DELIVRD\terr:000\r\ntext:a\nb")
    assert got == {"id": "7", "stat": "DELIVRD", "err": "000", "text": "a\nb"}


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_parse_never_raises(text: str) -> None:
    fields = parse_receipt_text(text)
    assert set(fields) <= {
        "id", "sub", "dlvrd", "submit_date", "done_date", "stat", "err", "text"
    }  # fmt: skip
    receipt_from_fields(text, None, None, None)


# ---------------------------------------------------------------- dates


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2611290800", datetime(2026, 11, 29, 8, 0, tzinfo=UTC)),
        ("261129080059", datetime(2026, 11, 29, 8, 0, 59, tzinfo=UTC)),
        ("0001010000", datetime(2000, 1, 1, 0, 0, tzinfo=UTC)),
        ("9912312359", datetime(2099, 12, 31, 23, 59, tzinfo=UTC)),
        ("2402292359", datetime(2024, 2, 29, 23, 59, tzinfo=UTC)),
        (" 2611290800 ", datetime(2026, 11, 29, 8, 0, tzinfo=UTC)),
    ],
)
def test_parse_smpp_date(value: str, expected: datetime) -> None:
    got = parse_smpp_date(value)
    assert got == expected
    assert got is not None and got.tzinfo is UTC


@pytest.mark.parametrize(
    "value",
    [
        "",
        "261129080",
        "26112908001",
        "2611290800599",
        "2613290800",
        "2611320800",
        "2611292400",
        "2611290860",
        "261129080060",
        "2502290800",
        "26112908OO",
        "２６11290800",
        "26-11-29 08:00",
    ],
)
def test_parse_smpp_date_invalid(value: str) -> None:
    assert parse_smpp_date(value) is None


def test_format_smpp_date() -> None:
    assert format_smpp_date(datetime(2026, 11, 29, 8, 0, 59, tzinfo=UTC)) == "2611290800"
    assert format_smpp_date(datetime(2026, 11, 29, 8, 0)) == "2611290800"
    from datetime import timedelta, timezone

    local = datetime(2026, 11, 29, 16, 0, tzinfo=timezone(timedelta(hours=8)))
    assert format_smpp_date(local) == "2611290800"


# ---------------------------------------------------------------- stat mapping


@pytest.mark.parametrize(
    ("stat", "state"),
    [
        ("DELIVRD", ReceiptState.DELIVERED),
        ("UNDELIV", ReceiptState.UNDELIVERABLE),
        ("DELETED", ReceiptState.UNDELIVERABLE),
        ("EXPIRED", ReceiptState.EXPIRED),
        ("REJECTD", ReceiptState.REJECTED),
        ("UNKNOWN", ReceiptState.UNKNOWN),
        ("ACCEPTD", ReceiptState.ENROUTE),
        ("ENROUTE", ReceiptState.ENROUTE),
        ("BUFFRED", ReceiptState.ENROUTE),
        ("BUFFERD", ReceiptState.ENROUTE),
        ("ACKED", ReceiptState.ENROUTE),
        ("delivrd", ReceiptState.DELIVERED),
        (" Acked ", ReceiptState.ENROUTE),
        ("DELIVERED", ReceiptState.DELIVERED),
        ("Undeliverable", ReceiptState.UNDELIVERABLE),
        ("REJECTED", ReceiptState.REJECTED),
        ("ACCEPTED", ReceiptState.ENROUTE),
        ("FAILED", ReceiptState.UNKNOWN),
        ("", ReceiptState.UNKNOWN),
    ],
)
def test_state_for_stat(stat: str, state: ReceiptState) -> None:
    assert state_for_stat(stat) is state


@pytest.mark.parametrize(
    ("stat", "state", "final"),
    [
        ("DELIVRD", ReceiptState.DELIVERED, True),
        ("UNDELIV", ReceiptState.UNDELIVERABLE, True),
        ("DELETED", ReceiptState.UNDELIVERABLE, True),
        ("EXPIRED", ReceiptState.EXPIRED, True),
        ("REJECTD", ReceiptState.REJECTED, True),
        ("UNKNOWN", ReceiptState.UNKNOWN, True),
        ("ACCEPTD", ReceiptState.ENROUTE, False),
        ("ENROUTE", ReceiptState.ENROUTE, False),
        ("BUFFRED", ReceiptState.ENROUTE, False),
        ("BUFFERD", ReceiptState.ENROUTE, False),
        ("ACKED", ReceiptState.ENROUTE, False),
        ("WEIRD", ReceiptState.UNKNOWN, True),
    ],
)
def test_receipt_text_stat(stat: str, state: ReceiptState, final: bool) -> None:
    receipt = receipt_from_fields(f"id:1 stat:{stat.lower()} err:000", None, None, None)
    assert receipt is not None
    assert receipt.state is state
    assert receipt.stat == stat
    assert receipt.final is final


def test_receipt_state_values() -> None:
    assert [s.value for s in ReceiptState] == [
        "delivered",
        "undeliverable",
        "expired",
        "rejected",
        "unknown",
        "enroute",
    ]
    assert ReceiptState.DELIVERED == "delivered"


# ---------------------------------------------------------------- receipts from text and TLVs


def test_full_text_receipt() -> None:
    receipt = receipt_from_fields(STANDARD, None, None, None)
    assert receipt == Receipt(
        message_id="0123456789",
        state=ReceiptState.DELIVERED,
        stat="DELIVRD",
        err="000",
        submit_date=datetime(2026, 11, 29, 8, 0, tzinfo=UTC),
        done_date=datetime(2026, 11, 29, 8, 1, tzinfo=UTC),
        sub=1,
        dlvrd=1,
        text="Your code is 123456",
        network_error=None,
    )
    assert receipt.final


@pytest.mark.parametrize(
    ("state_int", "stat", "state"),
    [
        (1, "ENROUTE", ReceiptState.ENROUTE),
        (2, "DELIVRD", ReceiptState.DELIVERED),
        (3, "EXPIRED", ReceiptState.EXPIRED),
        (4, "DELETED", ReceiptState.UNDELIVERABLE),
        (5, "UNDELIV", ReceiptState.UNDELIVERABLE),
        (6, "ACCEPTD", ReceiptState.ENROUTE),
        (7, "UNKNOWN", ReceiptState.UNKNOWN),
        (8, "REJECTD", ReceiptState.REJECTED),
    ],
)
def test_message_state_tlv(state_int: int, stat: str, state: ReceiptState) -> None:
    assert MESSAGE_STATE_STAT[state_int] == stat
    receipt = receipt_from_fields("", "ABC", state_int, None)
    assert receipt is not None
    assert receipt.message_id == "ABC"
    assert receipt.stat == stat
    assert receipt.state is state
    assert receipt.text == ""
    assert receipt.err is None and receipt.sub is None and receipt.submit_date is None


def test_tlvs_win_over_text() -> None:
    text = "id:111 sub:001 dlvrd:000 stat:UNDELIV err:005 text:x"
    receipt = receipt_from_fields(text, "222", 2, None)
    assert receipt is not None
    assert receipt.message_id == "222"
    assert receipt.state is ReceiptState.DELIVERED
    assert receipt.stat == "DELIVRD"
    # Fields only the text has still come from it.
    assert receipt.err == "005"
    assert receipt.dlvrd == 0
    assert receipt.text == "x"


@pytest.mark.parametrize("bad_state", [0, 9, 255, -1])
def test_unusable_message_state_falls_back_to_text(bad_state: int) -> None:
    receipt = receipt_from_fields("id:1 stat:DELIVRD", None, bad_state, None)
    assert receipt is not None and receipt.state is ReceiptState.DELIVERED
    receipt = receipt_from_fields("id:1", None, bad_state, None)
    assert receipt is not None
    assert receipt.state is ReceiptState.UNKNOWN and receipt.stat == ""


def test_text_id_used_when_tlv_id_missing_or_empty() -> None:
    for tlv in (None, "", "  ", "\x00"):
        receipt = receipt_from_fields("id:abc stat:DELIVRD", tlv, None, None)
        assert receipt is not None and receipt.message_id == "abc"


def test_tlv_id_nul_terminator_stripped() -> None:
    receipt = receipt_from_fields("", "0B8BE19\x00", 2, None)
    assert receipt is not None and receipt.message_id == "0B8BE19"


@pytest.mark.parametrize(
    "text", ["", "stat:DELIVRD err:000", "id: stat:DELIVRD", "id:\x00 stat:DELIVRD", "garbage"]
)
def test_no_id_is_none(text: str) -> None:
    assert receipt_from_fields(text, None, 2, b"\x03\x00\x01") is None


def test_no_stat_anywhere_is_unknown() -> None:
    receipt = receipt_from_fields("id:1 err:000", None, None, None)
    assert receipt is not None
    assert receipt.state is ReceiptState.UNKNOWN
    assert receipt.stat == ""
    assert receipt.final


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        (b"\x03\x00\x01", 1),
        (b"\x01\x01\x2c", 300),
        (b"\x03\xff\xff", 65535),
        (b"\x02\x00\x00", 0),
        (b"\x00\x7b", 123),  # 2 octets: a known SMSC slip, taken as the code alone
        (b"", None),
        (b"\x03", None),
        (b"\x03\x00\x01\x00", None),
    ],
)
def test_network_error_code(raw: bytes | None, expected: int | None) -> None:
    receipt = receipt_from_fields("id:1 stat:UNDELIV", None, None, raw)
    assert receipt is not None
    assert receipt.network_error == expected


@pytest.mark.parametrize(
    ("sub", "expected"), [("001", 1), ("000", 0), ("010", 10), ("abc", None), ("", None),
                          ("１", None), ("-1", None)]
)  # fmt: skip
def test_sub_and_dlvrd_ints(sub: str, expected: int | None) -> None:
    receipt = receipt_from_fields(f"id:1 sub:{sub} dlvrd:{sub} stat:DELIVRD", None, None, None)
    assert receipt is not None
    assert receipt.sub == expected
    assert receipt.dlvrd == expected


def test_bad_dates_become_none() -> None:
    receipt = receipt_from_fields(
        "id:1 submit date:2613290800 done date:xx stat:DELIVRD", None, None, None
    )
    assert receipt is not None
    assert receipt.submit_date is None and receipt.done_date is None


def test_twelve_digit_dates() -> None:
    receipt = receipt_from_fields(
        "id:1 submit date:261129080001 done date:261129080159 stat:DELIVRD", None, None, None
    )
    assert receipt is not None
    assert receipt.submit_date == datetime(2026, 11, 29, 8, 0, 1, tzinfo=UTC)
    assert receipt.done_date == datetime(2026, 11, 29, 8, 1, 59, tzinfo=UTC)


def test_receipt_is_frozen_and_slotted() -> None:
    receipt = receipt_from_fields(STANDARD, None, None, None)
    assert receipt is not None
    with pytest.raises(AttributeError):
        receipt.state = ReceiptState.UNKNOWN  # type: ignore[misc]
    assert not hasattr(receipt, "__dict__")


# ---------------------------------------------------------------- formatting (the simulator's side)


def test_format_receipt_text_exact() -> None:
    text = format_receipt_text(
        "B8BE19",
        "DELIVRD",
        submit_date=datetime(2026, 11, 29, 8, 0, 30, tzinfo=UTC),
        done_date=datetime(2026, 11, 29, 8, 1, tzinfo=UTC),
        text="Your code is 123456",
    )
    assert text == (
        "id:B8BE19 sub:001 dlvrd:001 submit date:2611290800 done date:2611290801 "
        "stat:DELIVRD err:000 text:Your code is 123456"
    )


def test_format_receipt_text_options() -> None:
    text = format_receipt_text(
        "7",
        "UNDELIV",
        "011",
        2,
        0,
        submit_date=datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
        done_date=datetime(2026, 1, 2, 3, 5, tzinfo=UTC),
    )
    assert text == (
        "id:7 sub:002 dlvrd:000 submit date:2601020304 done date:2601020305 "
        "stat:UNDELIV err:011 text:"
    )


_ids = st.text(alphabet="0123456789ABCDEFabcdef", min_size=1, max_size=20)
_stats = st.sampled_from(["DELIVRD", "UNDELIV", "DELETED", "EXPIRED", "REJECTD", "UNKNOWN",
                          "ACCEPTD", "ENROUTE", "BUFFRED", "ACKED"])  # fmt: skip
_minutes = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
).map(lambda d: d.replace(second=0, microsecond=0))


@given(
    _ids,
    _stats,
    st.from_regex(r"\A[0-9]{3}\Z"),
    st.integers(0, 999),
    st.integers(0, 999),
    _minutes,
    _minutes,
    st.text(max_size=40),
)
@settings(max_examples=300, deadline=None)
def test_format_then_parse_roundtrip(
    message_id: str,
    stat: str,
    err: str,
    sub: int,
    dlvrd: int,
    submit: datetime,
    done: datetime,
    text: str,
) -> None:
    raw = format_receipt_text(
        message_id, stat, err, sub, dlvrd, submit_date=submit, done_date=done, text=text
    )
    receipt = receipt_from_fields(raw, None, None, None)
    assert receipt is not None
    assert receipt.message_id == message_id
    assert receipt.stat == stat
    assert receipt.state is state_for_stat(stat)
    assert receipt.err == err
    assert receipt.sub == sub and receipt.dlvrd == dlvrd
    assert receipt.submit_date == submit and receipt.done_date == done
    assert receipt.text == text.strip()
