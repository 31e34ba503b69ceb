"""A daemon or command started while PostgreSQL cannot be reached says which server it could not
reach, without the DSN's password: it printed "[Errno 111] Connection refused" and nothing else.
Real connection attempts on 127.0.0.1 (a port nothing listens on) and a name that cannot
resolve; the real CLI as a process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bridge.store.base import StoreUnusableError
from bridge.store.postgres import PostgresStore

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.e2e.harness import config_dict, free_port  # noqa: E402

SECRET = "s3cret-pw"


@pytest.mark.parametrize(
    "host, port, why",
    [("127.0.0.1", None, "Connect call failed"), ("nosuchhost.invalid", 5432, "not known")],
)
async def test_an_unreachable_server_is_named_without_the_password(
    host: str, port: int | None, why: str
) -> None:
    port = port or free_port()
    store = PostgresStore(f"postgresql://bridge:{SECRET}@{host}:{port}/bridge")
    with pytest.raises(StoreUnusableError) as raised:
        await store.open()
    message = str(raised.value)
    assert message.startswith(f"cannot connect to PostgreSQL at {host}:{port}: "), message
    assert why in message and SECRET not in message


def test_run_with_the_database_down_exits_naming_the_server(tmp_path: Path) -> None:
    port = free_port()
    cfg = config_dict(
        tmp_path, store={"engine": "postgres", "dsn": f"postgresql://b:{SECRET}@127.0.0.1:{port}/b"}
    )
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": _ROOT},
    )
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert f"STORE_UNUSABLE: cannot connect to PostgreSQL at 127.0.0.1:{port}" in p.stderr
    assert SECRET not in p.stderr + p.stdout and "Traceback" not in p.stderr
