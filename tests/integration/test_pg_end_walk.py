"""PostgreSQL's account-wide ends (a disable, `marketing` / `raw_text` turned off, a sign or
template deleted) go in pages of their own transactions (bridge/store/postgres_pending_ends.py)
and the `senders` change reads the waiting messages a page at a time (postgres_ends.py), on a
real PostgreSQL.

The page is made 3 here, so 13 waiting messages of one account (10 queued, 3 on a bind) take
several; the outcome must be what it was: the same count, each covered message ended (or, on a
bind, held) once and refunded once, the others untouched; and a claim between two pages ends,
not sends, what the end covers.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import asyncpg.cursor
import pytest

from bridge.domain.admission import Priced, Rules
from bridge.domain.ledger import topup
from bridge.store import postgres_ends, postgres_pending_ends
from bridge.store.models import AcceptBatch, Account, Sign, Template
from bridge.store.postgres import PostgresStore
from tests import pg_reuse, pg_walks
from tests.messages import one_part
from tests.pg_walks import cash, refunds, spy_reads

pg_dsn = pg_reuse.migrated_pg_dsn  # a store on the worker's migrated database (tests/pg_reuse.py)

pg = pg_walks.pg  # the store fixture

NOW = 1_700_000_000_000
AT = NOW + 5  # when the change is made
DAY = 86_400_000
LEASE = 300_000
PRICE = 45_000
CASH = 10_000_000
EVEN = (0, 2, 4, 6, 8)
ODD = (1, 3, 5, 7, 9)


def _msg(mid: str, aid: str, k: int, **fields: Any) -> Any:
    """Even k: sign Acme, template T1 (T2 for acc_b), marketing, sender ACME; odd k: free text,
    a notification from 10690099."""
    even = k % 2 == 0
    return one_part(
        mid,
        aid,
        f"+86138{k:08d}",
        NOW,
        price_class="D",
        sign_name="Acme" if even else None,
        template=("T1" if aid == "acc_a" else "T2") if even else None,
        kind="marketing" if even else "notification",
        sender="ACME" if even else "10690099",
        **fields,
    )


def _small(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of 3: the senders change's cursor, the account-wide ends' transactions."""
    monkeypatch.setattr(postgres_ends, "WALK_CHUNK", 3)
    monkeypatch.setattr(postgres_pending_ends, "END_CHUNK", 3)


async def _account(store: PostgresStore, aid: str, template: str) -> None:
    await store.create_account(Account(id=aid, name=aid, created_at=NOW, updated_at=NOW))
    await store.append_ledger(aid, topup(CASH, NOW - 1_000, "funds"))
    await store.add_sign(Sign(aid, "Acme", "acme", "company", "", "approved", None, None, NOW))
    await store.add_template(
        Template(template, aid, "marketing", template, "hi", "", False, "approved", None, NOW)
    )


async def _accept(store: PostgresStore, aid: str, msgs: list[Any]) -> None:
    rules = Rules(charges=tuple(Priced(m.id, PRICE, False) for m in msgs), billing=True)
    out = await store.accept(AcceptBatch(aid, tuple(msgs), None, None, rules=rules), NOW)
    assert out.accepted, out


async def _queue(store: PostgresStore) -> None:
    """acc_a: c10-c12 on a bind, q00-q09 queued (q08, q09 scheduled a day out); acc_b: b00 (as
    an even one) and b01 (as an odd one) queued."""
    await _account(store, "acc_a", "T1")
    await _account(store, "acc_b", "T2")
    await _accept(store, "acc_a", [_msg(f"c{k:02d}", "acc_a", k) for k in (10, 11, 12)])
    assert len(await store.claim("inst-1", 3, NOW, LEASE)) == 3
    await _accept(
        store,
        "acc_a",
        [
            _msg(f"q{k:02d}", "acc_a", k, scheduled_at=NOW + DAY if k >= 8 else None)
            for k in range(10)
        ],
    )
    await _accept(store, "acc_b", [_msg("b00", "acc_b", 0), _msg("b01", "acc_b", 1)])


async def _rows(dsn: str) -> dict[str, tuple[str, str, int | None, str | None]]:
    """id -> (q_state, its part's state:error, expires_at, end_error)."""
    c = await asyncpg.connect(dsn)
    try:
        rows = await c.fetch(
            "SELECT m.id, m.q_state, s.state || ':' || COALESCE(s.error_code, ''), "
            "m.expires_at, m.end_error FROM messages m JOIN segments s ON s.message_id = m.id"
        )
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}
    finally:
        await c.close()


# (what is done, its error, the queued ids it ends, the ids on a bind it holds)
CASES = {
    "disable": ("ACCOUNT_DISABLED", [f"q{k:02d}" for k in range(10)], ["c10", "c11", "c12"]),
    "marketing": ("MARKETING_NOT_ALLOWED", [f"q{k:02d}" for k in EVEN], ["c10", "c12"]),
    "raw_text": ("RAW_TEXT_NOT_ALLOWED", [f"q{k:02d}" for k in ODD], ["c11"]),
    "sign": ("SIGN_DELETED", [f"q{k:02d}" for k in EVEN], ["c10", "c12"]),
    "template": ("TEMPLATE_DELETED", [f"q{k:02d}" for k in EVEN], ["c10", "c12"]),
    # acc_b holds ACME now: acc_a's ACME messages, and acc_b's own from an address not on its list.
    "senders": ("SENDER_NOT_ALLOWED", [f"q{k:02d}" for k in EVEN] + ["b01"], ["c10", "c12"]),
}


async def _do(store: PostgresStore, case: str) -> int | None:
    if case == "disable":
        await store.update_account("acc_a", {"status": "disabled"}, AT)
    elif case in ("marketing", "raw_text"):
        await store.update_account("acc_a", {case: False}, AT)
    elif case == "sign":
        return await store.delete_sign("acc_a", "Acme", AT)
    elif case == "template":
        return await store.delete_template("acc_a", "T1", AT)
    else:
        await store.update_account("acc_b", {"senders": ["ACME"]}, AT)
    return None


@pytest.mark.parametrize("case", sorted(CASES))
async def test_paged_ends_end_what_they_cover_once_and_refund_once(
    pg: PostgresStore, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    _small(monkeypatch)
    await _queue(pg)
    error, ended, held = CASES[case]
    count = await _do(pg, case)
    if count is not None:  # a sign's or template's delete answers how many ended
        assert count == len(ended)
    for mid, (q_state, part, expires_at, end_error) in (await _rows(pg_dsn)).items():
        if mid in ended:
            assert (q_state, part) == ("done", f"expired_unsent:{error}"), mid
        elif mid in held:  # on a bind: not recalled, its validity ends now (_hold_tried)
            assert (q_state, part, expires_at, end_error) == ("claimed", "queued:", AT, error), mid
        else:
            assert q_state in ("queued", "claimed") and part == "queued:", mid
            assert end_error is None, mid
    ended_a = sorted(m for m in ended if m.startswith("q"))
    ended_b = sorted(m for m in ended if m.startswith("b"))
    assert await refunds(pg, "acc_a") == ended_a
    assert await refunds(pg, "acc_b") == ended_b
    assert await cash(pg, "acc_a") == CASH - 13 * PRICE + len(ended_a) * PRICE
    assert await cash(pg, "acc_b") == CASH - 2 * PRICE + len(ended_b) * PRICE
    # Done again: nothing more to end, nothing refunded twice.
    if case in ("disable", "marketing", "raw_text", "senders"):
        assert await _do(pg, case) is None
    assert await refunds(pg, "acc_a") == ended_a
    assert await refunds(pg, "acc_b") == ended_b


@pytest.mark.parametrize("case", ["disable", "senders", "sign"])
async def test_no_read_answers_more_than_a_page_of_the_waiting_messages(
    pg: PostgresStore, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """Before: one read answered every message covered (the disable's 13, the senders change's
    15 waiting with a sender) at once."""
    _small(monkeypatch)
    await _queue(pg)
    reads = spy_reads(monkeypatch)
    await _do(pg, case)
    assert reads, "nothing read the messages"
    assert max(n for _, n in reads) <= 3, reads


@pytest.mark.parametrize("case", ["disable", "sign"])
async def test_a_claim_between_two_pages_ends_what_the_end_covers_and_it_is_counted(
    pg: PostgresStore, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """The pages are transactions of their own: another instance's claim between two of them
    must end (not send) what the end has not reached yet, and a sign's delete answers those
    too (postgres_pending_ends.guard)."""
    _small(monkeypatch)
    await _queue(pg)
    other = PostgresStore(pg_dsn, min_size=1, max_size=2)
    await other.open()
    taken: list[str] = []
    step = postgres_pending_ends._step

    async def claim_between(c: Any, end_id: int, *args: Any, **kw: Any) -> Any:
        if not taken:  # the change committed its first page; the rest wait
            taken.extend(w.id for w in await other.claim("inst-2", 50, NOW + 2 * DAY, LEASE))
            taken.append("-")
        return await step(c, end_id, *args, **kw)

    monkeypatch.setattr(postgres_pending_ends, "_step", claim_between)
    try:
        count = await _do(pg, case)
    finally:
        await other.close()
    assert taken, "the end went in one transaction"
    error, ended, _held = CASES[case]
    # The other account's, and (a sign's delete) acc_a's messages it does not cover.
    free = {"b00", "b01"} | ({f"q{k:02d}" for k in ODD} if case == "sign" else set())
    assert set(taken) - {"-"} == free, taken
    rows = await _rows(pg_dsn)
    assert all(rows[m][:2] == ("done", f"expired_unsent:{error}") for m in ended), rows
    if count is not None:
        assert count == len(ended)  # the claim's share included
    assert await refunds(pg, "acc_a") == sorted(ended)
