"""Operations features, reviewed as an operator running the daemon in production hits them:
SIGHUP reloads (broken, partial, per section), `--workers N` supervision (reload, crash, drain),
/readyz, /metrics cardinality and monotonicity, `smpp-bridge status` and `config check`.

The review's six defects, each pinned by a test that failed before its fix: a reload with an
unreadable content-filter file half applied and left sends unfiltered; `config check` passed such
a file; a reload did not give webhook reports the new time zone; a SIGHUP killed an acceptor
still starting; acceptors outlived a killed owner; the Alibaba face labelled metrics with any
Action a caller sent. The other tests pin behaviour checked and found right.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from bridge.app import Daemon
from bridge.client import BridgeError
from bridge.config import load_config
from tests.e2e.harness import (
    DaemonProcess,
    client_for,
    config_dict,
    create_account,
    free_port,
    handles_sighup,
    proc_stat,
    wait_until,
)

CN = "+8613800138000"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SMPP_BRIDGE_")}


async def _file_daemon(tmp_path: Path, data: dict[str, Any]) -> tuple[Daemon, Path]:
    """An in-process daemon started from a config file, so `reload_from_file` re-reads it as a
    SIGHUP does."""
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    d = Daemon(load_config(path, env={}), config_path=str(path))
    await d.start()
    await wait_until(lambda: all(c.is_up for c in d.connectors.values()), 10)
    return d, path


async def _get(port: int, path: str, **kw: Any) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientTimeout(total=5), **kw) as r,
    ):
        return r.status, await r.text()


# -- SIGHUP: a reload is all or nothing -----------------------------------------------------------


async def test_reload_with_unreadable_content_filter_keeps_the_old_filter(tmp_path):
    """A config that names a content-filter file which is missing (a typo, a deploy that has not
    copied it yet) passes validation; the reload then changes routes and SMSCs, swaps in a new
    Submitter without any filter, and only then fails on the file. The operator sees "reload
    failed" while free text the filter refused a second ago is now accepted and sent."""
    words = tmp_path / "filter.txt"
    words.write_text("forbiddenword\n")
    data = config_dict(tmp_path, rules={"content_filter_file": str(words)})
    d, path = await _file_daemon(tmp_path, data)
    try:
        creds = await create_account(d)
        async with client_for(d.http_port, creds) as c:
            with pytest.raises(BridgeError) as refused:
                await c.send(CN, text="buy forbiddenword now")
            assert refused.value.code == "CONTENT_FILTERED"

            data["rules"]["content_filter_file"] = str(tmp_path / "missing-filter.txt")
            path.write_text(yaml.safe_dump(data))
            await d.reload_from_file()

            # Nothing may have changed: the old filter still screens free text.
            with pytest.raises(BridgeError) as still:
                await c.send(CN, text="buy forbiddenword now")
            assert still.value.code == "CONTENT_FILTERED"
    finally:
        await d.stop()


def test_config_check_refuses_a_missing_content_filter_file(tmp_path):
    """`config check` (the unit's ExecStartPre) says a config with a content-filter file that does
    not exist is valid; `run` with it then dies at start-up, and a SIGHUP with it half-applies."""
    data = config_dict(tmp_path, rules={"content_filter_file": str(tmp_path / "nope.txt")})
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(data))
    p = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "config", "check", str(path)],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=30,
    )
    assert p.returncode == 1, p.stdout[-400:]
    assert "content_filter_file" in p.stderr
    assert "Traceback" not in p.stderr


async def test_reload_applies_rules_timezone_to_webhook_reports(tmp_path):
    """README: SIGHUP applies `rules` live. The webhook sender's time zone (local times in
    Alibaba-shaped status and MO reports) is copied once at start and never on reload, so after
    a reload the reports and the API disagree on the local day."""
    data = config_dict(tmp_path, rules={"timezone": "Asia/Shanghai"})
    d, path = await _file_daemon(tmp_path, data)
    try:
        data["rules"]["timezone"] = "Europe/Berlin"
        path.write_text(yaml.safe_dump(data))
        await d.reload_from_file()
        assert d.config.rules.timezone == "Europe/Berlin"
        assert d.webhooks is not None and d.webhooks.tz == "Europe/Berlin"
    finally:
        await d.stop()


# -- --workers N: the owner and its acceptor processes -------------------------------------------


def _acceptor_pids(log: Path) -> dict[int, int]:
    """slot -> pid of the acceptor last started in that slot, from the owner's log."""
    pids: dict[int, int] = {}
    for m in re.finditer(r"acceptor (\d+) started \(pid (\d+)\)", log.read_text()):
        pids[int(m.group(1))] = int(m.group(2))
    return pids


def _alive(pid: int) -> bool:
    # A zombie (exited, not yet reaped by its parent) is not serving anything.
    st = proc_stat(pid)
    return st is not None and st[1] != "Z"


def _workers_cfg(tmp_path: Path, workers: int, **extra: Any) -> dict[str, Any]:
    cfg = config_dict(tmp_path, **extra)
    cfg["server"]["workers"] = workers
    return cfg


async def test_sighup_right_after_an_acceptor_starts_does_not_kill_it(tmp_path):
    """`systemctl reload` shortly after start-up (or after the owner restarted a crashed
    acceptor): the owner forwards SIGHUP to an acceptor still importing, before it installed its
    handler, and SIGHUP's default action kills it. The API loses that process, the owner logs a
    crash and restarts it with back-off; a reload loop (config management) can keep it down."""
    proc = DaemonProcess(tmp_path, _workers_cfg(tmp_path, 1))
    proc.start()
    try:
        await wait_until(lambda: 0 in _acceptor_pids(proc.log), 15, 0.01)
        assert proc.proc is not None
        os.kill(proc.proc.pid, signal.SIGHUP)
        await proc.wait_ready(20)
        await asyncio.sleep(1.0)
        text = proc.log.read_text()
        assert "exited with" not in text, text[-2000:]
    finally:
        proc.stop()


async def test_a_killed_acceptor_is_restarted_and_reload_reaches_acceptors(tmp_path):
    """kill -9 of one acceptor: the owner notices, logs it and starts a new one in that slot;
    the port keeps answering. A SIGHUP then reaches the owner and the live acceptors, and a
    SIGTERM drains everything with exit code 0."""
    proc = DaemonProcess(tmp_path, _workers_cfg(tmp_path, 2))
    proc.start()
    try:
        await proc.wait_ready(20)
        await wait_until(lambda: len(_acceptor_pids(proc.log)) == 2, 10)
        await asyncio.sleep(1.5)  # both acceptors past start-up (see the test above)
        victim = _acceptor_pids(proc.log)[0]
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: _acceptor_pids(proc.log)[0] != victim, 10, 0.05)
        assert "acceptor 0 exited with -9; restarting in 0.5 s" in proc.log.read_text()
        await proc.wait_ready(10)  # the other acceptor answers: says nothing of the new one
        # Both acceptors past start-up: their SIGHUP handlers are installed (see the test above).
        # The restarted one took seconds to get there on a loaded machine.
        await wait_until(
            lambda: all(handles_sighup(p) for p in _acceptor_pids(proc.log).values()), 20
        )

        proc.cfg["smscs"][0]["tps"] = 77
        proc.path.write_text(yaml.safe_dump(proc.cfg))
        assert proc.proc is not None
        os.kill(proc.proc.pid, signal.SIGHUP)
        # The owner (updated ['sim']) and both acceptors (no SMSC of their own) reload.
        # At least once each: an acceptor still starting when the owner rewrote its copy
        # reloads at start for the change and again for the SIGHUP (HupGate), both benign.
        await wait_until(lambda: proc.log.read_text().count("reloaded configuration") >= 3, 10)
        assert "updated ['sim']" in proc.log.read_text()
        pids = list(_acceptor_pids(proc.log).values())
        assert all(_alive(p) for p in pids)
        assert proc.terminate(20) == 0
        assert not any(_alive(p) for p in pids)
    finally:
        proc.stop()


async def test_acceptors_exit_when_the_owner_dies(tmp_path):
    """The owner is killed (OOM killer, kill -9) outside systemd's cgroup clean-up (a container
    with a shell entrypoint, supervisord, a terminal): its acceptors are orphaned and keep
    serving the port for ever, answering 202 to sends nobody dispatches, and a restarted daemon
    shares the port (SO_REUSEPORT) with these stale processes."""
    proc = DaemonProcess(tmp_path, _workers_cfg(tmp_path, 1))
    proc.start()
    pids: list[int] = []
    started: dict[int, tuple[int, str, int] | None] = {}
    try:
        await proc.wait_ready(20)
        pids = list(_acceptor_pids(proc.log).values())
        started = {p: proc_stat(p) for p in pids}
        assert pids and all(_alive(p) for p in pids)
        proc.kill9()
        with contextlib.suppress(AssertionError):
            await wait_until(lambda: not any(_alive(p) for p in pids), 5, 0.1)
        assert not any(_alive(p) for p in pids), "acceptors outlived their owner"
    finally:
        proc.stop()
        for p in pids:
            # Only the process this test saw (the same start time): a reused pid may be another
            # test's daemon.
            seen, now = started.get(p), proc_stat(p)
            if _alive(p) and seen is not None and now is not None and now[2] == seen[2]:
                os.kill(p, signal.SIGKILL)


# -- /metrics -------------------------------------------------------------------------------------


def _sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_aliyun_face_metrics_label_is_not_the_unauthenticated_action_name(tmp_path):
    """The Alibaba-compatible port counts every answer under endpoint="aliyun <Action>", with
    the Action as the caller wrote it, before any authentication. Anyone who can reach the port
    mints a new series per request (a scanner, a typo loop): Prometheus memory and the scrape
    grow without bound."""
    ali_port = free_port()
    data = config_dict(tmp_path, aliyun={"enabled": True, "port": ali_port})
    d, _path = await _file_daemon(tmp_path, data)
    try:
        junk = [f"Probe{uuid.uuid4().hex[:12]}" for _ in range(3)]
        for action in junk:
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            status, _ = await _get(
                ali_port,
                "/",
                params={
                    "Action": action,
                    "AccessKeyId": "nobody",
                    "Signature": "x",
                    "SignatureMethod": "HMAC-SHA1",
                    "SignatureVersion": "1.0",
                    "SignatureNonce": uuid.uuid4().hex,
                    "Timestamp": now,
                    "Version": "2017-05-25",
                    "Format": "JSON",
                },
            )
            assert status >= 400
        status, body = await _get(d.http_port, "/metrics")
        assert status == 200
        leaked = [a for a in junk if a in body]
        assert not leaked, f"caller-chosen label values in /metrics: {leaked}"
    finally:
        await d.stop()


async def test_native_metrics_have_bounded_labels_and_counters_survive_a_reload(tmp_path):
    """Checked fine: numbers, message ids and unknown paths never become label values; a reload
    that reconnects the SMSC keeps every counter (nothing goes back)."""
    d, path = await _file_daemon(tmp_path, config_dict(tmp_path))
    try:
        creds = await create_account(d)
        async with client_for(d.http_port, creds) as c:
            r = await c.send(CN, text="counted")
            mid = r["messages"][0]["id"]
            await wait_until(lambda: d.connectors["sim"].snapshot()["submits"]["ok"] == 1, 10)
            await c.message(mid)
        for p in ("/v1/optouts/+8613900139000", "/nope/8613700137000", "/admin/x"):
            await _get(d.http_port, p)
        _, before = await _get(d.http_port, "/metrics")
        for needle in (mid, "13900139000", "13700137000", "13800138000", "/nope"):
            assert needle not in before
        ok_before = _sample(before, "smpp_bridge_segments_submitted_total", smsc="sim")
        req_before = _sample(before, "smpp_bridge_api_requests_total")
        assert ok_before == 1 and req_before >= 5

        data = yaml.safe_load(path.read_text())
        data["smscs"][0]["window"] = 9  # bind-defining: the connector is replaced
        path.write_text(yaml.safe_dump(data))
        old = d.connectors["sim"]
        await d.reload_from_file()
        assert d.connectors["sim"] is not old
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        _, after = await _get(d.http_port, "/metrics")
        assert _sample(after, "smpp_bridge_segments_submitted_total", smsc="sim") == ok_before
        assert _sample(after, "smpp_bridge_api_requests_total") >= req_before
        assert _sample(after, "smpp_bridge_smsc_up", smsc="sim") == 1
        assert _sample(after, "smpp_bridge_window_size", smsc="sim") == 9
    finally:
        await d.stop()


# -- a reload while messages are in flight -------------------------------------------------------


async def test_rebind_reload_in_flight_loses_and_duplicates_nothing(tmp_path):
    """Checked fine: 40 messages accepted, and while they are on the wire a reload replaces the
    SMSC's connector (window change) and lowers its TPS: every message reaches the SMSC exactly
    once and ends delivered."""
    d, path = await _file_daemon(tmp_path, config_dict(tmp_path))
    try:
        creds = await create_account(d)
        texts = [f"inflight {i}" for i in range(40)]
        async with client_for(d.http_port, creds) as c:
            mids = []
            for i, t in enumerate(texts):
                r = await c.send(f"+86139001{i:05d}", text=t)
                mids.append(r["messages"][0]["id"])
            data = yaml.safe_load(path.read_text())
            data["smscs"][0]["window"] = 3
            data["smscs"][0]["tps"] = 200
            path.write_text(yaml.safe_dump(data))
            await d.reload_from_file()
            await wait_until(lambda: len([m for m in d.sim.messages if m.text in texts]) >= 40, 15)

            async def all_final() -> bool:
                for mid in mids:
                    if (await c.message(mid))["status"] != "delivered":
                        return False
                return True

            await wait_until(all_final, 15, 0.2)
        got = sorted(m.text for m in d.sim.messages if m.text in texts)
        assert got == sorted(texts)
    finally:
        await d.stop()
