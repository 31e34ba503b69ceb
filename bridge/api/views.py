"""Rendering of stored records as API JSON (pure): one place decides the public field names."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bridge.store.models import MessageRecord, MoMessage, SegmentRecord


def iso(ms: int | None) -> str | None:
    """ISO-8601 UTC with milliseconds and a Z, as the API speaks time."""
    if ms is None:
        return None
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def message_view(m: MessageRecord, *, with_parts: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": m.id,
        "batch_id": m.batch_id,
        "client_ref": m.client_ref,
        "to": m.recipient,
        "sender": m.sender,
        "sign_name": m.sign_name,
        "template": m.template,
        "text": m.text,
        "status": m.state,
        "error_code": m.error_code,
        "encoding": m.encoding,
        "data_coding": m.data_coding,
        "segments": m.segments,
        "billable_units": m.billable_units,
        "segments_sent": m.segments_sent,
        "segments_delivered": m.segments_delivered,
        "segments_failed": m.segments_failed,
        "smsc": m.smsc,
        "accepted_at": iso(m.accepted_at),
        "scheduled_at": iso(m.scheduled_at),
        "expires_at": iso(m.expires_at),
        "sent_at": iso(m.sent_at),
        "done_at": iso(m.done_at),
    }
    if with_parts:
        out["parts"] = [_part_view(s) for s in m.segment_rows]
    return out


def _part_view(s: SegmentRecord) -> dict[str, Any]:
    return {
        "seq": s.seq,
        "status": s.state,
        "smsc": s.smsc,
        "smsc_message_id": s.smsc_msg_id,
        "submitted_at": iso(s.submitted_at),
        "done_at": iso(s.done_at),
        "error_code": s.error_code,
        # Settled by another part's receipt (smscs[].receipts: one_per_message): which one.
        "receipt_inferred_from": s.receipt_inferred_from,
    }


def inferred_from(m: MessageRecord) -> int | None:
    """The part whose receipt gave the message's other parts their outcome, if one did."""
    sources = [s.receipt_inferred_from for s in m.segment_rows if s.receipt_inferred_from]
    return min(sources) if sources else None


def status_report(m: MessageRecord) -> dict[str, Any]:
    """The webhook body for one final status (the README's report fields). `final` is true here
    and false in the intermediate "sent" report (webhooks._sent_report): without it on the final
    ones, a receiver testing `if (!report.final)` took every final report for an intermediate."""
    return {
        "type": "message.status",
        "message_id": m.id,
        "batch_id": m.batch_id,
        "client_ref": m.client_ref,
        "to": m.recipient,
        "status": m.state,
        "success": m.state == "delivered",
        "final": True,
        "error_code": m.error_code,
        "error_text": m.error_text,
        "segments": m.segments,
        "segments_delivered": m.segments_delivered,
        "billable_units": m.billable_units,
        "accepted_at": iso(m.accepted_at),
        "submitted_at": iso(m.sent_at),
        "done_at": iso(m.done_at),
        "receipt_inferred_from": inferred_from(m),
    }


def mo_report(mo: MoMessage) -> dict[str, Any]:
    """The webhook body for one MO (report_format native), less its webhook_id; the admin API
    lists stored MOs with the same fields (api/admin_mo.py)."""
    return {
        "type": "message.inbound",
        "mo_id": mo.id,
        "from": mo.source,
        "to": mo.destination,
        "sign_name": mo.sign_name,  # of the message this replies to
        "text": mo.text,
        "smsc": mo.smsc,
        "received_at": iso(mo.received_at),
        # A long MO whose other parts never came, delivered with the ones that did (text joined
        # with " ... " at the gaps); false, with nulls, for every complete MO.
        "incomplete": mo.incomplete,
        "parts_total": mo.parts_total,
        "parts_received": None if mo.parts_received is None else list(mo.parts_received),
        # The text is the hex of the octets: a binary coding's data, or octets that are not
        # text in their coding (README, MO): "48656c6c6f" is not the digits sent.
        "text_hex": mo.text_hex,
    }
