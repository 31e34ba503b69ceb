"""reseal.start_verdict: what a starting daemon does with secrets its master keys do not open."""

from __future__ import annotations

import os

from bridge.crypto import Sealer
from bridge.reseal import ResealReport, plan, start_verdict


def test_all_open_says_nothing() -> None:
    assert start_verdict(ResealReport(total=3, current=3)) == (None, None)
    assert start_verdict(ResealReport()) == (None, None)  # a new store: nothing stored


def test_none_opening_refuses_naming_the_keys_needed() -> None:
    ours, theirs = Sealer(os.urandom(32)), Sealer(os.urandom(32))
    rows = [
        ("app_key", "AK1", theirs.seal("s1", "AK1")),
        ("webhook", "acc", theirs.seal("w", "acc")),
    ]
    _writes, report = plan(rows, ours)
    refusal, warning = start_verdict(report)
    assert warning is None and refusal is not None
    assert refusal.startswith("the master key opens none of the 2 stored secrets")
    assert "SMPP_BRIDGE_MASTER_KEY" in refusal
    # One key named once, however many secrets need it.
    assert refusal.count("sealed secret is under master key") == 1


def test_some_not_opening_is_a_warning_not_a_refusal() -> None:
    ours, theirs = Sealer(os.urandom(32)), Sealer(os.urandom(32))
    rows = [("app_key", "AK1", theirs.seal("s1", "AK1")), ("app_key", "AK2", ours.seal("s", "AK2"))]
    _writes, report = plan(rows, ours)
    refusal, warning = start_verdict(report)
    assert refusal is None and warning is not None
    assert warning.startswith("1 of 2 stored secrets open with neither master key")
