"""bridge/metrics.py without a daemon: each method moves exactly its series, SMSC gauges follow the
status (and drop SMSCs a reload removed), registries are per instance, and the file-backed
multi-process mode merges processes into one answer."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bridge.metrics import MULTIPROC_ENV, Metrics, multiprocess_dir
from bridge.store.base import WriteLockStats


def samples(m: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(m.exposition().decode())
        for s in fam.samples
    }


def v(m: Metrics, name: str, **labels: str) -> float:
    return samples(m).get((name, frozenset(labels.items())), 0.0)


def test_submit_hook_counts_status_throttles_and_round_trips() -> None:
    m = Metrics()
    m.on_submit("a", "ok", "ESME_ROK", 0.004)
    m.on_submit("a", "ok", "ESME_ROK", 0.2)
    m.on_submit("a", "throttled", "ESME_RTHROTTLED", 0.003)
    m.on_submit("b", "transient", "TIMEOUT", None)  # no answer: no round trip
    assert v(m, "smpp_bridge_segments_submitted_total", smsc="a", status="ESME_ROK") == 2
    assert v(m, "smpp_bridge_segments_submitted_total", smsc="a", status="ESME_RTHROTTLED") == 1
    assert v(m, "smpp_bridge_segments_submitted_total", smsc="b", status="TIMEOUT") == 1
    assert v(m, "smpp_bridge_throttle_events_total", smsc="a") == 1
    assert v(m, "smpp_bridge_throttle_events_total", smsc="b") == 0
    assert v(m, "smpp_bridge_submit_rtt_seconds_count", smsc="a") == 3
    assert v(m, "smpp_bridge_submit_rtt_seconds_bucket", smsc="a", le="0.005") == 2
    assert v(m, "smpp_bridge_submit_rtt_seconds_bucket", smsc="a", le="0.25") == 3
    assert v(m, "smpp_bridge_submit_rtt_seconds_count", smsc="b") == 0


def test_the_store_write_lock_counters_move_by_what_the_store_reports_since() -> None:
    """Read off the store at each flush: the counters move by the difference since the last read
    (the store's own totals start at 0 when it opens), never backwards."""
    m = Metrics()
    now = WriteLockStats(held_s=0.25, wait_s=0.0, commits=3, jobs=7)
    m.watch_store("acceptor", lambda: now)
    assert v(m, "smpp_bridge_store_write_lock_seconds_total", role="acceptor") == 0.25
    now = WriteLockStats(
        held_s=1.0, wait_s=0.5, commits=10, jobs=40, cpu_s=0.75, fsyncs=6, fsync_s=0.03
    )
    m.flush()
    by_name = {
        name: value
        for (name, labels), value in samples(m).items()
        if name.startswith("smpp_bridge_store_") and name.endswith("_total")
        and labels == frozenset({("role", "acceptor")})
    }  # fmt: skip
    assert by_name == {
        "smpp_bridge_store_write_lock_seconds_total": 1.0,
        "smpp_bridge_store_write_lock_cpu_seconds_total": 0.75,
        "smpp_bridge_store_write_lock_wait_seconds_total": 0.5,
        "smpp_bridge_store_commits_total": 10,
        "smpp_bridge_store_write_jobs_total": 40,
        "smpp_bridge_store_fsyncs_total": 6,
        "smpp_bridge_store_fsync_seconds_total": 0.03,
    }
    assert v(m, "smpp_bridge_store_write_jobs_total", role="owner") == 0


def test_an_engine_without_one_write_lock_reports_no_lock_series() -> None:
    m = Metrics()
    m.watch_store("all", lambda: None)  # PostgreSQL
    assert not [k for k in samples(m) if k[0].startswith("smpp_bridge_store_")]


def test_api_receipt_webhook_and_billing_counters() -> None:
    m = Metrics()
    m.request("POST /v1/messages", 202, "OK")
    m.request("POST /v1/messages", 429, "ACCOUNT_RATE_LIMIT")
    m.request("POST /v1/messages", 429, "ACCOUNT_RATE_LIMIT")
    m.accepted(3, 7)
    m.accept(0.012)
    m.receipt("a", "delivered")
    m.unmatched(0)
    m.unmatched(2)
    m.mo("a")
    m.webhook("status", "delivered", 5)
    m.webhook("mo", "dead", 0)  # nothing happened: its series stays at 0
    assert v(m, "smpp_bridge_api_requests_total", endpoint="POST /v1/messages", status="429",
             code="ACCOUNT_RATE_LIMIT") == 2  # fmt: skip
    assert v(m, "smpp_bridge_messages_accepted_total") == 3
    assert v(m, "smpp_bridge_segments_accepted_total") == 7
    assert v(m, "smpp_bridge_accept_latency_seconds_bucket", le="0.01") == 0
    assert v(m, "smpp_bridge_accept_latency_seconds_bucket", le="0.025") == 1
    assert v(m, "smpp_bridge_receipts_total", smsc="a", state="delivered") == 1
    assert v(m, "smpp_bridge_receipts_unmatched_total") == 2
    assert v(m, "smpp_bridge_mo_received_total", smsc="a") == 1
    assert v(m, "smpp_bridge_webhook_deliveries_total", kind="status", outcome="delivered") == 5
    # Every kind and outcome exists from the start at 0 (rate() misses a series' first sample).
    assert v(m, "smpp_bridge_webhook_deliveries_total", kind="mo", outcome="dead") == 0
    assert v(m, "smpp_bridge_webhook_deliveries_total", kind="event", outcome="retry") == 0
    assert v(m, "smpp_bridge_balance_warnings_total") == 0
    m.balance_warning()
    assert v(m, "smpp_bridge_balance_warnings_total") == 1


def test_smsc_gauges_follow_the_status_and_forget_removed_smscs() -> None:
    m = Metrics()
    status = {
        "a": {"up": True, "binds": {"transmitter": {"configured": 2, "up": 2},
                                    "receiver": {"configured": 2, "up": 1}},
              "window": {"size": 100, "in_use": 37}},
        "b": {"up": False},  # an acceptor's view while the owner is silent
    }  # fmt: skip
    m.observe_smscs(status)
    assert v(m, "smpp_bridge_smsc_up", smsc="a") == 1
    assert v(m, "smpp_bridge_binds_up", smsc="a") == 3
    assert v(m, "smpp_bridge_binds_configured", smsc="a") == 4
    assert v(m, "smpp_bridge_window_size", smsc="a") == 100
    assert v(m, "smpp_bridge_window_in_use", smsc="a") == 37
    assert v(m, "smpp_bridge_smsc_up", smsc="b") == 0
    assert v(m, "smpp_bridge_binds_configured", smsc="b") == 0
    # The counters alerts compare per SMSC exist from the first scrape at 0 (rate() misses a
    # series' first sample), and go with their SMSC like its gauges.
    assert samples(m)[("smpp_bridge_throttle_events_total", frozenset({("smsc", "a")}))] == 0
    ok = frozenset({("smsc", "b"), ("status", "ESME_ROK")})
    assert samples(m)[("smpp_bridge_segments_submitted_total", ok)] == 0
    m.on_submit("b", "transient", "TIMEOUT", None)
    m.observe_smscs({"a": status["a"]})
    assert not any(("smsc", "b") in labels for _n, labels in samples(m))
    # Unknown (an acceptor without word from its owner): NaN, which no `== 0` alert matches;
    # known again, the real values.
    m.observe_smscs({"a": {"up": False, "state": "unknown"}})
    assert math.isnan(v(m, "smpp_bridge_smsc_up", smsc="a"))
    assert math.isnan(v(m, "smpp_bridge_binds_up", smsc="a"))
    m.observe_smscs({"a": status["a"]})
    assert v(m, "smpp_bridge_smsc_up", smsc="a") == 1


def test_each_instance_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.accepted(1, 1)
    assert v(a, "smpp_bridge_messages_accepted_total") == 1
    assert v(b, "smpp_bridge_messages_accepted_total") == 0
    assert multiprocess_dir() is None


def test_multiprocess_mode_merges_every_process_into_one_answer(tmp_path: Path) -> None:
    """Three processes, as the supervisor runs them: the owner (enables the mode), and two
    children started with the inherited environment; any one of them answers with the sums."""
    script = textwrap.dedent(
        """
        import sys
        from bridge.metrics import Metrics, enable_multiprocess, multiprocess_dir
        role = sys.argv[1]
        if role == "owner":
            enable_multiprocess()
        assert multiprocess_dir() is not None
        m = Metrics()
        if role == "owner":
            m.on_submit("a", "ok", "ESME_ROK", 0.01)
            m.observe_smscs({"a": {"up": True, "binds": {"transceiver": {"configured": 1, "up": 1}},
                                   "window": {"size": 50, "in_use": 3}}})
            import os, subprocess
            for n in ("2", "5"):
                subprocess.run([sys.executable, "-c", sys.argv[2], "acceptor", sys.argv[2], n],
                               check=True, env=os.environ.copy())
            sys.stdout.write(m.exposition().decode())
        else:
            m.accepted(int(sys.argv[3]), int(sys.argv[3]))
            m.flush()  # what the daemon's flush_every task does each second and when stopped
        """
    )
    env = {k: val for k, val in os.environ.items() if k != MULTIPROC_ENV}
    env[MULTIPROC_ENV] = str(tmp_path / "files")
    out = subprocess.run(
        [sys.executable, "-c", script, "owner", script],
        capture_output=True, text=True, env=env, check=True, timeout=60,
    ).stdout  # fmt: skip
    got = {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(out)
        for s in fam.samples
    }
    assert got[("smpp_bridge_messages_accepted_total", frozenset())] == 7
    assert got[("smpp_bridge_segments_submitted_total",
                frozenset({("smsc", "a"), ("status", "ESME_ROK")}))] == 1  # fmt: skip
    assert got[("smpp_bridge_window_in_use", frozenset({("smsc", "a")}))] == 3
    assert not any("pid" in dict(labels) for _n, labels in got)
    assert len(list((tmp_path / "files").glob("counter_*.db"))) == 3


def test_a_value_on_a_bucket_bound_counts_in_that_bucket() -> None:
    m = Metrics()
    m.accept(0.005)
    m.accept(0.0050001)
    m.accept(99.0)  # beyond the last bound: +Inf only
    assert v(m, "smpp_bridge_accept_latency_seconds_bucket", le="0.0025") == 0
    assert v(m, "smpp_bridge_accept_latency_seconds_bucket", le="0.005") == 1
    assert v(m, "smpp_bridge_accept_latency_seconds_bucket", le="0.01") == 2
    assert v(m, "smpp_bridge_accept_latency_seconds_bucket", le="10.0") == 2
    assert v(m, "smpp_bridge_accept_latency_seconds_bucket", le="+Inf") == 3
    assert v(m, "smpp_bridge_accept_latency_seconds_count") == 3
    assert abs(v(m, "smpp_bridge_accept_latency_seconds_sum") - 99.0100001) < 1e-9
    m.accept(0.001)  # a second flush adds to the first
    assert v(m, "smpp_bridge_accept_latency_seconds_count") == 4


async def test_flush_every_keeps_the_values_fresh_and_flushes_once_more_when_cancelled() -> None:
    m = Metrics()
    raw = m.registry.get_sample_value  # reads the prometheus values without flushing
    task = asyncio.create_task(m.flush_every(0.01))
    m.accepted(2, 3)
    assert raw("smpp_bridge_messages_accepted_total") == 0  # waiting for the flush
    await asyncio.sleep(0.05)
    assert raw("smpp_bridge_messages_accepted_total") == 2
    m.accepted(1, 1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert raw("smpp_bridge_messages_accepted_total") == 3
    assert raw("smpp_bridge_segments_accepted_total") == 4


async def test_loop_lag_sees_a_blocked_loop() -> None:
    """The lag sampler observes how late its timer fires: a 200 ms block of the loop lands in
    the buckets above 100 ms, the idle samples in the lowest ones. Why 200 ms: a 60 ms block
    could read as 50 ms of lag (blocked right as a 10 ms timer was set) and land in the 50 ms
    bucket; and the bounds leave room for a loaded machine's late timers (CI, session 53)."""
    import time

    m = Metrics()
    task = asyncio.create_task(m.watch_loop("acceptor", interval_s=0.01))
    await asyncio.sleep(0.05)
    time.sleep(0.2)  # what a checkpoint waiting in SQLite's busy handler did to the loop
    await asyncio.sleep(0.05)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    count = v(m, "smpp_bridge_event_loop_lag_seconds_count", role="acceptor")
    assert count >= 5
    upto_100ms = v(m, "smpp_bridge_event_loop_lag_seconds_bucket", role="acceptor", le="0.1")
    assert count - upto_100ms >= 1  # the block, less the at most 10 ms its timer had left
    assert v(m, "smpp_bridge_event_loop_lag_seconds_bucket", role="acceptor", le="0.01") >= 1
    assert v(m, "smpp_bridge_event_loop_lag_seconds_bucket", role="acceptor", le="0.5") == count
    assert v(m, "smpp_bridge_event_loop_lag_seconds_count", role="owner") == 0


def test_a_process_file_not_sized_yet_is_read_as_nothing_published(tmp_path: Path) -> None:
    """prometheus_client creates a process's file, then sizes it; a reader in between found it
    empty and the library's reader raised struct.error: `/metrics`, `GET /admin/queue` (which
    reads the reload flags and the acceptors' generations) and `status` answered 500 while an
    acceptor started (CI, session 51, an acceptor's restart after a kill -9)."""
    script = textwrap.dedent(
        """
        import os, sys
        from bridge.metrics import Metrics, enable_multiprocess, multiprocess_dir
        enable_multiprocess()
        m = Metrics()
        m.set_generation("owner", "", "0000000000a1")
        m.accepted(3, 3)
        m.flush()
        for name in ("gauge_livemostrecent_99999.db", "counter_99999.db", "gauge_liveall_99999.db"):
            open(os.path.join(multiprocess_dir(), name), "a+b").close()  # created, not sized
        print(m.last_reload_ok())
        print(sorted((role, gen) for role, _slot, _pid, gen in m.generations()))
        sys.stdout.write(m.exposition().decode())
        """
    )
    env = {k: val for k, val in os.environ.items() if k != MULTIPROC_ENV}
    env[MULTIPROC_ENV] = str(tmp_path / "files")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ok, generations, *exposition = done.stdout.splitlines()
    assert ok == "True"
    assert generations == "[('owner', '0000000000a1')]"
    got = {
        s.name: s.value
        for fam in text_string_to_metric_families("\n".join(exposition) + "\n")
        for s in fam.samples
    }
    assert got["smpp_bridge_messages_accepted_total"] == 3
