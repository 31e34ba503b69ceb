"""Dispatcher: claims queued messages from the store and hands them to the SMSC connectors.

Work waits in the store, not in memory: the dispatcher claims only as many messages as the live
binds have free window slots, so a stopped SMSC leaves the backlog on disk (back-pressure, not
buffers). A message is claimed whole and its parts go out in order on one bind. Submit results are
written back in batches.

A message whose route has no SMSC up is parked by the claim that meets it (it stays queued in the
store, out of the claims' way). A claim takes the messages parked under the routes with an SMSC up
here (whichever instance parked them), and a reload un-parks the routes it changed.

A part whose submit_sm timed out may still be accepted by a slow SMSC after the message was
released for its retry: the connector reports that late acceptance (`on_late_submit`) and, if the
retry has not claimed the message yet, it is recorded as sent instead of being sent again (the
handset would get it twice, and the first copy's receipt would match nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from itertools import repeat
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Protocol

from bridge import logs
from bridge.aio import idle_wait_s, running, wait_event
from bridge.config import PipelineConfig, SmscConfig
from bridge.fastinit import maker
from bridge.pipeline.batcher import Batcher
from bridge.pipeline.reencode import reencode_waiting, reencoded, smsc_options
from bridge.pipeline.submit_sm import build_parts, retry_delay_ms, submit_bodies
from bridge.pipeline.wake import WaitFlag
from bridge.smpp.codec import ShortMessage
from bridge.smpp.connector import LateSubmit, OnePart, SubmitOutcome
from bridge.smpp.msgid import IdBase, MsgIdRule, normalize_id, normalize_resp_id
from bridge.smpp.router import Router
from bridge.smpp.session import late_grace
from bridge.store.base import Store, is_unavailable
from bridge.store.models import LateAccept, Release, SubmitResult, WorkMessage, WorkSegment
from bridge.text.split import RefCounter, SplitMode, TextError, wire_code

log = logging.getLogger("bridge.dispatcher")
_SEQ = attrgetter("seq")  # a WorkSegment's seq (the parts' contexts, _send_quick)

MAX_MESSAGE_ATTEMPTS = 10
# Submits that got no answer at all may have been accepted: resend them at most this many claims.
MAX_UNANSWERED_ATTEMPTS = 3
UNANSWERED = frozenset({"TIMEOUT", "CONNECTION_LOST"})
# A submit the SMSC did not answer in time is resent no sooner than its bind stops listening
# for the late answer (session.late_grace: max(60 s, 5 response timeouts)): a congested SMSC
# that answers late then has its acceptance recorded instead of the handset getting the message
# twice. With the first back-off of 5 s, almost every late answer found the resend already on
# the wire; with 30 s, a late answer between 30 s and the end of the grace still did, and one
# for a message held meanwhile (an opt-out, a disable) found it ended and refunded: the SMSC
# delivered it for free.
UNANSWERED_WAIT_MS = 30_000  # the least wait, whatever the grace


def unanswered_wait_ms(response_timeout_s: float) -> int:
    """How long a message whose submit timed out waits before it is resent (or, held
    meanwhile, ended): until its bind no longer takes the late answer."""
    return max(UNANSWERED_WAIT_MS, int(late_grace(response_timeout_s) * 1000))


_Park = Callable[[str], str | None] | None  # a claim's park function (Router.parker)
# A sent part's result (`_sent`, one a part): fastinit.maker's function, the same frozen instance
# without the class call's way back into the interpreter (session 59, README note 27).
_new_result = maker(SubmitResult)
# How long stop() waits for the messages it cancelled to record what the SMSC already took.
CANCEL_WAIT_S = 5.0


class _RouteNotRecorded(Exception):
    """The store did not take a message's route: its first part must not leave. `lost`: the
    claim is no longer ours (another instance took the message back), so it is not ours to
    release either."""

    def __init__(self, lost: bool) -> None:
        super().__init__("claim lost" if lost else "store write failed")
        self.lost = lost


class ConnectorLike(Protocol):
    name: str
    # Set by the dispatcher: called for each part the SMSC accepted after its TIMEOUT outcome.
    on_late_submit: Callable[[LateSubmit], None] | None
    # Set by the dispatcher: asked before a part is resent within its claim.
    is_held: Callable[[Any], Awaitable[bool]] | None

    @property
    def is_up(self) -> bool: ...
    def free_slots(self) -> int: ...
    def window_size(self) -> int: ...
    def refuse_new(self) -> None: ...
    async def send_message(
        self,
        parts: Sequence[ShortMessage],
        before_first: Callable[[], Awaitable[None]] | None = None,
        deadline: float | None = None,
        contexts: Sequence[Any] | None = None,
        outcomes: list[Any] | None = None,
    ) -> list: ...


def msgid_rule(smsc: SmscConfig) -> MsgIdRule:
    return MsgIdRule(
        resp_base=IdBase(smsc.resp_id_base),
        receipt_base=IdBase(smsc.receipt_id_base),
        case_insensitive=smsc.id_case_insensitive,
        strip_leading_zeros=smsc.id_strip_leading_zeros,
        tlv_as_receipt=smsc.tlv_id_base == "receipt",
    )


class Dispatcher:
    def __init__(
        self,
        store: Store,
        connectors: Mapping[str, ConnectorLike],
        router: Router,
        smscs: Mapping[str, SmscConfig],
        *,
        instance: str,
        claim_batch: int = 500,
        in_flight_windows: int = 2,
        idle_s: float = 0.05,
        idle_max_s: float = 1.0,
        lease_ms: int = 300_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.connectors = connectors
        self.router = router
        self.smscs = smscs
        self.instance = instance
        self.claim_batch = claim_batch
        self.in_flight_windows = in_flight_windows
        self.idle_s = idle_s
        self.idle_max_s = idle_max_s
        self._empty_claims = 0  # claims in a row that found nothing, and were not woken
        self._due_ms: int | None = None  # the earliest retry this dispatcher released
        self.lease_ms = lease_ms
        self.clock = clock
        # `log.isEnabledFor(DEBUG)` read once a claim, for the results `_record` logs (a Python
        # call a message until session 61).
        self._debug = log.isEnabledFor(logging.DEBUG)
        self._rules = {name: msgid_rule(cfg) for name, cfg in smscs.items()}
        self._encodings(smscs)
        self._wake = asyncio.Event()
        # Published to acceptor processes (the owner's, `server.workers`): whether a wake is
        # wanted. A process that takes its own accepts (role all) needs none.
        self.wait_flag: WaitFlag | None = None
        self._slot_freed = asyncio.Event()
        # Messages in flight: claimed here, their results not committed yet (a message holds
        # its place until then: _send). By id (a count: the same id twice is not expected, but
        # costs nothing to allow), and in all; and the tasks still sending, by claim order.
        self._inflight: dict[str, int] = {}
        self._flying = 0
        self._tasks: dict[int, asyncio.Task[None] | _Quick] = {}
        # Messages run() claimed whose task has not made its first step: a message is sent
        # without a task, at its claim, only without any (run()).
        self._unstarted = 0
        self._task_no = 0
        self._late_held: dict[str, list[LateAccept]] = {}  # late acceptances of those (_on_late)
        self._claiming: asyncio.Future[None] | None = None  # done when the last claim returned
        self._loop: asyncio.AbstractEventLoop | None = None  # aio.running: no getpid() per message
        self._stopping = False
        self._store_down = logs.Throttled(log)
        self._failures = logs.Failures(log, is_unavailable)
        # Called when recorded submit results queued status webhooks (an SMSC refused a message,
        # or a part's fate became unknown): the owner's sender, woken, as for receipts.
        self.on_reports: Callable[[], None] | None = None
        self._results: Batcher[SubmitResult | Release] = Batcher(
            self._flush_results, max_items=1000, max_delay_s=0.003, name="submit-results"
        )
        self._routes: Batcher[tuple[str, str]] = Batcher(
            self._flush_routes, max_items=1000, max_delay_s=0.001, name="routes"
        )
        self._late: Batcher[LateAccept] = Batcher(
            self._flush_late, max_items=1000, max_delay_s=0.01, name="late-submits"
        )
        self._unrouted: set[str] = set()  # routes the store refused: claims no longer ours
        # The connector object whose hooks (`on_late_submit`, `is_held`) point here, by SMSC.
        self._hooked: dict[str, ConnectorLike] = {}
        self._no_route: dict[str, int] = {}  # message id -> releases for want of a route
        # Messages in flight per SMSC: one holding its share (in_flight_windows x its window)
        # is left out of claims like a down one, its route's messages parked, so a slow carrier
        # does not fill the whole in-flight allowance and hold up every other route.
        self._by_smsc: Counter[str] = Counter()
        self._rerouted: set[str] = set()  # park keys a reload may have re-routed: un-park once
        # Route keys that encode otherwise since the table the store keeps (a reload, or a start
        # with another configuration): their waiting messages are encoded again by a pass in
        # the background (`_reencode`, bridge/pipeline/reencode.py), with references drawn from
        # `refs` (the daemon's sending counter, so a drawn one collides with no new send's).
        # Until it is done claims park them like a down route's and take the other routes'.
        self._rewired: set[str] = set()
        self._pass: asyncio.Task[None] | None = None
        self._reloads = 0  # a reload during a pass makes it run again over every held key
        self._table_kept = False  # the route table the store keeps is this router's
        self.refs: RefCounter = RefCounter()
        # (router, SMSCs up, held routes) -> the claim's park function and routable keys:
        # computed once per change, not per claim (~0.3 ms a claim with 200 prefixes).
        self._parking: tuple[Router, frozenset[str], frozenset[str], _Park, list[str]] | None = None
        self.sent = 0
        self.failed = 0
        self.retried = 0
        self.late_accepted = 0  # parts recorded sent from a submit_sm_resp after its timeout
        self.reencoded_claimed = 0  # claimed messages encoded again (`_encoded_again`)
        self._reencoded_said_at = -10.0  # time.monotonic() of the last line saying so
        self._reencoded_said = 0  # reencoded_claimed then

    def _encodings(self, smscs: Mapping[str, SmscConfig]) -> None:
        """Each SMSC's wire options as a send encodes for it, and their stamp (wire_code)."""
        self._options = smsc_options(smscs)
        self._wires = {name: wire_code(opts) for name, opts in self._options.items()}

    def reconfigure(
        self,
        router: Router,
        smscs: Mapping[str, SmscConfig],
        pipeline: PipelineConfig | None = None,
    ) -> None:
        """SIGHUP: new routes, SMSC settings and claiming knobs for messages claimed from now on.
        Messages parked under a route the reload changed are looked at again (un-parked)."""
        self._rerouted |= Router.changed_keys(self.router, router)
        self._rewired |= set(Router.rewired_keys(self.router, router))
        self._reloads += 1
        self._table_kept = False
        self.router = router
        self.smscs = smscs
        self._rules = {name: msgid_rule(cfg) for name, cfg in smscs.items()}
        self._encodings(smscs)
        if pipeline is not None:
            self.claim_batch = pipeline.claim_batch
            self.in_flight_windows = pipeline.in_flight_windows
            self.idle_s = pipeline.dispatch_idle_ms / 1000
            self.idle_max_s = pipeline.dispatch_idle_max_ms / 1000
            self._slot_freed.set()  # a larger limit: claim now
        self.wake()  # un-park and claim under the new routes now, not after an idle backoff

    def wake(self, _n: int = 0) -> None:
        """New work was accepted: claim now rather than at the next idle tick."""
        self._wake.set()

    def binds_changed(self) -> None:
        """A bind went up or down: the window changed, and parked messages may be routable.
        Both waits end: with no bind up the loop waits for a slot (up to 4 idle polls: with
        a 1-s `dispatch_idle_ms`, a start's first messages waited 4 s after the bind)."""
        self._slot_freed.set()
        self._wake.set()

    def window(self) -> int:
        return sum(c.window_size() for c in self.connectors.values() if c.is_up)

    def capacity(self) -> int:
        """Messages we may claim now: `in_flight_windows` times the live windows, minus the
        messages still in flight (a message holds its place until its results are committed).

        Why more than one window: a message in flight does not always hold a window slot. It
        waits for the commit of its results after its last submit_sm_resp, a multi-part message
        sends its parts one after another (each after the previous one's resp, so that their
        order holds under throttles and errors), and the next claim waits for the store's write
        lock. With one message per slot the window ran dry in those gaps: with two, the 3-part
        benchmark sent 2.5-7% more in a fast hour and 10-20% more in a slow one (longer round
        trips). The extra messages queue for a slot at the connector, so the window still bounds
        the outstanding submits."""
        return self.in_flight_windows * self.window() - self._flying

    async def run(self) -> None:
        while not self._stopping:
            free = self.capacity()
            # Claim in batches of a quarter window or more while busy: one claim transaction for
            # many messages, not one per freed slot.
            if free <= 0 or (self._flying and free < max(1, self.window() // 4)):
                self._slot_freed.clear()
                await wait_event(self._slot_freed, self.idle_s * 4)
                continue
            # Wakes wanted from here (the acceptors' `WaitFlag`, bridge/pipeline/wake.py): set
            # before the claim, so a commit it misses is followed by a wake, which the cleared
            # event keeps (cleared after an empty claim, one that came during it was lost).
            if self.wait_flag is not None:
                self.wait_flag.set()
            self._wake.clear()
            now_ms = int(self.clock() * 1000)
            claiming = self._claiming = asyncio.get_running_loop().create_future()
            failed: Exception | None = None
            step = "keeping the route table"
            reported = self.store.claim_reports  # only claims raise it: read before the try
            try:
                if not self._table_kept and not self._rewired:  # a reload's, or after a pass
                    await self._keep_table()
                step = "claim"
                await self._unpark(now_ms)  # stop() waits for it like for the claim
                self._start_pass()  # after the un-park: the pass sees where those went
                park, routable = self._parking_now()
                work = await self.store.claim(
                    self.instance,
                    min(free, self.claim_batch),
                    now_ms,
                    self.lease_ms,
                    park=park,
                    routable=routable,
                )
            except Exception as exc:
                failed, work = exc, []
            finally:
                claiming.set_result(None)
            if failed is not None:  # retried in a second
                if self.store.claim_reports != reported and self.on_reports is not None:
                    self.on_reports()  # a claim whose COMMIT went unanswered: they may be in
                self._failures.failed(step, failed)
                await asyncio.sleep(1)
                continue
            self._failures.ok("claim")
            if self.store.claim_reports != reported and self.on_reports is not None:
                # The claim rolled up messages it found with nothing to send: their reports.
                self.on_reports()
            if not work:  # the flag set before this claim stays set while waiting
                woken = await wait_event(self._wake, self._idle_wait(now_ms))
                self._empty_claims = 0 if woken else self._empty_claims + 1
                continue
            if self.wait_flag is not None:  # busy: it claims again by itself (a slot freed)
                self.wait_flag.clear()
            self._empty_claims = 0
            self._debug = log.isEnabledFor(logging.DEBUG)  # for `_record` (see __init__)
            if self._stopping:  # stop() began during the claim: these go back unsent
                at = int(self.clock() * 1000)
                for m in work:
                    self._results.add(Release(m.id, at, count_attempt=False))
                return
            loop = self._loop = running(self._loop)
            tasks, inflight, n = self._tasks, self._inflight, self._task_no
            # Counted before any starts: a message sent here may end before the loop does.
            self._flying += len(work)
            copy_context = contextvars.copy_context
            send_quick = self._send_quick
            for msg in work:
                n += 1
                self._task_no = n
                inflight[msg.id] = inflight.get(msg.id, 0) + 1
                if not self._unstarted:
                    # Sent by plain calls and callbacks, not a task (_Quick), in its own copy
                    # of the context as a task would be, and started here: unless a message
                    # claimed before it has not started yet (a task's first step runs in the
                    # loop's next round), which it must not pass (claim order is the order
                    # they take window slots in): a task then.
                    ctx = copy_context()
                    quick = tasks[n] = _Quick(self, msg, n, ctx)
                    # What its task's first step did (`_Quick.start` until session 61: a call
                    # a message less), in ctx; a message not sent so goes on in a task of ctx's.
                    try:
                        sent = ctx.run(send_quick, quick)
                    except Exception:
                        ctx.run(quick._failed)  # inside the except: its log has the traceback
                        continue
                    if not sent:  # a task, as claimed messages after it until it has started
                        self._unstarted += 1
                        # Created in ctx, as inside `ctx.run` (a task copies the context).
                        quick.task = loop.create_task(
                            self._send(msg, n, quick, True), context=ctx.copy()
                        )
                else:
                    self._unstarted += 1
                    tasks[n] = loop.create_task(self._send(msg, n, None, True))

    def _idle_wait(self, claimed_at_ms: int) -> float:
        """How long to wait for a wake after a claim at `claimed_at_ms` found nothing: the poll
        interval, doubled for each empty claim in a row up to `idle_max_s`, and never past the
        earliest retry this dispatcher released (those are due at a known time; nothing wakes
        for them). A retry due by the claim's time was seen by it (taken by another instance,
        or cancelled): forgotten."""
        if self._due_ms is not None and self._due_ms <= claimed_at_ms:
            self._due_ms = None
        wait = idle_wait_s(self.idle_s, self.idle_max_s, self._empty_claims)
        if self._due_ms is not None:
            wait = min(wait, (self._due_ms - claimed_at_ms) / 1000)
        return wait

    def _parking_now(self) -> tuple[_Park, list[str]]:
        """What the next claim parks (`Router.parker`) and the routes whose parked messages it
        takes (`Router.routable_keys`), for the SMSCs up now and not holding their share of
        messages in flight (`_saturated`): a saturated SMSC's route waits like a down one."""
        busy = self._saturated()
        up = frozenset(n for n, c in self.connectors.items() if c.is_up and n not in busy)
        held = frozenset(self._rewired)
        cached = self._parking
        if cached is None or cached[0] is not self.router or cached[1:3] != (up, held):
            park = self.router.parker(up, held)
            routable = [k for k in self.router.routable_keys(up.__contains__) if k not in held]
            cached = (self.router, up, held, park, routable)
            self._parking = cached
        return cached[3], cached[4]

    def _saturated(self) -> frozenset[str]:
        """SMSCs with `in_flight_windows` windows of messages in flight. With one SMSC that is
        the claim limit itself (capacity() is 0 then), so only several SMSCs pay for this."""
        if len(self._by_smsc) < 2 and len(self.connectors) < 2:
            return frozenset()
        out = []
        for name, n in self._by_smsc.items():
            c = self.connectors.get(name)
            if c is not None and n >= self.in_flight_windows * c.window_size():
                out.append(name)
        return frozenset(out)

    async def _unpark(self, now_ms: int) -> None:
        """Before a claim, after a reload: un-park the routes it changed (their messages may
        route elsewhere now, under another key or none).

        Routes with an SMSC up need no un-park: the claim takes what is parked under them
        (`routable`), whichever instance parked it. Un-parking them for every instance instead
        (when a bind came up, and every 5 s), on PostgreSQL an instance without such an SMSC
        parked them again before the one with it could claim them, and each un-park rewrote
        every parked row of the route."""
        if not self._rerouted:
            return
        keys = set(self._rerouted)
        try:
            n = await self.store.unpark(keys, now_ms)
        except Exception as exc:  # retried before the next claim
            self._failures.failed("un-parking messages", exc)
            return
        self._failures.ok("un-parking messages")
        self._rerouted -= keys
        if n:
            log.info("un-parked %d messages", n, extra={"routes": sorted(keys)})

    async def load_route_table(self) -> None:
        """At start, before anything is accepted or claimed: routes that encode otherwise than
        in the table the store kept (the configuration changed between two runs, not by a
        reload) are encoded again as after a reload, and the parked messages of routes it
        changed are looked at again. A store without one (new, or upgraded from a release
        that kept none) keeps this run's: nothing tells what its waiting messages were encoded
        for."""
        text = await self.store.route_table()
        if text is None:
            await self._keep_table()
            return
        if text == self.router.to_json():
            self._table_kept = True
            return
        try:
            old = Router.from_json(text)
        except ValueError as exc:  # a table this release cannot read: look at every route
            log.warning("kept route table unreadable, every route looked at: %s", exc)
            self._rewired |= set(self.router.keys())
        else:
            self._rewired |= set(Router.rewired_keys(old, self.router))
            self._rerouted |= Router.changed_keys(old, self.router)
        if not self._rewired:
            await self._keep_table()

    async def _keep_table(self) -> None:
        """The store keeps this router's table, once no pass is due for it (a pass that has
        not finished when the process stops is run again by the next start)."""
        await self.store.keep_route_table(self.router.to_json(), int(self.clock() * 1000))
        self._table_kept = True

    def _start_pass(self) -> None:
        if self._rewired and (self._pass is None or self._pass.done()):
            self._pass = asyncio.get_running_loop().create_task(
                self._reencode(frozenset(self._rewired), self._reloads), name="re-encoding"
            )

    async def _reencode(self, keys: frozenset[str], reloads: int) -> None:
        """The waiting messages of routes `keys` encoded again for the SMSC each goes to now,
        while claims park them (`_parking_now`) and send the other routes'. Then those routes
        are un-parked, and the store keeps the table they were encoded for. A failure, or a
        reload meanwhile, runs the pass again (it changes nothing twice)."""
        now_ms = int(self.clock() * 1000)
        try:
            await reencode_waiting(
                self.store, self.router, smsc_options(self.smscs), keys, self.refs.next, now_ms
            )
        except Exception as exc:
            self._failures.failed("re-encoding waiting messages", exc)
            await asyncio.sleep(1)
            self.wake()
            return
        self._failures.ok("re-encoding waiting messages")
        if reloads == self._reloads:
            self._rewired -= keys
            self._rerouted |= keys  # their parked messages are claimed again
        self.wake()  # the next claim un-parks them and keeps the table

    def _landed(self, mid: str) -> None:
        """Message `mid`'s task ended and its results are committed (or their flush failed,
        which the batcher logged): its place is free. Late acceptances held for it go now."""
        left = self._inflight.get(mid, 0) - 1
        if left > 0:
            self._inflight[mid] = left
        else:
            self._inflight.pop(mid, None)
            held = self._late_held.pop(mid, None)
            if held is not None:
                for item in held:
                    self._late.add(item)
        self._flying -= 1
        self._slot_freed.set()

    async def _send(
        self, msg: WorkMessage, n: int, quick: _Quick | None = None, counted: bool = False
    ) -> None:
        """Send one claimed message; it holds its dispatch slot until its results are committed.

        Holding the slot until the commit bounds what a crash can make us resend: at most one
        window of parts whose submit_sm_resp arrived but was not yet recorded.

        The task itself does not wait for that commit: the results go to the batcher with a
        call (`_Flight`) that frees the slot from inside the flush, once committed. Awaiting a
        future for them cost a future, a task step and, for the task's own done-callback, a
        second loop hop per message (session 50, `scripts/bench_send_path.py`). The task
        leaves `_tasks` as it ends, which stop() waits for; the results stop() drains after.
        """
        logs.MESSAGE_ID.set(msg.id)  # this task is about one message: its log lines say which
        if counted:  # run()'s, in `_unstarted` until now
            self._unstarted -= 1
        flight = _Flight(self, msg.id) if quick is None else quick
        try:
            await self._send_parts(msg, flight.add)
        except Exception:
            # A fault nobody planned for (a bad stored row, a callback): give the claim back as
            # a counted attempt, or the message stayed claimed (on SQLite until a restart).
            log.exception("sending a message failed; it is requeued")
            now_ms = int(self.clock() * 1000)
            retry = Release(msg.id, now_ms + retry_delay_ms(msg.attempts), count_attempt=True)
            flight.add(retry)
        finally:
            del self._tasks[n]
            if quick is not None:
                quick.over()
            flight.settled(None)  # the task's own share: the slot frees with the last results

    async def _send_parts(self, msg: WorkMessage, add: Callable[..., None]) -> None:
        """`add(*results)`: one batcher call per message (its parts' results share it)."""
        now_ms = int(self.clock() * 1000)
        if not msg.segments:
            # Nothing left to send: the claim rolls such a message up instead of handing it out
            # (store.claim; one with no part row at all too, since session 50), so none comes
            # here but from another store. Released, not left claimed (before the expiry below,
            # which would hand in nothing): its lease's end counted a submit unanswered.
            add(Release(msg.id, now_ms, count_attempt=False))
            return
        if msg.expires_at is not None and msg.expires_at <= now_ms:
            add(*(SubmitResult(msg.id, seg.seq, "expired", "", at=now_ms) for seg in msg.segments))
            return
        if msg.smsc is not None and (msg.smsc in self.connectors or msg.smsc in self.smscs):
            # Earlier parts went there: the rest follow, or wait for it (one concatenated SMS
            # over two carriers may never be joined, and each would bill its parts). Also while
            # a reload rebinds it (its connector out until the old binds drained): the rest went
            # through the route's next SMSC then. Only one the configuration no longer has
            # sends the rest elsewhere (lifecycle.split_deadline: the receipt wait of such).
            held = self.connectors.get(msg.smsc)
            name = msg.smsc if held is not None and held.is_up else None
        else:
            # Router.pick, inline: the candidates are needed again for the wire check below.
            candidates = self.router.candidates(msg.recipient)
            name = None
            for n in candidates:
                c = self.connectors.get(n)
                if c is not None and c.is_up:
                    name = n
                    break
            if name is not None and msg.wire is not None and msg.smsc is None:
                # Parts encoded for other wire options than its route's first SMSC has now
                # (never tried, so they may still change): encoded again before they leave.
                first = candidates[0]
                if self._wires.get(first, msg.wire) != msg.wire and not msg.unanswered:
                    fresh = await self._encoded_again(msg, first, add, now_ms)
                    if fresh is None:
                        return
                    msg = fresh
        if name is None:
            # Its route went down after the claim found it up (a down route's messages are
            # parked by the claim instead): back off (1 s, 2 s, 4 s ... 60 s per message), or
            # such messages are claimed and released every second ahead of the rest.
            waits = self._no_route.get(msg.id, 0)
            if len(self._no_route) > 100_000:
                self._no_route.clear()
            self._no_route[msg.id] = waits + 1
            add(Release(msg.id, now_ms + min(60_000, 1000 << waits), count_attempt=False))
            return
        self._no_route.pop(msg.id, None)
        self._by_smsc[name] += 1
        try:
            # Sent on SMSC `name` here, not by a coroutine of its own (`_send_on` until session
            # 56): each coroutine level between the message's task and its submit's future is a
            # frame that every suspension and resumption of the task passes through.
            connector = self.connectors[name]
            if self._hooked.get(name) is not connector:  # a reload may replace connectors
                self._hook(name, connector)
            smsc = self.smscs[name]
            rule = self._rules[name]  # before the await: a reload may remove the SMSC meanwhile
            before = None
            if smsc.in_flight_on_restart == "unknown":
                before = self._route_recorder(msg.id, name)
            deadline = None
            if msg.expires_at is not None:
                loop_now = running(self._loop).time()
                deadline = loop_now + (msg.expires_at - now_ms) / 1000
            so_far: list[SubmitOutcome] = []
            # A list comprehension is a call of its own on Python 3.11: one part, the usual
            # case, goes without.
            segs = msg.segments
            if len(segs) == 1:
                contexts = [(msg.id, segs[0].seq)]
            else:
                contexts = [(msg.id, seg.seq) for seg in segs]
            try:
                outcomes = await connector.send_message(
                    build_parts(msg, smsc),
                    before,
                    deadline,
                    contexts=contexts,
                    outcomes=so_far,
                )
            except asyncio.CancelledError:
                # The shutdown's grace ran out with a later part on the wire: the parts the SMSC
                # accepted are recorded (stop() writes them), or the restart resent them and their
                # receipts matched nothing. The claim stays for the restart's recovery.
                self._record_cancelled(msg, name, rule, so_far, add)
                raise
            except _RouteNotRecorded as exc:  # nothing left
                if exc.lost:
                    log.warning("claim taken back by another instance; not sent")
                else:
                    log.warning("recording the route failed; message requeued", exc_info=True)
                    add(Release(msg.id, now_ms + 1000, count_attempt=False))
                return
            self._record(msg, name, smsc, rule, outcomes, add)
        finally:
            self._by_smsc[name] -= 1
            if not self._by_smsc[name]:
                del self._by_smsc[name]

    def _send_quick(self, q: _Quick) -> bool:
        """`_send_parts` for a message sent without a task (`_Quick`; one part until session
        58, any number since): True once it is the connector's (`Connector.send_one`:
        `q.finished` is called with its outcomes). False, with nothing done, when it is not
        the usual case, which its task takes as before: no part, a part already routed (a
        retry's `msg.smsc`), expired, without an SMSC up, to encode again for its route, for
        an `in_flight_on_restart: unknown` SMSC (its route recorded first, an await), or a
        connector not taking it at once (`send_one`: not started, stopping, no bind up).
        Called by run() at the claim, in `q.ctx` (what `_Quick.start` did, a call, until
        session 61): the message's id set there first, for every log line of its sending."""
        msg = q.msg
        logs.MESSAGE_ID.set(msg.id)  # in q.ctx: this message's lines say which
        segs = msg.segments
        expires_at = msg.expires_at
        if not segs or msg.smsc is not None:
            return False
        if expires_at is not None:  # the clock read only for a message with a validity
            now_ms = int(self.clock() * 1000)
            if expires_at <= now_ms:
                return False
        # Router.pick, inline, as _send_parts does.
        candidates = self.router.candidates(msg.recipient)
        name = None
        for n in candidates:
            c = self.connectors.get(n)
            if c is not None and c.is_up:
                name = n
                break
        if name is None:
            return False
        if msg.wire is not None and self._wires.get(candidates[0], msg.wire) != msg.wire:
            if not msg.unanswered:
                return False
        smsc = self.smscs[name]
        if smsc.in_flight_on_restart == "unknown":
            return False
        connector = self.connectors[name]
        try:
            send_one = connector.send_one  # type: ignore[attr-defined]  # not ConnectorLike's
        except AttributeError:  # a stand-in connector may have none
            return False
        if self._hooked.get(name) is not connector:
            self._hook(name, connector)
        rule = self._rules[name]
        deadline = None
        if expires_at is not None:
            deadline = running(self._loop).time() + (expires_at - now_ms) / 1000
        # Each part's body written from the message's head (session 59), not a ShortMessage.
        parts = submit_bodies(msg, smsc)
        # The parts' contexts as a list only for a message of several (the usual one: none).
        # (By C calls, not a comprehension's function: session 61.)
        contexts = (
            None if len(segs) == 1 else list(zip(repeat(msg.id), map(_SEQ, segs), strict=False))
        )
        q.name, q.smsc, q.rule = name, smsc, rule
        by_smsc = self._by_smsc
        by_smsc[name] += 1
        try:
            taken = send_one(q, parts, deadline, (msg.id, segs[0].seq), contexts)
        except BaseException:
            q.name = None
            self._left_smsc(name)
            raise
        if not taken:
            q.name = None
            self._left_smsc(name)
            return False
        q.sending = True
        self._no_route.pop(msg.id, None)
        return True

    def _hook(self, name: str, connector: ConnectorLike) -> None:
        """Connector `name`'s hooks pointed here, once per connector object (a reload may
        replace it): set per message, they were two bound methods made and stored a message."""
        connector.on_late_submit = self._on_late
        connector.is_held = self._held
        self._hooked[name] = connector

    def _left_smsc(self, name: str) -> None:
        self._by_smsc[name] -= 1
        if not self._by_smsc[name]:
            del self._by_smsc[name]

    def _record(
        self,
        msg: WorkMessage,
        name: str,
        smsc: SmscConfig,
        rule: MsgIdRule,
        outcomes: Sequence[SubmitOutcome],
        add: Callable[..., None],
    ) -> None:
        """Message `msg`'s outcomes on SMSC `name` (send_message's answer) as its results, in
        one batcher call: a task's (`_send_parts`) and a callback's (`_Quick`) alike."""
        if len(outcomes) == 1 and outcomes[0].kind == "ok" and len(msg.segments) == 1:
            # One part accepted (the usual message): the loop below's first case alone.
            if self._debug:
                log.debug(
                    "message submitted",
                    extra={"smsc": name, "to": logs.number(msg.recipient),
                           "outcomes": [outcomes[0].status_name]},
                )  # fmt: skip
            loop = self._loop  # `running(self._loop)` inline: a call a message (session 60)
            if loop is None or not loop.is_running():
                loop = self._loop = running(loop)
            at = int(self.clock() * 1000)
            add(_sent(msg.id, msg.segments[0].seq, name, outcomes[0], rule, at, loop))
            self.sent += 1
            return
        if self._debug:
            log.debug(
                "message submitted",
                extra={"smsc": name, "to": logs.number(msg.recipient),
                       "outcomes": [o.status_name for o in outcomes]},
            )  # fmt: skip
        now_ms = int(self.clock() * 1000)
        release: Release | None = None
        # One batcher call per message: its parts' results share one future.
        results: list[SubmitResult | Release] = []
        loop = self._loop  # `running(self._loop)` inline, as above
        if loop is None or not loop.is_running():
            loop = self._loop = running(loop)
        for seg, out in zip(msg.segments, outcomes, strict=False):
            if out.kind == "ok":
                results.append(_sent(msg.id, seg.seq, name, out, rule, now_ms, loop))
                self.sent += 1
            elif out.kind == "permanent":
                results.append(
                    SubmitResult(
                        msg.id, seg.seq, "failed", name, error_code=out.status_name, at=now_ms
                    )
                )
                self.failed += 1
                break
            elif (
                out.kind == "transient"
                and out.status_name in UNANSWERED
                and (
                    smsc.in_flight_on_restart == "unknown"
                    # Unanswered claims are counted apart: transient errors before them (their
                    # own budget, MAX_MESSAGE_ATTEMPTS) do not shorten this one.
                    or msg.unanswered + 1 >= MAX_UNANSWERED_ATTEMPTS
                )
            ):
                # No answer: the SMSC may well have accepted it. Resending would duplicate, so
                # stop here when the SMSC is configured so, or after a few claims.
                results.append(
                    SubmitResult(
                        msg.id,
                        seg.seq,
                        "unknown",
                        name,
                        error_code=f"SUBMIT_{out.status_name}",
                        at=now_ms,
                    )
                )
                self.failed += 1
                break
            elif out.kind in ("transient", "no_bind"):
                if out.kind == "transient" and msg.attempts >= MAX_MESSAGE_ATTEMPTS:
                    results.append(
                        SubmitResult(
                            msg.id,
                            seg.seq,
                            "failed",
                            name,
                            error_code=f"RETRIES_EXHAUSTED:{out.status_name}",
                            at=now_ms,
                        )
                    )
                    self.failed += 1
                    break
                delay = retry_delay_ms(msg.attempts) if out.kind == "transient" else 1000
                if out.status_name == "TIMEOUT":
                    delay = max(delay, unanswered_wait_ms(smsc.response_timeout_s))
                release = Release(
                    msg.id,
                    now_ms + delay,
                    count_attempt=out.kind == "transient",
                    unanswered=out.kind == "transient" and out.status_name in UNANSWERED,
                )
                self.retried += 1
                break
            elif out.kind == "throttled":
                requeue_ms = int(smsc.throttle_requeue_s * 1000)
                release = Release(msg.id, now_ms + requeue_ms, count_attempt=False)
                self.retried += 1
                break
            elif out.kind == "expired":  # its validity passed while it waited: none goes out
                for rest in msg.segments[msg.segments.index(seg) :]:
                    results.append(SubmitResult(msg.id, rest.seq, "expired", "", at=now_ms))
                break
            else:  # cancelled: an earlier part failed; the store fails the rest
                break
        if release is not None:
            results.append(release)
        if results:
            add(*results)

    def _record_cancelled(
        self,
        msg: WorkMessage,
        name: str,
        rule: MsgIdRule,
        so_far: Sequence[SubmitOutcome],
        add: Callable[..., None],
    ) -> None:
        """The shutdown's grace ran out with a later part on the wire: the parts the SMSC
        accepted are recorded (stop() writes them), or the restart resent them and their
        receipts matched nothing. The claim stays for the restart's recovery."""
        at = int(self.clock() * 1000)
        for seg, out in zip(msg.segments, so_far, strict=False):
            if out.kind != "ok":
                break
            add(_sent(msg.id, seg.seq, name, out, rule, at, running(self._loop)))

    def _route_recorder(self, mid: str, name: str) -> Callable[[], Awaitable[None]]:
        """What the connector awaits as message `mid`'s first part takes its window slot on
        SMSC `name`, right before it leaves: a crash must find where the message went, answered
        or not. A method, not a closure in `_send_parts`: a closure there made its message and
        SMSC name cell variables of the whole send path."""

        async def before() -> None:
            try:
                await self._routes.add((mid, name))
            except Exception as exc:
                raise _RouteNotRecorded(lost=False) from exc
            if mid in self._unrouted:
                self._unrouted.discard(mid)
                raise _RouteNotRecorded(lost=True)

        return before

    async def _encoded_again(
        self,
        msg: WorkMessage,
        first: str,
        add: Callable[..., None],  # add(*results): one batcher call, one future
        now_ms: int,
    ) -> WorkMessage | None:
        """`msg`, claimed with parts encoded for other wire options than its route's first SMSC
        has now, encoded again for them (its stored parts replaced first) before it leaves.

        Such a message was accepted by a process still running the configuration before a
        reload: an acceptor that had not reloaded yet (they reload after the owner, one after
        another, and one whose copy of the file could not be written keeps the old one), or a
        send encoded just before the reload and committed after the re-encoding pass had
        passed. The pass (`_reencode`) cannot see those; without this they went out as
        accepted (unpacked septets to an SMSC now reading them packed, Latin-1 to one without).
        Costs a store read and write per such message; the claim of any other costs a compare.

        None when it is handed back instead (released now, not counted as an attempt: the
        store changed it meanwhile, or a write failed, then after a second). As it is when
        there is nothing to encode from (its text erased) or its text no longer fits a
        message under the new options: sent as accepted, as before this check."""
        opts = self._options[first]
        step = "encoding a claimed message again (it waits a second)"
        try:
            text = await self.store.claimed_text(self.instance, msg.id)
        except Exception as exc:
            self._failures.failed(step, exc)
            add(Release(msg.id, now_ms + 1000, count_attempt=False))
            return None
        if text is None:  # no text kept (nothing to encode from), or no longer ours
            return msg
        bits = 8 if opts.split is SplitMode.UDH8 else 16
        try:
            change = reencoded(text, opts, lambda: self.refs.next(msg.recipient, bits))
        except TextError as exc:  # not seen: text.max_chars keeps any text within 255 parts
            log.warning(
                "a claimed message cannot be encoded for its route's wire options now: sent "
                "as accepted (%s)",
                exc.code,
                extra={"smsc": first},
            )
            return msg
        if change is None:  # the same bytes (a GSM text where only Latin-1 changed)
            return replace(msg, wire=wire_code(opts))
        try:
            done = await self.store.reencode([change], now_ms, claimed_by=self.instance)
        except Exception as exc:
            self._failures.failed(step, exc)
            add(Release(msg.id, now_ms + 1000, count_attempt=False))
            return None
        self._failures.ok(step)
        if not done:  # changed since it was read: claimed again, it is looked at again
            add(Release(msg.id, now_ms, count_attempt=False))
            return None
        self.reencoded_claimed += 1
        at = time.monotonic()
        if at - self._reencoded_said_at >= 10.0:  # a line per 10 s: a stale acceptor sends on
            log.info(
                "claimed message encoded again for its route's wire options (accepted under "
                "the configuration before a reload): %d since the last such line",
                self.reencoded_claimed - self._reencoded_said,
                extra={"smsc": first},
            )
            self._reencoded_said_at, self._reencoded_said = at, self.reencoded_claimed
        return replace(
            msg,
            data_coding=change.data_coding,
            wire=change.wire,
            segments=tuple(
                WorkSegment(p.seq, p.total, p.esm_class, p.short_message, p.tlvs, 0)
                for p in change.parts
            ),
        )

    async def _held(self, context: tuple[str, int]) -> bool:
        """Asked by the connector before it resends a part (after a throttle or an error):
        whether the message was held since its claim (store.message_held). A failed read
        resends, as before the check existed; a store outage is logged as the loops log it (a
        line per 10 s, no traceback: it was a traceback per resend)."""
        try:
            held = await self.store.message_held(context[0])
        except Exception as exc:
            self._failures.failed("hold check before a resend (resending)", exc)
            return False
        self._failures.ok("hold check before a resend (resending)")
        return held

    async def _flush_results(self, items: list[SubmitResult | Release]) -> None:
        """Record submit results; a failed write is retried with the same items (dropping them
        would leave the messages claimed and their parts resent after a restart)."""
        results = [i for i in items if isinstance(i, SubmitResult)]
        releases = [i for i in items if isinstance(i, Release)]
        if releases and not self._stopping:
            due = min(r.not_before for r in releases)
            self._due_ms = due if self._due_ms is None else min(self._due_ms, due)
        delays = iter((0.05, 0.2, 0.5, 1.0, 2.0, 5.0))
        while True:
            try:
                reports = await self.store.record_submits(
                    results, releases, int(self.clock() * 1000), instance=self.instance
                )
                if reports and self.on_reports is not None:
                    self.on_reports()
                return
            except Exception as exc:
                delay = next(delays, None)
                if is_unavailable(exc):
                    # The store is down: the results wait for it, a try a second, until it is
                    # back or the daemon stops. Given up after ~9 s, the SMSC's message ids were
                    # lost, receipts matched nothing, and the parts went out again once their
                    # claims' leases ran out (session 16's third review).
                    if self._stopping and delay is None:
                        raise
                    self._store_down.error("recording submit results failed; retrying", exc)
                    await asyncio.sleep(min(delay, 1.0) if delay is not None else 1.0)
                    continue
                if delay is None:
                    raise
                log.warning("recording submit results failed; retrying", exc_info=True)
                await asyncio.sleep(delay)

    def _on_late(self, late: LateSubmit) -> None:
        """A part accepted after its TIMEOUT outcome. Recorded once the message's own results
        are committed (its release, or the resend's results): the store only takes a late
        acceptance for a released, unclaimed message."""
        ctx = late.context
        rule = self._rules.get(late.smsc)
        if not (isinstance(ctx, tuple) and len(ctx) == 2) or rule is None:
            log.debug("late submit_sm_resp without a known part", extra={"smsc": late.smsc})
            return
        mid, seq = ctx
        raw = late.message_id
        item = LateAccept(mid, seq, late.smsc, normalize_resp_id(raw, rule), raw)
        if mid in self._inflight:  # recorded once its results are committed (_landed)
            self._late_held.setdefault(mid, []).append(item)
        else:
            self._late.add(item)

    async def _flush_late(self, items: list[LateAccept]) -> None:
        """Record late acceptances; retried a few times (lost, the part is resent: a duplicate,
        but nothing worse than before)."""
        n = 0
        for delay in (0.2, 1.0, 0):
            try:
                n = await self.store.record_late_submits(items, int(self.clock() * 1000))
                break
            except Exception:
                if not delay:
                    raise
                log.warning("recording late submit results failed; retrying", exc_info=True)
                await asyncio.sleep(delay)
        self.late_accepted += n
        if n and self.on_reports is not None:
            # A recorded part may have queued a report ("sent", or final with a receipt that
            # was waiting for it); the store counts those only for record_submits, and late
            # answers are rare, so a wake that finds nothing costs one claim.
            self.on_reports()
        log.info(
            "late submit_sm_resp: %d of %d parts recorded sent (the rest were claimed again)",
            n,
            len(items),
            extra={"smscs": sorted({i.smsc for i in items})},
        )

    async def _flush_routes(self, items: list[tuple[str, str]]) -> None:
        taken = await self.store.record_routes(self.instance, items)
        self._unrouted.update(mid for mid, _s in items if mid not in taken)

    async def renew_leases(self) -> int:
        """Extend the claims of messages still being sent (called every lease/3 by the app)."""
        ids = list(self._inflight)
        if not ids:
            return 0
        until = int(self.clock() * 1000) + self.lease_ms
        return await self.store.renew_claims(self.instance, ids, until)

    async def stop(self, grace_s: float) -> None:
        """Stop claiming; wait (bounded) for messages in flight; write their results. Messages
        not on the wire yet go back to the queue at once (Connector.refuse_new)."""
        self._stopping = True
        self._wake.set()
        self._slot_freed.set()
        if self._pass is not None and not self._pass.done():  # the next start runs it again
            self._pass.cancel()
            await asyncio.wait([self._pass], timeout=grace_s)
        for connector in self.connectors.values():
            connector.refuse_new()
        if self._claiming is not None:  # a claim under way hands its messages back (run())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await asyncio.shield(self._claiming)
        if self._tasks:
            # A message sent by callbacks (_Quick) is waited for by a future it
            # resolves as it ends, and cancelled as a task's cancel would have it.
            sending = list(self._tasks.values())
            waits = [t.waiter() if isinstance(t, _Quick) else t for t in sending]
            _done, pending = await asyncio.wait(waits, timeout=grace_s)
            for t, w in zip(sending, waits, strict=True):
                if w in pending:
                    t.cancel()
            if pending:
                # Their CancelledError handlers hand in the parts the SMSC accepted: wait for
                # them before the drain. Drained first, those results came after the store
                # closed and the restart sent the parts again (session 14's third review).
                await asyncio.wait(pending, timeout=CANCEL_WAIT_S)
        await self._routes.drain()
        await self._results.drain()  # late acceptances held for these are queued as they land
        await self._late.drain()

    @property
    def inflight(self) -> int:
        """Messages claimed here whose results are not committed yet."""
        return self._flying


class _Holds:
    """A message's hold on its dispatch slot: its task's share, and one per batcher call of its
    results (one, usually), each ended by the batcher once the call's batch is committed or
    failed; the last frees the slot (Dispatcher._landed). A failed flush was logged by the
    batcher and frees it too, as the wait for it did (gather's return_exceptions). Slots of
    its own none (`_Flight`'s, `_Quick`'s: the latter's first base has slots too)."""

    __slots__ = ()
    d: Dispatcher
    mid: str
    waits: int

    def add(self, *items: SubmitResult | Release) -> None:
        """The message's results, to the batcher: the slot is held until they are committed."""
        if not items:
            return
        self.waits += 1  # type: ignore[misc]  # a slot of each subclass
        if len(items) == 1:
            self.d._results.add_call(items[0], self.settled)
        else:
            self.d._results.add_many_call(items, self.settled)

    def settled(self, _failed: BaseException | None) -> None:
        self.waits -= 1  # type: ignore[misc]  # a slot of each subclass
        if not self.waits:
            self.d._landed(self.mid)


class _Flight(_Holds):
    """The hold of a message sent by its task (`Dispatcher._send`)."""

    __slots__ = ("d", "mid", "waits")

    def __init__(self, d: Dispatcher, mid: str) -> None:
        self.d = d
        self.mid = mid
        self.waits = 1  # the task's own share, ended as it ends


class _Quick(OnePart, _Holds):
    """A message sent without a task (session 57: one part; session 58: any number, and on a
    bind with a TPS limit): started as it is claimed (run()), handed to the connector
    (`Connector.send_one`, this object its record there too), recorded by `finished` from the
    step that has its outcomes (`OnePart`: the protocol's read of the last answer, usually).
    A task per message (made, stepped once a part and more, its coroutine frames) cost ~15 k
    instructions a message.

    What the task did, kept: its log lines carry MESSAGE_ID (every callback and task of it
    runs in `ctx`, the message's copy of the context, as a task's own), it holds its place in
    `_tasks` (stop() waits for `waiter()` and calls `cancel()` as it cancelled a task), the
    dispatch slot until its results are committed (`_Holds`: `finished` adds the results, its
    own share ends as it ends), the SMSC's count (`_by_smsc`). Whatever is not the usual case
    goes to `Dispatcher._send` in a task, with this as its flight (`_send_quick`)."""

    __slots__ = ("d", "ended", "mid", "msg", "n", "name", "rule", "sending", "smsc", "task",
                 "waiting", "waits")  # fmt: skip

    def __init__(self, d: Dispatcher, msg: WorkMessage, n: int, ctx: contextvars.Context) -> None:
        self.d = d
        self.mid = msg.id
        self.waits = 1  # its own share, ended as it ends (_ended)
        self.msg = msg
        self.n = n
        self.ctx = ctx
        self.name: str | None = None  # the SMSC, once the connector has it
        self.smsc: SmscConfig | None = None
        self.rule: MsgIdRule | None = None
        self.sending = False  # the connector's (send_one took it)
        self.task: asyncio.Task[None] | None = None  # Dispatcher._send, when not usual
        self.waiting: asyncio.Future[None] | None = None  # stop()'s (waiter)
        self.ended = False

    def finished(self, outcomes: list[SubmitOutcome], exc: BaseException | None) -> None:
        """The connector's answer (`_send_parts` after its send_message): the outcomes
        recorded, or, cancelled, the acceptances among them; any other exception logged and
        the message requeued, as `_send` does."""
        d, name = self.d, self.name
        if TYPE_CHECKING:  # set by _send_quick before the connector has it (no assert's reads)
            assert name is not None and self.smsc is not None and self.rule is not None
        try:
            try:
                if exc is None:
                    d._record(self.msg, name, self.smsc, self.rule, outcomes, self.add)
                elif isinstance(exc, asyncio.CancelledError):
                    d._record_cancelled(self.msg, name, self.rule, outcomes, self.add)
                else:
                    raise exc
            finally:
                by_smsc = d._by_smsc  # _left_smsc, inline
                by_smsc[name] -= 1
                if not by_smsc[name]:
                    del by_smsc[name]
        except Exception:
            self._failed()
            return
        del d._tasks[self.n]  # _ended, inline
        self.ended = True
        if self.waiting is not None:
            self.over()
        self.settled(None)

    def _failed(self) -> None:
        """`_send`'s handler of a fault nobody planned for (inside an `except`)."""
        log.exception("sending a message failed; it is requeued")
        now_ms = int(self.d.clock() * 1000)
        self.add(Release(self.mid, now_ms + retry_delay_ms(self.msg.attempts), count_attempt=True))
        self._ended()

    def _ended(self) -> None:
        """`_send`'s `finally`: out of `_tasks`, its own share of the slot ended."""
        del self.d._tasks[self.n]
        self.over()
        self.settled(None)

    def over(self) -> None:
        self.ended = True
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(None)

    def waiter(self) -> asyncio.Future[None]:
        """A future done once the message's sending ended (what stop() awaited of a task)."""
        if self.waiting is None:
            self.waiting = running(self.d._loop).create_future()
            if self.ended:
                self.waiting.set_result(None)
        return self.waiting

    def cancel(self) -> None:
        """stop()'s cancel of a task: its task's, or the connector's (`cancel_send`)."""
        if self.task is not None:
            self.task.cancel()
        elif self.sending:
            self.cancel_send()


def _sent(
    mid: str,
    seq: int,
    smsc: str,
    out: SubmitOutcome,
    rule: MsgIdRule,
    at: int,
    loop: asyncio.AbstractEventLoop,
) -> SubmitResult:
    """The result of a part the SMSC accepted, with its id as given and as receipts will name
    it, and when it left (on `at`'s clock; `out.sent_at` is on the running `loop`'s): a
    receipt kept from before then is not its own."""
    raw = out.message_id or ""
    sent_at = 0
    if out.sent_at:
        sent_at = at - int((loop.time() - out.sent_at) * 1000)
    # normalize_resp_id's one call, not two (its usual-id path is normalize_id's first lines;
    # session 60 had them copied here, a call less a part).
    key = normalize_id(raw, rule.resp_base, rule)
    # By position, in SubmitResult's fields' order (tests/unit/test_session52_positional.py):
    # one per part sent, and a class called by keyword gets a dict to unpack.
    return _new_result(
        mid, seq, "sent", smsc, key, raw, None, at, sent_at
    )  # message_id, seq, outcome, smsc, smsc_msg_id, smsc_msg_id_raw, error_code, at, sent_at
