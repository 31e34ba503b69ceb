"""Typed configuration: YAML -> validated, frozen dataclasses, with env overrides for secrets.

The schema lives in one place, the dataclasses below: each field's type drives the type check and
its ``metadata`` (built with :func:`meta`) carries the rules, the secret flag and the env variable.
One small generic loader walks them, so validation, env overrides, masking and the documentation
test (every field must appear in ``config/bridge.example.yaml``) cannot drift apart.

Every problem is reported with its path and rule (``smscs[1].window: must be between 1 and 1000,
got 0``), all of them at once, as one :class:`ConfigError`; the loader never lets a traceback out.
Durations are plain numbers whose unit is in the key name (``_s``, ``_ms``, ``_minutes``,
``_hours``), so there is no unit-string parser to get wrong.
"""

import base64
import binascii
import collections
import dataclasses
import difflib
import functools
import ipaddress
import math
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import yaml

from bridge.domain.forwarded import HEADERS, X_FORWARDED_FOR, network_problem

__all__ = [
    "DEFAULT_YAML",
    "SECRET_ENV",
    "SECRET_PATHS",
    "Config",
    "ConfigError",
    "FrozenMap",
    "LoggingConfig",
    "PipelineConfig",
    "RouteConfig",
    "SecurityConfig",
    "ServerConfig",
    "SimConfig",
    "SmscConfig",
    "StoreConfig",
    "TextConfig",
    "WebhooksConfig",
    "check_main",
    "effective_config_dict",
    "implicit_sim_smsc",
    "key_file_problems",
    "load_config",
    "parse_config",
]


class ConfigError(Exception):
    """All configuration problems found, one human-readable line each (path: rule)."""

    code = "CONFIG_INVALID"

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


# --------------------------------------------------------------------------------------------
# Field metadata and rules
# --------------------------------------------------------------------------------------------

Rule = Callable[[Any], str | None]
"""A rule returns None when the value is fine, else the text after ``path: ``."""


def meta(
    *rules: Rule,
    secret: bool = False,
    env: str | None = None,
    item: tuple[Rule, ...] = (),
    key: tuple[Rule, ...] = (),
    normalize: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Field metadata: rules on the value, on each list item / mapping value, on mapping keys.

    ``env`` names the variable that overrides the field (secrets, and server.instance); it may
    contain ``{NAME}``, replaced by the list entry's ``name`` upper-cased with ``-`` turned into
    ``_``.
    """
    return {
        "rules": rules,
        "item": item,
        "key": key,
        "secret": secret,
        "env": env,
        "normalize": normalize,
    }


def _num(v: float) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _show(v: Any, secret: bool = False) -> str:
    """Describe a bad value for an error line; secrets only by their kind, never their text."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if secret:
        return _kind(v)
    if isinstance(v, str):
        return repr(v if len(v) <= 60 else v[:57] + "...")
    if isinstance(v, int) and v.bit_length() > 64:
        return "a huge integer"
    if isinstance(v, int | float):
        return _num(v)
    return _kind(v)


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list | tuple):
        return "a list"
    if isinstance(v, dict):
        return "a mapping"
    if v is None:
        return "null"
    return f"a {type(v).__name__}"


def between(lo: float, hi: float) -> Rule:
    def rule(v: Any) -> str | None:
        if v < lo or v > hi:
            return f"must be between {_num(lo)} and {_num(hi)}, got {_show(v)}"
        return None

    return rule


def at_least(lo: float) -> Rule:
    def rule(v: Any) -> str | None:
        return f"must be at least {_num(lo)}, got {_show(v)}" if v < lo else None

    return rule


def one_of(*choices: Any) -> Rule:
    def rule(v: Any) -> str | None:
        if v in choices:
            return None
        listed = ", ".join(_show(c) for c in choices)
        return f"must be one of {listed}; got {_show(v)}"

    return rule


def matches(pattern: str, what: str) -> Rule:
    rx = re.compile(pattern)

    def rule(v: Any) -> str | None:
        return None if rx.fullmatch(v) else f"must be {what}, got {_show(v)}"

    return rule


def length(lo: int, hi: int | None = None) -> Rule:
    """Length of a string or list; reports only the length, so it is safe on secrets."""

    def rule(v: Any) -> str | None:
        n = len(v)
        unit = "characters" if isinstance(v, str) else "entries"
        if hi is None:
            if n >= lo:
                return None
            return "must not be empty" if lo == 1 else f"must have at least {lo} {unit}, got {n}"
        if n < lo or n > hi:
            if lo == 0:
                return f"must have at most {hi} {unit}, got {n}"
            return f"must have {lo} to {hi} {unit}, got {n}"
        return None

    return rule


def _dsn_problem(dsn: str) -> str | None:
    """What is wrong with a PostgreSQL URL, without echoing it (it holds the password): a port
    typo passed the check and then failed `db migrate` with a bare int() error."""
    try:
        url = urlsplit(dsn.strip())
        port = url.port  # raises on a non-numeric or out-of-range port
    except ValueError:
        return "must be postgresql://user:password@host:port/database (the port is not a number)"
    if url.scheme not in ("postgres", "postgresql"):
        return "must be a postgresql:// URL"
    if not url.hostname and "host=" not in url.query:
        return "must name a host (postgresql://user:password@host:port/database)"
    if port == 0:
        return "the port must be 1 to 65535"
    return None


def _decode_key(v: str) -> bytes | None:
    """Standard or URL-safe base64, strictly (no stray characters silently dropped)."""
    s = v.strip().replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, ValueError):
        return None


def _b64_32(v: str) -> str | None:
    raw = _decode_key(v)
    if raw is None:
        return "must be base64 of exactly 32 bytes, got text that is not valid base64"
    if len(raw) != 32:
        return f"must be base64 of exactly 32 bytes, got {len(raw)} bytes"
    return None


def _sign_format(v: str) -> str | None:
    if "{sign}" not in v:
        return f"must contain {{sign}}, got {_show(v)}"
    try:
        v.format(sign="x")
    except (KeyError, IndexError, ValueError):
        return f"must contain {{sign}} and no other {{...}} placeholder, got {_show(v)}"
    return None


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
RECEIPT_STATS = ("DELIVRD", "UNDELIV", "REJECTD", "EXPIRED", "DELETED", "UNKNOWN")
_NAME_RE = r"[a-z0-9_-]+"
_NONEMPTY = length(1)


def _upper(v: str) -> str:
    return v.upper()


# --------------------------------------------------------------------------------------------
# FrozenMap: a hashable, read-only mapping so frozen dataclasses stay truly frozen
# --------------------------------------------------------------------------------------------


K = TypeVar("K")
V = TypeVar("V")


class FrozenMap(Mapping[K, V]):
    """Read-only dict; hashable and picklable (a MappingProxyType is neither)."""

    __slots__ = ("_d",)

    def __init__(self, data: Mapping[K, V] | None = None) -> None:
        self._d: dict[K, V] = dict(data or {})

    def __getitem__(self, key: K) -> V:
        return self._d[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        return hash(frozenset(self._d.items()))

    def __repr__(self) -> str:
        return f"FrozenMap({self._d!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMap, (self._d,))


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------

Problems = Iterator[tuple[str, str]]
"""Cross-field checks yield (field name or "", message) relative to the section's path."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """HTTP API listener and request limits."""

    host: str = field(default="127.0.0.1", metadata=meta(_NONEMPTY))
    # The ports have variables (as server.instance): two instances on one host share one file.
    port: int = field(default=8080, metadata=meta(between(1, 65535), env="SMPP_BRIDGE_PORT"))
    max_body_bytes: int = field(default=1_048_576, metadata=meta(between(1024, 64 * 1_048_576)))
    clock_skew_s: int = field(default=300, metadata=meta(between(1, 3600)))
    # A short admin token is guessable; 16 characters is the floor, not a recommendation.
    admin_token: str | None = field(
        default=None,
        repr=False,
        metadata=meta(length(16), secret=True, env="SMPP_BRIDGE_ADMIN_TOKEN"),
    )
    max_recipients: int = field(default=1000, metadata=meta(between(1, 10_000)))
    idempotency_hours: int = field(default=24, metadata=meta(between(1, 720)))
    # A 1000-number request line is ~14 KB; aiohttp's 8190 default refuses it (aliyun notes).
    max_line_size: int = field(default=16_384, metadata=meta(between(8190, 1_048_576)))
    shutdown_grace_s: float = field(default=10.0, metadata=meta(between(0, 600)))
    # How long a request's body may take to arrive once its headers have: a client that sends
    # its headers and then trickles (or stops) held a handler, and its memory, for ever.
    body_timeout_s: float = field(default=30.0, metadata=meta(between(1, 600)))
    # An idle keep-alive connection, or one whose request headers have not all come in, is closed
    # this long after it opened or its last answer, however slowly bytes trickle in (aiohttp's
    # keepalive_timeout): a client cannot hold a connection by sending a header a minute.
    idle_timeout_s: float = field(default=75.0, metadata=meta(between(1, 3600)))
    # 0: one process does everything. N > 0: N HTTP acceptor processes share the port (SO_REUSEPORT)
    # and the store; this process keeps the binds, the dispatcher, receipts and webhooks.
    workers: int = field(default=0, metadata=meta(between(0, 64)))
    # Acceptors run this much nicer than the owner (os.nice): when the cores are full the owner,
    # which sends and takes receipts, gets the CPU first, so the queue between them stays short
    # and accepting slows to what can be sent (back-pressure through the scheduler). Measured on
    # 2 cores, 3-part UCS-2: accept -> receipt p99 570-670 -> 126-182 ms at the same messages/s.
    acceptor_nice: int = field(default=5, metadata=meta(between(0, 19)))
    # Daemon instances sharing one PostgreSQL store, and this one's number among them (env
    # SMPP_BRIDGE_INSTANCE, so one file serves them all). They draw concatenation references
    # from disjoint lanes: two long messages to one number accepted by two instances at once
    # cannot share a reference (the handset would join their parts), as the acceptor processes
    # of one daemon already cannot. 1: one instance, or lanes not wanted.
    instances: int = field(default=1, metadata=meta(between(1, 256)))
    instance: int = field(default=0, metadata=meta(between(0, 255), env="SMPP_BRIDGE_INSTANCE"))
    # Prometheus text format at GET /metrics on this port, open like /healthz (see README).
    metrics: bool = True
    # Open HTTP connections this process keeps on its public ports (this one and the Alibaba
    # face's, together); one more is closed unread. Each costs a file descriptor: without a
    # cap a client opening connections ran the process out of them, and every client, the
    # operator's /admin and /metrics included, was refused. 512: far above what 2 cores serve
    # (about 50 requests in flight at full speed; a proxy's keep-alive pool holds tens) and half
    # of the usual 1,024 descriptors, leaving the rest to the store, binds and webhooks.
    max_connections: int = field(default=512, metadata=meta(between(1, 1_000_000)))
    # Of those, how many one TCP peer address may hold (0: no such cap). Without it one client
    # took all max_connections and every other was refused. Peers in trusted_proxies are exempt:
    # a proxy carries everyone's connections. 64 suits a gateway clients reach directly.
    max_connections_per_ip: int = field(default=0, metadata=meta(between(0, 1_000_000)))
    # A listener for /admin/, /metrics, /readyz, /healthz and /openapi.json only (no /v1/),
    # outside max_connections: the operator still gets in while the public ports are full.
    # null: none (those paths stay on `port` as well, in any case).
    admin_port: int | None = field(
        default=None, metadata=meta(between(1, 65535), env="SMPP_BRIDGE_ADMIN_PORT")
    )
    admin_host: str | None = field(default=None, metadata=meta(_NONEMPTY))  # null: host
    # Reverse proxies (addresses, CIDR blocks) whose X-Forwarded-For (or Forwarded, below) is
    # believed: from such a peer, the client is the right-most address of that header that is
    # not one of them (bridge/domain/forwarded.py). Empty: the peer is the client (the audit
    # trail named the proxy for everyone behind nginx).
    trusted_proxies: tuple[str, ...] = field(default=(), metadata=meta(item=(network_problem,)))
    # The header those proxies write (forwarded.HEADERS): X-Forwarded-For, or RFC 7239's
    # Forwarded. Only that one is read: a proxy passes the other on as the client sent it.
    forwarded_header: str = field(default=X_FORWARDED_FOR, metadata=meta(one_of(*HEADERS)))
    # auto: uvloop where it is installed (the optional extra smpp-bridge[uvloop]), else the
    # standard library's loop; asyncio: the standard library's; uvloop: refuse to start without.
    event_loop: str = field(default="auto", metadata=meta(one_of("auto", "uvloop", "asyncio")))
    # Accounts (and keys) each process keeps what it built of, for the accept: an account's
    # Account, its key and decrypted secret, its keyed HMAC and Authorization head. Past it the
    # least recently used is dropped and built again (or read again) at its next send. ~4 KB
    # an account in each process (measured, README note 31): 10,000 ~40 MB at most.
    account_cache: int = field(default=10_000, metadata=meta(between(16, 1_000_000)))

    def _problems(self) -> Problems:
        if self.instance >= self.instances:
            yield "instance", f"must be below instances ({self.instances}), got {self.instance}"
        if (
            self.admin_port is not None
            and self.admin_port == self.port
            and _hosts_overlap(self.admin_host or self.host, self.host)
        ):
            yield "admin_port", f"must differ from port ({self.port})"
        if self.admin_host is not None and self.admin_port is None:
            # Ignored without a listener: /admin/ stayed on `port`, on `host`, where the
            # operator meant to keep it off (admin_host: 127.0.0.1 with host 0.0.0.0).
            yield (
                "admin_host",
                f"only with admin_port (the admin listener's address); without it there is no "
                f"admin listener and /admin/ answers on port {self.port} at host {self.host}",
            )
        if self.max_connections_per_ip > self.max_connections:
            yield (
                "max_connections_per_ip",
                f"must be at most max_connections ({self.max_connections}), "
                f"got {self.max_connections_per_ip}",
            )
        if self.instances * (self.workers + 1 if self.workers else 1) > 256:
            yield (
                "instances",
                f"instances x (workers + 1) must be at most 256 (the references of one 8-bit "
                f"concatenation header, a lane for each acceptor and the owner), got "
                f"{self.instances} x ({self.workers} + 1)",
            )


MIN_RETENTION_DAYS = 31


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    """Where accepted work is made durable."""

    engine: str = field(default="sqlite", metadata=meta(one_of("sqlite", "postgres")))
    path: Path = field(default=Path("data/bridge.db"))
    dsn: str | None = field(
        default=None,
        repr=False,
        metadata=meta(_NONEMPTY, secret=True, env="SMPP_BRIDGE_STORE_DSN"),
    )
    group_commit_ms: int = field(default=1, metadata=meta(between(0, 1000)))
    group_commit_max: int = field(default=500, metadata=meta(between(1, 100_000)))
    max_queued_segments: int = field(default=1_000_000, metadata=meta(between(1, 1_000_000_000)))
    # Days a finished message (its parts), an MO and a dead-lettered webhook are kept; 0 keeps
    # them for ever. The ledger and bills are never purged (bridge/retention.py).
    retention_days: int = field(default=0, metadata=meta(between(0, 3650)))

    def _problems(self) -> Problems:
        if 0 < self.retention_days < MIN_RETENTION_DAYS:
            # A reply is matched to the message it answers for 30 days after that went out: an
            # opt-out to a message purged sooner would reach no account.
            yield (
                "retention_days",
                f"must be 0 (keep for ever) or at least {MIN_RETENTION_DAYS}: replies and "
                "opt-outs are matched to messages sent in the last 30 days",
            )
        if self.engine == "sqlite" and self.dsn:
            # Ignored, the daemon ran on the SQLite file: instances meant to share one
            # PostgreSQL store each ran a gateway of their own (never the value: a password).
            yield (
                "dsn",
                "is set but engine is sqlite: the daemon would ignore it and run on store.path; "
                "set engine: postgres, or remove dsn (and env SMPP_BRIDGE_STORE_DSN)",
            )
        if self.engine == "postgres" and not self.dsn:
            yield "dsn", "required when engine is postgres (set it or env SMPP_BRIDGE_STORE_DSN)"
        elif self.engine == "postgres" and self.dsn:
            why = _dsn_problem(self.dsn)
            if why is not None:  # never the value: it holds the password
                yield "dsn", why


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityConfig:
    """The master key that encrypts app secrets at rest.

    Precedence: ``master_key`` (YAML or env) wins; else ``master_key_file`` is read; with
    ``generate_master_key`` the file is created on first start if absent (the loader fills in
    ``<data dir>/master.key`` when no file is named). Reading and generating are the key store's
    job, not the loader's: parsing stays free of side effects.
    """

    master_key: str | None = field(
        default=None,
        repr=False,
        metadata=meta(_b64_32, secret=True, env="SMPP_BRIDGE_MASTER_KEY"),
    )
    master_key_file: Path | None = None
    generate_master_key: bool = False
    # During a rotation of the master key: the one the stored secrets were sealed with before.
    # They still open with it until `smpp-bridge secrets reseal` has sealed each under the
    # current key; then it is removed (README, "Secrets").
    previous_master_key: str | None = field(
        default=None,
        repr=False,
        metadata=meta(_b64_32, secret=True, env="SMPP_BRIDGE_PREVIOUS_MASTER_KEY"),
    )
    previous_master_key_file: Path | None = None

    def key_bytes(self) -> bytes | None:
        """The inline/env key decoded (validated at load), or None when it comes from the file."""
        return None if self.master_key is None else _decode_key(self.master_key)

    def _problems(self) -> Problems:
        if (
            self.master_key is not None
            and self.previous_master_key is not None
            and _decode_key(self.master_key) is not None
            and _decode_key(self.master_key) == _decode_key(self.previous_master_key)
        ):
            yield (
                "previous_master_key",
                "is the master key itself: during a rotation it is the key used before",
            )
        if not (self.master_key or self.master_key_file or self.generate_master_key):
            yield (
                "",
                (
                    "a master key is required: set master_key (or env SMPP_BRIDGE_MASTER_KEY), "
                    "master_key_file, or generate_master_key: true"
                ),
            )


# The loggers the daemon writes to (`bridge.<name>`), for `logging.components`: a misspelt name
# would set the level of a logger nobody uses, and the operator would wait for lines that never
# come. tests/unit/test_config.py checks the list against the code's getLogger calls.
LOG_COMPONENTS = (
    "aliyun", "api", "app", "billing", "cli", "coord", "crypto", "dispatcher", "inbound",
    "pipeline", "rules", "sim", "smpp", "store", "supervisor", "webhooks",
)  # fmt: skip


def _log_component(v: Any) -> str | None:
    top = str(v).removeprefix("bridge.").split(".")[0]
    if top in LOG_COMPONENTS:
        return None
    return f"unknown log component {_show(v)}; known: {', '.join(LOG_COMPONENTS)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingConfig:
    """Log level and shape; bodies masked by default because they carry verification codes."""

    level: str = field(default="INFO", metadata=meta(one_of(*LOG_LEVELS), normalize=_upper))
    format: str = field(default="text", metadata=meta(one_of("text", "json")))
    components: Mapping[str, str] = field(
        default_factory=FrozenMap,
        metadata=meta(
            item=(one_of(*LOG_LEVELS),), key=(_NONEMPTY, _log_component), normalize=_upper
        ),
    )
    mask_bodies: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class TextConfig:
    """Sign-name format and tariff counting rule."""

    sign_format: str = field(default="【{sign}】", metadata=meta(_sign_format))
    counting_rule: str = field(
        default="chars_70_67", metadata=meta(one_of("chars_70_67", "wire_segments"))
    )
    max_chars: int = field(default=500, metadata=meta(between(1, 10_000)))
    smart_encoding: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineConfig:
    """Dispatcher and receipt-applier knobs."""

    claim_batch: int = field(default=500, metadata=meta(between(1, 10_000)))
    receipt_timeout_hours: int = field(default=72, metadata=meta(between(1, 720)))
    mo_reassembly_timeout_s: float = field(default=300.0, metadata=meta(between(1, 86_400)))
    dispatch_idle_ms: int = field(default=50, metadata=meta(between(1, 10_000)))
    # While claims keep finding nothing, the poll slows from dispatch_idle_ms to this: an idle
    # owner made ~20 claim transactions a second (60% of its idle CPU). New work, a bind coming
    # up and the dispatcher's own retries still wake it at once; a scheduled send may go out up
    # to this much after its time.
    dispatch_idle_max_ms: int = field(default=1000, metadata=meta(between(1, 60_000)))
    # Messages in flight per window slot of the live binds. Above 1, messages waiting for their
    # results' commit, or sending their parts one after another, do not leave the window idle;
    # a crash resends at most this many windows of messages per bind.
    in_flight_windows: int = field(default=2, metadata=meta(between(1, 10)))


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhooksConfig:
    """Outbound status/MO pushes; the last retry delay repeats until retry_for_hours is spent."""

    timeout_s: float = field(default=10.0, metadata=meta(between(0.1, 300)))
    batch_max: int = field(default=100, metadata=meta(between(1, 100)))
    concurrency: int = field(default=20, metadata=meta(between(1, 1000)))
    retry_schedule_s: tuple[int, ...] = field(
        default=(60, 300, 600, 1800, 3600),
        metadata=meta(length(0, 50), item=(between(1, 86_400),)),
    )
    retry_for_hours: int = field(default=24, metadata=meta(between(1, 720)))
    send_intermediate: bool = False
    # How long an idle connection to a customer's endpoint is kept for the next POST. Below the
    # receivers' own idle timeout, or a POST can go out on a connection they are closing and
    # fail (a retry later); 15 s is aiohttp's default.
    keepalive_s: float = field(default=15.0, metadata=meta(between(0.5, 300)))

    def _problems(self) -> Problems:
        # A first retry due after the window is never made: every report whose first POST
        # failed, a 503 or a timeout included, was dead-lettered at once. Refused only when even
        # the earliest draw of its jitter (-10%) is past the window: a step nearer the window
        # (`[]`, hourly, with retry_for_hours: 1) retries part of the reports, as it always did.
        first = self.retry_schedule_s[0] if self.retry_schedule_s else 3600
        if first * 0.9 >= self.retry_for_hours * 3600:
            yield (
                "retry_for_hours",
                f"{self.retry_for_hours} h is not longer than retry_schedule_s[0] ({first} s) "
                "minus its 10% jitter: no report would ever be retried (each failure "
                "dead-lettered at once); raise it or shorten the first step",
            )


def _ca_file(v: Path) -> str | None:
    """Loadable as CA certificates: `config check` and a SIGHUP refuse a path the TLS context
    cannot be built from (a typo once failed a reload half way, after the running bind was
    stopped)."""
    import ssl

    try:
        ssl.create_default_context(cafile=str(v))
    except ssl.SSLError as exc:  # an OSError too
        return f"{_show(str(v))}: not PEM CA certificates ({exc.reason or exc})"
    except OSError as exc:
        return f"cannot read {_show(str(v))}: {exc.strerror or exc}"
    return None


# Throttles in a row for one part before it goes back to the queue (outcome "throttled": the
# dispatcher requeues its message for THROTTLE_REQUEUE_S, not counted as an attempt, while the
# bind carries the rest), as Kannel requeues a throttled message: the defaults of
# smscs[].throttle_part_retries and throttle_requeue_s. Many SMSCs answer ESME_RMSGQFUL for one
# destination whose queue is full (a handset off for days): resent first after every pause, that
# one part used to push the bind's throttle share over the tolerance, pause it, doubling, again
# and again (measured: the other traffic fell from ~17,000 to ~27 messages/s), and never left it.
THROTTLE_PART_RETRIES = 5
THROTTLE_REQUEUE_S = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SmscConfig:
    """One SMSC (carrier link): connection, bind, throughput, addressing, encoding, id rules."""

    name: str = field(metadata=meta(length(1, 32), matches(_NAME_RE, "made of a-z 0-9 _ -")))
    host: str = field(default="127.0.0.1", metadata=meta(_NONEMPTY))
    port: int = field(default=2775, metadata=meta(between(1, 65535)))
    # The receiver binds' port when the carrier takes them on another one (Kannel's
    # `receive-port`): one SMSC entry, so its receipts match its own submits (a second entry
    # for the receiver would key them under its own name, matching nothing).
    receive_port: int | None = field(default=None, metadata=meta(between(1, 65535)))
    tls: bool = False
    tls_verify: bool = True
    tls_ca_file: Path | None = field(default=None, metadata=meta(_ca_file))
    # SMPP 3.4 field sizes (C-octet strings, NUL included): system_id 16, system_type 13, ...
    system_id: str = field(metadata=meta(length(1, 15)))
    password: str | None = field(
        default=None,
        repr=False,
        metadata=meta(length(0, 8), secret=True, env="SMPP_BRIDGE_SMSC_{NAME}_PASSWORD"),
    )
    system_type: str = field(default="", metadata=meta(length(0, 12)))
    interface_version: int = field(default=0x34, metadata=meta(between(0, 255)))
    address_range: str = field(default="", metadata=meta(length(0, 40)))
    # The bind's addr_ton / addr_npi (Kannel's bind-addr-ton / bind-addr-npi): some SMSCs
    # refuse a bind whose address_range is not declared with them.
    bind_ton: int = field(default=0, metadata=meta(between(0, 6)))
    bind_npi: int = field(default=0, metadata=meta(between(0, 18)))
    bind_mode: str = field(
        default="transceiver",
        metadata=meta(one_of("transceiver", "transmitter_receiver", "transmitter", "receiver")),
    )
    binds: int = field(default=1, metadata=meta(between(1, 64)))
    window: int = field(default=50, metadata=meta(between(1, 1000)))
    tps: float = field(default=0.0, metadata=meta(between(0, 100_000)))
    response_timeout_s: float = field(default=30.0, metadata=meta(between(1, 600)))
    enquire_link_s: float = field(default=30.0, metadata=meta(between(1, 3600)))
    reconnect_min_s: float = field(default=1.0, metadata=meta(between(0.1, 3600)))
    reconnect_max_s: float = field(default=60.0, metadata=meta(between(0.1, 3600)))
    throttle_pause_min_s: float = field(default=1.0, metadata=meta(between(0.01, 600)))
    throttle_pause_max_s: float = field(default=10.0, metadata=meta(between(0.01, 600)))
    throttle_tolerance: float = field(default=0.1, metadata=meta(between(0, 1)))
    # A part throttled this many times in a row goes back to the queue for throttle_requeue_s
    # (see THROTTLE_PART_RETRIES); carriers differ in how long a destination's queue stays full.
    throttle_part_retries: int = field(
        default=THROTTLE_PART_RETRIES, metadata=meta(between(1, 100))
    )
    throttle_requeue_s: float = field(default=THROTTLE_REQUEUE_S, metadata=meta(between(0.1, 3600)))
    max_transient_retries: int = field(default=5, metadata=meta(between(0, 100)))
    recycle_after_timeouts: int = field(default=3, metadata=meta(between(0, 1000)))
    unbind_timeout_s: float = field(default=5.0, metadata=meta(between(0.1, 60)))
    source_ton: int = field(default=5, metadata=meta(between(0, 6)))
    source_npi: int = field(default=0, metadata=meta(between(0, 18)))
    dest_ton: int = field(default=1, metadata=meta(between(0, 6)))
    dest_npi: int = field(default=1, metadata=meta(between(0, 18)))
    # A number of up to 20 digits ("+" allowed) or an alphanumeric id of at most 11 characters:
    # GSM's alphanumeric originator holds 11, so a longer one was cut or refused by the carrier.
    default_source: str = field(
        default="smpp-bridge",
        metadata=meta(
            matches(
                r"\+?[0-9]{1,20}|[A-Za-z0-9 ._-]{1,11}",
                "digits (up to 20) or up to 11 letters, digits, spaces . _ -",
            )
        ),
    )
    service_type: str = field(default="", metadata=meta(length(0, 5)))
    registered_delivery: int = field(default=1, metadata=meta(between(0, 31)))
    validity_minutes: int | None = field(default=None, metadata=meta(between(1, 525_600)))
    priority: int = field(default=0, metadata=meta(between(0, 3)))
    gsm_data_coding: int = field(default=0, metadata=meta(one_of(0, 1)))
    packed_gsm: bool = False
    allow_latin1: bool = False
    split: str = field(default="udh8", metadata=meta(one_of("udh8", "udh16", "sar", "payload")))
    resp_id_base: str = field(default="str", metadata=meta(one_of("str", "hex", "dec")))
    receipt_id_base: str = field(default="str", metadata=meta(one_of("str", "hex", "dec")))
    # The base of a receipt's receipted_message_id TLV: resp_id_base's (SMPP 3.4 5.3.2.12: it is
    # the submit_sm_resp id) or receipt_id_base's (carriers that write it as the text's id).
    tlv_id_base: str = field(default="resp", metadata=meta(one_of("resp", "receipt")))
    id_case_insensitive: bool = True
    id_strip_leading_zeros: bool = True
    in_flight_on_restart: str = field(default="resend", metadata=meta(one_of("resend", "unknown")))
    # What the carrier's receipts stand for: one per part (each part waits for its own), or one
    # per long message on any one part (Kannel-style gateways, carriers that report the first or
    # the last part only): its final receipt then settles the message's other parts.
    receipts: str = field(
        default="every_part", metadata=meta(one_of("every_part", "one_per_message"))
    )
    # The country national MO source numbers (TON 2, or a trunk 0) are read in: "+86" makes a
    # reply from 13800138000 +8613800138000. None keeps them as received (matching no send).
    national_prefix: str | None = field(
        default=None, metadata=meta(matches(r"\+[1-9][0-9]{0,3}", "'+' and a country code"))
    )

    def _problems(self) -> Problems:
        if self.receive_port is not None and self.bind_mode != "transmitter_receiver":
            yield (
                "receive_port",
                (
                    "only with bind_mode transmitter_receiver (its receiver binds connect "
                    f"there, its transmitters to port), got bind_mode {self.bind_mode!r}"
                ),
            )
        if self.tls_ca_file is not None and not self.tls:
            # Ignored: the bind went out in plain text, its password readable on the wire.
            yield (
                "tls_ca_file",
                "only with tls: true; without it the bind is plain text (its password in the "
                "clear) and the CA file is never read",
            )
        elif self.tls_ca_file is not None and not self.tls_verify:
            yield (
                "tls_ca_file",
                "is never used with tls_verify: false (the certificate is not checked at all); "
                "set tls_verify: true to verify against it, or remove it",
            )
        if self.bind_mode == "transmitter" and self.registered_delivery & 0x13:
            # Receipts come back on this SMSC's own receiving binds (matched by its name): a
            # transmitter has none, so every message waited out pipeline.receipt_timeout_hours
            # and ended "unknown".
            yield (
                "registered_delivery",
                f"asks for receipts ({self.registered_delivery}), but bind_mode transmitter "
                "receives none: each message would end unknown after "
                "pipeline.receipt_timeout_hours; use transceiver or transmitter_receiver "
                "(receive_port for another port), or registered_delivery: 0",
            )
        if self.reconnect_max_s < self.reconnect_min_s:
            yield (
                "reconnect_max_s",
                (
                    f"must be at least reconnect_min_s ({_num(self.reconnect_min_s)}), "
                    f"got {_num(self.reconnect_max_s)}"
                ),
            )
        if self.throttle_pause_max_s < self.throttle_pause_min_s:
            yield (
                "throttle_pause_max_s",
                (
                    f"must be at least throttle_pause_min_s ({_num(self.throttle_pause_min_s)}), "
                    f"got {_num(self.throttle_pause_max_s)}"
                ),
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    """Destination prefix -> SMSCs in failover order."""

    prefix: str = field(metadata=meta(matches(r"\+[0-9]{1,15}", "'+' followed by digits")))
    smscs: tuple[str, ...] = field(metadata=meta(length(1), item=(_NONEMPTY,)))

    def _problems(self) -> Problems:
        seen: set[str] = set()
        for i, name in enumerate(self.smscs):
            if name in seen:
                yield f"smscs[{i}]", f"SMSC {name!r} listed twice"
            seen.add(name)


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    """The built-in SMSC simulator (a real SMPP server) for demos, tests and benchmarks."""

    enabled: bool = False
    host: str = field(default="127.0.0.1", metadata=meta(_NONEMPTY))
    port: int = field(default=2775, metadata=meta(between(1, 65535)))
    system_id: str = field(default="bridge", metadata=meta(length(1, 15)))
    # None: the simulator accepts any password.
    password: str | None = field(
        default=None,
        repr=False,
        metadata=meta(length(0, 8), secret=True, env="SMPP_BRIDGE_SIM_PASSWORD"),
    )
    control_port: int = field(default=2776, metadata=meta(between(1, 65535)))
    receipt_delay_ms: int = field(default=10, metadata=meta(between(0, 3_600_000)))
    # Each submit_sm_resp this long after the submit_sm: a carrier's latency. A bind with a
    # window of W then sends at most W / delay per second, and a receipt due sooner comes first.
    answer_delay_ms: int = field(default=0, metadata=meta(between(0, 60_000)))
    outcomes: Mapping[str, float] = field(
        default_factory=lambda: FrozenMap({"DELIVRD": 1.0}),
        metadata=meta(item=(at_least(0),), key=(one_of(*RECEIPT_STATS),)),
    )
    id_format: str = field(default="hex", metadata=meta(one_of("hex", "dec")))
    tps_limit: float = field(default=0.0, metadata=meta(between(0, 100_000)))
    throttle_ratio: float = field(default=0.0, metadata=meta(between(0, 1)))
    syserr_ratio: float = field(default=0.0, metadata=meta(between(0, 1)))
    drop_after_pdus: int = field(default=0, metadata=meta(at_least(0)))
    receipts_as: str = field(default="both", metadata=meta(one_of("both", "text", "tlv")))
    # data_sm: receipts carry TLVs only (receipted_message_id, message_state, network_error_code),
    # as carriers that deliver receipts by data_sm send them; receipts_as then does not apply.
    receipt_pdu: str = field(default="deliver_sm", metadata=meta(one_of("deliver_sm", "data_sm")))
    # Which parts of a long message get a receipt: every part, or only the first or the last
    # (a carrier that reports a concatenated message once, as Kannel and Jasmin ask for it).
    receipt_parts: str = field(default="every", metadata=meta(one_of("every", "first", "last")))
    record_file: Path | None = None

    def _problems(self) -> Problems:
        if self.outcomes and sum(self.outcomes.values()) <= 0:
            yield "outcomes", "weights must add up to more than 0"
        if not self.outcomes:
            yield "outcomes", "must list at least one outcome"
        if self.throttle_ratio + self.syserr_ratio > 1:
            yield (
                "syserr_ratio",
                (
                    f"throttle_ratio + syserr_ratio must be at most 1, got "
                    f"{_num(self.throttle_ratio + self.syserr_ratio)}"
                ),
            )
        if self.enabled and self.control_port == self.port:
            yield "control_port", f"must differ from sim.port ({self.port})"


def _content_filter(v: Path) -> str | None:
    """Readable, UTF-8, every line a word or a pattern that compiles: `config check` (the unit's
    ExecStartPre) and a SIGHUP refuse a file the filter cannot be built from, instead of the
    daemon dying at start or a reload leaving sends unfiltered."""
    from bridge.domain.content_filter import ContentFilter

    try:
        ContentFilter.from_lines(v.read_text(encoding="utf-8"))
    except OSError as exc:
        return f"cannot read {_show(str(v))}: {exc.strerror or exc}"
    except UnicodeDecodeError:
        return f"{_show(str(v))} is not UTF-8 text"
    except ValueError as exc:
        return f"{_show(str(v))}: {exc}"
    return None


@functools.cache
def _iana_zones() -> frozenset[str]:
    """Read once: available_timezones() walks the whole tzdata tree (50-100 ms on a busy
    machine), and every parse of a config naming a zone asked again (a reload, `config check`,
    each test's config). A zone a tzdata upgrade adds is known after a restart."""
    from zoneinfo import available_timezones

    return frozenset(available_timezones())


def _time_zone(v: str) -> str | None:
    from zoneinfo import ZoneInfo

    try:
        ZoneInfo(v)
    except Exception:
        return f"unknown time zone {_show(v)} (an IANA name such as Asia/Shanghai)"
    # ZoneInfo also opens files that are not IANA zones: right/... counts leap seconds (and its
    # data may end years early), localtime is the host's own, Factory has no offset at all.
    if v not in _iana_zones() or v in ("localtime", "Factory"):
        return f"time zone {_show(v)} is not an IANA zone name (such as Asia/Shanghai)"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    """Most sends to one key per window; 0 = no limit for that window."""

    per_minute: int = field(default=0, metadata=meta(between(0, 1_000_000)))
    per_hour: int = field(default=0, metadata=meta(between(0, 1_000_000)))
    per_day: int = field(default=50, metadata=meta(between(0, 1_000_000)))


@dataclass(frozen=True, slots=True, kw_only=True)
class VerificationLimitsConfig:
    """Verification-code limits per (sign, number): 1 a minute, 5 an hour, 10 a day by default."""

    per_minute: int = field(default=1, metadata=meta(between(0, 1_000_000)))
    per_hour: int = field(default=5, metadata=meta(between(0, 1_000_000)))
    per_day: int = field(default=10, metadata=meta(between(0, 1_000_000)))


def _e164(v: str) -> str | None:
    return None if re.fullmatch(r"\+[1-9][0-9]{5,14}", v) else "expected an E.164 number"


@dataclass(frozen=True, slots=True, kw_only=True)
class FrequencyConfig:
    """Per-recipient limits counted at acceptance (README, "Sending rules and billing"):
    verification codes per (sign, number); notification and marketing per (sign, template,
    number); free text per (sign, number)."""

    verification: VerificationLimitsConfig = field(default_factory=VerificationLimitsConfig)
    notification: LimitsConfig = field(default_factory=LimitsConfig)
    marketing: LimitsConfig = field(default_factory=LimitsConfig)
    raw_text: LimitsConfig = field(default_factory=LimitsConfig)
    exempt: tuple[str, ...] = field(default=(), metadata=meta(item=(_e164,)))


@dataclass(frozen=True, slots=True, kw_only=True)
class RulesConfig:
    """Sending rules: time zone of the clock windows, opt-out keywords, content filter."""

    # Clock minute/hour windows, the daily quota's day and billing months are in this zone.
    timezone: str = field(default="Asia/Shanghai", metadata=meta(_time_zone))
    optout_keywords: tuple[str, ...] = field(
        default=("TD", "T", "R", "STOP", "UNSUBSCRIBE", "退订"), metadata=meta(item=(_NONEMPTY,))
    )
    # Operator word/pattern list, one per line ("re:" prefix for a regular expression).
    content_filter_file: Path | None = field(default=None, metadata=meta(_content_filter))
    max_param_chars: int = field(default=35, metadata=meta(between(1, 500)))
    # open: an account without assigned senders may send from any address (Kannel and Jasmin's
    # default); assigned: only from its own (bridge/domain/senders.py), else the SMSC default.
    sender_policy: str = field(default="open", metadata=meta(one_of("open", "assigned")))
    frequency: FrequencyConfig = field(default_factory=FrequencyConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class TierConfig:
    up_to: int | None = field(default=None, metadata=meta(at_least(1)))
    price: int = field(metadata=meta(at_least(1)))


def _default_tiers() -> tuple[TierConfig, ...]:
    return tuple(
        TierConfig(up_to=u, price=p)
        for u, p in (
            (100_000, 45_000),
            (300_000, 40_000),
            (500_000, 39_000),
            (1_000_000, 38_000),
            (3_000_000, 37_000),
            (None, 36_000),
        )
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class TariffConfig:
    """The first tariff, stored at start-up when the store holds none. Later versions are added
    with `smpp-bridge tariff add` (never by editing this: stored versions are immutable)."""

    version: str = field(default="initial", metadata=meta(length(1, 64)))
    tiers: tuple[TierConfig, ...] = field(default_factory=_default_tiers)
    starting_price: int = field(default=45_000, metadata=meta(at_least(1)))
    domestic_prefix: str = field(
        default="+86", metadata=meta(matches(r"\+[1-9][0-9]{0,3}", "'+' and a country code"))
    )
    # E.164 prefix -> micro-units per transmitted segment; destinations without a price are refused.
    international: Mapping[str, int] = field(
        default_factory=lambda: FrozenMap({}),
        metadata=meta(
            item=(at_least(1),), key=(matches(r"\+[1-9][0-9]{0,14}", "an E.164 prefix"),)
        ),
    )

    def _problems(self) -> Problems:
        """The tariff rules the daemon and `tariff add` apply (tiers ascending, the last one
        unbounded, ...): `config check` passed tiers the daemon then refused at start."""
        from bridge.billing import tariff_from_config  # imports this module: here, not on top
        from bridge.domain.tariffs import validate_tariff

        for problem in validate_tariff(tariff_from_config(self)):
            path, _, why = problem.partition(": ")
            # The tariff API counts tiers from 1; configuration paths count from 0.
            yield re.sub(r"tiers\[(\d+)\]", lambda m: f"tiers[{int(m[1]) - 1}]", path), why


@dataclass(frozen=True, slots=True, kw_only=True)
class BillingConfig:
    """Prepaid/postpaid charging at acceptance, refunds on receipts, monthly settlement."""

    # Off: nothing is priced or charged (a private gateway); units are still counted.
    enabled: bool = True
    currency: str = field(default="CNY", metadata=meta(length(3, 3)))
    tariff: TariffConfig = field(default_factory=TariffConfig)
    # Settle the previous month automatically once its receipts are final: 73 h after month end
    # (receipts are final after 72 h, plus a margin).
    auto_settle: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class AliyunConfig:
    """The Alibaba Cloud SMS-compatible API (Dysmsapi 2017-05-25) on its own port: the official
    SDKs, pointed at it, send through this gateway unchanged (AccessKeyId = app key)."""

    enabled: bool = False
    host: str | None = None  # null = server.host
    port: int = field(default=8081, metadata=meta(between(1, 65535), env="SMPP_BRIDGE_ALIYUN_PORT"))
    # SendSms carries up to 1000 numbers in the query: ~14 KB request lines.
    max_line_size: int = field(default=65_536, metadata=meta(between(8190, 1_048_576)))
    # How far a call's Timestamp may be from the server's clock. Alibaba accepts 15 minutes, and
    # SDK users whose clocks drift that far would be refused here with the native API's 300 s.
    clock_skew_s: int = field(default=900, metadata=meta(between(30, 3600)))


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorConfig:
    """One operator's own admin API token. What a request made with it does is recorded in the
    audit trail under the operator's name (not the caller's word, as with the shared
    server.admin_token), and removing the entry revokes it at the next SIGHUP."""

    name: str = field(metadata=meta(length(1, 32), matches(_NAME_RE, "made of a-z 0-9 _ -")))
    token: str = field(
        repr=False,
        metadata=meta(length(16), secret=True, env="SMPP_BRIDGE_OPERATOR_{NAME}_TOKEN"),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    """Named operators of the admin API, beside or instead of server.admin_token. Applied by a
    reload (SIGHUP), unlike `server`: revoking someone must not wait for a restart."""

    operators: tuple[OperatorConfig, ...] = ()

    def _problems(self) -> Problems:
        names: dict[str, int] = {}
        tokens: dict[str, int] = {}
        for i, op in enumerate(self.operators):
            key = op.name.upper().replace("-", "_")
            if key in names:
                yield (
                    f"operators[{i}].name",
                    f"{op.name!r} and operators[{names[key]}] would share the environment "
                    f"variable SMPP_BRIDGE_OPERATOR_{key}_TOKEN; rename one",
                )
            names.setdefault(key, i)
            if op.token in tokens:
                yield (
                    f"operators[{i}].token",
                    f"the same token as operators[{tokens[op.token]}]: each operator needs "
                    "their own",
                )
            tokens.setdefault(op.token, i)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration. Build it with :func:`load_config` or :func:`parse_config`."""

    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    text: TextConfig = field(default_factory=TextConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    billing: BillingConfig = field(default_factory=BillingConfig)
    aliyun: AliyunConfig = field(default_factory=AliyunConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    smscs: tuple[SmscConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    # After loading: never "unset"; YAML null/absent means every SMSC in order, [] means none.
    default_route: tuple[str, ...] = field(default=(), metadata=meta(item=(_NONEMPTY,)))
    sim: SimConfig = field(default_factory=SimConfig)

    IMPLICIT_SIM_SMSC: ClassVar[str] = "sim"

    def smsc(self, name: str) -> SmscConfig:
        """The SMSC called ``name``; KeyError if there is none."""
        for s in self.smscs:
            if s.name == name:
                return s
        raise KeyError(name)

    def national_prefixes(self) -> list[str]:
        """Every SMSC's `national_prefix`: the forms a number's replies may arrive from, which
        an erasure and a close look for among the waiting parts of long replies."""
        return [s.national_prefix for s in self.smscs if s.national_prefix]

    def default_sources(self) -> dict[str, str]:
        """Every SMSC's `default_source` by SMSC name: a range assigned to an account does not
        claim the replies to it (senders.reply_holders), which an erasure and a close read when
        they drop the waiting parts of long replies to the account's assigned addresses."""
        return {s.name: s.default_source for s in self.smscs}


# --------------------------------------------------------------------------------------------
# The generic loader
# --------------------------------------------------------------------------------------------

_MISSING = object()
_INVALID = object()


@dataclass(slots=True)
class _Ctx:
    env: Mapping[str, str]
    base_dir: Path
    errors: list[str]
    # Paths whose value came from the environment -> " (from env NAME)": every error about
    # one says so, the cross-field checks' too (the file may hold a good value meanwhile).
    sources: dict[str, str] = field(default_factory=dict)

    def err(self, path: str, msg: str) -> None:
        self.errors.append(f"{path or 'config'}: {msg}{self.sources.get(path, '')}")


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path and name else path or name


def _expected(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{_expected(inner[0])} or null"
    if tp is bool:
        return "a boolean (true or false)"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is Path:
        return "a path (a non-empty string)"
    if origin is tuple:
        return "a list"
    return "a mapping"


def _env_key(name: Any) -> str:
    return str(name).upper().replace("-", "_") if isinstance(name, str) else ""


def _resolve_path(ctx: _Ctx, v: str | Path, path: str = "") -> Any:
    try:
        p = Path(v).expanduser()
    except RuntimeError:
        ctx.err(path, f"cannot expand {_show(str(v))}: no such user or home directory")
        return _INVALID
    return p if p.is_absolute() else ctx.base_dir / p


def _check(ctx: _Ctx, path: str, v: Any, rules: tuple[Rule, ...]) -> bool:
    for rule in rules:
        msg = rule(v)
        if msg is not None:
            ctx.err(path, msg)
            return False
    return True


def _coerce(ctx: _Ctx, tp: Any, v: Any, path: str, md: Mapping[str, Any]) -> Any:
    """Type-check and convert ``v`` to ``tp``; report and return _INVALID on failure."""
    secret = bool(md.get("secret"))
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if v is None:
            return None
        inner = next(a for a in args if a is not type(None))
        if _scalar_ok(inner, v):
            return _coerce(ctx, inner, v, path, md)
        return _bad(ctx, path, tp, v, secret)
    if dataclasses.is_dataclass(tp):
        return _build(ctx, tp, v, path)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(v, list):
            return _bad(ctx, path, tp, v, secret)
        item_tp = args[0]
        out = []
        ok = True
        for i, item in enumerate(v):
            sub = f"{path}[{i}]"
            if dataclasses.is_dataclass(item_tp):
                fmt = {"NAME": _env_key(item.get("name"))} if isinstance(item, dict) else {}
                got = _build(ctx, item_tp, item, sub, fmt)  # type: ignore[arg-type]
            else:
                got = _coerce(ctx, item_tp, item, sub, {"secret": secret})
                if got is not _INVALID:
                    got = _normalize(md, got)
                    if not _check(ctx, sub, got, md.get("item", ())):
                        got = _INVALID
            ok = ok and got is not _INVALID
            out.append(got)
        return tuple(out) if ok else _INVALID
    if origin is Mapping:
        if not isinstance(v, dict):
            return _bad(ctx, path, tp, v, secret)
        val_tp = args[1]
        out_map: dict[Any, Any] = {}
        ok = True
        for k, item in v.items():
            if not isinstance(k, str):
                ctx.err(path, f"keys must be strings, got {_show(k)}")
                ok = False
                continue
            sub = _join(path, k)
            if not _check(ctx, sub, k, md.get("key", ())):
                ok = False
                continue
            got = _coerce(ctx, val_tp, item, sub, {"secret": secret})
            if got is not _INVALID:
                got = _normalize(md, got)
                if not _check(ctx, sub, got, md.get("item", ())):
                    got = _INVALID
            ok = ok and got is not _INVALID
            out_map[k] = got
        return FrozenMap(out_map) if ok else _INVALID
    if not _scalar_ok(tp, v):
        return _bad(ctx, path, tp, v, secret)
    if tp is float:
        try:
            f = float(v)
        except OverflowError:
            f = math.inf
        if not math.isfinite(f):
            ctx.err(path, f"expected a finite number, got {_show(v, secret)}")
            return _INVALID
        return f
    if tp is Path:
        return _resolve_path(ctx, v, path)
    return v


def _scalar_ok(tp: Any, v: Any) -> bool:
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return isinstance(v, int | float) and not isinstance(v, bool)
    if tp is str:
        return isinstance(v, str)
    if tp is Path:
        return isinstance(v, str) and v != ""
    return True  # containers and dataclasses check themselves


def _bad(ctx: _Ctx, path: str, tp: Any, v: Any, secret: bool) -> Any:
    hint = ""
    inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    if inner[0] is str and isinstance(v, int | float) and not isinstance(v, bool):
        hint = " (put it in quotes)"
    elif inner[0] is str and isinstance(v, bool):
        # YAML 1.1 reads yes/no/on/off/true/false unquoted as booleans: an opt-out keyword NO
        # or OFF arrives as false.
        hint = " (YAML reads unquoted yes, no, on, off, true, false as booleans: put it in quotes)"
    ctx.err(path, f"expected {_expected(tp)}, got {_show(v, secret)}{hint}")
    return _INVALID


def _normalize(md: Mapping[str, Any], v: Any) -> Any:
    fn = md.get("normalize")
    return fn(v) if fn is not None and isinstance(v, str) else v


def _fields(
    ctx: _Ctx, cls: type, data: Any, path: str, fmt: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], bool]:
    """Check one mapping against one dataclass: the fields that passed, and whether all did."""
    if data is None:
        data = {}  # `server:` with every sub-key commented out means "all defaults"
    if not isinstance(data, dict):
        ctx.err(path, f"expected a mapping, got {_show(data)}")
        return {}, False
    fields = {f.name: f for f in dataclasses.fields(cls)}
    ok = True
    for k in data:
        if not isinstance(k, str):
            ctx.err(path, f"keys must be strings, got {_show(k)}")
            ok = False
        elif k not in fields:
            close = difflib.get_close_matches(k, list(fields), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            ctx.err(_join(path, k), f"unknown key{hint}")
            ok = False
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        md = f.metadata
        sub = _join(path, name)
        raw = data.get(name, _MISSING)
        source = ""
        tp = hints[name]
        if md.get("env"):
            env_name = md["env"].format_map(collections.defaultdict(str, fmt or {}))
            if ctx.env.get(env_name):  # an empty variable counts as unset (compose files)
                raw = ctx.env[env_name]
                source = f" (from env {env_name})"
                if tp in (int, int | None) and raw.strip().isdigit():  # a variable is text
                    raw = int(raw)
        if raw is _MISSING:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                ctx.err(sub, "required key missing")
                ok = False
            elif dataclasses.is_dataclass(tp):
                raw = {}  # build nested defaults too, so their paths resolve
            elif isinstance(f.default, Path):
                kwargs[name] = _resolve_path(ctx, f.default)
            if raw is _MISSING:
                continue
        if source:
            ctx.sources[sub] = source
        got = _coerce(ctx, tp, raw, sub, md)
        if got is not _INVALID and got is not None:
            got = _normalize(md, got)
            if not _check(ctx, sub, got, md.get("rules", ())):
                got = _INVALID
        if got is _INVALID:
            ok = False
        else:
            kwargs[name] = got
    return kwargs, ok


def _build(ctx: _Ctx, cls: type, data: Any, path: str, fmt: Mapping[str, str] | None = None) -> Any:
    """One dataclass instance from one mapping, cross-field checks included; or _INVALID."""
    kwargs, ok = _fields(ctx, cls, data, path, fmt)
    if not ok:
        return _INVALID
    obj = cls(**kwargs)
    problems = getattr(obj, "_problems", None)
    found = list(problems()) if problems is not None else []
    for name, msg in found:
        ctx.err(_join(path, name), msg)
    return _INVALID if found else obj


# --------------------------------------------------------------------------------------------
# Whole-config assembly and cross-section rules
# --------------------------------------------------------------------------------------------


def parse_config(
    data: Any, env: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> Config:
    """Validate already-parsed YAML data. Relative paths resolve against ``base_dir`` (CWD)."""
    ctx = _Ctx(
        env=os.environ if env is None else env,
        base_dir=Path(base_dir if base_dir is not None else Path.cwd()).resolve(),
        errors=[],
    )
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"config: expected a mapping, got {_show(data)}"])
    data = dict(data)
    for key in ("smscs", "routes", "default_route"):
        if key in data and data[key] is None:
            del data[key]  # an empty `smscs:` means "not given", like an absent key
    kwargs, _ = _fields(ctx, Config, data, "")

    raw_smscs = data.get("smscs", [])
    names: list[str] | None = None  # None: unknown (smscs itself is malformed)
    if isinstance(raw_smscs, list):
        names = _smsc_names(ctx, raw_smscs)
        sim = kwargs.get("sim")
        if not raw_smscs and isinstance(sim, SimConfig):
            if sim.enabled:
                names = [Config.IMPLICIT_SIM_SMSC]
                kwargs["smscs"] = (implicit_sim_smsc(sim),)
            else:
                ctx.err("smscs", "at least one SMSC is required (or set sim.enabled: true)")
    if names is not None:
        _check_routes(ctx, data, set(names))
    if "default_route" not in data and names is not None:
        kwargs["default_route"] = tuple(names)
    _check_route_encodings(ctx, data, kwargs)
    _check_ports(ctx, kwargs)
    _check_bind_identities(ctx, kwargs)
    _check_admin_tokens(ctx, kwargs)
    if ctx.errors:
        raise ConfigError(ctx.errors)
    kwargs["security"] = _default_key_file(kwargs["security"], kwargs["store"], ctx.base_dir)
    return Config(**kwargs)


def _smsc_names(ctx: _Ctx, raw: list[Any]) -> list[str]:
    """Names as written (even in entries with other errors), reporting duplicates."""
    names: list[str] = []
    first: dict[str, int] = {}
    for i, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            continue
        if name in first:
            ctx.err(
                f"smscs[{i}].name",
                f"duplicate SMSC name {name!r} (first at smscs[{first[name]}])",
            )
            continue
        # "a-b" and "a_b" would read one password variable (SMPP_BRIDGE_SMSC_A_B_PASSWORD):
        # one carrier's secret sent to the other.
        twin = next((n for n in first if _env_key(n) == _env_key(name)), None)
        if twin is not None:
            ctx.err(
                f"smscs[{i}].name",
                f"{name!r} and {twin!r} (smscs[{first[twin]}]) would share the environment "
                f"variable SMPP_BRIDGE_SMSC_{_env_key(name)}_PASSWORD; rename one",
            )
        first[name] = i
        names.append(name)
    return names


def _check_routes(ctx: _Ctx, data: Mapping[str, Any], known: set[str]) -> None:
    routes = data.get("routes")
    first: dict[str, int] = {}
    for i, route in enumerate(routes if isinstance(routes, list) else []):
        if not isinstance(route, dict):
            continue
        prefix = route.get("prefix")
        if isinstance(prefix, str):
            if prefix in first:
                ctx.err(
                    f"routes[{i}].prefix",
                    f"duplicate prefix {prefix!r} (first at routes[{first[prefix]}])",
                )
            first.setdefault(prefix, i)
        smscs = route.get("smscs")
        for j, name in enumerate(smscs if isinstance(smscs, list) else []):
            if isinstance(name, str) and name and name not in known:
                ctx.err(f"routes[{i}].smscs[{j}]", f"unknown SMSC {name!r}")
    default = data.get("default_route")
    seen: dict[str, int] = {}
    for j, name in enumerate(default if isinstance(default, list) else []):
        if isinstance(name, str) and name and name not in known:
            ctx.err(f"default_route[{j}]", f"unknown SMSC {name!r}")
        elif isinstance(name, str) and name in seen:
            ctx.err(f"default_route[{j}]", f"duplicate SMSC {name!r} (first at [{seen[name]}])")
        if isinstance(name, str):
            seen.setdefault(name, j)
    if default == [] and not first:
        ctx.err("default_route", "is empty and there are no routes: nothing could be sent")


# What a message's stored bytes were encoded for (at acceptance, with the options of its route's
# first SMSC): every SMSC it may fail over to must read the same bytes.
WIRE_OPTIONS = ("split", "packed_gsm", "allow_latin1", "gsm_data_coding")


def _check_route_encodings(ctx: _Ctx, data: Mapping[str, Any], sections: Mapping[str, Any]) -> None:
    """A route's SMSCs share the options that decide the bytes on the wire: a message is encoded
    once, for the route's first SMSC, and failed over as stored. Mixed, a Latin-1 message went
    to an SMSC without Latin-1, unpacked septets to one that unpacks them (garbage), UDH parts
    to a SAR one."""
    smscs = sections.get("smscs")
    if not isinstance(smscs, tuple):
        return
    by_name = {s.name: s for s in smscs if isinstance(s, SmscConfig)}

    def check(path: str, names: Any) -> None:
        found = [by_name[n] for n in names if isinstance(n, str) and n in by_name]
        if not found:
            return
        if all(s.bind_mode == "receiver" for s in found):
            if path == "default_route" and "default_route" not in data:
                return  # every SMSC a receiver, no route written: a daemon for MO alone
            ctx.err(
                path,
                "every SMSC of it binds as a receiver only (bind_mode receiver): its messages "
                "could never be sent; add an SMSC that transmits",
            )
            return
        found = [s for s in found if s.bind_mode != "receiver"]  # they send nothing
        first = found[0]
        for other in found[1:]:
            diff = [o for o in WIRE_OPTIONS if getattr(other, o) != getattr(first, o)]
            if diff:
                ctx.err(
                    path,
                    f"SMSCs {first.name!r} and {other.name!r} differ in {', '.join(diff)}: a "
                    "route's SMSCs must encode alike (messages are encoded once, for the first, "
                    "and failed over as they are); give them the same options or separate routes",
                )
                return

    routes = data.get("routes")
    for i, route in enumerate(routes if isinstance(routes, list) else []):
        if isinstance(route, dict) and isinstance(route.get("smscs"), list):
            check(f"routes[{i}].smscs", route["smscs"])
    default = sections.get("default_route")
    if isinstance(default, list | tuple):
        check("default_route", default)


def _check_admin_tokens(ctx: _Ctx, sections: Mapping[str, Any]) -> None:
    """An operator's token equal to the shared server.admin_token: everyone holding the shared
    one would be recorded as that operator, and removing the operator would revoke nothing."""
    server, admin = sections.get("server"), sections.get("admin")
    if not isinstance(server, ServerConfig) or not isinstance(admin, AdminConfig):
        return
    for i, op in enumerate(admin.operators):
        if server.admin_token and op.token == server.admin_token:
            ctx.err(
                f"admin.operators[{i}].token",
                "the same as server.admin_token: an operator's token must be their own",
            )


def _check_ports(ctx: _Ctx, sections: Mapping[str, Any]) -> None:
    """Listeners of one daemon on one port: `run` fails with "address already in use", which
    sends an operator looking for another process."""
    server, sim = sections.get("server"), sections.get("sim")
    aliyun = sections.get("aliyun")
    if not isinstance(server, ServerConfig):
        return
    if isinstance(sim, SimConfig) and sim.enabled:
        for key in ("port", "control_port"):
            if getattr(sim, key) == server.port:
                ctx.err(f"sim.{key}", f"must differ from server.port ({server.port})")
    taken = [(server.port, server.host, "server.port")]
    if isinstance(sim, SimConfig) and sim.enabled:
        # The control API listens on the loopback address whatever sim.host says.
        taken += [(sim.port, sim.host, "sim.port"), (sim.control_port, "127.0.0.1",
                  "sim.control_port")]  # fmt: skip
    if isinstance(aliyun, AliyunConfig) and aliyun.enabled:
        _check_port(ctx, "aliyun.port", aliyun.port, aliyun.host or server.host, taken)
        taken.append((aliyun.port, aliyun.host or server.host, "aliyun.port"))
    if server.admin_port is not None:
        # server.port itself: ServerConfig's own check.
        admin_host = server.admin_host or server.host
        _check_port(ctx, "server.admin_port", server.admin_port, admin_host, taken[1:])


# registered_delivery bits that ask the SMSC for a receipt (SMPP 3.4 5.2.17: a final one on
# success or failure, on failure, or an intermediate one).
RECEIPT_BITS = 0x13
# ... of them, those that ask for a final one: without them no expiry receipt comes at the end of
# a message's validity either (lifecycle.receipt_deadline).
FINAL_RECEIPT_BITS = 0x03


def _check_bind_identities(ctx: _Ctx, sections: Mapping[str, Any]) -> None:
    """Two SMSC entries binding to one carrier account (host, port and system_id) where one asks
    for receipts and the other receives: the carrier sees one account and hands each receipt to
    any receiving bind of it (round robin, as the simulator does), while receipts are matched by
    the SMSC entry's name and the carrier's id. Measured on the simulator, 4 of 10 messages
    split over two such entries stayed `sent`, their receipts kept unmatched under the other
    entry's name, to end `unknown` (billed) at the receipt timeout. What two entries were for
    is one entry's: `binds` (more binds of one account), `bind_mode: transmitter_receiver`
    (transmitters and receivers) and `receive_port` (receivers on another port)."""
    smscs = sections.get("smscs")
    if not isinstance(smscs, tuple):
        return
    entries = [(i, s) for i, s in enumerate(smscs) if isinstance(s, SmscConfig)]
    for j, b in entries:
        for i, a in entries[: entries.index((j, b))]:
            if a.system_id != b.system_id or not _hosts_overlap(a.host, b.host):
                continue
            if not {a.port, a.receive_port} & {b.port, b.receive_port} - {None}:
                continue
            crossed = any(
                asks.registered_delivery & RECEIPT_BITS and takes.bind_mode != "transmitter"
                for asks, takes in ((a, b), (b, a))
            )
            if crossed:
                ctx.err(
                    f"smscs[{j}]",
                    f"{b.name!r} binds as system_id {b.system_id!r} at {b.host}:{b.port} like "
                    f"{a.name!r} (smscs[{i}]): the carrier hands either's receipts to any of "
                    "their receiving binds, and a receipt is matched only to the messages of "
                    "the entry it came in on (the others end unknown at "
                    "pipeline.receipt_timeout_hours); make them one entry, with `binds` for "
                    "more binds, `bind_mode: transmitter_receiver` (and `receive_port`) for "
                    "separate transmitter and receiver binds",
                )
                break


def _check_port(
    ctx: _Ctx, key: str, port: int, host: str, taken: list[tuple[int, str, str]]
) -> None:
    for other_port, other, what in taken:
        if port == other_port and _hosts_overlap(host, other):
            ctx.err(key, f"must differ from {what} ({other_port})")
            return


def _hosts_overlap(a: str, b: str) -> bool:
    """Whether listeners on hosts `a` and `b` with one port collide. Spellings of one address
    do (`localhost` and `127.0.0.1`), and so does a wildcard with anything; only two distinct
    addresses are apart. A name other than localhost is not looked up (no DNS in a check):
    apart unless spelled the same."""

    def addresses(h: str) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address] | None:
        if h.lower() == "localhost":
            return {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
        try:
            return {ipaddress.ip_address(h.strip("[]"))}
        except ValueError:
            return None

    if a == b:
        return True
    sa, sb = addresses(a), addresses(b)
    if sa is None or sb is None:
        return a.lower() == b.lower()
    if any(x.is_unspecified for x in sa | sb):
        return True
    return bool(sa & sb)


def implicit_sim_smsc(sim: SimConfig) -> SmscConfig:
    """The SMSC the loader adds when only the simulator is configured."""
    host = "127.0.0.1" if sim.host in ("0.0.0.0", "::") else sim.host
    return SmscConfig(
        name=Config.IMPLICIT_SIM_SMSC,
        host=host,
        port=sim.port,
        system_id=sim.system_id,
        password=sim.password,
    )


def _default_key_file(sec: SecurityConfig, store: StoreConfig, base_dir: Path) -> SecurityConfig:
    """generate_master_key with no file named: the key lives next to the database."""
    if not sec.generate_master_key or sec.master_key_file is not None:
        return sec
    data_dir = store.path.parent if store.engine == "sqlite" else base_dir / "data"
    return dataclasses.replace(sec, master_key_file=data_dir / "master.key")


# --------------------------------------------------------------------------------------------
# Files, YAML, the effective view and the CLI entry
# --------------------------------------------------------------------------------------------

_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):
    """Safe YAML loader that refuses duplicate keys (PyYAML silently keeps the last one)."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # A scalar PyYAML cannot build (2024-13-45 as a date, a 5000-digit integer) raises a
        # bare ValueError; turn it into a marked error so it gets a line and column.
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as e:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read value {_show(node.value)}: {e}", node.start_mark
            ) from None


def _construct_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False) -> Any:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            dup = key in seen
            seen.add(key)
        except TypeError:
            continue  # unhashable: construct_mapping reports it
        if dup:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
    return yaml.constructor.SafeConstructor.construct_mapping(loader, node, deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _load_yaml(text: str, origin: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = " ".join(p for p in (e.context, e.problem) if p)
        raise ConfigError([f"{origin}: {where}invalid YAML: {what}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{origin}: invalid YAML: {e}"]) from None


CONFIG_BASE_ENV = "SMPP_BRIDGE_CONFIG_BASE_DIR"  # set by the supervisor for its acceptors


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    text: str | None = None,
) -> Config:
    """Load a YAML file (or the built-in default when ``path`` is None) and validate it.
    ``text``: the file's contents, read already (`read_config_text`), so that a caller knows
    exactly what it validated: a reload copies it for the acceptors."""
    data, base = _read_config(path, env, text)
    return parse_config(data, env, base)


def read_config_text(path: str | Path) -> str:
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{p}: cannot read config file: {e.strerror or e}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{p}: not UTF-8 text (byte {e.start})"]) from None


def load_sim_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """The simulator's own sections of a file, `sim` and `logging`; every other one is left to
    the daemon that reads the same file.

    Why: `smpp-bridge sim --config F` validated F as a daemon's configuration, so a file made
    for the simulator alone was refused for the master key and SMSC it never uses. A file that
    serves both (the compose set-up) still works: its other sections are not read here."""
    data, base = _read_config(path, env)
    ctx = _Ctx(env=os.environ if env is None else env, base_dir=base.resolve(), errors=[])
    if not isinstance(data, dict):
        raise ConfigError([f"config: expected a mapping, got {_show(data)}"])
    sections: dict[str, Any] = {}
    for name, cls in (("sim", SimConfig), ("logging", LoggingConfig)):
        raw = data.get(name)
        built = _build(ctx, cls, {} if raw is None else raw, name)
        if built is not _INVALID:
            sections[name] = built
    if ctx.errors:
        raise ConfigError(ctx.errors)
    return Config(**sections)


def _read_config(
    path: str | Path | None, env: Mapping[str, str] | None, text: str | None = None
) -> tuple[Any, Path]:
    """The parsed YAML of ``path`` (the built-in default for None; ``text`` when given) and
    the directory its relative paths mean."""
    if path is None:
        return _load_yaml(DEFAULT_YAML if text is None else text, "<default config>"), Path.cwd()
    p = Path(path)
    if text is None:
        text = read_config_text(p)
    # An acceptor loads the supervisor's private copy of the file (bridge/supervisor.py); its
    # relative paths still mean the original file's directory.
    base = (os.environ if env is None else env).get(CONFIG_BASE_ENV)
    return _load_yaml(text, str(p)), Path(base) if base else p.resolve().parent


def _secret_paths() -> tuple[frozenset[str], dict[str, str]]:
    paths: set[str] = set()
    envs: dict[str, str] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            sub = _join(prefix, f.name)
            if dataclasses.is_dataclass(tp):
                walk(tp, sub)  # type: ignore[arg-type]
            elif typing.get_origin(tp) is tuple and dataclasses.is_dataclass(
                item := typing.get_args(tp)[0]
            ):
                walk(item, sub + "[]")  # type: ignore[arg-type]
            elif f.metadata.get("secret"):
                paths.add(sub)
                if f.metadata.get("env"):
                    envs[sub] = f.metadata["env"]

    walk(Config, "")
    return frozenset(paths), envs


SECRET_PATHS, SECRET_ENV = _secret_paths()
"""Secret fields by path (list entries as ``smscs[].password``) and their env variables."""


def effective_config_dict(cfg: Config, mask_secrets: bool = True) -> dict[str, Any]:
    """Plain data (YAML/JSON-ready) for the loaded config; set secrets become ``"***"``."""

    def conv(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj):
            out = {}
            for f in dataclasses.fields(obj):
                v = getattr(obj, f.name)
                if mask_secrets and f.metadata.get("secret") and v is not None:
                    out[f.name] = "***"
                else:
                    out[f.name] = conv(v)
            return out
        if isinstance(obj, tuple | list):
            return [conv(v) for v in obj]
        if isinstance(obj, Mapping):
            return {k: conv(v) for k, v in obj.items()}
        if isinstance(obj, Path):
            return str(obj)
        return obj

    return conv(cfg)


def key_file_problems(sec: SecurityConfig) -> list[str]:
    """The master key files `run` will read, read now, so `config check` (the unit's
    ExecStartPre) refuses one that is missing, unreadable or not a key, as `run` would.

    Only a file in use is checked: an inline key (or env) wins over its file, and a missing
    file with `generate_master_key` is created at the first start. Messages name the path and
    what is wrong (never the file's content). Checked here rather than in the loader: a
    reload must not fail on a key file that only a restart reads again."""
    from bridge.crypto import MasterKeyError, decode_master_key

    out: list[str] = []
    keys: list[bytes | None] = []
    files = (
        ("master_key_file", sec.master_key, sec.master_key_file, sec.generate_master_key),
        ("previous_master_key_file", sec.previous_master_key, sec.previous_master_key_file, False),
    )
    for name, inline, path, generate in files:
        keys.append(_decode_key(inline) if inline else None)
        if inline or path is None:
            continue
        where = f"security.{name}"
        try:
            text = path.read_text()
        except FileNotFoundError:
            if not generate:
                # A new installation's first error: say how to make the current key.
                how = (
                    " (make one, once: base64 of 32 random bytes, readable by the service "
                    "only; README, 'Under systemd')"
                    if name == "master_key_file"
                    else ""
                )
                out.append(f"{where}: {path} does not exist{how}")
            continue
        except OSError as exc:
            out.append(f"{where}: cannot read {path}: {exc.strerror or exc}")
            continue
        except UnicodeDecodeError:
            out.append(f"{where}: {path} is not text (it must hold a base64 key of 32 bytes)")
            continue
        try:
            keys[-1] = decode_master_key(text)
        except MasterKeyError as exc:
            out.append(f"{where}: {path}: {exc}")
    current, previous = keys
    if current is not None and current == previous:
        # Both inline is the loader's refusal already; a file on either side is found here.
        name = "previous_master_key" if sec.previous_master_key else "previous_master_key_file"
        out.append(
            f"security.{name}: is the master key itself: during a rotation it is the key "
            "used before"
        )
    return out


def _install_problems(server: ServerConfig) -> list[str]:
    """What `run` would refuse in this Python's installation rather than in the file: a check
    that passes a file `run` then refuses lets a systemd unit's pre-start check through to a
    failed start."""
    if server.event_loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            return [
                "server.event_loop: uvloop, but uvloop is not installed in this Python "
                f"({sys.executable}): pip install 'smpp-bridge[uvloop]', or set it to auto"
            ]
    return []


def check_main(path: str | None) -> int:
    """`smpp-bridge config check [FILE]`: effective config on stdout (0) or errors on stderr (1)."""
    origin = path if path is not None else "<default config>"
    try:
        cfg = load_config(path)
        problems = key_file_problems(cfg.security) + _install_problems(cfg.server)
        if problems:
            raise ConfigError(problems)
    except ConfigError as e:
        n = len(e.errors)
        plural = "s" if n != 1 else ""
        print(f"{origin}: invalid configuration ({n} error{plural}):", file=sys.stderr)
        for line in e.errors:
            print(f"  {line}", file=sys.stderr)
        return 1
    if cfg.store.engine == "sqlite":
        from bridge.store.sqlite_modes import warning

        if (warned := warning(Path(cfg.store.path))) is not None:  # valid all the same: exit 0
            print(f"{origin}: warning: {warned}", file=sys.stderr)
    sys.stdout.write(f"# effective configuration of {origin} (secrets masked)\n")
    sys.stdout.write(
        yaml.safe_dump(effective_config_dict(cfg), sort_keys=False, allow_unicode=True)
    )
    return 0


DEFAULT_YAML = """\
# smpp-bridge default configuration: what `smpp-bridge run` uses when no config file is given.
# A self-contained demo: SQLite under ./data, the built-in SMPP simulator on loopback as the only
# SMSC, and a demo master key generated under ./data. For production start from
# config/bridge.example.yaml, which documents every option.
# This text is built in as bridge.config.DEFAULT_YAML (config/default.yaml is a copy, kept identical
# by a test). Built in, relative paths resolve against the current directory; loaded as a file, they
# resolve against the file's directory, as in every config file.

server:
  host: 127.0.0.1
  port: 8080
  admin_token: null          # admin API off unless env SMPP_BRIDGE_ADMIN_TOKEN is set

store:
  engine: sqlite
  path: ./data/bridge.db

security:
  master_key_file: ./data/master.key
  generate_master_key: true  # demo only: creates the key file on first start

sim:
  enabled: true              # the built-in simulator listens on loopback ...
  host: 127.0.0.1
  port: 2775
  control_port: 2776
  system_id: bridge
  password: bridge

smscs: []                    # ... and, with no SMSC listed, an implicit SMSC "sim" points at it
"""
