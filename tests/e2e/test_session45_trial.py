"""Session 45: operator findings from the first-day trial (each test here failed before its fix).

1. A start that failed on its HTTP port (server.port in use) had already bound to every SMSC:
   against a real carrier, a bind and a drop for nothing, counted against its bind limits.
2. Two instances on one host needed two configuration files: server.port (and admin_port,
   aliyun.port) had no environment variable, as server.instance has.
3. A SQLite store made before new stores were made 0600 kept its 0644: every local user could
   read it, and nothing said so.
"""

from __future__ import annotations

import os
import socket
import socketserver
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.e2e.harness import (
    ADMIN_TOKEN,
    DaemonProcess,
    config_dict,
    free_port,
    make_config,
    wait_until,
)
from tests.e2e.test_session44_first_day import _run


class _Recorder(socketserver.BaseRequestHandler):
    """Notes the connection and the command_id of every PDU header it reads."""

    def handle(self) -> None:
        seen: list[str] = self.server.seen  # type: ignore[attr-defined]
        seen.append("connect")
        self.request.settimeout(5)
        buf = b""
        try:
            while chunk := self.request.recv(4096):
                buf += chunk
                while len(buf) >= 16:
                    length = int.from_bytes(buf[:4], "big")
                    seen.append(f"pdu 0x{int.from_bytes(buf[4:8], 'big'):08x}")
                    buf = buf[max(length, 16) :]
        except OSError:
            pass


@pytest.fixture
def fake_smsc() -> Iterator[tuple[int, list[str]]]:
    """A TCP listener standing in for a carrier's SMSC: (its port, what it saw)."""
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", free_port()), _Recorder)
    server.daemon_threads = True
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], server.seen  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("setting", ["server.port", "server.admin_port", "aliyun.port"])
def test_a_port_in_use_fails_the_start_before_any_bind(
    tmp_path: Path,
    fake_smsc: tuple[int, list[str]],
    taken_port: int,
    setting: str,
    workers: int,
) -> None:
    smsc_port, seen = fake_smsc
    cfg = config_dict(
        tmp_path,
        sim={"enabled": False},
        smscs=[{"name": "carrier", "port": smsc_port}],
        aliyun={"enabled": True, "port": free_port()},
    )
    cfg["server"]["workers"] = workers
    section, key = setting.split(".")
    cfg[section][key] = taken_port
    done = _run(cfg, tmp_path)
    assert seen == [], seen  # not even a TCP connection, let alone a bind_transceiver
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"127.0.0.1:{taken_port} ({setting})" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


async def _answers(url: str, token: str | None = None) -> bool:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=2)) as r,
        ):
            return r.status == 200
    except (TimeoutError, aiohttp.ClientError, OSError):
        return False


@pytest.mark.parametrize("workers", [0, 1])
async def test_the_ports_come_from_the_environment(tmp_path: Path, workers: int) -> None:
    """One file, its ports given per instance: the daemon (and its acceptors) listen on the
    variables' ports, none on the file's."""
    file_port, file_admin, file_aliyun = free_port(), free_port(), free_port()
    cfg = config_dict(tmp_path, aliyun={"enabled": True, "port": file_aliyun})
    cfg["server"].update(port=file_port, admin_port=file_admin, workers=workers)
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    port, admin, aliyun = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "SMPP_BRIDGE_PORT": str(port),
        "SMPP_BRIDGE_ADMIN_PORT": str(admin),
        "SMPP_BRIDGE_ALIYUN_PORT": str(aliyun),
    }
    log = tmp_path / "daemon.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "run", "--config", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:

        async def up() -> bool:
            assert proc.poll() is None, log.read_text()
            return await _answers(f"http://127.0.0.1:{port}/readyz")

        await wait_until(up, 30, 0.1)

        async def admin_answers() -> bool:
            return await _answers(f"http://127.0.0.1:{admin}/admin/smscs", ADMIN_TOKEN)

        # Waited for, not asked once: its first answer took over the 2 s of one try in a CI run
        # with a benchmark's daemon beside the suite (the port is what this test checks).
        await wait_until(admin_answers, 15, 0.2)
        with socket.create_connection(("127.0.0.1", aliyun), timeout=2):
            pass
        for unused in (file_port, file_admin, file_aliyun):
            with pytest.raises(OSError), socket.create_connection(("127.0.0.1", unused), 1):
                pass
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp,
    )


def _store_made_0644(tmp: Path, **server: Any) -> tuple[dict[str, Any], Path]:
    """A configuration and its store as a release before 0600 stores left it."""
    cfg = config_dict(tmp)
    cfg["server"].update(server)
    (tmp / "bridge.yaml").write_text(yaml.safe_dump(cfg))
    done = _cli(tmp, "db", "migrate", "--config", str(tmp / "bridge.yaml"))
    assert done.returncode == 0, done.stderr
    db = Path(cfg["store"]["path"])
    db.chmod(0o644)
    return cfg, db


def _mode_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "readable by other users" in line]


@pytest.mark.parametrize("workers", [0, 1])
async def test_a_store_others_may_read_is_told_once_at_start_and_left_as_is(
    tmp_path: Path, workers: int
) -> None:
    cfg, db = _store_made_0644(tmp_path, workers=workers)
    daemon = DaemonProcess(tmp_path, cfg)
    try:
        daemon.start()
        await daemon.wait_ready(30)
        lines = _mode_lines(daemon.log.read_text())
    finally:
        daemon.stop()
    assert len(lines) == 1, lines  # the owner's: its acceptors do not say it again
    assert "WARNING" in lines[0], lines
    assert f"{db} (0644)" in lines[0], lines
    assert f"chmod 600 {db}" in lines[0], lines
    assert stat.S_IMODE(db.stat().st_mode) == 0o644  # told, not changed


def test_db_and_config_check_commands_say_it_too(tmp_path: Path) -> None:
    _, db = _store_made_0644(tmp_path)
    config = str(tmp_path / "bridge.yaml")
    for args in (("config", "check", config), ("db", "migrate", "--config", config)):
        done = _cli(tmp_path, *args)
        assert done.returncode == 0, done.stderr
        lines = _mode_lines(done.stderr)
        assert len(lines) == 1 and f"chmod 600 {db}" in lines[0], (args, done.stderr)
    db.chmod(0o600)
    for args in (("config", "check", config), ("db", "migrate", "--config", config)):
        done = _cli(tmp_path, *args)
        assert done.returncode == 0 and _mode_lines(done.stderr) == [], (args, done.stderr)


def _bindable(port: int) -> bool:
    """Without SO_REUSEADDR: a socket still bound there (listening or not) refuses it."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_a_start_that_fails_after_taking_the_ports_lets_them_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process (as tests and embedders run it): the ports taken before the binds are closed
    again when the start fails between the two."""
    from bridge.app import Daemon

    cfg = make_config(
        tmp_path, sim={"enabled": False}, aliyun={"enabled": True, "port": free_port()}
    )
    daemon = Daemon(cfg)

    def unbuildable(_smsc: Any) -> Any:
        raise OSError("no such CA file")

    monkeypatch.setattr(daemon, "_connector", unbuildable)
    with pytest.raises(OSError, match="no such CA file"):
        await daemon.start()
    try:
        assert _bindable(cfg.server.port) and _bindable(cfg.aliyun.port)
    finally:
        await daemon.stop()
