"""Destination routing: E.164 prefix -> ordered SMSC names, with failover and a default (pure).

Kept free of bind state so it can be tested exhaustively and rebuilt on a config reload; the
connector tells `pick` which SMSCs have a live bind.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Route", "Router"]

_PREFIX_RE = re.compile(r"\+[0-9]*")


@dataclass(frozen=True, slots=True)
class Route:
    prefix: str  # "+86", "+8613"; "+" alone matches every E.164 number
    smscs: tuple[str, ...]


def _unique(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


class Router:
    """Longest matching prefix wins; its SMSCs are tried in order, then the default route's.

    Shorter matching prefixes are not fallen back to: a specific route exists because the general
    one is wrong for those numbers (price, sender id, carrier), so only the default follows it.
    """

    __slots__ = ("_default", "_lengths", "_routes")

    def __init__(self, routes: Sequence[Route], default: Sequence[str]) -> None:
        table: dict[str, tuple[str, ...]] = {}
        for route in routes:
            if not _PREFIX_RE.fullmatch(route.prefix):
                raise ValueError(f"route prefix {route.prefix!r} must be '+' and digits")
            if route.prefix in table:
                raise ValueError(f"route prefix {route.prefix!r} is listed twice")
            if not route.smscs or not all(route.smscs):
                raise ValueError(f"route {route.prefix!r} needs at least one SMSC name")
            table[route.prefix] = _unique(route.smscs)
        if not all(default):
            raise ValueError("default route has an empty SMSC name")
        self._routes = table
        self._default = _unique(default)
        self._lengths = sorted({len(prefix) for prefix in table}, reverse=True)

    def candidates(self, destination: str) -> tuple[str, ...]:
        """SMSCs to try for `destination`, in order; empty when nothing routes it."""
        for length in self._lengths:
            if length <= len(destination):
                smscs = self._routes.get(destination[:length])
                if smscs is not None:
                    return smscs + tuple(s for s in self._default if s not in smscs)
        return self._default

    def pick(self, destination: str, is_up: Callable[[str], bool]) -> str | None:
        """The first candidate with a live bind; None when all are down (the caller waits)."""
        for smsc in self.candidates(destination):
            if is_up(smsc):
                return smsc
        return None
