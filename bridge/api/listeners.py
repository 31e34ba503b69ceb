"""The daemon's HTTP ports, held before it binds to any SMSC.

Why: a start that fails on a port in use must not have touched the carriers. Listening last, the
daemon had already bound (and then dropped) every SMSC when it found server.port taken: a bind
for nothing, counted against the carrier's bind limits. So the ports are taken first: each
socket bound (asyncio's create_server with start_serving=False), which fails on a port another
program listens on, and listening only once its application is ready (ReservedSite). Meanwhile a
client is refused, as before, when nothing was bound until the binds were up.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from bridge.config import Config


async def listening(start: Awaitable[Any], where: str) -> Any:
    """Await a listener's start; a refusal names the address and the setting that chose it.

    Why: the bare OSError ("error while attempting to bind on address ('127.0.0.1', 8081)")
    left the operator to guess which of the daemon's up to five ports it was."""
    try:
        return await start
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise OSError(exc.errno, f"cannot listen on {where}: {why}") from exc


def http_ports(config: Config) -> list[tuple[str, str, int]]:
    """(setting, host, port) of each HTTP listener the configuration asks for: the API's, the
    admin one's and the Alibaba face's."""
    server = config.server
    out = [("server.port", server.host, server.port)]
    if server.admin_port is not None:
        out.append(("server.admin_port", server.admin_host or server.host, server.admin_port))
    if config.aliyun.enabled:
        out.append(("aliyun.port", config.aliyun.host or server.host, config.aliyun.port))
    return out


class Reserved:
    """A port bound but not listening yet; its protocol factory is given at serve time."""

    def __init__(self, server: asyncio.Server, where: str) -> None:
        self.server = server
        self.where = where
        self.factory: Any = None

    def protocol(self) -> asyncio.Protocol:
        assert self.factory is not None, "a reserved port accepted before it served"
        protocol: asyncio.Protocol = self.factory()
        return protocol

    def close(self) -> None:
        self.server.close()


async def reserve(setting: str, host: str, port: int, *, reuse_port: bool) -> Reserved:
    """Bind host:port without listening (start_serving=False)."""
    holder: list[Reserved] = []
    loop = asyncio.get_running_loop()
    start = loop.create_server(
        lambda: holder[0].protocol(),
        host,
        port,
        reuse_address=True,
        reuse_port=reuse_port,
        start_serving=False,
    )
    where = f"{host}:{port} ({setting})"
    server = await listening(start, where)
    holder.append(Reserved(server, where))
    return holder[0]


async def reserve_all(config: Config, *, reuse_port: bool = False) -> dict[str, Reserved]:
    """Every HTTP port of the configuration, by setting; none left held when one is refused."""
    held: dict[str, Reserved] = {}
    try:
        for setting, host, port in http_ports(config):
            held[setting] = await reserve(setting, host, port, reuse_port=reuse_port)
    except BaseException:
        for r in held.values():
            r.close()
        raise
    return held


async def check_free(config: Config) -> None:
    """The owner of acceptor processes (server.workers): its acceptors will listen on these
    ports (SO_REUSEPORT among themselves), so it only checks that nothing else holds them
    before it binds, and lets them go. Taken with SO_REUSEPORT as they will be: a port another
    program listens on is refused, but not one the acceptors of this daemon's previous owner
    still hold for a moment after it was killed (they stop once they see it gone). Taken
    without, that restart was refused "address in use" (the PostgreSQL chaos soak's owner kill).
    Another daemon's acceptors, of the same user, are not told apart from those."""
    held = await reserve_all(config, reuse_port=True)
    for r in held.values():
        r.close()
        await r.server.wait_closed()


class ReservedSite(web.BaseSite):
    """An aiohttp site on a Reserved port: starting it listens and accepts. Its listen can
    still fail, if another program bound the port with SO_REUSEADDR meanwhile and listens:
    the error names the setting all the same (Daemon._listen)."""

    __slots__ = ("_reserved",)

    def __init__(self, runner: web.BaseRunner, reserved: Reserved) -> None:
        super().__init__(runner)
        self._reserved = reserved

    @property
    def name(self) -> str:
        return f"http://{self._reserved.where}"

    async def start(self) -> None:
        await super().start()
        self._reserved.factory = self._runner.server
        self._server = self._reserved.server
        await self._server.start_serving()
