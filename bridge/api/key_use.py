"""When each app key was last used, noted in memory per request and written to the store once a
minute.

An operator about to revoke a key (a rotation, a leak, an integration believed retired) asks
whether anyone still signs with it. The answer is advisory and a minute late is fine, so the
request path pays a dict assignment and no store write: with a write per request, every signed
send would add a statement inside SQLite's one write lock. Each process that authenticates
(the daemon, each `--workers` acceptor, each PostgreSQL instance) flushes its own map; the store
keeps the greatest time, so flushes in any order never move a key's time back.
"""

from __future__ import annotations

import asyncio
import logging
import os

from bridge.store.base import Store

log = logging.getLogger("bridge.api")

# How often a process writes the uses it noted (the README promises "within a minute"); the
# variable is for tests of the daemon as a whole (at least 0.1 s: no loop of empty flushes).
FLUSH_S = max(0.1, float(os.environ.get("SMPP_BRIDGE_KEY_USE_FLUSH_S", "60")))


def merged(older: dict[str, int], newer: dict[str, int]) -> dict[str, int]:
    """The uses a failed flush held put back beside those noted meanwhile, the later time of
    each key kept."""
    out = dict(older)
    for key_id, at in newer.items():
        out[key_id] = max(at, out.get(key_id, at))
    return out


class KeyUse:
    def __init__(self) -> None:
        self.noted: dict[str, int] = {}
        self._down = False  # the last flush failed: its line was logged, the next success's too

    def note(self, key_id: str, now_ms: int) -> None:
        """A request signed with `key_id` passed its signature check: no I/O here."""
        self.noted[key_id] = now_ms

    async def flush(self, store: Store) -> bool:
        """Write what was noted; on failure keep it for the next flush. One log line when the
        store stops taking them and one when it takes them again, not one a minute."""
        if not self.noted:
            return True
        batch, self.noted = self.noted, {}
        try:
            await store.keys_used(batch)
        except asyncio.CancelledError:
            self.noted = merged(batch, self.noted)
            raise
        except Exception as exc:
            self.noted = merged(batch, self.noted)
            if not self._down:
                self._down = True
                log.warning(
                    "app keys' last use not recorded, kept for the next try: %s: %s",
                    type(exc).__name__,
                    exc,
                )
            return False
        if self._down:
            self._down = False
            log.info("app keys' last use recorded again")
        return True

    async def run(self, store: Store) -> None:
        """Flush every FLUSH_S until cancelled; the clean stop flushes once more after it."""
        while True:
            await asyncio.sleep(FLUSH_S)
            await self.flush(store)
