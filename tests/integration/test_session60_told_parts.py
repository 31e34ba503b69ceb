"""Session 60: a part's plain acceptance told to its waiter by its fields.

`SmppProtocol.submit_told` (what `OnePart` submits with, one a part sent): the read of an
ESME_ROK submit_sm_resp calls `waiter.accepted(message_id, rtt_s)`, where `_resolve` built a
`SubmitResult`, asked the waiter's `done()` and handed it to `set_result`, which took it apart
again in `OnePart._answered`. Every other answer (an error status, a time-out, the connection's
end), and any answer while `on_submit_result` is set, still reaches the waiter through
`set_result` as before. These check that over real TCP: the dispatcher's messages of one and
several parts recorded with no `SubmitResult` of the protocol built and no `_resolve` for an
acceptance (both used on the tree before), the other answers the old way, and the sent part's
key (`dispatcher._sent`, its usual id keyed inline since session 60) against
`normalize_resp_id` on seeded ids and rules.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import time
from typing import Any

import pytest

from bridge.pipeline import dispatcher as dispatcher_module
from bridge.smpp import constants as C
from bridge.smpp import protocol
from bridge.smpp.codec import Bind, ShortMessage
from bridge.smpp.connector import SubmitOutcome
from bridge.smpp.msgid import IdBase, MsgIdRule, normalize_resp_id
from bridge.smpp.protocol import NO_STATUS, SmppProtocol, SubmitResult, open_bind
from bridge.smpp.session import BindMode, BindSession
from tests.integration.test_session57_quick_send import Store, dispatcher, message
from tests.integration.test_smpp_connector import (
    PASSWORD,
    FakeSmsc,
    eventually,
    running,
    smsc,  # noqa: F401 (the fixture)
    smsc_cfg,
)


async def test_accepted_parts_are_told_without_a_submit_result(
    smsc: FakeSmsc,  # noqa: F811 (the fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Messages of one, two and three parts on a window of two (later parts started from the
    answer before them, first parts granted from the line): every part recorded sent with its
    id, and the protocol neither built a `SubmitResult` nor ran `_resolve` for any of them."""
    resolved: list[Any] = []
    real_resolve = SmppProtocol._resolve

    def counted(self: SmppProtocol, *args: Any) -> None:
        resolved.append(args)
        real_resolve(self, *args)

    def refused(*_a: Any) -> SubmitResult:
        raise AssertionError("a SubmitResult built for an acceptance")

    monkeypatch.setattr(SmppProtocol, "_resolve", counted)
    monkeypatch.setattr(protocol, "_submit_result", refused)
    cfg = smsc_cfg(smsc.port, window=2)
    async with running(cfg) as conn:
        assert await conn.wait_up(30.0)
        msgs = [message("a", 3), message("b"), message("c", 2), message("d"), message("e", 3)]
        store = Store(msgs)
        d = dispatcher(store, conn, cfg, windows=5)
        runner = asyncio.create_task(d.run())
        await eventually(lambda: len(store.results) == 10 and not d.inflight)
        await d.stop(1)
        runner.cancel()
        assert not d._tasks and conn._active == 0
    assert not resolved
    sent = {sm[-3:].decode(): seq for sm, seq in zip(smsc.submits(), _seqs(smsc), strict=True)}
    got = sorted((r.message_id, r.seq, r.outcome, r.smsc_msg_id_raw) for r in store.results)
    want = sorted((k[0], int(k[2]), "sent", f"m{seq}") for k, seq in sent.items())
    assert got == want
    for r in store.results:
        assert r.smsc_msg_id == normalize_resp_id(r.smsc_msg_id_raw or "", MsgIdRule())
        assert r.sent_at and r.sent_at <= r.at


def _seqs(fake: FakeSmsc) -> list[int]:
    return [pdu.seq for _conn, pdu in fake.log if pdu.command_id == C.SUBMIT_SM]


async def test_other_answers_still_take_set_result(
    smsc: FakeSmsc,  # noqa: F811 (the fixture)
) -> None:
    """`submit_told`'s waiter: an acceptance told (`accepted`), an error status, a time-out
    and an acceptance while `on_submit_result` is set given as `SubmitResult`s to
    `set_result`, after a `done()` (what `_resolve` asks), as `submit_to`'s waiter is."""
    statuses = iter([0, C.ESME_RTHROTTLED, 0, None])
    smsc.on_submit = lambda conn, pdu: next(statuses)
    session = BindSession(
        Bind("esme", PASSWORD), BindMode.TRANSCEIVER, window=10, response_timeout_s=0.3,
        enquire_link_s=30,
    )  # fmt: skip
    proto = await open_bind("127.0.0.1", smsc.port, session, None)
    calls: list[tuple[str, Any]] = []
    told = asyncio.Event()

    class Waiter:
        ctx = contextvars.copy_context()  # `accepted` is called in it (session 61)

        def done(self) -> bool:
            calls.append(("done", None))
            return False

        def cancelled(self) -> bool:
            return False

        def set_result(self, res: SubmitResult) -> None:
            calls.append(("set_result", (res.status, res.message_id, res.error)))
            told.set()

        def accepted(self, message_id: str, rtt_s: float) -> None:
            assert 0 < rtt_s < 5
            calls.append(("accepted", message_id))
            told.set()

    seen: list[SubmitResult] = []
    part = ShortMessage(source_addr="SRC", destination_addr="861380013800", short_message=b"a")
    try:
        await asyncio.wait_for(proto.wait_bound(), 5)
        for k in range(4):
            if k == 2:
                proto.on_submit_result = seen.append
            told.clear()
            calls.clear()
            t0 = time.monotonic()
            proto.submit_told(part, Waiter(), ("ctx", k))
            await asyncio.wait_for(told.wait(), 5)
            mid = f"m{_seqs(smsc)[-1]}"
            want: list[tuple[str, Any]] = [
                [("accepted", mid)],
                [("done", None), ("set_result", (C.ESME_RTHROTTLED, "", None))],
                [("done", None), ("set_result", (0, mid, None))],
                [("done", None), ("set_result", (NO_STATUS, "", "TIMEOUT"))],
            ][k]
            assert calls == want, k
            if k == 3:
                assert time.monotonic() - t0 >= 0.25  # the response time-out's
        # `on_submit_result` told of both answers after it was set.
        assert [(r.status, r.message_id) for r in seen] == [(0, f"m{_seqs(smsc)[2]}"), (-1, "")]
    finally:
        proto.abort("test over")
        await smsc.kill()


def test_sent_part_key_matches_normalize_resp_id() -> None:
    """`_sent` keys the usual id inline; any id, in any base and rule, keys as
    `normalize_resp_id` does (a planted `lstrip` without its `or "0"`, the case rule read
    the other way or a hex base taken as a string differ here)."""
    rnd = random.Random(60)
    alphabet = "0123456789abcdefABCDEFxyzXYZ _-.\x00é١"
    loop = asyncio.new_event_loop()
    try:
        for _ in range(20_000):
            raw = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12)))
            if rnd.random() < 0.3:
                raw = "0" * rnd.randint(1, 4) + raw
            rule = MsgIdRule(
                resp_base=rnd.choice(list(IdBase)),
                receipt_base=rnd.choice(list(IdBase)),
                case_insensitive=rnd.random() < 0.5,
                strip_leading_zeros=rnd.random() < 0.5,
            )
            out = SubmitOutcome(0, "ok", 0, "ESME_ROK", raw or None, 0.0)
            got = dispatcher_module._sent("m", 1, "t1", out, rule, 1_000, loop)
            assert got.smsc_msg_id == normalize_resp_id(raw, rule), (raw, rule)
            assert got.smsc_msg_id_raw == raw
    finally:
        loop.close()
