"""SQLite engine of the Store protocol: one WAL file, group commit, migrations at open."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from functools import lru_cache, partial
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any

import orjson

from bridge import jsonio
from bridge.domain import admission as adm
from bridge.domain import lifecycle as lc
from bridge.domain import mo_sets
from bridge.domain.rate import bucket_take
from bridge.domain.skew_window import SkewWindow, next_window
from bridge.fastinit import maker
from bridge.ids import id_time_ms, new_id
from bridge.logs import Failures
from bridge.store import (
    base,
    key_warmup,
    migrate,
    sqlite_binds,
    sqlite_clock,
    sqlite_dnc,
    sqlite_rows,
    sqlite_rules,
    sqlite_senders,
)
from bridge.store import sqlite_chunked as chunked
from bridge.store import sqlite_ends as ends
from bridge.store import sqlite_erase as erasures
from bridge.store import sqlite_pipeline as pipe
from bridge.store import sqlite_reports as reports
from bridge.store import sqlite_restore as restored
from bridge.store.account_rows import ACCOUNT_COLS as _ACCOUNT_COLS
from bridge.store.account_rows import (
    ACCOUNT_JSON_SQLITE,
    AUDIT_COLS,
    AUDIT_PAGE,
    KEY_COLS,
    RESEAL,
    REVOKED_SENDS,
    SEALED_SECRETS,
    account_at_version,
    account_json_cached,
    audit_row,
    audit_values,
    column_value,
    refusal_of,
    remember_version,
    senders_of,
)
from bridge.store.account_rows import ASSIGNMENTS_SQL as _ASSIGNMENTS_SQL
from bridge.store.account_rows import account_row as _account
from bridge.store.account_rows import key_row as _key
from bridge.store.base import (
    ACCOUNT_DISABLED_ERROR,
    CLAIM_SCAN_FACTOR,
    CLOSED_MESSAGE,
    KEYS_USED_CHUNK,
    PARK_AGAIN_MS,
    PARK_MS,
    PURGE_CHUNK,
    UNPARK_CHUNK,
    UNPARK_MAX_CHUNKS,
    WEBHOOK_BACKLOG,
    WEBHOOK_RETENTION_MS,
    LowBalance,
    StoreClosedError,
    StoreError,
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
    WorkSegment,
)
from bridge.store.rules_rows import END_ERROR, LOW_WARNED_ON_THRESHOLD, NEVER_TRIED
from bridge.store.sqlite_retention import RetentionMixin
from bridge.store.sqlite_rows import PENDING
from bridge.store.sqlite_rules import RulesStoreMixin
from bridge.store.sqlite_runner import SqliteRunner, T

# The key's status and its account as one JSON column (account_rows.ACCOUNT_JSON_SQLITE).
_AUTHORIZE_SQL = (
    f"SELECT k.status, {ACCOUNT_JSON_SQLITE.format(t='a')} "
    "FROM app_keys k JOIN accounts a ON a.id = k.account_id WHERE k.key_id=?"
)


# The key's statement of an accept that reads the facts too: its first column, the head, is NULL
# when the key is active and the account's row has the version whose Account the accept holds
# (`:aver`, account_rows.account_at_version; migration 0037), the usual; else the text
# "F V J": F 1 when the key is not active (0 when it is), V the row's version (empty unless an
# integer), J the account as JSON, empty when the row has the version held. Then the facts'
# columns (`sqlite_rules.key_cols`), named (`AS`), as `sqlite_rules._one_cols` names its own (the
# cursor's description: session 58). One column where three were (the key's status, the
# account's JSON and its version): each column ~1.5 k instructions of the write lock (session 62).
# Probed (an accept whose nonce and idempotency record are held to its batch's end: session 64,
# `_probed`), the head is NULL only when the nonce is not stored either, nor (when the send has
# one) the account's Idempotency-Key, and F is then a flag a probe more: "0" or "1" for the key's
# status, for the nonce stored, for the Idempotency-Key stored.
_AUTHORIZE_FACTS_HEAD = (
    "SELECT CASE WHEN k.status='active' AND a.row_version=:aver AND a.id=:acc THEN NULL "
    "ELSE (k.status IS NOT 'active') || ' ' || "
    "CASE WHEN typeof(a.row_version)='integer' THEN a.row_version ELSE '' END || ' ' || "
    "CASE WHEN a.row_version=:aver AND a.id=:acc THEN '' "
    f"ELSE {ACCOUNT_JSON_SQLITE.format(t='a')} END END AS head"
)


@lru_cache(maxsize=256)
def _authorize_facts_sql(facts_cols: str) -> str:
    """_AUTHORIZE_FACTS_HEAD with a send's facts (sqlite_rules.key_cols) after it."""
    return (
        f"{_AUTHORIZE_FACTS_HEAD}, {facts_cols} FROM app_keys k JOIN accounts a "
        "ON a.id = k.account_id WHERE k.key_id=:key_id"
    )


# Where the probes go in a key statement made positional (`_probed`): the head's usual case.
_HEAD_USUAL = " THEN NULL ELSE (k.status IS NOT 'active')"


def _probed(text: str, names: Sequence[str], idem: bool) -> str:
    """The key statement `text` (made positional, its parameters `names` in their numbers'
    order) with the nonce's probe, and the Idempotency-Key's when `idem`, in its head (see
    _AUTHORIZE_FACTS_HEAD), their values the parameters after `names`' (so its arguments are the
    unprobed statement's with the nonce and the key appended: no second getter of them a send).
    Each probe is an EXISTS of parameters only, not correlated with the key's row: SQLite runs
    it once (~3.9 k instructions in the lock, counted: a cursor opened on the index and one
    seek)."""
    n = len(names)
    probes = [
        f"EXISTS(SELECT 1 FROM nonces WHERE key_id=?{names.index('key_id') + 1} AND nonce=?{n + 1})"
    ]
    if idem:
        probes.append(
            f"EXISTS(SELECT 1 FROM idempotency WHERE account_id=?{names.index('acc') + 1} "
            f"AND key=?{n + 2})"
        )
    if text.count(_HEAD_USUAL) != 1:
        raise ValueError(f"not a key statement's head: {text[:200]}")
    return text.replace(
        _HEAD_USUAL,
        "".join(f" AND NOT {p}" for p in probes)
        + _HEAD_USUAL
        + "".join(f" || {p}" for p in probes),
    )


# An accepted send's outcome, by `maker`'s function (the same instance, ~1.5 k instructions
# less than the class's call: session 58).
_new_outcome = maker(AcceptOutcome)

# The key statement's arguments in one fixed order: a send's facts' (sqlite_rules
# .FACTS_NAMES), the key's id, the version of the account held (`_authorize`).
_KEY_NAMES = (*sqlite_rules.FACTS_NAMES, "key_id", "aver")
# The places in _KEY_NAMES that may be None, in the order of `_key_plan`'s flags (the sign,
# template and revision; the history's since, sign and template; the version held). The others
# never are: the day and the number (str), the account and key ids (str), two int flags.
_KEY_NONE_PLACES = ("sign", "tpl", "trev", "since", "fsign", "ftpl", "aver")
# A key statement: its text, the getter of its arguments from a tuple in `_KEY_NAMES`' order,
# and the getter of `sqlite_rules._one_cols`' seven values from its row with a None appended.
_KeyPlan = tuple[str, Callable[[Any], Any], Callable[[Any], Any]]
# The two plans (reading today's count and the pockets, and not), then the text of each with
# the probes (`_probed`).
_KeyPlans = tuple[_KeyPlan, _KeyPlan, str, str]
_KEY_PLANS: dict[tuple[str, tuple[bool, ...], bool, bool], _KeyPlans] = {}


def _key_plan(cols: str, nones: tuple[bool, ...], pockets: bool, idem: bool = False) -> _KeyPlans:
    """The key statement over a send's facts `cols` (`sqlite_rules.one_facts_values`' text),
    made positional for values with Nones at `nones` (`_KEY_NONE_PLACES`), as
    `sqlite_binds.positional_at` makes it from the arguments by name, twice: reading today's
    count and the pockets (`pockets`: billed), and not reading them (an earlier accept of the
    batch read them: `HeldSums.base`); then each of the two texts with the nonce's probe, and
    the Idempotency-Key's when the send has one (`idem`), for an accept whose nonce and record
    are held to its batch's end (`_probed`, session 64). Kept per columns and pattern (a few:
    the history's kind, which optional values a send has), at most 256."""
    plan = _KEY_PLANS.get((cols, nones, pockets, idem))
    if plan is None:
        none = [name for name, flag in zip(_KEY_NONE_PLACES, nones, strict=True) if flag]

        def one(reads: bool) -> tuple[_KeyPlan, str]:
            facts, places = sqlite_rules.key_cols(cols, not nones[0], not nones[1], reads, pockets)
            text, pick, names = sqlite_binds.positional_plan(
                _authorize_facts_sql(facts), _KEY_NAMES, none
            )
            return (text, pick, itemgetter(*places)), _probed(text, names, idem)

        (reads, reads_probed), (held, held_probed) = one(True), one(False)
        plan = (reads, held, reads_probed, held_probed)
        if len(_KEY_PLANS) >= 256:
            _KEY_PLANS.clear()
        _KEY_PLANS[(cols, nones, pockets, idem)] = plan
    return plan


_MESSAGE_COLS = (
    "id, account_id, batch_id, client_ref, recipient, sender, sign_name, template, text, encoding, "
    "data_coding, segments, billable_units, segments_sent, segments_delivered, segments_failed, "
    "state, error_code, error_text, smsc, accepted_at, scheduled_at, expires_at, sent_at, done_at"
)


def _message(row: tuple[Any, ...], segs: tuple[SegmentRecord, ...] = ()) -> MessageRecord:
    return MessageRecord(*row, segment_rows=segs)


# The /v1/stats buckets (lifecycle.stat_of), in STAT_BUCKETS order.
_STAT_SUMS = ", ".join(f"SUM({lc.STAT_SQL[k]})" for k in lc.STAT_BUCKETS)
# Before every (account, due time, rowid) of the queue index: an account "" too (its due times
# are above it).
_QUEUE_START: tuple[Any, ...] = ("", -(1 << 62), 0)


class SqliteStore(RulesStoreMixin, RetentionMixin):
    engine = "sqlite"
    commits_in_order = True  # one connection, its group commit's jobs in turn

    def __init__(self, path: str | Path, *, linger_ms: float = 0.0, max_batch: int = 500) -> None:
        self.path = Path(path)
        self._runner = SqliteRunner(self.path, linger_ms=linger_ms, max_batch=max_batch)
        self.migrated_from: int | None = None
        self._active_accounts: list[str] = []
        # webhooks.send_intermediate: also report "sent" (all parts accepted by the SMSC).
        self.send_intermediate = False
        self.claim_reports = 0  # Store.claim_reports
        self._sweep_after: tuple[int, int] | None = None  # (sent_at, rowid): base.SWEEP_CANDIDATES
        # smscs[].receipts one_per_message: whose one receipt settles a whole message.
        self.one_receipt_smscs: frozenset[str] = frozenset()
        # Told, once a write committed, how many parts (by SMSC) it settled on another part's
        # receipt (the daemon's smpp_bridge_receipts_inferred metric).
        self.on_inferred: Callable[[dict[str, int]], None] | None = None
        # rules.timezone: the days of the daily quota, which a message that never reached anyone
        # gives its place back to (lifecycle.never_reached); configure_store sets it at opening
        # and at each reload. The roll-up reads it from the connection (_setup), so no caller
        # has to pass it along.
        self.quota_tz = "Asia/Shanghai"
        self._rr = 0
        # Whether accepts read their Idempotency-Key's index pages before the write lock: only
        # while sampled reads show the disk (key_warmup).
        self.key_warmup = key_warmup.KeyWarmup()

    # -- life cycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        # The accepts' held rows and running sums (sqlite_rows, sqlite_rules.HeldSums).
        self._runner.write_held = sqlite_rows.write_held
        self._runner.start(self._setup)

    def _setup(self, conn: sqlite3.Connection) -> None:
        # The zone as the connection's SQL function (sqlite_pipeline.quota_tz): every write job
        # that ends a message unsent sees this store's zone as it is then, a reload's included.
        conn.create_function(pipe.QUOTA_TZ_SQL_FN, 0, lambda: self.quota_tz)
        found = self._migrate(conn)
        if self.migrated_from is None:  # the first connection's: the others find it migrated
            self.migrated_from = found

    async def close(self) -> None:
        await self._runner.close()

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> int:
        # One write transaction from the version read to the last migration: two processes
        # opening a new database at once (the CLI beside a starting daemon) migrate it once; the
        # second waits for the lock, then finds nothing left to do.
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            for version, _name, sql in migrate.pending("sqlite", row[0] or 0):
                for statement in _split_sql(sql):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return int(row[0] or 0)

    def write_problem(self) -> str | None:
        """Why writes fail now though the store answers reads (/readyz), or None."""
        if self._runner.disk_full():
            return "store not writable: the disk is full"
        return None

    async def ping(self) -> bool:
        # A read of the file itself (SELECT 1 alone never touched it: a lost or unreadable
        # database still answered ready). Not ready once a WAL fsync failed: every durable write
        # is refused until a restart, so traffic should go elsewhere.
        if self._runner.sync_failed or self._runner.check_files() is not None:
            return False
        return await self._runner.read(
            lambda c: c.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] >= 0
        )

    async def schema_version(self) -> int:
        return await self._runner.read(
            lambda c: c.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
        )

    @property
    def commits(self) -> int:
        return self._runner.commits

    def write_lock_stats(self) -> WriteLockStats | None:
        r = self._runner
        return WriteLockStats(
            held_s=r.lock_held_s + r.ckpt_lock_held_s,
            wait_s=r.lock_wait_s,
            commits=r.commits,
            jobs=r.jobs_done,
            cpu_s=r.lock_cpu_s + r.ckpt_lock_cpu_s,
        )

    # -- accounts and keys -----------------------------------------------------------------------

    async def create_account(self, account: Account) -> None:
        def job(c: sqlite3.Connection) -> None:
            try:
                c.execute(
                    f"INSERT INTO accounts ({_ACCOUNT_COLS}) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        account.id,
                        account.name,
                        account.kind,
                        int(account.raw_text),
                        int(account.marketing),
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
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise StoreError(
                    "ACCOUNT_EXISTS", f"an account named {account.name!r} already exists"
                ) from exc

        await self._runner.write(job)

    async def get_account(self, account_id: str) -> Account | None:
        def job(c: sqlite3.Connection) -> Account | None:
            row = c.execute(
                f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE id=?", (account_id,)
            ).fetchone()
            return _account(row) if row else None

        return await self._runner.read(job)

    async def get_account_by_name(self, name: str) -> Account | None:
        def job(c: sqlite3.Connection) -> Account | None:
            row = c.execute(
                f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE name=?", (name,)
            ).fetchone()
            return _account(row) if row else None

        return await self._runner.read(job)

    async def list_accounts(self) -> list[Account]:
        def job(c: sqlite3.Connection) -> list[Account]:
            rows = c.execute(f"SELECT {_ACCOUNT_COLS} FROM accounts ORDER BY created_at, id")
            return [_account(r) for r in rows]

        return await self._runner.read(job)

    async def update_account(
        self, account_id: str, changes: dict[str, Any], now: int, *, assigned_only: bool = False
    ) -> Account | None:
        bad = set(changes) - ACCOUNT_MUTABLE
        if bad:
            raise StoreError("INVALID_FIELD", f"account field(s) not updatable: {sorted(bad)}")

        pending: list[int] = []  # ends that go on in chunks of their own (sqlite_ends)
        walking: list[bool] = []  # a senders change's walk (sqlite_senders)

        def job(c: sqlite3.Connection) -> Account | None:
            disabling = changes.get("status") == "disabled" and _status(c, account_id) == "active"
            if changes:
                cols = sorted(changes)
                values = [
                    int(v) if isinstance(v, bool) else column_value(k, v)
                    for k, v in ((k, changes[k]) for k in cols)
                ]
                sets = ", ".join(f"{k}=?" for k in cols)
                if "low_balance_threshold" in changes:  # a new threshold: a new dip to warn of
                    sets += ", " + LOW_WARNED_ON_THRESHOLD.format("?")
                    values.append(changes["low_balance_threshold"])
                # A closed account stays closed: its data was erased (the caller sees the status).
                # updated_at is the version an accept validated against (refusal_of): it moves
                # on every change, also two in one millisecond or with the clock set back; with
                # `now` alone the second of two changes in one millisecond (an operator script)
                # kept it, and a send validated between them was accepted under the first.
                c.execute(
                    f"UPDATE accounts SET {sets}, updated_at=MAX(?, updated_at + 1) "
                    "WHERE id=? AND status<>'closed'",
                    (*values, now, account_id),
                )
            if disabling:  # see base.Store.update_account
                ends.start(c, account_id, "account", None, ACCOUNT_DISABLED_ERROR, now, pending)
            for setting, _which, error in REVOKED_SENDS:
                if setting in changes and not changes[setting]:
                    ends.start(c, account_id, setting, None, error, now, pending)
            if "senders" in changes and sqlite_senders.start(c, assigned_only, now):
                walking.append(True)  # the rest of the waiting messages in chunks of their own
            row = c.execute(
                f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE id=?", (account_id,)
            ).fetchone()
            return _account(row) if row else None

        account, _more = await ends.run(self._runner.write, job, pending, now)
        if walking:
            await sqlite_senders.finish(self._runner.write, now, marked_at=now)
        return account

    async def add_key(self, key: AppKey, max_active: int) -> None:
        def job(c: sqlite3.Connection) -> None:
            if _status(c, key.account_id) == "closed":
                raise StoreError("ACCOUNT_CLOSED", CLOSED_MESSAGE)
            (n,) = c.execute(
                "SELECT COUNT(*) FROM app_keys WHERE account_id=? AND status='active'",
                (key.account_id,),
            ).fetchone()
            if n >= max_active:
                raise StoreError(
                    "TOO_MANY_KEYS",
                    f"account already has {n} active keys (limit {max_active}); revoke one first",
                )
            c.execute(
                "INSERT INTO app_keys (key_id, account_id, secret_enc, status, created_at) "
                "VALUES (?,?,?,?,?)",
                (key.key_id, key.account_id, key.secret_enc, key.status, key.created_at),
            )

        await self._runner.write(job)

    async def get_key(self, key_id: str) -> AppKey | None:
        def job(c: sqlite3.Connection) -> AppKey | None:
            row = c.execute(
                f"SELECT {KEY_COLS} FROM app_keys WHERE key_id=?",
                (key_id,),
            ).fetchone()
            return _key(row) if row else None

        return await self._runner.read(job)

    async def list_keys(self, account_id: str) -> list[AppKey]:
        def job(c: sqlite3.Connection) -> list[AppKey]:
            rows = c.execute(
                f"SELECT {KEY_COLS} FROM app_keys WHERE account_id=? ORDER BY created_at",
                (account_id,),
            )
            return [_key(r) for r in rows]

        return await self._runner.read(job)

    async def revoke_key(self, key_id: str, now: int) -> bool:
        def job(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE app_keys SET status='revoked', revoked_at=? "
                "WHERE key_id=? AND status='active'",
                (now, key_id),
            )
            return cur.rowcount == 1

        return await self._runner.write(job)

    async def keys_used(self, used: Mapping[str, int]) -> None:
        # KEYS_USED_CHUNK keys a transaction: a flush of many keys holds the write lock a few
        # ms at most between other writers' batches (Architecture note 18).
        rows = [(at, key_id) for key_id, at in used.items()]
        for i in range(0, len(rows), KEYS_USED_CHUNK):
            chunk = rows[i : i + KEYS_USED_CHUNK]

            def job(c: sqlite3.Connection, chunk: list[tuple[int, str]] = chunk) -> None:
                c.executemany(
                    "UPDATE app_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?) "
                    "WHERE key_id=?",
                    chunk,
                )

            await self._runner.write(job, durable=False)

    async def use_nonce(self, key_id: str, nonce: str, expires_at: int, now: int) -> bool:
        def job(c: sqlite3.Connection) -> bool:
            row = c.execute(
                "SELECT expires_at FROM nonces WHERE key_id=? AND nonce=?", (key_id, nonce)
            ).fetchone()
            if row and row[0] > now:
                return False
            c.execute(
                "INSERT OR REPLACE INTO nonces (key_id, nonce, expires_at) VALUES (?,?,?)",
                (key_id, nonce, expires_at),
            )
            return True

        return await self._runner.write(job)

    async def authorize_request(
        self, key_id: str, nonce: str, expires_at: int, now: int
    ) -> tuple[str, Account | None]:
        """Record a nonce and read the key's and account's current state in one transaction.

        Done after the signature verified (so forgeries never reach the nonce table); reading the
        key status here makes a revocation effective for the very next request, whatever cache
        the caller keeps for the secret. Outcome: ok | unknown_key | revoked | nonce_reused.
        """

        def job(c: sqlite3.Connection) -> tuple[str, Account | None]:
            return _authorize(c, key_id, nonce, expires_at, now)

        return await self._runner.write(job, single=True)

    async def skew_window(self, face: str, skew_s: int, now: int) -> SkewWindow:
        def job(c: sqlite3.Connection) -> SkewWindow:
            row = c.execute(_SKEW_GET, (face,)).fetchone()
            stored = SkewWindow(*row) if row else None
            window = next_window(stored, skew_s, now)
            if window != stored:
                c.execute(_SKEW_SET, (face, window.skew_s, window.prev_s, window.since_ms))
            return window

        return await self._runner.write(job)

    async def route_table(self) -> str | None:
        def job(c: sqlite3.Connection) -> str | None:
            row = c.execute("SELECT router FROM route_table WHERE id = 1").fetchone()
            return str(row[0]) if row else None

        return await self._runner.read(job)

    async def keep_route_table(self, table: str, now: int) -> None:
        def job(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO route_table (id, router, kept_at) VALUES (1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET router = excluded.router, "
                "kept_at = excluded.kept_at",
                (table, now),
            )

        await self._runner.write(job)

    # -- acceptance --------------------------------------------------------------------------------

    async def get_idempotency(
        self, account_id: str, key: str, now: int
    ) -> IdempotencyRecord | None:
        def job(c: sqlite3.Connection) -> IdempotencyRecord | None:
            return _idem(c, account_id, key, now)

        return await self._runner.read(job)

    async def take_idempotency(
        self, account_id: str, key: str, request_hash: str, until: int, now: int
    ) -> IdempotencyRecord | None:
        def job(c: sqlite3.Connection) -> IdempotencyRecord | None:
            key_of = (account_id, key)
            placeholder = (request_hash, 0, b"", until)
            if c.execute(_IDEM_NEW, (*key_of, *placeholder)).rowcount == 1:
                return None
            live = _idem(c, account_id, key, now)
            if live is None:  # expired: taken over
                c.execute(_IDEM_SET, (*placeholder, *key_of))
            return live

        return await self._runner.write(job)

    async def keep_idempotency(
        self, account_id: str, key: str, record: IdempotencyRecord, expires_at: int
    ) -> None:
        def job(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE idempotency SET status_code=?, response=?, expires_at=? "
                "WHERE account_id=? AND key=? AND request_hash=? AND status_code=0",
                (record.status_code, record.response, expires_at, account_id, key,
                 record.request_hash),
            )  # fmt: skip

        await self._runner.write(job, single=True)

    async def give_back_idempotency(self, account_id: str, key: str, request_hash: str) -> None:
        def job(c: sqlite3.Connection) -> None:
            c.execute(
                "DELETE FROM idempotency "
                "WHERE account_id=? AND key=? AND request_hash=? AND status_code=0",
                (account_id, key, request_hash),
            )

        await self._runner.write(job, single=True, durable=False)

    async def accept(self, batch: AcceptBatch, now: int) -> AcceptOutcome:
        # The rows are built here, not in the job: the job runs holding the write lock that
        # every process of the store waits for. Their Nones are written into the statement's
        # text and their bytes passed as bytearray (sqlite_binds: no adaptation in the lock).
        messages_sql, message_rows = (
            _message_row(batch.messages[0])
            if len(batch.messages) == 1  # a one-recipient send: no comprehension
            else _MESSAGE_NONES.rows(
                [m.insert_values() for m in batch.messages],
                [_message_nones(m) for m in batch.messages],
            )
        )
        # `sqlite_binds.blob` is `bytearray(value)`: the type called itself, no Python frame a
        # value (three a one-part send, seven a 3-part one; ~0.5 k each, session 60).
        blob = bytearray
        # No None in a segment's row (NewSegment): its text as it is. Its TLVs are empty but for
        # a message with optional parameters of its own: then the zero-length blob is in the
        # text (X''), not bound (session 62), when every segment of the send has none. Which
        # statement is known first, and the rows built once for it (until session 63 a send
        # with TLVs had its rows built twice: without them, then again with them).
        segment_rows: list[tuple[Any, ...]]
        if (
            any(map(_TLVS_OF, batch.messages[0].segments))
            if len(batch.messages) == 1
            else any(s.tlvs for m in batch.messages for s in m.segments)
        ):
            segments_sql = _SEGMENTS_INSERT
            segment_rows = [
                (m.id, s.seq, s.total, s.esm_class, blob(s.short_message), blob(s.tlvs))
                for m in batch.messages
                for s in m.segments
            ]
        else:
            segments_sql = _SEGMENTS_NO_TLVS
            segment_rows = [
                (m.id, s.seq, s.total, s.esm_class, blob(s.short_message))
                for m in batch.messages
                for s in m.segments
            ]

        messages = batch.messages
        recipients = (
            (messages[0].recipient,)  # a one-recipient send: no generator
            if len(messages) == 1
            else tuple(m.recipient for m in messages)
        )
        rules = batch.rules
        facts_values = (
            None
            if rules is None
            else sqlite_rules.one_facts_values(batch.account_id, rules, recipients, now)
        )
        keyed = batch.nonce is not None and batch.key_id is not None
        # Read by a statement of their own only when the key's does not read them (no deferred
        # authorisation): by name then, as `one_facts_query` gives them.
        one_facts = (
            None if facts_values is None or keyed else sqlite_rules.facts_query(facts_values)
        )
        key_facts: tuple[str, tuple[Any, ...], tuple[int, Account] | None] | None = None
        key_facts_held = key_facts
        # The plans (`_key_plan`): their last two the same statements' texts with the nonce's
        # and the Idempotency-Key's probes, for an accept that holds its nonce and record for
        # its batch's end (session 64), whose arguments are theirs and `probe_values`.
        key_plans: _KeyPlans | None = None
        key_row: Callable[[Any], Any] | None = None
        key_row_held = key_row
        # Whether the send carries an idempotency record to keep (its key and the record).
        idem = batch.idempotency_key is not None and batch.idempotency is not None
        if facts_values is not None and keyed:
            # The key's statement reads the facts too (_authorize): its arguments join theirs
            # here, and the statement is made positional, its Nones written as NULL
            # (sqlite_binds), not inside the write lock.
            # With the version of the account's row whose Account this process holds, if any:
            # unchanged, the statement does not send the row again (_authorize).
            known = account_at_version(batch.account_id)
            aver = None if known is None else known[0]
            cols, values = facts_values
            pattern = (
                cols,
                (
                    values[1] is None,
                    values[2] is None,
                    values[3] is None,
                    values[8] is None,
                    values[9] is None,
                    values[10] is None,
                    aver is None,
                ),
                values[6] == 1,  # the pockets read (sqlite_rules.one_facts_values)
                idem,
            )
            # Kept by `_key_plan`: looked up here first, without its call (session 62).
            key_plans = _KEY_PLANS.get(pattern) or _key_plan(*pattern)
            (key_sql, pick, key_row), (held_sql, held_pick, key_row_held), _, _ = key_plans
            # A concatenation, not `(*values, ...)` (a list built and copied): ~0.45 k less.
            key_values = values + (batch.key_id, aver)  # noqa: RUF005 (cheaper, above)
            key_facts = (key_sql, pick(key_values), known)
            # The same, not reading today's count and the pockets: for an accept that finds
            # them read by an earlier accept of its batch (HeldSums.base).
            key_facts_held = (held_sql, held_pick(key_values), known)
        # The day whose count the facts read, and whether they read the pockets: what the
        # sums held by earlier accepts of the batch move (sqlite_rules.HeldSums).
        fact_day = (
            None
            if rules is None
            else adm.day_key(now, rules.tz)
            if facts_values is None
            else facts_values[1][0]  # the facts' `day` (sqlite_rules.FACTS_NAMES)
        )
        pockets_read = rules is not None and rules.billing and bool(rules.charges)
        # The usual send's rules and its charge's Plan, made here: inside the lock the key's
        # statement's row is checked against them (`sqlite_rules.decide_one_of`), no Facts or
        # Plan built there unless `decide` must answer (session 61).
        one = (
            None
            if rules is None or key_facts is None or fact_day is None
            else adm.one_send(rules, now, fact_day)
        )
        # Its ledger row's values, for the Plan `one` holds (a cash charge: the NULL expiry in
        # the statement's text, as `sqlite_rules.write_ledger` writes it). `one` billed, its one
        # entry is a cash charge without an expiry (`adm.one_send` makes no other): its kind and
        # pocket are in `LEDGER_CASH_CHARGE`'s text, not bound (a str bound is copied by SQLite,
        # ~550 instructions in the lock; session 61's `ledger_one`, made here since session 62).
        one_entries = None if one is None or not one[2] else one[5].entries
        one_ledger: tuple[str, tuple[Any, ...]] | None = None
        # The same as the rows an accept holds for its batch's end (sqlite_rows).
        one_ledger_rows: tuple[tuple[str, tuple[Any, ...]], ...] | None = None
        one_moved = 0
        if one_entries is not None:
            ref, entry = one_entries[0]
            one_moved = entry.amount
            one_ledger = (
                sqlite_rules.LEDGER_CASH_CHARGE,
                (batch.account_id, one_moved, entry.at, ref),
            )
            one_ledger_rows = (one_ledger,)
        runner = self._runner
        held = runner.held
        # The numbers whose history the facts read: rows held by earlier accepts of the batch to
        # one of them are written first (sqlite_rows.flush), so the read finds them.
        history_numbers = (
            () if rules is None or rules.frequency is None else rules.frequency.numbers
        )
        idem_record = (
            None
            if batch.idempotency is None
            else (
                batch.idempotency.request_hash,
                batch.idempotency.status_code,
                blob(batch.idempotency.response),
                batch.idempotency_expires_at,
            )
        )
        # The nonce's and the idempotency record's rows as an accept holds them for its batch's
        # end (sqlite_rows.PendingRows: by their keys, which the batch's later accepts look up).
        nonce_key = (batch.key_id, batch.nonce)
        nonce_row = (batch.key_id, batch.nonce, batch.nonce_expires_at)
        idem_key = (batch.account_id, batch.idempotency_key) if idem else None
        idem_row = None if idem_key is None or idem_record is None else idem_key + idem_record
        # The probed key statement's arguments after the unprobed one's (`_probed`).
        probe_values = (batch.nonce, batch.idempotency_key) if idem else (batch.nonce,)

        # What the job reads of this accept, as one tuple that `accept_writes` unpacks into its
        # locals: closures over the names themselves made a cell of each (twenty-three since
        # session 63's held rows, twenty-nine since session 64's held nonce and record, made and
        # freed with every accept) and the job read each through it (session 63).
        state = (
            batch, now, fact_day, held, history_numbers, idem_key, idem_record, idem_row,
            key_facts, key_facts_held, key_plans, key_row, key_row_held, message_rows,
            messages_sql, nonce_key, nonce_row, one, one_entries, one_facts, one_ledger,
            one_ledger_rows, one_moved, pockets_read, probe_values, recipients, runner,
            segment_rows, segments_sql,
        )  # fmt: skip

        def job(c: sqlite3.Connection) -> adm.Plan | AcceptOutcome | _Undone | None:
            # Bare (no savepoint): a refusal takes back the only writes made before it, the
            # nonce and the idempotency record, itself; a fault makes the runner rerun the batch
            # with savepoints.
            batch = state[0]
            # What this accept wrote so far, only that is taken back: the nonce and the
            # idempotency record, each with the expired record it replaced (restored, so a
            # request dated before that expiry is still answered by it), or None.
            wrote: dict[str, Any] = {}
            try:
                # One cursor for the job's statements: `Connection.execute` makes a cursor for
                # each (an object, a weak reference the connection keeps, both dropped after).
                return accept_writes(c, c.cursor(), wrote)
            except (_Refused, _RateLimited, _AuthRefused) as exc:
                if "nonce" in wrote:
                    key = (batch.key_id, batch.nonce)
                    if wrote["nonce"] is None:
                        c.execute("DELETE FROM nonces WHERE key_id=? AND nonce=?", key)
                    else:
                        c.execute(
                            "UPDATE nonces SET expires_at=? WHERE key_id=? AND nonce=?",
                            (wrote["nonce"], *key),
                        )
                if "idempotency" in wrote:
                    key = (batch.account_id, batch.idempotency_key)
                    if wrote["idempotency"] is None:
                        c.execute("DELETE FROM idempotency WHERE account_id=? AND key=?", key)
                    else:
                        c.execute(_IDEM_SET, (*wrote["idempotency"], *key))
                return _Undone(exc)

        def accept_writes(
            c: sqlite3.Connection, cur: sqlite3.Cursor, wrote: dict[str, Any]
        ) -> adm.Plan | AcceptOutcome | None:
            # Accepted: its plan (None without rules), whose AcceptOutcome `accept` makes once
            # the write lock is given back; a replay: the outcome with the record it answers.
            # `cur` runs the statements every accept makes, `c` the others.
            (
                batch, now, fact_day, held, history_numbers, idem_key, idem_record, idem_row,
                key_facts, key_facts_held, key_plans, key_row, key_row_held, message_rows,
                messages_sql, nonce_key, nonce_row, one, one_entries, one_facts, one_ledger,
                one_ledger_rows, one_moved, pockets_read, probe_values, recipients, runner,
                segment_rows, segments_sql,
            ) = state  # fmt: skip
            tps = batch.tps
            # The rows earlier accepts of the batch hold (only while it runs bare: `deferring`).
            pending = held.get(PENDING)
            if (
                history_numbers
                and pending is not None
                and not pending.numbers.isdisjoint(history_numbers)
            ):
                sqlite_rows.flush(c, held)
                pending = None
            # This accept's nonce and idempotency record held for the batch's end too, not
            # written (session 64): when the key's statement probed them (`_authorize`'s
            # `probed`) and found neither stored.
            nonce_held = idem_held = False
            facts_row: list[Any] = []
            read_base: tuple[str | None, Any, Any] | None = None
            key_account: Account | None = None  # the account the key's statement read
            if batch.nonce is not None and batch.key_id is not None:
                replaced: list[int] = []
                # Today's count and the pockets as an earlier accept of the batch read them
                # (nothing but the held sums' writing, which ends them, writes either in a
                # batch): the statement does not read them again.
                sums = held.get(batch.account_id)
                base = None if sums is None else sums.base
                if base is not None and (base[0] != fact_day or (pockets_read and base[2] is None)):
                    base = None
                if pending is not None and (
                    nonce_key in pending.nonces or idem_key in pending.idem
                ):
                    # An earlier accept of the batch holds this nonce or this key: the held rows
                    # written first, its conflict is then found in the store, as one by one.
                    sqlite_rows.flush(c, held)
                    pending = None
                chosen = key_facts if base is None else key_facts_held
                probed = False
                if runner.deferring and key_plans is not None and chosen is not None:
                    # Its probed text, the nonce (and key) after its arguments (`_probed`).
                    probed = True
                    text = key_plans[2] if base is None else key_plans[3]
                    chosen = (text, chosen[1] + probe_values, chosen[2])
                got: list[Any] = []
                outcome, account = _authorize(
                    cur,
                    batch.key_id,
                    batch.nonce,
                    batch.nonce_expires_at,
                    now,
                    replaced,
                    None if chosen is None else (*chosen, got),
                    probed,
                )
                if got:  # the key's row: `_one_cols`' seven values from its columns
                    facts_row = sqlite_rules.key_facts(
                        got[0],
                        key_row if base is None else key_row_held,  # type: ignore[arg-type]
                    )
                    if base is None:  # read now: kept for the batch's next accepts
                        if facts_row[6]:  # the pockets parsed once for all of them
                            facts_row[6] = jsonio.loads(facts_row[6])
                        read_base = (fact_day, facts_row[0], facts_row[6])
                    else:
                        facts_row[0] = base[1]
                        facts_row[6] = base[2]
                if outcome == "ok":
                    wrote["nonce"] = replaced[0] if replaced else None
                elif outcome == "held":  # not stored: held (if accepted or a replay)
                    outcome = "ok"
                    nonce_held = True
                # The key not stored: the head NULL, or its third flag "0".
                if probed and idem_key is not None:
                    head = got[0][0]
                    idem_held = head is None or head[2] == "0"
                if account is not None and account.id != batch.account_id:
                    # Another account's key: unknown, its nonce not spent, as PostgreSQL's head
                    # (which joins the key on the account) answers.
                    raise _AuthRefused("unknown_key")
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
                key_account = account
            elif batch.account_version is not None:
                # No deferred authorisation (the Alibaba face records its nonce before the action
                # runs): the account is still checked where the send is written, so one disabled
                # or changed a moment ago is refused as on the native face.
                row = c.execute(
                    f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE id=?", (batch.account_id,)
                ).fetchone()
                current = _account(row) if row else None
                why = refusal_of(current, batch.account_version)
                if why is not None or current is None:
                    raise _AuthRefused(why or "disabled", current if why == "stale" else None)
                tps = current.tps
            if idem_key is not None and not idem_held:
                if pending is not None and pending.idem:
                    # Records held by earlier accepts of the batch: written first, so a record
                    # written now comes after them (the table's ids in the accepts' order) and
                    # a key they hold is found.
                    sqlite_rows.flush(c, held)
                    pending = None
                key = idem_key
                record = idem_record
                if cur.execute(_IDEM_NEW, idem_row).rowcount == 1:  # type: ignore[arg-type]
                    wrote["idempotency"] = None
                else:
                    old = c.execute(_IDEM_GET, key).fetchone()
                    if old[3] > now:  # a live record for this key: the first request won
                        existing = _idem_record(c, batch.account_id, old)
                        if nonce_held:  # its nonce spent all the same, as when written
                            pending = held.get(PENDING)
                            if pending is None:
                                pending = held[PENDING] = sqlite_rows.PendingRows()
                            pending.nonces[nonce_key] = nonce_row
                        return AcceptOutcome(accepted=False, existing=existing)
                    c.execute(_IDEM_SET, (*record, *key))  # type: ignore[misc]  # expired: replaced
                    wrote["idempotency"] = tuple(old[:4])
            plan = None
            if batch.rules is not None:
                # What earlier accepts of this batch left to write for the account (their
                # daily count and pockets, written at the batch's end): the read misses it.
                sums = held.get(batch.account_id)
                decision: adm.Plan | adm.Refusal | None = None
                if facts_row and key_account is not None:  # read with the key and account
                    # What both readings of the row take, worked out once: `decide_one_of`'s
                    # quick Plan, else the Facts `decide` answers over. (Passed as one tuple
                    # with `*` they cost 1.5 k instructions more in the lock: not done.)
                    quota, kind = key_account.daily_quota, key_account.kind
                    threshold = key_account.low_balance_threshold
                    warned = key_account.low_balance_warned_at is not None
                    day_held = 0 if sums is None else sums.days.get(fact_day, 0)
                    held_now = sums if pockets_read else None
                    if one is not None:
                        decision = sqlite_rules.decide_one_of(
                            one, quota, kind, threshold, warned, facts_row, day_held, held_now
                        )
                    if decision is None:
                        facts = sqlite_rules.one_facts_of(
                            recipients[0], quota, kind, threshold, warned, facts_row, day_held,
                            held_now,
                        )  # fmt: skip
                    sums = None  # moved
                elif one_facts is not None:
                    facts = sqlite_rules.read_one(c, one_facts, recipients[0])
                else:
                    facts = sqlite_rules.read_facts(
                        c, batch.account_id, batch.rules, recipients, now
                    )
                if decision is None:
                    if sums is not None:
                        facts = replace(
                            facts,
                            day_count=facts.day_count + sums.days.get(fact_day, 0),
                            pockets=(
                                sqlite_rules.held_pockets(
                                    [(p.pocket, p.amount, p.expires_at) for p in facts.pockets],
                                    sums,
                                )
                                if pockets_read
                                else facts.pockets
                            ),
                        )
                    decision = adm.decide(batch.rules, facts, now, fact_day)
                if isinstance(decision, adm.Refusal):
                    raise _Refused(decision)  # rolls back the idempotency record too
                plan = decision
            if tps > 0:
                row = cur.execute(
                    "SELECT tokens, at FROM rate_buckets WHERE account_id=?", (batch.account_id,)
                ).fetchone()
                wait, tokens, at = bucket_take(
                    row[0] if row else None,
                    row[1] if row else None,
                    tps,
                    len(batch.messages),
                    now / 1000,
                )
                if wait > 0:
                    raise _RateLimited(wait)  # rolls back the idempotency record too
                cur.execute(
                    "INSERT INTO rate_buckets (account_id, tokens, at) VALUES (?,?,?) "
                    "ON CONFLICT (account_id) DO UPDATE SET tokens=excluded.tokens, at=excluded.at",
                    (batch.account_id, tokens, at),
                )
            # `one`'s cash charge: its row made before the lock.
            quick = None if plan is None or plan.entries is not one_entries else one_ledger
            if runner.deferring:
                # Written at the batch's end with the other accepts' rows, by multi-row
                # INSERTs (sqlite_rows: session 63); the ledger's as `write_ledger` writes them.
                # (`sqlite_rows.hold_rows`, inline: its call was ~0.5 k a send.)
                if pending is None:
                    pending = held.get(PENDING)  # (flushed by this accept: then None)
                    if pending is None:
                        pending = held[PENDING] = sqlite_rows.PendingRows()
                pending.accepts.append(
                    (
                        messages_sql,
                        message_rows,
                        segments_sql,
                        segment_rows,
                        one_ledger_rows
                        if quick is not None
                        else None
                        if plan is None or not plan.entries
                        else sqlite_rules.ledger_rows(batch.account_id, plan),
                    )
                )
                pending.numbers.update(recipients)
                if nonce_held:
                    pending.nonces[nonce_key] = nonce_row
                if idem_held:
                    pending.idem[idem_key] = idem_row
            else:  # a batch run again with savepoints, or an accept alone in its batch
                if PENDING in held:  # the rows held before this accept's: written first
                    sqlite_rows.flush(c, held)
                cur.executemany(messages_sql, message_rows)
                cur.executemany(segments_sql, segment_rows)
                if quick is not None:
                    cur.execute(*quick)
                elif plan is not None and plan.entries:
                    sqlite_rules.write_ledger(cur, batch.account_id, plan)
            if plan is not None:
                if plan.low_balance is not None:
                    payload = adm.low_balance_event(batch.account_id, plan.low_balance, now)
                    _enqueue_webhook(
                        c, batch.account_id, "event", None, payload, new_id("evt_", now), now
                    )
                    sqlite_rules.mark_low_warned(c, batch.account_id, now)
                # Last, after every statement that may fail: the daily count and the pockets'
                # sums, held for the batch's end (the runner writes them before any other job
                # and before COMMIT), one upsert each for all the batch's accepts of the account.
                if quick is not None:  # its one entry's amount, the cash pocket's move
                    sqlite_rules.hold_cash(
                        held, batch.account_id, plan.day, len(batch.messages), one_moved
                    )
                else:
                    sqlite_rules.hold_plan(held, batch.account_id, plan, len(batch.messages))
                if read_base is not None:
                    held[batch.account_id].base = read_base
            # Its outcome made after the write lock (`accepted`): the plan alone from here.
            return plan

        if batch.idempotency_key is not None and self.key_warmup.due():
            before = key_warmup.blocks_read()
            await self._runner.read(partial(_warm_key, batch.account_id, batch.idempotency_key))
            self.key_warmup.seen(key_warmup.blocks_read() > before)
        out = await self._runner.write(job, bare=True)
        if out is None or isinstance(out, adm.Plan):  # accepted (with its plan, under rules)
            return _new_outcome(True, plan=out)
        if not isinstance(out, _Undone):
            return out
        exc = out.refusal
        if isinstance(exc, _Refused):
            return AcceptOutcome(accepted=False, refusal=exc.refusal)
        if isinstance(exc, _RateLimited):
            return AcceptOutcome(accepted=False, retry_after=exc.wait)
        return AcceptOutcome(accepted=False, auth_refusal=exc.outcome, account=exc.account)

    async def audit_add(self, entry: AuditEntry) -> None:
        def job(c: sqlite3.Connection) -> None:
            c.execute(
                f"INSERT INTO audit_log ({AUDIT_COLS}) VALUES (?,?,?,?,?,?,?,?)",
                audit_values(entry),
            )

        await self._runner.write(job)

    async def audit_page(
        self, after: int, limit: int, since: int = 0, until: int = 2**62
    ) -> list[AuditEntry]:
        def job(c: sqlite3.Connection) -> list[AuditEntry]:
            sql = AUDIT_PAGE.format("?", "?", "?", "?")
            return [audit_row(r) for r in c.execute(sql, (after, since, until, limit))]

        return await self._runner.read(job)

    async def sealed_secrets(self) -> list[tuple[str, str, bytes]]:
        def job(c: sqlite3.Connection) -> list[tuple[str, str, bytes]]:
            return [(k, i, bytes(b)) for k, i, b in c.execute(SEALED_SECRETS)]

        return await self._runner.read(job)

    async def reseal(self, kind: str, row_id: str, old: bytes, new: bytes) -> bool:
        def job(c: sqlite3.Connection) -> bool:
            sql = RESEAL[kind].format("?", "?", "?")
            return bool(c.execute(sql, (new, row_id, old)).rowcount)

        return await self._runner.write(job)

    async def message_held(self, message_id: str) -> bool:
        def job(c: sqlite3.Connection) -> bool:
            row = c.execute("SELECT end_error FROM messages WHERE id=?", (message_id,)).fetchone()
            return row is not None and row[0] is not None

        return await self._runner.read(job)

    async def get_message(self, account_id: str, message_id: str) -> MessageRecord | None:
        def job(c: sqlite3.Connection) -> MessageRecord | None:
            # The masking probed first, as the list does: the statements are read apart, and
            # a masking another process ended between a row read first and the probe left the
            # row unmasked with no mask to apply, after the close had answered.
            mask = ends.masking(c, account_id)
            row = c.execute(
                f"SELECT {_MESSAGE_COLS} FROM messages WHERE id=? AND account_id=?",
                (message_id, account_id),
            ).fetchone()
            if row is None:
                return None
            segs = tuple(
                SegmentRecord(*r)
                for r in c.execute(
                    "SELECT seq, total, state, smsc, smsc_msg_id_raw, submitted_at, done_at, "
                    "error_code, receipt_inferred_from FROM segments WHERE message_id=? "
                    "ORDER BY seq",
                    (message_id,),
                )
            )
            return masked(_message(row, segs), mask)

        return await self._runner.read(job)

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
        where = ["account_id=?"]
        args: list[Any] = [account_id]
        if batch_id is not None:
            # A batch's messages share its accepted_at (the id's time): the account's time
            # index finds them, as the batch cancel does.
            where.append("accepted_at=? AND batch_id=?")
            args += [id_time_ms(batch_id, "bat_") or 0, batch_id]
        if recipient is not None:
            where.append("recipient=?")
            args.append(recipient)
        if since is not None:
            where.append("accepted_at>=?")
            args.append(since)
        if until is not None:
            where.append("accepted_at<?")
            args.append(until)
        if state is not None:
            where.append("state=?")
            args.append(state)
        if before_id is not None:
            where.append(_before_cursor(before_id, args))
        # By acceptance time, then id: the same order as id alone (an id starts with its
        # accepted_at), but one the (account_id, accepted_at) and (account_id, recipient,
        # accepted_at) indexes give. By id alone SQLite read and sorted every message of the
        # account for each page: 34 ms a page at 100,000 messages, on the event loop.
        sql = (
            f"SELECT {_MESSAGE_COLS} FROM messages WHERE {' AND '.join(where)} "
            "ORDER BY accepted_at DESC, id DESC LIMIT ?"
        )

        def job(c: sqlite3.Connection) -> list[MessageRecord]:
            mask = ends.masking(c, account_id)
            if mask is not None and recipient is not None and recipient != mask:
                return []  # a closed account's masking under way: as after it, none names it
            return [masked(_message(r), mask) for r in c.execute(sql, (*args, limit))]

        return await self._runner.read(job)

    async def queue_depth(self, due_at: int | None = None) -> int:
        def job(c: sqlite3.Connection) -> int:
            row = c.execute(
                "SELECT COALESCE(SUM(segments - segments_sent), 0) FROM messages "
                "WHERE (q_state='queued' OR q_state='claimed') "
                "AND (?1 IS NULL OR scheduled_at IS NULL OR scheduled_at<=?1)",
                (due_at,),
            ).fetchone()
            return int(row[0])

        # A scan of every unsent row (~250 ms at a million queued): off the event loop.
        return await self._runner.read_heavy(job)

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
        def job(c: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = c.execute(
                f"SELECT (accepted_at + ?1) / 86400000 AS day, COUNT(*), {_STAT_SUMS}, "
                "SUM(segments), SUM(billable_units) FROM messages WHERE account_id=?2 "
                "AND accepted_at>=?3 AND accepted_at<?4 "
                f"AND (?5 IS NULL OR (substr({_STAT_RECIPIENT}, 1, length(?5))=?5)=?6) "
                "AND (?7 IS NULL OR sign_name=?7) AND (?8 IS NULL OR kind=?8) "
                "GROUP BY day ORDER BY day",
                (tz_offset_ms, account_id, since, until, prefix, within, sign_name, kind),
            )
            n = len(lc.STAT_BUCKETS)
            return [
                {
                    "day_index": r[0],
                    "submitted": r[1],
                    **{k: v or 0 for k, v in zip(lc.STAT_BUCKETS, r[2 : 2 + n], strict=True)},
                    "segments": r[2 + n] or 0,
                    "units": r[3 + n] or 0,
                }
                for r in rows
            ]

        return await self._runner.read_heavy(job)

    # -- pipeline ---------------------------------------------------------------------------------

    async def after_restore(self, now: int, *, dry_run: bool = False) -> dict[str, int]:
        # The owner lock: refused while a daemon runs on the store, and held while this runs.
        # Said as for `db restore`: the start's own advice (PostgreSQL for several instances)
        # told an operator running this beside the daemon nothing about what to do.
        self._runner.hold_ownership("stop it first: db after-restore runs on a stopped store")
        return await restored.end_restored(self._runner.write, now, dry_run)

    async def recover(
        self, instance: str, now: int, unknown_smscs: frozenset[str]
    ) -> dict[str, int]:
        """Start-up: give back every claim (a single SQLite instance owns them all).

        Segments of a claimed message with no submit_sm_resp recorded may or may not have reached
        the SMSC before the crash: they are resent (at-least-once) unless the SMSC its parts went
        to in this claim (q_route) is configured `in_flight_on_restart: unknown`.
        """

        def job(c: sqlite3.Connection) -> dict[str, int]:
            return _requeue_claims(
                c, now, unknown_smscs, expired_only=False, intermediate=self.send_intermediate
            )

        # Every claim is ours to give back only if no other daemon runs on this file.
        self._runner.hold_ownership()
        return await self._runner.write(job, durable=False)

    async def reclaim(self, now: int, unknown_smscs: frozenset[str]) -> dict[str, int]:
        """Periodic: take back claims whose lease expired. The dispatcher renews the lease of
        every message it still holds, so an expired one was forgotten: its results could not be
        written (the store refused writes longer than the dispatcher retried), and it stayed
        'claimed', never sent, never expired and counted in the queue depth, until a restart."""

        def job(c: sqlite3.Connection) -> dict[str, int]:
            return _requeue_claims(
                c, now, unknown_smscs, expired_only=True, intermediate=self.send_intermediate
            )

        return await self._runner.write(job, durable=False)

    async def renew_claims(self, instance: str, ids: list[str], lease_until: int) -> int:
        """Extend the lease of messages this instance is still sending (a throttled link can
        hold one for minutes): an expired lease must mean a dead sender, never a slow one."""
        if not ids:
            return 0

        def job(c: sqlite3.Connection) -> int:
            n = 0
            for chunk in pipe._chunks(ids):
                n += c.execute(
                    f"UPDATE messages SET q_lease_until=? WHERE q_state='claimed' "
                    f"AND q_claimed_by=? AND id IN ({pipe._marks(len(chunk))})",
                    (lease_until, instance, *chunk),
                ).rowcount
            return n

        return await self._runner.write(job, durable=False)

    async def claim(
        self,
        instance: str,
        limit: int,
        now: int,
        lease_ms: int,
        park: Callable[[str], str | None] | None = None,
        routable: Collection[str] = (),
    ) -> list[WorkMessage]:
        keys = sorted(set(routable))
        reports: list[int] = []  # queued by the claim's roll-ups (_roll_up_idle)

        def job(c: sqlite3.Connection) -> _Claimed:
            reports.clear()  # a job run again: the rolled-back run queued nothing
            accounts = self._queued_accounts(c)
            if not accounts:
                return _NONE_CLAIMED
            # Round-robin over accounts with work: one big batch cannot starve small senders.
            start = self._rr % len(accounts)
            self._rr += 1
            order = accounts[start:] + accounts[:start]
            scan = _Scan(park, now, CLAIM_SCAN_FACTOR * limit)
            if keys:  # parked under a route with an SMSC up here: up to half the claim first
                scan.parked(c, keys, limit // 2)
            per = max(1, (limit - len(scan.ids)) // len(order))
            more: list[str] = []  # accounts that may have more due
            for acc in order:
                if len(scan.ids) >= limit or scan.budget <= 0:
                    break
                want = min(per, limit - len(scan.ids))
                # An account's own down backlog may use up its share of the scan, not all of it.
                if scan.pick(c, acc, want, want, CLAIM_SCAN_FACTOR * want):
                    more.append(acc)
            if len(scan.ids) < limit and scan.budget > 0 and more:
                scan.fill(c, more, limit - len(scan.ids))  # the oldest work of anyone
            if keys and len(scan.ids) < limit:  # and the room the due messages left
                scan.parked(c, keys, limit - len(scan.ids))
            # Not those an end under way covers (an account disabled, ...): it ends them here.
            ids = sqlite_dnc.guard(c, ends.guard(c, scan.ids), now)  # ... or a list blocks
            ids = sqlite_senders.guard(c, ids, now)  # ... or a senders change refuses
            if not ids:
                return _NONE_CLAIMED
            return _claim_ids(
                c, ids, instance, now + lease_ms, now, self.send_intermediate, reports, scan.rowids
            )

        # The rows become values after the commit, outside the write lock (~1.5 µs a one-part
        # message, ~4 at three parts, of the owner's lock: bench_owner.py).
        work = _work(*await self._runner.write(job, durable=False))
        self.claim_reports += sum(reports)
        return work

    async def clock_stepped_back(
        self,
        by_ms: int,
        now: int,
        leased_webhooks: Collection[int],
        progress: ClockShift | None = None,
    ) -> tuple[int, int]:
        shift = progress if progress is not None else ClockShift(by_ms, now)
        return await sqlite_clock.shift_back(self._runner, shift, leased_webhooks)

    async def unpark(self, keys: Collection[str], now: int) -> int:
        keys = sorted(set(keys))
        if not keys:
            return 0

        chunk = UNPARK_CHUNK

        def job(c: sqlite3.Connection) -> int:
            # INDEXED BY: without statistics SQLite prefers the queue index (every queued row)
            # to the partial index of the parked ones.
            n = c.execute(
                "UPDATE messages SET q_not_before=?, q_park=NULL WHERE rowid IN ("
                "SELECT rowid FROM messages INDEXED BY messages_parked "
                f"WHERE q_park IN ({pipe._marks(len(keys))}) AND q_state='queued' LIMIT ?)",
                (now, *keys, chunk),
            ).rowcount
            if n:  # earlier in the queue index: a senders walk may have passed them
                sqlite_senders.moved(c)
            return n

        total = 0
        for _ in range(UNPARK_MAX_CHUNKS):  # a chunk per write: others write in between
            n = await self._runner.write(job, durable=False)
            total += n
            if n < chunk:
                break
        return total

    async def waiting_texts(
        self, after: tuple[Any, ...] | None, limit: int
    ) -> tuple[list[WaitingText], tuple[Any, ...] | None]:
        def job(c: sqlite3.Connection) -> tuple[list[WaitingText], tuple[Any, ...] | None]:
            # In the queue index's order (account, due time, rowid): no sort, and a cursor that
            # misses no row while claims run beside the pass: a claim that parks a row moves it
            # later in that order (read again, harmless), and the held routes' un-park waits
            # for the pass (pipeline/dispatcher.py). walk_queue seeks the whole cursor: a
            # million waiting in one account were read again up to the cursor at each page.
            rows = pipe.walk_queue(
                c,
                "id, recipient, text, data_coding, wire",
                after or _QUEUE_START,
                limit,
                f"{NEVER_TRIED} AND text IS NOT NULL",
            )
            if not rows:
                return [], None
            parts: dict[str, list[NewSegment]] = {}
            ids = [r[3] for r in rows]
            for mid, seq, total, esm, sm, tlvs in c.execute(
                "SELECT message_id, seq, total, esm_class, short_message, tlvs FROM segments "
                f"WHERE message_id IN ({pipe._marks(len(ids))}) ORDER BY message_id, seq",
                ids,
            ):
                parts.setdefault(mid, []).append(
                    NewSegment(seq, total, esm, bytes(sm), bytes(tlvs))
                )
            out = [
                WaitingText(r[3], r[4], r[5], r[6], tuple(parts.get(r[3], ())), r[7]) for r in rows
            ]
            last = rows[-1]
            return out, (last[0], last[1], last[2]) if len(rows) == limit else None

        return await self._runner.read(job)

    async def reencode(
        self,
        changes: Sequence[Reencoding],
        now: int,
        restamps: Sequence[tuple[str, int | None, int]] = (),
        claimed_by: str | None = None,
    ) -> int:
        state, args = _reencodable(claimed_by)

        def job(c: sqlite3.Connection) -> int:
            done = 0
            for ch in changes:
                row = c.execute(
                    "SELECT m.data_coding, s.short_message FROM messages m "
                    "JOIN segments s ON s.message_id = m.id AND s.seq = 1 "
                    f"WHERE m.id=? AND {state} AND {NEVER_TRIED}",
                    (ch.id, *args),
                ).fetchone()
                if row is None or (row[0], bytes(row[1])) != (ch.was_data_coding, ch.was_first):
                    continue  # claimed, tried, canceled or encoded again since it was read
                c.execute("DELETE FROM segments WHERE message_id=?", (ch.id,))
                c.executemany(
                    "INSERT INTO segments (message_id, seq, total, esm_class, short_message, "
                    "tlvs) VALUES (?,?,?,?,?,?)",
                    [
                        (ch.id, p.seq, p.total, p.esm_class, p.short_message, p.tlvs)
                        for p in ch.parts
                    ],
                )
                c.execute(
                    "UPDATE messages SET encoding=?, data_coding=?, segments=?, wire=? WHERE id=?",
                    (ch.encoding, ch.data_coding, ch.segments, ch.wire, ch.id),
                )
                done += 1
            if restamps:  # parts already right for `wire`: only the stamp, if still as read
                c.executemany(
                    f"UPDATE messages SET wire=? WHERE id=? AND {state} AND {NEVER_TRIED} "
                    "AND wire IS ?",
                    [(wire, mid, *args, was) for mid, was, wire in restamps],
                )
            return done

        return await self._runner.write(job)

    async def claimed_text(self, instance: str, message_id: str) -> WaitingText | None:
        def job(c: sqlite3.Connection) -> WaitingText | None:
            row = c.execute(
                "SELECT id, recipient, text, data_coding, wire FROM messages "
                f"WHERE id=? AND q_state='claimed' AND q_claimed_by=? AND {NEVER_TRIED} "
                "AND text IS NOT NULL",
                (message_id, instance),
            ).fetchone()
            if row is None:
                return None
            parts = tuple(
                NewSegment(seq, total, esm, bytes(sm), bytes(tlvs))
                for seq, total, esm, sm, tlvs in c.execute(
                    "SELECT seq, total, esm_class, short_message, tlvs FROM segments "
                    "WHERE message_id=? ORDER BY seq",
                    (message_id,),
                )
            )
            return WaitingText(row[0], row[1], row[2], row[3], parts, row[4])

        return await self._runner.read(job)

    async def _write_counting(
        self, job: Callable[[sqlite3.Connection, dict[str, int]], T], **kw: Any
    ) -> T:
        """A write whose job counts, by SMSC, the parts it settled on another part's receipt:
        told to `on_inferred` once committed (the smpp_bridge_receipts_inferred metric)."""
        counts: dict[str, int] = {}

        def run(c: sqlite3.Connection) -> T:
            counts.clear()  # a job run again counts afresh
            return job(c, counts)

        out = await self._runner.write(run, **kw)
        report_inferred(self, counts)
        return out

    async def record_late_submits(self, items: list[pipe.LateAccept], now: int) -> int:
        def job(c: sqlite3.Connection, counts: dict[str, int]) -> int:
            return pipe.record_late_submits(
                c,
                items,
                now,
                intermediate=self.send_intermediate,
                one_per_message=self.one_receipt_smscs,
                inferred=counts,
            )

        return await self._write_counting(job, durable=False)

    def _queued_accounts(self, c: sqlite3.Connection) -> list[str]:
        # Skip-scan over the (q_state, account_id, ...) index: one seek per account, not per row.
        accounts: list[str] = []
        last = ""
        while True:
            row = c.execute(
                "SELECT account_id FROM messages WHERE q_state='queued' AND account_id>? "
                "ORDER BY account_id LIMIT 1",
                (last,),
            ).fetchone()
            if row is None:
                return accounts
            last = row[0]
            accounts.append(last)

    async def record_routes(self, instance: str, routes: list[tuple[str, str]]) -> set[str]:
        def job(c: sqlite3.Connection) -> set[str]:
            sql = (
                "UPDATE messages SET q_route=? WHERE id=? AND q_state='claimed' AND q_claimed_by=?"
            )
            return {mid for mid, smsc in routes if c.execute(sql, (smsc, mid, instance)).rowcount}

        return await self._runner.write(job)  # durable: the part leaves only once on disk

    async def record_submits(
        self,
        results: list[SubmitResult],
        releases: list[Release],
        now: int,
        *,
        instance: str | None = None,
    ) -> int:
        def job(c: sqlite3.Connection, counts: dict[str, int]) -> int:
            return pipe.record_submits(
                c,
                results,
                releases,
                now,
                intermediate=self.send_intermediate,
                instance=instance,
                one_per_message=self.one_receipt_smscs,
                inferred=counts,
            )

        return await self._write_counting(job, durable=False)

    async def infer_earlier_receipts(
        self, smscs: Collection[str], now: int, limit: int = 500
    ) -> int:
        """Up to `limit` messages with parts still `sent` beside a part of the same SMSC (one of
        `smscs`, now `one_per_message`) whose receipt came before the switch: those parts take
        its outcome (lifecycle.infer_earlier), the messages roll up, reported and billed.
        Returns how many messages were found: fewer than `limit`, none is left."""
        names = sorted(smscs)
        if not names:
            return 0
        sql = lc.EARLIER_RECEIPTED_SQL.format(smscs=pipe._marks(len(names)), limit="?")
        # Off the event loop: its last round reads every part of those SMSCs still 'sent' and
        # beyond (0.15 s per million parts), at each start with one_per_message SMSCs.
        mids = await self._runner.read_heavy(
            lambda c: [r[0] for r in c.execute(sql, (*names, limit))]
        )
        if not mids:
            return 0

        def job(c: sqlite3.Connection, counts: dict[str, int]) -> int:
            return pipe.infer_earlier(c, mids, frozenset(names), now, counts)

        await self._write_counting(job)
        return len(mids)

    async def apply_receipts(self, receipts: list[ReceiptIn], now: int) -> ReceiptOutcome:
        def job(c: sqlite3.Connection, counts: dict[str, int]) -> ReceiptOutcome:
            late: dict[str, int] = {}
            matched, pending, reports = pipe.apply_receipts(
                c, receipts, now, self.one_receipt_smscs, counts, late
            )
            return ReceiptOutcome(matched, pending, reports, late)

        return await self._write_counting(job)

    async def refresh_stats(self) -> list[str]:
        # SQLite plans each statement when it is prepared, from the schema's indexes alone (no
        # ANALYZE has run): a young table's plans do not outlive its youth.
        return []

    async def sweep(
        self,
        now: int,
        receipt_timeout_ms: int,
        records_now: int | None = None,
        smsc_validity_ms: Mapping[str, int] | None = None,
        silent_smscs: Collection[str] = (),
    ) -> Swept:
        """Periodic housekeeping: validity expiry, receipt timeouts, expired nonces and keys."""
        where, params = lc.timed_out_where(
            now, receipt_timeout_ms, smsc_validity_ms or {}, lambda _i: "?", silent_smscs
        )
        # The candidates are read on a snapshot of their own thread, outside the write lock: the
        # read steps over every message waiting past the timeout for a long validity's end
        # (~0.2-0.6 us each: 18-59 ms with 100,000 waiting, scripts/bench_receipt_sweep.py),
        # and in the lock it held every writer that long at each sweep. The write checks each
        # again by its id.
        validity = smsc_validity_ms or {}
        split = lc.waits_differ(receipt_timeout_ms, validity, silent_smscs)
        # In the index's order (sent_at, rowid: no sort), after the last page when that was full
        # and held messages back (base.SWEEP_CANDIDATES).
        sql = f"SELECT id, sent_at, expires_at, smsc, rowid FROM messages WHERE {where}"
        args = list(params)
        if (after := self._sweep_after) is not None:
            sql += " AND sent_at >= ? AND (sent_at > ? OR rowid > ?)"
            args += [after[0], after[0], after[1]]
        page = base.SWEEP_CANDIDATES
        args.append(page)

        def candidates(c: sqlite3.Connection) -> tuple[list[str], tuple[int, int] | None]:
            rows = c.execute(f"{sql} ORDER BY sent_at, rowid LIMIT ?", args).fetchall()
            if not split or not rows:
                return [r[0] for r in rows], None
            # A message whose parts went out on two SMSCs waits for the one that waits longest
            # (lifecycle.split_deadline), not only for the last part's, the row's.
            awaiting: dict[str, list[str]] = {}
            for chunk in pipe._chunks([r[0] for r in rows]):
                q = lc.AWAITING_SMSCS_SQL.format(ids=pipe._marks(len(chunk)))
                for mid, smsc in c.execute(q, chunk):
                    awaiting.setdefault(mid, []).append(smsc)
            later = lc.not_yet_timed_out(
                [r[:4] for r in rows], awaiting, now, receipt_timeout_ms, validity, silent_smscs
            )
            on = (rows[-1][1], rows[-1][4]) if later and len(rows) == page else None
            return [r[0] for r in rows if r[0] not in later], on

        due, self._sweep_after = await self._runner.read_heavy(candidates, lane="sweep")

        def job(c: sqlite3.Connection) -> Swept:
            # Parts sent before a release keep the message 'sent', yet nothing is left to send:
            # releasing (True) keeps it from staying claimable and counted in queue_depth.
            expired = _settle_parts(
                c,
                # Not while a released message waits out its hold after a try: its submit may
                # still be answered (late), and ended now the SMSC would deliver for free. A
                # parked one is past its hold (only a due message is parked), though parking
                # moved q_not_before on: without the q_park test a tried message whose route
                # stayed down was re-parked each time it came due and never expired.
                EXPIRED_QUEUED,
                now,
                from_state="queued",
                to_state=lc.SEG_EXPIRED_UNSENT,
                error=END_ERROR.format(seg="segments"),
                release=True,
                now=now,
            )
            timed_out = _settle_parts(
                c,
                f"SELECT id FROM messages WHERE id IN (SELECT value FROM json_each(?)) AND {where}",
                [json.dumps(due), *params],
                from_state="sent",
                to_state=lc.SEG_TIMEOUT,
                error="'NO_RECEIPT'",
                release=False,
                now=now,
            )
            lapsed, low = _lapse_vouchers(c, now)
            return {
                "expired": expired,
                "timed_out": timed_out,
                "vouchers_lapsed": lapsed,
                "balance_warnings": len(low),
                "low_balance": low,
            }

        out = await self._runner.write(job, durable=False)

        async def resume_ends() -> None:  # waiting messages' ends stopped part-way (sqlite_ends)
            stale = await self._runner.read(lambda c: chunked.stale(c, now, scopes=ends.SCOPES))
            out["expired"] += await ends.finish(self._runner.write, stale, now)

        # Each on its own: one whose chunk fails at every try (smpp_bridge_store_chunked_*)
        # skipped the purges below while it did, and the nonces and idempotency records grew
        # for as long.
        steps: tuple[tuple[str, Callable[[], Awaitable[None]]], ...] = (
            ("sweep: resuming chunked ends", resume_ends),
            (
                "sweep: resuming a senders walk",
                partial(sqlite_senders.resume, self._runner.read, self._runner.write, now),
            ),
            (
                "sweep: resuming an erasure's masking",
                partial(erasures.resume, self._runner.read, self._runner.write, now),
            ),
        )
        for what, step in steps:
            try:
                await step()
            except Exception as exc:
                if isinstance(exc, StoreClosedError):
                    raise
                _resume_failures.failed(what, exc)
            else:
                _resume_failures.ok(what)
        # Expired nonces and idempotency records; receipts that never matched, kept for
        # inspection as long as a receipt may still be awaited (else ids from elsewhere pile up
        # for ever); delivered webhook reports past their retention.
        for sql, cutoff in (
            (_PURGE_NONCES, now if records_now is None else records_now),
            (_PURGE_IDEMPOTENCY, now if records_now is None else records_now),
            (_PURGE_PENDING_RECEIPTS, now - receipt_timeout_ms),
            (_PURGE_WEBHOOKS, now - WEBHOOK_RETENTION_MS),
        ):
            for _ in range(_PURGE_MAX_CHUNKS):  # a chunk per write: the loop serves in between
                n = await self._runner.write(
                    partial(_purge, sql, cutoff), single=True, durable=False
                )
                if n < PURGE_CHUNK:
                    break
        return out

    async def unmatched_receipts(self, older_than: int, limit: int) -> list[dict[str, Any]]:
        def job(c: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = c.execute(
                "SELECT id, smsc, smsc_msg_id, state, stat, err, received_at, raw "
                "FROM pending_receipts WHERE received_at<=? ORDER BY id LIMIT ?",
                (older_than, limit),
            )
            keys = ("id", "smsc", "smsc_msg_id", "state", "stat", "err", "received_at", "raw")
            return [dict(zip(keys, r, strict=True)) for r in rows]

        return await self._runner.read_heavy(job)

    async def pending_receipt_count(self) -> int:
        return await self._runner.read(
            lambda c: c.execute("SELECT COUNT(*) FROM pending_receipts").fetchone()[0]
        )

    # -- MO ---------------------------------------------------------------------------------------

    async def add_mo_part(self, part: MoPart) -> list[MoPart] | None:
        """Keep a part in the set of its reference it fits (mo_sets.place_part); when that set
        holds parts 1..total, return them in order.

        The parts stay until the MO made of them is stored (store_mo_from_parts drops them in
        its transaction): a crash before leaves them for the SMSC's redelivery to complete
        again, never a lost MO. A part
        of another message under the same reference (its seq held already, or another total)
        starts a set of its own: never overwritten, joined or discarded."""

        def job(c: sqlite3.Connection) -> list[MoPart] | None:
            held = [
                mo_part(r)
                for r in c.execute(
                    f"SELECT {MO_PART_COLS} FROM mo_parts WHERE smsc=? AND source=? "
                    "AND destination=? AND ref=?",
                    (part.smsc, part.source, part.destination, part.ref),
                )
            ]
            placed = replace(part, set_no=mo_sets.place_part(held, part))
            c.execute(
                f"INSERT OR REPLACE INTO mo_parts ({MO_PART_COLS}) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                mo_part_values(placed),
            )
            return mo_sets.completed(held, placed)

        return await self._runner.write(job)

    async def drop_mo_parts(
        self, smsc: str, source: str, destination: str, ref: int, set_no: int = 0
    ) -> None:
        def job(c: sqlite3.Connection) -> None:
            c.execute(
                "DELETE FROM mo_parts WHERE smsc=? AND source=? AND destination=? AND ref=? "
                "AND set_no=?",
                (smsc, source, destination, ref, set_no),
            )

        await self._runner.write(job, single=True)

    async def store_mo(self, mo: MoMessage) -> bool:
        return await self._runner.write(lambda c: self._insert_mo(c, mo))

    @staticmethod
    def _insert_mo(c: sqlite3.Connection, mo: MoMessage) -> bool:
        cur = c.execute(
            f"INSERT OR IGNORE INTO mo_inbox ({MO_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            mo_values(mo),
        )
        if cur.rowcount != 1:
            return False  # kept already, and its push queued with it
        if mo.account_id is not None:
            _enqueue_webhook(c, mo.account_id, "mo", mo.id, None, f"mo_{mo.id}", mo.received_at)
        return True

    async def store_mo_from_parts(
        self, mo: MoMessage | None, parts: Sequence[MoPart]
    ) -> bool | None:
        """Store `mo`, made of `parts` (one group as `stale_mo_groups` read it, or the complete
        set add_mo_part returned), and drop those parts, in one transaction, but only while the
        group still holds exactly them: a part that came since the read (the rest of the
        message, or a resend) would otherwise be dropped unseen, or completed into a second MO;
        parts an erasure dropped since would bring the erased text back. None: the group
        changed, nothing done. Else as `store_mo` (False: stored before, or `mo` None: only the
        parts are dropped)."""
        first = parts[0]
        key = (first.smsc, first.source, first.destination, first.ref, first.set_no)
        expected = [(p.seq, p.total, p.received_at) for p in parts]

        def job(c: sqlite3.Connection) -> bool | None:
            kept = c.execute(
                "SELECT seq, total, received_at FROM mo_parts "
                "WHERE smsc=? AND source=? AND destination=? AND ref=? AND set_no=? ORDER BY seq",
                key,
            ).fetchall()
            if [tuple(r) for r in kept] != expected:
                return None
            inserted = mo is not None and self._insert_mo(c, mo)
            c.execute(
                "DELETE FROM mo_parts WHERE smsc=? AND source=? AND destination=? AND ref=? "
                "AND set_no=?",
                key,
            )
            return inserted

        return await self._runner.write(job)

    async def sender_assignments(self) -> list[tuple[str, tuple[str, ...]]]:
        def job(c: sqlite3.Connection) -> list[tuple[str, tuple[str, ...]]]:
            rows = c.execute(_ASSIGNMENTS_SQL)
            return [(r[0], senders_of(r[1])) for r in rows]

        return await self._runner.read(job)

    async def attribute_mo(
        self,
        source: str,
        senders: Sequence[str],
        now: int,
        *,
        default: bool = False,
        accounts: Sequence[str] = (),
    ) -> tuple[str, str | None] | None:
        """(account, sign name) of the message a reply from `source` answers: the latest in 30
        days to it from one of `senders` (the forms of the address the reply went to), or with no
        sender of its own when that address is the SMSC's default (`default`). None otherwise:
        a reply, an opt-out above all, is never handed to an account that wrote from another
        address.

        Latest by when it went out, and one that went out before one still waiting (scheduled,
        queued): the person answers what reached them. By acceptance alone, another account's
        message scheduled for tomorrow took a STOP meant for the one that had texted them, and
        a message scheduled 30 days ahead was out of the window the day it was sent."""

        def job(c: sqlite3.Connection) -> tuple[str, str | None] | None:
            only = f"AND account_id IN ({pipe._marks(len(accounts))}) " if accounts else ""
            row = c.execute(
                f"SELECT account_id, sign_name FROM messages WHERE recipient=? AND {_MO_WINDOW} "
                f"AND {_NOT_MASKING} "
                f"AND (sender IN ({pipe._marks(len(senders))}) OR (? AND sender IS NULL)) {only}"
                f"ORDER BY {_MO_ORDER} LIMIT 1",
                (
                    source,
                    now - 60 * 86_400_000,
                    now - 30 * 86_400_000,
                    *senders,
                    default,
                    *accounts,
                ),
            ).fetchone()
            return (row[0], row[1]) if row else None

        return await self._runner.read(job)

    async def get_mo(self, mo_id: str) -> MoMessage | None:
        def job(c: sqlite3.Connection) -> MoMessage | None:
            row = c.execute(
                f"SELECT {MO_COLS}, {ends.MO_MASKING} FROM mo_inbox WHERE id=?", (mo_id,)
            ).fetchone()
            # A closed account's, its inbox's masking under way: as the masking will leave it.
            return masked_mo(mo_message(row[:-1]), row[-1]) if row else None

        return await self._runner.read(job)

    async def stale_mo_groups(self, older_than: int, limit: int) -> list[list[MoPart]]:
        def job(c: sqlite3.Connection) -> list[list[MoPart]]:
            rows = c.execute(
                f"SELECT {MO_PART_COLS} FROM mo_parts p JOIN ("
                "SELECT smsc, source, destination, ref, set_no, MIN(received_at) AS started "
                "FROM mo_parts GROUP BY smsc, source, destination, ref, set_no "
                "HAVING MAX(received_at)<? "
                "ORDER BY started, smsc, source, destination, ref, set_no LIMIT ?"
                ") g USING (smsc, source, destination, ref, set_no) "
                "ORDER BY g.started, p.smsc, p.source, p.destination, p.ref, p.set_no, p.seq",
                (older_than, limit),
            ).fetchall()
            return group_mo_parts(mo_part(r) for r in rows)

        return await self._runner.read(job)

    # -- instances -------------------------------------------------------------------------------

    async def heartbeat(self, instance: str, role: str, now: int, status: str) -> None:
        def job(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO instances (instance, role, heartbeat_at, status) VALUES (?,?,?,?) "
                "ON CONFLICT (instance) DO UPDATE SET role=excluded.role, "
                "heartbeat_at=excluded.heartbeat_at, status=excluded.status",
                (instance, role, now, status),
            )
            # Forget processes silent for a day: restarts get new instance names.
            c.execute("DELETE FROM instances WHERE heartbeat_at<?", (now - 86_400_000,))

        await self._runner.write(job, durable=False)

    async def instances(self, since: int) -> list[tuple[str, str, int, str]]:
        def job(c: sqlite3.Connection) -> list[tuple[str, str, int, str]]:
            return c.execute(
                "SELECT instance, role, heartbeat_at, status FROM instances "
                "WHERE heartbeat_at>=? ORDER BY heartbeat_at DESC",
                (since,),
            ).fetchall()

        return await self._runner.read(job)

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
        """Due outbox rows, oldest first, leased for `lease_ms` by `holder`; none of the
        accounts in `exclude` (the sender has as many POSTs in flight to them as it allows)."""

        def job(c: sqlite3.Connection) -> list[WebhookJob]:
            skip = f"AND o.account_id NOT IN ({pipe._marks(len(exclude))}) " if exclude else ""
            rows = c.execute(
                "SELECT o.id, o.webhook_id, o.account_id, o.kind, "
                "CASE o.kind WHEN 'mo' THEN a.mo_callback_url ELSE a.status_callback_url END, "
                "o.payload, o.attempts, o.ref_id, o.created_at, o.retry_from "
                "FROM webhook_outbox o JOIN accounts a ON a.id = o.account_id "
                f"WHERE o.state='pending' AND o.next_attempt_at<=? {skip}"
                "ORDER BY o.next_attempt_at, o.id LIMIT ?",
                (now, *exclude, limit),
            ).fetchall()
            if not rows:
                return []
            ids = [r[0] for r in rows]
            marks = ",".join("?" * len(ids))
            # Lease: if this process dies mid-POST, the job becomes due again after lease_ms.
            c.execute(
                f"UPDATE webhook_outbox SET next_attempt_at=?, leased_by=? WHERE id IN ({marks})",
                (now + lease_ms, holder, *ids),
            )
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
                    retry_from=r[9],
                )
                for r in rows
            ]

        return await self._runner.write(job, durable=False)

    async def webhook_done(self, ids: list[int], now: int, lease: int | None = None) -> None:
        def job(c: sqlite3.Connection) -> None:
            c.executemany(
                "UPDATE webhook_outbox SET state='delivered', delivered_at=?, leased_by=NULL, "
                f"attempts=attempts+1 WHERE id=?{_LEASED}",
                [(now, i, lease, lease) for i in ids],
            )

        await self._runner.write(job, durable=False)

    async def webhook_retry(
        self, ids: list[int], next_at: int, error: str, dead: bool, lease: int | None = None
    ) -> None:
        def job(c: sqlite3.Connection) -> None:
            c.executemany(
                "UPDATE webhook_outbox SET state=?, next_attempt_at=?, last_error=?, "
                f"leased_by=NULL, attempts=attempts+1 WHERE id=?{_LEASED}",
                [
                    ("dead" if dead else "pending", next_at, error[:500], i, lease, lease)
                    for i in ids
                ],
            )

        await self._runner.write(job, durable=False)

    async def webhook_release(self, ids: list[int], lease: int, now: int) -> None:
        """Hand back claimed reports not started: due at once, behind those due earlier."""

        def job(c: sqlite3.Connection) -> None:
            c.executemany(
                f"UPDATE webhook_outbox SET next_attempt_at=?, leased_by=NULL WHERE id=?{_LEASED}",
                [(now, i, lease, lease) for i in ids],
            )

        await self._runner.write(job, durable=False)

    async def free_webhook_leases(self, now: int, *, at_start: bool) -> int:
        """At start-up, every lease is a dead daemon's (one daemon runs on a file: the owner
        lock is held since `recover`): its reports are due at once instead of after their
        lease. Later, none is (this daemon is the only sender)."""
        if not at_start:
            return 0

        def job(c: sqlite3.Connection) -> int:
            return c.execute(
                "UPDATE webhook_outbox SET next_attempt_at=?, leased_by=NULL "
                "WHERE state='pending' AND next_attempt_at>? AND leased_by IS NOT NULL",
                (now, now),
            ).rowcount

        self._runner.hold_ownership()
        return await self._runner.write(job, durable=False)

    async def dead_webhooks(self, account_id: str | None, limit: int) -> list[dict[str, Any]]:
        def job(c: sqlite3.Connection) -> list[dict[str, Any]]:
            sql = (
                "SELECT id, webhook_id, account_id, kind, ref_id, attempts, last_error, created_at "
                "FROM webhook_outbox WHERE state='dead'"
            )
            args: tuple[Any, ...] = ()
            if account_id is not None:
                sql += " AND account_id=?"
                args = (account_id,)
            rows = c.execute(sql + " ORDER BY id LIMIT ?", (*args, limit))
            keys = (
                "id",
                "webhook_id",
                "account_id",
                "kind",
                "ref_id",
                "attempts",
                "last_error",
                "created_at",
            )
            return [dict(zip(keys, r, strict=True)) for r in rows]

        return await self._runner.read_heavy(job)

    async def replay_webhooks(self, ids: list[int], now: int) -> int:
        def job(c: sqlite3.Connection) -> int:
            n = 0
            for i in ids:
                n += c.execute(
                    "UPDATE webhook_outbox SET state='pending', next_attempt_at=?1, attempts=0, "
                    "retry_from=?1 WHERE id=?2 AND state='dead'",
                    (now, i),
                ).rowcount
            return n

        return await self._runner.write(job)

    async def enqueue_event(
        self, account_id: str, kind: str, payload: str, webhook_id: str, now: int
    ) -> None:
        def job(c: sqlite3.Connection) -> None:
            _enqueue_webhook(c, account_id, kind, None, payload, webhook_id, now)

        await self._runner.write(job)

    async def webhook_backlog(self) -> tuple[int, int, int | None]:
        def job(c: sqlite3.Connection) -> tuple[int, int, int | None]:
            pending, dead, oldest = c.execute(WEBHOOK_BACKLOG).fetchone()
            return int(pending), int(dead), oldest

        return await self._runner.read(job)

    async def chunked_work(self) -> dict[str, tuple[int, int | None]]:
        def job(c: sqlite3.Connection) -> dict[str, tuple[int, int | None]]:
            return {
                kind: tuple(c.execute(f"SELECT COUNT(*), MIN(worked_at) FROM {table}").fetchone())
                for kind, table in chunked.CHUNKED.items()
            }

        return await self._runner.read(job)

    async def webhook_counts(self) -> dict[str, int]:
        def job(c: sqlite3.Connection) -> dict[str, int]:
            return dict(c.execute("SELECT state, COUNT(*) FROM webhook_outbox GROUP BY state"))

        return await self._runner.read(job)

    # -- reports and operator views (SQL in sqlite_reports.py) -------------------------------------

    async def cdr_page(
        self, account_id: str, since: int, until: int, after: tuple[int, str] | None, limit: int
    ) -> list[MessageRecord]:

        def job(c: sqlite3.Connection) -> list[MessageRecord]:
            mask = ends.masking(c, account_id)  # a closed account's, masking under way
            page = reports.cdr_page(c, account_id, since, until, after, limit)
            return page if mask is None else [masked(r, mask) for r in page]

        return await self._runner.read_heavy(job)

    async def queue_groups(self, now: int, route_prefixes: Iterable[str]) -> list[QueueGroup]:
        return await self._runner.read_heavy(lambda c: reports.queue_groups(c, now, route_prefixes))

    async def count_unmatched_receipts(self, older_than: int) -> tuple[int, int]:
        return await self._runner.read_heavy(
            lambda c: reports.count_unmatched_receipts(c, older_than)
        )

    async def unattributed_mo(self, before: tuple[int, str] | None, limit: int) -> list[MoMessage]:
        return await self._runner.read_heavy(lambda c: reports.unattributed_mo(c, before, limit))

    async def count_dead_webhooks(self, account_id: str | None) -> int:
        return await self._runner.read_heavy(lambda c: reports.count_dead_webhooks(c, account_id))


# -- helpers running inside a writer job ---------------------------------------------------------


def _split_sql(sql: str) -> Iterable[str]:
    # Migrations hold no "--" or ";" inside literals, so this split is exact; a trigger's body
    # holds ";" of its own: the parts are joined until SQLite finds a whole statement (0037).
    body = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    statement = ""
    for part in body.split(";"):
        statement += part + ";"
        if sqlite3.complete_statement(statement):
            if statement.strip(" \n\t;"):
                yield statement.strip().removesuffix(";").strip()
            statement = ""
    if statement.strip(" \n\t;"):
        yield statement.strip().removesuffix(";").strip()


# The messages a reply may answer: out (or due) in the last 30 days; a message is accepted at most
# 30 days before it is due (scheduled_at), so the index range on accepted_at spans 60.
_MO_WINDOW = "accepted_at>=? AND COALESCE(sent_at, scheduled_at, accepted_at)>=?"
_MO_ORDER = "(segments_sent>0) DESC, COALESCE(sent_at, scheduled_at, accepted_at) DESC, id DESC"
# The recipient a number-prefix filter of the statistics reads (QuerySendStatistics' IsGlobe): a
# closed account's mask while its masking is under way, as every message will have it then (as
# the reads of its messages answer them: sqlite_ends.masking). Read as they were, the counts by
# number prefix of a closed account stayed queryable until the last chunk and changed as it ran.
_STAT_RECIPIENT = (
    "COALESCE((SELECT value FROM pending_ends WHERE account_id=?2 AND scope='erase' LIMIT 1), "
    "recipient)"
)
# A closed account whose masking is under way (sqlite_ends.masking): its rows not masked yet still
# name the number, but a reply is not its any more, as once they are masked.
_NOT_MASKING = "account_id NOT IN (SELECT account_id FROM pending_ends WHERE scope='erase')"


def _lapse_vouchers(c: sqlite3.Connection, now: int) -> tuple[int, list[LowBalance]]:
    """Write off vouchers that expired with a remainder, and warn where that took an account
    under its low-balance threshold (admission.lapse_plan): the event queued here, the
    crossing returned for the daemon to log. (entries written off, crossings)"""
    accounts = [
        r[0]
        for r in c.execute(
            "SELECT DISTINCT account_id FROM pockets "
            "WHERE (pocket LIKE 'voucher:%' OR pocket LIKE 'card:%') AND amount>0 "
            "AND expires_at IS NOT NULL AND expires_at<=? LIMIT 1000",
            (now,),
        )
    ]
    lapsed = 0
    low_balance: list[LowBalance] = []
    for account_id in accounts:
        row = c.execute(
            "SELECT low_balance_threshold, low_warned_at IS NOT NULL FROM accounts WHERE id=?",
            (account_id,),
        ).fetchone()
        threshold, warned = row if row else (0, 0)
        entries, low = adm.lapse_plan(
            sqlite_rules.read_pockets(c, account_id), threshold, now, warned=bool(warned)
        )
        if entries:
            sqlite_rules.append_entries(c, account_id, entries)
            lapsed += len(entries)
        if low is not None:
            payload = adm.low_balance_event(account_id, low, now)
            _enqueue_webhook(c, account_id, "event", None, payload, new_id("evt_", now), now)
            sqlite_rules.mark_low_warned(c, account_id, now)
            low_balance.append(LowBalance(account_id, *low))
    return lapsed, low_balance


def _before_cursor(before_id: str, args: list[Any]) -> str:
    """The condition "listed after the message `before_id`" in (accepted_at, id) order."""
    at = id_time_ms(before_id, "msg_")
    if at is None:  # not one of our message ids: nothing of ours sorts before it by time
        args.append(before_id)
        return "id<?"
    args.extend((at, at, before_id))
    return "accepted_at<=? AND (accepted_at<? OR id<?)"


def _requeue_claims(
    c: sqlite3.Connection,
    now: int,
    unknown_smscs: frozenset[str],
    *,
    expired_only: bool,
    intermediate: bool = False,
) -> dict[str, int]:
    """Give claims back to the queue: all of them (start-up), or those whose lease expired.
    A claim with no part left to send is rolled up instead (as a claim rolls one up, with
    webhooks.send_intermediate's "sent" report: `intermediate`).

    Segments of a claimed message with no submit_sm_resp recorded may or may not have reached
    the SMSC: they are resent (at-least-once) unless the SMSC its parts went to in this claim
    (q_route) is configured `in_flight_on_restart: unknown`."""
    claimed = c.execute(
        "SELECT id, q_route, EXISTS (SELECT 1 FROM segments s WHERE s.message_id=messages.id "
        "AND s.state='queued') FROM messages WHERE q_state='claimed'"
        + (" AND q_lease_until<?" if expired_only else ""),
        (now,) if expired_only else (),
    ).fetchall()
    requeued = marked = 0
    idle = []
    for mid, route, to_send in claimed:
        if not to_send:
            # No part left to send: none of this claim's submits can be unanswered. Rolled up
            # (out of the queue, final or awaiting its receipts), not counted unanswered.
            idle.append(mid)
        elif route is not None and route in unknown_smscs:
            c.execute(
                "UPDATE segments SET state=?, done_at=?, error_code='IN_FLIGHT_AT_RESTART' "
                "WHERE message_id=? AND state='queued'",
                (lc.SEG_TIMEOUT, now, mid),
            )
            # Nothing is left to send: out of the queue even while earlier parts still await
            # their receipts (else it sits 'claimed' and in queue_depth).
            pipe.rollup_messages(c, {mid: True}, now)
            marked += 1
        else:
            # Its submit may be out with no answer recorded: an unanswered one (not cancelable,
            # and within the unanswered resends' budget).
            c.execute(
                "UPDATE messages SET q_state='queued', q_claimed_by=NULL, q_lease_until=NULL, "
                "q_unanswered=q_unanswered + 1 WHERE id=?",
                (mid,),
            )
            requeued += 1
    if idle:
        c.executemany(
            "UPDATE messages SET q_state='queued', q_claimed_by=NULL, q_lease_until=NULL "
            "WHERE id=?",
            [(mid,) for mid in idle],
        )
        pipe.rollup_messages(c, dict.fromkeys(idle, True), now, intermediate=intermediate)
    return {"requeued": requeued, "marked_unknown": marked}


def _authorize(
    c: sqlite3.Connection | sqlite3.Cursor,
    key_id: str,
    nonce: str,
    expires_at: int,
    now: int,
    replaced: list[int] | None = None,
    facts: tuple[str, tuple[Any, ...], tuple[int, Account] | None, list[Any]] | None = None,
    probed: bool = False,
) -> tuple[str, Account | None]:
    """Outcome and account; the nonce recorded when "ok". An expired record of the same nonce
    is replaced, its expiry added to `replaced` (an accept refused later restores it).

    `facts`: the key's statement that reads a send's facts too, and its parameters
    (`_authorize_facts_sql` over the columns of `sqlite_rules.key_cols`, with `key_id`, made
    positional by `_key_plan`), read in one statement instead of two: ~1.2 µs less of each
    accept's write lock; its row is appended to the list. Read before the nonce and idempotency
    writes, they read the same: neither writes what they read. With it, the (row_version,
    Account) held for the send's account (`account_at_version`): when the row still has that
    version the statement's head does not carry it and that Account is the row's (every write
    of the row changes its version: migration 0037); otherwise the row's JSON is read and its
    Account kept with the version read (`_AUTHORIZE_FACTS_HEAD`).

    `probed` (session 64): the statement is a probed one (`_authorize_facts_sql`'s "n" or
    "ni"), whose head says whether the nonce is stored: when it is not, the outcome is "held",
    "ok" with the nonce not written: the caller holds it for its batch's end (sqlite_rows),
    having made sure no earlier accept of the batch holds it. Stored, it is written (or found
    spent) here as without the probe."""
    if facts is None:
        row = c.execute(_AUTHORIZE_SQL, (key_id,)).fetchone()
        if row is None:
            return "unknown_key", None
        account = account_json_cached(row[1])
        if row[0] != "active":
            return "revoked", account
    else:
        sql, params, known, out = facts
        row = c.execute(sql, params).fetchone()
        if row is None:
            return "unknown_key", None
        out.append(row)
        head = row[0]
        if head is None:  # active, and the row as it was at the version held (probed: no nonce)
            account = known[1]  # type: ignore[index]
            if probed:
                return "held", account
        else:
            flags, version, text = head.split(" ", 2)
            if text:
                account = account_json_cached(text)
                remember_version(int(version) if version else None, account)
            else:  # the row as it was at the version held
                account = known[1]  # type: ignore[index]
            if flags[0] != "0":
                return "revoked", account
            if probed and flags[1] == "0":
                return "held", account
    key = (key_id, nonce)
    if c.execute(_NONCE_NEW, (*key, expires_at)).rowcount == 1:
        return "ok", account
    old = c.execute("SELECT expires_at FROM nonces WHERE key_id=? AND nonce=?", key).fetchone()[0]
    if old > now:
        return "nonce_reused", account
    c.execute("UPDATE nonces SET expires_at=? WHERE key_id=? AND nonce=?", (expires_at, *key))
    if replaced is not None:
        replaced.append(old)
    return "ok", account


_SKEW_GET = "SELECT skew_s, prev_s, since_ms FROM skew_windows WHERE face=?"
_SKEW_SET = (
    "INSERT INTO skew_windows (face, skew_s, prev_s, since_ms) VALUES (?,?,?,?) "
    "ON CONFLICT (face) DO UPDATE SET skew_s=excluded.skew_s, prev_s=excluded.prev_s, "
    "since_ms=excluded.since_ms"
)

# The common case is one statement: a new nonce, a new idempotency key. On a conflict the stored
# record is read: live, a replay; expired, replaced (and kept, to restore on a refusal).
_MESSAGES_INSERT = (
    "INSERT INTO messages (id, account_id, batch_id, client_ref, recipient, sender, "
    "sign_name, template, text, encoding, data_coding, segments, billable_units, "
    "accepted_at, scheduled_at, expires_at, q_not_before, kind, price_class, wire) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
# The message row's values that may be None: NewMessage's optional fields, by their place in
# `insert_values` (client_ref, sender, sign_name, template, text, scheduled_at, expires_at,
# kind, price_class, wire), in `_message_nones`'s order. The others never are (an int or a str
# each); one that were would be bound, not lost (sqlite_binds.KnownNones).
_MESSAGE_NONE_PLACES = (3, 5, 6, 7, 8, 14, 15, 17, 18, 19)
_MESSAGE_NONES = sqlite_binds.KnownNones(_MESSAGES_INSERT, 20, _MESSAGE_NONE_PLACES)


def _message_nones(m: NewMessage) -> tuple[bool, ...]:
    """Which of the message row's optional values are None (`_MESSAGE_NONES`' places)."""
    return (
        m.client_ref is None,
        m.sender is None,
        m.sign_name is None,
        m.template is None,
        m.text is None,
        m.scheduled_at is None,
        m.expires_at is None,
        m.kind is None,
        m.price_class is None,
        m.wire is None,
    )


# `NewMessage.insert_values`' twenty values as expressions of the message `m`, in its order
# (tests/unit/test_session63_accept_outside.py holds the two alike).
_MESSAGE_EXPRS = (
    "m.id", "m.account_id", "m.batch_id", "m.client_ref", "m.recipient", "m.sender",
    "m.sign_name", "m.template", "m.text", "m.encoding", "m.data_coding",
    "m.air_segments or len(m.segments)", "m.billable_units", "m.accepted_at", "m.scheduled_at",
    "m.expires_at", "m.scheduled_at or m.accepted_at", "m.kind", "m.price_class", "m.wire",
)  # fmt: skip
# Per pattern of Nones (`_message_nones`' flags): the statement's text and a function building
# `_MESSAGE_NONES.row`'s rows for a message of that pattern straight from its fields. At most
# 2 ** 10 entries, each made once.
_MessageRow = Callable[[NewMessage], tuple[tuple[Any, ...]]]
_MESSAGE_ROWS: dict[tuple[bool, ...], tuple[str, _MessageRow]] = {}


def _message_row(m: NewMessage) -> tuple[str, tuple[tuple[Any, ...]]]:
    """`_MESSAGE_NONES.row(m.insert_values(), _message_nones(m))`: the same text and row, in
    one call, the row built without the whole of `insert_values`' tuple and the getter that
    picked from it. Why: the three calls and the two tuples were ~7.8 k instructions of every
    one-recipient accept before its lock, this ~2 k (session 63)."""
    nones = (
        m.client_ref is None,
        m.sender is None,
        m.sign_name is None,
        m.template is None,
        m.text is None,
        m.scheduled_at is None,
        m.expires_at is None,
        m.kind is None,
        m.price_class is None,
        m.wire is None,
    )
    got = _MESSAGE_ROWS.get(nones)
    if got is None:
        got = _MESSAGE_ROWS[nones] = _message_row_maker(nones)
    text, make = got
    return text, make(m)


def _message_row_maker(nones: tuple[bool, ...]) -> tuple[str, _MessageRow]:
    """The text `_MESSAGE_NONES` gives for `nones` and a function of the message returning its
    row's values but those written as NULL, as a tuple of one row."""
    text, _ = _MESSAGE_NONES.text(nones)
    nulled = {place for place, none in zip(_MESSAGE_NONE_PLACES, nones, strict=True) if none}
    kept = [e for i, e in enumerate(_MESSAGE_EXPRS) if i not in nulled]
    ns: dict[str, Any] = {}
    exec(f"def make(m):\n    return (({', '.join(kept)},),)\n", ns)  # built from the names above
    return text, ns["make"]


_SEGMENTS_INSERT = (
    "INSERT INTO segments (message_id, seq, total, esm_class, short_message, tlvs) "
    "VALUES (?,?,?,?,?,?)"
)
# A send's segments whose TLVs are all empty: the zero-length blob in the text, the same value
# stored as a bound empty bytearray gave (a BLOB of no bytes), one value fewer bound a segment.
_SEGMENTS_NO_TLVS = (
    "INSERT INTO segments (message_id, seq, total, esm_class, short_message, tlvs) "
    "VALUES (?,?,?,?,?,X'')"
)
_TLVS_OF = attrgetter("tlvs")
_NONCE_NEW = (
    "INSERT INTO nonces (key_id, nonce, expires_at) VALUES (?,?,?) "
    "ON CONFLICT (key_id, nonce) DO NOTHING"
)
_IDEM_NEW = (
    "INSERT INTO idempotency (account_id, key, request_hash, status_code, response, expires_at) "
    "VALUES (?,?,?,?,?,?) ON CONFLICT (account_id, key) DO NOTHING"
)
_IDEM_GET = (
    "SELECT request_hash, status_code, response, expires_at, id, key FROM idempotency "
    "WHERE account_id=? AND key=?"
)
_IDEM_SET = (
    "UPDATE idempotency SET request_hash=?, status_code=?, response=?, expires_at=? "
    "WHERE account_id=? AND key=?"
)


# The queued messages whose validity ended, by the partial index of those with one (0023;
# INDEXED BY: without statistics SQLite reads every queued row of the queue index instead).
EXPIRED_QUEUED = (
    "SELECT id FROM messages INDEXED BY messages_expiring WHERE q_state='queued' "
    "AND expires_at IS NOT NULL AND expires_at<=?1 "
    "AND (q_attempts=0 OR q_not_before<=?1 OR q_park IS NOT NULL) LIMIT 10000"
)


def _settle_parts(
    c: sqlite3.Connection,
    select_sql: str,
    bound: int | Sequence[Any],
    *,
    from_state: str,
    to_state: str,
    error: str,
    release: bool,
    now: int,
) -> int:
    """Move the `from_state` parts of the messages `select_sql` finds to `to_state` with the
    error code SQL expression `error`, then roll those messages up together (one batched
    roll-up, not one per message)."""
    params = (bound,) if isinstance(bound, int) else tuple(bound)
    ids = [mid for (mid,) in c.execute(select_sql, params).fetchall()]
    if not ids:
        return 0
    pipe.move_parts(c, ids, from_state, to_state, now, error)
    pipe.rollup_messages(c, dict.fromkeys(ids, release), now)
    return len(ids)


class _AuthRefused(Exception):
    def __init__(self, outcome: str, account: Account | None = None) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.account = account


# A sender's write to the outbox rows it claimed: only while its lease still holds (the row is
# pending with the lease's next_attempt_at); without a lease (operator tools, tests) as before.
_LEASED = " AND (? IS NULL OR (state='pending' AND next_attempt_at=?))"


class _Undone:
    """An accept refused after its first writes, which it took back (a bare job returns this
    instead of raising, so the runner keeps the rest of the batch)."""

    __slots__ = ("refusal",)

    def __init__(self, refusal: _Refused | _RateLimited | _AuthRefused) -> None:
        self.refusal = refusal


class _Refused(Exception):
    def __init__(self, refusal: adm.Refusal) -> None:
        super().__init__(refusal.code)
        self.refusal = refusal


class _RateLimited(Exception):
    def __init__(self, wait: float) -> None:
        super().__init__(wait)
        self.wait = wait


def _warm_key(account_id: str, key: str, c: sqlite3.Connection) -> None:
    """Read the index pages an accept's Idempotency-Key insert will write, before the write lock.

    Why: clients' keys are mostly random, so each insert lands on a random leaf of the index;
    once the keys kept (`server.idempotency_hours`: 86 million a day at 1,000/s) outgrow the
    OS's cache, the insert read that leaf from disk while holding the lock every writer waits
    for. Read here first, it is in the OS's cache by then. The answer is not used: the write
    transaction decides, as before, so no record read here (stale by then, or another
    request's) ever answers. Not the nonce: 601 s of them stay cached, written all the time.
    Only while sampled reads show the disk (key_warmup): with the index cached it saves nothing
    and costs each accept 7-15 µs."""
    c.execute(_WARM_KEY, (account_id, key)).fetchone()


# Covering: only the pages of the unique index the insert descends through.
_WARM_KEY = "SELECT 1 FROM idempotency WHERE account_id=? AND key=?"


def _idem(c: sqlite3.Connection, account_id: str, key: str, now: int) -> IdempotencyRecord | None:
    row = c.execute(_IDEM_GET, (account_id, key)).fetchone()
    if row is None or row[3] <= now:
        return None
    return _idem_record(c, account_id, row)


def _idem_record(c: sqlite3.Connection, account_id: str, row: Sequence[Any]) -> IdempotencyRecord:
    """A row of _IDEM_GET, its answer as an erasure under way will leave it (sqlite_erase)."""
    response = erasures.answer(c, account_id, row[4], row[5], bytes(row[2]))
    return IdempotencyRecord(request_hash=row[0], status_code=row[1], response=response)


_PURGE_NONCES = (
    "DELETE FROM nonces WHERE (key_id, nonce) IN "
    "(SELECT key_id, nonce FROM nonces WHERE expires_at<=? LIMIT ?)"
)
_PURGE_IDEMPOTENCY = (
    "DELETE FROM idempotency WHERE id IN (SELECT id FROM idempotency WHERE expires_at<=? LIMIT ?)"
)
_PURGE_PENDING_RECEIPTS = (
    "DELETE FROM pending_receipts WHERE id IN "
    "(SELECT id FROM pending_receipts WHERE received_at<=? LIMIT ?)"
)
# next_attempt_at of a delivered row is its last lease: about when it was delivered (indexed).
_PURGE_WEBHOOKS = (
    "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox "
    "WHERE state='delivered' AND next_attempt_at<=? LIMIT ?)"
)
# At most this many chunks per table per sweep (every 5 s): 100,000 rows, 20,000 a second,
# beyond any steady rate; a backlog after a long stop drains over a few sweeps.
_PURGE_MAX_CHUNKS = 50


def _purge(sql: str, cutoff: int, c: sqlite3.Connection) -> int:
    return c.execute(sql, (cutoff, PURGE_CHUNK)).rowcount


def _status(c: sqlite3.Connection, account_id: str) -> str | None:
    row = c.execute("SELECT status FROM accounts WHERE id=?", (account_id,)).fetchone()
    return row[0] if row else None


# A candidate row of a claim's scan (_Scan): its id, due time, rowid and account, then, when
# the claim may park (a route down), its recipient and the route it was parked under. Without
# a park those two are not read (session 57): the sqlite3 module hands the GIL over around
# every column it reads (~0.9 k instructions each, Architecture note 27).
_DUE_COLS = "id, q_not_before, rowid, account_id"
_DUE_COLS_PARK = _DUE_COLS + ", recipient, q_park"
_resume_failures = Failures(logging.getLogger(__name__), is_unavailable)


class _Scan:
    """The candidates one claim looks at: routable ones picked, the rest parked (when the claim
    has a `park`), at most `budget` rows in all (of the due ones: see `parked`)."""

    __slots__ = ("budget", "cols", "ids", "now", "park", "rowids", "seen", "taken")

    def __init__(self, park: Callable[[str], str | None] | None, now: int, budget: int) -> None:
        self.park = park
        self.now = now
        self.budget = budget
        self.ids: list[str] = []
        self.rowids: dict[str, int] = {}  # each picked id's rowid, read with it (_claim_ids)
        self.seen: set[str] = set()
        self.taken: dict[str, int] = {}  # account -> how many of its rows were picked
        self.cols = _DUE_COLS if park is None else _DUE_COLS_PARK  # the rows' (_DUE_COLS)

    def pick(self, c: sqlite3.Connection, account: str, want: int, ask: int, cap: int) -> bool:
        """Pick up to `want` more ids, oldest first, of `account`, asking `ask` rows at first;
        whether it may have more due (False: none is left). Without anything to park this is
        one query, as before parking existed; each further round continues after the last row
        seen, four times larger, until `cap` rows (or the claim's budget) are examined."""
        after: tuple[int, int] | None = None
        got = examined = 0
        while got < want:
            n = min(ask, cap - examined, self.budget)
            if n <= 0:
                return True
            rows = self._due(c, account, after, n)
            examined += len(rows)
            self.budget -= len(rows)
            got += self._take(c, rows, want - got)
            if len(rows) < n:
                # No more candidates, unless the share filled up: `_take` passed over the
                # routable rows after it, which the fill must still see.
                return got >= want
            after = (rows[-1][1], rows[-1][2])
            ask *= 4
        return True

    def fill(self, c: sqlite3.Connection, accounts: Sequence[str], want: int) -> None:
        """Pick up to `want` more ids, the oldest due of anyone's among `accounts`: each
        account's next rows in its own index order, merged. One ordered query over every
        account's queue instead had SQLite sort every due row, the whole backlog, at each claim
        that took from more than one account (27 ms a claim with 200,000 waiting over three
        accounts, measured: the write lock held that long, ~100 messages a claim)."""
        after: dict[str, tuple[int, int] | None] = dict.fromkeys(accounts)
        # The rows picked already come first again (seen, passed over): asked for on top.
        skip = {acc: self.taken.get(acc, 0) for acc in accounts}
        ask = want
        while want > 0:
            n = min(ask, self.budget)
            if n <= 0:
                return
            heads = []
            more = False  # an account gave all it was asked for: it may have more
            for acc, at in after.items():
                rows = self._due(c, acc, at, n + skip[acc])
                more = more or len(rows) == n + skip[acc]
                heads += [(r[1], r[2], acc, r) for r in rows if r[0] not in self.seen]
            heads.sort(key=lambda h: (h[0], h[1]))
            looked = heads[:n]  # each account gave its n oldest left: the n oldest of all
            self.budget -= len(looked)
            want -= self._take(c, [h[3] for h in looked], want)
            if not more and len(heads) <= n:
                return  # every due row was looked at
            for nb, rowid, acc, _row in looked:
                after[acc], skip[acc] = (nb, rowid), 0
            ask *= 4

    def _due(
        self, c: sqlite3.Connection, account: str, after: tuple[int, int] | None, n: int
    ) -> list[Any]:
        """The account's next `n` due rows (`self.cols`: id, q_not_before, rowid, account_id,
        then with a park recipient and q_park) after `after` (q_not_before, rowid), in the
        queue index's own order: by rowid after the due time, not id, so SQLite stops at the
        limit instead of sorting every row of a due time (a campaign scheduled for one moment,
        a batch of one request: 27 ms a claim with 100,000 due at one time, measured)."""
        if after is not None:  # a later round (rows were parked): seek the whole cursor
            return pipe.walk_account(
                c, self.cols, account, after, n, "q_not_before<=?", (self.now,)
            )
        return c.execute(
            f"SELECT {self.cols} FROM messages WHERE q_state='queued' AND account_id=? "
            "AND q_not_before<=? ORDER BY q_not_before, rowid LIMIT ?",
            (account, self.now, n),
        ).fetchall()

    def parked(self, c: sqlite3.Connection, keys: Sequence[str], want: int) -> None:
        """Pick up to `want` ids parked under `keys` (routes with an SMSC up here), due or not.
        Un-parking them for everyone instead, on PostgreSQL another instance without such an
        SMSC parked them again before this one's claim came: they went out only in the few
        rows this instance's claim met first. Outside the budget: a few index probes, not a
        scan of due rows."""
        if want <= 0:
            return
        # INDEXED BY: without statistics SQLite prefers the queue index (every queued row).
        # With nothing parked (the usual case) one probe, not one per route key.
        if (
            c.execute(
                "SELECT 1 FROM messages INDEXED BY messages_parked "
                "WHERE q_park IS NOT NULL AND q_state='queued' LIMIT 1"
            ).fetchone()
            is None
        ):
            return
        rows = c.execute(
            f"SELECT {_DUE_COLS_PARK} FROM messages "
            "INDEXED BY messages_parked "
            f"WHERE q_park IN ({pipe._marks(len(keys))}) AND q_state='queued' LIMIT ?",
            (*keys, want + len(self.ids)),  # some may be picked already (due again)
        ).fetchall()
        self._take(c, rows, want)

    def _take(self, c: sqlite3.Connection, rows: Sequence[Any], want: int) -> int:
        """Pick up to `want` routable ids of `rows` (_DUE_COLS; with a park, _DUE_COLS_PARK),
        park the unroutable; how many were picked."""
        got = 0
        parked: list[tuple[int, str, str]] = []
        for row in rows:
            mid = row[0]
            if mid in self.seen:
                continue
            key = self.park(row[4]) if self.park is not None else None
            if key is not None:
                again = key == row[5]  # back from PARK_MS with its route still down
                until = self.now + (PARK_AGAIN_MS if again else PARK_MS)
                parked.append((until, key, mid))
            elif got < want:
                self.ids.append(mid)
                self.rowids[mid] = row[2]
                self.taken[row[3]] = self.taken.get(row[3], 0) + 1
                got += 1
            else:
                continue
            self.seen.add(mid)
        if parked:  # out of this claim's later queries too (their q_not_before passed now)
            c.executemany("UPDATE messages SET q_not_before=?, q_park=? WHERE id=?", parked)
        return got


# A claim's rows as read in its transaction: the ids it listed, those it hands out (in claim
# order), each one's message columns (_claim_ids), its queued parts' rows (the message's place
# in the listed ids, seq, ...) in no set order (_work sorts them).
_Claimed = tuple[list[str], list[str], dict[str, tuple[Any, ...]], list[tuple[Any, ...]]]
_NONE_CLAIMED: _Claimed = ([], [], {}, [])
_FIRST = itemgetter(0)


# The claim's read of its message rows (pipe.packed_rows: one JSON value for the claim, not a
# step and a tuple a message; session 59).
_CLAIM_SELECTED = (
    "m.id, m.account_id, m.recipient, m.sender, m.data_coding, m.expires_at, "
    "m.q_attempts, CASE WHEN m.segments_sent>0 THEN m.smsc END, m.q_unanswered, m.wire"
)


def _claim_ids(
    c: sqlite3.Connection,
    ids: list[str],
    instance: str,
    lease_until: int,
    now: int,
    intermediate: bool,
    reports: list[int],
    rowids: Mapping[str, int],
) -> _Claimed:
    """Claim `ids` and read what their sending needs. `rowids` (id -> rowid: every id's, as
    the claim's scan read them, in its transaction) find the message rows for the UPDATE and
    the read, not a seek of the id's index each (two a message in the owner's write lock;
    session 56)."""
    listed = (pipe.json_ids(ids),)
    keys = (orjson.dumps([rowids[mid] for mid in ids]).decode(),)
    c.execute(
        "UPDATE messages SET q_state='claimed', q_claimed_by=?, q_lease_until=?, "
        "q_attempts=q_attempts+1, q_route=NULL, q_park=NULL "
        "WHERE rowid IN (SELECT value FROM json_each(?))",
        (instance, lease_until, *keys),
    )
    msgs = {
        r[0]: r
        for r in pipe.packed_rows(
            c,
            _CLAIM_SELECTED,
            "FROM json_each(?) j CROSS JOIN messages m ON m.rowid = j.value",
            keys,
        )
    }
    # Each part names its message by its place in the claim's list (`j.key`, an INTEGER), not
    # by its text id: the sqlite3 module makes an int, not a str, a part, and _work sorts
    # and groups the parts by it (session 63).
    segs = c.execute(
        "SELECT j.key, s.seq, s.total, s.esm_class, s.short_message, s.tlvs, s.attempts "
        "FROM json_each(?) j CROSS JOIN segments s ON s.message_id = j.value "
        "WHERE s.state='queued'",
        listed,
    ).fetchall()
    claimed = ids
    if len(have := set(map(_FIRST, segs))) < len(ids):
        idle = {mid for k, mid in enumerate(ids) if k not in have}
        done = _roll_up_idle(c, sorted(idle), now, intermediate, reports)
        ids = [mid for mid in ids if mid not in done]
    return claimed, ids, msgs, segs


def _roll_up_idle(
    c: sqlite3.Connection,
    idle: list[str],
    now: int,
    intermediate: bool,
    reports: list[int] | None = None,
) -> set[str]:
    """Claimed messages with no part left to send (queued with every part ended or sent: left
    so by a defect of session 49, or any other way) are rolled up from their parts in the claim,
    not handed out: the dispatcher released such a message unsent and the next claim took it
    again, for ever (or, its validity passed, handed in nothing and left it claimed until its
    lease ran out, which counted a submit unanswered); one with no part row at all ends unsent
    (rollup_rows.NO_PARTS). Returns those the roll-up took out of the queue; the reports it
    queued are appended to `reports` (the claim's caller wakes the webhook sender for them)."""
    queued = pipe.rollup_messages(c, dict.fromkeys(idle, True), now, intermediate=intermediate)
    if reports is not None:
        reports.append(queued)
    return {
        r[0]
        for r in c.execute(
            f"SELECT id FROM messages WHERE id IN ({pipe._marks(len(idle))}) AND q_state='done'",
            idle,
        )
    }


# The claim's values built by fastinit.maker's functions, not by calling their classes: a
# class whose __init__ is Python is entered again from C (~1.5 k instructions a value, a part
# and a message a claimed message; session 58).
_new_work_segment = maker(WorkSegment)
_new_work_message = maker(WorkMessage)
_BYTES = bytes  # what the sqlite3 module reads a BLOB as (_work)


def _work(
    listed: list[str],
    ids: list[str],
    msgs: dict[str, tuple[Any, ...]],
    rows: list[tuple[Any, ...]],
) -> list[WorkMessage]:
    """The claimed messages of a claim's rows (_Claimed), in claim order, each one's parts in
    seq order: sorted here, after the commit, not by the claim's read inside the write lock."""
    segs: dict[str, list[WorkSegment]] = {}
    new_segment = _new_work_segment
    last = None
    parts: list[WorkSegment] = []
    # By the rows themselves: each (message, seq) is one row (the parts' key), so tuples
    # compare by those two alone, in C, not by a key function's call a part (session 57); a
    # message's rows are then next to each other, its list made once (not a setdefault's
    # list a part), and each row unpacked at once, not read a field at a time (session 60).
    for k, seq, total, esm_class, short_message, tlvs, attempts in sorted(rows):
        if k != last:
            parts = segs[listed[k]] = []
            last = k
        parts.append(
            # By position (seq, total, esm_class, short_message, tlvs, attempts): a class
            # called with keywords gets a dict to unpack; order held by
            # tests/unit/test_session52_positional_claim.py. The sqlite3 module reads a BLOB
            # as bytes, taken as it is: bytes() of bytes looks up and calls its __bytes__
            # (~0.5 k instructions, two a part); anything else (a hand edit) goes through
            # bytes() as before.
            new_segment(
                seq,
                total,
                esm_class,
                short_message if short_message.__class__ is _BYTES else bytes(short_message),
                tlvs if tlvs.__class__ is _BYTES else bytes(tlvs),
                attempts,
            )
        )
    new_message = _new_work_message
    out = []
    for mid in ids:
        m = msgs[mid]
        out.append(
            # By position: id, account_id, recipient, sender, data_coding, expires_at,
            # attempts, segments, smsc, unanswered, wire.
            new_message(
                m[0], m[1], m[2], m[3], m[4], m[5], m[6], tuple(segs.get(mid, ())), m[7], m[8], m[9]
            )
        )
    return out


def _enqueue_webhook(
    c: sqlite3.Connection,
    account_id: str,
    kind: str,
    ref_id: str | None,
    payload: str | None,
    webhook_id: str,
    now: int,
) -> None:
    url_col = "mo_callback_url" if kind == "mo" else "status_callback_url"
    row = c.execute(f"SELECT {url_col} FROM accounts WHERE id=?", (account_id,)).fetchone()
    if row is None or not row[0]:
        return  # no callback configured: nothing to push (the status is still queryable)
    c.execute(
        "INSERT OR IGNORE INTO webhook_outbox (webhook_id, account_id, kind, ref_id, payload, "
        "next_attempt_at, created_at) VALUES (?,?,?,?,?,?,?)",
        (webhook_id, account_id, kind, ref_id, payload, now, now),
    )


def _reencodable(claimed_by: str | None) -> tuple[str, tuple[str, ...]]:
    """Where a message may get new parts: queued (the pass after a reload), or claimed by
    `claimed_by` (the dispatcher, as it finds a message encoded for other wire options)."""
    if claimed_by is None:
        return "q_state='queued'", ()
    return "q_state='claimed' AND q_claimed_by=?", (claimed_by,)
