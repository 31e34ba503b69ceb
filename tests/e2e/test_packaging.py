"""The README walk-through, run from a built wheel instead of this source tree.

The Docker image and the systemd recipe install the package from a wheel (`pip install .`),
while every other test imports the editable source. Anything the code reads from the package
(the migrations, the default config) that the wheel left out would pass all of them and fail
on the first production start; this test catches that, with the quick start's own commands:
`smpp-bridge run` with the default configuration (ports moved to free ones), `account create`,
`send`, and `send --status` until the message is delivered.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.harness import free_port

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    out = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert out.returncode == 0, f"{args}: {out.stdout}\n{out.stderr}"
    return out.stdout


def test_quick_start_from_the_installed_wheel(tmp_path: Path) -> None:
    src, wheels = tmp_path / "src", tmp_path / "wheels"
    site, work = tmp_path / "site", tmp_path / "work"
    work.mkdir()
    # What the Dockerfile's build stage copies, and nothing else.
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "bridge", src / "bridge", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMPP_BRIDGE_")}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(src)], tmp_path, env)
    (wheel,) = wheels.glob("smpp_bridge-*.whl")
    _run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], tmp_path, env)
    # The installed copy, not the source tree, on the path (the dependencies come from this
    # environment): prove it before trusting the rest.
    env = {**env, "PYTHONPATH": str(site), "PYTHONUNBUFFERED": "1"}
    where = _run([sys.executable, "-c", "import bridge; print(bridge.__file__)"], work, env)
    assert where.strip().startswith(str(site)), where
    cli = [sys.executable, "-m", "bridge.cli"]

    cfg = yaml.safe_load((REPO / "config/default.yaml").read_text(encoding="utf-8"))
    port = free_port()
    cfg["server"]["port"] = port
    cfg["sim"].update(port=free_port(), control_port=free_port())
    (work / "bridge.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    conf = ["--config", "bridge.yaml"]
    env["SMPP_BRIDGE_URL"] = f"http://127.0.0.1:{port}"

    def smpp_bridge(*args: str) -> str:
        """The README's command line: `smpp-bridge ARGS`, from the installed copy."""
        return _run([*cli, *args], work, env, timeout=30)

    def alive() -> None:
        assert daemon.poll() is None, (work / "daemon.log").read_text()

    log = open(work / "daemon.log", "wb")
    daemon = subprocess.Popen([*cli, "run", *conf], cwd=work, env=env, stdout=log, stderr=log)
    try:
        acme = ""
        for _ in range(100):  # the master key appears once the daemon has started
            alive()
            time.sleep(0.1)
            if (work / "data" / "master.key").exists():
                with contextlib.suppress(AssertionError):
                    acme = smpp_bridge(
                        "account", "create", "acme", "--raw-text", "--country", "CN",
                        "--topup", "100", *conf,
                    )  # fmt: skip
                    break
        creds = json.loads(acme)
        assert creds["app_key"] and creds["app_secret"]
        (work / "acme.json").write_text(acme, encoding="utf-8")
        sent = None
        for _ in range(100):  # until the HTTP listener is up
            with contextlib.suppress(AssertionError):
                out = smpp_bridge(
                    "send", "--credentials", "acme.json", "--to", "13800138000",
                    "--text", "Hello from smpp-bridge",
                )  # fmt: skip
                sent = json.loads(out)
                break
            alive()
            time.sleep(0.1)
        assert sent is not None
        (msg,) = sent["messages"]
        assert (msg["status"], msg["segments"]) == ("queued", 1)
        status: dict = {}
        for _ in range(100):
            status = json.loads(
                smpp_bridge("send", "--credentials", "acme.json", "--status", msg["id"])
            )
            if status["status"] == "delivered":
                break
            time.sleep(0.1)
        assert status["status"] == "delivered", status
        assert [p["status"] for p in status["parts"]] == ["delivered"]
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            code = daemon.wait()
        log.close()
    assert code == 0, (work / "daemon.log").read_text()
    assert (work / "data" / "bridge.db").exists()
