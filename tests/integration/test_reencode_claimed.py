"""The dispatcher against a real store (both engines): a claimed message whose parts were encoded
for other wire options than its route's first SMSC has now (`messages.wire`: accepted by a
process still on the configuration before a reload) is encoded again before it leaves; one
stamped for the options in force, one without a stamp (accepted before schema 25) and one whose
earlier submit went unanswered (the SMSC may hold the old parts) leave as stored."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

import tests.store_engines as engines
from bridge.config import SmscConfig
from bridge.pipeline.dispatcher import Dispatcher
from bridge.smpp.codec import ShortMessage
from bridge.smpp.connector import SubmitOutcome
from bridge.smpp.router import Router
from bridge.store.base import Store
from bridge.store.models import NewMessage, NewSegment, Release
from bridge.text.split import EncodeOptions, encode_message, wire_code
from tests.connectors import BeforeFirst, Contexts, StandIn
from tests.e2e.harness import wait_until
from tests.integration.test_store import NOW, accept, account, claim_all, get, message

engine = engines.engine
store = engines.store

UNPACKED = EncodeOptions()
PACKED = EncodeOptions(packed_gsm=True)
LATER_PACKED = bytes.fromhex("ec30bd2c07")  # "later": 5 septets packed


class Recorder(StandIn):
    """Takes every part at once and keeps what it was given, by message id."""

    def __init__(self) -> None:
        super().__init__("smscA")
        self.got: dict[str, list[bytes]] = {}

    async def sending(
        self,
        parts: Sequence[ShortMessage],
        before_first: BeforeFirst,
        deadline: float | None,
        contexts: Contexts,
    ) -> list[SubmitOutcome]:
        assert contexts is not None
        mid = contexts[0][0]
        self.got[mid] = [p.short_message for p in parts]
        return [SubmitOutcome(i, "ok", 0, "ESME_ROK", f"{mid}-{i}") for i in range(len(parts))]


def later(mid: str, *, wire: int | None, stored: bytes = b"later") -> NewMessage:
    assert encode_message("later", UNPACKED, 0).parts[0].short_message == b"later"
    return replace(
        message(mid),
        text="later",
        segments=(NewSegment(1, 1, 0, stored, b""),),
        wire=wire,
    )


async def test_a_claimed_message_encoded_for_other_wire_options_is_encoded_again(
    store: Store,
) -> None:
    await store.create_account(account())
    # Its submit went unanswered once: the SMSC may have taken the unpacked part.
    await accept(store, later("unanswered", wire=wire_code(UNPACKED)))
    assert [w.id for w in await claim_all(store)] == ["unanswered"]
    await store.record_submits(
        [], [Release("unanswered", NOW, count_attempt=True, unanswered=True)], NOW
    )
    await accept(
        store,
        later("stale", wire=wire_code(UNPACKED)),  # an acceptor not reloaded yet
        later("stamped", wire=wire_code(PACKED), stored=b"as is"),  # trusted by its stamp
        later("unstamped", wire=None),  # before schema 25: the pass's business
    )
    conn = Recorder()
    cfg = SmscConfig(name="smscA", system_id="t", password="t", packed_gsm=True)
    d = Dispatcher(store, {"smscA": conn}, Router([], ["smscA"]), {"smscA": cfg}, instance="i1")
    task = asyncio.create_task(d.run())
    try:
        await wait_until(lambda: len(conn.got) == 4, 10)
    finally:
        await d.stop(2)
        task.cancel()
    assert conn.got == {
        "stale": [LATER_PACKED],
        "stamped": [b"as is"],
        "unstamped": [b"later"],
        "unanswered": [b"later"],
    }
    assert d.reencoded_claimed == 1
    stale = await get(store, "stale")
    assert [s.state for s in stale.segment_rows] == ["sent"]
