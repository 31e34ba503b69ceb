"""Session 33: review of `smpp-bridge run --workers N` (owner + acceptor processes) under live
reconfiguration (SIGHUP), as an operator meets it. Real processes (`python -m bridge.cli run`
with `server.workers`), the built-in simulator over TCP on 127.0.0.1, a real SQLite file.

Findings (each test failed on the code as reviewed; all four fixed in session 33: a reload builds
its connectors before it stops any, and config validation loads tls_ca_file; SMSCs a reload
removes stay listed as `removing`, and an empty status with SMSCs configured is not ready; the
acceptors' copy is the text the owner applied; an owner silent for 5 s makes its SMSCs
`unknown`, not down):

1. test_a_reload_failing_half_way_keeps_the_running_smsc: a reload whose new SMSC settings
   cannot be built (tls: true with a tls_ca_file that does not exist, which config validation
   never checks) fails *after* Daemon.reload popped and stopped the running connector
   (bridge/app.py reload: stop loop, then `self._connector()` raises in make_ssl_context). The
   SMSC leaves the status, so the acceptors answer /readyz 200 with `smscs: {}` and accept sends
   nothing dispatches; self.config is still the old one, so reverting the file and SIGHUP plans
   nothing and the SMSC stays unbound until a restart.
2. test_replacing_an_smsc_never_reads_ready_with_nothing_bound: the just-landed fix keeps a
   *rebinding* SMSC listed; an SMSC *removed* while another is *added* (a rename, swapping
   carriers) is not: while the removed connector drains, the owner publishes `{}` and the
   acceptors answer /readyz 200 with no SMSC (bridge/api/app.py ready_problems only says "no SMSC
   bound" for a non-empty status), `/admin/smscs` lists nothing.
3. test_an_edit_during_a_draining_reload_does_not_reach_the_acceptors_copy: two SIGHUPs in
   quick succession, the second for an invalid edit saved while the first (a rebind draining
   its window) still ran: Supervisor._reload_all re-reads the *file* after the owner applied
   the first (bridge/supervisor.py _follow_reload), so the invalid text becomes the acceptors'
   configuration copy; the acceptors refuse it (they keep the old config while the owner runs
   the new one) and every later acceptor restart exits 1 for ever (the API is down, workers: 1).
4. test_a_stale_owner_heartbeat_is_not_reported_as_no_smsc_bound: while the owner cannot write
   its heartbeat (the SQLite write lock held 6.5 s) an acceptor, 5 s on, invents every
   configured SMSC as `{up: false}` (bridge/app.py _read_owner_status): /readyz says "no SMSC
   bound", status shows binds 0/0, smsc_up reads 0, while the carrier bind never dropped.

Checked and found right (the passing test and the exploration behind this file): in workers
mode a rebind reads down/503 through the heartbeat, never 200 with nothing listed, then up; a
SIGTERM during a rebind reload waits for it, the acceptors ignore the SIGHUP forwarded after it,
exit 0 well within the grace with no acceptor left and every accepted message delivered; a
renamed SMSC's in-flight message is delivered; the owner's refusal of an invalid file is logged
and the acceptors keep serving (test_session14_review3 and test_workers_review cover the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.e2e.harness import (
    ADMIN_TOKEN,
    DaemonProcess,
    client_for,
    config_dict,
    handles_sighup,
    proc_stat,
    wait_until,
)
from tests.e2e.test_store_ops_review import _create_account

CN = "+8613800138000"


def _workers(tmp_path: Path, n: int, **extra: Any) -> DaemonProcess:
    cfg = config_dict(tmp_path, **extra)
    cfg["server"]["workers"] = n
    return DaemonProcess(tmp_path, cfg)


def _acceptor_pids(log: Path) -> dict[int, int]:
    """slot -> pid of the acceptor last started in that slot, from the owner's log."""
    pids: dict[int, int] = {}
    for m in re.finditer(r"acceptor (\d+) started \(pid (\d+)\)", log.read_text()):
        pids[int(m.group(1))] = int(m.group(2))
    return pids


async def _get(port: int, path: str, admin: bool = False) -> tuple[int, Any]:
    """One GET on a fresh connection (so each acceptor answers some)."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if admin else {}
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
            s.get(
                f"http://127.0.0.1:{port}{path}",
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=3),
            ) as r,
        ):
            return r.status, await r.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return 0, repr(exc)


async def _ready(port: int) -> bool:
    return (await _get(port, "/readyz"))[0] == 200


async def _start(proc: DaemonProcess, slots: int) -> None:
    proc.start()
    await proc.wait_ready(30)
    await wait_until(lambda: len(_acceptor_pids(proc.log)) == slots, 20)
    # Every acceptor past start-up: a SIGHUP forwarded to it is applied.
    await wait_until(lambda: all(handles_sighup(p) for p in _acceptor_pids(proc.log).values()), 30)


def _hup(proc: DaemonProcess) -> None:
    assert proc.proc is not None
    os.kill(proc.proc.pid, signal.SIGHUP)


def _tail(proc: DaemonProcess, n: int = 4000) -> str:
    return proc.log.read_text()[-n:]


def _write(proc: DaemonProcess, cfg: dict[str, Any]) -> None:
    proc.path.write_text(yaml.safe_dump(cfg))


def _copy(cfg: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(cfg))


async def _in_flight(proc: DaemonProcess) -> bool:
    """A submit of the first SMSC awaits its resp (seen through an acceptor)."""
    code, body = await _get(proc.port, "/admin/smscs", admin=True)
    return code == 200 and any(m["window"]["in_use"] > 0 for m in body["smscs"])


async def _delivered(client: Any, mid: str, timeout: float = 20) -> None:
    async def done() -> bool:
        return (await client.message(mid))["status"] == "delivered"

    await wait_until(done, timeout, 0.2)


# -- 1. a reload that fails half way ------------------------------------------------------------


async def test_a_reload_failing_half_way_keeps_the_running_smsc(tmp_path):
    """The operator turns on TLS for the carrier and mistypes the CA path. `config check` and
    the reload's load_config accept it (tls_ca_file is never checked); Daemon.reload pops and
    stops the SMSC's connector, then `_connector()` raises FileNotFoundError building the SSL
    context: "reload failed", self.config stays the old one, but the connector is gone. The
    owner publishes an empty status, so every acceptor answers /readyz 200 with `smscs: {}`
    and a send 202 that nothing will ever send. Reverting the file and SIGHUP plans nothing
    (old config == file), so the SMSC is not bound again until a restart (a corrected TLS file
    plans a rebind whose `connectors.pop` raises KeyError: "reload failed" for ever)."""
    proc = _workers(tmp_path, 1)
    creds = _create_account(proc.path)
    try:
        await _start(proc, 1)
        original = _copy(proc.cfg)
        typo = _copy(proc.cfg)
        typo["smscs"][0].update(tls=True, tls_ca_file=str(tmp_path / "carrier-ca.pem"))
        _write(proc, typo)
        _hup(proc)
        # Refused by validation now (the CA file does not load); a reload that fails for a
        # reason validation cannot see changes nothing either (test_reload_status.py).
        await wait_until(lambda: "reload refused" in proc.log.read_text(), 15)
        assert "tls_ca_file" in proc.log.read_text()
        await asyncio.sleep(2.5)  # the owner's next heartbeats (one a second)

        # A reload that failed changed nothing: the carrier link is still there (/readyz reads
        # the owner's status afresh).
        ready = await _get(proc.port, "/readyz")
        assert ready == (
            200,
            {"status": "ready", "problems": [], "warnings": [], "smscs": {"sim": True}},
        ), ready
        # The operator reverts the file and reloads: the SMSC is bound and sends go out.
        _write(proc, original)
        _hup(proc)
        await wait_until(lambda: proc.log.read_text().count("reloaded configuration") >= 2, 15)

        async def sim_up() -> bool:
            code, body = await _get(proc.port, "/readyz")
            return code == 200 and body["smscs"] == {"sim": True}

        with contextlib.suppress(AssertionError):
            await wait_until(sim_up, 10, 0.2)
        assert await sim_up(), (await _get(proc.port, "/readyz"), _tail(proc))
        async with client_for(proc.port, creds) as client:
            sent = await client.send(CN, text="after the fix")
            await _delivered(client, sent["messages"][0]["id"])
    finally:
        proc.stop()


# -- 2. an SMSC replaced by a reload ------------------------------------------------------------


async def test_replacing_an_smsc_never_reads_ready_with_nothing_bound(tmp_path):
    """Renaming an SMSC (or swapping carrier A for B in one edit) plans remove + add. Daemon.
    reload pops the removed connector and awaits its stop (its window drains, up to the
    shutdown grace) before it builds the added one; meanwhile `smsc_status()` is `{}` (only a
    *rebind* is kept listed, in `_reconnecting`). The heartbeat writes `{}`; the acceptors'
    `ready_problems` adds "no SMSC bound" only when the status is non-empty, so /readyz answers
    200 with nothing bound and `smpp-bridge status` prints "(no SMSC configured)". The
    message in flight is delivered (checked)."""
    proc = _workers(tmp_path, 1, sim={"answer_delay_ms": 2500}, server={"shutdown_grace_s": 4})
    creds = _create_account(proc.path)
    try:
        await _start(proc, 1)
        async with client_for(proc.port, creds) as client:
            sent = await client.send(CN, text="in flight across the swap")
            await wait_until(lambda: _in_flight(proc), 10, 0.05)
            swapped = _copy(proc.cfg)
            swapped["smscs"][0]["name"] = "carrier2"  # the same SMSC under a new name
            _write(proc, swapped)
            _hup(proc)
            empty_ready: list[tuple[float, Any]] = []
            listed_none: list[float] = []
            t0 = time.monotonic()
            while time.monotonic() - t0 < 5:
                code, body = await _get(proc.port, "/readyz")
                if code == 200 and not body["smscs"]:
                    empty_ready.append((round(time.monotonic() - t0, 2), body))
                code, body = await _get(proc.port, "/admin/smscs", admin=True)
                if code == 200 and not body["smscs"]:
                    listed_none.append(round(time.monotonic() - t0, 2))
                await asyncio.sleep(0.05)
            await _delivered(client, sent["messages"][0]["id"])
        ready = await _get(proc.port, "/readyz")
        assert ready[0] == 200 and ready[1]["smscs"] == {"carrier2": True}, ready
        assert not empty_ready, f"/readyz 200 with no SMSC: {empty_ready[:2]} ..."
        assert not listed_none, f"/admin/smscs empty at {listed_none[:5]} s"
    finally:
        proc.stop()


# -- 3. the acceptors' copy re-reads the file after the owner applied it -------------------------


@pytest.mark.slow
async def test_an_edit_during_a_draining_reload_does_not_reach_the_acceptors_copy(tmp_path):
    """Two SIGHUPs in quick succession: the first applies v2 (a window change: a rebind that
    drains the window, seconds under a slow carrier); while it runs the operator saves v3 with
    a typo and SIGHUPs again. Supervisor._reload_all awaits the owner's reload of v2 and only
    then `_follow_reload()` reads the file again: v3, unvalidated, becomes the acceptors' copy.
    The acceptors refuse it (they keep v1 while the owner runs v2), the owner refuses v3, and
    the copy stays invalid: the next acceptor restart (a crash, the OOM killer) fails for ever
    -- finding 2 of test_workers_review, back through a race."""
    proc = _workers(tmp_path, 1, sim={"answer_delay_ms": 2500}, server={"shutdown_grace_s": 4})
    creds = _create_account(proc.path)
    try:
        await _start(proc, 1)
        async with client_for(proc.port, creds) as client:
            await client.send(CN, text="in flight across the reload")
        await wait_until(lambda: _in_flight(proc), 10, 0.05)
        v2 = _copy(proc.cfg)
        v2["smscs"][0]["window"] = 20
        _write(proc, v2)
        _hup(proc)
        await asyncio.sleep(0.7)  # the owner drains the window of its rebind
        v3 = _copy(v2)
        v3["smscs"][0]["windw"] = 30  # a typo
        _write(proc, v3)
        _hup(proc)
        await wait_until(lambda: "reloaded configuration" in proc.log.read_text(), 15)
        await wait_until(lambda: "reload refused" in proc.log.read_text(), 15)
        await asyncio.sleep(1)

        victim = _acceptor_pids(proc.log)[0]
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: _acceptor_pids(proc.log)[0] != victim, 10, 0.05)
        with contextlib.suppress(AssertionError):
            await wait_until(lambda: _ready(proc.port), 10, 0.2)
        assert await _ready(proc.port), _tail(proc, 1500)
    finally:
        proc.stop()


# -- 4. what an acceptor says while the owner cannot write its heartbeat -------------------------


async def test_a_stale_owner_heartbeat_is_not_reported_as_no_smsc_bound(tmp_path):
    """Something holds the SQLite write lock for 7 s (a long write by another tool, a stalled
    disk): the owner's heartbeat waits, its binds stay up. `_read_owner_status` finds no owner
    row newer than 5 s and substitutes `{name: {"up": False}}` for every configured SMSC, so
    /readyz says "no SMSC bound", `smpp-bridge status` shows the SMSC NO with binds 0/0 and
    window 0/0, and `smpp_bridge_smsc_up` reads 0 (the README's alert fires for the carrier
    link): the operator is sent to the carrier while the problem is the store or the owner.
    Not ready is right; the reason and the bind figures are made up."""
    proc = _workers(tmp_path, 1)
    try:
        await _start(proc, 1)
        assert (await _get(proc.port, "/readyz"))[0] == 200
        lock = sqlite3.connect(tmp_path / "bridge.db", isolation_level=None, timeout=10)
        lock.execute("BEGIN IMMEDIATE")
        try:
            await asyncio.sleep(6.5)
            code, ready = await _get(proc.port, "/readyz")
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        # The owner's bind never dropped.
        assert "connector stopped" not in proc.log.read_text()
        assert "bind lost" not in proc.log.read_text()
        assert code == 503, ready
        assert "no SMSC bound" not in ready["problems"], ready
        assert ready["smscs"] != {"sim": False}, ready
    finally:
        proc.stop()


# -- checked and found right ---------------------------------------------------------------------


@pytest.mark.slow
async def test_workers_rebind_reads_down_then_up_and_sigterm_mid_reload_loses_nothing(tmp_path):
    """Workers mode, through the owner's heartbeat: while a rebind drains, both acceptors list
    the SMSC down and /readyz answers 503 (never 200 with nothing listed), then up and 200. A
    SIGTERM in the middle of a second rebind: the reload finishes first, the acceptors ignore
    the SIGHUP forwarded after it ("reload ignored: shutting down"), the daemon exits 0 within
    the grace, no acceptor is left, and every accepted message was delivered."""
    proc = _workers(tmp_path, 2, sim={"answer_delay_ms": 2000}, server={"shutdown_grace_s": 4})
    creds = _create_account(proc.path)
    try:
        await _start(proc, 2)
        pids = list(_acceptor_pids(proc.log).values())
        async with client_for(proc.port, creds) as client:
            first = await client.send(CN, text="in flight across the rebind")
        await wait_until(lambda: _in_flight(proc), 10, 0.05)
        v2 = _copy(proc.cfg)
        v2["smscs"][0]["window"] = 20
        _write(proc, v2)
        _hup(proc)
        seen: list[tuple[int, Any, Any]] = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.5:
            code, ready = await _get(proc.port, "/readyz")
            _, smscs = await _get(proc.port, "/admin/smscs", admin=True)
            seen.append((code, ready, smscs))
            await asyncio.sleep(0.05)
        assert all(r[1]["smscs"] for r in seen), [r for r in seen if not r[1]["smscs"]][:2]
        assert all(r[0] == 503 or r[1]["smscs"] == {"sim": True} for r in seen)
        down = [r for r in seen if r[1]["smscs"] == {"sim": False}]
        assert down, "no answer while the old connector drained"
        assert all(r[0] == 503 and "no SMSC bound" in r[1]["problems"] for r in down)
        assert all([m["name"] for m in r[2]["smscs"]] == ["sim"] for r in seen)
        await wait_until(lambda: proc.log.read_text().count("reloaded configuration") >= 3, 15)
        await wait_until(lambda: _ready(proc.port), 10, 0.1)

        async with client_for(proc.port, creds) as client:
            await _delivered(client, first["messages"][0]["id"])
            more = [await client.send(CN, text=f"before the stop {i}") for i in range(3)]
        await wait_until(lambda: _in_flight(proc), 10, 0.05)
        v3 = _copy(v2)
        v3["smscs"][0]["window"] = 30
        _write(proc, v3)
        _hup(proc)
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        rc = await asyncio.to_thread(proc.terminate, 30)
        took = time.monotonic() - t0
        assert rc == 0, _tail(proc)
        assert took < 4 + 5, took
        assert not [p for p in pids if proc_stat(p) is not None]
        assert proc.log.read_text().count("reload ignored: shutting down") == 2, _tail(proc)
        with sqlite3.connect(tmp_path / "bridge.db") as db:
            states = dict(db.execute("SELECT state, count(*) FROM segments GROUP BY state"))
        assert states == {"delivered": 1 + len(more)}, states
    finally:
        proc.stop()
