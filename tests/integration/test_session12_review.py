"""Session 12's adversarial review of 01d143a..HEAD: a message on a bind ended by an opt-out, a
disable, a DNC import, an erasure (fc42ae6); CDR downloads cut mid-stream (3b3e032); the
retention's PurgeFailed (c9bf5fe); unbilled_accounts returning ids for auto_settle (89756c8); the
one-per-process temp directory sweep (8081e32).

Each test says "Found (fixed):" (a defect; its fix is in the commit after the review) or
"Checked right:". Real
stores on both engines (tests/store_engines.py; CI=1 needs PostgreSQL), real daemons on the
built-in simulator, no mocks of the code under test.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.domain.admission import Priced, Rules  # noqa: E402
from bridge.domain.ledger import topup  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.store.models import (  # noqa: E402
    AcceptBatch,
    Account,
    DncInfo,
    LateAccept,
    NewMessage,
    NewSegment,
    ReceiptIn,
    Release,
    Sign,
    SubmitResult,
)
from tests.store_engines import EngineHandle  # noqa: E402

engine = engines.engine
store = engines.store

NOW = 1_700_000_000_000
SEC = 1_000
MIN = 60 * SEC
DAY = 24 * 60 * MIN
LEASE = 5 * MIN
CN = "+8613800138000"
UK = "+447700900123"
PRICE = 100  # per unit


# ---------------------------------------------------------------- builders


def _account(aid: str = "acc_a") -> Account:
    return Account(
        id=aid,
        name=f"name-{aid}",
        kind="prepaid",
        tps=0,
        daily_quota=0,
        status_callback_url=None,
        webhook_secret_enc=b"sealed",
        created_at=NOW,
        updated_at=NOW,
        low_balance_threshold=0,
    )


def _message(
    mid: str,
    recipient: str = CN,
    *,
    aid: str = "acc_a",
    parts: int = 1,
    price_class: str = "D",
    expires_at: int | None = None,
) -> NewMessage:
    m = NewMessage(
        id=mid,
        account_id=aid,
        batch_id="b_" + mid,
        recipient=recipient,
        encoding="gsm7",
        data_coding=0,
        billable_units=parts,
        segments=tuple(
            NewSegment(i, parts, 0x40 if parts > 1 else 0, f"{mid}/{i}".encode(), b"")
            for i in range(1, parts + 1)
        ),
        accepted_at=NOW,
        text=f"text of {mid}",
        client_ref="ref-" + mid,
        sign_name="Acme",
        template=None,
        kind=None,
        price_class=price_class,
    )
    if expires_at is not None:
        from dataclasses import replace

        m = replace(m, expires_at=expires_at)
    return m


async def _funded(s: Store, aid: str = "acc_a", amount: int = 100_000) -> None:
    await s.create_account(_account(aid))
    await s.add_sign(Sign(aid, "Acme", "acme", "company", "", "approved", None, None, NOW))
    await s.append_ledger(aid, topup(amount, NOW, f"funds-{aid}"))


async def _send(s: Store, *msgs: NewMessage) -> None:
    aid = msgs[0].account_id
    charges = tuple(
        Priced(m.id, PRICE * m.billable_units, m.price_class not in (None, "D")) for m in msgs
    )
    rules = Rules(sign_name="Acme", charges=charges, billing=True)
    out = await s.accept(
        AcceptBatch(
            account_id=aid,
            messages=tuple(msgs),
            idempotency_key=None,
            idempotency=None,
            idempotency_expires_at=NOW + DAY,
            rules=rules,
        ),
        NOW,
    )
    assert out.accepted, out


async def _cash(s: Store, aid: str = "acc_a") -> int:
    return {p.pocket: p.amount for p in await s.get_pockets(aid)}.get("cash", 0)


def _sent(mid: str, seq: int) -> SubmitResult:
    ident = f"{mid}-{seq}"
    return SubmitResult(mid, seq, "sent", "smscA", ident, ident, at=NOW)


async def _claim_ids(s: Store, at: int, n: int = 100) -> dict[str, Any]:
    return {w.id: w for w in await s.claim("inst-1", n, at, LEASE)}


# ---------------------------------------------------------------- fc42ae6: the store


async def test_a_dnc_import_while_a_message_is_on_a_bind_stops_its_retry(
    store: Store,
) -> None:
    """Found (fixed): a do-not-contact import while a message is on a bind did not end it: the
    brief (and the commit's own list of "its number opts out, its account is disabled, its sign
    or template is deleted, its number erased") treats a DNC block like an opt-out, and
    service-rules' DNC lists "block sends for all accounts", but import_dnc selects only
    `q_state='queued'` rows before calling end_queued (bridge/store/sqlite_rules.py import_dnc,
    `SELECT id, recipient FROM messages WHERE q_state='queued'`; the same in
    bridge/store/postgres_rules.py import_dnc). A claimed message is not held, so after a
    throttle/time-out its next claim sends the rest of its parts to the blocked number.
    Fix: select `q_state IN ('queued','claimed')` there (end_queued/end_queued_where already
    hold the claimed ones with end_error)."""
    await _funded(store)
    await _send(store, _message("m1", parts=3))
    assert list(await _claim_ids(store, NOW + 1)) == ["m1"]
    await store.import_dnc(DncInfo("L1", "regulator", "CN", 1, 0, NOW + 5), [CN], [])
    assert await store.dnc_blocks(CN) is True
    # Part 1 went out, part 2 was refused transiently: back to the queue.
    await store.record_submits(
        [_sent("m1", 1)], [Release("m1", NOW + 6, count_attempt=True)], NOW + 6
    )
    again = await _claim_ids(store, NOW + 10)
    assert list(again) == ["m1"]
    assert again["m1"].expires_at is not None and again["m1"].expires_at <= NOW + 5, (
        "a message on a bind when its number was DNC-blocked comes back with no validity end: "
        "its remaining parts go to the blocked number"
    )


async def test_an_opt_out_lifted_while_on_the_bind_still_ends_the_message(store: Store) -> None:
    """Checked right (and my reading of it): an opt-out then its lift (operator's DELETE, or
    the customer's for an `api` entry) while the message is on a bind still ends the message
    when it comes back, with RECIPIENT_OPTED_OUT. That matches what a queued message gets: an
    opt-out ends it at once and a later lift does not bring it back; the customer resends.
    The other account's message to the same number is untouched (the opt-out is per account).
    """
    await _funded(store)
    await _funded(store, "acc_b")
    await _send(store, _message("m1", parts=2))
    await _send(store, _message("m2", aid="acc_b", parts=2))
    assert sorted(await _claim_ids(store, NOW + 1)) == ["m1", "m2"]
    await store.add_optouts("acc_a", [CN], "api", NOW + 5)
    assert await store.remove_optout("acc_a", CN, sources=None) == "api"
    await store.record_submits(
        [_sent("m1", 1), _sent("m2", 1)],
        [Release("m1", NOW + 6, count_attempt=True), Release("m2", NOW + 6)],
        NOW + 6,
    )
    again = await _claim_ids(store, NOW + 10)
    assert sorted(again) == ["m1", "m2"]
    assert again["m1"].expires_at == NOW + 5
    assert again["m2"].expires_at is None  # acc_b's: sent as usual
    await store.record_submits(
        [SubmitResult("m1", 2, "expired", "", at=NOW + 10), _sent("m2", 2)], [], NOW + 10
    )
    m1 = await store.get_message("acc_a", "m1")
    assert m1 is not None and (m1.state, m1.error_code, m1.segments_sent) == (
        "sent",
        "RECIPIENT_OPTED_OUT",
        1,
    )


async def test_an_earlier_validity_is_kept_and_a_later_one_cut(store: Store) -> None:
    """Checked right: a message on a bind whose own validity ends before the opt-out keeps it
    (MIN/LEAST, not overwritten by `now`); one whose validity ends later is cut to the opt-out's
    time. Both come back expired at their claim. Doubtful at review, changed since: the first
    ended with RECIPIENT_OPTED_OUT although its own validity had already run out; it ends
    VALIDITY_EXPIRED now (end_error is set only while the validity lasts)."""
    await _funded(store)
    await _send(
        store,
        _message("m1", parts=2, expires_at=NOW + 2),
        _message("m2", parts=2, expires_at=NOW + DAY),
    )
    assert sorted(await _claim_ids(store, NOW + 1)) == ["m1", "m2"]
    await store.add_optouts("acc_a", [CN], "mo", NOW + 5)
    await store.record_submits(
        [_sent("m1", 1), _sent("m2", 1)],
        [Release("m1", NOW + 6), Release("m2", NOW + 6)],
        NOW + 6,
    )
    again = await _claim_ids(store, NOW + 10)
    assert {k: w.expires_at for k, w in again.items()} == {"m1": NOW + 2, "m2": NOW + 5}
    await store.record_submits(
        [SubmitResult(k, 2, "expired", "", at=NOW + 10) for k in again], [], NOW + 10
    )
    ends = {k: await store.get_message("acc_a", k) for k in again}
    assert {k: m.error_code for k, m in ends.items() if m is not None} == {
        "m1": "VALIDITY_EXPIRED",
        "m2": "RECIPIENT_OPTED_OUT",
    }


async def test_a_late_acceptance_inside_the_hold_is_kept_and_the_rest_ends_refunded(
    store: Store,
) -> None:
    """Checked right: an international 3-part message, part 1 accepted, part 2 unanswered
    (released with its 30 s hold); the recipient opts out meanwhile (the message is queued after
    a try: held, not ended). The sweep inside the hold leaves it; part 2's late acceptance is
    recorded; the next claim gets part 3 only, expired, and it ends RECIPIENT_OPTED_OUT with
    2 parts on the air: 1/3 of the charge refunded, once. A late acceptance after the end finds
    nothing (0 recorded)."""
    await _funded(store)
    before = await _cash(store)
    await _send(store, _message("m1", UK, parts=3, price_class="I"))
    assert await _cash(store) == before - 3 * PRICE
    assert list(await _claim_ids(store, NOW + 1)) == ["m1"]
    await store.record_submits(
        [_sent("m1", 1)],
        [Release("m1", NOW + 6 + 30 * SEC, count_attempt=True, unanswered=True)],
        NOW + 6,
    )
    await store.add_optouts("acc_a", [UK], "mo", NOW + 7)
    await store.sweep(NOW + 10 * SEC, receipt_timeout_ms=DAY)
    m1 = await store.get_message("acc_a", "m1")
    assert m1 is not None and m1.error_code is None
    assert [g.state for g in m1.segment_rows] == ["sent", "queued", "queued"]
    late = LateAccept("m1", 2, "smscA", "m1-2", "m1-2")
    assert await store.record_late_submits([late], NOW + 11 * SEC) == 1
    again = await _claim_ids(store, NOW + 40 * SEC)
    assert list(again) == ["m1"] and [s.seq for s in again["m1"].segments] == [3]
    assert again["m1"].expires_at == NOW + 7
    await store.record_submits(
        [SubmitResult("m1", 3, "expired", "", at=NOW + 40 * SEC)], [], NOW + 40 * SEC
    )
    m1 = await store.get_message("acc_a", "m1")
    assert m1 is not None
    assert (m1.error_code, m1.segments_sent) == ("RECIPIENT_OPTED_OUT", 2)
    assert await _cash(store) == before - 3 * PRICE  # not final yet: 2 parts await receipts
    await store.apply_receipts(
        [
            ReceiptIn("smscA", f"m1-{i}", "delivered", None, None, None, NOW + MIN, raw="r")
            for i in (1, 2)
        ],
        NOW + MIN,
    )
    m1 = await store.get_message("acc_a", "m1")
    assert m1 is not None and (m1.state, m1.error_code) == ("expired", "RECIPIENT_OPTED_OUT")
    assert await _cash(store) == before - 2 * PRICE
    assert await store.record_late_submits([late], NOW + 41 * SEC) == 0
    await store.sweep(NOW + 2 * DAY, receipt_timeout_ms=DAY)
    assert await _cash(store) == before - 2 * PRICE  # refunded once
    assert await store.claim("inst-1", 10, NOW + 3 * DAY, LEASE) == []


# The where clause each caller of end_queued passes (bridge/store/sqlite_rules.py, sqlite.py),
# with its arguments: the new `UPDATE ... WHERE {where} AND q_state='claimed'` runs for each.
_CALLERS = {
    "add_optouts": ("account_id=? AND recipient IN (?,?)", ("acc_0", CN, UK)),
    "sign review/delete": ("account_id=? AND sign_name=?", ("acc_0", "Acme")),
    "template review/delete": ("template=?", ("T1",)),
    "import_dnc": ("id IN (?,?)", ("m_0_1", "m_0_2")),
    "erase_recipient": ("account_id=? AND recipient=?", ("acc_0", CN)),
    "disable / close": ("account_id=?", ("acc_0",)),
}


@pytest.mark.parametrize("analyzed", [False, True], ids=["no-stats", "analyzed"])
async def test_the_in_flight_update_of_every_caller_searches_an_index(
    tmp_path: Path, analyzed: bool
) -> None:
    """Checked right: with many claimed messages (3 accounts x 120, 300 claimed), EXPLAIN
    QUERY PLAN of the new in-flight UPDATE for every caller's where clause SEARCHes an index
    (messages_queue (q_state, account_id, ...), the primary key, or the account's), never a
    SCAN of messages, with and without ANALYZE statistics."""
    from bridge.store.sqlite import SqliteStore

    path = tmp_path / "plan.db"
    s = SqliteStore(path)
    await s.open()
    try:
        for a in range(3):
            aid = f"acc_{a}"
            await _funded(s, aid, 10_000_000)
            msgs = [_message(f"m_{a}_{i}", f"+86138001{a}{i:04d}", aid=aid) for i in range(120)]
            await _send(s, *msgs)
        assert len(await s.claim("inst-1", 300, NOW + 1, LEASE)) == 300
    finally:
        await s.close()
    c = sqlite3.connect(path)
    try:
        if analyzed:
            c.execute("ANALYZE")
        for caller, (where, args) in _CALLERS.items():
            sql = (
                "UPDATE messages SET expires_at=MIN(COALESCE(expires_at, ?), ?), "
                f"end_error=COALESCE(end_error, ?) WHERE {where} AND q_state='claimed'"
            )
            plan = [r[3] for r in c.execute("EXPLAIN QUERY PLAN " + sql, (1, 1, "X", *args))]
            assert plan and all("SCAN" not in step for step in plan), (caller, plan)
            assert any(step.startswith("SEARCH messages") for step in plan), (caller, plan)
    finally:
        c.close()


async def test_pg_ends_on_claimed_rows_race_the_dispatcher_without_losing_a_hold(
    engine: EngineHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """Checked right (PostgreSQL): end_queued_where now locks claimed rows FOR UPDATE, the
    rows the dispatcher's record_submits locks (in id order too). Two instances hammer the
    same 60 claimed messages: one records part 1 sent and then a release or a permanent
    failure (a refund) in shuffled batches, the other opts the numbers out in reversed chunks
    and disables the account. Nothing raises (a deadlock, if any, is retried by run_tx; the
    count is logged below), and afterwards every message that came back to the queue comes
    back expired, with a reason: no hold is lost to the race."""
    if engine.name != "postgres":
        pytest.skip("lock order: PostgreSQL only (SQLite has one writer)")
    import logging
    import random

    caplog.set_level(logging.INFO, logger="bridge")
    a, b = engine.new_store(), engine.new_store()
    await a.open()
    await b.open()
    try:
        await _funded(a, "acc_a", 10_000_000)
        numbers = [f"+8613800{i:06d}" for i in range(60)]
        msgs = [_message(f"m{i:03d}", n, parts=2) for i, n in enumerate(numbers)]
        await _send(a, *msgs)
        assert len(await a.claim("inst-1", 100, NOW + 1, LEASE)) == 60
        order = [m.id for m in msgs]
        random.Random(7).shuffle(order)

        async def dispatcher() -> None:
            for k in range(0, 60, 6):
                chunk = order[k : k + 6]
                results = [_sent(mid, 1) for mid in chunk]
                releases = []
                for j, mid in enumerate(chunk):
                    if j % 2:
                        results.append(
                            SubmitResult(mid, 2, "failed", "smscA", error_code="ESME_RX", at=NOW)
                        )
                    else:
                        releases.append(Release(mid, NOW + 6, count_attempt=True))
                await a.record_submits(results, releases, NOW + 6, instance="inst-1")
                await asyncio.sleep(0)

        async def operator() -> None:
            for k in range(60, 0, -7):
                await b.add_optouts("acc_a", numbers[max(0, k - 7) : k], "mo", NOW + 5)
            await b.update_account("acc_a", {"status": "disabled"}, NOW + 5)

        async with asyncio.timeout(40):
            await asyncio.gather(dispatcher(), operator(), dispatcher_twin(a, order))
        back = await a.claim("inst-1", 100, NOW + 10, LEASE)
        assert back, "the released half should come back to the queue"
        assert all(w.expires_at is not None and w.expires_at <= NOW + 5 for w in back), [
            (w.id, w.expires_at) for w in back
        ]
        await a.record_submits(
            [
                SubmitResult(w.id, s.seq, "expired", "", at=NOW + 10)
                for w in back
                for s in w.segments
            ],
            [],
            NOW + 10,
        )
        for w in back:
            m = await a.get_message("acc_a", w.id)
            assert m is not None and m.error_code == "RECIPIENT_OPTED_OUT", (w.id, m)
    finally:
        await a.close()
        await b.close()
    retried = [r for r in caplog.records if "store transaction retried" in r.getMessage()]
    print(f"run_tx retries during the race: {len(retried)}")


async def dispatcher_twin(s: Store, order: list[str]) -> None:
    """A second stream of lock traffic on the same rows: lease renewals, as the app does."""
    for _ in range(10):
        await s.renew_claims("inst-1", list(reversed(order)), NOW + LEASE)
        await asyncio.sleep(0)


# ---------------------------------------------------------------- fc42ae6: end to end


def _daemon_store(engine: EngineHandle) -> dict[str, Any]:
    if engine.name == "postgres":
        return {"engine": "postgres", "dsn": engine.location}
    return {"engine": "sqlite", "path": engine.location}


async def _balance(c: Any) -> int:
    _s, _h, data = await c.request("GET", "/v1/balance")
    return int(data["cash_micro"])


async def test_e2e_an_mo_stop_while_a_message_is_on_the_bind_ends_its_retry(
    engine: EngineHandle, tmp_path: Path
) -> None:
    """Checked right, end to end on each engine: a real daemon and its simulator; an
    international 3-part message (charged 3 x 50 000); part 1 accepted, part 2 held by the
    SMSC; the recipient replies STOP (an MO through the simulator) while part 2 is on the
    wire; part 2 then comes back ESME_RSYSERR (max_transient_retries 0: released with its
    5 s back-off). Its next claim ends parts 2 and 3 unsent with RECIPIENT_OPTED_OUT: the SMSC
    saw 2 submit_sm for it, never more; part 1 is delivered; the message ends `expired` with
    RECIPIENT_OPTED_OUT; 2/3 of the charge comes back (one refund entry); the status webhook
    carries the same code."""
    from bridge.app import Daemon
    from tests.e2e.harness import (
        WebhookReceiver,
        client_for,
        create_account,
        final_status,
        make_config,
        wait_until,
    )

    receiver = WebhookReceiver()
    await receiver.start()
    cfg = make_config(
        tmp_path,
        store=_daemon_store(engine),
        smscs=[{"max_transient_retries": 0, "response_timeout_s": 30}],
    )
    d = Daemon(cfg)
    await d.start()
    sim = d.sim
    real = sim._on_submit
    held: list[tuple[Any, Any]] = []
    to_uk: list[int] = []

    def on_submit(sess: Any, pdu: Any, out: list[bytes], now: float) -> None:
        if pdu.body.destination_addr.endswith(UK.lstrip("+")):
            to_uk.append(pdu.seq)
            if len(to_uk) == 2:  # part 2: the SMSC sits on it
                held.append((sess, pdu))
                return
        real(sess, pdu, out, now)

    sim._on_submit = on_submit
    try:
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        creds = await create_account(d, "stopper", status_callback_url=receiver.url)
        async with client_for(d.http_port, creds) as c:
            start = await _balance(c)
            r = await c.send(UK, text="x" * 400)
            mid = r["messages"][0]["id"]
            assert r["messages"][0]["billable_units"] == 3
            assert await _balance(c) == start - 3 * 50_000
            await wait_until(lambda: len(held) == 1, 15)
            await sim.inject_mo(UK.lstrip("+"), "smpp-bridge", "STOP")

            async def opted_out() -> bool:
                _s, _h, data = await c.request("GET", "/v1/optouts")
                return [o["number"] for o in data["optouts"]] == [UK]

            await wait_until(opted_out, 15, 0.05)
            sess, pdu = held.pop()
            from bridge.smpp import constants as C
            from bridge.smpp.codec import Pdu, encode

            sess.write(encode(Pdu(C.SUBMIT_SM_RESP, C.ESME_RSYSERR, pdu.seq)))
            m = await final_status(c, mid, 30)
            assert (m["status"], m["error_code"]) == ("expired", "RECIPIENT_OPTED_OUT"), m
            assert len(to_uk) == 2, "a part went to the number after its STOP"
            assert await wait_until(lambda: _balance_is(c, start - 50_000), 10, 0.1), (
                "2 of 3 parts never went out: their share is refunded"
            )
            _s, _h, page = await c.request("GET", "/v1/ledger", query={"limit": 100})
            refunds = [e for e in page["entries"] if e["kind"] == "refund"]
            assert [(e["ref"], e["amount_micro"]) for e in refunds] == [(mid, 100_000)], refunds

        def reported() -> list[dict[str, Any]]:
            return [x for x in receiver.reports if x.get("message_id") == mid]

        got = await wait_until(reported, 15, 0.05)
        assert [(x["status"], x["error_code"]) for x in got] == [
            ("expired", "RECIPIENT_OPTED_OUT")
        ], got
        assert len(to_uk) == 2
    finally:
        sim._on_submit = real
        await d.stop()
        await receiver.stop()


async def _balance_is(c: Any, want: int) -> bool:
    return await _balance(c) == want


# ---------------------------------------------------------------- 3b3e032: CDR stream counts


async def _cdr_daemon(tmp_path: Path) -> Any:
    from bridge.app import Daemon
    from tests.e2e.harness import make_config, wait_until

    d = Daemon(make_config(tmp_path))
    await d.start()
    await wait_until(lambda: d.connectors["sim"].is_up, 10)
    return d


async def _cdr_counts(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if (
                smp.name == "smpp_bridge_api_requests_total"
                and smp.labels.get("endpoint") == "GET /v1/cdrs"
            ):
                out[f"{smp.labels['status']}:{smp.labels['code']}"] = smp.value
    return out


async def _cdr_get(d: Any, creds: dict[str, str]) -> tuple[int, bytes | Exception]:
    from tests.e2e.harness import client_for

    month = time.strftime("%Y-%m", time.gmtime())
    signer = client_for(d.http_port, creds)
    try:
        headers = signer.signed_headers("GET", "/v1/cdrs", f"month={month}", b"", {})
    finally:
        await signer.close()
    url = f"http://127.0.0.1:{d.http_port}/v1/cdrs?month={month}"
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as resp:
        try:
            return resp.status, await resp.read()
        except aiohttp.ClientPayloadError as exc:
            return resp.status, exc


async def test_a_whole_cdr_download_counts_ok_once(tmp_path: Path, monkeypatch: Any) -> None:
    """Checked right: a CDR download read to its end (several pages: CDR_PAGE 1, 3 rows) is
    counted once, as 200 OK, and nothing as CLIENT_GONE or STREAM_FAILED."""
    from bridge.api import reports
    from tests.e2e.harness import client_for, create_account, wait_until

    d = await _cdr_daemon(tmp_path)
    try:
        creds = await create_account(d, "cdr-ok")
        async with client_for(d.http_port, creds) as c:
            for i in range(3):
                await c.send(f"+861380013800{i}", text="hi")
        monkeypatch.setattr(reports, "CDR_PAGE", 1)
        status, body = await _cdr_get(d, creds)
        assert status == 200 and isinstance(body, bytes)
        assert len(body.decode().strip().splitlines()) == 4  # header + 3 rows
        counts = await wait_until(lambda: _cdr_counts(d.http_port), 5, 0.05)
        assert counts == {"200:OK": 1.0}, counts
    finally:
        await d.stop()


async def test_a_cdr_store_read_failing_with_a_connection_error_is_not_client_gone(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """Found (fixed): get_cdrs (bridge/api/reports.py) took any ConnectionError for the client
    going away. A store read failing with one (the store's own is_unavailable lists
    ConnectionError: asyncpg connecting to a PostgreSQL that is down raises
    ConnectionRefusedError, a reset link ConnectionResetError) is counted CLIENT_GONE, logged
    "aborted by the client", and the connection is not cut: the handler returns the prepared
    response and aiohttp's finish_response writes the last chunk, so the client receives a
    well-formed, short CSV that looks complete (1 of 3 rows here) - exactly what the
    STREAM_FAILED branch cuts the connection to prevent. Fault injected at the store boundary
    (the second page's read raises ConnectionRefusedError), as test_metrics injects its
    RuntimeError. Fix: wrap only the resp.write calls in the ConnectionError handler (or check
    `request.transport is None or transport.is_closing()`), so a store failure goes to the
    STREAM_FAILED branch."""
    from bridge.api import reports
    from tests.e2e.harness import client_for, create_account, wait_until

    d = await _cdr_daemon(tmp_path)
    try:
        creds = await create_account(d, "cdr-pg-down")
        async with client_for(d.http_port, creds) as c:
            for i in range(3):
                await c.send(f"+861380013800{i}", text="hi")
        monkeypatch.setattr(reports, "CDR_PAGE", 1)
        real = d.store.cdr_page

        async def down(*args: Any) -> Any:
            if args[3] is not None:  # the second page: the database went away
                raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
            return await real(*args)

        monkeypatch.setattr(d.store, "cdr_page", down)
        status, body = await _cdr_get(d, creds)
        counts = await wait_until(lambda: _cdr_counts(d.http_port), 5, 0.05)
        assert status == 200
        # Before the fix: (False, {'200:CLIENT_GONE': 1.0}), a clean CSV of 1 row of 3.
        assert (isinstance(body, Exception), counts) == (True, {"200:STREAM_FAILED": 1.0}), body
    finally:
        await d.stop()


# ---------------------------------------------------------------- c9bf5fe: PurgeFailed mid-chunk


async def test_a_purge_failing_in_its_second_message_chunk_counts_the_first(
    store: Store, monkeypatch: Any
) -> None:
    """Checked right (both engines): the messages step fails on its second chunk (chunks of 2):
    PurgeFailed carries the 2 messages the first chunk deleted (committed), the failed chunk is
    rolled back whole (its messages still there), and the next run purges the rest."""
    from bridge.ids import new_id
    from bridge.store import postgres_retention, sqlite_retention
    from bridge.store.purge import PurgeFailed

    await _funded(store)
    mids = sorted(new_id("msg_", NOW + i) for i in range(5))
    await _send(store, *(_message(m, f"+86138001380{i:02d}") for i, m in enumerate(mids)))
    await store.claim("inst-1", 10, NOW + 1, LEASE)
    await store.record_submits([_sent(m, 1) for m in mids], [], NOW + 2)
    await store.apply_receipts(
        [ReceiptIn("smscA", f"{m}-1", "delivered", None, None, None, NOW + 3, raw="r")
         for m in mids],
        NOW + 3,
    )  # fmt: skip
    for module in (sqlite_retention, postgres_retention):
        monkeypatch.setattr(module, "RETENTION_CHUNK", 2)
    mod = sqlite_retention if "Sqlite" in type(store).__name__ else postgres_retention
    real = mod._purge_messages
    calls: list[str] = []

    def flaky(after: str, *rest: Any) -> Any:
        calls.append(after)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return real(after, *rest)

    monkeypatch.setattr(mod, "_purge_messages", flaky)
    later = NOW + 40 * DAY
    with pytest.raises(PurgeFailed) as failed:
        await store.purge_history(later, later, "2099-01-01")
    assert failed.value.purged == {"messages": 2, "mo": 0, "dead_webhooks": 0, "daily_counts": 0}
    left = [m for m in mids if await store.get_message("acc_a", m) is not None]
    assert left == mids[2:]
    out = await store.purge_history(later, later, "2099-01-01")
    assert out["messages"] == 3
    assert [m for m in mids if await store.get_message("acc_a", m) is not None] == []


# ---------------------------------------------------------------- 89756c8: who auto_settle bills


async def test_auto_settle_bills_the_same_accounts_as_the_per_account_reads(
    store: Store,
) -> None:
    """Checked right (both engines): 60 accounts created around a month's end (one ms before,
    exactly at it, after), some closed, some already billed: unbilled_accounts returns exactly
    the ids the old per-account rule picked (created_at < end and no bill), sorted, and
    auto_settle then writes a bill for those and no other; a second run settles nobody."""
    from dataclasses import replace
    from types import SimpleNamespace

    from bridge import billing
    from bridge.config import BillingConfig
    from bridge.domain.settlement import month_bounds
    from bridge.store.models import BillRow

    tz = "UTC"
    start, end = month_bounds("2026-01", tz)
    created = [end - 1, end, end + 1, start, end - DAY]
    ids = []
    for i in range(60):
        aid = f"acc_{i:03d}"
        await store.create_account(replace(_account(aid), created_at=created[i % 5]))
        ids.append(aid)
    for aid in ids[::7]:
        await store.close_account(aid, end + 2)
    for aid in ids[1::6]:
        await store.save_bill(BillRow(aid, "2026-01", "{}", end + 3), [])
    old = sorted(
        [
            a.id
            for a in await store.list_accounts()
            if a.created_at < end and await store.get_bill(a.id, "2026-01") is None
        ]
    )
    assert old and await store.unbilled_accounts("2026-01", end) == old
    cfg = SimpleNamespace(billing=BillingConfig(), rules=SimpleNamespace(timezone=tz))
    book = billing.Tariffs(store, cfg.billing)
    await book.load(0)
    now = end + 10 * DAY  # past SETTLE_AFTER_MS; only January is due (Feb not ended)
    out = await billing.auto_settle(store, book, cfg, now)
    jan = [r for r in out if r["month"] == "2026-01"]
    assert sorted(r["account"] for r in jan) == old
    assert {r["status"] for r in jan} == {"settled"}, jan
    assert [a for a in ids if await store.get_bill(a, "2026-01") is None] == [
        a for i, a in enumerate(ids) if created[i % 5] >= end and a not in ids[1::6]
    ]
    assert await store.unbilled_accounts("2026-01", end) == []
    assert [r for r in await billing.auto_settle(store, book, cfg, now) if
            r["month"] == "2026-01"] == []  # fmt: skip


# ---------------------------------------------------------------- 8081e32: one sweep a process


def test_sweep_once_in_a_fresh_process_removes_the_dead_keeps_the_live(tmp_path: Path) -> None:
    """Checked right, with real processes: a config copy and a metrics directory left by a
    process that exited are removed by a new process's sweep_once (both prefixes in one
    listing), a metrics directory of a process still alive is kept, and a second sweep_once in
    that process does nothing (the directory made after the first stays)."""
    import subprocess

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    make = "from bridge import tempdirs, metrics, supervisor; import sys\n"
    dead = subprocess.run(
        [sys.executable, "-c", make
         + "print(tempdirs.make(supervisor.CONFIG_COPY_PREFIX));"
           "print(tempdirs.make(metrics.METRICS_DIR_PREFIX))"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    live = subprocess.Popen(
        [sys.executable, "-c", make
         + "print(tempdirs.make(metrics.METRICS_DIR_PREFIX), flush=True); sys.stdin.read()"],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert live.stdout is not None
        alive = live.stdout.readline().strip()
        assert alive and all(Path(p).is_dir() for p in [*dead, alive])
        out = subprocess.run(
            [sys.executable, "-c", make
             + "tempdirs.sweep_once(); p = tempdirs.make(tempdirs.PREFIX + 'x-');"
               "import os; os.close(tempdirs._held.pop()); tempdirs.sweep_once(); print(p)"],
            env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert [Path(p).exists() for p in dead] == [False, False]
        assert Path(alive).is_dir()
        assert Path(out).is_dir(), "the second sweep_once of a process swept again"
    finally:
        assert live.stdin is not None
        live.stdin.close()
        live.wait(10)
        if live.stdout is not None:
            live.stdout.close()


async def test_a_start_in_one_process_sweeps_what_a_killed_workers_daemon_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep ran only where a directory is made (the workers supervisor): a daemon started
    without workers after a workers-mode one was killed with -9 left its configuration copy (the
    YAML's secrets) in $TMPDIR for good. Real processes: the directories of one that exited,
    then `smpp-bridge run` in one process."""
    import subprocess

    import yaml

    from tests.e2e.harness import DaemonProcess, config_dict

    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    dead = subprocess.run(
        [sys.executable, "-c", "from bridge import tempdirs, metrics, supervisor\n"
         "print(tempdirs.make(supervisor.CONFIG_COPY_PREFIX));"
         "print(tempdirs.make(metrics.METRICS_DIR_PREFIX))"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert _present(dead) == [True, True]
    daemon = DaemonProcess(tmp_path, config_dict(tmp_path))
    assert yaml.safe_load(daemon.path.read_text())["server"].get("workers") in (None, 0)
    monkeypatch.setenv("TMPDIR", str(tmpdir))  # the daemon's environment
    try:
        daemon.start()
        await daemon.wait_ready()
        assert _present(dead) == [False, False]
    finally:
        daemon.stop()


def _present(paths: list[str]) -> list[bool]:
    return [Path(p).exists() for p in paths]
