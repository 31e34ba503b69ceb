"""What the other live instances of a PostgreSQL fleet report of each SMSC, from their heartbeat
rows (pure: the daemon reads the rows, the admin API and `smpp-bridge status` show the sums).

Why: each instance's /admin/smscs and `smpp-bridge status` showed its own binds and throughput
only (`BINDS 1/2`, `throughput: 80 submits/s`), beside a queue and webhooks that are the whole
fleet's; an operator read half the binds down and half the traffic (h3's trial).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def _binds_up(st: Mapping[str, Any]) -> int:
    binds = st.get("binds")
    if not isinstance(binds, Mapping):
        return 0
    return sum(int(b.get("up") or 0) for b in binds.values() if isinstance(b, Mapping))


def _tps_avg(st: Mapping[str, Any]) -> float:
    v = st.get("tps_avg", st.get("tps"))
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0.0


def peer_figures(statuses: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per SMSC over the other instances' statuses (one per bind-holding process): `up` when
    any serves it (a transmitting bind up; a receiving one for a receive-only SMSC), `sending`
    and `receiving` when any has such a bind up (None: none reports the kind), their binds up
    and submits/s summed, and `instances`, how many reported (the same for every SMSC, an SMSC
    none reports included by the caller)."""
    rows = list(statuses)
    out: dict[str, dict[str, Any]] = {}
    for status in rows:
        for name, st in status.items():
            if not isinstance(st, Mapping):
                continue
            f = out.setdefault(name, {"up": False, "binds_up": 0, "tps_avg": 0.0})
            f.setdefault("sending", None)
            f.setdefault("receiving", None)
            f["up"] = f["up"] or bool(st.get("up"))
            for kind in ("sending", "receiving"):
                f[kind] = either(f[kind], st.get(kind))
            f["binds_up"] += _binds_up(st)
            f["tps_avg"] += _tps_avg(st)
    for f in out.values():
        f["instances"] = len(rows)
    return out


def either(a: Any, b: Any) -> bool | None:
    """`sending` or `receiving` over two statuses: True when either says so; None when neither
    knows the kind (not configured, or a status written before session 50)."""
    if a is None and b is None:
        return None
    return bool(a) or bool(b)


def bound_elsewhere(st: Mapping[str, Any], peer: Mapping[str, Any]) -> dict[str, Any]:
    """An SMSC down here that another live instance serves: up for readiness and routing (what
    this instance accepts, that one sends), with what that instance's binds do."""
    return {
        **st,
        "up": True,
        "state": "up",
        "bound_on_other_instance": True,
        **{k: either(st.get(k), peer.get(k)) for k in ("sending", "receiving") if k in st},
    }


def with_fleet(status: dict[str, Any], peers: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """`status` (this instance's, by SMSC) with each SMSC's `fleet`: live instances, this one
    included, and binds up and submits/s over them all (`peers`: peer_figures')."""
    instances = max((int(p.get("instances", 0)) for p in peers.values()), default=0)
    for name, st in status.items():
        if not isinstance(st, dict):
            continue
        p = peers.get(name) or {}
        receiving = st.get("receiving")
        if receiving is False and p.get("receiving"):
            # Its receivers are up on another instance: receipts and MO come in there.
            receiving = True
        status[name] = {
            **st,
            **({} if "receiving" not in st else {"receiving": receiving}),
            "fleet": {
                "instances": 1 + instances,
                "binds_up": _binds_up(st) + int(p.get("binds_up", 0)),
                "tps_avg": round(_tps_avg(st) + float(p.get("tps_avg", 0.0)), 1),
            },
        }
    return status
