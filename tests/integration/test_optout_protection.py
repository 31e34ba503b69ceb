"""A recipient's own opt-out (a reply with an opt-out keyword, source `mo`) cannot be undone by the
customer: DELETE /v1/optouts/{number} refuses it (409 OPTOUT_BY_RECIPIENT) and only the operator
route DELETE /admin/accounts/{ref}/optouts/{number} lifts it, with a log line that masks the number.

A real HTTP server on each store engine of tests/store_engines.py; the `mo` entries come from the
real `Inbound` handler receiving a STOP reply to a message the account sent. Every reply is also
checked against /openapi.json by the conftest (check_reply).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge import logs  # noqa: E402
from bridge.config import SmscConfig  # noqa: E402
from bridge.logs import TextFormatter  # noqa: E402
from bridge.pipeline.inbound import Inbound  # noqa: E402
from bridge.smpp import constants as C  # noqa: E402
from bridge.smpp.codec import ShortMessage  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from tests.integration.conftest import (  # noqa: E402
    ADMIN_TOKEN,
    ApiServer,
    Creds,
    Reply,
)

engine = engines.engine

CN = "+8613800138000"
CN2 = "+8613900139000"
SHORT_CODE = "10690000"  # the SMSC's default source: messages without a sender go out from it


@pytest.fixture
def api(engine_api: ApiServer) -> ApiServer:
    return engine_api  # the conftest's server on each store engine


def _refused(r: Reply, status: int, code: str, *words: str) -> None:
    assert (r.status, r.code) == (status, code), (r.status, r.json)
    for word in words:
        assert word in r.message, (word, r.message)


async def _replies_stop(api: ApiServer, number: str = CN) -> None:
    """The recipient answers the account's last message with STOP, through the real handler."""
    smsc = SmscConfig(name="main", host="127.0.0.1", port=2775, system_id="bridge",
                      default_source=SHORT_CODE)  # fmt: skip
    inbound = Inbound(api.store, {"main": smsc}, clock=api.clock)
    pdu = ShortMessage(
        source_addr_ton=1,
        source_addr_npi=1,
        source_addr=number.lstrip("+"),
        dest_addr_ton=0,
        destination_addr=SHORT_CODE,
        esm_class=0,
        data_coding=0,
        short_message=b"STOP",
    )
    assert await inbound.on_deliver("main", pdu) == C.ESME_ROK
    assert inbound.optouts == 1


async def _listed(api: ApiServer, creds: Creds) -> dict[str, str]:
    r = await api.request("GET", "/v1/optouts", creds=creds)
    assert r.status == 200
    return {o["number"]: o["source"] for o in r.json["optouts"]}


async def _opted_out_by_reply(api: ApiServer, **settings: object) -> Creds:
    creds = await api.create_account(**settings)
    assert (await api.send(creds, {"to": CN, "text": "hello"})).status == 202
    await _replies_stop(api)
    assert await _listed(api, creds) == {CN: "mo"}
    return creds


# -- the customer ----------------------------------------------------------------------------------


async def test_customer_cannot_delete_a_recipients_reply(api: ApiServer) -> None:
    creds = await _opted_out_by_reply(api)
    r = await api.request("DELETE", f"/v1/optouts/{CN}", creds=creds)
    _refused(r, 409, "OPTOUT_BY_RECIPIENT", CN, "by reply", "operator")
    assert await _listed(api, creds) == {CN: "mo"}
    r = await api.send(creds, {"to": CN, "text": "still there?"})
    _refused(r, 422, "RECIPIENT_OPTED_OUT", CN)
    # A national form of the same number is the same entry, refused the same way.
    creds_cn = await _opted_out_by_reply(api, default_country="CN")
    r = await api.request("DELETE", "/v1/optouts/13800138000", creds=creds_cn)
    _refused(r, 409, "OPTOUT_BY_RECIPIENT")


async def test_customer_deletes_what_it_added_and_unknown_stays_404(api: ApiServer) -> None:
    creds = await api.create_account()
    r = await api.request("POST", "/v1/optouts", creds=creds, json={"numbers": [CN2]})
    assert r.json["added"] == 1
    assert await _listed(api, creds) == {CN2: "api"}
    _refused(await api.send(creds, {"to": CN2, "text": "hi"}), 422, "RECIPIENT_OPTED_OUT")
    r = await api.request("DELETE", f"/v1/optouts/{CN2}", creds=creds)
    assert (r.status, r.json) == (200, {"number": CN2, "removed": True})
    assert await _listed(api, creds) == {}
    assert (await api.send(creds, {"to": CN2, "text": "hi"})).status == 202
    r = await api.request("DELETE", f"/v1/optouts/{CN2}", creds=creds)
    _refused(r, 404, "NOT_FOUND", CN2)


async def test_another_accounts_reply_is_not_found_not_conflict(api: ApiServer) -> None:
    """The 409 must not tell an account about another account's list."""
    await _opted_out_by_reply(api)
    other = await api.create_account()
    _refused(await api.request("DELETE", f"/v1/optouts/{CN}", creds=other), 404, "NOT_FOUND")


async def test_a_reply_takes_over_an_entry_the_customer_added(api: ApiServer) -> None:
    """Listed by the account first (`api`), then the recipient replies STOP: the entry is now the
    recipient's, or the account could delete it and write to them again."""
    creds = await api.create_account()
    assert (await api.send(creds, {"to": CN, "text": "hello"})).status == 202
    await api.request("POST", "/v1/optouts", creds=creds, json={"numbers": [CN]})
    before = (await api.request("GET", "/v1/optouts", creds=creds)).json["optouts"][0]
    api.clock.advance(5)
    await _replies_stop(api)
    after = (await api.request("GET", "/v1/optouts", creds=creds)).json["optouts"]
    assert after == [{**before, "source": "mo"}]  # created_at kept: listed since then
    r = await api.request("DELETE", f"/v1/optouts/{CN}", creds=creds)
    _refused(r, 409, "OPTOUT_BY_RECIPIENT")


# -- the operator ----------------------------------------------------------------------------------


async def test_operator_lifts_a_recipients_reply(api: ApiServer) -> None:
    creds = await _opted_out_by_reply(api)
    path = f"/admin/accounts/{creds.account_id}/optouts/{CN}"
    r = await api.admin("DELETE", path)
    assert (r.status, r.json) == (
        200,
        {"account_id": creds.account_id, "number": CN, "removed": True, "source": "mo"},
    )
    assert await _listed(api, creds) == {}
    assert (await api.send(creds, {"to": CN, "text": "welcome back"})).status == 202
    _refused(await api.admin("DELETE", path), 404, "NOT_FOUND", CN)


async def test_operator_lifts_an_api_entry_by_account_name_and_national_number(
    api: ApiServer,
) -> None:
    creds = await api.create_account(default_country="CN")
    await api.request("POST", "/v1/optouts", creds=creds, json={"numbers": [CN2]})
    r = await api.admin("DELETE", f"/admin/accounts/{creds.account.name}/optouts/13900139000")
    assert (r.status, r.json) == (
        200,
        {"account_id": creds.account_id, "number": CN2, "removed": True, "source": "api"},
    )
    assert await _listed(api, creds) == {}


async def test_operator_refusals(api: ApiServer) -> None:
    creds = await _opted_out_by_reply(api)
    r = await api.admin("DELETE", f"/admin/accounts/nobody/optouts/{CN}")
    _refused(r, 404, "NOT_FOUND")
    r = await api.admin("DELETE", f"/admin/accounts/{creds.account_id}/optouts/12ab")
    _refused(r, 400, "INVALID_NUMBER", "number")
    r = await api.admin("DELETE", f"/admin/accounts/{creds.account_id}/optouts/{CN2}")
    _refused(r, 404, "NOT_FOUND", CN2)
    assert await _listed(api, creds) == {CN: "mo"}


async def test_the_operator_route_needs_the_admin_token(api: ApiServer) -> None:
    creds = await _opted_out_by_reply(api)
    path = f"/admin/accounts/{creds.account_id}/optouts/{CN}"
    _refused(await api.admin("DELETE", path, token=None), 401, "INVALID_ADMIN_TOKEN")
    _refused(await api.admin("DELETE", path, token=ADMIN_TOKEN + "x"), 401, "INVALID_ADMIN_TOKEN")
    # The customer's own signature is no admin token either.
    _refused(await api.request("DELETE", path, creds=creds), 401, "INVALID_ADMIN_TOKEN")
    assert await _listed(api, creds) == {CN: "mo"}


async def test_admin_disabled_answers_403(make_api) -> None:
    api = await make_api({"server": {"admin_token": None}})
    r = await api.admin("DELETE", f"/admin/accounts/acc_x/optouts/{CN}")
    _refused(r, 403, "ADMIN_DISABLED")


async def test_lifting_is_logged_once_with_the_number_masked(
    api: ApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    creds = await _opted_out_by_reply(api)
    caplog.set_level(logging.INFO)
    caplog.clear()
    r = await api.admin("DELETE", f"/admin/accounts/{creds.account_id}/optouts/{CN}")
    assert r.status == 200
    lifted = [rec for rec in caplog.records if rec.getMessage() == "operator lifted an opt-out"]
    assert len(lifted) == 1
    assert (lifted[0].levelno, lifted[0].name) == (logging.INFO, "bridge.api.admin")
    line = TextFormatter().format(lifted[0])
    assert f"account={creds.account_id}" in line
    # As every number in the logs (README "Logs"): the country code and the last four digits.
    assert f"number={logs.number(CN)}" in line and logs.number(CN) == "+86*******8000"
    assert "source=mo" in line
    # Nothing logged while lifting it carries the full number, in any form.
    for rec in caplog.records:
        text = TextFormatter().format(rec)
        assert CN not in text and CN.lstrip("+") not in text, text


async def test_refusals_on_number_routes_log_the_number_masked(
    api: ApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The "refused" line logs the path, and these paths carry the number: masked like every
    number in the logs (logging.mask_bodies), for the customer's 409 and the operator's 404."""
    assert logs.number(CN) == "+86*******8000"
    creds = await _opted_out_by_reply(api)
    caplog.set_level(logging.INFO)
    caplog.clear()
    r = await api.request("DELETE", f"/v1/optouts/{CN}", creds=creds)
    assert r.status == 409
    r = await api.admin("DELETE", f"/admin/accounts/{creds.account_id}/optouts/{CN2}")
    assert r.status == 404
    refused = [rec for rec in caplog.records if rec.getMessage() == "refused"]
    assert [getattr(rec, "path", None) for rec in refused] == [
        f"/v1/optouts/{logs.number(CN)}",
        f"/admin/accounts/{creds.account_id}/optouts/{logs.number(CN2)}",
    ]
    for rec in caplog.records:
        text = TextFormatter().format(rec)
        for full in (CN, CN2):
            assert full not in text and full.lstrip("+") not in text, text


async def test_numbers_written_with_separators_are_masked_in_the_path_too(
    api: ApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The routes take a number as the account writes it ("+86 138-0013-8000", "(0)...":
    phone.normalize drops spaces, dashes, dots and brackets), so the log line's path carries
    that form: masked as well, not only a bare run of digits."""
    creds = await _opted_out_by_reply(api)
    caplog.set_level(logging.INFO)
    caplog.clear()
    r = await api.request("DELETE", "/v1/optouts/%2B86%20138-0013-8000", creds=creds)
    assert r.status == 409
    r = await api.request("DELETE", "/v1/optouts/%2B86.139.0013.9000", creds=creds)
    assert r.status == 404
    path = f"/admin/accounts/{creds.account_id}/optouts/(%2B86)%20139%200013%209000"
    assert (await api.admin("DELETE", path)).status == 404
    refused = [rec for rec in caplog.records if rec.getMessage() == "refused"]
    assert [getattr(rec, "path", None) for rec in refused] == [
        f"/v1/optouts/{logs.number(CN)}",
        f"/v1/optouts/{logs.number(CN2)}",
        f"/admin/accounts/{creds.account_id}/optouts/{logs.number(CN2)}",
    ]
    for rec in caplog.records:
        text = TextFormatter().format(rec)
        for middle in ("0013", "138-", "139 ", "139."):
            assert middle not in text, text


# -- the store, on its own -------------------------------------------------------------------------


async def test_remove_optout_reports_the_source_found(api: ApiServer) -> None:
    store: Store = api.store
    now = api.ctx.now_ms()
    await store.add_optouts("acc_a", [CN], "mo", now)
    await store.add_optouts("acc_a", [CN2], "api", now)
    assert await store.remove_optout("acc_a", CN, sources={"api"}) == "mo"  # kept
    assert await store.remove_optout("acc_a", CN2, sources={"api"}) == "api"  # removed
    assert await store.remove_optout("acc_a", CN2, sources={"api"}) is None
    assert [(o.recipient, o.source) for o in await store.list_optouts("acc_a")] == [(CN, "mo")]
    assert await store.remove_optout("acc_b", CN, sources=None) is None  # per account
    assert await store.remove_optout("acc_a", CN, sources=()) == "mo"  # nothing allowed: kept
    assert await store.remove_optout("acc_a", CN, sources=None) == "mo"  # any: removed
    assert await store.list_optouts("acc_a") == []


async def test_a_reply_racing_the_customers_delete_is_never_lost(api: ApiServer) -> None:
    """The customer deletes its `api` entry while the recipient's STOP arrives: whichever commits
    first, the number ends on the list as the recipient's."""
    store: Store = api.store
    now = api.ctx.now_ms()
    numbers = [f"+86138001{i:05d}" for i in range(40)]
    await store.add_optouts("acc_a", numbers, "api", now)
    outcomes = await asyncio.gather(
        *(
            job
            for n in numbers
            for job in (
                store.remove_optout("acc_a", n, sources={"api"}),
                store.add_optouts("acc_a", [n], "mo", now + 1),
            )
        )
    )
    removed = outcomes[0::2]
    assert set(removed) <= {"api", "mo"}
    listed = {o.recipient: o.source for o in await store.list_optouts("acc_a", limit=100)}
    assert listed == dict.fromkeys(numbers, "mo")
