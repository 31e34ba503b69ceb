"""An app key's last use, written by the daemon's own flushes: in-process daemons on each store
engine (real SQLite file, real PostgreSQL), and `smpp-bridge run` with `server.workers: 2`, whose
acceptors serve every request and each flush their own uses, read back with `smpp-bridge key
list` as an operator would."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.api import key_use
from bridge.app import Daemon
from bridge.client import BridgeClient
from tests.e2e.harness import (
    DaemonProcess,
    client_for,
    config_dict,
    create_account,
    make_config,
    wait_until,
)


@pytest.fixture(params=["sqlite", "postgres"])
def store_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "sqlite":
        return {}
    return {"store": {"engine": "postgres", "dsn": request.getfixturevalue("pg_dsn")}}


async def _used(d: Daemon, account_id: str) -> dict[str, int | None]:
    assert d.store is not None
    return {k.key_id: k.last_used_at for k in await d.store.list_keys(account_id)}


async def test_the_daemon_flushes_a_keys_use_and_no_other(
    tmp_path: Path, store_overrides: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(key_use, "FLUSH_S", 0.2)
    d = Daemon(make_config(tmp_path, **store_overrides))
    await d.start()
    try:
        assert d.ctx is not None
        creds = await create_account(d)
        _, other, _ = await d.ctx.accounts.create_key(creds["account"], int(time.time() * 1000))
        before = int(time.time() * 1000)
        async with client_for(d.http_port, creds) as client:
            await client.account()
        after = int(time.time() * 1000)

        async def flushed() -> dict[str, int | None] | None:
            used = await _used(d, creds["account"])
            return used if used[creds["app_key"]] is not None else None

        used = await wait_until(flushed, 5, 0.05)
        assert before <= (used[creds["app_key"]] or 0) <= after
        assert used[other] is None
    finally:
        await d.stop()


async def test_a_clean_stop_flushes(
    tmp_path: Path, store_overrides: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request, then an immediate stop: no periodic flush ran, the stop's wrote it."""
    monkeypatch.setattr(key_use, "FLUSH_S", 3600.0)
    d = Daemon(make_config(tmp_path, **store_overrides))
    await d.start()
    stopped = False
    try:
        creds = await create_account(d)
        async with client_for(d.http_port, creds) as client:
            await client.account()
        assert (await _used(d, creds["account"]))[creds["app_key"]] is None
        await d.stop()
        stopped = True
    finally:
        if not stopped:
            await d.stop()
    again = Daemon(make_config(tmp_path, **store_overrides))
    await again.start()
    try:
        assert (await _used(again, creds["account"]))[creds["app_key"]] is not None
    finally:
        await again.stop()


def _key_list(proc: DaemonProcess, account: str) -> dict[str, int | None]:
    out = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "key", "list", account, "--config", str(proc.path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return {k["app_key"]: k["last_used_at"] for k in json.loads(out.stdout)}


async def _requests(proc: DaemonProcess, creds: dict[str, str], n: int) -> int:
    """`n` requests, each on a connection of its own (the kernel spreads them over the
    acceptors); the time just before the last one was sent, in ms."""
    last = 0
    for _ in range(n):
        last = int(time.time() * 1000)
        async with BridgeClient(
            f"http://127.0.0.1:{proc.port}", creds["app_key"], creds["app_secret"]
        ) as client:
            await client.account()
    return last


async def test_workers_acceptors_flush_what_they_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request of a workers daemon is served by an acceptor; each flushes its own map,
    and the key's time reaches the last request's, whichever acceptor served it."""
    monkeypatch.setenv("SMPP_BRIDGE_KEY_USE_FLUSH_S", "0.3")
    proc = DaemonProcess(tmp_path, config_dict(tmp_path, server={"workers": 2}))
    proc.start()
    try:
        await proc.wait_ready(30)
        creds = await proc.account("acme")
        assert _key_list(proc, "acme") == {creds["app_key"]: None}
        last = await _requests(proc, creds, 12)
        await wait_until(lambda: (_key_list(proc, "acme")[creds["app_key"]] or 0) >= last, 10, 0.2)
        first = _key_list(proc, "acme")[creds["app_key"]]
        await asyncio.sleep(1.0)  # both acceptors flushed again (nothing new): no move back
        assert _key_list(proc, "acme")[creds["app_key"]] == first
    finally:
        proc.stop()


async def test_workers_a_clean_stop_flushes_the_acceptors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMPP_BRIDGE_KEY_USE_FLUSH_S", "3600")
    proc = DaemonProcess(tmp_path, config_dict(tmp_path, server={"workers": 2}))
    proc.start()
    try:
        await proc.wait_ready(30)
        creds = await proc.account("acme")
        last = await _requests(proc, creds, 4)
        assert _key_list(proc, "acme") == {creds["app_key"]: None}
        assert proc.terminate() == 0, proc.log.read_text()[-3000:]
        assert (_key_list(proc, "acme")[creds["app_key"]] or 0) >= last
    finally:
        proc.stop()
