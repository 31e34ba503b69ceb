"""Session 63 review (r4) of h4's owner metrics in bulk (README note 27): a real daemon's scrapes
against a `Metrics` told every event by a call, as the tree before told it.

h4's `Metrics.ok_sink` has a connector append each accepted part's round trip to a list of its
SMSC's (counted at a flush, at `OK_RTTS_MAX`, before `on_submit` counts anything else of that
SMSC), and `Inbound` tell a committed batch's receipts in one `receipts_counted` call. The unit
tests drive `Connector._accepted` by hand; here the daemon runs as it does in production: the
simulator over TCP (throttles, system errors, three receipt states), two SMSCs routed by prefix,
reloads that remove and re-add one SMSC and rebind the other (new connectors, taking the same
lists) while the traffic runs, and scrapes all along. A reference `Metrics` gets, for every
event, the call the tree before made: `on_submit` for each acceptance when it is appended (the
list's `append` taps it), every other `on_submit` and `receipt`, `receipt(smsc, state.value)`
for each committed receipt in the batch's order, the same `observe_smscs`. At every scrape the
families the change touches (submitted segments, throttles, round-trip histograms, receipts)
must expose the same samples in the same order with the same values as the reference's.
"""

from __future__ import annotations

import asyncio
import random
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge import metrics as metrics_module
from bridge.app import Daemon
from bridge.config import parse_config
from bridge.metrics import Metrics
from bridge.pipeline.inbound import Inbound

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.e2e.harness import client_for, config_dict, create_account, wait_until  # noqa: E402

FAMILIES = (
    "smpp_bridge_segments_submitted",
    "smpp_bridge_throttle_events",
    "smpp_bridge_submit_rtt_seconds",
    "smpp_bridge_receipts",
)


def _samples(m: Metrics) -> list[str]:
    """The touched families' samples, in exposition order, values exact (repr)."""
    return [
        f"{s.name}{sorted(s.labels.items())} {s.value!r}"
        for family in m.registry.collect()
        if family.name in FAMILIES
        for s in family.samples
    ]


def _pending(m: Metrics, smsc: str) -> Any:
    """What `m` holds for `smsc` until its next flush: submitted counts, round-trip buckets
    and sum."""
    h = m._rtt.get(smsc)
    submits = sorted((k, n) for k, n in m._submits.items() if k[0] == smsc)
    return submits, None if h is None else (list(h.counts), h.total)


class _Tapped(list[float]):
    """An ok sink that tells the reference each appended round trip as the tree before's
    `on_submit(smsc, "ok", "ESME_ROK", rtt)`, at the moment it is appended."""

    def __init__(self, smsc: str, reference: Metrics) -> None:
        super().__init__()
        self.smsc, self.reference = smsc, reference

    def append(self, rtt_s: float) -> None:
        self.reference.on_submit(self.smsc, "ok", "ESME_ROK", rtt_s)
        super().append(rtt_s)


class _Compared(Metrics):
    """The daemon's metrics, each scrape compared with `reference`'s (see the module's doc)."""

    def __init__(self) -> None:
        super().__init__()
        self.reference = Metrics()
        self.scrapes: list[tuple[list[str], list[str]]] = []
        self.answers: list[tuple[Any, Any]] = []

    def ok_sink(self, smsc: str) -> tuple[list[float], Any]:
        if smsc not in self._ok_rtts:
            self._ok_rtts[smsc] = _Tapped(smsc, self.reference)
        return super().ok_sink(smsc)

    def on_submit(self, smsc: str, kind: str, status: str, rtt_s: float | None) -> None:
        self.reference.on_submit(smsc, kind, status, rtt_s)
        super().on_submit(smsc, kind, status, rtt_s)
        # The SMSC's acceptances waiting in its list are counted before this answer: its
        # pending counts and round trips (the sum's floats added in the same order) are the
        # per-call ones right after it, not only at the next flush.
        self.answers.append((_pending(self, smsc), _pending(self.reference, smsc)))

    def receipt(self, smsc: str, state: str) -> None:
        self.reference.receipt(smsc, state)
        super().receipt(smsc, state)

    def observe_smscs(self, status: Any) -> None:
        self.reference.observe_smscs(status)
        super().observe_smscs(status)

    def exposition(self) -> bytes:
        out = super().exposition()
        self.reference.flush()
        self.scrapes.append((_samples(self), _samples(self.reference)))
        return out


@pytest.mark.parametrize("seed", [6304, 6305])
async def test_scrapes_of_a_running_daemon_are_the_per_call_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    rng = random.Random(seed)
    monkeypatch.setattr(metrics_module, "Metrics", _Compared)
    monkeypatch.setattr("bridge.app.Metrics", _Compared)
    committed = Inbound._receipts_committed

    def per_receipt(self: Inbound, calls: list[Any]) -> None:
        # The tree before: `receipt(smsc, state.value)` a committed receipt, in order.
        if isinstance(self.metrics, _Compared):
            for call in calls:  # each receipt's tuple (session 64; a partial's args before)
                _out, smsc, _key, state, _stat, _err = call
                self.metrics.reference.receipt(smsc, str(state))  # its text (session 64)
        committed(self, calls)

    monkeypatch.setattr(Inbound, "_receipts_committed", per_receipt)

    raw = config_dict(
        tmp_path,
        smscs=[{"name": "sim"}, {"name": "b", "system_id": "bridge2"}],
        routes=[{"prefix": "+86139", "smscs": ["b", "sim"]}],
        default_route=["sim"],
    )
    for smsc in raw["smscs"]:
        smsc["port"] = raw["sim"]["port"]  # both bind to the one simulator
    raw["sim"]["outcomes"] = {"DELIVRD": 3, "UNDELIV": 1, "EXPIRED": 1}
    raw["sim"]["receipt_delay_ms"] = 5
    cfg = parse_config(raw, env={}, base_dir=tmp_path)
    d = Daemon(cfg)
    await d.start()
    try:
        assert d.sim is not None
        d.sim.accounts["bridge2"] = "bridge"  # the second SMSC's own system_id
        metrics = d.metrics
        assert isinstance(metrics, _Compared)
        await wait_until(lambda: all(c.is_up for c in d.connectors.values()), 15)
        only_sim = replace(cfg, smscs=tuple(s for s in cfg.smscs if s.name == "sim"), routes=())
        wider = replace(
            cfg,
            smscs=tuple(
                replace(s, window=s.window + 1) if s.name == "sim" else s for s in cfg.smscs
            ),
        )
        creds = await create_account(d, "r4")
        client = client_for(d.http_port, creds)
        # First one acceptance of b, then one of sim, before any scrape: each SMSC's round-trip
        # series is made by its first answer, so b's comes first in the exposition (where the
        # ok sinks were made sim first, in the configuration's order).
        d.sim.throttle_ratio = d.sim.syserr_ratio = 0.0
        await client.send("+8613900000000", text="first")
        await wait_until(lambda: "b" in metrics.reference._rtt, 15)
        await client.send("+8613800000000", text="second")
        await wait_until(lambda: "sim" in metrics.reference._rtt, 15)
        assert list(metrics.reference._rtt) == ["b", "sim"]
        d.sim.throttle_ratio, d.sim.syserr_ratio = 0.25, 0.1
        done = asyncio.Event()

        async def scraper() -> None:
            async with aiohttp.ClientSession() as s:
                while not done.is_set():
                    async with s.get(f"http://127.0.0.1:{d.http_port}/metrics") as r:
                        assert r.status == 200
                        await r.read()
                    await asyncio.sleep(rng.choice([0.01, 0.05, 0.2]))

        async def reloader() -> None:
            for new in (only_sim, cfg, wider, only_sim, cfg):  # remove, add, rebind, ...
                await asyncio.sleep(rng.uniform(0.3, 0.8))
                await d.reload(new)

        tasks = [asyncio.create_task(scraper()), asyncio.create_task(reloader())]
        async with client:
            for i in range(1, 160):
                to = rng.choice(["+8613800", "+8613900"]) + f"{i:06d}"
                text = rng.choice(["code {i}", "x" * 200 + " {i}", "你好" * 40]).format(i=i)
                await client.send(to, text=text)
                if rng.random() < 0.1:
                    await asyncio.sleep(0.02)
        await tasks[1]
        inbound = d.inbound
        assert inbound is not None
        for _ in range(60):  # the receipts still due (their count still) at most 30 s
            seen = inbound.receipts
            await asyncio.sleep(0.5)
            if inbound.receipts == seen:
                break
        done.set()
        await tasks[0]
        metrics.exposition()
    finally:
        await d.stop()
    assert len(metrics.scrapes) >= 5
    assert len(metrics.answers) > 100
    for i, (got, want) in enumerate(metrics.answers):
        assert got == want, f"answer {i}"
    for i, (got, want) in enumerate(metrics.scrapes):
        assert got == want, f"scrape {i}"
    last = "\n".join(metrics.scrapes[-1][0])
    for needle in ("'ESME_ROK'", "'ESME_RTHROTTLED'", "'ESME_RSYSERR'", "('smsc', 'b')",
                   "'undeliverable'", "_sum"):  # fmt: skip
        assert needle in last, needle  # the run had what it is meant to have
