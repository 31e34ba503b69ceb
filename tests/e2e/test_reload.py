"""SIGHUP reload against a real daemon: limit changes keep binds, bind changes reconnect only that
SMSC, routes switch, a broken file changes nothing."""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from bridge.app import Daemon
from bridge.config import load_config
from bridge.sim.server import SimSmsc
from tests.e2e.harness import (
    DaemonProcess,
    client_for,
    config_dict,
    create_account,
    free_port,
    make_config,
    wait_until,
)


async def test_reload_keeps_unchanged_binds_and_switches_routes(tmp_path):
    backup_port = free_port()
    backup = SimSmsc(replace(make_config(tmp_path).sim, port=backup_port, control_port=free_port()))
    await backup.start()
    data = config_dict(
        tmp_path,
        smscs=[{"name": "sim"}, {"name": "backup", "port": backup_port}],
        default_route=["sim", "backup"],
    )
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(data))
    d = Daemon(
        make_config(
            tmp_path,
            smscs=data["smscs"],
            default_route=["sim", "backup"],
            sim=data["sim"],
            server=data["server"],
            store=data["store"],
        ),
        config_path=str(path),
    )
    await d.start()
    try:
        await wait_until(lambda: d.connectors["sim"].is_up and d.connectors["backup"].is_up, 10)
        sim_conn, backup_conn = d.connectors["sim"], d.connectors["backup"]
        creds = await create_account(d)

        # 1: limits only on "sim", and the default route now prefers "backup".
        data["smscs"][0]["tps"] = 500
        data["default_route"] = ["backup", "sim"]
        path.write_text(yaml.safe_dump(data))
        await d.reload_from_file()
        assert d.connectors["sim"] is sim_conn and d.connectors["backup"] is backup_conn
        assert sim_conn.cfg.tps == 500 and sim_conn.is_up
        async with client_for(d.http_port, creds) as c:
            r = await c.send("+8613800138000", text="after reload")
            mid = r["messages"][0]["id"]

            async def delivered():
                return (await c.message(mid))["status"] == "delivered"

            await wait_until(delivered, 10)
            assert (await c.message(mid))["smsc"] == "backup"

        # 2: a bind setting on "backup" reconnects it alone.
        data["smscs"][1]["window"] = 7
        path.write_text(yaml.safe_dump(data))
        await d.reload_from_file()
        assert d.connectors["sim"] is sim_conn
        assert d.connectors["backup"] is not backup_conn
        await wait_until(lambda: d.connectors["backup"].is_up, 10)

        # 3: an invalid file changes nothing.
        path.write_text("smscs: [{name: sim, window: 0}]\n")
        before = dict(d.connectors)
        await d.reload_from_file()
        assert d.connectors == before
        assert d.config.smscs[1].window == 7
    finally:
        await d.stop()
        await backup.stop()


async def test_sighup_reloads_a_running_process(tmp_path):
    cfg = config_dict(tmp_path)
    proc = DaemonProcess(tmp_path, cfg)
    proc.start()
    try:
        await proc.wait_ready()
        cfg["smscs"][0]["tps"] = 123
        proc.path.write_text(yaml.safe_dump(cfg))
        os.kill(proc.proc.pid, signal.SIGHUP)
        await wait_until(lambda: "reloaded configuration" in proc.log.read_text(), 10)
        assert "updated ['sim']" in proc.log.read_text()
        await proc.wait_ready()  # the bind stayed up
    finally:
        proc.stop()


async def test_a_file_changed_while_starting_is_applied_once_started(tmp_path):
    """A SIGHUP that comes before the handler exists is lost (an acceptor ignores SIGHUP until
    then, and its supervisor rewrites the file it read before signalling), and one during
    start-up met half a daemon. Once started, the daemon applies a file that changed since it
    was read, and a SIGHUP that came meanwhile."""
    data = config_dict(tmp_path)
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(data))
    d = Daemon(load_config(path, env={}), config_path=str(path))
    data["smscs"][0]["tps"] = 321
    path.write_text(yaml.safe_dump(data))  # after the read: the SIGHUP for it was lost
    runner = asyncio.create_task(d.run_forever())
    try:
        await wait_until(lambda: d.config.smscs[0].tps == 321, 15)
        await wait_until(lambda: d.connectors["sim"].cfg.tps == 321, 5)
        # A SIGHUP now reloads as before (the handler is the daemon's).
        data["smscs"][0]["tps"] = 322
        path.write_text(yaml.safe_dump(data))
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_until(lambda: d.config.smscs[0].tps == 322, 10)
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # run_forever's handler: a graceful stop
        await asyncio.wait_for(runner, 30)


async def test_a_sighup_during_start_up_waits_for_it(tmp_path, monkeypatch):
    data = config_dict(tmp_path)
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(data))
    d = Daemon(load_config(path, env={}), config_path=str(path))
    reloads: list[bool] = []
    real_start, real_reload = d.start, d.reload_from_file

    async def start() -> None:
        os.kill(os.getpid(), signal.SIGHUP)  # the handler is installed: it must wait
        await asyncio.sleep(0.2)
        assert reloads == [], "a reload ran during start-up"
        await real_start()

    async def reload_from_file() -> bool:
        reloads.append(d.http_port is not None)
        return await real_reload()

    monkeypatch.setattr(d, "start", start)
    monkeypatch.setattr(d, "reload_from_file", reload_from_file)
    runner = asyncio.create_task(d.run_forever())
    try:
        await wait_until(lambda: reloads == [True], 15)
    finally:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(runner, 30)


async def test_a_reload_during_shutdown_is_not_applied(tmp_path):
    """A SIGHUP after SIGTERM reconnected an SMSC that stop() was closing (session 14's third
    review): once stopping, a reload changes nothing; one already under way finishes first."""
    data = config_dict(tmp_path)
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(data))
    d = Daemon(load_config(path, env={}), config_path=str(path))
    await d.start()
    stopped = False
    try:
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        data["smscs"][0]["window"] = 7  # a bind setting: the reload would reconnect "sim"
        path.write_text(yaml.safe_dump(data))
        before = d.connectors["sim"]
        stopping = asyncio.create_task(d.stop())
        await asyncio.sleep(0)  # stop() has begun
        assert await d.reload_from_file() is False
        await stopping
        stopped = True
        assert d.connectors["sim"] is before and d.config.smscs[0].window != 7
    finally:
        if not stopped:
            await d.stop()


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_a_reload_that_changes_how_a_route_encodes_encodes_the_waiting_again(
    tmp_path, caplog, request, engine
):
    """Two messages scheduled an hour ahead when packed_gsm is turned on for their SMSC (session
    35 text review: they went out unpacked, which the SMSC then read as packed septets): the
    dispatcher encodes them again, packed, before it claims anything, and says so."""
    data = config_dict(tmp_path, smscs=[{"name": "sim"}], default_route=["sim"])
    if engine == "postgres":
        data["store"] = {"engine": "postgres", "dsn": request.getfixturevalue("pg_dsn")}
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(data))
    d = Daemon(load_config(str(path)), config_path=str(path))
    await d.start()
    try:
        creds = await create_account(d)
        async with client_for(d.http_port, creds) as c:
            later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
            for _ in range(2):
                await c.send("+8613800138000", text="later", scheduled_at=later)
        assert d.store is not None
        rows, _ = await d.store.waiting_texts(None, 10)
        assert [r.parts[0].short_message for r in rows] == [b"later"] * 2
        data["smscs"][0]["packed_gsm"] = True
        path.write_text(yaml.safe_dump(data))
        with caplog.at_level("INFO", logger="bridge"):
            assert await d.reload_from_file()

            def said() -> list[str]:
                return [m for r in caplog.records if "re-encoded" in (m := r.getMessage())]

            await wait_until(lambda: bool(said()), 10)
        assert "2 of 2 changed" in said()[0], said()
        rows, _ = await d.store.waiting_texts(None, 10)
        packed = bytes.fromhex("ec30bd2c07")  # "later": 5 septets packed (l a t e r)
        assert [r.parts[0].short_message for r in rows] == [packed] * 2
    finally:
        await d.stop()
