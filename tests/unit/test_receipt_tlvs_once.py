"""A receipt's TLVs are found in one pass, and its done date's milliseconds are kept from the
receipt before when both name the same date (Inbound._receipt, session 55).

The stored receipt must be the one the four `tlv_get` scans and a timestamp per receipt made:
random TLV lists (the four tags a receipt may carry, repeated, in any order, among others; the
text in short_message or in message_payload) are read both ways, and runs of receipts whose
done dates change, repeat and come back keep each its own done_at.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.config import SmscConfig
from bridge.pipeline import inbound as inbound_module
from bridge.pipeline.inbound import Inbound
from bridge.smpp import constants as C
from bridge.smpp.codec import ShortMessage, tlv_get, tlv_int
from bridge.smpp.msgid import normalize_receipt_id, normalize_tlv_id
from bridge.smpp.receipt import receipt_values

SMSC = SmscConfig(name="t1", system_id="t", password="t")


class _Items:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def add_call(self, item: Any, _call: Any) -> None:
        self.items.append(item)


def _stored(bodies: list[ShortMessage]) -> list[Any]:
    loop = asyncio.new_event_loop()
    try:
        inbound = Inbound(object(), {"t1": SMSC}, clock=lambda: 1_000.0)  # type: ignore[arg-type]
        batch = _Items()
        inbound._receipts = batch  # type: ignore[assignment]
        for body in bodies:
            inbound._receipt("t1", body, loop.create_future())
        return batch.items
    finally:
        loop.close()


def _reference(body: ShortMessage) -> tuple[Any, ...] | None:
    """What the four scans and a timestamp per receipt stored (the code before session 55)."""
    raw = body.short_message or tlv_get(body.tlvs, C.MESSAGE_PAYLOAD) or b""
    text = raw.replace(b"\x00", b"").decode("latin-1")
    tlv_id = tlv_get(body.tlvs, C.RECEIPTED_MESSAGE_ID)
    tlv_text = tlv_id.replace(b"\x00", b"").decode("latin-1").strip() if tlv_id else ""
    got = receipt_values(
        text,
        tlv_text or None,
        tlv_int(body.tlvs, C.MESSAGE_STATE),
        tlv_get(body.tlvs, C.NETWORK_ERROR_CODE),
    )
    if got is None:
        return None
    rule = inbound_module.msgid_rule(SMSC)
    mid, state, stat, err, _s, done, _a, _b, _t, net = got
    key = normalize_tlv_id(mid, rule) if tlv_text else normalize_receipt_id(mid, rule)
    if net is not None and not (err and err.strip("0")):
        err = str(net)
    done_at = int(done.timestamp() * 1000) if done else None
    return key, str(state), stat or None, err, done_at, text[:250]


def _text(mid: str, done: str, stat: str = "DELIVRD") -> bytes:
    return (
        f"id:{mid} sub:001 dlvrd:001 submit date:2612051400 done date:{done} stat:{stat} "
        "err:000 text:hello"
    ).encode()


_TAGS = st.sampled_from(
    [C.RECEIPTED_MESSAGE_ID, C.MESSAGE_STATE, C.NETWORK_ERROR_CODE, C.MESSAGE_PAYLOAD, 0x1403]
)
_VALUES = st.sampled_from(
    [b"", b"0A1B\x00", b" 77 ", b"\x02", b"\x00\x05", b"\x00\x00\x00\x00\x08", b"\x01\x00\x2a",
     _text("C3", "2612051401"), b"\xff\xff\xff\xff\xff"]
)  # fmt: skip
_DONES = st.sampled_from(["2612051400", "2612051401", "261205140059", "2612051400", "9999999999"])


@st.composite
def receipts(draw: st.DrawFn) -> ShortMessage:
    tlvs = tuple(draw(st.lists(st.tuples(_TAGS, _VALUES), max_size=6)))
    text = draw(st.one_of(st.just(b""), _DONES.map(lambda d: _text("0B", d))))
    return ShortMessage(esm_class=C.ESM_DELIVERY_RECEIPT, short_message=text, tlvs=tlvs)


@settings(max_examples=400, deadline=None)
@given(st.lists(receipts(), min_size=1, max_size=6))
def test_a_receipt_is_stored_as_the_four_scans_stored_it(bodies: list[ShortMessage]) -> None:
    expected = [r for r in map(_reference, bodies) if r is not None]
    got = [(i.smsc_msg_id, i.state, i.stat, i.err, i.done_at, i.raw) for i in _stored(bodies)]
    assert got == expected


def test_the_usual_receipt_scans_its_tlvs_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulator's receipt (text, receipted_message_id, message_state): no tlv_get scan."""

    def refused(*_a: Any) -> Any:
        raise AssertionError("a TLV scan of its own")

    monkeypatch.setattr(inbound_module, "tlv_get", refused)
    monkeypatch.setattr(inbound_module, "tlv_int", refused, raising=False)
    body = ShortMessage(
        esm_class=C.ESM_DELIVERY_RECEIPT,
        short_message=_text("0012D687", "2612051400"),
        tlvs=((C.RECEIPTED_MESSAGE_ID, b"0012D687\x00"), (C.MESSAGE_STATE, b"\x02")),
    )
    (item,) = _stored([body])
    done_at = int(datetime(2026, 12, 5, 14, 0, tzinfo=UTC).timestamp() * 1000)
    assert (item.smsc_msg_id, item.state, item.done_at) == ("12D687", "delivered", done_at)
