"""The pipeline's hot writes for PostgreSQL: claims, submit results, receipts, roll-ups, recovery.

Same rules as `sqlite_pipeline.py` (the store contract tests hold both to them), set-based: one
statement per kind of change with `unnest` arrays, never one per message. What differs is
concurrency, because several instances write the same rows at once:

- Claims lock rows with `FOR UPDATE SKIP LOCKED`: two instances never claim the same message, and
  neither waits for the other.
- A transaction that changes a message's parts first locks the message rows (sorted by id), then
  changes parts, then recomputes the roll-up. So a receipt applied on one instance and the submit
  result of the same message recorded on another serialise per message, and the later one rolls
  up from the parts as both left them (no lost update of counts or state).
- A receipt can race its own submit result (receipt on instance B while A records the
  submit_sm_resp): A locks the (SMSC, message id) keys it records (transaction-scoped advisory
  locks) before looking for pending receipts; B, for a receipt that matched nothing, locks its key
  and looks again before keeping it pending. So either B sees A's committed id and matches, or A
  sees B's pending receipt and applies it; without this the receipt could wait in
  pending_receipts forever. Receipts that match at once (the usual case) take no lock.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import asyncpg

from bridge.domain import admission as adm
from bridge.domain import lifecycle as lc
from bridge.store import base, postgres_pending_ends, postgres_rules, rollup_rows
from bridge.store.base import (
    CLAIM_SCAN_FACTOR,
    PARK_AGAIN_MS,
    PARK_MS,
    PURGE_CHUNK,
    WEBHOOK_RETENTION_MS,
    LowBalance,
)
from bridge.store.models import (
    KEPT_RECEIPT_SLACK_MS,
    LateAccept,
    ReceiptIn,
    Release,
    SubmitResult,
    WorkMessage,
    WorkSegment,
)
from bridge.store.rules_rows import (
    END_ERROR,
    blocked_ids,
    number_prefixes,
)

# Namespaces (first key) of the two-int advisory locks; the second key is hashtext(name).
# A distinctive constant so the locks cannot collide with another application's.
NS_INSTANCE = 0x5B1D0001  # session lock held by a live instance (postgres_coord.py)
NS_BIND = 0x5B1D0002  # session lock per (SMSC, bind slot) (postgres_coord.py)
NS_MIGRATE = 0x5B1D0003  # session lock while migrating
NS_RECEIPT = 0x5B1D0004  # transaction lock per (SMSC, message id): receipt vs. submit result
NS_MO = 0x5B1D0005  # transaction lock per MO reference: parts arriving on two instances
NS_AUDIT = 0x5B1D0006  # transaction lock around an audit row: ids in commit order
NS_DNC = 0x5B1D0007  # transaction lock: accepts share it, a DNC import's scan excludes them
NS_LANE = 0x5B1D0008  # session lock per server.instance number (postgres_coord.py)

# An instance whose heartbeat is older than this and whose instance lock is free is gone: its
# claims go back to the queue without waiting for their lease. Longer than an instance cut off
# from the database takes to notice and unbind (postgres_coord: poll_s + op_timeout_s, then the
# unbind, ~9 s by default): its lock frees on the server as soon as the server drops its session,
# and at 5 s its claims were resent while it could still be sending them.
DEAD_AFTER_MS = 15_000

_LOCK_KEYS = (
    "SELECT pg_advisory_xact_lock($1::int, hashtext(k)) "
    "FROM (SELECT DISTINCT unnest($2::text[]) AS k ORDER BY 1) s"
)


def receipt_key(smsc: str, msg_id: str) -> str:
    return f"{smsc}\x1f{msg_id}"


async def lock_keys(c: asyncpg.Connection, ns: int, keys: Iterable[str]) -> None:
    """Transaction-scoped advisory locks, taken in sorted order (no deadlock between takers)."""
    keys = list(keys)
    if keys:
        await c.execute(_LOCK_KEYS, ns, keys)


async def lock_messages(c: asyncpg.Connection, ids: Iterable[str]) -> dict[str, tuple[Any, ...]]:
    """Lock message rows in id order; their current queue/roll-up fields by id (with what a
    refund needs: price class, parts submitted, parts)."""
    ids = sorted(set(ids))
    if not ids:
        return {}
    rows = await c.fetch(
        f"SELECT {rollup_rows.ROLLUP_COLS} FROM messages WHERE id = ANY($1::text[]) "
        "ORDER BY id FOR UPDATE",
        ids,
    )
    return {r[0]: tuple(r) for r in rows}


# -- claim -----------------------------------------------------------------------------------------

_ACCOUNTS = """
WITH RECURSIVE a AS (
    (SELECT account_id FROM messages WHERE q_state = 'queued' ORDER BY account_id LIMIT 1)
    UNION ALL
    SELECT (SELECT m.account_id FROM messages m
            WHERE m.q_state = 'queued' AND m.account_id > a.account_id
            ORDER BY m.account_id LIMIT 1)
    FROM a WHERE a.account_id IS NOT NULL
)
SELECT account_id FROM a WHERE account_id IS NOT NULL
    AND account_id NOT IN (
        SELECT e.account_id FROM pending_ends e JOIN accounts ac ON ac.id = e.account_id
        WHERE e.scope = 'account' AND ac.status <> 'active')
"""

_PICK_PER_ACCOUNT = """
SELECT a.ord, p.id, p.recipient, p.q_not_before, p.q_park
FROM unnest($1::text[]) WITH ORDINALITY AS a(acc, ord)
CROSS JOIN LATERAL (
    SELECT id, recipient, q_not_before, q_park FROM messages
    WHERE q_state = 'queued' AND account_id = a.acc AND q_not_before <= $2
    ORDER BY q_not_before, id LIMIT $3
    FOR UPDATE SKIP LOCKED
) p
LIMIT $4
"""

# Further rounds for accounts whose rows so far were parked: each continues after its last row.
# (`q_not_before >= a.nb` too: with it the planner walks the account's own index range, not the
# whole queue's in age order filtering by account.)
_PICK_PER_ACCOUNT_AFTER = """
SELECT a.ord, p.id, p.recipient, p.q_not_before, p.q_park
FROM unnest($1::text[], $2::int[], $3::bigint[], $4::text[], $5::int[])
    AS a(acc, take, nb, after_id, ord)
CROSS JOIN LATERAL (
    SELECT id, recipient, q_not_before, q_park FROM messages
    WHERE q_state = 'queued' AND account_id = a.acc AND q_not_before <= $6
        AND q_not_before >= a.nb AND (q_not_before, id) > (a.nb, a.after_id)
    ORDER BY q_not_before, id LIMIT a.take
    FOR UPDATE SKIP LOCKED
) p
"""

_PICK_OLDEST = """
SELECT id, recipient, q_not_before, q_park FROM messages
WHERE q_state = 'queued' AND q_not_before <= $1 AND NOT (id = ANY($2::text[]))
ORDER BY q_not_before, id LIMIT $3
FOR UPDATE SKIP LOCKED
"""

# Parked under a route with an SMSC up here, due or not (the partial index of parked rows). The
# EXISTS is a one-time filter: with nothing parked (the usual case) one index probe, not one per
# route key.
_PICK_PARKED = """
SELECT id, recipient, q_not_before, q_park FROM messages
WHERE EXISTS (SELECT 1 FROM messages WHERE q_park IS NOT NULL AND q_state = 'queued')
    AND q_park = ANY($1::text[]) AND q_park IS NOT NULL AND q_state = 'queued'
    AND NOT (id = ANY($2::text[]))
LIMIT $3
FOR UPDATE SKIP LOCKED
"""

_PARK = """
UPDATE messages m SET q_not_before = u.nb, q_park = u.k
FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(id, k, nb) WHERE m.id = u.id
"""


# Rows another transaction holds (another instance un-parking the same key, a claim, an expiry)
# are skipped, not waited for: no deadlock between instances un-parking at once, and what another
# holds is un-parked by it, claimed, or left for the next un-park. One chunk per transaction.
UNPARK = """
UPDATE messages SET q_not_before = $1, q_park = NULL
WHERE id IN (
    SELECT id FROM messages
    WHERE q_park = ANY($2::text[]) AND q_park IS NOT NULL AND q_state = 'queued'
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
"""

_CLAIM = """
WITH c AS (
    UPDATE messages SET q_state = 'claimed', q_claimed_by = $2, q_lease_until = $3,
        q_attempts = q_attempts + 1, q_route = NULL, q_park = NULL
    WHERE id = ANY($1::text[])
    RETURNING id, account_id, recipient, sender, data_coding, expires_at, q_attempts,
        CASE WHEN segments_sent > 0 THEN smsc END AS first_smsc, q_unanswered, wire
)
SELECT c.id, c.account_id, c.recipient, c.sender, c.data_coding, c.expires_at, c.q_attempts,
    s.seq, s.total, s.esm_class, s.short_message, s.tlvs, s.attempts, c.first_smsc,
    c.q_unanswered, c.wire
FROM c LEFT JOIN segments s ON s.message_id = c.id AND s.state = 'queued'
ORDER BY c.id, s.seq
"""


async def queued_accounts(c: asyncpg.Connection) -> list[str]:
    """Accounts with queued work: a loose index scan, one probe per account, not per row.

    Not a disabled account whose waiting messages an end is still ending (postgres_pending_ends):
    its fair share of each claim was its covered messages, which the claim's guard ended
    instead of sending (~50 ms a claim of 100), and the other accounts' half of the claim came
    out of it: at a million waiting, ~390 of their messages claimed a second against ~5,000
    before. The oldest-first rest of a claim still meets them, and ends them."""
    return [r[0] for r in await c.fetch(_ACCOUNTS)]


class _Account:
    """One account's share of a claim while its rows get parked: what it still wants, where
    its scan stands (after which q_not_before, id), how many rows it may still examine."""

    __slots__ = ("acc", "after_id", "after_nb", "ask", "cap", "ord", "want")

    def __init__(self, acc: str, ord_: int, want: int, cap: int, last: Sequence[Any]) -> None:
        self.acc, self.ord, self.want, self.cap = acc, ord_, want, cap
        self.ask = 0
        self.after_id: str = last[0]
        self.after_nb: int = last[2]


async def claim(
    c: asyncpg.Connection,
    order: list[str],
    instance: str,
    limit: int,
    now: int,
    lease_until: int,
    park: Callable[[str], str | None] | None = None,
    routable: Sequence[str] = (),
    *,
    skip: Collection[str] = (),
    intermediate: bool = False,
    reports: list[int] | None = None,
) -> list[WorkMessage]:
    """Claim up to `limit` messages: a fair share per account in `order` (already rotated by the
    caller), the rest from the oldest work of anyone. Rows another instance is claiming right now
    are skipped, not waited for, and so are the ids in `skip`. The reports queued by the roll-up
    of claimed messages with nothing to send are appended to `reports`.

    With `park`, a candidate it gives a key for is parked (see Store.claim) and the scan goes on:
    per account up to CLAIM_SCAN_FACTOR times its share, in all CLAIM_SCAN_FACTOR x `limit` rows.
    Without anything to park, the queries are the two they were before parking existed.

    With `routable` (keys of the routes with an SMSC up on this instance), messages parked under
    them are taken too, due or not: up to half the claim first, then the room the due ones left.
    Another instance without such an SMSC parks whatever is due for them again at once."""
    budget = CLAIM_SCAN_FACTOR * limit
    ids: list[str] = []
    seen: set[str] = set(skip)
    recipients: dict[str, str] = {}

    async def take(rows: Sequence[Any], want: int) -> tuple[int, bool]:
        """Pick up to `want` routable ids of `rows` (id, recipient, q_not_before, q_park), park
        the unroutable; (ids picked, anything parked)."""
        got = 0
        parked: list[tuple[str, str, int]] = []
        for mid, recipient, _nb, was in rows:
            if mid in seen:
                continue
            key = park(recipient) if park is not None else None
            if key is not None:
                # Back from PARK_MS with its route still down: parked for longer (a million
                # parked rows each rewritten every PARK_MS was the claims' work otherwise).
                parked.append((mid, key, now + (PARK_AGAIN_MS if key == was else PARK_MS)))
            elif got < want:
                ids.append(mid)
                recipients[mid] = recipient
                got += 1
            else:
                continue
            seen.add(mid)
        if parked:  # out of this claim's later queries too (their q_not_before passed now)
            await c.execute(_PARK, *map(list, zip(*parked, strict=True)))
        return got, bool(parked)

    async def take_parked(want: int) -> None:
        if want > 0:
            await take(await c.fetch(_PICK_PARKED, routable, ids, want), want)

    if routable:
        await take_parked(limit // 2)
    room = limit - len(ids)
    per = max(1, room // len(order))
    rows = await c.fetch(_PICK_PER_ACCOUNT, order, now, per, room)
    budget -= len(rows)
    by_ord: dict[int, list[Any]] = {}
    for r in rows:
        by_ord.setdefault(r[0], []).append(r[1:])
    short: list[_Account] = []
    for ord_, acc_rows in by_ord.items():
        got, parked = await take(acc_rows, min(per, limit - len(ids)))
        if parked and len(acc_rows) == per:  # more rows may wait behind the parked ones
            cap = CLAIM_SCAN_FACTOR * per - per
            short.append(_Account(order[ord_ - 1], ord_, per - got, cap, acc_rows[-1]))
    ask_next = {a.ord: per * 4 for a in short}
    while short and budget > 0:
        asks: list[_Account] = []
        room = budget
        for a in short:
            a.ask = min(ask_next[a.ord], a.cap, room)
            if a.ask > 0:
                room -= a.ask
                asks.append(a)
        if not asks:
            break
        rows = await c.fetch(
            _PICK_PER_ACCOUNT_AFTER,
            [a.acc for a in asks],
            [a.ask for a in asks],
            [a.after_nb for a in asks],
            [a.after_id for a in asks],
            [a.ord for a in asks],
            now,
        )
        budget -= len(rows)
        by_ord = {}
        for r in rows:
            by_ord.setdefault(r[0], []).append(r[1:])
        short = []
        for a in asks:
            acc_rows = by_ord.get(a.ord, [])
            got, _parked = await take(acc_rows, min(a.want, limit - len(ids)))
            a.want -= got
            a.cap -= len(acc_rows)
            if a.want > 0 and a.cap > 0 and len(acc_rows) == a.ask:
                a.after_id, a.after_nb = acc_rows[-1][0], acc_rows[-1][2]
                ask_next[a.ord] = a.ask * 4
                short.append(a)
    ask = limit - len(ids)
    while len(ids) < limit and budget > 0:
        n = min(ask, budget)
        rows = await c.fetch(_PICK_OLDEST, now, ids, n)
        budget -= len(rows)
        await take(rows, limit - len(ids))
        if len(rows) < n:
            break  # no more candidates
        ask *= 4
    if routable:
        await take_parked(limit - len(ids))
    if ids:
        # One probe for both guards: an idle system (no list, no end under way) pays one trip.
        listed, ending = await c.fetchrow(_GUARDS_PROBE)
        if ending:  # an account-wide end under way (postgres_pending_ends)
            ids = await postgres_pending_ends.guard(c, ids)
        ids = await dnc_guard(c, ids, recipients, now, listed)
    if not ids:
        return []
    rows = await c.fetch(_CLAIM, ids, instance, lease_until)
    msgs: dict[str, tuple[Any, ...]] = {}
    segs: dict[str, list[WorkSegment]] = {}
    for r in rows:
        mid = r[0]
        if mid not in msgs:
            msgs[mid] = (*r[:7], r[13], r[14], r[15])
            segs[mid] = []
        if r[7] is not None:
            segs[mid].append(
                # By position, as SQLite's claim (sqlite._work) builds them.
                WorkSegment(r[7], r[8], r[9], bytes(r[10]), bytes(r[11]), r[12])
            )
    if idle := [mid for mid, parts in segs.items() if not parts]:
        done = await _roll_up_idle(c, idle, now, intermediate, reports)
        ids = [mid for mid in ids if mid not in done]
    return [
        WorkMessage(m[0], m[1], m[2], m[3], m[4], m[5], m[6], tuple(segs[mid]), m[7], m[8], m[9])
        for mid in ids
        if (m := msgs.get(mid)) is not None
    ]


async def _roll_up_idle(
    c: asyncpg.Connection,
    idle: list[str],
    now: int,
    intermediate: bool,
    reports: list[int] | None = None,
) -> set[str]:
    """Claimed messages with no part left to send are rolled up in the claim, not handed out
    (see the SQLite engine's `_roll_up_idle`); returns those it took out of the queue, and
    appends the reports it queued to `reports`."""
    queued = await rollup_messages(c, dict.fromkeys(idle, True), now, intermediate=intermediate)
    if reports is not None:
        reports.append(queued)
    rows = await c.fetch(
        "SELECT id FROM messages WHERE id = ANY($1::text[]) AND q_state = 'done'", idle
    )
    return {r[0] for r in rows}


async def give_back(
    c: asyncpg.Connection, instance: str, ids: Sequence[str], now: int
) -> tuple[int, list[str]]:
    """Put `instance`'s claims of `ids` back in the queue as if never made (the attempt the claim
    counted uncounted, due by `now`): claims whose COMMIT got no answer, so nothing was sent.
    Rows no longer claimed by it (the commit was lost, or they moved on) are left alone.

    (given back, ids held by another transaction): a held row may be that claim's, its COMMIT
    still under way, seen queued by everyone else until it lands; its id is to be tried again,
    not forgotten (and not waited for)."""
    mine = [
        r[0]
        for r in await c.fetch(
            "SELECT id FROM messages WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE SKIP LOCKED",
            list(ids),
        )
    ]
    held = await c.fetch(
        "SELECT id FROM messages WHERE id = ANY($1::text[]) AND NOT (id = ANY($2::text[]))",
        list(ids),
        mine,
    )
    status = await c.execute(
        "UPDATE messages SET q_state = 'queued', q_claimed_by = NULL, q_lease_until = NULL, "
        "q_attempts = q_attempts - 1, q_not_before = LEAST(q_not_before, $3) "
        "WHERE id = ANY($1::text[]) AND q_state = 'claimed' AND q_claimed_by = $2",
        mine,
        instance,
        now,
    )
    return int(status.split()[-1]), [r[0] for r in held]


_GUARDS_PROBE = f"SELECT EXISTS (SELECT 1 FROM dnc_entries), {postgres_pending_ends.ENDING}"


async def dnc_guard(
    c: asyncpg.Connection,
    ids: list[str],
    recipients: dict[str, str],
    now: int,
    listed: bool | None = None,
) -> list[str]:
    """In a claim's transaction, while any list holds an entry: the never-tried messages of
    `ids` a do-not-contact list blocks end unsent (RECIPIENT_BLOCKED) instead of being claimed,
    the tried ones are held (claimed, they expire instead of going out), as SQLite's claim does
    (sqlite_dnc.guard); returns the ids still to claim. An import ends what its list blocks in
    a transaction after the one that writes the list (held through the scan, the list's lock
    stopped every account's sends ~3 µs per waiting message): a claim between the two, on any
    instance, took blocked messages, and the second only held them as in flight (sent). One
    probe a claim without a list (`listed`: the claim's probe answered it already)."""
    if listed is None and ids:
        listed = await c.fetchval("SELECT EXISTS (SELECT 1 FROM dnc_entries)")
    if not ids or not listed:
        return ids
    prefixes = sorted({p for i in ids for p in number_prefixes(recipients[i])})
    matched = {
        r[0]
        for r in await c.fetch(
            "SELECT prefix FROM dnc_entries WHERE prefix = ANY($1::text[])", prefixes
        )
    }
    blocked = blocked_ids([(i, recipients[i]) for i in ids], matched) if matched else []
    if not blocked:
        return ids
    ended = set(
        await postgres_rules.end_queued_ids(
            c, "id = ANY($1::text[])", (blocked,), "RECIPIENT_BLOCKED", now
        )
    )
    return [i for i in ids if i not in ended]


# -- roll-up ---------------------------------------------------------------------------------------

# What a write of part rows returns for Known: `segments s` updated.
PART_RETURNING = "RETURNING s.message_id, s.seq, s.state, s.error_code, s.total"


class Known:
    """The part rows this transaction wrote, as each write returned them (PART_RETURNING), for
    the roll-up: a message whose every part row is here is not read again (session 52; the
    SQLite engine's `known`, README Architecture notes 23 and 26).

    Why it is what the roll-up would read: a row an UPDATE returned stays locked by this
    transaction to its commit (no other can change or delete it meanwhile) and the transaction
    sees its own writes, so once every part of a message (seq 1 to its `total`) was returned,
    the roll-up's read of them was the same rows once more: a one-part message's submit result
    and its receipt each read and wrote its one row, then the roll-up read it a third time. A
    message with a part written by a statement that does not return it here (an end and the
    parts after it, a part taking another's receipt) is `forget`-ed and read as before, even
    if written again later in the transaction."""

    __slots__ = ("_parts", "_stale", "_total")

    def __init__(self) -> None:
        self._parts: dict[str, dict[int, tuple[str, str | None]]] = {}
        self._total: dict[str, int] = {}
        self._stale: set[str] = set()

    def add(self, rows: Iterable[Sequence[Any]]) -> None:
        """Rows of PART_RETURNING, as now written (a later write of a part replaces its
        earlier one)."""
        for mid, seq, state, error, total in rows:
            if mid not in self._stale:
                self._parts.setdefault(mid, {})[seq] = (state, error)
                self._total[mid] = total

    def forget(self, mids: Iterable[str]) -> None:
        for mid in mids:
            self._stale.add(mid)
            self._parts.pop(mid, None)

    def whole(self) -> dict[str, list[tuple[str, str | None]]]:
        """message id -> every part's (state, error code) in seq order, for the messages whose
        every part row was written here."""
        out = {}
        total = self._total
        for mid, got in self._parts.items():
            n = total[mid]
            if len(got) != n:
                continue
            if n == 1:  # a one-part message (session 59: no generator and list built for it)
                one = got.get(1)
                if one is not None:
                    out[mid] = [one]
            elif all(q in got for q in range(1, n + 1)):
                out[mid] = [got[q] for q in range(1, n + 1)]
        return out


async def rollup_messages(
    c: asyncpg.Connection,
    touched: dict[str, bool],
    now: int,
    locked: dict[str, tuple[Any, ...]] | None = None,
    *,
    intermediate: bool = False,
    later: tuple[list[Any], list[str]] | None = None,
    air: dict[str, tuple[str, int]] | None = None,
    instance: str | None = None,
    known: Known | None = None,
) -> int:
    """Recompute the message rows of `touched` (id -> release the claim when nothing is left to
    send) from their parts, and queue a status webhook for each that just became final (and,
    with `intermediate`, a 'sent' report for each that just became sent); returns how many
    status webhooks were queued. Those that ended unsent and never reached anyone give back
    their daily count (give_back_places). The rows
    must be locked by this transaction (`locked`, else they are locked here) so the parts read
    below include every other transaction's committed change.

    `air` (id -> the SMSC, the PDUs it accepted now) are the submit results' counts of the
    messages (record_submits): written by the same UPDATE as their roll-up, so a submit makes
    one new version of its message's row, not two (each non-HOT version is an entry in every
    index of the table); `instance`: whose results they are (the claim's route is written only
    on its own claims, rollup_rows.roll).

    `known` (Known.whole) are messages whose every part row this transaction wrote, as the
    writes returned them: not read again (see Known)."""
    air = air or {}
    if not touched and not air:
        return 0
    ids = sorted(set(touched) | set(air))
    if locked is None or not set(ids) <= set(locked):
        locked = await lock_messages(c, ids)
    parts: dict[str, list[tuple[str, str | None]]] = {mid: [] for mid in ids}
    many: set[str] = set()  # messages with a second part row: not one payload PDU
    whole = known.whole() if known is not None else {}
    unknown = [mid for mid in ids if mid not in whole]
    for mid, seq, state, error in (
        await c.fetch(
            "SELECT message_id, seq, state, error_code FROM segments "
            "WHERE message_id = ANY($1::text[]) ORDER BY message_id, seq",
            unknown,
        )
        if unknown
        else ()
    ):
        parts[mid].append((state, error))
        if seq == 2:
            many.add(mid)
    for mid, got in whole.items():
        if mid in parts:
            parts[mid] = got
            if len(got) > 1:
                many.add(mid)
    rolled, f = rollup_rows.roll(
        ids, locked, parts, many, touched, air, now, intermediate=intermediate, instance=instance
    )
    if rolled:
        # Each row's twelve values in one tuple, the columns by one transposition in C
        # (session 60: twelve appends a row through a zip were ~2.5 k instructions a row).
        await c.execute(
            _ROLLUP,
            *map(
                list,
                zip(
                    *[
                        (mid, True, *u[:7], smsc, nsent, route)
                        if u is not None
                        else (mid, False, *_KEPT, smsc, nsent, route)
                        for mid, smsc, nsent, route, u in rolled  # rollup_rows.Rolled's fields
                    ],
                    strict=True,
                ),
            ),
        )
    if later is not None:
        later[0].extend(f.billed)
        later[1].extend(f.unsent)
    else:
        if f.billed:
            await postgres_rules.refund_finals(c, f.billed, now)
        if f.unsent:
            await give_back_places(c, f.unsent)
    queued = await enqueue_status_webhooks(c, f.finals, now) if f.finals else 0
    if f.sent:
        queued += await enqueue_sent_webhooks(c, [mid for _acc, mid in f.sent], now)
    return queued


# A row the roll-up keeps (its update None): u.state to u.release of _ROLLUP, each kept.
_KEPT = (None, None, None, None, None, None, False)

# The roll-up's one UPDATE: a NULL keeps the column (`rolled` false: no roll-up change, only the
# submit results' counts; a NULL SMSC: no submit result). The error code may become NULL.
_ROLLUP = (
    "UPDATE messages m SET state = COALESCE(u.state, m.state), "
    "segments_delivered = COALESCE(u.delivered, m.segments_delivered), "
    "segments_failed = COALESCE(u.failed, m.segments_failed), "
    "error_code = CASE WHEN u.rolled THEN u.error ELSE m.error_code END, "
    "sent_at = COALESCE(u.sent_at, m.sent_at), done_at = COALESCE(u.done_at, m.done_at), "
    "q_state = CASE WHEN u.release THEN 'done' ELSE m.q_state END, "
    "q_claimed_by = CASE WHEN u.release THEN NULL ELSE m.q_claimed_by END, "
    "q_lease_until = CASE WHEN u.release THEN NULL ELSE m.q_lease_until END, "
    "smsc = COALESCE(u.smsc, m.smsc), segments_sent = COALESCE(u.nsent, m.segments_sent), "
    "q_route = COALESCE(u.route, m.q_route) "
    "FROM unnest($1::text[], $2::bool[], $3::text[], $4::int[], $5::int[], $6::text[], "
    "$7::bigint[], $8::bigint[], $9::bool[], $10::text[], $11::int[], $12::text[]) "
    "AS u(id, rolled, state, delivered, failed, error, sent_at, done_at, release, smsc, nsent, "
    "route) WHERE m.id = u.id"
)


def quota_tz(c: asyncpg.Connection) -> str:
    """The zone of the daily quota's days of the store whose pool `c` comes from
    (postgres_tx.StoreConnection): asked of the connection, not passed down by every caller
    that may end messages (one that forgot it gave nothing back). A connection from elsewhere
    fails here, not silently."""
    zone = getattr(c, "quota_zone", None)
    if zone is None:
        raise RuntimeError("a roll-up on a connection that is not from a store's pool")
    return str(zone())


async def give_back_places(c: asyncpg.Connection, ids: Sequence[str]) -> None:
    """The SQLite engine's give_back_places: the daily count (in the store's quota_tz days) of
    the messages of `ids` that never reached anyone (lifecycle.never_reached), in the
    transaction that ends them; the
    frequency history's read skips them (lifecycle.STILL_COUNTS_SQL). Called after the
    refunds: an accept's write statement takes pockets, then daily_counts (PostgreSQL runs its
    data-modifying CTEs last to first), and so does an ender; the daily_counts rows are locked
    in (account, day) order, so two enders wait rather than deadlock."""
    rows = await c.fetch(
        "SELECT account_id, accepted_at, state, segments_sent, q_unanswered FROM messages "
        "WHERE id = ANY($1::text[])",
        list(ids),
    )
    ended = [(r[0], r[1]) for r in rows if lc.never_reached(r[2], r[3], r[4])]
    back = sorted(adm.quota_returns(ended, quota_tz(c)).items())
    if not back:
        return
    args = ([a for (a, _d), _n in back], [d for (_a, d), _n in back], [n for _k, n in back])
    # Locked in (account, day) order first: an UPDATE ... FROM takes its rows in no set order,
    # and two enders of overlapping accounts (two instances' sweeps) could wait on each other.
    await c.execute(
        "SELECT 1 FROM daily_counts d JOIN unnest($1::text[], $2::text[]) AS u(acc, day) "
        "ON d.account_id = u.acc AND d.day = u.day ORDER BY d.account_id, d.day FOR UPDATE OF d",
        args[0],
        args[1],
    )
    await c.execute(
        "UPDATE daily_counts d SET messages = GREATEST(0, d.messages - u.n) "
        "FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(acc, day, n) "
        "WHERE d.account_id = u.acc AND d.day = u.day",
        *args,
    )


async def enqueue_sent_webhooks(c: asyncpg.Connection, sent: Sequence[str], now: int) -> int:
    """webhooks.send_intermediate: a report when every part was accepted by the SMSC. Only the
    message id is stored; the sender renders the report when it pushes it (see the SQLite
    engine's)."""
    rows = await c.fetch(
        "SELECT m.id, m.account_id FROM unnest($1::text[]) WITH ORDINALITY AS f(id, ord) "
        "JOIN messages m ON m.id = f.id JOIN accounts a ON a.id = m.account_id "
        "WHERE a.status_callback_url <> '' ORDER BY f.ord",
        list(sent),
    )
    if not rows:
        return 0
    await c.execute(
        "INSERT INTO webhook_outbox (webhook_id, account_id, kind, ref_id, payload, "
        "next_attempt_at, created_at) "
        "SELECT 'st_' || f.mid || '_sent', f.acc, 'event', f.mid, f.mid, $3, $3 "
        "FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS f(mid, acc, ord) "
        "ORDER BY f.ord ON CONFLICT (webhook_id) DO NOTHING",
        [r[0] for r in rows],
        [r[1] for r in rows],
        now,
    )
    return len(rows)


async def enqueue_status_webhooks(
    c: asyncpg.Connection, finals: Sequence[tuple[str, str]], now: int
) -> int:
    """Outbox rows for final statuses, for accounts that configured a status callback URL; how
    many."""
    status = await c.execute(
        "INSERT INTO webhook_outbox (webhook_id, account_id, kind, ref_id, payload, "
        "next_attempt_at, created_at) "
        "SELECT 'st_' || f.mid, f.acc, 'status', f.mid, NULL, $3, $3 "
        "FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS f(acc, mid, ord) "
        "JOIN accounts a ON a.id = f.acc "
        "WHERE a.status_callback_url IS NOT NULL AND a.status_callback_url <> '' "
        "ORDER BY f.ord ON CONFLICT (webhook_id) DO NOTHING",
        [a for a, _m in finals],
        [m for _a, m in finals],
        now,
    )
    return int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <rows>"


# -- submit results --------------------------------------------------------------------------------


def _not_theirs(n: int) -> str:
    """SQL: the message of part `s` is not held by another instance than parameter $n, the
    instance recording the part's end (NULL: anyone's)."""
    return (
        "NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = s.message_id "
        f"AND m.q_state = 'claimed' AND ${n}::text IS NOT NULL "
        f"AND m.q_claimed_by IS DISTINCT FROM ${n}::text)"
    )


# The parts after those a permanent error ended (message id, seq, SMSC of each: $1-$3), and the
# message row's SMSC, in one statement.
_FAILED_AFTER = """
WITH u AS (SELECT * FROM unnest($1::text[], $2::int[], $3::text[]) AS u(mid, seq, smsc)),
later AS (
    UPDATE segments s SET state = 'failed', error_code = 'PREVIOUS_PART_FAILED', done_at = $4
    FROM u WHERE s.message_id = u.mid AND s.seq > u.seq AND s.state = 'queued'
)
UPDATE messages m SET smsc = u.smsc FROM u WHERE m.id = u.mid
"""


# The parts after one whose fate is unknown are not sent: nothing is left queued. ($3, the
# SMSCs, unused: every `after` statement takes the same parameters.)
_UNKNOWN_AFTER = f"""
UPDATE segments s SET state = '{lc.SEG_TIMEOUT}', error_code = 'PREVIOUS_PART_UNKNOWN', done_at = $4
FROM unnest($1::text[], $2::int[], $3::text[]) AS u(mid, seq, smsc)
WHERE s.message_id = u.mid AND s.seq > u.seq AND s.state = 'queued'
"""


class _End(NamedTuple):
    """How a submit result that ends its part is recorded."""

    state: str  # the part's
    sets: str  # the part's other columns, from u(mid, seq, smsc, err) and the part `s`
    error: str | None  # the error code when the result has none (None: the result's)
    # The statement ending the parts after it ($1-$3: the ended parts' message ids, seqs and
    # SMSCs; $4: now), or None: an expiry ends its own part only (the dispatcher expires each).
    after: str | None


_ENDS = {
    "failed": _End(
        lc.SEG_FAILED,
        "smsc = u.smsc, error_code = u.err, attempts = s.attempts + 1",
        None,
        _FAILED_AFTER,  # later parts can never be shown as one message now: not sent
    ),
    "expired": _End(lc.SEG_EXPIRED_UNSENT, f"error_code = {END_ERROR.format(seg='s')}", None, None),
    "unknown": _End(
        lc.SEG_TIMEOUT, "smsc = u.smsc, error_code = u.err", "SUBMIT_UNKNOWN", _UNKNOWN_AFTER
    ),
}


def _end_rounds(ends: list[SubmitResult]) -> list[list[SubmitResult]]:
    """The ends of a batch in rounds, each recorded by one statement of each kind: a message's
    ends in part order, one a round (as the SQLite engine records them one after another),
    so the first end of a part still queued stands and ends the parts after it, and a later
    part's end in the batch (one the dispatcher never makes) finds its part ended. By kind in
    one round, a refusal of part 2 stood beside part 1's unknown fate and the engines
    disagreed. A message's expiries alone (each part's, the dispatcher's) are one round: each
    ends its own part only, so their order does not matter."""
    per: dict[str, list[SubmitResult]] = {}
    for r in ends:
        per.setdefault(r.message_id, []).append(r)
    rounds: list[list[SubmitResult]] = [[]]
    for group in per.values():
        seqs = {r.seq for r in group}
        if len(seqs) == len(group) and all(r.outcome == "expired" for r in group):
            rounds[0].extend(group)
            continue
        for i, r in enumerate(sorted(group, key=lambda r: r.seq)):
            if i == len(rounds):
                rounds.append([])
            rounds[i].append(r)
    return rounds


async def _record_ends(
    c: asyncpg.Connection,
    end: _End,
    results: list[SubmitResult],
    now: int,
    instance: str | None,
    touched: dict[str, bool],
) -> None:
    """Record `results` (ends of one kind, at most one a part) as `end` says, while no other
    instance holds their message and their part is still queued, and end the parts after them."""
    rows = await c.fetch(
        f"UPDATE segments s SET state = $5, {end.sets}, done_at = $6 "
        "FROM unnest($1::text[], $2::int[], $3::text[], $4::text[]) AS u(mid, seq, smsc, err) "
        "WHERE s.message_id = u.mid AND s.seq = u.seq AND s.state = 'queued' "
        f"AND {_not_theirs(7)} "
        "RETURNING s.message_id, s.seq, s.smsc",
        [r.message_id for r in results],
        [r.seq for r in results],
        [r.smsc for r in results],
        [r.error_code or end.error for r in results],
        end.state,
        now,
        instance,
    )
    if rows and end.after is not None:
        await c.execute(end.after, *map(list, zip(*rows, strict=True)), now)
    touched.update(dict.fromkeys((r[0] for r in rows), True))


async def record_submits(
    c: asyncpg.Connection,
    results: list[SubmitResult],
    releases: list[Release],
    now: int,
    *,
    intermediate: bool = False,
    instance: str | None = None,
    one_per_message: frozenset[str] = frozenset(),
    inferred: dict[str, int] | None = None,
) -> int:
    """Record submit results; `one_per_message` names the SMSCs whose one receipt stands for a
    whole message (smscs[].receipts). `inferred` (SMSC -> parts) counts the parts settled by
    another part's receipt (the smpp_bridge_receipts_inferred metric)."""
    touched: dict[str, bool] = {}
    air: dict[str, tuple[str, int]] = {}
    known = Known()  # the parts written below, for the roll-up
    sent = [r for r in results if r.outcome == "sent"]
    await lock_keys(
        c,
        NS_RECEIPT,
        (receipt_key(r.smsc, r.smsc_msg_id) for r in sent if r.smsc_msg_id is not None),
    )
    locked = await lock_messages(
        c, [r.message_id for r in results] + [rel.message_id for rel in releases]
    )
    if sent:
        # Only parts still queued count: a repeated result is settled once (the first of a
        # part's results in the batch; the messages are locked, so the UPDATE's condition is
        # what a read of the queued parts before it found, one round trip less).
        first: dict[tuple[str, int], SubmitResult] = {}
        for r in sent:
            first.setdefault((r.message_id, r.seq), r)
        each = list(first.values())
        rows = await c.fetch(
            "UPDATE segments s SET state = 'sent', smsc = u.smsc, smsc_msg_id = u.msg_id, "
            "smsc_msg_id_raw = u.raw, submitted_at = u.at, attempts = s.attempts + 1 "
            "FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[], "
            "$6::bigint[]) AS u(mid, seq, smsc, msg_id, raw, at) "
            f"WHERE s.message_id = u.mid AND s.seq = u.seq AND s.state = 'queued' {PART_RETURNING}",
            [r.message_id for r in each],
            [r.seq for r in each],
            [r.smsc for r in each],
            [r.smsc_msg_id for r in each],
            [r.smsc_msg_id_raw for r in each],
            [r.at or now for r in each],
        )
        known.add(rows)
        written = {(row[0], row[1]) for row in rows}
        fresh = [r for r in each if (r.message_id, r.seq) in written]
        if fresh:
            # Written by the roll-up's UPDATE, after the releases (a released message's route
            # was its claim's, and goes with it).
            for r in fresh:
                _smsc, n = air.get(r.message_id, (r.smsc, 0))
                air[r.message_id] = (r.smsc, n + 1)
                touched[r.message_id] = True
            await _apply_pending(c, fresh, touched, known, one_per_message, inferred)
            # Not a first part: parts go out in order, so none after it can have a receipt yet
            # (and a one-part message has nothing to infer): no read for most submits.
            later = [r for r in fresh if r.smsc in one_per_message and r.seq > 1]
            known.forget(r.message_id for r in later)  # their other parts may be settled
            await _infer_on_accept(c, later, now, inferred)
    # A part's end is recorded only while no other instance holds its message (see
    # Store.record_submits), and ends the parts after it only when its own part was still queued
    # (its UPDATE returned it): a late or repeated end must not end parts sent since.
    ends = [r for r in results if r.outcome in _ENDS]
    known.forget(r.message_id for r in ends)  # conditional, and ending the parts after them
    for batch in _end_rounds(ends) if len(ends) > 1 else [ends]:
        for outcome, end in _ENDS.items():
            group = [r for r in batch if r.outcome == outcome]
            if group:
                await _record_ends(c, end, group, now, instance, touched)
    if releases:
        # A released message stays in the roll-up (see the SQLite engine's).
        await c.executemany(
            "UPDATE messages SET q_state = 'queued', q_claimed_by = NULL, q_lease_until = NULL, "
            "q_route = NULL, q_not_before = $1, q_attempts = q_attempts - $2, "
            "q_unanswered = q_unanswered + $5 "
            "WHERE id = $3 AND q_state = 'claimed' AND ($4::text IS NULL OR q_claimed_by = $4)",
            [
                (
                    rel.not_before,
                    0 if rel.count_attempt else 1,
                    rel.message_id,
                    instance,
                    int(rel.unanswered),
                )
                for rel in releases
            ],
        )
        # The released rows changed under `locked`: re-read them for the roll-up.
        locked = {k: v for k, v in locked.items() if k not in {r.message_id for r in releases}}
    return await rollup_messages(
        c, touched, now, locked, intermediate=intermediate, air=air, instance=instance, known=known
    )


async def record_late_submits(
    c: asyncpg.Connection,
    items: list[LateAccept],
    now: int,
    *,
    intermediate: bool = False,
    one_per_message: frozenset[str] = frozenset(),
    inferred: dict[str, int] | None = None,
) -> int:
    """Parts the SMSC accepted after their TIMEOUT, recorded as sent (by `record_submits`) when
    the part is still queued and its message is released and not claimed again: a resend in
    flight cannot be called back, so such a message is left alone. Returns how many parts were
    recorded.

    The locks are those `record_submits` takes, in its order (receipt keys, then messages), taken
    before the states are read: a claim on another instance either committed first (the message
    is then 'claimed' here) or waits for this transaction."""
    if not items:
        return 0
    await lock_keys(c, NS_RECEIPT, (receipt_key(i.smsc, i.smsc_msg_id) for i in items))
    locked = await lock_messages(c, [i.message_id for i in items])
    released = sorted(mid for mid, row in locked.items() if row[3] == "queued")
    if not released:
        return 0
    waiting = {
        (r[0], r[1])
        for r in await c.fetch(
            "SELECT message_id, seq FROM segments WHERE message_id = ANY($1::text[]) "
            "AND state = 'queued'",
            released,
        )
    }
    results = []
    for i in items:
        if (i.message_id, i.seq) in waiting:
            waiting.discard((i.message_id, i.seq))  # each part once
            results.append(i.as_result(now))
    if results:
        await record_submits(
            c,
            results,
            [],
            now,
            intermediate=intermediate,
            one_per_message=one_per_message,
            inferred=inferred,
        )
    return len(results)


async def _apply_pending(
    c: asyncpg.Connection,
    fresh: list[SubmitResult],
    touched: dict[str, bool],
    known: Known,
    one_per_message: frozenset[str] = frozenset(),
    inferred: dict[str, int] | None = None,
) -> None:
    """Receipts that beat their submit_sm_resp to the store are applied now; not one kept from
    before the part left (see SubmitResult.sent_at), which stays kept."""
    keyed = [r for r in fresh if r.smsc_msg_id is not None]
    if not keyed:
        return
    found = await c.fetch(
        "DELETE FROM pending_receipts p "
        "USING unnest($1::text[], $2::text[], $3::bigint[]) AS k(smsc, msg_id, since) "
        "WHERE p.smsc = k.smsc AND p.smsc_msg_id = k.msg_id AND p.received_at >= k.since "
        "RETURNING p.id, p.smsc, p.smsc_msg_id, p.state, p.stat, p.err, p.done_at, "
        "p.received_at, p.raw",
        [r.smsc for r in keyed],
        [r.smsc_msg_id for r in keyed],
        [r.sent_at - KEPT_RECEIPT_SLACK_MS if r.sent_at else 0 for r in keyed],
    )
    if found:
        rows = sorted(found, key=lambda r: r[0])
        await _apply(
            c,
            [ReceiptIn(*tuple(r)[1:]) for r in rows],
            touched,
            known=known,
            one_per_message=one_per_message,
            inferred=inferred,
        )


async def _infer_on_accept(
    c: asyncpg.Connection,
    fresh: list[SubmitResult],
    now: int,
    inferred: dict[str, int] | None = None,
) -> None:
    """Parts of one-per-message SMSCs taken now, whose message's receipt came before them, take
    its outcome (lifecycle.infer_on_accept); their messages are locked by record_submits and
    rolled up by it."""
    if not fresh:
        return
    seqs: dict[str, set[int]] = {}
    via: dict[str, str] = {}
    for r in fresh:
        seqs.setdefault(r.message_id, set()).add(r.seq)
        via[r.message_id] = r.smsc
    parts = await _all_parts(c, list(seqs))
    updates = [
        (mid, seq, state, at, error, source)
        for mid, fresh_seqs in seqs.items()
        for seq, state, at, error, source in lc.infer_on_accept(
            [row[:5] for row in parts.get(mid, [])], fresh_seqs, now
        )
    ]
    if updates:
        await _settle_inferred(c, updates)
        if inferred is not None:
            for u in updates:
                inferred[via[u[0]]] = inferred.get(via[u[0]], 0) + 1


async def _settle_inferred(c: asyncpg.Connection, updates: list[tuple[Any, ...]]) -> None:
    """Parts still 'sent' settled by another part's receipt: (message id, seq, state, at, error,
    the seq whose receipt it was)."""
    await c.execute(
        "UPDATE segments s SET state = u.state, done_at = u.at, error_code = u.error, "
        "receipt_inferred_from = u.source "
        "FROM unnest($1::text[], $2::int[], $3::text[], $4::bigint[], $5::text[], "
        "$6::int[]) AS u(mid, seq, state, at, error, source) "
        "WHERE s.message_id = u.mid AND s.seq = u.seq AND s.state = 'sent'",
        *[list(col) for col in zip(*updates, strict=True)],
    )


async def _all_parts(c: asyncpg.Connection, mids: list[str]) -> dict[str, list[lc.PartRow]]:
    """message id -> every part's (seq, state, error code, SMSC, receipt_inferred_from,
    submitted at, done at): lifecycle.PartRow."""
    out: dict[str, list[lc.PartRow]] = {}
    for mid, *row in await c.fetch(
        "SELECT message_id, seq, state, error_code, smsc, receipt_inferred_from, submitted_at, "
        "done_at FROM segments WHERE message_id = ANY($1::text[])",
        mids,
    ):
        out.setdefault(mid, []).append(tuple(row))
    return out


async def infer_earlier(
    c: asyncpg.Connection,
    mids: Sequence[str],
    smscs: frozenset[str],
    now: int,
    inferred: dict[str, int] | None = None,
) -> int:
    """See the SQLite engine; the messages are locked before their parts are read, as receipts
    lock them, so a receipt applied meanwhile on another instance is seen."""
    locked = await lock_messages(c, sorted(mids))
    touched: dict[str, bool] = {}
    updates = []
    for mid, parts in (await _all_parts(c, sorted(locked))).items():
        for seq, state, at, error, source in lc.infer_earlier(parts, smscs):
            updates.append((mid, seq, state, at, error, source))
            touched[mid] = False
            if inferred is not None:
                via = next(p[3] for p in parts if p[0] == source)
                assert via is not None  # the source part's SMSC: one of `smscs`
                inferred[via] = inferred.get(via, 0) + 1
    if updates:
        await _settle_inferred(c, updates)
    return await rollup_messages(c, touched, now, locked)


# -- receipts --------------------------------------------------------------------------------------


async def apply_receipts(
    c: asyncpg.Connection,
    receipts: list[ReceiptIn],
    now: int,
    one_per_message: frozenset[str] = frozenset(),
    inferred: dict[str, int] | None = None,
    late: dict[str, int] | None = None,
) -> tuple[int, int, int]:
    """(matched, kept pending, status webhooks queued). Unmatched receipts wait in
    pending_receipts for their id. `late` counts, by SMSC, those for parts the receipt timeout
    ended (lifecycle.count_after_timeout)."""
    where = await _match(c, receipts)
    missing = [r for r in receipts if (r.smsc, r.smsc_msg_id) not in where]
    if missing:
        # Their submit result may be committing right now on another instance: wait for it
        # (the key lock, taken before any message lock: the global lock order), then look again.
        await lock_keys(c, NS_RECEIPT, (receipt_key(r.smsc, r.smsc_msg_id) for r in missing))
        where.update(await _match(c, missing))
    touched: dict[str, bool] = {}
    locked: dict[str, tuple[Any, ...]] = {}
    known = Known()
    unmatched = await _apply(
        c, receipts, touched, where, locked, one_per_message, inferred, late, known
    )
    if unmatched:
        await c.execute(
            "INSERT INTO pending_receipts (smsc, smsc_msg_id, state, stat, err, done_at, "
            "received_at, raw) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], "
            "$4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::text[])",
            *_columns(
                unmatched,
                ("smsc", "smsc_msg_id", "state", "stat", "err", "done_at", "received_at", "raw"),
            ),
        )
    reports = await rollup_messages(c, touched, now, locked, known=known)
    return len(receipts) - len(unmatched), len(unmatched), reports


def _columns(items: Sequence[Any], names: Sequence[str]) -> list[list[Any]]:
    return [[getattr(i, n) for i in items] for n in names]


async def _match(
    c: asyncpg.Connection, receipts: Sequence[ReceiptIn]
) -> dict[tuple[str, str], set[str]]:
    """(SMSC, normalised id) -> message ids, for the receipts whose part is known (an SMSC that
    reuses ids, or gives all parts one id, has several)."""
    keys = [(r.smsc, r.smsc_msg_id) for r in receipts]
    found: dict[tuple[str, str], set[str]] = {}
    for n, mid in await c.fetch(_MATCH, *_pairs(keys)):
        found.setdefault(keys[n - 1], set()).add(mid)
    return found


# The parts of receipt keys ((SMSC, id) pairs, $1 and $2), each row naming its key by its
# ordinal in them (session 64): the SMSC and the id the caller holds were sent back and decoded
# again, two texts a row, and a tuple made of them a row. GROUP BY the pair keeps one ordinal
# of a pair given twice (either names it) and the plan of the DISTINCT before (a HashAggregate
# of the pairs; DISTINCT ON sorted them), the rows those of DISTINCT over the pairs.
_MATCH_PARTS = (
    "SELECT k.n, {} FROM segments s "
    "JOIN (SELECT smsc, msg_id, min(n) AS n FROM unnest($1::text[], $2::text[]) "
    "WITH ORDINALITY AS u(smsc, msg_id, n) GROUP BY smsc, msg_id) AS k "
    "ON s.smsc = k.smsc AND s.smsc_msg_id = k.msg_id"
)
_MATCH = _MATCH_PARTS.format("s.message_id")
_MATCHED_PARTS = _MATCH_PARTS.format("s.message_id, s.seq, s.state")


def _pairs(keys: list[tuple[str, str]]) -> list[list[str]]:
    """The SMSCs and the ids of `keys`, $1 and $2 of _MATCH_PARTS (one transposition in C)."""
    return [list(column) for column in zip(*keys, strict=True)] if keys else [[], []]


async def _apply(
    c: asyncpg.Connection,
    receipts: list[ReceiptIn],
    touched: dict[str, bool],
    where: dict[tuple[str, str], set[str]] | None = None,
    locked: dict[str, tuple[Any, ...]] | None = None,
    one_per_message: frozenset[str] = frozenset(),
    inferred: dict[str, int] | None = None,
    late: dict[str, int] | None = None,
    known: Known | None = None,
) -> list[ReceiptIn]:
    """Match receipts to parts by (SMSC, normalised id) and settle them; returns the unmatched.
    The parts settled go into `known` as written (one part row of a longer message whose others
    were not written in this transaction leaves it to be read by the roll-up).

    The parts' messages are locked before their states are read, so the first final outcome
    stands even when two instances apply receipts for the same part at once.
    """
    if where is None:
        where = await _match(c, receipts)
    if not where:
        return list(receipts)
    rows = await lock_messages(c, {mid for mids in where.values() for mid in mids})
    if locked is not None:
        locked.update(rows)  # unchanged by what follows (only parts change): for the roll-up
    parts: dict[tuple[str, str], list[tuple[str, int, str]]] = {}
    keys = list(where)
    for n, mid, seq, state in await c.fetch(_MATCHED_PARTS, *_pairs(keys)):
        parts.setdefault(keys[n - 1], []).append((mid, seq, state))
    siblings = None
    whole = lc.whole_messages(parts, one_per_message)
    if whole:  # one receipt per message: the parts it also settles (their messages locked)
        siblings = {
            mid: [(q, st, via, at) for q, st, _e, via, _i, at, _d in rows]
            for mid, rows in (await _all_parts(c, whole)).items()
        }
    if late is not None:
        lc.count_after_timeout(receipts, parts, late)
    settled, unmatched = lc.settle_receipts(
        receipts, parts, one_per_message=one_per_message, siblings=siblings
    )
    for mid, *_rest in settled:
        touched.setdefault(mid, False)
    upd: list[list[Any]] = [list(col) for col in zip(*settled, strict=True)] if settled else []
    if upd:
        written = await c.fetch(
            "UPDATE segments s SET state = u.state, done_at = u.at, error_code = u.error, "
            "receipt_inferred_from = u.source "
            "FROM unnest($1::text[], $2::int[], $3::text[], $4::bigint[], $5::text[], "
            "$6::int[]) AS u(mid, seq, state, at, error, source) "
            f"WHERE s.message_id = u.mid AND s.seq = u.seq {PART_RETURNING}",
            *upd,
        )
        if known is not None:
            known.add(written)
        if inferred is not None and siblings:
            lc.count_inferred(settled, siblings, inferred)
    return unmatched


# -- recovery --------------------------------------------------------------------------------------

_LIVE_INSTANCE_LOCKS = (
    "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 "
    f"AND classid = {NS_INSTANCE}::oid "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def _gone(holder: str, silent_since: str) -> str:
    """SQL: the instance named by column `holder` is gone: no heartbeat after parameter
    `silent_since` and no instance lock held. One test for message claims and webhook leases."""
    return (
        f"NOT EXISTS (SELECT 1 FROM instances i "
        f"WHERE i.instance = {holder} AND i.heartbeat_at > {silent_since}) "
        f"AND hashtext({holder})::oid NOT IN ({_LIVE_INSTANCE_LOCKS})"
    )


# A claimed message with a part left to send (its claim's submits may be unanswered).
_TO_SEND = "EXISTS (SELECT 1 FROM segments s WHERE s.message_id = m.id AND s.state = 'queued')"

_ABANDONED = f"""
SELECT m.id, m.q_route, {_TO_SEND} FROM messages m
WHERE m.q_state = 'claimed' AND (m.q_lease_until <= $1 OR ({_gone("m.q_claimed_by", "$2")}))
ORDER BY m.id FOR UPDATE OF m SKIP LOCKED
"""

# Webhook leases of instances that are gone, as _ABANDONED tells them (their POSTs' results
# can no longer be written: a lease is fenced by its next_attempt_at, which this moves).
FREE_WEBHOOK_LEASES = f"""
UPDATE webhook_outbox o SET next_attempt_at = $1, leased_by = NULL
WHERE o.leased_by IS NOT NULL AND o.state = 'pending' AND o.next_attempt_at > $1
    AND {_gone("o.leased_by", "$2")}
"""

_LIVE_INSTANCES = f"SELECT count(*) FROM ({_LIVE_INSTANCE_LOCKS}) l"


async def requeue_claims(
    c: asyncpg.Connection,
    now: int,
    unknown_smscs: frozenset[str],
    *,
    instance: str | None,
    offset_ms: int = 0,
    intermediate: bool = False,
) -> dict[str, int]:
    """Give claims back to the queue: with `instance`, that instance's own claims (a restart) and
    any whose lease expired; without, claims whose lease expired or whose instance is gone (no
    instance lock held and no heartbeat for DEAD_AFTER_MS). A claim with no part left to send is
    rolled up instead (as a claim rolls one up, with webhooks.send_intermediate's "sent" report:
    `intermediate`).

    Parts of such a message with no submit_sm_resp recorded may or may not have reached the SMSC:
    they are resent (at-least-once) unless the SMSC its parts went to in this claim (q_route) is
    configured `in_flight_on_restart: unknown`.

    Leases and heartbeats are in the database's clock: `now + offset_ms` (PostgresStore).
    """
    coord = now + offset_ms
    if instance is not None:
        rows = await c.fetch(
            f"SELECT m.id, m.q_route, {_TO_SEND} FROM messages m WHERE m.q_state = 'claimed' "
            "AND (m.q_claimed_by = $1 OR m.q_lease_until <= $2) ORDER BY m.id FOR UPDATE",
            instance,
            coord,
        )
    else:
        rows = await c.fetch(_ABANDONED, coord, coord - DEAD_AFTER_MS)
    # No part left to send: none of the claim's submits can be unanswered. Rolled up (out of
    # the queue, final or awaiting its receipts), not counted unanswered.
    idle = [r[0] for r in rows if not r[2]]
    mark = [r[0] for r in rows if r[2] and r[1] is not None and r[1] in unknown_smscs]
    requeue = [r[0] for r in rows if r[2] and not (r[1] is not None and r[1] in unknown_smscs)]
    if mark:
        await c.execute(
            "UPDATE segments SET state = $2, done_at = $3, error_code = 'IN_FLIGHT_AT_RESTART' "
            "WHERE message_id = ANY($1::text[]) AND state = 'queued'",
            mark,
            lc.SEG_TIMEOUT,
            now,
        )
        # Nothing is left to send: out of the queue even while earlier parts still await their
        # receipts (else it sits 'claimed' and in queue_depth).
        await rollup_messages(c, dict.fromkeys(mark, True), now)
    if requeue:
        # Its submit may be out with no answer recorded: an unanswered one (not cancelable, and
        # within the unanswered resends' budget).
        await c.execute(
            "UPDATE messages SET q_state = 'queued', q_claimed_by = NULL, q_lease_until = NULL, "
            "q_unanswered = q_unanswered + 1 WHERE id = ANY($1::text[])",
            requeue,
        )
    if idle:
        await c.execute(
            "UPDATE messages SET q_state = 'queued', q_claimed_by = NULL, q_lease_until = NULL "
            "WHERE id = ANY($1::text[])",
            idle,
        )
        await rollup_messages(c, dict.fromkeys(idle, True), now, intermediate=intermediate)
    return {"requeued": len(requeue), "marked_unknown": len(mark)}


# -- sweep -----------------------------------------------------------------------------------------


async def sweep(
    c: asyncpg.Connection,
    now: int,
    receipt_timeout_ms: int,
    records_now: int,
    smsc_validity_ms: Mapping[str, int],
    silent_smscs: Collection[str] = (),
    after: list[str | None] | None = None,
) -> dict[str, int]:
    """Validity expiry and receipt timeouts. Rows another instance holds are skipped (its next
    sweep, or this one's, gets them). `after` ([id] or [None], kept by the caller between
    sweeps): the receipt-timeout candidates are read after that id, and it becomes the last one
    read when their page was full and held messages back (base.SWEEP_CANDIDATES), else None."""
    after = after if after is not None else [None]
    expired = [
        r[0]
        for r in await c.fetch(
            # Not while a released message waits out its hold after a try (see the SQLite
            # engine's sweep).
            "SELECT id FROM messages WHERE q_state = 'queued' AND expires_at IS NOT NULL "
            "AND expires_at <= $1 "
            "AND (q_attempts = 0 OR q_not_before <= $1 OR q_park IS NOT NULL) "
            "ORDER BY id LIMIT 10000 FOR UPDATE SKIP LOCKED",
            now,
        )
    ]
    if expired:
        await c.execute(
            "UPDATE segments SET state = $2, done_at = $3, "
            f"error_code = {END_ERROR.format(seg='segments')} "
            "WHERE message_id = ANY($1::text[]) AND state = 'queued'",
            expired,
            lc.SEG_EXPIRED_UNSENT,
            now,
        )
        # Parts sent before a release keep the message 'sent', yet nothing is left to send:
        # release_done takes it out of the queue.
        await rollup_messages(c, dict.fromkeys(expired, True), now)
    where, params = lc.timed_out_where(
        now, receipt_timeout_ms, smsc_validity_ms, "${}".format, silent_smscs
    )
    if after[0] is not None:
        params.append(after[0])
        where += f" AND id > ${len(params)}"
    page = base.SWEEP_CANDIDATES
    rows = await c.fetch(
        f"SELECT id, sent_at, expires_at, smsc FROM messages WHERE {where} "
        f"ORDER BY id LIMIT {page:d} FOR UPDATE SKIP LOCKED",
        *params,
    )
    timed_out = [r[0] for r in rows]
    after[0] = None
    if timed_out and lc.waits_differ(receipt_timeout_ms, smsc_validity_ms, silent_smscs):
        # A message whose parts went out on two SMSCs waits for the one that waits longest
        # (lifecycle.split_deadline), not only for the last part's, the row's.
        awaiting: dict[str, list[str]] = {}
        sql = lc.AWAITING_SMSCS_SQL.format(ids="SELECT unnest($1::text[])")
        for mid, smsc in await c.fetch(sql, timed_out):
            awaiting.setdefault(mid, []).append(smsc)
        later = lc.not_yet_timed_out(
            [tuple(r) for r in rows], awaiting, now, receipt_timeout_ms, smsc_validity_ms,
            silent_smscs,
        )  # fmt: skip
        timed_out = [mid for mid in timed_out if mid not in later]
        if later and len(rows) == page:
            after[0] = rows[-1][0]
    if timed_out:
        await c.execute(
            "UPDATE segments SET state = $2, done_at = $3, error_code = 'NO_RECEIPT' "
            "WHERE message_id = ANY($1::text[]) AND state = 'sent'",
            timed_out,
            lc.SEG_TIMEOUT,
            now,
        )
        await rollup_messages(c, dict.fromkeys(timed_out, False), now)
    await c.execute("DELETE FROM nonces WHERE expires_at <= $1", records_now)
    await c.execute("DELETE FROM idempotency WHERE expires_at <= $1", records_now)
    # Unmatched receipts are kept while a receipt may still be awaited, then dropped.
    await c.execute(
        "DELETE FROM pending_receipts WHERE received_at <= $1", now - receipt_timeout_ms
    )
    # Delivered reports: kept a while, then purged (base.WEBHOOK_RETENTION_MS).
    await c.execute(
        "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox "
        "WHERE state = 'delivered' AND next_attempt_at <= $1 LIMIT $2)",
        now - WEBHOOK_RETENTION_MS,
        100 * PURGE_CHUNK,
    )
    return {"expired": len(expired), "timed_out": len(timed_out)}


async def lapsing_accounts(c: asyncpg.Connection | asyncpg.Pool, now: int) -> list[str]:
    """Accounts with a voucher or card that expired with a remainder (see lapse_vouchers)."""
    rows = await c.fetch(
        "SELECT DISTINCT account_id FROM pockets "
        "WHERE (pocket LIKE 'voucher:%' OR pocket LIKE 'card:%') AND amount > 0 "
        "AND expires_at IS NOT NULL AND expires_at <= $1 ORDER BY account_id LIMIT 1000",
        now,
    )
    return [r[0] for r in rows]


async def lapse_vouchers(
    c: asyncpg.Connection, account_id: str, now: int
) -> tuple[int, LowBalance | None]:
    """Write off the account's vouchers that expired with a remainder, and warn if that took it
    under its threshold (see the SQLite engine): (entries written, the crossing, for the
    daemon to log; its event is queued here).

    Its own transaction, after the sweep's (the store runs one per account), under the account's
    lock first, as an accept: inside the sweep's transaction the account lock came after the
    pockets its refunds had locked, the other writers' order reversed, and an opt-out, a
    disable or an accept of that account deadlocked with it (PostgreSQL aborted one side after
    a second)."""
    row = await c.fetchrow(
        "SELECT low_balance_threshold, low_warned_at IS NOT NULL FROM accounts WHERE id = $1 "
        "FOR NO KEY UPDATE",
        account_id,
    )
    threshold, warned = (row[0], row[1]) if row is not None else (0, False)
    pockets = await postgres_rules.read_pockets(c, account_id)  # after the lock: as they are
    entries, low = adm.lapse_plan(pockets, threshold or 0, now, warned=bool(warned))
    w = postgres_rules.Writes()
    postgres_rules.add_entries(w, [(account_id, e) for e in entries])
    if low is not None:
        postgres_rules.add_low_balance_event(w, account_id, low, now)
    await w.run(c)
    return len(entries), None if low is None else LowBalance(account_id, *low)
