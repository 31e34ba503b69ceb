"""The Store protocol: the one interface both engines (SQLite, PostgreSQL for scale-out) provide.

Callers depend on this and on `bridge.store.models` only, never on an engine, so nothing
SQLite-specific leaks into the API or the pipeline.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, NamedTuple, Protocol, TypedDict, TypeVar, TypeVarTuple

from bridge.domain.admission import Pocket
from bridge.domain.ledger import Entry
from bridge.domain.skew_window import SkewWindow
from bridge.store.models import (
    AcceptBatch,
    AcceptOutcome,
    Account,
    AppKey,
    AuditEntry,
    BillRow,
    ClockShift,
    DncInfo,
    IdempotencyRecord,
    LateAccept,
    LedgerRow,
    MessageRecord,
    MoMessage,
    MoPart,
    OptOut,
    QueueGroup,
    ReceiptIn,
    ReceiptOutcome,
    Reencoding,
    Release,
    Sign,
    SubmitResult,
    TariffRow,
    Template,
    WaitingText,
    WebhookJob,
    WorkMessage,
)

# A parked message is looked at again after this long even if nobody un-parks it: a safety valve
# (an un-park lost with a crash, a route changed by hand); if still down it is parked again.
PARK_MS = 60_000
# A parked message found with its route still down under the same key is parked this long: the
# PARK_MS valve is for what nobody un-parks (a key a restart's new configuration dropped), not
# for a route merely still down. Every PARK_MS, a backlog of a million rows for a route down for
# hours was rewritten ~17,000 rows a second, and the claims' scan went on that, not on working
# routes.
PARK_AGAIN_MS = 10 * PARK_MS
# Rows one un-park transaction changes: a reload un-parking a large backlog holds the write lock
# for one chunk at a time, not for the seconds a million-row UPDATE takes (accepts wait on it).
UNPARK_CHUNK = 5_000
UNPARK_MAX_CHUNKS = 1_000  # one un-park call changes at most this many chunks
# App keys whose last use one SQLite transaction records (`keys_used`).
KEYS_USED_CHUNK = 1_000
# One claim examines at most this many rows per message it may return: a claim behind a large
# parked-to-be backlog stays bounded, and the next claims park the rest.
CLAIM_SCAN_FACTOR = 20


# Closing an account erases its data and revokes its keys for good: nothing reopens it.
CLOSED_MESSAGE = "the account is closed (its data was erased); create a new account instead"
# The error of messages ended unsent because their account was disabled (update_account).
ACCOUNT_DISABLED_ERROR = "ACCOUNT_DISABLED"


class AccountClosed(NamedTuple):
    """What a close wrote off in its transaction (admission.close_plan): the cash owed back to
    the customer (`closed`) and the vouchers' and cards' remainders made void."""

    entries: tuple[Entry, ...] = ()


class LowBalance(NamedTuple):
    """A low-balance crossing the sweep made: a voucher that expired with a remainder took the
    account's available balance (micro) from `before`, at or above its threshold, to `after`,
    below it. Returned so the daemon logs it as a send's crossing is logged (WARNING naming the
    account), not only as a count in the sweep's INFO line."""

    account_id: str
    before: int
    after: int


class Swept(TypedDict):
    """What one sweep did (Store.sweep): counts, and the low-balance crossings it made."""

    expired: int
    timed_out: int
    vouchers_lapsed: int
    balance_warnings: int  # len(low_balance)
    low_balance: list[LowBalance]


class StoreError(Exception):
    """A store refusal callers can turn into an API error (code + message)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Delivered webhook reports are kept this long (nothing reads them once pushed: an operator's
# look at recent deliveries), then purged by the sweep. Without it the outbox grew for ever
# (~12% of the store).
WEBHOOK_RETENTION_MS = 7 * 86_400_000
# The receipt-timeout candidates a sweep reads (both engines), in the sweep's order. A page that
# was full and held back messages not due yet (lifecycle.not_yet_timed_out: split over two
# SMSCs, one waiting longer) is followed at the next sweep by the candidates after it, then the
# pages start over: read from the start each time, 10,000 such messages kept every due message
# behind them from ever being swept.
SWEEP_CANDIDATES = 10_000
# The kinds of store operations under way in chunks of their own transactions (chunked_work,
# smpp_bridge_store_chunked_*).
CHUNKED_KINDS = ("ends", "senders_walk", "erasures")
# An operation in chunks nobody has advanced for this long is finished by the sweep (its
# process stopped): both engines' ends (sqlite_ends.py, postgres_pending_ends.py).
RESUME_AFTER_MS = 30_000


def masked(record: MessageRecord, mask: str | None) -> MessageRecord:
    """`record` as a close's masking leaves its row (sqlite_rules.mask_messages,
    postgres_ends.erase_page; no mask: as it is): what reads answer while the masking runs."""
    if mask is None:
        return record
    return replace(record, recipient=mask, text=None, client_ref=None)


def masked_mo(mo: MoMessage, mask: str | None) -> MoMessage:
    """`mo` as a close's masking of the MO inbox leaves its row (sqlite_ends._mo_chunk,
    postgres_ends.mask_mo_page; no mask: as it is): what get_mo answers while the masking runs.
    The text is gone, as an erased reply's (NULL in the row)."""
    if mask is None:
        return mo
    return replace(mo, source=mask, text=None)  # type: ignore[arg-type]


def clock_from(now: int) -> Callable[[], int]:
    """`now`, the caller's time at the start, plus the time gone since, in ms: what each chunk
    marks its operation worked at (the sweep resumes one left unmarked for RESUME_AFTER_MS)."""
    began = time.monotonic()
    return lambda: now + int((time.monotonic() - began) * 1000)


_Conn = TypeVar("_Conn")
_Out = TypeVar("_Out")
_Args = TypeVarTuple("_Args")


def job_of(f: Callable[[_Conn, *_Args], _Out], *args: *_Args) -> Callable[[_Conn], _Out]:
    """A job for a runner: `f(connection, *args)`, its arguments bound now (a loop's variables,
    as of this turn). The usual `lambda c, a=a: f(c, a)` is one mypy cannot type; this one is
    checked against `f`'s parameters. Positional, as the lambdas were: tests stand fakes with
    other parameter names in for `f`."""
    return lambda c: f(c, *args)


# The outbox's backlog for /metrics, through each engine's indexes on state (SQLite's
# webhook_due; PostgreSQL's partial webhook_due and webhook_dead).
WEBHOOK_BACKLOG = (
    "SELECT (SELECT COUNT(*) FROM webhook_outbox WHERE state = 'pending'), "
    "(SELECT COUNT(*) FROM webhook_outbox WHERE state = 'dead'), "
    # A replayed dead letter's age starts at its replay (retry_from), as its retry window does:
    # from its creation, replaying day-old reports fired SmppBridgeWebhooksLate at once.
    "(SELECT MIN(CASE WHEN retry_from > created_at THEN retry_from ELSE created_at END) "
    "FROM webhook_outbox WHERE state = 'pending')"
)
# Rows one purge statement deletes: the first sweep after a long stop has minutes of traffic to
# drop, which as one statement held a SQLite daemon's event loop for seconds.
PURGE_CHUNK = 2000
# Finished messages one retention chunk deletes: a message is its row, its parts and a dozen
# index entries; 2,000 of them held a SQLite daemon's event loop ~15 ms, 500 hold it ~4.
RETENTION_CHUNK = 500
# Chunks per table per retention run (every minute): 1,000,000 messages, beyond any steady rate.
RETENTION_MAX_CHUNKS = 2000


class StoreInUseError(StoreError):
    """Another daemon owns this SQLite store (SqliteRunner.hold_ownership)."""

    def __init__(self, message: str) -> None:
        super().__init__("STORE_IN_USE", message)


class StoreUnusableError(StoreError):
    """The store file cannot be used by this process (read, write, open); names the file."""

    def __init__(self, message: str) -> None:
        super().__init__("STORE_UNUSABLE", message)


class StoreClosedError(RuntimeError):
    """The store was closed under a running caller (shutdown, or a failed start)."""


# SQLite result codes (the low byte) that mean the database cannot be used right now, not that
# a statement is wrong: busy or locked past the timeout, I/O error, disk full, cannot open,
# read-only file, out of memory, WAL lock protocol.
_SQLITE_UNAVAILABLE = frozenset({5, 6, 7, 8, 10, 13, 14, 15})


def is_unavailable(exc: BaseException) -> bool:
    """A failure of the store itself, which a client may retry after a while (HTTP 503
    STORE_UNAVAILABLE with Retry-After), as opposed to a fault in our code (500): connection
    lost or refused, failover to a read-only standby, disk full, store closed."""
    if isinstance(exc, StoreClosedError | ConnectionError | TimeoutError | OSError):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in _SQLITE_UNAVAILABLE
    pg = sys.modules.get("asyncpg.exceptions")  # only when the PostgreSQL engine is in use
    return pg is not None and isinstance(
        exc,
        pg.PostgresConnectionError
        | pg.InterfaceError
        | pg.OperatorInterventionError  # admin shutdown, crash shutdown, cannot connect now
        | pg.InsufficientResourcesError  # too many connections, disk full, out of memory
        | pg.ReadOnlySQLTransactionError  # the primary became a standby
        # A pooled connection that read the server's FATAL (a shutdown) while idle, handed
        # out before its close was read: "another operation is in progress". Was a 500.
        | pg.InternalClientError,
    )


def report_inferred(store: Any, counts: dict[str, int]) -> None:
    """Tell the store's `on_inferred` (the daemon's smpp_bridge_receipts_inferred metric) the
    parts, by SMSC, a committed write settled on another part's receipt: both engines."""
    if counts and store.on_inferred is not None:
        store.on_inferred(counts)


class WriteLockStats(NamedTuple):
    """One process's use of the SQLite store's single write lock, since it opened the store:
    seconds held (writing batches, finishing WAL checkpoints; from when its lock thread took it),
    seconds its batches waited for another process to release it, commits, jobs committed, the
    CPU seconds the holding thread used while it held the lock, and the WAL fsyncs its durable
    commits waited for with their seconds (the disk's share of an accept's latency)."""

    held_s: float
    wait_s: float
    commits: int
    jobs: int
    cpu_s: float = 0.0
    fsyncs: int = 0
    fsync_s: float = 0.0


class Store(Protocol):
    # rules.timezone: the days of the daily quota (lifecycle.never_reached gives places back).
    # Set by configure_store at opening and at each reload; the engines' roll-ups read it from
    # their connection, so no store function takes it as a parameter.
    quota_tz: str
    # Whether writes handed over one after another commit in that order: SQLite's group commit
    # runs its jobs in turn on one connection; PostgreSQL's take pooled connections and race.
    # Callers whose writes must keep their order (the receipts' batcher) keep one in flight
    # where they would not.
    commits_in_order: bool
    # Status reports queued by claims since opening: a claim rolls up the messages it finds with
    # nothing to send (Store.claim), and their reports are in the outbox once it returns. The
    # dispatcher wakes the webhook sender when a claim raised it (else they waited for its poll).
    claim_reports: int

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> bool: ...
    def write_problem(self) -> str | None:
        """Why writes fail now though reads work (a full disk), for /readyz; None if none."""
        ...

    def write_lock_stats(self) -> WriteLockStats | None:
        """The SQLite write lock's use by this process (smpp_bridge_store_write_lock_*); None
        for an engine without one lock for all writers (PostgreSQL)."""
        ...

    async def schema_version(self) -> int: ...

    # The schema version this store found when it opened, before its migrations ran (None
    # before open): `db migrate` says what it upgraded from.
    migrated_from: int | None

    # accounts and keys
    async def create_account(self, account: Account) -> None: ...
    async def get_account(self, account_id: str) -> Account | None: ...
    async def get_account_by_name(self, name: str) -> Account | None: ...
    async def list_accounts(self) -> list[Account]: ...
    async def update_account(
        self, account_id: str, changes: dict[str, Any], now: int, *, assigned_only: bool = False
    ) -> Account | None:
        """Apply `changes`; a closed account is left as it is. Disabling an active account also
        ends its messages still waiting in the queue, scheduled ones included, unsent with
        ACCOUNT_DISABLED_ERROR and refunded, before it returns (from its transaction on, in
        chunks nothing is sent from: sqlite_ends.py, postgres_pending_ends.py; a `senders`
        change on PostgreSQL in its one transaction, sqlite_senders.py): an operator disables
        an account to stop its traffic (a leaked key, fraud), and a campaign it scheduled kept
        going out. Messages already handed to an SMSC finish. So do `marketing` or `raw_text`
        turned off (REVOKED_SENDS), and a `senders` change for every account's waiting messages
        whose sender their account may no longer use (`assigned_only`: the
        rules.sender_policy assigned), with SENDER_NOT_ALLOWED."""
        ...

    async def add_key(self, key: AppKey, max_active: int) -> None: ...
    async def get_key(self, key_id: str) -> AppKey | None: ...
    async def list_keys(self, account_id: str) -> list[AppKey]: ...
    async def revoke_key(self, key_id: str, now: int) -> bool: ...
    async def keys_used(self, used: Mapping[str, int]) -> None:
        """Move each key's `last_used_at` on to its time in `used` (ms), never back: processes
        and instances flush what they noted in any order. Not durable (the time is advisory);
        an unknown key id is ignored."""
        ...

    async def use_nonce(self, key_id: str, nonce: str, expires_at: int, now: int) -> bool: ...
    async def authorize_request(
        self, key_id: str, nonce: str, expires_at: int, now: int
    ) -> tuple[str, Account | None]: ...
    async def skew_window(self, face: str, skew_s: int, now: int) -> SkewWindow:
        """The window of request dates `face` ("native", "aliyun") accepts, for a process
        starting with `skew_s`: recorded if it changed (bridge/domain/skew_window.py)."""
        ...

    async def route_table(self) -> str | None:
        """The route table the dispatcher last kept (`keep_route_table`), None before any."""
        ...

    async def keep_route_table(self, table: str, now: int) -> None:
        """Keep `table` (Router.to_json) once the waiting messages are encoded for it."""
        ...

    # acceptance and queries
    async def get_idempotency(
        self, account_id: str, key: str, now: int
    ) -> IdempotencyRecord | None: ...
    async def accept(self, batch: AcceptBatch, now: int) -> AcceptOutcome: ...
    async def take_idempotency(
        self, account_id: str, key: str, request_hash: str, until: int, now: int
    ) -> IdempotencyRecord | None:
        """Take `key` for a request about to run (a placeholder, status 0, until `until`): None
        when taken, else the live record that holds it (an answer, or a request running)."""
        ...

    async def keep_idempotency(
        self, account_id: str, key: str, record: IdempotencyRecord, expires_at: int
    ) -> None:
        """The answer of the request that took `key`, kept until `expires_at`."""
        ...

    async def give_back_idempotency(self, account_id: str, key: str, request_hash: str) -> None:
        """The request that took `key` failed or was refused: the key is free again."""
        ...

    async def get_message(self, account_id: str, message_id: str) -> MessageRecord | None: ...
    async def audit_add(self, entry: AuditEntry) -> None:
        """Append one operator action to the audit trail (durable, like an accept)."""
        ...

    async def audit_page(
        self, after: int, limit: int, since: int = 0, until: int = 2**62
    ) -> list[AuditEntry]:
        """The trail oldest first: ids after `after`, `since` <= at < `until`."""
        ...

    async def sealed_secrets(self) -> list[tuple[str, str, bytes]]:
        """(kind "account" | "key", row id, sealed blob) of every stored secret."""
        ...

    async def reseal(self, kind: str, row_id: str, old: bytes, new: bytes) -> bool:
        """Replace a sealed secret if it is still `old`; False when it changed meanwhile."""
        ...

    async def message_held(self, message_id: str) -> bool:
        """Whether the message was held while on a bind (messages.end_error set: an opt-out, a
        disable, a deletion...): the connector asks before it resends a part."""
        ...

    async def list_messages(
        self,
        account_id: str,
        *,
        recipient: str | None = None,
        since: int | None = None,
        until: int | None = None,
        state: str | None = None,
        before_id: str | None = None,
        limit: int = 50,
        batch_id: str | None = None,
    ) -> list[MessageRecord]: ...
    async def queue_depth(self, due_at: int | None = None) -> int:
        """Segments not yet sent of queued and claimed messages; with `due_at`, only those of
        messages due by then (scheduled ones later are no backlog: they do not fill
        back-pressure)."""
        ...

    async def stats(
        self,
        account_id: str,
        since: int,
        until: int,
        tz_offset_ms: int,
        *,
        prefix: str | None = None,
        within: bool = True,
        sign_name: str | None = None,
        kind: str | None = None,
    ) -> list[dict[str, Any]]:
        """Per-day counts; with `prefix`, only recipients starting with it (`within`) or only
        the others (not `within`); with `sign_name` / `kind`, only that sign's / template
        kind's messages."""
        ...

    # pipeline
    async def recover(
        self, instance: str, now: int, unknown_smscs: frozenset[str]
    ) -> dict[str, int]: ...
    async def reclaim(self, now: int, unknown_smscs: frozenset[str]) -> dict[str, int]:
        """Periodic: requeue claims whose lease expired or whose instance is gone (several
        instances on one database); same result shape as `recover`."""
        ...

    async def renew_claims(self, instance: str, ids: list[str], lease_until: int) -> int:
        """Extend the lease of the messages `ids` this instance still has claimed (the
        dispatcher, every lease/3): how many it still had."""
        ...

    async def after_restore(self, now: int, *, dry_run: bool = False) -> dict[str, int]:
        """Once, on a store just restored from a backup, with no daemon running on it: every
        message the backup had waiting to send (queued and due by `now`, or on a bind) may
        have gone out after the backup was taken, so its parts not known to be sent end
        `timeout` with RESTORED_FROM_BACKUP (the message `unknown`, billed and reported as
        one whose outcome never came) instead of being sent again. Messages scheduled after
        `now` stay queued. Raises StoreInUseError while a daemon runs on the store. Returns
        {"ended_unknown": n, "scheduled_kept": m}. Works a bounded page per transaction (a
        million may wait): a run stopped part-way is finished by the next, each message ended,
        refunded and reported once."""
        ...

    async def claim(
        self,
        instance: str,
        limit: int,
        now: int,
        lease_ms: int,
        park: Callable[[str], str | None] | None = None,
        routable: Collection[str] = (),
    ) -> list[WorkMessage]:
        """Claim up to `limit` due messages: round-robin over accounts, then the oldest.

        `park` maps a recipient to the key of its route when no SMSC of that route is up here
        (None: sendable now). Such candidates are parked (`q_park` = key, q_not_before = now +
        PARK_MS, or PARK_AGAIN_MS when found still down under the same key) instead of claimed,
        do not count toward `limit`, and the scan goes on, up to CLAIM_SCAN_FACTOR x `limit`
        rows. Claimed and released again, a backlog for a down route went ahead of every later
        message for a working route each time it came due. Parked messages stay queued (depth,
        expiry, erasure treat them so).

        `routable`: the park keys of routes with an SMSC up on this instance. Messages parked
        under them are claimed directly (up to half the claim first, then the due ones, then
        parked ones fill the room left): on PostgreSQL another instance, without the bind, may
        have parked them, and un-parking them for everyone let that instance park them again.

        A claim that raised took nothing the caller must give back: on PostgreSQL one whose
        COMMIT got no answer may have been committed, and the store gives back what it took
        before its next claim or reclaim."""
        ...

    async def clock_stepped_back(
        self,
        by_ms: int,
        now: int,
        leased_webhooks: Collection[int],
        progress: ClockShift | None = None,
    ) -> tuple[int, int]:
        """The wall clock stepped back `by_ms`: queued messages' next try (every one stored
        before the shift began, due or not, so their order holds) and webhook retries due after
        `now` move as much earlier (scheduled messages and the leases in `leased_webhooks` keep
        theirs). With `progress` (ClockShift(by_ms, now)), where the shift got to is kept there
        as it goes: handed back after a failure, it goes on without moving a row twice.
        Returns (messages, reports) moved by this call."""
        ...

    async def waiting_texts(
        self, after: tuple[Any, ...] | None, limit: int
    ) -> tuple[list[WaitingText], tuple[Any, ...] | None]:
        """Up to `limit` queued messages never tried and with their text, in the queue index's
        order after the cursor `after` (None: from the start), with their parts; and the cursor
        to go on from (None at the end). For re-encoding after a reload (the dispatcher claims
        nothing meanwhile)."""
        ...

    async def reencode(
        self,
        changes: Sequence[Reencoding],
        now: int,
        restamps: Sequence[tuple[str, int | None, int]] = (),
        claimed_by: str | None = None,
    ) -> int:
        """Replace the parts (and encoding, data_coding, segments, wire) of each message still
        queued, never tried and as read; the number replaced. `restamps` (id, wire as read,
        wire): messages whose parts are already right for `wire`, which gets only the stamp,
        if still as read. With `claimed_by`, the messages are those claimed by that instance
        instead of queued ones (the dispatcher found them encoded for other wire options)."""
        ...

    async def claimed_text(self, instance: str, message_id: str) -> WaitingText | None:
        """A message claimed by `instance` and never tried, with its text and parts (as
        `waiting_texts` reads them); None when it is not that, or has no text kept."""
        ...

    async def unpark(self, keys: Collection[str], now: int) -> int:
        """Make the messages parked under `keys` due at `now` (their route has a live SMSC
        again, on this instance at least); returns how many. Cheap when none are parked."""
        ...

    async def record_late_submits(self, items: list[LateAccept], now: int) -> int:
        """Parts the SMSC accepted after their submit_sm timed out: each whose part is still
        queued and whose message was released and not claimed again is recorded as sent, as
        by `record_submits` (a receipt already waiting is applied, a message with nothing left
        to send leaves the queue). Returns how many were recorded."""
        ...

    async def record_routes(self, instance: str, routes: list[tuple[str, str]]) -> set[str]:
        """(message id, SMSC) of claimed messages whose first part is about to leave, durably:
        `recover`/`reclaim` then know a message in flight went to an `in_flight_on_restart:
        unknown` SMSC even when no answer of it was recorded. Returns the ids taken: a message
        missing there is no longer claimed by `instance` and must not be sent."""
        ...

    async def record_submits(
        self,
        results: list[SubmitResult],
        releases: list[Release],
        now: int,
        *,
        instance: str | None = None,
    ) -> int:
        """Submit results and releases. With `instance`, a release applies only to a message that
        instance still holds: one whose claim another instance took back is not requeued under
        its new owner. A part accepted is recorded regardless (it did leave, and its receipt
        must match); a part's end (failed, unknown, expired) only while no other instance holds
        the message (its parts are that one's to send now), and it ends the parts after it only
        when its own part was still queued (a late or repeated end ends nothing sent since).
        Returns how many status reports it queued (a message the SMSC refused ends here, and
        with `webhooks.send_intermediate` the "sent" ones), as `apply_receipts` counts its own:
        the owner wakes its webhook sender for them. (A "sent" report the sender reaches only after
        the message's receipt is not pushed, so waiting for its poll lost most of them.)"""
        ...

    async def apply_receipts(self, receipts: list[ReceiptIn], now: int) -> ReceiptOutcome: ...
    async def infer_earlier_receipts(
        self, smscs: Collection[str], now: int, limit: int = 500
    ) -> int:
        """Settle up to `limit` messages whose receipt for one part came before its SMSC (one
        of `smscs`) was `receipts: one_per_message`, their other parts still sent: they take its
        outcome (lifecycle.infer_earlier). Returns how many messages were found."""
        ...

    async def sweep(
        self,
        now: int,
        receipt_timeout_ms: int,
        records_now: int | None = None,
        smsc_validity_ms: Mapping[str, int] | None = None,
        silent_smscs: Collection[str] = (),
    ) -> Swept:
        """Validity expiry, receipt timeouts (by lifecycle.receipt_deadline: the timeout, or the
        validity's end and a margin when later; `smsc_validity_ms` is each SMSC's
        smscs[].validity_minutes in ms; `silent_smscs`, those asked for no final receipt),
        vouchers and cards that expired with a remainder written off (with the low-balance
        crossings that made, each event queued), purges. Nonce and idempotency records expire
        by `records_now` (default `now`): the daemon passes the wall clock less any forward step
        (bridge/clockstep.py), so a step forward that is corrected does not purge them early."""
        ...

    async def refresh_stats(self) -> list[str]:
        """Refresh the query planner's statistics of busy tables that have doubled since their
        last analysis; the tables' names (bridge/store/postgres_stats.py says why). Nothing to
        do for an engine whose plans do not go stale (SQLite)."""
        ...

    # Retention (bridge/retention.py)
    async def oldest_message_at(self) -> int | None:
        """When the oldest message still stored was made (its id's time), None if none is."""
        ...

    async def unbilled_accounts(self, month: str, end: int) -> list[str]:
        """Ids of the accounts created before `end` (the month's end) that have no bill for
        `month`: who needs a bill, for automatic settlement and for the retention's hold."""
        ...

    async def purge_history(
        self,
        messages_before: int,
        before: int,
        day: str,
        held: Mapping[str, int] | None = None,
    ) -> dict[str, int]:
        """Delete finished messages (and their parts) accepted before `messages_before` and
        ended by `before`; then, for each account, those accepted from `messages_before` up to
        `before`, or up to its start in `held` (account -> the start of its oldest month
        without a bill; `messages_before` is the earliest of those); MO and dead-lettered
        webhook reports from before `before`, and daily counts of days before `day`
        (YYYY-MM-DD). Counts per kind."""
        ...

    async def unmatched_receipts(self, older_than: int, limit: int) -> list[dict[str, Any]]: ...

    # MO
    async def add_mo_part(self, part: MoPart) -> list[MoPart] | None: ...
    async def drop_mo_parts(
        self, smsc: str, source: str, destination: str, ref: int, set_no: int = 0
    ) -> None:
        """Drop the kept parts of one message: `ref` and its set (MoPart.set_no)."""

    async def store_mo(self, mo: MoMessage) -> bool:
        """Store the MO (and queue its push when attributed); False when one with its id is
        stored already (a redelivery, or a sweep redone after a crash): kept once, pushed once."""
        ...

    async def sender_assignments(self) -> list[tuple[str, tuple[str, ...]]]:
        """(account, senders) of every account not closed whose list is not empty."""
        ...

    async def attribute_mo(
        self,
        source: str,
        senders: Sequence[str],
        now: int,
        *,
        default: bool = False,
        accounts: Sequence[str] = (),
    ) -> tuple[str, str | None] | None:
        """(account, sign name) of the latest message to `source` in 30 days from one of
        `senders` (or from the SMSC default, `default`); only `accounts`' messages when given
        (the accounts an operator assigned the address to)."""

    async def stale_mo_groups(self, older_than: int, limit: int) -> list[list[MoPart]]:
        """The kept parts of long MOs whose newest part came before `older_than`: the rest is
        not coming. One list per (smsc, source, destination, ref), in seq order; the groups
        that started earliest first, at most `limit`. Read only: the parts stay until
        `drop_mo_parts`, after the MO made of them is stored."""
        ...

    async def store_mo_from_parts(
        self, mo: MoMessage | None, parts: Sequence[MoPart]
    ) -> bool | None:
        """Store `mo` (None: only drop) and drop `parts`, in one transaction, but only if the
        group's kept parts are still exactly `parts`: the sweep's step for one stale group (a
        part that arrived since the read is neither lost nor pushed twice), and `_mo`'s store
        of a complete long MO (an erasure of the number since add_mo_part read the parts took
        them: the erased text is not stored after it). None when the group changed and nothing
        was done; else whether `mo` was newly stored."""
        ...

    # instances (heartbeats with each process's view of its binds)
    async def heartbeat(self, instance: str, role: str, now: int, status: str) -> None: ...
    async def instances(self, since: int) -> list[tuple[str, str, int, str]]: ...

    # webhooks
    async def claim_webhooks(
        self,
        now: int,
        limit: int,
        lease_ms: int,
        exclude: Sequence[str] = (),
        *,
        holder: str | None = None,
    ) -> list[WebhookJob]: ...
    async def webhook_backlog(self) -> tuple[int, int, int | None]:
        """(reports pending, reports dead-lettered, created_at of the oldest pending one or
        None): what `/metrics` shows, so a customer's endpoint down for an hour is seen."""
        ...

    async def chunked_work(self) -> dict[str, tuple[int, int | None]]:
        """Operations under way in chunks of their own transactions (an end of many waiting
        messages or a close's masking `ends`, a senders change's walk `senders_walk`, an
        erasure's masking of stored answers or a close's deletion of them `erasures`), by
        kind: (how many, when the least recently worked one was last worked, or None). What
        `/metrics` shows, so one stuck (its chunk failing at every try of the sweep) is seen.
        PostgreSQL has ends and a close's deletion of stored answers; it runs the others in one
        transaction."""
        ...

    async def free_webhook_leases(self, now: int, *, at_start: bool) -> int:
        """Reports leased by a sender that died mid-POST: due at once (sent again, same
        webhook_id: at-least-once) rather than after their lease, 40 s by default. Returns
        how many."""
        ...

    async def webhook_done(self, ids: list[int], now: int, lease: int | None = None) -> None: ...
    async def webhook_retry(
        self, ids: list[int], next_at: int, error: str, dead: bool, lease: int | None = None
    ) -> None: ...
    async def webhook_release(self, ids: list[int], lease: int, now: int) -> None: ...
    async def dead_webhooks(self, account_id: str | None, limit: int) -> list[dict[str, Any]]: ...
    async def replay_webhooks(self, ids: list[int], now: int) -> int: ...
    async def enqueue_event(
        self, account_id: str, kind: str, payload: str, webhook_id: str, now: int
    ) -> None: ...
    async def get_mo(self, mo_id: str) -> MoMessage | None: ...

    # reports and operator views (read-only; SQL of the SQLite engine in sqlite_reports.py)
    async def cdr_page(
        self, account_id: str, since: int, until: int, after: tuple[int, str] | None, limit: int
    ) -> list[MessageRecord]: ...
    async def queue_groups(self, now: int, route_prefixes: Iterable[str]) -> list[QueueGroup]: ...
    async def count_unmatched_receipts(self, older_than: int) -> tuple[int, int]: ...
    async def count_dead_webhooks(self, account_id: str | None) -> int: ...
    async def unattributed_mo(self, before: tuple[int, str] | None, limit: int) -> list[MoMessage]:
        """Replies stored for no account (what smpp_bridge_mo_unattributed_total counts), newest
        first, (received_at, id) descending: up to `limit` after `before`, the (received_at, id)
        of the last one a page showed. Walks the (account_id, received_at) index."""
        ...

    # sending rules (signs, templates, opt-outs, do-not-contact lists)
    async def add_sign(self, sign: Sign) -> None: ...
    async def get_sign(self, account_id: str, name: str) -> Sign | None: ...
    async def list_signs(
        self, account_id: str | None = None, status: str | None = None, limit: int = 500
    ) -> list[Sign]: ...
    async def review_sign(
        self, account_id: str, name: str, status: str, reason: str | None, now: int
    ) -> Sign | None: ...
    async def edit_sign(self, sign: Sign) -> bool:
        """Store the correction `sign` (pending again) if the stored one is rejected."""
        ...

    async def delete_sign(self, account_id: str, name: str, now: int) -> int | None:
        """Delete the account's sign name; None when it has none so named. Its messages still
        waiting (queued, scheduled) end unsent with SIGN_DELETED, refunded: how many."""
        ...

    async def add_template(self, t: Template) -> None: ...
    async def get_template(self, code: str) -> Template | None: ...
    async def list_templates(
        self, account_id: str | None = None, status: str | None = None, limit: int = 500
    ) -> list[Template]: ...
    async def review_template(
        self, code: str, status: str, reason: str | None, now: int, revision: int | None = None
    ) -> Template | None:
        """Decide; with `revision`, only that revision (otherwise the template as it is now,
        undecided). None when there is no such template."""
        ...

    async def edit_template(self, t: Template) -> bool:
        """Store the correction `t` (revision counted) over revision t.revision - 1 of its
        template, if that is still the stored one and rejected; False otherwise."""
        ...

    async def delete_template(self, account_id: str, code: str, now: int) -> int | None:
        """Delete the account's template; None when it has none with that code. Its messages
        still waiting end unsent with TEMPLATE_DELETED, refunded: how many. Messages already
        sent keep the code in their records and reports."""
        ...

    async def add_optouts(
        self, account_id: str, numbers: Sequence[str], source: str, now: int
    ) -> int: ...
    async def remove_optout(
        self, account_id: str, number: str, *, sources: Collection[str] | None
    ) -> str | None:
        """Delete the entry only if its source is in `sources` (None: whatever the source).

        Returns the source of the entry found, whether deleted or kept (deleted iff it is in
        `sources`), or None when the number is not on the list. Reading the source and deleting
        are one transaction: a customer may delete only `api` entries, and a check made apart
        from the delete could remove an entry a reply (`mo`) had just claimed."""
        ...

    async def list_optouts(
        self, account_id: str, after: str | None = None, limit: int = 100
    ) -> list[OptOut]: ...
    async def import_dnc(
        self, info: DncInfo, numbers: Iterable[str], prefixes: Iterable[str]
    ) -> int:
        """Replace the list; queued and scheduled messages it now blocks end unsent
        (RECIPIENT_BLOCKED, refunded). Returns how many."""
        ...

    async def list_dnc(self) -> list[DncInfo]: ...
    async def delete_dnc(self, list_id: str) -> bool: ...
    async def dnc_blocks(self, number: str) -> bool: ...

    # billing (tariffs, ledger, settlement)
    async def add_tariff(self, row: TariffRow) -> None: ...
    async def list_tariffs(self) -> list[TariffRow]: ...
    async def append_ledger(
        self, account_id: str, entries: Sequence[Entry], *, once: bool = False
    ) -> bool:
        """Append; with `once`, nothing when the account already has an entry of the first
        entry's kind and ref (a payment retried after a lost answer). True when appended."""
        ...

    async def pay_refund(
        self, account_id: str, amount: int, ref: str, now: int
    ) -> list[Entry] | None:
        """Record that `amount` of what a closed account is owed back was paid, under the
        payout's `ref` (a `refund_paid` entry), in one transaction with its checks
        (rules_rows.plan_refund_paid): the entries appended, or None for a retry of a payout
        already recorded (the same ref and amount)."""
        ...

    async def get_pockets(self, account_id: str) -> list[Pocket]: ...
    async def ledger_page(
        self, account_id: str, after_id: int = 0, limit: int = 100
    ) -> list[LedgerRow]: ...
    async def ledger_sums(self, account_id: str) -> dict[str, int]: ...
    async def usage_groups(
        self, account_id: str, start: int, end: int, boundaries: Sequence[int]
    ) -> list[tuple[int, int, int, str, int, str, int, int]]: ...
    async def voucher_charges(
        self, account_id: str, start: int, end: int, boundaries: Sequence[int] = ()
    ) -> list[tuple[str, int, str, int, int | None]]: ...
    async def save_bill(self, bill: BillRow, entries: Sequence[Entry]) -> bool: ...
    async def get_bill(self, account_id: str, month: str) -> BillRow | None: ...

    # erasure
    async def erase_recipient(
        self,
        account_id: str,
        number: str,
        masked: str,
        now: int,
        mo_sources: Sequence[str] | None = None,
        *,
        mo_defaults: Mapping[str, str] | None = None,
    ) -> int:
        """Mask `number` in the account's messages and MOs and drop their text; drop the waiting
        parts of long MOs from it that reply to the account (received from one of `mo_sources`,
        phone.mo_source_forms; its international forms when None): to an address it wrote to
        the number from, any when it wrote from the SMSC's default source, and any address it
        holds alone by assignment (senders.held_alone; `mo_defaults`, the SMSCs' default
        sources by name, which a range does not claim). Returns how many messages were erased.

        An MO being assembled from such parts meanwhile is either stored before (and masked by
        the erasure) or finds its parts gone and is not stored (store_mo_from_parts): erased
        text never lands after the erasure."""
        ...

    async def cancel_queued(
        self,
        account_id: str,
        now: int,
        *,
        message_id: str | None = None,
        batch: tuple[str, int] | None = None,
    ) -> tuple[int, int]:
        """End this account's message (`message_id`), or a batch's (`batch`: its id and the
        accepted_at its id carries), that still wait in the queue, scheduled ones included, as
        expired CANCELED, refunded like any message that ends unsent. (canceled, found): those
        found but not canceled are on a bind, sent or final."""
        ...

    async def close_account(
        self,
        account_id: str,
        now: int,
        mo_prefixes: Sequence[str] = (),
        *,
        mo_defaults: Mapping[str, str] | None = None,
    ) -> AccountClosed | None:
        """Close the account (None: no such account): keys revoked, its waiting messages ended
        and refunded, texts and numbers erased, the waiting parts of long MOs that erasing each
        of its numbers would drop dropped (their national forms for the SMSCs' `mo_prefixes`,
        as erase_recipient's mo_sources), with those from anyone to an address it holds alone
        (`mo_defaults` as erase_recipient's), and what its pockets still hold written off in the
        same transaction (admission.close_plan), so a closed account holds no money the ledger
        does not account for. A repeat writes off nothing more."""
        ...

    async def ledger_kind_sums(self, account_id: str) -> dict[str, int]:
        """The account's ledger summed by entry kind (the close's answer: `closed` is the cash
        owed back to the customer, over the close and any credit after it)."""
        ...
