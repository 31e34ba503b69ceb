"""The SMPP engine against misbehaving SMSCs, over real TCP on 127.0.0.1 (cases found by a
review). The SMSC here is a tiny asyncio server built from our codec, with knobs for the
misbehaviour under test."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bridge.config import SmscConfig
from bridge.smpp import constants as C
from bridge.smpp.codec import BindResp, MessageIdResp, Pdu, ShortMessage, decode, encode
from bridge.smpp.framing import Framer

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.integration.test_smpp_connector import (  # noqa: E402
    eventually,
    part,
    running,
    smsc_cfg,
)


@dataclass(eq=False)
class MiniSmsc:
    """Binds anyone; answers submit_sm after ``resp_delay_s`` (always ESME_ROK, id ``m<seq>``);
    answers enquire_link; records what it receives."""

    resp_delay_s: float = 0.0
    answer_submits: bool = True
    answer_enquire_link: bool = True
    ping_every_s: float = 0.0  # >0: send enquire_link to the ESME this often (answered or not)
    connections: int = 0
    binds: int = 0
    submits: list[tuple[int, bytes]] = field(default_factory=list)  # (seq, short_message)
    accepted: list[int] = field(default_factory=list)  # seqs answered ESME_ROK
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    deliver_resps: dict[int, int] = field(default_factory=dict)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in self.writers:
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _answer(self, w: asyncio.StreamWriter, seq: int) -> None:
        if not w.is_closing():
            self.accepted.append(seq)
            w.write(encode(Pdu(C.SUBMIT_SM_RESP, 0, seq, MessageIdResp(f"m{seq}"))))

    async def _serve(self, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self.writers.append(w)
        loop = asyncio.get_running_loop()
        framer = Framer()
        pinger = None
        if self.ping_every_s:
            pinger = asyncio.create_task(self._ping(w))
        try:
            while data := await reader.read(65536):
                for frame in framer.feed(data):
                    pdu = decode(frame)
                    cid = pdu.command_id
                    if cid in C.BIND_COMMANDS:
                        self.binds += 1
                        w.write(encode(Pdu(cid | C.RESP_BIT, 0, pdu.seq, BindResp("MINI"))))
                    elif cid == C.SUBMIT_SM:
                        self.submits.append((pdu.seq, pdu.body.short_message))
                        if not self.answer_submits:
                            continue
                        if self.resp_delay_s:
                            loop.call_later(self.resp_delay_s, self._answer, w, pdu.seq)
                        else:
                            self._answer(w, pdu.seq)
                    elif cid == C.ENQUIRE_LINK and self.answer_enquire_link:
                        w.write(encode(Pdu(C.ENQUIRE_LINK_RESP, 0, pdu.seq)))
                    elif cid == C.UNBIND:
                        w.write(encode(Pdu(C.UNBIND_RESP, 0, pdu.seq)))
                    elif cid == C.DELIVER_SM_RESP:
                        self.deliver_resps[pdu.seq] = pdu.status
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if pinger is not None:
                pinger.cancel()
            self._tasks.discard(task)
            w.close()

    async def _ping(self, w: asyncio.StreamWriter) -> None:
        seq = 50_000
        while not w.is_closing():
            await asyncio.sleep(self.ping_every_s)
            seq += 1
            w.write(encode(Pdu(C.ENQUIRE_LINK, 0, seq)))


def cfg(port: int, **kw: Any) -> SmscConfig:
    """The connector tests' SMSC settings, with short timeouts for the misbehaviour here."""
    base = {"name": "rv", "response_timeout_s": 0.3, "unbind_timeout_s": 0.3,
            "max_transient_retries": 5}  # fmt: skip
    return smsc_cfg(port, **{**base, **kw})


@pytest.fixture
async def smsc() -> AsyncIterator[MiniSmsc]:
    s = MiniSmsc()
    await s.start()
    yield s
    await s.close()


# --- late responses -------------------------------------------------------------------------------
async def test_a_late_submit_sm_resp_is_not_thrown_away_and_the_part_resent(
    smsc: MiniSmsc,
) -> None:
    """An SMSC under load answers every submit_sm, but after the response timeout. The session
    forgets a request at its timeout, so the late ESME_ROK (with its message_id) is dropped as
    'matches no request', and the connector resends the same part at once on the same bind,
    max_transient_retries times (default 5): the SMSC accepts -- and the handset gets -- every
    copy, while we report the part TIMEOUT and keep none of the ids (each copy's receipt is
    unmatched). The dispatcher then reclaims it up to MAX_UNANSWERED_ATTEMPTS (3) times: up to
    18 accepted copies of one part by default."""
    smsc.resp_delay_s = 0.35  # just past response_timeout_s=0.3
    async with running(
        cfg(smsc.port, max_transient_retries=5), transient_backoff_s=(0.01, 0.02)
    ) as c:
        assert await c.wait_up(30.0)
        (outcome,) = await c.send_message([part("hello")])
        await asyncio.sleep(0.1)  # let the last late answer arrive
        copies_accepted = len(smsc.accepted)
        assert copies_accepted == len(smsc.submits)
        # Either we use the SMSC's (late) acceptance, or at least we do not send it again.
        assert copies_accepted == 1 or outcome.kind == "ok", (
            f"{copies_accepted} copies accepted by the SMSC, outcome {outcome.status_name}"
        )


# --- bind with a password SMPP cannot carry ----------------------------------------------------
async def test_an_over_long_password_fails_the_bind_instead_of_hanging_it(
    smsc: MiniSmsc,
) -> None:
    """SMPP 3.4 passwords are at most 8 octets; the config accepts any length. The bind PDU's
    EncodeError is raised inside asyncio's connection_made callback (logged as 'Exception in
    callback' only): the session stays OPEN with no timer, no bind is sent, wait_bound() never
    returns, and the bind task hangs on an idle TCP connection forever -- no retry, no
    last_error, nothing in snapshot()."""
    async with running(cfg(smsc.port, password="longer-than-8")) as c:
        await eventually(lambda: smsc.connections >= 1)
        await asyncio.sleep(1.0)  # > 3 response timeouts
        snap = c.snapshot()
        assert smsc.binds == 0  # the PDU cannot be built: expected
        # ... but the failure must surface and the connection must not be left hanging:
        assert snap["last_error"] is not None, "bind task stuck with no error reported"


# --- deliver flood and back-pressure ------------------------------------------------------------
async def test_pausing_reading_for_pending_delivers_does_not_time_out_answered_submits(
    smsc: MiniSmsc,
) -> None:
    """When max_pending_delivers (256) deliver handlers are running, the protocol pauses reading.
    The SMSC's submit_sm_resp then sits unread in the socket while our response timer runs: the
    submit is declared TIMEOUT (and resent, see above) although the SMSC answered at once, and
    our enquire_link_resp goes unread too, so the bind is torn down. A slow store commit (longer
    than response_timeout_s) during a receipt burst thus duplicates messages."""
    gate = asyncio.Event()
    started = 0

    async def slow_handler(name: str, body: ShortMessage) -> int:
        nonlocal started
        started += 1
        await gate.wait()
        return C.ESME_ROK

    async with running(
        cfg(smsc.port, max_transient_retries=0), slow_handler, transient_backoff_s=(0.01, 0.02)
    ) as c:
        assert await c.wait_up(30.0)
        (w,) = smsc.writers
        receipt = ShortMessage(
            esm_class=C.ESM_DELIVERY_RECEIPT, short_message=b"id:1 stat:DELIVRD err:000"
        )
        w.write(b"".join(encode(Pdu(C.DELIVER_SM, 0, 10_000 + i, receipt)) for i in range(300)))
        await eventually(lambda: started >= 256)
        # The store is slow for a while (longer than the response timeout) ...
        asyncio.get_running_loop().call_later(0.6, gate.set)
        t0 = time.monotonic()
        (outcome,) = await c.send_message([part("during the burst")])
        # ... the SMSC answered the submit immediately (resp_delay_s=0)
        assert smsc.accepted, "the SMSC answered"
        assert outcome.kind == "ok", (
            f"{outcome.status_name} after {time.monotonic() - t0:.2f}s although the SMSC "
            "answered at once"
        )


# --- SMSC-initiated unbind --------------------------------------------------------------------
async def test_responses_that_follow_the_smscs_unbind_in_the_same_read_are_used(
    smsc: MiniSmsc,
) -> None:
    """The SMSC unbinds (e.g. shutting down) and flushes its last submit_sm_resp right behind the
    unbind, in one TCP segment. The session closes on the unbind and drops every frame after it
    in that read: the accepted submit is reported CONNECTION_LOST and resent on the next bind
    (a duplicate), and its message_id is lost."""
    smsc.answer_submits = False
    async with running(cfg(smsc.port), transient_backoff_s=(0.01, 0.02)) as c:
        assert await c.wait_up(30.0)
        task = asyncio.create_task(c.send_message([part("x")]))
        await eventually(lambda: len(smsc.submits) == 1)
        ((seq, _),) = smsc.submits
        (w,) = smsc.writers
        smsc.answer_submits = True
        w.write(
            encode(Pdu(C.UNBIND, 0, 77))
            + encode(Pdu(C.SUBMIT_SM_RESP, 0, seq, MessageIdResp("first-copy")))
        )
        (outcome,) = await asyncio.wait_for(task, 3.0)
        assert len(smsc.submits) == 1, f"resent: {len(smsc.submits)} copies"
        assert outcome.message_id == "first-copy"


# --- keep-alive -----------------------------------------------------------------------------------
async def test_a_hung_smsc_that_still_pings_us_is_detected_dead(smsc: MiniSmsc) -> None:
    """The SMSC's keep-alive thread still sends enquire_link (we answer it), but nothing else
    works: no submit_sm_resp, no enquire_link_resp. Our enquire_link is only due after
    enquire_link_s without *any* received octet, and the SMSC's pings reset that clock, so we
    never send one: the bind stays 'up' for ever, every submit burns response_timeout_s x
    (max_transient_retries + 1) and routing never fails over (the connector reports is_up)."""
    smsc.answer_submits = False
    smsc.answer_enquire_link = False
    smsc.ping_every_s = 0.1
    c_cfg = cfg(smsc.port, enquire_link_s=0.3, response_timeout_s=0.3, max_transient_retries=0)
    async with running(c_cfg, transient_backoff_s=(0.01, 0.02)) as c:
        assert await c.wait_up(30.0)
        (outcome,) = await c.send_message([part("into the void")])
        assert outcome.status_name == "TIMEOUT"
        await asyncio.sleep(1.5)  # 5 x enquire_link_s, 5 x response_timeout_s
        assert smsc.connections >= 2 or not c.is_up, (
            f"bind still up after 1.5 s of silence; reconnects={c.snapshot()['reconnects']}"
        )
