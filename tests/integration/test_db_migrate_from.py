"""`smpp-bridge db migrate` says which schema it upgraded from (session 46's trial: it printed
only the version it left, so an operator's upgrade log could not tell an upgrade from a no-op).
Real SQLite file and real PostgreSQL, the real CLI."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bridge.cli import main as cli_main
from bridge.store.migrate import latest
from tests import store_engines
from tests.integration.test_senders_review import _cli_config
from tests.store_engines import EngineHandle, schema_before

engine = store_engines.engine


async def _migrate(capsys: pytest.CaptureFixture[str], cfg: Path) -> dict[str, Any]:
    code = await asyncio.to_thread(cli_main, ["db", "migrate", "--config", str(cfg)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


async def test_db_migrate_prints_the_version_it_found(
    engine: EngineHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = engine.new_store()
    await store.open()
    await store.close()
    cfg = _cli_config(engine, tmp_path)
    newest = latest(engine.name)
    assert await _migrate(capsys, cfg) == {
        "engine": engine.name,
        "schema_version": newest,
        "from_version": newest,  # nothing pending
    }
    await schema_before(engine, newest, newest)  # as the release before left it
    assert await _migrate(capsys, cfg) == {
        "engine": engine.name,
        "schema_version": newest,
        "from_version": newest - 1,
    }
