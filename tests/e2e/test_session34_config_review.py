"""Session 34's configuration review: SIGHUP on a real `smpp-bridge run` process (the built-in
simulator over TCP, a real SQLite file), checked against what the README's "Configuration"
section promises for each kind of key: live, reconnecting, or restart-only.

Found and fixed in session 34 (each test failed before): `reconnect_min_s`/`reconnect_max_s`
changed by SIGHUP were reported applied and never used (each bind's loop kept its first copy);
`config check` passed `server.event_loop: uvloop` where uvloop is missing, and an Alibaba port
that `run` could not bind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from bridge.client import BridgeClient, BridgeError
from bridge.status import fetch, render
from tests.e2e.harness import ADMIN_TOKEN, DaemonProcess, config_dict, wait_until

OPERATOR_TOKEN = "alice-own-token-0123456789"


async def _get(url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as s,
        s.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=5)) as r,
    ):
        return r.status, await r.json(content_type=None)


async def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(url, json=body, timeout=aiohttp.ClientTimeout(total=5)) as r,
    ):
        return r.status, await r.json(content_type=None)


async def _sim_smsc(proc: DaemonProcess) -> dict[str, Any]:
    """The simulator SMSC's entry in the daemon's GET /admin/smscs."""
    status, body = await _get(f"http://127.0.0.1:{proc.port}/admin/smscs", ADMIN_TOKEN)
    assert status == 200, body
    return next(s for s in body["smscs"] if s["name"] == "sim")


async def _sim_stats(proc: DaemonProcess) -> dict[str, Any]:
    status, body = await _get(f"http://127.0.0.1:{proc.cfg['sim']['control_port']}/stats")
    assert status == 200
    return body


async def _reload(proc: DaemonProcess, cfg: dict[str, Any], expect: str) -> str:
    """Write `cfg` to the daemon's file, SIGHUP it, and wait for the log line `expect` that the
    reload wrote (counted from now: earlier reloads wrote the same words)."""
    before = len(proc.log.read_text())
    proc.path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    assert proc.proc is not None
    os.kill(proc.proc.pid, signal.SIGHUP)
    await wait_until(lambda: expect in proc.log.read_text()[before:], 15)
    return proc.log.read_text()[before:]


@pytest.fixture
async def daemon(tmp_path: Path):
    """`await daemon(**config overrides)`: a ready `smpp-bridge run` process."""
    started: list[DaemonProcess] = []

    async def start(**overrides: Any) -> DaemonProcess:
        proc = DaemonProcess(tmp_path, config_dict(tmp_path, **overrides))
        started.append(proc)
        proc.start()
        await proc.wait_ready(30)
        return proc

    yield start
    for proc in started:
        proc.stop()


# ------------------------------------------------------------------------------------------
# Keys the README says apply live, without a reconnect
# ------------------------------------------------------------------------------------------


async def test_a_longer_reconnect_back_off_set_by_sighup_is_used_at_the_next_drop(daemon):
    """An operator whose carrier complains of bind floods raises the back-off and reloads: the
    README lists it among the SMSC keys that apply without a reconnect. The next time the SMSC
    drops the bind, the bridge must wait reconnect_min_s (about 20 s here), not the 0.2 s it
    started with."""
    # Enquire links every second, so the simulator told to drop after a PDU drops soon.
    proc = await daemon(smscs=[{"enquire_link_s": 1}])
    cfg = proc.cfg
    cfg["smscs"][0]["reconnect_min_s"] = 20
    cfg["smscs"][0]["reconnect_max_s"] = 60
    lines = await _reload(proc, cfg, "reloaded configuration")
    assert "updated ['sim']" in lines  # applied in place: the bind stayed up
    binds_before = (await _sim_stats(proc))["counters"]["binds"]
    control = f"http://127.0.0.1:{cfg['sim']['control_port']}/config"
    status, _ = await _post(control, {"drop_after_pdus": 1})
    assert status == 200
    await wait_until(
        lambda: "smpp bind lost; reconnecting" in proc.log.read_text(), 10
    )  # the carrier dropped it
    lost_at = time.monotonic()
    # Give the old back-off (0.2-1 s) several times over to show itself.
    await asyncio.sleep(5)
    binds_after = (await _sim_stats(proc))["counters"]["binds"]
    await _post(control, {"drop_after_pdus": 0})
    assert time.monotonic() - lost_at < 10  # still inside the new minimum back-off
    assert binds_after == binds_before, (
        f"rebound {binds_after - binds_before} time(s) within 5 s of the drop, "
        "with reconnect_min_s 20"
    )


async def test_an_operator_removed_by_sighup_is_refused_at_once_and_one_added_admitted(daemon):
    """admin.operators is applied by a reload (README: "an operator removed is refused at
    once"), on a real process, with the token from the file."""
    proc = await daemon(admin={"operators": [{"name": "alice", "token": OPERATOR_TOKEN}]})
    url = f"http://127.0.0.1:{proc.port}/admin/smscs"
    assert (await _get(url, OPERATOR_TOKEN))[0] == 200
    cfg = proc.cfg
    cfg["admin"] = {"operators": []}
    await _reload(proc, cfg, "reloaded configuration")
    status, body = await _get(url, OPERATOR_TOKEN)
    assert status == 401 and body["error"]["code"] == "INVALID_ADMIN_TOKEN"
    assert (await _get(url, ADMIN_TOKEN))[0] == 200  # the shared token is untouched
    cfg["admin"] = {"operators": [{"name": "bob", "token": OPERATOR_TOKEN[::-1]}]}
    await _reload(proc, cfg, "reloaded configuration")
    assert (await _get(url, OPERATOR_TOKEN[::-1]))[0] == 200


async def test_a_frequency_limit_lowered_by_sighup_refuses_the_next_send(daemon):
    """rules.frequency reloads live: with raw_text.per_day lowered to 1 (a rolling 24 hours: no
    clock window to roll over mid-test), a number that had two messages gets no third, a new
    one gets one, and the bind is not touched."""
    proc = await daemon()
    creds = await proc.account("freq")
    # No retries: the client would wait out the Retry-After of a 429 and send again.
    async with BridgeClient(f"http://127.0.0.1:{proc.port}", **creds, max_retries=0) as c:
        for i in range(2):
            await c.send("+447700900111", text=f"before the reload {i}")
        cfg = proc.cfg
        cfg["rules"] = {"frequency": {"raw_text": {"per_day": 1}}}
        lines = await _reload(proc, cfg, "reloaded configuration")
        assert "reconnected []" in lines
        with pytest.raises(BridgeError) as exc:
            await c.send("+447700900111", text="a third")
        assert exc.value.code == "FREQUENCY_LIMIT_DAY"
        await c.send("+447700900222", text="first to this number")
        with pytest.raises(BridgeError) as exc:
            await c.send("+447700900222", text="second to this number")
        assert exc.value.code == "FREQUENCY_LIMIT_DAY"
    sim = await _sim_smsc(proc)
    assert sim["reconnects"] == 0


async def test_a_tps_set_by_sighup_is_the_limit_in_force_and_the_bind_stays(daemon):
    proc = await daemon()
    binds_before = (await _sim_stats(proc))["counters"]["binds"]
    cfg = proc.cfg
    cfg["smscs"][0]["tps"] = 5
    lines = await _reload(proc, cfg, "reloaded configuration")
    assert "updated ['sim']" in lines and "reconnected []" in lines
    sim = await _sim_smsc(proc)
    assert sim["tps_limit"] == 5 and sim["up"] and sim["reconnects"] == 0
    assert (await _sim_stats(proc))["counters"]["binds"] == binds_before


# ------------------------------------------------------------------------------------------
# Keys that reconnect, restart-only sections, refused edits
# ------------------------------------------------------------------------------------------


async def test_a_window_change_reconnects_the_smsc_with_the_new_window(daemon):
    proc = await daemon()
    binds_before = (await _sim_stats(proc))["counters"]["binds"]
    cfg = proc.cfg
    cfg["smscs"][0]["window"] = 7
    lines = await _reload(proc, cfg, "reloaded configuration")
    assert "reconnected ['sim']" in lines

    async def window() -> int | None:
        sim = await _sim_smsc(proc)
        return sim["window"]["size"] if sim["up"] else None

    assert await wait_until(lambda: window(), 15) == 7
    assert (await _sim_stats(proc))["counters"]["binds"] == binds_before + 1


async def test_a_logging_level_change_is_logged_as_needing_a_restart_and_not_applied(daemon):
    proc = await daemon(logging={"level": "WARNING"})
    cfg = proc.cfg
    cfg["logging"] = {"level": "DEBUG"}
    cfg["smscs"][0]["tps"] = 77  # something live beside it, so the reload logs its outcome
    before = len(proc.log.read_text())
    proc.path.write_text(yaml.safe_dump(cfg))
    assert proc.proc is not None
    os.kill(proc.proc.pid, signal.SIGHUP)
    await wait_until(
        lambda: "logging changed; restart to apply" in proc.log.read_text()[before:], 15
    )
    await asyncio.sleep(1.5)  # enquire links, housekeeping: DEBUG lines would show by now
    after = proc.log.read_text()[before:]
    assert " DEBUG " not in after
    assert " INFO " not in after  # the level in force is still WARNING


async def test_a_refused_edit_changes_nothing_and_never_echoes_a_secret(daemon):
    """An edit that does not validate is reported with its path and rule and changes nothing;
    the report names a bad secret by its length or kind, never its text."""
    proc = await daemon()
    cfg = proc.cfg
    secret_token = "tooshort-Zq9"  # under 16 characters: refused
    secret_key = "not-a-key-Xk2Jq9Wm"  # not base64 of 32 bytes
    bad = yaml.safe_load(yaml.safe_dump(cfg))
    bad["smscs"][0]["tps"] = 55
    bad["smscs"][0]["window"] = 0
    bad["admin"] = {"operators": [{"name": "eve", "token": secret_token}]}
    bad["security"] = {"master_key": secret_key}
    lines = await _reload(proc, bad, "reload refused, configuration invalid")
    assert "smscs[0].window: must be between 1 and 1000, got 0" in lines
    assert "admin.operators[0].token: must have at least 16 characters" in lines
    assert "security.master_key: must be base64" in lines
    assert secret_token not in lines and secret_key not in lines
    assert "Traceback" not in lines
    sim = await _sim_smsc(proc)
    assert sim["up"] and sim["window"]["size"] == 50 and sim["tps_limit"] == 0


# ------------------------------------------------------------------------------------------
# `config check` (the unit's ExecStartPre) against what `run` refuses
# ------------------------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_a_file_config_check_passes_is_not_refused_by_run_for_a_taken_port(tmp_path: Path):
    cfg = config_dict(tmp_path)
    cfg["aliyun"] = {"enabled": True, "host": "localhost", "port": cfg["server"]["port"]}
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = _cli("run", "--config", str(path))  # dies at once: the port is its own
    assert run.returncode != 0
    # It used to die binding ("address already in use"); now the configuration is refused.
    assert "aliyun.port: must differ from server.port" in run.stderr
    check = _cli("config", "check", str(path))
    assert check.returncode == 1, "config check passed a file run refuses"
    assert "aliyun.port" in check.stderr


def test_config_check_refuses_event_loop_uvloop_where_run_would(tmp_path: Path):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "uvloop.py").write_text("raise ImportError('no uvloop in this test')\n")
    env = {"PYTHONPATH": f"{shadow}:{Path.cwd()}"}
    cfg = config_dict(tmp_path, server={"event_loop": "uvloop"})
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = _cli("run", "--config", str(path), env=env)
    assert run.returncode != 0 and "uvloop is not installed" in run.stderr
    check = _cli("config", "check", str(path), env=env)
    assert check.returncode == 1, "config check passed a file run refuses"
    assert "server.event_loop" in check.stderr


async def _reload_gauge(proc: DaemonProcess) -> float:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{proc.port}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r,
    ):
        text = await r.text()
    (line,) = [x for x in text.splitlines() if x.startswith("smpp_bridge_config_last_reload_")]
    return float(line.split()[-1])


@pytest.mark.parametrize("workers", [0, 1])
async def test_a_refused_reload_shows_in_the_metrics_until_one_is_applied(daemon, workers):
    """A SIGHUP whose file is refused left no trace but a log line: the daemon runs its old
    configuration and a restart would refuse the file. The gauge says so (with acceptor
    processes, whichever process answers the scrape) until a good file is applied."""
    proc = await daemon(server={"workers": workers})
    assert await _reload_gauge(proc) == 1
    bad = yaml.safe_load(yaml.safe_dump(proc.cfg))
    bad["smscs"][0]["window"] = 0
    await _reload(proc, bad, "reload refused, configuration invalid")
    for _ in range(3 if workers else 1):  # acceptors answer in turn
        await asyncio.sleep(1.1 if workers else 0)  # their metric files are written each second
        assert await _reload_gauge(proc) == 0
        # ... and `smpp-bridge status` (session 35: the metrics and the log only before).
        out = await asyncio.to_thread(render, fetch(f"http://127.0.0.1:{proc.port}", ADMIN_TOKEN))
        assert "SIGHUP's file was REFUSED" in out, out
    good = yaml.safe_load(yaml.safe_dump(proc.cfg))
    good["smscs"][0]["tps"] = 50
    await _reload(proc, good, "reload")
    deadline = time.monotonic() + 10
    while await _reload_gauge(proc) != 1:
        assert time.monotonic() < deadline, "the gauge stayed 0 after a good reload"
        await asyncio.sleep(0.2)
    out = await asyncio.to_thread(render, fetch(f"http://127.0.0.1:{proc.port}", ADMIN_TOKEN))
    assert "REFUSED" not in out, out
