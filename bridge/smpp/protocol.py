"""The asyncio layer around one BindSession: moves bytes, runs one timer, resolves futures.

All protocol decisions live in the sans-IO ``BindSession``; this module only
- feeds received bytes in and writes ``data_to_send()`` out (submits made in the same loop
  iteration are coalesced into one ``write``),
- keeps one timer armed at ``next_deadline()`` (lazily: it is re-armed only when the deadline moves
  earlier, so a busy window costs no timer churn; an early wake-up is harmless),
- turns submit responses, timeouts and connection loss into per-request futures, and a late
  submit_sm_resp (after its request's timeout) into a call of ``on_late_submit``,
- runs the deliver handler for each deliver_sm (or data_sm, handed over as a deliver_sm body) and
  answers its resp (deliver_sm_resp or data_sm_resp) with the status the handler returns, only
  after it returns (a crash before that leaves the SMSC to redeliver).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

from bridge.fastinit import fast_init, maker
from bridge.smpp import constants as C
from bridge.smpp.codec import ShortMessage
from bridge.smpp.session import (
    BindRefused,
    BindSession,
    Bound,
    Closed,
    DeliverReceived,
    EnquireLinkMissed,
    Event,
    LateSubmitResponse,
    NotBound,
    PeerUnbound,
    ProtocolError,
    ReceiptReceived,
    RequestAborted,
    RequestTimedOut,
    SessionState,
    SubmitResponse,
)

__all__ = [
    "NO_STATUS",
    "BindRefusedError",
    "BindTimeoutError",
    "DeliverAnswer",
    "DeliverCallback",
    "LateSubmitCallback",
    "ReceiptCallback",
    "SmppProtocol",
    "SubmitResult",
    "make_ssl_context",
    "open_bind",
]

log = logging.getLogger("bridge.smpp")

NO_STATUS: Final = -1
"""``SubmitResult.status`` when the SMSC gave no answer (timeout, connection lost)."""
# Read once: `is_bound` runs several times per part sent (the connector's `up`), and a member read
# off its enum class costs ~900 instructions on Python 3.11 (session.py's _BOUND).
_BOUND: Final = SessionState.BOUND

DeliverCallback = Callable[[ShortMessage, bool], Awaitable[int]]
"""(deliver_sm body, salvaged) -> command_status for the deliver_sm_resp (data_sm_resp when the
SMSC sent a data_sm: its body arrives converted, see ``DeliverReceived``)."""

ReceiptCallback = Callable[[ReceiptReceived], Awaitable[int]]
"""A deliver_sm marked a receipt, read without its ShortMessage (``ReceiptReceived``) ->
command_status for its deliver_sm_resp, as a DeliverCallback's (a `DeliverAnswer`, usually)."""

LateSubmitCallback = Callable[[int, str, Any], None]
"""(command_status, message_id, the context given to ``submit``) of a submit_sm_resp that came
after its request was resolved "TIMEOUT"."""


@fast_init
@dataclass(frozen=True, slots=True)
class SubmitResult:
    status: int  # command_status, or NO_STATUS
    message_id: str
    error: str | None  # None when the SMSC answered; "TIMEOUT" or "CONNECTION_LOST" otherwise
    rtt_s: float


# Built once a part sent (its answer): fastinit.maker's function, the same frozen instance
# without the class call's way back into the interpreter (~1.5 k instructions, session 58).
_submit_result = maker(SubmitResult)


# The two events a deliver_sm comes as (a tuple: isinstance reads it without a union's call).
_DELIVERS: Final = (ReceiptReceived, DeliverReceived)


class DeliverAnswer:
    """A deliver handler's answer (the deliver_sm_resp's command_status), set once by a plain
    call: what the receipt path returns instead of a future (`Inbound.on_deliver`, one a part
    sent). The bind that ran the handler is attached to it (`SmppProtocol._start_deliver`) and
    queues the deliver_sm_resp inside `set_result`, where a future's done-callback ran a loop
    round after the batch's commit, with the future, a `partial` and `_deliver_done`'s checks
    (session 58, README note 27). Awaitable, with a future's `done()` and `result()`, for a
    caller outside a bind (a test): the future it then waits on is made only for it."""

    # No `__init__` (session 61): an answer starts from these class values, each set on the
    # instance when it changes, so `DeliverAnswer()` is the type's own C call, where a slotted
    # class ran its Python `__init__` (~1 k instructions a receipt, one a part sent).
    _status: int | None = None
    _proto: SmppProtocol | None = None
    _ev: DeliverReceived | ReceiptReceived | None = None
    _fut: asyncio.Future[int] | None = None
    _drain: int  # the bind's drain_delivers calls at the attach: set only then (read only then)

    def done(self) -> bool:
        return self._status is not None

    def cancelled(self) -> bool:
        return False  # never: only `set_result` ends it

    def result(self) -> int:
        if self._status is None:
            raise asyncio.InvalidStateError("the deliver_sm's answer is not set yet")
        return self._status

    def set_result(self, status: int) -> None:
        """The answer: written at once (queued, the bind's flush at the end of this loop round)
        by the bind the handler ran on, if any."""
        if self._status is not None:
            raise asyncio.InvalidStateError("the deliver_sm's answer is set already")
        self.settle(status)

    def settle(self, status: int) -> None:
        """`set_result` unless the answer is set already (then nothing): the receipt's call from
        its batch's flush (`Inbound._receipts_committed`, or `_receipts_failed` for a batch that
        failed; one a part sent), where `done()` and `set_result` were two Python calls (session
        59)."""
        if self._status is not None:
            return
        self._status = status
        proto = self._proto
        if proto is not None:
            self._proto = None
            # The bind's part (`SmppProtocol._answered` until session 62, called only from here:
            # a Python call a receipt): the deliver_sm_resp queued, as `_deliver_done` queues a
            # future's. Never raises into the setter: the batch's other receipts are answered
            # after it.
            try:
                proto._answers -= 1
                ev = self._ev
                self._ev = None
                if ev is not None:
                    # _ack inline (one a receipt: a call less, session 59).
                    proto.session.ack_deliver(ev.seq, status, ev.command_id)
                    if not proto._flush_scheduled:
                        proto._flush_scheduled = True
                        proto._loop.call_soon(proto._flush)
                if proto._reading_paused:
                    proto._resume_if_drained()
                if self._drain < proto._drains:  # attached before the latest drain_delivers
                    proto._before_drain -= 1
                    if not proto._before_drain and proto._drained is not None:
                        if not proto._drained.done():
                            proto._drained.set_result(None)
                        proto._drained = None
            except Exception:
                log.exception("deliver_sm answer failed", extra={"smsc": proto.name})
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(status)

    def __await__(self) -> Generator[Any, None, int]:
        if self._status is None:
            # A new future when the last one was cancelled with its waiter (a time-out): the
            # answer itself is not, and awaiting it again waits for it.
            if self._fut is None or self._fut.done():
                self._fut = asyncio.get_running_loop().create_future()
            return (yield from self._fut.__await__())
        return self._status


class BindRefusedError(Exception):
    """The SMSC answered our bind with an error status."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.code = C.status_name(status)
        self.message = f"bind refused: {self.code}"
        super().__init__(self.message)


class BindTimeoutError(Exception):
    code: Final = "BIND_TIMEOUT"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def make_ssl_context(verify: bool = True, ca_file: str | Path | None = None) -> ssl.SSLContext:
    """Client TLS context: verification on by default (system CAs, or ``ca_file``).

    Without OpenSSL's X.509 strict mode on every Python: from 3.13 `create_default_context`
    turns it on, and it refuses chains whose certificates lack extensions RFC 5280 asks for
    (an Authority Key Identifier, say), which private carrier CAs often omit. An SMSC whose
    certificate verified on 3.11 and 3.12 would have stopped binding after a Python upgrade.
    The chain, its signatures, its dates and the host name are checked as before."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class SmppProtocol(asyncio.Protocol):
    """One bind over one connection. Create through ``open_bind``."""

    def __init__(
        self,
        session: BindSession,
        on_deliver: DeliverCallback | None,
        *,
        name: str = "",
        max_pending_delivers: int = 256,
        on_receipt: ReceiptCallback | None = None,
        receipt_tally: list[int] | None = None,
    ) -> None:
        self.session = session
        self.name = name
        self._on_deliver = on_deliver
        # A deliver_sm marked a receipt goes to `on_receipt`, read without its ShortMessage
        # (session.ReceiptReceived), when there is one; to `on_deliver` otherwise.
        self._on_receipt = on_receipt
        # The receipts handed to `on_receipt`, counted in `receipt_tally[0]` too: the caller's
        # count over all its binds (the connector's `delivers`), where its handler between the
        # bind and `on_receipt` counted each (a Python call a receipt, session 62).
        self._tally = receipt_tally if receipt_tally is not None else [0]
        session.read_receipts = on_receipt is not None
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._flush_scheduled = False
        self._deliver_tasks: set[asyncio.Future[int]] = set()
        # DeliverAnswers attached and not set yet (counted with _deliver_tasks); drain_delivers'
        # calls so far (an answer keeps the count at its attach: `_drain`), those of the
        # answers attached before the latest call not set yet, and the future drain_delivers
        # waits on for them (made only then).
        self._answers = 0
        self._drains = 0
        self._before_drain = 0
        self._drained: asyncio.Future[None] | None = None
        # A submit whose waiter was cancelled -> its answer, or the future awaiting it
        # (answer_after_cancel).
        self._after_cancel: dict[
            asyncio.Future[SubmitResult], asyncio.Future[SubmitResult] | SubmitResult
        ] = {}
        self._max_pending_delivers = max_pending_delivers
        self._reading_paused = False
        self._paused_at = 0.0
        self.bound: asyncio.Future[str] = self._loop.create_future()
        self.closed: asyncio.Future[str] = self._loop.create_future()
        self.close_reason = ""
        self.on_slot_freed: Callable[[], None] | None = None
        """Called (synchronously) each time a submit leaves the window: the connector wakes a
        waiter for a slot."""
        self.on_submit_result: Callable[[SubmitResult], None] | None = None
        self.on_late_submit: LateSubmitCallback | None = None
        """Called (synchronously) for each late submit_sm_resp (see ``LateSubmitResponse``)."""
        self.delivers = 0

    # --- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio sets it too on plain TCP; say it explicitly (smpplib never did: 364 msg/s).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.session.start(self._loop.time())
        except Exception as exc:  # a bind PDU that cannot be encoded (an over-long field)
            # Raised here, inside asyncio's callback, it was only logged and the bind hung
            # forever: fail it, so the connector reports the error and backs off.
            if not self.bound.done():
                self.bound.set_exception(ConnectionError(f"bind not sent: {exc}"))
            self.abort(f"bind not sent: {exc}")
            return
        self._flush()
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        session = self.session
        self._handle(session.receive_data(data, self._loop.time()))
        if not self._flush_scheduled:  # _schedule_flush inline: a call a read
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        # _arm_timer's look inline (a call a read, two or more a part sent, session 60): it
        # re-arms only for a deadline earlier than the armed timer's, which a read seldom
        # brings (answers move the deadlines later).
        deadline = session.next_deadline()
        if deadline is not None and (self._timer is None or self._timer_at > deadline):
            self._arm_timer()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        reason = f"connection lost: {exc}" if exc else "connection closed"
        self._handle(self.session.connection_lost(reason))
        if not self.bound.done():
            self.bound.set_exception(ConnectionError(self.close_reason or reason))
            self.bound.exception()  # retrieved: nobody may be waiting
        if not self.closed.done():
            self.closed.set_result(self.close_reason or reason)
        self._transport = None

    # --- public -------------------------------------------------------------------------------
    @property
    def is_bound(self) -> bool:
        """False from the moment the connection is closing: after abort(), asyncio reports the
        loss one loop iteration later, and a part submitted in between was queued on a
        transport that writes nothing, then came back CONNECTION_LOST ("may have reached the
        SMSC") although it never left."""
        t = self._transport
        return self.session.state is _BOUND and t is not None and not t.is_closing()

    @property
    def pending_delivers(self) -> int:
        return len(self._deliver_tasks) + self._answers

    async def wait_bound(self) -> str:
        """The SMSC's system_id once bound; else BindRefusedError, BindTimeoutError or
        ConnectionError."""
        return await asyncio.shield(self.bound)

    def submit(
        self, body: ShortMessage | bytes, context: Any = None
    ) -> asyncio.Future[SubmitResult]:
        """Queue a submit_sm now (raises WindowFull / NotBound synchronously) and return a future
        for its result. The future never raises: no answer is a result with an ``error``.
        ``context`` comes back with a late answer (``on_late_submit``): the future is long
        resolved by then."""
        fut: asyncio.Future[SubmitResult] = self._loop.create_future()
        self._queue(body, fut, context, False)
        return fut

    def submit_to(self, body: ShortMessage | bytes, waiter: Any, context: Any = None) -> None:
        """`submit` with the caller's own waiter for the result instead of a future made here:
        an object with a future's `done()`, `cancelled()` and `set_result(result)`, called by
        the read (or the timer, or the connection's end) that resolves it, at once, where a
        future's done-callback ran a loop round later (Connector.send_one, session 57)."""
        self._queue(body, waiter, context, False)

    def _queue(
        self, body: ShortMessage | bytes, waiter: Any, context: Any = None, told: bool = True
    ) -> None:
        """The three ways in (`submit`, `submit_to`, `submit_told`, which is this function
        itself): the request queued on the session with its waiter, the send of the octets and
        the response timer seen to. One body for the three (they were three copies until
        session 60's review).

        `submit_told` (`told` True, its default): `submit_to` for a waiter told a plain
        acceptance by its fields: the read of an ESME_ROK submit_sm_resp calls
        `waiter.accepted(message_id, rtt_s)` in the waiter's `ctx` (a `contextvars.Context`:
        `waiter.ctx.run`, session 61), without the `SubmitResult` built, the `done()` asked and
        the `set_result` that would take it apart again (`OnePart`: one a part sent, session
        60). Any other answer, a time-out or the connection's end reaches it as `submit_to`'s
        does (`done()`, `set_result`). The fourth entry of the request's context says so
        (`_handle`). Not a method calling this one (until session 62: a Python call a part
        sent, ~0.6 k instructions)."""
        if self._transport is None or self._transport.is_closing():
            raise NotBound("submit: the connection is closing")
        loop = self._loop
        now = loop.time()
        session = self.session
        session.submit(
            body,
            now,
            (waiter, time.perf_counter(), context, True)
            if told
            else (waiter, time.perf_counter(), context),
        )
        if not self._flush_scheduled:  # _schedule_flush inline: a call a part
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        # This request's deadline (now + the response time-out) is the latest of all: a timer
        # already armed no later than it stays as it is, which _arm_timer would find after
        # asking the session for its next deadline (a call and its reads, a part: session 57).
        # The first request after an idle spell can come before the keep-alive's deadline the
        # timer waits for: that one re-arms it.
        if self._timer is None or self._timer_at > now + session.response_timeout_s:
            self._arm_timer()

    submit_told = _queue

    def answer_after_cancel(
        self, fut: asyncio.Future[SubmitResult]
    ) -> asyncio.Future[SubmitResult]:
        """The answer to the submit `fut` was returned for, after its waiter was cancelled (and
        `fut` with it). A cancelled wait does not take the PDU back: it is on the wire, and its
        answer still says whether the SMSC took it. Resolved like `fut` would have been: by the
        answer, the response time-out or the connection's end. Awaiting `fut` directly, not a
        shield of it, keeps the extra loop hop a shield costs off every part (~5 µs measured)."""
        out: asyncio.Future[SubmitResult] = self._loop.create_future()
        got = self._after_cancel.pop(fut, None)
        if isinstance(got, SubmitResult):
            out.set_result(got)
        else:
            self._after_cancel[fut] = out
        return out

    async def unbind(self, timeout_s: float) -> None:
        """Clean unbind, bounded by ``timeout_s``; the connection is closed in every case."""
        if self._transport is None:
            return
        self.session.unbind(self._loop.time())
        self._flush()
        self._arm_timer()
        if self.session.state is SessionState.CLOSED:
            self.close_reason = self.close_reason or "closed before bound"
            self._transport.close()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self.closed)
        except TimeoutError:
            self.abort("unbind timed out")
            await asyncio.shield(self.closed)

    def close(self, reason: str = "closed") -> None:
        self.close_reason = self.close_reason or reason
        if self._transport is not None:
            self._transport.close()

    def abort(self, reason: str) -> None:
        self.close_reason = self.close_reason or reason
        if self._transport is not None:
            self._transport.abort()
            # A TLS transport already closing (waiting for the peer's close_notify) has let go
            # of its protocol, and abort() no longer reaches the socket: shut the socket itself.
            sock = self._transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    async def drain_delivers(self, timeout_s: float) -> None:
        """Wait (bounded) for running deliver handlers, so their acks go out before an unbind.

        Those running now, not those that come meanwhile (reading goes on until the unbind):
        waiting until no receipt at all was unanswered, under a steady stream of them, waited
        the whole `timeout_s` at every stop (session 58 review)."""
        waits: set[asyncio.Future[Any]] = set(self._deliver_tasks)
        if self._answers:
            # DeliverAnswers not set yet: a future set once the last of those is
            # (`DeliverAnswer.settle`). A later call counts those of the earlier one still
            # unset again, and may add some: the earlier call waits for them too (bounded all
            # the same).
            self._drains += 1
            self._before_drain = self._answers
            if self._drained is None:
                self._drained = self._loop.create_future()
            waits.add(self._drained)
        if waits:
            await asyncio.wait(waits, timeout=timeout_s)

    # --- internals ----------------------------------------------------------------------------
    def _schedule_flush(self) -> None:
        """Write what is queued at the end of this loop iteration: every PDU queued meanwhile
        (submits, acks, responses) goes out in one write (one syscall)."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self.session.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _arm_timer(self) -> None:
        deadline = self.session.next_deadline()
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer_at <= deadline:
                return  # it will fire early (harmless) and re-arm
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._reading_paused:
            return  # no deadline runs while we do not read; re-armed on resume
        self._handle(self.session.on_timer(self._loop.time()))
        self._flush()
        self._arm_timer()

    def _handle(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, SubmitResponse):
                context = ev.context
                if len(context) == 4 and not ev.status and self.on_submit_result is None:
                    # A plain acceptance for `submit_told`'s waiter: told its fields, in its
                    # context (`waiter.ctx`; session 61: the waiter's own `ctx.run` was a call
                    # a part more).
                    waiter = context[0]
                    rtt_s = time.perf_counter() - context[1]
                    try:
                        try:
                            waiter.ctx.run(waiter.accepted, ev.message_id, rtt_s)
                        except RuntimeError as exc:  # its context entered already (not expected)
                            if "cannot enter context" not in str(exc):
                                raise
                            waiter.accepted(ev.message_id, rtt_s)
                    except Exception:  # the read's other events still handled (`_waiter_failed`)
                        self._waiter_failed()
                    if self.on_slot_freed is not None:
                        self.on_slot_freed()
                else:
                    self._resolve(context, ev.status, ev.message_id, None)
            elif type(ev) is ReceiptReceived:
                # `_start_deliver`'s steps for a receipt read without its ShortMessage (one a
                # part sent; only a session with `read_receipts`, set with `on_receipt`, makes
                # them), inline: a Python call a receipt less (session 62). What the handler
                # returns other than a `DeliverAnswer` to wait for goes to `_deliver_got`.
                self.delivers += 1
                self._tally[0] += 1
                try:
                    got = self._on_receipt(ev)  # type: ignore[misc]
                except Exception:
                    self._deliver_failed(ev)
                    continue
                if type(got) is DeliverAnswer and got._status is None:
                    # `_deliver_got`'s, for the usual answer.
                    got._proto = self
                    got._ev = ev
                    got._drain = self._drains
                    self._answers += 1
                    if len(self._deliver_tasks) + self._answers >= self._max_pending_delivers:
                        self._back_pressure()
                else:
                    self._deliver_got(ev, got)
            elif isinstance(ev, _DELIVERS):
                self._start_deliver(ev)
            elif isinstance(ev, LateSubmitResponse):
                self._late(ev)
            elif isinstance(ev, RequestTimedOut | RequestAborted):
                if ev.command_id == C.SUBMIT_SM:
                    err = "TIMEOUT" if isinstance(ev, RequestTimedOut) else "CONNECTION_LOST"
                    self._resolve(ev.context, NO_STATUS, "", err)
                elif ev.command_id in C.BIND_COMMANDS and not self.bound.done():
                    self.bound.set_exception(BindTimeoutError("bind_resp timed out"))
                    self.bound.exception()
            elif isinstance(ev, Bound):
                if not self.bound.done():
                    self.bound.set_result(ev.system_id)
            elif isinstance(ev, BindRefused):
                if not self.bound.done():
                    self.bound.set_exception(BindRefusedError(ev.status))
                    self.bound.exception()
            elif isinstance(ev, ProtocolError):
                log.log(
                    logging.ERROR if ev.fatal else logging.WARNING,
                    "smpp protocol error",
                    extra={"smsc": self.name, "error": ev.message},
                )
            elif isinstance(ev, EnquireLinkMissed):
                log.warning("enquire_link_resp missed; reconnecting", extra={"smsc": self.name})
            elif isinstance(ev, PeerUnbound):
                log.info("unbound by the SMSC", extra={"smsc": self.name})
            elif isinstance(ev, Closed):
                self.close_reason = self.close_reason or ev.reason
                if self._transport is not None:
                    self._flush()
                    self._transport.close()

    def _waiter_failed(self) -> None:
        """A submit's waiter raised as it was handed its answer (a fault in a message's
        `finished()`, say): logged, inside the `except`, and the read's other events handled.
        It went out of `data_received` (or `connection_lost`) until session 61's review (r4):
        the answers after it in that read were never handed over, and asyncio closed the
        connection on the error, so the parts those answers had accepted came back
        CONNECTION_LOST and were sent again."""
        log.exception("submit_sm answer handler failed", extra={"smsc": self.name})

    def _late(self, ev: LateSubmitResponse) -> None:
        if self.on_late_submit is None:
            return
        try:
            self.on_late_submit(ev.status, ev.message_id, ev.context[2])
        except Exception:  # the events after it in this read must still be handled
            log.exception("late submit_sm_resp handler failed", extra={"smsc": self.name})

    def _resolve(self, context: Any, status: int, message_id: str, error: str | None) -> None:
        fut = context[0]  # a future, or submit_to's (or submit_told's) waiter
        result = _submit_result(status, message_id, error, time.perf_counter() - context[1])
        if not fut.done():
            try:
                fut.set_result(result)
            except Exception:  # the read's other events still handled (`_waiter_failed`)
                self._waiter_failed()
        elif fut.cancelled():  # its waiter was cancelled: kept for answer_after_cancel
            waiting = self._after_cancel.pop(fut, None)
            if waiting is None:
                self._after_cancel[fut] = result
            elif isinstance(waiting, asyncio.Future) and not waiting.done():
                waiting.set_result(result)
        if self.on_submit_result is not None:
            self.on_submit_result(result)
        if self.on_slot_freed is not None:
            self.on_slot_freed()

    def _start_deliver(self, ev: DeliverReceived | ReceiptReceived) -> None:
        """Run the handler and answer once what it returns resolves (a receipt read without
        its ShortMessage, the usual deliver_sm, has these steps inline in `_handle`).

        A handler may return a `DeliverAnswer` (the receipt path does) or a future rather than
        a coroutine: no task per deliver_sm then. Receipts come one per segment, and a task
        with its chain of coroutine frames was ~14 µs of the owner's CPU for each, measured."""
        self.delivers += 1
        try:
            if type(ev) is ReceiptReceived:
                # Only a session with `read_receipts` (set with `on_receipt`) makes them.
                self._tally[0] += 1
                got = self._on_receipt(ev)  # type: ignore[misc]
            elif self._on_deliver is None:
                self._ack(ev, C.ESME_RX_T_APPN)
                return
            else:
                got = self._on_deliver(ev.body, ev.salvaged)  # type: ignore[union-attr]
        except Exception:
            self._deliver_failed(ev)
            return
        self._deliver_got(ev, got)

    def _deliver_failed(self, ev: DeliverReceived | ReceiptReceived) -> None:
        """The deliver handler raised (inside the `except`): the SMSC asked to redeliver."""
        log.exception("deliver handler failed; asking the SMSC to redeliver",
                      extra={"smsc": self.name})  # fmt: skip
        self._ack(ev, C.ESME_RX_T_APPN)

    def _deliver_got(
        self, ev: DeliverReceived | ReceiptReceived, got: Awaitable[int] | DeliverAnswer
    ) -> None:
        """What the deliver handler returned for `ev`: answered once it is set (a
        `DeliverAnswer`), or once it resolves (a future; a coroutine, an MO's, in a task)."""
        if type(got) is DeliverAnswer:
            # A receipt's answer (one per part sent): answered by a call once it is set,
            # no future, done-callback or loop round in between.
            status = got._status
            if status is not None:  # set already (an unparsable receipt, a refusal)
                self._ack(ev, status)
                return
            got._proto = self
            got._ev = ev
            got._drain = self._drains
            self._answers += 1
        else:
            try:
                # A future is taken as it is: ensure_future would check it in two Python
                # calls to hand it back unchanged. A coroutine (MO) gets its task there.
                pending = got if isinstance(got, asyncio.Future) else asyncio.ensure_future(got)
            except Exception:
                self._deliver_failed(ev)
                return
            self._deliver_tasks.add(pending)
            pending.add_done_callback(partial(self._deliver_done, ev))
        if len(self._deliver_tasks) + self._answers >= self._max_pending_delivers:
            self._back_pressure()

    def _back_pressure(self) -> None:
        """As many deliver handlers unanswered as `max_pending_delivers`: the SMSC waits for
        our deliver_sm_resp anyway; stop reading rather than pile up handlers without bound."""
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._paused_at = self._loop.time()
            self._transport.pause_reading()

    def _ack(self, ev: DeliverReceived | ReceiptReceived, status: int) -> None:
        self.session.ack_deliver(ev.seq, status, ev.command_id)
        # A batch of receipts commits together and its acks leave in one write, not one each
        # (_schedule_flush inline: one a receipt).
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _deliver_done(
        self, ev: DeliverReceived | ReceiptReceived, pending: asyncio.Future[int]
    ) -> None:
        self._deliver_tasks.discard(pending)
        status = C.ESME_RX_T_APPN
        if not pending.cancelled():
            exc = pending.exception()
            if exc is None:
                status = pending.result()
            else:
                log.error("deliver handler failed; asking the SMSC to redeliver",
                          exc_info=exc, extra={"smsc": self.name})  # fmt: skip
        self._ack(ev, status)
        self._resume_if_drained()

    def _resume_if_drained(self) -> None:
        if (
            self._reading_paused
            and len(self._deliver_tasks) + self._answers < self._max_pending_delivers // 2 + 1
            and self._transport is not None
        ):
            self._reading_paused = False
            self._transport.resume_reading()
            # Answers to our requests waited unread meanwhile: that time does not count.
            self.session.postpone(self._loop.time() - self._paused_at)
            self._arm_timer()


TLS_SHUTDOWN_S = 2.0  # how long closing a TLS link waits for the peer's close_notify


async def open_bind(
    host: str,
    port: int,
    session: BindSession,
    on_deliver: DeliverCallback | None,
    *,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float = 30.0,
    name: str = "",
    on_receipt: ReceiptCallback | None = None,
    receipt_tally: list[int] | None = None,
) -> SmppProtocol:
    """Connect and send the bind; await ``.wait_bound()`` on the result for the bind_resp.
    `receipt_tally`: see `SmppProtocol`."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(connect_timeout):
        _, proto = await loop.create_connection(
            lambda: SmppProtocol(
                session, on_deliver, name=name, on_receipt=on_receipt, receipt_tally=receipt_tally
            ),
            host,
            port,
            ssl=ssl_context,
            server_hostname=host if ssl_context is not None else None,
            # Closing a TLS link waits for the peer's close_notify: on a dead link 30 s by
            # default, with the slot neither up nor reconnecting.
            ssl_shutdown_timeout=TLS_SHUTDOWN_S if ssl_context is not None else None,
        )
    return proto
