"""Alibaba-shaped push bodies (SmsReport, SmsUp): exact fields, national numbers, local times."""

from __future__ import annotations

from bridge.compat.aliyun_reports import local_time, phone, sequence_id, sms_report, sms_up
from bridge.store.models import MessageRecord, MoMessage

T0 = 1_795_930_800_000  # 2026-11-29T05:40:00Z = 13:40:00 in Asia/Shanghai


def _message(**kw: object) -> MessageRecord:
    base: dict[str, object] = dict(
        id="msg_01", account_id="acc_1", batch_id="bat_01", client_ref="order-7",
        recipient="+8613800138000", sender=None, sign_name="Acme", template="SMS_1",
        text="x", encoding="gsm7", data_coding=0, segments=2, billable_units=1,
        segments_sent=2, segments_delivered=2, segments_failed=0, state="delivered",
        error_code=None, error_text=None, smsc="sim", accepted_at=T0, scheduled_at=None,
        expires_at=None, sent_at=T0 + 1000, done_at=T0 + 5000,
    )  # fmt: skip
    base.update(kw)
    return MessageRecord(**base)  # type: ignore[arg-type]


def test_a_delivered_report_has_exactly_the_cloud_fields() -> None:
    r = sms_report(_message(), "Asia/Shanghai")
    assert r == {
        "phone_number": "13800138000",
        "send_time": "2026-11-29 13:40:01",
        "report_time": "2026-11-29 13:40:05",
        "success": True,
        "err_code": "DELIVERED",
        "err_msg": "用户接收成功",
        "sms_size": "2",
        "biz_id": "bat_01",
        "out_id": "order-7",
    }


def test_a_failed_report_carries_the_error_and_an_empty_out_id() -> None:
    r = sms_report(
        _message(state="failed", error_code="UNDELIV", client_ref=None, recipient="+447700900123"),
        "UTC",
    )
    assert (r["success"], r["err_code"], r["err_msg"], r["out_id"]) == (
        False, "UNDELIV", "用户接收失败", ""
    )  # fmt: skip
    assert r["phone_number"] == "447700900123"  # international: digits with the country code
    assert r["send_time"] == "2026-11-29 05:40:01"


def test_an_inbound_reply_in_the_smsup_shape() -> None:
    mo = MoMessage("mo_1", "acc_1", "sim", "+8613800138000", "1069000", "TD", T0)
    assert sms_up(mo, "Asia/Shanghai", sign_name="Acme") == {
        "phone_number": "13800138000",
        "send_time": "2026-11-29 13:40:00",
        "content": "TD",
        "sign_name": "Acme",
        "dest_code": "1069000",
        "sequence_id": sequence_id("mo_1"),
    }


def test_sequence_ids_are_per_mo_stable_and_json_safe() -> None:
    ids = [f"mo_{i:024x}" for i in range(5000)]
    seqs = [sequence_id(i) for i in ids]
    assert len(set(seqs)) == len(ids)  # two replies in one millisecond no longer share one
    assert seqs == [sequence_id(i) for i in ids]  # the same in every push
    assert all(0 <= s < 2**53 for s in seqs)
    a = MoMessage("mo_a", "acc_1", "sim", "+8613800138000", "1069000", "x", T0)
    b = MoMessage("mo_b", "acc_1", "sim", "+8613800138001", "1069000", "y", T0)
    assert sms_up(a, "UTC")["sequence_id"] != sms_up(b, "UTC")["sequence_id"]


def test_helpers() -> None:
    assert local_time(None, "UTC") is None
    assert phone("+8613800138000", "+86") == "13800138000"
    assert phone("+85291234567", "+86") == "85291234567"
