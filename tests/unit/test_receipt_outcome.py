"""The owner reads a receipt's six stored fields with `receipt.receipt_outcome` (session 57).

`receipt_values` gives all ten fields of a `Receipt`; the owner's receipt path (`Inbound._receipt`,
one per part sent) stored six and dropped four it had parsed for nothing (the submit date, sub and
dlvrd made ints, the quoted text stripped). `receipt_outcome` must give exactly `receipt_values`'
six, for every text and TLV combination: the standard layout with odd words (lower case, latin-1
letters whose upper case is longer or outside latin-1, NULs, spaces), the tolerant layouts, no
text, and TLVs present, absent or odd.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.config import SmscConfig
from bridge.pipeline import inbound as inbound_module
from bridge.pipeline.inbound import Inbound
from bridge.smpp import constants as C
from bridge.smpp import receipt as receipt_module
from bridge.smpp.codec import ShortMessage
from bridge.smpp.receipt import receipt_outcome, receipt_values

_WORD = st.one_of(
    st.text(st.sampled_from(list("0aZ9fF ßÿµ\x00\t-:_")), max_size=8).map(
        lambda s: s.replace(" ", "") or "0"
    ),
    st.sampled_from(["x", "DELIVRD", "delivrd", "Enroute", "0012D687"]),
)
_STATS = st.one_of(
    st.sampled_from(
        ["DELIVRD", "delivrd", "UNDELIV", "ACCEPTD", "ENROUTE", "Expired", "rejectd", "UNKNOWN",
         "DELIVERED", "ßTAT", "ÿ", "µ", "X"]
    ),
    _WORD,
)  # fmt: skip
_DATES = st.sampled_from(["2612051400", "261205140059", "9999999999", "2613051400", "26120514"])


@st.composite
def texts(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["standard", "standard", "tolerant", "empty", "free"]))
    if kind == "empty":
        return ""
    if kind == "free":
        return draw(st.text(max_size=60))
    mid = draw(_WORD)
    stat = draw(_STATS)
    sub, dlvrd = draw(st.sampled_from(["001", "1", "x", "٣"])), draw(_WORD)
    submit, done = draw(_DATES), draw(_DATES)
    err = draw(st.sampled_from(["000", "0", "034", "x1"]))
    tail = draw(st.sampled_from(["", " text:hello", " text:  a b  ", " text:", " Text:x"]))
    if kind == "standard":
        return (
            f"id:{mid} sub:{sub} dlvrd:{dlvrd} submit date:{submit} done date:{done} "
            f"stat:{stat} err:{err}{tail}"
        )
    sep = draw(st.sampled_from([" ", "  ", "\n", " \x00"]))
    fields = [f"id:{mid}", f"stat:{stat}", f"done_date:{done}", f"err: {err}", f"sub:{sub}"]
    order = draw(st.permutations(fields))
    return sep.join(order[: draw(st.integers(1, len(order)))]) + tail


_TLV_IDS = st.one_of(st.none(), st.sampled_from(["", "0A1B", " 77 ", "0A\x00", "\x00", "ab c"]))
_STATES = st.one_of(st.none(), st.integers(0, 9), st.just(255))
_NETWORK = st.one_of(
    st.none(), st.sampled_from([b"", b"\x03\x00\x22", b"\x00\x05", b"\x01", b"\x01\x02\x03\x04"])
)


@settings(max_examples=1500, deadline=None)
@given(texts(), _TLV_IDS, _STATES, _NETWORK)
def test_the_six_fields_are_receipt_values_own(
    text: str, tlv_id: str | None, state: int | None, network: bytes | None
) -> None:
    full = receipt_values(text, tlv_id, state, network)
    got = receipt_outcome(text, tlv_id, state, network)
    if full is None:
        assert got is None
        return
    assert got == (full[0], full[1], full[2], full[3], full[5], full[9])
    assert type(got[1]) is type(full[1])


def test_the_owner_reads_the_usual_receipt_without_receipt_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The simulator's receipt (the standard text, receipted_message_id, message_state): stored
    as before without receipt_values and its int and date reads of the fields it drops."""

    def refused(*_a: Any) -> Any:
        raise AssertionError("receipt_values or a dropped field read")

    for name in ("receipt_values", "_int_or_none"):
        monkeypatch.setattr(receipt_module, name, refused)
        monkeypatch.setattr(inbound_module, name, refused, raising=False)
    body = ShortMessage(
        esm_class=C.ESM_DELIVERY_RECEIPT,
        short_message=b"id:0012D687 sub:001 dlvrd:001 submit date:2612051400 done date:"
        b"2612051401 stat:DELIVRD err:000 text:Your verification c",
        tlvs=((C.RECEIPTED_MESSAGE_ID, b"0012D687\x00"), (C.MESSAGE_STATE, b"\x02")),
    )

    class Items:
        def __init__(self) -> None:
            self.items: list[Any] = []

        def add_call(self, item: Any, _call: Any) -> None:
            self.items.append(item)

    loop = asyncio.new_event_loop()
    try:
        smsc = SmscConfig(name="t1", system_id="t", password="t")
        inbound = Inbound(object(), {"t1": smsc}, clock=lambda: 1_000.0)  # type: ignore[arg-type]
        batch = Items()
        inbound._receipts = batch  # type: ignore[assignment]
        out = loop.create_future()
        inbound._receipt("t1", body, out)
    finally:
        loop.close()
    assert not out.done()  # not refused: waiting for its batch
    (item,) = batch.items
    assert (item.smsc_msg_id, item.state, item.stat, item.err, item.done_at) == (
        "12D687",
        "delivered",
        "DELIVRD",
        "000",
        1_796_479_260_000,
    )
