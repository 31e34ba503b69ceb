"""The configuration generation (bridge.reload.generation / behind) and how `smpp-bridge status`
renders the acceptors' agreement with their owner (bridge.status.render)."""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

import pytest

from bridge.metrics import Metrics
from bridge.reload import GENERATION_KEY_ENV, behind, generation
from bridge.status import DaemonStatus, render

SECRET = "s3cr3t-password-value"
TEXT = f"smscs:\n  - name: a\n    password: {SECRET}\n"


def test_a_generation_names_the_whole_text_and_reveals_none_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = "ab" * 16
    monkeypatch.setenv(GENERATION_KEY_ENV, key)
    g = generation(TEXT)
    assert g == hmac.new(bytes.fromhex(key), TEXT.encode(), hashlib.sha256).hexdigest()[:12]
    assert generation(TEXT.replace(SECRET, SECRET + "x")) != g  # a changed secret is a change
    assert SECRET not in g and len(g) == 12
    assert int(g, 16) < 2**53  # a gauge (a float) carries it exactly
    # Keyed: the plain hash, which whoever knows the rest of the file could match guesses of
    # the secret against, is not what is published.
    assert g != hashlib.sha256(TEXT.encode()).hexdigest()[:12]


def test_the_generation_key_is_made_once_and_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    """Made by the daemon's first process into its environment, which the acceptors it starts
    inherit, so every process names one text alike; another daemon names it otherwise."""
    monkeypatch.delenv(GENERATION_KEY_ENV, raising=False)
    g = generation(TEXT)
    key = os.environ[GENERATION_KEY_ENV]
    assert len(key) == 32 and generation(TEXT) == g
    monkeypatch.setenv(GENERATION_KEY_ENV, "cd" * 16)
    assert generation(TEXT) != g


def test_behind_lists_those_not_running_the_expected_one_and_those_silent():
    assert behind("aaa", {0: "aaa", 1: "aaa"}) == {}
    assert behind("aaa", {0: "aaa", 1: "bbb", 2: None}) == {1: "bbb", 2: None}


def test_a_process_publishes_its_generation_and_reads_it_back():
    m = Metrics()
    m.set_generation("all", "", generation(TEXT))
    assert m.generations() == [("all", "", None, generation(TEXT))]


def test_an_acceptor_behind_holds_the_reload_gauge_at_0_whatever_the_owner_did():
    m = Metrics()
    m.acceptors_current(False)
    m.reload_result(True)  # a later reload of the owner's own: still 0 while one is behind
    assert m.last_reload_ok() is False
    m.acceptors_current(True)
    assert m.last_reload_ok() is True
    m.reload_result(False)
    m.acceptors_current(True)  # the acceptors agree; the owner's own refusal still shows
    assert m.last_reload_ok() is False


def _render(config: dict[str, Any] | None) -> str:
    queue: dict[str, Any] = {"depth": 0, "messages": 0, "by_state": {}}
    if config is not None:
        queue["config"] = config
    return render(DaemonStatus("http://x", True, (), (), queue))


def test_status_counts_the_acceptors_on_the_owners_configuration():
    acceptors = [
        {"slot": 0, "pid": 11, "generation": "aaaaaaaaaaaa"},
        {"slot": 1, "pid": 12, "generation": "aaaaaaaaaaaa"},
    ]
    out = _render({"last_reload_ok": True, "generation": "aaaaaaaaaaaa", "acceptors": acceptors})
    assert "config: aaaaaaaaaaaa; acceptors on the current configuration: 2 of 2\n" in out, out
    acceptors[1]["generation"] = "bbbbbbbbbbbb"
    out = _render({"last_reload_ok": False, "generation": "aaaaaaaaaaaa", "acceptors": acceptors})
    assert "current configuration: 1 of 2 (pid 12 (slot 1) runs bbbbbbbbbbbb: it serves" in out
    assert "REFUSED" not in out, out  # the file was applied; an acceptor did not follow


def test_status_of_one_process_or_an_older_daemon_prints_as_before():
    for config in (None, {"last_reload_ok": True}, {"generation": "aa", "acceptors": []}):
        assert "config:" not in _render(config)
    out = _render({"last_reload_ok": False, "generation": "aaaaaaaaaaaa", "acceptors": []})
    assert "SIGHUP's file was REFUSED" in out


def test_status_says_when_an_acceptor_is_not_running():
    """Session 47: a dead acceptor drops out of the list at once, and during its restart's
    back-off (up to 30 s for one crashing in a loop) "1 of 1" read like a full set."""
    acceptors = [{"slot": 1, "pid": 12, "generation": "aaaaaaaaaaaa"}]
    config = {"last_reload_ok": True, "generation": "aaaaaaaaaaaa", "acceptors": acceptors}
    out = _render({**config, "workers": 2})
    assert "current configuration: 1 of 1; 1 of 2 acceptors not running (restarting" in out, out
    for workers in (1, None, True):  # all there; an older daemon's view; not a count
        assert "not running" not in _render({**config, "workers": workers})


def test_the_generation_key_derives_from_the_master_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Instances of a fleet share the master key, so they name one text alike; another master
    key names it otherwise, and without one the key is random (as before)."""
    from bridge.reload import key_generations_by

    monkeypatch.delenv(GENERATION_KEY_ENV, raising=False)  # restored after the test
    key_generations_by(b"k" * 32)
    g = generation(TEXT)
    monkeypatch.setenv(GENERATION_KEY_ENV, "cd" * 16)
    key_generations_by(b"k" * 32)
    assert generation(TEXT) == g
    assert os.environ[GENERATION_KEY_ENV] not in (b"k" * 32).hex()  # not the key itself
    key_generations_by(b"j" * 32)
    assert generation(TEXT) != g
    key_generations_by(None)
    assert generation(TEXT) != g
