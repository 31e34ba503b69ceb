"""Replies in SMPP 3.4's other character sets (5.2.19) reach the store and the customer's MO
webhook as written: through the real `Inbound` handler on every engine of tests/store_engines.py
(single and long replies, octets no encoding of the coding reads: hex, counted, logged without
the text), and end to end from the built-in simulator over a real SMPP bind (Cyrillic, Korean)."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.app import Daemon  # noqa: E402
from bridge.metrics import Metrics  # noqa: E402
from bridge.smpp.codec import ShortMessage  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from tests.e2e.harness import (  # noqa: E402
    client_for,
    create_account,
    final_status,
    make_config,
    wait_until,
)
from tests.integration.test_incomplete_mo import (  # noqa: E402
    DEST,
    NOW,
    SEC,
    SRC,
    Clock,
    account,
    deliver,
    inbound,
    part_pdu,
    sent_before,
)

engine = engines.engine
store = engines.store

CYRILLIC = "Да, подтверждаю. Спасибо!"
KOREAN = "네, 확인했습니다. 감사합니다!"
JAPANESE = "はい、確認しました。ありがとうございます。明日の会議は十時からです。"


def single(payload: bytes, data_coding: int) -> ShortMessage:
    return ShortMessage(
        source_addr_ton=1,
        source_addr_npi=1,
        source_addr=SRC,
        destination_addr=DEST,
        data_coding=data_coding,
        short_message=payload,
    )


async def stored_mos(store: Store) -> list[tuple[str, bool]]:
    """(text, text_hex) of each MO stored for acc_a, sorted."""
    out = []
    for job in await store.claim_webhooks(NOW + 3_600 * SEC, 100, 300 * SEC):
        if job.kind == "mo":
            mo = await store.get_mo(job.payload)
            assert mo is not None and mo.account_id == "acc_a"
            out.append((mo.text, mo.text_hex))
    return sorted(out)


async def test_replies_in_each_character_set_are_stored_as_written(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await store.create_account(account("acc_a"))
    await sent_before(store, "acc_a")
    clock = Clock()
    metrics = Metrics()
    handler = inbound(store, clock, metrics)
    # A long Shift_JIS reply cut inside a double-byte character: joined before decoding.
    sjis = JAPANESE.encode("shift_jis")
    assert len(sjis) == 2 * len(JAPANESE)  # every character two octets: an odd cut splits one
    cut = len(sjis) // 2 | 1
    undecodable = b"\xe0\xe9\xff"  # 0xFF is no letter of ISO-8859-8
    with caplog.at_level(logging.WARNING, logger="bridge.inbound"):
        await deliver(handler, clock, NOW, single(CYRILLIC.encode("iso8859_5"), 6))
        await deliver(handler, clock, NOW + SEC, single(KOREAN.encode("euc_kr"), 0x0E))
        await deliver(handler, clock, NOW + 2 * SEC, part_pdu(sjis[:cut], 1, 2, data_coding=5))
        await deliver(handler, clock, NOW + 3 * SEC, part_pdu(sjis[cut:], 2, 2, data_coding=5))
        await deliver(handler, clock, NOW + 4 * SEC, single(undecodable, 7))
        await deliver(handler, clock, NOW + 5 * SEC, single(b"48656c6c6f", 3))  # text: digits
        await deliver(handler, clock, NOW + 6 * SEC, single(b"\x01\x02", 4))  # binary data
    assert await stored_mos(store) == sorted(
        [
            (CYRILLIC, False),
            (KOREAN, False),
            (JAPANESE, False),
            (undecodable.hex(), True),  # told apart from the same digits sent as text
            ("48656c6c6f", False),
            ("0102", True),
        ]
    )
    assert handler.mo == 6 and handler.mo_undecodable == 1 and handler.mo_unknown_language == 0
    metrics.flush()
    assert (
        metrics.registry.get_sample_value("smpp_bridge_mo_undecodable_total", {"smsc": "smscA"})
        == 1
    )
    warned = [r for r in caplog.records if "not text in their data_coding" in r.getMessage()]
    assert len(warned) == 1
    assert vars(warned[0])["smsc"] == "smscA" and vars(warned[0])["data_coding"] == 7
    assert undecodable.hex() not in caplog.text  # no bodies in logs


# --- end to end: the simulator sends the MO over a real bind --------------------------------------
@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon(make_config(tmp_path))
    await d.start()
    try:
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        yield d
    finally:
        await d.stop()


async def test_a_cyrillic_reply_from_the_simulator_reaches_the_mo_webhook(daemon, receiver) -> None:
    d = daemon
    number = "79161234567"
    creds = await create_account(d, mo_callback_url=receiver.url)
    receiver.secret = creds["webhook_secret"]
    async with client_for(d.http_port, creds) as c:
        r = await c.send("+" + number, text="Подтвердите, пожалуйста")
        await final_status(c, r["messages"][0]["id"])
    assert d.sim is not None

    def mo(payload: bytes, data_coding: int, udh: bytes = b"") -> ShortMessage:
        return ShortMessage(
            source_addr_ton=1, source_addr_npi=1, source_addr=number,
            destination_addr="smpp-bridge", esm_class=0x40 if udh else 0,
            data_coding=data_coding, short_message=udh + payload,
        )  # fmt: skip

    long_text = CYRILLIC + " " + CYRILLIC
    octets = long_text.encode("iso8859_5")
    half = len(octets) // 2
    sent = await d.sim.inject_deliver_sm(
        [
            mo(CYRILLIC.encode("iso8859_5"), 6),  # ISO-8859-5
            mo(KOREAN.encode("euc_kr"), 0x0E),  # KS C 5601
            mo(octets[:half], 6, b"\x05\x00\x03\x4b\x02\x01"),  # a long one, 8-bit UDH
            mo(octets[half:], 6, b"\x05\x00\x03\x4b\x02\x02"),
            mo(b"\xca\xfe", 4),  # 8-bit data: its hex, and said so
        ]
    )
    assert sent == 5
    await wait_until(lambda: len(receiver.reports) >= 4, 15)
    assert receiver.bad_signatures == 0
    assert sorted((r["text"], r["text_hex"]) for r in receiver.reports) == sorted(
        [(CYRILLIC, False), (KOREAN, False), (long_text, False), ("cafe", True)]
    )
    for r in receiver.reports:
        assert r["type"] == "message.inbound" and r["from"] == "+" + number
