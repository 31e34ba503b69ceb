"""Session 37: receipts and MO data, clean and private, on both store engines.

1. Migration 0022: the mark of a part settled by another part's receipt (smscs[].receipts:
   one_per_message) was a suffix of segments.error_code, and the set number of a long MO kept
   under a reused concatenation reference was packed into mo_parts.ref above 16 bits (session
   36, to spare a migration). Both are columns now (segments.receipt_inferred_from,
   mo_parts.set_no); rows written in the packed forms before the upgrade are converted.
2. smpp_bridge_receipts_inferred_total counts the parts settled by inference, by SMSC.
   (Erasure and the waiting MO parts: test_session37_erasure_mo_parts.py.)
3. A reload (or a restart) that switches an SMSC to one_per_message left a message whose one
   receipt came before it with its other parts sent, waiting out the 72 h receipt timeout to
   end unknown: the sweeper now settles them by that receipt.
"""

from __future__ import annotations

import re
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bridge.app import Daemon
from bridge.config import parse_config
from bridge.store.base import Store
from bridge.store.models import AcceptBatch, MoPart

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from tests.e2e.harness import (  # noqa: E402
    WebhookReceiver,
    client_for,
    config_dict,
    create_account,
    final_status,
    wait_until,
)
from tests.integration.test_store import NOW, account, message  # noqa: E402
from tests.store_engines import EngineHandle, schema_before  # noqa: E402

engine = engines.engine
store = engines.store

CN = "+8613800138000"
OTHER = "+8613900139000"


async def _sql(engine: EngineHandle, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one statement on the engine's database behind the store ("?" marks: the SQLite
    form, turned into $n for PostgreSQL); the rows it returns."""
    if engine.name == "sqlite":
        c = sqlite3.connect(engine.location)
        try:
            with c:
                return [tuple(r) for r in c.execute(sql, args).fetchall()]
        finally:
            c.close()
    n = iter(range(1, 100))
    pg = re.sub(r"\?", lambda _m: f"${next(n)}", sql)
    pc = await asyncpg.connect(engine.location)
    try:
        return [tuple(r) for r in await pc.fetch(pg, *args)]
    finally:
        await pc.close()


def _part(seq: int, payload: bytes, *, source: str = "8613800138000", dest: str = "1069",
          ref: int = 7, total: int = 2, at: int = NOW) -> MoPart:  # fmt: skip
    return MoPart("smscA", source, dest, ref, total, seq, 0, payload, at, 1)


# -- 1. migration 0022 -----------------------------------------------------------------------------


async def test_packed_rows_written_before_0022_are_read_back_from_the_columns(
    engine: EngineHandle,
) -> None:
    s = engine.new_store()
    await s.open()
    await s.create_account(account())
    await s.accept(AcceptBatch("acc_a", (message("m1", parts=5),), None, None, None), NOW)
    await s.close()
    await schema_before(engine, 22, 22)  # the release before: the packed forms
    packed = {
        1: "UNDELIV:001;INFERRED_FROM_PART_3",
        2: "INFERRED_FROM_PART_3",
        3: "UNDELIV:001",  # part 3's own receipt
        4: "XINFERRED_FROM_PART_3",  # not the mark: an error code that merely ends so
        5: None,
    }
    for seq, code in packed.items():
        await _sql(
            engine,
            "UPDATE segments SET state = 'undeliverable', error_code = ? "
            "WHERE message_id = 'm1' AND seq = ?",
            code,
            seq,
        )
    # Two long MOs under reference 7 from one number, each holding a part 1: set 0 and set 2
    # (ref 7 + 2 * 65536), as session 36 kept them; and a 16-bit reference of set 0.
    for ref, seq, payload in ((7, 1, b"A1"), (7 + 2 * 65536, 1, b"B1"), (40000, 2, b"C2")):
        await _sql(
            engine,
            "INSERT INTO mo_parts (smsc, source, destination, ref, total, seq, data_coding, "
            "payload, received_at, source_ton) VALUES ('smscA', '861', '1069', ?, 2, ?, 0, ?, "
            "?, 1)",
            ref,
            seq,
            payload,
            NOW,
        )

    s = engine.new_store()
    await s.open()  # migrates
    try:
        m = await s.get_message("acc_a", "m1")
        assert m is not None
        assert [(p.error_code, p.receipt_inferred_from) for p in m.segment_rows] == [
            ("UNDELIV:001", 3),
            (None, 3),
            ("UNDELIV:001", None),
            ("XINFERRED_FROM_PART_3", None),
            (None, None),
        ]
        raw = await _sql(
            engine, "SELECT error_code FROM segments WHERE message_id = 'm1' ORDER BY seq"
        )
        assert [r[0] for r in raw] == ["UNDELIV:001", None, "UNDELIV:001",
                                       "XINFERRED_FROM_PART_3", None]  # fmt: skip
        groups = await s.stale_mo_groups(NOW + 1, 10)
        assert sorted((p.ref, p.set_no, p.seq, p.payload) for g in groups for p in g) == [
            (7, 0, 1, b"A1"),
            (7, 2, 1, b"B1"),
            (40000, 0, 2, b"C2"),
        ]
        assert len(groups) == 3  # two sets of one reference stay two messages
        # New parts place themselves among the converted ones: B's part 2 completes set 2.
        got = await s.add_mo_part(_part(2, b"B2", source="861"))
        assert got is not None and [(p.set_no, p.payload) for p in got] == [(2, b"B1"), (2, b"B2")]
    finally:
        await s.close()


async def test_mo_sets_are_kept_in_their_own_column(store: Store, engine: EngineHandle) -> None:
    """Two messages under one reference, each with a part 1: two rows with the reference as it
    came and set numbers 0 and 1 (no longer 65543 for the second)."""
    assert await store.add_mo_part(_part(1, b"A1")) is None
    assert await store.add_mo_part(_part(1, b"B1")) is None
    rows = await _sql(engine, "SELECT ref, set_no, payload FROM mo_parts ORDER BY set_no")
    assert [(r[0], r[1], bytes(r[2])) for r in rows] == [(7, 0, b"A1"), (7, 1, b"B1")]
    done = await store.add_mo_part(_part(2, b"B2"))
    assert done is not None and [p.payload for p in done] == [b"B1", b"B2"]
    await store.drop_mo_parts("smscA", "8613800138000", "1069", 7, done[0].set_no)
    rows = await _sql(engine, "SELECT ref, set_no, payload FROM mo_parts")
    assert [(r[0], r[1], bytes(r[2])) for r in rows] == [(7, 0, b"A1")]


@pytest.fixture
async def daemon(tmp_path: Path, engine: EngineHandle) -> AsyncIterator[Callable[..., Any]]:
    """start(**extra config) -> a started daemon on this engine; a receiver on its account's
    status and MO URLs (d.test_hook), the account's credentials (d.test_creds)."""
    started: list[Daemon] = []
    hooks: list[WebhookReceiver] = []

    async def go(**extra: Any) -> Daemon:
        hook = WebhookReceiver()
        await hook.start()
        hooks.append(hook)
        store = (
            {"engine": "sqlite", "path": engine.location}
            if engine.name == "sqlite"
            else {"engine": "postgres", "dsn": engine.location}
        )
        data = config_dict(tmp_path, store=store, **extra)
        d = Daemon(parse_config(data, env={}, base_dir=tmp_path))
        started.append(d)
        await d.start()
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        creds = await create_account(
            d, "s37", mo_callback_url=hook.url, status_callback_url=hook.url
        )
        d.test_creds = creds  # type: ignore[attr-defined]
        d.test_hook = hook  # type: ignore[attr-defined]
        d.raw_config = data  # type: ignore[attr-defined]  # for a reload
        return d

    try:
        yield go
    finally:
        for d in started:
            await d.stop()
        for h in hooks:
            await h.stop()


# -- 2. the metric ---------------------------------------------------------------------------------


def _inferred_of(d: Daemon) -> dict[str, float]:
    text = d.metrics.exposition().decode()
    found = re.findall(r'^smpp_bridge_receipts_inferred_total\{smsc="([^"]+)"\} (\S+)$', text, re.M)
    return {smsc: float(v) for smsc, v in found}


UCS2_3_PARTS = "你好" * 100  # 3 parts


async def test_parts_settled_by_inference_are_counted_by_smsc(
    daemon: Callable[..., Any],
) -> None:
    d = await daemon(
        sim={"receipt_parts": "last"},
        smscs=[{"name": "sim", "receipts": "one_per_message"}],
    )
    assert _inferred_of(d) == {}
    async with client_for(d.http_port, d.test_creds) as c:  # type: ignore[attr-defined]
        sent = (await c.send(CN, text=UCS2_3_PARTS))["messages"][0]
        m = await final_status(c, sent["id"], 10)
        assert [p["receipt_inferred_from"] for p in m["parts"]] == [3, 3, None]
        # Counted once the receipts' write has returned: it may trail the committed answer.
        await wait_until(lambda: _inferred_of(d) == {"sim": 2.0}, 5)
        single = (await c.send(CN, text="one part"))["messages"][0]
        assert (await final_status(c, single["id"], 10))["status"] == "delivered"
    inbound = d.inbound
    assert inbound is not None
    # Both receipts' writes returned: counted whether matched at once or kept until their
    # submit's result was recorded (a receipt 10 ms after its submit may come first).
    await wait_until(lambda: inbound.receipts == 2, 10)
    assert _inferred_of(d) == {"sim": 2.0}  # a part's own receipt is not counted


# -- 3. a switch to one_per_message and the receipts that came before it ------------------------


async def test_a_switch_to_one_per_message_settles_what_its_earlier_receipts_stand_for(
    daemon: Callable[..., Any], tmp_path: Path
) -> None:
    d = await daemon(sim={"receipt_parts": "first"})  # every_part: the carrier's one receipt
    hook = d.test_hook  # type: ignore[attr-defined]
    inbound = d.inbound
    assert inbound is not None
    async with client_for(d.http_port, d.test_creds) as c:  # type: ignore[attr-defined]
        sent = (await c.send(CN, text=UCS2_3_PARTS))["messages"][0]

        async def first_receipted() -> dict[str, Any] | None:
            # Applied at once or kept until the submit results were recorded (a receipt 10 ms
            # after part 1's submit may come before them): the part's state says, not `matched`.
            m = await c.message(sent["id"])
            return m if m["parts"][0]["status"] not in ("queued", "sent") else None

        m = await wait_until(first_receipted, 10)
        assert [p["status"] for p in m["parts"]] == ["delivered", "sent", "sent"]
        assert m["status"] == "sent"
        data = d.raw_config  # type: ignore[attr-defined]
        data["smscs"][0]["receipts"] = "one_per_message"
        await d.reload(parse_config(data, env={}, base_dir=tmp_path))
        m = await final_status(c, sent["id"], 15)  # the sweeper's next round (5 s)
        assert m["status"] == "delivered" and m["segments_delivered"] == 3, m
        assert [p["receipt_inferred_from"] for p in m["parts"]] == [None, 1, 1]
        # As of that receipt, never before their own submission (lifecycle.infer_earlier): a
        # part submitted after part 1's receipt was dated (10 ms on) takes its submission's time.
        first_done = m["parts"][0]["done_at"]
        assert [p["done_at"] for p in m["parts"]] == [
            first_done,
            *(max(first_done, p["submitted_at"]) for p in m["parts"][1:]),
        ]
        await wait_until(lambda: [r for r in hook.reports if r.get("message_id") == sent["id"]])
        [report] = [r for r in hook.reports if r.get("message_id") == sent["id"]]
        assert report["status"] == "delivered" and report["receipt_inferred_from"] == 1
        assert _inferred_of(d) == {"sim": 2.0}
