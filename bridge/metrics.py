"""Prometheus metrics: every definition in one place, one registry per Daemon.

Why a registry per Daemon and not prometheus_client's global one: tests run several daemons in one
process, and each must count only its own traffic.

Why multi-process mode (``server.workers > 0``) uses prometheus_client's file-backed values: the
acceptor processes share one port through SO_REUSEPORT, so a scrape lands on whichever process
the kernel picks. Per-process numbers behind one address would jump between processes from
scrape to scrape and look like counter resets. With the file-backed values every process (the
owner included) writes its counters into its own mmap file in one directory, and whichever
acceptor answers ``/metrics`` merges them all: one scrape target returns everything, counters
stay monotonic across acceptor restarts (a dead process's file is kept).

Gauges are not counted on the hot path: they are set just before each scrape from state the
serving process already has (the connectors' snapshots, or in an acceptor the owner's bind
status it reads every second; the queue depth the API keeps for back-pressure; the store's count
of unmatched receipts). In multi-process mode they use the "most recent" merge, so the answering
process's fresh values win over older ones written by other processes.

Hot-path cost: an observation only adds to a plain int (a histogram: one bisect), well under a
microsecond; `flush` moves the totals into the prometheus values before each scrape and, in
multi-process mode, every second (`flush_every`), so the mmap writes happen once per series per
second rather than per message. Calling prometheus_client's inc/observe per event instead
measured about 10 microseconds per message (20 with files), against about 2 this way. The two
per-part events of the owner are cheaper still (session 63): a connector appends an accepted
part's round trip to its SMSC's list (`ok_sink`), counted at the flush, and a committed batch
of receipts is counted in one call (`receipts_counted`).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import math
import os
import shutil
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Literal

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict

from bridge import aio, tempdirs
from bridge.reload import GENERATION_DIGITS
from bridge.store.base import WriteLockStats

__all__ = [
    "CONTENT_TYPE",
    "MULTIPROC_ENV",
    "Metrics",
    "disable_multiprocess",
    "enable_multiprocess",
    "mark_process_dead",
    "multiprocess_dir",
]

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

# Accept latency: the API's promise is tens of milliseconds; buckets resolve 1 ms to 10 s.
ACCEPT_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# submit_sm -> submit_sm_resp: LAN SMSCs answer in milliseconds, carriers abroad in seconds.
RTT_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# Event-loop lag: how late a 100 ms timer fires. A healthy loop is under a few ms; tens of ms
# mean something blocked it (a long callback, a GC pause, SQLite waiting inside the loop).
LAG_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LAG_INTERVAL_S: Final = 0.1

# The `_created` samples double the series count and the multi-process merge cannot produce
# them; leaving them out keeps both modes' output the same.
prometheus_client.disable_created_metrics()


# -- multi-process mode --------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    """The directory of the file-backed values when multi-process mode is on in this process."""
    if getattr(values.ValueClass, "_multiprocess", False):
        return os.environ.get(MULTIPROC_ENV)
    return None


METRICS_DIR_PREFIX = tempdirs.PREFIX + "metrics-"


def enable_multiprocess(path: str | os.PathLike[str] | None = None) -> tuple[Path, bool]:
    """Switch this process (and the children it starts, through the environment) to file-backed
    metric values. Call before any Metrics is built. Returns (directory, created_here).

    The directory is emptied: files left by an earlier run would be merged into this one's
    numbers. Without `path` or $PROMETHEUS_MULTIPROC_DIR a private temporary directory is made
    (the caller removes it at exit with `disable_multiprocess`).
    """
    given = path or os.environ.get(MULTIPROC_ENV)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        created = False
    else:
        tempdirs.sweep_once()  # left by a daemon killed with -9
        directory = Path(tempdirs.make(METRICS_DIR_PREFIX))
        created = True
    os.environ[MULTIPROC_ENV] = str(directory)
    # prometheus_client picks the value class when it is imported; this process imported it
    # before it knew it would supervise acceptors.
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()
    return directory, created


def disable_multiprocess(directory: Path, created: bool) -> None:
    """Undo `enable_multiprocess` at shutdown: close the files, remove a directory made for us."""
    values.close_all_multiprocess_files()
    values.ValueClass = values.MutexValue
    os.environ.pop(MULTIPROC_ENV, None)
    if created:
        shutil.rmtree(directory, ignore_errors=True)


def mark_process_dead(pid: int) -> None:
    """An acceptor exited: drop its live gauges (its counters stay, so totals never go back)."""
    path = multiprocess_dir()
    if path:
        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, path)


# -- the metrics ---------------------------------------------------------------------------------


class Metrics:
    """The daemon's metrics. Callers use the methods, not the prometheus objects, so the label
    sets stay in one place and each child is looked up once."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        live: dict[str, Literal["livemostrecent"]] = {"multiprocess_mode": "livemostrecent"}
        self.api_requests = Counter(
            "smpp_bridge_api_requests",
            "HTTP requests answered, by endpoint (method and route), HTTP status and error code "
            "(OK when the answer is not an error; REPLAYED for an idempotent replay)",
            ["endpoint", "status", "code"],
            registry=r,
        )
        self.accept_latency = Histogram(
            "smpp_bridge_accept_latency_seconds",
            "Sends accepted (POST /v1/messages 202, first time, not a replay; Alibaba SendSms and "
            "SendBatchSms OK): request in to answer out, signature check, validation and the "
            "durable commit included",
            buckets=ACCEPT_BUCKETS,
            registry=r,
        )
        self.messages_accepted = Counter(
            "smpp_bridge_messages_accepted", "Messages (one per recipient) accepted", registry=r
        )
        self.segments_accepted = Counter(
            "smpp_bridge_segments_accepted", "Segments (SMPP PDUs) of accepted messages", registry=r
        )
        self.segments_submitted = Counter(
            "smpp_bridge_segments_submitted",
            "submit_sm answered, by SMSC and status (ESME_ROK, ESME_RTHROTTLED, ..., or TIMEOUT / "
            "CONNECTION_LOST when no answer came); retries and throttled attempts count each time",
            ["smsc", "status"],
            registry=r,
        )
        self.throttle_events = Counter(
            "smpp_bridge_throttle_events",
            "ESME_RTHROTTLED / ESME_RMSGQFUL answers (the PDU is resent; a share of a bind's "
            "answers over throttle_tolerance pauses the bind)",
            ["smsc"],
            registry=r,
        )
        self.submit_rtt = Histogram(
            "smpp_bridge_submit_rtt_seconds",
            "submit_sm to submit_sm_resp round-trip time, by SMSC",
            ["smsc"],
            buckets=RTT_BUCKETS,
            registry=r,
        )
        self.loop_lag = Histogram(
            "smpp_bridge_event_loop_lag_seconds",
            "How late a 100 ms timer fires on each process's event loop, by role (owner, "
            "acceptor, or all in one process): time the loop could not serve anything (long "
            "callbacks, GC pauses, blocking I/O)",
            ["role"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.receipts = Counter(
            "smpp_bridge_receipts",
            "Delivery receipts received, by SMSC and state (delivered, undeliverable, expired, "
            "rejected, unknown, enroute; unparsable when no message id could be read)",
            ["smsc", "state"],
            registry=r,
        )
        self.receipts_unmatched = Counter(
            "smpp_bridge_receipts_unmatched",
            "Receipts that matched no sent segment when applied (kept, and applied if the id "
            "appears later)",
            registry=r,
        )
        self.receipts_inferred_total = Counter(
            "smpp_bridge_receipts_inferred",
            "Parts of long messages settled by another part's receipt, by SMSC (smscs[].receipts: "
            "one_per_message): when the receipt came, or when the SMSC took a part after it",
            ["smsc"],
            registry=r,
        )
        self.receipts_after_timeout_total = Counter(
            "smpp_bridge_receipts_after_timeout",
            "Final receipts for messages already ended unknown by pipeline.receipt_timeout_hours, "
            "by SMSC: they change nothing; the carrier reports later than the timeout waits",
            ["smsc"],
            registry=r,
        )
        self.mo_received = Counter(
            "smpp_bridge_mo_received", "Inbound (MO) deliver_sm received, by SMSC", ["smsc"],
            registry=r,
        )  # fmt: skip
        self.mo_received_incomplete = Counter(
            "smpp_bridge_mo_incomplete",
            "Long inbound messages delivered without the parts that never arrived (flagged "
            "incomplete; not in mo_received), by SMSC",
            ["smsc"],
            registry=r,
        )
        self.mo_received_unattributed = Counter(
            "smpp_bridge_mo_unattributed",
            "Inbound messages stored for no account (no message of any to that number from the "
            "address it went to): pushed to nobody, an opt-out among them opted no one out "
            "(in mo_received too), by SMSC",
            ["smsc"],
            registry=r,
        )
        self.mo_received_unknown_language = Counter(
            "smpp_bridge_mo_unknown_language",
            "Inbound messages whose UDH named a national language table the gateway lacks "
            "(decoded with the default GSM alphabet instead), by SMSC",
            ["smsc"],
            registry=r,
        )
        self.mo_received_undecodable = Counter(
            "smpp_bridge_mo_undecodable",
            "Inbound messages whose octets are not text in their data_coding (kept as hex), by "
            "SMSC",
            ["smsc"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "smpp_bridge_webhook_deliveries",
            "Webhook reports by kind (status, mo, event) and outcome (delivered, retry, dead)",
            ["kind", "outcome"],
            registry=r,
        )
        # Every series from the start, at 0: rate() and increase() count nothing for a series'
        # first sample, so one born at the first dead letter (already at its value) kept
        # SmppBridgeWebhooksDead silent for the first dead letters after each start.
        for kind in ("status", "mo", "event"):
            for outcome in ("delivered", "retry", "dead"):
                self.webhook_deliveries.labels(kind, outcome)
        self.balance_warnings = Counter(
            "smpp_bridge_balance_warnings",
            "Prepaid balance warnings raised (low-balance threshold crossed)",
            registry=r,
        )
        self.purged_rows = Counter(
            "smpp_bridge_retention_purged",
            "Rows store.retention_days purged, by kind (messages, mo, dead_webhooks, daily_counts)",
            ["kind"],
            registry=r,
        )
        # The SQLite store's one write lock, which every process of a daemon takes in turn to
        # commit: the sum over roles of rate(held) is the share of time somebody holds it, and
        # near 1 the store, not the CPU, is the bound (README "Sizing"). Read off the store at
        # each flush (`watch_store`), not counted per write.
        self.store_lock_held = Counter(
            "smpp_bridge_store_write_lock_seconds",
            "Seconds this role's processes held the SQLite store's write lock (writing batches "
            "of jobs, or finishing a WAL checkpoint): summed over roles, its rate is the share of "
            "the time the store's one writer is busy",
            ["role"],
            registry=r,
        )
        self.store_lock_cpu = Counter(
            "smpp_bridge_store_write_lock_cpu_seconds",
            "CPU seconds the holding thread used while it held the SQLite store's write lock: "
            "the rest of the time held, it waited for a CPU (cores full) or for the disk",
            ["role"],
            registry=r,
        )
        self.store_lock_wait = Counter(
            "smpp_bridge_store_write_lock_wait_seconds",
            "Seconds this role's batches of writes waited for another process to release the "
            "SQLite store's write lock",
            ["role"],
            registry=r,
        )
        self.store_commits = Counter(
            "smpp_bridge_store_commits",
            "SQLite transactions committed (each a batch of jobs: one fsync covers a group of "
            "them), by role",
            ["role"],
            registry=r,
        )
        self.store_fsyncs = Counter(
            "smpp_bridge_store_fsyncs",
            "WAL fsyncs of the SQLite store that durable commits (accepts, receipts, MO) waited "
            "for before their answers, by role",
            ["role"],
            registry=r,
        )
        self.store_fsync_seconds = Counter(
            "smpp_bridge_store_fsync_seconds",
            "Seconds those fsyncs took, from their hand-over to the fsync thread to their end: "
            "divided by smpp_bridge_store_fsyncs_total, the disk's sync latency every durable "
            "answer waits for",
            ["role"],
            registry=r,
        )
        self.store_jobs = Counter(
            "smpp_bridge_store_write_jobs",
            "Writes committed in those transactions (an accept, a claim, a batch of submit "
            "results or of receipts, ...), by role",
            ["role"],
            registry=r,
        )
        # Gauges: filled just before a scrape (see the module docstring).
        self.smsc_up = Gauge(
            "smpp_bridge_smsc_up",
            "1 when the SMSC can do its job: a transmitting bind up (a receive-only SMSC: a "
            "receiving bind up)",
            ["smsc"],
            registry=r, **live,
        )  # fmt: skip
        self.binds_up = Gauge(
            "smpp_bridge_binds_up", "Binds up, by SMSC", ["smsc"], registry=r, **live
        )
        self.binds_configured = Gauge(
            "smpp_bridge_binds_configured", "Binds configured, by SMSC", ["smsc"], registry=r,
            **live,
        )  # fmt: skip
        self.window_in_use = Gauge(
            "smpp_bridge_window_in_use", "submit_sm awaiting their resp, by SMSC", ["smsc"],
            registry=r, **live,
        )  # fmt: skip
        self.window_size = Gauge(
            "smpp_bridge_window_size", "Window slots of the binds that are up, by SMSC", ["smsc"],
            registry=r, **live,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "smpp_bridge_queue_depth",
            "Segments accepted and not yet sent (queued or claimed), counted at each scrape",
            registry=r,
            **live,
        )
        self.webhook_reports = Gauge(
            "smpp_bridge_webhook_reports",
            "Status and MO reports not delivered yet (pending) or given up (dead), counted at "
            "each scrape",
            ["state"],
            registry=r,
            **live,
        )
        self.webhook_oldest_pending = Gauge(
            "smpp_bridge_webhook_oldest_pending_seconds",
            "Age of the oldest report not delivered yet (0 with none), counted at each scrape",
            registry=r,
            **live,
        )
        self.chunked_operations = Gauge(
            "smpp_bridge_store_chunked_operations",
            "Store operations under way in chunks of their own transactions (SQLite: ends of "
            "many waiting messages and a close's masking, a senders change's walk, an "
            "erasure's masking of stored answers), by kind, counted at each scrape",
            ["kind"],
            registry=r,
            **live,
        )
        self.chunked_stalled = Gauge(
            "smpp_bridge_store_chunked_stalled_seconds",
            "Seconds since the least recently worked chunked operation of a kind was last "
            "worked (0 with none): its process works it every few ms, the sweep takes over "
            "one left 30 s; minutes mean its chunk fails at every try",
            ["kind"],
            registry=r,
            **live,
        )
        # livemin: with acceptor processes, any one whose last reload was refused shows (an
        # acceptor restarted meanwhile starts at 1 and must not hide the owner's 0).
        self.config_reload_ok = Gauge(
            "smpp_bridge_config_last_reload_successful",
            "1 when the last SIGHUP's configuration was applied (or none came since the start), "
            "0 when it was refused (invalid) or failed: the running configuration is not the "
            "file's",
            registry=r,
            multiprocess_mode="livemin",
        )
        self._reload_ok = True
        self._acceptors_current = True  # see acceptors_current
        self.config_reload_ok.set(1)
        # One series per process all the same (each has its own role and slot; a restarted
        # acceptor's is the newest of its slot), without a pid label, which the merged output
        # never has: the supervisor and the admin API read the pid from the file names (see
        # `generations`).
        self.config_generation = Gauge(
            "smpp_bridge_config_generation",
            "The configuration each process runs: the first 48 bits of the HMAC-SHA256 of its text "
            "under a random key of the daemon's, "
            "as an integer, by role and acceptor slot (with acceptor processes, the owner's is "
            "the acceptors' copy it wrote last): an acceptor whose value is not the owner's runs "
            "an older configuration",
            ["role", "slot"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.ready = Gauge(
            "smpp_bridge_ready",
            "1 when /readyz would answer 200 at this scrape (store reachable and writable, an "
            "SMSC bound, not shutting down), else 0",
            registry=r,
            **live,
        )
        self.receipts_unmatched_pending = Gauge(
            "smpp_bridge_receipts_unmatched_pending",
            "Receipts kept because no sent segment matched them (yet)",
            registry=r,
            **live,
        )
        self.http_connections_open = Gauge(
            "smpp_bridge_http_connections_open",
            "HTTP connections open on the public ports (the API's and the Alibaba face's; not "
            "the admin listener's), summed over processes; each process allows "
            "server.max_connections",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.http_connections_refused = Counter(
            "smpp_bridge_http_connections_refused",
            "HTTP connections closed unread because their process had server.max_connections "
            "open on the public ports (reason max_connections), or their peer address had "
            "server.max_connections_per_ip (reason max_connections_per_ip)",
            ["reason"],
            registry=r,
        )
        self._connections: Callable[[], tuple[int, Mapping[str, int]]] | None = None
        self.owner_wakes = Counter(
            "smpp_bridge_owner_wakes",
            "server.workers: acceptor commits of accepted messages by what they did to wake the "
            "owner: sent (a datagram), not_waiting (none: the owner's dispatcher was busy and "
            "claims again by itself), throttled (none: the acceptor sent one less than 1 ms "
            "before)",
            ["outcome"],
            registry=r,
        )
        self._wakes: Callable[[], Mapping[str, int]] | None = None
        self._wakes_seen: dict[str, int] = {}
        self._refused_seen: dict[str, int] = {}
        # Observations wait here (plain ints) until `flush`; see the module docstring.
        self._requests: defaultdict[tuple[str, int, str], int] = defaultdict(int)
        self._submits: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._throttles: defaultdict[str, int] = defaultdict(int)
        self._receipts: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._inferred: defaultdict[str, int] = defaultdict(int)
        self._after_timeout: defaultdict[str, int] = defaultdict(int)
        self._mo: defaultdict[str, int] = defaultdict(int)
        self._mo_incomplete: defaultdict[str, int] = defaultdict(int)
        self._mo_unattributed: defaultdict[str, int] = defaultdict(int)
        self._mo_unknown_language: defaultdict[str, int] = defaultdict(int)
        self._mo_undecodable: defaultdict[str, int] = defaultdict(int)
        self._webhooks: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._messages = 0
        self._segments = 0
        self._unmatched = 0
        self._accept = _Pending(self.accept_latency, ACCEPT_BUCKETS)
        self._rtt: dict[str, _Pending] = {}
        # The connectors' ok sinks (ok_sink), by SMSC.
        self._ok_rtts: dict[str, list[float]] = {}
        self._lag: dict[str, _Pending] = {}
        self._smscs: set[str] = set()
        self._store: tuple[str, Callable[[], WriteLockStats | None]] | None = None
        self._store_seen = WriteLockStats(0.0, 0.0, 0, 0)

    # -- API -------------------------------------------------------------------------------------
    def request(self, endpoint: str, status: int, code: str) -> None:
        self._requests[(endpoint, status, code)] += 1

    def accept(self, latency_s: float) -> None:
        """A first-time 202 for POST /v1/messages, `latency_s` after the request came in."""
        self._accept.observe(latency_s)

    async def watch_loop(self, role: str, interval_s: float = LAG_INTERVAL_S) -> None:
        """Sample this process's event-loop lag until cancelled. Why: a stalled loop delays every
        request and receipt of the process at once, and shows in no other metric as itself (a
        probe like this found WAL checkpoints stalling every process for 35-60 ms)."""
        loop = asyncio.get_running_loop()
        pending = self._lag.get(role)
        if pending is None:
            pending = self._lag[role] = _Pending(self.loop_lag.labels(role), LAG_BUCKETS)
        while True:
            t = loop.time()
            await aio.sleep_on(loop, interval_s)
            pending.observe(max(0.0, loop.time() - t - interval_s))

    def accepted(self, messages: int, segments: int) -> None:
        self._messages += messages
        self._segments += segments

    # -- SMPP ------------------------------------------------------------------------------------
    def ok_sink(self, smsc: str) -> tuple[list[float], Callable[[str], None]]:
        """`Connector.ok_sink`: a list the connector appends each accepted part's round trip
        to (after its first acceptance, told to `on_submit`), and the call it makes when the
        list holds `connector.OK_RTTS_MAX`. Counted as `on_submit(smsc, "ok", "ESME_ROK",
        rtt)` counted each (~4.3 k instructions a part answered, counted alone; session 63),
        when they are read: at `flush`, at that call, and before `on_submit` counts anything
        else of the SMSC (its round trips summed in the order they came, as the calls summed
        them; the first acceptance through `on_submit` made the series when it would have
        been made)."""
        rtts = self._ok_rtts.get(smsc)
        if rtts is None:
            rtts = self._ok_rtts[smsc] = []
        return rtts, self._count_ok

    def _count_ok(self, smsc: str) -> None:
        """The round trips waiting in `smsc`'s ok sink, counted as `on_submit` counts an
        acceptance, in their order; the list emptied (in place: the connectors hold it)."""
        rtts = self._ok_rtts.get(smsc)
        if not rtts:
            return
        self._submits[(smsc, "ESME_ROK")] += len(rtts)
        h = self._rtt.get(smsc)
        if h is None:  # the first acceptance went to on_submit, which made it: not expected
            h = self._rtt[smsc] = _Pending(self.submit_rtt.labels(smsc), RTT_BUCKETS)
        counts, bounds, total = h.counts, h.bounds, h.total
        for rtt_s in rtts:
            counts[bisect_left(bounds, rtt_s)] += 1
            total += rtt_s
        h.total = total
        rtts.clear()

    def on_submit(self, smsc: str, kind: str, status: str, rtt_s: float | None) -> None:
        """The connector's per-answer hook (`Connector.on_submit`)."""
        if self._ok_rtts.get(smsc):  # the acceptances before this answer first (ok_sink)
            self._count_ok(smsc)
        self._submits[(smsc, status)] += 1
        if kind == "throttled":
            self._throttles[smsc] += 1
        if rtt_s is not None:
            h = self._rtt.get(smsc)
            if h is None:
                h = self._rtt[smsc] = _Pending(self.submit_rtt.labels(smsc), RTT_BUCKETS)
            # `h.observe(rtt_s)` inline: a Python call a part answered (session 63).
            h.counts[bisect_left(h.bounds, rtt_s)] += 1
            h.total += rtt_s

    def receipt(self, smsc: str, state: str) -> None:
        self._receipts[(smsc, state)] += 1

    def receipts_counted(self, counts: Mapping[tuple[str, str], int]) -> None:
        """A committed batch's receipts, counted by (SMSC, state) in bulk (`Inbound.
        _receipts_committed`): one call a batch, where `receipt` was one a receipt (one a part
        sent; with the state's `.value`, a Python descriptor on 3.11: ~2 k instructions a
        receipt, session 63). A state may be a `ReceiptState` (a StrEnum: the same key as its
        value); it is kept as its value."""
        pending = self._receipts
        for (smsc, state), n in counts.items():
            pending[(smsc, str(state))] += n

    def receipts_inferred(self, counts: Mapping[str, int]) -> None:
        """The store's report of a committed write: parts (by SMSC) it settled by inference."""
        for smsc, n in counts.items():
            self._inferred[smsc] += n

    def receipts_after_timeout(self, counts: Mapping[str, int]) -> None:
        """Receipts (by SMSC) that came for messages the receipt timeout had ended."""
        for smsc, n in counts.items():
            self._after_timeout[smsc] += n

    def unmatched(self, n: int) -> None:
        self._unmatched += n

    def mo(self, smsc: str) -> None:
        self._mo[smsc] += 1

    def mo_incomplete(self, smsc: str) -> None:
        self._mo_incomplete[smsc] += 1

    def mo_unattributed(self, smsc: str) -> None:
        self._mo_unattributed[smsc] += 1

    def mo_unknown_language(self, smsc: str) -> None:
        self._mo_unknown_language[smsc] += 1

    def mo_undecodable(self, smsc: str) -> None:
        self._mo_undecodable[smsc] += 1

    def webhook(self, kind: str, outcome: str, n: int = 1) -> None:
        if n:
            self._webhooks[(kind, outcome)] += n

    def balance_warning(self) -> None:
        self.balance_warnings.inc()

    def purged(self, counts: dict[str, int]) -> None:
        for kind, n in counts.items():
            if n:
                self.purged_rows.labels(kind).inc(n)

    def watch_connections(self, read: Callable[[], tuple[int, Mapping[str, int]]]) -> None:
        """Report this process's open public connections and the totals refused at the caps,
        by reason (`read` gives both), read at each flush: nothing is counted per connection
        here."""
        self._connections = read
        self.http_connections_open.set(0)
        for reason in read()[1]:  # every reason's series exists from the start, at 0
            self.http_connections_refused.labels(reason)

    def watch_wakes(self, read: Callable[[], Mapping[str, int]]) -> None:
        """An acceptor's wakes of its owner by outcome (`WakeSender.counts`), read at each
        flush: nothing is counted per commit here."""
        self._wakes = read
        for outcome in read():
            self.owner_wakes.labels(outcome)

    def _flush_wakes(self) -> None:
        if self._wakes is None:
            return
        for outcome, total in self._wakes().items():
            seen = self._wakes_seen.get(outcome, 0)
            if total > seen:
                self.owner_wakes.labels(outcome).inc(total - seen)
                self._wakes_seen[outcome] = total

    def _flush_connections(self) -> None:
        if self._connections is None:
            return
        open_now, refused = self._connections()
        self.http_connections_open.set(open_now)
        for reason, total in refused.items():
            seen = self._refused_seen.get(reason, 0)
            if total > seen:
                self.http_connections_refused.labels(reason).inc(total - seen)
                self._refused_seen[reason] = total

    # -- store -----------------------------------------------------------------------------------
    def watch_store(self, role: str, stats: Callable[[], WriteLockStats | None]) -> None:
        """Report this process's use of the store's write lock, read at each flush."""
        self._store = (role, stats)

    def _flush_store(self) -> None:
        if self._store is None:
            return
        role, read = self._store
        now = read()
        if now is None:
            return
        seen, self._store_seen = self._store_seen, now
        for family, delta in (
            (self.store_lock_held, now.held_s - seen.held_s),
            (self.store_lock_cpu, now.cpu_s - seen.cpu_s),
            (self.store_lock_wait, now.wait_s - seen.wait_s),
            (self.store_commits, now.commits - seen.commits),
            (self.store_jobs, now.jobs - seen.jobs),
            (self.store_fsyncs, now.fsyncs - seen.fsyncs),
            (self.store_fsync_seconds, now.fsync_s - seen.fsync_s),
        ):
            family.labels(role).inc(max(0, delta))

    # -- flushing --------------------------------------------------------------------------------
    def flush(self) -> None:
        """Move the waiting observations into the prometheus values (in multi-process mode, the
        files other processes read)."""
        for smsc, rtts in self._ok_rtts.items():
            if rtts:
                self._count_ok(smsc)
        for family, pending in (
            (self.api_requests, self._requests),
            (self.segments_submitted, self._submits),
            (self.throttle_events, self._throttles),
            (self.receipts, self._receipts),
            (self.receipts_inferred_total, self._inferred),
            (self.receipts_after_timeout_total, self._after_timeout),
            (self.mo_received, self._mo),
            (self.mo_received_incomplete, self._mo_incomplete),
            (self.mo_received_unattributed, self._mo_unattributed),
            (self.mo_received_unknown_language, self._mo_unknown_language),
            (self.mo_received_undecodable, self._mo_undecodable),
            (self.webhook_deliveries, self._webhooks),
        ):
            if pending:
                items = list(pending.items())
                pending.clear()
                for key, n in items:
                    labels = key if isinstance(key, tuple) else (key,)
                    family.labels(*(str(x) for x in labels)).inc(n)
        if self._messages or self._segments:
            self.messages_accepted.inc(self._messages)
            self.segments_accepted.inc(self._segments)
            self._messages = self._segments = 0
        if self._unmatched:
            self.receipts_unmatched.inc(self._unmatched)
            self._unmatched = 0
        self._accept.flush()
        for h in (*self._rtt.values(), *self._lag.values()):
            h.flush()
        self._flush_store()
        self._flush_connections()
        self._flush_wakes()

    async def flush_every(self, interval_s: float) -> None:
        """Multi-process mode: keep this process's files fresh for whichever process answers the
        next scrape (at most `interval_s` behind). Flushes once more when cancelled."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                await aio.sleep_on(loop, interval_s)
                self.flush()
        finally:
            self.flush()

    # -- scrape ----------------------------------------------------------------------------------
    def observe_smscs(self, status: Mapping[str, Mapping[str, Any]]) -> None:
        """Per-SMSC gauges from `Daemon.smsc_status()` (connector snapshots plus `up`). SMSCs
        removed by a reload read 0 and then disappear. SMSCs whose state is unknown (an acceptor
        without word from its owner) read NaN: 0 fired the SMSC-down alert for a bind that may
        well be up (no comparison matches NaN), while smpp_bridge_ready says what is wrong; a
        removed series would not do in multi-process mode, whose files keep the last value."""
        unknown = {n for n, s in status.items() if s.get("state") == "unknown"}
        for name in status.keys() - self._smscs:
            # The per-SMSC counters the alerts divide by and compare, from the first scrape at 0
            # (as webhook_deliveries): rate() ignores a series' first sample, so one born at its
            # first throttle lost that increase. Error statuses stay lazy (too many to list).
            self.throttle_events.labels(name)
            self.segments_submitted.labels(name, "ESME_ROK")
        for name in unknown:
            for g in self._smsc_gauges():
                g.labels(name).set(math.nan)
        status = {n: s for n, s in status.items() if n not in unknown}
        for name, s in status.items():
            binds = s.get("binds") or {}
            window = s.get("window") or {}
            self.smsc_up.labels(name).set(1 if _up(s.get("up"), binds) else 0)
            self.binds_up.labels(name).set(sum(_num(b.get("up")) for b in binds.values()))
            self.binds_configured.labels(name).set(
                sum(_num(b.get("configured")) for b in binds.values())
            )
            self.window_in_use.labels(name).set(_num(window.get("in_use")))
            self.window_size.labels(name).set(_num(window.get("size")))
        gone_ones = self._smscs - set(status) - unknown
        if gone_ones:
            self.flush()  # counts still pending for them land before their series go
        for gone in gone_ones:
            for g in self._smsc_gauges():
                g.labels(gone).set(0)  # a multi-process file keeps the value; make it true
                with contextlib.suppress(KeyError):
                    g.remove(gone)
            # Its counters go with it (they exist from the first scrape, at 0, so a removed SMSC
            # that never sent left them for ever); multi-process files are filtered instead.
            for counter in (self.throttle_events, self.segments_submitted):
                for labels in _label_sets(counter, gone):
                    with contextlib.suppress(KeyError):
                        counter.remove(*labels)
        self._smscs = set(status) | unknown

    def last_reload_ok(self) -> bool:
        """What `smpp_bridge_config_last_reload_successful` reads at a scrape: with acceptor
        processes, False when any live one's last SIGHUP was refused (`smpp-bridge status`
        says so; a failed reload was in the metrics and the log only)."""
        path = multiprocess_dir()
        if not path:
            return self._reload_ok and self._acceptors_current
        name = "smpp_bridge_config_last_reload_successful"
        for family in _Published(path).collect():
            if family.name == name:
                return all(s.value == 1 for s in family.samples)
        return True

    def reload_result(self, ok: bool) -> None:
        self._reload_ok = ok
        self.config_reload_ok.set(1 if ok and self._acceptors_current else 0)

    def acceptors_current(self, ok: bool) -> None:
        """The supervisor's word: whether every live acceptor runs the configuration it wrote.
        False holds `smpp_bridge_config_last_reload_successful` at 0 whatever the owner's own
        reload did: an acceptor that never applied a reload serves the old rules."""
        self._acceptors_current = ok
        self.config_reload_ok.set(1 if ok and self._reload_ok else 0)

    def set_generation(self, role: str, slot: str, generation: str) -> None:
        """Publish the configuration this process runs (`bridge.reload.generation`)."""
        self.config_generation.labels(role, slot).set(int(generation, 16))

    def generations(self) -> list[tuple[str, str, int | None, str]]:
        """(role, slot, pid, generation) of every live process that published one; pid None
        without acceptor processes (this process's own only)."""
        path = multiprocess_dir()
        if not path:
            return [
                (s.labels["role"], s.labels["slot"], None, _generation_hex(s.value))
                for family in self.config_generation.collect()
                for s in family.samples
            ]
        out: list[tuple[str, str, int | None, str]] = []
        for f in _published_files(path, "gauge_livemostrecent_*.db"):
            pid = f.rsplit("_", 1)[1].removesuffix(".db")
            try:
                found = MmapedDict.read_all_values_from_file(f)
            except FileNotFoundError:  # its process died since the glob
                continue
            for key, value, _ts, _pos in found:
                name, _, labels, _ = json.loads(key)
                if name == "smpp_bridge_config_generation" and pid.isdigit():
                    out.append((labels["role"], labels["slot"], int(pid), _generation_hex(value)))
        return out

    def _smsc_gauges(self) -> tuple[Gauge, ...]:
        return (
            self.smsc_up, self.binds_up, self.binds_configured, self.window_in_use,
            self.window_size,
        )  # fmt: skip

    def exposition(self) -> bytes:
        """The text exposition format: this registry, or in multi-process mode every process's."""
        self.flush()
        path = multiprocess_dir()
        if path:
            merged = CollectorRegistry()
            merged.register(_Published(path))
            # A removed SMSC's series stay in every process's file (as 0) for the life of the
            # process, and `smsc_up == 0` alerts fired for ever: only SMSCs configured now.
            return generate_latest(_OnlySmscs(merged, _PER_SMSC, frozenset(self._smscs)))
        return generate_latest(self.registry)


def _published_files(path: str, pattern: str = "*.db") -> list[str]:
    """The multi-process files under `path` a reader may open: each process's, less one caught
    between its creation and its sizing. prometheus_client creates a process's file, then sizes
    it; read in between, it is empty, and the library's reader fails on it (struct.error): a
    scrape, `GET /admin/queue` and `smpp-bridge status` answered 500 while an acceptor started
    (CI, session 51, an acceptor's restart after a kill -9). Such a file has published nothing."""
    out = []
    for f in glob.glob(os.path.join(path, pattern)):
        with contextlib.suppress(FileNotFoundError):  # its process died since the glob
            if os.stat(f).st_size >= 8:  # the library's header: the bytes in use, and padding
                out.append(f)
    return out


class _Published:
    """prometheus_client's MultiProcessCollector over `_published_files` (its own collect()
    globs every file)."""

    def __init__(self, path: str) -> None:
        self._path = path

    def collect(self) -> Iterable[Metric]:
        return multiprocess.MultiProcessCollector.merge(_published_files(self._path))


def _up(up: Any, binds: Mapping[str, Mapping[str, Any]]) -> bool:
    """A receive-only SMSC (an MO link, `bind_mode: receiver`) never has a transmitting bind:
    by that rule alone it read 0 with its bind up, and `smsc_up == 0` alerts fired for ever."""
    if any(mode != "receiver" for mode in binds):
        return bool(up)
    return any(_num(b.get("up")) for b in binds.values())


_PER_SMSC = frozenset(
    {
        "smpp_bridge_smsc_up",
        "smpp_bridge_binds_up",
        "smpp_bridge_binds_configured",
        "smpp_bridge_window_in_use",
        "smpp_bridge_window_size",
        # counters (family names without _total): see observe_smscs
        "smpp_bridge_throttle_events",
        "smpp_bridge_segments_submitted",
    }
)


def _label_sets(counter: Counter, smsc: str) -> list[tuple[str, ...]]:
    """The label values of `counter`'s children for `smsc` (prometheus_client lists them only
    through collect)."""
    names = counter._labelnames  # no public list of a family's children
    out = []
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("smsc") == smsc:
                out.append(tuple(sample.labels[n] for n in names))
    return out


class _OnlySmscs:
    """A registry view whose per-SMSC gauges keep the SMSCs in `keep` only."""

    def __init__(self, inner: CollectorRegistry, names: frozenset[str], keep: frozenset[str]):
        self.inner = inner
        self.names = names
        self.keep = keep

    def collect(self) -> Any:
        for family in self.inner.collect():
            if family.name in self.names:
                family.samples = [s for s in family.samples if s.labels.get("smsc") in self.keep]
            yield family


class _Pending:
    """Histogram observations counted per bucket in a plain list, added to the prometheus child
    in bulk by `flush`: one bisect per observation instead of two locked increments."""

    __slots__ = ("bounds", "child", "counts", "total")

    def __init__(self, child: Any, bounds: tuple[float, ...]) -> None:
        self.child = child
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # first bound >= value: "le" semantics
        self.total += value

    def flush(self) -> None:
        if not any(self.counts):
            return
        counts, self.counts = self.counts, [0] * len(self.counts)
        total, self.total = self.total, 0.0
        # prometheus_client's Histogram keeps one value per bucket (not cumulative) and a sum;
        # observe() increments one bucket and the sum, which is what this does in bulk.
        self.child._sum.inc(total)
        for i, n in enumerate(counts):
            if n:
                self.child._buckets[i].inc(n)


def _generation_hex(value: float) -> str:
    return f"{int(value):0{GENERATION_DIGITS}x}"


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0.0
