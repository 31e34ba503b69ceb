"""What the in-process accept benchmarks share (`bench_accept_inproc.py`, `bench_pg_accept.py`):
`bench.py`'s signed sends, made into aiohttp requests that an app's handler chain takes without
sockets. A module of its own, not imported from either script: both set `sys.path` (`--tree`)
when imported, and `bench_pg_accept.py` parses its options."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any


class _Transport:
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def is_closing(self) -> bool:
        return False


class _Protocol:
    transport = _Transport()
    ssl_context = None
    peername = ("127.0.0.1", 1)
    sockname = ("127.0.0.1", 2)
    _reading_paused = False

    def pause_reading(self, *args: Any, **kwargs: Any) -> None:
        pass

    def resume_reading(self, *args: Any, **kwargs: Any) -> None:
        pass

    def force_close(self) -> None:
        pass


class _Writer:
    buffer_size = 0
    output_size = 0
    transport = _Transport()

    async def drain(self) -> None:
        pass


def mocked_sends(
    app: Any, loop: asyncio.AbstractEventLoop, sends: Iterable[tuple[bytes, dict[str, str]]]
) -> list[Any]:
    """Each (body, signed headers) as a POST /v1/messages request of `app`, its body fed whole
    (what `app._handle` takes, as aiohttp's server would give it)."""
    from aiohttp import streams
    from aiohttp.test_utils import make_mocked_request
    from multidict import CIMultiDict

    out = []
    for body, headers in sends:
        payload = streams.StreamReader(_Protocol(), 2**16, loop=loop)  # type: ignore[arg-type]
        payload.feed_data(body)
        payload.feed_eof()
        out.append(
            make_mocked_request(
                "POST", "/v1/messages", headers=CIMultiDict(headers), payload=payload,
                app=app, loop=loop, writer=_Writer(), transport=_Transport(),
                protocol=_Protocol(),
            )
        )  # fmt: skip
    return out


def signed_send(creds: Any, i: int, text: str, signed_at: datetime) -> tuple[bytes, dict[str, str]]:
    """`bench.py`'s i-th send from `creds`' key: its body and its signed headers. A new number
    each, as bench.py's (the frequency rules allow a number a few a day); random nonces and
    Idempotency-Keys, as most clients' are."""
    from bridge.api import signing

    body = json.dumps({"to": f"+86138{i:08d}", "text": text}).encode()
    headers = {
        "Host": "127.0.0.1:8080",
        "Content-Type": "application/json",
        "Idempotency-Key": uuid.uuid4().hex,
        "Content-Length": str(len(body)),
    }
    nonce = uuid.uuid4().hex + uuid.uuid4().hex[:8]
    headers.update(
        signing.sign_request(
            creds.app_key, creds.app_secret, "POST", "/v1/messages", "", headers, body,
            signed_at, nonce,
        )
    )  # fmt: skip
    return body, headers
