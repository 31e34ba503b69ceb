"""Adversarial review of the business rules against /work/shared/spec/service-rules.md.

Each test pins a place where the code does not do what service-rules.md (or the README) says, and
fails on the code as reviewed. They go through the real HTTP API (tests/integration/conftest.py),
the real `Inbound` handler for replies and the store's own claim, as production does.

Findings:
1. POST /v1/preview with an international `to` reports billable units by the domestic 70/67
   character rule, while the send to the same number bills transmitted segments.
2. A sender with a trailing blank ("ACME ") passes for an id another account holds: the send
   check compares it as a different address, and the handset shows the same brand.
3. The low-balance warning never fires when the balance fell under the threshold because a
   voucher expired: the next sends start below it, so no send "crosses" it, and the account runs
   dry (402) without a warning.
4. An opt-out reply ("TD") whose source comes in national form (TON 2, "13800138000") is not
   honoured: later sends to +8613800138000 are accepted.
5. A do-not-contact list loaded after a message was scheduled does not stop it: it is claimed and
   sent to the blocked number (an opt-out does stop it).
6. Smart encoding can take a text of 499 characters (with the sign) to 501: the 500-character
   limit is checked before the mapping, and the longer text is what is stored, sent and billed.

Fixed: all six (4 with a knob: SmscConfig.national_prefix; 3 by writing an expired voucher
off at the first send that meets it, counting its remainder as the balance before).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from bridge.config import SmscConfig
from bridge.pipeline.inbound import Inbound
from bridge.smpp import constants as C
from bridge.smpp.codec import ShortMessage
from tests.integration.conftest import ApiServer, Clock, Creds
from tests.sending import approve_sign

CN = "+8613800138000"
CN2 = "+8613900139000"
UK = "+447700900123"  # priced by the test tariff (tests/sending.py TEST_INTERNATIONAL)
MARCH_10 = 1_773_100_800  # 2026-03-10T00:00:00Z
DEFAULT_SOURCE = "10690000"


async def test_preview_of_an_international_send_reports_the_units_the_send_bills(
    api_server: ApiServer,
) -> None:
    """service-rules.md, Segments: "International tariffs count transmitted segments." and
    "Every message record keeps both ... and the API reports both." README: POST /v1/preview
    answers "the text as sent ..., segments, billable units".

    A 100-character GSM-7 text to +44 goes out in 1 part and the send bills 1 unit, but the
    preview for the same `to` says 2 billable units (ceil(100 / 67), the domestic rule): a
    customer pricing a campaign with the preview is told twice the cost. Root cause:
    bridge/api/v1.py post_preview passes `CountingRule(ctx.config.text.counting_rule)` whatever
    the destination and the tariff in force, where Submitter.build uses the tariff's rule and
    `units = enc.segments` for international numbers.
    """
    creds = await api_server.create_account()
    text = "x" * 100  # GSM-7: 1 transmitted part; 100 tariff characters would be 2 domestic units
    sent = await api_server.send(creds, {"to": UK, "text": text})
    assert sent.status == 202, sent.json
    billed = sent.json["messages"][0]
    assert (billed["segments"], billed["billable_units"]) == (1, 1)
    r = await api_server.request("POST", "/v1/preview", creds=creds, json={"text": text, "to": UK})
    assert r.status == 200, r.json
    assert (r.json["segments"], r.json["billable_units"]) == (1, 1), r.json


async def test_a_sender_with_a_trailing_blank_cannot_pass_for_an_id_another_account_holds(
    api_server: ApiServer,
) -> None:
    """service-rules.md: a sign/identity "may not impersonate another company". README,
    Assigned senders: alphanumeric ids have "no blank at either end"; "an address somebody holds
    is its holders' alone: no other account may send from it, listed or not".

    Account A holds "ACME". Account B (no list, default open policy) sends with sender "ACME "
    and is accepted (202): `_key("ACME ")` is "acme " so nobody holds it, and it goes out as
    TON 5 "ACME ", which a handset shows as ACME. Root cause: bridge/api/submit.py `_SENDER`
    allows blanks at either end of an alphanumeric sender, and bridge/domain/senders.py `_key`
    compares them verbatim. Either refusing such a sender (400) or refusing it as held (403) fixes
    it.
    """
    holder = await api_server.create_account()
    r = await api_server.admin(
        "PATCH", f"/admin/accounts/{holder.account_id}", json={"senders": ["ACME"]}
    )
    assert r.status == 200, r.json
    other = await api_server.create_account()
    r = await api_server.send(other, {"to": CN, "text": "hello", "sender": "ACME "})
    assert r.status in (400, 403), r.json


async def _low_balance_events(api: ApiServer, creds: Creds) -> list[dict[str, Any]]:
    jobs = await api.store.claim_webhooks(api.ctx.now_ms(), 1000, 300_000)
    return [
        json.loads(j.payload)
        for j in jobs
        if j.kind == "event" and j.account_id == creds.account_id
    ]


async def test_low_balance_warning_fires_when_an_expired_voucher_took_the_balance_under(
    api_server: ApiServer, clock: Clock
) -> None:
    """service-rules.md, Prices and billing: "A low-balance warning fires (webhook and log) when
    the balance crosses an account's threshold." and "an expired voucher's remainder is void".

    Threshold 0.10 CNY; cash 0.05 and a voucher of 1.00 valid one hour: 1.05 available. The
    voucher expires: 0.05 available, under the threshold. The next send takes it to 0.005 and the
    one after is refused for insufficient balance, and no warning was ever queued. Root cause:
    bridge/domain/admission.py `decide` (the `crossed_low_balance(before, after, ...)` call)
    only looks at the step one batch makes; `before` already counts the voucher as void, so a
    fall caused by an expiry is never seen (bridge/domain/ledger.py `crossed_low_balance`).
    """
    clock.freeze(MARCH_10)
    api = api_server
    creds = await api.create_account(
        ready=False, low_balance_threshold=100_000, status_callback_url="https://example.com/hook"
    )
    acc = creds.account_id
    r = await api.admin("POST", f"/admin/accounts/{acc}/topups", json={"amount_micro": 50_000})
    assert r.status == 201, r.json
    r = await api.admin(
        "POST", f"/admin/accounts/{acc}/vouchers",
        json={"amount_micro": 1_000_000, "expires_at": api.ctx.now_ms() + 3_600_000},
    )  # fmt: skip
    assert r.status == 201, r.json
    await approve_sign(api.store, acc, "Acme", api.ctx.now_ms())
    clock.advance(7200)  # the voucher is void: 0.05 CNY available, under the 0.10 threshold
    r = await api.send(creds, {"to": CN, "text": "hi", "sign_name": "Acme"})
    assert r.status == 202, r.json  # 0.005 left
    r = await api.send(creds, {"to": CN2, "text": "hi", "sign_name": "Acme"})
    assert (r.status, r.code) == (402, "INSUFFICIENT_BALANCE")
    events = await _low_balance_events(api, creds)
    assert [e["event"] for e in events] == ["balance.low"], events


async def test_a_td_reply_from_a_national_source_address_blocks_later_sends(make_api: Any) -> None:
    """service-rules.md: "an inbound reply with an opt-out keyword (TD, T, STOP, UNSUBSCRIBE,
    configurable) puts that number on the account's opt-out list, and later sends to it are
    refused with a specific error."

    The account texts +8613800138000; the SMSC delivers the reply "TD" with source_addr
    "13800138000", TON 2 (national), as domestic SMSCs do. The next send to +8613800138000 is
    accepted. Root cause: bridge/pipeline/inbound.py `_e164` keeps a national number "as
    received" (the earlier fix of "+13800138000"), so `attribute_mo` finds no message to
    "13800138000" and the opt-out is dropped (with a holder of the address it would be stored
    under "13800138000", which matches no send either). A national number has to be read in a
    country (the SMSC's or the route's, a config knob) before it is matched or listed.
    """
    smsc_cfg = {"name": "main", "system_id": "bridge", "default_source": DEFAULT_SOURCE}
    api = await make_api({"smscs": [smsc_cfg]})
    creds = await api.create_account()
    r = await api.send(creds, {"to": CN, "text": "hello", "sign_name": "Acme"})
    assert r.status == 202, r.json
    # Fixed with a knob: the SMSC's country for national sources (SmscConfig.national_prefix).
    smsc = SmscConfig(name="main", host="127.0.0.1", port=2775, system_id="bridge",
                      default_source=DEFAULT_SOURCE, national_prefix="+86")  # fmt: skip
    inbound = Inbound(api.store, {"main": smsc}, clock=api.clock)
    reply = ShortMessage(
        source_addr_ton=2,  # national
        source_addr_npi=1,
        source_addr="13800138000",
        dest_addr_ton=0,
        destination_addr=DEFAULT_SOURCE,
        esm_class=0,
        data_coding=0,
        short_message=b"TD",
    )
    assert await inbound.on_deliver("main", reply) == C.ESME_ROK
    r = await api.send(creds, {"to": CN, "text": "hello again", "sign_name": "Acme"})
    assert (r.status, r.code) == (422, "RECIPIENT_OPTED_OUT"), r.json


async def test_a_scheduled_message_is_not_sent_to_a_number_a_dnc_list_blocked_since(
    api_server: ApiServer, clock: Clock
) -> None:
    """service-rules.md: "Operators also load do-not-contact lists (per country, e.g. a national
    do-not-call register) that block sends for all accounts."

    A message accepted today for tomorrow (scheduled_at); the operator then loads a list with
    that number. Tomorrow the claim hands it to the dispatcher and it is sent to a blocked
    number. An opt-out in the same position ends the message (sqlite_rules.add_optouts calls
    `_end_queued`, RECIPIENT_OPTED_OUT); `import_dnc` (bridge/store/sqlite_rules.py, and the
    PostgreSQL twin) ends nothing, and the dispatcher's claim does not look at the lists. Fix:
    end the queued/scheduled messages the new entries block when a list is imported (error
    RECIPIENT_BLOCKED, refunded), or check the lists at claim time.
    """
    clock.freeze(MARCH_10)
    api = api_server
    creds = await api.create_account()
    later = (clock.utc() + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    r = await api.send(creds, {"to": CN2, "text": "sale tomorrow", "scheduled_at": later})
    assert r.status == 202, r.json
    r = await api.admin(
        "PUT", "/admin/dnc/national", query="country=CN", body=f"number\n{CN2}\n".encode(),
        content_type="text/csv",
    )  # fmt: skip
    assert r.status == 200, r.json
    tomorrow = api.ctx.now_ms() + 86_400_000 + 1000
    claimed = await api.store.claim("inst-1", 100, tomorrow, 300_000)
    assert [w.recipient for w in claimed] == [], claimed


async def test_smart_encoding_cannot_take_the_text_past_500_characters(make_api: Any) -> None:
    """service-rules.md, Segments: "The text is at most 500 characters including the sign name."

    With `[{sign}]` (the Latin-script format) and smart encoding, "[Acme]" + 492 "a" + "…" is
    499 characters and passes the check; the mapping turns "…" into "..." and the message
    stored, sent and billed is 501 characters. Root cause: bridge/api/submit.py
    `Submitter.final_text` checks `tariff_chars(text)` before `encode_message` maps it, and
    `build` keeps `enc.text` (bridge/text/split.py `encode_message` accepts the mapping when it
    needs no more parts or units, whatever the length). Either refuse (MESSAGE_TOO_LONG) or keep
    the unmapped text when the mapped one is over the limit.
    """
    api = await make_api({"text": {"sign_format": "[{sign}]"}})
    creds = await api.create_account()
    text = "a" * 492 + "\u2026"
    body = {"to": CN, "text": text, "sign_name": "Acme", "smart_encoding": True}
    r = await api.send(creds, body)
    if r.status != 202:
        assert (r.status, r.code) == (400, "MESSAGE_TOO_LONG"), r.json
        return
    mid = r.json["messages"][0]["id"]
    got = await api.request("GET", f"/v1/messages/{mid}", creds=creds)
    assert len(got.json["text"]) <= 500, (len(got.json["text"]), got.json["billable_units"])
