"""The audit trail of operators' actions (bridge/audit.py): the admin API on a real server, the CLI
as real subprocesses, the store on each engine (CI=1 needs PostgreSQL)."""

from __future__ import annotations

import base64
import getpass
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import tests.store_engines as engines
from bridge import audit
from bridge.store.models import AuditEntry

engine = engines.engine
store = engines.store


# -- pure -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (["account", "list"], None),
        (["account", "show", "acme"], None),
        (["template", "review"], None),  # the queue
        (["template", "review", "--account", "acme"], None),
        (["template", "review", "SMS_1", "--approve"], ("cli template review", "SMS_1 --approve")),
        (["secrets", "reseal", "--dry-run"], None),
        (["secrets", "reseal"], ("cli secrets reseal", "")),
        (["audit", "list"], None),
        (
            ["account", "disable", "acme", "--config", "/etc/x.yaml"],
            ("cli account disable", "acme"),
        ),
        (["bill", "topup", "acme", "12.50", "-c", "f"], ("cli bill topup", "acme 12.50")),
        (
            ["account", "update", "acme", "--callback", "https://u:pw@h.example/cb?token=s3"],
            ("cli account update", "acme --callback https://h.example/cb?…"),
        ),
        (["db"], None),
    ],
)
def test_cli_action(argv: list[str], want: tuple[str, str] | None) -> None:
    """With the two flags the CLI takes from its parsed arguments (argparse also takes
    abbreviations, `--dry` for --dry-run: the raw words alone would not tell)."""
    queue = argv[:2] == ["template", "review"] and (len(argv) == 2 or argv[2].startswith("-"))
    dry_run = "--dry-run" in argv
    assert audit.cli_action(argv, queue=queue, dry_run=dry_run) == want


@pytest.mark.parametrize(
    ("header", "actor"),
    [
        (None, "api"),
        ("alice", "api:alice"),
        (" ops-bot@example.com ", "api:ops-bot@example.com"),
        ("alice smith", "api"),  # not a name we record raw
        ("x" * 65, "api"),
        ("<script>", "api"),
    ],
)
def test_api_actor(header: str | None, actor: str) -> None:
    assert audit.api_actor(header) == actor


# -- the store, each engine ----------------------------------------------------------------------


async def test_audit_pages_oldest_first_within_bounds(store: Any) -> None:
    for i in range(5):
        await store.audit_add(
            AuditEntry(1000 + i, "api", f"POST /admin/x{i}", f"/admin/x{i}", 200, None, f"req_{i}")
        )
    first = await store.audit_page(0, 2)
    assert [e.action for e in first] == ["POST /admin/x0", "POST /admin/x1"]
    assert first[0].id < first[1].id and first[0].request_id == "req_0"
    rest = await store.audit_page(first[-1].id, 10)
    assert [e.at for e in rest] == [1002, 1003, 1004]
    assert [e.at for e in await store.audit_page(0, 10, since=1001, until=1003)] == [1001, 1002]


# -- the admin API ------------------------------------------------------------------------------


async def test_admin_actions_are_recorded_with_actor_and_outcome(api_server: Any) -> None:
    api = api_server
    creds = await api.create_account("acme")
    r = await api.admin(
        "POST", f"/admin/accounts/{creds.account_id}/disable", headers={"X-Operator": "alice"}
    )
    assert r.status == 200
    request_id = r.headers["X-Request-Id"]
    refused = await api.admin("POST", "/admin/accounts/nosuch/disable")
    assert refused.status == 404
    await api.admin("GET", "/admin/accounts")  # reads are not recorded
    wrong = await api.admin("POST", f"/admin/accounts/{creds.account_id}/enable", token="x" * 20)
    assert wrong.status == 401  # refused by the token: logged only
    lifted = await api.admin("DELETE", f"/admin/accounts/{creds.account_id}/optouts/+8613800138000")
    assert lifted.status == 404  # not on the list; recorded, the number masked
    page = await api.admin("GET", "/admin/audit")
    assert page.status == 200
    entries = page.json["entries"]
    assert [(e["actor"], e["action"], e["status"], e["code"]) for e in entries] == [
        ("api:alice", "POST /admin/accounts/{ref}/{action}", 200, None),
        ("api", "POST /admin/accounts/{ref}/{action}", 404, "NOT_FOUND"),
        ("api", "DELETE /admin/accounts/{ref}/optouts/{number}", 404, "NOT_FOUND"),
    ]
    assert entries[0]["target"] == f"/admin/accounts/{creds.account_id}/disable"
    assert entries[0]["request_id"] == request_id and entries[0]["remote"] == "127.0.0.1"
    assert "13800138000" not in entries[2]["target"] and entries[2]["target"].endswith("8000")
    paged = await api.admin("GET", "/admin/audit", query=f"cursor={entries[0]['id']}&limit=1")
    assert [e["id"] for e in paged.json["entries"]] == [entries[1]["id"]]
    assert paged.json["next_cursor"] == str(entries[1]["id"])
    bad = await api.admin("GET", "/admin/audit", query="limit=0")
    assert (bad.status, bad.json["error"]["code"]) == (400, "INVALID_FIELD")


# -- the CLI ------------------------------------------------------------------------------------


def _cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args, "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in p.stderr, p.stderr
    return p


def test_cli_store_commands_are_recorded(tmp_path: Path) -> None:
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "store": {"engine": "sqlite", "path": str(tmp_path / "bridge.db")},
                "security": {"master_key": base64.b64encode(os.urandom(32)).decode()},
                "smscs": [{"name": "main", "system_id": "bridge"}],
                "logging": {"level": "WARNING"},
            }
        )
    )
    assert _cli(cfg, "account", "create", "acme").returncode == 0
    assert _cli(cfg, "account", "list").returncode == 0  # not recorded
    assert _cli(cfg, "account", "disable", "acme").returncode == 0
    assert _cli(cfg, "account", "disable", "nosuch").returncode == 1
    p = _cli(cfg, "audit", "list")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    user = f"cli:{getpass.getuser()}"
    assert [(r["actor"], r["action"], r["target"], r["status"]) for r in rows] == [
        (user, "cli account create", "acme", 0),
        (user, "cli account disable", "acme", 0),
        (user, "cli account disable", "nosuch", 1),
    ]
    assert rows[2]["code"] == "NOT_FOUND" and rows[0]["code"] is None
