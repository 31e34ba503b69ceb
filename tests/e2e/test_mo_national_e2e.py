"""End to end: a Turkish handset's replies, written with the national language shift tables
(UDH IE 0x25 locking, 0x24 single shift), arrive over a real SMPP bind from the simulator to the
daemon, and the customer's MO webhook gets the text the handset showed, not default-alphabet
lookalikes. The deliver_sm are built here, octet by octet, as a handset's SMSC sends them."""

from __future__ import annotations

from bridge.smpp.codec import ShortMessage
from bridge.text.gsm import gsm_decode
from bridge.text.national import LOCKING_TABLES, SINGLE_SHIFT_TABLES
from tests.e2e.harness import client_for, create_account, final_status, wait_until

NUMBER = "905321234567"
LOCKED = "Işık ağacı çiçek açtı; Şükrü'ye söyle"
SHIFTED = "Iğdır'da güneş"


def septets(text: str, locking: int, single: int) -> bytes:
    base, shift = LOCKING_TABLES[locking], SINGLE_SHIFT_TABLES[single]
    out = bytearray()
    for ch in text:
        code = base.find(ch)
        out += bytes((code,)) if code >= 0 else bytes((0x1B, shift.index(ch)))
    return bytes(out)


def deliver_sm(udh: bytes, user_data: bytes) -> ShortMessage:
    return ShortMessage(
        source_addr_ton=1, source_addr_npi=1, source_addr=NUMBER, destination_addr="smpp-bridge",
        esm_class=0x40, data_coding=0, short_message=bytes((len(udh),)) + udh + user_data,
    )  # fmt: skip


async def test_turkish_replies_reach_the_mo_webhook_as_written(start_daemon, receiver):
    d = await start_daemon()
    creds = await create_account(d, mo_callback_url=receiver.url)
    receiver.secret = creds["webhook_secret"]
    async with client_for(d.http_port, creds) as c:
        r = await c.send("+" + NUMBER, text="Reply to confirm")
        await final_status(c, r["messages"][0]["id"])
    locked = septets(LOCKED, 1, 0)
    assert gsm_decode(locked) != LOCKED  # what the webhook carried before
    long_1, long_2 = septets("Uzun cevap: ", 1, 1), septets(SHIFTED, 0, 1)
    sent = await d.sim.inject_deliver_sm(
        [
            deliver_sm(b"\x25\x01\x01", locked),  # locking shift: Turkish
            deliver_sm(b"\x24\x01\x01", septets(SHIFTED, 0, 1)),  # single shift: Turkish
            # A long reply whose parts name their own tables.
            deliver_sm(b"\x00\x03\x21\x02\x01\x25\x01\x01\x24\x01\x01", long_1),
            deliver_sm(b"\x00\x03\x21\x02\x02\x24\x01\x01", long_2),
        ]
    )
    assert sent == 4
    await wait_until(lambda: len(receiver.reports) >= 3, 15)
    assert receiver.bad_signatures == 0
    assert sorted(r["text"] for r in receiver.reports) == sorted(
        [LOCKED, SHIFTED, "Uzun cevap: " + SHIFTED]
    )
    for r in receiver.reports:
        assert r["type"] == "message.inbound" and r["from"] == "+" + NUMBER
    assert d.sim.counters["mo_sent"] == 4
