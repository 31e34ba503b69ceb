"""Operator views of the running pipeline under /admin/ (bearer token, checked by the app's auth
middleware like every /admin/ path): SMSC binds, queue depth, unmatched receipts, webhook dead
letters and their replay.

The views render explicit, documented shapes from the live state (`ApiContext.smsc_status`, the
connectors' snapshots) and the store, rather than passing internal dicts through, so a new
counter inside the connector cannot silently change the API.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import replace
from typing import Any

from aiohttp import web

from bridge.accounts import AccountError
from bridge.api.bodies import read_admin_body
from bridge.api.context import query_of
from bridge.api.errors import ApiError
from bridge.api.reports import query_params
from bridge.api.v1 import ctx_of, json_response, parse_json
from bridge.api.views import iso
from bridge.store.models import AuditEntry, QueueGroup

QUEUE_BUCKETS = ("ready", "claimed", "retry_wait", "parked", "scheduled")
MAX_LIST = 1000
MAX_REPLAY = 1000
_INT = re.compile(r"[0-9]{1,19}")  # up to 2**62 (unix ms and ids), checked against the bounds


# -- pure renderers -------------------------------------------------------------------------------


def int_param(q: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    if name not in q:
        return default
    # [0-9] and not str.isdigit(): "²" is a digit to isdigit() and a ValueError to int().
    if not _INT.fullmatch(q[name]) or not lo <= int(q[name]) <= hi:
        raise ApiError("INVALID_FIELD", f"{name}: an integer from {lo} to {hi}")
    return int(q[name])


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


SMSC_STATES = ("up", "down", "reconnecting", "removing", "unknown")


def smsc_state(s: Mapping[str, Any]) -> str:
    """up/down, or why neither says it: a reload is reconnecting it (new bind settings) or
    removing it (its old connector drains its window meanwhile), or the owner process has not
    written its status for 5 s (unknown: its store writes stall, or it is gone)."""
    state = s.get("state")
    if state in SMSC_STATES:
        return str(state)
    return "up" if s.get("up") else "down"


def configured_to_send(s: Mapping[str, Any]) -> bool:
    """Whether an SMSC's status is one of an SMSC with a transmitting bind configured (a status
    from a release before session 50 has no `sending`: it counts as one, what `up` meant)."""
    return s.get("sending", True) is not None


def _flag(s: Mapping[str, Any], kind: str) -> bool | None:
    """`sending` or `receiving`: None when no bind of that kind is configured. A status from a
    release before session 50 has neither: its `up` stands in for sending (what it meant)."""
    if kind not in s:
        return bool(s.get("up")) if kind == "sending" else None
    value = s[kind]
    return None if value is None else bool(value)


def smsc_view(name: str, s: Mapping[str, Any]) -> dict[str, Any]:
    """One SMSC from `Daemon.smsc_status()` (the connector's snapshot plus `up`)."""
    binds = {
        str(mode): {"configured": _int(b.get("configured")), "up": _int(b.get("up"))}
        for mode, b in (s.get("binds") or {}).items()
    }
    window = s.get("window") or {}
    submits = s.get("submits") or {}
    failed = {str(k): _int(v) for k, v in (submits.get("failed") or {}).items()}
    err = s.get("last_error")
    last_error = None
    if isinstance(err, Mapping) and err.get("message"):
        at = err.get("at")
        last_error = {
            "message": str(err["message"]),
            "at": iso(int(at * 1000)) if isinstance(at, int | float) else None,
        }
    rtt = s.get("rtt_ms_avg")
    fleet = s.get("fleet")
    return {
        "name": name,
        "up": bool(s.get("up")),
        "sending": _flag(s, "sending"),
        "receiving": _flag(s, "receiving"),
        "state": smsc_state(s),
        "binds": binds,
        "binds_up": sum(b["up"] for b in binds.values()),
        "window": {"size": _int(window.get("size")), "in_use": _int(window.get("in_use"))},
        "free_slots": _int(s.get("free_slots")),
        "tps": _int(s.get("tps")),
        # A status written by an older release has no average: its last second stands in.
        "tps_avg": float(s.get("tps_avg", s.get("tps")) or 0),
        "tps_limit": float(s.get("tps_limit") or 0),
        # The SMSC's own limit, for the whole fleet: beside it, a tps_limit of 0 tells "no
        # limit" (0 here) from "no share of it here" (no transmit bind up on this instance).
        # A status written by an older release has none: its share stands in.
        "tps_configured": float(s.get("tps_configured", s.get("tps_limit")) or 0),
        "throttle_events": _int(s.get("throttle_events")),
        "throttle_pauses": _int(s.get("throttle_pauses")),
        "paused_binds": _int(s.get("paused_binds")),
        "transient_retries": _int(s.get("transient_retries")),
        "reconnects": _int(s.get("reconnects")),
        "last_error": last_error,
        "submits": {
            "ok": _int(submits.get("ok")),
            "failed": failed,
            "failed_total": sum(failed.values()),
        },
        "delivers": _int(s.get("delivers")),
        "rtt_ms_avg": float(rtt) if isinstance(rtt, int | float) else None,
        # A PostgreSQL fleet: the live instances, this one included, and their binds up and
        # submits/s summed (bridge/fleet_status.py); null for a daemon alone on its store.
        "fleet": (
            {
                "instances": _int(fleet.get("instances")),
                "binds_up": _int(fleet.get("binds_up")),
                "tps_avg": float(fleet.get("tps_avg") or 0),
            }
            if isinstance(fleet, Mapping)
            else None
        ),
    }


def _age_s(now: int, since: int | None) -> float | None:
    return None if since is None else round(max(0, now - since) / 1000, 3)


def down_routes(
    candidates: Mapping[str, tuple[str, ...]], status: Mapping[str, Mapping[str, Any]]
) -> frozenset[str]:
    """Routes ('' = default) none of whose SMSCs (failover included) is up, as far as known: an
    SMSC whose state is unknown (an acceptor without word from its owner) or that the status
    does not list counts as maybe up."""

    def maybe_up(name: str) -> bool:
        s = status.get(name)
        # `up` and able to send: a receive-only SMSC's `up` is its receiving bind, and sends
        # nothing of a route (a daemon for MO alone routes to it by default).
        return (
            s is None
            or (bool(s.get("up")) and configured_to_send(s))
            or s.get("state") == "unknown"
        )

    return frozenset(p for p, smscs in candidates.items() if not any(map(maybe_up, smscs)))


def queue_view(
    groups: Iterable[QueueGroup],
    now: int,
    names: Mapping[str, str],
    candidates: Mapping[str, tuple[str, ...]],
    limit: int,
    down: Collection[str] = (),
) -> dict[str, Any]:
    """Aggregate the store's (account, route, bucket) groups into the operator's queue view.

    candidates: route prefix ('' = default route) -> SMSCs in failover order; `by_smsc` counts
    work under the first of them (where it goes while that SMSC is up). The oldest age ignores
    scheduled messages: waiting for their time is not a backlog.

    down: routes with no SMSC up (`down_routes`). Their due messages are `parked`, not `ready`:
    the store parks a message only when a claim meets it, and with no bind up at all no claim
    runs, so through a whole carrier outage the view said "about to go" of messages waiting for
    a bind.
    """
    groups = [
        replace(g, bucket="parked") if g.bucket == "ready" and g.route in down else g
        for g in groups
    ]

    def empty() -> dict[str, int]:
        return {"messages": 0, "parts": 0}

    by_state = {b: empty() for b in QUEUE_BUCKETS}
    accounts: dict[str, dict[str, Any]] = {}
    routes: dict[str, dict[str, int]] = {}
    smscs: dict[str | None, dict[str, int]] = {}
    oldest: int | None = None
    for g in groups:
        acc = accounts.setdefault(g.account_id, {**empty(), "oldest": None})
        for target in (
            by_state.setdefault(g.bucket, empty()),
            acc,
            routes.setdefault(g.route, empty()),
            smscs.setdefault((candidates.get(g.route) or (None,))[0], empty()),
        ):
            target["messages"] += g.messages
            target["parts"] += g.parts
        if g.bucket != "scheduled" and g.oldest_at is not None:
            if acc["oldest"] is None or g.oldest_at < acc["oldest"]:
                acc["oldest"] = g.oldest_at
            if oldest is None or g.oldest_at < oldest:
                oldest = g.oldest_at
    by_account = [
        {
            "account_id": aid,
            "name": names.get(aid),
            "messages": a["messages"],
            "parts": a["parts"],
            "oldest_age_s": _age_s(now, a["oldest"]),
        }
        for aid, a in accounts.items()
    ]
    by_account.sort(key=lambda a: (-a["parts"], a["account_id"]))
    return {
        "depth": sum(b["parts"] for b in by_state.values()),
        "messages": sum(b["messages"] for b in by_state.values()),
        "limit": limit,
        "oldest_waiting_since": iso(oldest),
        "oldest_age_s": _age_s(now, oldest),
        "by_state": by_state,
        "by_account": by_account,
        "by_route": [
            {"prefix": prefix or None, "smscs": list(candidates.get(prefix, ())), **r}
            for prefix, r in sorted(routes.items(), key=lambda kv: (-kv[1]["parts"], kv[0]))
        ],
        "by_smsc": [
            {"smsc": name, **r}
            for name, r in sorted(smscs.items(), key=lambda kv: (-kv[1]["parts"], kv[0] or ""))
        ],
    }


def receipt_view(row: Mapping[str, Any], now: int) -> dict[str, Any]:
    return {
        "id": row["id"],
        "smsc": row["smsc"],
        "smsc_message_id": row["smsc_msg_id"],
        "state": row["state"],
        "stat": row["stat"],
        "err": row["err"],
        "received_at": iso(row["received_at"]),
        "age_s": _age_s(now, row["received_at"]),
        "raw": row["raw"],
    }


def dead_webhook_view(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "webhook_id": row["webhook_id"],
        "account_id": row["account_id"],
        "kind": row["kind"],
        "ref_id": row["ref_id"],
        "attempts": row["attempts"],
        "last_error": row["last_error"],
        "created_at": iso(row["created_at"]),
    }


def parse_replay(data: Any) -> list[int]:
    if not isinstance(data, dict):
        raise ApiError("INVALID_REQUEST", "the body must be a JSON object")
    unknown = sorted(set(data) - {"ids"})
    if unknown:
        raise ApiError("UNKNOWN_FIELD", f"{unknown[0]}: unknown field")
    ids = data.get("ids")
    if ids is None:
        raise ApiError("MISSING_FIELD", "ids: required, a list of dead-letter ids")
    if not isinstance(ids, list) or not ids or len(ids) > MAX_REPLAY:
        raise ApiError("INVALID_FIELD", f"ids: a list of 1 to {MAX_REPLAY} ids")
    for i in ids:
        # bool is an int to Python and true is not an id.
        if not isinstance(i, int) or isinstance(i, bool) or not 1 <= i <= 2**63 - 1:
            raise ApiError("INVALID_FIELD", "ids: each id is a positive integer")
    return list(dict.fromkeys(ids))


# -- handlers -------------------------------------------------------------------------------------


async def get_smscs(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    query_params(query_of(request), ())
    status = ctx.smsc_status()
    order = [s.name for s in ctx.config.smscs]
    names = [n for n in order if n in status] + sorted(n for n in status if n not in order)
    return json_response({"smscs": [smsc_view(n, status[n]) for n in names]})


async def get_queue(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    query_params(query_of(request), ())
    now = ctx.now_ms()
    prefixes = [r.prefix for r in ctx.config.routes]
    groups = await ctx.store.queue_groups(now, prefixes)
    router = ctx.submitter.router
    candidates = {p: router.candidates(p) for p in ["", *prefixes]}
    wanted = {g.account_id for g in groups}
    names = {a.id: a.name for a in await ctx.store.list_accounts() if a.id in wanted}
    down = down_routes(candidates, ctx.smsc_status())
    limit = ctx.config.store.max_queued_segments
    view = queue_view(groups, now, names, candidates, limit, down)
    # The other queue an operator watches: customers' reports not delivered yet.
    pending, dead, oldest = await ctx.store.webhook_backlog()
    view["webhooks"] = {"pending": pending, "dead": dead, "oldest_age_s": _age_s(now, oldest)}
    # Whether this daemon runs its file: a SIGHUP whose file was refused leaves the previous
    # configuration running (and a restart would refuse the file).
    # With acceptor processes, also which configuration each runs: one that never applied a
    # reload serves the old rules (README "Health and status").
    view["config"] = {
        "last_reload_ok": ctx.metrics.last_reload_ok(),
        **_generations(ctx.metrics),
        "workers": ctx.workers or None,
    }
    return json_response(view)


def _generations(metrics: Any) -> dict[str, Any]:
    procs = metrics.generations()
    mine = next((g for role, _, _, g in procs if role in ("owner", "all")), None)
    acceptors = sorted(
        (
            {"slot": int(slot) if slot.isdigit() else None, "pid": pid, "generation": gen}
            for role, slot, pid, gen in procs
            if role == "acceptor" and pid is not None
        ),
        key=lambda a: (a["slot"] if a["slot"] is not None else -1, a["pid"]),
    )
    return {"generation": mine, "acceptors": acceptors}


async def get_unmatched_receipts(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    q = query_params(query_of(request), ("older_than_s", "limit"))
    older_than_s = int_param(q, "older_than_s", 0, 0, 366 * 86_400)
    limit = int_param(q, "limit", 100, 1, MAX_LIST)
    now = ctx.now_ms()
    cutoff = now - older_than_s * 1000
    rows = await ctx.store.unmatched_receipts(cutoff, limit)
    total, matching = await ctx.store.count_unmatched_receipts(cutoff)
    return json_response(
        {
            "total": total,
            "matching": matching,
            "older_than_s": older_than_s,
            "receipts": [receipt_view(r, now) for r in rows],
        }
    )


async def get_dead_webhooks(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    q = query_params(query_of(request), ("account", "limit"))
    limit = int_param(q, "limit", 100, 1, MAX_LIST)
    account_id = None
    if "account" in q:
        try:
            account_id = (await ctx.accounts.resolve(q["account"])).id
        except AccountError as exc:
            raise ApiError(exc.code, exc.message) from None
    rows = await ctx.store.dead_webhooks(account_id, limit)
    total = await ctx.store.count_dead_webhooks(account_id)
    return json_response({"total": total, "webhooks": [dead_webhook_view(r) for r in rows]})


async def replay_webhooks(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    query_params(query_of(request), ())
    ids = parse_replay(parse_json(await read_admin_body(request), request))
    replayed = await ctx.store.replay_webhooks(ids, ctx.now_ms())
    if replayed:
        ctx.on_webhooks_replayed()
    return json_response({"requested": len(ids), "replayed": replayed})


def audit_view(e: AuditEntry) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": e.at,
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "status": e.status,
        "code": e.code,
        "request_id": e.request_id,
        "remote": e.remote,
    }


async def get_audit(request: web.Request) -> web.Response:
    """The audit trail of operators' actions (bridge/audit.py), oldest first, a page at a time:
    `cursor` is the last id a page showed; `since` / `until` bound `at` (unix ms)."""
    ctx = ctx_of(request)
    q = query_params(query_of(request), ("cursor", "limit", "since", "until"))
    limit = int_param(q, "limit", 100, 1, MAX_LIST)
    after = int_param(q, "cursor", 0, 0, 2**62)
    since = int_param(q, "since", 0, 0, 2**62)
    until = int_param(q, "until", 2**62, 0, 2**62)
    rows = await ctx.store.audit_page(after, limit, since, until)
    return json_response(
        {
            "entries": [audit_view(e) for e in rows],
            "next_cursor": str(rows[-1].id) if len(rows) == limit else None,
        }
    )


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/audit", get_audit)
    r.add_get("/admin/smscs", get_smscs)
    r.add_get("/admin/queue", get_queue)
    r.add_get("/admin/receipts/unmatched", get_unmatched_receipts)
    r.add_get("/admin/webhooks/dead", get_dead_webhooks)
    r.add_post("/admin/webhooks/replay", replay_webhooks)
