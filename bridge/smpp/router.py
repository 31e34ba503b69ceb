"""Destination routing: E.164 prefix -> ordered SMSC names, with failover and a default (pure).

Kept free of bind state so it can be tested exhaustively and rebuilt on a config reload; the
connector tells `pick` which SMSCs have a live bind.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_KEY", "Route", "Router"]

# The park key of numbers no prefix matches (prefixes start with "+", so it cannot clash).
DEFAULT_KEY = "default"

_PREFIX_RE = re.compile(r"\+[0-9]*")


@dataclass(frozen=True, slots=True)
class Route:
    prefix: str  # "+86", "+8613"; "+" alone matches every E.164 number
    smscs: tuple[str, ...]


def _unique(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


class Router:
    """Longest matching prefix wins; its SMSCs are tried in order, then the default route's
    that encode as the route's first does.

    Shorter matching prefixes are not fallen back to: a specific route exists because the general
    one is wrong for those numbers (price, sender id, carrier), so only the default follows it.
    A message is encoded once, for its route's first SMSC, and failed over as stored, so a
    default SMSC with other wire options (`encodings`: SMSC -> a key of them) is not a fallback
    for that route: a Latin-1 message went out through an SMSC without Latin-1 that way.
    """

    __slots__ = ("_candidates", "_default", "_encodings", "_lengths", "_routes")

    def __init__(
        self,
        routes: Sequence[Route],
        default: Sequence[str],
        encodings: Mapping[str, Hashable] | None = None,
    ) -> None:
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
        self._encodings = dict(encodings or {})
        self._lengths = sorted({len(prefix) for prefix in table}, reverse=True)
        # Each route's candidates worked out once: the table never changes (a reload builds a
        # new Router), and the dispatcher asks for a message's at every claim (a tuple made
        # through a generator each time before session 60).
        self._candidates = {prefix: self._build(prefix) for prefix in table}

    def _match(self, destination: str) -> str | None:
        """The longest configured prefix of `destination`, or None (the default route)."""
        for length in self._lengths:
            if length <= len(destination):
                prefix = destination[:length]
                if prefix in self._routes:
                    return prefix
        return None

    def _for(self, prefix: str | None) -> tuple[str, ...]:
        if prefix is None:
            return self._default
        return self._candidates[prefix]

    def _build(self, prefix: str) -> tuple[str, ...]:
        """A route's SMSCs, then the default route's that encode as its first does."""
        smscs = self._routes[prefix]
        enc = self._encodings
        first = enc.get(smscs[0])
        return smscs + tuple(
            s for s in self._default if s not in smscs and (first is None or enc.get(s) == first)
        )

    def candidates(self, destination: str) -> tuple[str, ...]:
        """SMSCs to try for `destination`, in order; empty when nothing routes it."""
        # `_for(_match(destination))` inline: the dispatcher asks once a message sent, and the
        # two calls were most of the answer's cost (session 61).
        routes = self._routes
        for length in self._lengths:
            if length <= len(destination):
                prefix = destination[:length]
                if prefix in routes:
                    return self._candidates[prefix]
        return self._default

    def pick(self, destination: str, is_up: Callable[[str], bool]) -> str | None:
        """The first candidate with a live bind; None when all are down (the caller waits)."""
        for smsc in self.candidates(destination):
            if is_up(smsc):
                return smsc
        return None

    # -- park keys: a backlog for a route with no live SMSC waits in the store, not in claims --

    def route_key(self, destination: str) -> str:
        """The stable name of the route `destination` takes: its prefix, or DEFAULT_KEY."""
        return self._match(destination) or DEFAULT_KEY

    def keys(self) -> list[str]:
        """Every route's key (the default route's included, even when it has no SMSC)."""
        return [*self._routes, DEFAULT_KEY]

    def routable_keys(self, is_up: Callable[[str], bool]) -> list[str]:
        """Keys of the routes with a live candidate: what this instance may un-park."""
        return [k for k in self.keys() if any(is_up(s) for s in self._for_key(k))]

    def park_key(self, destination: str, is_up: Callable[[str], bool]) -> str | None:
        """The key to park `destination` under when no SMSC of its route is up; None when one is
        (it can be sent now)."""
        prefix = self._match(destination)
        if any(is_up(s) for s in self._for(prefix)):
            return None
        return prefix or DEFAULT_KEY

    def parker(
        self, up: frozenset[str], held: Collection[str] = ()
    ) -> Callable[[str], str | None] | None:
        """`park_key` over a snapshot of the live SMSCs, for a claim to call per row (on SQLite
        from the store's thread: it reads nothing that changes). None when every route has a
        live SMSC, so a claim pays nothing then. Routes `held` are parked as if down: their
        waiting messages are being encoded again (pipeline/reencode.py)."""
        down = frozenset(
            k for k in self.keys() if k in held or not any(s in up for s in self._for_key(k))
        )
        if not down:
            return None

        def park(destination: str) -> str | None:
            key = self.route_key(destination)
            return key if key in down else None

        return park

    def _for_key(self, key: str) -> tuple[str, ...]:
        return self._for(None if key == DEFAULT_KEY else key)

    def _wire_for(self, key: str) -> Hashable | None:
        first = self._for_key(key)[:1]
        return self._encodings.get(first[0]) if first else None

    @staticmethod
    def rewired_keys(old: Router, new: Router) -> list[str]:
        """Keys of `new` some of whose numbers were encoded for other wire options under `old`
        (their first SMSC's split, packing, Latin-1 or GSM data_coding): messages waiting for
        them keep the bytes they were accepted with, which their SMSC may now read otherwise
        (a Latin-1 text as data_coding 3 to an SMSC without Latin-1, unpacked septets to one
        now set to read them packed). The default route's key counts for every number no
        prefix matches."""
        out = set()
        for key in new.keys():
            were = [key if key == DEFAULT_KEY else old.route_key(key)]
            # ... and old prefixes under this key, which the new table folded into it
            were += [p for p in old._routes if new.route_key(p) == key]
            if any(old._wire_for(w) != new._wire_for(key) for w in set(were)):
                out.add(key)
        return sorted(out)

    def to_json(self) -> str:
        """The table and each SMSC's wire options, kept in the store so that the next start can
        tell which routes encode otherwise since (`rewired_keys`), as a reload does."""
        return json.dumps(
            {
                "routes": [[p, list(s)] for p, s in self._routes.items()],
                "default": list(self._default),
                "encodings": {n: list(e) for n, e in self._encodings.items()},  # type: ignore[call-overload]
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Router:
        """A router `to_json` kept; ValueError when the text is not one."""
        try:
            data = json.loads(text)
            return cls(
                [Route(p, tuple(s)) for p, s in data["routes"]],
                data["default"],
                {n: tuple(e) for n, e in data["encodings"].items()},
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a kept route table: {exc}") from exc

    @staticmethod
    def changed_keys(old: Router, new: Router) -> set[str]:
        """Keys of `old` whose messages may route differently under `new` (a config reload):
        the key is gone, its SMSC list changed, or a new longer prefix takes some of its
        numbers. Messages parked under those keys must be looked at again."""
        added = [p for p in new._routes if p not in old._routes]
        changed = set()
        for key in old.keys():
            gone = key != DEFAULT_KEY and key not in new._routes
            if (
                gone
                or old._for_key(key) != new._for_key(key)
                or any(key == DEFAULT_KEY or p.startswith(key) for p in added)
            ):
                changed.add(key)
        return changed
