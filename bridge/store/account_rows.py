"""Column lists and row mappers of the accounts and app_keys tables, shared by both engines (their
SELECTs name the same columns in the same order; only the SQL around them differs)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from bridge import jsonio
from bridge.store.models import Account, AppKey, AuditEntry

ACCOUNT_COLS = (
    "id, name, kind, raw_text, marketing, default_country, tps, daily_quota, "
    "status_callback_url, mo_callback_url, webhook_secret_enc, status, created_at, updated_at, "
    "low_balance_threshold, report_format, senders, prev_webhook_secret_enc, "
    "prev_webhook_secret_until, low_warned_at"
)
KEY_COLS = "key_id, account_id, secret_enc, status, created_at, revoked_at, last_used_at"


def account_row(row: Sequence[Any]) -> Account:
    """An ACCOUNT_COLS row; SQLite hands back 0/1 and memoryview where PostgreSQL has bool/bytes."""
    return Account(
        id=row[0],
        name=row[1],
        kind=row[2],
        raw_text=bool(row[3]),
        marketing=bool(row[4]),
        default_country=row[5],
        tps=row[6],
        daily_quota=row[7],
        status_callback_url=row[8],
        mo_callback_url=row[9],
        webhook_secret_enc=bytes(row[10]),
        status=row[11],
        created_at=row[12],
        updated_at=row[13],
        low_balance_threshold=row[14],
        report_format=row[15],
        senders=senders_of(row[16]),
        prev_webhook_secret_enc=None if row[17] is None else bytes(row[17]),
        prev_webhook_secret_until=row[18],
        low_balance_warned_at=row[19],
    )


# SQLite: the whole ACCOUNT_COLS row as one JSON array, its blobs in hex (JSON holds no blob), so
# the key check reads the account as one column. Why: the sqlite3 module builds a description
# entry and, unlocking the GIL, a value for every column of every row it reads: ~1,500
# instructions a column, 20 of them per accept, against one JSON text whose string is the cache
# key (session 50: 1,053 k -> 1,038 k instructions per accepted request, callgrind).
_ACCOUNT_NAMES = tuple(col.strip() for col in ACCOUNT_COLS.split(","))
_BLOBS = ("webhook_secret_enc", "prev_webhook_secret_enc")
_BLOB_AT = tuple(_ACCOUNT_NAMES.index(col) for col in _BLOBS)
ACCOUNT_JSON_SQLITE = (
    "json_array("
    + ", ".join(
        f"iif({{t}}.{col} IS NULL, NULL, hex({{t}}.{col}))" if col in _BLOBS else f"{{t}}.{col}"
        for col in _ACCOUNT_NAMES
    )
    + ")"
)
# How many accounts a process keeps the Account of (`server.account_cache`, set_account_cache):
# each cache below holds at most this many, the least recently used one dropped for a new one.
# Why LRU and this size: until session 56 both were emptied at 256, so a gateway whose
# customers' requests came round 256 or more accounts built the Account again on every accept
# (the row sent as JSON, parsed and built: ~24 k instructions of the write lock; with the other
# caches of README note 31, +21% instructions a request with 1,000 accounts,
# bench_accept_inproc.py --accounts). ~1.3 KB an account for both (measured, note 31).
ACCOUNT_CACHE_DEFAULT = 10_000
_size = ACCOUNT_CACHE_DEFAULT
# The accounts last built by `account_json_cached`, keyed by the whole row's text: a row that
# differs in any column (a setting, the status, the warning mark) is another key, so no account
# is ever answered from a stale row.
_BUILT: OrderedDict[str, Account] = OrderedDict()


def set_account_cache(size: int) -> None:
    """Both caches' bound (at least 1); entries beyond it dropped now, least recently used
    first."""
    global _size
    _size = max(1, size)
    for cache in (_BUILT, _BY_VERSION):
        while len(cache) > _size:
            cache.popitem(last=False)


def cache_size() -> int:
    """The bound `set_account_cache` set: the PostgreSQL store's accounts by version hold as
    many (postgres.PostgresStore._by_version)."""
    return _size


def account_json_cached(text: str) -> Account:
    """`account_row` of an ACCOUNT_JSON_SQLITE value, the account built once per distinct text.

    Why: every signed send reads its key's account inside the write lock (sqlite._authorize),
    and building the 20-field value cost more than hashing the row to find the one built from
    the same values before (an account's row changes seldom, and only by an operator)."""
    hit = _BUILT.get(text)
    if hit is None:
        row = jsonio.loads(text)
        for i in _BLOB_AT:
            if row[i] is not None:
                row[i] = bytes.fromhex(row[i])
        hit = _BUILT[text] = account_row(row)
        if len(_BUILT) > _size:
            _BUILT.popitem(last=False)
    else:
        _BUILT.move_to_end(text)
    return hit


# SQLite (migration 0037): the Account last built for each account id, with the `row_version`
# its row had, which every write of the row changes (random, set by a trigger). An accept passes
# the version it holds to its key's statement, which then answers NULL for the account instead
# of the row as JSON (sqlite._authorize): building and converting that text was ~24 k
# instructions of each accept's write lock. Read inside the lock as before: only the unchanged
# row is not sent again. Bounded as _BUILT.
_BY_VERSION: OrderedDict[str, tuple[int, Account]] = OrderedDict()


def account_at_version(account_id: str) -> tuple[int, Account] | None:
    """The (row_version, Account) `remember_version` last kept for `account_id`, or None."""
    hit = _BY_VERSION.get(account_id)
    if hit is not None:
        _BY_VERSION.move_to_end(account_id)
    return hit


def remember_version(version: int | None, account: Account) -> None:
    """`account` as built from its row at `version` (None: a row without one, not kept)."""
    if version is None:
        return
    _BY_VERSION[account.id] = (version, account)
    _BY_VERSION.move_to_end(account.id)
    if len(_BY_VERSION) > _size:
        _BY_VERSION.popitem(last=False)


def refusal_of(account: Account | None, version: int) -> str | None:
    """Why an accept validated against the account's `version` (updated_at) must not be written
    now: "disabled" (gone or disabled since), "stale" (changed since), or None."""
    if account is None or not account.active:
        return "disabled"
    if account.updated_at != version:
        return "stale"
    return None


def senders_of(value: str | None) -> tuple[str, ...]:
    """The `senders` column read back (a JSON list, or NULL)."""
    return tuple(jsonio.loads(value)) if value else ()


# Both engines: the accounts an assignment check or a reply attribution must know about.
ASSIGNMENTS_SQL = (
    "SELECT id, senders FROM accounts WHERE senders IS NOT NULL AND status <> 'closed' ORDER BY id"
)


# Messages not handed over yet (scheduled ones included) or on a bind now, that name a sender:
# what a change of sender assignments may leave an account no longer allowed to send.
WAITING_SENDERS_SQL = (
    "SELECT id, account_id, sender FROM messages "
    "WHERE (q_state='queued' OR q_state='claimed') AND sender IS NOT NULL"
)
# What an account setting turned off no longer allows among its waiting messages, checked only
# at acceptance before: (setting, the messages it ends, the error). Marketing turned off
# left a scheduled marketing campaign to go out, and raw_text turned off the free texts.
REVOKED_SENDS = (
    ("marketing", "kind = 'marketing'", "MARKETING_NOT_ALLOWED"),
    ("raw_text", "template IS NULL", "RAW_TEXT_NOT_ALLOWED"),
)


def column_value(name: str, value: Any) -> Any:
    """An account field as its column holds it: `senders` is a JSON list (NULL when empty), the
    same text on both engines."""
    if name == "senders":
        return jsonio.dumps(list(value)).decode() if value else None
    return value


def key_row(row: Sequence[Any]) -> AppKey:
    """A KEY_COLS row."""
    return AppKey(
        key_id=row[0],
        account_id=row[1],
        secret_enc=bytes(row[2]),
        status=row[3],
        created_at=row[4],
        revoked_at=row[5],
        last_used_at=row[6],
    )


# Every sealed secret: (kind, row id, blob). The row id is the blob's associated data.
SEALED_SECRETS = (
    "SELECT 'account', id, webhook_secret_enc FROM accounts "
    "UNION ALL SELECT 'account_prev', id, prev_webhook_secret_enc FROM accounts "
    "WHERE prev_webhook_secret_enc IS NOT NULL "
    "UNION ALL SELECT 'key', key_id, secret_enc FROM app_keys"
)
# A secret sealed anew (`secrets reseal`): only over the blob that was read, so a secret rotated
# meanwhile (rotate-webhook-secret) is not put back. {0} new blob, {1} row id, {2} old blob.
RESEAL = {
    "account": "UPDATE accounts SET webhook_secret_enc={0} WHERE id={1} AND webhook_secret_enc={2}",
    "account_prev": "UPDATE accounts SET prev_webhook_secret_enc={0} "
    "WHERE id={1} AND prev_webhook_secret_enc={2}",
    "key": "UPDATE app_keys SET secret_enc={0} WHERE key_id={1} AND secret_enc={2}",
}


AUDIT_COLS = "at, actor, action, target, status, code, request_id, remote"
# The trail a page at a time, oldest first, after the last id a page showed ({0}: after,
# {1}: since, {2}: until, {3}: limit).
AUDIT_PAGE = (
    f"SELECT {AUDIT_COLS}, id FROM audit_log WHERE id > {{0}} AND at >= {{1}} AND at < {{2}} "
    "ORDER BY id LIMIT {3}"
)


def audit_values(e: AuditEntry) -> tuple[Any, ...]:
    return (e.at, e.actor, e.action, e.target, e.status, e.code, e.request_id, e.remote)


def audit_row(r: Sequence[Any]) -> AuditEntry:
    return AuditEntry(*r)
