"""Session 51: the frozen dataclasses a send builds (SendRequest, NewMessage, NewSegment,
AcceptBatch, Rules, AuthHeader) are called with their fields by position, not by keyword (a
class called with keywords gets them as a dict that its __init__ unpacks again: ~10,000
instructions of each NewMessage). Position depends on the classes' field order, which these
tests hold: a field added, moved or renamed fails here, and a send's values each land in their
own field.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import types
from pathlib import Path

from bridge.api.signing import AuthHeader
from bridge.api.submit import SendRequest, Submitter, parse_send_request
from bridge.app import make_router
from bridge.billing import tariff_from_config
from bridge.config import parse_config
from bridge.domain.admission import Facts, Pocket, Rules
from bridge.store.models import AcceptBatch, NewMessage, NewSegment
from bridge.store.sqlite_rules import one_facts_of

NOW = 1_780_000_000_000


def _names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_the_classes_built_by_position_keep_the_order_their_callers_write() -> None:
    # bridge/api/submit.py (SendRequest, NewSegment, NewMessage), bridge/api/v1.py
    # (AcceptBatch), bridge/api/sending.py (Rules) and bridge/api/signing.py (AuthHeader) pass
    # these in exactly this order, each value commented with its field.
    assert _names(AuthHeader) == ["app_key", "signed_headers", "signature"]
    assert _names(Rules) == [
        "sign_name", "more_signs", "template_code", "template_revision", "frequency",
        "charges", "billing", "tz",
    ]  # fmt: skip
    assert _names(SendRequest) == [
        "to", "text", "template", "params", "sign_name", "client_ref", "sender",
        "validity_minutes", "scheduled_at", "smart_encoding",
    ]  # fmt: skip
    assert _names(NewSegment) == ["seq", "total", "esm_class", "short_message", "tlvs"]
    assert _names(NewMessage) == [
        "id", "account_id", "batch_id", "recipient", "encoding", "data_coding",
        "billable_units", "segments", "accepted_at", "text", "client_ref", "sender",
        "sign_name", "template", "scheduled_at", "expires_at", "air_segments", "kind",
        "price_class", "wire",
    ]  # fmt: skip
    assert _names(AcceptBatch) == [
        "account_id", "messages", "idempotency_key", "idempotency", "idempotency_expires_at",
        "tps", "key_id", "nonce", "nonce_expires_at", "account_version", "rules",
    ]  # fmt: skip


def test_each_value_of_a_send_lands_in_its_own_field(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "server": {"port": 8080},
            "store": {"path": str(tmp_path / "b.db")},
            "security": {"master_key": base64.b64encode(os.urandom(32)).decode()},
            "smscs": [{"name": "a", "system_id": "s"}],
        },
        env={},
        base_dir=tmp_path,
    )
    account = types.SimpleNamespace(
        id="acc_51", raw_text=True, marketing=False, default_country="CN"
    )
    body = {
        "to": "+8613800000051",
        "text": "Your code is 5151.",
        "sign_name": "Acme",
        "client_ref": "ref-51",
        "sender": "10690051",
        "validity_minutes": 51,
        "scheduled_at": "2026-06-01T00:00:00Z",
        "smart_encoding": False,
    }
    req = parse_send_request(body, account, max_recipients=10, now_ms=NOW)  # type: ignore[arg-type]
    assert dataclasses.asdict(req) == {
        "to": ("+8613800000051",),
        "text": "Your code is 5151.",
        "template": None,
        "params": {},
        "sign_name": "Acme",
        "client_ref": "ref-51",
        "sender": "10690051",
        "validity_minutes": 51,
        "scheduled_at": 1_780_272_000_000,
        "smart_encoding": False,
    }
    tariff = tariff_from_config(cfg.billing.tariff, 0)
    ids = iter(["bat_51", "msg_51"])
    batch_id, messages, _ = Submitter(cfg, make_router(cfg)).build(
        req,
        account,  # type: ignore[arg-type]
        NOW,
        lambda prefix, now: next(ids),
        tariff=tariff,
    )
    assert batch_id == "bat_51"
    (m,) = messages
    (segment,) = m.segments
    assert (segment.seq, segment.total, segment.esm_class, segment.tlvs) == (1, 1, 0, b"")
    assert segment.short_message == "【Acme】Your code is 5151.".encode("utf-16-be")
    assert (m.id, m.account_id, m.batch_id, m.recipient) == (
        "msg_51", "acc_51", "bat_51", "+8613800000051",
    )  # fmt: skip
    assert (m.encoding, m.data_coding, m.billable_units, m.air_segments) == ("ucs2", 8, 1, 1)
    assert (m.accepted_at, m.text) == (NOW, "【Acme】Your code is 5151.")
    assert (m.client_ref, m.sender, m.sign_name, m.template) == (
        "ref-51", "10690051", "Acme", None,
    )  # fmt: skip
    assert (m.scheduled_at, m.expires_at) == (1_780_272_000_000, 1_780_272_000_000 + 51 * 60_000)
    assert (m.kind, m.price_class) == (None, "D")
    assert m.wire == Submitter(cfg, make_router(cfg))._wires["a"]
    # The two counts the one-part send above cannot tell apart (1 and 1): a 140-character GSM
    # text is one part on the air and three units under the tariff's 70/67 characters rule, so
    # billable_units and air_segments swapped in the call fail here.
    long = parse_send_request(
        {"to": "+8613800000052", "text": "x" * 140},
        account,  # type: ignore[arg-type]
        max_recipients=10,
        now_ms=NOW,
    )
    ids = iter(["bat_52", "msg_52"])
    _, (m,), charges = Submitter(cfg, make_router(cfg)).build(
        long,
        account,  # type: ignore[arg-type]
        NOW,
        lambda prefix, now: next(ids),
        tariff=tariff,
    )
    assert (m.encoding, len(m.segments), m.air_segments, m.billable_units) == ("gsm7", 1, 1, 3)
    assert [c.message_id for c in charges] == ["msg_52"]


def test_the_facts_of_a_one_recipient_send_are_built_by_position_into_their_fields() -> None:
    # Session 54: sqlite_rules.one_facts_of builds Facts by position (inside the write lock).
    assert _names(Facts) == [
        "recipients", "sign_status", "more_sign_status", "template_status", "opted_out",
        "blocked", "history", "day_count", "daily_quota", "account_kind",
        "low_balance_threshold", "low_warned", "pockets",
    ]  # fmt: skip
    row = (4, "approved", "pending", 1, 1, "[5, 6]", '[["cash", 700, null]]')
    facts = one_facts_of("+8613800000000", 9, "postpaid", 300, True, row, day_held=2)
    assert facts == Facts(
        recipients=("+8613800000000",),
        sign_status="approved",
        more_sign_status={},
        template_status="pending",
        opted_out=frozenset({"+8613800000000"}),
        blocked=frozenset({"+8613800000000"}),
        history={"+8613800000000": [5, 6]},
        day_count=6,
        daily_quota=9,
        account_kind="postpaid",
        low_balance_threshold=300,
        low_warned=True,
        pockets=[Pocket("cash", 700, None)],
    )
    quiet = one_facts_of("+8613800000000", 0, "prepaid", 0, False, (None,) * 5 + ("[]", None))
    assert (quiet.opted_out, quiet.blocked, quiet.history, quiet.day_count, quiet.pockets) == (
        frozenset(),
        frozenset(),
        {"+8613800000000": []},
        0,
        [],
    )
