"""`smpp-bridge db after-restore`: a store restored from a backup does not send again what the
backup still had waiting (most of it went out between the backup and the restore). On every
engine (CI=1 needs PostgreSQL), then the command as a real process on a real SQLite file."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

import tests.store_engines as engines
from bridge.store.base import Store, StoreInUseError
from bridge.store.models import Release
from tests.integration.test_audit_trail import _cli
from tests.integration.test_store import (
    DAY,
    MIN,
    NOW,
    accept,
    claim_all,
    get,
    message,
    rcpt,
    sent,
)

engine = engines.engine
store = engines.store


async def _backup_state(store: Store, later: int = NOW + DAY) -> None:
    """What a backup taken under traffic holds: one message due and never sent, one scheduled
    for tomorrow, one long message on a bind with its first part accepted by the SMSC, one
    finished."""
    await accept(
        store,
        message("done"),
        message("inflight", parts=2, at=NOW + 1),
        message("due", at=NOW + 2),
        message("later", at=NOW + 3, scheduled_at=later),
    )
    assert {w.id for w in await claim_all(store, NOW + 3)} == {"done", "inflight", "due"}
    await store.record_submits(
        [sent("done"), sent("inflight", 1)],
        [Release("done", NOW), Release("due", NOW)],  # "due" back in the queue (a throttle)
        NOW,
    )
    await store.apply_receipts([rcpt("smscA", "done-1")], NOW + 4)


async def _parts(store: Store, mid: str) -> list[tuple[str, str | None]]:
    return [(s.state, s.error_code) for s in (await get(store, mid)).segment_rows]


async def test_what_the_backup_had_to_send_ends_unknown(store: Store) -> None:
    await _backup_state(store)
    at = NOW + 10 * MIN
    dry = await store.after_restore(at, dry_run=True)
    assert dry == {"ended_unknown": 2, "scheduled_kept": 1}
    assert (await get(store, "due")).state == "queued"  # a dry run counts only

    assert await store.after_restore(at) == {"ended_unknown": 2, "scheduled_kept": 1}
    due = await get(store, "due")
    assert (due.state, due.error_code) == ("unknown", "RESTORED_FROM_BACKUP")
    # Whether and when it went out is unknown: no sent time (it read the command's moment).
    assert due.sent_at is None and due.done_at == at
    assert await _parts(store, "due") == [("timeout", "RESTORED_FROM_BACKUP")]
    # The part the SMSC took keeps waiting for its receipt; the other is not sent again.
    assert await _parts(store, "inflight") == [
        ("sent", None),
        ("timeout", "RESTORED_FROM_BACKUP"),
    ]
    assert await claim_all(store, at) == []  # nothing left to send now
    assert await store.queue_depth() == 1  # "later"
    await store.apply_receipts([rcpt("smscA", "inflight-1")], at + 1)
    inflight = await get(store, "inflight")
    assert (inflight.state, inflight.error_code) == ("unknown", "RESTORED_FROM_BACKUP")
    done = await get(store, "done")
    assert (done.state, done.error_code) == ("delivered", None)
    # Scheduled after the restore: it could not have gone out, so it still does.
    assert [w.id for w in await claim_all(store, NOW + DAY)] == ["later"]
    assert (await store.after_restore(NOW + DAY))["ended_unknown"] == 1  # claimed: on a bind


async def test_a_second_run_changes_nothing(store: Store) -> None:
    await _backup_state(store)
    assert (await store.after_restore(NOW + MIN))["ended_unknown"] == 2
    assert await store.after_restore(NOW + 2 * MIN) == {"ended_unknown": 0, "scheduled_kept": 1}


async def test_refused_while_a_daemon_runs_on_the_store(
    engine: engines.EngineHandle, store: Store
) -> None:
    await _backup_state(store)
    if engine.name == "sqlite":
        daemon = engine.new_store()
        await daemon.open()
        await daemon.recover("inst-1", NOW, frozenset())  # takes the owner lock, as `run` does
        try:
            with pytest.raises(StoreInUseError):
                await store.after_restore(NOW + MIN)
        finally:
            await daemon.close()
    else:
        import asyncpg

        from bridge.store import postgres_pipeline as pipe

        live = await asyncpg.connect(engine.location)
        try:  # the lock a running instance holds (postgres_coord)
            await live.execute("SELECT pg_advisory_lock($1, hashtext('inst-x'))", pipe.NS_INSTANCE)
            with pytest.raises(StoreInUseError, match="stop every instance"):
                await store.after_restore(NOW + MIN)
        finally:
            await live.close()
    assert (await get(store, "due")).state == "queued"  # nothing was ended
    assert (await store.after_restore(NOW + MIN))["ended_unknown"] == 2  # once it stopped


# -- the command ----------------------------------------------------------------------------------


def _chown_alone(path: Path, owner: tuple[int, int]) -> None:
    """The store file alone (its lock files and WAL removed), owned by `owner`."""
    for leftover in path.parent.glob(path.name + "?*"):
        leftover.unlink()
    os.chown(path, *owner)


def _owners_beside(path: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for suffix in (".owner", ".writelock", "-wal", "-shm"):
        beside = Path(f"{path}{suffix}")
        if beside.exists():
            out[suffix] = (beside.stat().st_uid, beside.stat().st_gid)
    return out


async def test_the_command_on_a_restored_sqlite_file(tmp_path: Path) -> None:
    from bridge.store.sqlite import SqliteStore

    path = tmp_path / "restored.db"
    s = SqliteStore(path)
    await s.open()
    try:
        await _backup_state(s, later=4_000_000_000_000)  # after the command's clock
    finally:
        await s.close()
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "store": {"engine": "sqlite", "path": str(path)},
                "security": {"master_key": base64.b64encode(os.urandom(32)).decode()},
                "smscs": [{"name": "main", "system_id": "bridge"}],
                "logging": {"level": "WARNING"},
            }
        )
    )
    # Restored as the README says (chown to the daemon's user), the command then run as root:
    # the lock files it makes beside the store are the store owner's, or the daemon's user
    # could not open them at its start.
    as_root = os.geteuid() == 0
    if as_root:
        _chown_alone(path, (54321, 54322))
    dry = _cli(cfg, "db", "after-restore", "--dry-run")
    if as_root:
        owners = _owners_beside(path)
        assert {".owner", ".writelock"} <= set(owners), owners
        assert set(owners.values()) == {(54321, 54322)}, owners
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout) == {"ended_unknown": 2, "scheduled_kept": 1, "dry_run": True}
    done = _cli(cfg, "db", "after-restore")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ended_unknown"] == 2
    trail: list[dict[str, Any]] = json.loads(_cli(cfg, "audit", "list").stdout)
    assert [(e["action"], e["status"]) for e in trail] == [("cli db after-restore", 0)]

    s = SqliteStore(path)  # a daemon on the store: the command is refused, nothing ended
    await s.open()
    try:
        await s.recover("inst-1", NOW, frozenset())
        refused = _cli(cfg, "db", "after-restore")
    finally:
        await s.close()
    assert refused.returncode == 1 and "STORE_IN_USE" in refused.stderr, refused.stderr
