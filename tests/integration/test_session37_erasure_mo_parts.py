"""Session 37: erasing a recipient (POST /v1/recipients/{number}/erase, erase_recipient on both
engines) left the parts of their long replies still waiting for the other parts (mo_parts) in
the store until the parts expired: the erased person's text stayed. They go in the erasure's
transaction now, and a part arriving after it does not bring the erased text back. Closing an
account (close_account, POST /admin/accounts/{ref}/close, `account close`), which erases all its
numbers, left them too: it drops every part an erasure of one of its numbers would.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import aiohttp  # noqa: E402

from bridge.store.models import AcceptBatch  # noqa: E402
from tests.e2e.harness import ADMIN_TOKEN  # noqa: E402
from tests.integration.test_session37_receipt_and_mo_columns import (  # noqa: E402
    CN,
    OTHER,
    EngineHandle,
    Store,
    _part,
    _sql,
    client_for,
    daemon,
    engine,
    final_status,
    store,
    wait_until,
)
from tests.integration.test_store import NOW, account, message  # noqa: E402

__all__ = ["daemon", "engine", "store"]  # fixtures, bound here


async def _waiting(engine: EngineHandle) -> list[tuple[str, str, bytes]]:
    rows = await _sql(engine, "SELECT source, destination, payload FROM mo_parts")
    return sorted((r[0], r[1], bytes(r[2])) for r in rows)


async def test_erasure_drops_the_waiting_parts_of_replies_to_the_account(
    store: Store, engine: EngineHandle
) -> None:
    await store.create_account(account())
    await store.create_account(account("acc_b"))
    msgs = (message("m1", recipient=CN, sender="1069"),)
    await store.accept(AcceptBatch("acc_a", msgs, None, None, None), NOW)
    other = (message("m2", "acc_b", recipient=CN, sender="95588"),)
    await store.accept(AcceptBatch("acc_b", other, None, None, None), NOW)
    await store.add_mo_part(_part(1, b"secret-1"))  # the raw form: no "+"
    await store.add_mo_part(_part(1, b"secret-2", source=CN, ref=8, dest="+1069"))
    await store.add_mo_part(_part(1, b"national", source="13800138000", ref=9))
    await store.add_mo_part(_part(1, b"to-b", dest="95588"))  # a reply to the other account
    await store.add_mo_part(_part(1, b"someone-else", source="8613900139000"))
    mo_sources = (CN, "8613800138000", "008613800138000", "013800138000", "13800138000")
    n = await store.erase_recipient("acc_a", CN, "+86***", NOW + 1, mo_sources)
    assert n == 1
    assert await _waiting(engine) == [
        ("8613800138000", "95588", b"to-b"),
        ("8613900139000", "1069", b"someone-else"),
    ]


async def test_erasure_by_an_account_that_wrote_from_the_default_source(
    store: Store, engine: EngineHandle
) -> None:
    """A message with no sender of its own went out from the SMSC's default source, which the
    store does not know: every waiting part from the number goes. One that never wrote to the
    number has no reply from it: nothing goes."""
    await store.create_account(account())
    await store.create_account(account("acc_b"))
    await store.accept(AcceptBatch("acc_a", (message("m1", recipient=CN),), None, None, None), NOW)
    await store.add_mo_part(_part(1, b"p1", dest="anything"))
    await store.add_mo_part(_part(1, b"p2", dest="else", ref=3))
    assert await store.erase_recipient("acc_b", CN, "+86***", NOW + 1) == 0
    assert len(await _waiting(engine)) == 2
    assert await store.erase_recipient("acc_a", CN, "+86***", NOW + 1) == 1  # international forms
    assert await _waiting(engine) == []


PHONE = "8613800138000"
TEXT = "Reply: " + "s" * 290  # GSM, 2 parts (153 and 144)


async def test_a_waiting_reply_part_is_erased_and_its_rest_does_not_bring_it_back(
    daemon: Callable[..., Any], engine: EngineHandle
) -> None:
    """Over a real bind: part 1 of a long reply from the number is stored, waiting; the number
    is erased (POST /v1/recipients/{n}/erase); the part is gone from the table. Part 2 comes
    later: it is kept alone, and when its time runs out it is delivered as what it is, an
    incomplete fragment of its own text; part 1's text never returns. (Its messages masked, the
    number's reply is no longer attributed to the account: not pushed to it.)"""
    d = await daemon(pipeline={"mo_reassembly_timeout_s": 600})
    hook = d.test_hook  # type: ignore[attr-defined]
    async with client_for(d.http_port, d.test_creds) as c:  # type: ignore[attr-defined]
        sent = await c.send("+" + PHONE, text="Tell us more")
        await final_status(c, sent["messages"][0]["id"])
        assert d.sim is not None and d.inbound is not None
        await d.sim.inject_mo(PHONE, "smpp-bridge", TEXT, split="udh8", ref=5, parts=[1])
        sim = d.sim
        await wait_until(lambda: sim.counters["mo_acked"] >= 1, 10)
        assert [r[0] for r in await _sql(engine, "SELECT source FROM mo_parts")] == [PHONE]
        erased = await c.erase_recipient("+" + PHONE)
        assert erased["messages_erased"] == 1, erased
        assert await _sql(engine, "SELECT source FROM mo_parts") == []
        await d.sim.inject_mo(PHONE, "smpp-bridge", TEXT, split="udh8", ref=5, parts=[2])
        await wait_until(lambda: sim.counters["mo_acked"] >= 2, 10)
        assert await d.inbound.flush_stale_mo(10**13, timeout_ms=0) == 1
    rows = await _sql(engine, "SELECT account_id, text, parts_total, parts_received FROM mo_inbox")
    assert len(rows) == 1
    account_id, text, total, received = rows[0]
    assert text == TEXT[153:] and total == 2 and received == "[2]"
    assert "Reply: " not in text
    assert account_id is None
    assert not [h for h in hook.reports if h.get("type") == "message.inbound"]
    assert await _sql(engine, "SELECT source FROM mo_parts") == []


async def test_close_drops_the_waiting_parts_an_erasure_of_each_number_would(
    store: Store, engine: EngineHandle
) -> None:
    await store.create_account(account())
    await store.create_account(account("acc_b"))
    mine = (
        message("m1", recipient=CN, sender="1069"),
        message("m2", recipient=OTHER),  # from the SMSC's default source: any destination
    )
    await store.accept(AcceptBatch("acc_a", mine, None, None, None), NOW)
    other = (message("m3", "acc_b", recipient=CN, sender="95588"),)
    await store.accept(AcceptBatch("acc_b", other, None, None, None), NOW)
    await store.add_mo_part(_part(1, b"cn-raw"))  # 8613800138000 to 1069
    await store.add_mo_part(_part(1, b"cn-plus", source=CN, ref=8, dest="+1069"))
    await store.add_mo_part(_part(1, b"cn-national", source="013800138000", ref=9))
    await store.add_mo_part(_part(1, b"cn-to-b", dest="95588"))  # a reply to acc_b
    await store.add_mo_part(_part(1, b"other-any", source="008613900139000", dest="x"))
    await store.add_mo_part(_part(1, b"stranger", source="8613700137000"))
    closed = await store.close_account("acc_a", NOW + 1, ["+86"])
    assert closed is not None
    assert await _waiting(engine) == [
        ("8613700137000", "1069", b"stranger"),
        ("8613800138000", "95588", b"cn-to-b"),
    ]
    # Without the SMSCs' national prefix the national form is not the number's (as erasure);
    # written from the default source, any reply from the number may be acc_c's (acc_b's too).
    await store.create_account(account("acc_c"))
    await store.accept(
        AcceptBatch("acc_c", (message("m4", "acc_c", recipient=CN),), None, None, None), NOW
    )
    await store.add_mo_part(_part(1, b"national-c", source="13800138000", dest="y", ref=3))
    await store.add_mo_part(_part(1, b"intl-c", source="008613800138000", dest="y", ref=4))
    assert await store.close_account("acc_c", NOW + 2) is not None
    assert [w[2] for w in await _waiting(engine)] == [b"national-c", b"stranger"]


async def test_closing_over_the_admin_api_drops_the_national_forms_of_its_numbers(
    daemon: Callable[..., Any], engine: EngineHandle
) -> None:
    """The admin close reads the SMSCs' national_prefix, as an erasure does."""
    d = await daemon(smscs=[{"national_prefix": "+86"}])
    async with client_for(d.http_port, d.test_creds) as c:  # type: ignore[attr-defined]
        sent = await c.send("+" + PHONE, text="Tell us more")
        await final_status(c, sent["messages"][0]["id"])
    assert d.store is not None
    await d.store.add_mo_part(_part(1, b"national", source="013800138000", dest="anything"))
    await d.store.add_mo_part(_part(1, b"someone", source="013900139000", dest="anything", ref=2))
    account_id = d.test_creds["account"]  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{d.http_port}/admin/accounts/{account_id}/close"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession() as http, http.post(url, headers=headers, json={}) as r:
        assert r.status == 200, await r.text()
    assert [w[2] for w in await _waiting(engine)] == [b"someone"]
