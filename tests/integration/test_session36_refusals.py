"""A batch refused for some of its recipients (an opt-out, a do-not-contact list, a frequency
limit) names every refused recipient and why in `error.details.recipients`, keeping the code and
message of the first as before; bounded at admission.MAX_LISTED_REFUSALS entries.

Before, the refusal named only the first recipient: a campaign platform sending 1,000 numbers
had to retry once per refused number to learn them.

A real HTTP server on each store engine of tests/store_engines.py; every reply is checked
against /openapi.json (the RecipientRefusals schema).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.client import BridgeClient, BridgeError  # noqa: E402
from bridge.domain.admission import MAX_LISTED_REFUSALS  # noqa: E402
from tests.integration.conftest import ApiServer, Clock, start_api  # noqa: E402

engine = engines.engine

CN = [f"+861380013{i:04d}" for i in range(3000)]


@pytest.fixture
async def api(engine: Any, tmp_path: Path, clock: Clock) -> AsyncIterator[ApiServer]:
    """One free text a day per number; batches of up to 2000 numbers."""
    overrides = {
        "rules": {"frequency": {"raw_text": {"per_day": 1}}},
        "server": {"max_recipients": 2000},
    }
    served = await start_api(tmp_path, clock, overrides, store=engine.new_store())
    try:
        yield served
    finally:
        await served.close()


async def test_every_refused_recipient_is_named_with_its_reason(api: ApiServer) -> None:
    creds = await api.create_account()
    assert (await api.send(creds, {"to": [CN[5], CN[7]], "text": "first"})).status == 202
    r = await api.request("POST", "/v1/optouts", creds=creds, json={"numbers": [CN[2], CN[9]]})
    assert r.status == 200, r.json
    r = await api.admin(
        "PUT",
        "/admin/dnc/national",
        query="country=CN",
        body=f"{CN[3]}\n{CN[9]}\n".encode(),
        content_type="text/csv",
    )
    assert r.status == 200, r.json
    r = await api.send(creds, {"to": CN[:10], "text": "second"})
    # The code and message of the first opt-out, as before.
    assert (r.status, r.code) == (422, "RECIPIENT_OPTED_OUT")
    assert r.message == f"to[2]: {CN[2]} has opted out of this account's messages"
    details = r.json["error"]["details"]
    assert details["refused"] == 5 and details["truncated"] is False
    listed = [(e["index"], e["to"], e["code"]) for e in details["recipients"]]
    assert listed == [
        (2, CN[2], "RECIPIENT_OPTED_OUT"),
        (3, CN[3], "RECIPIENT_BLOCKED"),
        (5, CN[5], "FREQUENCY_LIMIT_DAY"),
        (7, CN[7], "FREQUENCY_LIMIT_DAY"),
        (9, CN[9], "RECIPIENT_OPTED_OUT"),  # opted out and listed: its first reason
    ]
    by_to = {e["to"]: e for e in details["recipients"]}
    assert by_to[CN[5]]["retry_after"] >= 1 and "retry_after" not in by_to[CN[2]]
    # Dropping exactly those, the rest is accepted at once.
    rest = [n for i, n in enumerate(CN[:10]) if i not in (2, 3, 5, 7, 9)]
    r = await api.send(creds, {"to": rest, "text": "second"})
    assert r.status == 202, r.json


async def test_a_frequency_refusal_lists_every_number_and_keeps_retry_after(
    api: ApiServer,
) -> None:
    creds = await api.create_account()
    assert (await api.send(creds, {"to": CN[:3], "text": "first"})).status == 202
    r = await api.send(creds, {"to": [CN[10], *CN[:3]], "text": "again"})
    assert (r.status, r.code) == (429, "FREQUENCY_LIMIT_DAY")
    assert r.message.startswith(f"to[1] ({CN[0]}): at most 1 message in 24 hours")
    assert int(r.headers["Retry-After"]) >= 1
    details = r.json["error"]["details"]
    assert [(e["index"], e["to"]) for e in details["recipients"]] == [
        (1, CN[0]),
        (2, CN[1]),
        (3, CN[2]),
    ]


async def test_one_recipient_refused_is_listed_too(api: ApiServer) -> None:
    creds = await api.create_account()
    r = await api.request("POST", "/v1/optouts", creds=creds, json={"numbers": [CN[0]]})
    assert r.status == 200
    r = await api.send(creds, {"to": CN[0], "text": "hi"})
    assert (r.status, r.code, r.message) == (
        422,
        "RECIPIENT_OPTED_OUT",
        f"to: {CN[0]} has opted out of this account's messages",
    )
    assert r.json["error"]["details"] == {
        "recipients": [{"index": 0, "to": CN[0], "code": "RECIPIENT_OPTED_OUT"}],
        "refused": 1,
        "truncated": False,
    }


async def test_the_list_is_bounded(api: ApiServer) -> None:
    creds = await api.create_account()
    batch = CN[:1500]
    await api.store.add_optouts(creds.account_id, batch, "api", api.ctx.now_ms())
    r = await api.send(creds, {"to": batch, "text": "hi"})
    assert (r.status, r.code) == (422, "RECIPIENT_OPTED_OUT")
    details = r.json["error"]["details"]
    assert (details["refused"], details["truncated"]) == (1500, True)
    assert len(details["recipients"]) == MAX_LISTED_REFUSALS
    assert [e["index"] for e in details["recipients"]] == list(range(MAX_LISTED_REFUSALS))
    assert len(r.body) < 100_000  # about 80 bytes per entry listed


async def test_the_sdk_hands_the_details_over(api: ApiServer) -> None:
    creds = await api.create_account()
    r = await api.request("POST", "/v1/optouts", creds=creds, json={"numbers": [CN[1]]})
    assert r.status == 200
    client = BridgeClient(api.url, creds.app_key, creds.app_secret, max_retries=0)
    try:
        with pytest.raises(BridgeError) as err:
            await client.send(CN[:3], text="hi")
    finally:
        await client.close()
    assert err.value.code == "RECIPIENT_OPTED_OUT"
    assert err.value.details is not None
    assert err.value.details["recipients"] == [
        {"index": 1, "to": CN[1], "code": "RECIPIENT_OPTED_OUT"}
    ]
