"""Values that cross the store boundary.

Plain frozen dataclasses so both engines (SQLite, PostgreSQL) speak the same language and callers
never see rows, cursors or engine types. Times are integer unix milliseconds; money is integer
micro-units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bridge.fastinit import fast_init

if TYPE_CHECKING:
    from collections.abc import Mapping

    from bridge.domain.admission import Plan, Refusal, Rules


@fast_init
@dataclass(frozen=True, slots=True)
class Account:
    id: str
    name: str
    kind: str = "prepaid"
    raw_text: bool = False
    marketing: bool = False
    default_country: str | None = None
    tps: int = 0
    daily_quota: int = 0
    status_callback_url: str | None = None
    mo_callback_url: str | None = None
    webhook_secret_enc: bytes = field(default=b"", repr=False)
    status: str = "active"
    created_at: int = 0
    updated_at: int = 0
    low_balance_threshold: int = 0  # micro-units; 0 = no warning
    report_format: str = "native"  # native | aliyun: the shape of status and MO webhooks
    # Source addresses assigned by the operator (bridge/domain/senders.py); () = not restricted.
    senders: tuple[str, ...] = ()
    # The webhook secret before the last rotation, signing beside the current one until
    # prev_webhook_secret_until (unix ms): receivers are updated without a gap.
    prev_webhook_secret_enc: bytes | None = field(default=None, repr=False)
    prev_webhook_secret_until: int | None = None
    # accounts.low_warned_at: when the balance.low warning of the current dip fired (unix ms),
    # None while the balance is at or above the threshold (or none is set). The store keeps it;
    # it is shown, never changed through an account update.
    low_balance_warned_at: int | None = None

    @property
    def active(self) -> bool:
        return self.status == "active"


ACCOUNT_MUTABLE = frozenset(
    {
        "kind",
        "raw_text",
        "marketing",
        "default_country",
        "tps",
        "daily_quota",
        "status_callback_url",
        "mo_callback_url",
        "status",
        "webhook_secret_enc",
        "prev_webhook_secret_enc",
        "prev_webhook_secret_until",
        "low_balance_threshold",
        "report_format",
        "senders",
    }
)


@dataclass(frozen=True, slots=True)
class AppKey:
    key_id: str
    account_id: str
    secret_enc: bytes = field(repr=False)
    status: str
    created_at: int
    revoked_at: int | None = None
    # Within a minute: each process notes uses in memory and writes them every 60 s
    # (bridge/api/key_use.py). None: no use recorded since schema 35.
    last_used_at: int | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class NewSegment:
    seq: int
    total: int
    esm_class: int
    short_message: bytes
    tlvs: bytes


@dataclass(frozen=True, slots=True)
class WaitingText:
    """A waiting, never tried message as stored: what encoding it again needs
    (bridge/pipeline/reencode.py)."""

    id: str
    recipient: str
    text: str
    data_coding: int
    parts: tuple[NewSegment, ...]
    wire: int | None = None  # the wire options its parts are for (text.split.wire_code)


@dataclass(frozen=True, slots=True)
class Reencoding:
    """New parts for a waiting message; applied only while it is still as read (its data_coding
    and first part's bytes) and never tried."""

    id: str
    was_data_coding: int
    was_first: bytes
    encoding: str
    data_coding: int
    segments: int  # on the air (a payload's SMSC-made segments counted)
    parts: tuple[NewSegment, ...]
    wire: int | None = None  # the wire options the new parts are for (text.split.wire_code)


@fast_init
@dataclass(frozen=True, slots=True)
class NewMessage:
    id: str
    account_id: str
    batch_id: str
    recipient: str
    encoding: str
    data_coding: int
    billable_units: int
    segments: tuple[NewSegment, ...]
    accepted_at: int
    text: str | None = None
    client_ref: str | None = None
    sender: str | None = None
    sign_name: str | None = None
    template: str | None = None
    scheduled_at: int | None = None
    expires_at: int | None = None
    # Over-the-air parts when they differ from the PDUs (message_payload mode: 1 PDU, N SMS).
    air_segments: int = 0
    kind: str | None = None  # template type; None for free text
    price_class: str | None = None  # 'D' domestic, an international prefix, None: not billed
    # The wire options its parts were encoded for (text.split.wire_code); None: not known.
    wire: int | None = None

    def insert_values(self) -> tuple[Any, ...]:
        """Its `messages` row as both engines insert it: id, account_id, batch_id, client_ref,
        recipient, sender, sign_name, template, text, encoding, data_coding, segments,
        billable_units, accepted_at, scheduled_at, expires_at, q_not_before, kind,
        price_class, wire."""
        return (
            self.id,
            self.account_id,
            self.batch_id,
            self.client_ref,
            self.recipient,
            self.sender,
            self.sign_name,
            self.template,
            self.text,
            self.encoding,
            self.data_coding,
            self.air_segments or len(self.segments),
            self.billable_units,
            self.accepted_at,
            self.scheduled_at,
            self.expires_at,
            self.scheduled_at or self.accepted_at,
            self.kind,
            self.price_class,
            self.wire,
        )


@fast_init
@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    request_hash: str
    status_code: int
    response: bytes


@fast_init
@dataclass(frozen=True, slots=True)
class AcceptBatch:
    """Everything one API request commits atomically: the 202 is sent only after this lands."""

    account_id: str
    messages: tuple[NewMessage, ...]
    idempotency_key: str | None
    idempotency: IdempotencyRecord | None
    idempotency_expires_at: int = 0
    # Account TPS to enforce in the same transaction (0 = none); the bucket is shared by every
    # process using the store. With `nonce` set, the account's live TPS is used instead.
    tps: float = 0.0
    # A deferred authorisation (bridge.api.auth.NonceClaim): record this nonce and check the
    # key and account are still active, first thing in the same transaction.
    key_id: str | None = None
    nonce: str | None = None
    nonce_expires_at: int = 0
    # The account's updated_at the request was validated against: if the row changed since,
    # nothing is written and the fresh account comes back ("stale"); a disabled account is
    # refused ("disabled"). With a deferred authorisation, or alone (the Alibaba face, whose
    # nonce is recorded before its action runs).
    account_version: int | None = None
    # The sending rules and charges to check and apply inside the transaction (admission.decide).
    rules: Rules | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class AcceptOutcome:
    accepted: bool
    # When another request with the same idempotency key committed first, its record.
    existing: IdempotencyRecord | None = None
    # Refused by the account's rate: seconds until it would pass.
    retry_after: float = 0.0
    # Refused by the deferred authorisation: revoked | nonce_reused | unknown_key | disabled.
    auth_refusal: str | None = None
    account: Account | None = None  # the fresh account when auth_refusal == "stale"
    # Refused by a sending rule (opt-out, frequency, quota, balance...), decided in the transaction.
    refusal: Refusal | None = None
    plan: Plan | None = None  # what was charged (low-balance crossing included)


@dataclass(frozen=True, slots=True)
class SegmentRecord:
    seq: int
    total: int
    state: str
    smsc: str | None
    smsc_msg_id: str | None
    submitted_at: int | None
    done_at: int | None
    error_code: str | None
    # The seq whose receipt settled this part (smscs[].receipts: one_per_message); None when
    # the part had an outcome of its own.
    receipt_inferred_from: int | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: str
    account_id: str
    batch_id: str
    client_ref: str | None
    recipient: str
    sender: str | None
    sign_name: str | None
    template: str | None
    text: str | None
    encoding: str
    data_coding: int
    segments: int
    billable_units: int
    segments_sent: int
    segments_delivered: int
    segments_failed: int
    state: str
    error_code: str | None
    error_text: str | None
    smsc: str | None
    accepted_at: int
    scheduled_at: int | None
    expires_at: int | None
    sent_at: int | None
    done_at: int | None
    # Keyword-only: the engines build the record from a row's columns (*row) and name this.
    segment_rows: tuple[SegmentRecord, ...] = field(default=(), kw_only=True)


@fast_init
@dataclass(frozen=True, slots=True)
class WorkSegment:
    seq: int
    total: int
    esm_class: int
    short_message: bytes
    tlvs: bytes
    attempts: int


@fast_init
@dataclass(frozen=True, slots=True)
class WorkMessage:
    """A claimed message: the dispatcher sends its unsent segments in order on one bind."""

    id: str
    account_id: str
    recipient: str
    sender: str | None
    data_coding: int
    expires_at: int | None
    attempts: int
    segments: tuple[WorkSegment, ...]
    # The SMSC its earlier parts went to, when some did: the rest follow them there, so one
    # concatenated SMS is never split over two carriers (failover between its parts).
    smsc: str | None = None
    unanswered: int = 0  # earlier claims whose submit went unanswered
    # The wire options its parts were encoded for (text.split.wire_code); None: not known.
    wire: int | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class SubmitResult:
    """The outcome of one segment's submit_sm.

    outcome: 'sent' (smsc_msg_id set), 'failed' (permanent; error_code is the SMPP status name),
    'retry' (transient; the message is released with not_before), 'unknown'.
    """

    message_id: str
    seq: int
    outcome: str
    smsc: str
    smsc_msg_id: str | None = None
    smsc_msg_id_raw: str | None = None
    error_code: str | None = None
    at: int = 0
    # When the accepted submit_sm left (unix ms; 0 unknown): a receipt kept as unmatched since
    # before then belongs to an earlier message that had the same id (a counter the SMSC
    # started over), not to this part. See KEPT_RECEIPT_SLACK_MS.
    sent_at: int = 0


# How far before a part's sent_at a kept receipt may have arrived and still be applied to it:
# the clocks the two are read from (the receipt's arrival, the submit's departure) step apart by
# milliseconds, a receipt cannot come before its submit.
KEPT_RECEIPT_SLACK_MS = 250


@dataclass(frozen=True, slots=True)
class Release:
    """Give a claimed message back to the queue (transient failure, no bind, shutdown)."""

    message_id: str
    not_before: int
    count_attempt: bool = True
    unanswered: bool = False  # the submit got no answer (timeout, lost connection)


@dataclass(frozen=True, slots=True)
class LateAccept:
    """A part the SMSC accepted after its submit_sm was reported TIMEOUT (and the message
    released for a retry): recorded as sent if the retry has not claimed it yet."""

    message_id: str
    seq: int
    smsc: str
    smsc_msg_id: str  # normalised with the SMSC's rule, as in SubmitResult
    smsc_msg_id_raw: str

    def as_result(self, at: int) -> SubmitResult:
        """The result a timely submit_sm_resp would have given."""
        return SubmitResult(
            self.message_id, self.seq, "sent", self.smsc, self.smsc_msg_id, self.smsc_msg_id_raw,
            at=at,
        )  # fmt: skip


@fast_init
@dataclass(frozen=True, slots=True)
class ReceiptIn:
    smsc: str
    smsc_msg_id: str
    state: str  # delivered|undeliverable|expired|rejected|unknown|enroute
    stat: str | None
    err: str | None
    done_at: int | None
    received_at: int
    raw: str | None = None


@dataclass(frozen=True, slots=True)
class ReceiptOutcome:
    matched: int
    pending: int
    reports: int = 0  # status webhooks queued by the messages these receipts ended
    # By SMSC, final receipts for parts the receipt timeout ended: they change nothing
    # (lifecycle.count_after_timeout; the smpp_bridge_receipts_after_timeout metric).
    after_timeout: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WebhookJob:
    id: int
    webhook_id: str
    account_id: str
    kind: str
    url: str
    payload: str  # the JSON body for events; the referenced id for status and mo reports
    attempts: int
    created_at: int = 0
    # The claim's lease (the row's next_attempt_at while claimed): the sender's done, retry and
    # release writes apply only while it still matches, so a sender whose lease ran out (and
    # whose report another sender took) cannot overwrite that sender's outcome.
    lease: int | None = None
    retry_from: int | None = None  # the last replay of a dead letter: its retry window's start


@dataclass(frozen=True, slots=True)
class MoPart:
    smsc: str
    source: str
    destination: str
    ref: int
    total: int
    seq: int
    data_coding: int
    payload: bytes
    received_at: int
    # The source's TON (SMPP 5.2.5), kept so a message whose other parts never come is read as
    # E.164 or national like a complete one; None for parts stored before it was kept.
    source_ton: int | None = None
    # Which message of this reference the part belongs to (bridge.domain.mo_sets): two long
    # MOs from one number under one reference are kept apart. 0 for the first.
    set_no: int = 0
    # The national language tables its UDH named for GSM 7-bit text (IE 0x25 locking, 0x24
    # single shift; bridge.text.national), 0 for the default: each part is decoded with its own.
    locking: int = 0
    single: int = 0


@dataclass(frozen=True, slots=True)
class MoMessage:
    id: str
    account_id: str | None
    smsc: str
    source: str
    destination: str
    text: str
    received_at: int
    sign_name: str | None = None  # of the message this MO replies to
    # Set only for a long MO whose other parts never arrived (delivered with what did arrive,
    # flagged): how many parts it announced and the seq numbers received, ascending.
    parts_total: int | None = None
    parts_received: tuple[int, ...] | None = None
    # The text is the hex of the octets (a binary coding, or octets not text in their coding).
    text_hex: bool = False

    @property
    def incomplete(self) -> bool:
        return self.parts_total is not None


@dataclass(frozen=True, slots=True)
class QueueGroup:
    """Unsent work of one (account, route, wait state): the rows of the operator's queue view.

    route: the longest configured route prefix matching the recipients ('' = default route).
    bucket: ready (due now) | claimed (with the dispatcher) | retry_wait (backing off after a
    transient failure or no bind) | parked (its route had no SMSC up: `q_park` set, waiting for
    a bind) | scheduled (scheduled_at in the future).
    """

    account_id: str
    route: str
    bucket: str
    messages: int
    parts: int
    oldest_at: int | None  # earliest scheduled_at or accepted_at of the group


@dataclass(frozen=True, slots=True)
class Sign:
    account_id: str
    name: str
    canonical: str
    source: str
    remark: str
    status: str  # pending | approved | rejected
    reason: str | None
    flag: str | None
    created_at: int
    reviewed_at: int | None = None
    updated_at: int | None = None  # the last correction (edit_sign); None: as submitted


@dataclass(frozen=True, slots=True)
class Template:
    code: str
    account_id: str
    kind: str  # verification | notification | marketing
    name: str
    content: str
    remark: str
    allow_urls: bool
    status: str  # pending | approved | rejected
    reason: str | None
    created_at: int
    reviewed_at: int | None = None
    # Counts corrections of the contents (edit_template): the accept transaction compares the
    # revision a process rendered from its cache with the stored one.
    revision: int = 1
    updated_at: int | None = None  # the last correction; None: as submitted
    # For international (and Hong Kong, Macao, Taiwan) messages: Alibaba's TemplateType 3.
    international: bool = False


@dataclass(frozen=True, slots=True)
class OptOut:
    recipient: str
    source: str  # mo | api
    created_at: int


@dataclass(frozen=True, slots=True)
class DncInfo:
    id: str
    name: str
    country: str | None
    numbers: int
    prefixes: int
    imported_at: int


@dataclass(frozen=True, slots=True)
class TariffRow:
    version: str
    effective_at: int
    body: str  # JSON, bridge.billing.tariffs_json
    created_at: int


@dataclass(frozen=True, slots=True)
class LedgerRow:
    id: int
    account_id: str
    kind: str
    amount: int
    pocket: str
    at: int
    ref: str | None
    expires_at: int | None


@dataclass(frozen=True, slots=True)
class BillRow:
    account_id: str
    month: str
    body: str  # JSON of the settled bill
    settled_at: int


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One operator action (bridge/audit.py). `id` is 0 until stored."""

    at: int
    actor: str  # "api", "api:<X-Operator>", "cli:<OS user>"
    action: str  # "POST /admin/accounts/{ref}/{action}" or "cli account disable"
    target: str  # the request path (numbers masked) or the command's arguments
    status: int  # HTTP status, or the command's exit code
    code: str | None = None  # the refusal's code
    request_id: str | None = None
    remote: str | None = None  # the peer address of an API request
    id: int = 0


@dataclass(slots=True)
class ClockShift:
    """A shift of stored retry times after the wall clock stepped back (Store.clock_stepped_back),
    and how far it got. Each chunk is a write of its own: handed back after a failure, the shift
    goes on after the last chunk that was written, so no row moves twice (a shift tried again
    from the start once moved the rows of its first chunks by twice the step)."""

    by_ms: int  # how far back the clock stepped
    now: int  # when the shift began: webhook retries due after it move
    # The engine's own position: SQLite, the accounts still to do, the current one's keyset
    # cursor and the highest rowid at the start (rows accepted during the shift are not moved);
    # PostgreSQL, the keyset cursor and the messages' sequence at the start (the same).
    accounts: list[str] | None = None
    cursor: tuple[int, object] | None = None
    bound: int = 0
    messages_done: bool = False
    webhooks_done: bool = False
    messages: int = 0  # moved so far
    webhooks: int = 0
