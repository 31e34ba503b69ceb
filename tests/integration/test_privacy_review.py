"""Privacy review: what of an erased recipient survives `erase_recipient` / `close_account`.

Every table of both engines was dumped after an erasure and after a close (messages, segments,
mo_inbox, mo_parts, pending_receipts, webhook_outbox pending and dead, idempotency, optouts,
ledger, bills, daily counts): the only residues are the ones below. (mo_parts, reported here
then: the waiting parts of the number's long replies go with the erasure since session 37,
tested in test_session37_erasure_mo_parts.py.)

1. test_erasure_drops_client_ref_from_stored_idempotent_answers (both engines) and
   test_idempotent_replay_after_erasure_does_not_return_client_ref (HTTP):
   erasure nulls `messages.client_ref` (the customer's own reference, often an order or user id
   that names the person) but the stored answer of the idempotent send keeps it next to the
   masked number for the key's hours: a replay of the request hands the erased message's
   client_ref back, linking the message id to the person again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge import jsonio  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.store.models import AcceptBatch, AcceptOutcome, IdempotencyRecord  # noqa: E402
from tests.integration.test_store import DAY, NOW, account, message  # noqa: E402

engine = engines.engine
store = engines.store
CN, OTHER = "+8613800138000", "+8613900139000"
MASK = "+86***********"


def v1_answer(*entries: tuple[str, str, str]) -> bytes:
    """The answer POST /v1/messages stores for its Idempotency-Key (bridge/api/v1.py)."""
    return jsonio.dumps(
        {
            "batch_id": "b_1",
            "count": len(entries),
            "messages": [
                {"id": mid, "to": to, "client_ref": ref, "status": "queued", "encoding": "gsm7",
                 "segments": 1, "billable_units": 1}
                for mid, to, ref in entries
            ],
        }
    )  # fmt: skip


async def test_erasure_drops_client_ref_from_stored_idempotent_answers(store: Store) -> None:
    await store.create_account(account())
    msgs = (message("m1", recipient=CN), message("m2", recipient=OTHER))
    answer = v1_answer(("m1", CN, "ref-m1"), ("m2", OTHER, "ref-m2"))
    out = await store.accept(
        AcceptBatch("acc_a", msgs, "k1", IdempotencyRecord("h", 202, answer), NOW + DAY), NOW
    )
    assert out == AcceptOutcome(accepted=True)
    assert await store.erase_recipient("acc_a", CN, MASK, NOW + 1) == 1
    rec = await store.get_message("acc_a", "m1")
    assert rec is not None and rec.client_ref is None  # the record drops it...
    kept = await store.get_idempotency("acc_a", "k1", NOW + 2)
    assert kept is not None and kept.status_code == 202
    entries = {e["id"]: e for e in json.loads(kept.response)["messages"]}
    assert entries["m1"]["to"] == MASK
    # ...the stored answer must too (the other recipient's entry is untouched).
    assert entries["m1"]["client_ref"] is None, kept.response
    assert b"ref-m1" not in kept.response
    assert entries["m2"] == {**entries["m2"], "to": OTHER, "client_ref": "ref-m2"}


async def test_idempotent_replay_after_erasure_does_not_return_client_ref(
    api_server, make_account
) -> None:
    creds = await make_account()
    body = {"to": CN, "text": "your parcel 7731 is at the door", "client_ref": "alice-order-7731"}
    sent = await api_server.send(creds, body, key="idem-privacy-1")
    assert sent.status == 202
    mid = sent.json["messages"][0]["id"]
    r = await api_server.request("POST", f"/v1/recipients/{CN}/erase", creds=creds)
    assert r.status == 200 and r.json["messages_erased"] == 1
    got = await api_server.request("GET", f"/v1/messages/{mid}", creds=creds)
    assert got.json["client_ref"] is None and got.json["to"] == MASK
    again = await api_server.send(creds, body, key="idem-privacy-1")
    assert again.status == 202 and again.headers.get("Idempotent-Replayed") == "true"
    replayed = again.json["messages"][0]
    assert replayed["id"] == mid and replayed["to"] == MASK
    assert replayed["client_ref"] is None, replayed
