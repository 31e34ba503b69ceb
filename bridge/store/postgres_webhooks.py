"""Webhook outbox claims on PostgreSQL whose COMMIT got no answer, given back.

Why: a claim leases its reports (`leased_by`, `next_attempt_at` = the lease's end) in a
transaction committed as the connection broke (the server crashed after committing, a link cut)
raises in the sender, which then holds nothing, while the server has the reports leased by this
live instance: nobody posted them until the lease (3 x webhooks.timeout_s + 10 s) ran out, and a
report posted before (its `webhook_done` lost the same way) reached the receiver late and twice.
(Found by the PostgreSQL chaos soak; the dispatcher's message claims had the same gap, closed in
session 43: PostgresStore._unsure_claims.)

So the store remembers what such a claim took, with the holder and the lease it wrote, and
before its next webhook claim, and at a clean stop, makes those reports due at once if they are
still leased by that holder with that lease: the claim did land, and the lease, exact to the
millisecond, says no later claim took them (a later claim writes its own lease, another
instance's `free_webhook_leases` clears it). A report locked by another transaction (perhaps that
claim, its COMMIT still under way) is kept for the next try rather than waited for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import asyncpg

from bridge.store.postgres_tx import run_tx

log = logging.getLogger("bridge.store")

_GIVE_BACK = """
UPDATE webhook_outbox SET next_attempt_at = $4, leased_by = NULL
WHERE id = ANY($1::bigint[]) AND state = 'pending' AND next_attempt_at = $3
    AND leased_by IS NOT DISTINCT FROM $2
"""


class UnsureWebhookClaims:
    """Reports of webhook claims whose COMMIT got no answer: id -> (holder, lease)."""

    def __init__(self) -> None:
        self._held: dict[int, tuple[str | None, int]] = {}
        # One give-back at a time: the next claim's and the close's.
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._held)

    def add(self, ids: Iterable[int], holder: str | None, lease: int) -> None:
        self._held.update(dict.fromkeys(ids, (holder, lease)))

    async def give_back(self, pool: asyncpg.Pool, now: int) -> int:
        """Due at `now`, the reports such a claim did lease (else nothing is changed); how many.
        Raises while the store is away: they are kept for the next try."""
        if not self._held:
            return 0
        async with self._lock:
            unsure = dict(self._held)
            by_lease: dict[tuple[str | None, int], list[int]] = {}
            for wid, key in unsure.items():
                by_lease.setdefault(key, []).append(wid)

            async def job(c: asyncpg.Connection) -> tuple[int, set[int]]:
                ids = sorted(unsure)
                mine = [
                    r[0]
                    for r in await c.fetch(
                        "SELECT id FROM webhook_outbox WHERE id = ANY($1::bigint[]) "
                        "ORDER BY id FOR UPDATE SKIP LOCKED",
                        ids,
                    )
                ]
                free = set(mine)
                given = 0
                for (holder, lease), wids in by_lease.items():
                    done = await c.execute(
                        _GIVE_BACK, [w for w in wids if w in free], holder, lease, now
                    )
                    given += int(done.split()[-1])
                # A row gone (purged, erased) is simply forgotten; a locked one is kept.
                present = {r[0] for r in await c.fetch(_EXISTING, ids)}
                return given, present - free

            given, held = await run_tx(pool, job)
            for wid in unsure.keys() - held:
                self._held.pop(wid, None)
        if given:
            log.warning(
                "%d webhook reports of a claim whose commit went unanswered were leased after "
                "all: due again at once",
                given,
            )
        return given

    async def give_back_at_close(self, pool: asyncpg.Pool, now: int, timeout_s: float) -> None:
        """A clean stop gives them back itself: else they waited for another instance's
        takeover of a stopped instance's leases (~20 s), or this one's restart, or the lease.
        Bounded; a store away keeps them for those."""
        if not self._held:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await self.give_back(pool, now)
        except Exception as exc:  # a stop goes on
            log.warning(
                "%d webhook reports of claims whose commit went unanswered not given back at "
                "close (%s): due when their lease runs out or another instance counts this one "
                "gone",
                len(self._held),
                type(exc).__name__,
            )


_EXISTING = "SELECT id FROM webhook_outbox WHERE id = ANY($1::bigint[])"
