"""Concurrency review of `server.workers: N` (the owner and its acceptor processes on one SQLite
file) and of concurrent requests in one process. Each test below failed on the code it was
written against, for the reason its docstring gives:

1. Automatic monthly settlement never runs in workers mode: the owner's sweeper calls
   `Daemon._settle`, which returns at once when the process has no API context, and only the
   acceptors (which run no sweeper) have one. No prepaid refund, no postpaid invoice, ever.
2. A restarted acceptor reads the configuration file as it is *now*, not the configuration the
   daemon runs: after a reload the owner refused (invalid file: "nothing changed") an acceptor
   that crashes can never start again (the API stays down with workers: 1), and after a change
   the owner logged as "restart to apply" (server.port, store.path, ...) the new acceptor applies
   it alone: the API moves to another port (or, with store.path, into another database).
3. In workers mode an SMSC removed by a reload stays in every scrape as `smpp_bridge_smsc_up 0`
   (and binds 0) for the life of the acceptors: the gauge is "removed" from the registry, but
   its value stays in the acceptor's multi-process file, which every scrape merges. The README's
   alert (`smsc_up == 0` for a minute) then fires for ever for an SMSC nobody configures.
4. A send whose account changes again while it is validated the second time (README note 6:
   "If the account changed since the cached copy, nothing is written and the request is
   validated again") is answered 401 UNKNOWN_APP_KEY, "the app key in Credential is not known",
   for a valid key: the second "stale" outcome falls through `refusal()`'s default branch.

Checked and found right (see the review report): the same Idempotency-Key, the same nonce, the
prepaid balance, the daily quota and the account rate under 20-40 concurrent requests spread over
two acceptors; a disable or a key revocation through one acceptor refused at once by both;
/readyz and `smpp-bridge status` in workers mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from bridge.accounts import AccountService
from bridge.app import Daemon
from bridge.billing import previous_month
from bridge.client import BridgeError
from bridge.wiring import make_sealer
from tests.e2e.harness import (
    DaemonProcess,
    client_for,
    config_dict,
    create_account,
    free_port,
    handles_sighup,
    make_config,
    wait_until,
)

CN = "+8613800138000"


def _acceptor_pids(log: Path) -> dict[int, int]:
    """slot -> pid of the acceptor last started in that slot, from the owner's log."""
    pids: dict[int, int] = {}
    for m in re.finditer(r"acceptor (\d+) started \(pid (\d+)\)", log.read_text()):
        pids[int(m.group(1))] = int(m.group(2))
    return pids


async def _ready(port: int) -> bool:
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
            s.get(f"http://127.0.0.1:{port}/readyz", timeout=aiohttp.ClientTimeout(total=1)) as r,
        ):
            return r.status == 200
    except (TimeoutError, aiohttp.ClientError, OSError):
        return False


async def _scrape(port: int) -> str:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
        s.get(f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r,
    ):
        assert r.status == 200
        return await r.text()


def _workers(tmp_path: Path, n: int, **extra: Any) -> DaemonProcess:
    cfg = config_dict(tmp_path, **extra)
    cfg["server"]["workers"] = n
    return DaemonProcess(tmp_path, cfg)


# -- 1. automatic settlement ----------------------------------------------------------------------


@pytest.mark.slow
async def test_the_owner_settles_ended_months_automatically(tmp_path):
    """`smpp-bridge run` with workers builds `Daemon(role="owner")` (bridge/supervisor.py): the
    only process with a sweeper. Its settlement step needs `self.ctx` for the tariff book, and an
    owner has none, so it returns every time; the acceptors have the book but no sweeper. The
    same daemon with role "all" writes the bill at the sweeper's first round (5 s)."""
    now = datetime.now(UTC)
    month = now.month + 2
    year = now.year + (month - 1) // 12
    month = (month - 1) % 12 + 1
    # The 15th of a later month: the previous month ended more than 73 h before.
    target = datetime(year, month, 15, 12, tzinfo=UTC).timestamp()
    shift = target - time.time()
    cfg = make_config(tmp_path)
    owner = Daemon(cfg, role="owner", clock=lambda: time.time() + shift)
    await owner.start()
    try:
        assert owner.store is not None
        accounts = AccountService(owner.store, make_sealer(cfg))
        creds = await accounts.create("acme", {"raw_text": True}, int(time.time() * 1000))
        due = previous_month(int(target * 1000), cfg.rules.timezone)
        with contextlib.suppress(AssertionError):
            await wait_until(lambda: owner.store.get_bill(creds.account.id, due), 8, 0.2)
        bill = await owner.store.get_bill(creds.account.id, due)
        assert bill is not None, f"{due} was never settled by the owner's sweeper"
    finally:
        await owner.stop()


# -- 2. a restarted acceptor and the configuration file ------------------------------------------


@pytest.mark.slow
async def test_an_acceptor_restarted_after_a_refused_reload_still_starts(tmp_path):
    """The operator edits the file, SIGHUPs, and every process refuses it ("configuration
    invalid (nothing changed)"): the daemon keeps running on the old configuration. Then the
    acceptor dies (OOM killer, a crash): the owner restarts it with `--config <file>`, it reads
    the invalid file, exits 1, and is restarted with back-off for ever. With workers: 1 the API
    is down until someone fixes the file, though nothing was ever applied."""
    proc = _workers(tmp_path, 1)
    proc.start()
    try:
        await proc.wait_ready(20)
        await wait_until(lambda: 0 in _acceptor_pids(proc.log), 10)
        await asyncio.sleep(1.5)  # past start-up: its SIGHUP handler is installed
        proc.path.write_text(proc.path.read_text() + "\nbogus_section: {x: 1}\n")
        assert proc.proc is not None
        os.kill(proc.proc.pid, signal.SIGHUP)
        # The owner refuses it (the acceptors are not asked: their copy follows applied reloads).
        await wait_until(lambda: proc.log.read_text().count("reload refused") >= 1, 10)
        assert await _ready(proc.port)

        victim = _acceptor_pids(proc.log)[0]
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: _acceptor_pids(proc.log)[0] != victim, 10, 0.05)
        with contextlib.suppress(AssertionError):
            await wait_until(lambda: _ready(proc.port), 8, 0.2)
        assert await _ready(proc.port), proc.log.read_text()[-1500:]
    finally:
        proc.stop()


@pytest.mark.slow
async def test_an_acceptor_restarted_after_a_restart_only_change_serves_the_running_port(
    tmp_path,
):
    """server.port changed in the file and SIGHUP: the owner and the acceptor log "server
    changed; restart to apply" and keep the port. An acceptor restarted later applies it alone:
    the daemon's port goes dead and the API answers on a port no load balancer knows. (A changed
    store.path is worse: the new acceptor accepts into a database no owner dispatches.)"""
    proc = _workers(tmp_path, 1)
    proc.start()
    try:
        await proc.wait_ready(20)
        await wait_until(lambda: 0 in _acceptor_pids(proc.log), 10)
        await asyncio.sleep(1.5)
        new_port = free_port()
        changed = json.loads(json.dumps(proc.cfg))
        changed["server"]["port"] = new_port
        proc.path.write_text(yaml.safe_dump(changed))
        assert proc.proc is not None
        os.kill(proc.proc.pid, signal.SIGHUP)
        # The owner logs it; the acceptors' copy keeps the running server section.
        await wait_until(lambda: proc.log.read_text().count("restart to apply") >= 1, 10)

        victim = _acceptor_pids(proc.log)[0]
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: _acceptor_pids(proc.log)[0] != victim, 10, 0.05)
        with contextlib.suppress(AssertionError):
            await wait_until(lambda: _ready(proc.port), 8, 0.2)
        assert await _ready(proc.port), "the restarted acceptor left the daemon's port"
        assert not await _ready(new_port)
    finally:
        proc.stop()


# -- 3. gauges of a removed SMSC -----------------------------------------------------------------


@pytest.mark.slow
async def test_a_removed_smsc_disappears_from_a_workers_scrape(tmp_path):
    """README (Metrics): "SMSCs removed by a reload read 0 and then disappear". In workers mode
    each acceptor's `observe_smscs` sets the gone SMSC's gauges to 0 and removes the children,
    but a multi-process value lives in the acceptor's mmap file, which `remove` does not touch
    and every scrape merges: `smpp_bridge_smsc_up{smsc="b"} 0` stays for ever."""
    proc = _workers(tmp_path, 2, smscs=[{}, {"name": "b"}])  # b: a port nobody listens on
    proc.start()
    try:
        await proc.wait_ready(20)
        await wait_until(lambda: len(_acceptor_pids(proc.log)) == 2, 10)
        # Both acceptors past start-up: their SIGHUP handlers are installed (ready only says one
        # of them answers; the other may still be starting on a loaded machine).
        await wait_until(
            lambda: all(handles_sighup(p) for p in _acceptor_pids(proc.log).values()), 20
        )
        for _ in range(6):  # fresh connections: both acceptors answer some
            text = await _scrape(proc.port)
        assert 'smpp_bridge_smsc_up{smsc="b"} 0.0' in text

        proc.cfg["smscs"] = proc.cfg["smscs"][:1]
        proc.path.write_text(yaml.safe_dump(proc.cfg))
        assert proc.proc is not None
        os.kill(proc.proc.pid, signal.SIGHUP)
        # Three processes reload (30 s: a stressed machine once took more than 10, and CI in
        # session 21 more than 30: the log tail says what the processes did meanwhile).
        try:
            # At least once each: an acceptor still starting when the owner rewrote its copy
            # reloads at start for the change and again for the SIGHUP (HupGate), both benign.
            await wait_until(lambda: proc.log.read_text().count("reloaded configuration") >= 3, 30)
        except AssertionError:
            raise AssertionError(proc.log.read_text()[-4000:]) from None
        left: list[str] = []

        async def gone_from_every_scrape() -> bool:  # each process flushes once a second
            left.clear()
            for _ in range(6):
                text = await _scrape(proc.port)
                left.extend(line for line in text.splitlines() if 'smsc="b"' in line)
            return not left

        with contextlib.suppress(AssertionError):
            await wait_until(gone_from_every_scrape, 10, 0.2)
        assert not left, left
    finally:
        proc.stop()


# -- 4. an account changed twice while a send is validated ---------------------------------------


async def test_a_send_racing_two_account_updates_is_not_answered_unknown_key(start_daemon):
    """The accept transaction finds the account changed since the cached copy ("stale") and the
    handler validates once more with the settings it read. If the account changed again in the
    meantime (an operator's script making two PATCHes, as `account update` does per option in
    some tooling), the second "stale" is passed to `refusal()`, whose default is
    UNKNOWN_APP_KEY: a valid key is told it does not exist (401), which clients treat as a
    credentials failure, not as something to retry."""
    d: Daemon = await start_daemon()
    creds = await create_account(d)
    assert d.store is not None and d.ctx is not None
    store = d.store
    real_accept = store.accept
    bumps = {"left": 1}
    tick = {"ms": int(time.time() * 1000) + 10_000}

    async def accept_after_an_admin_update(batch: Any, now: int) -> Any:
        if bumps["left"] > 0:  # an operator's update commits just before this accept
            bumps["left"] -= 1
            tick["ms"] += 1
            await store.update_account(batch.account_id, {"raw_text": True}, tick["ms"])
        return await real_accept(batch, now)

    store.accept = accept_after_an_admin_update  # type: ignore[method-assign]
    try:
        async with client_for(d.http_port, creds) as c:
            c.max_retries = 0
            # One change: validated again with the fresh settings and accepted (as documented).
            r = await c.send(CN, text="one change")
            assert r["count"] == 1
            # A change before each of the two accepts of one request.
            bumps["left"] = 2
            try:
                await c.send(CN, text="two changes")
            except BridgeError as exc:
                assert (exc.status, exc.code) != (401, "UNKNOWN_APP_KEY"), exc
    finally:
        store.accept = real_accept  # type: ignore[method-assign]
