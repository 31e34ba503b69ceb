"""PostgreSQL's account close masks the account's whole history without reading it into the
daemon, on a real PostgreSQL: its waiting messages end in pages (postgres_pending_ends.py), and
its history is masked in pages (postgres_ends.py `erase_page`), each a transaction of its own.

Before, the close read the id and queue state of every message the account ever had in one
statement (millions for a big account) and passed them back as an array. Now no read answers
more than a page. The pages are made 3 here, so 18
messages of one account (4 sent, 10 queued, 3 on a bind, 1 queued after an unanswered submit)
take several; the outcome must be what it was: the queued ones ended and refunded once, the
others held, every one masked with blank parts, the MO inbox masked, the other account's rows
untouched; no claim takes one of them between two pages; and a message an accept commits while
the close runs is left whole (not masked while it waits, which would send its blank parts).
"""

from __future__ import annotations

import zlib
from typing import Any

import asyncpg
import asyncpg.cursor
import pytest

from bridge.domain.admission import Priced, Rules
from bridge.domain.ledger import topup
from bridge.store import postgres_ends, postgres_pending_ends, postgres_rules
from bridge.store.models import AcceptBatch, Account, MoMessage, Release, SubmitResult
from bridge.store.postgres import PostgresStore
from tests import pg_reuse, pg_walks
from tests.messages import one_part
from tests.pg_walks import cash, refunds, spy_reads

pg_dsn = pg_reuse.migrated_pg_dsn  # a store on the worker's migrated database (tests/pg_reuse.py)

pg = pg_walks.pg  # the store fixture

NOW = 1_700_000_000_000
AT = NOW + 5  # when the account is closed
DAY = 86_400_000
LEASE = 300_000
PRICE = 45_000
CASH = 10_000_000
SENT = ["s00", "s01", "s02", "s03"]
QUEUED = [f"q{k:02d}" for k in range(10)]
ON_BIND = ["c10", "c11", "c12"]
TRIED = ["t13"]  # back in the queue after a submit nobody answered


def _number(mid: str) -> str:
    return f"+86138{zlib.crc32(mid.encode()) % 10**8:08d}"


async def _accept(store: PostgresStore, aid: str, mids: list[str], **fields: Any) -> None:
    msgs = [
        one_part(m, aid, _number(m), NOW, client_ref="ref-" + m, price_class="D", **fields)
        for m in mids
    ]
    rules = Rules(charges=tuple(Priced(m.id, PRICE, False) for m in msgs), billing=True)
    out = await store.accept(AcceptBatch(aid, tuple(msgs), None, None, rules=rules), NOW)
    assert out.accepted, out


async def _history(store: PostgresStore) -> None:
    """acc_a: sent, on a bind, tried and queued (two scheduled a day out), an MO; acc_b: one
    sent, one queued, an MO."""
    for aid in ("acc_a", "acc_b"):
        await store.create_account(Account(id=aid, name=aid, created_at=NOW, updated_at=NOW))
        await store.append_ledger(aid, topup(CASH, NOW - 1_000, "funds"))
    await _accept(store, "acc_a", SENT + TRIED)
    await _accept(store, "acc_b", ["b00"])
    taken = await store.claim("inst-1", 10, NOW, LEASE)
    assert sorted(w.id for w in taken) == sorted(["b00", *SENT, *TRIED])
    sent = [SubmitResult(m, 1, "sent", "smscA", f"x{m}", f"x{m}", at=NOW) for m in [*SENT, "b00"]]
    await store.record_submits(sent, [Release("t13", NOW, unanswered=True)], NOW)
    await _accept(store, "acc_a", ON_BIND)
    assert sorted(w.id for w in await store.claim("inst-1", 10, NOW, LEASE)) == ON_BIND + TRIED
    await store.record_submits([], [Release("t13", NOW, unanswered=True)], NOW)
    await _accept(store, "acc_a", QUEUED[:8])
    await _accept(store, "acc_a", QUEUED[8:], scheduled_at=NOW + DAY)
    await _accept(store, "acc_b", ["b01"])
    await store.store_mo(MoMessage("mo_a", "acc_a", "smscA", _number("s00"), "1069", "hi a", NOW))
    await store.store_mo(MoMessage("mo_b", "acc_b", "smscA", _number("b00"), "1069", "hi b", NOW))


def _small(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of 3: the waiting messages' ends and the masking's."""
    monkeypatch.setattr(postgres_ends, "WALK_CHUNK", 3)
    monkeypatch.setattr(postgres_ends, "ERASE_CHUNK", 3)
    monkeypatch.setattr(postgres_pending_ends, "END_CHUNK", 3)


async def _rows(dsn: str) -> dict[str, tuple[Any, ...]]:
    """id -> (recipient, text, client_ref, q_state, part state:error, part bytes, tlvs,
    expires_at, end_error)."""
    c = await asyncpg.connect(dsn)
    try:
        rows = await c.fetch(
            "SELECT m.id, m.recipient, m.text, m.client_ref, m.q_state, "
            "s.state || ':' || COALESCE(s.error_code, ''), s.short_message, s.tlvs, "
            "m.expires_at, m.end_error FROM messages m JOIN segments s ON s.message_id = m.id"
        )
        return {r[0]: tuple(r[1:]) for r in rows}
    finally:
        await c.close()


async def _mo(dsn: str) -> dict[str, tuple[str, str | None]]:
    c = await asyncpg.connect(dsn)
    try:
        return {r[0]: (r[1], r[2]) for r in await c.fetch("SELECT id, source, text FROM mo_inbox")}
    finally:
        await c.close()


async def test_the_close_ends_holds_and_masks_as_before_a_page_at_a_time(
    pg: PostgresStore, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _small(monkeypatch)
    await _history(pg)
    before = await _rows(pg_dsn)
    closed = await pg.close_account("acc_a", AT)
    assert closed is not None
    rows = await _rows(pg_dsn)
    acc_a = SENT + QUEUED + ON_BIND + TRIED
    assert sorted(m for m in rows if not m.startswith("b")) == sorted(acc_a)
    for mid in acc_a:
        recipient, text, ref, q_state, part, sm, tlvs, expires_at, end_error = rows[mid]
        assert (recipient, text, ref, sm, tlvs) == ("+***", None, None, b"", b""), mid
        if mid in QUEUED:
            assert (q_state, part) == ("done", "expired_unsent:ERASED"), mid
        elif mid in SENT:
            assert (q_state, part, expires_at, end_error) == ("done", "sent:", None, None), mid
        else:  # on a bind, or tried: not recalled, its validity ends now (_hold_tried)
            q = "claimed" if mid in ON_BIND else "queued"
            assert (q_state, part, expires_at, end_error) == (q, "queued:", AT, "ERASED"), mid
    assert {m: rows[m] for m in ("b00", "b01")} == {m: before[m] for m in ("b00", "b01")}
    assert await _mo(pg_dsn) == {"mo_a": ("+***", None), "mo_b": (_number("b00"), "hi b")}
    # Refunded once each, then the account's cash written off as owed back (close_plan).
    assert await refunds(pg, "acc_a") == QUEUED
    assert [(str(e.kind), e.amount) for e in closed.entries] == [("closed", -(CASH - 8 * PRICE))]
    assert await cash(pg, "acc_a") == 0
    assert await refunds(pg, "acc_b") == []
    assert await cash(pg, "acc_b") == CASH - 2 * PRICE
    # Closed again: nothing more ended, refunded or written off.
    again = await pg.close_account("acc_a", AT + 1)
    assert again is not None and again.entries == ()
    assert await refunds(pg, "acc_a") == QUEUED
    assert await _rows(pg_dsn) == rows


async def test_no_read_answers_more_than_a_page_of_the_accounts_messages(
    pg: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: one read answered all 18 of the account's messages (its whole history)."""
    _small(monkeypatch)
    await _history(pg)
    reads = spy_reads(monkeypatch)
    assert await pg.close_account("acc_a", AT) is not None
    assert reads, "nothing read the messages"
    assert max(n for _, n in reads) <= 3, reads


async def test_no_claim_takes_a_closing_accounts_message_between_two_pages(
    pg: PostgresStore, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The close's end is recorded before its first page (postgres_pending_ends): another
    instance's claim between two pages ends, instead of sending, what the end still covers, and
    takes the other account's."""
    _small(monkeypatch)
    await _history(pg)
    other = PostgresStore(pg_dsn, min_size=1, max_size=2)
    await other.open()
    taken: list[str] = []
    steps: list[int] = []
    step = postgres_pending_ends._step

    async def claim_between(c: Any, end_id: int, *args: Any, **kw: Any) -> Any:
        steps.append(end_id)
        if len(steps) == 2:  # the first page committed, the second not begun
            taken.extend(w.id for w in await other.claim("inst-2", 50, NOW + 2 * DAY, LEASE))
            taken.append("-")
        return await step(c, end_id, *args, **kw)

    monkeypatch.setattr(postgres_pending_ends, "_step", claim_between)
    try:
        assert await pg.close_account("acc_a", AT) is not None
    finally:
        await other.close()
    # Of acc_a's, only the one tried before, held by the first page: its validity ended at the
    # close (expires_at), so its claim ends it unsent (ERASED) instead of sending it.
    assert taken == ["b01", "t13", "-"]
    rows = await _rows(pg_dsn)
    assert rows["t13"][7:] == (AT, "ERASED")
    assert all(rows[m][3:5] == ("done", "expired_unsent:ERASED") for m in QUEUED), rows
    assert await refunds(pg, "acc_a") == QUEUED


async def test_a_message_accepted_while_the_close_runs_is_left_whole(
    pg: PostgresStore, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An accept that takes no lock on the account (a batch without a nonce or an account
    version; the API's accepts take it) can commit a message after the close's transaction
    ended what waited but before its masking's boundary. That message was not ended; masked, it
    would wait in the queue with blank parts, to be sent to the mask: it is left whole."""
    _small(monkeypatch)
    await _history(pg)
    other = PostgresStore(pg_dsn, min_size=1, max_size=2)
    await other.open()
    start = postgres_rules.start_erase
    late = one_part("late", "acc_a", _number("late"), NOW, client_ref="ref-late")

    async def accept_meanwhile(*args: Any) -> None:
        assert (await other.accept(AcceptBatch("acc_a", (late,), None, None), NOW)).accepted
        await start(*args)

    monkeypatch.setattr(postgres_rules, "start_erase", accept_meanwhile)
    try:
        assert await pg.close_account("acc_a", AT) is not None
    finally:
        await other.close()
    rows = await _rows(pg_dsn)
    assert rows["late"][:5] == (_number("late"), "text of late", "ref-late", "queued", "queued:")
    assert rows["late"][5:] == (b"late", b"", None, None)
    assert all(rows[m][0] == "+***" for m in SENT + QUEUED + ON_BIND + TRIED)
