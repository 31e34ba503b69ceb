"""Read-only SQL behind the reports and operator views, PostgreSQL flavour of `sqlite_reports.py`.

Same results as the SQLite engine (the contract tests compare them); the queries differ only in
dialect (`COUNT(*) FILTER`, `$n` parameters, `substr` for route prefixes).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import asyncpg

from bridge.domain import lifecycle as lc
from bridge.store.mo_rows import MO_COLS, mo_message
from bridge.store.models import MessageRecord, MoMessage, QueueGroup
from bridge.store.postgres_ends import MASKING
from bridge.store.postgres_tx import scalar

_CDR_COLS = (
    "id, account_id, batch_id, client_ref, recipient, sender, sign_name, template, NULL, "
    "encoding, data_coding, segments, billable_units, segments_sent, segments_delivered, "
    "segments_failed, state, error_code, error_text, smsc, accepted_at, scheduled_at, "
    "expires_at, sent_at, done_at"
)


# The /v1/stats buckets (lifecycle.stat_of), in STAT_BUCKETS order.
_STAT_COUNTS = ", ".join(f"COUNT(*) FILTER (WHERE {lc.STAT_SQL[k]})" for k in lc.STAT_BUCKETS)


# The recipient a number-prefix filter reads (QuerySendStatistics' IsGlobe): a closed account's
# mask while its masking is under way (postgres_ends.MASKING, one probe), as every message will
# have it then and as the reads of its messages answer them. Read as they were, its counts by
# number prefix stayed queryable until the last page, and changed as the pages ran.
_STAT_RECIPIENT = f"COALESCE({MASKING.format(2)}, recipient)"


async def stats(
    pool: asyncpg.Pool,
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
    rows = await pool.fetch(
        f"SELECT (accepted_at + $1) / 86400000 AS day, COUNT(*), {_STAT_COUNTS}, "
        "SUM(segments), SUM(billable_units) FROM messages WHERE account_id = $2 "
        "AND accepted_at >= $3 AND accepted_at < $4 "
        f"AND ($5::text IS NULL OR (left({_STAT_RECIPIENT}, length($5::text)) = $5::text) = $6) "
        "AND ($7::text IS NULL OR sign_name = $7) AND ($8::text IS NULL OR kind = $8) "
        "GROUP BY day ORDER BY day",
        tz_offset_ms,
        account_id,
        since,
        until,
        prefix,
        within,
        sign_name,
        kind,
    )
    n = len(lc.STAT_BUCKETS)
    return [
        {
            "day_index": int(r[0]),
            "submitted": int(r[1]),
            **{k: int(v) for k, v in zip(lc.STAT_BUCKETS, r[2 : 2 + n], strict=True)},
            "segments": scalar(r[2 + n]),
            "units": scalar(r[3 + n]),
        }
        for r in rows
    ]


async def cdr_page(
    pool: asyncpg.Pool,
    account_id: str,
    since: int,
    until: int,
    after: tuple[int, str] | None,
    limit: int,
) -> list[MessageRecord]:
    """One page of an account's messages accepted in [since, until), keyset on (accepted_at, id):
    every page costs the same however deep into a month it is. `text` is not read."""
    if after is None:
        lower, last_id = since, ""
    else:
        lower, last_id = max(since, after[0]), after[1]
    rows = await pool.fetch(
        f"SELECT {_CDR_COLS} FROM messages WHERE account_id = $1 AND accepted_at >= $2 "
        "AND accepted_at < $3 AND (accepted_at > $2 OR id > $4) ORDER BY accepted_at, id "
        "LIMIT $5",
        account_id,
        lower,
        until,
        last_id,
        limit,
    )
    return [MessageRecord(*r) for r in rows]


async def queue_groups(
    pool: asyncpg.Pool, now: int, route_prefixes: Iterable[str]
) -> list[QueueGroup]:
    """Unsent work grouped by (account, longest matching route prefix, wait state); parked
    messages (`q_park` set) are `parked`, not `retry_wait`, like the SQLite report."""
    prefixes = sorted(set(route_prefixes), key=lambda p: (-len(p), p))
    args: list[Any] = [now]
    if prefixes:
        whens = []
        for p in prefixes:
            args += [len(p), p]
            whens.append(
                f"WHEN substr(recipient, 1, ${len(args) - 1}) = ${len(args)} THEN ${len(args)}"
            )
        route_sql = "CASE " + " ".join(whens) + " ELSE '' END"
    else:
        route_sql = "''"
    sql = (
        f"SELECT account_id, {route_sql} AS route, "
        "CASE WHEN q_state = 'claimed' THEN 'claimed' "
        "WHEN scheduled_at IS NOT NULL AND scheduled_at > $1 THEN 'scheduled' "
        "WHEN q_park IS NOT NULL THEN 'parked' "
        "WHEN q_not_before > $1 THEN 'retry_wait' ELSE 'ready' END AS bucket, "
        "COUNT(*), COALESCE(SUM(segments - segments_sent), 0), "
        "MIN(COALESCE(scheduled_at, accepted_at)) "
        "FROM messages WHERE q_state IN ('queued', 'claimed') "
        "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )
    return [
        QueueGroup(r[0], r[1], r[2], int(r[3]), scalar(r[4]), r[5])
        for r in await pool.fetch(sql, *args)
    ]


async def count_unmatched_receipts(pool: asyncpg.Pool, older_than: int) -> tuple[int, int]:
    row = await pool.fetchrow(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE received_at <= $1) FROM pending_receipts",
        older_than,
    )
    assert row is not None
    return int(row[0]), int(row[1])


async def count_dead_webhooks(pool: asyncpg.Pool, account_id: str | None) -> int:
    if account_id is None:
        value = await pool.fetchval("SELECT COUNT(*) FROM webhook_outbox WHERE state = 'dead'")
    else:
        value = await pool.fetchval(
            "SELECT COUNT(*) FROM webhook_outbox WHERE state = 'dead' AND account_id = $1",
            account_id,
        )
    return int(value)


async def unmatched_receipts(
    pool: asyncpg.Pool, older_than: int, limit: int
) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT id, smsc, smsc_msg_id, state, stat, err, received_at, raw "
        "FROM pending_receipts WHERE received_at <= $1 ORDER BY id LIMIT $2",
        older_than,
        limit,
    )
    return [dict(r.items()) for r in rows]


async def dead_webhooks(
    pool: asyncpg.Pool, account_id: str | None, limit: int
) -> list[dict[str, Any]]:
    sql = (
        "SELECT id, webhook_id, account_id, kind, ref_id, attempts, last_error, created_at "
        "FROM webhook_outbox WHERE state = 'dead'"
    )
    if account_id is None:
        rows = await pool.fetch(sql + " ORDER BY id LIMIT $1", limit)
    else:
        rows = await pool.fetch(
            sql + " AND account_id = $1 ORDER BY id LIMIT $2", account_id, limit
        )
    return [dict(r.items()) for r in rows]


async def unattributed_mo(
    pool: asyncpg.Pool, before: tuple[int, str] | None, limit: int
) -> list[MoMessage]:
    """A page of the replies stored for no account, newest first (Store.unattributed_mo). Ids
    compare bytewise (COLLATE "C"), as SQLite's do: a cursor means the same on both engines."""
    if before is None:
        rows = await pool.fetch(
            f"SELECT {MO_COLS} FROM mo_inbox WHERE account_id IS NULL "
            'ORDER BY received_at DESC, id COLLATE "C" DESC LIMIT $1',
            limit,
        )
    else:
        rows = await pool.fetch(
            f"SELECT {MO_COLS} FROM mo_inbox WHERE account_id IS NULL AND received_at <= $1 "
            'AND (received_at < $1 OR id COLLATE "C" < $2) '
            'ORDER BY received_at DESC, id COLLATE "C" DESC LIMIT $3',
            before[0],
            before[1],
            limit,
        )
    return [mo_message(r) for r in rows]
