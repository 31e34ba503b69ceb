"""Logging set-up: key=value text or JSON lines, a level per component, UTC timestamps, context
ids on every line, secrets redacted and message bodies masked.

- Context: the API middleware sets `REQUEST_ID` and the dispatcher sets `MESSAGE_ID` for the task
  handling one request or one message; every record logged inside that task (store, connector,
  auth) carries the id, without each call site passing it.
- Extra fields (`log.info("bound", extra={"smsc": name})`) are printed as `key=value` (text) or
  JSON members, so call sites log data, not prose with numbers inside.
- Secrets: the configuration's secret values (admin token, master key, SMSC and simulator
  passwords, the store DSN and its password) are replaced by `***` in every line. That is a net
  under the rule, not the rule: secrets are never passed to a log call in the first place
  (app and webhook secrets are not known here, so for them the rule is all there is).
- Bodies: with `logging.mask_bodies` (the default) `body()` logs a text as its length only and
  `number()` keeps a phone number's country code and last four digits, because message texts
  carry verification codes and numbers are personal data.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from bridge.config import Config, LoggingConfig
from bridge.domain.phone import mask as mask_phone

__all__ = [
    "MESSAGE_ID",
    "REQUEST_ID",
    "JsonFormatter",
    "TextFormatter",
    "body",
    "config_secrets",
    "configure",
    "make_handler",
    "number",
]

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
MESSAGE_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("message_id", default=None)

# Shorter secrets would redact ordinary words ("bridge"); SMPP passwords are at most 8 octets.
MIN_REDACTED_LEN = 8
REDACTED = "***"

_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)

_mask = True


def body(text: str | None) -> str | None:
    """A message text as logs may show it: `<masked N chars>` while masking is on."""
    if text is None or not _mask:
        return text
    return f"<masked {len(text)} chars>"


def number(e164: str | None) -> str | None:
    """A phone number as logs may show it: +86*******8000 while masking is on."""
    if e164 is None or not _mask:
        return e164
    return mask_phone(e164)


def masking() -> bool:
    return _mask


# -- secrets -------------------------------------------------------------------------------------


def _walk_secrets(obj: Any) -> Iterator[str]:
    if isinstance(obj, list | tuple):
        for item in obj:
            yield from _walk_secrets(item)
        return
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("secret"):
            if isinstance(value, str) and value:
                yield value
                if "://" in value:  # a DSN: its password alone may show in a driver's error
                    password = urlsplit(value).password
                    if password:
                        yield password
        else:
            yield from _walk_secrets(value)


def config_secrets(cfg: Config | None) -> tuple[str, ...]:
    """Every secret value the configuration holds, longest first (so a DSN is redacted whole
    before its password inside it)."""
    if cfg is None:
        return ()
    found = {s for s in _walk_secrets(cfg) if len(s) >= MIN_REDACTED_LEN}
    # A master key read from its file is as secret as one given inline (the systemd set-up and
    # generate_master_key keep it there): it was printed in clear.
    sec = cfg.security
    for key_file, inline in (
        (sec.master_key_file, sec.master_key),
        (sec.previous_master_key_file, sec.previous_master_key),
    ):
        if key_file is None or inline is not None:
            continue
        try:
            key = Path(key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            key = ""
        if len(key) >= MIN_REDACTED_LEN:
            found.add(key)
    return tuple(sorted(found, key=len, reverse=True))


def add_secrets(values: Iterable[str]) -> None:
    """Redact `values` too, from now on, in every handler on the root logger: a reload's new
    SMSC password was printed in clear (the list was fixed at start-up). Old values stay."""
    new = {v for v in values if len(v) >= MIN_REDACTED_LEN}
    if not new:
        return
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        if isinstance(formatter, _Redacting) and not new <= set(formatter.secrets):
            merged = set(formatter.secrets) | new
            formatter.secrets = tuple(sorted(merged, key=len, reverse=True))


# -- formatting ----------------------------------------------------------------------------------


class ContextFilter(logging.Filter):
    """Copies the task's request / message id onto the record (an explicit extra wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = REQUEST_ID.get()
        if rid is not None and not hasattr(record, "request_id"):
            record.request_id = rid
        mid = MESSAGE_ID.get()
        if mid is not None and not hasattr(record, "message_id"):
            record.message_id = mid
        return True


def extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


def _timestamp(record: logging.LogRecord) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z"
    )


def _kv(value: Any) -> str:
    if isinstance(value, str):
        if value and not _NEEDS_QUOTES.search(value):
            return value
        return _escape(json.dumps(value, ensure_ascii=False))
    if isinstance(value, bool | int | float) or value is None:
        return json.dumps(value)
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        return json.dumps(str(value), ensure_ascii=False)


# A value written bare unless it holds a blank, a quote, "=" or a backslash, or a control character
# (an SMSC's \r and ESC sequences in a receipt id could overwrite what a terminal shows).
_NEEDS_QUOTES = re.compile(r'[\s"=\\\x00-\x1f\x7f-\x9f\u2028\u2029]')
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


_ALL_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """Client-supplied text (a request path) for the *message* of a log line: every control
    character as \\uXXXX, newline and tab included. Messages keep their newlines (a traceback, a
    start refused with several configuration errors), so a decoded path with %0A in it, put
    into one, wrote a second line of the client's making: a forged log entry,
    unauthenticated."""
    return _ALL_CONTROLS.sub(lambda m: f"\\u{ord(m[0]):04x}", text)


def _escape(text: str) -> str:
    """Control characters (but newline and tab) as \\uXXXX: json.dumps leaves U+007F-U+009F
    and the line separators as they are."""
    return _CONTROLS.sub(lambda m: f"\\u{ord(m[0]):04x}", text)


class _Redacting(logging.Formatter):
    secrets: tuple[str, ...] = ()
    _forms: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())

    def redact(self, line: str) -> str:
        for s in self._escaped():
            if s in line:
                line = line.replace(s, REDACTED)
        return line

    def _escaped(self) -> tuple[str, ...]:
        """Each secret as written and as JSON writes it inside a string: a secret holding a
        quote or a backslash is escaped by the JSON line (and a quoted key=value) before it
        is redacted, and so was printed in clear."""
        if self._forms[0] is not self.secrets:
            forms = {f for x in self.secrets for f in (x, json.dumps(x, ensure_ascii=False)[1:-1])}
            self._forms = (self.secrets, tuple(sorted(forms, key=len, reverse=True)))
        return self._forms[1]


class JsonFormatter(_Redacting):
    """One JSON object per line: ts, level, logger, msg, then every extra field."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in extras(record).items():
            out.setdefault(k, v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return self.redact(json.dumps(out, ensure_ascii=False, default=str))


class TextFormatter(_Redacting):
    """`2026-01-01T00:00:00.000Z INFO bridge.smpp smpp bound smsc=carrier-a bind=0`."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, record.name, _escape(record.getMessage())]
        parts += [f"{k}={_kv(v)}" for k, v in extras(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return self.redact(line)


# -- set-up --------------------------------------------------------------------------------------


def component_logger(name: str) -> str:
    """`smpp` -> `bridge.smpp`: components are named as in `logging.components`."""
    return name if name.startswith("bridge") else f"bridge.{name}"


def make_handler(
    cfg: LoggingConfig | None, *, secrets: Iterable[str] = (), stream: TextIO | None = None
) -> logging.Handler:
    """A handler writing `cfg.format` lines to `stream` (stderr), with context ids and redaction;
    sets body masking from `cfg.mask_bodies`."""
    global _mask
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter: _Redacting = JsonFormatter() if cfg and cfg.format == "json" else TextFormatter()
    formatter.secrets = tuple(sorted(set(secrets), key=len, reverse=True))
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter())
    _mask = cfg.mask_bodies if cfg else True
    return handler


def configure(
    cfg: LoggingConfig | None,
    level_override: str | None = None,
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Replace the root handlers with one `make_handler` handler; set the levels."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = make_handler(cfg, secrets=secrets, stream=stream)
    root.addHandler(handler)
    root.setLevel(level_override or (cfg.level if cfg else "INFO"))
    if cfg:
        for name, level in cfg.components.items():
            logging.getLogger(component_logger(name)).setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _RefusedRequests) for f in server.filters):
        server.addFilter(_RefusedRequests())
    return handler


class _RefusedRequests(logging.Filter):
    """aiohttp logs each request its HTTP parser refuses at ERROR with a traceback quoting the
    raw request line or header: a client that did not percent-encode its query put full numbers
    and verification codes (or an Authorization header) in the log, past the masking. The fact
    is kept, the bytes are not; and at WARNING: it is the client's fault, answered 400 and
    counted (smpp_bridge_api_requests_total, endpoint "unparsable"), and any client, a port
    scanner say, could otherwise add ERROR lines that page whoever alerts on them."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = "malformed HTTP request refused (%s)", (type(exc).__name__,)
            record.exc_info, record.exc_text = None, None
            if record.levelno > logging.WARNING:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class Throttled:
    """One line per `every_s` for a failure that repeats with every request while it lasts (the
    store unreachable, a full disk): the first with its error, later ones counted into the next
    line, no traceback (the fault is the environment's, not a line of ours). A full disk logged
    a traceback per refused request, hundreds of lines a second."""

    def __init__(self, logger: logging.Logger, every_s: float = 10.0) -> None:
        self.logger = logger
        self.every_s = every_s
        self._last = -math.inf
        self._more = 0
        self._failing: str | None = None  # what failed, until ok() says it works again

    def error(self, what: str, exc: BaseException) -> None:
        self._failing = what
        now = time.monotonic()
        if now - self._last < self.every_s:
            self._more += 1
            return
        more, self._more, self._last = self._more, 0, now
        tail = f" ({more} more since the last report)" if more else ""
        self.logger.error("%s: %s: %s%s", what, type(exc).__name__, exc, tail)

    def ok(self) -> None:
        """It works again: one INFO line after errors, so the last word in the log is not an
        error that has passed (the disk freed, the store back)."""
        if self._failing is None:
            return
        what, more, self._failing = self._failing, self._more, None
        self._more, self._last = 0, -math.inf
        tail = f" ({more} more failures since the last report)" if more else ""
        self.logger.info("%s: works again%s", what, tail)


class Failures:
    """What a background loop (heartbeat, sweeper, housekeeping, webhook claims) logs when a
    step fails. Those loops run every second or so: with the store down for a minute each step
    logged a traceback per round, hundreds of lines that buried the one saying what was wrong.
    A failure of the environment (`transient`: the store unreachable, a full disk) gets one line
    per step per `every_s`, without a traceback, and one line when the step works again; any
    other failure is a fault of ours and keeps its traceback every time."""

    def __init__(
        self,
        logger: logging.Logger,
        transient: Callable[[BaseException], bool],
        every_s: float = 10.0,
    ) -> None:
        self.logger = logger
        self.transient = transient
        self.every_s = every_s
        self._throttled: dict[str, Throttled] = {}
        self._failing: dict[str, int] = {}

    def failed(self, what: str, exc: BaseException) -> None:
        """`what` names the step ("heartbeat"): the line says "heartbeat failed: ..."."""
        self._failing[what] = self._failing.get(what, 0) + 1
        if not self.transient(exc):
            self.logger.error("%s failed", what, exc_info=exc)
            return
        throttled = self._throttled.get(what)
        if throttled is None:
            throttled = self._throttled[what] = Throttled(self.logger, self.every_s)
        throttled.error(f"{what} failed", exc)

    def ok(self, what: str) -> None:
        if self._failing:
            n = self._failing.pop(what, 0)
            if n:
                self._throttled.pop(what, None)  # a new outage's first failure is reported
                self.logger.info("%s works again after %d failed attempts", what, n)
