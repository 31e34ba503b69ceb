"""Session 50 (h6): what an SMSC's receiving binds count for, against the simulator over TCP.

`Connector.is_up` is "a bind that can submit is up": right for routing (the dispatcher), but the
status, /readyz and `smpp-bridge status` took it as the SMSC's state. Before session 50:

- a daemon for MO alone (every SMSC `bind_mode: receiver`) answered /readyz 503 "no SMSC bound"
  for ever with its receiver bound, and `status` printed `UP NO` (only `smpp_bridge_smsc_up`
  had been taught otherwise, session 47);
- a `transmitter_receiver` SMSC whose receivers were down (receipts and MO waiting at the
  carrier) read `UP yes` and ready, nothing naming the receivers but `BINDS 1/2`; one whose
  transmitters were down and receivers up read `NO` like a dead link.

Routing is unchanged: a message goes only to an SMSC with a transmitting bind up, and a
receive-only SMSC never makes its route count as up.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.api.admin_ops import down_routes
from bridge.app import Daemon
from bridge.config import parse_config
from bridge.status import fetch, render
from tests.e2e.harness import ADMIN_TOKEN, config_dict, free_port, wait_until


@pytest.fixture
async def start(tmp_path: Path):
    """A daemon on the simulator; `ports(smscs, sim_port)` sets the SMSCs' ports first."""
    daemons: list[Daemon] = []

    async def go(smscs: list[dict[str, Any]], ports: Any = None) -> Daemon:
        data = config_dict(tmp_path, smscs=smscs)
        if ports is not None:
            ports(data["smscs"], data["sim"]["port"])
        d = Daemon(parse_config(data, env={}, base_dir=tmp_path))
        await d.start()
        daemons.append(d)
        return d

    yield go
    for d in daemons:
        await d.stop()


async def _get(d: Daemon, path: str) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{d.http_port}{path}", headers=headers) as r:
            return r.status, await r.json()


async def _smsc(d: Daemon, name: str) -> dict[str, Any]:
    _, body = await _get(d, "/admin/smscs")
    return next(s for s in body["smscs"] if s["name"] == name)


async def _status_text(d: Daemon) -> str:
    got = await asyncio.to_thread(fetch, f"http://127.0.0.1:{d.http_port}", ADMIN_TOKEN)
    return render(got)


def _binds(d: Daemon, name: str, mode: str) -> list[bool]:
    return [b.up for b in d.connectors[name]._binds if str(b.mode) == mode]


async def test_a_daemon_for_mo_alone_is_ready_with_its_receiver_bound(start) -> None:
    d = await start([{"name": "mo", "bind_mode": "receiver"}])
    await wait_until(lambda: _binds(d, "mo", "receiver") == [True], 10)
    c = d.connectors["mo"]
    assert not c.is_up  # nothing to submit over: routing never picks it
    status, ready = await _get(d, "/readyz")
    assert (status, ready["problems"], ready["smscs"]) == (200, [], {"mo": True}), ready
    mo = await _smsc(d, "mo")
    assert (mo["up"], mo["sending"], mo["receiving"], mo["state"]) == (True, None, True, "up")
    row = next(ln for ln in (await _status_text(d)).splitlines() if ln.startswith("mo "))
    assert row.split()[1:3] == ["yes", "1/1"], row
    # Its default route (every SMSC, none sending) is down for the queue view all the same.
    assert down_routes({"": ("mo",)}, d.smsc_status()) == {""}


async def test_receivers_down_while_the_transmitter_sends_are_shown(start) -> None:
    dead = free_port()  # the carrier's receive port, nothing listening
    d = await start([{"bind_mode": "transmitter_receiver", "receive_port": dead}])
    await wait_until(lambda: _binds(d, "sim", "transmitter") == [True], 10)
    assert _binds(d, "sim", "receiver") == [False]
    assert d.connectors["sim"].is_up  # routing: it sends
    status, ready = await _get(d, "/readyz")
    assert (status, ready["problems"], ready["smscs"]) == (200, [], {"sim": True}), ready
    assert ready["warnings"] == [
        "SMSC sim: no receiving bind up (its receipts and MO wait at the carrier)"
    ]
    sim = await _smsc(d, "sim")
    assert (sim["up"], sim["sending"], sim["receiving"]) == (True, True, False)
    text = await _status_text(d)
    row = next(ln for ln in text.splitlines() if ln.startswith("sim "))
    assert row.split()[1:4] == ["TX", "ONLY", "1/2"], row
    assert "  warning: SMSC sim: no receiving bind up" in text, text
    assert down_routes({"": ("sim",)}, d.smsc_status()) == set()


async def test_receivers_up_while_the_transmitter_is_down_are_not_up(start) -> None:
    def ports(smscs: list[dict[str, Any]], sim_port: int) -> None:
        smscs[0].update(port=free_port(), receive_port=sim_port)

    d = await start([{"bind_mode": "transmitter_receiver"}], ports)
    await wait_until(lambda: _binds(d, "sim", "receiver") == [True], 10)
    assert _binds(d, "sim", "transmitter") == [False]
    assert not d.connectors["sim"].is_up
    status, ready = await _get(d, "/readyz")
    assert (status, ready["problems"], ready["smscs"]) == (503, ["no SMSC bound"], {"sim": False})
    sim = await _smsc(d, "sim")
    assert (sim["up"], sim["sending"], sim["receiving"]) == (False, False, True)
    row = next(ln for ln in (await _status_text(d)).splitlines() if ln.startswith("sim "))
    assert row.split()[1:4] == ["RX", "ONLY", "1/2"], row
    assert down_routes({"": ("sim",)}, d.smsc_status()) == {""}


async def test_an_mo_link_up_does_not_make_a_daemon_whose_senders_are_down_ready(start) -> None:
    """Beside SMSCs that send, a receive-only SMSC's bind is no reason to take sends."""

    def ports(smscs: list[dict[str, Any]], sim_port: int) -> None:
        smscs[0]["port"], smscs[1]["port"] = free_port(), sim_port  # the transmitter's: dead

    d = await start(
        [
            {"bind_mode": "transmitter", "registered_delivery": 0},
            {"name": "mo", "bind_mode": "receiver"},
        ],
        ports,
    )
    await wait_until(lambda: _binds(d, "mo", "receiver") == [True], 10)
    status, ready = await _get(d, "/readyz")
    assert (status, ready["problems"]) == (503, ["no SMSC bound"]), ready
    assert ready["smscs"] == {"sim": False, "mo": True}
