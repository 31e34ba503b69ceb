"""Session 55: what a send reads from a cache or a buffer it reads by a plain call, and awaits the
coroutine only when it may have to wait (the key or account not cached, the body still coming
or owed a 100 Continue, the tariff book not read yet). A real server on a real SQLite file,
real signed requests; each coroutine is wrapped to count its calls and still answer.

Each test fails on the tree before: there every send awaited all six."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import streams
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from bridge.api import app as api_app
from bridge.api import bodies, sending, v1
from bridge.api.auth import Authenticator
from bridge.api.errors import ApiError
from tests.integration.conftest import ApiServer

Calls = Counter[str]


@pytest.fixture
def awaited(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    """The six coroutines, counted by name as they are awaited, each still doing its work."""
    calls: Calls = Counter()

    def counted(name: str, real: Any) -> Any:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return await real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(Authenticator, "_key", counted("key", Authenticator._key))
    monkeypatch.setattr(Authenticator, "_account", counted("account", Authenticator._account))
    monkeypatch.setattr(api_app, "read_sent_body", counted("body", api_app.read_sent_body))
    monkeypatch.setattr(sending, "current_tariff", counted("tariff", sending.current_tariff))
    monkeypatch.setattr(api_app, "_signed_body", counted("signed body", api_app._signed_body))
    monkeypatch.setattr(v1, "prepare_send", counted("prepare", v1.prepare_send))
    yield calls


def _text(n: int) -> dict[str, str]:
    return {"to": f"+86138000{n:05d}", "text": "Your code is 123456."}


async def test_a_send_with_all_cached_awaits_none_of_them(
    api_server: ApiServer, awaited: Calls
) -> None:
    creds = await api_server.create_account()
    assert api_server.ctx.config.billing.enabled  # the tariff is read on every send
    first = await api_server.send(creds, _text(1))
    assert first.status == 202, first.text
    assert awaited["key"] == 1 and awaited["account"] == 1  # nothing cached yet: read
    awaited.clear()
    for n in range(2, 5):
        r = await api_server.send(creds, _text(n))
        assert r.status == 202, r.text
        assert r.json["messages"][0]["to"] == _text(n)["to"]
    assert awaited == Counter(), awaited


async def test_what_is_not_cached_is_still_awaited(api_server: ApiServer, awaited: Calls) -> None:
    creds = await api_server.create_account()
    assert (await api_server.send(creds, _text(1))).status == 202
    auth = api_server.ctx.auth
    auth._cache.clear()
    auth._accounts.clear()
    awaited.clear()
    r = await api_server.send(creds, _text(2))
    assert r.status == 202, r.text
    assert awaited == Counter({"key": 1, "account": 1}), awaited
    # A sender to check (against the others' assignments, read through a cache): awaited.
    awaited.clear()
    sender = await api_server.send(creds, {**_text(4), "sender": "10690001"})
    assert sender.status == 202, sender.text
    assert awaited == Counter({"prepare": 1}), awaited
    # A key the store does not know: looked up (not cached), refused as before.
    awaited.clear()
    unknown = await api_server.send(creds, _text(3), tamper=_other_key)
    assert unknown.status == 401 and unknown.json["error"]["code"] == "UNKNOWN_APP_KEY"
    assert awaited["key"] == 1


def _other_key(headers: dict[str, str]) -> None:
    headers["Authorization"] = headers["Authorization"].replace("Credential=", "Credential=zz", 1)


async def test_a_body_owed_a_continue_is_read_by_the_coroutine(
    api_server: ApiServer, awaited: Calls
) -> None:
    creds = await api_server.create_account()
    r = await api_server.send(creds, _text(1), headers={"Expect": "100-continue"})
    assert r.status == 202, r.text
    assert awaited["signed body"] == 1 and awaited["body"] == 1


async def test_an_unread_tariff_book_is_read_first(api_server: ApiServer, awaited: Calls) -> None:
    creds = await api_server.create_account()
    assert (await api_server.send(creds, _text(1))).status == 202
    book = api_server.ctx.tariff_book
    book.versions = type(book.versions)()  # as at start-up, before the first send read it
    assert not sending.tariff_loaded(api_server.ctx)
    awaited.clear()
    r = await api_server.send(creds, _text(2))
    assert r.status == 202, r.text
    assert awaited["tariff"] == 1 and awaited["prepare"] == 1
    assert sending.tariff_loaded(api_server.ctx)


# -- sent_body_now on aiohttp's own stream -------------------------------------------------------


class _Protocol:
    transport = None
    _reading_paused = False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, *args: Any, **kwargs: Any) -> None:
        pass


def _request(body: bytes, *, eof: bool = True, headers: dict[str, str] | None = None) -> Any:
    loop = asyncio.get_running_loop()
    payload = streams.StreamReader(_Protocol(), 2**16, loop=loop)  # type: ignore[arg-type]
    payload.feed_data(body)
    if eof:
        payload.feed_eof()
    sent = {"Content-Length": str(len(body)), **(headers or {})}
    return make_mocked_request("POST", "/v1/messages", headers=CIMultiDict(sent), payload=payload)


async def test_sent_body_now_answers_a_whole_body_as_read_would() -> None:
    request = _request(b'{"to": "+8613800000001"}')
    assert bodies.sent_body_now(request) == b'{"to": "+8613800000001"}'
    # Kept as read() keeps it: a later read answers the same bytes, not an empty body.
    assert await request.read() == b'{"to": "+8613800000001"}'


@pytest.mark.parametrize(
    "case",
    ["still coming", "expect", "stream failed"],
)
async def test_sent_body_now_leaves_the_waiting_and_the_failed_to_read_sent_body(case: str) -> None:
    request = _request(
        b"{}",
        eof=case != "still coming",
        headers={"Expect": "100-continue"} if case == "expect" else None,
    )
    if case == "stream failed":
        # A body whole, then its connection reset: read_sent_body words that as a refusal, where
        # the buffer taken as it is raised ConnectionResetError (a 500, or a store outage's 503).
        request.content.set_exception(ConnectionResetError("reset"))
    assert bodies.sent_body_now(request) is None
    if case == "stream failed":
        with pytest.raises(ApiError) as refused:
            await bodies.read_sent_body(request, 1.0)
        assert refused.value.code == "CLIENT_DISCONNECTED"
