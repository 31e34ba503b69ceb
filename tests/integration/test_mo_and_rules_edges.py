"""Inbound MO handling and the sending rules against real stores (cases found by a review):
repeated deliveries, attribution of replies, national numbers. They drive the real `Inbound`
handler (the function the SMPP connector awaits before answering deliver_sm_resp) and the `Store`
protocol on every engine of tests/store_engines.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.config import SmscConfig, WebhooksConfig  # noqa: E402
from bridge.domain.admission import Rules  # noqa: E402
from bridge.pipeline.inbound import Inbound  # noqa: E402
from bridge.pipeline.webhooks import WebhookSender  # noqa: E402
from bridge.smpp import constants as C  # noqa: E402
from bridge.smpp.codec import ShortMessage  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.store.models import (  # noqa: E402
    AcceptBatch,
    Account,
    DncInfo,
    NewMessage,
)
from tests.messages import one_part  # noqa: E402

engine = engines.engine
store = engines.store

NOW = 1_700_000_000_000
MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
LEASE = 5 * MIN
PHONE = "+8613800138000"


def account(aid: str) -> Account:
    return Account(
        id=aid,
        name=f"name-{aid}",
        mo_callback_url=f"https://{aid}/mo",
        webhook_secret_enc=b"sealed",
        created_at=NOW,
        updated_at=NOW,
    )


def message(
    mid: str,
    aid: str,
    *,
    at: int,
    sender: str | None = None,
    sign: str | None = None,
    recipient: str = PHONE,
    scheduled_at: int | None = None,
    kind: str | None = None,
) -> NewMessage:
    return one_part(
        mid, aid, recipient, at, sender=sender, sign_name=sign, scheduled_at=scheduled_at, kind=kind
    )


async def sent_before(store: Store, *msgs: NewMessage) -> None:
    for m in msgs:
        out = await store.accept(AcceptBatch(m.account_id, (m,), None, None), m.accepted_at)
        assert out.accepted


def mo(
    text: bytes,
    *,
    source: str = "8613800138000",
    destination: str = "10690000",
    udh: bytes = b"",
    data_coding: int = 0,
) -> ShortMessage:
    return ShortMessage(
        source_addr_ton=1,
        source_addr_npi=1,
        source_addr=source,
        dest_addr_ton=0,
        destination_addr=destination,
        esm_class=0x40 if udh else 0,
        data_coding=data_coding,
        short_message=udh + text,
    )


def udh8(ref: int, total: int, seq: int) -> bytes:
    return bytes([5, 0, 3, ref, total, seq])


def inbound(store: Store, at: int = NOW) -> Inbound:
    # smscA sends messages without a sender of their own from 10690000.
    smsc = SmscConfig(name="smscA", host="127.0.0.1", port=2775, system_id="esme",
                      default_source="10690000")  # fmt: skip
    return Inbound(store, {"smscA": smsc}, clock=lambda: at / 1000)


async def mo_jobs(store: Store, now: int = NOW) -> list[str]:
    """The MO ids queued for the customer's callback (one per stored, attributed MO)."""
    jobs = await store.claim_webhooks(now, 100, LEASE)
    return [j.payload for j in jobs if j.kind == "mo"]


# ---------------------------------------------------------------- MO delivered twice


async def test_retransmitted_single_part_mo_is_stored_and_pushed_once(store: Store) -> None:
    """SMPP: when the SMSC does not see our deliver_sm_resp (connection dropped after the commit,
    response timeout), it delivers the same deliver_sm again. The store contract even tests
    "redelivered by the SMSC: stored once" (store_mo is INSERT OR IGNORE on the id), but
    Inbound._mo mints a fresh random id per delivery, so the redelivery is a second inbox row
    and a second MO webhook to the customer."""
    await store.create_account(account("acc_a"))
    await sent_before(store, message("m1", "acc_a", at=NOW - HOUR))
    handler = inbound(store)
    pdu = mo(b"YES")
    assert await handler.on_deliver("smscA", pdu) == C.ESME_ROK
    # The response was lost; the SMSC redelivers the very same PDU a few seconds later.
    assert await inbound(store, NOW + 5_000).on_deliver("smscA", pdu) == C.ESME_ROK
    assert len(await mo_jobs(store, NOW + 10_000)) == 1


async def test_redelivered_parts_of_a_completed_mo_do_not_make_a_second_mo(store: Store) -> None:
    """Both parts arrive, are committed and the MO is stored; the bind drops before the two
    deliver_sm_resp leave, so the SMSC redelivers both parts. The reassembly starts over from
    the dropped parts and completes a second, identical MO."""
    await store.create_account(account("acc_a"))
    await sent_before(store, message("m1", "acc_a", at=NOW - HOUR))
    handler = inbound(store)
    parts = [mo(b"first half ", udh=udh8(9, 2, 1)), mo(b"second half", udh=udh8(9, 2, 2))]
    for p in parts:
        assert await handler.on_deliver("smscA", p) == C.ESME_ROK
    for p in parts:  # redelivery after the lost responses
        assert await handler.on_deliver("smscA", p) == C.ESME_ROK
    assert len(await mo_jobs(store)) == 1


# ---------------------------------------------------------------- attribution


async def test_reply_to_the_default_address_is_not_given_to_an_account_that_used_another(
    store: Store,
) -> None:
    """acc_a sent from the SMSC's default address (sender None -> default_source "10690000");
    later acc_b sent from its own extension "106B". The recipient answers TD to 10690000, i.e. to
    acc_a's message. attribute_mo finds no message whose sender equals "10690000" (acc_a's is
    stored as NULL) and falls back to the latest sender regardless of address: acc_b. The opt-out
    lands on acc_b's list, acc_a keeps sending marketing to a number that opted out, and acc_b
    receives a reply (personal data) meant for acc_a."""
    for aid in ("acc_a", "acc_b"):
        await store.create_account(account(aid))
    await sent_before(
        store,
        message("a1", "acc_a", at=NOW - 2 * HOUR),  # default source address
        message("b1", "acc_b", at=NOW - HOUR, sender="106B"),
    )
    assert await inbound(store).on_deliver("smscA", mo(b"TD", destination="10690000")) == 0
    assert [o.recipient for o in await store.list_optouts("acc_a")] == [PHONE]
    assert await store.list_optouts("acc_b") == []


async def test_reply_to_an_e164_sender_is_attributed_by_that_sender(store: Store) -> None:
    """A numeric sender given in E.164 form ("+447700900001", allowed by the API) is stored with
    its "+" and sent as TON 1 "447700900001" (submit_sm.source_address). The reply's
    destination_addr is "447700900001": attribute_mo compares it verbatim with the stored
    "+447700900001", never matches, and falls back to the latest sender (acc_b)."""
    for aid in ("acc_a", "acc_b"):
        await store.create_account(account(aid))
    await sent_before(
        store,
        message("a1", "acc_a", at=NOW - 2 * HOUR, sender="+447700900001"),
        message("b1", "acc_b", at=NOW - HOUR, sender="+447700900002"),
    )
    pdu = mo(b"STOP", destination="447700900001")
    assert await inbound(store).on_deliver("smscA", pdu) == C.ESME_ROK
    assert [o.recipient for o in await store.list_optouts("acc_a")] == [PHONE]
    assert await store.list_optouts("acc_b") == []


async def test_mo_webhook_names_the_sign_the_reply_answers(store: Store) -> None:
    """service-rules.md: "Inbound replies (MO) are pushed to the customer's MO callback with the
    sign/extension they reply to." The native MO payload carries the extension ("to") but no
    sign name: MoMessage has no sign, and attribution returns only the account."""
    await store.create_account(account("acc_a"))
    await sent_before(store, message("a1", "acc_a", at=NOW - HOUR, sign="Acme", sender="106A"))
    assert await inbound(store).on_deliver("smscA", mo(b"hello", destination="106A")) == 0
    (job,) = await store.claim_webhooks(NOW, 10, LEASE)
    sender = WebhookSender(store, None, WebhooksConfig())  # type: ignore[arg-type]
    payload = await sender.render(job)
    assert payload is not None
    assert "Acme" in payload.values(), payload


# ---------------------------------------------------------------- opt-out after acceptance


async def test_scheduled_message_is_not_sent_after_the_recipient_opted_out(store: Store) -> None:
    """A marketing message accepted today for tomorrow (scheduled_at, up to 30 days ahead); the
    recipient replies TD in between. The opt-out is only checked at acceptance: the claim hands
    the scheduled message to the dispatcher tomorrow and it is sent to a number on the account's
    opt-out list."""
    await store.create_account(account("acc_a"))
    await sent_before(
        store,
        message("m1", "acc_a", at=NOW, scheduled_at=NOW + DAY, kind="marketing", sign="Acme"),
    )
    assert await inbound(store, NOW + HOUR).on_deliver("smscA", mo(b"TD")) == C.ESME_ROK
    assert [o.recipient for o in await store.list_optouts("acc_a")] == [PHONE]
    claimed = await store.claim("inst-1", 100, NOW + DAY, LEASE)
    assert [w.id for w in claimed] == []


# ---------------------------------------------------------------- do-not-contact lists


@pytest.mark.parametrize(
    ("listed", "other"),
    [
        # German mobiles have 10 or 11 national digits (phone.PLANS["DE"]): both are valid.
        ("+491701234567", "+4917012345678"),
        ("+491511234567", "+4915112345670"),
    ],
)
async def test_an_exact_dnc_number_does_not_block_longer_numbers(
    store: Store, listed: str, other: str
) -> None:
    """import_dnc writes exact numbers and prefixes into the same `prefix` column, and the check
    looks up every prefix of the recipient there, so an exact number behaves as a prefix: every
    longer number that starts with it is blocked for every account. The pure DncList.blocks
    keeps the two apart (and says False here)."""
    from bridge.domain.dnc import DncList

    assert DncList(frozenset({listed}), ()).blocks(other) is False
    await store.create_account(account("acc_a"))
    await store.import_dnc(DncInfo("L1", "de", "DE", 1, 0, NOW), [listed], [])
    assert await store.dnc_blocks(listed) is True
    assert await store.dnc_blocks(other) is False
    m = message("m1", "acc_a", at=NOW, recipient=other)
    out = await store.accept(AcceptBatch("acc_a", (m,), None, None, rules=Rules()), NOW)
    assert out.accepted, out.refusal
