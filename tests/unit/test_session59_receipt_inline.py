"""A receipt's path in the owner, per part sent (session 59, README note 27).

`Inbound._receipt` reads the standard layout itself (`receipt.STANDARD_OUTCOME_RE`, the four
groups it stores) instead of calling `receipt_outcome`, and keys the id with its SMSC's bases read
once (`_key_rules`) and normalize_id's usual case inline; `codec._decode_sm` stores a deliver_sm's
fields on an instance made without `ShortMessage`'s class call; a receipt's answer is set by
`DeliverAnswer.settle`. Every value must be what the old path made: the items queued (every
field of the `ReceiptIn`, the call's arguments), the unparsable count, the decoded bodies.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.config import SmscConfig
from bridge.pipeline import inbound as inbound_module
from bridge.pipeline.inbound import Inbound
from bridge.smpp import constants as C
from bridge.smpp.codec import Pdu, ShortMessage, decode, encode
from bridge.smpp.msgid import normalize_receipt_id, normalize_tlv_id
from bridge.smpp.protocol import DeliverAnswer
from bridge.smpp.receipt import _STANDARD_RE, STANDARD_OUTCOME_RE, ReceiptState, receipt_outcome
from bridge.store.models import ReceiptIn
from tests.unit.test_receipt_outcome import texts

_SMSCS = {
    "plain": SmscConfig(name="plain", system_id="t", password="t"),
    "hexdec": SmscConfig(
        name="hexdec", system_id="t", password="t", resp_id_base="hex", receipt_id_base="dec"
    ),
    "asis": SmscConfig(
        name="asis", system_id="t", password="t", id_case_insensitive=False,
        id_strip_leading_zeros=False, tlv_id_base="receipt", receipt_id_base="hex",
    ),
}  # fmt: skip


class _Items:
    def __init__(self) -> None:
        self.calls: list[tuple[ReceiptIn, Any]] = []

    def add_call(self, item: ReceiptIn, call: Any) -> None:
        self.calls.append((item, call))


def _old_item(inbound: Inbound, smsc: str, body: ShortMessage) -> tuple[Any, ...] | None:
    """What the session 58 `_receipt` queued: receipt_outcome, then normalize_tlv_id or
    normalize_receipt_id, then the intermediate notification's state."""
    payload = tlv_id = state = network = None
    for tag, value in body.tlvs:
        if tag == C.RECEIPTED_MESSAGE_ID:
            tlv_id = value if tlv_id is None else tlv_id
        elif tag == C.MESSAGE_STATE:
            state = value if state is None else state
        elif tag == C.NETWORK_ERROR_CODE:
            network = value if network is None else network
        elif tag == C.MESSAGE_PAYLOAD and payload is None:
            payload = value
    raw = body.short_message or payload or b""
    text = raw.replace(b"\x00", b"").decode("latin-1")
    tlv_text = tlv_id.replace(b"\x00", b"").decode("latin-1").strip() if tlv_id is not None else ""
    st_ = state[0] if state is not None and len(state) == 1 else C and _tlv_int(state)
    got = receipt_outcome(text, tlv_text or None, st_, network)
    if got is None:
        return None
    message_id, rstate, stat, err, done_date, net_error = got
    rule = inbound._rules.get(smsc)
    if rule is None:
        key = message_id
    elif tlv_text:
        key = normalize_tlv_id(message_id, rule)
    else:
        key = normalize_receipt_id(message_id, rule)
    if net_error is not None and not (err and err.strip("0")):
        err = str(net_error)
    if C.is_intermediate_notification(body.esm_class):
        rstate = ReceiptState.ENROUTE
    done_at = None if done_date is None else int(done_date.timestamp() * 1000)
    item = ReceiptIn(smsc, key, str(rstate), stat or None, err, done_at, 1_000_000, text[:250])
    return item, key, rstate, stat, err


def _tlv_int(v: bytes | None) -> int | None:
    from bridge.smpp.codec import tlv_int_value

    return tlv_int_value(v)


_TLV_ID = st.one_of(
    st.none(),
    st.sampled_from([b"0012D687\x00", b"0012d687", b" 77 \x00", b"\x00", b"", b"ab c", b"0x1F"]),
)
_STATE = st.one_of(st.none(), st.sampled_from([b"\x02", b"\x05", b"\x00\x01", b"", b"\x09"]))
_NET = st.one_of(st.none(), st.sampled_from([b"\x03\x00\x22", b"\x00\x05", b"\x01", b""]))


@settings(max_examples=1500, deadline=None)
@given(
    texts(), _TLV_ID, _STATE, _NET, st.sampled_from([0x04, 0x20, 0x24, 0x00]),
    st.sampled_from([*_SMSCS, "unknown"]), st.booleans(),
)  # fmt: skip
def test_the_items_queued_are_the_old_paths(
    text: str, tlv_id: bytes | None, state: bytes | None, network: bytes | None, esm: int,
    smsc: str, as_payload: bool,
) -> None:  # fmt: skip
    octets = text.encode("latin-1", "replace")
    tlvs: list[tuple[int, bytes]] = [] if tlv_id is None else [(C.RECEIPTED_MESSAGE_ID, tlv_id)]
    if state is not None:
        tlvs.append((C.MESSAGE_STATE, state))
    if network is not None:
        tlvs.append((C.NETWORK_ERROR_CODE, network))
    if as_payload:
        tlvs.append((C.MESSAGE_PAYLOAD, octets))
    body = ShortMessage(
        esm_class=esm, short_message=b"" if as_payload else octets, tlvs=tuple(tlvs)
    )
    inbound = Inbound(object(), _SMSCS, clock=lambda: 1_000.0)  # type: ignore[arg-type]
    batch = _Items()
    inbound._receipts = batch  # type: ignore[assignment]
    out = DeliverAnswer()
    inbound._receipt(smsc, body, out)
    want = _old_item(inbound, smsc, body)
    if want is None:
        assert out.done() and out.result() == C.ESME_ROK
        assert (inbound.unparsable, batch.calls) == (1, [])
        return
    ((item, call),) = batch.calls
    assert item == want[0]
    assert type(item.state) is str and type(item.smsc_msg_id) is str
    # What the receipt is queued with (a tuple since session 64; a partial's `args` before).
    assert call[2:] == want[1:]
    # The state's text (session 64; the ReceiptState member before, equal to it as a StrEnum).
    assert type(call[3]) is str and call[3] == want[2].value


def test_the_outcome_regex_matches_the_standard_texts_only() -> None:
    """STANDARD_OUTCOME_RE is _STANDARD_RE with four groups: the same texts, the same four
    values. 30,000 random texts near the layout (a word, a space, a digit or a label changed)."""
    rng = random.Random(59)
    alphabet = "0123456789aZ:_ \t\n\x0b\x1c\x85\xa0é٣²x"
    base = (
        "id:0012D687 sub:001 dlvrd:001 submit date:2612051400 done date:261205140059 "
        "stat:DELIVRD err:000 text:hi there"
    )
    for _ in range(30_000):
        t = list(base[: rng.randrange(60, len(base) + 1)])
        for _ in range(rng.randrange(0, 4)):
            i = rng.randrange(len(t))
            op = rng.randrange(3)
            if op == 0:
                t[i] = rng.choice(alphabet)
            elif op == 1:
                del t[i]
            else:
                t.insert(i, rng.choice(alphabet))
        text = "".join(t)
        old = _STANDARD_RE.fullmatch(text)
        new = STANDARD_OUTCOME_RE.fullmatch(text)
        assert (old is None) == (new is None), text
        if old is not None and new is not None:
            g = old.groups()
            assert new.groups() == (g[0], g[4], g[5], g[6]), text


def test_the_usual_receipt_takes_no_receipt_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulator's receipt (the standard text, receipted_message_id, message_state) is read
    inline: receipt_outcome's call made unusable, the item is the one it gave."""
    body = ShortMessage(
        esm_class=C.ESM_DELIVERY_RECEIPT,
        short_message=b"id:0012D687 sub:001 dlvrd:001 submit date:2612051400 done date:"
        b"2612051401 stat:DELIVRD err:000 text:Your verification c",
        tlvs=((C.RECEIPTED_MESSAGE_ID, b"0012D687\x00"), (C.MESSAGE_STATE, b"\x02")),
    )
    inbound = Inbound(object(), _SMSCS, clock=lambda: 1_000.0)  # type: ignore[arg-type]
    want = _old_item(inbound, "plain", body)
    assert want is not None

    def refused(*_a: Any) -> Any:
        raise AssertionError("receipt_outcome called for a standard receipt")

    monkeypatch.setattr(inbound_module, "receipt_outcome", refused)
    batch = _Items()
    inbound._receipts = batch  # type: ignore[assignment]
    out = DeliverAnswer()
    inbound._receipt("plain", body, out)
    ((item, _call),) = batch.calls
    assert item == want[0]
    assert item.smsc_msg_id == "12D687" and item.done_at == 1_796_479_260_000


def test_a_deliver_sm_body_is_decoded_without_the_class_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Random bodies, encoded and decoded with ShortMessage's __init__ made unusable: equal to
    the value encoded, every field set (a slot left unset would raise on reading)."""
    rng = random.Random(5959)

    def word(n: int) -> str:
        return "".join(rng.choice("ab09+ é") for _ in range(rng.randrange(0, n)))

    bodies = []
    for _ in range(300):
        tlvs = tuple(
            (rng.randrange(0x10000), bytes(rng.randrange(256) for _ in range(rng.randrange(5))))
            for _ in range(rng.randrange(4))
        )
        octet = [rng.randrange(256) for _ in range(10)]
        text = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 160)))
        bodies.append(
            ShortMessage(
                word(6),
                octet[0],
                octet[1],
                word(21),
                octet[2],
                octet[3],
                word(21),
                octet[4],
                octet[5],
                octet[6],
                word(17),
                word(17),
                octet[7],
                octet[8],
                octet[9],
                0,
                text,
                tlvs,
            )
        )
    frames = [encode(Pdu(C.DELIVER_SM, 0, i + 1, b)) for i, b in enumerate(bodies)]

    def refused(*_a: Any, **_k: Any) -> None:
        raise AssertionError("ShortMessage.__init__ called")

    monkeypatch.setattr(ShortMessage, "__init__", refused)
    for frame, body in zip(frames, bodies, strict=True):
        got = decode(frame).body
        assert type(got) is ShortMessage
        assert got == body
        assert [getattr(got, s) for s in ShortMessage.__slots__] == [
            getattr(body, s) for s in ShortMessage.__slots__
        ]


def test_settle_sets_an_answer_once() -> None:
    answer = DeliverAnswer()
    answer.settle(C.ESME_RX_T_APPN)
    assert answer.done() and answer.result() == C.ESME_RX_T_APPN
    answer.settle(C.ESME_ROK)  # answered already: nothing
    assert answer.result() == C.ESME_RX_T_APPN
    with pytest.raises(asyncio.InvalidStateError):
        answer.set_result(C.ESME_ROK)
