"""Fixtures of the in-process end-to-end tests: daemons on the built-in simulator, a webhook
receiver."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from bridge.app import Daemon
from tests.e2e.harness import free_port, make_config, wait_until


@pytest.fixture
async def start_daemon(tmp_path):
    """`await start_daemon(**config overrides)`: a started daemon whose simulator bind is up;
    every daemon started is stopped at teardown, newest first."""
    started: list[Daemon] = []

    async def start(**overrides) -> Daemon:
        d = Daemon(make_config(tmp_path, **overrides))
        await d.start()
        started.append(d)
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        return d

    yield start
    for d in reversed(started):
        await d.stop()


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another program listens on."""
    port = free_port()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        yield port
