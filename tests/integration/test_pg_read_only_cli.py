"""Session 49 (h6): the CLI's commands that change nothing, run as a PostgreSQL role with SELECT
alone (and USAGE on the schema), against a real throw-away cluster (SMPP_BRIDGE_CI=1).

README (Scale-out on PostgreSQL) says such a monitoring role runs the store commands the audit
trail leaves out: they open the store for reads (bridge/cli.py, _with_services). Two of them
wrote anyway: `tariff list` and `bill show` loaded the tariff book, which stores the configured
tariff as the first version when none is stored yet (billing.Tariffs.load). The role's write
was refused and swallowed (the load takes a refused store as another instance having seeded
it), so `tariff list` printed [] and `bill show` priced the month with no tariff, both with exit
0: a wrong answer, not a permission error. Run by the owner the same commands stored the
tariff: a read that changed the store, unaudited.

Each command is run in this process through bridge.cli.main, as the monitoring role first and
then as the schema's owner: the answers must be the same, and the owner's reads must have
written nothing. The store commands the parser defines are all listed here, read or write
(test_cli_read_only.py checks the list against the parser); each write command is refused to
the monitoring role at its opening, by the grants check for writes: it opened the store for
writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
import yaml

from bridge.accounts import AccountService
from bridge.cli import main
from bridge.config import load_config
from bridge.crypto import new_secret
from bridge.domain.ledger import topup
from bridge.store.models import Account, Sign, Template
from bridge.store.postgres import PostgresStore
from bridge.wiring import make_sealer
from tests.e2e.harness import config_dict
from tests.e2e.test_session47_trial import _grant, _split_roles
from tests.integration.test_billing_edges import accept, msg, receipt, submit
from tests.unit.test_cli_read_only import READS, WRITES

pytestmark = pytest.mark.postgres

SELECT_ONLY = ["GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"]
DELIVERED = "msg_01KBD0000000000000000000D1"
QUEUED = "msg_01KBD0000000000000000000Q1"


def _at(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]


async def _populated(owner_dsn: str, config: Path) -> None:
    """An account with money, a webhook secret, a template pending review and an app key sealed
    under the master key, a message delivered in November 2026 (priced in its bill) and one
    still queued; no tariff stored and no bill settled yet."""
    sealer = make_sealer(load_config(str(config)))
    store = PostgresStore(owner_dsn, min_size=1, max_size=2)
    await store.open()
    try:
        secret = sealer.seal(new_secret(), "acc_a")
        await store.create_account(Account(id="acc_a", name="acme", webhook_secret_enc=secret))
        await store.add_sign(
            Sign("acc_a", "Acme", "acme", "company", "", "approved", None, None, 0)
        )
        await store.add_template(
            Template(
                "SMS_000000001", "acc_a", "verification", "login", "Your code is ${code}.", "",
                False, "pending", None, _at(2026, 11, 1),
            )
        )  # fmt: skip
        await store.append_ledger("acc_a", topup(1_000_000, 0, "funds"))
        await AccountService(store, sealer, lambda: False).create_key("acc_a", _at(2026, 11, 1))
        await accept(store, msg(DELIVERED, _at(2026, 11, 10)))
        await submit(store, DELIVERED, _at(2026, 11, 10, 0, 1))
        await receipt(store, DELIVERED, "delivered", _at(2026, 11, 10, 0, 2))
        await accept(store, msg(QUEUED, _at(2026, 11, 11)))
    finally:
        await store.close()


def _config(tmp_path: Path, name: str, dsn: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    cfg = config_dict(tmp_path, store={"engine": "postgres", "dsn": dsn})
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(config: Path, argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "--config", str(config)])
    return code, out.getvalue(), err.getvalue()


async def _count(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


def _argv(words: tuple[str, ...]) -> list[str]:
    return [w.replace("{msg}", DELIVERED) for w in words]


async def test_every_read_command_answers_a_select_only_role_as_it_answers_the_owner(
    tmp_path: Path, pg_dsn: str
) -> None:
    owner_dsn, monitor_dsn, role = await _split_roles(pg_dsn)
    monitor, owner = (
        _config(tmp_path, "monitor", monitor_dsn),
        _config(tmp_path, "owner", owner_dsn),
    )
    await _populated(owner_dsn, owner)
    await _grant(owner_dsn, SELECT_ONLY, role)
    answers = {}
    for words in READS:
        code, out, err = await asyncio.to_thread(_cli, monitor, _argv(words))
        assert code == 0, (words, err)
        assert "permission denied" not in err, (words, err)
        answers[words] = out
    for words in READS:
        code, out, err = await asyncio.to_thread(_cli, owner, _argv(words))
        assert code == 0, (words, err)
        assert out == answers[words], words
    # What the answers say, where a refused write had left them empty or unpriced.
    tariffs = json.loads(answers[("tariff", "list")])
    assert [t["version"] for t in tariffs] == ["initial"]
    bill = json.loads(answers[("bill", "show", "acc_a", "--month", "2026-11")])
    assert bill["status"] == "open"
    assert (bill["units"], bill["tier_price_micro"]) == (1, 45_000), bill
    assert bill["pending_messages_units"] == 1
    assert json.loads(answers[("message", "show", "acc_a", "{msg}")])["status"] == "delivered"
    shown = json.loads(answers[("template", "review", "SMS_000000001")])
    assert (shown["code"], shown["status"], shown["revision"]) == ("SMS_000000001", "pending", 1)
    # Not even the owner's reads wrote: no tariff stored, no bill, nothing in the audit trail.
    assert await _count(owner_dsn, "tariffs") == 0
    assert await _count(owner_dsn, "bills") == 0
    assert await _count(owner_dsn, "audit_log") == 0


async def test_every_write_command_opens_the_store_for_writes(tmp_path: Path, pg_dsn: str) -> None:
    """Refused to the monitoring role at the opening, by the grants check for writes (a command
    opened for reads would have got as far as its write, or worse, done nothing and exit 0)."""
    owner_dsn, monitor_dsn, role = await _split_roles(pg_dsn)
    monitor = _config(tmp_path, "monitor", monitor_dsn)
    await _populated(owner_dsn, monitor)
    await _grant(owner_dsn, SELECT_ONLY, role)
    for words in WRITES:
        code, out, err = await asyncio.to_thread(_cli, monitor, _argv(words))
        assert code == 1, (words, out, err)
        assert f"STORE_UNUSABLE: the database role {role} lacks SELECT, INSERT" in err, (words, err)
