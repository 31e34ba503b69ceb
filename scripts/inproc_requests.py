"""What the in-process accept benchmarks share (`bench_accept_inproc.py`, `bench_pg_accept.py`):
signed sends made into aiohttp requests that an app's handler chain takes without sockets, and
a PostgreSQL cluster's CPU read off /proc. A module of its own, not imported from either script:
both parse their options and set `sys.path` (`--tree`) when imported."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


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


def server_cpu(postmaster: int) -> float:
    """CPU seconds of a PostgreSQL cluster: its postmaster and every process under it
    (backends come and go with a pool: a run that keeps its pool open counts the same ones)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        if int(entry) == postmaster or int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / TICK
