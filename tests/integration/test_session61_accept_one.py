"""SQLite: the usual keyed one-recipient accept is decided inside the write lock from its key
statement's row, against its rules taken before the lock (session 61: `admission.one_send`,
`decide_one`, `sqlite_rules.decide_one_of`), its cash charge's Plan and ledger row made before
the lock too; anything else still goes to `admission.decide` over `Facts`.

On real SQLite files a mix of accepts (an account with cash alone, a low-balance threshold and a
daily quota; a postpaid one with cash; one with cash and a voucher; keyed and not, one and two
recipients, sign refusals, balance refusals at the last micro-unit, a replay, frequency rules with
and without a history) runs all in one write batch and one batch each, on a store as it is and on
one whose `one_send` always answers None (the general code, the code before): every answer and
every row of the money, message, segment, ledger and outbox tables must be the same. And the
usual sends must have been decided without `decide` (on the code before this, `decide` decided
every one of them).
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bridge.domain import admission as adm
from bridge.domain.frequency import Limits
from bridge.domain.ledger import grant_voucher, topup
from bridge.store.models import AcceptBatch, AppKey, IdempotencyRecord
from bridge.store.sqlite import SqliteStore
from tests.integration.test_store_rules import NOW, account, billed, message, sign

MIN = 60_000
DAY = 24 * 60 * MIN


async def _store(path: Path) -> SqliteStore:
    s = SqliteStore(path)
    await s.open()
    await s.create_account(
        account("acc_a", status_url="https://hook.example/a", threshold=1_150, daily_quota=10)
    )
    await s.create_account(account("acc_b", kind="postpaid", daily_quota=3))
    await s.create_account(account("acc_c"))
    for aid in ("acc_a", "acc_b", "acc_c"):
        await sign(s, aid=aid)
    await sign(s, "Pending", "pending", aid="acc_a")
    await s.append_ledger("acc_a", topup(2_550, NOW, "funds"))
    await s.append_ledger("acc_b", topup(300, NOW, "funds"))
    await s.append_ledger("acc_c", topup(1_000, NOW, "funds"))
    await s.append_ledger("acc_c", grant_voucher(500, NOW, "v1", NOW + DAY))
    for aid in ("acc_a", "acc_b", "acc_c"):
        await s.add_key(AppKey(f"K{aid}", aid, b"sealed", "active", NOW), max_active=2)
    return s


_n = 0


def _accept(
    aid: str,
    recipients: int = 1,
    *,
    keyed: bool = True,
    sign_name: str = "Acme",
    idem: str | None = None,
    amount: int = 200,
    to: str | None = None,
    limited: bool = False,
) -> AcceptBatch:
    global _n
    msgs = []
    for _ in range(recipients):
        _n += 1
        msgs.append(
            message(f"m{_n}", to or f"+86138{_n:08d}", account_id=aid, sign=sign_name, kind="raw")
        )
    key = idem or f"i{_n}"
    rules = replace(billed(*msgs, amount=amount), sign_name=sign_name)
    if limited:  # a frequency rule over the number: one a day
        rules = replace(
            rules,
            frequency=adm.FrequencyRule(
                "raw", sign_name, None, Limits(0, 0, 1), "UTC", (msgs[0].recipient,)
            ),
        )
    base = AcceptBatch(
        aid,
        tuple(msgs),
        key,
        IdempotencyRecord(f"hash-{key}", 202, b"{}"),
        NOW + DAY,
        rules=rules,
        account_version=NOW,
    )
    if not keyed:
        return base
    return replace(base, key_id=f"K{aid}", nonce=f"n{_n}", nonce_expires_at=NOW + 10 * MIN)


def _mix() -> list[AcceptBatch]:
    global _n
    _n = 0
    return [
        _accept("acc_a"),  # the usual send: 2,350 left
        _accept("acc_a", limited=True, to="+8613900000001"),  # a rule, no history yet
        _accept("acc_a", limited=True, to="+8613900000001"),  # its history: refused
        _accept("acc_b"),  # postpaid, domestic: nothing taken
        _accept("acc_c"),  # cash and a voucher: decide's
        _accept("acc_a", keyed=False),  # read_one: decide's
        _accept("acc_a", 2),  # read_facts: decide's
        _accept("acc_a", sign_name="Pending"),  # refused by its sign
        _accept("acc_a", idem="i1"),  # a replay of the first
        _accept("acc_a", amount=400),  # 1,150 left: at the threshold, silent
        _accept("acc_a", amount=100),  # under it: warns
        _accept("acc_b"),
        _accept("acc_b"),
        _accept("acc_b"),  # the quota's fourth: refused
        _accept("acc_a", amount=700),  # 350 left; warned already: silent
        _accept("acc_a", amount=351),  # one short: refused
        _accept("acc_a", amount=350),  # the last micro-unit
        _accept("acc_a", amount=1),  # nothing left: refused
    ]


def _answer(out: Any) -> tuple[Any, ...]:
    return (
        out.accepted,
        None if out.refusal is None else (out.refusal.code, out.refusal.message),
        None if out.existing is None else out.existing.response,
        None if out.plan is None else (out.plan.day, out.plan.entries, out.plan.low_balance),
        out.auth_refusal,
        out.retry_after,
    )


def _rows(path: Path) -> dict[str, list[Any]]:
    with closing(sqlite3.connect(path)) as db:
        return {
            t: db.execute(f"SELECT * FROM {t} ORDER BY {order}").fetchall()
            for t, order in (
                ("pockets", "1, 2"),
                ("daily_counts", "1, 2"),
                ("ledger", "id"),
                ("messages", "id"),
                ("segments", "1, 2"),
                ("nonces", "1, 2"),
                ("idempotency", "account_id, key"),
            )
        } | {
            "warned": db.execute("SELECT id, low_warned_at FROM accounts ORDER BY 1").fetchall(),
            "events": db.execute(
                "SELECT account_id, kind, payload FROM webhook_outbox ORDER BY rowid"
            ).fetchall(),
        }


async def _run(path: Path, together: bool, general: bool, mp: pytest.MonkeyPatch) -> Any:
    decided: list[Any] = []
    real = adm.decide
    with mp.context() as m:
        m.setattr(adm, "decide", lambda *a, **kw: decided.append(a[0]) or real(*a, **kw))
        if general:
            m.setattr(adm, "one_send", lambda *_a: None)
        s = await _store(path)
        try:
            if together:
                commits = s._runner.commits
                outs = await asyncio.gather(*(s.accept(b, NOW) for b in _mix()))
                assert s._runner.commits == commits + 1, "not one batch"
            else:
                outs = [await s.accept(b, NOW) for b in _mix()]
        finally:
            await s.close()
    return [_answer(o) for o in outs], _rows(path), len(decided)


@pytest.mark.parametrize("together", [True, False], ids=["one batch", "one batch each"])
async def test_the_usual_accept_decided_from_its_row_as_by_decide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, together: bool
) -> None:
    answers, rows, decides = await _run(tmp_path / "one.db", together, False, monkeypatch)
    old_answers, old_rows, old_decides = await _run(
        tmp_path / "general.db", together, True, monkeypatch
    )
    assert answers == old_answers
    assert rows == old_rows
    # The mix refuses by sign, history, quota and balance, replays and warns, or it tests less.
    codes = [a[1][0] for a in answers if a[1] is not None]
    for code in (
        "SIGN_NAME_NOT_APPROVED",
        "FREQUENCY_LIMIT_DAY",
        "DAILY_QUOTA_EXCEEDED",
        "INSUFFICIENT_BALANCE",
    ):
        assert code in codes, codes
    assert any(a[2] is not None for a in answers)  # the replay
    assert sum(1 for a in answers if a[3] is not None and a[3][2] is not None) == 1  # one warning
    # Every send with rules went through `decide` on the general code; the usual ones no more.
    assert old_decides == 17  # the replay decides nothing
    assert decides == 8, decides
