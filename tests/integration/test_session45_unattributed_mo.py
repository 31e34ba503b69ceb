"""Session 45: the replies (MOs) stored for no account, listed for the operator.

smpp_bridge_mo_unattributed_total counted them, but nothing showed which they were: GET
/admin/mo?unattributed=1 and `smpp-bridge mo list --unattributed` do, newest first, a page at a
time, on both engines (real SQLite file, real PostgreSQL; every reply checked against the
OpenAPI document by the ApiServer).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import tests.store_engines as engines
from bridge.cli import main as cli_main
from bridge.ids import new_id
from bridge.store.models import MoMessage
from tests.conftest import run_async
from tests.integration.conftest import ApiServer, Clock, start_api
from tests.integration.test_session13_review3 import _write_config

# The CLI run in this process replaces the root handlers and level and sets body masking.
pytestmark = pytest.mark.usefixtures("logging_restored")

engine = engines.engine

T0 = 1_780_000_000_000


def _mo(n: int, at: int, account_id: str | None = None) -> MoMessage:
    return MoMessage(
        id=f"mo_{n:024d}".replace("0", "a").replace("1", "b")[:27],
        account_id=account_id,
        smsc="carrier-a",
        source=f"+86138000{n:05d}",
        destination="10690001",
        text=f"reply {n}",
        received_at=at,
    )


def _old_mo(at: int) -> MoMessage:
    """An MO under the 26-character time-ordered id MOs had before 2026-11-30 (ids.new_id)."""
    return dataclasses.replace(_mo(7, at), id=new_id("mo_", at))


# Six for no account, two sharing a millisecond (the cursor tells them apart by id), one under
# an id of the old form (the first page of two ends on it), and one that went to an account.
UNATTRIBUTED = [
    _mo(1, T0),
    _mo(2, T0 + 5),
    _mo(3, T0 + 5),
    _mo(4, T0 + 9),
    _old_mo(T0 + 12),
    _mo(5, T0 + 20),
]


async def _fill(store: Any, account_id: str | None) -> None:
    for mo in UNATTRIBUTED:
        assert await store.store_mo(mo)
    if account_id is not None:
        assert await store.store_mo(_mo(6, T0 + 7, account_id))


def _newest_first() -> list[str]:
    return [m.id for m in sorted(UNATTRIBUTED, key=lambda m: (m.received_at, m.id), reverse=True)]


@pytest.fixture
async def api(
    engine: engines.EngineHandle, tmp_path: Path, clock: Clock
) -> AsyncIterator[ApiServer]:
    server = await start_api(tmp_path, clock, store=engine.new_store())
    try:
        yield server
    finally:
        await server.close()


async def test_the_unattributed_replies_are_listed_newest_first_a_page_at_a_time(
    api: ApiServer,
) -> None:
    creds = await api.create_account("acme")
    await _fill(api.store, creds.account_id)
    seen: list[str] = []
    query = "unattributed=1&limit=2"
    pages = 0
    while True:
        r = await api.admin("GET", "/admin/mo", query=query)
        assert r.status == 200, r.text
        pages += 1
        seen += [m["mo_id"] for m in r.json["mo"]]
        if r.json["next_cursor"] is None:
            break
        query = f"unattributed=1&limit=2&cursor={r.json['next_cursor']}"
    assert seen == _newest_first()  # the account's reply is not among them
    assert pages == 3
    r = await api.admin("GET", "/admin/mo", query="unattributed=true")
    first = r.json["mo"][0]
    assert first == {
        "mo_id": UNATTRIBUTED[-1].id,
        "from": "+8613800000005",
        "to": "10690001",
        "smsc": "carrier-a",
        "text": "reply 5",
        "text_hex": False,
        "received_at": first["received_at"],
        "incomplete": False,
        "parts_total": None,
        "parts_received": None,
    }
    assert first["received_at"].startswith("2026-05-28T")
    assert r.json["next_cursor"] is None


async def test_none_stored_is_an_empty_page(api: ApiServer) -> None:
    r = await api.admin("GET", "/admin/mo", query="unattributed=1")
    assert (r.status, r.json) == (200, {"mo": [], "next_cursor": None})


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("", 400, "MISSING_FIELD"),
        ("unattributed=0", 400, "INVALID_FIELD"),
        ("unattributed=1&limit=0", 400, "INVALID_FIELD"),
        ("unattributed=1&limit=1001", 400, "INVALID_FIELD"),
        ("unattributed=1&cursor=mo_x", 400, "INVALID_CURSOR"),
        ("unattributed=1&cursor=12.mo_aaaa-aaaa", 400, "INVALID_CURSOR"),
        ("unattributed=1&account=acme", 400, "UNKNOWN_FIELD"),
    ],
)
async def test_bad_queries_are_refused_by_code(
    api: ApiServer, query: str, status: int, code: str
) -> None:
    r = await api.admin("GET", "/admin/mo", query=query)
    assert (r.status, r.code) == (status, code), r.text


async def test_it_needs_the_admin_token(api: ApiServer) -> None:
    r = await api.admin("GET", "/admin/mo", query="unattributed=1", token=None)
    assert r.status == 401, r.text


def test_the_cli_lists_the_same_pages(
    engine: engines.EngineHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def fill() -> None:
        store = engine.new_store()
        await store.open()
        try:
            await _fill(store, None)
        finally:
            await store.close()

    run_async(fill())
    if engine.name == "postgres":
        store: dict[str, Any] = {"engine": "postgres", "dsn": engine.location}
    else:
        store = {"engine": "sqlite", "path": engine.location}
    cfg = _write_config(tmp_path, store)
    seen: list[str] = []
    cursor = ""
    while True:
        argv = ["mo", "list", "--unattributed", "--limit", "3", "--cursor", cursor]
        assert cli_main([*argv, "--config", str(cfg)]) == 0
        page = json.loads(capsys.readouterr().out)
        seen += [m["mo_id"] for m in page["mo"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert seen == _newest_first()
    assert cli_main(["mo", "list", "--config", str(cfg)]) == 1
    assert "--unattributed is required" in capsys.readouterr().err
    assert cli_main(["mo", "list", "--unattributed", "--cursor", "x", "--config", str(cfg)]) == 1
    assert "--cursor: not a cursor" in capsys.readouterr().err
