"""Session 52 (h5): the frozen values of the claim and the roll-up, WorkSegment and WorkMessage
(built per claimed part and message by both engines' claims, bridge/store/sqlite.py `_work` and
postgres_pipeline), Summary and RowUpdate (bridge/domain/lifecycle.py, once or twice per
message rolled up) and FrequencyRule (bridge/rules.py, per send under a frequency limit), are
called with their fields by position, not by keyword (a class called with keywords gets them
as a dict that its __init__ unpacks again). Position depends on the classes' field order, which
these tests hold: a field added, moved or renamed fails here, and each value lands in its own
field.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import sys
from dataclasses import replace
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.config import parse_config  # noqa: E402
from bridge.domain import lifecycle as lc  # noqa: E402
from bridge.domain.admission import FrequencyRule  # noqa: E402
from bridge.domain.frequency import Limits  # noqa: E402
from bridge.rules import SendRules  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.store.models import NewSegment, Release, SubmitResult, WorkMessage, WorkSegment  # noqa: E402
from tests.integration.test_billing_edges import accept, make_account, msg  # noqa: E402

engine = engines.engine
store = engines.store

NOW = 1_700_000_000_000
LEASE = 300_000


def _names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_the_classes_built_by_position_keep_the_order_their_callers_write() -> None:
    assert _names(WorkSegment) == ["seq", "total", "esm_class", "short_message", "tlvs", "attempts"]
    assert _names(WorkMessage) == [
        "id", "account_id", "recipient", "sender", "data_coding", "expires_at", "attempts",
        "segments", "smsc", "unanswered", "wire",
    ]  # fmt: skip
    assert _names(lc.Summary) == ["state", "delivered", "failed", "error", "all_dispatched"]
    assert _names(lc.RowUpdate) == [
        "state", "delivered", "failed", "error", "sent_at", "done_at", "release", "became_sent",
        "became_final",
    ]  # fmt: skip
    assert _names(FrequencyRule) == [
        "kind", "sign", "template", "limits", "tz", "numbers", "signs",
    ]  # fmt: skip


async def test_each_value_of_a_claimed_message_lands_in_its_own_field(store: Store) -> None:
    await make_account(store)
    m = replace(
        msg("m_52", NOW),
        recipient="+8613800000052",
        sender="10690052",
        data_coding=8,
        billable_units=3,
        expires_at=NOW + 86_400_000,
        wire=7,
        segments=tuple(
            NewSegment(i, 3, 0x40, f"part {i}".encode(), b"\x04\x24") for i in (1, 2, 3)
        ),
    )
    await accept(store, m)
    assert [w.id for w in await store.claim("inst-1", 10, NOW, LEASE)] == ["m_52"]
    # Part 1 goes out on smscA; the rest are handed back twice, once for a submit unanswered.
    sent = SubmitResult("m_52", 1, "sent", "smscA", "a-1", "a-1", at=NOW)
    await store.record_submits([sent], [Release("m_52", NOW, True, True)], NOW, instance="inst-1")
    assert [w.id for w in await store.claim("inst-1", 10, NOW + 1, LEASE)] == ["m_52"]
    await store.record_submits(
        [], [Release("m_52", NOW + 1, True, False)], NOW + 1, instance="inst-1"
    )
    (w,) = await store.claim("inst-1", 10, NOW + 2, LEASE)
    assert w == WorkMessage(
        id="m_52",
        account_id="acc_a",
        recipient="+8613800000052",
        sender="10690052",
        data_coding=8,
        expires_at=NOW + 86_400_000,
        attempts=3,
        segments=tuple(
            WorkSegment(
                seq=i,
                total=3,
                esm_class=0x40,
                short_message=f"part {i}".encode(),
                tlvs=b"\x04\x24",
                attempts=0,
            )
            for i in (2, 3)
        ),
        smsc="smscA",
        unanswered=1,
        wire=7,
    )


def test_each_value_of_a_summary_and_a_row_update_lands_in_its_own_field() -> None:
    parts = [("delivered", None), ("undeliverable", "UNDELIV:042"), ("delivered", None)]
    parts.append(("queued", None))
    assert lc.summarize(parts, 4) == lc.Summary(
        state="queued", delivered=2, failed=1, error="UNDELIV:042", all_dispatched=False
    )

    # Three updates, as the three booleans and the two times can only differ pairwise across
    # them: each swap of two same-typed fields fails one of these.
    def update(parts: list[tuple[str, str | None]], old: str, q: str, dispatched: bool) -> object:
        return lc.row_update(
            parts,
            old_state=old,
            q_state=q,
            old_delivered=0,
            old_failed=0,
            old_error=None,
            release_when_dispatched=dispatched,
            now=NOW,
        )

    parts = [("delivered", None), ("delivered", None), ("undeliverable", "UNDELIV:042")]
    assert update(parts, "queued", "claimed", True) == lc.RowUpdate(
        state="failed",
        delivered=2,
        failed=1,
        error="UNDELIV:042",
        sent_at=NOW,
        done_at=NOW,
        release=True,
        became_sent=False,
        became_final=True,
    )
    assert update([("sent", None)], "queued", "claimed", False) == lc.RowUpdate(
        "sent", 0, 0, None, NOW, None, False, True, False
    )
    assert update([("delivered", None)], "sent", "done", False) == lc.RowUpdate(
        "delivered", 1, 0, None, None, NOW, False, False, True
    )


def test_each_value_of_a_frequency_rule_lands_in_its_own_field(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "server": {"port": 8080},
            "store": {"path": str(tmp_path / "b.db")},
            "security": {"master_key": base64.b64encode(os.urandom(32)).decode()},
            "smscs": [{"name": "a", "system_id": "s"}],
            "rules": {
                "timezone": "Asia/Shanghai",
                "frequency": {
                    "exempt": ["+8613800000002"],
                    "notification": {"per_minute": 2, "per_hour": 3, "per_day": 4},
                },
            },
        },
        env={},
        base_dir=tmp_path,
    )
    rules = SendRules(cfg, store=None, content_filter=object())  # type: ignore[arg-type]
    numbers = ("+8613800000001", "+8613800000002", "+8613800000003")
    assert rules.frequency("notification", "Acme", "SMS_52", numbers) == FrequencyRule(
        kind="template",
        sign="Acme",
        template="SMS_52",
        limits=Limits(2, 3, 4),
        tz="Asia/Shanghai",
        numbers=("+8613800000001", "+8613800000003"),
    )
