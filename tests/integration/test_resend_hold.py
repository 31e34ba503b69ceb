"""A part is not sent again, inside its own claim, after its message was held.

Session 12 made a hold (an opt-out, a disable, a deletion, an erasure) end a message that is on a
bind at its next claim. A throttle answer, or a transient error with retries left, is resent by
the connector within the same claim, and that resend went out: to a number that had just replied
STOP. The connector now asks the store (`message_held`) before each resend. Real daemons on the
built-in simulator, each engine (tests/store_engines.py; CI=1 needs PostgreSQL).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.smpp import constants as C  # noqa: E402
from bridge.smpp.codec import Pdu, encode  # noqa: E402
from tests.store_engines import EngineHandle  # noqa: E402

engine = engines.engine

UK = "+447700900123"


def _daemon_store(engine: EngineHandle) -> dict[str, Any]:
    if engine.name == "postgres":
        return {"engine": "postgres", "dsn": engine.location}
    return {"engine": "sqlite", "path": engine.location}


async def _balance(c: Any) -> int:
    _s, _h, data = await c.request("GET", "/v1/balance")
    return int(data["cash_micro"])


def throttle_the_second_submit(sim: Any) -> list[int]:
    """The simulator answers the second submit_sm to UK ESME_RTHROTTLED (the connector resends
    it within the claim); returns the sequence numbers of the submits to UK, as they come."""
    real = sim._on_submit
    to_uk: list[int] = []

    def on_submit(sess: Any, pdu: Any, out: list[bytes], now: float) -> None:
        if pdu.body.destination_addr.endswith(UK.lstrip("+")):
            to_uk.append(pdu.seq)
            if len(to_uk) == 2:
                sess.write(encode(Pdu(C.SUBMIT_SM_RESP, C.ESME_RTHROTTLED, pdu.seq)))
                return
        real(sess, pdu, out, now)

    sim._on_submit = on_submit
    return to_uk


@pytest.mark.parametrize(
    "answer",
    [C.ESME_RTHROTTLED, C.ESME_RSYSERR],
    ids=["throttled", "system-error"],
)
async def test_a_stop_between_two_attempts_of_a_part_stops_the_second(
    engine: EngineHandle, tmp_path: Path, answer: int
) -> None:
    """A 3-part message: part 1 accepted; the SMSC sits on part 2 while the recipient replies
    STOP, then answers it `answer`, which the connector retries inside the claim (a throttle at
    once, a system error after its back-off: max_transient_retries 3). The retry does not go
    out: the SMSC saw 2 submit_sm for the number; the message ends expired /
    RECIPIENT_OPTED_OUT with 2/3 of its charge refunded. Before the check, a third submit_sm
    reached the number after its STOP, and the message was delivered."""
    from bridge.app import Daemon
    from tests.e2e.harness import client_for, create_account, final_status, make_config, wait_until

    cfg = make_config(
        tmp_path,
        store=_daemon_store(engine),
        smscs=[{"max_transient_retries": 3, "response_timeout_s": 30}],
    )
    d = Daemon(cfg)
    await d.start()
    sim = d.sim
    real = sim._on_submit
    held: list[tuple[Any, Any]] = []
    to_uk: list[int] = []

    def on_submit(sess: Any, pdu: Any, out: list[bytes], now: float) -> None:
        if pdu.body.destination_addr.endswith(UK.lstrip("+")):
            to_uk.append(pdu.seq)
            if len(to_uk) == 2:  # part 2: the SMSC sits on it
                held.append((sess, pdu))
                return
        real(sess, pdu, out, now)

    sim._on_submit = on_submit
    try:
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        creds = await create_account(d, "stopper")
        async with client_for(d.http_port, creds) as c:
            start = await _balance(c)
            r = await c.send(UK, text="x" * 400)
            mid = r["messages"][0]["id"]
            assert r["messages"][0]["billable_units"] == 3
            await wait_until(lambda: len(held) == 1, 15)
            await sim.inject_mo(UK.lstrip("+"), "smpp-bridge", "STOP")

            async def opted_out() -> bool:
                _s, _h, data = await c.request("GET", "/v1/optouts")
                return [o["number"] for o in data["optouts"]] == [UK]

            await wait_until(opted_out, 15, 0.05)
            sess, pdu = held.pop()
            sess.write(encode(Pdu(C.SUBMIT_SM_RESP, answer, pdu.seq)))
            m = await final_status(c, mid, 30)
            assert (m["status"], m["error_code"]) == ("expired", "RECIPIENT_OPTED_OUT"), m
            assert len(to_uk) == 2, "a part went to the number again after its STOP"
            parts = [p["status"] for p in m["parts"]]
            assert parts == ["delivered", "expired_unsent", "expired_unsent"], m

            async def refunded() -> bool:
                return await _balance(c) == start - 50_000

            assert await wait_until(refunded, 10, 0.1), "2 of 3 parts never went out"
    finally:
        sim._on_submit = real
        await d.stop()


async def test_a_resend_still_goes_out_when_nothing_was_held(
    engine: EngineHandle, tmp_path: Path
) -> None:
    """The control: the same throttle on part 2 without a STOP is resent inside the claim and
    the message is delivered whole (3 submits to the number, the throttled one twice)."""
    from bridge.app import Daemon
    from tests.e2e.harness import client_for, create_account, final_status, make_config, wait_until

    d = Daemon(make_config(tmp_path, store=_daemon_store(engine)))
    await d.start()
    sim = d.sim
    real = sim._on_submit
    to_uk = throttle_the_second_submit(sim)

    try:
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        creds = await create_account(d, "control")
        async with client_for(d.http_port, creds) as c:
            r = await c.send(UK, text="x" * 400)
            m = await final_status(c, r["messages"][0]["id"], 30)
            assert m["status"] == "delivered", m
            assert len(to_uk) == 4  # parts 1, 2 (throttled), 2 again, 3
    finally:
        sim._on_submit = real
        await d.stop()


async def test_a_hold_check_the_store_cannot_answer_resends_and_logs_one_line(
    engine: EngineHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store unreachable at the check before a resend: the part is resent (as before the
    check existed) and the outage is one line without a traceback (it was a traceback per
    resend: found by the PostgreSQL chaos soak)."""
    from bridge.app import Daemon
    from tests.e2e.harness import client_for, create_account, final_status, make_config, wait_until

    d = Daemon(make_config(tmp_path, store=_daemon_store(engine)))
    await d.start()
    sim = d.sim
    real = sim._on_submit
    to_uk = throttle_the_second_submit(sim)

    async def unreachable(_mid: str) -> bool:
        raise ConnectionError("the store is unreachable")

    assert d.store is not None
    d.store.message_held = unreachable  # type: ignore[method-assign]
    try:
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        creds = await create_account(d, "blip")
        async with client_for(d.http_port, creds) as c:
            r = await c.send(UK, text="x" * 400)
            m = await final_status(c, r["messages"][0]["id"], 30)
            assert m["status"] == "delivered", m
            assert len(to_uk) == 4  # the throttled part resent
        lines = [r for r in caplog.records if "hold check" in r.getMessage()]
        assert len(lines) == 1 and lines[0].exc_info is None, [r.getMessage() for r in lines]
    finally:
        sim._on_submit = real
        await d.stop()
