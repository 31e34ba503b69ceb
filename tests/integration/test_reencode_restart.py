"""Waiting messages encoded again when their route encodes otherwise: across a restart, and
without holding up the other routes.

Session 36 encoded a route's waiting messages again after a *reload* that changed how it
encodes, before the next claim. Two gaps, both closed in session 37:
- A restart with the edited file (what `systemctl restart` does, and what a change of a
  restart-only setting needs anyway) compared nothing: the waiting messages went out as they
  were stored. "Hello world" accepted before `packed_gsm: true` was set showed
  "HJ1cv<CR>H;od1#". The store now keeps the route table the waiting messages were encoded for
  (`route_table`, Router.to_json) and a start compares it with the configuration it runs.
- The pass held every claim while it paged the whole queue (14-32 s per million waiting
  messages, session 36's measurement), so routes the reload did not touch stopped sending too.
  It now runs in the background; claims park the routes it has yet to finish, as a down route's.

The real daemon (HTTP API, dispatcher, SQLite file) against the scripted carrier of the session
34 review over real TCP; what it puts on the wire is decoded independently.
"""

from __future__ import annotations

import asyncio
import copy
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bridge.config import parse_config
from bridge.smpp.router import Route, Router
from tests.e2e.harness import client_for, create_account, wait_until
from tests.integration.conftest import CN_MOBILE
from tests.integration.test_session34_carrier_review import Carrier
from tests.integration.test_session35_text_review import (
    _conf,
    gsm_text_of,
    running,
    submits_by,
    unpack,
)

UK_MOBILE = "+447700900123"


@pytest.fixture
async def smsc() -> AsyncIterator[Carrier]:
    c = Carrier()
    await c.start()
    yield c
    await c.stop()


def _kept_table(tmp_path: Path) -> str | None:
    db = sqlite3.connect(tmp_path / "bridge.db")
    try:
        row = db.execute("SELECT router FROM route_table").fetchone()
        return row[0] if row else None
    finally:
        db.close()


async def test_a_restart_with_packed_gsm_set_sends_the_waiting_message_packed(
    tmp_path: Path, smsc: Carrier
) -> None:
    text = "Hello world"
    before = _conf(tmp_path, smsc.port, [{"name": "carrier"}])
    after = copy.deepcopy(before)
    after["smscs"][0]["packed_gsm"] = True
    async with running(tmp_path, before) as d:
        await wait_until(lambda: smsc.bound(), 10)
        creds = await create_account(d, "packed")
        at = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
        async with client_for(d.http_port, creds) as c:
            await c.send(CN_MOBILE, text=text, scheduled_at=at)
    assert not smsc.submits()
    kept = _kept_table(tmp_path)
    assert kept is not None and '"carrier": ["udh8", false' in kept  # unpacked, as stored
    async with running(tmp_path, after) as d:  # the edited file, started again
        await wait_until(lambda: smsc.submits(), 10)
        async with client_for(d.http_port, creds) as c:
            await c.send(CN_MOBILE, text=text)  # accepted after the restart: packed
            await wait_until(lambda: len(smsc.submits()) == 2, 10)
        await wait_until(lambda: '"carrier": ["udh8", true' in (_kept_table(tmp_path) or ""), 5)
    old, new = smsc.submits()
    assert gsm_text_of(unpack(new.short_message, 0)) == text  # 10 octets, 11 septets
    assert old.short_message == new.short_message, (old.short_message.hex(), new.short_message)


async def test_a_restart_that_moves_a_route_to_an_smsc_without_latin1_sends_as_it_reads(
    tmp_path: Path, smsc: Carrier
) -> None:
    text = "Garçon, ça coûte 5 francs: réponds vite!"
    smscs = [{"name": "latin", "allow_latin1": True}, {"name": "plain"}]
    before = _conf(tmp_path, smsc.port, smscs, routes=[{"prefix": "+86", "smscs": ["latin"]}],
                   default_route=["latin"])  # fmt: skip
    after = copy.deepcopy(before)
    after["routes"] = [{"prefix": "+86", "smscs": ["plain"]}]
    after["default_route"] = ["plain"]
    async with running(tmp_path, before) as d:
        await wait_until(lambda: len(smsc.bound()) == 2, 10)
        creds = await create_account(d, "reroute")
        at = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
        async with client_for(d.http_port, creds) as c:
            r = await c.send(CN_MOBILE, text=text, scheduled_at=at)
            assert r["messages"][0]["encoding"] == "latin1"
    async with running(tmp_path, after):
        await wait_until(lambda: submits_by(smsc, "plain"), 10)
    assert not submits_by(smsc, "latin")
    sm = submits_by(smsc, "plain")[0]
    assert sm.data_coding in (0, 8), f"data_coding {sm.data_coding} sent to an SMSC without Latin-1"
    body = sm.short_message
    assert (body.decode("utf-16-be") if sm.data_coding == 8 else gsm_text_of(body)) == text


async def test_other_routes_are_sent_while_a_reload_encodes_one_again(
    tmp_path: Path, smsc: Carrier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """+86 goes to `cn`, the rest to `uk`. A reload sets `packed_gsm` on `cn`; its pass is held
    (the store's page of waiting messages waits) while a message to a UK number is sent: it goes
    out at once. The +86 message waits for the pass and then goes out packed."""
    smscs = [{"name": "cn"}, {"name": "uk"}]
    before = _conf(tmp_path, smsc.port, smscs, routes=[{"prefix": "+86", "smscs": ["cn"]}],
                   default_route=["uk"])  # fmt: skip
    after = copy.deepcopy(before)
    after["smscs"][0]["packed_gsm"] = True
    text = "Hello world"
    async with running(tmp_path, before) as d:
        await wait_until(lambda: len(smsc.bound()) == 2, 10)
        creds = await create_account(d, "pass")
        store: Any = d.store
        real_page = store.waiting_texts
        release = asyncio.Event()
        paging = asyncio.Event()

        async def held_page(after_key: Any, limit: int) -> Any:
            paging.set()
            await release.wait()
            return await real_page(after_key, limit)

        monkeypatch.setattr(store, "waiting_texts", held_page)
        at = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
        async with client_for(d.http_port, creds) as c:
            await c.send(CN_MOBILE, text=text, scheduled_at=at)
            await d.reload(parse_config(copy.deepcopy(after), env={}, base_dir=tmp_path))
            await asyncio.wait_for(paging.wait(), 10)
            await c.send(UK_MOBILE, text="not held up")
            await wait_until(lambda: submits_by(smsc, "uk"), 10)
            await asyncio.sleep(1.5)  # the +86 message is due now: parked, not sent
            assert not submits_by(smsc, "cn")
            release.set()
            await wait_until(lambda: submits_by(smsc, "cn"), 10)
    (sm,) = submits_by(smsc, "cn")
    assert gsm_text_of(unpack(sm.short_message, 0)) == text  # packed: 10 octets


def test_the_kept_route_table_reads_back_as_the_router_it_was() -> None:
    enc = {"a": ("udh8", False, False, 0), "b": ("sar", True, True, 1)}
    router = Router([Route("+44", ("a", "b")), Route("+4477", ("b",))], ["b"], enc)
    back = Router.from_json(router.to_json())
    assert back.to_json() == router.to_json()
    assert Router.rewired_keys(router, back) == [] and Router.changed_keys(router, back) == set()
    for number in ("+447700900123", "+441234", "+8613800138000"):
        assert back.candidates(number) == router.candidates(number)
    other = Router(
        [Route("+44", ("a", "b")), Route("+4477", ("b",))], ["b"], {**enc, "a": enc["b"]}
    )
    assert Router.rewired_keys(back, other) == ["+44"]
    for bad in ("", "[]", '{"routes": 1}', '{"routes": [], "default": [], "encodings": 3}'):
        with pytest.raises(ValueError):
            Router.from_json(bad)


def test_a_held_route_is_parked_as_a_down_one() -> None:
    router = Router([Route("+86", ("cn",))], ["uk"])
    up = frozenset({"cn", "uk"})
    assert router.parker(up) is None
    park = router.parker(up, {"+86"})
    assert park is not None
    assert park(CN_MOBILE) == "+86" and park(UK_MOBILE) is None
