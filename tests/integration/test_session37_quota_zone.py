"""The zone of the daily quota's days (rules.timezone) is the store's own: configure_store sets
it at opening and at each reload, and the engines' roll-ups read it from their connection
(SQLite: a SQL function of the store's connection; PostgreSQL: its pool's StoreConnection).

Before, it was a `quota_tz` parameter threaded through about a dozen store functions, None by
default: a caller that forgot it gave nothing back, silently. Each store function's signature is
checked here, and the zone configure_store sets is the one a give-back uses, on each engine.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sqlite3
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import bridge.store  # noqa: E402
import tests.store_engines as engines  # noqa: E402
from bridge.store import postgres_pipeline, sqlite_pipeline  # noqa: E402
from tests.integration.conftest import ApiServer, Clock, build_config, start_api  # noqa: E402

engine = engines.engine

CN = ["+8613800138000", "+8613800138001"]
NEW_YORK = "America/New_York"


def _store_functions() -> list[tuple[str, Any]]:
    out = []
    for info in pkgutil.iter_modules(bridge.store.__path__):
        mod = importlib.import_module(f"bridge.store.{info.name}")
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and obj.__module__ == mod.__name__:
                out += [(f"{mod.__name__}.{name}.{n}", f) for n, f in vars(obj).items()]
            elif inspect.isfunction(obj) and obj.__module__ == mod.__name__:
                out.append((f"{mod.__name__}.{name}", obj))
    return [(n, f) for n, f in out if inspect.isfunction(f)]


def test_no_store_function_takes_the_zone() -> None:
    """Nothing to pass, so nothing to forget."""
    takers = [
        name
        for name, f in _store_functions()
        if {"quota_tz", "tz"} & set(inspect.signature(f).parameters)
    ]
    assert len(_store_functions()) > 100  # the walk found the engines' code
    assert takers == []


def test_a_connection_no_store_set_up_fails_loudly(tmp_path: Path) -> None:
    """A roll-up on a bare connection ends nothing quietly: no zone, an error."""
    c = sqlite3.connect(tmp_path / "bare.db")
    with pytest.raises(sqlite3.OperationalError, match="no such function"):
        sqlite_pipeline.quota_tz(c)
    with pytest.raises(RuntimeError, match="not from a store's pool"):
        postgres_pipeline.quota_tz(object())  # type: ignore[arg-type]


async def _connection_zone(store: Any) -> str:
    if store.engine == "sqlite":
        return await store._runner.read(sqlite_pipeline.quota_tz)  # type: ignore[no-any-return]
    async with store.pool.acquire() as c:
        return postgres_pipeline.quota_tz(c)


async def test_a_reload_changes_the_zone_the_connection_gives(engine: Any, tmp_path: Path) -> None:
    """Set at opening and again at a reload (configure_store), seen at once by the connection
    the roll-up runs on (PostgreSQL: every connection of the pool, opened before or after)."""
    from bridge.wiring import configure_store

    store = engine.new_store()
    configure_store(store, build_config(tmp_path))
    await store.open()
    try:
        assert await _connection_zone(store) == "Asia/Shanghai"
        configure_store(store, build_config(tmp_path, {"rules": {"timezone": NEW_YORK}}))
        assert await _connection_zone(store) == NEW_YORK
    finally:
        await store.close()


@pytest.fixture
async def api(engine: Any, tmp_path: Path, clock: Clock) -> AsyncIterator[ApiServer]:
    """Days in New York, the clock at 22:30 there (the next day in Shanghai, the default)."""
    at = datetime(2026, 11, 30, 22, 30, tzinfo=ZoneInfo(NEW_YORK)).timestamp()
    clock.freeze(at)
    served = await start_api(
        tmp_path, clock, {"rules": {"timezone": NEW_YORK}}, store=engine.new_store()
    )
    try:
        yield served
    finally:
        await served.close()


async def test_a_cancel_gives_back_the_configured_zones_day(api: ApiServer) -> None:
    """Counted in New York's 2026-11-30, given back to it: a give-back in any other zone's day
    (the default's 2026-12-01) left the quota full."""
    creds = await api.create_account(daily_quota=1)
    r = await api.send(
        creds, {"to": CN[0], "text": "Sale", "scheduled_at": "2026-12-05T10:00:00+00:00"}
    )
    assert r.status == 202, r.json
    mid = r.json["messages"][0]["id"]
    r = await api.send(creds, {"to": CN[1], "text": "Sale"})
    assert (r.status, r.code) == (429, "DAILY_QUOTA_EXCEEDED")
    assert (await api.request("POST", f"/v1/messages/{mid}/cancel", creds=creds)).status == 200
    assert (await api.send(creds, {"to": CN[1], "text": "Sale"})).status == 202
