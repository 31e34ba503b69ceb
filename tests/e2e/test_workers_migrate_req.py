"""The acceptors share the port with SO_REUSEPORT, each with its own accept queue, and Linux
resets the connections waiting in a closing listener's queue: an acceptor's exit (a crash, its
restart) reset them. `net.ipv4.tcp_migrate_req=1` (Linux 5.14 and later) moves them to another
listener of the group instead (README, "Sizing"). Session 51 checked it on this kernel (the
first test, in a network namespace of its own so no other test sees the sysctl change), and
has a start with acceptors log a line when it reads 0."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bridge.supervisor import MIGRATE_REQ_SYSCTL, migrate_req_note
from tests.e2e.harness import DaemonProcess, config_dict

# Two listeners on one port (SO_REUSEPORT), 40 connections made and none accepted, the first
# listener closed: (accepted by the second, reset). Run in a network namespace of its own, with
# the sysctl set there first (per namespace: the test machine's is left alone).
TRIAL = textwrap.dedent(
    """
    import socket, sys, time
    open("/proc/sys/net/ipv4/tcp_migrate_req", "w").write(sys.argv[1])
    listeners = []
    for _ in range(2):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", listeners[0].getsockname()[1] if listeners else 0))
        s.listen(128)
        listeners.append(s)
    port = listeners[0].getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
    time.sleep(0.2)
    listeners[0].close()
    listeners[1].settimeout(0.5)
    accepted = reset = 0
    try:
        while True:
            listeners[1].accept()[0].close()
            accepted += 1
    except TimeoutError:
        pass
    for c in clients:
        c.settimeout(0.2)
        try:
            c.recv(1)
        except ConnectionResetError:
            reset += 1
        except TimeoutError:
            pass
    print(accepted, reset)
    """
)


def _trial(value: str) -> tuple[int, int]:
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
         sys.executable, "-c", TRIAL, value],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if done.returncode:
        pytest.skip(f"no network namespace of our own here: {done.stderr.strip()[-300:]}")
    accepted, reset = (int(x) for x in done.stdout.split())
    return accepted, reset


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip")
    or not MIGRATE_REQ_SYSCTL.exists(),
    reason="needs root, unshare, ip and a kernel with net.ipv4.tcp_migrate_req (5.14+)",
)  # fmt: skip
def test_the_kernel_moves_a_closing_listeners_queue_only_with_the_sysctl() -> None:
    accepted, reset = _trial("0")
    assert reset > 0 and accepted + reset == 40, (accepted, reset)  # the closed one's: reset
    assert _trial("1") == (40, 0)  # every one moved to the other listener


def test_the_note_is_for_a_sysctl_reading_0_only(tmp_path: Path) -> None:
    path = tmp_path / "tcp_migrate_req"
    path.write_text("0\n")
    note = migrate_req_note(path)
    assert note is not None and note.startswith("net.ipv4.tcp_migrate_req is 0")
    path.write_text("1\n")
    assert migrate_req_note(path) is None
    assert migrate_req_note(tmp_path / "absent") is None  # another system, an older kernel
    path.write_bytes(b"\xff")
    assert migrate_req_note(path) is None


async def test_a_start_with_acceptors_logs_it_when_it_reads_0(tmp_path: Path) -> None:
    try:
        zero = MIGRATE_REQ_SYSCTL.read_text().strip() == "0"
    except OSError:
        zero = False
    cfg = config_dict(tmp_path)
    cfg["server"]["workers"] = 1
    d = DaemonProcess(tmp_path, cfg)
    d.start()
    try:
        await d.wait_ready(30)
    finally:
        d.stop()
    lines = [ln for ln in d.log.read_text().splitlines() if "tcp_migrate_req" in ln]
    assert len(lines) == (1 if zero else 0), lines
    if zero:
        assert "INFO" in lines[0], lines
