"""Session 37: the quota zone is the store's own (configure_store at opening and at each
reload; the roll-up reads it from its connection). In workers mode each acceptor process opens
and configures its store: a cancel an acceptor serves gives the message's place back to the
day of rules.timezone, not of the store's default zone (Asia/Shanghai). Real processes (`python
-m bridge.cli run` with `server.workers: 2`), the built-in simulator, a real SQLite file.

The zone is picked so that its day differs from Shanghai's now: a give-back in the wrong zone's
day would leave the day's count full and the last send refused DAILY_QUOTA_EXCEEDED.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bridge.client import BridgeError
from tests.e2e.harness import DaemonProcess, client_for, config_dict
from tests.e2e.test_session33_workers_review import _start
from tests.e2e.test_store_ops_review import _create_account


def _zone_not_on_shanghais_day() -> str:
    now = datetime.now(UTC)
    shanghai = now.astimezone(ZoneInfo("Asia/Shanghai")).date()
    for zone in ("Etc/GMT+12", "Etc/GMT-14"):  # UTC-12, UTC+14: one is always on another day
        if now.astimezone(ZoneInfo(zone)).date() != shanghai:
            return zone
    raise AssertionError("unreachable")


async def test_an_acceptor_gives_back_the_quota_in_the_configured_zone(tmp_path: Path) -> None:
    cfg = config_dict(tmp_path, rules={"timezone": _zone_not_on_shanghais_day()})
    cfg["server"]["workers"] = 2
    proc = DaemonProcess(tmp_path, cfg)
    creds = _create_account(proc.path, "--daily-quota", "1")
    try:
        await _start(proc, 2)
        async with client_for(proc.port, creds) as c:
            later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
            sent = await c.send("+8613800138000", text="Sale", scheduled_at=later)
            mid = sent["messages"][0]["id"]
            with pytest.raises(BridgeError) as full:
                await c.send("+8613800138001", text="Sale")
            assert full.value.code == "DAILY_QUOTA_EXCEEDED"
            status, _h, _body = await c.request("POST", f"/v1/messages/{mid}/cancel")
            assert status == 200
            again = await c.send("+8613800138001", text="Sale")
            assert again["messages"][0]["id"]
    finally:
        proc.stop()
