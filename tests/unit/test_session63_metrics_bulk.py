"""Session 63: the owner's metrics a part without a call each (README note 27). A committed
batch of receipts is counted by (SMSC, state) and told to `Metrics.receipts_counted` once, where
`Metrics.receipt` was called a receipt (with its state's `.value`); `Metrics.on_submit` puts a
round trip into its histogram's pending buckets itself, not through `_Pending.observe`. The
values scraped are the same: counted here against what the per-receipt calls and `observe` give.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from bridge.config import SmscConfig
from bridge.metrics import RTT_BUCKETS, Metrics, _Pending
from bridge.pipeline.inbound import Inbound
from bridge.smpp import constants as C
from bridge.smpp.session import ReceiptReceived
from bridge.store.models import ReceiptOutcome

_STATS = {
    "DELIVRD": "delivered",
    "UNDELIV": "undeliverable",
    "EXPIRED": "expired",
    "REJECTD": "rejected",
    "ENROUTE": "enroute",
    "WHATEVR": "unknown",
}


def _fields(mid: str, stat: str) -> Any:
    text = (
        f"id:{mid} sub:001 dlvrd:001 submit date:2612051400 done date:2612051401 "
        f"stat:{stat} err:000 text:hi"
    ).encode()
    return (C.ESM_DELIVERY_RECEIPT, text, None, None, None, None)


class _Store:
    commits_in_order = True

    async def apply_receipts(self, items: list[Any], now: int) -> ReceiptOutcome:
        return ReceiptOutcome(len(items), 0)


def _sample(m: Metrics, name: str, **labels: str) -> float:
    m.flush()
    return m.registry.get_sample_value(name, labels) or 0.0


async def test_a_batch_of_receipts_is_counted_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random batches of receipts of two SMSCs and six states: the scraped counts are each
    (SMSC, state)'s receipts, told by one `receipts_counted` call a batch (`receipt` made unusable:
    the tree before called it a receipt)."""
    metrics = Metrics()
    calls: list[dict[tuple[str, str], int]] = []
    real = Metrics.receipts_counted

    def recorded(self: Metrics, counts: dict[tuple[str, str], int]) -> None:
        calls.append(dict(counts))
        real(self, counts)

    def refused(*_a: Any) -> None:
        raise AssertionError("Metrics.receipt called a receipt")

    monkeypatch.setattr(Metrics, "receipts_counted", recorded)
    monkeypatch.setattr(Metrics, "receipt", refused)
    smscs = {n: SmscConfig(name=n, system_id="t", password="t") for n in ("a", "b")}
    inbound = Inbound(_Store(), smscs, batch_delay_s=0.0, metrics=metrics)  # type: ignore[arg-type]
    rng = random.Random(63)
    want: dict[tuple[str, str], int] = {}
    batches = 0
    for b in range(30):
        answers = []
        for k in range(rng.randrange(1, 40)):
            smsc, stat = rng.choice("ab"), rng.choice(list(_STATS))
            want[(smsc, _STATS[stat])] = want.get((smsc, _STATS[stat]), 0) + 1
            ev = ReceiptReceived(k, _fields(f"{b:02X}{k:04X}", stat))
            answers.append(inbound.on_receipt(smsc, ev))
        await inbound.drain()
        batches += 1
        assert [await a for a in answers] == [C.ESME_ROK] * len(answers)
    assert len(calls) == batches  # one call a batch (each drained alone)
    for (smsc, state), n in want.items():
        assert _sample(metrics, "smpp_bridge_receipts_total", smsc=smsc, state=state) == n
    assert inbound.receipts == sum(want.values())


def test_receipts_keeps_a_state_as_its_value() -> None:
    """A `ReceiptState` key and its value are one series, as `receipt(smsc, state.value)`."""
    from bridge.smpp.receipt import ReceiptState

    m = Metrics()
    m.receipts_counted({("a", ReceiptState.DELIVERED): 2})
    m.receipts_counted({("a", "delivered"): 1})
    m.receipt("a", "delivered")
    assert list(m._receipts) == [("a", "delivered")]
    assert type(next(iter(m._receipts))[1]) is str
    assert _sample(m, "smpp_bridge_receipts_total", smsc="a", state="delivered") == 4


def test_on_submit_buckets_a_round_trip_as_observe_did(monkeypatch: pytest.MonkeyPatch) -> None:
    """Round trips on and around every bound, and random ones: the pending buckets and sum
    `on_submit` leaves are `_Pending.observe`'s (made unusable here: not called)."""
    values = [0.0, 1e-9, 45.0, *RTT_BUCKETS]
    values += [b * (1 + d) for b in RTT_BUCKETS for d in (-1e-9, 1e-9)]
    rng = random.Random(6363)
    values += [rng.uniform(0, 40) for _ in range(2_000)]
    m = Metrics()
    want = _Pending(m.submit_rtt.labels("x"), RTT_BUCKETS)
    for v in values:
        want.observe(v)

    def refused(*_a: Any) -> None:
        raise AssertionError("_Pending.observe called")

    monkeypatch.setattr(_Pending, "observe", refused)
    for v in values:
        m.on_submit("x", "ok", "ESME_ROK", v)
    got = m._rtt["x"]
    assert got.counts == want.counts and got.total == want.total
    m.on_submit("x", "timeout", "TIMEOUT", None)  # no round trip: not observed
    assert got.counts == want.counts
    assert _sample(m, "smpp_bridge_segments_submitted_total", smsc="x", status="ESME_ROK") == len(
        values
    )
    assert _sample(m, "smpp_bridge_submit_rtt_seconds_count", smsc="x") == len(values)


def _connector(name: str) -> Any:
    from bridge.smpp.connector import Connector

    async def deliver(_smsc: str, _body: Any) -> int:
        return 0

    return Connector(SmscConfig(name=name, system_id="t", password="t"), deliver)


def _bind() -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(unanswered=0, throttle_rate=0.0, pause_started=0.0, pause=None)


@pytest.mark.parametrize("seed", range(12))
def test_acceptances_in_the_ok_sink_scrape_as_on_submit_calls(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three connectors' told acceptances (`Connector._accepted`) into the daemon's metrics as
    app.py wires them (`ok_sink`), other answers (throttled and failed with a round trip,
    time-outs without) told to `on_submit` between them, flushes and a small OK_RTTS_MAX: the
    exposition after each flush is, octet for octet (series, their order, every bucket and
    sum), what a Metrics given an `on_submit` call for each acceptance exposes. A reload's new
    connector of an SMSC takes the same list."""
    from prometheus_client import generate_latest

    from bridge.smpp import connector as connector_module

    monkeypatch.setattr(connector_module, "OK_RTTS_MAX", 7)
    rng = random.Random(seed)
    got, want = Metrics(), Metrics()
    conns: dict[str, Any] = {}

    def wired(name: str) -> Any:
        c = _connector(name)
        c.on_submit = got.on_submit
        c.ok_sink = got.ok_sink(name)
        conns[name] = c
        return c

    for name in ("a", "b", "c"):
        wired(name)
    bind = _bind()
    longest = 0
    for step in range(600):
        name = rng.choice("abc")
        r = rng.random()
        rtt = rng.choice([rng.uniform(0, 3), rng.choice(RTT_BUCKETS)])
        if r < 0.75:
            conns[name]._accepted(step, bind, rtt, f"m{step}", 10.0 + step)
            want.on_submit(name, "ok", "ESME_ROK", rtt)
        elif r < 0.85:
            args = rng.choice(
                [("throttled", "ESME_RTHROTTLED", rtt), ("permanent", "ESME_RINVDSTADR", rtt),
                 ("timeout", "TIMEOUT", None), ("ok", "ESME_ROK", rtt)]
            )  # fmt: skip
            got.on_submit(name, *args)
            want.on_submit(name, *args)
        elif r < 0.95:
            assert generate_latest(got.registry) == generate_latest(want.registry)
            got.flush()
            want.flush()
            assert generate_latest(got.registry) == generate_latest(want.registry)
        else:
            wired(name)  # a reload's new connector: its first acceptance told, then the list
        longest = max(longest, *(len(rtts) for rtts in got._ok_rtts.values()))
    got.flush()
    want.flush()
    assert generate_latest(got.registry) == generate_latest(want.registry)
    assert 0 < longest < 7  # the list was used, and counted when full


def test_a_connector_without_an_ok_sink_tells_on_submit_each_acceptance() -> None:
    calls: list[tuple[Any, ...]] = []
    c = _connector("a")
    c.on_submit = lambda *a: calls.append(a)
    for i in range(3):
        c._accepted(i, _bind(), 0.01, "m", 1.0)
    assert calls == [("a", "ok", "ESME_ROK", 0.01)] * 3
