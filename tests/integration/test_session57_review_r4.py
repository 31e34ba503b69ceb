"""Session 57's review of a send's 202 (bridge.api.accepted) and the body stream's
resume_reading (http_errors._Handler): the API behind the daemon's runner on a real port, raw
TCP on keep-alive connections, a real SQLite file.

- A request taken from aiohttp's queue before its body came (headers and body in two writes,
  Expect: 100-continue) leaves aiohttp's C parser counting one request more in flight than the
  protocol's queue holds: pipelined requests behind it stop the parser at 31 queued, where the
  protocol pauses nothing, and only a feed of b"" parses the rest. The merged resume_reading
  fed nothing unpaused: 31 answers, then the connection waited for the client's next bytes.
- The short way's answers against aiohttp's own over the cases a real client sends: pipelined,
  a body in pieces, chunked, Expect: 100-continue, HTTP/1.0 keep-alive, a client that closed;
  the metrics' counts the same.

The module imports no helper of the merge's test module, so that it runs on the tree before
the merge as well: `R4_DUMP=path` writes the masked answers there, to be compared between two
trees (its `daemon` fixture and `ServedApi` are tests/integration/conftest.py's since session
59, shared with the route cache's tests: copy that conftest's along to an older tree).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import socket
from typing import Any

import pytest

from bridge.api import http_errors
from tests.integration.conftest import Creds, ServedApi, prepare_headers

try:  # the tree before session 57 has no short way: every answer is aiohttp's
    from bridge.api import accepted
except ImportError:  # pragma: no cover - only on the tree before the merge
    accepted = None  # type: ignore[assignment]

_IDS = re.compile(rb"(msg|bat|req)_[0-9A-Za-z]+")
_DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


def _masked(answer: bytes) -> bytes:
    return _DATE.sub(b"\r\nDate: -\r\n", _IDS.sub(rb"\1_-", answer))


async def _answer(reader: asyncio.StreamReader, timeout: float = 10) -> bytes:
    """One answer (its interim 100 Continue included, as the client reads it)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    if head.startswith(b"HTTP/1.1 100 "):
        return head + await _answer(reader, timeout)
    length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head, re.I)
    assert length is not None, head
    return head + await asyncio.wait_for(reader.readexactly(int(length.group(1))), timeout)


async def _send_apart(daemon: ServedApi, creds: Creds, writer: asyncio.StreamWriter) -> None:
    """A send whose body goes after its headers, once the server has taken the request."""
    head, body = daemon.head_and_body(creds, 99_999)
    writer.write(head)
    await writer.drain()
    await asyncio.sleep(0.1)  # the server reads the headers and starts the request
    writer.write(body)


@pytest.mark.parametrize("count", [31, 40, 80])
async def test_pipelined_sends_after_a_body_sent_apart_are_all_answered(
    daemon: ServedApi, count: int
) -> None:
    """Fails on the merged tree (40 and 80: 31 answers, then nothing within 10 s)."""
    creds = await daemon.api.create_account()
    reader, writer = await daemon.connect()
    try:
        await _send_apart(daemon, creds, writer)
        assert (await _answer(reader)).startswith(b"HTTP/1.1 202 ")
        writer.write(b"".join(daemon.request(creds, n) for n in range(count)))
        answers = [await _answer(reader) for _ in range(count)]
    finally:
        writer.close()
    tos = [json.loads(a.split(b"\r\n\r\n", 1)[1])["messages"][0]["to"] for a in answers]
    assert tos == [f"+86138000{n:05d}" for n in range(count)]


async def test_pipelined_sends_after_a_continue_are_all_answered(daemon: ServedApi) -> None:
    """The same with Expect: 100-continue, whose body always comes after the request was taken
    (fails on the merged tree)."""
    creds = await daemon.api.create_account()
    reader, writer = await daemon.connect()
    try:
        head, body = daemon.head_and_body(creds, 99_999, extra={"Expect": "100-continue"})
        writer.write(head)
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == (
            b"HTTP/1.1 100 Continue\r\n\r\n"
        )
        writer.write(body)
        assert (await _answer(reader)).startswith(b"HTTP/1.1 202 ")
        writer.write(b"".join(daemon.request(creds, n) for n in range(40)))
        answers = [await _answer(reader) for _ in range(40)]
    finally:
        writer.close()
    assert all(a.startswith(b"HTTP/1.1 202 ") for a in answers)


async def _exchanges(daemon: ServedApi, creds: Creds) -> list[bytes]:
    """A client's ways of sending, each answer read in full."""
    out: list[bytes] = []
    n = iter(range(10_000))
    reader, writer = await daemon.connect()
    try:
        for _ in range(3):  # one at a time
            writer.write(daemon.request(creds, next(n)))
            out.append(await _answer(reader))
        writer.write(b"".join(daemon.request(creds, next(n)) for _ in range(5)))  # pipelined
        out += [await _answer(reader) for _ in range(5)]
        data = daemon.request(creds, next(n))  # in pieces of 7 bytes
        for i in range(0, len(data), 7):
            writer.write(data[i : i + 7])
            await writer.drain()
        out.append(await _answer(reader))
        head, body = daemon.head_and_body(  # chunked, in three chunks
            creds, next(n), extra={"Transfer-Encoding": "chunked"}
        )
        thirds = [body[:10], body[10:20], body[20:]]
        writer.write(head + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in thirds) + b"0\r\n\r\n")
        out.append(await _answer(reader))
        head, body = daemon.head_and_body(creds, next(n), extra={"Expect": "100-continue"})
        writer.write(head)
        out.append(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10))
        writer.write(body)
        out.append(await _answer(reader))
    finally:
        writer.close()
    reader, writer = await daemon.connect()  # HTTP/1.0 asking to keep the connection
    try:
        for _ in range(2):
            writer.write(
                daemon.request(creds, next(n), version="1.0", extra={"Connection": "keep-alive"})
            )
            out.append(await _answer(reader))
    finally:
        writer.close()
    reader, writer = await daemon.connect()  # a client that sends and goes
    writer.write(daemon.request(creds, next(n)))
    await writer.drain()
    writer.close()
    await asyncio.sleep(0.2)
    return out


def _counts(daemon: ServedApi) -> dict[str, int]:
    return {
        f"{endpoint} {status} {code}": count
        for (endpoint, status, code), count in sorted(daemon.api.ctx.metrics._requests.items())
    }


async def test_the_short_way_answers_every_way_of_sending_as_aiohttp(
    daemon: ServedApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The short way off (aiohttp's prepare and write), then on: the same bytes, the same
    counts (one more send each way: the client that went was counted as sent)."""
    runs: list[tuple[list[bytes], dict[str, int]]] = []
    for checked in (False, None):
        if accepted is not None:
            monkeypatch.setattr(accepted, "_checked", checked)
        before = _counts(daemon)
        answers = await _exchanges(daemon, await daemon.api.create_account())
        after = _counts(daemon)
        runs.append(
            ([_masked(a) for a in answers], {k: after[k] - before.get(k, 0) for k in after})
        )
    (plain, plain_counts), (short, short_counts) = runs
    assert short == plain
    assert short_counts == plain_counts
    statuses = [a.split(b" ", 2)[1] for a in plain]
    assert statuses == [b"202"] * 10 + [b"100", b"202", b"202", b"202"]
    if accepted is not None:
        assert accepted._checked is True
    dump = os.environ.get("R4_DUMP")
    if dump:  # for a comparison with another tree
        with open(dump, "wb") as out:
            out.write(b"\n----\n".join(plain))
            out.write(json.dumps(plain_counts, sort_keys=True).encode())


async def test_a_slow_reader_gets_every_202_whole_and_in_order(
    daemon: ServedApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sends of 30 numbers each (202s of ~6 KB) pipelined by a client that reads nothing for a
    while: the server's writes wait for the socket (write_eof's drain), then every answer comes
    whole, in order."""
    creds = await daemon.api.create_account()
    requests = []
    for n in range(60):
        body = json.dumps(
            {"to": [f"+8613{n:03d}{i:06d}" for i in range(30)], "text": "Hi there."}
        ).encode()
        headers = prepare_headers(
            f"127.0.0.1:{daemon.port}", "POST", "/v1/messages", "", body, creds=creds,
            headers=None, content_type="application/json",
            idempotency_key=f"idem-{secrets.token_hex(8)}", when=daemon.api.clock.utc(),
            nonce=None,
        )  # fmt: skip
        headers["Content-Length"] = str(len(body))
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        requests.append(f"POST /v1/messages HTTP/1.1\r\n{lines}\r\n".encode() + body)
    from aiohttp.web_protocol import RequestHandler

    paused = [0]
    real = RequestHandler.pause_writing

    def counted(self: RequestHandler) -> None:
        paused[0] += 1
        real(self)

    monkeypatch.setattr(RequestHandler, "pause_writing", counted)
    made = http_errors._Handler.connection_made

    def small_buffers(self: http_errors._Handler, transport: Any) -> None:
        made(self, transport)  # the server's socket and write buffer small: it must wait
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport.set_write_buffer_limits(high=8192)

    monkeypatch.setattr(http_errors._Handler, "connection_made", small_buffers)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client slow to take
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", daemon.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.transport.set_write_buffer_limits(high=1 << 22)
        writer.write(b"".join(requests))
        await asyncio.sleep(1.0)  # nothing read: the server's socket buffer fills
        answers = [await _answer(reader) for _ in requests]
    finally:
        writer.close()
    firsts = [json.loads(a.split(b"\r\n\r\n", 1)[1])["messages"][0]["to"] for a in answers]
    assert firsts == [f"+8613{n:03d}000000" for n in range(60)]
    assert paused[0] > 0  # the server did wait for the socket
