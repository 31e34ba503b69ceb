"""An MO or a receipt carrying a NUL is stored, not refused for ever.

PostgreSQL's text type refuses U+0000: an MO whose UCS-2 (or Latin-1) text held one, or a receipt
with a NUL inside its text or receipted_message_id, failed to store every time, so the handler
asked for redelivery (ESME_RX_T_APPN) and the SMSC resent it for ever. Driven through the real
`Inbound` handler on every engine of tests/store_engines.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.smpp import constants as C  # noqa: E402
from bridge.smpp.codec import ShortMessage  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from tests.integration.test_incomplete_mo import (  # noqa: E402
    DEST,
    NOW,
    SRC,
    Clock,
    account,
    inbound,
    mo_jobs,
    sent_before,
)

engine = engines.engine
store = engines.store


def _pdu(payload: bytes, data_coding: int, esm_class: int = 0, **kw: object) -> ShortMessage:
    return ShortMessage(
        source_addr_ton=1,
        source_addr_npi=1,
        source_addr=SRC,
        destination_addr=DEST,
        esm_class=esm_class,
        data_coding=data_coding,
        short_message=payload,
        **kw,  # type: ignore[arg-type]
    )


async def test_an_mo_with_a_nul_is_stored_with_a_replacement_character(store: Store) -> None:
    await store.create_account(account("acc_a"))
    await sent_before(store, "acc_a")
    clock = Clock()
    handler = inbound(store, clock)
    clock.ms = NOW
    ucs2 = _pdu("A\x00B 好".encode("utf-16-be"), 8)
    latin1 = _pdu(b"caf\xe9\x00!", 3)
    gsm = _pdu(b"\x00x", 0)  # 0x00 is "@" in the GSM alphabet: kept
    for pdu in (ucs2, latin1, gsm):
        assert await handler.on_deliver("smscA", pdu) == C.ESME_ROK
    texts = []
    for job in await mo_jobs(store, NOW):
        mo = await store.get_mo(job.payload)
        assert mo is not None
        texts.append(mo.text)
    assert sorted(texts) == sorted(["A\ufffdB 好", "café\ufffd!", "@x"])


async def test_a_receipt_with_nuls_inside_is_kept_for_matching(store: Store) -> None:
    clock = Clock()
    handler = inbound(store, clock)
    clock.ms = NOW
    text = b"id:ab\x00cd sub:001 dlvrd:001 submit date:2301011200 done date:2301011200 stat:DELIVRD"
    assert await handler.on_deliver("smscA", _pdu(text + b" err:000\x00", 0, esm_class=4)) == 0
    tlvs = ((C.RECEIPTED_MESSAGE_ID, b"EF\x0012\x00"), (C.MESSAGE_STATE, b"\x02"))
    tlv = _pdu(b"", 0, esm_class=4, tlvs=tlvs)
    assert await handler.on_deliver("smscA", tlv) == C.ESME_ROK
    await handler.drain()
    pending = await store.unmatched_receipts(NOW, 10)
    assert sorted(p["smsc_msg_id"] for p in pending) == ["ABCD", "EF12"]
    assert all("\x00" not in (p["raw"] or "") for p in pending)
