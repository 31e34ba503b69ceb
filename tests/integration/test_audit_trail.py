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
        (["template", "review", "SMS_1"], None),  # shows it
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
    decides = {"--approve", "--reject"} & set(argv)
    queue = argv[:2] == ["template", "review"] and not decides  # the queue, or one shown
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


@pytest.mark.postgres
async def test_postgres_ids_follow_commit_order(engine: Any, store: Any) -> None:
    """A reader tailing the trail by cursor never steps over a row: while one writer's row is
    drawn but not committed, the next writer waits for it instead of committing a higher id
    (with a bare sequence the reader would see id N+1, move its cursor past N, and lose N)."""
    import asyncio

    import asyncpg

    from bridge.store import postgres_pipeline as pipe

    if engine.name != "postgres":
        pytest.skip("PostgreSQL draws ids from a sequence before commit; SQLite has one writer")
    slow = await asyncpg.connect(engine.location)
    try:
        tx = slow.transaction()
        await tx.start()
        await slow.execute("SELECT pg_advisory_xact_lock($1, 0)", pipe.NS_AUDIT)
        first = await slow.fetchval(
            "INSERT INTO audit_log (at, actor, action, target, status) "
            "VALUES (1, 'api', 'POST /admin/slow', '/admin/slow', 200) RETURNING id"
        )
        second = asyncio.create_task(
            store.audit_add(AuditEntry(2, "api", "POST /admin/fast", "/admin/fast", 200, None))
        )
        await asyncio.sleep(0.3)
        assert not second.done()  # waits for the row drawn before it
        assert await store.audit_page(0, 10) == []  # nothing a cursor could step past
        await tx.commit()
        await asyncio.wait_for(second, 5)
    finally:
        await slow.close()
    rows = await store.audit_page(0, 10)
    assert [e.action for e in rows] == ["POST /admin/slow", "POST /admin/fast"]
    assert rows[0].id == first < rows[1].id


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


async def test_the_trail_masks_numbers_even_when_logs_show_them(
    api_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """logging.mask_bodies false lets full numbers into the logs (which rotate away), not into
    the trail: it is never purged and erasure does not reach it."""
    from bridge import logs

    monkeypatch.setattr(logs, "_mask", False)
    creds = await api_server.create_account("acme")
    path = f"/admin/accounts/{creds.account_id}/optouts/+86 138-0013-8000"
    assert (await api_server.admin("DELETE", path.replace(" ", "%20"))).status == 404
    [entry] = (await api_server.admin("GET", "/admin/audit")).json["entries"]
    assert entry["target"] == f"/admin/accounts/{creds.account_id}/optouts/+86*******8000"


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


def _cli_config(tmp_path: Path) -> Path:
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
    return cfg


def test_cli_store_commands_are_recorded(tmp_path: Path) -> None:
    cfg = _cli_config(tmp_path)
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


def test_a_command_whose_reader_went_away_is_recorded_as_done(tmp_path: Path) -> None:
    """`smpp-bridge account create acme | head -0`: the change commits, then the printed
    result meets a closed pipe. It was audited as failed (BrokenPipeError, exit 1)."""
    cfg = _cli_config(tmp_path)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command prints
    try:
        p = subprocess.run(
            [sys.executable, "-m", "bridge.cli", "account", "create", "acme", "--config", str(cfg)],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    rows = json.loads(_cli(cfg, "audit", "list").stdout)
    assert [(r["action"], r["status"], r["code"]) for r in rows] == [
        ("cli account create", 0, None)
    ]
    assert "acme" in _cli(cfg, "account", "list").stdout


# -- named operators (admin.operators) ---------------------------------------------------------

ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789ab"


async def test_a_named_operators_token_is_their_identity_in_the_trail(make_api: Any) -> None:
    """A request made with an operator's own token is recorded as operator:<name>, whatever
    X-Operator says; the shared token still works (as `api`); a token nobody holds is 401."""
    api = await make_api(
        {"admin": {"operators": [{"name": "alice", "token": ALICE}, {"name": "bob", "token": BOB}]}}
    )
    creds = await api.create_account("acme")
    path = f"/admin/accounts/{creds.account_id}/disable"
    assert (await api.admin("POST", path, token=ALICE, headers={"X-Operator": "bob"})).status == 200
    assert (await api.admin("POST", path, token=BOB)).status == 200
    assert (await api.admin("POST", path)).status == 200  # the shared server.admin_token
    assert (await api.admin("POST", path, token="carol-token-0123456789")).status == 401
    rows = await api.store.audit_page(0, 10)
    assert [r.actor for r in rows] == ["operator:alice", "operator:bob", "api"]


async def test_removing_an_operator_revokes_their_token_at_the_reload(tmp_path: Path) -> None:
    """admin is applied by SIGHUP (not a restart-only section): the reload that drops alice
    refuses her token at once, and bob's keeps working."""
    from dataclasses import replace

    from bridge.app import Daemon
    from bridge.config import AdminConfig, OperatorConfig
    from tests.e2e.harness import make_config

    ops = (OperatorConfig(name="alice", token=ALICE), OperatorConfig(name="bob", token=BOB))
    cfg = make_config(
        tmp_path, admin={"operators": [{"name": o.name, "token": o.token} for o in ops]}
    )
    d = Daemon(cfg)
    await d.start()
    try:

        async def status(token: str) -> int:
            import aiohttp

            url = f"http://127.0.0.1:{d.http_port}/admin/accounts"
            headers = {"Authorization": f"Bearer {token}"}
            async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
                return r.status

        assert (await status(ALICE), await status(BOB)) == (200, 200)
        await d.reload(replace(cfg, admin=AdminConfig(operators=ops[1:])))
        assert (await status(ALICE), await status(BOB)) == (401, 200)
    finally:
        await d.stop()


@pytest.mark.parametrize(
    ("operators", "env", "problem"),
    [
        ([{"name": "alice", "token": ALICE}, {"name": "bob", "token": ALICE}], {},
         "admin.operators[1].token: the same token as operators[0]"),
        ([{"name": "a-b", "token": ALICE}, {"name": "a_b", "token": BOB}], {},
         "would share the environment variable SMPP_BRIDGE_OPERATOR_A_B_TOKEN"),
        ([{"name": "alice"}], {}, "admin.operators[0].token: required key missing"),
        ([{"name": "alice", "token": "short"}], {}, "admin.operators[0].token"),
        ([{"name": "alice"}], {"SMPP_BRIDGE_OPERATOR_ALICE_TOKEN": ALICE}, None),
    ],
)  # fmt: skip
def test_operator_configuration(
    tmp_path: Path, operators: list[dict[str, str]], env: dict[str, str], problem: str | None
) -> None:
    from bridge.config import ConfigError, parse_config
    from tests.e2e.harness import config_dict

    raw = config_dict(tmp_path, admin={"operators": operators})
    if problem is None:
        cfg = parse_config(raw, env=env, base_dir=tmp_path)
        assert [(o.name, o.token) for o in cfg.admin.operators] == [("alice", ALICE)]
        return
    with pytest.raises(ConfigError) as exc:
        parse_config(raw, env=env, base_dir=tmp_path)
    assert problem in str(exc.value)
    assert ALICE not in str(exc.value) and BOB not in str(exc.value)


@pytest.mark.slow
async def test_operators_on_a_workers_daemon_follow_a_sighup(tmp_path: Path) -> None:
    """`server.workers: 2` as a real `smpp-bridge run`: the acceptors answer /admin with the
    operators' tokens, and a SIGHUP that drops one refuses it in every process (the acceptors
    reload with the owner); each action is recorded once, under the operator's name."""
    import re
    import signal

    import aiohttp

    from tests.e2e.harness import DaemonProcess, config_dict, wait_until

    data = config_dict(
        tmp_path,
        server={"workers": 2},
        admin={"operators": [{"name": "alice", "token": ALICE}, {"name": "bob", "token": BOB}]},
    )
    proc = DaemonProcess(tmp_path, data)
    proc.start()
    try:
        await proc.wait_ready(30)
        await wait_until(
            lambda: len(re.findall(r"acceptor \d+ started", proc.log.read_text())) == 2, 20
        )
        url = f"http://127.0.0.1:{proc.port}"

        made = iter(range(1000))
        ok = {ALICE: 0, BOB: 0}  # accounts each token created (a poll during the reload too)

        async def statuses(token: str, n: int = 8) -> set[int]:
            out = set()
            conn = aiohttp.TCPConnector(force_close=True)  # a new connection: any acceptor
            async with aiohttp.ClientSession(connector=conn) as s:
                for _ in range(n):
                    headers = {"Authorization": f"Bearer {token}"}
                    async with s.post(f"{url}/admin/accounts", json={"name": f"acc{next(made)}"},
                                      headers=headers) as r:  # fmt: skip
                        out.add(r.status)
                        ok[token] += r.status == 201
            return out

        assert await statuses(ALICE) == {201} and await statuses(BOB) == {201}
        data["admin"]["operators"] = [{"name": "bob", "token": BOB}]
        proc.path.write_text(yaml.safe_dump(data))
        assert proc.proc is not None
        os.kill(proc.proc.pid, signal.SIGHUP)

        async def revoked() -> bool:
            return await statuses(ALICE, 6) == {401}

        await wait_until(revoked, 20, 0.2)
        assert await statuses(BOB, 6) == {201}
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{url}/admin/audit?limit=1000", headers={"Authorization": f"Bearer {BOB}"}) as r,
        ):
            rows = (await r.json())["entries"]
        created = [e["actor"] for e in rows if e["action"] == "POST /admin/accounts"]
        assert created.count("operator:alice") == ok[ALICE] >= 8
        assert created.count("operator:bob") == ok[BOB] == 14
    finally:
        proc.stop()
