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
