"""config/prometheus-alerts.yaml: a rules file Prometheus would load, whose every expression
parses as PromQL (promql-parser, the parser GreptimeDB uses) and queries only what the daemon
exposes, with the labels it has. A renamed metric or label otherwise leaves an alert that never
fires, and nothing says so."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import promql_parser as pq
import pytest
import yaml

from bridge.metrics import Metrics
from bridge.smpp import constants as C
from tests.metric_registry import registry

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus-alerts.yaml"
# The one series that is not ours: the scrape's own `up`.
FOREIGN = {"up": {"job"}}
TARGET = {"instance", "job"}  # the labels Prometheus adds to every series it scrapes


def _families() -> dict[str, set[str]]:
    """Every series name the daemon exposes -> its labels (histograms with their suffixes)."""
    out: dict[str, set[str]] = {}
    for name, (typ, labels) in registry(Metrics()).items():
        if typ == "histogram":
            out[name + "_bucket"] = set(labels) | {"le"}
            out[name + "_sum"] = out[name + "_count"] = set(labels)
        else:
            out[name] = set(labels)
    return out


def _walk(node: Any, selectors: list[Any], groupings: list[tuple[Any, set[str]]]) -> set[str]:
    """The series names under `node`; collects its selectors and each `by (...)` with the
    names it aggregates."""
    if isinstance(node, pq.VectorSelector):
        selectors.append(node)
        return {node.name}
    names: set[str] = set()
    for attr in ("lhs", "rhs", "expr", "vector_selector", "param"):
        child = getattr(node, attr, None)
        if isinstance(child, pq.Expr):
            names |= _walk(child, selectors, groupings)
    for arg in getattr(node, "args", None) or ():
        names |= _walk(arg, selectors, groupings)
    modifier = getattr(node, "modifier", None)
    if isinstance(node, pq.AggregateExpr) and modifier is not None:
        if modifier.type == pq.AggModifierType.By:
            groupings.append((node, set(modifier.labels)))
    return names


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_the_file_has_the_shape_prometheus_loads() -> None:
    doc = yaml.safe_load(RULES.read_text())
    assert [g["name"] for g in doc["groups"]] == ["smpp-bridge"]
    rules = _rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)) >= 12
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"SmppBridge[A-Z][A-Za-z]+", rule["alert"])
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        for text in rule["annotations"].values():  # Go templates: {{ $labels.x }} / {{ $value }}
            for ref in re.findall(r"\{\{(.*?)\}\}", text):
                assert re.fullmatch(r" \$(value|labels\.\w+) ", ref), (rule["alert"], ref)


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["alert"])
def test_each_expression_parses_and_queries_what_is_exposed(rule: dict[str, Any]) -> None:
    families = _families()
    expr = pq.parse(rule["expr"])  # raises on anything Prometheus would refuse to load
    selectors: list[Any] = []
    groupings: list[tuple[Any, set[str]]] = []
    names = _walk(expr, selectors, groupings)
    assert names, rule["alert"]
    for sel in selectors:
        labels = families.get(sel.name, FOREIGN.get(sel.name))
        assert labels is not None, f"{rule['alert']}: {sel.name} is not exposed"
        for m in sel.matchers.matchers:
            assert m.name in labels | TARGET, f"{rule['alert']}: {sel.name} has no {m.name}"
            if m.name == "status":  # the submit statuses the connector counts, spelled right
                known = set(C.STATUS_NAMES.values())
                assert set(m.value.split("|")) <= known, (rule["alert"], m.value)
    for node, by in groupings:
        inner: list[Any] = []
        have = set().union(
            *(families.get(n, FOREIGN.get(n, set())) for n in _walk(node.expr, inner, []))
        )
        assert by <= have | TARGET, f"{rule['alert']}: by {by - have - TARGET} not a label"
    # Every annotation's $labels.x is a label the alert's result keeps.
    kept = set().union(*(by for _n, by in groupings)) if groupings else None
    for text in rule["annotations"].values():
        for label in re.findall(r"\$labels\.(\w+)", text):
            if kept is not None:
                assert label in kept, (rule["alert"], label)


def test_a_misspelt_metric_or_label_is_caught() -> None:
    """The checks above fail on what they should: a wrong name, a label the metric lacks."""
    families = _families()
    selectors: list[Any] = []
    _walk(pq.parse('rate(smpp_bridge_segments_submited_total{smsc="a"}[5m])'), selectors, [])
    assert selectors[0].name not in families
    selectors = []
    _walk(pq.parse('smpp_bridge_queue_depth{smsc="a"}'), selectors, [])
    assert "smsc" not in families[selectors[0].name]
    with pytest.raises(ValueError):
        pq.parse("sum by (smsc (rate(smpp_bridge_throttle_events_total[5m]))")
