"""GET /metrics against real daemons: a send through the simulator moves exactly the counters and
gauges it should; the output parses as Prometheus text; `server.metrics: false` answers the 404
envelope; several daemons in one process count apart; and with `server.workers: 2` every scrape,
whichever acceptor answers it, returns the totals of all processes."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from bridge.api import reports
from bridge.app import Daemon
from bridge.client import BridgeClient, BridgeError
from bridge.metrics import MULTIPROC_ENV
from bridge.smpp import constants as C
from bridge.smpp.codec import ShortMessage
from bridge.store import sqlite_erase

# tests/integration has no __init__.py, so pytest does not put the repository root on sys.path;
# the end-to-end harness (real daemon, simulator, webhook receiver) lives in the `tests` package.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.e2e.harness import (  # noqa: E402
    DaemonProcess,
    client_for,
    config_dict,
    create_account,
    make_config,
    wait_until,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
UCS2_3_PARTS = "你好" * 100  # 200 UCS-2 characters: 3 parts of up to 67


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


def val(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(port: int) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        return r.status, r.headers.get("Content-Type", ""), await r.text()


async def metrics_of(port: int) -> Samples:
    status, ctype, text = await scrape(port)
    assert status == 200, text
    assert ctype.startswith("text/plain; version=0.0.4"), ctype
    return parse(text)


async def final(client: Any, mid: str) -> str:
    async def done() -> str | None:
        m = await client.message(mid)
        return m["status"] if m["status"] not in ("queued", "sent") else None

    return await wait_until(done, 20, 0.05)


@pytest.fixture
async def daemon(tmp_path):
    d = Daemon(make_config(tmp_path))
    await d.start()
    try:
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        yield d
    finally:
        await d.stop()


async def test_a_send_through_the_simulator_moves_each_metric_by_what_happened(daemon, receiver):
    d = daemon
    before = await metrics_of(d.http_port)
    assert val(before, "smpp_bridge_binds_up", smsc="sim") == 1
    assert val(before, "smpp_bridge_binds_configured", smsc="sim") == 1
    assert val(before, "smpp_bridge_smsc_up", smsc="sim") == 1
    assert val(before, "smpp_bridge_window_size", smsc="sim") == d.config.smscs[0].window
    assert val(before, "smpp_bridge_messages_accepted_total") == 0
    assert val(before, "smpp_bridge_balance_warnings_total") == 0  # defined, billing comes later

    # Receipts 300 ms after each part: none comes before its part's result is recorded (the
    # dispatcher records a message's results once its last part is answered; with the default
    # 10 ms, under CI's load, the first part's receipt of the 3-part message once came first and
    # was counted unmatched, as it should be).
    d.sim.receipt_delay_ms = 300
    t_before = time.monotonic()
    creds = await create_account(d, "metrics", status_callback_url=receiver.url)
    async with client_for(d.http_port, creds) as c:
        one = await c.send("+8613800138000", text="one GSM part", idempotency_key="k-one")
        three = await c.send("+8613800138001", text=UCS2_3_PARTS)
        again = await c.send("+8613800138000", text="one GSM part", idempotency_key="k-one")
        assert again == one  # an idempotent replay: counted as REPLAYED, not accepted again
        for r in (one, three):
            assert await final(c, r["messages"][0]["id"]) == "delivered"
    async with client_for(d.http_port, {**creds, "app_secret": "x" * 40}) as bad:
        with pytest.raises(BridgeError) as refused:
            await bad.account()
        assert refused.value.code == "SIGNATURE_MISMATCH"
    await wait_until(lambda: len(receiver.reports) == 2, 10)
    await d.sim.inject_mo("8613800138000", "smpp-bridge", "YES")
    await wait_until(lambda: d.inbound is not None and d.inbound.mo == 1, 10)

    async def settled() -> Samples | None:  # the queue depth is counted at each scrape
        m = await metrics_of(d.http_port)
        return m if val(m, "smpp_bridge_queue_depth") == 0 else None

    m = await wait_until(settled, 5, 0.2)
    post = dict(endpoint="POST /v1/messages", status="202")
    assert val(m, "smpp_bridge_api_requests_total", **post, code="OK") == 2
    assert val(m, "smpp_bridge_api_requests_total", **post, code="REPLAYED") == 1
    assert (
        val(m, "smpp_bridge_api_requests_total", endpoint="GET /v1/account", status="401",
            code="SIGNATURE_MISMATCH") == 1
    )  # fmt: skip
    assert val(m, "smpp_bridge_accept_latency_seconds_count") == 2
    assert 0 < val(m, "smpp_bridge_accept_latency_seconds_sum") < 10
    assert val(m, "smpp_bridge_accept_latency_seconds_bucket", le="+Inf") == 2
    assert val(m, "smpp_bridge_messages_accepted_total") == 2
    assert val(m, "smpp_bridge_segments_accepted_total") == 4
    assert val(m, "smpp_bridge_segments_submitted_total", smsc="sim", status="ESME_ROK") == 4
    assert val(m, "smpp_bridge_submit_rtt_seconds_count", smsc="sim") == 4
    assert val(m, "smpp_bridge_throttle_events_total", smsc="sim") == 0
    assert val(m, "smpp_bridge_receipts_total", smsc="sim", state="delivered") == 4
    assert val(m, "smpp_bridge_receipts_unmatched_total") == 0
    assert val(m, "smpp_bridge_receipts_unmatched_pending") == 0
    assert val(m, "smpp_bridge_webhook_deliveries_total", kind="status", outcome="delivered") == 2
    assert val(m, "smpp_bridge_mo_received_total", smsc="sim") == 1
    assert val(m, "smpp_bridge_window_in_use", smsc="sim") == 0
    # The store's write lock (one process: role "all"): held for part of the time between the
    # scrapes, by commits of at least the two accepts, a claim, the submit results, the receipts.
    lock = "smpp_bridge_store_write_lock_seconds_total"
    held = val(m, lock, role="all") - val(before, lock, role="all")
    assert 0 < held < time.monotonic() - t_before
    cpu = "smpp_bridge_store_write_lock_cpu_seconds_total"
    assert 0 < val(m, cpu, role="all") - val(before, cpu, role="all") <= held
    jobs = "smpp_bridge_store_write_jobs_total"
    commits = "smpp_bridge_store_commits_total"
    assert val(m, jobs, role="all") - val(before, jobs, role="all") >= 5
    assert 0 < val(m, commits, role="all") - val(before, commits, role="all")
    assert val(m, commits, role="all") <= val(m, jobs, role="all")
    # The accepts were durable: each answer waited for a WAL fsync, counted with its time, and
    # no more fsyncs than commits (one fsync covers the group committed before it began).
    fsyncs = val(m, "smpp_bridge_store_fsyncs_total", role="all") - val(
        before, "smpp_bridge_store_fsyncs_total", role="all"
    )
    assert 0 < fsyncs <= val(m, commits, role="all") - val(before, commits, role="all")
    fsync_s = "smpp_bridge_store_fsync_seconds_total"
    # One fsync in flight at a time in a process: their seconds fit in the time between scrapes.
    assert (
        0
        < val(m, fsync_s, role="all") - val(before, fsync_s, role="all")
        < (time.monotonic() - t_before)
    )
    # Every earlier scrape was counted too, by its route template (at least `before` and `m`).
    again = await metrics_of(d.http_port)
    scrapes = val(again, "smpp_bridge_api_requests_total", endpoint="GET /metrics", status="200",
                  code="OK")  # fmt: skip
    assert scrapes >= 2
    for (name, _labels), _v in m.items():
        assert name.startswith("smpp_bridge_"), name


async def test_reports_waiting_for_a_customer_endpoint_show_as_a_backlog(daemon, receiver):
    """A customer's endpoint down: its reports show as pending with the age of the oldest, so
    an operator can alert on it (found missing by the leak soak's review); once the endpoint
    answers, the backlog is 0 again."""
    d = daemon
    receiver.fail_with = 503
    creds = await create_account(d, "backlog", status_callback_url=receiver.url)
    async with client_for(d.http_port, creds) as c:
        for i in range(3):
            r = await c.send(f"+861380013810{i}", text="report me")
            assert await final(c, r["messages"][0]["id"]) == "delivered"
    await asyncio.sleep(1.2)  # the oldest report a second old at least
    m = await metrics_of(d.http_port)
    assert val(m, "smpp_bridge_webhook_reports", state="pending") == 3
    assert val(m, "smpp_bridge_webhook_reports", state="dead") == 0
    assert 1.0 <= val(m, "smpp_bridge_webhook_oldest_pending_seconds") < 60
    receiver.fail_with = None

    async def drained() -> Samples | None:
        m = await metrics_of(d.http_port)
        return m if val(m, "smpp_bridge_webhook_reports", state="pending") == 0 else None

    m = await wait_until(drained, 15, 0.2)  # the retry schedule's first step: 1 s
    assert val(m, "smpp_bridge_webhook_oldest_pending_seconds") == 0
    assert len({r["message_id"] for r in receiver.reports}) == 3


async def test_requests_no_route_takes_count_as_unmatched_as_the_readme_says(daemon):
    """README, Metrics: `endpoint` is `unmatched` for a request whose path and method no route
    takes, whatever the answer: a 404, a 405 on a path that has routes (`DELETE /v1/messages`),
    and the 401 an unsigned such /v1/ request gets first. The label stays bounded: neither the
    raw path nor a method no route has becomes a label value."""
    d = daemon
    creds = await create_account(d, "unmatched")
    before = await metrics_of(d.http_port)
    async with client_for(d.http_port, creds) as c:
        with pytest.raises(BridgeError) as refused:  # signed: past authentication
            await c.request("DELETE", "/v1/messages")
        assert (refused.value.status, refused.value.code) == (405, "METHOD_NOT_ALLOWED")
    async with aiohttp.ClientSession() as s:
        base = f"http://127.0.0.1:{d.http_port}"
        async with s.delete(f"{base}/v1/messages") as r:
            assert (r.status, (await r.json())["error"]["code"]) == (401, "MISSING_AUTH")
        async with s.get(f"{base}/nowhere/8613800138000") as r:
            assert r.status == 404
    after = await metrics_of(d.http_port)

    def moved(**labels: str) -> float:
        return val(after, "smpp_bridge_api_requests_total", **labels) - val(
            before, "smpp_bridge_api_requests_total", **labels
        )

    unmatched = dict(endpoint="unmatched")
    assert moved(**unmatched, status="405", code="METHOD_NOT_ALLOWED") == 1
    assert moved(**unmatched, status="401", code="MISSING_AUTH") == 1
    assert moved(**unmatched, status="404", code="NOT_FOUND") == 1
    endpoints = {dict(labels)["endpoint"] for (name, labels) in after if "endpoint" in dict(labels)}
    assert not {e for e in endpoints if e.startswith("DELETE") or "nowhere" in e}, endpoints


async def test_throttling_is_counted_per_smsc_and_matches_the_simulator(daemon):
    d = daemon
    d.sim.throttle_ratio = 0.3
    creds = await create_account(d, "throttled")
    async with client_for(d.http_port, creds) as c:
        sent = [await c.send(f"+86138001380{i:02d}", text=f"t{i}") for i in range(20)]
        for r in sent:
            assert await final(c, r["messages"][0]["id"]) == "delivered"
    m = await metrics_of(d.http_port)
    throttled = d.sim.counters["throttled"]
    assert throttled > 0  # 0.7 ** 20 < 0.1 %
    assert val(m, "smpp_bridge_throttle_events_total", smsc="sim") == throttled
    assert val(m, "smpp_bridge_segments_submitted_total", smsc="sim", status="ESME_RTHROTTLED") == (
        throttled
    )
    assert val(m, "smpp_bridge_segments_submitted_total", smsc="sim", status="ESME_ROK") == 20
    # Throttled attempts were answered too: their round trips are in the histogram.
    assert val(m, "smpp_bridge_submit_rtt_seconds_count", smsc="sim") == 20 + throttled


async def test_an_unmatched_receipt_counts_and_shows_as_pending(daemon):
    d = daemon
    assert d.inbound is not None
    receipt = ShortMessage(
        source_addr="8613800138000",
        destination_addr="smpp-bridge",
        esm_class=0x04,
        short_message=b"id:DEADBEEF sub:001 dlvrd:001 submit date:2601010000 "
        b"done date:2601010000 stat:DELIVRD err:000 text:",
    )
    assert await d.inbound.on_deliver("sim", receipt) == C.ESME_ROK
    m = await metrics_of(d.http_port)
    assert val(m, "smpp_bridge_receipts_total", smsc="sim", state="delivered") == 1
    assert val(m, "smpp_bridge_receipts_unmatched_total") == 1
    assert val(m, "smpp_bridge_receipts_unmatched_pending") == 1


async def test_an_smsc_going_down_shows_in_the_bind_gauges(daemon):
    d = daemon
    await d.sim.stop()
    await wait_until(lambda: not d.connectors["sim"].is_up, 10)
    m = await metrics_of(d.http_port)
    assert val(m, "smpp_bridge_smsc_up", smsc="sim") == 0
    assert val(m, "smpp_bridge_binds_up", smsc="sim") == 0
    assert val(m, "smpp_bridge_binds_configured", smsc="sim") == 1
    assert val(m, "smpp_bridge_window_size", smsc="sim") == 0


@pytest.mark.parametrize("cut", ["CLIENT_GONE", "STREAM_FAILED"])
async def test_a_cdr_download_cut_mid_stream_is_not_counted_ok(daemon, monkeypatch, cut):
    """Its headers said 200, then the stream broke: the client went away (CLIENT_GONE) or a
    store read failed (STREAM_FAILED, the connection cut). Counted OK before, so a dashboard
    showed no trouble. Pages of one row (reports.CDR_PAGE), the second page's read held until
    the client is gone."""
    d = daemon
    creds = await create_account(d, "cdrs")
    async with client_for(d.http_port, creds) as c:
        for i in range(3):
            await c.send(f"+861380013800{i}", text="hi")
    monkeypatch.setattr(reports, "CDR_PAGE", 1)
    real = d.store.cdr_page
    second = asyncio.Event()
    gone = asyncio.Event()

    async def held(*args: Any) -> Any:
        if args[3] is not None:  # the second page
            second.set()
            if cut == "STREAM_FAILED":
                raise RuntimeError("disk on fire")
            await gone.wait()
            await asyncio.sleep(0.3)  # the server sees the connection lost
        return await real(*args)

    monkeypatch.setattr(d.store, "cdr_page", held)
    month = time.strftime("%Y-%m", time.gmtime())
    signer = client_for(d.http_port, creds)
    headers = signer.signed_headers("GET", "/v1/cdrs", f"month={month}", b"", {})
    async with aiohttp.ClientSession() as s:
        resp = await s.get(f"http://127.0.0.1:{d.http_port}/v1/cdrs?month={month}", headers=headers)
        assert resp.status == 200
        async with asyncio.timeout(10):
            await second.wait()
        if cut == "STREAM_FAILED":
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        resp.close()
        gone.set()
    await signer.close()

    async def counted() -> Samples | None:
        m = await metrics_of(d.http_port)
        return m if val(m, "smpp_bridge_api_requests_total", **cdrs, code=cut) else None

    cdrs = dict(endpoint="GET /v1/cdrs", status="200")
    m = await wait_until(counted, 10, 0.1)
    assert val(m, "smpp_bridge_api_requests_total", **cdrs, code=cut) == 1
    assert val(m, "smpp_bridge_api_requests_total", **cdrs, code="OK") == 0


async def test_a_retention_run_failing_part_way_counts_what_it_purged(daemon, monkeypatch):
    """The sweeper's retention step: messages purged before a later step failed (each chunk
    its own commit) are counted in smpp_bridge_retention_purged_total, and the failure still
    reaches the sweeper's log (raised)."""
    from bridge.retention import DAY_MS, Retention
    from bridge.store import purge, sqlite_retention
    from bridge.store.models import BillRow

    d = daemon
    creds = await create_account(d, "retained")
    async with client_for(d.http_port, creds) as c:
        sent = [await c.send(f"+861380013800{i}", text="hi") for i in range(2)]
        for r in sent:
            assert await final(c, r["messages"][0]["id"]) == "delivered"

    def broken(*args: Any) -> Any:
        raise RuntimeError("disk on fire")

    later = int(time.time() * 1000) + 32 * DAY_MS
    d._retention = Retention(d.store, 31)
    tz = d.config.rules.timezone
    while held := await d._retention.unsettled(later - 31 * DAY_MS, tz):  # billing is on
        for account in await d.store.list_accounts():
            await d.store.save_bill(BillRow(account.id, held[0], "{}", later), [])
    monkeypatch.setattr(sqlite_retention, "_purge_mo", broken)
    with pytest.raises(purge.PurgeFailed):
        await d._retain(later)
    m = await metrics_of(d.http_port)
    assert val(m, "smpp_bridge_retention_purged_total", kind="messages") == 2
    assert val(m, "smpp_bridge_retention_purged_total", kind="mo") == 0


async def test_two_daemons_in_one_process_count_apart(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = Daemon(make_config(tmp_path / "a")), Daemon(make_config(tmp_path / "b"))
    for d in (a, b):
        await d.start()
    try:
        await wait_until(lambda: a.connectors["sim"].is_up and b.connectors["sim"].is_up, 10)
        creds = await create_account(a, "only-a")
        async with client_for(a.http_port, creds) as c:
            await c.send("+8613800138000", text="to a")
        ma, mb = await metrics_of(a.http_port), await metrics_of(b.http_port)
        assert val(ma, "smpp_bridge_messages_accepted_total") == 1
        assert val(mb, "smpp_bridge_messages_accepted_total") == 0
    finally:
        for d in (b, a):
            await d.stop()


async def test_metrics_off_by_config_is_the_404_envelope(make_api):
    api = await make_api({"server": {"metrics": False}})
    r = await api.request("GET", "/metrics")
    assert r.status == 404 and r.code == "NOT_FOUND"
    assert "server.metrics" in r.message


async def test_metrics_is_open_and_documented_text(api_server):
    r = await api_server.request("GET", "/metrics")  # no credentials, no admin token
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(r.text)}
    # Counters are listed by family name (without _total); labelled families with no child yet
    # still print their HELP and TYPE.
    for expected in (
        "smpp_bridge_api_requests",
        "smpp_bridge_accept_latency_seconds",
        "smpp_bridge_segments_submitted",
        "smpp_bridge_receipts",
        "smpp_bridge_webhook_deliveries",
        "smpp_bridge_queue_depth",
        "smpp_bridge_webhook_reports",
        "smpp_bridge_webhook_oldest_pending_seconds",
        "smpp_bridge_balance_warnings",
        "smpp_bridge_event_loop_lag_seconds",
    ):
        assert expected in names, (expected, sorted(names))


async def test_several_processes_answer_every_scrape_with_the_totals_of_all(tmp_path, monkeypatch):
    """server.workers: 2: the scrape lands on either acceptor (SO_REUSEPORT); each answer must be
    the sum over both acceptors (which accepted) and the owner (which submitted)."""
    files = tmp_path / "prom"
    monkeypatch.setenv(MULTIPROC_ENV, str(files))  # inherited by the daemon: files we can see
    proc = DaemonProcess(tmp_path, config_dict(tmp_path, server={"workers": 2}))
    roles = ("owner", "acceptor")
    started = time.monotonic()
    proc.start()
    try:
        await proc.wait_ready(30)
        # server.acceptor_nice (default 5): the acceptors yield the CPU to the owner.
        owner = proc.proc.pid
        children = Path(f"/proc/{owner}/task/{owner}/children")
        kids = [int(k) for k in children.read_text().split()]  # noqa: ASYNC240 (procfs)
        assert len(kids) == 2
        base = os.getpriority(os.PRIO_PROCESS, owner)
        # Each acceptor renices itself as it starts; ready means one acceptor answered, and the
        # other may still be starting up (it was still at `base` on a loaded CI machine).
        await wait_until(
            lambda: [os.getpriority(os.PRIO_PROCESS, k) for k in kids] == [base + 5, base + 5],
            10,
        )
        creds = await proc.account("mp")
        n = 12
        fresh = aiohttp.TCPConnector(force_close=True)  # a new connection, so either acceptor
        async with (
            aiohttp.ClientSession(connector=fresh) as session,
            BridgeClient(f"http://127.0.0.1:{proc.port}", **creds, session=session) as c,
        ):
            ids = []
            for i in range(n):
                r = await c.send(f"+86138001381{i:02d}", text=f"mp {i}")
                ids.append(r["messages"][0]["id"])
            for mid in ids:
                assert await final(c, mid) == "delivered"

        async def flushed() -> bool:  # each process writes its files at least once a second
            m = await metrics_of(proc.port)
            return (
                val(m, "smpp_bridge_receipts_total", smsc="sim", state="delivered") == n
                and val(m, "smpp_bridge_messages_accepted_total") == n
                and val(m, "smpp_bridge_accept_latency_seconds_count") == n
                and val(m, "smpp_bridge_segments_submitted_total", smsc="sim", status="ESME_ROK")
                == n
            )

        await wait_until(flushed, 10, 0.2)
        seen: list[Samples] = []
        for _ in range(8):
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
                s.get(f"http://127.0.0.1:{proc.port}/metrics") as r,
            ):
                assert r.status == 200
                seen.append(parse(await r.text()))
        for m in seen:
            assert val(m, "smpp_bridge_messages_accepted_total") == n
            assert val(m, "smpp_bridge_accept_latency_seconds_count") == n
            ok = val(m, "smpp_bridge_segments_submitted_total", smsc="sim", status="ESME_ROK")
            assert ok == n
            assert val(m, "smpp_bridge_receipts_total", smsc="sim", state="delivered") == n
            assert val(m, "smpp_bridge_binds_up", smsc="sim") == 1
            assert val(m, "smpp_bridge_window_size", smsc="sim") == 50
            # The write lock by role: the acceptors committed the n accepts, the owner the
            # claims, results and receipts; their time held adds up to less than the run's.
            jobs = {r: val(m, "smpp_bridge_store_write_jobs_total", role=r) for r in roles}
            assert jobs["acceptor"] >= n and jobs["owner"] >= 3
            held = [val(m, "smpp_bridge_store_write_lock_seconds_total", role=r) for r in roles]
            assert all(h > 0 for h in held) and sum(held) < time.monotonic() - started
            # Merged, not repeated per process: one sample per label set, no "pid" label.
            assert not any("pid" in dict(labels) for _name, labels in m)
        # Three processes wrote counters, and the accepts really were split between acceptors.
        per_process = {
            f.name: {
                json.loads(key)[1]: value
                for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(str(f))
            }
            for f in files.glob("counter_*.db")
        }
        assert len(per_process) == 3, sorted(per_process)
        accepted = [c.get("smpp_bridge_messages_accepted_total", 0) for c in per_process.values()]
        assert sum(accepted) == n and sum(1 for a in accepted if a) == 2, accepted
    finally:
        rc = proc.terminate(30)
    assert rc == 0, proc.log.read_text()[-3000:]


async def test_a_chunked_operation_failing_at_every_try_shows_stalled_and_keeps_no_purge_back(
    daemon, monkeypatch
):
    """An erasure's masking whose chunk fails at every try (here a chunk step that raises, as a
    disk error or a stored answer its SQL cannot read would) shows in
    smpp_bridge_store_chunked_* with the time since it was last worked, and the sweep's purges
    still run beside it (they were skipped while it failed: the nonces and idempotency records
    grew); once the chunk can run the sweep finishes it and both read 0."""
    d = daemon
    acc = (await create_account(d, "stuck"))["account"]
    number = "+8613800138000"
    now = int(time.time() * 1000)

    def plant(c: Any) -> None:
        c.execute(
            "INSERT INTO idempotency (id, account_id, key, request_hash, status_code, response, "
            "expires_at) VALUES (9001, ?, 'k1', 'h', 200, ?, ?)",
            (acc, f'{{"messages": [{{"to": "{number}"}}]}}'.encode(), now + 3_600_000),
        )
        c.execute(
            "INSERT INTO pending_erasures (account_id, number, masked, hi, after_key, worked_at) "
            "VALUES (?, ?, '+86138****000', 9001, NULL, ?)",
            (acc, number, now - 600_000),
        )
        c.execute("INSERT INTO nonces (key_id, nonce, expires_at) VALUES ('ak_x', 'n1', ?)", (now,))

    def failing(*_args: Any) -> bool:
        raise sqlite3.OperationalError("disk I/O error")

    await d.store._runner.write(plant)
    monkeypatch.setattr(sqlite_erase, "_step", failing)
    m = await metrics_of(d.http_port)
    assert val(m, "smpp_bridge_store_chunked_operations", kind="erasures") == 1
    assert 600 <= val(m, "smpp_bridge_store_chunked_stalled_seconds", kind="erasures") < 700
    for kind in ("ends", "senders_walk"):
        assert ("smpp_bridge_store_chunked_operations", frozenset({("kind", kind)})) in m
        assert val(m, "smpp_bridge_store_chunked_stalled_seconds", kind=kind) == 0

    await d.store.sweep(now + 1, 3_600_000)  # the masking's chunk fails again; no exception
    left = await d.store._runner.read(
        lambda c: c.execute("SELECT COUNT(*) FROM nonces WHERE key_id='ak_x'").fetchone()[0]
    )
    assert left == 0  # purged all the same
    m = await metrics_of(d.http_port)
    assert val(m, "smpp_bridge_store_chunked_operations", kind="erasures") == 1

    monkeypatch.undo()
    await d.store.sweep(now + 2, 3_600_000)
    masked = await d.store._runner.read(
        lambda c: c.execute("SELECT response FROM idempotency WHERE id=9001").fetchone()[0]
    )
    assert number.encode() not in bytes(masked)
    m = await metrics_of(d.http_port)
    assert val(m, "smpp_bridge_store_chunked_operations", kind="erasures") == 0
    assert val(m, "smpp_bridge_store_chunked_stalled_seconds", kind="erasures") == 0
