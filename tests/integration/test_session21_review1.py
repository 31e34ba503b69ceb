"""Session 21, first review: the confirmer of PostgreSQL submit results.

Reviewed: bridge/store/postgres_confirm.py (`Confirmer`) and its use in bridge/store/postgres.py
(`_held_tx`, `claim` -> `settle()`, `close`). Submit results commit with synchronous_commit off
and are held until a flush on the confirmer's own connection (the watch) covers them; a batch
committed under an earlier watch (or none) is written again, durably, before the next flush and
before this instance's next claim. Everything here runs on a throw-away cluster of this module's
own (its tests crash it and change its settings), with real PostgresStore objects and real
faults: crashes (the WAL writer stopped, then killed: the postmaster's own crash-restart, which
loses the asynchronous commits for sure; `pg_ctl stop -m immediate`), a synchronous standby that
never comes (a flush that hangs), a per-role connection limit (the watch refused while the pool
works), a row lock and a TCP proxy that cuts the link (a partition). Changed in the code under
test: only FLUSH_TIMEOUT_S (shortened), the confirmer's interval (lengthened where a test needs
its own timing, as tests/integration/test_pg_confirm.py does), and asyncpg.connect wrapped to
count the calls (it still connects).

Checked and found right:
- a batch written again records nothing twice, whatever happened since: a receipt applied (the
  message delivered, its status webhook queued), the message final (failed, unknown, expired),
  released and then claimed (in flight, or sent and delivered) by another instance (the release
  carries its instance), a pending receipt: messages, parts, the webhook outbox and the pending
  receipts are unchanged, row for row, attempt and unanswered counts included;
- a rewrite cut by a second crash (between two batches) goes on where it stopped, in order, at
  the next claim: the batch written before the cut is durable, the rest still held, nothing
  dropped, no claim meanwhile, and a receipt that came in between is applied by the rewrite;
- without a watch (refused) and without claims, the loop writes each batch again within ~1 s:
  what is held stays bounded (at most 4 batches at one every 0.3 s);
- a flush that hangs holds up neither claims nor result commits until FLUSH_TIMEOUT_S gives it
  up; once the server flushes again everything held is confirmed, one watch session is left;
- an outage of the server: one WARNING line, no traceback, one INFO line when the batches are
  written again, the DSN's password in no log line; a close while the server is away returns at
  once (3-8 ms) and leaves no watch open.

Found wrong (strict xfails, each asserting the correct behaviour, until the lead's fixes the same
session; how each was fixed is at its end):
1. A release written again takes back a later claim of the same instance. A batch holding a
   `Release` (no bind: 1 s back-off; first transient error: 5 s) stays held while the flush is
   slow; `settle()` sees nothing unsure, so this instance claims the message again and sends it.
   When the flush is given up (FLUSH_TIMEOUT_S, 10 s: an I/O stall, a lagging synchronous standby;
   no crash needed) or the server crashes and comes back, the rewrite runs the release again: its
   SQL only checks `q_state = 'claimed' AND q_claimed_by = instance`, which the new claim
   satisfies, so the message on the wire goes back to the queue (q_attempts down once more) and
   the next claim hands it out a second time: a duplicate SMS. Fixed: a message whose release
   is held is not claimed by this instance until the release is confirmed or written again.
2. Another instance claims a message whose result and claim the crash lost, before the instance
   holding that result writes it again: `settle()` orders this instance's claims only. Measured
   with the confirmer's own timing (0.1 s interval): after `pg_ctl stop -m immediate` + start
   (server back ~0.15 s), instance B's claim took the message 0.02 s after the server was back and
   A's loop, by then on its once-a-second retry, wrote the result 1.0 s after; after the
   postmaster's own crash-restart (back in 0.11-0.14 s) A's first try came just in time in three
   runs out of three. A's rewrite then marks the message done over B's claim: B's send is a
   duplicate, its result is ignored and its receipt never matches. The test lets A write again
   at its next claim only (what settle() promises), so B is first every time. In the daemon B's
   binds stay usable until its next slot check (SLOT_CHECK_S, 0.5 s) after its coordination
   session died, so a server back within ~0.5 s opens the window. Fixed: every instance keeps a
   watch from its first claim, and claims nothing for FENCE_S (2 s) after it lost one, longer
   than an instance holding results takes to write them again (its next try within 0.2 s of the
   server answering). The test's B claims once before the crash, as a running dispatcher does.
3. A watch that cannot be had is tried again on every claim: `confirm()` (reached through
   `settle()` from every claim while a batch is held) ignores the once-a-second `_retry_at` that
   `ready()` keeps. With the server refusing one more connection (max_connections or a role's
   limit) and the pool working, 10 claims in 0.2-0.25 s made 11 connection attempts and logged 10
   INFO lines ("wrote 1 submit-result batches again"): on a busy instance tens a second, each a
   backend fork on a server that is out of connections. Fixed: confirm() keeps to the retry
   time too, and the line is logged once per outage.
4. A close during a partition (no RST, no FIN) does not return: with the watch still looking up,
   the confirmer gives its flush up after FLUSH_TIMEOUT_S, then `pool.close()` waits for the
   server with no time-out of its own; with the flush already given up (the partition older than
   FLUSH_TIMEOUT_S), the close's own rewrite first waits out the pool's command_timeout (60 s).
   systemd kills the daemon at TimeoutStopSec (45 s). Fixed: the confirmer's close takes at most
   FLUSH_TIMEOUT_S in all, the pool's at most CLOSE_TIMEOUT_S (3 s), then its connections are cut.
5. The warnings are wrong when the batches were written again without a watch: "confirming 1
   submit-result batches failed ...; 0 still held" (WARNING) and, at close, "0 submit-result
   batches unconfirmed at close (...): a crash of the server now may lose them", though every
   batch was written durably. Fixed: both warn only while something is still held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest

from bridge.store import postgres, postgres_confirm
from bridge.store.models import AcceptBatch, ReceiptIn, Release, SubmitResult
from bridge.store.postgres import PostgresStore
from bridge.store.postgres_confirm import Confirmer
from tests.e2e.harness import wait_until
from tests.e2e.test_pg_fleet_review import PartitionProxy

# This module's own server (its tests crash it and change its settings), as that module's.
from tests.integration import test_session16_review3 as review3
from tests.integration.test_session16_review3 import pg_start, pg_stop
from tests.integration.test_store_multi import LEASE, NOW, account, message
from tests.pg_cluster import (
    Cluster,
    settled,
)

pytestmark = [pytest.mark.postgres]

TIMES: dict[str, float] = {}  # measured, printed at the end of the module (run with -s)

# This module's own server (its tests crash it and change its settings) and a database on it
# (the server started again if a test left it down), as review3's.
cluster = review3.cluster
dsn = review3.dsn
SECRET = "pw-9f3a7c-secret"


# -- the cluster and the stores --------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    for k, v in TIMES.items():
        print(f"  {k}: {v:.3f}")


def _running(c: Cluster) -> bool:
    assert c.datadir is not None
    return (c.datadir / "postmaster.pid").exists()


@pytest.fixture
async def app_dsn(cluster: Cluster, dsn: str) -> AsyncIterator[str]:
    """`dsn` for a role that is not a superuser (a connection limit binds it), with a password
    in the DSN (trust authentication ignores it): no log line may show it."""
    db = dsn.rsplit("/", 1)[1]
    await admin_sql(
        cluster,
        "DO $$ BEGIN CREATE ROLE app LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        "ALTER ROLE app CONNECTION LIMIT -1",
        f'ALTER DATABASE "{db}" OWNER TO app',
    )
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ALTER SCHEMA public OWNER TO app")
    finally:
        await conn.close()
    yield dsn.replace("//bridge@", f"//app:{SECRET}@")
    if not _running(cluster):
        await pg_start(cluster)
    await admin_sql(cluster, "ALTER ROLE app CONNECTION LIMIT -1")


async def admin_sql(cluster: Cluster, *statements: str) -> None:
    conn = await asyncpg.connect(cluster.admin_dsn)
    try:
        for s in statements:
            await conn.execute(s)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def opened(dsn: str, *, min_size: int = 1, max_size: int = 4) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(dsn, min_size=min_size, max_size=max_size)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def row(dsn: str, sql: str, *args: Any) -> tuple[Any, ...]:
    conn = await asyncpg.connect(dsn)
    try:
        r = await conn.fetchrow(sql, *args)
    finally:
        await conn.close()
    return tuple(r) if r is not None else ()


async def states(dsn: str) -> dict[str, tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT id, state, q_state, q_claimed_by FROM messages ORDER BY id")
    finally:
        await conn.close()
    return {r[0]: tuple(r)[1:] for r in rows}


async def end_watch(dsn: str, confirm: Confirmer) -> None:
    """The server ends the watch's session (what any crash, restart or failover does)."""
    watch = confirm._watch
    assert watch is not None and not watch.is_closed()
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", watch.get_server_pid())
    finally:
        await conn.close()
    await wait_until(watch.is_closed, 5, 0.01)


async def refuse_the_watch(superuser: str, confirm: Confirmer) -> None:
    """The app role may hold two connections (the pool's two): the server refuses the watch
    any third, while the pool works; then the server ends the watch that was up."""
    conn = await asyncpg.connect(superuser)
    try:
        await conn.execute("ALTER ROLE app CONNECTION LIMIT 2")
    finally:
        await conn.close()
    await end_watch(superuser, confirm)


async def retrying(what: Any, tries: int = 30) -> Any:
    """The pool's connections died with the server: a few tries."""
    for i in range(tries):
        try:
            return await what()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if i == tries - 1:
                raise
            await asyncio.sleep(0.1)


async def crash(cluster: Cluster) -> None:
    await pg_stop(cluster, "immediate")
    await pg_start(cluster)


@contextlib.asynccontextmanager
async def wal_writer_stopped(dsn: str) -> AsyncIterator[Callable[[], Awaitable[float]]]:
    """The WAL writer stopped (SIGSTOP): asynchronous commits stay in the server's memory. The
    function given kills it: the postmaster takes that for a crash and restarts the server by
    itself (`restart_after_crash`), losing them; it returns how long the server was away."""
    conn = await asyncpg.connect(dsn)
    pid = await conn.fetchval("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'")
    assert pid
    os.kill(pid, signal.SIGSTOP)
    killed = False

    async def crash() -> float:
        nonlocal killed
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        killed = True
        await wait_until(conn.is_closed, 10, 0.005)  # every session ends with the crash

        async def back() -> bool:
            try:
                probe = await asyncpg.connect(dsn)
            except (OSError, asyncpg.PostgresError):
                return False
            await probe.close()
            return True

        await wait_until(back, 30, 0.01)
        return time.monotonic() - t0

    try:
        yield crash
    finally:
        if not killed:
            os.kill(pid, signal.SIGCONT)
        conn.terminate()


@contextlib.asynccontextmanager
async def flushes_hang(cluster: Cluster) -> AsyncIterator[None]:
    """A synchronous standby that never comes: every commit that waits for the flush waits for
    it for good (a lost synchronous standby; to the client an I/O stall looks the same). Commits
    without the flush (claims, submit results) go through."""
    await admin_sql(
        cluster,
        "ALTER SYSTEM SET synchronous_standby_names = 'ghost'",
        "SELECT pg_reload_conf()",
    )
    await asyncio.sleep(0.5)  # the checkpointer publishes it in its own time
    try:
        yield
    finally:
        await admin_sql(
            cluster, "ALTER SYSTEM RESET synchronous_standby_names", "SELECT pg_reload_conf()"
        )


async def confirm_sessions(dsn: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT pid, state, wait_event FROM pg_stat_activity "
            "WHERE application_name = 'smpp-bridge-confirm'"
        )
    finally:
        await conn.close()
    return [tuple(r) for r in rows]


async def waiting_on_a_lock(dsn: str) -> int:
    (n,) = await row(
        dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'smpp-bridge' "
        "AND wait_event_type = 'Lock'",
    )
    return int(n)


def sent(mid: str, seq: int = 1, smsc: str = "smscU") -> SubmitResult:
    return SubmitResult(mid, seq, "sent", smsc, f"{mid}.{seq}", f"{mid}.{seq}", at=NOW)


def delivered(mid: str, seq: int = 1, smsc: str = "smscU") -> ReceiptIn:
    return ReceiptIn(smsc, f"{mid}.{seq}", "delivered", "DELIVRD", "000", NOW + 5, NOW + 5)


async def accept(pg: PostgresStore, *ids: str, parts: int = 1) -> None:
    for mid in ids:
        await pg.accept(AcceptBatch("acc_a", (message(mid, parts=parts),), None, None), NOW)


Q_STATE = "SELECT q_state, q_claimed_by, q_attempts FROM messages WHERE id = $1"
SEG = (
    "SELECT s.state, s.smsc_msg_id, m.q_state FROM segments s "
    "JOIN messages m ON m.id = s.message_id WHERE m.id = $1"
)
SNAPSHOT = (
    "SELECT * FROM messages ORDER BY id",
    "SELECT * FROM segments ORDER BY message_id, seq",
    "SELECT webhook_id, account_id, kind, ref_id, payload FROM webhook_outbox ORDER BY 1",
    "SELECT smsc, smsc_msg_id, state FROM pending_receipts ORDER BY 1, 2",
)


async def snapshot(dsn: str) -> list[list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [[tuple(r) for r in await conn.fetch(q)] for q in SNAPSHOT]
    finally:
        await conn.close()


# -- writing a batch again -------------------------------------------------------------------------


async def test_a_release_written_again_does_not_take_back_a_later_claim_of_the_same_instance(
    cluster: Cluster, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 1. Fixed: while its release is held, this instance does not claim the message
    again (a claim confirms a held release first; Confirmer.releasing), so the release written
    again after the flush was given up finds nothing of this instance's to take back; the
    message is claimed once after it."""
    monkeypatch.setattr(postgres_confirm, "FLUSH_TIMEOUT_S", 1.5)  # 10 s in production
    monkeypatch.setattr(postgres_confirm, "FENCE_S", 0.3)  # 2 s: after the watch given up
    async with opened(dsn) as pg:
        confirm: Confirmer = pg._confirm
        await pg.create_account(account())
        await accept(pg, "m1")
        assert [w.id for w in await pg.claim("inst-a", 1, NOW, LEASE)] == ["m1"]
        async with flushes_hang(cluster):
            # No bind: back to the queue, due at once (1 s in the dispatcher).
            await pg.record_submits(
                [], [Release("m1", NOW, count_attempt=False)], NOW, instance="inst-a"
            )
            assert confirm.held == 1
            watch = confirm._watch
            assert watch is not None
            t0 = time.monotonic()
            try:  # the release is confirmed first: the claim waits for the hanging flush
                again = await pg.claim("inst-a", 1, NOW, LEASE)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                again = []  # the flush given up: the claim fails, as with the store away
            TIMES["claim during a hanging flush"] = time.monotonic() - t0
            if confirm.flushes:
                raise RuntimeError("no flush was to get through")
            assert again == []  # its release is not confirmed: not taken again
            assert await row(dsn, Q_STATE, "m1") == ("queued", None, 0)
            await wait_until(watch.is_closed, 5, 0.01)  # the flush is given up
        await wait_until(lambda: confirm.held == 0, 5, 0.02)  # written again, then flushed
        if not confirm.rewritten:
            raise RuntimeError("the release was to be written again")
        claimed = await wait_for_claim(pg, "inst-a")
        assert [w.id for w in claimed] == ["m1"]
        sending = await row(dsn, Q_STATE, "m1")
        assert sending == ("claimed", "inst-a", 1)
        assert await pg.claim("inst-a", 1, NOW, LEASE) == []  # not handed out a second time
        assert await row(dsn, Q_STATE, "m1") == sending


async def wait_for_claim(pg: PostgresStore, instance: str, within_s: float = 5.0) -> list[Any]:
    """Claims return nothing while fenced (a watch lost: FENCE_S): the first that returns."""
    deadline = time.monotonic() + within_s
    while True:
        got = await pg.claim(instance, 1, NOW, LEASE)
        if got or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


async def test_results_written_again_change_nothing_that_happened_since(dsn: str) -> None:
    async with opened(dsn) as a, opened(dsn) as b:
        confirm: Confirmer = a._confirm
        confirm._interval = 60.0  # no flush of its own: every batch stays held
        b._confirm._interval = 60.0
        await a.create_account(account(status_url="https://example.test/st"))
        ids = ["c1", "d1", "f1", "r1", "u1", "x1"]
        await accept(a, *ids)
        await accept(a, "p2", parts=2)
        assert len(await a.claim("inst-a", 10, NOW, LEASE)) == 7
        a_batches = [
            ([sent("d1")], []),
            ([SubmitResult("f1", 1, "failed", "smscU", error_code="ESME_RINVDSTADR", at=NOW)], []),
            ([], [Release("r1", NOW, count_attempt=True)]),
            ([SubmitResult("u1", 1, "unknown", "smscU", error_code="SUBMIT_TIMEOUT", at=NOW)], []),
            ([SubmitResult("x1", 1, "expired", "", at=NOW)], []),
            ([sent("p2", 1)], [Release("p2", NOW, count_attempt=True)]),
            ([], [Release("c1", NOW, count_attempt=False, unanswered=True)]),
        ]
        for results, releases in a_batches:
            await a.record_submits(results, releases, NOW, instance="inst-a")
        assert confirm.held == len(a_batches)
        # What happened since: receipts, and instance B claiming what A released.
        await a.apply_receipts([delivered("d1"), delivered("p2", 1)], NOW + 10)
        again = await b.claim("inst-b", 10, NOW, LEASE)
        assert sorted(w.id for w in again) == ["c1", "p2", "r1"]
        await b.record_submits([sent("r1"), sent("p2", 2)], [], NOW + 20, instance="inst-b")
        await b.apply_receipts([delivered("r1"), delivered("zz")], NOW + 30)  # zz: pending
        assert await states(dsn) == {
            "c1": ("queued", "claimed", "inst-b"),  # B is sending it
            "d1": ("delivered", "done", None),
            "f1": ("failed", "done", None),
            "p2": ("sent", "done", None),  # part 1 delivered, part 2 sent by B
            "r1": ("delivered", "done", None),  # sent by B after A's release, delivered
            "u1": ("unknown", "done", None),
            "x1": ("expired", "done", None),
        }
        before = await snapshot(dsn)
        await end_watch(dsn, confirm)
        assert confirm.unsure()
        assert await a.claim("inst-a", 10, NOW + 40, LEASE) == []  # settles: all written again
        assert confirm.rewritten == len(a_batches) and confirm.held == 0
        after = await snapshot(dsn)
        for q, x, y in zip(SNAPSHOT, before, after, strict=True):
            assert x == y, q


async def test_a_rewrite_cut_by_a_second_crash_goes_on_in_order_and_drops_nothing(
    cluster: Cluster, dsn: str
) -> None:
    async with opened(dsn) as a:
        confirm: Confirmer = a._confirm
        confirm._interval = 60.0  # the claims settle, the loop stays out of the way
        await a.create_account(account())
        await accept(a, "m1", "m2", "m3")
        async with wal_writer_stopped(dsn) as crash_now:
            assert len(await a.claim("inst-a", 10, NOW, LEASE)) == 3
            for mid in ("m1", "m2", "m3"):
                await a.record_submits([sent(mid)], [], NOW, instance="inst-a")
            assert confirm.held == 3
            await crash_now()
        for mid in ("m1", "m2", "m3"):
            if await row(dsn, SEG, mid) != ("queued", None, "queued"):
                raise RuntimeError(f"the crash was to lose {mid}'s result and claim")
        await retrying(a.ping)
        locker = await asyncpg.connect(dsn)
        await locker.execute("BEGIN")
        await locker.execute("SELECT 1 FROM messages WHERE id = 'm2' FOR UPDATE")
        claim = asyncio.create_task(a.claim("inst-a", 10, NOW, LEASE))
        # m1 is written again; m2's rewrite waits for its row: the server dies again then.
        await wait_until(lambda: waiting_on_a_lock(dsn), 5, 0.02)
        assert confirm.rewritten == 1
        await crash(cluster)
        locker.terminate()
        with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
            await claim  # no claim while a batch may be lost
        assert [h[0] for h in confirm._held] == [2, 3]  # still held, in order
        assert await row(dsn, SEG, "m1") == ("sent", "m1.1", "done")  # its rewrite was durable
        assert await row(dsn, SEG, "m2") == ("queued", None, "queued")
        # m3's receipt comes first: kept pending, then applied by the rewrite.
        await retrying(lambda: a.apply_receipts([delivered("m3")], NOW + 10))
        assert await retrying(lambda: a.claim("inst-a", 10, NOW, LEASE)) == []
        assert confirm.held == 0 and confirm.rewritten == 3
        assert await row(dsn, SEG, "m2") == ("sent", "m2.1", "done")
        assert await row(dsn, SEG, "m3") == ("delivered", "m3.1", "done")


# -- two instances ---------------------------------------------------------------------------------


async def test_another_instance_does_not_claim_a_message_whose_lost_result_is_held(
    dsn: str,
) -> None:
    async with opened(dsn) as a, opened(dsn) as b:
        confirm: Confirmer = a._confirm
        # A's loop stays out of the way. Left alone it writes again at its first try (0.1 s
        # after the commit: in time when the server is back that fast) or, once the server
        # was away at that try, on its once-a-second retry, which B's claim beats by up to
        # ~1 s. Here A writes again at its own next claim, as settle() promises: B is first.
        confirm._interval = 60.0
        await a.create_account(account())
        await accept(a, "m1")
        async with wal_writer_stopped(dsn) as crash_now:
            assert [w.id for w in await a.claim("inst-a", 1, NOW, LEASE)] == ["m1"]
            await a.record_submits([sent("m1")], [], NOW, instance="inst-a")
            # B runs: its dispatcher claims (nothing here), and so keeps a watch (fixed: a
            # watch lost fences its claims for FENCE_S).
            assert await b.claim("inst-b", 1, NOW, LEASE) == []
            TIMES["two instances: server back after the crash"] = await crash_now()
        t_up = time.monotonic()
        if await row(dsn, SEG, "m1") != ("queued", None, "queued"):
            raise RuntimeError("the crash was to lose m1's result and claim")
        got = await retrying(lambda: b.claim("inst-b", 1, NOW, LEASE), 100)
        TIMES["two instances: B's claim after the restart"] = time.monotonic() - t_up
        TIMES["two instances: B's claim took m1"] = float(bool(got))
        assert await retrying(lambda: a.claim("inst-a", 1, NOW, LEASE)) == []
        if confirm.rewritten != 1:
            raise RuntimeError("A's claim was to write m1's result again")
        # A's result lands over B's claim: m1 done, B's send (and its result) unrecorded.
        TIMES["two instances: m1 after A's rewrite is done"] = float(
            await row(dsn, SEG, "m1") == ("sent", "m1.1", "done")
        )
        assert got == [], "B claimed m1 before A wrote its result again"


async def test_an_instance_started_during_the_outage_does_not_claim_a_lost_result(
    dsn: str,
) -> None:
    """As above, with B started only once the server is back (its first claim opens its first
    watch: none was lost). Fixed in session 22: a server that (re)started less than FENCE_S
    ago fences a new watch's claims until FENCE_S after its start."""
    async with opened(dsn) as a:
        confirm: Confirmer = a._confirm
        confirm._interval = 60.0  # A writes again at its own next claim (see above)
        await a.create_account(account())
        await accept(a, "m1")
        async with wal_writer_stopped(dsn) as crash_now:
            assert [w.id for w in await a.claim("inst-a", 1, NOW, LEASE)] == ["m1"]
            await a.record_submits([sent("m1")], [], NOW, instance="inst-a")
            await crash_now()
        if await row(dsn, SEG, "m1") != ("queued", None, "queued"):
            raise RuntimeError("the crash was to lose m1's result and claim")
        async with opened(dsn) as b:
            got = await retrying(lambda: b.claim("inst-b", 1, NOW, LEASE), 100)
            assert got == [], "an instance started after the crash claimed m1 at once"
            assert await retrying(lambda: a.claim("inst-a", 1, NOW, LEASE)) == []
            assert confirm.rewritten == 1
            assert await row(dsn, SEG, "m1") == ("sent", "m1.1", "done")
            # The fence ends FENCE_S after the server's start: B claims again then.
            await accept(a, "m2")
            assert [w.id for w in await wait_for_claim(b, "inst-b")] == ["m2"]


async def test_an_instance_idle_through_a_crash_claims_at_once_once_the_server_is_settled(
    dsn: str,
) -> None:
    """The fence runs from the server's restart, not from when an idle instance (its binds
    down, no claims) notices its watch is gone: the PostgreSQL chaos soak saw no sends for
    ~1.8 s after the binds came back, 7.5 s after the crash (fixed in session 22). Its control,
    a watch cut without a restart (pg_terminate_backend, as a partition or a failover looks),
    still fences FENCE_S from the new watch."""
    async with opened(dsn) as a:
        await a.create_account(account())
        assert await a.claim("inst-a", 1, NOW, LEASE) == []  # the watch opens
        async with wal_writer_stopped(dsn) as crash_now:
            await crash_now()
        await settled(dsn)  # FENCE_S after the server's restart, nothing claimed meanwhile
        await accept(a, "m1")
        got = await retrying(lambda: a.claim("inst-a", 1, NOW, LEASE), 100)
        assert [w.id for w in got] == ["m1"], "fenced although the server came back long ago"
        # The control: the watch cut while the server runs on.
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'smpp-bridge-confirm'"
            )
        finally:
            await conn.close()
        await wait_until(lambda: not a._confirm._up(), 5, 0.02)
        await accept(a, "m2")
        t0 = time.monotonic()
        assert await a.claim("inst-a", 1, NOW, LEASE) == []
        assert [w.id for w in await wait_for_claim(a, "inst-a")] == ["m2"]
        assert time.monotonic() - t0 >= postgres_confirm.FENCE_S - 0.1


# -- the watch -------------------------------------------------------------------------------------


async def test_a_refused_watch_is_tried_again_at_most_once_a_second(
    app_dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 3, fixed: confirm() keeps to the once-a-second retry too, and says "wrote again"
    once per outage."""
    monkeypatch.setattr(postgres_confirm, "FENCE_S", 0.0)  # the watch's loss fences: not here
    attempts: list[float] = []
    real_connect = asyncpg.connect

    async def counted(*args: Any, **kw: Any) -> Any:
        attempts.append(time.monotonic())
        return await real_connect(*args, **kw)

    async with opened(app_dsn, min_size=2, max_size=2) as pg:
        confirm: Confirmer = pg._confirm
        await pg.create_account(account())
        await accept(pg, "m0")
        assert len(await pg.claim("inst-a", 1, NOW, LEASE)) == 1
        await pg.record_submits([sent("m0")], [], NOW, instance="inst-a")  # the watch opens
        await wait_until(lambda: confirm.held == 0, 5, 0.01)
        superuser = app_dsn.replace(f"//app:{SECRET}@", "//bridge@")
        await refuse_the_watch(superuser, confirm)
        monkeypatch.setattr(asyncpg, "connect", counted)
        caplog.set_level(logging.INFO, "bridge.store")
        t0 = time.monotonic()
        for i in range(1, 11):
            await accept(pg, f"m{i}")
            assert [w.id for w in await pg.claim("inst-a", 1, NOW, LEASE)] == [f"m{i}"]
            if confirm.held:
                raise RuntimeError("what is held without a watch is written again: bounded")
            await pg.record_submits([sent(f"m{i}")], [], NOW, instance="inst-a")
        took = time.monotonic() - t0
        lines = [r.getMessage() for r in caplog.records if "again" in r.getMessage()]
        TIMES["watch refused: connection attempts in 10 claims"] = len(attempts)
        TIMES["watch refused: the 10 claims took"] = took
        assert len(attempts) <= 1 + int(took), f"{len(attempts)} tries in {took:.2f} s"
        assert len(lines) <= 2, lines


async def test_batches_written_again_without_a_watch_are_not_reported_as_at_risk(
    app_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    superuser = app_dsn.replace(f"//app:{SECRET}@", "//bridge@")
    pg = PostgresStore(app_dsn, min_size=2, max_size=2)
    await pg.open()
    try:
        confirm: Confirmer = pg._confirm
        await pg.create_account(account())
        await accept(pg, "m0", "m1")
        assert len(await pg.claim("inst-a", 2, NOW, LEASE)) == 2
        await pg.record_submits([sent("m0")], [], NOW, instance="inst-a")
        await wait_until(lambda: confirm.held == 0, 5, 0.01)
        await refuse_the_watch(superuser, confirm)
        caplog.set_level(logging.INFO, "bridge.store")
        await pg.record_submits([sent("m1")], [], NOW, instance="inst-a")
        await wait_until(lambda: confirm.held == 0, 5, 0.01)  # the loop writes it again
        await asyncio.sleep(0.1)
        await pg.record_submits([sent("m1")], [], NOW, instance="inst-a")  # held at close
    finally:
        await pg.close()
    if confirm.held or confirm.rewritten < 2:
        raise RuntimeError("both were to be written again durably")
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [w for w in warned if "0 still held" in w or w.startswith("0 submit")], warned


async def test_without_a_watch_the_loop_alone_keeps_what_is_held_bounded(app_dsn: str) -> None:
    """The server refuses the watch while the pool works, and no claim comes (an idle
    dispatcher whose last messages are still being answered): the loop writes each batch again
    within about a second, so what is held stays small however long it lasts."""
    superuser = app_dsn.replace(f"//app:{SECRET}@", "//bridge@")
    async with opened(app_dsn, min_size=2, max_size=2) as pg:
        confirm: Confirmer = pg._confirm
        await pg.create_account(account())
        await accept(pg, *(f"m{i}" for i in range(8)))
        assert len(await pg.claim("inst-a", 8, NOW, LEASE)) == 8
        await pg.record_submits([sent("m0")], [], NOW, instance="inst-a")
        await wait_until(lambda: confirm.held == 0, 5, 0.01)
        await refuse_the_watch(superuser, confirm)
        most = 0
        for i in range(1, 8):
            await pg.record_submits([sent(f"m{i}")], [], NOW, instance="inst-a")
            most = max(most, confirm.held)
            await asyncio.sleep(0.3)
        await wait_until(lambda: confirm.held == 0, 3, 0.02)
        TIMES["no watch, no claims: most batches held"] = most
        assert most <= 5 and confirm.rewritten == 7 and confirm.flushes == 1
        assert await row(superuser, SEG, "m7") == ("sent", "m7.1", "done")


async def test_a_hanging_flush_holds_up_neither_claims_nor_results_until_given_up(
    cluster: Cluster, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_confirm, "FLUSH_TIMEOUT_S", 1.0)
    async with opened(dsn) as pg:
        confirm: Confirmer = pg._confirm
        await pg.create_account(account())
        await accept(pg, "m0", "m1", "m2")
        async with flushes_hang(cluster):
            assert len(await pg.claim("inst-a", 1, NOW, LEASE)) == 1
            t0 = time.monotonic()
            await pg.record_submits([sent("m0")], [], NOW, instance="inst-a")
            watch = confirm._watch
            assert watch is not None
            await wait_until(lambda: confirm_sessions(dsn), 2, 0.02)
            await asyncio.sleep(0.3)  # the flush waits for the standby now
            t1 = time.monotonic()
            assert len(await pg.claim("inst-a", 1, NOW, LEASE)) == 1
            await pg.record_submits([sent("m1")], [], NOW, instance="inst-a")
            took = time.monotonic() - t1
            TIMES["hanging flush: a claim and a result commit took"] = took
            assert took < 0.5 and confirm.held == 2 and confirm.flushes == 0
            assert [s[2] for s in await confirm_sessions(dsn)] == ["SyncRep"]
            await wait_until(watch.is_closed, 3, 0.01)
            TIMES["hanging flush: given up after"] = time.monotonic() - t0
            assert time.monotonic() - t0 < postgres_confirm.FLUSH_TIMEOUT_S + 1.0
        await wait_until(lambda: confirm.held == 0, 5, 0.02)
        # Both written again (after a flush on a new watch, or without one when the new watch's
        # connect timed out on a busy machine: FLUSH_TIMEOUT_S is 1 s here).
        assert confirm.rewritten == 2
        await wait_until(lambda: len_is(confirm_sessions(dsn), 1), 5, 0.05)  # no session left


async def len_is(rows: Any, n: int) -> bool:
    return len(await rows) == n


async def test_an_outage_logs_one_line_without_the_password_and_a_close_in_it_returns(
    cluster: Cluster, app_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    pg = PostgresStore(app_dsn, min_size=1, max_size=4)
    await pg.open()
    closed = False
    try:
        confirm: Confirmer = pg._confirm
        await pg.create_account(account())
        await accept(pg, "m1", "m2")
        assert len(await pg.claim("inst-a", 2, NOW, LEASE)) == 2
        caplog.set_level(logging.INFO)
        await pg.record_submits([sent("m1")], [], NOW, instance="inst-a")
        await pg_stop(cluster, "immediate")
        await asyncio.sleep(2.5)  # the loop tries three times
        await pg_start(cluster)
        await wait_until(lambda: confirm.held == 0, 5, 0.02)
        mine = [r for r in caplog.records if r.name == "bridge.store"]
        failed = [r for r in mine if "failed" in r.getMessage()]
        assert len(failed) == 1 and failed[0].levelno == logging.WARNING, failed
        assert failed[0].exc_info is None
        assert len([r for r in mine if r.getMessage().startswith("wrote")]) == 1
        # A close while the server is away: at once, and nothing left open.
        await retrying(lambda: pg.record_submits([sent("m2")], [], NOW, instance="inst-a"))
        assert confirm.held == 1
        await pg_stop(cluster, "fast")
        t0 = time.monotonic()
        await asyncio.wait_for(pg.close(), 5)
        closed = True
        TIMES["close while the server is away"] = time.monotonic() - t0
        assert confirm._watch is None and confirm._task is None
        assert any("unconfirmed at close" in r.getMessage() for r in caplog.records)
    finally:
        if not closed:
            await pg.close()
    for r in caplog.records:
        text = r.getMessage() + (str(r.exc_info[1]) if r.exc_info else "")
        assert SECRET not in text, text


# -- close -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cut_for",
    [pytest.param(0.0, id="just-cut"), pytest.param(2.5, id="cut-longer-than-a-flush-time-out")],
)
async def test_a_close_during_a_partition_returns_within_the_flush_time_out(
    dsn: str, monkeypatch: pytest.MonkeyPatch, cut_for: float
) -> None:
    monkeypatch.setattr(postgres_confirm, "FLUSH_TIMEOUT_S", 1.0)
    proxy = PartitionProxy(dsn)
    await proxy.start()
    pg = PostgresStore(proxy.dsn, min_size=1, max_size=2)
    task: asyncio.Task[None] | None = None
    try:
        await pg.open()
        await pg.create_account(account())
        await accept(pg, "m1")
        assert len(await pg.claim("inst-a", 1, NOW, LEASE)) == 1
        await pg.record_submits([sent("m1")], [], NOW, instance="inst-a")
        proxy.cut()
        await asyncio.sleep(cut_for)
        t0 = time.monotonic()
        task = asyncio.create_task(pg.close())
        # Finding 4, fixed: the last confirm is bounded by FLUSH_TIMEOUT_S, the pool's close by
        # CLOSE_TIMEOUT_S (then its connections are cut). Before, close() did not return while
        # the partition lasted (pool.close() has no time-out; the rewrite's BEGIN waited out the
        # pool's command_timeout, 60 s).
        bound = postgres_confirm.FLUSH_TIMEOUT_S + postgres.CLOSE_TIMEOUT_S + 1.0
        done, _ = await asyncio.wait({task}, timeout=bound)
        TIMES[f"close in a partition cut for {cut_for} s: returned"] = float(bool(done))
        assert done, f"close() still running after {time.monotonic() - t0:.1f} s"
    finally:
        await proxy.stop()  # the sockets close: whatever waited on them ends
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
