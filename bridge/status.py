"""`smpp-bridge status`: a running daemon's binds, queue and throughput, from its admin API.

Fetching and rendering are split so the table is tested without a daemon. The command talks HTTP
only (urllib, no event loop): it is what an operator runs on a box where the daemon may be wedged,
so it must not share anything with it but the port.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["DaemonStatus", "StatusError", "fetch", "render"]


class StatusError(Exception):
    """The daemon could not be asked (unreachable, refused the token, answered nonsense)."""


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    url: str
    ready: bool
    problems: tuple[str, ...]
    smscs: tuple[Mapping[str, Any], ...]
    queue: Mapping[str, Any]
    smscs_unavailable: str | None = None  # why /admin/smscs did not answer (see _admin)
    fetched_at: float | None = None  # unix time of the answers: LAST_ERROR's age is from it
    warnings: tuple[str, ...] = ()  # /readyz's: what is wrong while ready (receivers down)

    def as_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "ready": self.ready,
            "problems": list(self.problems),
            "warnings": list(self.warnings),
            "smscs": list(self.smscs),
            "queue": dict(self.queue),
        } | ({"smscs_unavailable": self.smscs_unavailable} if self.smscs_unavailable else {})


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib follows redirects with every header, the admin token's Authorization included,
    to whatever host the Location names: a proxy (or anyone answering on the URL) could
    collect it. A redirect is an error here, naming where it points."""

    def redirect_request(
        self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        raise StatusError(
            f"{req.full_url} answered {code}, a redirect to {newurl}: give that URL "
            "(the admin token is not sent on to a redirect)"
        )


_OPENER = urllib.request.build_opener(_NoRedirect)


def _get(url: str, token: str | None, timeout: float) -> tuple[int, Any]:
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, headers=headers)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:  # a 4xx/5xx still has our JSON body
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StatusError(f"cannot reach {url}: {reason}") from None
    try:
        return status, json.loads(raw)
    except ValueError:
        raise StatusError(f"{url} answered {status} with a body that is not JSON") from None


def _admin(base: str, path: str, token: str | None, timeout: float) -> Mapping[str, Any]:
    """The admin view at `path`; one the daemon cannot answer now (503: its store is down, it is
    shutting down) comes back as {"unavailable": "CODE: message"} for render to say so, beside
    the readiness problems: status printed only the failed call and none of the rest."""
    status, body = _get(base + path, token, timeout)
    if status != 200:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        code, message = err.get("code", f"HTTP {status}"), err.get("message", "")
        if status == 503:
            return {"unavailable": f"{code}: {message}".rstrip(": ")}
        if code == "ADMIN_DISABLED":  # no token of ours helps: the daemon's config must change
            hint = (
                " (or SMPP_BRIDGE_ADMIN_TOKEN in the daemon's environment; then a restart, and"
                " the same token here)"
            )
        else:
            hint = "" if token else " (give --token or set SMPP_BRIDGE_ADMIN_TOKEN)"
        raise StatusError(f"{path}: {code}: {message}{hint}")
    return body


def fetch(url: str, token: str | None, timeout: float = 5.0) -> DaemonStatus:
    base = url.rstrip("/")
    status, ready = _get(base + "/readyz", None, timeout)
    if not isinstance(ready, dict) or status not in (200, 503):
        raise StatusError(f"{base}/readyz answered {status}: is this smpp-bridge?")
    smscs = _admin(base, "/admin/smscs", token, timeout)
    queue = _admin(base, "/admin/queue", token, timeout)
    return DaemonStatus(
        url=base,
        ready=status == 200,
        problems=tuple(str(p) for p in ready.get("problems", ())),
        smscs=tuple(smscs.get("smscs", ())),
        queue=queue,
        smscs_unavailable=smscs.get("unavailable"),
        fetched_at=time.time(),
        warnings=tuple(str(w) for w in ready.get("warnings", ())),
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in (header, *rows)
    ]


def _num(v: Any) -> str:
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.1f}"
    return str(int(v)) if isinstance(v, int | float) else "-"


def _last_error(err: Mapping[str, Any], now: float | None) -> str:
    """The message, with its age: a bound SMSC showed the connect error of an outage long over
    as if it were current."""
    if not err:
        return "-"
    text = str(err.get("message", "-"))[:60]
    at = err.get("at")
    if now is None or not isinstance(at, str):
        return text
    try:
        age = max(0.0, now - datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return text
    return f"{text} ({_age(age)} ago)"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{int(seconds)} s"
    if seconds < 7200:
        return f"{int(seconds // 60)} min"
    if seconds < 172_800:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86_400)} d"


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _rate(m: Mapping[str, Any]) -> float:
    for key in ("tps_avg", "tps"):
        if _is_num(m.get(key)):
            return float(m[key])
    return 0.0


def _up_cell(m: Mapping[str, Any]) -> str:
    """yes, or what is wrong in capitals: an SMSC configured to send and receive with only one
    kind of bind up says which (`TX ONLY`: receipts and MO wait at the carrier; `RX ONLY`: no
    message goes out), where `yes` or `NO` hid the receivers."""
    state = m.get("state")
    if state in ("reconnecting", "removing", "unknown"):
        return state.upper()
    sending, receiving = m.get("sending"), m.get("receiving")
    if m.get("up"):
        return "TX ONLY" if sending and receiving is False else "yes"
    return "RX ONLY" if sending is False and receiving else "NO"


def _acceptors_line(config: Mapping[str, Any]) -> tuple[list[str], bool]:
    """With acceptor processes: how many run the owner's configuration, naming those that do
    not (an acceptor that never applied a reload serves the old rules). An older daemon, or
    one without acceptors, has nothing to say here."""
    current = config.get("generation")
    acceptors = [a for a in config.get("acceptors") or () if isinstance(a, Mapping)]
    if not isinstance(current, str) or not acceptors:
        return [], False
    late = [a for a in acceptors if a.get("generation") != current]
    line = (
        f"  config: {current}; acceptors on the current configuration: "
        f"{len(acceptors) - len(late)} of {len(acceptors)}"
    )
    if late:
        named = ", ".join(
            f"pid {a.get('pid')} (slot {a.get('slot')}) runs {a.get('generation')}" for a in late
        )
        line += f" ({named}: it serves the previous rules until it applies the reload)"
    workers = config.get("workers")
    if isinstance(workers, int) and not isinstance(workers, bool) and len(acceptors) < workers:
        down = workers - len(acceptors)
        line += (
            f"; {down} of {workers} acceptors not running (restarting after an exit: see the log)"
        )
    return [line], bool(late)


def _fleet_line(
    smscs: Sequence[Mapping[str, Any]], fleets: Sequence[Mapping[str, Any]], span: str
) -> list[str]:
    """A PostgreSQL fleet: the binds up and throughput of every live instance. The table above
    is this instance's alone (`BINDS 1/2` with the other bind on another instance), beside a
    queue that is the whole fleet's."""
    if not fleets:
        return []
    binds = ", ".join(
        f"{m.get('name', '?')} {_num(m['fleet'].get('binds_up', 0))}/"
        f"{sum(b.get('configured', 0) for b in (m.get('binds') or {}).values())}"
        for m in smscs
        if isinstance(m.get("fleet"), Mapping)
    )
    total = sum(float(f.get("tps_avg") or 0) for f in fleets)
    n = max(int(f.get("instances") or 0) for f in fleets)
    return [
        f"fleet: {n} live instance{'s' if n != 1 else ''}; binds up {binds}; "
        f"{_num(round(total, 1))} submits/s over {span}"
    ]


def render(s: DaemonStatus) -> str:
    """A compact table; one line per SMSC, then the queue, the throughput and the webhook
    reports not delivered yet."""
    lines = [f"smpp-bridge {s.url}  {'ready' if s.ready else 'NOT READY'}"]
    lines += [f"  problem: {p}" for p in s.problems]
    lines += [f"  warning: {w}" for w in s.warnings]
    config = s.queue.get("config")
    config = config if isinstance(config, Mapping) else {}
    acceptors, any_late = _acceptors_line(config)
    lines += acceptors
    # An acceptor behind is why the flag is false: not a refused file.
    if config.get("last_reload_ok") is False and not any_late:
        lines.append(
            "  config: the last SIGHUP's file was REFUSED or failed to apply; the daemon runs its "
            "previous configuration and a restart would refuse the file (see the log)"
        )
    header = ("SMSC", "UP", "BINDS", "WINDOW", "TPS", "LIMIT", "THROTTLED", "RECONNECTS",
              "SENT", "FAILED", "RTT_MS", "LAST_ERROR")  # fmt: skip
    rows = []
    for m in s.smscs:
        binds = m.get("binds") or {}
        window = m.get("window") or {}
        submits = m.get("submits") or {}
        configured = sum(b.get("configured", 0) for b in binds.values())
        err = m.get("last_error") or {}
        limit = m.get("tps_limit") or 0
        # "-": the SMSC has no limit; "0": it has one and this instance holds no share of it
        # (none of its transmit binds up here).
        capped = (m.get("tps_configured", limit) or 0) > 0
        rows.append(
            (
                str(m.get("name", "?")),
                _up_cell(m),
                f"{m.get('binds_up', 0)}/{configured}",
                f"{window.get('in_use', 0)}/{window.get('size', 0)}",
                _num(m.get("tps", 0)),
                _num(limit) if capped else "-",
                _num(m.get("throttle_events", 0)),
                _num(m.get("reconnects", 0)),
                _num(submits.get("ok", 0)),
                _num(submits.get("failed_total", 0)),
                _num(m.get("rtt_ms_avg")),
                _last_error(err, s.fetched_at),
            )
        )
    if s.smscs_unavailable:
        lines.append(f"SMSCs: unavailable ({s.smscs_unavailable})")
    else:
        lines += _table(header, rows) if rows else ["(no SMSC configured)"]
    q = s.queue
    if "unavailable" in q:
        lines.append(f"queue: unavailable ({q['unavailable']})")
        return "\n".join(lines)
    states = q.get("by_state") or {}
    oldest = q.get("oldest_age_s")
    lines.append(
        f"queue: {q.get('depth', 0)} parts in {q.get('messages', 0)} messages "
        f"(limit {q.get('limit', '-')}); oldest waiting "
        + (f"{oldest:.1f} s" if isinstance(oldest, int | float) else "-")
    )
    lines.append(
        "  "
        + ", ".join(f"{k} {v.get('parts', 0)}" for k, v in states.items() if isinstance(v, dict))
    )
    # The 10 s average: the last whole second alone reads 0 whenever one passes without a
    # submit (bursts, an overloaded machine). An older daemon has no tps_avg: its tps then.
    total = sum(_rate(m) for m in s.smscs)
    averaged = all(_is_num(m.get("tps_avg")) for m in s.smscs)
    span = "the last 10 s" if averaged else "the last second"
    fleets = [m["fleet"] for m in s.smscs if isinstance(m.get("fleet"), Mapping)]
    here = ", this instance" if fleets else ""
    lines.append(f"throughput: {_num(round(total, 1))} submits/s over {span}, all SMSCs{here}")
    lines += _fleet_line(s.smscs, fleets, span)
    hooks = q.get("webhooks")
    if isinstance(hooks, Mapping):  # an older daemon's queue has no webhooks section
        age = hooks.get("oldest_age_s")
        lines.append(
            f"webhooks: {_num(hooks.get('pending', 0))} reports pending (oldest "
            + (f"{age:.1f} s" if _is_num(age) else "-")
            + f"), {_num(hooks.get('dead', 0))} dead"
        )
    return "\n".join(lines)
