"""Adversarial review of crash safety and durability: each test fails on the reviewed tree for
the reason its docstring gives.

Findings:

1. A statement that fails with SQLITE_FULL (or an I/O error) inside a batch makes SQLite roll the
   whole transaction back by itself (no statement journal for a one-row write), and the runner
   does not notice:
   a. a bare job (the accept, `SqliteStore.accept`, `bare=True`): `_run_jobs` runs `ROLLBACK`,
      which raises "cannot rollback - no transaction is active" (SQLITE_ERROR). That error, not
      the disk-full one, reaches every caller of the batch, and `is_unavailable` says no: the
      send is answered 500 INTERNAL_ERROR instead of 503 STORE_UNAVAILABLE with Retry-After
      (sqlite_runner.py:338-341, base.py:89-91). The batch's other jobs fail with it, though
      the docs promise a bare job's fault makes the batch run again with savepoints.
   b. a single-statement job (`single=True`: `authorize_request`, `drop_mo_parts`): the runner
      records the failure and goes on with the next jobs of the batch, now in autocommit mode.
      Each later job's SAVEPOINT/RELEASE (or bare statement) commits on its own; the final
      COMMIT then fails ("no transaction is active") and every caller is told its write
      failed, though the later jobs' writes are on disk: "one failing job does not undo the
      others" turns into "writes land behind callers told they failed" (sqlite_runner.py:342-343
      goes on; 344-352 and 293 then; 296-303 fails everyone). An accept caught there is stored,
      dispatched and charged while its client is told to retry. (A guarded job hit the same
      way fails like 1a: its `ROLLBACK TO job`, sqlite_runner.py:348, raises "no such
      savepoint", a 500, and nothing lands.)
2. After a failed fsync of the WAL the runner keeps acknowledging later commits as durable
   (`_sync_loop` logs, fails that group's callers and continues, sqlite_runner.py:438-443).
   Linux reports a writeback error once and marks the pages clean: the failed group's WAL frames
   may never reach the disk, and WAL recovery stops at the first frame that did not, so every
   later acknowledged commit is lost with them at a power cut. (PostgreSQL's answer since 2018:
   treat a failed fsync as fatal.) Power-loss class; shown in-process with a failing fsync.
3. Money added by an operator (POST /admin/accounts/{ref}/topups, vouchers, cards) has no
   idempotency: no Idempotency-Key, and the top-up's payment `ref` is not unique
   (billing.py:238 money_entries, admin_rules.py:245-253 _money, sqlite_rules.py:564
   append_ledger). A daemon killed after the commit and before its answer leaves the payment
   system to retry, and the retry credits the account a second time: a crash doubles a billing
   entry.
"""

from __future__ import annotations

import asyncio
import errno
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.store.base import is_unavailable
from bridge.store.sqlite_runner import SqliteRunner
from tests.e2e.harness import ADMIN_TOKEN, DaemonProcess, config_dict

# -- 1. SQLITE_FULL inside a batch -------------------------------------------------------------


def _setup(c: sqlite3.Connection) -> None:
    c.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v BLOB)")
    c.execute("CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, n INTEGER)")
    c.execute("INSERT OR IGNORE INTO counter (id, n) VALUES (1, 0)")


def _full_runner(path: Path) -> SqliteRunner:
    """A runner whose database may grow by two pages at most: a large write fails with
    SQLITE_FULL, as on a full disk, while an update in place still fits."""
    runner = SqliteRunner(path, linger_ms=20, max_batch=50)
    runner.start(_setup)
    assert runner._conn is not None
    pages = runner._conn.execute("PRAGMA page_count").fetchone()[0]
    runner._conn.execute(f"PRAGMA max_page_count={pages + 2}")
    return runner


def _big_insert(c: sqlite3.Connection) -> None:
    c.execute("INSERT INTO t (k, v) VALUES ('big', zeroblob(200000))")


def _bump(c: sqlite3.Connection) -> str:
    c.execute("UPDATE counter SET n=n+1 WHERE id=1")
    return "bumped"


def _counter(path: Path) -> int:
    c = sqlite3.connect(path)
    try:
        return c.execute("SELECT n FROM counter WHERE id=1").fetchone()[0]
    finally:
        c.close()


async def test_disk_full_in_a_bare_accept_job_is_a_503_not_a_500(tmp_path: Path) -> None:
    """Finding 1a. The accept runs bare; a statement of it failing with SQLITE_FULL has already
    rolled the transaction back, so the runner's own ROLLBACK fails and its "cannot rollback"
    error (SQLITE_ERROR) is what the callers get: `is_unavailable` is False and the API answers
    500 INTERNAL_ERROR where the store is merely full (503 STORE_UNAVAILABLE, retry later)."""
    db = tmp_path / "full.db"
    runner = _full_runner(db)
    try:
        accept, other = await asyncio.gather(
            runner.write(_big_insert, bare=True), runner.write(_bump), return_exceptions=True
        )
        assert isinstance(accept, sqlite3.OperationalError), accept
        assert is_unavailable(accept), f"answered 500, not 503: {accept!r}"
        # The other job of the batch: whatever it was told must be what is on disk.
        assert (other == "bumped") == (_counter(db) == 1), (other, _counter(db))
    finally:
        await runner.close()


async def test_disk_full_in_a_single_job_does_not_commit_writes_behind_failed_callers(
    tmp_path: Path,
) -> None:
    """Finding 1b. A single-statement job fails with SQLITE_FULL: SQLite rolled the batch's
    transaction back, the runner carries on with the next job in autocommit mode (its savepoint
    commits on its own), then COMMIT fails and that job's caller is told it failed: its write
    is on disk all the same. (An accept in that position is stored, sent and charged while its
    client is told to retry.)"""
    db = tmp_path / "full.db"
    runner = _full_runner(db)
    try:
        nonce, other = await asyncio.gather(
            runner.write(_big_insert, single=True), runner.write(_bump), return_exceptions=True
        )
        assert isinstance(nonce, sqlite3.OperationalError), nonce
        told_ok = other == "bumped"
        on_disk = _counter(db) == 1
        assert told_ok == on_disk, (
            f"caller told {'ok' if told_ok else repr(other)}, write on disk: {on_disk}"
        )
        assert is_unavailable(nonce), f"a full disk reported as {nonce!r}"
    finally:
        await runner.close()


# -- 2. fsync failure ------------------------------------------------------------------------------


async def test_after_a_failed_wal_fsync_later_commits_are_not_acknowledged(tmp_path: Path) -> None:
    """Finding 2. The first fsync fails (EIO: a writeback error). The kernel reports it once
    and marks the pages clean; the next fsync "succeeds" without those frames on disk, and WAL
    recovery after a power cut stops at the first missing frame, taking every later commit
    with it. So a durable write after the failure must not be acknowledged (the store must
    fail, as PostgreSQL panics): the runner acknowledges it."""
    db = tmp_path / "fsync.db"
    runner = SqliteRunner(db)
    runner.start(_setup)
    real = runner._sync_wal
    calls = 0

    def flaky_sync() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError(errno.EIO, "Input/output error")
        real()

    runner._sync_wal = flaky_sync  # type: ignore[method-assign]
    try:
        with pytest.raises(OSError):
            await runner.write(lambda c: c.execute("INSERT INTO t (k) VALUES ('a')"))
        acknowledged = True
        try:
            await runner.write(lambda c: c.execute("INSERT INTO t (k) VALUES ('b')"))
        except Exception as exc:
            acknowledged = False
            assert is_unavailable(exc), exc
        assert not acknowledged, (
            "a commit after a failed fsync was acknowledged as durable; its WAL frames follow "
            "frames that may never have reached the disk"
        )
    finally:
        runner._sync_wal = real  # type: ignore[method-assign]
        await runner.close()


# -- 3. operator money retried after a crash ------------------------------------------------------


def _cli_account(cfg_path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge.cli",
            "account",
            "create",
            "payco",
            "--raw-text",
            "--config",
            str(cfg_path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


async def _admin(
    port: int, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(
            method,
            f"http://127.0.0.1:{port}{path}",
            json=body,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as r,
    ):
        return r.status, await r.json()


async def test_topup_retried_after_a_crash_is_credited_once(tmp_path: Path) -> None:
    """Finding 3. The payment system's top-up (payment ref "pay-7781") is committed; the daemon
    is killed -9 before its answer reaches the caller (here: the answer is dropped), so the
    caller retries the same payment after the restart, as it must. The account is credited
    twice: nothing (an Idempotency-Key, a unique payment ref) lets a retry be safe."""
    cfg = config_dict(tmp_path)
    daemon = DaemonProcess(tmp_path, cfg)
    try:
        account_id = _cli_account(daemon.path)["account"]
        daemon.start()
        await daemon.wait_ready()
        _, before = await _admin(daemon.port, "GET", f"/admin/accounts/{account_id}/balance")
        topup = {"amount_micro": 5_000_000, "ref": "pay-7781"}
        status, _lost = await _admin(
            daemon.port, "POST", f"/admin/accounts/{account_id}/topups", topup
        )
        assert status == 201
        daemon.kill9()  # the answer above never reached the payment system
        daemon.start()
        await daemon.wait_ready()
        status, _ = await _admin(daemon.port, "POST", f"/admin/accounts/{account_id}/topups", topup)
        _, after = await _admin(daemon.port, "GET", f"/admin/accounts/{account_id}/balance")
        credited = after["cash_micro"] - before["cash_micro"]
        assert credited == 5_000_000, f"one payment credited {credited} (retry answered {status})"
    finally:
        daemon.stop()
