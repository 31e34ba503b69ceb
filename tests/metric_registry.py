"""The daemon's metric definitions as Prometheus exposes them, for tests that check what other
files name (the README's table, the dashboard, the alerting rules) against what exists."""

from __future__ import annotations

from bridge.metrics import Metrics


def registry(metrics: Metrics) -> dict[str, tuple[str, frozenset[str]]]:
    """Exposed family name (a counter's with `_total`) -> (type, label names)."""
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for obj in vars(metrics).values():
        typ = getattr(obj, "_type", None)
        if typ not in ("counter", "gauge", "histogram"):
            continue
        name = obj._name + ("_total" if typ == "counter" else "")
        out[name] = (typ, frozenset(obj._labelnames))
    return out
