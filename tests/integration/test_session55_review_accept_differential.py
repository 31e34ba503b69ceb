"""SQLite, session 55's accept in the lock reviewed by a differential over random write batches.

Session 55 made two things of an accept depend on what came before it: the Account built from
the key's account row is kept per account with the row's `row_version` (migration 0037) and used
while the row keeps that version, and within one write batch an account's later accepts take
today's count and the pockets from what its first accept read (`HeldSums.base`). Both are
switched off here (no version held: the row read as JSON every time, as before; no base: every
accept reads the sums again, as session 53's batch did) for the reference run; random batches
then run once with them and once without, on real SQLite files, each batch one write batch:
accepts of two accounts (keyed or not, one or two recipients, billed or not, refused by sign,
replays), top-ups and account changes (the daily quota, the low-balance threshold, disabled)
between them, and clocks on both sides of midnight in the rules' zone. Every answer and every
money row must be the same.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Coroutine, Iterator
from contextlib import closing, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.domain import admission as adm
from bridge.domain.ledger import grant_voucher, topup
from bridge.store import sqlite as sqlite_mod
from bridge.store import sqlite_rules
from bridge.store.models import AcceptBatch, AppKey, IdempotencyRecord
from bridge.store.sqlite import SqliteStore
from tests.integration.test_store_rules import NOW, account, billed, message, sign

MIN = 60_000
DAY = 24 * 60 * MIN


def _midnight() -> int:
    """The first minute of the day after NOW's, in the rules' zone (UTC by default)."""
    t = NOW
    day = adm.day_key(NOW, "UTC")
    while adm.day_key(t, "UTC") == day:
        t += MIN
    return t


MIDNIGHT = _midnight()
# Clocks of an accept: well before midnight, the last millisecond of the day, its first.
CLOCKS = (NOW, MIDNIGHT - 1, MIDNIGHT, MIDNIGHT + MIN)


class _NoBase(sqlite_rules.HeldSums):
    """HeldSums that never keeps a base: every accept reads the sums (the reference)."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__()

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, None if name == "base" else value)


@contextmanager
def _reference() -> Iterator[None]:
    """The accept as before session 55's two reuses: no Account held by version, no base."""
    mp = pytest.MonkeyPatch()
    mp.setattr(sqlite_mod, "account_at_version", lambda _aid: None)
    mp.setattr(sqlite_rules, "HeldSums", _NoBase)
    try:
        yield
    finally:
        mp.undo()


async def _store(path: Path) -> SqliteStore:
    s = SqliteStore(path)
    await s.open()
    await s.create_account(
        account("acc_a", status_url="https://hook.example/a", threshold=1_150, daily_quota=4)
    )
    await s.create_account(account("acc_b", kind="postpaid", daily_quota=2))
    for aid in ("acc_a", "acc_b"):
        await sign(s, aid=aid)
    await sign(s, "Pending", "pending", aid="acc_a")
    await s.append_ledger("acc_a", topup(1_000, NOW, "funds"))
    await s.append_ledger("acc_a", grant_voucher(500, NOW, "v1", NOW + DAY))
    await s.add_key(AppKey("KA", "acc_a", b"sealed", "active", NOW), max_active=2)
    await s.add_key(AppKey("KB", "acc_b", b"sealed", "active", NOW), max_active=2)
    return s


accepts = st.fixed_dictionaries(
    {
        "op": st.just("accept"),
        "aid": st.sampled_from(("acc_a", "acc_b")),
        "recipients": st.sampled_from((1, 1, 1, 1, 1, 2)),
        "keyed": st.sampled_from((True, True, True, True, False)),
        "sign": st.sampled_from(("Acme",) * 5 + ("Pending",)),
        "amount": st.sampled_from((100, 200, 500, 0)),
        "billing": st.sampled_from((True, True, True, False)),
        "clock": st.sampled_from(CLOCKS + (NOW,) * 4),
        "replay": st.sampled_from((None,) * 6 + (1, 2)),
    }
)
others = st.one_of(
    st.fixed_dictionaries(
        {
            "op": st.just("topup"),
            "aid": st.sampled_from(("acc_a", "acc_b")),
            "amount": st.sampled_from((50, 300)),
        }
    ),
    st.fixed_dictionaries(
        {
            "op": st.just("update"),
            "aid": st.sampled_from(("acc_a", "acc_b")),
            "changes": st.sampled_from(
                (
                    {"daily_quota": 2},
                    {"daily_quota": 20},
                    {"low_balance_threshold": 5_000},
                    {"low_balance_threshold": 0},
                    {"status": "disabled"},
                    {"status": "active"},
                )
            ),
        }
    ),
)
batches = st.lists(st.lists(st.one_of(accepts, accepts, accepts, others), max_size=10), max_size=3)


def _accept(op: dict[str, Any], n: int) -> tuple[AcceptBatch, int]:
    aid = op["aid"]
    msgs = tuple(
        message(
            f"m{n}-{i}", f"+86138{n:06d}{i:02d}", account_id=aid, sign=op["sign"], at=op["clock"]
        )
        for i in range(op["recipients"])
    )
    key = f"i{op['replay']}" if op["replay"] is not None else f"i{n}"
    rules = replace(billed(*msgs, amount=op["amount"]), sign_name=op["sign"])
    if not op["billing"]:
        rules = replace(rules, billing=False)
    batch = AcceptBatch(
        aid, msgs, key, IdempotencyRecord(f"hash-{key}", 202, b""), op["clock"] + DAY, rules=rules
    )
    if op["keyed"]:
        batch = replace(
            batch,
            key_id="KA" if aid == "acc_a" else "KB",
            nonce=f"n{n}",
            nonce_expires_at=op["clock"] + 10 * MIN,
        )
    return batch, op["clock"]


def _answer(out: Any) -> Any:
    if out is None or isinstance(out, (bool, BaseException)):  # a top-up's answer, a fault
        return repr(out)
    if not hasattr(out, "accepted"):  # an account change's answer
        return (out.daily_quota, out.low_balance_threshold, out.status)
    return (
        out.accepted,
        None if out.refusal is None else (out.refusal.code, out.refusal.message),
        None if out.existing is None else out.existing.response,
        None if out.plan is None else (out.plan.day, out.plan.entries, out.plan.low_balance),
        out.auth_refusal,
    )


def _rows(path: Path) -> dict[str, list[Any]]:
    with closing(sqlite3.connect(path)) as db:
        return {
            "pockets": db.execute(
                "SELECT account_id, pocket, amount, expires_at FROM pockets ORDER BY 1, 2"
            ).fetchall(),
            "daily_counts": db.execute("SELECT * FROM daily_counts ORDER BY 1, 2").fetchall(),
            "ledger": db.execute(
                "SELECT account_id, kind, amount, pocket, at, ref, expires_at FROM ledger "
                "ORDER BY account_id, at, ref, pocket, amount"
            ).fetchall(),
            "messages": db.execute(
                "SELECT id, account_id, recipient, q_state FROM messages ORDER BY 1"
            ).fetchall(),
            "accounts": db.execute(
                "SELECT id, status, daily_quota, low_balance_threshold, low_warned_at "
                "FROM accounts ORDER BY 1"
            ).fetchall(),
            "nonces": db.execute("SELECT key_id, nonce FROM nonces ORDER BY 1, 2").fetchall(),
            "events": db.execute(
                "SELECT account_id, count(*) FROM webhook_outbox GROUP BY 1 ORDER BY 1"
            ).fetchall(),
        }


async def _run(path: Path, plan: list[list[dict[str, Any]]]) -> tuple[list[Any], dict[str, Any]]:
    s = await _store(path)
    answers: list[Any] = []
    try:
        n = 0
        for ops in plan:
            calls: list[Coroutine[Any, Any, Any]] = []
            for op in ops:
                n += 1
                if op["op"] == "accept":
                    batch, clock = _accept(op, n)
                    calls.append(s.accept(batch, clock))
                elif op["op"] == "topup":
                    calls.append(s.append_ledger(op["aid"], topup(op["amount"], NOW, f"t{n}")))
                else:
                    calls.append(s.update_account(op["aid"], op["changes"], NOW + n))
            commits = s._runner.commits
            outs = await asyncio.gather(*calls, return_exceptions=True)
            assert s._runner.commits <= commits + 1, "not one write batch"
            answers.extend(_answer(o) for o in outs)
        return answers, _rows(path)
    finally:
        await s.close()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=batches)
def test_random_batches_answer_and_write_as_without_the_reuses(
    tmp_path_factory: pytest.TempPathFactory, plan: list[list[dict[str, Any]]]
) -> None:
    d = tmp_path_factory.mktemp("diff")
    with _reference():
        ref = asyncio.run(_run(d / "reference.db", plan))
    new = asyncio.run(_run(d / "new.db", plan))
    assert new[0] == ref[0]
    assert new[1] == ref[1]
