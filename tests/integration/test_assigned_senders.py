"""Assigned senders: an account sends only from the addresses the operator gave it, and a reply to
one of them is that account's, whoever else wrote to the same person from it.

A real HTTP server on each store engine of tests/store_engines.py (accounts set through the admin
API, sends through POST /v1/messages); replies go through the real `Inbound` handler. Every reply
is checked against /openapi.json by the conftest (check_reply).
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.config import SmscConfig  # noqa: E402
from bridge.pipeline.inbound import ASSIGNMENTS_TTL_MS, Inbound  # noqa: E402
from bridge.smpp import constants as C  # noqa: E402
from bridge.smpp.codec import ShortMessage  # noqa: E402
from tests.integration.conftest import ApiServer, Clock, Creds, Reply, start_api  # noqa: E402
from tests.store_engines import EngineHandle  # noqa: E402

engine = engines.engine

CN = "+8613800138000"
DEFAULT_SOURCE = "10690000"  # the SMSC's own source: messages without a sender go out from it


@pytest.fixture
def api(engine_api: ApiServer) -> ApiServer:
    return engine_api  # the conftest's server on each store engine


async def _assign(api: ApiServer, creds: Creds, senders: Any) -> Reply:
    return await api.admin(
        "PATCH", f"/admin/accounts/{creds.account_id}", json={"senders": senders}
    )


async def _send(api: ApiServer, creds: Creds, sender: str | None, to: str = CN) -> Reply:
    body: dict[str, Any] = {"to": to, "text": "hello"}
    if sender is not None:
        body["sender"] = sender
    return await api.send(creds, body)


async def _sent_from(api: ApiServer, creds: Creds) -> list[str | None]:
    rows = await api.store.list_messages(creds.account_id, limit=100)
    return sorted((m.sender or "-") for m in rows)  # type: ignore[misc]


# -- sending ---------------------------------------------------------------------------------------


async def test_an_account_sends_only_from_its_assigned_addresses(api: ApiServer) -> None:
    creds = await api.create_account()
    r = await _assign(api, creds, ["ACME", "106900*"])
    assert r.status == 200 and r.json["senders"] == ["ACME", "106900*"]
    for ok in ("ACME", "acme", "106900", "10690012", None):
        assert (await _send(api, creds, ok)).status == 202, ok
    for bad in ("BANK", "10691", "+4477009001"):
        r = await _send(api, creds, bad)
        assert (r.status, r.code) == (403, "SENDER_NOT_ALLOWED"), (bad, r.json)
        assert bad in r.message
    assert await _sent_from(api, creds) == ["-", "106900", "10690012", "ACME", "acme"]
    # Cleared: not restricted again (the default policy, open).
    r = await _assign(api, creds, [])
    assert r.status == 200 and r.json["senders"] == []
    assert (await _send(api, creds, "BANK")).status == 202


async def test_waiting_messages_end_when_their_sender_or_kind_is_no_longer_allowed(
    api: ApiServer,
) -> None:
    """Session 35's campaign review: a sender, marketing and raw text were checked at acceptance
    only, so a scheduled campaign went out from an address the operator had moved to another
    tenant (whose opt-outs its replies then became), or after marketing or free text was turned
    off. The change now ends them unsent and refunded, on both engines."""
    shop = await api.create_account()
    other = await api.create_account()
    assert (await _assign(api, shop, ["10690077", "10690099"])).status == 200
    later = {"scheduled_at": (api.clock.utc() + timedelta(hours=1)).isoformat()}
    ids = []
    for sender in ("10690077", "10690099", None):
        body = {"to": CN, "text": "sale", "sender": sender, **later}
        r = await api.send(shop, {k: v for k, v in body.items() if v is not None})
        assert r.status == 202, r.json
        ids.append(r.json["messages"][0]["id"])
    moved, kept, free = ids
    # The operator moves 10690077 to the other tenant.
    assert (await _assign(api, shop, ["10690099"])).status == 200
    assert (await _assign(api, other, ["10690077"])).status == 200
    states = {
        mid: (m.state, m.error_code)
        for mid in (moved, kept, free)
        if (m := await api.store.get_message(shop.account_id, mid)) is not None
    }
    assert states == {
        moved: ("expired", "SENDER_NOT_ALLOWED"),
        kept: ("queued", None),
        free: ("queued", None),
    }
    # Free text turned off: the free texts waiting end (a template's would stay).
    r = await api.admin("PATCH", f"/admin/accounts/{shop.account_id}", json={"raw_text": False})
    assert r.status == 200, r.json
    for mid in (kept, free):
        m = await api.store.get_message(shop.account_id, mid)
        assert m is not None and (m.state, m.error_code) == ("expired", "RAW_TEXT_NOT_ALLOWED")


async def test_another_tenants_brand_is_refused(api: ApiServer) -> None:
    bank = await api.create_account()
    other = await api.create_account()
    assert (await _assign(api, bank, ["BANK"])).status == 200
    assert (await _assign(api, other, ["SHOP"])).status == 200
    r = await _send(api, other, "BANK")
    assert (r.status, r.code) == (403, "SENDER_NOT_ALLOWED")
    assert await _sent_from(api, other) == []


async def test_assigned_policy_leaves_unlisted_accounts_the_default_source(
    engine: EngineHandle, tmp_path: Path, clock: Clock
) -> None:
    api = await start_api(
        tmp_path, clock, {"rules": {"sender_policy": "assigned"}}, store=engine.new_store()
    )
    try:
        creds = await api.create_account()
        r = await _send(api, creds, "ANY")
        assert (r.status, r.code) == (403, "SENDER_NOT_ALLOWED")
        assert "no assigned addresses" in r.message
        assert (await _send(api, creds, None)).status == 202
        assert (await _assign(api, creds, ["ANY"])).status == 200
        assert (await _send(api, creds, "ANY")).status == 202
    finally:
        await api.close()


@pytest.mark.parametrize(
    ("senders", "words"),
    [
        ("ACME", "list"),
        (["ACME", 7], "senders[1]"),
        (["THIS-IS-TOO-LONG"], "senders[0]"),
        (["*"], "senders[0]"),
        (["1" * 21], "senders[0]"),
    ],
)
async def test_bad_lists_are_refused_naming_the_entry(
    api: ApiServer, senders: Any, words: str
) -> None:
    creds = await api.create_account()
    assert (await _assign(api, creds, ["KEPT"])).status == 200
    r = await _assign(api, creds, senders)
    assert (r.status, r.code) == (400, "INVALID_FIELD"), r.json
    assert words in r.message
    account = await api.store.get_account(creds.account_id)
    assert account is not None and account.senders == ("KEPT",)


# -- replies ---------------------------------------------------------------------------------------


def _inbound(api: ApiServer) -> Inbound:
    smsc = SmscConfig(name="main", host="127.0.0.1", port=2775, system_id="bridge",
                      default_source=DEFAULT_SOURCE)  # fmt: skip
    return Inbound(api.store, {"main": smsc}, clock=api.clock)


async def _reply(api: ApiServer, inbound: Inbound, to: str, text: bytes = b"yes") -> str | None:
    """The account a reply from CN to `to` was given to (None: nobody's)."""
    pdu = ShortMessage(
        source_addr_ton=1,
        source_addr_npi=1,
        source_addr=CN.lstrip("+"),
        dest_addr_ton=0,
        destination_addr=to,
        esm_class=0,
        data_coding=0,
        short_message=text,
    )
    assert await inbound.on_deliver("main", pdu) == C.ESME_ROK
    jobs = [j for j in await api.store.claim_webhooks(api.ctx.now_ms(), 100, 60_000)]
    mos = [await api.store.get_mo(j.payload) for j in jobs if j.kind == "mo"]
    mine = [m for m in mos if m is not None and m.destination == to]
    assert len(mine) <= 1
    return mine[0].account_id if mine else None


async def test_a_reply_to_an_assigned_address_goes_to_its_holder(api: ApiServer) -> None:
    holder = await api.create_account(mo_callback_url="https://holder/mo")
    other = await api.create_account(mo_callback_url="https://other/mo")
    assert (await _send(api, holder, "10690012")).status == 202
    # Before the operator assigned the range, the other tenant wrote to the same person from
    # the same number (nobody held it); its message is the later one.
    api.clock.advance(1)
    assert (await _send(api, other, "10690012")).status == 202
    assert (await _assign(api, holder, ["106900*"])).status == 200
    r = await _send(api, other, "10690012")  # not any more
    assert (r.status, r.code) == (403, "SENDER_NOT_ALLOWED") and "another account" in r.message
    inbound = _inbound(api)
    assert await _reply(api, inbound, "10690012") == holder.account_id
    # An extension nobody wrote from is still the holder's (no history needed).
    assert await _reply(api, inbound, "106900777", b"other") == holder.account_id


async def test_an_address_nobody_holds_is_attributed_by_history(api: ApiServer) -> None:
    first = await api.create_account(mo_callback_url="https://first/mo")
    second = await api.create_account(mo_callback_url="https://second/mo")
    assert (await _send(api, first, "20000")).status == 202
    api.clock.advance(1)
    assert (await _send(api, second, "20000")).status == 202
    assert await _reply(api, _inbound(api), "20000") == second.account_id


async def test_an_address_given_to_two_accounts_is_decided_by_history_among_them(
    api: ApiServer,
) -> None:
    a = await api.create_account(mo_callback_url="https://a/mo")
    b = await api.create_account(mo_callback_url="https://b/mo")
    outsider = await api.create_account(mo_callback_url="https://o/mo")
    # All three wrote from 30000 while nobody held it; the outsider last.
    for creds in (a, b, outsider):
        api.clock.advance(1)
        assert (await _send(api, creds, "30000")).status == 202
    for creds in (a, b):
        assert (await _assign(api, creds, ["30000"])).status == 200
    assert (await _send(api, outsider, "30000")).status == 403
    assert (await _send(api, a, "30000")).status == 202  # both holders may
    api.clock.advance(1)
    assert (await _send(api, b, "30000")).status == 202
    assert await _reply(api, _inbound(api), "30000") == b.account_id


async def test_a_new_assignment_applies_after_the_cache_time(api: ApiServer) -> None:
    first = await api.create_account(mo_callback_url="https://first/mo")
    later = await api.create_account(mo_callback_url="https://later/mo")
    assert (await _send(api, first, "40000")).status == 202
    inbound = _inbound(api)
    assert await _reply(api, inbound, "40000") == first.account_id
    assert (await _assign(api, later, ["40000"])).status == 200
    api.clock.advance(ASSIGNMENTS_TTL_MS / 1000)
    assert await _reply(api, inbound, "40000", b"again") == later.account_id
