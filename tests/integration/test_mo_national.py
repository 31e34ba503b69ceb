"""Replies written with national language shift tables (TS 23.038 Annex A; UDH IEs 0x25 and
0x24, TS 23.040 9.2.3.24.15-16) are stored and pushed as the handset showed them. Driven through
the real `Inbound` handler (what the SMPP connector awaits before deliver_sm_resp) on every
engine of tests/store_engines.py: single parts, long replies whose parts name their own tables
(kept in the store between parts), packed septets, unknown ids and malformed IEs."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.config import SmscConfig  # noqa: E402
from bridge.metrics import Metrics  # noqa: E402
from bridge.pipeline.inbound import Inbound  # noqa: E402
from bridge.smpp import constants as C  # noqa: E402
from bridge.smpp.codec import ShortMessage  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.store.models import AcceptBatch, Account, NewMessage, NewSegment  # noqa: E402
from bridge.text.gsm import gsm_decode, pack_septets  # noqa: E402
from bridge.text.national import LOCKING_TABLES, SINGLE_SHIFT_TABLES  # noqa: E402

engine = engines.engine
store = engines.store

NOW = 1_700_000_000_000
SEC = 1_000
HOUR = 3_600 * SEC
LEASE = 300 * SEC
TIMEOUT = 300 * SEC
PHONE = "+905321234567"
SRC = "905321234567"
DEST = "10690000"

TURKISH, SINGLE_TR, PORTUGUESE = 1, 1, 3
TR_TEXT = "Işık ağacı çiçek açtı, Şükrü'ye söyle: İstanbul"


def septets(text: str, locking: int = 0, single: int = 0) -> bytes:
    """Test-only encoder: the locking table's septet, else ESC and the single shift code."""
    base, shift = LOCKING_TABLES[locking], SINGLE_SHIFT_TABLES[single]
    out = bytearray()
    for ch in text:
        code = base.find(ch)
        if code >= 0 and ch != "\x1b":
            out.append(code)
        else:
            out += bytes((0x1B, shift.index(ch)))
    return bytes(out)


def ies(locking: int | None = None, single: int | None = None) -> bytes:
    out = b""
    if locking is not None:
        out += bytes((0x25, 1, locking))
    if single is not None:
        out += bytes((0x24, 1, single))
    return out


def pdu(udh_ies: bytes, user_data: bytes, *, data_coding: int = 0) -> ShortMessage:
    return ShortMessage(
        source_addr_ton=1,
        source_addr_npi=1,
        source_addr=SRC,
        dest_addr_ton=0,
        destination_addr=DEST,
        esm_class=0x40 if udh_ies else 0,
        data_coding=data_coding,
        short_message=(bytes((len(udh_ies),)) + udh_ies if udh_ies else b"") + user_data,
    )


def concat(ref: int, total: int, seq: int) -> bytes:
    return bytes((0x00, 3, ref, total, seq))


def packed(udh_ies: bytes, sept: bytes) -> bytes:
    """User data after a UDH of these IEs, packed with the fill bits that align it on a septet."""
    udh_bits = 8 * (1 + len(udh_ies))
    return pack_septets(sept, (7 - udh_bits % 7) % 7)


class Clock:
    def __init__(self) -> None:
        self.ms = NOW

    def __call__(self) -> float:
        return self.ms / 1000


def inbound(store: Store, clock: Clock, *, packed_gsm: bool = False, metrics: Metrics | None = None
            ) -> Inbound:  # fmt: skip
    smsc = SmscConfig(name="smscA", host="127.0.0.1", port=2775, system_id="esme",
                      default_source=DEST, packed_gsm=packed_gsm)  # fmt: skip
    return Inbound(store, {"smscA": smsc}, clock=clock, metrics=metrics)


async def replying_account(store: Store) -> None:
    """acc_a wrote to PHONE an hour ago from smscA's default address: replies are its."""
    acc = Account(id="acc_a", name="a", mo_callback_url="https://a/mo", webhook_secret_enc=b"s",
                  created_at=NOW, updated_at=NOW)  # fmt: skip
    await store.create_account(acc)
    m = NewMessage(
        id="m1", account_id="acc_a", batch_id="b1", recipient=PHONE, encoding="gsm7",
        data_coding=0, billable_units=1, segments=(NewSegment(1, 1, 0, b"hi", b""),),
        accepted_at=NOW - HOUR, text="hi",
    )  # fmt: skip
    assert (await store.accept(AcceptBatch("acc_a", (m,), None, None), NOW - HOUR)).accepted


async def mo_texts(store: Store) -> list[str]:
    jobs = [j for j in await store.claim_webhooks(NOW + HOUR, 100, LEASE) if j.kind == "mo"]
    out = []
    for job in jobs:
        mo = await store.get_mo(job.payload)
        assert mo is not None
        out.append(mo.text)
    return sorted(out)


async def deliver(handler: Inbound, clock: Clock, at: int, body: ShortMessage) -> None:
    clock.ms = at
    assert await handler.on_deliver("smscA", body) == C.ESME_ROK


async def test_single_part_replies_with_a_locking_or_a_single_shift_table(store: Store) -> None:
    await replying_account(store)
    clock = Clock()
    handler = inbound(store, clock)
    locking = septets(TR_TEXT, TURKISH)
    single = septets(TR_TEXT, 0, SINGLE_TR)
    await deliver(handler, clock, NOW, pdu(ies(locking=TURKISH), locking))
    await deliver(handler, clock, NOW + SEC, pdu(ies(single=SINGLE_TR), single))
    await deliver(handler, clock, NOW + 2 * SEC, pdu(ies(TURKISH, SINGLE_TR), locking + b"!"))
    # Read with the default tables (as before), the first was not the text.
    assert gsm_decode(locking) != TR_TEXT
    assert await mo_texts(store) == sorted([TR_TEXT, TR_TEXT, TR_TEXT + "!"])
    assert handler.mo == 3 and handler.mo_unknown_language == 0


async def test_each_part_of_a_long_reply_is_read_with_its_own_tables(store: Store) -> None:
    """Part 1 names Turkish locking, part 2 nothing, part 3 Portuguese single shift; the parts
    wait in the store in between (mo_parts keeps each part's tables)."""
    await replying_account(store)
    clock = Clock()
    handler = inbound(store, clock)
    texts = ("Şükrü ağaç ", "plain part ", "e então à noite Ê")
    bodies = [
        pdu(concat(9, 3, 1) + ies(locking=TURKISH), septets(texts[0], TURKISH)),
        pdu(concat(9, 3, 2), septets(texts[1])),
        pdu(concat(9, 3, 3) + ies(single=PORTUGUESE), septets(texts[2], 0, PORTUGUESE)),
    ]
    # Out of order: the kept parts come back from the store with their tables.
    for at, i in enumerate((2, 0, 1)):
        await deliver(handler, clock, NOW + at * SEC, bodies[i])
    assert await mo_texts(store) == ["".join(texts)]


async def test_packed_septets_after_a_udh_with_language_ies(store: Store) -> None:
    """An SMSC configured packed_gsm: the language IEs lengthen the UDH, and the fill bits with
    it; single and concatenated parts."""
    await replying_account(store)
    clock = Clock()
    handler = inbound(store, clock, packed_gsm=True)
    one = ies(locking=TURKISH)
    await deliver(handler, clock, NOW, pdu(one, packed(one, septets(TR_TEXT, TURKISH))))
    a = concat(4, 2, 1) + ies(TURKISH, SINGLE_TR)
    b = concat(4, 2, 2) + ies(single=SINGLE_TR)
    await deliver(handler, clock, NOW + SEC, pdu(a, packed(a, septets("ığdır ", TURKISH))))
    await deliver(handler, clock, NOW + 2 * SEC, pdu(b, packed(b, septets("Iğdır", 0, 1))))
    assert await mo_texts(store) == sorted([TR_TEXT, "ığdır Iğdır"])


async def test_an_incomplete_reply_keeps_each_parts_tables(store: Store) -> None:
    await replying_account(store)
    clock = Clock()
    handler = inbound(store, clock)
    await deliver(handler, clock, NOW, pdu(concat(7, 3, 1) + ies(TURKISH), septets("çiş", 1)))
    await deliver(handler, clock, NOW + SEC, pdu(concat(7, 3, 3) + ies(6), septets("नमस्ते", 6)))
    assert await handler.flush_stale_mo(NOW + SEC + TIMEOUT + 1, timeout_ms=TIMEOUT) == 1
    assert await mo_texts(store) == ["çiş ... नमस्ते"]


async def test_unknown_tables_fall_back_to_the_default_and_are_counted(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await replying_account(store)
    clock = Clock()
    metrics = Metrics()
    handler = inbound(store, clock, metrics=metrics)
    text = septets("Hello there")
    with caplog.at_level(logging.WARNING, logger="bridge.inbound"):
        # Spanish has no locking table; 14 is reserved.
        await deliver(handler, clock, NOW, pdu(ies(locking=2), text))
        await deliver(handler, clock, NOW + SEC, pdu(ies(single=14), text + b"!"))
    assert await mo_texts(store) == ["Hello there", "Hello there!"]
    assert handler.mo_unknown_language == 2
    metrics.flush()
    sample = metrics.registry.get_sample_value
    assert sample("smpp_bridge_mo_unknown_language_total", {"smsc": "smscA"}) == 2
    warned = [r for r in caplog.records if "unknown national language" in r.getMessage()]
    assert len(warned) == 2 and vars(warned[0])["smsc"] == "smscA"


@pytest.mark.parametrize(
    "udh_ies",
    [
        bytes((0x25, 2, 1, 1)),  # a language IE of the wrong length: ignored
        bytes((0x25, 0)),  # empty
        bytes((0x24, 5, 1)),  # runs past the UDH
        bytes((0x25,)),  # a lone IEI
    ],
    ids=["wrong-length", "empty", "past-the-udh", "lone-iei"],
)
async def test_malformed_language_ies_never_fail_the_reply(store: Store, udh_ies: bytes) -> None:
    await replying_account(store)
    clock = Clock()
    handler = inbound(store, clock)
    await deliver(handler, clock, NOW, pdu(udh_ies, septets("Hello")))
    assert await mo_texts(store) == ["Hello"]
    assert handler.mo_unknown_language == 0


async def test_language_ies_are_ignored_outside_gsm_7_bit(store: Store) -> None:
    await replying_account(store)
    clock = Clock()
    handler = inbound(store, clock)
    ucs2 = "Işık".encode("utf-16-be")
    await deliver(handler, clock, NOW, pdu(ies(TURKISH, SINGLE_TR), ucs2, data_coding=8))
    assert await mo_texts(store) == ["Işık"]
