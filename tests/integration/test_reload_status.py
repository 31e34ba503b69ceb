"""The bind status while a SIGHUP reload reconnects an SMSC: the old connector drains its window
(up to the shutdown grace) before the new one binds. The status the owner publishes (the
heartbeat row acceptors answer `smpp-bridge status` and /readyz from) left that SMSC out
meanwhile: an acceptor printed "(no SMSC configured)" and answered ready with nothing bound.
Real daemon, the built-in simulator over TCP, a real SQLite store."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from bridge.app import Daemon
from bridge.status import fetch, render

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.e2e.harness import (  # noqa: E402
    ADMIN_TOKEN,
    client_for,
    create_account,
    final_status,
    make_config,
    wait_until,
)


async def test_an_smsc_being_reconnected_stays_listed_as_down_until_its_successor_starts(
    tmp_path,
):
    cfg = make_config(tmp_path, server={"shutdown_grace_s": 3.0})
    d = Daemon(cfg)
    await d.start()
    try:
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        creds = await create_account(d)
        # The carrier answers late: the old connector's stop waits for the submit in flight.
        d.sim.answer_delay_ms = 1500
        async with client_for(d.http_port, creds) as c:
            sent = await c.send("+447700900123", text="in flight across a reload")
            mid = sent["messages"][0]["id"]
            await wait_until(lambda: d.connectors["sim"].snapshot()["window"]["in_use"] > 0, 10)
            rebinding = replace(cfg.smscs[0], window=cfg.smscs[0].window + 1)
            reload = asyncio.ensure_future(d.reload(replace(cfg, smscs=(rebinding,))))
            seen: list[dict] = []
            ready: list[tuple[int, dict]] = []  # /readyz while the SMSC was reconnecting
            printed: list[str] = []  # what `smpp-bridge status` printed meanwhile
            t0 = time.monotonic()
            base = f"http://127.0.0.1:{d.http_port}"
            async with aiohttp.ClientSession() as s:
                while not reload.done():
                    status = d.smsc_status()
                    seen.append(status)
                    async with s.get(f"{base}/readyz") as r:
                        if (
                            status.get("sim", {}).get("state") == "reconnecting"
                            or "sim" not in status
                        ):
                            ready.append((r.status, await r.json()))
                            shown = await asyncio.to_thread(fetch, base, ADMIN_TOKEN)
                            printed.append(render(shown))
                    await asyncio.sleep(0.05)
            await reload
            took = time.monotonic() - t0
            assert took > 1.0, f"the reload did not wait for the submit in flight ({took:.2f} s)"
            # Listed all along, and down while the old connector drained.
            assert all("sim" in s for s in seen), [sorted(s) for s in seen if "sim" not in s][:3]
            draining = [s["sim"] for s in seen if s["sim"].get("state") == "reconnecting"]
            assert draining, "no status taken while the old connector drained"
            assert all(st["up"] is False for st in draining)
            # Nothing is bound meanwhile, and /readyz (which an acceptor answers from the
            # status the owner publishes, a single process from its own) says so.
            assert ready and all(code == 503 for code, _ in ready), ready[:3]
            row = [line.split() for line in printed[0].splitlines() if line.split()[:1] == ["sim"]]
            assert row and row[0][1] == "RECONNECTING", printed[0]
            d.sim.answer_delay_ms = 0
            assert (await final_status(c, mid))["status"] == "delivered"
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        assert "state" not in d.smsc_status()["sim"]
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{d.http_port}/readyz") as r:
                assert r.status == 200
    finally:
        await d.stop()


async def test_a_reload_whose_new_connector_cannot_be_built_changes_nothing(tmp_path, monkeypatch):
    """Everything a reload can fail on is built before anything changes: a connector that
    cannot be built (config validation loads tls_ca_file now, but not everything a connector
    needs can be checked there) failed the reload after the running one was stopped, and the
    SMSC stayed unbound until a restart."""
    cfg = make_config(tmp_path)
    d = Daemon(cfg)
    await d.start()
    try:
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        running = d.connectors["sim"]
        real = d._connector

        def broken(smsc, **kw):
            if smsc.window == cfg.smscs[0].window + 1:
                raise FileNotFoundError(2, "No such file or directory", "carrier-ca.pem")
            return real(smsc, **kw)

        monkeypatch.setattr(d, "_connector", broken)
        rebinding = replace(cfg.smscs[0], window=cfg.smscs[0].window + 1)
        with pytest.raises(FileNotFoundError):
            await d.reload(replace(cfg, smscs=(rebinding,)))
        assert d.connectors["sim"] is running and running.is_up
        assert d.config.smscs[0].window == cfg.smscs[0].window
        assert d.smsc_status()["sim"]["up"] is True
        # The file fixed, the same change applies.
        monkeypatch.setattr(d, "_connector", real)
        await d.reload(replace(cfg, smscs=(rebinding,)))
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        assert d.connectors["sim"] is not running
        assert d.connectors["sim"].cfg.window == cfg.smscs[0].window + 1
    finally:
        await d.stop()


class _Rows:
    """The store's heartbeat rows, as `instances` returns them."""

    def __init__(self, rows: list[tuple[str, str, int, str]]) -> None:
        self.rows = rows

    async def instances(self, since: int) -> list[tuple[str, str, int, str]]:
        return [r for r in self.rows if r[2] >= since]


async def test_an_acceptor_without_word_from_its_owner_says_so_unless_another_instance_sends(
    tmp_path, monkeypatch
):
    """Its owner silent for 5 s: the SMSCs' state is unknown (not down: the binds may be up
    behind a stalled store write). With another live instance holding the SMSC bound, it is up
    there, and this instance is ready: what it accepts, that one sends."""
    from bridge.api.admin_ops import smsc_state
    from bridge.app import OWNER_INSTANCE_ENV

    monkeypatch.setenv(OWNER_INSTANCE_ENV, "mine")
    d = Daemon(make_config(tmp_path), role="acceptor")
    now = int(time.time() * 1000)
    up = json.dumps({"sim": {"up": True}})
    d.store = _Rows([("mine", "owner", now - 6_000, up)])  # older than 5 s
    silent = await d._read_owner_status()
    assert silent == {"sim": {"up": False, "state": "unknown"}}
    d.store = _Rows([("mine", "owner", now - 6_000, up), ("other", "owner", now - 500, up)])
    fleet = await d._read_owner_status()
    assert fleet["sim"]["up"] is True and smsc_state(fleet["sim"]) == "up"


async def test_an_acceptor_does_not_keep_reporting_its_last_copy_through_a_store_outage(
    tmp_path, monkeypatch
):
    """Its reads of the owner's status failing (the database down), an acceptor kept the last
    copy it read: binds up, `smsc_up` 1, so no SMSC-down alert, while the owner had unbound long
    ago. After OWNER_SILENT_S without a read, its SMSCs are unknown."""
    from bridge.api import context

    d = Daemon(make_config(tmp_path), role="acceptor")
    ok: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
    ok.set_result({"sim": {"up": True, "binds": {"transceiver": {"configured": 1, "up": 1}}}})
    await d._keep_status(ok)
    assert d._owner_status()["sim"]["up"] is True

    class Down:
        async def instances(self, since: int) -> list:
            raise ConnectionRefusedError(111, "Connection refused")

    d.store = Down()
    with pytest.raises(ConnectionRefusedError):
        await d._refresh_status()
    assert d._owner_status()["sim"]["up"] is True  # a second ago: still believed
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + context.OWNER_SILENT_S + 0.1)
    assert d._owner_status() == {"sim": {"up": False, "state": "unknown"}}
