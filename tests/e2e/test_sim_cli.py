"""`smpp-bridge sim --config F` reads the simulator's own sections only.

Before, F was validated as a whole daemon configuration: a file written for the simulator alone
was refused for the master key and the SMSC the simulator never uses."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from bridge.config import ConfigError, load_config, load_sim_config
from tests.e2e.harness import free_port


def _sim(config: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "sim", "--config", str(config), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def _stats(port: int, deadline_s: float = 15.0) -> dict:
    end = time.monotonic() + deadline_s
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"http://127.0.0.1:{port}/stats") as resp:
                    assert resp.status == 200
                    # Its own process: named as the daemon's answers are, no versions.
                    assert resp.headers["Server"] == "smpp-bridge"
                    return await resp.json()
            except aiohttp.ClientConnectionError:
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(0.1)


async def test_a_file_with_only_the_sim_section_runs_the_simulator(tmp_path: Path) -> None:
    smpp, control = free_port(), free_port()
    cfg = tmp_path / "sim.yaml"
    cfg.write_text(f"sim:\n  port: {smpp}\n  control_port: {control}\n  receipt_delay_ms: 5\n")
    proc = _sim(cfg)
    try:
        stats = await _stats(control)
        assert isinstance(stats, dict)
        with socket.create_connection(("127.0.0.1", smpp), timeout=5):
            pass  # the SMPP port it was told in the file is listening
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert b"master key" not in out and b"at least one SMSC" not in out


def test_a_bad_sim_section_is_refused_with_its_path(tmp_path: Path) -> None:
    cfg = tmp_path / "sim.yaml"
    cfg.write_text("sim:\n  port: 0\n  colour: blue\n")
    proc = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "sim", "--config", str(cfg)],
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "sim.port: must be between 1 and 65535, got 0" in err
    assert "sim.colour: unknown key" in err
    assert "Traceback" not in err


def test_the_daemons_sections_are_left_to_the_daemon(tmp_path: Path) -> None:
    # A shared file (the compose set-up): an SMSC list and a key the simulator does not read,
    # even one the daemon would refuse, do not stop the simulator.
    cfg = tmp_path / "shared.yaml"
    cfg.write_text(
        "security:\n  master_key: not-a-key\n"
        "smscs: []\n"
        "sim:\n  port: 2999\n  system_id: carrier\n"
        "logging:\n  level: debug\n"
    )
    loaded = load_sim_config(cfg, env={})
    assert (loaded.sim.port, loaded.sim.system_id) == (2999, "carrier")
    assert loaded.logging.level == "DEBUG"
    with pytest.raises(ConfigError):
        load_config(cfg, env={})


def test_the_sim_password_comes_from_its_environment_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "sim.yaml"
    cfg.write_text("sim:\n  port: 2999\n")
    loaded = load_sim_config(cfg, env={"SMPP_BRIDGE_SIM_PASSWORD": "s3cretpw"})
    assert loaded.sim.password == "s3cretpw"
