"""HTTP control endpoint of the simulated SMSC (127.0.0.1 only) and the ``sim mo`` CLI client.

Why HTTP: a person testing their integration, or a test in another process, needs to inject an MO,
flip the outcome mix or throttle ratio mid-run, and read counters, without restarting binds.

``GET /stats``  counters, knobs and binds. ``GET /messages?limit=N`` the last reassembled
messages. ``POST /mo`` {"source", "destination", "text", "split"?, "system_id"?} -> {"parts": n}.
``POST /config`` {knob: value, ...}: all validated first, then applied together; 400 names the
field on bad input. Errors are JSON ``{"error": CODE, "message": text}``, never tracebacks.
The CLI client (``mo_command``) lives in ``server`` so the CLI does not import aiohttp for it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from bridge import jsonio
from bridge.api.http_errors import name_every_answer
from bridge.sim.server import BIND_FAIL_STATUSES, MO_SPLITS, RECEIPT_STATS, SimError

if TYPE_CHECKING:
    from bridge.sim.server import SimSmsc

__all__ = ["apply_knobs", "make_app", "start_control"]

_SIM_KEY: Final = web.AppKey("sim", object)
_MAX_MESSAGES: Final = 10_000


def _bad(field: str, message: str) -> SimError:
    return SimError("INVALID_CONFIG", f"{field}: {message}")


def _number(field: str, v: Any, lo: float, hi: float, *, integer: bool = False) -> float | int:
    ok_type = type(v) is int if integer else type(v) in (int, float)
    if not ok_type or (isinstance(v, float) and not math.isfinite(v)):
        kind = "an integer" if integer else "a number"
        raise _bad(field, f"must be {kind}, got {json.dumps(v)}")
    if not lo <= v <= hi:
        raise _bad(field, f"must be between {lo:g} and {hi:g}, got {v}")
    return v


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def check(field: str, v: Any) -> str:
        if v not in choices:
            raise _bad(field, f"must be one of {', '.join(choices)}, got {json.dumps(v)}")
        return str(v)

    return check


def _outcomes(field: str, v: Any) -> dict[str, float]:
    if not isinstance(v, dict) or not v:
        raise _bad(field, "must be a non-empty object of stat -> weight")
    out: dict[str, float] = {}
    for stat, w in v.items():
        if stat not in RECEIPT_STATS:
            raise _bad(f"{field}.{stat}", f"unknown stat; use {', '.join(RECEIPT_STATS)}")
        out[stat] = float(_number(f"{field}.{stat}", w, 0, 1e9))
    if sum(out.values()) <= 0:
        raise _bad(field, "weights must add up to more than 0")
    return out


def _bool(field: str, v: Any) -> bool:
    if type(v) is not bool:
        raise _bad(field, f"must be true or false, got {json.dumps(v)}")
    return v


_KNOBS: Final[dict[str, Callable[[str, Any], Any]]] = {
    "outcomes": _outcomes,
    "receipt_delay_ms": lambda f, v: _number(f, v, 0, 3_600_000, integer=True),
    "answer_delay_ms": lambda f, v: _number(f, v, 0, 60_000, integer=True),
    "throttle_ratio": lambda f, v: float(_number(f, v, 0, 1)),
    "syserr_ratio": lambda f, v: float(_number(f, v, 0, 1)),
    "tps_limit": lambda f, v: float(_number(f, v, 0, 1_000_000)),
    "drop_after_pdus": lambda f, v: _number(f, v, 0, 2**31, integer=True),
    "id_format": _choice("hex", "dec"),
    "receipt_text_id": _choice("same", "dec", "hex"),
    "receipts_as": _choice("both", "text", "tlv"),
    "receipt_pdu": _choice("deliver_sm", "data_sm"),
    "receipt_parts": _choice("every", "first", "last"),
    "packed_gsm": _bool,
    "receipt_ack_timeout_s": lambda f, v: float(_number(f, v, 0.01, 86_400)),
    "receipt_max_attempts": lambda f, v: _number(f, v, 1, 100, integer=True),
    "receipt_retry_delay_ms": lambda f, v: _number(f, v, 0, 3_600_000, integer=True),
    "bind_fail_status": _choice(*BIND_FAIL_STATUSES),
    "deliver_window": lambda f, v: _number(f, v, 0, 1_000_000, integer=True),
}


def apply_knobs(sim: SimSmsc, changes: Any) -> dict[str, Any]:
    """Validate every change, then apply them all (or none); returns the knobs afterwards."""
    if not isinstance(changes, Mapping) or not changes:
        raise SimError("INVALID_CONFIG", "body: must be a non-empty JSON object of knob -> value")
    new: dict[str, Any] = {}
    for key, value in changes.items():
        check = _KNOBS.get(key)
        if check is None:
            raise SimError(
                "INVALID_CONFIG", f"{key}: unknown knob; known: {', '.join(sorted(_KNOBS))}"
            )
        new[key] = check(key, value)
    tr = new.get("throttle_ratio", sim.throttle_ratio)
    sr = new.get("syserr_ratio", sim.syserr_ratio)
    if tr + sr > 1:
        raise _bad(
            "syserr_ratio", f"throttle_ratio + syserr_ratio must be at most 1, got {tr + sr:g}"
        )
    for key, value in new.items():
        setattr(sim, key, value)
    return sim.knobs()


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


async def _json_body(request: web.Request) -> Any:
    try:
        text = await request.text()
        value = json.loads(text)
        # As the daemon's faces: a repeated key is refused, not read as its last value.
        jsonio.check_unique(text, value)
    except jsonio.DuplicateKeyError as exc:
        raise SimError(
            "DUPLICATE_JSON_KEY",
            f"body: {exc.described()}",
        ) from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise SimError("INVALID_JSON", "body: must be valid JSON") from None
    return value


def _sim(request: web.Request) -> SimSmsc:
    return request.app[_SIM_KEY]  # type: ignore[return-value]


async def _stats(request: web.Request) -> web.Response:
    sim = _sim(request)
    return web.json_response(
        {
            "counters": dict(sim.counters),
            "knobs": sim.knobs(),
            "binds": sim.binds(),
            "port": sim.port,
            "messages_kept": len(sim.messages),
            "incomplete_messages": len(sim.reassembler),
        }
    )


async def _messages(request: web.Request) -> web.Response:
    sim = _sim(request)
    raw = request.query.get("limit", "100")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= _MAX_MESSAGES:
        return _error(400, "INVALID_QUERY", f"limit: must be an integer 1..{_MAX_MESSAGES}")
    limit = int(raw)
    msgs = list(sim.messages)[-limit:]
    return web.json_response({"messages": [m.as_json() for m in msgs]})


def _str_field(body: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    v = body.get(name)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v:
        raise SimError("INVALID_MO", f"{name}: must be a non-empty string")
    return v


async def _mo(request: web.Request) -> web.Response:
    sim = _sim(request)
    try:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise SimError("INVALID_MO", "body: must be a JSON object")
        source = _str_field(body, "source")
        destination = _str_field(body, "destination")
        text = _str_field(body, "text")
        system_id = _str_field(body, "system_id", required=False)
        split = body.get("split", "udh8")
        if split is not None and split not in MO_SPLITS:
            raise SimError("INVALID_MO", f"split: must be one of {', '.join(MO_SPLITS)} or null")
        assert source is not None and destination is not None and text is not None
        ref = body.get("ref")
        if ref is not None and (type(ref) is not int):
            raise SimError("INVALID_MO", "ref: must be an integer or null")
        which = body.get("parts")
        if which is not None and (
            not isinstance(which, list) or any(type(n) is not int for n in which)
        ):
            raise SimError("INVALID_MO", "parts: must be a list of part numbers or null")
        parts = await sim.inject_mo(
            source, destination, text, split=split, system_id=system_id, ref=ref, parts=which
        )
    except SimError as e:
        return _error(409 if e.code == "NO_RECEIVER" else 400, e.code, e.message)
    return web.json_response({"parts": parts})


async def _config(request: web.Request) -> web.Response:
    sim = _sim(request)
    try:
        knobs = apply_knobs(sim, await _json_body(request))
    except SimError as e:
        return _error(400, e.code, e.message)
    return web.json_response({"knobs": knobs})


def make_app(sim: SimSmsc) -> web.Application:
    # Run as a process of its own (`smpp-bridge sim`) nothing else names its answers: without
    # this they said Python's and aiohttp's versions (the daemon's own answers never do).
    name_every_answer()
    app = web.Application()
    app[_SIM_KEY] = sim
    app.router.add_get("/stats", _stats)
    app.router.add_get("/messages", _messages)
    app.router.add_post("/mo", _mo)
    app.router.add_post("/config", _config)
    return app


async def start_control(sim: SimSmsc, port: int) -> tuple[web.AppRunner, int]:
    """Serve the control app on 127.0.0.1:port (0 = ephemeral); returns (runner, real port)."""
    runner = web.AppRunner(make_app(sim), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    real = port
    for addr in runner.addresses:
        real = addr[1]
        break
    return runner, real
