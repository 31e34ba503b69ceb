"""Session 59's review (r2) of the accept's cuts outside the store (merge s59-h3).

- `context.keys_of` reads and stores the send's request keys in the request's `_state` dict
  when aiohttp keeps them there. The merged check looked only at `web.BaseRequest`'s two
  methods' names, while every request the server makes is a `web.Request` (aiohttp's
  `_make_request`, `request_maker`): an aiohttp whose `Request` keeps its keys elsewhere passed
  the check, and `keys_of` would then store PRINCIPAL where the handlers' `request[PRINCIPAL]`
  never looks (every authenticated request a KeyError, a 500). The check is now made on a bare
  `web.Request`, by what its `[]` does.
- `ids.new_request_id` refills its draw by os.urandom, which lets other threads run: an id made
  by another thread during the refill is never one this thread hands out.
"""

from __future__ import annotations

import os
import sys
import threading
import types
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from bridge import ids
from bridge.api import context


def _elsewhere(request: Any) -> dict[Any, Any]:
    found: dict[Any, Any] = request.__dict__.setdefault("_elsewhere", {})
    return found


def test_the_keys_check_looks_at_the_requests_own_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """An aiohttp whose `web.Request` keeps a request's keys somewhere else than `_state` (its
    own `__getitem__`/`__setitem__`, BaseRequest's unchanged): `keys_of` must not be `_state`
    (fails on the merged check, which read only BaseRequest's methods' names)."""
    assert context._keys_in_state()  # this aiohttp: in `_state`
    monkeypatch.setattr(web.Request, "__getitem__", lambda self, key: _elsewhere(self)[key])
    monkeypatch.setattr(
        web.Request, "__setitem__", lambda self, key, value: _elsewhere(self).update({key: value})
    )
    request = make_mocked_request("POST", "/v1/messages")
    request[context.BODY] = b"{}"
    assert context.BODY not in request._state  # what such an aiohttp does
    assert not context._keys_in_state()


def test_the_keys_check_refuses_methods_that_only_name_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """BaseRequest's methods naming `_state` but storing elsewhere: not taken for `_state`
    (fails on the merged check, which read the names only)."""

    def put(self: Any, key: Any, value: Any) -> None:
        if self._state is None:  # named, not stored into
            raise AssertionError
        _elsewhere(self)[key] = value

    def get(self: Any, key: Any) -> Any:
        if self._state is None:
            raise AssertionError
        return _elsewhere(self)[key]

    monkeypatch.setattr(web.BaseRequest, "__setitem__", put)
    monkeypatch.setattr(web.BaseRequest, "__getitem__", get)
    assert not context._keys_in_state()


def test_keys_of_is_the_dict_request_keys_go_to() -> None:
    """On this aiohttp: a key stored either way reads back either way, a key not set is the
    same KeyError and the same default both ways."""
    request = make_mocked_request("POST", "/v1/messages")
    keys = context.keys_of(request)
    keys[context.REQUEST_ID] = "req_0"
    request[context.BODY] = b"x"
    assert request[context.REQUEST_ID] == "req_0" and keys[context.BODY] == b"x"
    with pytest.raises(KeyError):
        keys[context.PRINCIPAL]
    with pytest.raises(KeyError):
        request[context.PRINCIPAL]
    assert keys.get(context.PRINCIPAL) is None and request.get(context.PRINCIPAL) is None
    assert (context.STREAM_CUT in keys) is (context.STREAM_CUT in request) is False


def test_a_request_id_made_by_another_thread_during_the_refill_is_not_repeated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """os.urandom drops the GIL: another thread's ids made while this one refills (its own
    refill included) are never handed out again by this one."""
    others: list[str] = []

    def urandom(n: int) -> bytes:
        if not others:  # the other thread runs here, once
            others.append("")
            others.extend(ids.new_request_id() for _ in range(5))
        return os.urandom(n)

    monkeypatch.setattr(ids, "os", types.SimpleNamespace(urandom=urandom))
    monkeypatch.setattr(ids, "_hex_pos", ids._HEX_SIZE)  # the next id refills
    mine = [ids.new_request_id() for _ in range(ids._HEX_SIZE // 16 + 3)]
    assert len(others) == 6
    made = others[1:] + mine
    assert len(set(made)) == len(made)


def test_threads_never_make_the_same_request_id() -> None:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    made: list[list[str]] = [[], [], []]

    def run(k: int) -> None:
        out = made[k]
        for _ in range(30_000):
            out.append(ids.new_request_id())

    try:
        threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    every = [rid for out in made for rid in out]
    assert len(set(every)) == len(every)
