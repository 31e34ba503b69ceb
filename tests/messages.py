"""Message rows for store tests: one GSM-7 part each, as the accept path would hand them over."""

from __future__ import annotations

from typing import Any

from bridge.store.models import NewMessage, NewSegment


def one_part(mid: str, account: str, number: str, at: int, **fields: Any) -> NewMessage:
    """A one-part message `mid` of `account` to `number`, accepted at `at`; `fields` set the
    rest (sign_name, client_ref, ...)."""
    return NewMessage(
        id=mid,
        account_id=account,
        batch_id="b_" + mid,
        recipient=number,
        encoding="gsm7",
        data_coding=0,
        billable_units=1,
        segments=(NewSegment(1, 1, 0, mid.encode(), b""),),
        accepted_at=at,
        text=f"text of {mid}",
        **fields,
    )
