"""Rotating the master key (bridge/reseal.py, README "Secrets"): real daemons on one SQLite
store, signed requests, and `smpp-bridge secrets reseal` as a real subprocess.

The steps an operator takes: daemons run on key 1; they restart with key 2 as the master key and
key 1 as the previous one (requests keep verifying); `secrets reseal` seals every secret under
key 2; daemons restart with key 2 alone and still verify every key and sign every webhook.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import tests.store_engines as engines
from bridge.accounts import AccountService
from bridge.app import Daemon
from bridge.client import BridgeError
from bridge.crypto import MasterKeyError, Sealer, key_id
from bridge.reseal import reseal
from tests.e2e.harness import client_for, create_account, make_config

K1 = os.urandom(32)
K2 = os.urandom(32)


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def _daemon(tmp: Path, security: dict[str, Any]) -> Daemon:
    return Daemon(make_config(tmp, security=security))


async def _account_status(d: Daemon, creds: dict[str, str]) -> tuple[int, Any]:
    async with client_for(d.http_port, creds) as c:
        try:
            status, _h, data = await c.request("GET", "/v1/account")
        except BridgeError as exc:
            return exc.status, {"error": {"code": exc.code, "message": exc.message}}
    return status, data


def _reseal(tmp: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    cfg = tmp / "rotate.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "store": {"engine": "sqlite", "path": str(tmp / "bridge.db")},
                "smscs": [{"name": "main", "system_id": "bridge"}],
                "logging": {"level": "WARNING"},
            }
        )
    )
    env = {
        **os.environ,
        "SMPP_BRIDGE_MASTER_KEY": _b64(K2),
        "SMPP_BRIDGE_PREVIOUS_MASTER_KEY": _b64(K1),
    }
    p = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "secrets", "reseal", "--config", str(cfg), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, json.loads(p.stdout)


async def test_a_master_key_rotation_keeps_every_key_working(tmp_path: Path) -> None:
    d = _daemon(tmp_path, {"master_key": _b64(K1)})
    await d.start()
    try:
        a = await create_account(d, "first")
        b = await create_account(d, "second")
        assert (await _account_status(d, a))[0] == 200
    finally:
        await d.stop()

    # Key 2 alone before the reseal: the secrets are under key 1, which it does not have. It
    # refuses to start, naming key 1 by its id (not the key), rather than answer every signed
    # request 500.
    d = _daemon(tmp_path, {"master_key": _b64(K2)})
    with pytest.raises(MasterKeyError) as refused:
        await d.start()
    await d.stop()
    assert "opens none of the 4 stored secrets" in str(refused.value)
    assert key_id(K1).hex() in str(refused.value)
    assert _b64(K1) not in str(refused.value) and _b64(K2) not in str(refused.value)

    # Both keys: everything verifies while the secrets are resealed.
    d = _daemon(tmp_path, {"master_key": _b64(K2), "previous_master_key": _b64(K1)})
    await d.start()
    try:
        assert (await _account_status(d, a))[0] == 200
        code, dry = _reseal(tmp_path, "--dry-run")
        assert code == 0 and (dry["to_reseal"], dry["already_current"]) == (4, 0), dry
        code, done = _reseal(tmp_path)
        assert code == 0 and (done["resealed"], done["unreadable"]) == (4, []), done
        code, again = _reseal(tmp_path)  # idempotent: nothing left under key 1
        assert (again["resealed"], again["already_current"]) == (0, 4), again
        c = await create_account(d, "third")  # sealed under key 2 at once
        assert (await _account_status(d, b))[0] == 200  # the cached or re-read secret, alike
    finally:
        await d.stop()

    # Key 2 alone after the reseal: every account and key works, the webhook secrets too.
    d = _daemon(tmp_path, {"master_key": _b64(K2)})
    await d.start()
    try:
        for creds in (a, b, c):
            status, data = await _account_status(d, creds)
            assert status == 200, data
            account = await d.ctx.store.get_account(creds["account"])
            assert d.ctx.accounts.webhook_secret(account) == creds["webhook_secret"]
        blobs = await d.ctx.store.sealed_secrets()
        assert len(blobs) == 6 and {b[1:5] for _k, _i, b in blobs} == {key_id(K2)}
    finally:
        await d.stop()


async def test_reseal_reports_a_secret_neither_key_opens_and_exits_1(tmp_path: Path) -> None:
    """A secret sealed under a third key (a database restored from another deployment): it is
    listed by id, left as it is, and the command exits 1, so the previous key is not removed
    while something would be lost with it."""
    d = _daemon(tmp_path, {"master_key": _b64(os.urandom(32))})
    await d.start()
    try:
        stray = await create_account(d, "stray")
    finally:
        await d.stop()
    code, out = _reseal(tmp_path)
    assert code == 1
    assert {(u["kind"], u["id"]) for u in out["unreadable"]} == {
        ("account", stray["account"]),
        ("key", stray["app_key"]),
    }
    assert out["resealed"] == 0


def test_the_previous_key_is_redacted_from_logs_inline_or_from_its_file(tmp_path: Path) -> None:
    """The previous key is as secret as the current one: `config check`'s effective view and
    the log redaction net cover it whether given inline (env) or in its file."""
    from bridge import logs

    key_file = tmp_path / "previous.key"
    key_file.write_text(_b64(K1) + "\n")
    from_file = make_config(
        tmp_path, security={"master_key": _b64(K2), "previous_master_key_file": str(key_file)}
    )
    inline = make_config(
        tmp_path, security={"master_key": _b64(K2), "previous_master_key": _b64(K1)}
    )
    assert _b64(K1) in logs.config_secrets(from_file)
    assert _b64(K1) in logs.config_secrets(inline)
    assert _b64(K1) not in repr(inline.security)


# -- the store's side, both engines (CI=1 needs PostgreSQL) ------------------------------------

engine = engines.engine
store = engines.store


async def test_reseal_on_each_engine_swaps_only_what_it_read(store: Any) -> None:
    """sealed_secrets lists every account's webhook secret and every key's secret; reseal
    writes a blob only over the one it read: a secret rotated between the read and the write
    (rotate-webhook-secret) stays as rotated."""
    old = Sealer(K1)
    svc = AccountService(store, old)
    now = 1_700_000_000_000
    creds = [await svc.create(f"acc{i}", {"raw_text": True}, now) for i in range(3)]
    rows = await store.sealed_secrets()
    assert sorted((k, i) for k, i, _b in rows) == sorted(
        [("account", c.account.id) for c in creds] + [("key", c.app_key) for c in creds]
    )
    kind, row_id, blob = next(r for r in rows if r[0] == "account")
    new = Sealer(K2, (K1,))
    replaced = new.seal("something else", row_id)
    assert not await store.reseal(kind, row_id, b"not what is stored", replaced)
    assert await store.reseal(kind, row_id, blob, replaced)
    assert not await store.reseal(kind, row_id, blob, replaced)  # no longer `blob`
    report = await reseal(store, new)
    assert (report.resealed, report.current, report.unreadable) == (5, 1, [])
    for c in creds:
        key = await store.get_key(c.app_key)
        assert new.open(key.secret_enc, c.app_key) == c.app_secret
