"""Operator-facing review: configuration, `config check`, SIGHUP reload, the store CLI and logs,
as an on-call operator meets them. Each test failed on the code it was written against.

Findings:

1. `account create NAME --topup X` / `--sign S` with a bad X or S creates the account, then
   refuses: exit 1, the app secret and webhook secret (shown once) are never printed, and
   running the command again answers ACCOUNT_EXISTS. The account is stranded without keys.
2. With the default set-up (simulator on, `smscs: []`, an implicit SMSC "sim" pointing at it),
   a SIGHUP after changing `sim.port` (or `sim.password`) logs "sim changed; restart to apply"
   and keeps the simulator on its old port, but rebinds the implicit SMSC to the new one: the
   only bind goes down and stays down.
3. Two SIGHUPs close together (`systemctl reload` twice, a config-management run) run two
   reloads at once: the second pops the connector the first is stopping and logs
   "reload failed" with a KeyError traceback. Reloads are not serialised.
4. `config check` (the unit's ExecStartPre) accepts `billing.tariff.tiers` that `run` refuses
   (INVALID_TARIFF: a bounded last tier, non-ascending tiers, no tier at all).
5. `config check` accepts `aliyun.port` equal to `server.port` (same host); `run` then dies with
   "address already in use", which sends the operator hunting for another process.
6. The config loader accepts a URL-safe base64 master key (`-`, `_`), so `config check` says OK,
   but the key loader accepts only standard base64: every store command and `run` then fail with
   "master key is not valid base64".
7. `config check` accepts any `store.dsn` string; a typo in the port makes `run` / `db migrate`
   fail with "ValueError: invalid literal for int() ...", naming neither `store.dsn` nor the env
   variable it came from.
8. The JSON log format escapes `"` and `\\` before redaction runs, so a configured secret
   containing either (an admin token from a password manager) is printed in clear: the net
   under the no-secrets rule has a hole in one of the two formats.
9. A stop (SIGTERM) a moment after a SIGHUP that rebinds an SMSC hangs: Daemon.stop() waits in
   Connector.stop() for a bind task that just bound and is cancelled inside a shielded
   `_hold`, with nothing left to close its connection (grace 2 s + unbind 5 s, still running
   after 10 s; systemd's TimeoutStopSec then kills it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from bridge import logs
from bridge.app import Daemon
from bridge.config import LoggingConfig, load_config
from tests.e2e.harness import config_dict, free_port, make_config, wait_until

MASTER_KEY = base64.b64encode(b"r" * 32).decode()


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMPP_BRIDGE_")}
    env.update(extra)
    return env


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env if env is not None else _clean_env(),
        timeout=60,
    )


def _store_config(tmp: Path, **extra: Any) -> Path:
    data: dict[str, Any] = {
        "store": {"engine": "sqlite", "path": str(tmp / "bridge.db")},
        "security": {"master_key": MASTER_KEY},
        "smscs": [{"name": "main", "system_id": "bridge"}],
        "logging": {"level": "WARNING"},
    }
    for k, v in extra.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    path = tmp / "bridge.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


async def _file_daemon(tmp: Path, data: dict[str, Any]) -> tuple[Daemon, Path]:
    path = tmp / "bridge.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    d = Daemon(load_config(path, env={}), config_path=str(path))
    await d.start()
    await wait_until(lambda: all(c.is_up for c in d.connectors.values()), 10)
    return d, path


# -- 1. account create with a bad extra strands the account ---


def test_account_create_with_a_bad_topup_or_sign_does_not_strand_the_account(tmp_path):
    """The secrets are shown once. A refused `--topup`/`--sign` must leave nothing behind (so the
    corrected command can be run again), or print the credentials it created."""
    cfg = _store_config(tmp_path)
    cases = {
        "acme": ("--topup", "12,50"),  # a comma: a typo an operator makes
        "shop": ("--sign", "X"),  # a sign name too short
    }
    stranded = []
    for name, extra in cases.items():
        p = _cli("account", "create", name, *extra, "--config", str(cfg), cwd=tmp_path)
        if p.returncode == 0:
            assert "app_secret" in p.stdout, p.stdout
            continue
        assert "Traceback" not in p.stderr, p.stderr
        listed = _cli("account", "list", "--config", str(cfg), cwd=tmp_path)
        if name in [a["name"] for a in json.loads(listed.stdout)]:
            stranded.append(f"`account create {name} {' '.join(extra)}`: {p.stderr.strip()}")
    assert not stranded, (
        "exited 1 but created the account, whose secrets were never shown:\n" + "\n".join(stranded)
    )


# -- 2. reload of sim settings with the implicit SMSC ---


async def test_reload_of_sim_port_keeps_the_implicit_sim_smsc_bound(tmp_path):
    """`sim` is restart-only: the simulator keeps its port. The implicit SMSC derived from it must
    keep pointing there, not at the new (not listening) port."""
    data = config_dict(tmp_path)
    data["smscs"] = []  # the default.yaml shape: an implicit SMSC "sim"
    d, path = await _file_daemon(tmp_path, data)
    try:
        assert list(d.connectors) == ["sim"]
        data["sim"]["port"] = free_port()
        path.write_text(yaml.safe_dump(data))
        await d.reload_from_file()
        await asyncio.sleep(0.5)
        assert d.sim.port != data["sim"]["port"]  # the simulator did not move (restart-only)
        try:
            await wait_until(lambda: d.connectors["sim"].is_up, 4)
        except AssertionError:
            raise AssertionError(
                f"after the reload the implicit SMSC points at port {d.config.smscs[0].port} "
                f"while the simulator listens on {d.sim.port}: no bind"
            ) from None
    finally:
        await d.stop()


# -- 3. two SIGHUPs close together ---


async def test_two_sighups_in_a_row_do_not_fail_a_reload(tmp_path, caplog):
    """The SIGHUP handler starts a reload task per signal; a second one arriving while the first
    waits for an unbind must wait its turn (or be merged), not fail with a KeyError."""
    d, path = await _file_daemon(tmp_path, config_dict(tmp_path))
    try:
        data = yaml.safe_load(path.read_text())
        data["smscs"][0]["window"] = 7  # a bind setting: the SMSC is rebound
        path.write_text(yaml.safe_dump(data))
        caplog.set_level(logging.INFO, logger="bridge.app")
        loop = asyncio.get_running_loop()
        # What `loop.add_signal_handler(SIGHUP, lambda: loop.create_task(...))` does per signal.
        tasks = [loop.create_task(d.reload_from_file()) for _ in range(2)]
        await asyncio.gather(*tasks)
        failed = [r for r in caplog.records if r.getMessage().startswith("reload failed")]
        assert not failed, [(r.getMessage(), r.exc_info[1] if r.exc_info else None) for r in failed]
        await wait_until(lambda: d.connectors["sim"].is_up, 5)
        assert d.config.smscs[0].window == 7
    finally:
        # Let the new bind settle first: a stop right after a rebind hangs (finding 9).
        with contextlib.suppress(AssertionError):
            await wait_until(lambda: d.connectors["sim"].is_up, 5)
        await asyncio.sleep(0.5)
        await asyncio.wait_for(d.stop(), 20)


# -- 9. SIGTERM right after a rebinding SIGHUP ---


async def test_stop_right_after_a_rebinding_reload_finishes_within_its_bounds(tmp_path):
    """`systemctl reload` then `systemctl stop` (or a deploy doing both): the daemon must stop
    within shutdown_grace_s (2) + unbind_timeout_s (5), not hang until systemd's SIGKILL."""
    d, path = await _file_daemon(tmp_path, config_dict(tmp_path))
    data = yaml.safe_load(path.read_text())
    data["smscs"][0]["window"] = 7  # the SMSC is rebound
    path.write_text(yaml.safe_dump(data))
    await d.reload_from_file()
    for _ in range(3):  # the new connector's bind task gets going (SIGTERM a moment later)
        await asyncio.sleep(0)
    stop = asyncio.get_running_loop().create_task(d.stop())
    done, _ = await asyncio.wait([stop], timeout=10)
    if not done:
        task = d.connectors["sim"]._binds[0].task
        where = task.get_stack()[-1] if task is not None else None
        stop.cancel()
        at = f"{where.f_code.co_filename.rsplit('/', 1)[-1]}:{where.f_lineno}" if where else "?"
        raise AssertionError(f"Daemon.stop() still running after 10 s; the bind task is at {at}")


# -- 4-7. `config check` passes what `run` refuses ---


def test_config_check_refuses_tariff_tiers_the_daemon_refuses(tmp_path):
    bad = {
        "bounded last tier": [{"up_to": 100, "price": 5}],
        "not ascending": [{"up_to": 100, "price": 5}, {"up_to": 50, "price": 4}, {"price": 3}],
        "no tier": [],
    }
    for what, tiers in bad.items():
        cfg = _store_config(tmp_path, billing={"tariff": {"tiers": tiers}})
        check = _cli("config", "check", str(cfg), cwd=tmp_path)
        assert check.returncode == 1, f"{what}: config check passed {tiers}"
        assert "billing.tariff.tiers" in check.stderr, check.stderr
    # The daemon's commands refused them too (INVALID_TARIFF) after the check had passed them;
    # now they refuse them at load, naming the same path (tiers counted from 0, as in YAML).
    cfg = _store_config(tmp_path, billing={"tariff": {"tiers": bad["bounded last tier"]}})
    listed = _cli("tariff", "list", "--config", str(cfg), cwd=tmp_path)
    assert listed.returncode == 1, listed.stderr
    assert "billing.tariff.tiers[0].up_to" in listed.stderr, listed.stderr


def test_config_check_refuses_aliyun_port_equal_to_server_port(tmp_path):
    cfg = _store_config(tmp_path, server={"port": 18080}, aliyun={"enabled": True, "port": 18080})
    check = _cli("config", "check", str(cfg), cwd=tmp_path)
    assert check.returncode == 1, "config check passed aliyun.port == server.port"
    assert "aliyun.port" in check.stderr, check.stderr


def test_a_master_key_config_check_accepts_is_one_the_commands_accept(tmp_path):
    """URL-safe base64 of 32 bytes: the loader's `_decode_key` accepts it, `decode_master_key`
    does not. Whatever the rule, `config check` and the commands must agree."""
    key = base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode()
    assert "-" in key and "_" in key
    cfg = _store_config(tmp_path, security={"master_key": None})
    env = _clean_env(SMPP_BRIDGE_MASTER_KEY=key)
    check = _cli("config", "check", str(cfg), cwd=tmp_path, env=env)
    listed = _cli("account", "list", "--config", str(cfg), cwd=tmp_path, env=env)
    assert check.returncode == listed.returncode, (
        f"config check exit {check.returncode}, account list exit {listed.returncode}: "
        f"{listed.stderr.strip()}"
    )


def test_config_check_names_a_malformed_store_dsn(tmp_path):
    dsn = "postgresql://bridge:Sup3rS3cretPw@127.0.0.1:54x2/bridge"
    cfg = _store_config(tmp_path, store={"engine": "postgres", "path": None})
    data = yaml.safe_load(cfg.read_text())
    del data["store"]["path"]
    cfg.write_text(yaml.safe_dump(data))
    env = _clean_env(SMPP_BRIDGE_STORE_DSN=dsn)
    check = _cli("config", "check", str(cfg), cwd=tmp_path, env=env)
    assert "Sup3rS3cretPw" not in check.stdout + check.stderr
    assert check.returncode == 1, "config check passed a DSN whose port is not a number"
    assert "store.dsn" in check.stderr, check.stderr


# -- 8. redaction in JSON lines ---


def test_json_lines_redact_a_secret_containing_a_quote_or_backslash(tmp_path):
    token = 'adm"Tok\\en-0123456789abcdef'
    cfg = make_config(tmp_path, server={"admin_token": token})
    assert token in logs.config_secrets(cfg)
    for fmt in ("json", "text"):
        out = io.StringIO()
        handler = logs.make_handler(
            LoggingConfig(format=fmt), secrets=logs.config_secrets(cfg), stream=out
        )
        logger = logging.getLogger("bridge.test.review_redaction")
        logger.addHandler(handler)
        logger.propagate = False
        try:
            logger.warning("token %s", token, extra={"auth": token})
        finally:
            logger.removeHandler(handler)
            logger.propagate = True
        line = out.getvalue()
        shown = json.loads(line) if fmt == "json" else None
        assert "0123456789abcdef" not in line, (fmt, line)
        if shown is not None:
            assert token not in (shown["msg"], shown["auth"]), line


# -- noticed by the same review, fixed without a test of their own until here ---


def test_bad_cli_arguments_are_one_line_errors_not_tracebacks(tmp_path):
    """`status --timeout -1|nan`, `status --url notaurl` and `run --workers -1` printed a
    ValueError (or skipped the 0..64 bound); `send --credentials` with a JSON list an
    AttributeError. Each is now one line naming the argument, exit 1 or 2."""
    creds = tmp_path / "creds.json"
    creds.write_text("[1]")
    cases = [
        (("status", "--timeout", "-1"), "--timeout"),
        (("status", "--timeout", "nan"), "--timeout"),
        (("status", "--url", "notaurl"), "--url"),
        (("run", "--workers", "65"), "--workers"),
        (("send", "--credentials", str(creds), "--to", "+8613800138000", "--text", "x"), "JSON"),
    ]
    for args, named in cases:
        p = _cli(*args, cwd=tmp_path)
        assert p.returncode in (1, 2), (args, p.returncode)
        assert "Traceback" not in p.stderr and "Error:" not in p.stderr, p.stderr
        assert named in p.stderr, (args, p.stderr)


def test_smsc_names_that_share_a_password_variable_are_refused(tmp_path):
    """`a-b` and `a_b` both read SMPP_BRIDGE_SMSC_A_B_PASSWORD: one carrier's secret would be
    sent to the other."""
    cfg = _store_config(
        tmp_path,
        smscs=[{"name": "a-b", "system_id": "x"}, {"name": "a_b", "system_id": "y"}],
    )
    check = _cli("config", "check", str(cfg), cwd=tmp_path)
    assert check.returncode == 1, check.stdout
    assert "smscs[1].name" in check.stderr and "SMPP_BRIDGE_SMSC_A_B_PASSWORD" in check.stderr


def test_cli_topup_with_a_ref_is_credited_once(tmp_path):
    """`bill topup ACCOUNT AMOUNT --ref R` run twice (the operator unsure the first went
    through) credited the payment twice; the admin API already answered duplicate_ref."""
    cfg = _store_config(tmp_path)
    created = _cli("account", "create", "acme", "--config", str(cfg), cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    account = json.loads(created.stdout)["account"]
    first = _cli(
        "bill", "topup", account, "5", "--ref", "pay-1", "--config", str(cfg), cwd=tmp_path
    )
    again = _cli(
        "bill", "topup", account, "5", "--ref", "pay-1", "--config", str(cfg), cwd=tmp_path
    )
    assert first.returncode == 0 and again.returncode == 0, (first.stderr, again.stderr)
    assert json.loads(again.stdout)["duplicate_ref"] == "pay-1"
    assert json.loads(again.stdout)["cash_micro"] == 5_000_000
