"""The Node.js example a customer copies (docs/examples/node/), run against a real daemon.

`bridge-client.mjs` was written from the README's "HTTP API" section and docs/ alone, with the
standard library only; `tour.mjs` signs and sends one message and a batch, replays its
Idempotency-Key and conflicts with it, reads statuses with their parts, lists messages with
escaped and bare `+`, unicode and repeated parameters, reads the balance, pages the ledger,
fetches the CDR CSV and receives the status webhooks on its own HTTP server, verifying each
signature and handling each report once although the gateway posts it again (the receiver
answers its first POST 503 after handling it). Here the daemon is `smpp-bridge run` as a
subprocess on its simulator and the account is made with the CLI, as the README's quick start
does. Skips without `node`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import DaemonProcess, config_dict
from tests.ports import free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "node"
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not on PATH")
async def test_node_example_tour_against_a_daemon(tmp_path: Path) -> None:
    assert NODE is not None
    cfg = config_dict(tmp_path, webhooks={"retry_schedule_s": [1], "timeout_s": 2})
    daemon = DaemonProcess(tmp_path, cfg)
    daemon.start()
    try:
        await daemon.wait_ready()
        hook_port = free_port()
        hook_url = f"http://127.0.0.1:{hook_port}/hooks"
        cmd = [sys.executable, "-m", "bridge.cli", "account", "create", "acme", "--raw-text",
               "--country", "CN", "--topup", "100", "--callback", hook_url,
               "--config", str(daemon.path)]  # fmt: skip
        create = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
        out, _ = await create.communicate()
        assert create.returncode == 0
        creds = tmp_path / "acme.json"
        creds.write_bytes(out)
        assert json.loads(out)["webhook_secret"]
        tour = await asyncio.create_subprocess_exec(
            NODE,
            "tour.mjs",
            cwd=EXAMPLE,
            env={
                **os.environ,
                "BRIDGE_URL": f"http://127.0.0.1:{daemon.port}",
                "CREDENTIALS": str(creds),
                "WEBHOOK_PORT": str(hook_port),
                "DEDUP_CHECK": "1",
                "TOUR_TIMEOUT_S": "15",
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        printed, _ = await asyncio.wait_for(tour.communicate(), 30)
        text = printed.decode()
        assert tour.returncode == 0, text
        assert "FAIL" not in text and "PASSED: 0 failed" in text, text
        assert sum(line.startswith("ok ") for line in text.splitlines()) >= 30, text
    finally:
        daemon.stop()
