"""Cross-process wake-up: an acceptor process tells the owner's dispatcher that work arrived.

Without it the dispatcher would find new work only at its next idle poll. A datagram on a Linux
abstract Unix socket costs one syscall, needs no file on disk, and losing one is harmless (the
idle poll still runs), so no acknowledgement or retry is needed.

Sent only while the owner waits for one (`WaitFlag`). Under load the dispatcher waits for window
slots, not for wakes, and the datagram after every commit (at most one a millisecond per
acceptor) was wasted: its `sendto` was the costliest line of our code in an acceptor (~2.6% of
its samples), the owner's read ~0.7%. So the owner publishes one byte, "waiting", in memory both
sides map (a memfd the supervisor passes to each acceptor: no file on disk, nothing to own or
clean up, gone with the processes), and an acceptor reads it, without a syscall, after its
commit and sends only when it is set.

Why the flag loses no wake: the dispatcher sets the byte before each claim and clears it only
after a claim that returned work, and it waits for a wake only after a claim that found nothing
(the wait for a window slot is followed by a claim of its own). An acceptor that read "not
waiting" read it after its commit; the byte was set again before the owner's next claim, which
therefore began after that read and sees the commit. An acceptor that read "waiting" sends, and
the owner clears its wake event before the claim, not after an empty one (a datagram that came
during the claim used to be cleared with it). The commit, the claim (a thread hand-off,
SQLite's locks, a socket to PostgreSQL) and the datagram are all syscalls or locks, so neither
side's read of the other's write is reordered before its own. If the byte is unavailable (not
Linux, no memfd, an acceptor started without one) the acceptor sends after every commit as
before.

It saves datagrams while the owner has a backlog (a narrow window: 59% fewer in one run); while
the owner waits for its acceptors nearly every commit finds it waiting, as before (README,
workers).

Throttled wakes (within `min_interval_s` of the last one sent) are dropped, as before. Sending
them at the end of the interval instead (tried in session 48) closes a rare gap (a commit just
after a wake whose claim had begun waits for the next wake or the idle poll), but it sent 45%
more datagrams in the 20,000-message `--workers 2` benchmark, where the owner mostly waits for
its acceptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import mmap
import os
import socket
import sys
import time
from collections.abc import Callable

log = logging.getLogger("bridge.pipeline")

# The inherited descriptor of the owner's waiting flag, in an acceptor's environment.
WAIT_FLAG_FD_ENV = "SMPP_BRIDGE_WAIT_FLAG_FD"
MEMFD_NAME = "smpp-bridge-wait-flag"
NO_FLAG = "no shared wait flag (%s): acceptors wake the owner after every commit"
UNUSABLE = "owner's wait flag unusable (%s): waking it after every commit"


class WaitFlag:
    """One byte of shared memory: 1 while the owner's dispatcher claims or waits for a wake
    (an acceptor should send one), 0 while it is busy with work it claimed (it will claim again
    by itself). The owner makes it (`create`) and is its only writer; acceptors map the
    descriptor they inherited (`attach`) read-only."""

    def __init__(self, mem: mmap.mmap, fd: int | None) -> None:
        self._mem = mem
        self.fd = fd  # the owner's, passed to each acceptor it starts; None in an acceptor

    @classmethod
    def create(cls) -> WaitFlag | None:
        """The owner's flag, set (wake me) until its dispatcher says otherwise; None where no
        memfd can be made (the acceptors then always send)."""
        if not hasattr(os, "memfd_create"):
            return None
        fd: int | None = None
        try:
            fd = os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC)
            os.ftruncate(fd, mmap.PAGESIZE)
            mem = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            if fd is not None:
                os.close(fd)
            log.warning(NO_FLAG, exc)
            return None
        flag = cls(mem, fd)
        flag.set()
        return flag

    @classmethod
    def attach(cls, environ: dict[str, str] | os._Environ[str] | None = None) -> WaitFlag | None:
        """An acceptor's view of its owner's flag, from the descriptor named in its environment;
        None without one (the acceptor then always sends)."""
        value = (os.environ if environ is None else environ).get(WAIT_FLAG_FD_ENV, "")
        if not value.isdigit():
            return None
        fd = int(value)
        try:  # the owner's memfd, not whatever else this number may be open on
            if not os.readlink(f"/proc/self/fd/{fd}").startswith(f"/memfd:{MEMFD_NAME}"):
                raise ValueError(f"descriptor {fd} is not the owner's wait flag")
        except (OSError, ValueError) as exc:
            log.warning(UNUSABLE, exc)
            return None  # not ours: neither mapped nor closed
        try:
            mem = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ)
        except (OSError, ValueError) as exc:
            log.warning(UNUSABLE, exc)
            return None
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)  # the mapping stays
        return cls(mem, None)

    def set(self) -> None:
        self._mem[0] = 1

    def clear(self) -> None:
        self._mem[0] = 0

    def is_set(self) -> bool:
        return self._mem[0] != 0

    def close(self) -> None:
        with contextlib.suppress(BufferError, ValueError):
            self._mem.close()
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


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
    """An acceptor's side: `wake` after each commit of accepted messages."""

    def __init__(
        self, name: str, min_interval_s: float = 0.001, flag: WaitFlag | None = None
    ) -> None:
        self._name = name
        self._min = min_interval_s
        self._last = -1.0
        self._flag = flag
        self._sock: socket.socket | None = None
        # Wake calls by outcome (smpp_bridge_owner_wakes_total): a datagram sent, none because
        # the owner was not waiting, or none because one was sent less than `min_interval_s` ago.
        self.counts = {"sent": 0, "not_waiting": 0, "throttled": 0}
        if supported():
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    def wake(self, _n: int = 0) -> None:
        if self._sock is None:
            return
        if self._flag is not None and not self._flag.is_set():
            self.counts["not_waiting"] += 1
            return
        now = time.monotonic()
        if now - self._last < self._min:
            self.counts["throttled"] += 1
            return
        self._last = now
        self.counts["sent"] += 1
        try:
            self._sock.sendto(b"w", self._name)
        except OSError:
            pass  # no owner listening, or its buffer is full: the idle poll covers it

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._flag is not None:
            self._flag.close()
