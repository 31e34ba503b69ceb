"""PostgreSQL engine of the Store protocol: several daemon instances share one database.

Same semantics as the SQLite engine (tests/integration/test_store.py runs against both); what this
engine adds is correctness under concurrent instances:

- accept is one transaction (authorisation + nonce, idempotency record, rate bucket, messages,
  parts). Nonces and idempotency keys are primary keys written with `ON CONFLICT ... WHERE
  expired`: a concurrent second writer waits for the first and then sees its row, so a nonce is
  accepted once and a key accepts one batch. The account's rate bucket row is locked (`FOR
  UPDATE`) so instances share one rate.
- an accept under sending rules (AcceptBatch.rules) first locks the account row (`FOR NO KEY
  UPDATE`), then reads the facts it decides on (balance, today's count, frequency history,
  opt-outs...) in a later statement, so concurrent accepts of one account on any instance decide
  one after another: none can spend a balance or a frequency allowance another just took.
- claims (messages, webhooks) use `FOR UPDATE SKIP LOCKED`, with a lease; see
  postgres_pipeline.py for the per-message locking of results and receipts.
- migrations run under an advisory lock, so instances starting together migrate once.

The pipeline SQL is in postgres_pipeline.py, the reports in postgres_reports.py, transactions in
postgres_tx.py, cross-instance coordination (bind ownership, wake-ups) in postgres_coord.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from operator import attrgetter
from typing import Any

import asyncpg

from bridge.domain import admission as adm
from bridge.domain import lifecycle as lc
from bridge.domain import mo_sets
from bridge.domain.rate import bucket_take
from bridge.domain.skew_window import SkewWindow, next_window
from bridge.ids import id_time_ms
from bridge.store import migrate, postgres_clock, postgres_stats
from bridge.store import postgres_ends as ends
from bridge.store import postgres_pending_ends as pending_ends
from bridge.store import postgres_pipeline as pipe
from bridge.store import postgres_reports as reports
from bridge.store import postgres_restore as restored
from bridge.store import postgres_rules as rules_sql
from bridge.store.account_rows import ACCOUNT_COLS as _ACCOUNT_COLS
from bridge.store.account_rows import ASSIGNMENTS_SQL as _ASSIGNMENTS_SQL
from bridge.store.account_rows import (
    AUDIT_COLS,
    AUDIT_PAGE,
    RESEAL,
    REVOKED_SENDS,
    SEALED_SECRETS,
    audit_row,
    audit_values,
    cache_size,
    column_value,
    refusal_of,
    senders_of,
)
from bridge.store.account_rows import KEY_COLS as _KEY_COLS
from bridge.store.account_rows import account_row as _account
from bridge.store.account_rows import key_row as _key
from bridge.store.base import (
    ACCOUNT_DISABLED_ERROR,
    CLOSED_MESSAGE,
    UNPARK_CHUNK,
    UNPARK_MAX_CHUNKS,
    WEBHOOK_BACKLOG,
    LowBalance,
    StoreClosedError,
    StoreError,
    StoreUnusableError,
    Swept,
    WriteLockStats,
    is_unavailable,
    masked,
    masked_mo,
    report_inferred,
)
from bridge.store.mo_rows import (
    MO_COLS,
    MO_PART_COLS,
    group_mo_parts,
    mo_message,
    mo_part,
    mo_part_values,
    mo_values,
)
from bridge.store.models import (
    ACCOUNT_MUTABLE,
    AcceptBatch,
    AcceptOutcome,
    Account,
    AppKey,
    AuditEntry,
    ClockShift,
    IdempotencyRecord,
    MessageRecord,
    MoMessage,
    MoPart,
    NewMessage,
    NewSegment,
    QueueGroup,
    ReceiptIn,
    ReceiptOutcome,
    Reencoding,
    Release,
    SegmentRecord,
    SubmitResult,
    WaitingText,
    WebhookJob,
    WorkMessage,
)
from bridge.store.postgres_arrays import bytea_array, int_array, text_array
from bridge.store.postgres_confirm import Confirmer
from bridge.store.postgres_grants import missing_grants
from bridge.store.postgres_retention import RetentionMixin
from bridge.store.postgres_rules import RulesStoreMixin
from bridge.store.postgres_tx import RETRYABLE as RETRYABLE_TX
from bridge.store.postgres_tx import (
    Job,
    T,
    create_pool,
    run_reads,
    run_tx,
    scalar,
    session_settings,
)
from bridge.store.postgres_webhooks import UnsureWebhookClaims
from bridge.store.rules_rows import LOW_WARNED_ON_THRESHOLD, NEVER_TRIED

log = logging.getLogger("bridge.store")

_BOOL_COLS = frozenset({"raw_text", "marketing"})
CLOSE_TIMEOUT_S = 3.0  # the pool's graceful close (ms when the server answers); then cut
_N_ACCOUNT_COLS = len(_ACCOUNT_COLS.split(","))
_MESSAGE_COLS = (
    "id, account_id, batch_id, client_ref, recipient, sender, sign_name, template, text, encoding, "
    "data_coding, segments, billable_units, segments_sent, segments_delivered, segments_failed, "
    "state, error_code, error_text, smsc, accepted_at, scheduled_at, expires_at, sent_at, done_at"
)

# Key status and account in one statement with the nonce write; the nonce is recorded only for an
# active key, and only if new or expired (a concurrent duplicate waits, then sees it: a replay).
# FOR SHARE OF a, here and in the one-statement send: a disable's or a close's lock on the
# account row waits for the accepts that read it, and an accept that comes after it waits for
# its commit and reads the row as it left it (disabled: refused). Without it, an accept that
# read the account active committed its message after the disable had ended the waiting ones,
# and the claims, which do not look at the account, sent it (session 42's review of the close).
_AUTHORIZE = f"""
WITH k AS (
    SELECT k.status AS key_status, {", ".join(f"a.{c.strip()}" for c in _ACCOUNT_COLS.split(","))}
    FROM app_keys k JOIN accounts a ON a.id = k.account_id WHERE k.key_id = $1 FOR SHARE OF a
), n AS (
    INSERT INTO nonces (key_id, nonce, expires_at)
    SELECT $1, $2, $3 FROM k WHERE k.key_status = 'active'
    ON CONFLICT (key_id, nonce) DO UPDATE SET expires_at = EXCLUDED.expires_at
    WHERE nonces.expires_at <= $4
    RETURNING 1
)
SELECT k.*, (SELECT COUNT(*) FROM n) AS fresh FROM k
"""

_STORE_IDEMPOTENCY = (
    "INSERT INTO idempotency (account_id, key, request_hash, status_code, response, expires_at) "
    "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (account_id, key) DO UPDATE SET "
    "request_hash = EXCLUDED.request_hash, status_code = EXCLUDED.status_code, "
    "response = EXCLUDED.response, expires_at = EXCLUDED.expires_at "
    "WHERE idempotency.expires_at <= $7 RETURNING 1"
)

_MESSAGE_ARRAYS = """
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
        $7::text[], $8::text[], $9::text[], $10::text[], $11::int[], $12::int[], $13::int[],
        $14::bigint[], $15::bigint[], $16::bigint[], $17::bigint[], $18::text[], $19::text[],
        $20::int[])"""
# One message (the usual send): scalars, which asyncpg encodes several times faster than arrays.
_MESSAGE_SCALARS = """
    SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text, $8::text,
        $9::text, $10::text, $11::int, $12::int, $13::int, $14::bigint, $15::bigint, $16::bigint,
        $17::bigint, $18::text, $19::text, $20::int"""
# The parts' columns as array literals in text parameters (postgres_arrays: asyncpg's lists
# cost ~13 k instructions each, six here).
_SEGMENT_ARRAYS = """
    SELECT * FROM unnest($21::text::text[], $22::text::int[], $23::text::int[],
        $24::text::int[], $25::text::bytea[], $26::text::bytea[])"""
# One message of one part (the usual send, session 59): the part's columns as values too, which
# asyncpg encodes in C, where the six one-element literals cost ~25 k instructions an accept.
_SEGMENT_SCALARS = """
    SELECT $21::text, $22::int, $23::int, $24::int, $25::bytea, $26::bytea"""
_MESSAGE_INSERT = """
    INSERT INTO messages (id, account_id, batch_id, client_ref, recipient, sender, sign_name,
        template, text, encoding, data_coding, segments, billable_units, accepted_at,
        scheduled_at, expires_at, q_not_before, kind, price_class, wire)"""
_SEGMENT_INSERT = """
    INSERT INTO segments (message_id, seq, total, esm_class, short_message, tlvs)"""
_MESSAGE_PARAMS = 26  # $1..$26 above: the messages' columns, then their parts'

# Messages and their parts in one statement (one round trip for the whole batch).
_INSERT_MESSAGES = f"""
WITH m AS ({_MESSAGE_INSERT} {_MESSAGE_ARRAYS})
{_SEGMENT_INSERT} {_SEGMENT_ARRAYS}
"""

# The send path in one statement, committed on its own (no BEGIN/COMMIT round trips): key and
# account checked, nonce recorded, idempotency record stored, messages and parts written, each
# step only if the previous one passed. It writes nothing unless the key and account are
# active, current ($30) and without a rate; in those other cases the caller runs the general
# transaction instead (same order of checks as the SQLite engine, rate bucket included). Not
# used with sending rules (AcceptBatch.rules): those are decided between a read and the writes.
_ACCEPT_SEND_TEMPLATE = """
WITH k AS (
    SELECT k.status AS key_status, {account_cols}
    FROM app_keys k JOIN accounts a ON a.id = k.account_id WHERE k.key_id = $27 FOR SHARE OF a
), ok AS (
    SELECT 1 FROM k WHERE key_status = 'active' AND status = 'active' AND tps = 0
        AND ($31::bigint IS NULL OR updated_at = $31)
), n AS (
    INSERT INTO nonces (key_id, nonce, expires_at) SELECT $27, $28, $29 FROM ok
    ON CONFLICT (key_id, nonce) DO UPDATE SET expires_at = EXCLUDED.expires_at
    WHERE nonces.expires_at <= $30
    RETURNING 1
), i AS (
    INSERT INTO idempotency (account_id, key, request_hash, status_code, response, expires_at)
    SELECT $32, $33, $34, $35, $36, $37 FROM n
    ON CONFLICT (account_id, key) DO UPDATE SET
        request_hash = EXCLUDED.request_hash, status_code = EXCLUDED.status_code,
        response = EXCLUDED.response, expires_at = EXCLUDED.expires_at
    WHERE idempotency.expires_at <= $30
    RETURNING 1
), m AS ({message_insert} {messages} WHERE EXISTS (SELECT 1 FROM i)
), s AS ({segment_insert} {segments} WHERE EXISTS (SELECT 1 FROM i))
SELECT k.*, EXISTS (SELECT 1 FROM ok) AS ok, (SELECT COUNT(*) FROM n) AS fresh,
    (SELECT COUNT(*) FROM i) AS stored
FROM k
"""
# By _shape: 0 arrays, 1 one message's columns as values, 2 its one part's too.
_ACCEPT_SEND = tuple(
    _ACCEPT_SEND_TEMPLATE.format(
        account_cols=", ".join(f"a.{c.strip()}" for c in _ACCOUNT_COLS.split(",")),
        message_insert=_MESSAGE_INSERT,
        messages=_MESSAGE_SCALARS if shape else _MESSAGE_ARRAYS,
        segment_insert=_SEGMENT_INSERT,
        segments=_SEGMENT_SCALARS if shape == 2 else _SEGMENT_ARRAYS,
    )
    for shape in (0, 1, 2)
)

# With sending rules, the first statement of the accept: the account row locked (FOR NO KEY
# UPDATE: it does not block the foreign-key checks of other tables) so that concurrent accepts of
# one account, on any instance, decide on its balance, counts and history one after another; then,
# in the same round trip, the deferred authorisation and the idempotency record, each after the
# lock (each CTE reads the previous one). The facts are read by the *next* statement, whose
# snapshot is taken once the lock is held.
#
# The do-not-contact lock, shared, comes with it (before the row lock: the row is locked as the
# join yields it). A DNC import ends the waiting messages its entries block, but it cannot see
# the message of an accept still in progress, which then went out: it takes the lock
# exclusively before it scans, so it waits for the accepts in progress, and those that start
# meanwhile read their facts after its commit.
#
# It also sets plan_cache_mode to force_generic_plan for the rest of the transaction: the facts'
# statement (rules_sql.FACTS) next, with arrays of unknown length in a generic plan, is
# costed above a custom plan for each accept's arrays, so PostgreSQL planned it again at every
# execution (~350-400 us of planning for ~45 us of execution, every transaction; measured with
# pg_stat_statements.track_planning). Its generic plan is the one it already runs in the later
# accepts of a group (_RULES_HEAD_AUTH_FACTS, _after_writes): the same index probes.
_LOCKED_ACCOUNT = (
    f"SELECT {_ACCOUNT_COLS}, row_version FROM accounts, "
    f"(SELECT pg_advisory_xact_lock_shared({pipe.NS_DNC}, 0), "
    "set_config('plan_cache_mode', 'force_generic_plan', true)) dnc "
    "WHERE id = $1 FOR NO KEY UPDATE OF accounts"
)
_HEAD_KEY = """k AS (
    SELECT k.status AS key_status, a.* FROM app_keys k JOIN a ON a.id = k.account_id
    WHERE k.key_id = $2
), n AS (
    INSERT INTO nonces (key_id, nonce, expires_at) SELECT $2, $3, $4 FROM k
    WHERE k.key_status = 'active'
    ON CONFLICT (key_id, nonce) DO UPDATE SET expires_at = EXCLUDED.expires_at
    WHERE nonces.expires_at <= $5
    RETURNING xmax::text <> '0' AS replaced
), i AS (
    INSERT INTO idempotency (account_id, key, request_hash, status_code, response, expires_at)
    SELECT $1, $6, $7, $8, $9, $10 FROM n WHERE $6::text IS NOT NULL
    ON CONFLICT (account_id, key) DO UPDATE SET
        request_hash = EXCLUDED.request_hash, status_code = EXCLUDED.status_code,
        response = EXCLUDED.response, expires_at = EXCLUDED.expires_at
    WHERE idempotency.expires_at <= $5
    RETURNING xmax::text <> '0' AS replaced
)"""
# `replaced`: the statement overwrote an expired record (a row's xmax is set by the update of
# ON CONFLICT, 0 for an insert): a refusal cannot take that back with a DELETE (_FORGET_HEAD).
# The account's columns NULL when its row still has the version ($11) whose Account the process
# holds (migration 0037: every write of the row changes it; PostgresStore._by_version): the
# server encodes, asyncpg decodes and the process builds none of the twenty again. $11 NULL (none
# held) never matches. Then the row's version, as read.
_HEAD_COLS = (
    "k.key_status, "
    + ", ".join(
        f"CASE WHEN k.row_version = $11 THEN NULL ELSE k.{c.strip()} END AS {c.strip()}"
        for c in _ACCOUNT_COLS.split(",")
    )
    + ", k.row_version, (SELECT COUNT(*) FROM n) AS fresh, (SELECT COUNT(*) FROM i) AS stored, "
    "(SELECT COUNT(*) FROM n WHERE replaced) + (SELECT COUNT(*) FROM i WHERE replaced) "
    "AS replaced"
)
_HEAD_VERSION_AT = 1 + _N_ACCOUNT_COLS  # the row_version column of a head's row
_RULES_HEAD_AUTH = f"""
WITH a AS ({_LOCKED_ACCOUNT}
), {_HEAD_KEY}
SELECT {_HEAD_COLS} FROM k
"""
# The same for an accept whose transaction already holds the account's lock (a later accept of
# a group), with the facts: it waits for no other accept of the account, so its snapshot holds
# everything the decision must be race-free against, as a later statement's would, and one
# round trip is saved. (It can still wait on another transaction's uncommitted insert of the
# same nonce or idempotency key; then the outcome is a replay and the facts go unused.) The
# facts' parameters follow the head's.
_RULES_HEAD_AUTH_FACTS = f"""
WITH a AS (SELECT {_ACCOUNT_COLS}, row_version FROM accounts WHERE id = $1
), {_HEAD_KEY}
SELECT {_HEAD_COLS}, {", ".join(f"f.{c} AS f_{c}" for c in rules_sql.FACT_COLS)}
FROM k CROSS JOIN ({rules_sql.facts_sql(first_param=12)}) f
"""
_HEAD_FACTS_AT = _HEAD_VERSION_AT + 4  # the first facts column (f_...) of its row
_RULES_HEAD_IDEM = f"""
WITH a AS ({_LOCKED_ACCOUNT}
), i AS (
    INSERT INTO idempotency (account_id, key, request_hash, status_code, response, expires_at)
    SELECT $1, $2, $3, $4, $5, $6 FROM (SELECT COUNT(*) FROM a) locked
    ON CONFLICT (account_id, key) DO UPDATE SET
        request_hash = EXCLUDED.request_hash, status_code = EXCLUDED.status_code,
        response = EXCLUDED.response, expires_at = EXCLUDED.expires_at
    WHERE idempotency.expires_at <= $7
    RETURNING xmax::text <> '0' AS replaced
)
SELECT (SELECT COUNT(*) FROM i) AS stored, (SELECT COUNT(*) FROM i WHERE replaced) AS replaced
"""
_WRITE_MESSAGES = tuple(
    (
        f"{_MESSAGE_INSERT} {_MESSAGE_SCALARS if shape else _MESSAGE_ARRAYS}",
        f"{_SEGMENT_INSERT} {_SEGMENT_SCALARS if shape == 2 else _SEGMENT_ARRAYS}",
    )
    for shape in (0, 1, 2)
)


class _AuthRefused(Exception):
    def __init__(self, outcome: str, account: Account | None = None) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.account = account


class _RateLimited(Exception):
    def __init__(self, wait: float) -> None:
        super().__init__(wait)
        self.wait = wait


class _Refused(Exception):
    def __init__(self, refusal: adm.Refusal) -> None:
        super().__init__(refusal.code)
        self.refusal = refusal


_RATE_AT = rules_sql.FACT_COLS.index("tokens")  # then `at`: the rate bucket's columns
_GROUP_MAX = 200  # accepts of one account per transaction (see PostgresStore._drain_account)


async def _run_group(
    store: PostgresStore, items: list[Any], c: asyncpg.Connection, *, savepoints: bool = False
) -> list[AcceptOutcome | BaseException]:
    return await store._accept_group(c, items, savepoints=savepoints)


class _Redo(Exception):
    """An unexpected error aborted a group run without savepoints: run it again with them."""


@dataclass(slots=True)
class _HeadWrites:
    """What an accept's first statement wrote, to take back if the request is then refused,
    and whether it locked the account."""

    nonce: bool = False
    idempotency: bool = False
    locked: bool = False
    # It overwrote an expired nonce or idempotency record, which only a rollback restores.
    replaced: bool = False


@dataclass(slots=True)
class _Deferred:
    """An accepted request's writes, held back to go with the next statement of its group."""

    writes: rules_sql.Writes
    plan: adm.Plan
    count: int
    # Its messages, whose adm.Sent records facts_after takes: made only when the next accept
    # goes to `decide` (session 62: ~4 k instructions an accept otherwise).
    messages: tuple[NewMessage, ...]
    recipients: tuple[str, ...]  # theirs, as _accept_one made them
    rate: tuple[float | None, float | None]  # the rate bucket it left (tokens, at)

    def sent(self) -> tuple[adm.Sent, ...]:
        return tuple(
            adm.Sent(m.recipient, m.accepted_at, m.sign_name, m.template, m.kind)
            for m in self.messages
        )


_RATE_BUCKET = "SELECT tokens, at FROM rate_buckets WHERE account_id = $1 FOR UPDATE"


@lru_cache(maxsize=64)
def _after_writes(ctes: str, nargs: int) -> str:
    """_RULES_HEAD_AUTH_FACTS behind an earlier accept's write CTEs (parameters $1..$nargs):
    one round trip for both. Its own parameters follow; its facts read no rate bucket (the
    writes update that row in this very statement)."""
    head = rules_sql.shift_params(_RULES_HEAD_AUTH_FACTS.strip(), nargs)
    assert head.startswith("WITH ")
    return f"WITH {ctes},\n{head[5:]}"


# A refused accept of a group leaves no trace, as a rolled-back savepoint would leave none.
def _leased(n: int) -> str:
    """A sender's write to the outbox rows it claimed, fenced by its lease (parameter $n): only
    while the row is pending with that next_attempt_at; a NULL lease writes as before."""
    return f" AND (${n}::bigint IS NULL OR (state = 'pending' AND next_attempt_at = ${n}))"


_FORGET_HEAD = """
WITH n AS (DELETE FROM nonces WHERE $1::bool AND key_id = $2 AND nonce = $3),
i AS (DELETE FROM idempotency WHERE $4::bool AND account_id = $5 AND key = $6)
SELECT 1
"""


def _outcome_of(exc: Exception) -> AcceptOutcome:
    """The refusal outcome of one accept of a group (its writes were taken back)."""
    if isinstance(exc, _Refused):
        return AcceptOutcome(accepted=False, refusal=exc.refusal)
    if isinstance(exc, _RateLimited):
        return AcceptOutcome(accepted=False, retry_after=exc.wait)
    assert isinstance(exc, _AuthRefused)
    return AcceptOutcome(accepted=False, auth_refusal=exc.outcome, account=exc.account)


# A clock reading whose round trip took longer is not used for the offset (PostgresStore).
OFFSET_MAX_RTT_S = 2.0
OFFSET_STEP_MS = 250


def _server_of(dsn: str) -> str:
    """host:port of a DSN, for a message: never its user or password."""
    from urllib.parse import urlsplit

    try:
        u = urlsplit(dsn)
        return f"{u.hostname or 'localhost'}:{u.port or 5432}"
    except ValueError:
        return "the configured server"


class PostgresStore(RulesStoreMixin, RetentionMixin):
    engine = "postgres"
    commits_in_order = False  # each transaction on a pooled connection of its own

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 2,
        max_size: int = 10,
        local_clock: Callable[[], float] = time.time,
        read_only: bool = False,
    ) -> None:
        self.dsn = dsn
        # Opened for reads only (the CLI's commands that change nothing, bridge.audit.READ_ONLY):
        # the grants check at the opening asks SELECT on the tables, not the writes a daemon
        # needs, so a monitoring role (SELECT only) may run them. Nothing else differs: a write
        # made anyway is refused by the server (permission denied).
        self.read_only = read_only
        # The database's clock minus this process's, in ms. Instances on several hosts compare
        # each other's heartbeats and claim leases: written in their own clocks, a host whose
        # clock is ahead would find the others' leases expired and send their messages again.
        # So those times are kept in the database's clock, and each instance converts with
        # this offset, measured at open and with every heartbeat (local_clock: for tests).
        self._local_clock = local_clock
        self.migrated_from: int | None = None  # Store.migrated_from
        self._offset_ms = 0  # as last measured ...
        self._offset_ref = local_clock() - time.monotonic()  # ... when this clock read so
        self._min = min_size
        self._max = max_size
        self._pool: asyncpg.Pool | None = None
        self._confirm = Confirmer(dsn)
        # Messages a claim took whose COMMIT got no answer (message id -> instance): given back
        # before the next claim or reclaim (`_give_back_unsure`).
        self._unsure_claims: dict[str, str] = {}
        # One give-back at a time (a claim's and the sweeper's reclaim's): one that read its
        # messages before a claim took them again would give back what is being sent.
        self._giving_back = asyncio.Lock()
        # The same for webhook claims: due again before the next webhook claim (postgres_webhooks).
        self._unsure_webhooks = UnsureWebhookClaims()
        self._rr = 0
        # Per-account group commit of accepts under the sending rules (see _drain_account).
        self._account_queue: dict[
            str, list[tuple[AcceptBatch, adm.Rules, int, asyncio.Future[AcceptOutcome]]]
        ] = {}
        self._account_busy: set[str] = set()
        self._drain_tasks: set[asyncio.Task[None]] = set()
        # The Account last built for each account id with its row's `row_version` (migration
        # 0037), which every write of the row changes: an accept's first statement is given it
        # and answers NULL for the account while the row keeps it (_HEAD_COLS, _head_account).
        # Per store: the versions are one database's. At most `server.account_cache` accounts
        # (account_rows.cache_size, as SQLite's), the least recently used dropped for a new one:
        # until session 56's review 256, emptied when full, so an instance taking sends from more
        # accounts built the Account again on every accept.
        self._by_version: OrderedDict[str, tuple[int, Account]] = OrderedDict()
        # webhooks.send_intermediate: also report "sent" (all parts accepted by the SMSC).
        self.send_intermediate = False
        self.claim_reports = 0  # Store.claim_reports
        self._sweep_after: str | None = None  # the id the sweep reads after (SWEEP_CANDIDATES)
        # smscs[].receipts one_per_message: whose one receipt settles a whole message.
        self.one_receipt_smscs: frozenset[str] = frozenset()
        # One receipt batch at a time, in the order handed over (asyncio.Lock is FIFO): two in
        # flight on two connections could commit out of order, and with one_per_message the
        # first committed receipt of a long message stands, not the first that came.
        self._receipts_in_order = asyncio.Lock()
        # Told, once a write committed, how many parts (by SMSC) it settled on another part's
        # receipt (the daemon's smpp_bridge_receipts_inferred metric).
        self.on_inferred: Callable[[dict[str, int]], None] | None = None
        # rules.timezone: the days of the daily quota, which a message that never reached anyone
        # gives its place back to (lifecycle.never_reached); configure_store sets it at opening
        # and at each reload. The roll-up asks it of its pool connection (StoreConnection), so
        # no caller has to pass it along.
        self.quota_tz = "Asia/Shanghai"

    # -- life cycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            conn = await asyncpg.connect(self.dsn, server_settings=session_settings("smpp-bridge"))
        except (OSError, TimeoutError) as exc:
            # "[Errno 111] Connection refused" alone named neither the store nor the server.
            raise StoreUnusableError(
                f"cannot connect to PostgreSQL at {_server_of(self.dsn)}: "
                f"{getattr(exc, 'strerror', None) or exc or type(exc).__name__}"
            ) from None
        try:
            self.migrated_from = await _migrate(conn, writes=not self.read_only)
            if (lacking := await missing_grants(conn, writes=not self.read_only)) is not None:
                raise StoreUnusableError(lacking)
            await self._measure_offset(conn)
        finally:
            await conn.close()
        self._pool = await create_pool(
            self.dsn, min_size=self._min, max_size=self._max, quota_zone=lambda: self.quota_tz
        )

    @property
    def clock_offset_ms(self) -> int:
        """The database's clock minus this process's, now: as measured, less a step of this
        host's clock since (seen against the monotonic clock). A claim in the second after a
        step back longer than the lease, before the heartbeat measured again, was born expired
        and another instance's reclaim sent it again."""
        moved_ms = round((self._local_clock() - time.monotonic() - self._offset_ref) * 1000)
        return self._offset_ms - (moved_ms if abs(moved_ms) >= OFFSET_STEP_MS else 0)

    async def _measure_offset(self, c: asyncpg.Connection) -> None:
        t0 = self._local_clock()
        db_ms = await c.fetchval(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint", timeout=5
        )
        t1 = self._local_clock()
        if t1 - t0 > OFFSET_MAX_RTT_S:  # a reading this slow says little about the time
            return
        measured = int(db_ms) - int((t0 + t1) * 500)  # off by at most half the round trip
        # Moves under OFFSET_STEP_MS, or within the reading's own uncertainty, are kept out:
        # leases and heartbeats are seconds long, and a steady offset keeps an instance's own
        # times exactly comparable with each other. A database far away (a round trip of a few
        # hundred ms) is still measured, to within that.
        if abs(measured - self.clock_offset_ms) >= max(OFFSET_STEP_MS, (t1 - t0) * 1000):
            self._offset_ms = measured
            self._offset_ref = self._local_clock() - time.monotonic()

    async def close(self) -> None:
        if self._pool is not None:
            await self._confirm.close()  # the webhook bookkeeping held there included
            await self._give_back_at_close()
            await self._unsure_webhooks.give_back_at_close(
                self.pool, round(self._local_clock() * 1000), CLOSE_TIMEOUT_S
            )
            pool, self._pool = self._pool, None
            try:  # a partition would hold a graceful close for as long as it lasts
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await pool.close()
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pool.terminate()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreClosedError("store is closed")
        return self._pool

    def write_problem(self) -> str | None:
        """The server's disk is the server's to watch: a full one fails writes (503) and ping."""
        return None

    def write_lock_stats(self) -> WriteLockStats | None:
        """Row locks, not one lock for every writer: nothing to report (pg_stat_* tells more)."""
        return None

    async def ping(self) -> bool:
        return await self.pool.fetchval("SELECT 1") == 1

    async def schema_version(self) -> int:
        return scalar(await self.pool.fetchval("SELECT MAX(version) FROM schema_version"))

    # -- accounts and keys -----------------------------------------------------------------------

    async def create_account(self, account: Account) -> None:
        try:
            await self.pool.execute(
                f"INSERT INTO accounts ({_ACCOUNT_COLS}) "
                "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20)",
                account.id,
                account.name,
                account.kind,
                account.raw_text,
                account.marketing,
                account.default_country,
                account.tps,
                account.daily_quota,
                account.status_callback_url,
                account.mo_callback_url,
                account.webhook_secret_enc,
                account.status,
                account.created_at,
                account.updated_at,
                account.low_balance_threshold,
                account.report_format,
                column_value("senders", account.senders),
                account.prev_webhook_secret_enc,
                account.prev_webhook_secret_until,
                account.low_balance_warned_at,
            )
        except asyncpg.UniqueViolationError as exc:
            raise StoreError(
                "ACCOUNT_EXISTS", f"an account named {account.name!r} already exists"
            ) from exc

    async def get_account(self, account_id: str) -> Account | None:
        row = await self.pool.fetchrow(
            f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE id = $1", account_id
        )
        return _account(row) if row else None

    async def get_account_by_name(self, name: str) -> Account | None:
        row = await self.pool.fetchrow(
            f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE name = $1", name
        )
        return _account(row) if row else None

    async def list_accounts(self) -> list[Account]:
        rows = await self.pool.fetch(
            f"SELECT {_ACCOUNT_COLS} FROM accounts ORDER BY created_at, id"
        )
        return [_account(r) for r in rows]

    async def update_account(
        self, account_id: str, changes: dict[str, Any], now: int, *, assigned_only: bool = False
    ) -> Account | None:
        bad = set(changes) - ACCOUNT_MUTABLE
        if bad:
            raise StoreError("INVALID_FIELD", f"account field(s) not updatable: {sorted(bad)}")
        cols = sorted(changes)
        values = [
            bool(changes[k]) if k in _BOOL_COLS else column_value(k, changes[k]) for k in cols
        ]

        pending: list[int] = []  # ends that go on in pages of their own (postgres_pending_ends)

        async def job(c: asyncpg.Connection) -> Account | None:
            disabling = False
            if changes.get("status") == "disabled":
                # Locked: ordered after an accept in progress, whose messages are then ended too.
                disabling = await rules_sql.lock_account(c, account_id) == "active"
            if cols:
                sets = ", ".join(f"{k} = ${i}" for i, k in enumerate(cols, start=1))
                if "low_balance_threshold" in cols:  # a new threshold: a new dip to warn of
                    i = cols.index("low_balance_threshold") + 1
                    sets += ", " + LOW_WARNED_ON_THRESHOLD.format(f"${i}")
                n = len(cols)
                # A closed account stays closed: its data was erased (the caller sees the status).
                # updated_at moves on every change (see sqlite.SqliteStore.update_account).
                await c.execute(
                    f"UPDATE accounts SET {sets}, updated_at = GREATEST(${n + 1}, updated_at + 1) "
                    f"WHERE id = ${n + 2} AND status <> 'closed'",
                    *values,
                    now,
                    account_id,
                )
            # The account's row is locked (the UPDATE, or lock_account): see pending_ends.start.
            if disabling:  # see base.Store.update_account
                await pending_ends.start(
                    c, account_id, "account", None, ACCOUNT_DISABLED_ERROR, now, pending
                )
            for setting, _which, error in REVOKED_SENDS:
                if setting in changes and not changes[setting]:
                    await pending_ends.start(c, account_id, setting, None, error, now, pending)
            if "senders" in changes:
                assignments = [(r[0], senders_of(r[1])) for r in await c.fetch(_ASSIGNMENTS_SQL)]
                await ends.end_refused_senders(c, assignments, now, assigned_only=assigned_only)
            row = await c.fetchrow(
                f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE id = $1", account_id
            )
            return _account(row) if row else None

        account, _more = await pending_ends.run(self.pool, job, pending, now)
        return account

    async def add_key(self, key: AppKey, max_active: int) -> None:
        async def job(c: asyncpg.Connection) -> None:
            # The account row serialises concurrent key creations for one account.
            status = await rules_sql.lock_account(c, key.account_id)
            if status == "closed":  # the lock also orders this after a close in progress
                raise StoreError("ACCOUNT_CLOSED", CLOSED_MESSAGE)
            n = scalar(
                await c.fetchval(
                    "SELECT COUNT(*) FROM app_keys WHERE account_id = $1 AND status = 'active'",
                    key.account_id,
                )
            )
            if n >= max_active:
                raise StoreError(
                    "TOO_MANY_KEYS",
                    f"account already has {n} active keys (limit {max_active}); revoke one first",
                )
            await c.execute(
                "INSERT INTO app_keys (key_id, account_id, secret_enc, status, created_at) "
                "VALUES ($1, $2, $3, $4, $5)",
                key.key_id,
                key.account_id,
                key.secret_enc,
                key.status,
                key.created_at,
            )

        await run_tx(self.pool, job)

    async def get_key(self, key_id: str) -> AppKey | None:
        row = await self.pool.fetchrow(
            f"SELECT {_KEY_COLS} FROM app_keys WHERE key_id = $1", key_id
        )
        return _key(row) if row else None

    async def list_keys(self, account_id: str) -> list[AppKey]:
        rows = await self.pool.fetch(
            f"SELECT {_KEY_COLS} FROM app_keys WHERE account_id = $1 ORDER BY created_at, key_id",
            account_id,
        )
        return [_key(r) for r in rows]

    async def revoke_key(self, key_id: str, now: int) -> bool:
        row = await self.pool.fetchval(
            "UPDATE app_keys SET status = 'revoked', revoked_at = $1 "
            "WHERE key_id = $2 AND status = 'active' RETURNING 1",
            now,
            key_id,
        )
        return row is not None

    async def keys_used(self, used: Mapping[str, int]) -> None:
        ids = sorted(used)

        async def job(c: asyncpg.Connection) -> None:
            await c.execute(
                "UPDATE app_keys k SET last_used_at = GREATEST(COALESCE(k.last_used_at, 0), u.at) "
                "FROM unnest($1::text[], $2::bigint[]) AS u(key_id, at) WHERE k.key_id = u.key_id",
                ids,
                [used[i] for i in ids],
            )

        # Two instances flushing the same keys at once may deadlock: run_tx runs it again.
        await run_tx(self.pool, job, durable=False)

    async def use_nonce(self, key_id: str, nonce: str, expires_at: int, now: int) -> bool:
        fresh = await self.pool.fetchval(
            "INSERT INTO nonces (key_id, nonce, expires_at) VALUES ($1, $2, $3) "
            "ON CONFLICT (key_id, nonce) DO UPDATE SET expires_at = EXCLUDED.expires_at "
            "WHERE nonces.expires_at <= $4 RETURNING 1",
            key_id,
            nonce,
            expires_at,
            now,
        )
        return fresh is not None

    async def authorize_request(
        self, key_id: str, nonce: str, expires_at: int, now: int
    ) -> tuple[str, Account | None]:
        """Record a nonce and read the key's and account's current state in one statement (see
        the SQLite engine for why). Outcome: ok | unknown_key | revoked | nonce_reused."""
        row = await self.pool.fetchrow(_AUTHORIZE, key_id, nonce, expires_at, now)
        return _authorized(row)

    async def skew_window(self, face: str, skew_s: int, now: int) -> SkewWindow:
        """The face's window as this process starts (see bridge/domain/skew_window.py); the row
        is locked so instances starting together agree on one transition."""

        async def job(c: asyncpg.Connection) -> SkewWindow:
            await c.execute(
                "INSERT INTO skew_windows (face, skew_s, prev_s, since_ms) VALUES ($1, 0, 0, 0) "
                "ON CONFLICT (face) DO NOTHING",
                face,
            )
            row = await c.fetchrow(
                "SELECT skew_s, prev_s, since_ms FROM skew_windows WHERE face = $1 FOR UPDATE",
                face,
            )
            stored = SkewWindow(*row) if row["skew_s"] > 0 else None
            window = next_window(stored, skew_s, now)
            if window != stored:
                await c.execute(
                    "UPDATE skew_windows SET skew_s = $2, prev_s = $3, since_ms = $4 "
                    "WHERE face = $1",
                    face,
                    window.skew_s,
                    window.prev_s,
                    window.since_ms,
                )
            return window

        # run_tx: a session ended before the COMMIT was sent reruns it (a function of the
        # stored row and the arguments), as a deadlock of instances starting together does.
        return await run_tx(self.pool, job)

    async def route_table(self) -> str | None:
        value = await self.pool.fetchval("SELECT router FROM route_table WHERE id = 1")
        return None if value is None else str(value)

    async def keep_route_table(self, table: str, now: int) -> None:
        await self.pool.execute(
            "INSERT INTO route_table (id, router, kept_at) VALUES (1, $1, $2) "
            "ON CONFLICT (id) DO UPDATE SET router = excluded.router, "
            "kept_at = excluded.kept_at",
            table,
            now,
        )

    # -- acceptance --------------------------------------------------------------------------------

    async def get_idempotency(
        self, account_id: str, key: str, now: int
    ) -> IdempotencyRecord | None:
        return await _idem(self.pool, account_id, key, now)

    async def take_idempotency(
        self, account_id: str, key: str, request_hash: str, until: int, now: int
    ) -> IdempotencyRecord | None:
        # Inserted, or an expired record taken over, in one statement; else the live one read
        # (gone by then, purged: taken again).
        while True:
            taken = await self.pool.fetchval(
                "INSERT INTO idempotency (account_id, key, request_hash, status_code, response, "
                "expires_at) VALUES ($1, $2, $3, 0, ''::bytea, $4) ON CONFLICT (account_id, key) "
                "DO UPDATE SET request_hash = EXCLUDED.request_hash, status_code = 0, "
                "response = EXCLUDED.response, expires_at = EXCLUDED.expires_at "
                "WHERE idempotency.expires_at <= $5 RETURNING 1",
                account_id,
                key,
                request_hash,
                until,
                now,
            )
            if taken is not None:
                return None
            live = await _idem(self.pool, account_id, key, now)
            if live is not None:
                return live

    async def keep_idempotency(
        self, account_id: str, key: str, record: IdempotencyRecord, expires_at: int
    ) -> None:
        await self.pool.execute(
            "UPDATE idempotency SET status_code = $4, response = $5, expires_at = $6 "
            "WHERE account_id = $1 AND key = $2 AND request_hash = $3 AND status_code = 0",
            account_id,
            key,
            record.request_hash,
            record.status_code,
            record.response,
            expires_at,
        )

    async def give_back_idempotency(self, account_id: str, key: str, request_hash: str) -> None:
        await self.pool.execute(
            "DELETE FROM idempotency "
            "WHERE account_id = $1 AND key = $2 AND request_hash = $3 AND status_code = 0",
            account_id,
            key,
            request_hash,
        )

    async def accept(self, batch: AcceptBatch, now: int) -> AcceptOutcome:
        if batch.rules is not None:
            return await self._accept_rules(batch, batch.rules, now)
        if (
            batch.nonce is not None
            and batch.key_id is not None
            and batch.idempotency_key is not None
            and batch.idempotency is not None
        ):
            fast = await self._accept_send(batch, now)
            if fast is not None:
                return fast

        async def job(c: asyncpg.Connection) -> AcceptOutcome:
            tps = batch.tps
            if batch.nonce is not None and batch.key_id is not None:
                row = await c.fetchrow(
                    _AUTHORIZE, batch.key_id, batch.nonce, batch.nonce_expires_at, now
                )
                outcome, account = _authorized(row)
                if outcome != "ok" or account is None:
                    raise _AuthRefused(outcome)
                if not account.active:
                    raise _AuthRefused("disabled")
                if (
                    batch.account_version is not None
                    and account.updated_at != batch.account_version
                ):
                    raise _AuthRefused("stale", account)
                tps = account.tps
            elif batch.account_version is not None:  # as in _lock_account
                tps = await _current_tps(c, batch)
            if batch.idempotency_key is not None and batch.idempotency is not None:
                stored = await c.fetchval(
                    _STORE_IDEMPOTENCY,
                    batch.account_id,
                    batch.idempotency_key,
                    batch.idempotency.request_hash,
                    batch.idempotency.status_code,
                    batch.idempotency.response,
                    batch.idempotency_expires_at,
                    now,
                )
                if stored is None:  # a live record for this key: the first request won
                    existing = await _idem(c, batch.account_id, batch.idempotency_key, now)
                    return AcceptOutcome(accepted=False, existing=existing)
            if tps > 0:  # on the database's clock, as every instance reads it
                rate_now = now + self.clock_offset_ms
                await _take_rate(c, batch.account_id, tps, len(batch.messages), rate_now)
            await _insert_messages(c, batch)
            return AcceptOutcome(accepted=True)

        try:
            return await run_tx(self.pool, job)
        except _RateLimited as exc:
            return AcceptOutcome(accepted=False, retry_after=exc.wait)
        except _AuthRefused as exc:
            return AcceptOutcome(accepted=False, auth_refusal=exc.outcome, account=exc.account)

    async def _accept_rules(self, batch: AcceptBatch, rules: adm.Rules, now: int) -> AcceptOutcome:
        """Accept under the sending rules: lock the account (with the authorisation and the
        idempotency record), read the facts, decide, write: three statements (the rate bucket
        rides along with the facts and the writes; two for the later accepts of a group, whose
        first statement reads the facts too), one more to return an idempotent replay, in a
        transaction shared with the account's other pending accepts (_drain_account). A
        refusal takes its own writes back, nonce and idempotency included, as a rate refusal
        does."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[AcceptOutcome] = loop.create_future()
        self._account_queue.setdefault(batch.account_id, []).append((batch, rules, now, fut))
        if batch.account_id not in self._account_busy:
            self._start_drain(batch.account_id)
        return await fut

    def _start_drain(self, account_id: str) -> None:
        self._account_busy.add(account_id)
        task = asyncio.get_running_loop().create_task(self._drain_account(account_id))
        self._drain_tasks.add(task)
        task.add_done_callback(self._drain_tasks.discard)

    async def _drain_account(self, account_id: str) -> None:
        """Per-account group commit. The account row lock serialises one account's accepts (that
        is what makes its balance and frequency decisions race-free), and it is held until the
        commit: one transaction per request would serialise them at the commit rate. Requests
        that arrive meanwhile therefore go together into the next transaction, one commit for
        all, where a refusal or an error undoes only its own writes (see _accept_group)."""
        try:
            while True:
                items = self._account_queue.pop(account_id, [])
                if not items:
                    return
                for start in range(0, len(items), _GROUP_MAX):
                    chunk = items[start : start + _GROUP_MAX]
                    try:
                        try:
                            outcomes = await run_tx(self.pool, partial(_run_group, self, chunk))
                        except _Redo:  # an error aborted the group: again, a savepoint each
                            outcomes = await run_tx(
                                self.pool, partial(_run_group, self, chunk, savepoints=True)
                            )
                    except (_Refused, _RateLimited, _AuthRefused) as exc:  # a group of one
                        outcomes = [_outcome_of(exc)]
                    except Exception as exc:  # the transaction itself failed: nothing landed
                        for *_rest, f in chunk:
                            if not f.done():
                                f.set_exception(exc)
                        continue
                    for (*_rest, f), out in zip(chunk, outcomes, strict=True):
                        if f.done():
                            continue
                        if isinstance(out, BaseException):
                            f.set_exception(out)
                        else:
                            f.set_result(out)
        finally:
            self._account_busy.discard(account_id)
            if self._account_queue.get(account_id):  # arrived after the last pop
                self._start_drain(account_id)

    async def _accept_group(
        self,
        c: asyncpg.Connection,
        items: list[tuple[AcceptBatch, adm.Rules, int, asyncio.Future[AcceptOutcome]]],
        *,
        savepoints: bool = False,
    ) -> list[AcceptOutcome | BaseException]:
        """The accepts of one account, one after another in one transaction.

        Without savepoints by default: a refusal can only come before an accept's last statement,
        and the only writes before it are the nonce and the idempotency record of its first
        statement, which are deleted again (one statement, refusals only; when they replaced an
        expired record, which a DELETE cannot give back, the group runs again with savepoints).
        That is two round trips fewer per accept than a savepoint each (the hot account's rate
        is round-trip bound), and no subtransactions: past 64 in one transaction PostgreSQL's
        snapshots of every session slow down (subxid overflow), and a group holds up to
        _GROUP_MAX. An unexpected error aborts the transaction: _Redo runs the group again, a
        savepoint each, so that error stays with its own request."""
        out: list[AcceptOutcome | BaseException] = []
        single = len(items) == 1
        use_savepoints = savepoints and not single
        locked = False  # this transaction holds the account's lock
        # The last accept's writes, not sent yet: they go with the next accept's first statement
        # (see _accept_one), so a group costs one round trip per accept, not two. Not with
        # savepoints: there each accept's writes must land inside its own savepoint.
        deferred: list[_Deferred] | None = None if use_savepoints else []
        for batch, rules, now, _fut in items:
            if use_savepoints:
                await c.execute("SAVEPOINT accept")
            head = _HeadWrites()
            try:
                result = await self._accept_one(
                    c, batch, rules, now, head, locked=locked, deferred=deferred
                )
            except (_Refused, _RateLimited, _AuthRefused) as exc:
                if single:
                    raise
                if use_savepoints:
                    await c.execute("ROLLBACK TO SAVEPOINT accept")  # its lock goes with it
                else:
                    if head.replaced:  # only a rollback restores the expired record
                        raise _Redo from exc
                    locked = locked or head.locked
                    if head.nonce or head.idempotency:
                        await c.execute(
                            _FORGET_HEAD,
                            head.nonce,
                            batch.key_id,
                            batch.nonce,
                            head.idempotency,
                            batch.account_id,
                            batch.idempotency_key,
                        )
                out.append(_outcome_of(exc))
                continue
            except RETRYABLE_TX:
                raise  # a deadlock: the whole group is retried by run_tx
            except Exception as exc:
                if single:
                    raise
                if not use_savepoints:
                    raise _Redo from exc
                await c.execute("ROLLBACK TO SAVEPOINT accept")
                out.append(exc)
                continue
            if use_savepoints:
                await c.execute("RELEASE SAVEPOINT accept")
            locked = locked or head.locked
            out.append(result)
        if deferred:
            try:
                await deferred.pop().writes.run(c)
            except RETRYABLE_TX:
                raise
            except Exception as exc:
                if single:
                    raise
                raise _Redo from exc  # whose writes failed is told by the run with savepoints
        return out

    async def _accept_one(
        self,
        c: asyncpg.Connection,
        batch: AcceptBatch,
        rules: adm.Rules,
        now: int,
        head: _HeadWrites,
        *,
        locked: bool = False,
        deferred: list[_Deferred] | None = None,
    ) -> AcceptOutcome:
        """One accept of a group. With `deferred` (a list of at most one), the previous accept's
        writes, if any, are sent now (with this accept's first statement when it can take
        them), and this accept's own are left there for the next one or the group's end."""
        recipients = tuple(m.recipient for m in batch.messages)
        n = len(batch.messages)
        prev = deferred.pop() if deferred else None
        if locked and batch.nonce is not None and batch.key_id is not None:
            # With the previous accept's writes in the same statement, its reads cannot see
            # them: the facts are moved on by what it wrote (adm.facts_after), and the rate
            # bucket (locked by the group's first read already) is the one it left.
            fargs = rules_sql.facts_args(batch.account_id, rules, recipients, now, rate=not prev)
            known = _held(self._by_version, batch.account_id)
            head_args = [*_head_args(batch, now, known), *fargs[1:]]
            if prev is None:
                row = await c.fetchrow(_RULES_HEAD_AUTH_FACTS, *head_args)
            else:
                sql = _after_writes(prev.writes.ctes(), len(prev.writes.args))
                row = await c.fetchrow(sql, *prev.writes.args, *head_args)
            tps = await _check_head(c, row, batch, now, head, known, self._by_version)
            if isinstance(tps, AcceptOutcome):
                return tps
            facts_at = _HEAD_FACTS_AT
        else:
            if prev is not None:
                await prev.writes.run(c)
            tps = await _lock_account(c, batch, now, head, self._by_version)
            if isinstance(tps, AcceptOutcome):
                return tps  # an idempotent replay (the nonce stays spent, as in SQLite)
            fargs = rules_sql.facts_args(batch.account_id, rules, recipients, now, rate=tps > 0)
            row = await c.fetchrow(rules_sql.FACTS, *fargs)
            assert row is not None  # FROM (SELECT 1): always one row
            facts_at = 0
            prev = None  # its writes are in: this read sees them
        # The usual one-recipient send decided from the row (session 62): `decide_one`, the
        # pure function SQLite's accept calls, over the columns; anything else (None) by
        # `decide` over the Facts, as before. fargs[5] is the facts' day (day_key).
        one = adm.one_send(rules, now, fargs[5]) if n == 1 else None
        plan: adm.Plan | adm.Refusal | None = (
            None
            if one is None
            else rules_sql.decide_one_of_row(
                one,
                rules,
                row,
                facts_at,
                None if prev is None else (prev.plan, prev.count, prev.recipients),
            )
        )
        if plan is None:
            facts, (tokens, at) = rules_sql.facts_from_row(row, rules, recipients, facts_at)
            if prev is not None:
                facts = adm.facts_after(facts, prev.plan, prev.count, prev.sent(), rules, now)
            plan = adm.decide(rules, facts, now)
        else:
            tokens, at = row[facts_at + _RATE_AT], row[facts_at + _RATE_AT + 1]
        if prev is not None:
            tokens, at = prev.rate
            if tps > 0 and tokens is None:  # it took no token (no rate then): read it
                bucket = await c.fetchrow(_RATE_BUCKET, batch.account_id)
                tokens, at = (bucket[0], bucket[1]) if bucket is not None else (None, None)
        if isinstance(plan, adm.Refusal):
            raise _Refused(plan)
        shape = _shape(batch)
        # The usual accept's writes (no rate, one charge or none, no low-balance event) with
        # their statement's text kept (_usual_writes); any other as built here.
        w = _usual_writes(batch, shape, plan, n) if tps <= 0 else None
        if w is None:
            w = rules_sql.Writes(_message_arrays(batch, shape))
            w.add(_WRITE_MESSAGES[shape][0])
            w.add(_WRITE_MESSAGES[shape][1])
            if tps > 0:
                if tokens is not None and tokens != tokens:  # NaN: see _take_rate
                    tokens = at = None
                # On the database's clock: each host's own put a bucket written by a host
                # seconds fast out of reach of the others (refused until their clocks caught
                # up), or a minute fast into a clock stepped back (refilled at every accept).
                wait, tokens, at = bucket_take(
                    tokens, at, tps, n, (now + self.clock_offset_ms) / 1000
                )
                if wait > 0:
                    raise _RateLimited(wait)
                w.add(
                    "INSERT INTO rate_buckets (account_id, tokens, at) VALUES "
                    f"({w.param(batch.account_id)}, {w.param(tokens)}::float8, "
                    f"{w.param(at)}::float8) ON CONFLICT (account_id) DO UPDATE SET "
                    "tokens = EXCLUDED.tokens, at = EXCLUDED.at"
                )
            rules_sql.add_plan(w, batch.account_id, plan, n)
            if plan.low_balance is not None:
                rules_sql.add_low_balance_event(w, batch.account_id, plan.low_balance, now)
        if deferred is None:
            await w.run(c)
        else:
            deferred.append(
                _Deferred(
                    w,
                    plan,
                    n,
                    batch.messages,
                    recipients,
                    (tokens, at) if tps > 0 else (None, None),
                )
            )
        return AcceptOutcome(accepted=True, plan=plan)

    async def _accept_send(self, batch: AcceptBatch, now: int) -> AcceptOutcome | None:
        """The API's send request in one round trip; None when the general path must decide."""
        assert batch.idempotency is not None
        shape = _shape(batch)
        row = await self.pool.fetchrow(
            _ACCEPT_SEND[shape],
            *_message_arrays(batch, shape),
            batch.key_id,
            batch.nonce,
            batch.nonce_expires_at,
            now,
            batch.account_version,
            batch.account_id,
            batch.idempotency_key,
            batch.idempotency.request_hash,
            batch.idempotency.status_code,
            batch.idempotency.response,
            batch.idempotency_expires_at,
        )
        if row is None:
            return AcceptOutcome(accepted=False, auth_refusal="unknown_key")
        if row["key_status"] != "active":
            return AcceptOutcome(accepted=False, auth_refusal="revoked")
        if not row["ok"]:
            return None  # disabled, stale or rated: nothing was written
        if not row["fresh"]:
            return AcceptOutcome(accepted=False, auth_refusal="nonce_reused")
        if not row["stored"]:  # a live record for this key: the first request won
            existing = await _idem(self.pool, batch.account_id, batch.idempotency_key or "", now)
            return AcceptOutcome(accepted=False, existing=existing)
        return AcceptOutcome(accepted=True)

    async def audit_add(self, entry: AuditEntry) -> None:
        # A sequence hands out ids before commit, so a row could commit after a higher one and a
        # reader tailing the trail by cursor (`after`) would step over it for good. Under one
        # transaction lock the id is drawn and committed before the next writer draws: ids come
        # in commit order. Operators' actions are rare; the lock costs nothing that matters.
        # Run again (run_tx) only when its COMMIT was not sent: the entry is never written twice.
        async def job(c: asyncpg.Connection) -> None:
            await c.execute("SELECT pg_advisory_xact_lock($1, 0)", pipe.NS_AUDIT)
            await c.execute(
                f"INSERT INTO audit_log ({AUDIT_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
                *audit_values(entry),
            )

        await run_tx(self.pool, job)

    async def audit_page(
        self, after: int, limit: int, since: int = 0, until: int = 2**62
    ) -> list[AuditEntry]:
        rows = await self.pool.fetch(
            AUDIT_PAGE.format("$1", "$2", "$3", "$4"), after, since, until, limit
        )
        return [audit_row(r) for r in rows]

    async def sealed_secrets(self) -> list[tuple[str, str, bytes]]:
        return [(r[0], r[1], bytes(r[2])) for r in await self.pool.fetch(SEALED_SECRETS)]

    async def reseal(self, kind: str, row_id: str, old: bytes, new: bytes) -> bool:
        done = await self.pool.execute(RESEAL[kind].format("$1", "$2", "$3"), new, row_id, old)
        return bool(done.endswith(" 1"))

    async def message_held(self, message_id: str) -> bool:
        held = await self.pool.fetchval(
            "SELECT end_error IS NOT NULL FROM messages WHERE id = $1", message_id
        )
        return bool(held)

    async def get_message(self, account_id: str, message_id: str) -> MessageRecord | None:

        async def reads(c: asyncpg.Connection) -> MessageRecord | None:
            # A closed account's masking under way: its mask (postgres_ends.masking), in the
            # same statement (no round trip more).
            row = await c.fetchrow(
                f"SELECT {_MESSAGE_COLS}, {ends.MASKING.format(2)} FROM messages "
                "WHERE id = $1 AND account_id = $2",
                message_id,
                account_id,
            )
            if row is None:
                return None
            segs = tuple(
                SegmentRecord(*r)
                for r in await c.fetch(
                    "SELECT seq, total, state, smsc, smsc_msg_id_raw, submitted_at, done_at, "
                    "error_code, receipt_inferred_from FROM segments WHERE message_id = $1 "
                    "ORDER BY seq",
                    message_id,
                )
            )
            return masked(MessageRecord(*row[:-1], segment_rows=segs), row[-1])

        return await run_reads(self.pool, reads)

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
    ) -> list[MessageRecord]:
        where = ["account_id = $1"]
        args: list[Any] = [account_id]
        for cond, value in (
            # A batch's messages share its accepted_at (the id's time; see the SQLite engine).
            ("accepted_at = ${}", None if batch_id is None else id_time_ms(batch_id, "bat_") or 0),
            ("batch_id = ${}", batch_id),
            ("recipient = ${}", recipient),
            ("accepted_at >= ${}", since),
            ("accepted_at < ${}", until),
            ("state = ${}", state),
        ):
            if value is not None:
                args.append(value)
                where.append(cond.format(len(args)))
        if before_id is not None:  # after it in (accepted_at, id) order
            at = id_time_ms(before_id, "msg_")
            args.append(before_id)
            if at is None:
                where.append(f"id < ${len(args)}")
            else:
                args.append(at)
                where.append(f"accepted_at <= ${len(args)} AND (accepted_at < ${len(args)} "
                             f"OR id < ${len(args) - 1})")  # fmt: skip
        args.append(limit)
        # Acceptance time, then id: the order of id alone, which the (account_id, accepted_at)
        # index gives (see the SQLite engine).
        rows = await self.pool.fetch(
            f"SELECT {_MESSAGE_COLS}, {ends.MASKING.format(1)} FROM messages "
            f"WHERE {' AND '.join(where)} ORDER BY accepted_at DESC, id DESC LIMIT ${len(args)}",
            *args,
        )
        mask = rows[0][-1] if rows else None  # a closed account's masking under way
        if mask is not None and recipient is not None and recipient != mask:
            return []  # as after the masking: none names the number
        return [masked(MessageRecord(*r[:-1]), mask) for r in rows]

    async def queue_depth(self, due_at: int | None = None) -> int:
        return scalar(
            await self.pool.fetchval(
                "SELECT SUM(segments - segments_sent) FROM messages "
                "WHERE q_state IN ('queued', 'claimed') "
                "AND ($1::bigint IS NULL OR scheduled_at IS NULL OR scheduled_at <= $1)",
                due_at,
            )
        )

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
        return await reports.stats(
            self.pool,
            account_id,
            since,
            until,
            tz_offset_ms,
            prefix=prefix,
            within=within,
            sign_name=sign_name,
            kind=kind,
        )

    # -- pipeline ---------------------------------------------------------------------------------

    async def recover(
        self, instance: str, now: int, unknown_smscs: frozenset[str]
    ) -> dict[str, int]:
        """Start-up: give back this instance's own claims and any whose lease expired; claims of
        other live instances are theirs. Dead instances' claims are taken back by `reclaim`."""

        async def job(c: asyncpg.Connection) -> dict[str, int]:
            return await pipe.requeue_claims(
                c,
                now,
                unknown_smscs,
                instance=instance,
                offset_ms=self.clock_offset_ms,
                intermediate=self.send_intermediate,
            )

        return await run_tx(self.pool, job, durable=False)

    async def after_restore(self, now: int, *, dry_run: bool = False) -> dict[str, int]:
        return await restored.end_restored(self.pool, now, dry_run)

    async def reclaim(self, now: int, unknown_smscs: frozenset[str]) -> dict[str, int]:
        """Periodic: take back claims whose lease expired or whose instance is gone (no instance
        lock and no heartbeat for DEAD_AFTER_MS), so a killed instance's work is resent."""

        await self._give_back_unsure(now)  # this instance's own, though it lives

        async def job(c: asyncpg.Connection) -> dict[str, int]:
            return await pipe.requeue_claims(
                c,
                now,
                unknown_smscs,
                instance=None,
                offset_ms=self.clock_offset_ms,
                intermediate=self.send_intermediate,
            )

        return await run_tx(self.pool, job, durable=False)

    async def renew_claims(self, instance: str, ids: list[str], lease_until: int) -> int:
        """Extend the lease of messages this instance is still sending (a throttled link can
        hold one for minutes): an expired lease must mean a dead sender, never a slow one."""
        if not ids:
            return 0

        async def job(c: asyncpg.Connection) -> int:
            status = await c.execute(
                "UPDATE messages SET q_lease_until = $3 WHERE q_state = 'claimed' "
                "AND q_claimed_by = $1 AND id = ANY($2::text[])",
                instance,
                ids,
                lease_until + self.clock_offset_ms,
            )
            return int(status.split()[-1])

        return await run_tx(self.pool, job, durable=False)

    async def record_routes(self, instance: str, routes: list[tuple[str, str]]) -> set[str]:
        ordered = sorted(dict(routes).items())  # rows locked in id order: no deadlock
        rows = await self.pool.fetch(
            "UPDATE messages m SET q_route = u.smsc "
            "FROM unnest($1::text[], $2::text[]) AS u(id, smsc) "
            "WHERE m.id = u.id AND m.q_state = 'claimed' AND m.q_claimed_by = $3 "
            "RETURNING m.id",
            [mid for mid, _s in ordered],
            [smsc for _m, smsc in ordered],
            instance,
        )
        return {r[0] for r in rows}

    async def claim(
        self,
        instance: str,
        limit: int,
        now: int,
        lease_ms: int,
        park: Callable[[str], str | None] | None = None,
        routable: Collection[str] = (),
    ) -> list[WorkMessage]:
        # Results the server may have lost are written again first; after a crash of the
        # server, nothing is claimed until the other instances wrote theirs (postgres_confirm).
        if not await self._confirm.settle():
            return []
        await self._give_back_unsure(now)
        # Their release is unconfirmed, or their unsure claim may still land: not ours again yet
        # (the next give-back would take back a message being sent).
        skip = {*self._confirm.releasing(), *self._unsure_claims}
        accounts = await pipe.queued_accounts(self.pool)  # outside a transaction: idle polls
        if not accounts:
            return []
        # Round-robin over accounts with work: one big batch cannot starve small senders.
        start = self._rr % len(accounts)
        self._rr += 1
        order = accounts[start:] + accounts[:start]
        keys = sorted(set(routable))
        taken: list[str] = []
        reports: list[int] = []  # queued by the claim's roll-ups (postgres_pipeline.claim)
        ran: list[bool] = []  # the job ran to its end: what fails after it is the COMMIT

        async def job(c: asyncpg.Connection) -> list[WorkMessage]:
            taken.clear()  # a retried run: the rolled-back one took nothing
            reports.clear()
            ran.clear()
            lease_until = now + lease_ms + self.clock_offset_ms  # the database's clock
            work = await pipe.claim(
                c,
                order,
                instance,
                limit,
                now,
                lease_until,
                park,
                keys,
                skip=skip,
                intermediate=self.send_intermediate,
                reports=reports,
            )
            taken.extend(w.id for w in work)
            ran.append(True)
            return work

        try:
            work = await run_tx(self.pool, job, durable=False)
            self.claim_reports += sum(reports)
            return work
        except BaseException:
            # The claim ran and its COMMIT failed: the connection broke (a crash of the server,
            # a cut link) after the server may have committed it. Its messages would then stay
            # claimed by this live instance, unsent, until the lease ran out (5 minutes).
            self._unsure_claims.update(dict.fromkeys(taken, instance))
            if ran:
                # And the reports its roll-ups queued are in the outbox if it landed: counted
                # as if it had, so the dispatcher wakes the webhook sender (else they waited
                # for its poll). One that did not land costs a spurious wake: one poll.
                self.claim_reports += sum(reports)
            raise

    async def _give_back_at_close(self) -> None:
        """A clean stop gives back its unsure claims itself: else they waited for another
        instance's takeover of a stopped instance's claims (~20 s), or this one's restart.
        Bounded as the pool's close is; a store away keeps them for that takeover."""
        if not self._unsure_claims:
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._give_back_unsure(round(self._local_clock() * 1000))
        except Exception as exc:  # a stop goes on: the takeover covers them
            log.warning(
                "%d messages of claims whose commit went unanswered not given back at close "
                "(%s): another instance takes them back once this one's heartbeat is old",
                len(self._unsure_claims),
                type(exc).__name__,
            )

    async def _give_back_unsure(self, now: int) -> None:
        """Back to the queue (due now, the attempt uncounted): the messages of claims whose
        COMMIT got no answer, if the server did commit them (else nothing is changed; another
        instance may have claimed them since). Durable: a crash must not leave them claimed.
        Raises while the store is away; they are kept for the next try."""
        if not self._unsure_claims:
            return
        async with self._giving_back:
            unsure = dict(self._unsure_claims)
            by_instance: dict[str, list[str]] = {}
            for mid, inst in unsure.items():
                by_instance.setdefault(inst, []).append(mid)

            async def job(c: asyncpg.Connection) -> tuple[int, set[str]]:
                given, held = 0, set[str]()
                for inst, mids in by_instance.items():
                    n, h = await pipe.give_back(c, inst, mids, now)
                    given, held = given + n, held | set(h)
                return given, held

            n, held = await run_tx(self.pool, job)
            for mid in unsure.keys() - held:  # held: perhaps that claim, its COMMIT under way
                self._unsure_claims.pop(mid, None)
        if n:
            log.warning(
                "%d messages of a claim whose commit went unanswered were claimed after all: "
                "given back to the queue",
                n,
            )

    async def clock_stepped_back(
        self,
        by_ms: int,
        now: int,
        leased_webhooks: Collection[int],
        progress: ClockShift | None = None,
    ) -> tuple[int, int]:
        shift = progress if progress is not None else ClockShift(by_ms, now)
        return await postgres_clock.shift_back(self.pool, shift, leased_webhooks)

    async def unpark(self, keys: Collection[str], now: int) -> int:
        keys = sorted(set(keys))
        if not keys:
            return 0

        chunk = UNPARK_CHUNK

        async def job(c: asyncpg.Connection) -> int:
            done = await c.execute(pipe.UNPARK, now, keys, chunk)
            return int(done.split()[-1])

        total = 0
        # A chunk per transaction: no million-row UPDATE holding its locks for long. Bounded:
        # another instance may park under a key as fast as this loop un-parks it.
        for _ in range(UNPARK_MAX_CHUNKS):
            n = await run_tx(self.pool, job, durable=False)
            total += n
            if n < chunk:
                break
        return total

    async def waiting_texts(
        self, after: tuple[Any, ...] | None, limit: int
    ) -> tuple[list[WaitingText], tuple[Any, ...] | None]:
        # In the queue index's order (account, due time, id): no sort.
        since = "AND (account_id, q_not_before, id) > ($2, $3, $4) " if after else ""
        rows = await self.pool.fetch(
            "SELECT account_id, q_not_before, id, recipient, text, data_coding, wire FROM messages "
            f"WHERE q_state = 'queued' {since}AND {NEVER_TRIED} AND text IS NOT NULL "
            "ORDER BY account_id, q_not_before, id LIMIT $1",
            limit,
            *(after or ()),
        )
        if not rows:
            return [], None
        parts: dict[str, list[NewSegment]] = {}
        for r in await self.pool.fetch(
            "SELECT message_id, seq, total, esm_class, short_message, tlvs FROM segments "
            "WHERE message_id = ANY($1::text[]) ORDER BY message_id, seq",
            [r["id"] for r in rows],
        ):
            parts.setdefault(r[0], []).append(
                NewSegment(r[1], r[2], r[3], bytes(r[4]), bytes(r[5]))
            )
        out = [WaitingText(r[2], r[3], r[4], r[5], tuple(parts.get(r[2], ())), r[6]) for r in rows]
        last = rows[-1]
        return out, (last[0], last[1], last[2]) if len(rows) == limit else None

    async def reencode(
        self,
        changes: Sequence[Reencoding],
        now: int,
        restamps: Sequence[tuple[str, int | None, int]] = (),
        claimed_by: str | None = None,
    ) -> int:
        # Where the message may be: queued, or claimed by `claimed_by` (then `$2`, after the id).
        args: tuple[str, ...]
        if claimed_by is None:
            state, args = "m.q_state = 'queued'", ()
        else:
            state, args = "m.q_state = 'claimed' AND m.q_claimed_by = $2", (claimed_by,)

        async def job(c: asyncpg.Connection) -> int:
            done = 0
            for ch in changes:
                row = await c.fetchrow(
                    "SELECT m.data_coding, s.short_message FROM messages m "
                    "JOIN segments s ON s.message_id = m.id AND s.seq = 1 "
                    f"WHERE m.id = $1 AND {state} AND {NEVER_TRIED} "
                    "FOR UPDATE OF m SKIP LOCKED",
                    ch.id,
                    *args,
                )
                if row is None or (row[0], bytes(row[1])) != (ch.was_data_coding, ch.was_first):
                    continue  # claimed, tried, canceled or encoded again since it was read
                await c.execute("DELETE FROM segments WHERE message_id = $1", ch.id)
                await c.executemany(
                    "INSERT INTO segments (message_id, seq, total, esm_class, short_message, "
                    "tlvs) VALUES ($1, $2, $3, $4, $5, $6)",
                    [
                        (ch.id, p.seq, p.total, p.esm_class, p.short_message, p.tlvs)
                        for p in ch.parts
                    ],
                )
                await c.execute(
                    "UPDATE messages SET encoding = $2, data_coding = $3, segments = $4, "
                    "wire = $5 WHERE id = $1",
                    ch.id,
                    ch.encoding,
                    ch.data_coding,
                    ch.segments,
                    ch.wire,
                )
                done += 1
            if restamps:  # parts already right for `wire`: only the stamp, if still as read
                n = len(args) + 2
                await c.execute(
                    f"UPDATE messages m SET wire = r.wire FROM unnest($1::text[], ${n}::int[], "
                    f"${n + 1}::int[]) AS r(id, was, wire) WHERE m.id = r.id AND {state} "
                    f"AND {NEVER_TRIED} AND m.wire IS NOT DISTINCT FROM r.was",
                    [mid for mid, _was, _wire in restamps],
                    *args,
                    [was for _mid, was, _wire in restamps],
                    [wire for _mid, _was, wire in restamps],
                )
            return done

        return await run_tx(self.pool, job)

    async def claimed_text(self, instance: str, message_id: str) -> WaitingText | None:
        row = await self.pool.fetchrow(
            "SELECT id, recipient, text, data_coding, wire FROM messages "
            f"WHERE id = $1 AND q_state = 'claimed' AND q_claimed_by = $2 AND {NEVER_TRIED} "
            "AND text IS NOT NULL",
            message_id,
            instance,
        )
        if row is None:
            return None
        parts = tuple(
            NewSegment(r[0], r[1], r[2], bytes(r[3]), bytes(r[4]))
            for r in await self.pool.fetch(
                "SELECT seq, total, esm_class, short_message, tlvs FROM segments "
                "WHERE message_id = $1 ORDER BY seq",
                message_id,
            )
        )
        return WaitingText(row[0], row[1], row[2], row[3], parts, row[4])

    async def _tx_counting(
        self,
        job: Callable[[asyncpg.Connection, dict[str, int]], Awaitable[T]],
        run: Callable[[Callable[[asyncpg.Connection], Awaitable[T]]], Awaitable[T]] | None = None,
    ) -> T:
        """A transaction (`run`, else run_tx) whose job counts, by SMSC, the parts it settled on
        another part's receipt: told to `on_inferred` at its first commit (a submit-result
        confirmation's rewrite after a server failure repeats it uncounted)."""
        counts: dict[str, int] = {}

        async def once(c: asyncpg.Connection) -> T:
            counts.clear()  # a transaction run again counts afresh
            return await job(c, counts)

        out = await (run(once) if run is not None else run_tx(self.pool, once))
        report_inferred(self, dict(counts))
        return out

    async def record_late_submits(self, items: list[pipe.LateAccept], now: int) -> int:
        one = self.one_receipt_smscs

        async def job(c: asyncpg.Connection, counts: dict[str, int]) -> int:
            return await pipe.record_late_submits(
                c,
                items,
                now,
                intermediate=self.send_intermediate,
                one_per_message=one,
                inferred=counts,
            )

        return await self._tx_counting(job, self._held_tx)

    async def record_submits(
        self,
        results: list[SubmitResult],
        releases: list[Release],
        now: int,
        *,
        instance: str | None = None,
    ) -> int:
        one = self.one_receipt_smscs

        async def job(c: asyncpg.Connection, counts: dict[str, int]) -> int:
            return await pipe.record_submits(
                c,
                results,
                releases,
                now,
                intermediate=self.send_intermediate,
                instance=instance,
                one_per_message=one,
                inferred=counts,
            )

        held = frozenset(rel.message_id for rel in releases)
        return await self._tx_counting(job, lambda once: self._held_tx(once, held))

    async def _held_tx(
        self,
        job: Callable[[asyncpg.Connection], Awaitable[int]],
        releases: frozenset[str] = frozenset(),
    ) -> int:
        """A submit-result write: committed without the flush, held until one confirms it,
        written again (durably) if the server failed first (bridge/store/postgres_confirm.py).
        Lost to a crash of the server after the dispatcher let the message go, it stayed
        claimed with no SMSC id and went out again when its lease ran out."""
        await self._confirm.ready()
        gen = self._confirm.gen()  # before the commit: a watch lost meanwhile proves nothing
        out = await run_tx(self.pool, job, durable=False)
        self._confirm.hold(lambda: run_tx(self.pool, job), gen, releases)
        return out

    async def infer_earlier_receipts(
        self, smscs: Collection[str], now: int, limit: int = 500
    ) -> int:
        """See the SQLite engine."""
        names = sorted(smscs)
        if not names:
            return 0
        sql = lc.EARLIER_RECEIPTED_SQL.format(smscs="SELECT unnest($1::text[])", limit="$2")
        mids = [r[0] for r in await self.pool.fetch(sql, names, limit)]
        if not mids:
            return 0

        async def job(c: asyncpg.Connection, counts: dict[str, int]) -> int:
            return await pipe.infer_earlier(c, mids, frozenset(names), now, counts)

        await self._tx_counting(job)
        return len(mids)

    async def apply_receipts(self, receipts: list[ReceiptIn], now: int) -> ReceiptOutcome:
        async def job(c: asyncpg.Connection, counts: dict[str, int]) -> ReceiptOutcome:
            late: dict[str, int] = {}
            matched, pending, reports = await pipe.apply_receipts(
                c, receipts, now, self.one_receipt_smscs, counts, late
            )
            return ReceiptOutcome(matched, pending, reports, late)

        async with self._receipts_in_order:
            return await self._tx_counting(job)

    async def refresh_stats(self) -> list[str]:
        return await postgres_stats.refresh(self.pool)

    async def sweep(
        self,
        now: int,
        receipt_timeout_ms: int,
        records_now: int | None = None,
        smsc_validity_ms: Mapping[str, int] | None = None,
        silent_smscs: Collection[str] = (),
    ) -> Swept:
        """Periodic housekeeping: validity expiry, receipt timeouts, expired nonces and keys."""

        after = [self._sweep_after]

        async def job(c: asyncpg.Connection) -> dict[str, int]:
            after[0] = self._sweep_after  # a retried run starts where the first one did
            return await pipe.sweep(
                c,
                now,
                receipt_timeout_ms,
                now if records_now is None else records_now,
                smsc_validity_ms or {},
                silent_smscs,
                after,
            )

        out = await run_tx(self.pool, job, durable=False)
        self._sweep_after = after[0]
        lapsed = 0
        low_balance: list[LowBalance] = []
        for account_id in await pipe.lapsing_accounts(self.pool, now):

            async def lapse(c: asyncpg.Connection, account_id: str = account_id) -> Any:
                return await pipe.lapse_vouchers(c, account_id, now)

            n, low = await run_tx(self.pool, lapse)
            lapsed += n
            if low is not None:
                low_balance.append(low)
        try:  # ends whose process stopped part-way (postgres_pending_ends)
            out["expired"] += await pending_ends.resume(self.pool, now)
        except Exception as exc:
            if isinstance(exc, StoreClosedError) or is_unavailable(exc):
                raise
            # The next sweep tries again; the claims keep guarding what it covers meanwhile.
            log.warning("sweep: resuming account-wide ends failed: %r", exc)
        return {
            "expired": out["expired"],
            "timed_out": out["timed_out"],
            "vouchers_lapsed": lapsed,
            "balance_warnings": len(low_balance),
            "low_balance": low_balance,
        }

    async def unmatched_receipts(self, older_than: int, limit: int) -> list[dict[str, Any]]:
        return await reports.unmatched_receipts(self.pool, older_than, limit)

    async def pending_receipt_count(self) -> int:
        return scalar(await self.pool.fetchval("SELECT COUNT(*) FROM pending_receipts"))

    # -- MO ---------------------------------------------------------------------------------------

    async def add_mo_part(self, part: MoPart) -> list[MoPart] | None:
        """See the SQLite engine: the part joins the set of its reference it fits."""
        key = (part.smsc, part.source, part.destination, part.ref)

        async def job(c: asyncpg.Connection) -> list[MoPart] | None:
            # Parts of one message can arrive on binds of two instances at once: serialise them,
            # else each sees only its own part and the message never completes. One lock for
            # every set of the reference: placing a part reads them all.
            await pipe.lock_keys(c, pipe.NS_MO, ["\x1f".join(map(str, key))])
            held = [
                mo_part(r)
                for r in await c.fetch(
                    f"SELECT {MO_PART_COLS} FROM mo_parts WHERE smsc = $1 AND source = $2 "
                    "AND destination = $3 AND ref = $4",
                    *key,
                )
            ]
            placed = replace(part, set_no=mo_sets.place_part(held, part))
            await c.execute(
                f"INSERT INTO mo_parts ({MO_PART_COLS}) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) "
                "ON CONFLICT (smsc, source, destination, ref, set_no, seq) DO UPDATE SET "
                "total = EXCLUDED.total, data_coding = EXCLUDED.data_coding, "
                "payload = EXCLUDED.payload, received_at = EXCLUDED.received_at, "
                "source_ton = EXCLUDED.source_ton, lang_locking = EXCLUDED.lang_locking, "
                "lang_single = EXCLUDED.lang_single",
                *mo_part_values(placed),
            )
            # The parts stay until the MO itself is stored (store_mo_from_parts).
            return mo_sets.completed(held, placed)

        return await run_tx(self.pool, job)

    async def drop_mo_parts(
        self, smsc: str, source: str, destination: str, ref: int, set_no: int = 0
    ) -> None:
        async def job(c: asyncpg.Connection) -> None:
            await c.execute(
                "DELETE FROM mo_parts WHERE smsc = $1 AND source = $2 AND destination = $3 "
                "AND ref = $4 AND set_no = $5",
                smsc,
                source,
                destination,
                ref,
                set_no,
            )

        await run_tx(self.pool, job)

    async def store_mo(self, mo: MoMessage) -> bool:
        async def job(c: asyncpg.Connection) -> bool:
            return await self._insert_mo(c, mo)

        return await run_tx(self.pool, job)

    @staticmethod
    async def _insert_mo(c: asyncpg.Connection, mo: MoMessage) -> bool:
        inserted = await c.fetchval(
            f"INSERT INTO mo_inbox ({MO_COLS}) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
            "ON CONFLICT (id) DO NOTHING RETURNING 1",
            *mo_values(mo),
        )
        if inserted is None:
            return False  # kept already (another instance's sweep, a redo), push queued
        if mo.account_id is not None:
            await _enqueue_webhook(
                c, mo.account_id, "mo", mo.id, None, f"mo_{mo.id}", mo.received_at
            )
        return True

    async def store_mo_from_parts(
        self, mo: MoMessage | None, parts: Sequence[MoPart]
    ) -> bool | None:
        """Store `mo`, made of `parts` (one group as `stale_mo_groups` read it), and drop those
        parts, in one transaction, but only while the group still holds exactly them (see the
        SQLite engine). The lock `add_mo_part` takes: a part arriving on another instance
        either committed first (the group then differs: None, nothing done) or waits; so does
        an erasure dropping the parts (postgres_rules._drop_mo_groups), which then masks this
        MO if it was stored first."""
        first = parts[0]
        key = (first.smsc, first.source, first.destination, first.ref)
        where = (*key, first.set_no)
        expected = [(p.seq, p.total, p.received_at) for p in parts]

        async def job(c: asyncpg.Connection) -> bool | None:
            await pipe.lock_keys(c, pipe.NS_MO, ["\x1f".join(map(str, key))])
            kept = await c.fetch(
                "SELECT seq, total, received_at FROM mo_parts WHERE smsc = $1 AND source = $2 "
                "AND destination = $3 AND ref = $4 AND set_no = $5 ORDER BY seq",
                *where,
            )
            if [tuple(r) for r in kept] != expected:
                return None
            inserted = mo is not None and await self._insert_mo(c, mo)
            await c.execute(
                "DELETE FROM mo_parts WHERE smsc = $1 AND source = $2 AND destination = $3 "
                "AND ref = $4 AND set_no = $5",
                *where,
            )
            return inserted

        return await run_tx(self.pool, job)

    async def sender_assignments(self) -> list[tuple[str, tuple[str, ...]]]:
        rows = await self.pool.fetch(_ASSIGNMENTS_SQL)
        return [(r[0], senders_of(r[1])) for r in rows]

    async def attribute_mo(
        self,
        source: str,
        senders: Sequence[str],
        now: int,
        *,
        default: bool = False,
        accounts: Sequence[str] = (),
    ) -> tuple[str, str | None] | None:
        """(account, sign name) of the message a reply from `source` answers (see the SQLite
        engine): never one written from another address than the one the reply went to."""
        row = await self.pool.fetchrow(
            "SELECT account_id, sign_name FROM messages WHERE recipient = $1 AND accepted_at >= $2 "
            "AND COALESCE(sent_at, scheduled_at, accepted_at) >= $6 "
            "AND (sender = ANY($3::text[]) OR ($4 AND sender IS NULL)) "
            "AND (cardinality($5::text[]) = 0 OR account_id = ANY($5::text[])) "
            # A closed account's rows not masked yet (postgres_ends.masking) still name the
            # number, but a reply is not its any more, as once they are masked.
            "AND account_id NOT IN (SELECT account_id FROM pending_ends WHERE scope = 'erase') "
            "ORDER BY (segments_sent > 0) DESC, COALESCE(sent_at, scheduled_at, accepted_at) DESC, "
            "id DESC LIMIT 1",
            source,
            now - 60 * 86_400_000,
            list(senders),
            default,
            list(accounts),
            now - 30 * 86_400_000,
        )
        return (row[0], row[1]) if row else None

    async def get_mo(self, mo_id: str) -> MoMessage | None:
        row = await self.pool.fetchrow(
            f"SELECT {MO_COLS}, {ends.MO_MASKING} FROM mo_inbox WHERE id = $1", mo_id
        )
        # A closed account's, its inbox's masking under way: as the masking will leave it.
        return masked_mo(mo_message(tuple(row)[:-1]), row[-1]) if row else None

    async def stale_mo_groups(self, older_than: int, limit: int) -> list[list[MoPart]]:
        rows = await self.pool.fetch(
            f"SELECT {MO_PART_COLS} FROM mo_parts p JOIN ("
            "SELECT smsc, source, destination, ref, set_no, MIN(received_at) AS started "
            "FROM mo_parts GROUP BY smsc, source, destination, ref, set_no "
            "HAVING MAX(received_at) < $1 "
            "ORDER BY started, smsc, source, destination, ref, set_no LIMIT $2"
            ") g USING (smsc, source, destination, ref, set_no) "
            "ORDER BY g.started, smsc, source, destination, ref, set_no, seq",
            older_than,
            limit,
        )
        return group_mo_parts(mo_part(r) for r in rows)

    # -- instances -------------------------------------------------------------------------------

    async def heartbeat(self, instance: str, role: str, now: int, status: str) -> None:
        async def job(c: asyncpg.Connection) -> None:
            await self._measure_offset(c)
            at = now + self.clock_offset_ms  # the database's clock, as every instance reads it
            await c.execute(
                "INSERT INTO instances (instance, role, heartbeat_at, status) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (instance) DO UPDATE SET "
                "role = EXCLUDED.role, heartbeat_at = EXCLUDED.heartbeat_at, "
                "status = EXCLUDED.status",
                instance,
                role,
                at,
                status,
            )
            # Forget processes silent for a day: restarts get new instance names.
            await c.execute("DELETE FROM instances WHERE heartbeat_at < $1", at - 86_400_000)

        await run_tx(self.pool, job, durable=False)

    async def instances(self, since: int) -> list[tuple[str, str, int, str]]:
        rows = await self.pool.fetch(
            "SELECT instance, role, heartbeat_at, status FROM instances "
            "WHERE heartbeat_at >= $1 ORDER BY heartbeat_at DESC",
            since + self.clock_offset_ms,
        )
        # Back in this process's clock, which the caller compares them with.
        off = self.clock_offset_ms
        return [(r[0], r[1], r[2] - off, r[3]) for r in rows]

    # -- webhooks ---------------------------------------------------------------------------------

    async def claim_webhooks(
        self,
        now: int,
        limit: int,
        lease_ms: int,
        exclude: Sequence[str] = (),
        *,
        holder: str | None = None,
    ) -> list[WebhookJob]:
        """Due outbox rows, leased for `lease_ms` by `holder`: rows another instance is
        claiming are skipped, so each report is handed to one sender (if it dies mid-POST,
        `free_webhook_leases` gives them back); none of the accounts in `exclude` (this
        sender's POSTs to them are at their cap). What an earlier claim whose COMMIT got no
        answer leased is due again first (postgres_webhooks)."""
        await self._unsure_webhooks.give_back(self.pool, now)
        taken: list[int] = []

        async def job(c: asyncpg.Connection) -> list[WebhookJob]:
            taken.clear()  # a retried run: the rolled-back one leased nothing
            rows = await c.fetch(
                "WITH due AS (SELECT id, next_attempt_at FROM webhook_outbox "
                "WHERE state = 'pending' AND next_attempt_at <= $1 "
                "AND NOT (account_id = ANY($4::text[])) "
                "ORDER BY next_attempt_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) "
                "UPDATE webhook_outbox o SET next_attempt_at = $3, leased_by = $5 "
                "FROM due, accounts a "
                "WHERE o.id = due.id AND a.id = o.account_id "
                "RETURNING o.id, o.webhook_id, o.account_id, o.kind, "
                "CASE o.kind WHEN 'mo' THEN a.mo_callback_url ELSE a.status_callback_url END, "
                "o.payload, o.attempts, o.ref_id, o.created_at, due.next_attempt_at, "
                "o.retry_from",
                now,
                limit,
                now + lease_ms,
                list(exclude),
                holder,
            )
            taken.extend(r[0] for r in rows)
            rows = sorted(rows, key=lambda r: (r[9], r[0]))
            return [
                WebhookJob(
                    id=r[0],
                    webhook_id=r[1],
                    account_id=r[2],
                    kind=r[3],
                    url=r[4] or "",
                    payload=r[5] if r[5] is not None else (r[7] or ""),
                    attempts=r[6],
                    created_at=r[8],
                    lease=now + lease_ms,
                    retry_from=r[10],
                )
                for r in rows
            ]

        try:
            return await run_tx(self.pool, job, durable=False)
        except BaseException:
            # The COMMIT may have landed as the connection broke (or as a stop cancelled it):
            # the reports would stay leased by this live instance, unposted, for the lease.
            self._unsure_webhooks.add(taken, holder, now + lease_ms)
            raise

    async def webhook_done(self, ids: list[int], now: int, lease: int | None = None) -> None:
        async def job(c: asyncpg.Connection) -> None:
            await c.execute(
                "UPDATE webhook_outbox SET state = 'delivered', delivered_at = $2, "
                "leased_by = NULL, attempts = attempts + 1 WHERE id = ANY($1::bigint[])"
                + _leased(3),
                ids,
                now,
                lease,
            )

        await self._webhook_mark(job, lease)

    async def webhook_retry(
        self, ids: list[int], next_at: int, error: str, dead: bool, lease: int | None = None
    ) -> None:
        async def job(c: asyncpg.Connection) -> None:
            await c.execute(
                "UPDATE webhook_outbox SET state = $2, next_attempt_at = $3, last_error = $4, "
                "leased_by = NULL, attempts = attempts + 1 WHERE id = ANY($1::bigint[])"
                + _leased(5),
                ids,
                "dead" if dead else "pending",
                next_at,
                error[:500],
                lease,
            )

        await self._webhook_mark(job, lease)

    async def webhook_release(self, ids: list[int], lease: int, now: int) -> None:
        """Hand back claimed reports not started: due at once, behind those due earlier."""

        async def job(c: asyncpg.Connection) -> None:
            await c.execute(
                "UPDATE webhook_outbox SET next_attempt_at = $2, leased_by = NULL "
                "WHERE id = ANY($1::bigint[])" + _leased(3),
                ids,
                now,
                lease,
            )

        await self._webhook_mark(job, lease)

    async def _webhook_mark(self, job: Job[None], lease: int | None) -> None:
        """A sender's write about reports it leased (delivered, retry, handed back), committed
        without the flush and held by the confirmer as submit results are: a crash of the server
        that lost it (the last ~0.6 s of such commits) had the reports wait out their lease, and
        a delivered one posted again. Written again once the server is back, it lands if it
        was lost, and only then: it is fenced by the lease (`_leased`), which no later claim
        shares. One whose COMMIT failed on an unavailable store is held too (it may not have
        landed): written as soon as the store answers, even after the lease ran out if no
        sender leased the reports since. A write without a lease is not fenced: not held."""
        if lease is None:
            await run_tx(self.pool, job, durable=False)
            return
        await self._confirm.ready()
        gen = self._confirm.gen()  # before the commit: a watch lost meanwhile proves nothing
        again = partial(run_tx, self.pool, job)
        try:
            await run_tx(self.pool, job, durable=False)
        except Exception as exc:
            if is_unavailable(exc):
                self._confirm.hold(again, -1)  # unproven: written again once it can be
            raise
        self._confirm.hold(again, gen)

    async def free_webhook_leases(self, now: int, *, at_start: bool) -> int:
        """Reports leased by an instance that is gone (the test of `reclaim`: no heartbeat for
        DEAD_AFTER_MS and no instance lock) are due at once, instead of after their lease
        (3 x webhooks.timeout_s + 10 s). At start-up as later: the instance starting has a new
        id, so none of the leases is its own."""

        async def job(c: asyncpg.Connection) -> int:
            status = await c.execute(
                pipe.FREE_WEBHOOK_LEASES, now, now + self.clock_offset_ms - pipe.DEAD_AFTER_MS
            )
            return int(status.split()[-1])

        return await run_tx(self.pool, job, durable=False)

    async def dead_webhooks(self, account_id: str | None, limit: int) -> list[dict[str, Any]]:
        return await reports.dead_webhooks(self.pool, account_id, limit)

    async def replay_webhooks(self, ids: list[int], now: int) -> int:
        rows = await self.pool.fetch(
            "UPDATE webhook_outbox SET state = 'pending', next_attempt_at = $2, attempts = 0, "
            "retry_from = $2 WHERE id = ANY($1::bigint[]) AND state = 'dead' RETURNING 1",
            list(ids),
            now,
        )
        return len(rows)

    async def enqueue_event(
        self, account_id: str, kind: str, payload: str, webhook_id: str, now: int
    ) -> None:
        async def job(c: asyncpg.Connection) -> None:
            await _enqueue_webhook(c, account_id, kind, None, payload, webhook_id, now)

        await run_tx(self.pool, job)

    async def webhook_backlog(self) -> tuple[int, int, int | None]:
        pending, dead, oldest = await self.pool.fetchrow(WEBHOOK_BACKLOG)
        return int(pending), int(dead), oldest

    async def chunked_work(self) -> dict[str, tuple[int, int | None]]:
        # The account-wide ends and a close's masking (postgres_pending_ends), and a close's
        # deletion of stored answers, counted as SQLite counts them; the others run in one
        # transaction here.
        rows = await self.pool.fetch(
            "SELECT scope = 'answers', COUNT(*), MIN(worked_at) FROM pending_ends GROUP BY 1"
        )
        out: dict[str, tuple[int, int | None]] = {"ends": (0, None)}
        for answers, n, oldest in rows:
            out["erasures" if answers else "ends"] = (int(n), oldest)
        return out

    async def webhook_counts(self) -> dict[str, int]:
        rows = await self.pool.fetch("SELECT state, COUNT(*) FROM webhook_outbox GROUP BY state")
        return {r[0]: int(r[1]) for r in rows}

    # -- reports and operator views (SQL in postgres_reports.py) -----------------------------------

    async def cdr_page(
        self, account_id: str, since: int, until: int, after: tuple[int, str] | None, limit: int
    ) -> list[MessageRecord]:
        # A close's masking under way, probed first: one that starts after the probe is
        # finished by the time the close answers.
        mask = await ends.masking(self.pool, account_id)
        page = await reports.cdr_page(self.pool, account_id, since, until, after, limit)
        return page if mask is None else [masked(r, mask) for r in page]

    async def queue_groups(self, now: int, route_prefixes: Iterable[str]) -> list[QueueGroup]:
        return await reports.queue_groups(self.pool, now, route_prefixes)

    async def count_unmatched_receipts(self, older_than: int) -> tuple[int, int]:
        return await reports.count_unmatched_receipts(self.pool, older_than)

    async def count_dead_webhooks(self, account_id: str | None) -> int:
        return await reports.count_dead_webhooks(self.pool, account_id)

    async def unattributed_mo(self, before: tuple[int, str] | None, limit: int) -> list[MoMessage]:
        return await reports.unattributed_mo(self.pool, before, limit)


# -- helpers ---------------------------------------------------------------------------------------


async def _migrate(conn: asyncpg.Connection, *, writes: bool = True) -> int:
    """Apply pending migrations, each in its own transaction, under a session advisory lock: of
    several instances starting together one migrates, the others wait and find nothing to do.
    Returns the version found (0: a new database)."""
    await conn.execute("SELECT pg_advisory_lock($1, 0)", pipe.NS_MIGRATE)
    try:
        # Created only when missing: CREATE ... IF NOT EXISTS needs the CREATE privilege on the
        # schema even when the table is there, so a daemon whose role does not own the schema
        # (another role ran `db migrate`, README "Upgrades") could not start at all.
        if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
            # Or there, in a schema the role may not use (no USAGE: not seen): named, not
            # taken for a new database ("may not create the schema" sent the operator astray).
            if (lacking := await missing_grants(conn, writes=writes)) is not None:
                raise StoreUnusableError(lacking)
            await _as_owner(conn, "CREATE TABLE schema_version (version INTEGER NOT NULL)", 0)
        try:
            current = scalar(await conn.fetchval("SELECT MAX(version) FROM schema_version"))
        except asyncpg.InsufficientPrivilegeError as exc:  # no SELECT on it: named with the rest
            raise StoreUnusableError(
                await missing_grants(conn, writes=writes) or str(exc)
            ) from None
        for version, _name, sql in migrate.pending("postgres", current):
            async with conn.transaction():
                await _as_owner(conn, sql, version)
                await conn.execute("INSERT INTO schema_version(version) VALUES ($1)", version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1, 0)", pipe.NS_MIGRATE)
    return int(current or 0)


async def _as_owner(conn: asyncpg.Connection, sql: str, version: int) -> None:
    """A migration's statements; a role without the privilege to run them is refused naming
    the fix (asyncpg's "permission denied for schema public" named neither)."""
    try:
        await conn.execute(sql)
    except (asyncpg.InsufficientPrivilegeError, asyncpg.InvalidSchemaNameError) as exc:
        # InvalidSchemaNameError: "no schema has been selected to create in", a new database
        # whose schemas this role may not use (USAGE) either.
        what = f"apply migration {version}" if version else "create the schema"
        raise StoreUnusableError(
            f"the database role may not {what} ({exc}): run `smpp-bridge db "
            "migrate` as the role that owns the schema, then GRANT this one its tables and "
            "sequences (README: Scale-out on PostgreSQL)"
        ) from None


def _authorized(row: Any) -> tuple[str, Account | None]:
    if row is None:
        return "unknown_key", None
    account = _account(tuple(row)[1 : 1 + _N_ACCOUNT_COLS])
    if row["key_status"] != "active":
        return "revoked", account
    if not row["fresh"]:
        return "nonce_reused", account
    return "ok", account


async def _idem(
    c: asyncpg.Connection | asyncpg.Pool, account_id: str, key: str, now: int
) -> IdempotencyRecord | None:
    row = await c.fetchrow(
        "SELECT request_hash, status_code, response, expires_at FROM idempotency "
        "WHERE account_id = $1 AND key = $2",
        account_id,
        key,
    )
    if row is None or row[3] <= now:
        return None
    return IdempotencyRecord(request_hash=row[0], status_code=row[1], response=bytes(row[2]))


async def _lock_account(
    c: asyncpg.Connection,
    batch: AcceptBatch,
    now: int,
    head: _HeadWrites,
    by_version: OrderedDict[str, tuple[int, Account]],
) -> float | AcceptOutcome:
    """The first statement of an accept under sending rules (see _RULES_HEAD_AUTH): the account
    lock, the deferred authorisation and the idempotency record. Returns the TPS to enforce, or
    the outcome of an idempotent replay (the first request's record); raises _AuthRefused.
    `head` says what the statement wrote."""
    idem = batch.idempotency if batch.idempotency_key is not None else None
    if batch.nonce is not None and batch.key_id is not None:
        known = _held(by_version, batch.account_id)
        row = await c.fetchrow(_RULES_HEAD_AUTH, *_head_args(batch, now, known))
        return await _check_head(c, row, batch, now, head, known, by_version)
    head.locked = True
    tps = batch.tps if batch.account_version is None else await _current_tps(c, batch)
    if idem is not None:
        stored, replaced = await c.fetchrow(
            _RULES_HEAD_IDEM,
            batch.account_id,
            batch.idempotency_key,
            idem.request_hash,
            idem.status_code,
            idem.response,
            batch.idempotency_expires_at,
            now,
        )
        head.idempotency, head.replaced = bool(stored), bool(replaced)
        if not stored:
            return await _replayed(c, batch, now)
    elif batch.account_version is None:
        await c.execute(_LOCKED_ACCOUNT, batch.account_id)
    return tps


async def _current_tps(c: asyncpg.Connection, batch: AcceptBatch) -> float:
    """No deferred authorisation (the Alibaba face records its nonce before the action runs):
    the account, locked now, is still checked where the send is written, as SQLite's is, so one
    disabled or changed a moment ago is refused. Its live TPS."""
    row = await c.fetchrow(_LOCKED_ACCOUNT, batch.account_id)
    current = _account(tuple(row)) if row is not None else None
    why = refusal_of(current, batch.account_version or 0)
    if why is not None or current is None:
        raise _AuthRefused(why or "disabled", current if why == "stale" else None)
    return current.tps


def _head_args(batch: AcceptBatch, now: int, known: tuple[int, Account] | None) -> tuple[Any, ...]:
    """The eleven parameters of the signed accept's first statement (_HEAD_KEY, then the version
    of `known`, the account the process holds: _HEAD_COLS)."""
    idem = batch.idempotency if batch.idempotency_key is not None else None
    return (
        batch.account_id,
        batch.key_id,
        batch.nonce,
        batch.nonce_expires_at,
        now,
        batch.idempotency_key if idem is not None else None,
        idem.request_hash if idem is not None else None,
        idem.status_code if idem is not None else None,
        idem.response if idem is not None else None,
        batch.idempotency_expires_at,
        None if known is None else known[0],
    )


def _held(
    by_version: OrderedDict[str, tuple[int, Account]], account_id: str
) -> tuple[int, Account] | None:
    """The (row_version, Account) held for `account_id`, now the most recently used, or None."""
    hit = by_version.get(account_id)
    if hit is not None:
        by_version.move_to_end(account_id)
    return hit


def _head_account(
    row: Any,
    known: tuple[int, Account] | None,
    by_version: OrderedDict[str, tuple[int, Account]],
) -> Account:
    """The Account of a head's row: `known`'s when the statement answered NULL for it (the row
    still has that version), else built from the row and kept with its version."""
    version = row[_HEAD_VERSION_AT]
    if known is not None and row[1] is None and version == known[0]:
        return known[1]
    account = _account(tuple(row)[1 : 1 + _N_ACCOUNT_COLS])
    if version is not None:
        by_version.pop(account.id, None)  # stored again: the newest
        by_version[account.id] = (version, account)
        while len(by_version) > cache_size():
            by_version.popitem(last=False)
    return account


async def _check_head(
    c: asyncpg.Connection,
    row: Any,
    batch: AcceptBatch,
    now: int,
    head: _HeadWrites,
    known: tuple[int, Account] | None,
    by_version: OrderedDict[str, tuple[int, Account]],
) -> float | AcceptOutcome:
    """The authorisation from the signed accept's first statement (see _lock_account); `known`
    the (version, Account) its parameters named, `by_version` where a new one is kept."""
    if row is None:  # no such key, or a key of another account
        raise _AuthRefused("unknown_key")
    head.locked = True
    # By position (_HEAD_COLS: the key's status first, then the account's columns, its
    # version, fresh, stored, replaced): a Record's lookup by name is a mapping's (session 62).
    fresh, stored, replaced = row[_HEAD_VERSION_AT + 1 : _HEAD_VERSION_AT + 4]
    head.nonce, head.idempotency = fresh > 0, stored > 0
    head.replaced = replaced > 0
    account = _head_account(row, known, by_version)
    # The order of the SQLite engine's checks (_authorize, then the account's state).
    if row[0] != "active":  # key_status
        raise _AuthRefused("revoked")
    if not fresh:
        raise _AuthRefused("nonce_reused")
    if not account.active:
        raise _AuthRefused("disabled")
    if batch.account_version is not None and account.updated_at != batch.account_version:
        raise _AuthRefused("stale", account)
    if batch.idempotency_key is not None and batch.idempotency is not None and not stored:
        return await _replayed(c, batch, now)
    return account.tps


async def _replayed(c: asyncpg.Connection, batch: AcceptBatch, now: int) -> AcceptOutcome:
    """A live record for this idempotency key: the first request won. Read by a new statement,
    which sees the record even if its writer committed while this transaction waited for it."""
    existing = await _idem(c, batch.account_id, batch.idempotency_key or "", now)
    return AcceptOutcome(accepted=False, existing=existing)


async def _take_rate(c: asyncpg.Connection, account_id: str, tps: float, n: int, now: int) -> None:
    """The account's token bucket, row-locked so concurrent accepts on every instance share it."""
    row = await c.fetchrow(_RATE_BUCKET, account_id)
    if row is None:
        # First use: create the row so the next concurrent request has something to lock.
        await c.execute(
            "INSERT INTO rate_buckets (account_id, tokens, at) VALUES ($1, 'NaN', 0) "
            "ON CONFLICT (account_id) DO NOTHING",
            account_id,
        )
        row = await c.fetchrow(_RATE_BUCKET, account_id)
    assert row is not None
    tokens, at = row[0], row[1]
    if tokens != tokens:  # NaN: created above (by us or a concurrent request), never used yet
        tokens = at = None
    wait, tokens, at = bucket_take(tokens, at, tps, n, now / 1000)
    if wait > 0:
        raise _RateLimited(wait)  # rolls back the idempotency record too
    await c.execute(
        "UPDATE rate_buckets SET tokens = $2, at = $3 WHERE account_id = $1", account_id, tokens, at
    )


async def _insert_messages(c: asyncpg.Connection, batch: AcceptBatch) -> None:
    await c.execute(_INSERT_MESSAGES, *_message_arrays(batch))


def _shape(batch: AcceptBatch) -> int:
    """How _message_arrays passes the batch: 0 every column an array, 1 one message's columns
    as values (its parts' as arrays), 2 one message of one part: every column a value."""
    msgs = batch.messages
    if len(msgs) != 1:
        return 0
    return 2 if len(msgs[0].segments) == 1 else 1


def _message_arrays(batch: AcceptBatch, shape: int = 0) -> list[Any]:
    """$1..$26 of _INSERT_MESSAGES / _ACCEPT_SEND / _WRITE_MESSAGES[shape]: one array per
    column, or values as _shape says."""
    msgs = batch.messages
    if shape:
        (m,) = msgs
        if shape == 2:
            (s,) = m.segments
            return [*m.insert_values(), m.id, s.seq, s.total, s.esm_class, s.short_message, s.tlvs]
        return [*m.insert_values(), *_segment_arrays([(m.id, s) for s in m.segments])]
    segs = [(m.id, s) for m in msgs for s in m.segments]
    rows = [m.insert_values() for m in msgs]
    # One array per column (20 empty ones for no message, as the statement's parameters need).
    columns = [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * 20
    return [*columns, *_segment_arrays(segs)]


# A part's five columns in one C call (NewSegment's fields in _SEGMENT_ARRAYS' order), and the
# literal of n ints by one printf-style format (a concatenated message has at most 255 parts).
_PART = attrgetter("seq", "total", "esm_class", "short_message", "tlvs")
_INT_FORMS = tuple("{" + ",".join(["%d"] * n) + "}" for n in range(256))


def _segment_arrays(segs: list[tuple[str, Any]]) -> list[str]:
    """$21..$26 of _SEGMENT_ARRAYS: each column an array literal (postgres_arrays).

    Session 63: the columns by two transpositions in C (the ids from the parts, then each
    part's five fields by one attrgetter), the ints written by one format (_ints) and the bytes
    by bytea_array's join, not a comprehension a column and int_array's one-value check and
    repeat: three UCS-2 parts' six literals were ~66 k instructions (callgrind, Python 3.11),
    ~9 % of such an accept. The same literals (tests/unit/test_session63_pg_parts.py)."""
    if not segs:
        return ["{}"] * 6  # what text_array, int_array and bytea_array give for no element
    ids, parts = zip(*segs, strict=True)
    seqs, totals, esms, texts, tlvs = zip(*map(_PART, parts), strict=True)
    return [
        text_array(list(ids)),
        _ints(seqs),
        _ints(totals),
        _ints(esms),
        bytea_array(texts),
        bytea_array(tlvs),
    ]


def _ints(values: tuple[Any, ...]) -> str:
    """int_array(values): "%d" writes an int (a bool as its number) as int.__repr__ does, and a
    float or another number as int() of it, as int_array's element-wise form; anything else
    (a None, a str) raises TypeError there and goes to int_array, as does a column longer than
    the formats kept."""
    if len(values) < len(_INT_FORMS):
        try:
            return _INT_FORMS[len(values)] % values
        except TypeError:
            pass
    return int_array(values)


# The usual accept's write CTEs' text by (shape, its message arguments, its ledger entries),
# made once by the general form (Writes.add, add_plan) and kept: see _usual_writes.
_USUAL_WRITES: dict[tuple[int, int, int], str] = {}


def _usual_writes(
    batch: AcceptBatch, shape: int, plan: adm.Plan, n: int
) -> rules_sql.Writes | None:
    """An accept's writes without a rate, with one ledger entry or none and no low-balance
    event (the usual send under the sending rules), or None for any other (the caller builds
    those). Why (session 61): the general form (Writes.add of the messages' and parts'
    inserts, add_plan's day count, add_entries' ledger row and pocket) formats, looks up and
    joins the same seven CTEs accept after accept, ~50 k instructions (callgrind, Python
    3.11): here the text is the one that form made for the first accept of the same shape
    (kept in _USUAL_WRITES) and the arguments are listed in the order it adds them (the
    messages' columns, then add_plan's account, day and count, then add_entries' six ledger
    values after the account, whose placeholders the pocket's CTEs name again: session 64).
    tests/unit/test_session61_pg_usual_writes.py holds the two forms to the same text and
    arguments."""
    entries = plan.entries
    if plan.low_balance is not None or len(entries) > 1:
        return None
    args = _message_arrays(batch, shape)
    key = (shape, len(args), len(entries))
    text = _USUAL_WRITES.get(key)
    acc = batch.account_id
    if text is None:  # the first of its shape: the general form, kept
        w = rules_sql.Writes(args)
        w.add(_WRITE_MESSAGES[shape][0])
        w.add(_WRITE_MESSAGES[shape][1])
        rules_sql.add_plan(w, acc, plan, n)
        _USUAL_WRITES[key] = w.ctes()
        return w
    if entries:
        ((_m, e),) = entries
        args += (acc, plan.day, n, str(e.kind), e.amount, e.pocket, e.at, e.ref, e.expires_at)
    else:
        args += (acc, plan.day, n)
    return rules_sql.Writes.fixed(args, text)


async def _enqueue_webhook(
    c: asyncpg.Connection,
    account_id: str,
    kind: str,
    ref_id: str | None,
    payload: str | None,
    webhook_id: str,
    now: int,
) -> None:
    url_col = "mo_callback_url" if kind == "mo" else "status_callback_url"
    # Only when a callback is configured (the status is still queryable without one).
    await c.execute(
        "INSERT INTO webhook_outbox (webhook_id, account_id, kind, ref_id, payload, "
        "next_attempt_at, created_at) "
        f"SELECT $1, id, $2, $3, $4, $5, $5 FROM accounts WHERE id = $6 AND {url_col} <> '' "
        "ON CONFLICT (webhook_id) DO NOTHING",
        webhook_id,
        kind,
        ref_id,
        payload,
        now,
        account_id,
    )
