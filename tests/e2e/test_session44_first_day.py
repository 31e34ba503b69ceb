"""Session 44: a new operator's first day, following README.md on a real machine.

Found (each test here failed before its fix):
1. `smpp-bridge run` started a second time with the same configuration (the Quick start's, or
   any with the built-in simulator) did not stop with STORE_IN_USE and the first daemon's pid,
   as "Backups of the SQLite store" says: the simulator was started before the store's recovery
   took the ownership lock, so it failed first, on its port, with a bare "address already in use".
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.harness import DaemonProcess, config_dict, wait_until


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
