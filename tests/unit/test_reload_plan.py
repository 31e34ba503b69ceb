"""bridge.reload.plan: which SMSCs a SIGHUP reconnects, updates in place, adds or removes."""

from __future__ import annotations

import base64

from bridge.config import parse_config
from bridge.reload import plan

KEY = base64.b64encode(b"k" * 32).decode()


def cfg(smscs, **extra):
    return parse_config({"security": {"master_key": KEY}, "smscs": smscs, **extra}, env={})


A = {"name": "a", "system_id": "a", "password": "p"}
B = {"name": "b", "system_id": "b", "password": "p", "port": 2776}


def test_nothing_changed_is_empty():
    p = plan(cfg([A, B]), cfg([A, B]))
    assert p.empty and p.needs_restart == ()


def test_limit_change_updates_in_place():
    p = plan(cfg([A, B]), cfg([{**A, "tps": 50, "max_transient_retries": 2}, B]))
    assert p.update == ("a",) and p.rebind == () and p.add == () and p.remove == ()


def test_bind_settings_reconnect_only_that_smsc():
    for change in (
        {"host": "10.0.0.1"},
        {"password": "q"},
        {"window": 10},
        {"binds": 2},
        {"bind_mode": "transmitter_receiver"},
        {"bind_mode": "transmitter_receiver", "receive_port": 2777},
    ):
        p = plan(cfg([A, B]), cfg([{**A, **change}, B]))
        assert p.rebind == ("a",), change
        assert p.update == ()


def test_added_and_removed():
    p = plan(cfg([A]), cfg([B]))
    assert p.add == ("b",) and p.remove == ("a",)


def test_sections_that_need_a_restart_are_reported():
    p = plan(cfg([A]), cfg([A], server={"port": 9999}))
    assert p.needs_restart == ("server",)
    assert p.empty


def test_logging_and_the_alibaba_face_are_reported_as_needing_a_restart():
    # Their handlers and listener are set up once: a reload that ignored them silently let an
    # operator believe a new log level or Alibaba port was in force.
    p = plan(cfg([A]), cfg([A], logging={"level": "DEBUG"}))
    assert p.needs_restart == ("logging",)
    p = plan(cfg([A]), cfg([A], aliyun={"enabled": True, "port": 9998}))
    assert p.needs_restart == ("aliyun",)


def test_billing_is_reported_as_needing_a_restart():
    # The tariff book and automatic settlement are built once: applied half (the API's copy of
    # the config new, the tariff book's old), a reload said nothing of it.
    p = plan(cfg([A]), cfg([A], billing={"currency": "USD"}))
    assert p.needs_restart == ("billing",)
    assert p.empty


def test_sections_a_reload_applies_are_named():
    """Session 44: a reload that changed only the routes logged "added [], removed [],
    reconnected [], updated []", as one that changed nothing: the operator could not tell that
    the new routes were read."""
    routes = [{"prefix": "+86", "smscs": ["a", "b"]}]
    p = plan(cfg([A, B], routes=routes), cfg([A, B], routes=[{**routes[0], "smscs": ["b", "a"]}]))
    assert p.applied == ("routes",) and p.update == () and p.needs_restart == ()
    p = plan(cfg([A, B]), cfg([A, B], rules={"optout_keywords": ["STOP"]}, default_route=["b"]))
    assert p.applied == ("default_route", "rules")
    assert plan(cfg([A, B]), cfg([A, B])).applied == ()
