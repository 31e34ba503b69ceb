"""A change of assigned senders ends the waiting messages it refuses in chunks, each a write
transaction of its own, and the claim checks what it takes while that walk is unfinished
(bridge/store/sqlite_senders.py), on a real SQLite file behind the real HTTP API.

Before, `PATCH /admin/accounts/{ref}` with `senders` read every waiting message in the change's
one transaction: the scan alone held the store's write lock ~1.8 s per million waiting, and
every accept and receipt of every account waited. WALK_CHUNK is made 3 here so a few dozen
messages take several chunks.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from bridge.store import sqlite_senders as walk
from bridge.store.base import RESUME_AFTER_MS
from bridge.store.models import AcceptBatch, NewMessage, NewSegment
from bridge.store.sqlite import SqliteStore
from tests.integration.conftest import ApiServer, Creds

CN = "+8613800138000"
ERROR = "SENDER_NOT_ALLOWED"
MOVED, KEPT = "10690077", "10690099"
# Per account, the senders of its messages in the order sent: 1 + 6 + 6 + 6 + 3 = 22 waiting,
# seven chunks of 3 and the rest; the shop's 6 from MOVED are refused by the change.
SHOP_SENDS = [MOVED, KEPT, None] * 6
OTHER_SENDS = [None, "BANK", None]
FIRST_SENDS = [None]


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(walk, "WALK_CHUNK", 3)


def _rows(api: ApiServer, sql: str) -> list[tuple[Any, ...]]:
    c = sqlite3.connect(api.config.store.path)
    try:
        return c.execute(sql).fetchall()
    finally:
        c.close()


async def _assign(api: ApiServer, creds: Creds, senders: list[str]) -> None:
    r = await api.admin("PATCH", f"/admin/accounts/{creds.account_id}", json={"senders": senders})
    assert r.status == 200, r.json


async def _send_all(
    api: ApiServer, creds: Creds, senders: list[str | None], **extra: Any
) -> list[str]:
    ids = []
    for sender in senders:
        body: dict[str, Any] = {"to": CN, "text": "sale", **extra}
        if sender is not None:
            body["sender"] = sender
        r = await api.send(creds, body)
        assert r.status == 202, r.json
        ids.append(r.json["messages"][0]["id"])
    return ids


async def _accounts(api: ApiServer) -> dict[str, Creds]:
    """Three accounts, the shop holding MOVED and KEPT; the walk meets them in the queue index's
    order (by account id), the shop's messages beside the others'."""
    accounts = {name: await api.create_account(name) for name in ("first", "shop", "other")}
    await _assign(api, accounts["shop"], [MOVED, KEPT])
    return accounts


async def _sends(api: ApiServer, accounts: dict[str, Creds]) -> dict[str, list[str]]:
    return {
        "first": await _send_all(api, accounts["first"], FIRST_SENDS),
        "shop": await _send_all(api, accounts["shop"], SHOP_SENDS),
        "other": await _send_all(api, accounts["other"], OTHER_SENDS),
    }


async def _scene(api: ApiServer) -> tuple[dict[str, Creds], dict[str, list[str]]]:
    accounts = await _accounts(api)
    return accounts, await _sends(api, accounts)


def _refused(sent: dict[str, list[str]]) -> list[str]:
    return [mid for mid, s in zip(sent["shop"], SHOP_SENDS, strict=True) if s == MOVED]


def _view(m: dict[str, Any]) -> Any:
    """A message as the API reports it, but its ids and times (which differ between servers)."""
    if isinstance(m, dict):
        return {k: _view(v) for k, v in m.items() if not k.endswith(("_at", "id"))}
    if isinstance(m, list):
        return [_view(v) for v in m]
    return m


async def _outcome(
    api: ApiServer, accounts: dict[str, Creds], sent: dict[str, list[str]]
) -> dict[str, Any]:
    """What the change left, comparable across two servers: each message's state and error as
    the API reports it, in the order sent; each balance; the ledger's refunds; the status
    reports queued."""
    out: dict[str, Any] = {}
    for name, creds in accounts.items():
        msgs = []
        for mid in sent[name]:
            r = await api.request("GET", f"/v1/messages/{mid}", creds=creds)
            assert r.status == 200, r.json
            msgs.append(_view(r.json))
        r = await api.request("GET", "/v1/balance", creds=creds)
        assert r.status == 200, r.json
        balance = {k: v for k, v in r.json.items() if k.endswith("_micro")}
        r = await api.request("GET", "/v1/ledger", creds=creds, query="limit=1000")
        ledger = sorted((e["kind"], e["amount_micro"]) for e in r.json["entries"])
        reports = _rows(
            api,
            "SELECT COUNT(*) FROM webhook_outbox WHERE kind='status' "
            f"AND account_id='{creds.account_id}'",
        )
        out[name] = (msgs, balance, ledger, reports)
    return out


async def _change_counting_chunks(api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The scene, the change made through the API while another account's accept arrives after
    its first chunk: what it left, the chunk steps after its transaction, and how many steps
    had run when the accept committed."""
    accounts = await _accounts(api)
    for creds in accounts.values():  # a status callback: reports are queued
        await api.store.update_account(
            creds.account_id, {"status_callback_url": "https://acme.example/status"}, 1
        )
    sent = await _sends(api, accounts)
    steps: list[bool] = []
    between: list[int] = []
    step = walk._step

    async def accept_other() -> None:
        sent["other"] += await _send_all(api, accounts["other"], [None])
        between.append(len(steps))

    def counted(c: sqlite3.Connection, *args: Any) -> bool:
        steps.append(True)
        if len(steps) == 1:
            asyncio.get_running_loop().create_task(accept_other())
        return step(c, *args)

    monkeypatch.setattr(walk, "_step", counted)
    await _assign(api, accounts["shop"], [KEPT])  # MOVED taken from the shop
    monkeypatch.setattr(walk, "_step", step)
    if not steps:  # all in the change's transaction: the accept after it
        await accept_other()
    assert _rows(api, "SELECT COUNT(*) FROM sender_walk") == [(0,)]
    return await _outcome(api, accounts, sent), len(steps), between[0]


async def test_a_change_walks_in_chunks_others_write_between_and_the_result_is_one_transaction_s(
    make_api: Callable[..., Awaitable[ApiServer]], monkeypatch: pytest.MonkeyPatch
) -> None:
    chunked, steps, between = await _change_counting_chunks(await make_api(), monkeypatch)
    # The first chunk in the change's transaction, six more after it (22 waiting and the
    # accept's one, 3 per chunk) ...
    assert steps == 7
    # ... and the other account's accept committed between them, not after.
    assert between < steps
    # As in the change's one transaction (the chunk bigger than the queue), as before.
    monkeypatch.setattr(walk, "WALK_CHUNK", 1_000_000)
    whole, steps, _ = await _change_counting_chunks(await make_api(), monkeypatch)
    assert steps == 0
    assert chunked == whole
    refused = ("expired", ERROR)
    shop = [(m["status"], m["error_code"]) for m in chunked["shop"][0]]
    assert [s for s, sender in zip(shop, SHOP_SENDS, strict=True) if sender == MOVED] == [
        refused
    ] * SHOP_SENDS.count(MOVED)
    assert shop.count(refused) == SHOP_SENDS.count(MOVED)
    assert all(m["status"] == "queued" for n in ("first", "other") for m in chunked[n][0])
    assert len(chunked["other"][0]) == len(OTHER_SENDS) + 1


async def test_a_chunk_ends_at_most_end_chunk_messages(
    make_api: Callable[..., Awaitable[ApiServer]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ending costs ~10x looking (refunds, reports): a chunk that meets many refused messages
    stops after END_CHUNK of them and the next goes on from the last one it ended."""
    monkeypatch.setattr(walk, "WALK_CHUNK", 1_000)
    monkeypatch.setattr(walk, "END_CHUNK", 2)
    chunked, steps, _ = await _change_counting_chunks(await make_api(), monkeypatch)
    # The 6 refused: 2 in the change's transaction, then 2, then the last 2 and the rest.
    assert steps == 2
    monkeypatch.setattr(walk, "WALK_CHUNK", 1_000_000)
    monkeypatch.setattr(walk, "END_CHUNK", 1_000_000)
    whole, steps, _ = await _change_counting_chunks(await make_api(), monkeypatch)
    assert steps == 0
    assert chunked == whole


NOW = 1_700_000_000_000


def _message(mid: str, account_id: str, sender: str | None) -> NewMessage:
    return NewMessage(
        id=mid,
        account_id=account_id,
        batch_id="b_" + mid,
        recipient=CN,
        encoding="gsm7",
        data_coding=0,
        billable_units=1,
        segments=(NewSegment(1, 1, 0, mid.encode(), b""),),
        accepted_at=NOW,
        text="sale",
        sender=sender,
    )


async def _stopped(
    *_args: object, **_kw: object
) -> None:  # the process stops after the change's commit
    return None


async def _left_unfinished(
    api: ApiServer, monkeypatch: pytest.MonkeyPatch, creds: Creds, senders: list[str]
) -> None:
    """The change made through the API, its process stopped after the change's transaction:
    the walk is left to the claims' guard and the sweep."""
    monkeypatch.setattr(walk, "finish", _stopped)
    await _assign(api, creds, senders)
    monkeypatch.undo()
    monkeypatch.setattr(walk, "WALK_CHUNK", 3)


def _dies_at_second_chunk(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """The walk's second chunk never commits (its process stopped); returns the undo."""
    real = walk._walk
    calls: list[int] = []

    def dies(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*args)

    monkeypatch.setattr(walk, "_walk", dies)
    return lambda: monkeypatch.setattr(walk, "_walk", real)


async def test_a_claim_during_an_unfinished_walk_sends_no_refused_message(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = api_server
    store: SqliteStore = api.store
    now = api.ctx.now_ms()
    accounts = await _accounts(api)
    shop = accounts["shop"].account_id
    # A message from MOVED on a bind before the change: held (not recalled, not sent again).
    await store.accept(AcceptBatch(shop, (_message("m_bind", shop, MOVED),), None, None), now)
    assert [w.id for w in await store.claim("inst", 500, now, 60_000)] == ["m_bind"]
    sent = await _sends(api, accounts)

    await _left_unfinished(api, monkeypatch, accounts["shop"], [KEPT])
    assert _rows(api, "SELECT COUNT(*) FROM sender_walk") == [(1,)]  # unfinished
    ended = "SELECT COUNT(*) FROM messages WHERE error_code='SENDER_NOT_ALLOWED'"
    assert _rows(api, ended)[0][0] < len(_refused(sent))  # the first chunk's only
    assert _rows(api, "SELECT end_error FROM messages WHERE id='m_bind'") == [(ERROR,)]
    # A message from MOVED accepted meanwhile (another process's assignments cached 5 s).
    await store.accept(AcceptBatch(shop, (_message("m_late", shop, MOVED),), None, None), now)

    work = await store.claim("inst", 500, api.ctx.now_ms() + 1_000, 60_000)
    taken = {w.id for w in work}
    assert not taken & {*_refused(sent), "m_late"}
    assert len(taken) == len(FIRST_SENDS) + len(SHOP_SENDS) - len(_refused(sent)) + len(OTHER_SENDS)
    for mid in [*_refused(sent), "m_late"]:
        m = await store.get_message(shop, mid)
        assert m is not None and (m.state, m.error_code) == ("expired", ERROR), mid


async def test_a_walk_whose_process_stopped_is_finished_by_the_sweep(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = api_server
    accounts, sent = await _scene(api)
    store: SqliteStore = api.store
    undo = _dies_at_second_chunk(monkeypatch)
    now = api.ctx.now_ms()
    with pytest.raises(RuntimeError):
        await store.update_account(accounts["shop"].account_id, {"senders": [KEPT]}, now)
    undo()
    ended = "SELECT COUNT(*) FROM messages WHERE error_code='SENDER_NOT_ALLOWED'"
    (first,) = _rows(api, ended)
    assert first[0] < len(_refused(sent))  # the first chunk's only
    assert _rows(api, "SELECT COUNT(*) FROM sender_walk") == [(1,)]

    await store.sweep(now + 1, 3_600_000)  # its process may still be working it
    assert _rows(api, ended) == [first]
    await store.sweep(now + RESUME_AFTER_MS, 3_600_000)  # nobody has: finished
    assert _rows(api, ended) == [(SHOP_SENDS.count(MOVED),)]
    assert _rows(api, "SELECT COUNT(*) FROM sender_walk") == [(0,)]
    work = await store.claim("inst", 500, now + RESUME_AFTER_MS + 1, 60_000)
    assert len(work) == len(FIRST_SENDS) + len(SHOP_SENDS) - 6 + len(OTHER_SENDS)


async def test_a_step_back_of_the_clock_moves_the_mark_of_a_walk_a_stopped_process_left(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Store.clock_stepped_back moves `sender_walk.worked_at` as it moves `pending_ends`': a walk
    marked on the old clock, S ahead, was finished by the sweep S late."""
    api = api_server
    accounts, sent = await _scene(api)
    store: SqliteStore = api.store
    step = 10 * 60_000  # the old clock was this far ahead
    now = api.ctx.now_ms()
    undo = _dies_at_second_chunk(monkeypatch)
    with pytest.raises(RuntimeError):
        await store.update_account(accounts["shop"].account_id, {"senders": [KEPT]}, now + step)
    undo()
    assert _rows(api, "SELECT worked_at FROM sender_walk") == [(now + step,)]

    await store.clock_stepped_back(step, now, ())
    assert _rows(api, "SELECT worked_at FROM sender_walk") == [(now,)]
    ended = "SELECT COUNT(*) FROM messages WHERE error_code='SENDER_NOT_ALLOWED'"
    (first,) = _rows(api, ended)
    await store.sweep(now + RESUME_AFTER_MS - 1, 3_600_000)  # not stale yet
    assert _rows(api, ended) == [first]
    await store.sweep(now + RESUME_AFTER_MS, 3_600_000)  # not the step later
    assert _rows(api, ended) == [(len(_refused(sent)),)]
    assert _rows(api, "SELECT COUNT(*) FROM sender_walk") == [(0,)]


async def test_a_walk_worked_across_a_step_back_follows_the_moved_mark() -> None:
    """The process working a walk counts its marks on from the clock of its start: once a step
    back moved its mark, its next chunk follows the moved mark (sqlite_chunked.MARK) instead of
    writing the old clock's time again."""
    c = sqlite3.connect(":memory:")
    c.execute(
        "CREATE TABLE sender_walk (id INTEGER PRIMARY KEY, assigned_only INTEGER, "
        "after_account TEXT, after_nb INTEGER, after_rowid INTEGER, moved INTEGER, "
        "worked_at INTEGER)"
    )
    c.execute(
        "CREATE TABLE messages (account_id TEXT, q_state TEXT, q_not_before INTEGER, sender TEXT)"
    )
    c.execute("CREATE INDEX messages_queue ON messages(q_state, account_id, q_not_before)")
    c.executemany(
        "INSERT INTO messages VALUES ('acc', 'queued', ?, NULL)", [(k,) for k in range(10)]
    )
    c.execute("CREATE TABLE accounts (id TEXT, senders TEXT, status TEXT)")
    c.execute("INSERT INTO sender_walk VALUES (1, 0, '', -1, 0, 0, 1000)")  # marked at 1000
    assert walk._step(c, 2_000, last=1_000)  # no step: marked at the worker's time
    assert c.execute("SELECT worked_at FROM sender_walk").fetchone() == (2_000,)
    c.execute("UPDATE sender_walk SET worked_at = worked_at - 600")  # a step back of 600
    assert walk._step(c, 3_000, last=2_000)  # follows: 1,400 + (3,000 - 2,000)
    assert c.execute("SELECT worked_at FROM sender_walk").fetchone() == (2_400,)


async def test_a_message_moved_behind_the_walk_is_walked_again(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An un-park moves messages earlier in the queue index, behind a walk's cursor: the walk
    goes once more from the start rather than leave them to be sent once it is done."""
    api = api_server
    accounts, sent = await _scene(api)
    store: SqliteStore = api.store
    now = api.ctx.now_ms()
    shop = accounts["shop"].account_id
    await _left_unfinished(api, monkeypatch, accounts["shop"], [KEPT])
    c = sqlite3.connect(api.config.store.path)
    with c:  # the shop's messages parked for a down route, and the walk gone past them
        c.execute(
            "UPDATE messages SET q_park='main', q_not_before=? WHERE account_id=?",
            (now + 600_000, shop),
        )
        c.execute("UPDATE sender_walk SET after_account=?, after_nb=?", (shop, now + 600_001))
    c.close()
    queued = f"SELECT COUNT(*) FROM messages WHERE account_id='{shop}' AND q_state='queued'"
    (waiting,) = _rows(api, queued)
    assert await store.unpark(["main"], now + 1) == waiting[0]  # the route is up again
    await walk.finish(store._runner.write, now + 2)
    for mid in _refused(sent):
        m = await store.get_message(shop, mid)
        assert m is not None and m.error_code == "SENDER_NOT_ALLOWED", mid
    assert _rows(api, "SELECT COUNT(*) FROM sender_walk") == [(0,)]


async def test_a_change_during_a_walk_walks_the_whole_queue_again(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new assignments may refuse what the walk under way passed: it starts over."""
    api = api_server
    accounts, sent = await _scene(api)
    shop = accounts["shop"].account_id
    await _left_unfinished(api, monkeypatch, accounts["shop"], [KEPT])
    c = sqlite3.connect(api.config.store.path)
    with c:  # the walk has gone past the shop's messages
        c.execute("UPDATE sender_walk SET after_account=?, after_nb=?", (shop, 1 << 62))
    c.close()
    await _assign(api, accounts["shop"], ["10690055"])  # KEPT taken from the shop too
    for mid, sender in zip(sent["shop"], SHOP_SENDS, strict=True):
        m = await api.store.get_message(shop, mid)
        assert m is not None
        assert m.error_code == (None if sender is None else ERROR), (mid, sender)
    assert _rows(api, "SELECT COUNT(*) FROM sender_walk") == [(0,)]


async def test_a_campaign_scheduled_for_one_time_is_walked_whole(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages due at the same time share the queue index's (account, due time): the walk goes
    on by rowid inside it, then after it, and meets each message once."""
    api = api_server
    accounts = await _accounts(api)
    at = {"scheduled_at": (api.clock.utc() + timedelta(hours=1)).isoformat()}
    sent = {name: await _send_all(api, accounts[name], sends, **at) for name, sends in
            (("first", FIRST_SENDS), ("shop", SHOP_SENDS), ("other", OTHER_SENDS))}  # fmt: skip
    shop = accounts["shop"].account_id
    assert _rows(
        api, f"SELECT COUNT(DISTINCT q_not_before) FROM messages WHERE account_id='{shop}'"
    )[0] == (1,)
    seen: list[int] = []
    real = walk._refused

    def counted(c: sqlite3.Connection, rows: Any, assigned_only: bool) -> list[int]:
        seen.extend(r[0] for r in rows)
        return real(c, rows, assigned_only)

    monkeypatch.setattr(walk, "_refused", counted)
    await _assign(api, accounts["shop"], [KEPT])
    assert sorted(seen) == sorted(set(seen)) and len(seen) == sum(map(len, sent.values()))
    for mid, sender in zip(sent["shop"], SHOP_SENDS, strict=True):
        m = await api.store.get_message(shop, mid)
        assert m is not None
        assert m.error_code == (ERROR if sender == MOVED else None), (mid, sender)


def test_the_claims_check_costs_one_read_without_a_walk() -> None:
    """Without a walk under way the check is one read of an empty table: no message row."""
    c = sqlite3.connect(":memory:")
    c.execute("CREATE TABLE sender_walk (assigned_only INTEGER)")
    c.execute("CREATE TABLE messages (id TEXT)")  # no column the check would read: it does not
    assert walk.guard(c, ["m1", "m2"], 0) == ["m1", "m2"]
