"""One SMSC: keeps its binds up and sends messages over them, in order, within window and TPS.

Why it looks the way it does (what goes wrong in Kannel, Jasmin and smpplib):
- A window is the whole game (throughput per bind ~ window / RTT), so each bind keeps up to
  ``window`` submit_sm in flight, and ``free_slots`` tells the dispatcher how much it may claim.
- A message's parts go in order on one bind, part k+1 only after part k was accepted, so no
  other message's parts, and no retry, can overtake them (Kannel reorders under load).
- A throttle answer (ESME_RTHROTTLED / ESME_RMSGQFUL) is not a failure and not a retry: the same
  PDU goes first again. A sporadic throttle (while under `throttle_tolerance` of the bind's recent
  answers are throttles) is resent at once; repeated ones pause the bind briefly (doubling up to a
  cap, reset after a success). Jasmin reports the first throttle as a failure and counts throttles
  and errors in one retry budget, losing messages; Kannel pauses the whole link for every
  throttle, and so did we: with 2% of submits throttled at random the bind then spent more than
  half its time paused.
- Transient errors get a few quick retries with their own budget, then go back to the dispatcher.
- A submit_sm unanswered in response_timeout_s goes back to the dispatcher as TIMEOUT; if the
  SMSC then accepts it late, ``on_late_submit`` says so (with the part's context from
  ``send_message``), so the caller can use that acceptance instead of resending the part.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import random
import ssl
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, Protocol

from asyncio_throttle import Throttler

from bridge.aio import running, wait_event
from bridge.fastinit import fast_init, maker
from bridge.smpp import constants as C
from bridge.smpp.codec import Bind, EncodeError, ShortMessage
from bridge.smpp.persecond import PerSecond
from bridge.smpp.protocol import (
    BindRefusedError,
    BindTimeoutError,
    SmppProtocol,
    SubmitResult,
    make_ssl_context,
    open_bind,
)
from bridge.smpp.session import BindMode, BindSession, NotBound, ReceiptReceived, WindowFull
from bridge.smpp.turns import Turns

__all__ = [
    "CREDENTIAL_STATUSES",
    "Connector",
    "DeliverHandler",
    "LateSubmit",
    "OnePart",
    "ReceiptHandler",
    "SubmitOutcome",
]

log = logging.getLogger("bridge.smpp")

SubmitHook = Callable[[str, str, str, float | None], None]
# The most round trips of accepted parts a connector leaves in its metrics' list (`ok_sink`)
# before it has them counted: ~32 KiB of floats, where a flush may be a scrape apart.
OK_RTTS_MAX: Final = 1024


def _no_sink(smsc: str) -> None:
    """`Connector._ok_full` before an ok sink is taken (never called: no list to fill)."""


DeliverHandler = Callable[[str, ShortMessage], Awaitable[int]]
"""(smsc name, deliver_sm body) -> status for deliver_sm_resp: ESME_ROK once the pipeline has
committed it, ESME_RX_T_APPN when it could not (the SMSC will redeliver)."""
ReceiptHandler = Callable[[str, ReceiptReceived], Awaitable[int]]
"""(smsc name, a deliver_sm marked a receipt, read without its ShortMessage) -> the same status:
`Inbound.on_receipt`. Without one, receipts go to the DeliverHandler as ShortMessages."""

CREDENTIAL_STATUSES: Final = frozenset({C.ESME_RBINDFAIL, C.ESME_RINVPASWD, C.ESME_RINVSYSID})
NO_BIND_WAIT_S: Final = 1.0
SLOT_POLL_S: Final = 1.0  # how often a bind without its slot asks the gate again
SLOT_CHECK_S: Final = 0.5  # how often a bound bind checks it still holds its slot
# A bind that stayed up this long (or reconnect_max_s, if shorter) resets the reconnect back-off.
STABLE_BIND_S: Final = 30.0
# Weight of each submit answer in a bind's throttle rate: a moving average over ~128 answers.
# One throttle after a clean run reads 0.8%; 14 in a row, or a steady share over the tolerance,
# pause. Shorter averages are too noisy: over 32 answers, 2% random throttles crossed 5% often
# enough to pause a 1 s default pause several times a minute.
THROTTLE_RATE_WEIGHT: Final = 1 / 128
ERROR_LOG_EVERY_S: Final = 10.0  # submit errors are logged at most this often per SMSC
_ROK: Final = C.ESME_ROK  # read per part sent


class BindGate(Protocol):
    """Which configured binds this process may open. Without one (the default) all of them,
    always; with several instances on PostgreSQL the configured count of an SMSC is shared by
    all of them (bridge/store/postgres_coord.py), so each opens only the slots it holds."""

    async def acquire(self, slot: int) -> bool: ...  # may bind `slot` now (takes it if free)
    def keep(self, slot: int) -> bool: ...  # still ours while bound; False: unbind now


class SmscSettings(Protocol):
    """The fields of ``bridge.config.SmscConfig`` the connector reads: read-only, as that frozen
    dataclass's are (a plain attribute here would ask for a settable one, which it is not)."""

    @property
    def name(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def receive_port(self) -> int | None: ...

    @property
    def tls(self) -> bool: ...

    @property
    def tls_verify(self) -> bool: ...

    @property
    def tls_ca_file(self) -> Any: ...

    @property
    def system_id(self) -> str: ...

    @property
    def password(self) -> str | None: ...

    @property
    def system_type(self) -> str: ...

    @property
    def interface_version(self) -> int: ...

    @property
    def address_range(self) -> str: ...

    @property
    def bind_ton(self) -> int: ...

    @property
    def bind_npi(self) -> int: ...

    @property
    def bind_mode(self) -> str: ...

    @property
    def binds(self) -> int: ...

    @property
    def window(self) -> int: ...

    @property
    def tps(self) -> float: ...

    @property
    def response_timeout_s(self) -> float: ...

    @property
    def enquire_link_s(self) -> float: ...

    @property
    def reconnect_min_s(self) -> float: ...

    @property
    def reconnect_max_s(self) -> float: ...

    @property
    def throttle_pause_min_s(self) -> float: ...

    @property
    def throttle_pause_max_s(self) -> float: ...

    @property
    def throttle_tolerance(self) -> float: ...

    @property
    def throttle_part_retries(self) -> int: ...

    @property
    def max_transient_retries(self) -> int: ...

    @property
    def recycle_after_timeouts(self) -> int: ...

    @property
    def unbind_timeout_s(self) -> float: ...

    @property
    def in_flight_on_restart(self) -> str: ...


@fast_init
@dataclass(frozen=True, slots=True)
class SubmitOutcome:
    index: int  # which part of the message (0-based)
    # "ok" | "permanent" | "transient" | "no_bind" | "cancelled" | "expired" | "throttled"
    kind: str
    status: int  # SMPP command_status; 0 for ok, -1 when none (timeout, connection lost, no bind)
    status_name: str  # "ESME_RINVDSTADR", "TIMEOUT", "CONNECTION_LOST", "NO_BIND", "CANCELLED"
    message_id: str | None  # the raw submit_sm_resp id when ok
    # When ok: the event loop's time as the accepted submit_sm left. Not part of the outcome's
    # value (equal outcomes are equal whenever they were sent).
    sent_at: float = field(default=0.0, compare=False)


# An accepted part's outcome (`Connector._accepted`, one a part sent): fastinit.maker's function,
# the same frozen instance without the class call's way back into the interpreter (session 59).
_ok_outcome = maker(SubmitOutcome)


@dataclass(frozen=True, slots=True)
class LateSubmit:
    """The SMSC accepted a part after its submit_sm was reported TIMEOUT (SubmitOutcome
    "transient"): the part reached it, the handset will get it, its receipt will carry
    ``message_id`` (raw, as in submit_sm_resp)."""

    smsc: str
    context: Any  # the part's entry in send_message's `contexts` (None without)
    status: int  # always ESME_ROK: other late answers are not reported
    message_id: str


class _Expired(Exception):
    """A part's deadline passed while it waited to be sent."""


class _Held(Exception):
    """A part about to be resent whose message was held meanwhile (Connector.is_held)."""


def _no_bind(i: int) -> SubmitOutcome:
    return SubmitOutcome(i, "no_bind", -1, "NO_BIND", None)


def _cancelled(i: int) -> SubmitOutcome:
    return SubmitOutcome(i, "cancelled", -1, "CANCELLED", None)


def _modes(bind_mode: str, n: int) -> list[BindMode]:
    if bind_mode == "transceiver":
        return [BindMode.TRANSCEIVER] * n
    if bind_mode == "transmitter_receiver":
        return [BindMode.TRANSMITTER] * n + [BindMode.RECEIVER] * n
    if bind_mode == "transmitter":
        return [BindMode.TRANSMITTER] * n
    if bind_mode == "receiver":
        return [BindMode.RECEIVER] * n
    raise ValueError(f"bind_mode: unknown mode {bind_mode!r}")


def _port(cfg: SmscSettings, mode: BindMode) -> int:
    """Where a bind connects: receivers to `receive_port` when the carrier gives them one."""
    if mode is BindMode.RECEIVER and cfg.receive_port is not None:
        return cfg.receive_port
    return cfg.port


def _held_outcome(index: int) -> SubmitOutcome:
    """A part held between two attempts: "expired", so the store ends it and the parts after it
    with the reason the hold recorded (messages.end_error)."""
    return SubmitOutcome(index, "expired", -1, "HELD", None)


PACE_WINDOW_S: Final = 0.1
"""The TPS limit holds over every window this long, not over whole seconds: at most tps / 10
submits in any 0.1 s. Counted per second, a second's whole allowance left in a burst at its start
(an SMSC that meters smoothly throttles such a burst), and a message's next part waited for the
next second: first part out -> last answered, p50 987 ms at 200/s."""


class _Pacer(Throttler):
    """asyncio-throttle's sliding window, waited for by sleeping until its oldest submit leaves
    the window instead of polling every `retry_interval` (10 ms): with windows of 0.1 s, polling
    fine enough not to lose rate (1 ms) cost 2.4 times the CPU per message of a TPS-limited
    bind. Only the waiter holding the turn (Turns) waits here."""

    async def acquire(self) -> None:
        while True:
            if self.take_now():
                return
            await asyncio.sleep(self._task_logs[0] + self.period - time.monotonic() + 1e-4)

    def take_now(self) -> bool:
        """`acquire` when it would not wait: room in the window now, taken (True); else False,
        nothing taken."""
        self.flush()
        if len(self._task_logs) >= self.rate_limit:
            return False
        self._task_logs.append(time.monotonic())
        return True


def _rate(tps: float) -> tuple[int, float]:
    """(submits, period) for `tps`: whole PDUs per window, so a low or fractional TPS stretches
    the window."""
    per = max(1, round(tps * PACE_WINDOW_S))
    return per, per / tps


def _throttler(tps: float) -> _Pacer | None:
    if tps <= 0:
        return None
    per, period = _rate(tps)
    return _Pacer(rate_limit=per, period=period)


class _Bind:
    """One configured bind: its current connection (if any) and its submit gate.

    The gate hands out window slots: priority waiters (resubmissions after a throttle or a
    transient error) before ordinary ones, none while the bind is paused after a throttle.
    """

    __slots__ = (
        "hi",
        "index",
        "lo",
        "mode",
        "pause",
        "pause_started",
        "paused_until",
        "proto",
        "pumping",
        "repump",
        "reserved",
        "retiring",
        "stalled_at",
        "task",
        "throttle_rate",
        "timer",
        "unanswered",
    )

    def __init__(self, index: int, mode: BindMode) -> None:
        self.index = index
        self.mode = mode
        self.proto: SmppProtocol | None = None
        self.task: asyncio.Task[None] | None = None
        # Waiters for a slot: a future each, or a one-part message's record (OnePart).
        self.hi: deque[asyncio.Future[bool] | OnePart] = deque()
        self.lo: deque[asyncio.Future[bool] | OnePart] = deque()
        self.reserved = 0  # slots granted to a sender that has not submitted yet
        self.pumping = False  # Connector._pump under way (not re-entered)
        self.repump = False  # ... and asked for again meanwhile
        self.pause: float | None = None  # current throttle pause; None after a success
        self.pause_started = -1.0
        self.paused_until = 0.0
        self.timer: asyncio.TimerHandle | None = None
        # Share of recent submit answers that were throttles (moving average, ~128 answers).
        self.throttle_rate = 0.0
        # Stalls in a row: submits that timed out with no answer to any submit in between,
        # each sent after the one before it timed out (see _count_unanswered).
        self.unanswered = 0
        self.stalled_at = -math.inf  # loop time of the last time-out counted
        self.retiring: SmppProtocol | None = None  # the connection _retire is closing

    @property
    def up(self) -> bool:
        return self.proto is not None and self.proto.is_bound

    @property
    def in_flight(self) -> int:
        return self.proto.session.in_flight if self.proto is not None else 0

    def capacity(self) -> int:
        """Window slots neither in flight nor already granted."""
        if self.proto is None:
            return 0
        return self.proto.session.free_slots - self.reserved

    def waiting(self) -> int:
        return len(self.hi) + len(self.lo)


_IDLE: Final = 0  # a OnePart neither in the window's line nor on the wire
_IN_LINE: Final = 1
_STARTING: Final = 2  # in the line, `_start` still running (its `_pump`)
_ON_WIRE: Final = 3  # its submit_sm sent, the answer awaited (`SmppProtocol.submit_to`)
_CANCELLED: Final = 4  # on the wire when cancelled (`cancel_send`): its answer still awaited


class OnePart:
    """A one-part message sent by `Connector.send_one` without a task (session 57): where its
    part is (in the window's line, on the wire, in a task, over) and what it needs there.
    The caller subclasses it for its own record (the dispatcher's `_Quick`: one object a
    message), sets `ctx` (the context its steps run in) and gets `finished(outcomes, exc)`
    once. A task per message (made, stepped twice, its coroutine frames) cost ~15 k
    instructions, a future with its done-callback and the loop's hop to it ~3 k (README note
    27): this object is itself what the window's line holds (`_pump` grants it a slot by a
    plain call, `set_result`) and what the protocol resolves with the answer
    (`SmppProtocol.submit_to`: `set_result` again, inside the read that brought it)."""

    __slots__ = (
        "_bind",
        "_c",
        "_context",
        "_contexts",
        "_deadline",
        "_i",
        "_live",
        "_more",
        "_outcomes",
        "_part",
        "_parts",
        "_state",
        "_task",
        "ctx",
    )

    ctx: contextvars.Context
    # Set by Connector.send_one (no __init__: the caller's subclass has its own).
    _c: Connector
    _bind: _Bind
    _parts: Sequence[ShortMessage | bytes]  # bytes: a body written (submit_bodies)
    _contexts: Sequence[Any] | None  # with more than one part
    _i: int  # the part under way (`_part`, its `_context`)
    _more: bool  # parts after it (one flag read per answer, not a length compared)
    _part: ShortMessage | bytes
    _deadline: float | None
    _context: Any
    _state: int
    _task: asyncio.Task[None] | None
    _outcomes: list[SubmitOutcome]
    _live: bool

    def finished(self, outcomes: list[SubmitOutcome], exc: BaseException | None) -> None:
        """What send_message would return (`outcomes`, exc None) or raise (`exc`; a
        CancelledError after `cancel_send`, an acceptance that came meanwhile in `outcomes`)."""
        raise NotImplementedError

    def _start(self) -> None:
        """send_message's steps for part `_i`: the usual part submitted with a free slot, else
        `_submit_on`'s (a slot from the line, a later part's in the priority line; the TPS
        turn; the deadline; the submit). A part after the first whose bind went away goes to
        `_send_part` in a task, which picks another, as send_message does."""
        c, bind = self._c, self._bind
        try:
            deadline = self._deadline
            proto = bind.proto
            if self._i:
                # `_slot_now` inline, less its `not b.lo` (`room`): a later part joins the
                # priority line, which `_pump` serves before the ordinary one, so with nobody
                # in it and a slot free the pump grants this part that slot whoever waits in
                # `lo` (the usual case of a 3-part message under load: the freed slot is not
                # pumped yet as the answer starts the next part). Sent straight away below, the
                # line's append, the pump and its grant (`set_result`, `_lined`, `_slot`) are
                # not made (session 59); `free` keeps its old meaning for every other step.
                # The window's free slots read once (`slots`): less one after the submit
                # below, which takes one (session 60: a property's call a later part).
                room = False
                slots = 0
                if not bind.hi and proto is not None and proto.is_bound and not c._closing:
                    slots = proto.session.free_slots
                    room = slots > bind.reserved and (
                        not bind.paused_until or c._now() >= bind.paused_until
                    )
                free = room and not bind.lo
                # `not free and not bind.up`, less the property's two calls when `room` (the
                # same `proto`, bound: up) has it already (session 60).
                # `bind.up` inline (the same `proto`): a call less for a later part meeting
                # others in the priority line (session 61).
                if not room and (proto is None or not proto.is_bound):
                    self._go_on(bind, None)
                    return
            else:
                # `_slot_now`, less what `_best_bind` found a moment ago (up, not closing),
                # and `capacity()` inline (a call a message).
                free = room = (
                    not bind.hi
                    and not bind.lo
                    and proto is not None
                    and proto.session.free_slots > bind.reserved
                    and (not bind.paused_until or c._now() >= bind.paused_until)
                )
                slots = 0  # read below only when not `free`: never on this path
            if free and c._throttler is not None:
                # `_submit_on` with a slot at once (`_acquire`'s), then its TPS turn: taken
                # here when nobody holds it and the throttler has room (`_tps_now`), else
                # awaited in a task (`_turn`); then the deadline and the submit (`_slot`).
                bind.reserved += 1
                if c._tps_now():
                    self._slot()
                else:
                    self._await_turn()
                return
            if (
                room
                and c._throttler is None  # else a TPS turn first: free, it went above
                and (deadline is None or running(c._loop).time() < deadline)
            ):
                if proto is not None:
                    # send_message's `_submit_now`, with this as the answer's waiter.
                    try:
                        proto.submit_told(self._part, self, self._context)
                    except (WindowFull, NotBound):
                        c._pump(bind)  # as _submit_on does with a slot unused
                    except EncodeError as e:
                        self._end(c._unencodable(self._i, e))
                        return
                    else:
                        self._state = _ON_WIRE
                        if not free and slots - 1 > bind.reserved:  # free_slots after it
                            # What the pump that granted the part its slot went on to do:
                            # the slots still free to `lo`'s messages.
                            c._pump(bind)
                        return
            # `_submit_on`'s `_acquire`: a slot at once, else a place in the window's line.
            if free and c._slot_now(bind):  # its validity past, or the session refused it
                bind.reserved += 1
                self._slot()
                return
            self._state = _STARTING
            (bind.hi if self._i else bind.lo).append(self)
            c._pump(bind)
            if self._state == _STARTING:
                self._state = _IN_LINE
        except Exception as exc:
            self._over(exc)

    def done(self) -> bool:
        """As a waiter's future would answer `_pump`, `refuse_new` and the protocol's
        `_resolve`: False while it waits in the line or for its answer."""
        return self._state == _IDLE

    def cancelled(self) -> bool:
        return False  # `_resolve` asks a done waiter: never one of these

    def set_result(self, got: Any) -> None:
        """A slot granted (True) or refused (False, the bind gone) by `_pump` or
        `refuse_new`, or the answer (a SubmitResult) by the protocol: handled at once, in
        `ctx` (unless its own `_start` is what pumped). Never raises into the caller."""
        state = self._state
        self._state = _IDLE
        step: Callable[[Any], None]
        if state == _ON_WIRE:
            step = self._answered
        elif state == _CANCELLED:
            step = self._answer_after_cancel
        elif state == _STARTING:
            self._lined(got)
            return
        elif got and self._c._throttler is None:
            # A slot granted, no TPS turn to take: `_lined`'s step, without its call (one a
            # part sent from the line; `_slot` has `_lined`'s handler, session 61).
            try:
                self.ctx.run(self._slot)
                return
            except RuntimeError as exc:  # as below
                if "cannot enter context" not in str(exc):
                    raise
            self._slot()
            return
        else:
            step = self._lined
        try:
            self.ctx.run(step, got)
            return
        except RuntimeError as exc:  # its context entered already (not expected): the caller's
            if "cannot enter context" not in str(exc):
                raise
        step(got)

    def _lined(self, granted: bool) -> None:
        try:
            if not granted:  # the bind went away first: not an attempt
                self._go_on(None, None)
            elif self._c._throttler is not None and not self._c._tps_now():
                # Its turn at the throttler, as `_submit_on` takes it once granted its slot:
                # awaited in a task when not free at once (also a TPS limit that came while it
                # waited: a reload's `update_limits`; sent at once, a window of waiting
                # messages went out over the limit just set).
                self._await_turn()
            else:
                self._slot()
        except Exception as exc:
            self._over(exc)

    def _await_turn(self) -> None:
        """`_turn` in a task, counted in the connector's `_turns_due` until its first step
        takes its place in the turn's line: `_tps_now` does not pass it meanwhile (a message
        claimed, or granted its slot, after this one took the throttler's room first while
        nobody held the turn yet; session 58's review)."""
        self._c._turns_due += 1
        self._in_task(self._turn(), None, True)

    async def _turn(self) -> None:
        """`_submit_on`'s TPS turn for a part holding its slot (`_lined`), then `_slot`. Its
        slot handed on if cancelled (or failed) meanwhile, as `_submit_on`'s `finally` does."""
        c, b = self._c, self._bind
        c._turns_due -= 1  # in the turn's line from here (`_await_turn`)
        try:
            await c._tps_turn(self._i > 0)
        except BaseException as exc:  # a CancelledError (cancel_send): what send_message raised
            b.reserved -= 1
            c._pump(b)
            self._over(exc)
            return
        self._task = None  # on the wire next: `cancel_send` waits for its answer, no task
        try:
            self._slot()
        except Exception as exc:
            self._over(exc)

    def _slot(self) -> None:
        """A window slot reserved for the part (`_submit_on` after its `_acquire`). A fault
        ends the message (`_over`), as each caller's handler did (`_lined`, `_turn`, `_start`):
        `set_result` calls it for a granted part without `_lined`'s call."""
        try:
            c, b = self._c, self._bind
            sent = False
            outcome = None
            try:
                if self._deadline is not None and c._now() >= self._deadline:
                    outcome = SubmitOutcome(self._i, "expired", -1, "VALIDITY_EXPIRED", None)
                else:
                    proto = b.proto
                    # Not `proto.is_bound` first (a property's call, a part granted its slot):
                    # submit_told raises NotBound itself for a transport closing or gone and a
                    # session not bound (or a receiver), before anything is encoded or queued.
                    if proto is not None and not c._closing:
                        try:
                            proto.submit_told(self._part, self, self._context)
                            sent = True
                        except (WindowFull, NotBound):
                            pass
            except EncodeError as e:
                outcome = c._unencodable(self._i, e)
            finally:
                b.reserved -= 1
                if not sent:
                    c._pump(b)  # hand the unused slot on
            if outcome is not None:
                self._end(outcome)
            elif not sent:  # the bind went away before the PDU left: not an attempt
                self._go_on(None, None)
            else:
                self._state = _ON_WIRE
        except Exception as exc:
            self._over(exc)

    def accepted(self, message_id: str, rtt_s: float) -> None:
        """The part on the wire accepted (ESME_ROK), told by the protocol's read by the
        answer's fields (`SmppProtocol.submit_told`: one a part sent), where `done()` and
        `set_result` took a `SubmitResult` built for it (session 60), and called in `ctx` by
        that read (`ctx.run`: session 61, where this ran `_took` so, a call a part more): the
        next part started (`_answered_next`'s steps inline, a call a later part), or the
        message finished. A part cancelled meanwhile takes it as `set_result` gave it
        (`_answer_after_cancel`); one done already (not expected) does not, as `_resolve`
        did not give it."""
        state = self._state
        if state != _ON_WIRE:
            if state == _CANCELLED:
                self.set_result(SubmitResult(_ROK, message_id, None, rtt_s))
            return
        self._state = _IDLE
        try:
            c = self._c
            loop = c._loop  # `running(c._loop)` inline: a call a part
            if loop is None or not loop.is_running():
                loop = running(loop)
            # One place for an acceptance's bookkeeping (session 60 inlined it here: a call a
            # part, ~0.15% of a 3-part message, against two copies of the throttle and pause
            # rules to keep alike).
            outcome = c._accepted(self._i, self._bind, rtt_s, message_id, loop.time())
            outcomes = self._outcomes
            outcomes.append(outcome)
            if self._more:  # the next part, from this answer's read
                i = self._i = self._i + 1
                parts = self._parts
                self._more = i + 1 < len(parts)
                self._part = parts[i]
                contexts = self._contexts
                self._context = None if contexts is None else contexts[i]
                self._start()
                return
        except Exception as exc:
            self._over(exc)
            return
        # _end and _over, inline (the last part accepted, the usual case).
        self._live = False
        c._active -= 1
        if c._idle is not None:
            c._check_idle()
        self.finished(outcomes, None)

    def _answered(self, res: SubmitResult) -> None:
        """The answer as a `SubmitResult` (`set_result`, in `ctx`: a part's answer while the
        protocol's `on_submit_result` is set, or a `submit_to`'s)."""
        if res.error is not None or res.status != _ROK:
            try:
                self._go_on(self._bind, res)
            except Exception as exc:
                self._over(exc)
            return
        self._state = _ON_WIRE  # as it was until `set_result`: `accepted` takes it from there
        self.accepted(res.message_id, res.rtt_s)

    def _answer_after_cancel(self, res: SubmitResult) -> None:
        """Connector._answer_after_cancel's, the answer come: an acceptance kept."""
        try:
            c = self._c
            if c._answered(res) == "ok":
                c._ok += 1
                self._outcomes.append(
                    SubmitOutcome(self._i, "ok", res.status, "ESME_ROK", res.message_id)
                )
        except Exception as exc:
            self._over(exc)
            return
        self._over(asyncio.CancelledError())

    def _go_on(self, bind: _Bind | None, first: SubmitResult | None) -> None:
        """What send_message hands `_send_part`: in a task, as resends wait and retry."""
        self._in_task(self._rest(bind, first), first, False)

    def _in_task(
        self, coro: Coroutine[Any, Any, None], first: SubmitResult | None, slot: bool
    ) -> None:
        """`coro` (`_rest`, `_turn`) in a task, which `cancel_send` cancels. A task cancelled
        before its first step runs none of its coroutine's handlers (a link lost with the part
        on the wire, or a slot granted, and stop()'s cancel in the same loop round):
        `_task_ended` then ends the message as they would have (`slot`: the window slot
        granted to it handed on, as `_turn`'s handler does), or it was never finished (its
        dispatch slot, the connector's `_active` and stop() waiting for it, held for ever)."""
        task = self._task = running(self._c._loop).create_task(coro)
        task.add_done_callback(lambda t: self._task_ended(t, first, slot))

    def _task_ended(self, task: asyncio.Task[None], first: SubmitResult | None, slot: bool) -> None:
        if not task.cancelled():
            return  # it ended the message itself (`_over`), or goes on by callbacks
        if slot:  # `_turn`, cancelled before its first step: no longer due at the turn
            self._c._turns_due -= 1
        if not self._live:
            return
        try:
            if slot:
                self._bind.reserved -= 1
                self._c._pump(self._bind)
            # The task's cancel as send_message's handler took it with this answer come: told
            # to `on_submit` (`_answer_after_cancel`), an acceptance never (not sent on then).
            if first is not None:
                self._c._answered(first)
        except Exception as exc:
            self._over(exc)
            return
        self._over(asyncio.CancelledError())

    async def _rest(self, bind: _Bind | None, first: SubmitResult | None) -> None:
        wire: list[asyncio.Future[SubmitResult]] = []
        try:
            try:
                outcome, b = await self._c._send_part(
                    self._i, self._part, bind, None, self._deadline, self._context, wire, first
                )
            except asyncio.CancelledError:
                if wire:
                    await self._c._answer_after_cancel(wire[0], self._i, self._outcomes)
                raise
        except BaseException as exc:  # what send_message raised, told to the caller
            self._over(exc)
            return
        if outcome.kind == "ok" and self._more:
            # The next part on the bind this one went out on (send_message's `bind`), by
            # callbacks again: this task ends here.
            self._task = None
            if b is not None:
                self._bind = b
            try:
                self._answered_next(outcome)
            except Exception as exc:
                self._over(exc)
            return
        self._end(outcome)

    def cancel_send(self) -> None:
        """What a task's cancel did to send_message: a part in the line leaves it, one on the
        wire has its answer awaited and an acceptance kept (`_answer_after_cancel`: the
        session's own time-out bounds the wait), a task is cancelled; then
        `finished(outcomes, CancelledError)`."""
        if not self._live:
            return
        if self._task is not None:
            self._task.cancel()
        elif self._state in (_IN_LINE, _STARTING):
            self._state = _IDLE
            with contextlib.suppress(ValueError):  # `_left_line`'s, for a place not granted
                (self._bind.hi if self._i else self._bind.lo).remove(self)
            self._over(asyncio.CancelledError())
        elif self._state == _ON_WIRE:
            self._state = _CANCELLED

    def _answered_next(self, outcome: SubmitOutcome) -> None:
        """Part `_i` accepted (`outcome`): the next one started."""
        self._outcomes.append(outcome)
        i = self._i = self._i + 1
        parts = self._parts
        self._more = i + 1 < len(parts)
        self._part = parts[i]
        contexts = self._contexts
        self._context = None if contexts is None else contexts[i]
        self._start()

    def _end(self, outcome: SubmitOutcome) -> None:
        """Part `_i`'s last outcome, not an acceptance (or the last part's): the parts after
        it cancelled, as send_message reports them."""
        outcomes = self._outcomes
        outcomes.append(outcome)
        if outcome.kind != "ok":
            outcomes.extend(_cancelled(j) for j in range(self._i + 1, len(self._parts)))
        self._over(None)

    def _over(self, exc: BaseException | None) -> None:
        """send_message's `finally`, then the caller told."""
        if not self._live:
            return
        self._live = False
        c = self._c
        c._active -= 1
        if c._idle is not None:
            c._check_idle()
        self.finished(self._outcomes, exc)


class Connector:
    """Keeps one SMSC's binds up and sends messages over them. See the module docstring."""

    def __init__(
        self,
        cfg: SmscSettings,
        on_deliver: DeliverHandler,
        *,
        ssl_context: ssl.SSLContext | None = None,
        transient_backoff_s: tuple[float, float] = (0.1, 2.0),
        on_receipt: ReceiptHandler | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._on_deliver = on_deliver
        self._on_receipt = on_receipt
        if ssl_context is None and cfg.tls:
            ssl_context = make_ssl_context(cfg.tls_verify, cfg.tls_ca_file)
        self._ssl = ssl_context if cfg.tls or ssl_context is not None else None
        self._transient_backoff = transient_backoff_s
        self._binds = [_Bind(i, m) for i, m in enumerate(_modes(cfg.bind_mode, cfg.binds))]
        self._tx = [b for b in self._binds if b.mode.can_transmit]
        self._rx = [b for b in self._binds if b.mode.can_receive]
        self._throttler = _throttler(cfg.tps)
        self._turns = Turns()  # at the throttler, one waiter at a time (bridge/smpp/turns.py)
        # `OnePart._turn` tasks made and not stepped yet: in line for the turn, though not in
        # `_turns` yet (`_tps_now` waits behind them).
        self._turns_due = 0
        self._tps_share = cfg.tps  # the rate self._throttler enforces (see tps_share)
        self._rr = 0
        self._loop: asyncio.AbstractEventLoop | None = None  # aio.running: no getpid() a part
        # Called when a bind comes up or goes down: the daemon publishes its bind status at once
        # (acceptors and other instances answer /readyz from it; a second's lag made a starting
        # daemon's readiness flap 200 -> 503 -> 200).
        self.on_bind_change: Callable[[], None] | None = None
        self._up_event: asyncio.Event | None = None
        self._stop_event: asyncio.Event | None = None
        self._started = False
        self._stopping = False  # no new messages
        self._closing = False  # past the grace period: no more submits at all
        self._active = 0  # send_message calls in progress
        self._idle: asyncio.Event | None = None  # set once stopping and nothing is in flight
        self._retiring: set[asyncio.Task[None]] = set()  # binds being closed (see _retire)
        # statistics for snapshot()
        self._reconnects = 0
        self._throttle_events = 0
        self._throttle_pauses = 0
        self._transient_retries = 0
        self._last_error: dict[str, Any] | None = None
        self._ok = 0
        self._failed: Counter[str] = Counter()
        # Submit errors since the last log line about them (see _log_error).
        self._unlogged: Counter[str] = Counter()
        self._errors_logged_at = -math.inf
        self._rtt_avg: float | None = None
        self._per_second = PerSecond()
        self._delivers = 0
        # Receipts the binds handed to `on_receipt` (each bind's protocol counts them here:
        # `receipt_tally`); `delivers` is both.
        self._receipts_read = [0]
        # Called once per submit_sm answered (or timed out): (smsc, kind, status name, rtt in s
        # or None without an answer). The daemon points it at its metrics.
        self.on_submit: SubmitHook | None = None
        # The daemon's metrics' list for a told acceptance's round trip and the call for a full
        # one (`Metrics.ok_sink`): `_accepted` appends to it, from the second acceptance on
        # (`_ok_rtts` set by the first, told to `on_submit`), in place of that call.
        self.ok_sink: tuple[list[float], Callable[[str], None]] | None = None
        self._ok_rtts: list[float] | None = None
        self._ok_full: Callable[[str], None] = _no_sink
        # Set before start() to share the configured binds with other instances (see BindGate).
        self.bind_gate: BindGate | None = None
        # Called for each part the SMSC accepted after its TIMEOUT was reported (see LateSubmit).
        self.on_late_submit: Callable[[LateSubmit], None] | None = None
        # Set by the dispatcher: asked, with the part's context, before a part goes out again
        # after a throttle or a transient error. True: its message was held meanwhile (an
        # opt-out, a disabled account, a deleted template...): it is not resent ("expired").
        self.is_held: Callable[[Any], Awaitable[bool]] | None = None

    def update_limits(self, cfg: SmscSettings) -> None:
        """Apply a reloaded configuration that changed only limits (TPS, throttle pauses, retries,
        timeouts, submit fields): the binds stay up. Callers restart the connector for anything
        that needs a new bind (see bridge/reload.py)."""
        tps_changed = cfg.tps != self.cfg.tps
        self.cfg = cfg
        if tps_changed:
            self._tps_share = -1.0
            self._share_tps()

    def tps_share(self) -> float:
        """The submits per second this process may send to the SMSC. `tps` is the SMSC's limit
        for the whole fleet, as `binds` is: with a bind gate (several instances on one
        PostgreSQL), each instance gets the share of its transmit binds that are up, so the
        shares add up to at most `tps` however the binds are spread, and follow them when they
        move. Without a gate this process holds every bind and the whole limit."""
        tps = self.cfg.tps
        if tps <= 0 or self.bind_gate is None or not self._tx:
            return tps
        return tps * sum(1 for b in self._tx if b.up) / len(self._tx)

    def _share_tps(self) -> None:
        share = self.tps_share()
        if share != self._tps_share and (share > 0 or self.cfg.tps <= 0):
            # No bind up (share 0): nothing is sent anyway, and keeping the last rate spares
            # the first submits after a reconnect a throttler that lets nothing through.
            self._tps_share = share
            current = self._throttler
            if current is None or share <= 0:
                self._throttler = _throttler(share)
            else:
                # Re-rated in place, not replaced: the submits of the last period count against
                # the new rate, and those already waiting on it get the new rate too. A fresh
                # throttler let a shrinking share (a bind handed over) send the old rate plus
                # the new one for a period, over the SMSC's limit across the fleet.
                current.rate_limit, current.period = _rate(share)

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._up_event = asyncio.Event()
        self._stop_event = asyncio.Event()
        for b in self._binds:
            b.task = asyncio.create_task(self._keep_bind(b), name=f"smpp-{self.name}-{b.index}")

    def refuse_new(self) -> None:
        """Shutting down: new messages, and messages still waiting for a slot for their first
        part, are answered no_bind now (the dispatcher puts them back in the queue unsent); a
        message with a part on the wire goes on to its end. Without this, the messages waiting
        for a slot (up to pipeline.in_flight_windows - 1 windows) would hold the stop for their
        whole turn, and past the grace be cut off still claimed, for a restart to resend or, on
        an `in_flight_on_restart: unknown` SMSC, to mark unknown although they never left."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        for b in self._binds:
            for q in (b.hi, b.lo):
                while q:
                    fut = q.popleft()
                    if not fut.done():
                        # Not an attempt: a first part gives up, a later one waits again.
                        fut.set_result(False)

    async def stop(self, grace_s: float) -> None:
        """Refuse new messages, let those in progress finish (up to ``grace_s``), unbind every bind
        (each bounded by unbind_timeout_s), close."""
        if not self._started or self._closing:
            return
        self.refuse_new()
        assert self._stop_event is not None
        self._stop_event.set()
        self._idle = asyncio.Event()
        self._check_idle()
        await wait_event(self._idle, grace_s)
        self._closing = True
        for b in self._binds:
            self._pump(b)  # waiters see _closing and give up
        bound = [b.proto for b in self._binds if b.proto is not None]
        t = self.cfg.unbind_timeout_s
        await asyncio.gather(
            *(p.drain_delivers(timeout_s=t) for p in bound), return_exceptions=True
        )
        await asyncio.gather(*(p.unbind(timeout_s=t) for p in bound), return_exceptions=True)
        tasks = [b.task for b in self._binds if b.task is not None]
        for task in tasks:
            task.cancel()
        pending = set(tasks)
        for _ in range(10):
            if not pending:
                break
            _done, pending = await asyncio.wait(pending, timeout=0.5)
            # A bind task can outlive its cancel: one that came up after `bound` was taken
            # (its cancel lost in asyncio.wait_for's race on Python 3.11, as it connected)
            # waits in _hold for a connection nobody closes, and stop() waited for it for
            # ever. Closing its connection ends it (it sees _stopping).
            for b in self._binds:
                if b.proto is not None:
                    b.proto.abort("stopped")
            for task in pending:
                task.cancel()
        for task in self._retiring:
            task.cancel()
        for b in self._binds:
            if b.proto is not None:
                b.proto.abort("stopped")
                b.proto = None
            if b.timer is not None:
                b.timer.cancel()
        log.info("smpp connector stopped", extra={"smsc": self.name})

    # --- state --------------------------------------------------------------------------------
    def _now(self) -> float:
        """The running loop's clock (`aio.running`: no getpid() per call)."""
        loop = self._loop = running(self._loop)
        return loop.time()

    @property
    def is_up(self) -> bool:
        """A bind that can submit is up: what routing asks (the dispatcher, wait_up). Not the
        SMSC's state as shown: see serving and is_receiving."""
        # A loop, not any() over a generator: asked several times per message (the dispatcher's
        # route pick, its window), a generator object each time.
        for b in self._tx:
            proto = b.proto  # `b.up` inline: a call a message (session 60)
            if proto is not None and proto.is_bound:
                return True
        return False

    @property
    def is_receiving(self) -> bool:
        """A bind that receives receipts and MO (a transceiver or a receiver) is up."""
        return any(b.up for b in self._rx)

    @property
    def serving(self) -> bool:
        """The SMSC does what it is configured for: it can submit, or, configured to receive
        only (an MO link), it receives. Status, readiness and `smpp_bridge_smsc_up` show this:
        is_up alone read a receive-only SMSC down with its bind up, so /readyz answered 503
        for ever on a daemon for MO alone."""
        return self.is_up if self._tx else self.is_receiving

    def free_slots(self) -> int:
        if self._stopping or not self._started:
            return 0
        now = self._now()
        return sum(
            max(0, b.capacity() - b.waiting()) for b in self._tx if b.up and now >= b.paused_until
        )

    def window_size(self) -> int:
        """Outstanding submits the live, unpaused transmit binds allow in total (0 when stopping):
        the dispatcher keeps at most this many messages in flight on this SMSC."""
        if self._stopping or not self._started:
            return 0
        now = self._now()
        return self.cfg.window * sum(1 for b in self._tx if b.up and now >= b.paused_until)

    async def wait_up(self, timeout: float) -> bool:  # noqa: ASYNC109 (the contract's name)
        if self.is_up:
            return True
        if self._up_event is None or timeout <= 0:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.is_up:
            left = deadline - loop.time()
            if left <= 0:
                return False
            if self._up_event.is_set():
                # Still set by a bind that just went down (its clean-up has not run yet): it
                # answered False at once, and a part found no bind instead of waiting for one.
                self._up_event.clear()
            await wait_event(self._up_event, left)
        return True

    def snapshot(self) -> dict[str, Any]:
        binds: dict[str, dict[str, int]] = {}
        for b in self._binds:
            d = binds.setdefault(str(b.mode), {"configured": 0, "up": 0})
            d["configured"] += 1
            d["up"] += b.up
        sec = int(time.monotonic())
        now = asyncio.get_running_loop().time() if self._started else 0.0
        return {
            "name": self.name,
            "up": self.serving,
            # None: no bind of that kind configured. receiving False with sending True: the
            # transmitters are up and the receivers down (bind_mode transmitter_receiver), so
            # receipts and MO wait at the carrier while messages still go out.
            "sending": self.is_up if self._tx else None,
            "receiving": self.is_receiving if self._rx else None,
            "binds": binds,
            "window": {
                "size": self.cfg.window * sum(1 for b in self._tx if b.up),
                "in_use": sum(b.in_flight for b in self._tx),
            },
            "free_slots": self.free_slots(),
            "tps": self._per_second.last(sec),
            "tps_avg": round(self._per_second.average(sec), 1),
            "tps_limit": self.tps_share(),
            "tps_configured": self.cfg.tps,
            "throttle_events": self._throttle_events,
            "throttle_pauses": self._throttle_pauses,
            "paused_binds": sum(1 for b in self._tx if b.up and now < b.paused_until),
            "transient_retries": self._transient_retries,
            "reconnects": self._reconnects,
            "last_error": self._last_error,
            "submits": {"ok": self._ok, "failed": dict(self._failed)},
            "rtt_ms_avg": None if self._rtt_avg is None else round(self._rtt_avg * 1000, 3),
            "delivers": self._delivers + self._receipts_read[0],
        }

    # --- sending ------------------------------------------------------------------------------
    async def send_message(
        self,
        parts: Sequence[ShortMessage | bytes],
        before_first: Callable[[], Awaitable[None]] | None = None,
        deadline: float | None = None,
        contexts: Sequence[Any] | None = None,
        outcomes: list[SubmitOutcome] | None = None,
    ) -> list[SubmitOutcome]:
        """Send a message's parts in order on one bind; one outcome per part (see module doc).

        `before_first` is awaited once, when the first part holds its window slot and right
        before it goes out: the dispatcher records there where a message is going, for SMSCs
        that must never get a part twice (`in_flight_on_restart: unknown`). Earlier, a message
        still waiting for a slot at a crash would count as possibly sent; later, a part could
        leave unrecorded. An exception from it is raised here, with nothing sent.

        `deadline` (event-loop time): the message's validity. A part that has not left by then
        (it waited for a window slot, a throttle pause, a bind) is "expired" and not sent, nor
        are the parts after it; sent late, its validity_period would be in the past.

        `contexts` (one per part): what ``on_late_submit`` reports for a part accepted after its
        TIMEOUT outcome (the dispatcher passes (message id, part seq)).

        `outcomes`: a caller's list the outcomes are appended to as each part's comes, so a
        caller cancelled half-way (a shutdown's grace ran out) still knows which parts the SMSC
        accepted, with their ids, and records them instead of resending them."""
        n = len(parts)
        if n == 0:
            return []
        if self._stopping or not self._started or not self._tx:
            return [_no_bind(i) for i in range(n)]
        self._active += 1
        try:
            # _pick_bind's answer without its coroutine when a bind is up (the usual case): a
            # coroutine object, a frame and a return through StopIteration a message.
            bind = self._best_bind()
            if bind is None:
                bind = await self._pick_bind()
                if bind is None:
                    return [_no_bind(i) for i in range(n)]
            if outcomes is None:
                outcomes = []
            wire: list[asyncio.Future[SubmitResult]] = []  # the part's submit_sm, unanswered
            loop = self._loop = running(self._loop)
            for i, part in enumerate(parts):
                before = before_first if i == 0 else None
                context = None if contexts is None else contexts[i]
                try:
                    # The usual part inline, its answer's future awaited here: a slot free at
                    # once, no TPS turn, nothing to run before it leaves, its validity not past.
                    # `_send_part` (a coroutine a part, its frame one more level that the
                    # task's suspension and resumption pass through: session 56) takes the
                    # rest, and any answer but an acceptance.
                    fut = proto = None
                    usual = (
                        before is None
                        and (i or not self._stopping)  # _send_part's first check
                        and self._throttler is None
                        and bind is not None
                    )
                    if (
                        usual
                        and bind is not None  # mypy
                        and self._slot_now(bind)
                        and (deadline is None or loop.time() < deadline)
                    ):
                        proto = bind.proto
                        if proto is not None:  # bound (_slot_now): for mypy
                            try:
                                fut = self._submit_now(bind, proto, part, context)
                            except EncodeError as e:
                                outcome = self._unencodable(i, e)
                                outcomes.append(outcome)
                                outcomes.extend(_cancelled(j) for j in range(i + 1, n))
                                break
                    if fut is None and usual and bind is not None and bind.up:
                        # A slot to wait for (a later part behind a full window, usually):
                        # `_submit_on` straight away, _send_part's first attempt without its
                        # frame; it takes what is not an acceptance.
                        try:
                            got = await self._submit_on(
                                bind, part, i > 0, None, deadline, context, wire
                            )
                        except _Expired:
                            outcome = SubmitOutcome(i, "expired", -1, "VALIDITY_EXPIRED", None)
                        except EncodeError as e:
                            outcome = self._unencodable(i, e)
                        else:
                            if got is None:  # the bind went away first: not an attempt
                                outcome, bind = await self._send_part(
                                    i, part, None, None, deadline, context, wire
                                )
                            elif got.error is None and got.status == _ROK:
                                outcome = self._accepted(
                                    i, bind, got.rtt_s, got.message_id, loop.time()
                                )
                            else:
                                outcome, bind = await self._send_part(
                                    i, part, bind, None, deadline, context, wire, got
                                )
                    elif fut is None:
                        outcome, bind = await self._send_part(
                            i, part, bind, before, deadline, context, wire
                        )
                    else:
                        try:
                            res = await fut
                        except asyncio.CancelledError:
                            # As _submit_on: answered before this task resumed, `fut` holds
                            # the answer; else it comes later.
                            assert proto is not None  # mypy: the one `fut` came from
                            wire.append(
                                fut if not fut.cancelled() else proto.answer_after_cancel(fut)
                            )
                            raise
                        assert bind is not None  # mypy: the bind `fut` went out on
                        if res.error is None and res.status == _ROK:
                            outcome = self._accepted(
                                i, bind, res.rtt_s, res.message_id, loop.time()
                            )
                        else:
                            outcome, bind = await self._send_part(
                                i, part, bind, None, deadline, context, wire, res
                            )
                except asyncio.CancelledError:
                    if wire:
                        await self._answer_after_cancel(wire[0], i, outcomes)
                    raise
                outcomes.append(outcome)
                if outcome.kind != "ok":
                    outcomes.extend(_cancelled(j) for j in range(i + 1, n))
                    break
            return outcomes
        finally:
            self._active -= 1
            self._check_idle()

    def send_one(
        self,
        one: OnePart,
        parts: Sequence[ShortMessage | bytes],
        deadline: float | None,
        context: Any,
        contexts: Sequence[Any] | None = None,
    ) -> bool:
        """`send_message(parts, None, deadline, contexts)` without a task (session 57; a
        message of several parts, or on a bind with a TPS limit, since session 58): each
        part's submit_sm queued, or its place taken in the window's line (a later part's in
        the priority line), as the part before it is accepted, and what comes next run by
        the protocol's read of the answer (or the line's grant), in `one.ctx` (the message's
        logging context). True once taken: `one.finished` is called once, from a callback or
        a task, or before this returns.

        `context`: the first part's entry of `contexts` (a message of one part needs no
        sequence: a list a message less), `contexts` the parts' (None: theirs None too).

        False, with nothing done, when send_message would not take its usual way at once (not
        started, stopping, no bind up, no parts): the caller sends it with send_message. An
        answer other than an acceptance, a slot lost before the part left, a later part whose
        bind went down and a TPS turn not free at once go on in a task (`_send_part`,
        `_turn`), as in send_message; the steps taken here are send_message's own in the same
        order (the same bind picked, the same sequence numbers)."""
        if self._stopping or not self._started or not parts:
            return False
        bind = self._best_bind()  # None moves nothing (`_rr` only with two binds up)
        if bind is None:
            return False
        self._active += 1
        one._c = self
        one._bind = bind
        one._parts = parts
        one._contexts = contexts
        one._i = 0
        one._more = len(parts) > 1
        one._part = parts[0]
        one._deadline = deadline
        one._context = context
        one._state = _IDLE
        one._task = None  # the rest in a task (_rest), past the usual case
        one._outcomes = []
        one._live = True  # finished not called yet
        one._start()
        return True

    async def _answer_after_cancel(
        self, fut: asyncio.Future[SubmitResult], index: int, outcomes: list[SubmitOutcome]
    ) -> None:
        """The caller was cancelled (a shutdown's grace ran out) with part `index` on the wire:
        its answer, which comes within milliseconds, still says whether the SMSC took it. An
        acceptance is appended to `outcomes`, so the caller records it; dropped, the restart
        sent the part again (a duplicate the customer pays the carrier for). Bounded by the
        session's own response time-out, and by a second cancel."""
        if not fut.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([fut], timeout=self.cfg.response_timeout_s)
        if not fut.done() or fut.cancelled():
            return
        res = fut.result()
        if self._answered(res) == "ok":
            self._ok += 1
            outcomes.append(SubmitOutcome(index, "ok", res.status, "ESME_ROK", res.message_id))

    def _answered(self, res: SubmitResult) -> C.SubmitOutcome:
        """What a submit_sm's answer (or its absence) means, reported to `on_submit`."""
        kind = "transient" if res.error else C.classify_submit_status(res.status)
        if self.on_submit is not None:
            rtt = None if res.error else res.rtt_s
            self.on_submit(self.name, kind, res.error or C.status_name(res.status), rtt)
        if kind == "permanent" or kind == "transient":
            self._log_error(res.error or C.status_name(res.status))
        return kind

    def _log_error(self, name: str) -> None:
        """A WARNING per ERROR_LOG_EVERY_S with the submit errors since the last one, by status:
        a carrier refusing every submit (ESME_RSYSERR) left no log line at all, while its
        throttles are logged at INFO (the metrics and last_error had it, journalctl not)."""
        self._unlogged[name] += 1
        now = time.monotonic()
        if now - self._errors_logged_at < ERROR_LOG_EVERY_S:
            return
        self._errors_logged_at = now
        errors, self._unlogged = dict(self._unlogged), Counter()
        log.warning(
            "smpp submits answered with errors", extra={"smsc": self.name, "errors": errors}
        )

    async def _send_part(
        self,
        index: int,
        part: ShortMessage | bytes,
        bind: _Bind | None,
        before: Callable[[], Awaitable[None]] | None = None,
        deadline: float | None = None,
        context: Any = None,
        wire: list[asyncio.Future[SubmitResult]] | None = None,
        first: SubmitResult | None = None,
    ) -> tuple[SubmitOutcome, _Bind | None]:
        """One part, with its resends (throttles, transient errors, a lost bind) and their
        bookkeeping; `first`: the answer to an attempt send_message already made on `bind`
        (its usual case, inline there), taken as this loop's first."""
        loop = self._loop = running(self._loop)
        transient = 0
        throttles = 0
        # A started message's next part goes first (window slot, TPS turn), as resends do: it
        # queued behind the first parts of up to a window of messages, and left seconds after
        # the part before it under a TPS limit.
        priority = index > 0
        unanswered: SubmitOutcome | None = None  # an attempt that may have reached the SMSC
        res: SubmitResult | None
        while True:
            if first is not None:  # answered already (send_message)
                res, first = first, None
                assert bind is not None  # the bind send_message's attempt went out on
            else:
                if index == 0 and self._stopping:
                    # Back to the queue unsent, unless an attempt may have arrived: that one is
                    # reported as it was (the dispatcher counts it, or marks it unknown).
                    return unanswered or _no_bind(index), bind
                if bind is None or not bind.up:
                    bind = await self._pick_bind()
                    if bind is None:
                        # An attempt lost with its connection stays reported as such: as no_bind it
                        # would not count, and a message that kills the SMSC's link went out for
                        # ever.
                        return unanswered or _no_bind(index), None
                try:
                    res = await self._submit_on(
                        bind, part, priority, before, deadline, context, wire
                    )
                except _Expired:
                    return SubmitOutcome(index, "expired", -1, "VALIDITY_EXPIRED", None), bind
                except _Held:
                    return _held_outcome(index), bind
                except EncodeError as e:
                    return self._unencodable(index, e), bind
            if res is None:  # the bind went away before the PDU left: not an attempt
                bind = None
                continue
            if res.error is None and res.status == _ROK:
                return self._accepted(index, bind, res.rtt_s, res.message_id, loop.time()), bind
            before = None  # done once the part left (repeating it is harmless)
            self._tick(1)
            now = loop.time()
            sent_at = now - res.rtt_s
            kind: C.SubmitOutcome
            if res.error is None:
                bind.unanswered = 0  # what _count_unanswered does with an answer, without a call
                a = self._rtt_avg
                self._rtt_avg = res.rtt_s if a is None else a + 0.05 * (res.rtt_s - a)
                kind = self._answered(res)
            else:
                self._count_unanswered(bind, res.error, sent_at, now)
                kind = self._answered(res)
            name = res.error or C.status_name(res.status)
            if kind == "throttled":
                throttles += 1
                self._throttle(bind, sent_at, name)
                if throttles >= self.cfg.throttle_part_retries:
                    return SubmitOutcome(index, "throttled", res.status, name, None), bind
                priority = True
                before = self._hold_check(context)  # at the resend's slot, after any pause
                continue
            if kind == "transient":
                transient += 1
                self._failed[name] += 1
                outcome = SubmitOutcome(index, "transient", res.status, name, None)
                if res.error is not None:  # no answer: the SMSC may have it
                    unanswered = outcome
                    if self.cfg.in_flight_on_restart == "unknown":
                        return outcome, bind  # never twice to such an SMSC: the caller decides
                    if res.error in ("TIMEOUT", "CONNECTION_LOST"):
                        # An SMSC answering just after response_timeout_s accepted each copy:
                        # resent here at once, up to max_transient_retries times per claim, a
                        # part went out 6 times a claim and 18 in all. The same with a link that
                        # drops with the part on it (an SMSC resetting on it, or unbinding). The
                        # dispatcher counts unanswered attempts (3 at most) and resends after a
                        # pause instead.
                        return outcome, bind
                if transient > self.cfg.max_transient_retries:
                    self._error(f"part {index}: {name} after {transient - 1} retries")
                    return outcome, bind
                self._transient_retries += 1
                priority = True
                if res.error == "CONNECTION_LOST":
                    bind = None
                elif res.status == C.ESME_RINVBNDSTS:
                    # The SMSC no longer knows this bind (it failed over, or restarted behind
                    # a proxy) while it still answers enquire_link: every submit on it would be
                    # refused so until the message ran out of retries. Only a new bind helps;
                    # the answers of the other submits in flight come first (see _retire).
                    if bind.proto is not None:
                        self._retire(
                            bind, bind.proto, "ESME_RINVBNDSTS: the SMSC no longer knows this bind"
                        )
                    bind = None
                lo, hi = self._transient_backoff
                await asyncio.sleep(min(hi, lo * 2 ** (transient - 1)) * random.uniform(0.5, 1.0))
                before = self._hold_check(context)  # at the resend's slot, after a new bind
                continue
            self._failed[name] += 1
            return SubmitOutcome(index, "permanent", res.status, name, None), bind

    def _submit_now(
        self, b: _Bind, proto: SmppProtocol, part: ShortMessage | bytes, context: Any
    ) -> asyncio.Future[SubmitResult] | None:
        """send_message's usual part on `b`, a slot free (`_slot_now`): its submit_sm queued,
        the future of its answer. None when the session refused it (not expected with a slot
        free): `_send_part` tries again and reports what it finds.
        EncodeError (the part cannot be encoded: nothing recorded) is raised."""
        try:
            return proto.submit(part, context)
        except (WindowFull, NotBound):
            self._pump(b)  # as _submit_on does with a slot unused
            return None

    def _unencodable(self, index: int, e: EncodeError) -> SubmitOutcome:
        self._failed[e.code] += 1
        self._error(f"part {index} cannot be encoded: {e}")
        return SubmitOutcome(index, "permanent", -1, e.code, None)

    def _accepted(
        self, index: int, bind: _Bind, rtt_s: float, message_id: str, now: float
    ) -> SubmitOutcome:
        """Part `index` accepted (ESME_ROK with `message_id`, its round trip `rtt_s`, answered
        on `bind` by loop time `now`; the answer's fields, not its `SubmitResult`, which a part
        told by `SmppProtocol.submit_told` has none of, session 60): the bind's
        and the connector's bookkeeping of an answer (`_count_unanswered`'s reset, the round
        trip's average, `on_submit`, `_answered`'s "ok" inline: two calls a part sent) and of a
        success (the throttle rate, the pause over), and its outcome."""
        # _tick, and `PerSecond.add` inline: its second in progress counted (a call a part).
        per_second = self._per_second
        sec = int(time.monotonic())
        if sec > per_second._sec:
            per_second._advance(sec)
        per_second._counts[0] += 1
        sent_at = now - rtt_s
        bind.unanswered = 0
        a = self._rtt_avg
        self._rtt_avg = rtt_s if a is None else a + 0.05 * (rtt_s - a)
        rtts = self._ok_rtts
        if rtts is not None:
            # `on_submit`'s acceptance as its round trip in the metrics' list (`ok_sink`): a
            # call a part answered, ~4.3 k instructions, less (session 63).
            rtts.append(rtt_s)
            if len(rtts) >= OK_RTTS_MAX:
                self._ok_full(self.name)
        elif self.on_submit is not None:
            self.on_submit(self.name, "ok", "ESME_ROK", rtt_s)
            if self.ok_sink is not None:  # told once: the series made as before, then the list
                self._ok_rtts, self._ok_full = self.ok_sink
        bind.throttle_rate -= THROTTLE_RATE_WEIGHT * bind.throttle_rate
        if sent_at >= bind.pause_started:
            bind.pause = None
        self._ok += 1
        return _ok_outcome(index, "ok", _ROK, "ESME_ROK", message_id, sent_at)

    def _hold_check(self, context: Any) -> Callable[[], Awaitable[None]] | None:
        """What a resend awaits holding its window slot, right before it leaves (after any
        throttle pause, back-off or wait for a new bind, when a hold is likeliest to have come):
        each resend is a new decision to send, and the message may have been held since the
        last one. _Held if it was; a failed read resends, as before the check existed."""
        is_held = self.is_held
        if is_held is None or context is None:
            return None

        async def check() -> None:
            try:
                held = await is_held(context)
            except Exception:
                log.warning("hold check failed; resending", exc_info=True)
                return
            if held:
                raise _Held

        return check

    def _count_unanswered(self, bind: _Bind, error: str | None, sent_at: float, now: float) -> None:
        """Drop a bind whose submits time out in a row while its link looks alive.

        An SMSC that answers enquire_link but has stopped answering submit_sm (a stuck
        application behind a live socket, a half-failed-over pair) otherwise keeps the bind
        "up" for ever: every message waits response_timeout_s, comes back TIMEOUT and is
        claimed onto the same dead bind again. A fresh bind is the only cure operators know;
        with several binds the others take the traffic meanwhile. Any answer resets the count,
        a late one too.

        What counts is stalls, not submits: a time-out of a submit that was already on the
        wire when the last counted one timed out is the same stall seen again. A full window
        timing out at once counted as a window of stalls and dropped the bind at once, with the
        late acceptances of a congested SMSC (answering just past response_timeout_s) still
        due on it: lost, their parts were sent twice. Counted as one, the late answers come
        and reset the count; a stuck SMSC is still dropped, after recycle_after_timeouts
        rounds of response_timeout_s.
        """
        if error is None:
            bind.unanswered = 0
            return
        if error != "TIMEOUT" or sent_at < bind.stalled_at:
            return
        bind.stalled_at = now
        bind.unanswered += 1
        limit = self.cfg.recycle_after_timeouts
        if limit and bind.unanswered >= limit and bind.proto is not None and bind.up:
            message = (
                f"bind {bind.index}: {bind.unanswered} submits in a row unanswered; re-binding"
            )
            log.warning(
                "smpp bind re-bound: submits unanswered",
                extra={"smsc": self.name, "bind": bind.index, "unanswered": bind.unanswered},
            )
            self._error(message)
            bind.unanswered = 0
            bind.proto.abort(f"{limit} submit_sm in a row unanswered")

    async def _tps_turn(self, priority: bool) -> None:
        """A part's turn at the TPS throttler: in line with the other parts waiting (`_turns`,
        a retry ahead when `priority`), then the throttler's own wait, read again after the
        line (the share may have been re-rated meanwhile). `_submit_on` and a one-part
        message's `OnePart._turn` both take it."""
        await self._turns.take(priority)
        try:
            throttler = self._throttler
            if throttler is not None:
                await throttler.acquire()
        finally:
            self._turns.give()

    def _tps_now(self) -> bool:
        """`_tps_turn` when it would not wait, without its coroutines: nobody holds the turn
        (so nobody waits for it) and the throttler has room now, which this takes. False,
        nothing taken: the turn is awaited (`_tps_turn`). Only with a throttler. Nor while a
        part's `_turn` task has not taken its place in the turn's line yet (`_turns_due`): it
        came first (its slot granted first), and a task steps a loop round after it is made."""
        if self._turns.held or self._turns_due:
            return False
        throttler = self._throttler
        if throttler is None:  # dropped by a reload while the caller looked
            return True
        return throttler.take_now()

    async def _submit_on(
        self,
        b: _Bind,
        part: ShortMessage | bytes,
        priority: bool,
        before: Callable[[], Awaitable[None]] | None = None,
        deadline: float | None = None,
        context: Any = None,
        wire: list[asyncio.Future[SubmitResult]] | None = None,
    ) -> SubmitResult | None:
        """One attempt on bind ``b``: a window slot (priority first, not while paused), the TPS
        limit, then submit_sm. None when the bind went down or closed before the PDU was sent;
        _Expired when `deadline` passed while it waited (nothing sent). Cancelled while the
        answer is awaited, it puts in `wire` a future for that answer."""
        line = self._acquire(b, priority)
        if line is not None:
            if line.done():  # granted (or refused) at once: no await
                granted = line.result()
            else:
                try:
                    granted = await line
                except asyncio.CancelledError:
                    self._left_line(b, priority, line)
                    raise
            if not granted:
                return None
        fut = None
        try:
            if self._throttler is not None:
                await self._tps_turn(priority)
            if deadline is not None and self._now() >= deadline:
                raise _Expired
            if before is not None:
                await before()  # holding the slot: nothing else takes it meanwhile
            proto = b.proto
            if proto is not None and proto.is_bound and not self._closing:
                # try/except, not contextlib.suppress: one per part sent, and suppress is an
                # object and two Python calls each time; a try costs nothing until it raises.
                try:
                    fut = proto.submit(part, context)
                except (WindowFull, NotBound):
                    pass
        finally:
            b.reserved -= 1
            if fut is None:
                self._pump(b)  # hand the unused slot on
        if fut is None:
            return None
        try:
            return await fut
        except asyncio.CancelledError:
            if wire is not None and proto is not None:
                # Answered before this task resumed: `fut` holds it; else it comes later.
                wire.append(fut if not fut.cancelled() else proto.answer_after_cancel(fut))
            raise

    def _slot_now(self, b: _Bind) -> bool:
        """Whether a part may take a window slot of `b` at once: the bind up, nobody waiting
        before it, a slot neither in flight nor granted, no throttle pause."""
        return (
            b.up
            and not self._closing
            and not b.hi
            and not b.lo
            and b.capacity() > 0
            # Never paused (0.0: the loop's clock is past it) needs no clock read, a call or two.
            and (not b.paused_until or self._now() >= b.paused_until)
        )

    def _acquire(self, b: _Bind, priority: bool) -> asyncio.Future[bool] | None:
        """A window slot of `b`: None when taken at once, else a future in the line for one,
        True once granted, False when the bind is gone. A plain call, not a coroutine awaiting
        that future (until session 56): `_submit_on` awaits it itself, one frame fewer between
        the task and the future a waiting part suspends on (`_left_line` on a cancel)."""
        if self._slot_now(b):
            b.reserved += 1
            return None
        fut: asyncio.Future[bool] = running(self._loop).create_future()
        (b.hi if priority else b.lo).append(fut)
        self._pump(b)
        return fut

    def _left_line(self, b: _Bind, priority: bool, fut: asyncio.Future[bool]) -> None:
        """The waiter of `fut` was cancelled: a slot granted to it is handed on, else it leaves
        the line."""
        if fut.done() and not fut.cancelled() and fut.result():
            b.reserved -= 1
            self._pump(b)
        else:
            with contextlib.suppress(ValueError):
                (b.hi if priority else b.lo).remove(fut)

    def _pump(self, b: _Bind) -> None:
        """Grant free slots to waiters, priority first; fail them all when the bind is gone.

        Not re-entered: a waiter granted here may hand its slot straight back by a plain call
        (a `OnePart` past its validity, `_slot`'s `finally`), which pumped again from inside
        this one, a level deeper for each such waiter: a line of 600 expired one-part messages
        raised RecursionError and requeued 266 of them as faults (session 58's review). A pump
        asked for meanwhile runs again here, after the grant that asked for it."""
        if not b.hi and not b.lo:  # nobody waiting: nothing to grant or fail (per slot freed)
            return
        if b.pumping:
            b.repump = True
            return
        b.pumping = True
        try:
            # One pass (`_pump_once` until session 61: a call a pump, ~2 a 3-part message),
            # then again while one was asked for meanwhile and somebody still waits.
            while True:
                # `b.up` and `b.capacity()` inline (a call each, the latter per waiter granted:
                # one a part sent from the line, session 60); `b.proto` read again after each
                # grant, as `capacity()` read it.
                proto = b.proto
                if proto is None or not proto.is_bound or self._closing:
                    for q in (b.hi, b.lo):
                        while q:
                            fut = q.popleft()
                            if not fut.done():
                                fut.set_result(False)
                elif b.paused_until and self._paused(b):
                    pass  # never paused (0.0): no clock read, once per slot freed
                else:
                    while b.hi or b.lo:
                        proto = b.proto
                        if proto is None or proto.session.free_slots - b.reserved <= 0:
                            break
                        fut = (b.hi or b.lo).popleft()
                        if not isinstance(fut, OnePart):
                            if not fut.done():
                                b.reserved += 1
                                fut.set_result(True)
                        elif fut._state == _IN_LINE and self._throttler is None:
                            # `set_result(True)`'s step for a part waiting in the line with no
                            # TPS turn to take (`_slot` in its `ctx`), inline: a Python call a
                            # part granted from the line, ~1 a part sent under load (session
                            # 62). A OnePart's `done()` read as its state (session 61).
                            b.reserved += 1
                            fut._state = _IDLE
                            try:
                                fut.ctx.run(fut._slot)
                            except RuntimeError as exc:  # its context entered already (as
                                if "cannot enter context" not in str(exc):  # set_result's)
                                    raise
                                fut._slot()
                        elif fut._state != _IDLE:
                            b.reserved += 1
                            fut.set_result(True)
                if not b.repump:
                    break
                b.repump = False
                if not b.hi and not b.lo:
                    break
        finally:
            b.pumping = False
            b.repump = False

    def _paused(self, b: _Bind) -> bool:
        """The pump's look at a bind paused after a throttle (`paused_until` set): True while
        the pause lasts, its timer armed for its end if somebody waits."""
        loop = self._loop = running(self._loop)
        if loop.time() < b.paused_until:
            if b.timer is None and (b.hi or b.lo):
                b.timer = loop.call_at(b.paused_until, self._pause_over, b)
            return True
        return False

    def _slot_freed(self, b: _Bind) -> None:
        """A submit of `b` answered (`SmppProtocol.on_slot_freed`, a `partial` of this: one a
        part sent). `_pump`'s own first look inline: nobody waiting, no call. Nor when the
        pump would find what it does nothing with: the bind up, not paused, no pump under way
        and no slot left to grant, the freed one taken already by the next part its answer
        started (`OnePart.accepted`: two parts of three under load, session 60)."""
        if b.hi or b.lo:
            proto = b.proto
            if (
                proto is None
                or b.paused_until
                or b.pumping
                or self._closing
                or proto.session.free_slots > b.reserved
                or not proto.is_bound
            ):
                self._pump(b)
        if self._idle is not None:
            self._check_idle()

    def _check_idle(self) -> None:
        if (
            self._idle is not None
            and not self._active
            and not any(b.in_flight for b in self._binds)
        ):
            self._idle.set()

    def _pause_over(self, b: _Bind) -> None:
        b.timer = None
        self._pump(b)

    def _throttle(self, b: _Bind, sent_at: float, name: str) -> None:
        self._throttle_events += 1
        b.throttle_rate += THROTTLE_RATE_WEIGHT * (1.0 - b.throttle_rate)
        if sent_at < b.pause_started:
            return  # sent before the current pause began: already accounted for
        cfg = self.cfg
        if b.pause is None and b.throttle_rate <= cfg.throttle_tolerance:
            return  # sporadic: resent at once, first in line
        now = asyncio.get_running_loop().time()
        self._throttle_pauses += 1
        b.pause = (
            cfg.throttle_pause_min_s
            if b.pause is None
            else min(b.pause * 2, cfg.throttle_pause_max_s)
        )
        b.pause_started = now
        b.paused_until = now + b.pause
        log.info(
            "smpp bind throttled; pausing",
            extra={"smsc": self.name, "bind": b.index, "status": name, "pause_s": b.pause},
        )

    def _best_bind(self) -> _Bind | None:
        if self._closing:
            return None
        tx = self._tx
        if len(tx) == 1:  # one transmitting bind (the usual configuration): no list, no turn
            b = tx[0]
            proto = b.proto  # `b.up` inline: a call a message (session 60)
            return b if proto is not None and proto.is_bound else None
        up = [b for b in tx if b.up]
        if not up:
            return None
        k = len(up)
        if k == 1:
            return up[0]
        now = self._now()
        self._rr += 1
        # The first best in round-robin order from `_rr` (max over the rotated list, without
        # the list, the lambda and a tuple per bind: this runs per message).
        start = self._rr % k
        best = up[start]
        best_ready, best_free = now >= best.paused_until, best.capacity() - best.waiting()
        for i in range(1, k):
            b = up[(start + i) % k]
            ready, free = now >= b.paused_until, b.capacity() - b.waiting()
            if (ready, free) > (best_ready, best_free):
                best, best_ready, best_free = b, ready, free
        return best

    async def _pick_bind(self) -> _Bind | None:
        b = self._best_bind()
        if b is None and not self._closing and await self.wait_up(NO_BIND_WAIT_S):
            b = self._best_bind()
        return b

    # --- binds --------------------------------------------------------------------------------
    async def _keep_bind(self, b: _Bind) -> None:
        delay = self.cfg.reconnect_min_s
        assert self._stop_event is not None
        while not self._stopping:
            # Read each round: a reload changes the back-off in place (the keys that change
            # the bind itself reconnect through a new connector).
            cfg = self.cfg
            if self.bind_gate is not None and not await self.bind_gate.acquire(b.index):
                await wait_event(self._stop_event, SLOT_POLL_S)
                continue
            proto: SmppProtocol | None = None
            wait: float | None = None
            try:
                session = BindSession(
                    Bind(
                        cfg.system_id,
                        cfg.password or "",
                        cfg.system_type,
                        cfg.interface_version,
                        addr_ton=cfg.bind_ton,
                        addr_npi=cfg.bind_npi,
                        address_range=cfg.address_range,
                    ),
                    b.mode,
                    window=cfg.window,
                    response_timeout_s=cfg.response_timeout_s,
                    enquire_link_s=cfg.enquire_link_s,
                )
                proto = await open_bind(
                    cfg.host,
                    _port(cfg, b.mode),
                    session,
                    self._deliver,
                    ssl_context=self._ssl,
                    connect_timeout=cfg.response_timeout_s,
                    name=self.name,
                    # The handler itself, its SMSC's name given (a C call): the bind counts
                    # the receipts it hands over in `_receipts_read` (session 62; `_receipt`, a
                    # Python call a receipt, counted them in `_delivers` before).
                    on_receipt=(
                        partial(self._on_receipt, self.name)
                        if self._on_receipt is not None
                        else None
                    ),
                    receipt_tally=self._receipts_read,
                )
                peer = await proto.wait_bound()
            except BindRefusedError as e:
                if e.status in CREDENTIAL_STATUSES:
                    # ESME_RBINDFAIL is the generic refusal: many carriers send it for a bind
                    # over their count too, and an operator checking only the password lost time.
                    log.error(
                        "smpp bind refused for credentials; retrying at the back-off cap"
                        if e.status != C.ESME_RBINDFAIL
                        else "smpp bind refused (ESME_RBINDFAIL: credentials, or more binds than "
                        "the carrier allows this system_id); retrying at the back-off cap",
                        extra={"smsc": self.name, "bind": b.index, "status": e.code,
                               "system_id": cfg.system_id},
                    )  # fmt: skip
                    wait = cfg.reconnect_max_s
                else:
                    log.warning("smpp bind refused", extra={"smsc": self.name, "status": e.code})
                self._error(e.message)
            except (OSError, ConnectionError, TimeoutError, BindTimeoutError) as e:
                log.warning(
                    "smpp connect failed",
                    extra={"smsc": self.name, "bind": b.index, "error": repr(e)},
                )
                self._error(f"connect: {e!r}")
            else:
                up_at = asyncio.get_running_loop().time()
                self._bind_up(b, proto)
                log.info(
                    "smpp bound",
                    extra={"smsc": self.name, "bind": b.index, "mode": str(b.mode), "peer": peer},
                )
                reason, handed_over = await self._hold(b, proto)
                self._bind_down(b)
                # The back-off starts over only after a bind that lasted: one the SMSC drops
                # right after bind_resp was retried at reconnect_min_s for ever (a bind a
                # second per slot against a carrier turning us away).
                if asyncio.get_running_loop().time() - up_at >= min(
                    STABLE_BIND_S, self.cfg.reconnect_max_s
                ):
                    delay = self.cfg.reconnect_min_s
                if self._stopping:
                    return
                if handed_over:
                    # Planned: a hand-over to another instance, or the database connection
                    # lost (see _give_up). A WARNING, a reconnect and a last error made it look
                    # like a carrier fault.
                    log.info(
                        "smpp bind closed, its slot no longer held by this instance",
                        extra={"smsc": self.name, "bind": b.index},
                    )
                else:
                    self._reconnects += 1
                    self._error(f"bind {b.index} lost: {reason}")
                    log.warning(
                        "smpp bind lost; reconnecting",
                        extra={"smsc": self.name, "bind": b.index, "reason": reason},
                    )
            finally:
                if proto is not None and b.proto is not proto and not proto.closed.done():
                    proto.abort("bind failed")
            if self._stopping:
                return
            cfg = self.cfg  # a reload while the bind was up applies to this wait already
            delay = min(max(delay, cfg.reconnect_min_s), cfg.reconnect_max_s)
            base = wait if wait is not None else delay
            delay = min(delay * 2, cfg.reconnect_max_s)
            sleep_s = max(cfg.reconnect_min_s * 0.5, base * random.uniform(0.75, 1.0))
            await wait_event(self._stop_event, sleep_s)

    async def _hold(self, b: _Bind, proto: SmppProtocol) -> tuple[str, bool]:
        """Wait until the bind closes: why, and whether this side gave it up. With a gate, give
        the bind up as soon as its slot is no longer ours (another instance may open it)."""
        gate = self.bind_gate
        handed_over = False
        while gate is not None and not proto.closed.done():
            await asyncio.wait([proto.closed], timeout=SLOT_CHECK_S)
            if not proto.closed.done() and not gate.keep(b.index) and not self._stopping:
                await self._give_up(b, proto)
                handed_over = True
        return await asyncio.shield(proto.closed), handed_over

    async def _give_up(self, b: _Bind, proto: SmppProtocol) -> None:
        """No new submits on the bind, a short wait for those in flight, then unbind: about 4 s
        at most, so the slot is free well before another instance may take it. Why the slot is
        no longer ours is bridge.coord's line before this one: handed over, or the database
        connection lost (a server restart). "Taken by another instance", as this said, read as
        two binds on one slot during every database restart."""
        log.info(
            "smpp bind slot no longer held by this instance (see the coord line before); unbinding",
            extra={"smsc": self.name, "bind": b.index},
        )
        await self._quiesce(b, proto, min(2.0, self.cfg.response_timeout_s))
        await proto.drain_delivers(timeout_s=min(1.0, self.cfg.unbind_timeout_s))
        await proto.unbind(timeout_s=min(1.0, self.cfg.unbind_timeout_s))

    async def _quiesce(self, b: _Bind, proto: SmppProtocol, wait_s: float) -> None:
        """No new submits on the bind; wait up to `wait_s` for the answers of those in flight."""
        loop = asyncio.get_running_loop()
        b.paused_until = loop.time() + 3600  # waiters move to another bind when this one closes
        deadline = loop.time() + wait_s
        while b.in_flight and not proto.closed.done() and loop.time() < deadline:
            await asyncio.wait([proto.closed], timeout=0.02)

    def _retire(self, b: _Bind, proto: SmppProtocol, reason: str) -> None:
        """Close a bind the SMSC refuses, once the answers of its other submits in flight are
        read (up to response_timeout_s). Aborted at the first refusal, those answers (refusals
        too: nothing accepted) were never read, and their parts came back CONNECTION_LOST, as if
        the SMSC might have them: held and counted unanswered, or ended `unknown`."""
        if b.retiring is proto:
            return
        b.retiring = proto

        async def retire() -> None:
            await self._quiesce(b, proto, self.cfg.response_timeout_s)
            proto.abort(reason)

        task = asyncio.get_running_loop().create_task(retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _bind_up(self, b: _Bind, proto: SmppProtocol) -> None:
        b.proto = proto
        b.pause = None
        b.pause_started = -1.0
        b.paused_until = 0.0
        proto.on_slot_freed = partial(self._slot_freed, b)  # a lambda's frame less a part
        proto.on_late_submit = lambda status, mid, context: self._late_submit(
            status, mid, context, b
        )
        if b.mode.can_transmit:
            self._share_tps()
            if self._up_event is not None:
                self._up_event.set()
        self._pump(b)
        if self.on_bind_change is not None:
            self.on_bind_change()

    def _bind_down(self, b: _Bind) -> None:
        b.proto = None
        if b.timer is not None:
            b.timer.cancel()
            b.timer = None
        if b.mode.can_transmit:
            self._share_tps()
        self._pump(b)
        if not self.is_up and self._up_event is not None:
            self._up_event.clear()
        if self.on_bind_change is not None:
            self.on_bind_change()

    def _late_submit(self, status: int, message_id: str, context: Any, b: _Bind) -> None:
        """Only an acceptance with an id is of use: the part reached the handset and its receipt
        can be matched. A late error changes nothing (the part is resent or already failed).
        Either is an answer, though: a congested SMSC answering every submit just past the
        time-out had its bind recycled as dead, and the late acceptances still due on it (their
        parts then sent twice) lost with it."""
        b.unanswered = 0
        if status != C.ESME_ROK or not message_id:
            log.debug(
                "late submit_sm_resp dropped",
                extra={"smsc": self.name, "status": C.status_name(status)},
            )
            return
        # Counted as the acceptance it is (beside the TIMEOUT counted when it was due): without
        # it a carrier answering just past the time-out looked as if it accepted nothing.
        self._ok += 1
        if self.on_submit is not None:
            self.on_submit(self.name, "ok", C.status_name(status), None)
        if self.on_late_submit is not None:
            self.on_late_submit(LateSubmit(self.name, context, status, message_id))

    def _deliver(self, body: ShortMessage, salvaged: bool) -> Awaitable[int]:
        # Not a coroutine: what the handler returns (a DeliverAnswer for receipts) goes to the
        # bind as it is, without a task per deliver_sm.
        self._delivers += 1
        return self._on_deliver(self.name, body)

    # --- stats --------------------------------------------------------------------------------
    def _tick(self, n: int) -> None:
        self._per_second.add(int(time.monotonic()), n)

    def _error(self, message: str) -> None:
        self._last_error = {"message": message, "at": time.time()}
