"""Adversarial review of assigned senders (bridge/domain/senders.py and its callers).

Each defect the review found is pinned by a test that failed on the code as first committed and
passes since its fix (an address somebody holds is its holders' alone; only an exact assignment
claims replies to an SMSC's default source; SmsUp dest_code is the extension code; one cached,
single-flight read of the assignments; no blank around an entry, no 00 form). A test accepts
either fix where the review saw two. The others record behaviour checked and found right where
the feature's own tests (test_assigned_senders.py) did not reach.
A real HTTP API on each store engine (tests/store_engines.py), the real `Inbound` handler for
replies, the real `WebhookSender.render` for the pushed shapes, the real CLI as a subprocess.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.config import SmscConfig  # noqa: E402
from bridge.pipeline.inbound import Inbound  # noqa: E402
from bridge.pipeline.webhooks import WebhookSender  # noqa: E402
from bridge.smpp import constants as C  # noqa: E402
from bridge.smpp.codec import ShortMessage  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.store.models import (  # noqa: E402
    AcceptBatch,
    Account,
    NewMessage,
    NewSegment,
    WebhookJob,
)
from tests.integration import test_aliyun_api as aliyun_base  # noqa: E402
from tests.integration.conftest import ApiServer, Clock, Creds, Reply, start_api  # noqa: E402
from tests.store_engines import EngineHandle, schema_before  # noqa: E402

engine = engines.engine

CN = "+8613800138000"
DEFAULT_SOURCE = "10690000"  # the SMSC's own source: messages without a sender go out from it
_SMSC = {"name": "main", "system_id": "bridge", "default_source": DEFAULT_SOURCE}


@pytest.fixture
async def api(engine: EngineHandle, tmp_path: Path, clock: Clock) -> AsyncIterator[ApiServer]:
    # The API's SMSC has the same default source as the Inbound below, so a fix that checks
    # assignments against the configured default sources can see it.
    served = await start_api(tmp_path, clock, {"smscs": [_SMSC]}, store=engine.new_store())
    try:
        yield served
    finally:
        await served.close()


async def _assign(api: ApiServer, creds: Creds, senders: Any) -> Reply:
    return await api.admin(
        "PATCH", f"/admin/accounts/{creds.account_id}", json={"senders": senders}
    )


async def _send(
    api: ApiServer, creds: Creds, sender: str | None, to: str = CN, **extra: Any
) -> Reply:
    body: dict[str, Any] = {"to": to, "text": "hello", **extra}
    if sender is not None:
        body["sender"] = sender
    return await api.send(creds, body)


def _inbound(api: ApiServer, store: Any = None) -> Inbound:
    smsc = SmscConfig(name="main", host="127.0.0.1", port=2775, system_id="bridge",
                      default_source=DEFAULT_SOURCE)  # fmt: skip
    return Inbound(store or api.store, {"main": smsc}, clock=api.clock)


def _mo_pdu(to: str, text: bytes, *, dest_ton: int = 0, udh: bytes = b"") -> ShortMessage:
    return ShortMessage(
        source_addr_ton=1,
        source_addr_npi=1,
        source_addr=CN.lstrip("+"),
        dest_addr_ton=dest_ton,
        destination_addr=to,
        esm_class=0x40 if udh else 0,
        data_coding=0,
        short_message=udh + text,
    )


async def _mo_jobs(api: ApiServer) -> list[WebhookJob]:
    jobs = await api.store.claim_webhooks(api.ctx.now_ms(), 100, 60_000)
    return [j for j in jobs if j.kind == "mo"]


async def _reply(
    api: ApiServer, inbound: Inbound, to: str, text: bytes = b"yes", *, dest_ton: int = 0
) -> str | None:
    """The account a reply from CN to `to` was given to (None: nobody's)."""
    assert await inbound.on_deliver("main", _mo_pdu(to, text, dest_ton=dest_ton)) == C.ESME_ROK
    mos = [await api.store.get_mo(j.payload) for j in await _mo_jobs(api)]
    mine = [m for m in mos if m is not None and m.destination == to]
    if not mine:  # stored for nobody: no webhook job
        return None
    assert len(mine) == 1, mine
    return mine[0].account_id


# == defects ======================================================================================


async def test_an_unlisted_account_cannot_send_from_an_address_assigned_to_another(
    api: ApiServer,
) -> None:
    """Under the default policy (open) an account without a list may send from an address the
    operator assigned to another account: the brand protection the feature is for only works if
    every tenant has a list. Worse, the reply to that message, opt-out included, is the
    holder's, so the intruder's recipient who answers TD/STOP is never opted out of the intruder's
    messages (the holder gets the opt-out instead).

    Root cause: bridge/api/sending.py prepare_send checks only the sending account's own list
    (senders.may_send(account.senders, ...)), never whether another account holds the address.
    """
    holder = await api.create_account(mo_callback_url="https://holder/mo")
    intruder = await api.create_account(mo_callback_url="https://intruder/mo")
    assert (await _assign(api, holder, ["30000", "BANK"])).status == 200
    brand = await _send(api, intruder, "BANK")
    number = await _send(api, intruder, "30000")
    if (brand.status, number.status) == (403, 403):
        assert brand.code == number.code == "SENDER_NOT_ALLOWED"
        return
    # Sent: then at least the recipient's opt-out must stop the intruder.
    assert number.status == 202
    await _reply(api, _inbound(api), "30000", b"TD")
    again = await _send(api, intruder, None)
    assert (again.status, again.code) == (422, "RECIPIENT_OPTED_OUT"), (
        f"{brand.status}/{number.status}: the intruder sent as BANK and from the holder's 30000; "
        f"the TD reply went to the holder and the intruder may still write: {again.status}"
    )


async def test_a_wider_range_may_not_send_from_an_address_held_more_firmly_by_another(
    api: ApiServer,
) -> None:
    """Nested assignments are supported on purpose (a reseller's 106900*, a customer's exact
    10690012: replies to 10690012 are the customer's), but the reseller may still send FROM
    10690012: its recipients' replies and opt-outs then go to the customer (another tenant reads
    them; the reseller never learns of the TD and keeps writing).

    Root cause: bridge/domain/senders.py may_send/claim_rank decide alone on the sender's own
    list; owners() (what Inbound uses) ranks the other account's exact claim above the range.
    """
    wide = await api.create_account(mo_callback_url="https://wide/mo")
    exact = await api.create_account(mo_callback_url="https://exact/mo")
    assert (await _assign(api, wide, ["106900*"])).status == 200
    assert (await _assign(api, exact, ["10690012"])).status == 200
    r = await _send(api, wide, "10690012")
    if r.status == 403:
        assert r.code == "SENDER_NOT_ALLOWED"
        return
    assert r.status == 202
    got = await _reply(api, _inbound(api), "10690012", b"TD")
    again = await _send(api, wide, "1069009")
    assert (again.status, again.code) == (422, "RECIPIENT_OPTED_OUT"), (
        f"the wide range sent from the exact holder's number; the TD reply went to {got} "
        f"(exact holder {exact.account_id}) and the sender may still write: {again.status}"
    )


async def test_a_range_covering_the_default_source_does_not_take_replies_to_shared_sends(
    api: ApiServer,
) -> None:
    """Sending without a sender (from the SMSC's default_source) is always allowed and shared by
    every account, and the Alibaba face does it for every account without exactly one range. An
    extension range that happens to cover the default source (106900* over 10690000) makes every
    reply to it, and every TD, the range holder's: the account that wrote never sees it and its
    recipient is never opted out. The README only warns against assigning the default source
    itself.

    Root cause: bridge/pipeline/inbound.py _attribute passes the range holders as the `accounts`
    filter even when `default` is true (the destination is the SMSC default source), and falls
    back to the single holder.
    """
    holder = await api.create_account(mo_callback_url="https://holder/mo")
    writer = await api.create_account(mo_callback_url="https://writer/mo")
    r = await _assign(api, holder, ["106900*"])
    if r.status == 400:  # a fix may refuse a range over a configured default source
        assert r.code == "INVALID_FIELD"
        return
    assert r.status == 200
    sent = await _send(api, writer, None)  # from the default source
    if sent.status == 403:  # or: nobody else may use a default source someone holds
        assert sent.code == "SENDER_NOT_ALLOWED"
        return
    assert sent.status == 202
    got = await _reply(api, _inbound(api), DEFAULT_SOURCE, b"TD")
    assert got == writer.account_id, f"the reply to the shared default source went to {got}"
    again = await _send(api, writer, None)
    assert (again.status, again.code) == (422, "RECIPIENT_OPTED_OUT")


async def test_smsup_dest_code_is_the_extension_code_not_the_whole_number(
    api: ApiServer,
) -> None:
    """Alibaba's SmsUp `dest_code` is the extension code (扩展码: what SmsUpExtendCode set);
    Alibaba-written receivers match a reply to the send by it. Now that the face sends from the
    account's base plus SmsUpExtendCode, the push still carries the whole number: a sender that
    used code "12" gets dest_code "10690012" and cannot match it.

    Root cause: bridge/compat/aliyun_reports.py sms_up sets "dest_code": mo.destination; the
    webhook renderer (bridge/pipeline/webhooks.py render) does not pass the account's base.
    """
    creds = await api.create_account(mo_callback_url="https://acme/mo", report_format="aliyun")
    assert (await _assign(api, creds, ["106900*"])).status == 200
    assert (await _send(api, creds, "10690012")).status == 202
    assert await _inbound(api).on_deliver("main", _mo_pdu("10690012", b"1")) == C.ESME_ROK
    (job,) = await _mo_jobs(api)
    sender = WebhookSender(api.store, api.ctx.accounts, api.config.webhooks, clock=api.clock)
    item = await sender.render(job)
    assert item is not None and item["content"] == "1"
    assert item["dest_code"] == "12", item


class _CountingStore:
    """The store, counting how often Inbound reads the accounts' assignments."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.account_reads = 0

    async def sender_assignments(self) -> list[tuple[str, tuple[str, ...]]]:
        self.account_reads += 1
        return await self._store.sender_assignments()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def test_the_stale_mo_sweep_does_not_defeat_the_assignment_cache(api: ApiServer) -> None:
    """Inbound reads every account at most every 5 s, keyed on the time it is handed. The sweep
    of incomplete MOs hands it the parts' (past) receive time: each such MO reloads every account
    and moves the cache's time back, so the next live MO reloads them again. A sweep of 200
    groups after a reply storm is 200+ full reads of the accounts table.

    Root cause: bridge/pipeline/inbound.py _holders uses the attribution time `now_ms` (the
    sweep passes `newest`, bridge/pipeline/inbound.py _flush_group) as the cache clock instead
    of the handler's own clock.
    """
    api.clock.freeze()
    counting = _CountingStore(api.store)
    inbound = _inbound(api, counting)
    # Part 1 of 2 of a long reply; part 2 never comes.
    udh = bytes([5, 0, 3, 0x42, 2, 1])
    pdu = _mo_pdu("50000", b"part one ", udh=udh)
    assert await inbound.on_deliver("main", pdu) == C.ESME_ROK
    api.clock.advance(400)
    assert await inbound.on_deliver("main", _mo_pdu("50001", b"live")) == C.ESME_ROK
    assert counting.account_reads == 1
    api.clock.advance(1)
    assert await inbound.flush_stale_mo(api.ctx.now_ms()) == 1
    api.clock.advance(1)
    assert await inbound.on_deliver("main", _mo_pdu("50002", b"live again")) == C.ESME_ROK
    assert counting.account_reads == 1, (
        f"{counting.account_reads} reads of every account within 2 s (the cache is 5 s)"
    )


@pytest.mark.parametrize("entry", [" ACME", "ACME ", "AC ME "])
async def test_an_entry_with_surrounding_spaces_is_refused_or_trimmed(
    api: ApiServer, entry: str
) -> None:
    """ " ACME" is kept as its own id, distinct from "ACME": the operator sees what looks like
    ACME in the account, and the customer's every send as ACME is 403 SENDER_NOT_ALLOWED (only
    " ACME", padded, goes). The CLI trims; the admin API and its schema do not.

    Root cause: bridge/domain/senders.py _ENTRY allows spaces anywhere in an alphanumeric id
    (and bridge/api/openapi.py _SENDER_ENTRY likewise).
    """
    creds = await api.create_account()
    r = await _assign(api, creds, [entry])
    if r.status == 400:
        assert r.code == "INVALID_FIELD" and "senders[0]" in r.message
        return
    assert r.status == 200
    assert r.json["senders"] == [entry.strip()], r.json


async def test_replies_arriving_together_at_cache_expiry_read_the_accounts_once(
    api: ApiServer,
) -> None:
    """A reply storm (a vote: the case the cache is for) arrives as many deliver_sm in flight at
    once. When the 5 s cache runs out, every one of them finds it stale before the first read
    returns, and each reads every account: one full scan of the accounts table per MO in flight.

    Root cause: bridge/pipeline/inbound.py _holders refreshes without a single-flight guard (no
    lock or shared pending read), so concurrent callers all reload.
    """
    api.clock.freeze()
    counting = _CountingStore(api.store)
    inbound = _inbound(api, counting)
    assert await inbound.on_deliver("main", _mo_pdu("50000", b"first")) == C.ESME_ROK
    api.clock.advance(6)  # the cache ran out
    results = await asyncio.gather(
        *(inbound.on_deliver("main", _mo_pdu("50000", f"vote {i}".encode())) for i in range(20))
    )
    assert results == [C.ESME_ROK] * 20
    assert counting.account_reads == 2, (
        f"{counting.account_reads - 1} reads of every account for 20 replies at one expiry"
    )


async def test_an_international_number_assigned_in_00_form_holds_its_replies(
    api: ApiServer,
) -> None:
    """Operators (and Alibaba's own PhoneNumbers) write international numbers as 00 + country
    code. Assigned so, "00447700900123" is taken as a different number from the +44 one: the
    account is refused "+447700900123" (403), and a reply to the number, which the SMSC delivers
    as 447700900123 TON international, is not the holder's: it goes by history, or to nobody.

    Root cause: bridge/domain/senders.py _key compares digits after an optional "+" only; a
    leading "00" is neither refused by parse_entries nor read as "+".
    """
    holder = await api.create_account(mo_callback_url="https://holder/mo")
    other = await api.create_account(mo_callback_url="https://other/mo")
    r = await _assign(api, holder, ["00447700900123"])
    if r.status == 400:  # refusing the 00 form (write it with +) is a fix too
        assert r.code == "INVALID_FIELD" and "senders[0]" in r.message
        return
    assert r.status == 200
    # Another tenant (open policy) wrote to the person from the same number, the usual form.
    assert (await _send(api, other, "447700900123")).status == 202
    got = await _reply(api, _inbound(api), "447700900123", b"hi", dest_ton=1)
    assert got == holder.account_id, f"the reply to the holder's number went to {got}"


# == checked and found right ======================================================================


async def test_senders_round_trip_through_admin_create_show_list_and_a_reopen(
    api: ApiServer, engine: EngineHandle
) -> None:
    r = await api.admin(
        "POST", "/admin/accounts", json={"name": "acme-senders", "senders": ["ACME", "106900*"]}
    )
    assert r.status == 201, r.json
    assert r.json["account"]["senders"] == ["ACME", "106900*"]
    aid = r.json["account"]["id"]
    shown = await api.admin("GET", f"/admin/accounts/{aid}")
    assert shown.json["senders"] == ["ACME", "106900*"]
    listed = await api.admin("GET", "/admin/accounts")
    assert [a["senders"] for a in listed.json["accounts"] if a["id"] == aid] == [
        ["ACME", "106900*"]
    ]
    # The customer sees its own list.
    creds = api.creds_for(
        (await api.store.get_account(aid)) or Account(id=aid, name="x"),
        r.json["app_key"],
        r.json["app_secret"],
    )
    mine = await api.request("GET", "/v1/account", creds=creds)
    assert mine.status == 200 and mine.json["senders"] == ["ACME", "106900*"]
    # Another Store instance on the same database reads the same list.
    other = engine.new_store()
    await other.open()
    try:
        account = await other.get_account(aid)
        assert account is not None and account.senders == ("ACME", "106900*")
    finally:
        await other.close()
    # null is not "clear" (the schema says array): refused, the list kept.
    r = await api.admin("PATCH", f"/admin/accounts/{aid}", json={"senders": None})
    assert (r.status, r.code) == (400, "INVALID_FIELD")
    r = await api.admin("PATCH", f"/admin/accounts/{aid}", json={"senders": []})
    assert r.status == 200 and r.json["senders"] == []
    account = await api.store.get_account(aid)
    assert account is not None and account.senders == ()


async def test_an_account_from_before_the_migration_reads_as_unrestricted(
    engine: EngineHandle, tmp_path: Path, clock: Clock
) -> None:
    """Upgrade: sqlite 0009 / postgres 0008 add the column; old rows are NULL = ()."""
    # One master key for both runs: the app secrets are sealed with it.
    key = base64.b64encode(os.urandom(32)).decode()
    overrides = {"smscs": [_SMSC], "security": {"master_key": key}}
    first = await start_api(tmp_path, clock, overrides, store=engine.new_store())
    try:
        creds = await first.create_account()
        assert (await _send(first, creds, "ANYTHING")).status == 202
    finally:
        await first.close()
    await schema_before(engine, 9, 8)
    api = await start_api(tmp_path, clock, overrides, store=engine.new_store())
    try:
        account = await api.store.get_account(creds.account_id)
        assert account is not None and account.senders == ()
        assert (await _send(api, creds, "ANYTHING")).status == 202
        assert (await _assign(api, creds, ["ACME"])).status == 200
        r = await _send(api, creds, "ANYTHING")
        assert (r.status, r.code) == (403, "SENDER_NOT_ALLOWED")
    finally:
        await api.close()


@pytest.mark.parametrize(
    ("sender", "allowed"),
    [
        ("+10690012", True),  # a number with or without "+"
        ("10690012", True),
        ("Acme", True),  # alphanumeric ids regardless of case
        ("010690012", False),  # a leading zero is another number
        ("0010690012", False),
        ("+0010690012", False),
        ("10690 012", False),  # spaces make it alphanumeric: not the number
        ("ACME ", None),  # a blank at either end: not a sender at all (400)
        ("ACME.", False),
        ("106900123456789012345", None),  # 21 digits: not a sender at all (400)
    ],
)
async def test_number_and_id_forms_at_the_sender_check(
    api: ApiServer, sender: str, allowed: bool | None
) -> None:
    creds = await api.create_account()
    assert (await _assign(api, creds, ["ACME", "106900*"])).status == 200
    r = await _send(api, creds, sender)
    if allowed is None:
        assert (r.status, r.code) == (400, "INVALID_FIELD")
    elif allowed:
        assert r.status == 202, r.json
    else:
        assert (r.status, r.code) == (403, "SENDER_NOT_ALLOWED"), r.json


async def test_scheduled_and_multi_recipient_sends_are_checked_too(api: ApiServer) -> None:
    creds = await api.create_account()
    assert (await _assign(api, creds, ["ACME"])).status == 200
    later = api.clock.utc().replace(microsecond=0) + timedelta(hours=1)
    when = later.isoformat().replace("+00:00", "Z")
    r = await _send(api, creds, "BANK", scheduled_at=when)
    assert (r.status, r.code) == (403, "SENDER_NOT_ALLOWED")
    r = await api.send(creds, {"to": [CN, "+8613900139000"], "text": "hi", "sender": "BANK"})
    assert (r.status, r.code) == (403, "SENDER_NOT_ALLOWED")
    assert await api.store.list_messages(creds.account_id, limit=10) == []
    assert (await _send(api, creds, "ACME", scheduled_at=when)).status == 202


async def test_reply_destination_forms_and_holder_states(api: ApiServer) -> None:
    holder = await api.create_account(mo_callback_url="https://holder/mo")
    assert (await _assign(api, holder, ["+447700900123", "106900*"])).status == 200
    inbound = _inbound(api)
    # "+" or not, TON international or unknown: the same address.
    assert await _reply(api, inbound, "447700900123", b"a", dest_ton=1) == holder.account_id
    assert await _reply(api, inbound, "+447700900123", b"b") == holder.account_id
    assert await _reply(api, inbound, "+10690077", b"c") == holder.account_id
    # A disabled holder keeps its replies.
    r = await api.admin("POST", f"/admin/accounts/{holder.account_id}/disable")
    assert r.status == 200
    api.clock.advance(6)
    assert await _reply(api, inbound, "10690078", b"d") == holder.account_id


async def test_a_closed_holder_gives_its_address_back_to_history(api: ApiServer) -> None:
    holder = await api.create_account(mo_callback_url="https://holder/mo")
    other = await api.create_account(mo_callback_url="https://other/mo")
    assert (await _assign(api, holder, ["60000"])).status == 200
    assert (await _send(api, other, None)).status == 202
    assert (await _assign(api, other, [])).status == 200
    await api.store.close_account(holder.account_id, api.ctx.now_ms())
    # The other account writes from 60000 (open policy, no list): its reply is its own now.
    api.clock.advance(1)
    assert (await _send(api, other, "60000")).status == 202
    assert await _reply(api, _inbound(api), "60000") == other.account_id


def _message(mid: str, account_id: str, at: int, sender: str | None) -> NewMessage:
    return NewMessage(
        id=mid,
        account_id=account_id,
        batch_id="b_" + mid,
        recipient=CN,
        encoding="gsm7",
        data_coding=0,
        billable_units=1,
        segments=(NewSegment(seq=1, total=1, esm_class=0, short_message=b"x", tlvs=b""),),
        accepted_at=at,
        text="x",
        client_ref=None,
        sender=sender,
        scheduled_at=None,
        expires_at=None,
    )


async def test_attribute_mo_filters_by_many_holders_on_both_engines(engine: EngineHandle) -> None:
    store = engine.new_store()
    await store.open()
    now = 1_700_000_000_000
    try:
        ids = [f"acc_h{i:03d}" for i in range(60)]
        for n, aid in enumerate([*ids, "acc_outsider"]):
            await store.create_account(
                Account(id=aid, name=f"n-{aid}", webhook_secret_enc=b"s", created_at=now,
                        updated_at=now, senders=("70000",) if aid != "acc_outsider" else ())
            )  # fmt: skip
            sender = "+70000" if n % 2 else "70000"
            msg = _message(f"m{n}", aid, now - 1000 + n, sender)
            await store.accept(AcceptBatch(aid, (msg,), None, None), now)
        forms = ["70000", "+70000"]
        # The outsider wrote last; among the holders the latest is h059.
        assert await store.attribute_mo(CN, forms, now) == ("acc_outsider", None)
        assert await store.attribute_mo(CN, forms, now, accounts=ids) == ("acc_h059", None)
        assert await store.attribute_mo(CN, forms, now, accounts=ids[:10]) == ("acc_h009", None)
        assert await store.attribute_mo(CN, forms, now, accounts=["acc_nobody"]) is None
        assert await store.attribute_mo(CN, ["70001"], now, accounts=ids) is None
    finally:
        await store.close()


# -- the CLI, as a subprocess on each engine -------------------------------------------------------


def _cli_config(engine: EngineHandle, tmp_path: Path) -> Path:
    store: dict[str, Any] = (
        {"engine": "sqlite", "path": engine.location}
        if engine.name == "sqlite"
        else {"engine": "postgres", "dsn": engine.location}
    )
    path = tmp_path / "bridge.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "store": store,
                "security": {"master_key": base64.b64encode(os.urandom(32)).decode()},
                "smscs": [{"name": "main", "system_id": "bridge"}],
                "logging": {"level": "WARNING"},
            }
        )
    )
    return path


def _cli(cfg: Path, *args: str) -> tuple[int, Any, str]:
    p = subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args, "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=cfg.parent,
        timeout=60,
    )
    try:
        out = json.loads(p.stdout) if p.stdout.strip() else None
    except ValueError:
        out = p.stdout
    return p.returncode, out, p.stderr


async def test_cli_create_update_and_clear_senders(engine: EngineHandle, tmp_path: Path) -> None:
    store = engine.new_store()
    await store.open()  # the schema, before the CLI processes
    await store.close()
    cfg = _cli_config(engine, tmp_path)

    def run(*args: str) -> tuple[int, Any, str]:
        return _cli(cfg, *args)

    rc, out, err = await asyncio.to_thread(
        run, "account", "create", "cli-acme", "--senders", " ACME , 106900*,,+447700900123"
    )
    assert rc == 0, err
    assert out["settings"]["senders"] == ["ACME", "106900*", "+447700900123"]
    rc, out, err = await asyncio.to_thread(run, "account", "update", "cli-acme", "--senders", "X*")
    assert rc == 1 and "senders[0]" in err and "Traceback" not in err
    rc, out, err = await asyncio.to_thread(run, "account", "show", "cli-acme")
    assert rc == 0 and out["senders"] == ["ACME", "106900*", "+447700900123"]
    rc, out, err = await asyncio.to_thread(run, "account", "update", "cli-acme", "--senders", "")
    assert rc == 0 and out["senders"] == []
    store = engine.new_store()
    await store.open()
    try:
        account = await store.get_account_by_name("cli-acme")
        assert account is not None and account.senders == ()
    finally:
        await store.close()


# -- the Alibaba-compatible face (SQLite: its fixture's store) ------------------------------------


face = aliyun_base.face


async def test_sms_up_extend_code_cannot_reach_another_accounts_exact_number(
    face: aliyun_base.Face,
) -> None:
    """The Alibaba face appends the caller's SmsUpExtendCode to its one range: a reseller with
    106900* sends with code "12" from 10690012, a number the operator gave another account
    exactly; replies (and TD) to that message are the other account's.

    Root cause: as the native case (bridge/domain/senders.py may_send decides on the sender's own
    list only); bridge/compat/aliyun_actions.py _extended builds the address unchecked against
    other holders.
    """
    creds = await face.api.create_account(raw_text=False, senders=["106900*"])
    await face.api.create_account(raw_text=False, senders=["10690012"])
    template = await face.template(creds, aliyun_base.NOTIFY_TEXT, "notification")
    params = aliyun_base.rpc_v1_params(
        creds, "SendSms", PhoneNumbers=aliyun_base.CN1, SignName="Acme", TemplateCode=template,
        TemplateParam=json.dumps({"name": "a", "order": "1"}), SmsUpExtendCode="12",
    )  # fmt: skip
    raw = await aliyun_base.raw_post(face, aliyun_base.rpc_v1_query(params, creds.app_secret))
    sent = [m.sender for m in await face.messages(creds)]
    assert raw.json["Code"] != "OK" or sent != ["10690012"], (raw.json, sent)
