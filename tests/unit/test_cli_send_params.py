"""`smpp-bridge send --params` refuses a repeated key, as the server does (DUPLICATE_JSON_KEY):
parsed with the standard library it kept the last value silently, before any request was made,
so the server never saw the repeat."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])


def _send(params: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": ROOT,
        "SMPP_BRIDGE_APP_KEY": "ak_test",
        "SMPP_BRIDGE_APP_SECRET": "not-a-real-secret",
    }
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", "send", "--url", "http://127.0.0.1:9",
         "--to", "+8613800138000", "--template", "SMS_123456789", "--params", params],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def test_a_repeated_key_in_params_is_refused_before_any_request() -> None:
    done = _send('{"code": "1234", "code": "5678"}')
    assert done.returncode != 0
    assert 'duplicate key "code" at $.code' in done.stderr, done.stderr
    assert "not-a-real-secret" not in done.stderr + done.stdout


def test_params_that_are_not_json_are_refused_as_before() -> None:
    done = _send("{code: 1234}")
    assert done.returncode != 0
    assert "--params: not JSON" in done.stderr, done.stderr
