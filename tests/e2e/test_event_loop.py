"""server.event_loop: the daemon as a real process on each event loop, a message sent through it
and its receipt back; and a configuration that asks for uvloop where it cannot be imported refused
at start, by name.

The in-process tests run the daemon's code on the standard library's loop (pytest-asyncio's); every
test that starts `smpp-bridge run` as a process runs it on uvloop, the default where installed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge import cli
from bridge.client import BridgeClient
from tests.e2e.harness import DaemonProcess, config_dict, wait_until

uvloop = pytest.importorskip("uvloop")


def _loops(log: Path) -> list[tuple[str, str]]:
    """(role, event loop) of each process, as it logged its start."""
    pattern = r"smpp-bridge (\w+) (?:listening on|running the pipeline).*event loop (\w+)\)"
    return re.findall(pattern, log.read_text())


async def _delivered(proc: DaemonProcess, n: int) -> None:
    creds = await proc.account("loop")
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
        BridgeClient(f"http://127.0.0.1:{proc.port}", **creds, session=session) as c,
    ):
        ids = []
        for i in range(n):
            r = await c.send(f"+86138001382{i:02d}", text=f"loop {i} " + "x" * 200 * (i % 2))
            ids.append(r["messages"][0]["id"])

        async def done() -> list[str] | None:
            states = [(await c.message(mid))["status"] for mid in ids]
            return states if all(s not in ("queued", "sent") for s in states) else None

        assert await wait_until(done, 20, 0.05) == ["delivered"] * n


@pytest.mark.parametrize(
    ("choice", "workers", "expected"),
    [
        ("auto", 0, [("all", "uvloop")]),
        ("uvloop", 1, [("owner", "uvloop"), ("acceptor", "uvloop")]),
        ("asyncio", 1, [("owner", "asyncio"), ("acceptor", "asyncio")]),
    ],
)
async def test_the_daemon_runs_and_delivers_on_the_event_loop_configured(
    tmp_path: Path, choice: str, workers: int, expected: list[tuple[str, str]]
) -> None:
    cfg = config_dict(tmp_path, server={"event_loop": choice, "workers": workers})
    proc = DaemonProcess(tmp_path, cfg)
    proc.start()
    try:
        await proc.wait_ready(30)
        # 1-part and 2-part messages: the HTTP side (an acceptor with workers), the SMPP binds,
        # the store's lock and fsync threads handing back to the loop, the receipts.
        await _delivered(proc, 4)
        await wait_until(lambda: len(_loops(proc.log)) == len(expected), 10)
        assert sorted(_loops(proc.log)) == sorted(expected)
    finally:
        proc.stop()


def test_uvloop_asked_for_and_not_importable_is_refused_at_start(tmp_path: Path) -> None:
    """A Python without uvloop (shadowed here by a module whose import fails, as a missing one's
    does): `auto` would start on asyncio's loop; `uvloop` says what is missing and exits."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "uvloop.py").write_text("raise ImportError('no uvloop in this test')\n")
    cfg = config_dict(tmp_path, server={"event_loop": "uvloop"})
    path = tmp_path / "bridge.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    env = {**os.environ, "PYTHONPATH": f"{shadow}:{Path.cwd()}"}
    p = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert p.returncode != 0
    assert "server.event_loop is uvloop, but uvloop is not installed" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "bridge.db").exists()  # refused before the store was opened


def test_the_factory_follows_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.event_loop_factory("asyncio") is None
    assert cli.event_loop_factory("auto") is uvloop.new_event_loop
    assert cli.event_loop_factory("uvloop") is uvloop.new_event_loop
    loop: Any = cli.event_loop_factory("auto")()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert cli.event_loop_factory("auto") is None
    with pytest.raises(cli.CliError, match=r"pip install .smpp-bridge\[uvloop\]"):
        cli.event_loop_factory("uvloop")
