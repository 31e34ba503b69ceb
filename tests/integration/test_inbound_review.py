"""Adversarial review of the inbound side (receipts, MO, opt-out, reply attribution, roll-up).

Each test drives the real `Inbound` handler (the function the SMPP connector awaits before it
answers deliver_sm_resp / data_sm_resp) and the real `Store` on every engine of
tests/store_engines.py (a SQLite file; PostgreSQL when available), and failed on the code as
reviewed, for the reason its docstring gives.

Findings:

1. A reply goes to an account that never wrote to the person. Attribution takes the latest
   message *accepted* to the number (`ORDER BY accepted_at DESC`), sent or not. A message
   another account scheduled for tomorrow (or one still queued, or refused at submit) beats the
   message the person actually got and answers: their STOP lands on the wrong account's list
   (and ends that account's scheduled message), while the account that texted them keeps doing
   so. README: "attributed to the account that last wrote to that number".
   -> test_a_reply_is_not_given_to_an_account_whose_message_was_not_sent_yet
   The same ordering by acceptance loses the reply to a message scheduled a month ahead: it is
   outside the 30-day window the day it is sent.
   -> test_a_reply_to_a_message_scheduled_a_month_ahead_is_attributed

2. A message whose receipt beat its submit_sm_resp never gets a `sent_at`. The roll-up sets
   sent_at only on the transition to "sent"; when the receipt is pending, recording the resp
   takes the message from "queued" straight to "delivered", so the API's `sent_at`, the status
   webhook's `submitted_at` and the CDR's `sent_at` are null for a delivered message (15-17% of
   receipts come first on fast SMSCs, lessons-from-peers.md).
   -> test_a_message_whose_receipt_came_before_its_resp_has_a_sent_time

3. An MO source with TON unknown is made "E.164" by prefixing "+" to any 10+ digit string: the
   international form with the "00" access code ("008613800138000") becomes "+008613800138000",
   so the reply matches nobody and its STOP is never honoured; a national number with its trunk
   "0" ("07700900123") becomes "+07700900123", which no E.164 number can be (no country code
   starts with 0) and is pushed as the reply's `from`.
   -> test_a_stop_from_a_00_prefixed_source_opts_the_number_out
   -> test_a_trunk_zero_number_is_never_made_international
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.config import SmscConfig, WebhooksConfig  # noqa: E402
from bridge.metrics import Metrics  # noqa: E402
from bridge.pipeline.dispatcher import msgid_rule  # noqa: E402
from bridge.pipeline.inbound import Inbound, _e164  # noqa: E402
from bridge.pipeline.webhooks import WebhookSender  # noqa: E402
from bridge.smpp import constants as C  # noqa: E402
from bridge.smpp.codec import ShortMessage  # noqa: E402
from bridge.smpp.msgid import normalize_resp_id  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.store.models import (  # noqa: E402
    AcceptBatch,
    Account,
    NewMessage,
    SubmitResult,
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
DEFAULT_SOURCE = "10690000"


def smsc_cfg(**kw: object) -> SmscConfig:
    return SmscConfig(
        name="smscA",
        host="127.0.0.1",
        port=2775,
        system_id="esme",
        default_source=DEFAULT_SOURCE,
        **kw,  # type: ignore[arg-type]
    )


def inbound(store: Store, at: int, cfg: SmscConfig | None = None) -> Inbound:
    return Inbound(store, {"smscA": cfg or smsc_cfg()}, clock=lambda: at / 1000)


def account(aid: str) -> Account:
    return Account(
        id=aid,
        name=f"name-{aid}",
        status_callback_url=f"https://{aid}.example/status",
        mo_callback_url=f"https://{aid}.example/mo",
        webhook_secret_enc=b"sealed",
        created_at=NOW - DAY,
        updated_at=NOW - DAY,
    )


def message(
    mid: str, aid: str, *, at: int, scheduled_at: int | None = None, sign: str = "Acme"
) -> NewMessage:
    # sender None: from smscA's default source
    return one_part(mid, aid, PHONE, at, sender=None, sign_name=sign, scheduled_at=scheduled_at)


async def accept(store: Store, m: NewMessage) -> None:
    out = await store.accept(AcceptBatch(m.account_id, (m,), None, None), m.accepted_at)
    assert out.accepted


async def send(store: Store, m: NewMessage, at: int, resp_id: str) -> None:
    """Accept, claim and record the part accepted by smscA with `resp_id`, as the dispatcher
    does (the id normalised by the SMSC's rule)."""
    await accept(store, m)
    claimed = await store.claim("inst-1", 100, at, LEASE)
    assert [w.id for w in claimed] == [m.id]
    key = normalize_resp_id(resp_id, msgid_rule(smsc_cfg()))
    await store.record_submits(
        [SubmitResult(m.id, 1, "sent", "smscA", key, resp_id, at=at)], [], at
    )


def mo(text: bytes, *, source: str = "8613800138000", ton: int = 1) -> ShortMessage:
    return ShortMessage(
        source_addr_ton=ton,
        source_addr_npi=1,
        source_addr=source,
        dest_addr_ton=0,
        destination_addr=DEFAULT_SOURCE,
        esm_class=0,
        data_coding=0,
        short_message=text,
    )


# ---------------------------------------------------------------- 1. reply attribution


async def test_a_reply_is_not_given_to_an_account_whose_message_was_not_sent_yet(
    store: Store,
) -> None:
    """acc_a texted the person two hours ago (sent, from the shared default source). An hour ago
    acc_b scheduled a message to the same person for tomorrow: nothing of acc_b's has reached
    the phone. The person answers acc_a's message with STOP. Attribution orders by accepted_at
    only, so the reply, its sign name and the opt-out go to acc_b (whose scheduled message is
    ended as RECIPIENT_OPTED_OUT), and acc_a, the one the person asked to stop, may keep
    texting them. Root cause: SqliteStore.attribute_mo / PostgresStore.attribute_mo
    (`ORDER BY accepted_at DESC`, no regard for whether the message was sent)."""
    for aid in ("acc_a", "acc_b"):
        await store.create_account(account(aid))
    await send(store, message("a1", "acc_a", at=NOW - 2 * HOUR, sign="AcmeA"), NOW - 2 * HOUR,
               "A0001")  # fmt: skip
    await accept(store, message("b1", "acc_b", at=NOW - HOUR, scheduled_at=NOW + DAY, sign="BetaB"))

    assert await inbound(store, NOW).on_deliver("smscA", mo(b"STOP")) == C.ESME_ROK

    assert [o.recipient for o in await store.list_optouts("acc_a")] == [PHONE]
    assert await store.list_optouts("acc_b") == []
    b1 = await store.get_message("acc_b", "b1")
    assert b1 is not None and b1.state == "queued"  # still going out tomorrow


async def test_a_reply_to_a_message_scheduled_a_month_ahead_is_attributed(store: Store) -> None:
    """Same root cause, other face: acc_a accepted a message 30 days and 2 hours ago, scheduled
    30 days ahead (the longest a schedule may be), so it went out 2 hours ago. The person
    answers STOP now. attribute_mo looks only at messages *accepted* in the last 30 days, so the
    message they answer is out of its window: the reply is pushed to nobody and the STOP is
    lost, although acc_a wrote to them two hours ago."""
    await store.create_account(account("acc_a"))
    accepted, sent_at = NOW - 30 * DAY - 2 * HOUR, NOW - 2 * HOUR
    await send(store, message("a1", "acc_a", at=accepted, scheduled_at=sent_at), sent_at, "A01")

    assert await inbound(store, NOW).on_deliver("smscA", mo(b"STOP")) == C.ESME_ROK

    assert [o.recipient for o in await store.list_optouts("acc_a")] == [PHONE]


# ---------------------------------------------------------------- 2. sent_at of fast receipts


async def test_a_message_whose_receipt_came_before_its_resp_has_a_sent_time(store: Store) -> None:
    """A fast SMSC (hex ids in submit_sm_resp, decimal in the receipt text, configured so) sends
    the DELIVRD receipt before the submit_sm_resp is recorded: Inbound keeps it pending, and
    record_submits applies it at once. The message goes queued -> delivered in one roll-up;
    lifecycle.row_update sets sent_at only when the new state is "sent", so the delivered
    message has sent_at None: the API shows `"sent_at": null` and the status webhook
    `"submitted_at": null`, although the part's own submitted_at is recorded."""
    cfg = smsc_cfg(resp_id_base="hex", receipt_id_base="dec")
    await store.create_account(account("acc_a"))
    m = message("m1", "acc_a", at=NOW)
    await accept(store, m)
    assert [w.id for w in await store.claim("inst-1", 100, NOW, LEASE)] == ["m1"]

    receipt = ShortMessage(
        source_addr_ton=1,
        source_addr=PHONE.lstrip("+"),
        destination_addr=DEFAULT_SOURCE,
        esm_class=C.ESM_DELIVERY_RECEIPT,
        short_message=b"id:12107289 sub:001 dlvrd:001 submit date:2311142213 "
        b"done date:2311142213 stat:DELIVRD err:000 text:text of m1",
    )
    handler = inbound(store, NOW + 40, cfg)
    assert await handler.on_deliver("smscA", receipt) == C.ESME_ROK
    assert handler.unmatched == 1  # kept for its id

    resp_id = "00B8BE19"  # 0xB8BE19 == 12107289
    key = normalize_resp_id(resp_id, msgid_rule(cfg))
    await store.record_submits(
        [SubmitResult("m1", 1, "sent", "smscA", key, resp_id, at=NOW + 50)], [], NOW + 50
    )

    rec = await store.get_message("acc_a", "m1")
    assert rec is not None
    assert rec.state == "delivered"
    assert rec.segment_rows[0].submitted_at == NOW + 50
    assert rec.sent_at == NOW + 50, "a delivered message was sent"
    (job,) = [j for j in await store.claim_webhooks(NOW + MIN, 10, LEASE) if j.kind == "status"]
    payload = await WebhookSender(store, None, WebhooksConfig()).render(job)  # type: ignore[arg-type]
    assert payload is not None and payload["status"] == "delivered"
    assert payload["submitted_at"] is not None


# ---------------------------------------------------------------- 3. MO source numbers


async def test_a_stop_from_a_00_prefixed_source_opts_the_number_out(store: Store) -> None:
    """The SMSC gives the MO's originator in the international dialled form with TON unknown
    (0): "008613800138000". _e164 prefixes "+" to any 10+ digit string with TON 0, making
    "+008613800138000": attribution finds no message to that "number", the reply is pushed to
    nobody and the STOP is lost, while acc_a keeps texting +8613800138000."""
    await store.create_account(account("acc_a"))
    await send(store, message("a1", "acc_a", at=NOW - HOUR), NOW - HOUR, "A0001")

    pdu = mo(b"STOP", source="008613800138000", ton=0)
    assert await inbound(store, NOW).on_deliver("smscA", pdu) == C.ESME_ROK

    assert [o.recipient for o in await store.list_optouts("acc_a")] == [PHONE]


def test_a_trunk_zero_number_is_never_made_international() -> None:
    """A national number with its trunk prefix and TON unknown ("07700900123", a UK mobile) is
    turned into "+07700900123": no E.164 number starts with 0 (country codes start 1-9), so the
    `from` of the pushed reply is a number that cannot exist. It should stay as received (as a
    TON 2 number does) or, with "00", lose the access code."""
    assert _e164("07700900123", 0) != "+07700900123"
    assert _e164("008613800138000", 0) == "+8613800138000"


async def test_a_stop_from_a_national_number_with_ton_unknown_opts_the_number_out(
    store: Store,
) -> None:
    """A Chinese SMSC gives the originator as written in China, "13800138000", with TON
    unknown (0) as often as with TON 2. Read as international it was +13800138000 (North
    America): the STOP opted no one out while acc_a kept texting +8613800138000. With the
    SMSC's national_prefix "+86", a number that is a Chinese mobile as written is national."""
    await store.create_account(account("acc_a"))
    await send(store, message("a1", "acc_a", at=NOW - HOUR), NOW - HOUR, "A0001")
    cfg = smsc_cfg(national_prefix="+86")
    pdu = mo(b"STOP", source="13800138000", ton=0)
    assert await inbound(store, NOW, cfg).on_deliver("smscA", pdu) == C.ESME_ROK
    assert [o.recipient for o in await store.list_optouts("acc_a")] == [PHONE]


def test_ton_unknown_reads_a_national_mobile_in_the_smsc_country_only() -> None:
    assert _e164("13800138000", 0, "+86") == "+8613800138000"
    assert _e164("13800138000", 0) == "+13800138000"  # no national_prefix: as before
    assert _e164("8613800138000", 0, "+86") == "+8613800138000"  # already international
    assert _e164("447700900123", 0, "+86") == "+447700900123"  # not a Chinese mobile
    assert _e164("2125550123", 0, "+1") == "+12125550123"  # North America's ten digits
    assert _e164("13800138000", 1, "+86") == "+13800138000"  # TON 1 says international
    assert _e164("7700900123", 0, "+44") == "+447700900123"  # a UK mobile without its 0


async def test_an_mo_for_no_account_is_counted_apart(store: Store) -> None:
    """Stored for nobody, pushed to nobody: smpp_bridge_mo_unattributed_total says how many, so
    a source number read wrongly (a STOP opting no one out) shows on a dashboard, not only in
    DEBUG lines."""
    await store.create_account(account("acc_a"))
    await send(store, message("a1", "acc_a", at=NOW - HOUR), NOW - HOUR, "A0001")
    metrics = Metrics()
    handler = Inbound(store, {"smscA": smsc_cfg()}, clock=lambda: NOW / 1000, metrics=metrics)
    assert await handler.on_deliver("smscA", mo(b"hello")) == C.ESME_ROK  # from PHONE: acc_a's
    assert await handler.on_deliver("smscA", mo(b"who?", source="447700900123")) == C.ESME_ROK
    metrics.flush()
    sample = metrics.registry.get_sample_value
    assert sample("smpp_bridge_mo_received_total", {"smsc": "smscA"}) == 2
    assert sample("smpp_bridge_mo_unattributed_total", {"smsc": "smscA"}) == 1
