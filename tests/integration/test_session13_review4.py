"""Session 13, review 4: an adversarial look at two changes, named admin operators
(admin.operators, commit 1b3620b) and the webhook secret overlap on rotation (commit 00e4d5b).

Operators: a token shared with server.admin_token (who is recorded?), `config check` and the
load errors with operator tokens (never printed), a reload that changes a token (old refused, new
accepted, the new one redacted from logs), the admin API off when neither is set.
Overlap: two rotations inside the overlap (only the current and the immediately previous secret
sign), a closed account cannot rotate, reseal covers the kept secret, Alibaba-format reports
carry both signatures, and `account rotate-webhook-secret --overlap-hours` refuses bad values
as a real process without rotating anything. Store tests run on every engine (CI=1: PostgreSQL).

Found (3 defects, fixed in the commit after this review; the tests below now pass):
- an operator token equal to server.admin_token was accepted at load, and everyone holding the
  shared token was then recorded as that operator (removing the operator revoked nothing): the
  configuration refuses it now;
- public_account let the new account fields through: every admin account answer broke the
  OpenAPI AccountView (test_audit_trail's named-operator test failed on it), and after a
  rotation with an overlap GET /admin/accounts/{id} was a 500 (bytes in JSON);
- the CLI's `account show` printed the sealed previous secret's repr. Both are dropped from
  the views now.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

import tests.store_engines as engines
from bridge import logs
from bridge.accounts import AccountError, AccountService
from bridge.api import signing
from bridge.app import Daemon
from bridge.config import AdminConfig, ConfigError, OperatorConfig, parse_config
from bridge.crypto import Sealer
from bridge.reseal import reseal
from tests.e2e.harness import (
    ADMIN_TOKEN,
    WebhookReceiver,
    client_for,
    config_dict,
    create_account,
    final_status,
    make_config,
    wait_until,
)

engine = engines.engine
store = engines.store

ALICE = "alice-token-review4-0123456789"
ALICE2 = "alice-token-review4-rotated-9876"
BOB = "bob-token-review4-0123456789ab"
CN = "+8613800138000"
NOW = 1_700_000_000_000
HOUR = 3_600_000


def _ops(*pairs: tuple[str, str]) -> dict[str, Any]:
    return {"operators": [{"name": n, "token": t} for n, t in pairs]}


# -- named operators ---------------------------------------------------------------------------


def test_an_operator_token_equal_to_the_shared_admin_token_is_refused(tmp_path: Path) -> None:
    raw = config_dict(tmp_path, admin=_ops(("alice", ADMIN_TOKEN)))
    with pytest.raises(ConfigError) as exc:
        parse_config(raw, env={}, base_dir=tmp_path)
    assert ADMIN_TOKEN not in str(exc.value)


async def test_operators_only_and_admin_disabled(make_api: Any) -> None:
    """No shared token: an operator's token works, a blank or other bearer is 401 (not the
    operator); with neither the admin API is ADMIN_DISABLED (403) whatever is sent."""
    api = await make_api({"server": {"admin_token": None}, "admin": _ops(("alice", ALICE))})
    assert (await api.admin("GET", "/admin/accounts", token=ALICE)).status == 200
    for token in ("", " " + ALICE, ALICE.upper(), ALICE[:-1], ALICE + "x", None):
        reply = await api.admin("GET", "/admin/accounts", token=token)
        assert reply.status == 401, (token, reply.status)
        assert (reply.status, reply.json["error"]["code"]) == (401, "INVALID_ADMIN_TOKEN")
        assert ALICE not in reply.text
    off = await make_api({"server": {"admin_token": None}})
    for token in (ALICE, "", None):
        reply = await off.admin("GET", "/admin/accounts", token=token)
        assert (reply.status, reply.json["error"]["code"]) == (403, "ADMIN_DISABLED")


def _write(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=full,
    )


def test_config_check_masks_operator_tokens(tmp_path: Path) -> None:
    """Inline and from the environment: the effective configuration shows no operator token;
    an invalid one (too short, duplicated) is named by field, not printed."""
    raw = config_dict(tmp_path, admin=_ops(("alice", ALICE), ("bob", "")))
    del raw["admin"]["operators"][1]["token"]
    path = _write(tmp_path, raw)
    p = _run("config", "check", str(path), env={"SMPP_BRIDGE_OPERATOR_BOB_TOKEN": BOB})
    assert p.returncode == 0, p.stderr
    assert ALICE not in p.stdout + p.stderr and BOB not in p.stdout + p.stderr
    shown = yaml.safe_load(p.stdout)["admin"]["operators"]
    assert [o["name"] for o in shown] == ["alice", "bob"]

    bad = _write(tmp_path, config_dict(tmp_path, admin=_ops(("alice", ALICE), ("bob", ALICE))))
    p = _run("config", "check", str(bad), env={"SMPP_BRIDGE_OPERATOR_BOB_TOKEN": "short-token"})
    assert p.returncode == 1
    assert "admin.operators[1].token" in p.stderr
    for secret in (ALICE, "short-token"):
        assert secret not in p.stdout + p.stderr
    assert "Traceback" not in p.stderr


async def test_a_reload_that_changes_a_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """alice's token replaced by a reload: the old one is refused at once, the new one is hers
    (audit operator:alice); no token in any log record or error body."""
    import aiohttp

    cfg = make_config(tmp_path, admin=_ops(("alice", ALICE), ("bob", BOB)))
    d = Daemon(cfg)
    caplog.set_level(logging.DEBUG)
    await d.start()
    try:

        async def call(token: str) -> tuple[int, str]:
            url = f"http://127.0.0.1:{d.http_port}/admin/accounts"
            headers = {"Authorization": f"Bearer {token}", "X-Operator": "mallory"}
            body = {"name": f"acc-{time.monotonic_ns()}", "raw_text": True}
            async with (
                aiohttp.ClientSession() as s,
                s.post(url, headers=headers, json=body) as r,
            ):
                return r.status, await r.text()

        assert (await call(ALICE))[0] == 201
        ops = (OperatorConfig(name="alice", token=ALICE2), OperatorConfig(name="bob", token=BOB))
        await d.reload(replace(cfg, admin=AdminConfig(operators=ops)))
        status, text = await call(ALICE)
        assert status == 401 and ALICE not in text
        assert (await call(ALICE2))[0] == 201
        assert (await call(BOB))[0] == 201
        # The new token is redacted from the logs from now on (logs.add_secrets at the reload).
        assert {ALICE2, BOB} <= set(logs.config_secrets(d.config))
        assert d.store is not None
        actors = [r.actor for r in await d.store.audit_page(0, 10)]
        assert actors == ["operator:alice", "operator:alice", "operator:bob"]
    finally:
        await d.stop()
    handler_text = "\n".join(h.format(r) for r in caplog.records for h in [caplog.handler])
    for token in (ALICE, ALICE2, BOB):
        assert token not in handler_text


# -- webhook secret overlap: the store and the service, every engine -----------------------------


async def test_two_rotations_in_the_overlap_keep_only_the_immediately_previous(
    store: Any,
) -> None:
    svc = AccountService(store, Sealer(os.urandom(32)))
    creds = await svc.create("acme", {"raw_text": True}, NOW)
    s0 = creds.webhook_secret
    _a, s1 = await svc.rotate_webhook_secret("acme", NOW, 24 * HOUR)
    _a, s2 = await svc.rotate_webhook_secret("acme", NOW + 1000, 2 * HOUR)
    stored = await store.get_account(creds.account.id)
    assert stored.prev_webhook_secret_until == NOW + 1000 + 2 * HOUR
    assert svc.webhook_secrets(stored, NOW + 2000) == [s2, s1]
    assert s0 not in svc.webhook_secrets(stored, NOW + 2000)
    assert svc.webhook_secrets(stored, NOW + 1000 + 2 * HOUR - 1) == [s2, s1]
    assert svc.webhook_secrets(stored, NOW + 1000 + 2 * HOUR) == [s2]
    kinds = sorted(k for k, _i, _b in await store.sealed_secrets())
    assert kinds == ["account", "account_prev", "key"]


async def test_the_kept_secret_is_resealed_under_a_new_master_key(store: Any) -> None:
    old_key, new_key = os.urandom(32), os.urandom(32)
    svc = AccountService(store, Sealer(old_key))
    creds = await svc.create("acme", {"raw_text": True}, NOW)
    _a, s1 = await svc.rotate_webhook_secret("acme", NOW, HOUR)
    report = await reseal(store, Sealer(new_key, (old_key,)))
    assert report is not None
    fresh = AccountService(store, Sealer(new_key))  # the old key gone: both must open
    stored = await store.get_account(creds.account.id)
    assert fresh.webhook_secrets(stored, NOW + 1) == [s1, creds.webhook_secret]


async def test_a_closed_account_cannot_rotate_and_sends_nothing(store: Any) -> None:
    svc = AccountService(store, Sealer(os.urandom(32)))
    creds = await svc.create("acme", {"raw_text": True}, NOW)
    await svc.rotate_webhook_secret("acme", NOW, HOUR)
    before = await store.get_account(creds.account.id)
    assert await store.close_account(creds.account.id, NOW + 1)
    with pytest.raises(AccountError) as exc:
        await svc.rotate_webhook_secret("acme", NOW + 2, 0)
    assert exc.value.code == "ACCOUNT_CLOSED"
    after = await store.get_account(creds.account.id)
    assert after.webhook_secret_enc == before.webhook_secret_enc
    assert after.prev_webhook_secret_until == before.prev_webhook_secret_until
    assert (after.status_callback_url, after.mo_callback_url) == (None, None)


async def test_an_account_answer_never_carries_the_previous_secret(make_api: Any) -> None:
    api = await make_api()
    creds = await api.create_account("acme")
    await api.ctx.accounts.rotate_webhook_secret("acme", api.ctx.now_ms(), HOUR)
    reply = await api.admin("GET", f"/admin/accounts/{creds.account_id}", validate=False)
    assert reply.status == 200, reply.text
    assert "prev_webhook_secret_enc" not in reply.json
    reply = await api.admin("GET", f"/admin/accounts/{creds.account_id}")  # OpenAPI-checked
    assert reply.status == 200


# -- Alibaba-format reports, a real daemon -----------------------------------------------------


def _v1s(header: str) -> int:
    return sum(part.strip().startswith("v1=") for part in header.split(","))


async def test_aliyun_format_reports_carry_both_signatures(tmp_path: Path) -> None:
    d = Daemon(make_config(tmp_path))
    await d.start()
    receiver = WebhookReceiver()
    await receiver.start()
    try:
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        creds = await create_account(
            d, "acme", status_callback_url=receiver.url, report_format="aliyun"
        )
        assert d.ctx is not None
        _acc, new = await d.ctx.accounts.rotate_webhook_secret("acme", int(time.time() * 1000))
        for secret in (creds["webhook_secret"], new):  # before, then after the update
            receiver.secret = secret
            before = len(receiver.requests)
            async with client_for(d.http_port, creds) as c:
                r = await c.send(CN, text="hi")
                await final_status(c, r["messages"][0]["id"], 15)
            await wait_until(lambda: len(receiver.requests) > before, 15, 0.02)  # noqa: B023
            got = receiver.requests[-1]
            assert _v1s(got["headers"][signing.WEBHOOK_HEADER]) == 2
            assert receiver.bad_signatures == 0
            assert "phone_number" in got["items"][0] and "status" not in got["items"][0]
    finally:
        await d.stop()
        await receiver.stop()


# -- the command line, as a process ------------------------------------------------------------


def test_cli_overlap_hours_bad_values_rotate_nothing(tmp_path: Path) -> None:
    raw = config_dict(tmp_path)
    path = _write(tmp_path, raw)
    made = _run("account", "create", "acme", "-c", str(path))
    assert made.returncode == 0, made.stderr
    first = json.loads(made.stdout)["webhook_secret"]
    for value in ("-1", "720.01", "1e9", "nan", "inf", "-inf", "abc", ""):
        p = _run("account", "rotate-webhook-secret", "acme", f"--overlap-hours={value}",
                 "-c", str(path))  # fmt: skip
        assert p.returncode != 0, (value, p.stdout)
        assert "Traceback" not in p.stderr and "webhook_secret" not in p.stdout, value
        assert "overlap-hours" in p.stderr, (value, p.stderr)
    p = _run("account", "rotate-webhook-secret", "acme", "--overlap-hours", "-1", "-c", str(path))
    assert p.returncode != 0 and "Traceback" not in p.stderr
    ok = _run("account", "rotate-webhook-secret", "acme", "--overlap-hours=720", "-c", str(path))
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert out["webhook_secret"] != first
    hours = (out["previous_signs_until"] - time.time() * 1000) / HOUR
    assert 719.9 < hours <= 720
    zero = _run("account", "rotate-webhook-secret", "acme", "--overlap-hours=0", "-c", str(path))
    assert zero.returncode == 0 and json.loads(zero.stdout)["previous_signs_until"] is None


def test_cli_account_show_never_prints_the_sealed_previous_secret(tmp_path: Path) -> None:
    path = _write(tmp_path, config_dict(tmp_path))
    assert _run("account", "create", "acme", "-c", str(path)).returncode == 0
    assert _run("account", "rotate-webhook-secret", "acme", "-c", str(path)).returncode == 0
    shown = _run("account", "show", "acme", "-c", str(path))
    assert shown.returncode == 0, shown.stderr
    assert "prev_webhook_secret_enc" not in shown.stdout
