"""A batch whose numbers are refused as sent (malformed, not a string, a duplicate, no route, no
price) names every refused one in `error.details.recipients`, keeping the code and message of
the first as before; a single number gets the plain refusal.

Before, the refusal named only the first: a campaign list of 10,000 numbers holding 50 typos took
50 round trips to clean. Through a real HTTP server; every reply is checked against
/openapi.json (RecipientRefusals).
"""

from __future__ import annotations

from typing import Any

from tests.integration.conftest import ApiServer

CN = "+8613800138000"


def listed(reply: Any) -> list[tuple[int, str, str]]:
    details = reply.json["error"]["details"]
    assert details["refused"] == len(details["recipients"]) and details["truncated"] is False
    return [(r["index"], r["to"], r["code"]) for r in details["recipients"]]


async def test_every_malformed_or_duplicate_number_is_named(make_api: Any) -> None:
    api: ApiServer = await make_api()
    creds = await api.create_account()
    to = [CN, "12345", "+8613800138001", 42, "+86 138 0013 8000", "not a number", "+8613800138002"]
    r = await api.send(creds, {"to": to, "text": "hi"})
    assert (r.status, r.code) == (400, "INVALID_NUMBER"), r.json
    assert r.json["error"]["message"].startswith("to[1]: ")  # the first, as before
    assert listed(r) == [
        (1, "12345", "INVALID_NUMBER"),
        (3, "42", "INVALID_FIELD"),
        (4, CN, "INVALID_FIELD"),  # a duplicate of to[0] once normalised
        (5, "not a number", "INVALID_NUMBER"),
    ]
    assert await api.store.list_messages(creds.account_id, limit=10) == []
    one = await api.send(creds, {"to": "12345", "text": "hi"})
    assert (one.status, one.code) == (400, "INVALID_NUMBER")
    assert "details" not in one.json["error"]


async def test_every_number_without_a_route_is_named(make_api: Any) -> None:
    api: ApiServer = await make_api(
        {
            "smscs": [{"name": "cn", "system_id": "cn"}],
            "routes": [{"prefix": "+86", "smscs": ["cn"]}],
            "default_route": [],
        }
    )
    creds = await api.create_account()
    to = ["+447700900001", CN, "+33612345678", "+8613800138001"]
    r = await api.send(creds, {"to": to, "text": "hi"})
    assert (r.status, r.code) == (422, "NO_ROUTE"), r.json
    assert r.json["error"]["message"] == "to: no route to +447700900001"
    assert listed(r) == [(0, "+447700900001", "NO_ROUTE"), (2, "+33612345678", "NO_ROUTE")]
    assert await api.store.list_messages(creds.account_id, limit=10) == []
