"""One SMPP bind's protocol logic, sans-IO (in the manner of h11 and aioquic).

A plain object: bytes in (``receive_data``), events and bytes out (``data_to_send``), time passed
in. No asyncio, no sockets, no clock of its own, so every rule below (sequence numbers, the window,
timeouts, keep-alive, nacks, unbind) is tested without a network, and the asyncio layer around it
(``protocol.py``) only moves bytes and runs one timer.

Lifecycle: OPEN -> ``start`` -> BINDING -> bind_resp ok -> BOUND -> ``unbind`` -> UNBINDING ->
unbind_resp -> CLOSED. Any event after which the connection must end is followed by ``Closed``; the
caller then flushes ``data_to_send`` and closes the transport, and calls ``connection_lost`` when
the transport is gone so requests still outstanding are reported (``RequestAborted``).

Every request we send shares one timeout, so the outstanding-request dict (insertion ordered) is
also ordered by deadline: the earliest deadline is its first entry, which keeps ``next_deadline``
and ``on_timer`` O(1) per event however large the window is.

A submit_sm that timed out is not forgotten at once: a congested SMSC answers late, and its late
ESME_ROK means the handset gets the message (resending it makes a duplicate) and its receipt will
carry that id. So its context stays in a bounded "late" map for a grace period, and a
submit_sm_resp for it comes out as ``LateSubmitResponse`` rather than as a protocol error.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from struct import Struct
from struct import error as StructError
from typing import Any, Final, NamedTuple

from bridge.fastinit import fast_init, maker
from bridge.smpp import constants as C
from bridge.smpp.codec import (
    MAX_PDU,
    Bind,
    BindResp,
    DataSm,
    MessageIdResp,
    Pdu,
    PduError,
    ReceiptFields,
    ShortMessage,
    decode_fields,
    encode,
    encode_sm_request,
    read_receipt_at,
    salvage_data_sm,
    salvage_deliver_sm,
)
from bridge.smpp.framing import FrameError, Framer

__all__ = [
    "MAX_SEQ",
    "BindMode",
    "BindRefused",
    "BindSession",
    "Bound",
    "Closed",
    "DeliverReceived",
    "EnquireLinkMissed",
    "Event",
    "LateSubmitResponse",
    "NotBound",
    "PeerUnbound",
    "ProtocolError",
    "ReceiptReceived",
    "RequestAborted",
    "RequestTimedOut",
    "SessionState",
    "SubmitResponse",
    "WindowFull",
]

MAX_SEQ: Final = 0x7FFFFFFF
_HDR = Struct(">IIII")
# The longest body a PDU carries (codec's MAX_PDU less the header): a longer one goes to
# `encode`, which refuses it.
_BODY_MAX: Final = MAX_PDU - 16
# deliver_sm_resp / data_sm_resp as we send them: the header and an empty message_id (its NUL).
_ACK = Struct(">IIIIB")


class BindMode(StrEnum):
    TRANSCEIVER = "transceiver"
    TRANSMITTER = "transmitter"
    RECEIVER = "receiver"

    @property
    def can_transmit(self) -> bool:
        return self is not _RECEIVER  # per submit and per free_slots: the constant (below)

    @property
    def can_receive(self) -> bool:
        return self is not _TRANSMITTER

    @property
    def bind_command(self) -> int:
        return _BIND_CMD[self]


_BIND_CMD: Final = {
    BindMode.TRANSCEIVER: C.BIND_TRANSCEIVER,
    BindMode.TRANSMITTER: C.BIND_TRANSMITTER,
    BindMode.RECEIVER: C.BIND_RECEIVER,
}


class SessionState(StrEnum):
    OPEN = "open"
    BINDING = "binding"
    BOUND = "bound"
    UNBINDING = "unbinding"
    CLOSED = "closed"


# The members the per-PDU paths compare with (submit, its response, deliver_sm, the window's
# free slots, the timer), read once: on Python 3.11 a member read off its enum class
# (`SessionState.BOUND`) goes through the metaclass's __getattr__ hook, ~900 instructions more
# than a global's read, and a one-part message made ~20 such reads on the owner's send and
# receipt paths. The same objects (`_BOUND is SessionState.BOUND`); the cold paths (bind,
# unbind, close) read the class.
_BOUND: Final = SessionState.BOUND
_CLOSED: Final = SessionState.CLOSED
_UNBINDING: Final = SessionState.UNBINDING
_RECEIVER: Final = BindMode.RECEIVER
_TRANSMITTER: Final = BindMode.TRANSMITTER
_SUBMIT_SM: Final = C.SUBMIT_SM
_SUBMIT_SM_RESP: Final = C.SUBMIT_SM_RESP
_DELIVER_SM: Final = C.DELIVER_SM
# The longest submit_sm_resp `_read` reads itself: the header, a 64-octet id and its NUL.
_SUBMIT_RESP_MAX: Final = 16 + 65


# --- events -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Bound:
    system_id: str


@dataclass(frozen=True, slots=True)
class BindRefused:
    """bind_resp with an error status (or a generic_nack to our bind); always followed by Closed."""

    status: int


class SubmitResponse(NamedTuple):
    """The SMSC's answer to one of our submit_sm (a generic_nack for it arrives here too).

    A NamedTuple built by `tuple.__new__` (`_new_tuple`, a C call; one a part sent), not
    a frozen dataclass built by `fastinit.maker`'s Python function (~1.6 k instructions more,
    session 61, README note 27): read by field as before, immutable, with the same repr; an
    event, never compared with a plain tuple nor given to `dataclasses.replace`."""

    seq: int
    status: int
    message_id: str
    context: Any


@dataclass(frozen=True, slots=True)
class RequestTimedOut:
    seq: int
    command_id: int
    context: Any


@dataclass(frozen=True, slots=True)
class LateSubmitResponse:
    """A submit_sm_resp for a submit_sm already reported ``RequestTimedOut``, within the grace
    period: the SMSC did answer (``message_id`` is empty unless ``status`` is ESME_ROK). The
    window slot was freed at the timeout; this only tells what became of the request."""

    seq: int
    status: int
    message_id: str
    context: Any


@dataclass(frozen=True, slots=True)
class RequestAborted:
    """A request still outstanding when the connection went away (see ``connection_lost``)."""

    seq: int
    command_id: int
    context: Any


@fast_init
@dataclass(frozen=True, slots=True)
class DeliverReceived:
    """A deliver_sm or data_sm to hand to the pipeline; answer it with
    ``ack_deliver(seq, status, command_id)``.

    ``body`` is a deliver_sm body either way: a data_sm becomes one with an empty short_message
    and its TLVs (receipt fields, message_payload), which the pipeline already reads.
    ``salvaged``: the PDU did not parse strictly, but its receipt fields were recovered.
    ``command_id``: DELIVER_SM or DATA_SM, what the SMSC sent, so the answer is its own resp.
    """

    seq: int
    body: ShortMessage
    salvaged: bool
    command_id: int = C.DELIVER_SM


class ReceiptReceived(NamedTuple):
    """A deliver_sm marked a receipt by its esm_class, read without its ShortMessage
    (``codec.read_receipt_sm``: esm_class, short_message and the receipt's four TLVs), for a
    session with ``read_receipts`` set (the bind has a receipt handler: ``SmppProtocol``'s
    ``on_receipt``); answer it as a DeliverReceived (``ack_deliver(seq, status,
    command_id)``). One a part sent (session 60, README note 27). A NamedTuple built by
    `tuple.__new__` (a C call), as `SubmitResponse` (session 61): read by field, the same
    repr; ``command_id`` is the class's."""

    seq: int
    fields: ReceiptFields

    # Not a field: the class's, as DeliverReceived's default (mypy takes a NamedTuple's body for
    # fields only).
    command_id = C.DELIVER_SM  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class PeerUnbound:
    pass


@dataclass(frozen=True, slots=True)
class ProtocolError:
    message: str
    fatal: bool


@dataclass(frozen=True, slots=True)
class EnquireLinkMissed:
    """Our enquire_link got no answer in time; always followed by Closed (reconnect)."""


@dataclass(frozen=True, slots=True)
class Closed:
    reason: str


Event = (
    Bound | BindRefused | SubmitResponse | RequestTimedOut | RequestAborted | DeliverReceived
    | ReceiptReceived | PeerUnbound | ProtocolError | EnquireLinkMissed | Closed
    | LateSubmitResponse
)  # fmt: skip

# An MO's deliver_sm event, built by fastinit.maker's function: the same frozen instance, without
# the class call's way back into the interpreter (type_call, slot_tp_init: ~1.5 k instructions
# an event, session 58). A part's two events, its submit_sm_resp's SubmitResponse and its
# receipt's ReceiptReceived, are tuples (`_new_tuple`, session 61).
_deliver_received = maker(DeliverReceived)


# --- errors -----------------------------------------------------------------------------------
class WindowFull(Exception):
    """``submit`` called with no free window slot; the caller must wait for a response first."""

    code: Final = "WINDOW_FULL"

    def __init__(self, window: int) -> None:
        super().__init__(f"window: all {window} slots are in use")
        self.message = str(self)


class NotBound(Exception):
    """``submit`` called when the session cannot transmit (not bound, or a receiver bind)."""

    code: Final = "NOT_BOUND"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- the session ------------------------------------------------------------------------------
LATE_GRACE_MIN_S: Final = 60.0
"""A timed-out submit_sm is remembered at least this long (or 5 response timeouts if longer)."""


def late_grace(response_timeout_s: float) -> float:
    """How long after its timeout a submit_sm's late answer is still taken (the dispatcher
    holds the message that long before it resends or ends it)."""
    return max(LATE_GRACE_MIN_S, 5 * response_timeout_s)


LATE_MAX: Final = 4096
"""At most this many timed-out submit_sm are remembered per bind; the oldest go first."""


class _Pending(NamedTuple):
    """A request waiting for its answer. A tuple built by `_pending` (`tuple.__new__`, a C
    call), where a slots dataclass's `__init__` was a Python call per request, one a part sent
    (session 61, README note 27); read by field (`_tuplegetter`s). `postpone` replaces an entry
    with its deadline moved."""

    command_id: int
    deadline: float
    context: Any
    sent_at: float


def _pending(command_id: int, deadline: float, context: Any, sent_at: float) -> _Pending:
    return _new_tuple(_Pending, (command_id, deadline, context, sent_at))


_new_tuple: Final = tuple.__new__


_RESP_FOR: Final = {
    C.SUBMIT_SM: C.SUBMIT_SM_RESP,
    C.ENQUIRE_LINK: C.ENQUIRE_LINK_RESP,
    C.UNBIND: C.UNBIND_RESP,
    C.BIND_TRANSCEIVER: C.BIND_TRANSCEIVER_RESP,
    C.BIND_TRANSMITTER: C.BIND_TRANSMITTER_RESP,
    C.BIND_RECEIVER: C.BIND_RECEIVER_RESP,
}

# Requests from the SMSC that carry no response (answering them would be a protocol error).
_NO_RESPONSE: Final = frozenset({C.ALERT_NOTIFICATION, C.OUTBIND})

# Requests from the SMSC that the pipeline answers (DeliverReceived), and their responses.
_INBOUND_RESP: Final = {C.DELIVER_SM: C.DELIVER_SM_RESP, C.DATA_SM: C.DATA_SM_RESP}


class BindSession:
    """The protocol state of one bind. See the module docstring for the contract."""

    __slots__ = (
        "_bind",
        "_el_seq",
        "_framer",
        "_in_flight",
        "_last_rx",
        "_late",
        "_out",
        "_pending",
        "_rx_now",
        "_seq",
        "enquire_link_s",
        "free_slots",
        "late_grace_s",
        "late_max",
        "mode",
        "peer_system_id",
        "read_receipts",
        "response_timeout_s",
        "state",
        "window",
    )

    def __init__(
        self,
        bind: Bind,
        mode: BindMode,
        *,
        window: int = 50,
        response_timeout_s: float = 30,
        enquire_link_s: float = 30,
        initial_seq: int = 1,
        late_grace_s: float | None = None,
        late_max: int = LATE_MAX,
    ) -> None:
        if window < 1:
            raise ValueError("window: must be at least 1")
        if late_max < 0:
            raise ValueError("late_max: must not be negative")
        if not 1 <= initial_seq <= MAX_SEQ:
            raise ValueError(f"initial_seq: must be in 1..{MAX_SEQ}")
        self._bind = bind
        self.mode = BindMode(mode)
        self.window = window
        self.response_timeout_s = response_timeout_s
        self.enquire_link_s = enquire_link_s
        self.state = SessionState.OPEN
        # Submit slots free now (`_refree`): none until bound.
        self.free_slots = 0
        self.peer_system_id = ""
        self._framer = Framer()
        self._out = bytearray()
        self._pending: dict[int, _Pending] = {}
        # submit_sm outstanding; enquire_link, bind and unbind do not take window slots
        self._in_flight = 0
        self._seq = initial_seq
        self._el_seq = 0  # our outstanding enquire_link, 0 when none
        # When the SMSC last answered one of our requests: the keep-alive clock. Not any octet
        # received: an SMSC that still sends its own enquire_link but answers nothing else is
        # hung, and its pings would keep ours from ever being sent.
        self._last_rx = 0.0
        self._rx_now = 0.0
        # Timed-out submit_sm: seq -> (context, expiry), oldest first (all share one grace, so
        # insertion order is expiry order: pruning and eviction look at the first entry only).
        self._late: dict[int, tuple[Any, float]] = {}
        self.late_grace_s = late_grace(response_timeout_s) if late_grace_s is None else late_grace_s
        self.late_max = late_max
        # A deliver_sm marked a receipt comes as ReceiptReceived, not DeliverReceived (set by a
        # protocol with a receipt handler).
        self.read_receipts = False

    # --- properties ---------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _refree(self) -> None:
        """`free_slots` again after a change of state or of the submits in flight: the window's
        free slots while bound (a transmitter or transceiver), else 0. An attribute kept so,
        not a property (until session 61): the connector reads it ~2 times a part sent, each
        a Python call; `submit` and the usual submit_sm_resp keep it in step themselves."""
        self.free_slots = (
            self.window - self._in_flight
            if self.state is _BOUND and self.mode is not _RECEIVER
            else 0
        )

    @property
    def is_bound(self) -> bool:
        return self.state is _BOUND

    @property
    def late_count(self) -> int:
        """Timed-out submit_sm whose late answer would still be reported."""
        return len(self._late)

    # --- outgoing -----------------------------------------------------------------------------
    def _next_seq(self) -> int:
        seq = self._seq
        while seq in self._pending:  # only after a wrap with a very old request still open
            seq = 1 if seq >= MAX_SEQ else seq + 1
        self._seq = 1 if seq >= MAX_SEQ else seq + 1
        return seq

    def _request(self, cid: int, body: Any, now: float, context: Any = None) -> int:
        seq = self._next_seq()
        # May raise EncodeError: nothing recorded then. A submit_sm (one per part sent) without
        # a Pdu built and dispatched on its body's type (codec.encode_sm_request).
        if cid == _SUBMIT_SM:
            data = encode_sm_request(cid, seq, body)
        else:
            data = encode(Pdu(cid, 0, seq, body))
        if self._late:
            self._late.pop(seq, None)  # a wrapped seq in use again: its answers are the new one's
        self._out += data
        self._pending[seq] = _new_tuple(
            _Pending, (cid, now + self.response_timeout_s, context, now)
        )  # _pending's, inline
        return seq

    def _respond(self, cid: int, status: int, seq: int, body: Any = None) -> None:
        self._out += encode(Pdu(cid, status, seq, body))

    def _nack(self, status: int, seq: int) -> None:
        self._respond(C.GENERIC_NACK, status, seq)

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        data = bytes(self._out)
        self._out.clear()
        return data

    def start(self, now: float) -> None:
        """Queue the bind PDU (call once the transport is connected)."""
        if self.state is not SessionState.OPEN:
            raise NotBound(f"start: the session is {self.state}, not open")
        self._last_rx = now
        self._request(self.mode.bind_command, self._bind, now)
        self.state = SessionState.BINDING
        self._refree()

    def submit(self, body: ShortMessage | bytes, now: float, context: Any = None) -> int:
        """Queue a submit_sm (`body` a ShortMessage, or its octets: `encode` sends bytes as the
        body as they are); returns its sequence number. The answer comes as SubmitResponse,
        RequestTimedOut or RequestAborted carrying ``context`` (after a RequestTimedOut, maybe
        a LateSubmitResponse too)."""
        if self.state is not _BOUND:
            raise NotBound(f"submit: the session is {self.state}, not bound")
        if self.mode is _RECEIVER:  # not mode.can_transmit: a property, a call a part
            raise NotBound("submit: a receiver bind cannot send submit_sm")
        if self._in_flight >= self.window:
            raise WindowFull(self.window)
        seq = self._seq
        pending = self._pending
        if type(body) is bytes and len(body) <= _BODY_MAX and seq not in pending:
            # A body written already (`pipeline.submit_sm.submit_bodies`: one a part sent) and
            # its seq free: `_request`'s steps inline, `_next_seq`'s and `encode_sm_request`'s
            # calls less (session 59). The same octets: `encode` sends bytes as they are.
            self._seq = 1 if seq >= MAX_SEQ else seq + 1
            if self._late:
                self._late.pop(seq, None)
            out = self._out
            out += _HDR.pack(16 + len(body), _SUBMIT_SM, 0, seq)
            out += body
            pending[seq] = _new_tuple(
                _Pending, (_SUBMIT_SM, now + self.response_timeout_s, context, now)
            )  # _pending's, inline: a C call, no Python __init__
        else:
            seq = self._request(_SUBMIT_SM, body, now, context)
        self._in_flight += 1
        self.free_slots -= 1  # bound, not a receiver (checked above): `_refree`'s, in step
        return seq

    def ack_deliver(
        self, seq: int, status: int = C.ESME_ROK, command_id: int = C.DELIVER_SM
    ) -> None:
        """Queue deliver_sm_resp, or data_sm_resp for a data_sm (``DeliverReceived.command_id``;
        its message_id is empty: we issue none). Called only once the receipt/MO is committed (or
        refused), so a crash before that leaves the SMSC to redeliver it. A no-op once the
        session is closed."""
        resp = _INBOUND_RESP.get(command_id)
        if resp is None:
            raise ValueError(f"command_id: {C.command_name(command_id)} is not acked by the ESME")
        if self.state is _CLOSED:
            return
        try:
            # One per receipt (one per part sent): the bytes encode(Pdu(..., MessageIdResp()))
            # makes, without building and dispatching the PDU: 0.3 us against 1.0.
            self._out += _ACK.pack(17, resp, status, seq, 0)
        except StructError:
            self._respond(resp, status, seq, MessageIdResp())  # raises encode's EncodeError

    def unbind(self, now: float) -> None:
        """Start a clean unbind; before the bind completed there is nothing to unbind: close."""
        if self.state is SessionState.BOUND:
            self._request(C.UNBIND, None, now)
            self.state = SessionState.UNBINDING
        elif self.state in (SessionState.OPEN, SessionState.BINDING):
            self.state = SessionState.CLOSED
        self._refree()

    def connection_lost(self, reason: str = "connection lost") -> list[Event]:
        """The transport is gone: every outstanding request is aborted (their outcome is unknown:
        the SMSC may or may not have acted on them)."""
        events: list[Event] = [
            RequestAborted(seq, p.command_id, p.context) for seq, p in self._pending.items()
        ]
        self._pending.clear()
        self._late.clear()
        self._in_flight = 0
        self._el_seq = 0
        if self.state is not SessionState.CLOSED:
            self.state = SessionState.CLOSED
            events.append(Closed(reason))
        self._refree()
        return events

    # --- timers -------------------------------------------------------------------------------
    def postpone(self, delta: float) -> None:
        """Move every deadline `delta` seconds later: the time we did not read (the protocol
        paused reading while deliver handlers caught up) was not the SMSC's to answer in; its
        responses waited unread in the socket."""
        pending = self._pending
        for seq, p in pending.items():  # a value replaced: the dict's size and order stay
            pending[seq] = _pending(p.command_id, p.deadline + delta, p.context, p.sent_at)
        # The late answers' grace too: one that waited unread was not late by that time.
        late = self._late
        for seq, (context, expiry) in late.items():
            late[seq] = (context, expiry + delta)
        self._last_rx += delta

    def next_deadline(self) -> float | None:
        state = self.state
        if state is _CLOSED:
            return None
        deadline: float | None = None
        if self._pending:
            deadline = next(iter(self._pending.values())).deadline
        if state is _BOUND and not self._el_seq:
            due = self._last_rx + self.enquire_link_s
            if deadline is None or due < deadline:
                deadline = due
        return deadline

    def on_timer(self, now: float) -> list[Event]:
        events: list[Event] = []
        if self.state is _CLOSED:
            return events
        late = self._late
        while late:
            seq, (_ctx, expiry) = next(iter(late.items()))
            if expiry > now:
                break
            del late[seq]
        pending = self._pending
        while pending:
            seq, p = next(iter(pending.items()))
            if p.deadline > now:
                break
            del pending[seq]
            cid = p.command_id
            if cid == C.SUBMIT_SM:
                self._in_flight -= 1
                self._refree()
                self._remember_late(seq, p.context, now)
                events.append(RequestTimedOut(seq, cid, p.context))
            elif cid == C.ENQUIRE_LINK:
                self._el_seq = 0
                events.append(EnquireLinkMissed())
                return self._close(events, "enquire_link_resp missed")
            elif cid in C.BIND_COMMANDS:
                events.append(RequestTimedOut(seq, cid, p.context))
                return self._close(events, "bind_resp timed out")
            elif cid == C.UNBIND:
                return self._close(events, "unbind_resp timed out")
            else:  # pragma: no cover - we send no other requests
                events.append(RequestTimedOut(seq, cid, p.context))
        if self.state is _BOUND and not self._el_seq and now >= self._last_rx + self.enquire_link_s:
            self._el_seq = self._request(C.ENQUIRE_LINK, None, now)
        return events

    def _remember_late(self, seq: int, context: Any, now: float) -> None:
        if self.late_max <= 0 or self.late_grace_s <= 0:
            return
        late = self._late
        late[seq] = (context, now + self.late_grace_s)
        while len(late) > self.late_max:
            del late[next(iter(late))]

    def _close(self, events: list[Event], reason: str) -> list[Event]:
        self.state = SessionState.CLOSED
        self.free_slots = 0  # `_refree`'s, closed
        self._late.clear()
        events.append(Closed(reason))
        return events

    # --- incoming -----------------------------------------------------------------------------
    def receive_data(self, data: bytes, now: float) -> list[Event]:
        events: list[Event] = []
        if self.state is _CLOSED:
            return events
        self._rx_now = now
        try:
            src = self._framer.take(data)
        except FrameError as e:
            return self._frame_error(e, events)
        self._read(src, events)
        return events

    def _frame_error(self, e: FrameError, events: list[Event]) -> list[Event]:
        """A command_length the stream cannot be resynchronised after: the frames before it
        in the octets the framer was given handled, then a generic_nack and the close."""
        if e.frames:
            self._read(b"".join(e.frames), events)
            if self.state is _CLOSED:
                self._late.clear()
                return events
        self._nack(e.status, e.seq)
        events.append(ProtocolError(f"{e.code}: {e.message}", fatal=True))
        return self._close(events, "bad command_length")

    def _answers_after_unbind(self, frames: list[bytes], events: list[Event]) -> None:
        """Responses that came in the same read as the SMSC's unbind still answer their
        requests: dropped, an accepted submit lost its id and was resent on the next bind. The
        close is reported after them."""
        if not frames or not any(isinstance(e, PeerUnbound) for e in events):
            return
        closed = [e for e in events if isinstance(e, Closed)]
        for frame in frames:
            try:
                cid, status, seq, body = decode_fields(frame)
            except PduError:
                continue
            if cid & C.RESP_BIT:
                self._handle_response(cid, status, seq, body, events)
        for e in closed:
            events.remove(e)
            events.append(e)

    def _read(self, src: bytes, events: list[Event]) -> None:
        """The frames of `src` (`Framer.take`'s: the stream's octets from the first not yet
        framed), in order, their events appended to `events`; a frame not whole, or whose
        command_length the stream cannot go on from, and what follows it, to `Framer.feed`,
        which keeps the part or raises as it did when it framed every read (until session
        62: a list of frames built, then walked here, the command_length read twice). The
        two frames a part sent brings (its submit_sm_resp, its receipt) are read in this loop,
        any other by `_handle_general`, after which the closed state is looked at (neither of
        those two can close it): a Python call a frame less than `_handle_frame`'s.
        The frames after one that closed the session are answers still read
        (`_answers_after_unbind`), unless the framer refuses what follows."""
        framer = self._framer
        max_pdu = framer.max_pdu
        pending = self._pending
        read_receipts = self.read_receipts
        end = len(src)
        off = 0
        while end - off >= 16:
            n, cid, status, seq = _HDR.unpack_from(src, off)
            if n < 16 or n > max_pdu or off + n > end:
                break  # the framer's to keep or refuse
            start = off
            off += n
            if 17 <= n <= _SUBMIT_RESP_MAX:
                # A submit_sm_resp accepting a submit_sm we wait for, its message_id the whole
                # body (one a part sent): the id read here, where decode_fields built a
                # MessageIdResp for _handle_response to read and drop (session 58, README note
                # 27). What decode_fields and _handle_response make of it: the id up to its
                # NUL, the first within 65 octets, nothing after it (no TLVs), SMPP 3.4's 64
                # octets at most (no warning). Any other response (an error status, TLVs, a
                # late one, a seq we do not wait on or one of another request) takes the
                # general path. Read in `src`, the frame not sliced out of it (a copy a part
                # sent, session 62).
                if (
                    cid == _SUBMIT_SM_RESP
                    and not status
                    and src.find(0, start + 16, off) == off - 1
                ):
                    p = pending.get(seq)
                    if p is not None and p.command_id == _SUBMIT_SM:
                        self._last_rx = self._rx_now
                        del pending[seq]
                        self._in_flight -= 1
                        if self.state is _BOUND and self.mode is not _RECEIVER:  # `_refree`'s
                            self.free_slots += 1
                        mid = src[start + 16 : off - 1].decode("latin-1")
                        events.append(_new_tuple(SubmitResponse, (seq, 0, mid, p.context)))
                        continue
            if cid == _DELIVER_SM and read_receipts:
                # A receipt (one a part sent) read for the receipt handler without its
                # ShortMessage (codec.read_receipt_sm), where the general path would give it a
                # DeliverReceived: a body it does not take (an MO, one decode_fields refuses)
                # goes there, as does one the session would not take now (session 60, README
                # note 27). Read in `src` (`read_receipt_at`), the frame not sliced out of it
                # (a copy a receipt, session 64).
                state = self.state
                if state is _BOUND or state is _UNBINDING:
                    got = read_receipt_at(src, start, off)
                    if got is not None:
                        events.append(_new_tuple(ReceiptReceived, (seq, got)))
                        continue
            self._handle_general(src[start:off], events)
            if self.state is _CLOSED:
                try:
                    rest = framer.feed(src[off:]) if off < end else []
                except FrameError:
                    rest = []  # the frames before a bad length went unread after a close
                else:
                    self._answers_after_unbind(rest, events)
                self._late.clear()
                return
        if off < end:
            try:
                frames = framer.feed(src[off:] if off else src)
            except FrameError as e:
                self._frame_error(e, events)
                return
            if frames:  # none: what it was given starts at a frame not whole, or refused
                self._read(b"".join(frames), events)

    def _handle_general(self, frame: bytes, events: list[Event]) -> None:
        """A frame `_read` does not read itself: its fields, no Pdu built
        (codec.decode_fields)."""
        try:
            cid, status, seq, body = decode_fields(frame)
        except PduError as e:
            self._handle_bad_frame(frame, e, events)
            return
        if cid & C.RESP_BIT:
            self._handle_response(cid, status, seq, body, events)
        elif cid == C.DELIVER_SM or cid == C.DATA_SM:
            state = self.state
            if state is _BOUND or state is _UNBINDING:
                if isinstance(body, DataSm):
                    events.append(_deliver_received(seq, body.as_short_message(), False, cid))
                else:  # a deliver_sm: codec._decode_sm made it a ShortMessage (unchecked: per PDU)
                    events.append(_deliver_received(seq, body, False))
            else:
                self._respond(_INBOUND_RESP[cid], C.ESME_RINVBNDSTS, seq, MessageIdResp())
                events.append(
                    ProtocolError(f"{C.command_name(cid)} before bound ({self.state})", False)
                )
        elif cid == C.ENQUIRE_LINK:
            self._respond(C.ENQUIRE_LINK_RESP, C.ESME_ROK, seq)
        elif cid == C.UNBIND:
            self._respond(C.UNBIND_RESP, C.ESME_ROK, seq)
            events.append(PeerUnbound())
            # Not _close: late answers in the rest of this read still count (receive_data
            # clears the late map after _answers_after_unbind).
            self.state = SessionState.CLOSED
            self.free_slots = 0  # `_refree`'s, closed
            events.append(Closed("unbound by the SMSC"))
        elif cid in _NO_RESPONSE:
            events.append(ProtocolError(f"ignored {C.command_name(cid)} from the SMSC", False))
        else:
            # A request an ESME does not serve (submit_sm, bind_*, query_sm, ...).
            self._nack(C.ESME_RINVCMDID, seq)
            events.append(ProtocolError(f"unsupported {C.command_name(cid)} refused", False))

    def _handle_bad_frame(self, frame: bytes, e: PduError, events: list[Event]) -> None:
        cid = e.command_id
        if cid == C.DELIVER_SM or cid == C.DATA_SM:
            if cid == C.DELIVER_SM:
                body = salvage_deliver_sm(frame)
            else:
                ds = salvage_data_sm(frame)
                body = ds.as_short_message() if ds is not None else None
            if body is not None and self.state in (SessionState.BOUND, SessionState.UNBINDING):
                events.append(DeliverReceived(e.seq, body, True, cid))
                events.append(ProtocolError(f"salvaged {C.command_name(cid)} receipt: {e}", False))
                return
        if cid & C.RESP_BIT and (e.seq in self._pending or e.seq in self._late):
            # A response we cannot fully parse still answers its request: the SMSC's status is
            # in the header. Nacking a response is meaningless to the peer, so none is sent.
            status = _HDR.unpack_from(frame)[2]
            events.append(ProtocolError(f"malformed response: {e}", False))
            self._handle_response(cid, status, e.seq, None, events)
            return
        if cid == C.DELIVER_SM or cid == C.DATA_SM:
            # SMPP 3.4 4.3.1: generic_nack is for a bad length or an unknown command; a
            # deliver_sm or data_sm whose body breaks a field rule gets its own resp with the error.
            self._respond(_INBOUND_RESP[cid], e.status, e.seq, MessageIdResp())
            events.append(ProtocolError(f"malformed {C.command_name(cid)} refused: {e}", False))
            return
        self._nack(e.status, e.seq)
        events.append(ProtocolError(str(e), False))

    def _handle_response(
        self, cid: int, status: int, seq: int, body: Any, events: list[Event]
    ) -> None:
        p = self._pending.get(seq)
        if p is None and self._late and self._late_response(cid, status, seq, body, events):
            return
        if p is None or (cid != C.GENERIC_NACK and _RESP_FOR.get(p.command_id) != cid):
            what = "no request" if p is None else C.command_name(p.command_id)
            events.append(
                ProtocolError(f"{C.command_name(cid)} seq {seq} matches {what}; ignored", False)
            )
            return
        self._last_rx = self._rx_now
        del self._pending[seq]
        req = p.command_id
        if cid == C.GENERIC_NACK and status == C.ESME_ROK:
            status = C.ESME_RUNKNOWNERR  # a nack is never a success
        if req == C.SUBMIT_SM:
            self._in_flight -= 1
            self._refree()
            mid = body.message_id if isinstance(body, MessageIdResp) and not status else ""
            if len(mid) > 64:
                events.append(
                    ProtocolError(f"submit_sm_resp message_id of {len(mid)} octets (SMPP 3.4 "
                                  "allows 64): kept whole", False)
                )  # fmt: skip
            events.append(_new_tuple(SubmitResponse, (seq, status, mid, p.context)))
        elif req == C.ENQUIRE_LINK:
            self._el_seq = 0
            if status == C.ESME_RINVBNDSTS and self._in_flight == 0:
                # The SMSC no longer knows this bind (it failed over): a receiver bind sends
                # no submit that could be refused so, and stayed "up" for ever while the SMSC
                # kept our receipts and MO. With submits in flight their answers decide (a
                # refusal retires the bind after the others are read; see the connector).
                self._close(events, "enquire_link answered ESME_RINVBNDSTS: the SMSC no "
                            "longer knows this bind")  # fmt: skip
        elif req in C.BIND_COMMANDS:
            if status == C.ESME_ROK and self.state is SessionState.BINDING:
                self.peer_system_id = body.system_id if isinstance(body, BindResp) else ""
                self.state = SessionState.BOUND
                self._refree()
                events.append(Bound(self.peer_system_id))
            else:
                events.append(BindRefused(status))
                self._close(events, f"bind refused: {C.status_name(status)}")
        elif req == C.UNBIND:
            self._close(events, "unbound")

    def _late_response(
        self, cid: int, status: int, seq: int, body: Any, events: list[Event]
    ) -> bool:
        """A response for a timed-out submit_sm: a submit_sm_resp is reported, a generic_nack
        only ends the wait for it. False when it is none of those (or came past the grace)."""
        entry = self._late.get(seq)
        if entry is None or (cid != C.SUBMIT_SM_RESP and cid != C.GENERIC_NACK):
            return False
        del self._late[seq]
        context, expiry = entry
        if expiry <= self._rx_now:
            return False
        self._last_rx = self._rx_now  # an answer all the same: the SMSC is alive
        if cid == C.SUBMIT_SM_RESP:
            mid = body.message_id if isinstance(body, MessageIdResp) and not status else ""
            events.append(LateSubmitResponse(seq, status, mid, context))
        return True
