"""Session 48: an operator's trial of a single-node SQLite deployment, following README's "Running
in production" literally (each test here failed before its fix), with real daemons, the
simulator and the CLI as real subprocesses.

1. Rotating the master key (README "Secrets") under systemd, where the key had been set up in
   `/etc/smpp-bridge/master.key` ("Under systemd") and the rotation's step 1 puts the new key and
   the old one in the unit's environment file: step 2's `smpp-bridge secrets reseal -c
   /etc/smpp-bridge/bridge.yaml`, run from the operator's shell, which does not load that file,
   had the key file's old key alone. It resealed nothing and reported every secret
   `already_current` with nothing `unreadable`, step 3's signal to drop the previous key; the
   restart without it refused to start ("the master key opens none of the 2 stored secrets").
   The run now names the keys it has (`master_key`, `previous_master_keys`), warns on stderr
   when it has no previous key, and the daemon's start line names its own, so the two can be
   compared; README says to load the environment file first.
2. docs/signing-example.md's webhook example, "a final status report as the gateway sends it",
   lacked two of its fields (`final`, `receipt_inferred_from`): a receiver written from it, or
   a fixture copied from it, never saw what the gateway posts. The page's body now has the
   fields of a real report, in their order (its signature recomputed by tests/unit).
3. `db after-restore` run while the daemon still ran was refused (STORE_IN_USE, as README says)
   with the daemon start's advice, "one daemon per SQLite store; several instances need
   PostgreSQL", which says nothing about what to do; `db restore` said "stop it first". Both
   say that now.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    DaemonProcess,
    WebhookReceiver,
    client_for,
    config_dict,
    wait_until,
)
from tests.unit.test_signing import doc_blocks

K_OLD = os.urandom(32)
K_NEW = os.urandom(32)
KEY_VARS = ("SMPP_BRIDGE_MASTER_KEY", "SMPP_BRIDGE_PREVIOUS_MASTER_KEY")


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def _id(key: bytes) -> str:
    return hashlib.sha256(key).digest()[:4].hex()


def _shell_env(**keys: str) -> dict[str, str]:
    """The operator's shell: none of the unit's variables unless given."""
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARS}
    return {**env, **keys}


def _cli(cfg: Path, *args: str, env: dict[str, str]) -> tuple[int, Any, str]:
    p = subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args, "--config", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else None, p.stderr


async def _daemon(
    tmp: Path, cfg: dict[str, Any], monkeypatch: pytest.MonkeyPatch, **keys: str
) -> DaemonProcess:
    """A daemon started as the unit starts it: the environment file's variables set."""
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)
    for var, value in keys.items():
        monkeypatch.setenv(var, value)
    d = DaemonProcess(tmp, cfg)
    d.start()
    await d.wait_ready()
    return d


async def _balance_ok(d: DaemonProcess, creds: dict[str, Any]) -> bool:
    async with client_for(d.port, creds) as c:
        status, _h, _data = await c.request("GET", "/v1/balance")
    return status == 200


async def test_reseal_from_a_shell_without_the_units_environment_is_told_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_text(_b64(K_OLD) + "\n")
    key_file.chmod(0o640)
    cfg = config_dict(tmp_path, security={"master_key": None, "master_key_file": str(key_file)})
    shell = _shell_env()
    # Before the rotation: the key file's key; an account made from the shell.
    d = DaemonProcess(tmp_path, cfg)  # writes bridge.yaml
    code, creds, err = _cli(d.path, "account", "create", "acme", "--raw-text", env=shell)
    assert code == 0, err

    # Step 1: the new key and the old one in the unit's environment; requests keep verifying.
    unit = {"SMPP_BRIDGE_MASTER_KEY": _b64(K_NEW), "SMPP_BRIDGE_PREVIOUS_MASTER_KEY": _b64(K_OLD)}
    d = await _daemon(tmp_path, cfg, monkeypatch, **unit)
    try:
        assert await _balance_ok(d, creds)
        start = f"master key {_id(K_NEW)}, previous {_id(K_OLD)}; 0 of 2 stored secrets under it"
        await wait_until(lambda: start in d.log.read_text(), 5)

        # Step 2 from the operator's shell, which has not loaded the environment file: the old
        # key alone. The counts read as done; the run says which key it had, and warns.
        code, dry, err = _cli(d.path, "secrets", "reseal", "--dry-run", env=shell)
        assert code == 0 and (dry["already_current"], dry["total"]) == (2, 2), dry
        assert (dry["master_key"], dry["previous_master_keys"]) == (_id(K_OLD), []), dry
        assert "WARNING: no previous master key" in err and _id(K_OLD) in err, err
        assert _b64(K_OLD) not in err + json.dumps(dry)

        # With the unit's environment loaded: the daemon's keys, and the real work.
        code, done, err = _cli(d.path, "secrets", "reseal", env=_shell_env(**unit))
        assert code == 0 and (done["resealed"], done["already_current"]) == (2, 0), done
        assert (done["master_key"], done["previous_master_keys"]) == (_id(K_NEW), [_id(K_OLD)])
        assert "WARNING" not in err, err
        assert await _balance_ok(d, creds)
    finally:
        d.stop()

    # Step 3: the new key alone; the daemon starts and says every secret is under it.
    d = await _daemon(tmp_path, cfg, monkeypatch, SMPP_BRIDGE_MASTER_KEY=_b64(K_NEW))
    try:
        assert await _balance_ok(d, creds)
        assert f"master key {_id(K_NEW)}; 2 of 2 stored secrets under it" in d.log.read_text()
    finally:
        d.stop()


async def test_the_docs_webhook_example_has_the_fields_a_real_report_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = WebhookReceiver()
    await hook.start()
    cfg = config_dict(tmp_path)
    d = DaemonProcess(tmp_path, cfg)
    code, creds, err = _cli(
        d.path, "account", "create", "acme", "--raw-text", "--topup", "10",
        "--callback", hook.url, env=_shell_env(),
    )  # fmt: skip
    assert code == 0, err
    d = await _daemon(tmp_path, cfg, monkeypatch)
    try:
        async with client_for(d.port, creds) as c:
            await c.send("+8613800138000", text="hello")
        await wait_until(lambda: hook.reports, 15)
    finally:
        d.stop()
        await hook.stop()
    (doc,) = json.loads(doc_blocks()["webhook-body"])
    assert list(doc) == list(hook.reports[0]), (list(doc), list(hook.reports[0]))


async def test_after_restore_beside_a_running_daemon_says_to_stop_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = await _daemon(tmp_path, config_dict(tmp_path), monkeypatch)
    try:
        for args in (["db", "after-restore"], ["db", "after-restore", "--dry-run"]):
            code, out, err = _cli(d.path, *args, env=_shell_env())
            assert (code, out) == (1, None), (out, err)
            assert "STORE_IN_USE" in err and "stop it first" in err, err
            assert "PostgreSQL" not in err, err
    finally:
        d.stop()
