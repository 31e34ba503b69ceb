"""Session 39: two gaps in the erasure of a recipient's waiting reply parts, on both engines.

1. An erasure (and a close) dropped the waiting parts of long replies only where the account
   had written to the number from the address they went to. A reply to an address the operator
   assigned to the account alone is the account's whoever wrote (the inbound attribution gives
   it to the account), so its waiting parts were left with the erased person's text. They go
   now; a range does not claim an SMSC's default source (as for attribution), and an address
   several accounts hold is left to history, as before.
2. A long reply completing while the number was erased could be stored whole after the erasure:
   `_mo` read the complete set in add_mo_part's transaction and stored the MO in a later one,
   so an erasure committed in between left the MO it then stored (with the erased part's text)
   unmasked in mo_inbox. On PostgreSQL, in addition, the erasure took no lock against
   add_mo_part (which could read a part, see it erased, and complete the message with it) nor
   against the assembly's check that its parts were still kept. The long MO is now stored only
   while its parts are (store_mo_from_parts: one transaction with their drop), and the
   PostgreSQL erasure takes the reference lock add_mo_part and store_mo_from_parts take.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
import pytest  # noqa: E402

from bridge.domain.phone import mo_source_forms  # noqa: E402
from bridge.store import postgres_pipeline as pg_pipe  # noqa: E402
from bridge.store.mo_rows import MO_COLS, MO_PART_COLS, mo_part, mo_values  # noqa: E402
from bridge.store.models import AcceptBatch, MoMessage  # noqa: E402
from tests.e2e.harness import ADMIN_TOKEN  # noqa: E402
from tests.integration.test_incomplete_mo import (  # noqa: E402
    DEST,
    PHONE,
    Clock,
    account,
    deliver,
    inbound,
    part_pdu,
    sent_before,
)
from tests.integration.test_session37_receipt_and_mo_columns import (  # noqa: E402
    CN,
    EngineHandle,
    Store,
    _part,
    _sql,
    client_for,
    daemon,
    engine,
    store,
)
from tests.integration.test_store import NOW, message  # noqa: E402

__all__ = ["daemon", "engine", "store"]  # fixtures, bound here

SEC = 1_000


async def _waiting(engine: EngineHandle) -> list[tuple[str, str, bytes]]:
    rows = await _sql(engine, "SELECT source, destination, payload FROM mo_parts")
    return sorted((r[0], r[1], bytes(r[2])) for r in rows)


async def _holding(store: Store, aid: str, senders: tuple[str, ...]) -> None:
    await store.create_account(replace(account(aid), senders=senders))


# -- 1. replies to the account's assigned addresses -----------------------------------------------


async def test_erasure_drops_waiting_parts_to_an_address_the_account_holds_alone(
    store: Store, engine: EngineHandle
) -> None:
    """acc_a never wrote to the number; replies from it to an address acc_a alone holds (exact,
    or in its range) are acc_a's. Its range does not claim smscA's default source; an address
    another account holds, or several do, is not acc_a's by assignment."""
    await _holding(store, "acc_a", ("10690001", "10691*", "10690003"))
    await _holding(store, "acc_b", ("10690002", "10690003"))
    for ref, dest in enumerate(
        ("10690001", "1069155", "+10690001", "10691999", "10690002", "10690003", "95588")
    ):
        await store.add_mo_part(_part(1, dest.encode(), dest=dest, ref=ref))
    await store.add_mo_part(_part(1, b"stranger", source="8613900139000", dest="10690001"))
    n = await store.erase_recipient(
        "acc_a", CN, "+86***", NOW + 1, mo_defaults={"smscA": "+10691999"}
    )
    assert n == 0
    assert await _waiting(engine) == [
        ("8613800138000", "10690002", b"10690002"),  # acc_b's
        ("8613800138000", "10690003", b"10690003"),  # held by both: history decides
        ("8613800138000", "10691999", b"10691999"),  # the default source, in acc_a's range
        ("8613800138000", "95588", b"95588"),  # nobody's
        ("8613900139000", "10690001", b"stranger"),  # another number
    ]
    # acc_b erasing the number drops its own (and, held by both and never written from, not
    # the shared one).
    await store.erase_recipient("acc_b", CN, "+86***", NOW + 2)
    assert [w[1] for w in await _waiting(engine)] == ["10690003", "10691999", "95588", "10690001"]


async def test_close_drops_waiting_parts_from_anyone_to_the_addresses_it_holds(
    store: Store, engine: EngineHandle
) -> None:
    """A close erases every number: the waiting parts to an address it alone holds go whoever
    sent them, including numbers it never wrote to; others' stay."""
    await _holding(store, "acc_a", ("ACME", "10691*"))
    await _holding(store, "acc_b", ("95588",))
    await store.add_mo_part(_part(1, b"a1", source="8613700137000", dest="acme"))  # any case
    await store.add_mo_part(_part(1, b"a2", source="447700900123", dest="106910"))
    await store.add_mo_part(_part(1, b"def", source="447700900123", dest="10691", ref=3))
    await store.add_mo_part(_part(1, b"b", source="8613700137000", dest="95588", ref=4))
    assert await store.close_account("acc_a", NOW + 1, mo_defaults={"smscA": "10691"})
    assert sorted(w[2] for w in await _waiting(engine)) == [b"b", b"def"]


async def test_erasure_over_the_api_drops_parts_to_the_accounts_address(
    daemon: Callable[..., Any], engine: EngineHandle
) -> None:
    """POST /v1/recipients/{n}/erase and the admin close pass the SMSCs' default sources: the
    account holds 1069* and never wrote to the number; the part to 10695 goes, the one to the
    SMSC's default source 10690 (in the range, not claimed by it) stays until the close, which
    does not take it either."""
    d = await daemon(smscs=[{"default_source": "10690"}])
    assert d.store is not None
    account_id = d.test_creds["account"]  # type: ignore[attr-defined]
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    base = f"http://127.0.0.1:{d.http_port}/admin/accounts/{account_id}"
    async with aiohttp.ClientSession() as http:
        async with http.patch(base, headers=headers, json={"senders": ["1069*"]}) as r:
            assert r.status == 200, await r.text()
        await d.store.add_mo_part(replace(_part(1, b"mine", dest="10695"), smsc="sim"))
        await d.store.add_mo_part(replace(_part(1, b"default", dest="10690"), smsc="sim"))
        async with client_for(d.http_port, d.test_creds) as c:  # type: ignore[attr-defined]
            erased = await c.erase_recipient(CN)
        assert erased["messages_erased"] == 0
        assert [w[2] for w in await _waiting(engine)] == [b"default"]
        await d.store.add_mo_part(
            replace(_part(1, b"x", source="447700900123", dest="10697"), smsc="sim")
        )
        async with http.post(base + "/close", headers=headers, json={}) as r:
            assert r.status == 200, await r.text()
    assert [w[2] for w in await _waiting(engine)] == [b"default"]


# -- 2. an erasure committing while a long reply is assembled --------------------------------------


class EraseDuring:
    """The store, except that the number's erasure (by acc_a) commits right after `step`
    returns, once: after add_mo_part handed `_mo` the complete set, or after the reply was
    attributed (to acc_a, by history or by assignment), before the MO is stored."""

    def __init__(self, inner: Store, step: str) -> None:
        self.inner = inner
        self.step = step
        self.erased = False

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.inner, name)
        if name != self.step:
            return real

        async def then_erase(*args: Any, **kw: Any) -> Any:
            out = await real(*args, **kw)
            # attribute_mo answers None for an account that never wrote (assigned): still.
            if (out is not None or name == "attribute_mo") and not self.erased:
                self.erased = True
                await self.inner.erase_recipient(
                    "acc_a", PHONE, "+86***", NOW + 2 * SEC, mo_source_forms(PHONE)
                )
            return out

        return then_erase


@pytest.mark.parametrize("step", ["add_mo_part", "attribute_mo"])
@pytest.mark.parametrize("owner", ["history", "assigned"])
async def test_a_reply_completing_during_an_erasure_is_not_stored_after_it(
    store: Store, engine: EngineHandle, step: str, owner: str
) -> None:
    """Part 1 waits; part 2 completes the reply; the erasure of the number commits between the
    completing part's transaction and the MO's store. The MO is not stored (its parts are gone
    with the erasure), so the erased text never lands in the inbox, masked or not."""
    if owner == "history":
        await store.create_account(account("acc_a"))
        await sent_before(store, "acc_a")
    else:  # never wrote to the number: DEST is its own
        await _holding(store, "acc_a", (DEST,))
    clock = Clock()
    handler = inbound(EraseDuring(store, step), clock)
    await deliver(handler, clock, NOW, part_pdu(b"secret ", 1, 2))
    await deliver(handler, clock, NOW + SEC, part_pdu(b"text", 2, 2))
    assert await _sql(engine, "SELECT account_id, source, text FROM mo_inbox") == []
    assert await _waiting(engine) == []
    assert handler.mo == 0
    # Nothing left for the sweep to bring back either.
    assert await handler.flush_stale_mo(NOW + 3600 * SEC, timeout_ms=0) == 0


async def test_a_reply_stored_before_the_erasure_is_masked_by_it(
    store: Store, engine: EngineHandle
) -> None:
    """The other order: the MO committed first (its parts dropped with it); the erasure masks
    it."""
    await store.create_account(account("acc_a"))
    await sent_before(store, "acc_a")
    clock = Clock()
    handler = inbound(store, clock)
    await deliver(handler, clock, NOW, part_pdu(b"secret ", 1, 2))
    await deliver(handler, clock, NOW + SEC, part_pdu(b"text", 2, 2))
    await store.erase_recipient("acc_a", PHONE, "+86***", NOW + 2 * SEC, mo_source_forms(PHONE))
    assert await _sql(engine, "SELECT account_id, source, text FROM mo_inbox") == [
        ("acc_a", "+86***", None)
    ]


def _pg_only(engine: EngineHandle) -> None:
    if engine.name != "postgres":
        pytest.skip("SQLite has one writer at a time: no transaction runs inside another")


async def _blocked_on_advisory(engine: EngineHandle, task: asyncio.Task[Any]) -> bool:
    """Wait until `task` either ends or some transaction waits for an advisory lock (the
    erasure on the MO reference lock held by the test's connection); which came first."""
    for _ in range(400):
        if task.done():
            return False
        rows = await _sql(
            engine,
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())",
        )  # this test's database only: another test's may share the cluster
        if rows:
            return True
        await asyncio.sleep(0.025)
    raise AssertionError("the erasure neither finished nor waited")


def _mo_key(smsc: str, source: str, dest: str, ref: int) -> str:
    return "\x1f".join((smsc, source, dest, str(ref)))


async def test_pg_erasure_waits_for_a_part_being_added_and_drops_it_too(
    store: Store, engine: EngineHandle
) -> None:
    """add_mo_part's transaction, driven by hand on a second connection: it holds the
    reference's lock and has read part 1; the erasure starts. It must wait for the lock (else
    it drops part 1 under the reader, which then completes the message with it), and then drop
    part 2 as well: nothing is left to assemble or sweep."""
    _pg_only(engine)
    await store.create_account(account("acc_a"))
    await store.accept(AcceptBatch("acc_a", (message("m1", recipient=CN),), None, None), NOW)
    p1, p2 = _part(1, b"secret-1"), _part(2, b"secret-2")
    assert await store.add_mo_part(p1) is None
    conn = await asyncpg.connect(engine.location)
    try:
        tx = conn.transaction()
        await tx.start()
        await pg_pipe.lock_keys(conn, pg_pipe.NS_MO, [_mo_key("smscA", p1.source, "1069", 7)])
        held = await conn.fetch(f"SELECT {MO_PART_COLS} FROM mo_parts")
        assert [mo_part(r).seq for r in held] == [1]
        erasing = asyncio.ensure_future(
            store.erase_recipient("acc_a", CN, "+86***", NOW + 1, mo_source_forms(CN))
        )
        waited = await _blocked_on_advisory(engine, erasing)
        await conn.execute(
            f"INSERT INTO mo_parts ({MO_PART_COLS}) VALUES "
            "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            *(p2.smsc, p2.source, p2.destination, p2.ref, p2.total, p2.seq, p2.data_coding,
              p2.payload, p2.received_at, p2.source_ton, 0, 0, 0),
        )  # fmt: skip
        await tx.commit()
        assert await erasing == 1
    finally:
        await conn.close()
    assert waited, "the erasure did not wait for the reference's lock"
    assert await _waiting(engine) == []
    # The reader's complete set [1, 2] is no longer kept: its store does nothing.
    mo = MoMessage("mo_x", "acc_a", "smscA", CN, "1069", "secret-1secret-2", NOW, None)
    assert await store.store_mo_from_parts(mo, [p1, p2]) is None
    assert await _sql(engine, "SELECT id FROM mo_inbox") == []


async def test_pg_erasure_waits_for_an_mo_being_stored_and_masks_it(
    store: Store, engine: EngineHandle
) -> None:
    """store_mo_from_parts's transaction, driven by hand: it holds the reference's lock, found
    its parts, stored the MO; the erasure starts meanwhile. It must wait (else it masks the
    inbox before that MO is committed, which then lands unmasked) and mask the MO after."""
    _pg_only(engine)
    await store.create_account(account("acc_a"))
    await store.accept(AcceptBatch("acc_a", (message("m1", recipient=CN),), None, None), NOW)
    await store.add_mo_part(_part(1, b"secret-1"))
    await store.add_mo_part(_part(2, b"secret-2"))
    mo = MoMessage("mo_x", "acc_a", "smscA", CN, "1069", "secret-1secret-2", NOW, None)
    conn = await asyncpg.connect(engine.location)
    try:
        tx = conn.transaction()
        await tx.start()
        await pg_pipe.lock_keys(conn, pg_pipe.NS_MO, [_mo_key("smscA", "8613800138000", "1069", 7)])
        assert len(await conn.fetch("SELECT seq FROM mo_parts")) == 2
        erasing = asyncio.ensure_future(
            store.erase_recipient("acc_a", CN, "+86***", NOW + 1, mo_source_forms(CN))
        )
        waited = await _blocked_on_advisory(engine, erasing)
        values = mo_values(mo)
        marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
        await conn.execute(f"INSERT INTO mo_inbox ({MO_COLS}) VALUES ({marks})", *values)
        await conn.execute("DELETE FROM mo_parts")
        await tx.commit()
        assert await erasing == 1
    finally:
        await conn.close()
    assert waited, "the erasure did not wait for the reference's lock"
    assert await _sql(engine, "SELECT account_id, source, text FROM mo_inbox") == [
        ("acc_a", "+86***", None)
    ]
