"""What a configuration reload (SIGHUP) must do, decided by comparing two configs (pure).

Only SMSCs whose bind-defining settings changed are reconnected; a limit-only change (TPS,
throttle pauses, retries, submit fields) is applied to the live binds, so a reload never drops a
carrier link it does not have to.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

from bridge.config import Config, SmscConfig

# Changing any of these needs a new bind (or a new session object).
BIND_FIELDS = frozenset(
    {
        "host",
        "port",
        "receive_port",
        "tls",
        "tls_verify",
        "tls_ca_file",
        "system_id",
        "password",
        "system_type",
        "interface_version",
        "address_range",
        "bind_ton",
        "bind_npi",
        "bind_mode",
        "binds",
        "window",
        "response_timeout_s",
        "enquire_link_s",
    }
)

# Settings that cannot change without a restart of the whole daemon.
# `billing`: the tariff book and automatic settlement are built once; applied half (the API's
# copy new, the tariff book's old) a reload used to say nothing of it.
RESTART_PATHS = ("server", "store", "security", "sim", "logging", "aliyun", "billing")
# The other sections, which a reload applies (the SMSCs are reported by name).
LIVE_PATHS = ("routes", "default_route", "pipeline", "text", "rules", "webhooks", "admin")


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    add: tuple[str, ...]
    remove: tuple[str, ...]
    rebind: tuple[str, ...]
    update: tuple[str, ...]
    needs_restart: tuple[str, ...]  # sections changed that a reload cannot apply
    # Sections changed that it applies: the log line said "added [], removed [], reconnected [],
    # updated []" for a reload that changed the routes, as for one that changed nothing.
    applied: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.add or self.remove or self.rebind or self.update)


def _changed(a: SmscConfig, b: SmscConfig) -> set[str]:
    return {f.name for f in fields(SmscConfig) if getattr(a, f.name) != getattr(b, f.name)}


def plan(old: Config, new: Config) -> ReloadPlan:
    olds = {s.name: s for s in old.smscs}
    news = {s.name: s for s in new.smscs}
    rebind, update = [], []
    for name in sorted(set(olds) & set(news)):
        changed = _changed(olds[name], news[name])
        if changed & BIND_FIELDS:
            rebind.append(name)
        elif changed:
            update.append(name)
    return ReloadPlan(
        add=tuple(sorted(set(news) - set(olds))),
        remove=tuple(sorted(set(olds) - set(news))),
        rebind=tuple(rebind),
        update=tuple(update),
        needs_restart=tuple(p for p in RESTART_PATHS if getattr(old, p) != getattr(new, p)),
        applied=tuple(p for p in LIVE_PATHS if getattr(old, p) != getattr(new, p)),
    )


class HupGate:
    """SIGHUP handling around start-up: a reload asked for while the process starts is applied
    once it has started, not halfway through (it met half a daemon), nor lost. `opened(changed)`
    also applies one when the file changed since it was read: a SIGHUP that came before the
    handler existed (an acceptor ignores SIGHUP until then, and its supervisor rewrites the file
    it read before signalling)."""

    def __init__(self, reload: Callable[[], None]) -> None:
        self._reload = reload
        self._started = False
        self._missed = False

    def signal(self) -> None:
        if self._started:
            self._reload()
        else:
            self._missed = True

    def opened(self, changed: bool) -> None:
        self._started = True
        if self._missed or changed:
            self._reload()


def generation(text: str) -> str:
    """A name for a configuration text that processes can compare without sharing it: the first
    48 bits of its HMAC-SHA256 under the daemon's generation key, which a gauge carries exactly
    (a float holds 53). Why: an acceptor that never applied a reload (its loop stuck, the signal
    lost) kept serving the old rules while everything read healthy. Keyed, not a plain hash: a
    plain hash of a text published on /metrics let whoever knew the rest of the file (a stock
    example with one password changed) test guesses of a secret in it offline."""
    digest = hmac.new(generation_key(), text.encode("utf-8"), hashlib.sha256)
    return digest.hexdigest()[:GENERATION_DIGITS]


def generation_key() -> bytes:
    """The key of `generation`: set by the daemon's first process (`key_generations_by`) and
    inherited by the acceptor processes it starts (through the environment, like the worker's
    slot), so they name one text alike; never published. Random when nothing set it."""
    key = os.environ.get(GENERATION_KEY_ENV, "")
    if len(key) != 32:
        key = secrets.token_hex(16)
        os.environ[GENERATION_KEY_ENV] = key
    return bytes.fromhex(key)


def key_generations_by(master_key: bytes | None) -> None:
    """Key the generations with one derived from the master key, which every instance of a
    PostgreSQL fleet shares: instances given one file name it alike, so a fleet's values can be
    compared (`smpp-bridge status`, the gauge). A random key per daemon (h3's trial) gave two
    instances on the same file two values, read as a drift that was not there, and hid one that
    was. As secret as the random key: no value of the file can be tested without the master
    key. None (no key to be had yet): random, as before."""
    if master_key is None:
        os.environ.pop(GENERATION_KEY_ENV, None)
        return
    derived = hmac.new(master_key, b"smpp-bridge configuration generation", hashlib.sha256)
    os.environ[GENERATION_KEY_ENV] = derived.hexdigest()[:32]


GENERATION_KEY_ENV = "SMPP_BRIDGE_GENERATION_KEY"


GENERATION_DIGITS = 12


def behind(expected: str, running: Mapping[int, str | None]) -> dict[int, str | None]:
    """The processes (by key) that do not run `expected`; None: one that has not said yet."""
    return {key: gen for key, gen in running.items() if gen != expected}
