"""Cross-process wake-up: an acceptor process tells the owner's dispatcher that work arrived.

Without it the dispatcher would find new work only at its next idle poll. A datagram on a Linux
abstract Unix socket costs one syscall, needs no file on disk, and losing one is harmless (the
idle poll still runs), so no acknowledgement or retry is needed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable

log = logging.getLogger("bridge.pipeline")


def channel_name(store_path: str | os.PathLike[str], owner_pid: int) -> str:
    """One channel per store and owner process: two daemons on two databases never wake each
    other, and neither do two instances of a PostgreSQL fleet on one host (store.path, unused
    there, was the same for configurations in one directory: the second owner could not listen,
    and its acceptors woke the first)."""
    key = f"{os.path.abspath(store_path)}\0{owner_pid}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return f"\0smpp-bridge-{digest}"


def supported() -> bool:
    return sys.platform.startswith("linux")


class WakeListener:
    def __init__(self, name: str, on_wake: Callable[[], None]) -> None:
        self._name = name
        self._on_wake = on_wake
        self._sock: socket.socket | None = None
        self.received = 0

    def start(self) -> None:
        if not supported():
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(self._name)
        except OSError as exc:  # another owner on this store: it will be woken instead
            log.warning("wake channel unavailable (%s); relying on the idle poll", exc)
            sock.close()
            return
        sock.setblocking(False)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read)
        self._sock = sock

    def _read(self) -> None:
        assert self._sock is not None
        got = False
        while True:
            try:
                self._sock.recv(64)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            got = True
            self.received += 1
        if got:
            self._on_wake()

    def close(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None


class WakeSender:
    def __init__(self, name: str, min_interval_s: float = 0.001) -> None:
        self._name = name
        self._min = min_interval_s
        self._last = 0.0
        self._sock: socket.socket | None = None
        if supported():
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    def wake(self, _n: int = 0) -> None:
        now = time.monotonic()
        if self._sock is None or now - self._last < self._min:
            return
        self._last = now
        try:
            self._sock.sendto(b"w", self._name)
        except OSError:
            pass  # no owner listening, or its buffer is full: the idle poll covers it

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
