"""A reload is confirmed by every acceptor process (`server.workers: 2`, a real `smpp-bridge run`
against the built-in simulator, real signals).

Before session 40 the supervisor's SIGHUP to its acceptors was fire-and-forget: an acceptor that
never applied it (its loop stuck, the signal lost) kept serving the old rules, routes and content
filter while smpp_bridge_config_last_reload_successful read 1 and `smpp-bridge status` said all
was well. Each process now publishes the configuration it runs (smpp_bridge_config_generation);
the supervisor checks the acceptors after each reload and says which one is behind."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from bridge.status import DaemonStatus, fetch, render
from tests.e2e.harness import (
    ADMIN_TOKEN,
    MASTER_KEY,
    DaemonProcess,
    config_dict,
    handles_sighup,
    wait_until,
)

CONFIRM_S = 2.0  # the supervisor's bound for the acceptors to follow a reload (10 s by default)
# The daemon's generation key, known here to name the file's text: derived from the master key
# (since session 47, so that the instances of a fleet name one file alike).
KEY = hmac.new(
    base64.b64decode(MASTER_KEY), b"smpp-bridge configuration generation", hashlib.sha256
).hexdigest()[:32]


def _named(text: str) -> str:
    """bridge.reload.generation under KEY: the first 48 bits of the text's HMAC-SHA256."""
    return hmac.new(bytes.fromhex(KEY), text.encode(), hashlib.sha256).hexdigest()[:12]


def _acceptor_pids(log: Path) -> dict[int, int]:
    pids: dict[int, int] = {}
    for m in re.finditer(r"acceptor (\d+) started \(pid (\d+)\)", log.read_text()):
        pids[int(m.group(1))] = int(m.group(2))
    return pids


async def _get(url: str, token: str | None = None) -> tuple[int, str]:
    """One GET on a new connection, given up after a second: with an acceptor stopped, the
    kernel hands some connections to it (SO_REUSEPORT); the next may land on the other one."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + 20
    while True:
        try:
            async with (
                aiohttp.ClientSession() as s,
                s.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=1)) as r,
            ):
                return r.status, await r.text()
        except (TimeoutError, aiohttp.ClientError):
            assert time.monotonic() < deadline, f"{url}: no acceptor answered"


class Scrape:
    def __init__(self, text: str) -> None:
        self.text = text

    def reload_ok(self) -> float:
        (line,) = [
            x for x in self.text.splitlines() if x.startswith("smpp_bridge_config_last_reload_")
        ]
        return float(line.split()[-1])

    def generations(self) -> dict[tuple[str, str], str]:
        """(role, slot) -> generation, as 12 hex digits (merged: no pid label)."""
        out = {}
        for m in re.finditer(r"^smpp_bridge_config_generation\{([^}]*)\} (\S+)$", self.text, re.M):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            assert "pid" not in labels, m.group(0)
            out[(labels["role"], labels.get("slot", ""))] = f"{int(float(m.group(2))):012x}"
        return out


async def _scrape(proc: DaemonProcess) -> Scrape:
    status, text = await _get(f"http://127.0.0.1:{proc.port}/metrics")
    assert status == 200, text
    return Scrape(text)


async def _queue_config(proc: DaemonProcess) -> dict[str, Any]:
    status, text = await _get(f"http://127.0.0.1:{proc.port}/admin/queue", ADMIN_TOKEN)
    assert status == 200, text
    return yaml.safe_load(text)


def _render_queue(proc: DaemonProcess, queue: dict[str, Any]) -> str:
    """`smpp-bridge status`'s rendering of one real /admin/queue answer (its full fetch makes
    three requests, each of which may meet the stopped acceptor)."""
    return render(DaemonStatus(f"http://127.0.0.1:{proc.port}", True, (), (), queue))


async def _reload(proc: DaemonProcess, cfg: dict[str, Any]) -> int:
    """Write `cfg` to the daemon's file and SIGHUP it; the log's length before, to read on."""
    before = len(proc.log.read_text())
    proc.path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    assert proc.proc is not None
    os.kill(proc.proc.pid, signal.SIGHUP)
    return before


def _since(proc: DaemonProcess, before: int) -> str:
    return proc.log.read_text()[before:]


@pytest.fixture
async def workers2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("SMPP_BRIDGE_RELOAD_CONFIRM_S", str(CONFIRM_S))
    proc = DaemonProcess(tmp_path, config_dict(tmp_path, server={"workers": 2}))
    stopped: list[int] = []
    proc.start()
    try:
        await proc.wait_ready(30)
        await wait_until(lambda: len(_acceptor_pids(proc.log)) == 2, 15)
        await wait_until(lambda: all(map(handles_sighup, _acceptor_pids(proc.log).values())), 15)
        yield proc, stopped
    finally:
        for pid in stopped:  # never leave a stopped process behind
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        proc.stop()


def _changed(cfg: dict[str, Any], tps: int) -> dict[str, Any]:
    new = yaml.safe_load(yaml.safe_dump(cfg))
    new["smscs"][0]["tps"] = tps
    return new


def _owner(gens: dict[tuple[str, str], str]) -> str:
    (gen,) = [g for (role, _), g in gens.items() if role == "owner"]
    return gen


def _acceptors(gens: dict[tuple[str, str], str]) -> dict[int, str]:
    """Acceptor slot -> generation."""
    return {int(slot): g for (role, slot), g in gens.items() if role == "acceptor"}


async def test_a_normal_reload_is_confirmed_by_every_acceptor(workers2):
    proc, _ = workers2
    pids = _acceptor_pids(proc.log)
    first = await _scrape(proc)
    gens = first.generations()
    # The file's text as the daemon read it at start, named without revealing any of it.
    want = _named(proc.path.read_text())
    assert _owner(gens) == want
    assert _acceptors(gens) == {0: want, 1: want}
    assert first.reload_ok() == 1

    before = await _reload(proc, _changed(proc.cfg, 40))
    await wait_until(lambda: "every acceptor runs configuration" in _since(proc, before), 15)
    assert "WARNING" not in _since(proc, before), _since(proc, before)
    scrape = await _scrape(proc)
    gens = scrape.generations()
    new = _owner(gens)
    assert new != want  # the copy changed with the reload ...
    assert f"every acceptor runs configuration {new}" in _since(proc, before)
    assert _acceptors(gens) == {0: new, 1: new}  # ... and both acceptors run it
    queue = await _queue_config(proc)
    assert queue["config"]["acceptors"] == [
        {"slot": slot, "pid": pid, "generation": new} for slot, pid in sorted(pids.items())
    ]
    assert scrape.reload_ok() == 1
    out = await asyncio.to_thread(render, fetch(f"http://127.0.0.1:{proc.port}", ADMIN_TOKEN))
    assert f"config: {new}; acceptors on the current configuration: 2 of 2" in out, out
    assert "REFUSED" not in out and "previous rules" not in out, out


async def test_an_acceptor_that_does_not_apply_a_reload_is_named_until_it_catches_up(workers2):
    """Stopped (SIGSTOP) across a reload, an acceptor applies nothing: the supervisor names it
    after its bound, the gauge reads 0, status says which one; once it runs again it applies
    the pending SIGHUP and all reads well again."""
    proc, stopped = workers2
    pids = _acceptor_pids(proc.log)
    victim, other = pids[1], pids[0]
    old = _named(proc.path.read_text())  # as started

    os.kill(victim, signal.SIGSTOP)
    stopped.append(victim)
    t0 = time.monotonic()
    before = await _reload(proc, _changed(proc.cfg, 30))
    named = f"(pid {victim}) runs configuration"
    await wait_until(lambda: named in _since(proc, before), CONFIRM_S + 8)
    waited = time.monotonic() - t0
    assert CONFIRM_S <= waited < CONFIRM_S + 5, waited  # the bound, not sooner
    log = _since(proc, before)
    assert f"acceptor 1 (pid {victim}) signalled again" in log, log  # once, at half-time
    assert f"acceptor 1 (pid {victim}) runs configuration {old}, not " in log, log
    assert f"(pid {other})" not in log, log

    scrape = await _scrape(proc)  # answered by the other acceptor
    gens = scrape.generations()
    new = _owner(gens)
    assert new != old
    assert _acceptors(gens) == {1: old, 0: new}
    assert scrape.reload_ok() == 0
    queue = await _queue_config(proc)
    assert queue["config"]["last_reload_ok"] is False
    assert queue["config"]["generation"] == new
    assert queue["config"]["acceptors"] == [
        {"slot": 0, "pid": other, "generation": new},
        {"slot": 1, "pid": victim, "generation": old},
    ]
    out = _render_queue(proc, queue)
    late = f"current configuration: 1 of 2 (pid {victim} (slot 1) runs {old}: it serves"
    assert late in out, out
    assert "REFUSED" not in out, out  # the file was applied; an acceptor did not follow

    before = len(proc.log.read_text())
    os.kill(victim, signal.SIGCONT)
    stopped.remove(victim)
    await wait_until(
        lambda: f"every acceptor runs configuration {new} now" in _since(proc, before), 10
    )
    scrape = await _scrape(proc)
    assert _acceptors(scrape.generations()) == {0: new, 1: new}
    assert scrape.reload_ok() == 1
    out = await asyncio.to_thread(render, fetch(f"http://127.0.0.1:{proc.port}", ADMIN_TOKEN))
    assert "acceptors on the current configuration: 2 of 2" in out, out
    assert "REFUSED" not in out and "previous rules" not in out, out
