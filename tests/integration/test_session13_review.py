"""Session 13's adversarial review of 93e4c1c: corrections of a rejected template or sign name
under the same code or name (PATCH /v1/templates/{code}, PATCH /v1/signs/{name}, the Alibaba
face's ModifySmsTemplate / UpdateSmsTemplate / ModifySmsSign / UpdateSmsSign), the template
`revision` that keeps per-process template caches honest (TEMPLATE_CHANGED in the accept
transaction, the send paths rendering again), and the operator's `revision` on a decision.

Real servers, real SQLite files, PostgreSQL where the store is concerned (tests/store_engines.py;
CI=1 SMPP_BRIDGE_CI=1 makes a missing PostgreSQL fail), the official Alibaba SDK. One monkeypatch
only: a cache that is always one revision behind, to reach the RENDER_TRIES bound.

Checked right (passing tests):
- the stale cache, end to end: approved, sent (cached), rejected, corrected, approved: the next
  native /v1/messages, Alibaba SendSms and SendBatchSms carry the NEW text (stored text and the
  bytes claimed for the SMSC), no error to the client, one and two recipients (both SQLite facts
  statements), on SQLite and PostgreSQL, and from a second server on the same database that
  cached the old copy; the idempotent replay answers the accepted rendering; a template changed
  at every rendering ends in 409 TEMPLATE_CHANGED (Alibaba isv.SMS_TEMPLATE_ILLEGAL) after
  exactly RENDER_TRIES accepts, nothing stored, the key free;
- conflicts: concurrent corrections (one 200, one 409), approved/pending refused with
  TEMPLATE_NOT_EDITABLE / SIGN_NOT_EDITABLE, another account's code or name 404, malformed bodies
  400 (and nothing changed), a correction the automatic review rejects (reason kept, revision
  counted, no operator can approve it), fields left out kept;
- the operator's revision: stale -> 409 TEMPLATE_CHANGED and nothing decided, right -> decided,
  0 / -1 / "2" / true / false / 1.5 / 2.0 / [2] -> 400; CLI `template review CODE --approve
  --revision N`;
- the store contract on both engines: edit_template only over revision - 1 of a rejected one of
  the same account (six at once: one wins), review_template with a stale revision decides
  nothing and ends no queued message, edit_sign only of a rejected one, accept refusing
  TEMPLATE_CHANGED before any other rule and leaving the nonce and idempotency key free;
- the four Alibaba actions through the official SDK (OK, unknown, another account's, approved or
  pending, bad TemplateType / SignSource / long name), QuerySmsTemplate(List) after a correction;
- a sign corrected after another account's same name was approved (SIGN_NAME_TAKEN), NFKC
  names, the impersonation flag recomputed, frequency counts kept under the code.

Found (fixed in the commit after this review; the tests below now pass):
- the stale cached copy is also what the checks BEFORE the accept transaction use (rendering:
  placeholders, allow_urls): a correction that renames a placeholder makes every send with the
  new params fail 400 TEMPLATE_MISSING_PARAMETERS (Alibaba isv.TEMPLATE_MISSING_PARAMETERS), and
  one that allows links keeps refusing them (TEMPLATE_PARAMETER_INVALID), in any process that
  cached the old copy, for good: only a TEMPLATE_CHANGED from the store forgets the copy;
- POST /v1/preview renders the stale cached copy after a correction (the old text);
- POST /v1/messages may answer 409 TEMPLATE_CHANGED, which its OpenAPI operation does not list;
- PATCH /v1/signs/{name} takes a falsy wrong-typed `source` (false, 0, [], "") as "unchanged"
  and answers 200 (the sign goes back to review) instead of 400 INVALID_FIELD;
- the CLI review queue (`template review` without CODE) lists no revision, yet `--revision`
  says "(as listed)".
The fixes: a send refused as rendered from the cached copy reads the template once more and
renders again if it changed (only refusals pay the read); previews read the stored template;
409 listed; a sign's `source` must be one of the sources (absent keeps it on PATCH); the queue
shows `revision` and `updated_at`. And, from the review's doubt: a null field in a correction is
refused (it read as "keep" and counted a revision for nothing).
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from alibabacloud_dysmsapi20170525 import models

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge import review  # noqa: E402
from bridge.api.sending import RENDER_TRIES  # noqa: E402
from bridge.rules import load_filter  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.store.models import (  # noqa: E402
    AcceptBatch,
    IdempotencyRecord,
    Sign,
    SubmitResult,
    Template,
)
from tests.integration import test_aliyun_api as aliyun  # noqa: E402
from tests.integration import test_cli_rules as cli  # noqa: E402
from tests.integration import test_store_rules as sr  # noqa: E402
from tests.integration.conftest import ApiServer, Creds, Reply  # noqa: E402
from tests.sending import submit_template  # noqa: E402

engine = engines.engine
store = engines.store
face = aliyun.face
cfg = cli.cfg

CN = "+8613800138000"
CN2 = "+8613900139000"
CN3 = "+8613700137000"
LEASE = 5 * 60_000
OLD = "Your order ${order} has shipped."
NEW = "Update: order ${order} is on its way."


# ---------------------------------------------------------------- helpers (native API)


async def _template(api: ApiServer, creds: Creds, content: str = OLD, **extra: Any) -> str:
    kind = extra.pop("kind", "notification")
    return (await submit_template(api, creds, content, kind, **extra))["code"]


async def _decide(api: ApiServer, code: str, decision: str, reason: str | None = None,
                  **extra: Any) -> Reply:  # fmt: skip
    body: dict[str, Any] = {"decision": decision, **extra}
    if reason is not None:
        body["reason"] = reason
    return await api.admin("POST", f"/admin/templates/{code}/review", json=body)


async def _approved(api: ApiServer, creds: Creds, content: str = OLD, **extra: Any) -> str:
    code = await _template(api, creds, content, **extra)
    r = await _decide(api, code, "approve")
    assert (r.status, r.json["status"]) == (200, "approved"), r.json
    return code


async def _rejected(api: ApiServer, creds: Creds, content: str = OLD, **extra: Any) -> str:
    code = await _template(api, creds, content, **extra)
    r = await _decide(api, code, "reject", "say which carrier")
    assert (r.status, r.json["status"]) == (200, "rejected"), r.json
    return code


async def _patch(api: ApiServer, creds: Creds, code: str, body: Any = None, **kw: Any) -> Reply:
    if body is not None:
        kw["json"] = body
    return await api.request("PATCH", f"/v1/templates/{code}", creds=creds, **kw)


async def _get(api: ApiServer, creds: Creds, code: str) -> dict[str, Any]:
    r = await api.request("GET", f"/v1/templates/{code}", creds=creds)
    assert r.status == 200, r.json
    return r.json


async def _send(api: ApiServer, creds: Creds, code: str, params: dict[str, Any],
                to: str | list[str] = CN) -> Reply:  # fmt: skip
    return await api.send(
        creds, {"to": to, "sign_name": "Acme", "template": code, "params": params}
    )


async def _texts(api: ApiServer, creds: Creds) -> list[str]:
    rows = await api.store.list_messages(creds.account_id, limit=1000)
    return [m.text for m in sorted(rows, key=lambda m: (m.accepted_at, m.recipient, m.id))]


async def _wire(api: ApiServer) -> list[tuple[str, str]]:
    """(recipient, text) of the bytes claimed for the SMSC (claims everything queued)."""
    out = []
    for w in await api.store.claim("review13", 1000, api.ctx.now_ms(), LEASE):
        raw = b"".join(s.short_message for s in w.segments)
        text = raw.decode("utf-16-be") if w.data_coding == 8 else raw.decode("latin-1")
        out.append((w.recipient, text))
    return sorted(out)


def _refused(r: Reply, status: int, code: str, *words: str) -> None:
    assert (r.status, r.code) == (status, code), (r.status, r.json)
    for word in words:
        assert word in r.message, (word, r.message)


async def _correct_and_approve(api: ApiServer, creds: Creds, code: str, body: dict[str, Any],
                               patcher: ApiServer | None = None) -> dict[str, Any]:  # fmt: skip
    """The operator rejects, the customer corrects (through `patcher`), the operator approves
    the revision read."""
    r = await _decide(api, code, "reject", "wording")
    assert r.json["status"] == "rejected"
    fixed = await _patch(patcher or api, creds, code, body)
    assert fixed.status == 200, fixed.json
    assert (fixed.json["status"], fixed.json["revision"]) == ("pending", 2), fixed.json
    ok = await _decide(api, code, "approve", revision=2)
    assert (ok.status, ok.json["status"], ok.json["revision"]) == (200, "approved", 2), ok.json
    return fixed.json


# ---------------------------------------------------------------- 1. the stale cache, end to end


async def test_native_send_after_a_correction_carries_the_new_text(engine_api: ApiServer) -> None:
    """On both engines: the cached revision 1 is refused TEMPLATE_CHANGED inside the accept
    transaction, forgotten, rendered again; the client sees one 202 with the new text."""
    api = engine_api
    creds = await api.create_account(raw_text=False)
    code = await _approved(api, creds)
    first = await _send(api, creds, code, {"order": "A1"})
    assert first.status == 202, first.json
    cached = await api.ctx.send_rules.template(creds.account_id, code)
    assert cached is not None and (cached.revision, cached.content) == (1, OLD)

    # Rejected: the cached revision is still the stored one, refused as not approved.
    r = await _decide(api, code, "reject", "say which carrier")
    assert r.json["status"] == "rejected"
    _refused(await _send(api, creds, code, {"order": "A2"}), 422, "TEMPLATE_NOT_APPROVED")
    fixed = await _patch(api, creds, code, {"content": NEW})
    assert fixed.status == 200, fixed.json
    assert (fixed.json["revision"], fixed.json["status"], fixed.json["content"]) == (
        2, "pending", NEW,
    )  # fmt: skip
    assert fixed.json["updated_at"] is not None and fixed.json["reviewed_at"] is None
    # Corrected, pending: rendered again from revision 2, still not approved.
    _refused(await _send(api, creds, code, {"order": "A3"}), 422, "TEMPLATE_NOT_APPROVED")
    ok = await _decide(api, code, "approve", revision=2)
    assert ok.json["status"] == "approved"

    one = await _send(api, creds, code, {"order": "B1"}, to=CN2)
    assert one.status == 202, one.json
    two = await _send(api, creds, code, {"order": "B2"}, to=[CN3, CN])
    assert two.status == 202, two.json
    texts = await _texts(api, creds)
    assert texts[0] == "【Acme】Your order A1 has shipped."
    assert texts[1:] == [
        "【Acme】Update: order B1 is on its way.",
        "【Acme】Update: order B2 is on its way.",
        "【Acme】Update: order B2 is on its way.",
    ]
    # A1 was still queued when the operator rejected the template: ended unsent, refunded.
    rows = await api.store.list_messages(creds.account_id, limit=1000)
    [a1] = [m for m in rows if m.text == "【Acme】Your order A1 has shipped."]
    assert (a1.state, a1.error_code) == ("expired", "TEMPLATE_REJECTED"), a1
    assert await _wire(api) == sorted(
        [
            (CN, "【Acme】Update: order B2 is on its way."),
            (CN2, "【Acme】Update: order B1 is on its way."),
            (CN3, "【Acme】Update: order B2 is on its way."),
        ]
    )
    cached = await api.ctx.send_rules.template(creds.account_id, code)
    assert cached is not None and (cached.revision, cached.content) == (2, NEW)


async def test_wire_text_is_the_new_one(api_server: ApiServer) -> None:
    """The bytes claimed for the SMSC after the correction: only the new text."""
    api = api_server
    creds = await api.create_account(raw_text=False)
    code = await _approved(api, creds)
    assert (await _send(api, creds, code, {"order": "A1"})).status == 202
    assert await _wire(api) == [(CN, "【Acme】Your order A1 has shipped.")]
    await _correct_and_approve(api, creds, code, {"content": NEW})
    payload = {"to": CN2, "sign_name": "Acme", "template": code, "params": {"order": "B1"}}
    first = await api.send(creds, payload, key="idem-after-fix")
    assert first.status == 202, first.json
    # Its idempotency record is the answer of the rendering that was accepted.
    replay = await api.send(creds, payload, key="idem-after-fix")
    assert (replay.status, replay.json) == (202, first.json)
    assert await _wire(api) == [(CN2, "【Acme】Update: order B1 is on its way.")]
    assert len(await _texts(api, creds)) == 2


async def test_a_second_process_with_the_old_copy_sends_the_new_text(make_api: Any) -> None:
    """Two servers on one SQLite file (two daemons): B takes the correction, A had cached
    revision 1 and must not send it."""
    a = await make_api()
    b = await make_api(
        {"store": {"path": str(a.config.store.path)},
         "security": {"master_key": a.config.security.master_key}}
    )  # fmt: skip
    creds = await a.create_account(raw_text=False)
    code = await _approved(a, creds)
    assert (await _send(a, creds, code, {"order": "A1"})).status == 202
    await _correct_and_approve(b, creds, code, {"content": NEW}, patcher=b)
    stale = await a.ctx.send_rules.template(creds.account_id, code)
    assert stale is not None and stale.revision == 1  # A's cache never heard of it
    assert (await _send(a, creds, code, {"order": "B1"}, to=CN2)).status == 202
    assert (await _texts(a, creds))[-1] == "【Acme】Update: order B1 is on its way."


async def test_alibaba_send_sms_after_a_correction_carries_the_new_text(face: Any) -> None:
    api = face.api
    creds = await api.create_account(raw_text=False)
    code = await face.template(creds, OLD, "notification")
    sent = await face.send(creds, code, aliyun.CN1, {"order": "A1"})
    assert sent.code == "OK", sent.message
    now = api.ctx.now_ms()
    await api.store.review_template(code, "rejected", "wording", now)
    client = face.client(creds)
    body = await face.call(
        client,
        "modify_sms_template",
        models.ModifySmsTemplateRequest(template_code=code, template_content=NEW, template_type=1),
    )
    assert (body.code, body.template_code) == ("OK", code)
    await api.store.review_template(code, "approved", None, now, 2)
    again = await face.send(creds, code, aliyun.CN2, {"order": "B1"})
    assert again.code == "OK", again.message
    batch = await face.send(creds, code, f"{aliyun.CN3},{aliyun.CN1}", {"order": "B2"})
    assert batch.code == "OK", batch.message
    # SendBatchSms from a cache holding revision 2 when revision 3 is the approved one.
    cached = await api.ctx.send_rules.template(creds.account_id, code)
    assert cached is not None and cached.revision == 2
    await api.store.review_template(code, "rejected", "again", now)
    fix = await face.call(
        client,
        "update_sms_template",
        models.UpdateSmsTemplateRequest(template_code=code, template_content="Third ${order}."),
    )
    assert fix.code == "OK", fix.message
    await api.store.review_template(code, "approved", None, now, 3)
    batch2 = await face.call(
        client,
        "send_batch_sms",
        models.SendBatchSmsRequest(
            phone_number_json=json.dumps([aliyun.CN2, aliyun.CN3]),
            sign_name_json=json.dumps(["Acme", "Acme"]),
            template_code=code,
            template_param_json=json.dumps([{"order": "C1"}, {"order": "C2"}]),
        ),
    )
    assert batch2.code == "OK", batch2.message
    texts = sorted(m.text for m in await face.messages(creds))
    assert texts == sorted(
        [
            "【Acme】Your order A1 has shipped.",
            "【Acme】Update: order B1 is on its way.",
            "【Acme】Update: order B2 is on its way.",
            "【Acme】Update: order B2 is on its way.",
            "【Acme】Third C1.",
            "【Acme】Third C2.",
        ]
    )


_RENAMED = "Hello ${name}, parcel ${parcel} has shipped."


async def test_native_send_after_a_correction_that_renames_a_placeholder(
    api_server: ApiServer,
) -> None:
    api = api_server
    creds = await api.create_account(raw_text=False)
    code = await _approved(api, creds)
    assert (await _send(api, creds, code, {"order": "A1"})).status == 202
    await _correct_and_approve(api, creds, code, {"content": _RENAMED})
    for _try in range(3):  # the client retrying does not help: the copy stays cached
        r = await _send(api, creds, code, {"name": "Li", "parcel": "P9"}, to=CN2)
        if r.status == 202:
            break
    assert r.status == 202, r.json  # fails: 400 TEMPLATE_MISSING_PARAMETERS (old copy)
    assert (await _texts(api, creds))[-1] == "【Acme】Hello Li, parcel P9 has shipped."


async def test_native_send_after_a_correction_that_allows_links(api_server: ApiServer) -> None:
    api = api_server
    creds = await api.create_account(raw_text=False)
    code = await _approved(api, creds, "Track order ${order} at ${link}")
    r = await _send(api, creds, code, {"order": "A1", "link": "x"})
    assert r.status == 202, r.json
    await _correct_and_approve(api, creds, code, {"allow_urls": True})
    r = await _send(api, creds, code, {"order": "A2", "link": "https://example.com/t"}, to=CN2)
    assert r.status == 202, r.json  # fails: TEMPLATE_PARAMETER_INVALID (link, old copy)


async def test_alibaba_send_after_a_correction_that_renames_a_placeholder(face: Any) -> None:
    api = face.api
    creds = await api.create_account(raw_text=False)
    code = await face.template(creds, OLD, "notification")
    assert (await face.send(creds, code, aliyun.CN1, {"order": "A1"})).code == "OK"
    now = api.ctx.now_ms()
    await api.store.review_template(code, "rejected", "wording", now)
    body = await face.call(
        face.client(creds),
        "modify_sms_template",
        models.ModifySmsTemplateRequest(template_code=code, template_content=_RENAMED),
    )
    assert body.code == "OK"
    await api.store.review_template(code, "approved", None, now)
    again = await face.send(creds, code, aliyun.CN2, {"name": "Li", "parcel": "P9"})
    assert again.code == "OK", (again.code, again.message)


async def test_preview_after_a_correction_shows_the_new_text(api_server: ApiServer) -> None:
    api = api_server
    creds = await api.create_account(raw_text=False)
    code = await _rejected(api, creds)
    body = {"template": code, "params": {"order": "A1"}, "sign_name": "Acme"}
    before = await api.request("POST", "/v1/preview", creds=creds, json=body)
    assert before.json["text"] == "【Acme】Your order A1 has shipped."
    assert (await _patch(api, creds, code, {"content": NEW})).status == 200
    after = await api.request("POST", "/v1/preview", creds=creds, json=body)
    assert after.json["text"] == "【Acme】Update: order A1 is on its way.", after.json


def _always_stale(monkeypatch: pytest.MonkeyPatch, api: ApiServer) -> list[int]:
    """A template corrected again between every rendering and its accept (the cache hands
    out the revision before the stored one); returns the list the accept calls are counted in."""
    real_template = api.ctx.send_rules.template
    real_accept = api.store.accept
    calls: list[int] = []

    async def stale(account_id: str, code: str) -> Template | None:
        t = await real_template(account_id, code)
        return None if t is None else replace(t, revision=t.revision - 1)

    async def accept(batch: AcceptBatch, now: int) -> Any:
        calls.append(now)
        return await real_accept(batch, now)

    monkeypatch.setattr(api.ctx.send_rules, "template", stale)
    monkeypatch.setattr(api.store, "accept", accept)
    return calls


async def test_a_template_changing_every_time_is_refused_after_render_tries(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound of RENDER_TRIES (3): the client sees 409 TEMPLATE_CHANGED, nothing stored, the
    key free for the retry the message invites."""
    api = api_server
    creds = await api.create_account(raw_text=False)
    code = await _approved(api, creds)
    calls = _always_stale(monkeypatch, api)
    payload = {"to": CN, "sign_name": "Acme", "template": code, "params": {"order": "A1"}}
    r = await api.request(
        "POST", "/v1/messages", creds=creds, json=payload, idempotency_key="k-changing",
        validate=False,  # see test_openapi_lists_409_for_send_messages
    )  # fmt: skip
    _refused(r, 409, "TEMPLATE_CHANGED", "send it again")
    assert len(calls) == RENDER_TRIES == 3
    assert await _texts(api, creds) == []
    monkeypatch.undo()
    again = await api.send(creds, payload, key="k-changing")
    assert again.status == 202, again.json


def test_openapi_lists_409_for_send_messages() -> None:
    from bridge.api.openapi import openapi_document

    responses = openapi_document()["paths"]["/v1/messages"]["post"]["responses"]
    assert "409" in responses, sorted(responses)


async def test_alibaba_template_changing_every_time(
    face: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = face.api
    creds = await api.create_account(raw_text=False)
    code = await face.template(creds, OLD, "notification")
    calls = _always_stale(monkeypatch, api)
    body = await face.send(creds, code, aliyun.CN1, {"order": "A1"})
    assert body.code == "isv.SMS_TEMPLATE_ILLEGAL", body.message
    assert len(calls) == RENDER_TRIES
    assert await face.messages(creds) == []


async def test_frequency_counts_stay_with_the_code(make_api: Any) -> None:
    """Notification limits count per (sign, template code, number): a correction is no way
    around them (the send before it, which went out, still counts), and the corrected text is
    what goes. (A send still waiting when the template was rejected ended unsent and gave its
    place back: it never reached anyone, tests/integration/test_session36_places.py.)"""
    api = await make_api({"rules": {"frequency": {"notification": {"per_day": 2}}}})
    creds = await api.create_account(raw_text=False)
    code = await _approved(api, creds)
    assert (await _send(api, creds, code, {"order": "A1"})).status == 202
    now = api.ctx.now_ms()
    (work,) = await api.store.claim("review13", 10, now, LEASE)
    await api.store.record_submits(
        [SubmitResult(work.id, 1, "sent", "main", "S1", "S1", at=now)], [], now
    )
    await _correct_and_approve(api, creds, code, {"content": NEW})
    assert (await _send(api, creds, code, {"order": "A2"})).status == 202
    third = await _send(api, creds, code, {"order": "A3"})
    _refused(third, 429, "FREQUENCY_LIMIT_DAY")
    assert (await _texts(api, creds))[-1] == "【Acme】Update: order A2 is on its way."


# ---------------------------------------------------------------- 2. conflicts and refusals


async def test_concurrent_corrections_one_wins(engine_api: ApiServer) -> None:
    api = engine_api
    creds = await api.create_account(raw_text=False)
    for _round in range(3):
        code = await _rejected(api, creds)
        a, b = await asyncio.gather(
            _patch(api, creds, code, {"content": "First ${order} fix."}),
            _patch(api, creds, code, {"content": "Second ${order} fix."}),
        )
        assert sorted([a.status, b.status]) == [200, 409], (a.json, b.json)
        loser = a if a.status == 409 else b
        winner = b if loser is a else a
        assert loser.code == "TEMPLATE_NOT_EDITABLE", loser.json
        got = await _get(api, creds, code)
        assert (got["revision"], got["status"]) == (2, "pending")
        assert got["content"] == winner.json["content"]


async def test_correction_of_approved_or_pending_is_refused(api_server: ApiServer) -> None:
    api = api_server
    creds = await api.create_account(raw_text=False)
    approved = await _approved(api, creds)
    pending = await _template(api, creds)
    r = await _patch(api, creds, approved, {"content": NEW})
    _refused(r, 409, "TEMPLATE_NOT_EDITABLE", "approved")
    r = await _patch(api, creds, pending, {"content": NEW})
    _refused(r, 409, "TEMPLATE_NOT_EDITABLE", "pending")
    for code, status in ((approved, "approved"), (pending, "pending")):
        got = await _get(api, creds, code)
        assert (got["status"], got["revision"], got["content"]) == (status, 1, OLD)
        assert got["updated_at"] is None
    # A second correction while the first waits for review: pending, refused.
    rejected = await _rejected(api, creds)
    assert (await _patch(api, creds, rejected, {"content": NEW})).status == 200
    _refused(await _patch(api, creds, rejected, {"remark": "x"}), 409, "TEMPLATE_NOT_EDITABLE")


async def test_another_accounts_template_is_not_found(api_server: ApiServer) -> None:
    api = api_server
    owner = await api.create_account(raw_text=False)
    other = await api.create_account(raw_text=False)
    code = await _rejected(api, owner)
    for path_code in (code, "SMS_000000001", "nope", "SMS_1%2F2"):
        r = await _patch(api, other, path_code, {"content": NEW})
        _refused(r, 404, "NOT_FOUND")
    got = await _get(api, owner, code)
    assert (got["revision"], got["content"], got["status"]) == (1, OLD, "rejected")


@pytest.mark.parametrize(
    ("body", "code", "word"),
    [
        (b"{", "INVALID_JSON", "JSON"),
        (b"[]", "INVALID_REQUEST", "object"),
        (b'"content"', "INVALID_REQUEST", "object"),
        (b"{}", "MISSING_FIELD", "content"),
        (b'{"colour": "red"}', "UNKNOWN_FIELD", "colour"),
        (b'{"content": "x ${order}", "code": "SMS_1"}', "UNKNOWN_FIELD", "code"),
        (b'{"status": "approved"}', "UNKNOWN_FIELD", "status"),
        (b'{"revision": 7}', "UNKNOWN_FIELD", "revision"),
        (b'{"type": "sms"}', "INVALID_FIELD", "type"),
        (b'{"type": ["notification"]}', "INVALID_FIELD", "type"),
        (b'{"name": 5}', "INVALID_FIELD", "name"),
        (b'{"name": "   "}', "INVALID_FIELD", "name"),
        (b'{"content": 5}', "INVALID_FIELD", "content"),
        (b'{"content": ["x"]}', "INVALID_FIELD", "content"),
        (b'{"remark": false}', "INVALID_FIELD", "remark"),
        (b'{"allow_urls": "yes"}', "INVALID_FIELD", "allow_urls"),
        (b'{"allow_urls": 1}', "INVALID_FIELD", "allow_urls"),
        ('{"name": "' + "n" * 65 + '"}', "INVALID_FIELD", "name"),
        ('{"remark": "' + "r" * 501 + '"}', "INVALID_FIELD", "remark"),
        ('{"content": "' + "c" * 2001 + '"}', "INVALID_FIELD", "content"),
    ],
)
async def test_malformed_corrections_change_nothing(
    api_server: ApiServer, body: bytes | str, code: str, word: str
) -> None:
    api = api_server
    creds = await api.create_account(raw_text=False)
    tcode = await _rejected(api, creds)
    raw = body.encode() if isinstance(body, str) else body
    r = await api.request("PATCH", f"/v1/templates/{tcode}", creds=creds, body=raw)
    _refused(r, 400, code, word)
    got = await _get(api, creds, tcode)
    assert (got["revision"], got["status"], got["content"], got["updated_at"]) == (
        1, "rejected", OLD, None,
    )  # fmt: skip


async def test_correction_needs_json(api_server: ApiServer) -> None:
    api = api_server
    creds = await api.create_account(raw_text=False)
    code = await _rejected(api, creds)
    r = await api.request(
        "PATCH", f"/v1/templates/{code}", creds=creds, body=b'{"content": "x"}',
        content_type="text/plain",
    )  # fmt: skip
    _refused(r, 415, "UNSUPPORTED_MEDIA_TYPE")
    unsigned = await api.request("PATCH", f"/v1/templates/{code}", json={"content": NEW})
    assert unsigned.status == 401, unsigned.json
    assert (await _get(api, creds, code))["revision"] == 1


async def test_a_correction_the_automatic_review_rejects(make_api: Any, tmp_path: Path,
                                                         clock: Any) -> None:  # fmt: skip
    words = tmp_path / "filter.txt"
    words.write_text("代开发票\n", encoding="utf-8")
    api = await make_api({"rules": {"content_filter_file": str(words)}})
    now = int(clock.freeze(1_794_715_200) * 1000)
    creds = await api.create_account(raw_text=False)
    code = await _rejected(api, creds)
    clock.advance(5)
    r = await _patch(api, creds, code, {"content": "专业代开${order}发票", "remark": "again"})
    assert r.status == 200, r.json
    assert (r.json["status"], r.json["revision"], r.json["remark"]) == ("rejected", 2, "again")
    assert (
        r.json["reason"].startswith("TEMPLATE_CONTENT_FILTERED: ")
        and "代开发票" in r.json["reason"]
    )
    assert (r.json["reviewed_at"], r.json["updated_at"], r.json["created_at"]) == (
        None, now + 5000, now,
    )  # fmt: skip
    # Rejected by the automatic review: an operator cannot approve it.
    _refused(await _decide(api, code, "approve"), 400, "INVALID_REQUEST", "automatic")
    # The customer corrects again: revision 3, pending, the reason gone.
    r = await _patch(api, creds, code, {"content": NEW})
    assert (r.json["status"], r.json["revision"], r.json["reason"]) == ("pending", 3, None)
    # A type change the review refuses (marketing without opt-out wording).
    code2 = await _rejected(api, creds)
    r = await _patch(api, creds, code2, {"type": "marketing"})
    assert (r.json["status"], r.json["type"], r.json["revision"]) == ("rejected", "marketing", 2)
    assert "TEMPLATE_NO_OPTOUT_WORDING" in r.json["reason"]


async def test_correction_keeps_what_is_left_out(api_server: ApiServer, clock: Any) -> None:
    api = api_server
    now = int(clock.freeze(1_794_715_200) * 1000)
    creds = await api.create_account(raw_text=False)
    code = await _rejected(api, creds, remark="first", allow_urls=False)
    clock.advance(2)
    r = await _patch(api, creds, code, {"name": "renamed"})
    assert r.status == 200, r.json
    j = r.json
    assert (j["code"], j["type"], j["name"], j["content"], j["remark"], j["allow_urls"]) == (
        code, "notification", "renamed", OLD, "first", False,
    )  # fmt: skip
    assert (j["status"], j["reason"], j["reviewed_at"], j["revision"]) == (
        "pending", None, None, 2,
    )  # fmt: skip
    assert (j["created_at"], j["updated_at"]) == (now, now + 2000)
    assert await _get(api, creds, code) == j
    listed = await api.request("GET", "/v1/templates", creds=creds)
    assert [t for t in listed.json["templates"] if t["code"] == code] == [j]
    ops = await api.admin("GET", "/admin/templates", query="status=pending")
    [row] = [t for t in ops.json["templates"] if t["code"] == code]
    assert (row["revision"], row["account"], row["updated_at"]) == (2, creds.account_id, now + 2000)


# ---------------------------------------------------------------- 3. the operator's revision


async def test_operator_decision_names_the_revision(api_server: ApiServer) -> None:
    api = api_server
    creds = await api.create_account(raw_text=False)
    code = await _rejected(api, creds)
    assert (await _patch(api, creds, code, {"content": NEW})).status == 200
    for decision, reason in (("approve", None), ("reject", "still vague")):
        stale = await _decide(api, code, decision, reason, revision=1)
        _refused(stale, 409, "TEMPLATE_CHANGED", "revision 2")
        got = await _get(api, creds, code)
        assert (got["status"], got["reviewed_at"], got["revision"]) == ("pending", None, 2)
    ahead = await _decide(api, code, "approve", revision=3)
    _refused(ahead, 409, "TEMPLATE_CHANGED")
    ok = await _decide(api, code, "approve", revision=2)
    assert (ok.status, ok.json["status"], ok.json["revision"]) == (200, "approved", 2)
    assert ok.json["reviewed_at"] is not None
    # Without a revision the decision is as before (no check).
    again = await _decide(api, code, "reject", "second look")
    assert (again.status, again.json["status"]) == (200, "rejected")


@pytest.mark.parametrize("revision", [0, -1, "2", True, False, 1.5, 2.0, [2], {"r": 2}])
async def test_operator_bad_revision_values(api_server: ApiServer, revision: Any) -> None:
    api = api_server
    creds = await api.create_account(raw_text=False)
    code = await _rejected(api, creds)
    assert (await _patch(api, creds, code, {"content": NEW})).status == 200
    r = await _decide(api, code, "approve", revision=revision)
    _refused(r, 400, "INVALID_FIELD", "revision")
    got = await _get(api, creds, code)
    assert (got["status"], got["reviewed_at"]) == ("pending", None)


async def test_operator_revision_on_unknown_and_on_signs(api_server: ApiServer) -> None:
    api = api_server
    creds = await api.create_account(raw_text=False)
    _refused(await _decide(api, "SMS_000000001", "approve", revision=1), 404, "NOT_FOUND")
    r = await api.request("POST", "/v1/signs", creds=creds, json={"name": "Globex"})
    assert r.status == 201
    sign_review = await api.admin(
        "POST", f"/admin/accounts/{creds.account_id}/signs/Globex/review",
        json={"decision": "approve", "revision": 1},
    )  # fmt: skip
    _refused(sign_review, 400, "UNKNOWN_FIELD", "revision")


def test_cli_review_with_revision(cfg: Path) -> None:
    ids = cli.create_accounts(cfg, ("acme",))

    async def setup(st: Any, config: Any) -> str:
        flt = load_filter(config.rules.content_filter_file)
        now = 1_700_000_000_000
        body = {"type": "notification", "name": "ship", "content": OLD}
        t = await review.submit_template(st, ids["acme"], body, now, config, flt)
        await review.decide_template(st, t.code, "reject", "wording", now)
        fixed = await review.edit_template(
            st, ids["acme"], t.code, {"content": NEW}, now + 1, config, flt
        )
        assert (fixed.revision, fixed.status) == (2, "pending")
        return t.code

    code = cli.in_store(cfg, setup)
    stale, bad = cli.run_all(
        cfg,
        ("template", "review", code, "--approve", "--revision", "1"),
        ("template", "review", code, "--approve", "--revision", "0"),
    )
    cli.check_refused(stale, "TEMPLATE_CHANGED")
    cli.check_refused(bad, "revision")
    ok = cli.ok(cfg, "template", "review", code, "--approve", "--revision", "2")
    assert (ok["status"], ok["revision"], ok["content"]) == ("approved", 2, NEW)


def test_cli_review_queue_shows_the_revision(cfg: Path) -> None:
    ids = cli.create_accounts(cfg, ("acme",))

    async def setup(st: Any, config: Any) -> str:
        flt = load_filter(config.rules.content_filter_file)
        now = 1_700_000_000_000
        body = {"type": "notification", "name": "ship", "content": OLD}
        t = await review.submit_template(st, ids["acme"], body, now, config, flt)
        await review.decide_template(st, t.code, "reject", "wording", now)
        await review.edit_template(st, ids["acme"], t.code, {"content": NEW}, now + 1, config, flt)
        return t.code

    code = cli.in_store(cfg, setup)
    [row] = cli.ok(cfg, "template", "review")
    assert row["code"] == code
    assert row.get("revision") == 2, row


# ---------------------------------------------------------------- 4. the store contract


def _tpl(code: str = "T1", *, status: str = "rejected", revision: int = 1, aid: str = "acc_a",
         content: str = OLD, reviewed_at: int | None = sr.NOW) -> Template:  # fmt: skip
    return Template(code, aid, "notification", "n", content, "", False, status, "why",
                    sr.NOW, reviewed_at, revision, None)  # fmt: skip


def _fix(t: Template, **kw: Any) -> Template:
    """The correction of `t` as review.edit_template builds it (revision counted)."""
    base = {"content": NEW, "status": "pending", "reason": None, "reviewed_at": None,
            "revision": t.revision + 1, "updated_at": sr.NOW + 1}  # fmt: skip
    base.update(kw)
    return replace(t, **base)


async def test_store_edit_template_only_over_the_previous_revision(store: Store) -> None:
    await sr.funded(store)
    await store.create_account(sr.account("acc_b"))
    t = _tpl()
    await store.add_template(t)
    await store.add_template(_tpl("T2", status="approved"))
    await store.add_template(_tpl("T3", status="pending"))

    assert await store.edit_template(_fix(t, revision=1)) is False  # over revision 0
    assert await store.edit_template(_fix(t, revision=3)) is False  # skips revision 2
    assert await store.edit_template(_fix(t, account_id="acc_b")) is False  # not its account
    assert await store.get_template("T1") == t
    assert await store.edit_template(_fix(_tpl("T2", status="approved"))) is False
    assert await store.edit_template(_fix(_tpl("T3", status="pending"))) is False
    assert await store.edit_template(_fix(_tpl("T9"))) is False  # unknown

    first = _fix(t, status="rejected", reason="TEMPLATE_CONTENT_FILTERED: x")
    assert await store.edit_template(first) is True
    assert await store.get_template("T1") == first
    # A second correction made from revision 1 (read before the first landed): refused even
    # though the first left it rejected (by the automatic review).
    assert await store.edit_template(_fix(t, content="other ${order}")) is False
    assert await store.get_template("T1") == first
    # From revision 2: taken.
    second = _fix(first, content="third ${order}", updated_at=sr.NOW + 2)
    assert await store.edit_template(second) is True
    got = await store.get_template("T1")
    assert got is not None and (got.revision, got.content, got.updated_at) == (
        3, "third ${order}", sr.NOW + 2,
    )  # fmt: skip
    listed = {x.code: x for x in await store.list_templates(account_id="acc_a")}
    assert listed["T1"] == got


async def test_store_concurrent_edits_one_wins(store: Store) -> None:
    await sr.funded(store)
    t = _tpl()
    await store.add_template(t)
    results = await asyncio.gather(
        *(store.edit_template(_fix(t, content=f"v{i} ${{order}}")) for i in range(6))
    )
    assert sorted(results) == [False] * 5 + [True]
    got = await store.get_template("T1")
    assert got is not None and got.revision == 2
    assert got.content == f"v{results.index(True)} ${{order}}"


async def test_store_review_template_with_a_stale_revision_decides_nothing(store: Store) -> None:
    await sr.funded(store, amount=10_000)
    t = _tpl(status="approved", revision=2)
    await store.add_template(t)
    m = sr.message("m1", template="T1", kind="notification")
    rules = sr.billed(m, template_code="T1", template_revision=2)
    assert (await sr.send(store, m, rules=rules)).accepted
    # An operator who read revision 1 rejects: nothing decided, the queued message stays.
    out = await store.review_template("T1", "rejected", "late look", sr.NOW + 5, 1)
    assert out == t
    assert await store.get_template("T1") == t
    rec = await store.get_message("acc_a", "m1")
    assert rec is not None and rec.state == "queued"
    assert await sr.cash(store) == 10_000 - 100
    assert await store.review_template("T9", "approved", None, sr.NOW, 1) is None
    # The revision read: decided (and the queued message ends, refunded, as before).
    out = await store.review_template("T1", "rejected", "late look", sr.NOW + 6, 2)
    assert out is not None and (out.status, out.reason, out.reviewed_at, out.revision) == (
        "rejected", "late look", sr.NOW + 6, 2,
    )  # fmt: skip
    rec = await store.get_message("acc_a", "m1")
    assert rec is not None and rec.state != "queued"
    assert await sr.cash(store) == 10_000
    # No revision: decided whatever the revision.
    out = await store.review_template("T1", "approved", None, sr.NOW + 7)
    assert out is not None and out.status == "approved"


async def test_store_accept_refuses_a_stale_rendering_first(store: Store) -> None:
    """TEMPLATE_CHANGED before any other refusal, nothing left behind (message, charge,
    idempotency key, nonce): the API sends the same claim again after rendering again."""
    await sr.funded(store, amount=10_000)
    await store.add_key(sr.key("K1"), max_active=2)
    await store.add_template(_tpl(status="approved", revision=2))

    def signed(mids: tuple[str, ...], rev: int | None, sign: str = "Acme") -> AcceptBatch:
        msgs = tuple(
            sr.message(mid, to, template="T1", kind="notification", sign=sign)
            for mid, to in zip(mids, (sr.CN, sr.CN2), strict=False)
        )
        r = sr.billed(*msgs, template_code="T1", template_revision=rev, sign_name=sign)
        return AcceptBatch(
            "acc_a", msgs, "idem-1", IdempotencyRecord("h1", 202, b"resp"), sr.NOW + sr.DAY,
            key_id="K1", nonce="n1", nonce_expires_at=sr.NOW + 5 * sr.MIN,
            account_version=sr.NOW, rules=r,
        )  # fmt: skip

    for mids in (("m1",), ("m1", "m2")):  # SQLite: the one-recipient and the general statement
        stale = await store.accept(signed(mids, 1), sr.NOW)
        assert stale.refusal is not None and stale.refusal.code == "TEMPLATE_CHANGED", stale
        # Even an unapproved sign is refused as TEMPLATE_CHANGED first (it is ours).
        other = await store.accept(signed(mids, 1, sign="Nope"), sr.NOW)
        assert other.refusal is not None and other.refusal.code == "TEMPLATE_CHANGED"
    assert await sr.ids(store) == []
    assert await sr.cash(store) == 10_000
    assert await store.get_idempotency("acc_a", "idem-1", sr.NOW) is None
    ok = await store.accept(signed(("m1", "m2"), 2), sr.NOW)  # same nonce, same key
    assert ok.accepted, ok
    assert await sr.ids(store) == ["m1", "m2"]
    # A template corrected and rejected: the right revision, refused as not approved.
    await store.add_template(_tpl("T2", status="rejected", revision=4))
    m = sr.message("m3", template="T2", kind="notification")
    out = await sr.send(store, m, rules=sr.billed(m, template_code="T2", template_revision=4))
    assert out.refusal is not None and out.refusal.code == "TEMPLATE_NOT_APPROVED"
    out = await sr.send(store, m, rules=sr.billed(m, template_code="T2", template_revision=3))
    assert out.refusal is not None and out.refusal.code == "TEMPLATE_CHANGED"
    out = await sr.send(store, m, rules=sr.billed(m, template_code="T9", template_revision=1))
    assert out.refusal is not None and out.refusal.code == "TEMPLATE_NOT_FOUND"


async def test_store_edit_sign_only_when_rejected(store: Store) -> None:
    await sr.funded(store)
    await store.create_account(sr.account("acc_b"))

    def sign(name: str, status: str, aid: str = "acc_a") -> Sign:
        return Sign(aid, name, name.lower(), "company", "r", status, "why", None, sr.NOW, sr.NOW)

    for name, status in (("Globex", "rejected"), ("Hooli", "pending"), ("Initech", "approved")):
        await store.add_sign(sign(name, status))
    await store.add_sign(sign("Globex", "rejected", "acc_b"))

    def fix(s: Sign) -> Sign:
        return Sign(s.account_id, s.name, s.canonical, "trademark", "papers", "pending", None,
                    "flagged", s.created_at, None, sr.NOW + 9)  # fmt: skip

    assert await store.edit_sign(fix(sign("Hooli", "pending"))) is False
    assert await store.edit_sign(fix(sign("Initech", "approved"))) is False
    assert await store.edit_sign(fix(sign("Umbrella", "rejected"))) is False
    assert await store.edit_sign(fix(sign("Globex", "rejected"))) is True
    got = await store.get_sign("acc_a", "Globex")
    assert got == fix(sign("Globex", "rejected"))
    assert await store.edit_sign(fix(sign("Globex", "rejected"))) is False  # pending now
    # The other account's sign of the same name is untouched.
    assert await store.get_sign("acc_b", "Globex") == sign("Globex", "rejected", "acc_b")
    assert (await store.get_sign("acc_a", "Hooli")) == sign("Hooli", "pending")


# ---------------------------------------------------------------- signs through the native API


async def _reject_sign(api: ApiServer, creds: Creds, name: str) -> None:
    r = await api.admin(
        "POST", f"/admin/accounts/{creds.account_id}/signs/{quote(name)}/review",
        json={"decision": "reject", "reason": "no papers"},
    )  # fmt: skip
    assert (r.status, r.json["status"]) == (200, "rejected"), r.json


async def test_sign_correction(api_server: ApiServer, clock: Any) -> None:
    api = api_server
    now = int(clock.freeze(1_794_715_200) * 1000)
    creds = await api.create_account(raw_text=False)
    assert (
        await api.request("POST", "/v1/signs", creds=creds, json={"name": "Globex"})
    ).status == 201
    await _reject_sign(api, creds, "Globex")
    clock.advance(3)
    r = await api.request(
        "PATCH", "/v1/signs/Globex", creds=creds, json={"source": "trademark", "remark": "TM 123"}
    )
    assert r.status == 200, r.json
    assert r.json == {
        "name": "Globex", "source": "trademark", "remark": "TM 123", "status": "pending",
        "reason": None, "created_at": now, "reviewed_at": None, "updated_at": now + 3000,
    }  # fmt: skip
    got = await api.request("GET", "/v1/signs/Globex", creds=creds)
    assert got.json == r.json
    # Pending, approved (Acme): refused.
    again = await api.request("PATCH", "/v1/signs/Globex", creds=creds, json={"remark": "x"})
    _refused(again, 409, "SIGN_NOT_EDITABLE", "pending")
    acme = await api.request("PATCH", "/v1/signs/Acme", creds=creds, json={"remark": "x"})
    _refused(acme, 409, "SIGN_NOT_EDITABLE", "approved")
    # NFKC: the fullwidth spelling reaches the stored name.
    await _reject_sign(api, creds, "Globex")
    wide = await api.request(
        "PATCH", f"/v1/signs/{quote('Ｇｌｏｂｅｘ')}", creds=creds, json={"remark": "wide"}
    )
    assert (wide.status, wide.json["name"], wide.json["remark"]) == (200, "Globex", "wide")
    # The operator approves the correction; it sends.
    ok = await api.admin(
        "POST", f"/admin/accounts/{creds.account_id}/signs/Globex/review",
        json={"decision": "approve"},
    )  # fmt: skip
    assert ok.json["status"] == "approved"


@pytest.mark.parametrize(
    ("body", "code", "word"),
    [
        (b"{}", "MISSING_FIELD", "source"),
        (b"[]", "INVALID_REQUEST", "object"),
        (b'{"name": "Hooli"}', "UNKNOWN_FIELD", "name"),
        (b'{"status": "approved"}', "UNKNOWN_FIELD", "status"),
        (b'{"source": "rumour"}', "INVALID_FIELD", "source"),
        (b'{"source": 5}', "INVALID_FIELD", "source"),
        (b'{"source": ["company"]}', "INVALID_FIELD", "source"),
        (b'{"remark": 5}', "INVALID_FIELD", "remark"),
        ('{"remark": "' + "r" * 501 + '"}', "INVALID_FIELD", "remark"),
    ],
)
async def test_sign_correction_refusals(
    api_server: ApiServer, body: bytes | str, code: str, word: str
) -> None:
    api = api_server
    creds = await api.create_account(raw_text=False)
    assert (
        await api.request("POST", "/v1/signs", creds=creds, json={"name": "Globex"})
    ).status == 201
    await _reject_sign(api, creds, "Globex")
    raw = body.encode() if isinstance(body, str) else body
    r = await api.request("PATCH", "/v1/signs/Globex", creds=creds, body=raw)
    _refused(r, 400, code, word)
    got = await api.request("GET", "/v1/signs/Globex", creds=creds)
    assert (got.json["status"], got.json["updated_at"]) == ("rejected", None)


@pytest.mark.parametrize("source", [False, 0, [], ""])
async def test_sign_correction_falsy_wrong_source(api_server: ApiServer, source: Any) -> None:
    api = api_server
    creds = await api.create_account(raw_text=False)
    assert (
        await api.request("POST", "/v1/signs", creds=creds, json={"name": "Globex"})
    ).status == 201
    await _reject_sign(api, creds, "Globex")
    r = await api.request("PATCH", "/v1/signs/Globex", creds=creds, json={"source": source})
    _refused(r, 400, "INVALID_FIELD", "source")


async def test_sign_correction_after_another_account_took_the_name(api_server: ApiServer) -> None:
    api = api_server
    a = await api.create_account(raw_text=False)
    b = await api.create_account(raw_text=False)
    c = await api.create_account(raw_text=False)
    for creds in (a, b):
        r = await api.request("POST", "/v1/signs", creds=creds, json={"name": "Globex"})
        assert r.status == 201
    await _reject_sign(api, a, "Globex")
    ok = await api.admin(
        "POST", f"/admin/accounts/{b.account_id}/signs/Globex/review",
        json={"decision": "approve"},
    )  # fmt: skip
    assert ok.json["status"] == "approved"
    r = await api.request("PATCH", "/v1/signs/Globex", creds=a, json={"remark": "mine"})
    _refused(r, 409, "SIGN_NAME_TAKEN")
    got = await api.request("GET", "/v1/signs/Globex", creds=a)
    assert (got.json["status"], got.json["remark"]) == ("rejected", "")
    # Another account's sign name: not found for c; the owner's rejected one is not touched.
    nope = await api.request("PATCH", "/v1/signs/Globex", creds=c, json={"remark": "x"})
    _refused(nope, 404, "NOT_FOUND")
    # A name resembling another's approved sign: flagged again for the operator.
    assert (
        await api.request("POST", "/v1/signs", creds=c, json={"name": "Globex Co"})
    ).status == 201
    await _reject_sign(api, c, "Globex Co")
    fixed = await api.request("PATCH", "/v1/signs/Globex%20Co", creds=c, json={"remark": "x"})
    assert fixed.status == 200 and "flag" not in fixed.json
    ops = await api.admin("GET", "/admin/signs", query=f"account={c.account_id}")
    [row] = [x for x in ops.json["signs"] if x["name"] == "Globex Co"]
    assert row["status"] == "pending" and "'Globex'" in (row["flag"] or ""), row


# ---------------------------------------------------------------- 5. the Alibaba face


async def test_alibaba_template_corrections(face: Any) -> None:
    api = face.api
    creds = await api.create_account(raw_text=False)
    other = await api.create_account(raw_text=False)
    client = face.client(creds)
    now = api.ctx.now_ms()
    code = await face.template(creds, OLD, "notification", approve=False)
    await api.store.review_template(code, "rejected", "wording", now)

    body = await face.call(
        client,
        "modify_sms_template",
        models.ModifySmsTemplateRequest(
            template_code=code, template_type=1, template_name="ship2",
            template_content=NEW, remark="fixed",
        ),
    )  # fmt: skip
    assert (body.code, body.template_code) == ("OK", code)
    t = await api.store.get_template(code)
    assert t is not None
    assert (t.revision, t.status, t.name, t.content, t.remark) == (2, "pending", "ship2", NEW,
                                                                   "fixed")  # fmt: skip
    q = await face.call(
        client, "query_sms_template", models.QuerySmsTemplateRequest(template_code=code)
    )
    assert (q.template_status, q.template_content, q.reason) == (0, NEW, "")
    listed = await face.call(
        client, "query_sms_template_list", models.QuerySmsTemplateListRequest()
    )
    [row] = [x for x in listed.sms_template_list if x.template_code == code]
    assert (row.audit_status, row.template_content) == ("AUDIT_STATE_INIT", NEW)

    # Pending now: refused; UpdateSmsTemplate after the operator rejects it again.
    refused = await face.call(
        client, "update_sms_template",
        models.UpdateSmsTemplateRequest(template_code=code, template_content=OLD),
    )  # fmt: skip
    assert refused.code == "isv.SMS_TEMPLATE_ILLEGAL", refused.message
    await api.store.review_template(code, "rejected", "again", now)
    upd = await face.call(
        client, "update_sms_template",
        models.UpdateSmsTemplateRequest(
            template_code=code, template_name="ship3", template_content=OLD, template_type=1,
        ),
    )  # fmt: skip
    assert (upd.code, upd.template_code, upd.template_name) == ("OK", code, "ship3")
    t = await api.store.get_template(code)
    assert t is not None and (t.revision, t.content, t.status) == (3, OLD, "pending")

    # Unknown, another account's, approved: refused, nothing changed.
    approved = await face.template(creds, NEW, "notification")
    theirs = await face.template(other, NEW, "notification", approve=False)
    await api.store.review_template(theirs, "rejected", "x", now)
    for action, req in (
        ("modify_sms_template", models.ModifySmsTemplateRequest),
        ("update_sms_template", models.UpdateSmsTemplateRequest),
    ):
        for target in ("SMS_000000001", theirs, approved):
            out = await face.call(client, action, req(template_code=target, template_content=OLD))
            assert out.code == "isv.SMS_TEMPLATE_ILLEGAL", (action, target, out.message)
    assert (await api.store.get_template(theirs)).revision == 1  # type: ignore[union-attr]
    assert (await api.store.get_template(approved)).revision == 1  # type: ignore[union-attr]


async def test_alibaba_sign_corrections(face: Any) -> None:
    api = face.api
    creds = await api.create_account(raw_text=False)
    client = face.client(creds)
    now = api.ctx.now_ms()
    for name in ("Globex", "Hooli"):
        added = await face.call(
            client, "add_sms_sign", models.AddSmsSignRequest(sign_name=name, sign_source=0)
        )
        assert added.code == "OK"
        await api.store.review_sign(creds.account_id, name, "rejected", "no papers", now)

    body = await face.call(
        client, "modify_sms_sign",
        models.ModifySmsSignRequest(sign_name="Globex", sign_source=5, remark="TM 1"),
    )  # fmt: skip
    assert (body.code, body.sign_name) == ("OK", "Globex")
    s = await api.store.get_sign(creds.account_id, "Globex")
    assert s is not None and (s.status, s.source, s.remark, s.reason) == (
        "pending", "trademark", "TM 1", None,
    )  # fmt: skip
    q = await face.call(client, "query_sms_sign", models.QuerySmsSignRequest(sign_name="Globex"))
    assert q.sign_status == 0
    # UpdateSmsSign with the fullwidth spelling and only the papers (ids not kept).
    upd = await face.call(
        client, "update_sms_sign",
        models.UpdateSmsSignRequest(sign_name="Ｈｏｏｌｉ", qualification_id=7),
    )  # fmt: skip
    assert (upd.code, upd.sign_name) == ("OK", "Hooli")
    s = await api.store.get_sign(creds.account_id, "Hooli")
    assert s is not None and (s.status, s.source) == ("pending", "company")

    for action, req in (
        ("modify_sms_sign", models.ModifySmsSignRequest),
        ("update_sms_sign", models.UpdateSmsSignRequest),
    ):
        for name in ("Umbrella", "Acme", "Globex"):  # unknown, approved, pending
            out = await face.call(client, action, req(sign_name=name, remark="x"))
            assert out.code == "isv.SMS_SIGNATURE_ILLEGAL", (action, name, out.message)
    acme = await api.store.get_sign(creds.account_id, "Acme")
    assert acme is not None and acme.status == "approved" and acme.updated_at is None


async def test_alibaba_corrections_bad_parameters(face: Any) -> None:
    api = face.api
    creds = await api.create_account(raw_text=False)
    client = face.client(creds)
    now = api.ctx.now_ms()
    code = await face.template(creds, OLD, "notification", approve=False)
    await api.store.review_template(code, "rejected", "wording", now)
    bad_type = await face.call(
        client, "modify_sms_template",
        models.ModifySmsTemplateRequest(template_code=code, template_type=7),
    )  # fmt: skip
    assert bad_type.code == "isv.INVALID_PARAMETERS" and "TemplateType" in bad_type.message
    long_name = await face.call(
        client, "modify_sms_template",
        models.ModifySmsTemplateRequest(template_code=code, template_name="n" * 65),
    )  # fmt: skip
    assert long_name.code == "isv.TEMPLATE_OVER_LIMIT", long_name.message
    t = await api.store.get_template(code)
    assert t is not None and (t.revision, t.status) == (1, "rejected")
    added = await face.call(
        client, "add_sms_sign", models.AddSmsSignRequest(sign_name="Globex", sign_source=0)
    )
    assert added.code == "OK"
    await api.store.review_sign(creds.account_id, "Globex", "rejected", "no", now)
    bad_source = await face.call(
        client, "modify_sms_sign", models.ModifySmsSignRequest(sign_name="Globex", sign_source=9)
    )
    assert bad_source.code == "isv.INVALID_PARAMETERS" and "SignSource" in bad_source.message
    s = await api.store.get_sign(creds.account_id, "Globex")
    assert s is not None and s.status == "rejected"


@pytest.mark.parametrize("field", ["content", "name", "type", "remark", "allow_urls"])
async def test_a_null_field_in_a_template_correction_is_refused(
    api_server: ApiServer, field: str
) -> None:
    """Fixed after the review's doubt: `{"content": null}` read as "keep it" and still counted a
    revision and restarted the review. Left out keeps a field; null is refused, nothing
    changes."""
    api = api_server
    creds = await api.create_account(raw_text=False)
    code = await _rejected(api, creds)
    r = await _patch(api, creds, code, {field: None})
    _refused(r, 400, "INVALID_FIELD", field)
    got = await _get(api, creds, code)
    assert (got["status"], got["revision"], got["updated_at"]) == ("rejected", 1, None)


@pytest.mark.parametrize("field", ["source", "remark"])
async def test_a_null_field_in_a_sign_correction_is_refused(
    api_server: ApiServer, field: str
) -> None:
    api = api_server
    creds = await api.create_account(raw_text=False)
    assert (
        await api.request("POST", "/v1/signs", creds=creds, json={"name": "Globex"})
    ).status == 201
    await _reject_sign(api, creds, "Globex")
    r = await api.request("PATCH", "/v1/signs/Globex", creds=creds, json={field: None})
    _refused(r, 400, "INVALID_FIELD", field)
    got = await api.request("GET", "/v1/signs/Globex", creds=creds)
    assert (got.json["status"], got.json["updated_at"]) == ("rejected", None)


async def test_an_international_template_keeps_its_flag_natively(api_server: ApiServer) -> None:
    """templates.international (the Alibaba face's type 3) through the native API: submitted,
    read back, corrected; a non-boolean refused."""
    api = api_server
    creds = await api.create_account(raw_text=False)
    r = await api.request(
        "POST", "/v1/templates", creds=creds,
        json={"type": "notification", "name": "intl", "content": OLD, "international": True},
    )  # fmt: skip
    assert r.status == 201 and r.json["international"] is True, r.json
    code = r.json["code"]
    assert (await _get(api, creds, code))["international"] is True
    bad = await api.request(
        "POST", "/v1/templates", creds=creds,
        json={"type": "notification", "name": "x", "content": OLD, "international": "yes"},
    )  # fmt: skip
    _refused(bad, 400, "INVALID_FIELD", "international")
    await _decide(api, code, "reject", "wrong region")
    fixed = await _patch(api, creds, code, {"international": False})
    assert fixed.status == 200 and fixed.json["international"] is False, fixed.json
    assert (await _get(api, creds, code))["revision"] == 2
