"""Session 49's review of the drain of a refusal from the headers (bridge/api/bodies.py).

The rest of a body still coming is read and dropped until 0.5 s pass without a byte
(DRAIN_IDLE_S). That pause was timed by the event loop: a loop held up past it (a busy daemon, a
loaded machine) found the timer due and the client's bytes waiting in the same turn, and the
timer won. The drain stopped with the body still arriving, and the close with bytes unread was
the reset it exists to avoid: nginx in front answered its client 502 instead of the refusal
(and the tests of it failed now and then on a loaded machine). Bytes that came in while the
loop was held up are no pause: the drain goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from bridge.api.bodies import DRAIN_IDLE_S, DRAIN_MAX_S
from tests.integration import test_session49_proxy_front as front

daemon = front.daemon  # the daemon with the Alibaba face, and an account


async def test_a_loop_held_up_past_the_idle_time_does_not_cut_a_body_still_coming(
    daemon: Any,
) -> None:
    d, creds = daemon
    port = d.http_port
    request = front._request("POST /v1/messages", front.CASES["unknown app key"](port, creds))
    head = request.index(b"\r\n\r\n") + 4
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request[: head + 1000])
        async with asyncio.timeout(10):
            assert (await reader.readline()).startswith(b"HTTP/1.1 401")
        await asyncio.sleep(0.1)  # the daemon is in its drain, waiting for more of the body
        # More of the body arrives, into the daemon's socket buffer at once, while the daemon's
        # loop (this test's) is held up past the drain's idle time; then the rest of it.
        writer.write(request[head + 1000 : head + 60_000])
        time.sleep(DRAIN_IDLE_S + 0.3)  # the hold-up
        writer.write(request[head + 60_000 :])
        async with asyncio.timeout(10):
            while await reader.read(65536):  # a reset raises ConnectionResetError here
                pass
    finally:
        writer.close()


async def test_a_client_that_trickles_its_body_is_closed_after_five_seconds(daemon: Any) -> None:
    """The drain's other bound (README "Slow clients"): a body that keeps coming, 100 bytes
    every 0.3 s, is read for DRAIN_MAX_S, then the connection closes; it is not held for as
    long as the client trickles (each such connection has its place in max_connections)."""
    d, creds = daemon
    headers = front.CASES["unknown app key"](d.http_port, creds)
    request = front._request("POST /v1/messages", headers)
    head = request.index(b"\r\n\r\n") + 4
    reader, writer = await asyncio.open_connection("127.0.0.1", d.http_port)
    writer.write(request[:head])

    async def trickle() -> None:
        for at in range(head, len(request), 100):
            writer.write(request[at : at + 100])
            await asyncio.sleep(0.3)

    feeding = asyncio.create_task(trickle())
    try:
        async with asyncio.timeout(10):
            assert (await reader.readline()).startswith(b"HTTP/1.1 401")
            answered = time.monotonic()
            with contextlib.suppress(ConnectionResetError):  # it was still sending
                while await reader.read(65536):
                    pass
        held = time.monotonic() - answered
        assert DRAIN_MAX_S - 0.5 < held < DRAIN_MAX_S + 3, held
    finally:
        feeding.cancel()
        writer.close()
