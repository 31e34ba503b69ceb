"""Session 44: a new operator's first day, following README.md on a real machine.

Found (each test here failed before its fix):
1. `smpp-bridge run` started a second time with the same configuration (the Quick start's, or
   any with the built-in simulator) did not stop with STORE_IN_USE and the first daemon's pid,
   as "Backups of the SQLite store" says: the simulator was started before the store's recovery
   took the ownership lock, so it failed first, on its port, with a bare "address already in use".
2. A port in use stopped the start with asyncio's "error while attempting to bind on address
   ('127.0.0.1', 8081)": the daemon listens on up to five ports (server.port, admin_port,
   aliyun.port, sim.port, sim.control_port) and nothing said which setting chose that one.
3. A new SQLite store was created with the umask's mode (0644 under the usual 022): every local
   user could read the numbers, the texts (verification codes) and the replies, while the demo
   master key and the lock files beside the store are made 0600.
4. `smpp-bridge run --config config/default.yaml`, which the Quick start offers, keeps its demo
   store and master key in config/data: git ignored data/ only, so `git add -A` in the checkout
   took the master key and every message into the repository.
5. A SIGHUP whose file was refused logged "reload refused, configuration invalid (nothing
   changed):" and then each error on a line of its own, where "Logs" promises one line per event:
   the journal, or a collector reading lines, filed the errors apart from their ERROR line.
6. A daemon started with another master key than the one the store's secrets were sealed with
   (a key file regenerated, the demo key of another directory) answered every signed request
   500 INTERNAL_ERROR and logged only "refused ... INTERNAL_ERROR": nothing named the key, though
   "Secrets" says a daemon missing the key a secret was sealed with says which one it needs.
7. `smpp-bridge status` against the Quick start's daemon (admin API off) said "set
   server.admin_token or admin.operators (the daemon needs server.admin_token or
   admin.operators, then a restart)": twice the same, and not the variable the built-in
   configuration names for it (SMPP_BRIDGE_ADMIN_TOKEN), nor that `status` needs the same token.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.client import BridgeError
from tests.e2e.harness import (
    DaemonProcess,
    client_for,
    config_dict,
    free_port,
    wait_until,
)


def _run(cfg: dict[str, Any], tmp: Path) -> subprocess.CompletedProcess[str]:
    path = tmp / "bridge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_same_configuration_started_twice_stops_with_store_in_use(
    tmp_path: Path,
) -> None:
    cfg = config_dict(tmp_path)  # the built-in simulator, as in the Quick start
    first = DaemonProcess(tmp_path, cfg)
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    second = DaemonProcess(second_dir, cfg)
    try:
        first.start()
        await first.wait_ready()
        second.start()
        assert second.proc is not None
        await wait_until(lambda: second.proc.poll() is not None, 20, 0.1)
        log = second.log.read_text(errors="replace")
        assert second.proc.returncode == 1, log
        assert "STORE_IN_USE" in log, log
        assert first.proc is not None and f"(pid {first.proc.pid})" in log, log
        assert first.proc.poll() is None  # the first one serves on
    finally:
        second.stop()
        first.stop()


@pytest.mark.parametrize("setting", ["server.port", "aliyun.port", "sim.port", "server.admin_port"])
def test_a_port_in_use_names_its_setting(tmp_path: Path, taken_port: int, setting: str) -> None:
    section, key = setting.split(".")
    cfg = config_dict(tmp_path)
    cfg.setdefault("aliyun", {})["enabled"] = True
    cfg["aliyun"]["port"] = free_port()
    cfg[section][key] = taken_port
    if setting == "sim.port":
        cfg["smscs"][0]["port"] = taken_port
    done = _run(cfg, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"127.0.0.1:{taken_port} ({setting})" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_new_sqlite_store_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    cfg = config_dict(tmp_path, store={"path": str(tmp_path / "data" / "bridge.db")})
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "account", "create", "acme", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.umask(0o022),  # the usual login umask, as in the Quick start
    )
    assert done.returncode == 0, done.stderr
    files = sorted((tmp_path / "data").glob("bridge.db*"))
    assert tmp_path / "data" / "bridge.db" in files
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in files}
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize(
    "path", ["data/master.key", "config/data/master.key", "config/data/bridge.db"]
)
def test_the_demo_store_and_key_are_ignored_by_git(path: str) -> None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    done = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", path], timeout=30)
    assert done.returncode == 0, f"{path} is not ignored by git"


async def test_a_refused_reload_is_one_log_line_naming_every_error(tmp_path: Path) -> None:
    cfg = config_dict(tmp_path)
    daemon = DaemonProcess(tmp_path, cfg)
    try:
        daemon.start()
        await daemon.wait_ready()
        bad = yaml.safe_load(yaml.safe_dump(cfg))
        bad["smscs"][0]["window"] = 0
        bad["smscs"][0]["tps"] = -1
        daemon.path.write_text(yaml.safe_dump(bad))
        assert daemon.proc is not None
        os.kill(daemon.proc.pid, signal.SIGHUP)
        await wait_until(lambda: "reload refused" in daemon.log.read_text(), 15, 0.1)
        lines = daemon.log.read_text().splitlines()
        line = next(x for x in lines if "reload refused" in x)
        assert " ERROR " in line
        assert "smscs[0].window: must be between 1 and 1000, got 0" in line, lines[-4:]
        assert "smscs[0].tps:" in line, lines[-4:]
    finally:
        daemon.stop()


async def test_a_master_key_that_opens_no_secret_is_named_in_the_log(tmp_path: Path) -> None:
    """Some stored secrets under a key the daemon lacks (acme's, sealed before a rotation whose
    previous key was dropped too early): the daemon starts, says so at start, and names the
    key when such an app key signs a request."""
    cfg = config_dict(tmp_path)
    daemon = DaemonProcess(tmp_path, cfg)
    creds = await daemon.account("acme")  # sealed under the configured key
    other = base64.b64encode(b"o" * 32).decode()
    old = cfg["security"]["master_key"]
    daemon.path.write_text(
        yaml.safe_dump({**cfg, "security": {"master_key": other, "previous_master_key": old}})
    )
    await daemon.account("beta")  # sealed under the new key
    daemon.path.write_text(yaml.safe_dump({**cfg, "security": {"master_key": other}}))
    try:
        daemon.start()
        await daemon.wait_ready()
        sealed_with = hashlib.sha256(base64.b64decode(old)).hexdigest()[:8]
        at_start = next(x for x in daemon.log.read_text().splitlines() if "stored secrets" in x)
        assert " ERROR " in at_start and "2 of 4 stored secrets" in at_start, at_start
        assert f"master key {sealed_with}" in at_start, at_start
        async with client_for(daemon.port, creds) as client:
            with pytest.raises(BridgeError) as refused:
                await client.balance()
        assert (refused.value.status, refused.value.code) == (500, "INTERNAL_ERROR")

        def named() -> bool:
            return creds["app_key"] in daemon.log.read_text()

        await wait_until(named, 10, 0.1)
        line = next(x for x in daemon.log.read_text().splitlines() if creds["app_key"] in x)
        assert " ERROR " in line and f"master key {sealed_with}" in line, line
        assert other not in daemon.log.read_text() and old not in daemon.log.read_text()
    finally:
        daemon.stop()


async def test_a_master_key_that_opens_none_of_the_secrets_refuses_to_start(
    tmp_path: Path,
) -> None:
    """Every stored secret under another key (a key file regenerated, another directory's demo
    key): the daemon started, said it was ready, and answered every signed request 500. Now it
    refuses to start, naming the key the secrets need and where to give it."""
    cfg = config_dict(tmp_path)
    daemon = DaemonProcess(tmp_path, cfg)
    await daemon.account("acme")
    other = base64.b64encode(b"o" * 32).decode()
    daemon.path.write_text(yaml.safe_dump({**cfg, "security": {"master_key": other}}))
    daemon.start()
    assert daemon.proc is not None
    try:
        assert daemon.proc.wait(20) == 1
    finally:
        daemon.stop()
    out = daemon.log.read_text()
    sealed_with = hashlib.sha256(base64.b64decode(cfg["security"]["master_key"])).hexdigest()[:8]
    assert "the master key opens none of the 2 stored secrets" in out, out
    assert f"master key {sealed_with}" in out and "SMPP_BRIDGE_MASTER_KEY" in out, out
    assert "Traceback" not in out and other not in out


async def test_status_against_a_daemon_without_admin_api_says_how_to_turn_it_on(
    tmp_path: Path,
) -> None:
    cfg = config_dict(tmp_path)
    cfg["server"]["admin_token"] = None
    daemon = DaemonProcess(tmp_path, cfg)
    try:
        daemon.start()
        await daemon.wait_ready()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SMPP_BRIDGE_")}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bridge.cli",
                "status",
                "--url",
                f"http://127.0.0.1:{daemon.port}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert done.returncode == 1
        assert "ADMIN_DISABLED" in done.stderr
        assert "SMPP_BRIDGE_ADMIN_TOKEN" in done.stderr, done.stderr
        assert done.stderr.count("server.admin_token or admin.operators") == 1, done.stderr
    finally:
        daemon.stop()
