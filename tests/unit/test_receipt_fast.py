"""receipt_from_fields reads the standard layout straight from its match (session 48, h6): the
same Receipt as the tolerant path it took before, for standard texts and near misses alike.

The reference below is the function as it was before that fast path (it built a dict of every
field and cleaned each one); hypothesis compares the two on standard receipts with arbitrary
words, dates, stats and quoted texts, NULs and Unicode whitespace included.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.smpp.receipt import (
    MESSAGE_STATE_STAT,
    Receipt,
    ReceiptState,
    _clean,
    _int_or_none,
    _network_error,
    parse_receipt_text,
    parse_smpp_date,
    receipt_from_fields,
    state_for_stat,
)


def _reference(
    short_message_text: str,
    tlv_receipted_id: str | None,
    tlv_message_state: int | None,
    tlv_network_error: bytes | None,
) -> Receipt | None:
    fields = {
        k: v if k == "text" else v.replace("\x00", "").strip()
        for k, v in parse_receipt_text(short_message_text or "").items()
    }
    message_id = _clean(tlv_receipted_id) or _clean(fields.get("id"))
    if not message_id:
        return None
    if tlv_message_state in MESSAGE_STATE_STAT:
        stat = MESSAGE_STATE_STAT[tlv_message_state]
    else:
        stat = fields.get("stat", "").upper()
    state = state_for_stat(stat) if stat else ReceiptState.UNKNOWN
    return Receipt(
        message_id=message_id,
        state=state,
        stat=stat,
        err=fields.get("err") or None,
        submit_date=parse_smpp_date(fields.get("submit_date", "")),
        done_date=parse_smpp_date(fields.get("done_date", "")),
        sub=_int_or_none(fields.get("sub")),
        dlvrd=_int_or_none(fields.get("dlvrd")),
        text=fields.get("text", ""),
        network_error=_network_error(tlv_network_error),
    )


_CHARS = st.sampled_from([*"0aZ9:_-. \t\x00\u00a0\u3000é中\n", "\u2028"])
_WORD = st.text(_CHARS, min_size=0, max_size=6) | st.sampled_from(
    ["0A1B2C", "DELIVRD", "delivrd", "UNDELIV", "000", "001", "abc", ""]
)
_DATE = st.sampled_from(["2611290800", "261129080059", "2613290800", "26112908", "x"]) | _WORD


@st.composite
def _texts(draw: st.DrawFn) -> str:
    text = (
        f"id:{draw(_WORD)} sub:{draw(_WORD)} dlvrd:{draw(_WORD)} "
        f"submit date:{draw(_DATE)} done date:{draw(_DATE)} stat:{draw(_WORD)} err:{draw(_WORD)}"
    )
    if draw(st.booleans()):
        text += f" text:{draw(st.text(_CHARS, max_size=12))}"
    return text


@settings(max_examples=600, deadline=None)
@given(
    _texts(),
    st.none() | _WORD,
    st.none() | st.integers(0, 9),
    st.none() | st.sampled_from([b"\x03\x00\x00", b"\x01\x02", b"\x01"]),
)
def test_same_receipt_as_before(
    text: str, tlv_id: str | None, state: int | None, net: bytes | None
) -> None:
    assert receipt_from_fields(text, tlv_id, state, net) == _reference(text, tlv_id, state, net)


# Real carriers' variations on the layout: key spellings and case, fields missing or in another
# order, vendor fields between them, other blanks, ids hex or decimal with leading zeros, quoted
# texts with colons (and field names) in them, a NUL terminator; a third in the standard
# layout itself (the fast path), with those values.
_KEYS = {
    "id": ["id", "ID", "Id"],
    "sub": ["sub", "SUB", "Sub"],
    "dlvrd": ["dlvrd", "DLVRD", "Dlvrd"],
    "submit date": ["submit date", "submit_date", "Submit Date", "SUBMIT_DATE", "submitdate"],
    "done date": ["done date", "done_date", "Done Date", "DONE DATE"],
    "stat": ["stat", "STAT", "Stat"],
    "err": ["err", "ERR", "Err"],
}
_IDS = st.sampled_from(
    ["0000A3F1", "00b8be19", "12107289", "0012107289", "0x1A2B", "5f3c-9a2e-11", "0", "000"]
) | st.from_regex(r"[0-9A-Fa-f]{1,16}", fullmatch=True)
_VALUES = {
    "id": _IDS,
    "sub": st.sampled_from(["001", "1", "000", "01"]),
    "dlvrd": st.sampled_from(["001", "1", "000", "00"]),
    "submit date": st.sampled_from(["2611290800", "261129080059", "1712311259"]),
    "done date": st.sampled_from(["2611290801", "261129080130", "2613290800"]),
    "stat": st.sampled_from(["DELIVRD", "delivrd", "UNDELIV", "EXPIRED", "ACCEPTD", "DELIVERED"]),
    "err": st.sampled_from(["000", "0", "001", "0x0B", "255"]),
}
_EXTRAS = st.sampled_from(["MCCMNC:23410", "foo:bar", "network:0", "sms_id:77 "])
_QUOTED = st.sampled_from(
    ["", "Your code: 12:34", "id:99 stat:UNDELIV", "Hi, see you at 10:30 ", "\u4f60\u597d:", " x "]
)


@st.composite
def _carrier_texts(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 2)) == 0:  # the standard layout, with carriers' values
        fields = [f"{n}:{draw(_VALUES[n])}" for n in _KEYS]
        text = " ".join(fields)
    else:
        names = [n for n in _KEYS if draw(st.integers(0, 9)) > 0]  # now and then one left out
        if draw(st.booleans()):
            names = draw(st.permutations(names))
        fields = [f"{draw(st.sampled_from(_KEYS[n]))}:{draw(_VALUES[n])}" for n in names]
        for _ in range(draw(st.integers(0, 2))):
            fields.insert(draw(st.integers(0, len(fields))), draw(_EXTRAS))
        text = draw(st.sampled_from([" ", "  ", "\t"])).join(fields)
    if draw(st.booleans()):
        text += f" {draw(st.sampled_from(['text', 'Text', 'TEXT']))}:{draw(_QUOTED)}"
    if draw(st.integers(0, 4)) == 0:
        text += "\x00"
    return text


@settings(max_examples=600, deadline=None)
@given(
    _carrier_texts(),
    st.none() | _IDS,
    st.none() | st.integers(0, 9),
    st.none() | st.sampled_from([b"\x03\x00\x00", b"\x01\x02"]),
)
def test_carrier_layouts_read_as_before(
    text: str, tlv_id: str | None, state: int | None, net: bytes | None
) -> None:
    """The formats real SMSCs send, standard or not, give the Receipt the tolerant path gave."""
    assert receipt_from_fields(text, tlv_id, state, net) == _reference(text, tlv_id, state, net)


def test_standard_receipt_read_from_the_match() -> None:
    got = receipt_from_fields(
        "id:0A1B2C3D4E sub:001 dlvrd:001 submit date:2611290800 done date:261129080130 "
        "stat:delivrd err:000 text:  Your code: 1 2  ",
        None,
        None,
        None,
    )
    assert got is not None
    assert (got.message_id, got.state, got.stat, got.err) == (
        "0A1B2C3D4E",
        ReceiptState.DELIVERED,
        "DELIVRD",
        "000",
    )
    assert (got.sub, got.dlvrd, got.text) == (1, 1, "Your code: 1 2")
    assert got.submit_date is not None and got.submit_date.minute == 0
    assert got.done_date is not None and got.done_date.second == 30
