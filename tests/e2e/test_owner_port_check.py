"""The owner of acceptor processes checks its HTTP ports before binding to any SMSC
(listeners.check_free): a port another program listens on refuses the start, but a port the
acceptors of this daemon's previous owner still hold (SO_REUSEPORT, as acceptors listen) does
not. A killed owner's acceptors outlive it for a moment, and its restart was refused "address in
use" while they did (the PostgreSQL chaos soak's owner kill)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.api.listeners import check_free
from tests.e2e.harness import make_config


@pytest.fixture
def held(request: pytest.FixtureRequest) -> Iterator[int]:
    """A port listened on, with SO_REUSEPORT (an acceptor's) or without (another program's)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if request.param:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("held", [True], indirect=True, ids=["an-acceptor-of-ours"])
async def test_a_port_our_old_acceptors_still_hold_passes(tmp_path: Path, held: int) -> None:
    await check_free(make_config(tmp_path, server={"port": held}))


@pytest.mark.parametrize("held", [False], indirect=True, ids=["another-program"])
async def test_a_port_another_program_holds_is_refused_naming_it(tmp_path: Path, held: int) -> None:
    with pytest.raises(OSError, match=r"\(server\.port\)"):
        await check_free(make_config(tmp_path, server={"port": held}))
