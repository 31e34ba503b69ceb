"""QuerySmsTemplateList and QuerySmsSignList through Alibaba's own SDK: an account's templates and
sign names a page at a time, with the list calls' status words and type numbers."""

from __future__ import annotations

import pytest
from alibabacloud_dysmsapi20170525 import models

from tests.integration import test_aliyun_api as base
from tests.integration.test_aliyun_api import NOTIFY_TEXT, VERIFY_TEXT, Face

face = base.face


async def test_templates_are_listed_a_page_at_a_time(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    other = await face.api.create_account(raw_text=False)
    verify = await face.template(creds, VERIFY_TEXT)
    notify = await face.template(creds, NOTIFY_TEXT, "notification", approve=False)
    await face.api.store.review_template(
        notify, "rejected", "unclear wording", face.api.ctx.now_ms()
    )
    face.clock.advance(1)
    pending = await face.template(creds, VERIFY_TEXT + " ", approve=False)
    await face.template(other, VERIFY_TEXT)  # not this account's
    client = face.client(creds)

    body = await face.call(client, "query_sms_template_list", models.QuerySmsTemplateListRequest())
    assert (body.code, body.total_count, body.current_page, body.page_size) == ("OK", 3, 1, 10)
    rows = {t.template_code: t for t in body.sms_template_list}
    assert set(rows) == {verify, notify, pending}
    assert (rows[verify].audit_status, rows[verify].template_type) == ("AUDIT_STATE_PASS", 2)
    assert rows[verify].outer_template_type == 0
    assert rows[verify].template_content == VERIFY_TEXT
    assert rows[notify].audit_status == "AUDIT_STATE_NOT_PASS"
    assert (rows[notify].template_type, rows[notify].outer_template_type) == (0, 1)
    assert rows[notify].reason.reject_info == "unclear wording"
    assert rows[notify].reason.reject_date
    assert rows[pending].audit_status == "AUDIT_STATE_INIT"
    assert (rows[pending].template_type, rows[pending].outer_template_type) == (2, 0)

    second = await face.call(
        client,
        "query_sms_template_list",
        models.QuerySmsTemplateListRequest(page_index=2, page_size=2),
    )
    assert (second.total_count, second.current_page, second.page_size) == (3, 2, 2)
    assert [t.template_code for t in second.sms_template_list] == [pending]  # oldest first


async def test_signs_are_listed(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)  # with the approved "Acme"
    client = face.client(creds)
    added = await face.call(
        client, "add_sms_sign", models.AddSmsSignRequest(sign_name="Globex", sign_source=0)
    )
    assert added.code == "OK"
    body = await face.call(client, "query_sms_sign_list", models.QuerySmsSignListRequest())
    assert body.code == "OK" and body.total_count == 2
    got = {s.sign_name: s.audit_status for s in body.sms_sign_list}
    assert got == {"Acme": "AUDIT_STATE_PASS", "Globex": "AUDIT_STATE_INIT"}


@pytest.mark.parametrize("size", [0, 51])
async def test_a_bad_page_size_is_refused_by_name(face: Face, size: int) -> None:
    creds = await face.api.create_account(raw_text=False)
    body = await face.call(
        face.client(creds), "query_sms_sign_list", models.QuerySmsSignListRequest(page_size=size)
    )
    assert body.code == "isv.INVALID_PARAMETERS" and "PageSize" in body.message


async def test_delete_sms_template_and_sign(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    code = await face.template(creds, VERIFY_TEXT)
    client = face.client(creds)
    added = await face.call(
        client, "add_sms_sign", models.AddSmsSignRequest(sign_name="Globex", sign_source=0)
    )
    assert added.code == "OK"

    body = await face.call(
        client, "delete_sms_template", models.DeleteSmsTemplateRequest(template_code=code)
    )
    assert (body.code, body.template_code) == ("OK", code)
    assert await face.api.store.get_template(code) is None
    again = await face.call(
        client, "delete_sms_template", models.DeleteSmsTemplateRequest(template_code=code)
    )
    assert again.code == "isv.SMS_TEMPLATE_ILLEGAL"

    body = await face.call(
        client, "delete_sms_sign", models.DeleteSmsSignRequest(sign_name="Globex")
    )
    assert (body.code, body.sign_name) == ("OK", "Globex")
    listed = await face.call(client, "query_sms_sign_list", models.QuerySmsSignListRequest())
    assert [s.sign_name for s in listed.sms_sign_list] == ["Acme"]
    again = await face.call(
        client, "delete_sms_sign", models.DeleteSmsSignRequest(sign_name="Globex")
    )
    assert again.code != "OK"


async def test_another_accounts_template_is_not_deleted(face: Face) -> None:
    owner = await face.api.create_account(raw_text=False)
    other = await face.api.create_account(raw_text=False)
    code = await face.template(owner, VERIFY_TEXT)
    body = await face.call(
        face.client(other),
        "delete_sms_template",
        models.DeleteSmsTemplateRequest(template_code=code),
    )
    assert body.code == "isv.SMS_TEMPLATE_ILLEGAL"
    assert await face.api.store.get_template(code) is not None
