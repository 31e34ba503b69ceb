"""The store's half of encoding waiting messages again after a reload, on both engines:
`waiting_texts` pages through every queued, never tried message with a text, in chunks, and
`reencode` replaces a message's parts only while it is as read and never tried."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import tests.store_engines as engines
from bridge.pipeline.reencode import reencode_waiting
from bridge.smpp.router import Router
from bridge.store.base import Store
from bridge.store.models import NewMessage, NewSegment, Reencoding, Release
from bridge.text.split import EncodeOptions, encode_message, wire_code
from tests.integration.test_store import (
    LEASE,
    NOW,
    accept,
    account,
    claim_all,
    get,
    message,
    sent,
)

engine = engines.engine
store = engines.store


async def every_waiting(store: Store, limit: int) -> list[str]:
    out: list[str] = []
    after = None
    while True:
        rows, after = await store.waiting_texts(after, limit)
        out += [r.id for r in rows]
        if after is None:
            return out


def change(mid: str, was_first: bytes, parts: int = 2, was_dc: int = 0) -> Reencoding:
    return Reencoding(
        id=mid,
        was_data_coding=was_dc,
        was_first=was_first,
        encoding="ucs2",
        data_coding=8,
        segments=parts,
        parts=tuple(
            NewSegment(i, parts, 0x40, f"new {mid}/{i}".encode(), b"") for i in range(1, parts + 1)
        ),
    )


async def test_waiting_texts_pages_through_the_waiting_messages_only(store: Store) -> None:
    await store.create_account(account())
    await store.create_account(account("acc_b"))
    # Not waiting: one sent, one claimed (in flight); a message tried and given back is
    # waiting again, but not never tried.
    await accept(store, message("sent1", parts=2, at=NOW - 10))
    await accept(store, message("held1", at=NOW - 9))
    await accept(store, message("tried", at=NOW - 8))
    claimed = {w.id for w in await store.claim("inst-1", 3, NOW, LEASE)}
    assert claimed == {"sent1", "held1", "tried"}
    await store.record_submits([sent("sent1", 1)], [], NOW)
    await store.record_submits([sent("tried", 1)], [Release("tried", NOW + 1)], NOW)
    await accept(store, *(message(f"a{i:02d}", at=NOW + i) for i in range(7)))
    await accept(store, *(message(f"b{i:02d}", "acc_b", at=NOW + i) for i in range(5)))
    expected = sorted([f"a{i:02d}" for i in range(7)] + [f"b{i:02d}" for i in range(5)])
    for limit in (1, 3, 5, 100):
        assert sorted(await every_waiting(store, limit)) == expected, limit
    rows, _after = await store.waiting_texts(None, 100)
    a0 = next(r for r in rows if r.id == "a00")
    assert (a0.recipient, a0.text, a0.data_coding) == ("+8613800138000", "text of a00", 0)
    assert [(p.seq, p.short_message) for p in a0.parts] == [(1, b"a00/1")]


async def test_reencode_replaces_the_parts_of_a_message_still_as_read(store: Store) -> None:
    await store.create_account(account())
    await accept(store, message("m1"), message("m2"), message("m3", parts=3))
    done = await store.reencode(
        [
            change("m1", b"m1/1"),
            change("m2", b"not what was read"),  # changed since it was read: left alone
            change("m3", b"m3/1", parts=2, was_dc=8),  # data_coding not as read
        ],
        NOW,
    )
    assert done == 1
    m1 = await get(store, "m1")
    assert (m1.encoding, m1.data_coding, m1.segments) == ("ucs2", 8, 2)
    assert [s.seq for s in m1.segment_rows] == [1, 2]
    assert {s.state for s in m1.segment_rows} == {"queued"}
    rows, _ = await store.waiting_texts(None, 10)
    parts = {r.id: [p.short_message for p in r.parts] for r in rows}
    assert parts["m1"] == [b"new m1/1", b"new m1/2"]
    assert parts["m2"] == [b"m2/1"] and len(parts["m3"]) == 3
    # What the dispatcher claims is the new parts, in order.
    work = {w.id: w for w in await claim_all(store)}
    assert [s.short_message for s in work["m1"].segments] == [b"new m1/1", b"new m1/2"]


async def test_reencode_leaves_a_message_claimed_or_tried_since(store: Store) -> None:
    await store.create_account(account())
    await accept(store, message("c1"), message("t1"))
    assert {w.id for w in await claim_all(store)} == {"c1", "t1"}
    assert await store.reencode([change("c1", b"c1/1")], NOW) == 0  # in flight
    await store.record_submits([sent("t1", 1)], [Release("t1", NOW + 1)], NOW)
    await store.record_submits([], [Release("c1", NOW + 1, count_attempt=False)], NOW)
    assert await store.reencode([change("t1", b"t1/1")], NOW) == 0  # reached the SMSC once
    assert await store.reencode([change("c1", b"c1/1")], NOW) == 1  # back in the queue untried


async def test_the_route_table_is_kept_and_replaced(store: Store) -> None:
    assert await store.route_table() is None  # a new store, or one upgraded: none kept
    await store.keep_route_table('{"routes": []}', NOW)
    assert await store.route_table() == '{"routes": []}'
    await store.keep_route_table('{"routes": [["+86", ["cn"]]]}', NOW + 1)
    assert await store.route_table() == '{"routes": [["+86", ["cn"]]]}'


def test_the_expiry_sweep_reads_the_expiring_index_not_the_queue(tmp_path: Path) -> None:
    """SQLite: the sweep found expired messages by reading every queued row (0.17-0.21 s of
    write lock every 5 s with a million queued); it reads the partial index of those with a
    validity (migration 0023), as PostgreSQL's has since 0001."""
    from bridge.store.migrate import migrations
    from bridge.store.sqlite import EXPIRED_QUEUED

    c = sqlite3.connect(tmp_path / "x.db")
    for _v, _name, script in migrations("sqlite"):
        c.executescript(script)
    plan = " ".join(str(r[3]) for r in c.execute(f"EXPLAIN QUERY PLAN {EXPIRED_QUEUED}", (NOW,)))
    assert "messages_expiring" in plan and "expires_at<?" in plan, plan


async def test_the_wire_stamp_is_stored_claimed_and_replaced(store: Store) -> None:
    """`messages.wire`: the wire options a message's parts were encoded for, as accepted (one
    message, and several in one request: PostgreSQL writes them by two statements), read by
    the pass and the claim, replaced with new parts, or alone (a restamp) while as read."""
    await store.create_account(account())
    await accept(store, replace(message("m1"), wire=5))
    await accept(store, replace(message("m2"), wire=5), message("m3"))
    rows, _ = await store.waiting_texts(None, 10)
    assert {r.id: r.wire for r in rows} == {"m1": 5, "m2": 5, "m3": None}
    done = await store.reencode(
        [replace(change("m1", b"m1/1"), wire=7)],
        NOW,
        restamps=[("m2", 5, 7), ("m3", 6, 7)],  # m3: not as read (no stamp), left alone
    )
    assert done == 1
    rows, _ = await store.waiting_texts(None, 10)
    assert {r.id: r.wire for r in rows} == {"m1": 7, "m2": 7, "m3": None}
    # (The count is of parts replaced: a restamp alone counts none.)
    assert await store.reencode([], NOW, restamps=[("m3", None, 7)]) == 0
    work = {w.id: w for w in await claim_all(store)}
    assert {mid: w.wire for mid, w in work.items()} == {"m1": 7, "m2": 7, "m3": 7}
    # Claimed: the pass's restamp leaves it to the claimer.
    assert await store.reencode([], NOW, restamps=[("m2", 7, 3)]) == 0
    assert (await store.claimed_text("inst-1", "m2")).wire == 7  # type: ignore[union-attr]


async def test_a_claimed_message_is_encoded_again_by_its_claimer_only(store: Store) -> None:
    """What the dispatcher does with a claimed message encoded for other wire options: reads
    its text and parts (`claimed_text`), and replaces them while it holds the claim and the
    message was never tried (`reencode(..., claimed_by=)`)."""
    await store.create_account(account())
    await accept(store, replace(message("c1"), wire=1), replace(message("c2"), wire=1))
    assert {w.id for w in await claim_all(store)} == {"c1", "c2"}
    got = await store.claimed_text("inst-1", "c1")
    assert got is not None
    assert (got.id, got.recipient, got.text, got.data_coding, got.wire) == (
        "c1",
        "+8613800138000",
        "text of c1",
        0,
        1,
    )
    assert [(p.seq, p.short_message) for p in got.parts] == [(1, b"c1/1")]
    assert await store.claimed_text("inst-2", "c1") is None  # another instance's claim
    new = replace(change("c1", b"c1/1"), wire=4)
    assert await store.reencode([new], NOW) == 0  # not queued
    assert await store.reencode([new], NOW, claimed_by="inst-2") == 0
    assert await store.reencode([new], NOW, claimed_by="inst-1") == 1
    got = await store.claimed_text("inst-1", "c1")
    assert got is not None and got.wire == 4
    assert [p.short_message for p in got.parts] == [b"new c1/1", b"new c1/2"]
    # Tried (a part reached the SMSC): nothing to encode again.
    await store.record_submits([sent("c2", 1)], [Release("c2", NOW + 1)], NOW)
    assert await store.claimed_text("inst-1", "c2") is None


async def test_the_pass_stamps_what_it_looked_at_and_skips_what_is_stamped_already(
    store: Store,
) -> None:
    """After a reload that turned Latin-1 on (a GSM text's bytes stay the same), the pass leaves
    every message of the route stamped for the new options: one whose bytes it replaced, one
    whose bytes were right (stamp only), one accepted without a stamp; a message stamped for
    them already (accepted since the reload) is not encoded again. The claims that follow then
    find nothing to encode again."""
    await store.create_account(account())
    before = EncodeOptions(allow_latin1=False)
    after = EncodeOptions(allow_latin1=True)

    def encoded(mid: str, text: str, opts: EncodeOptions, wire: int | None) -> NewMessage:
        enc = encode_message(text, opts, 0)
        parts = tuple(
            NewSegment(p.seq, p.total, p.esm_class, p.short_message, b"") for p in enc.parts
        )
        return replace(
            message(mid), text=text, data_coding=enc.data_coding, segments=parts, wire=wire
        )

    await accept(
        store,
        encoded("gsm", "plain", before, wire_code(before)),
        encoded("unstamped", "plain", before, None),
        encoded("latin", "naïve", before, wire_code(before)),  # UCS-2 before, Latin-1 now
        replace(
            encoded("new", "plain", after, wire_code(after)),
            segments=(NewSegment(1, 1, 0, b"as is", b""),),
        ),
    )
    router = Router([], ["sim"])
    seen, changed = await reencode_waiting(
        store, router, {"sim": after}, {"default"}, lambda _n, _b: 1, NOW
    )
    assert (seen, changed) == (4, 1)
    rows, _ = await store.waiting_texts(None, 10)
    assert {r.id: r.wire for r in rows} == dict.fromkeys(
        ("gsm", "unstamped", "latin", "new"), wire_code(after)
    )
    by_id = {r.id: r for r in rows}
    assert by_id["latin"].data_coding == 3
    assert by_id["new"].parts[0].short_message == b"as is"  # trusted by its stamp
