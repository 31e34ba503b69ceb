"""Concatenation references past 255, through the whole daemon to the built-in simulator over a
real SMPP bind: 300 long messages to one number, accepted one after another.

Checked, and not a defect (text.split.RefCounter): each number has its own counter, drawn at
acceptance; an 8-bit reference (UDH IE 0x00) is the counter modulo 256, so after 255 it wraps
to 0 (never an overflow: the encoder refuses a reference out of range, and none reaches it) and
a number sees a reference again only after 256 long messages; the 16-bit ones (SAR's
sar_msg_ref_num, UDH IE 0x08) go on past 255 and repeat after 65,536. (Acceptor workers and
fleet instances draw from disjoint lanes, which shortens the 8-bit cycle to 256 / lanes: the
trade documented under `server.instances` in the README; tests/unit/test_text_split.py checks
the lanes.) The simulator reassembles every message as a handset does, by (sender,
reference): a reference repeated too soon would join two messages' parts."""

from __future__ import annotations

import itertools
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bridge.app import Daemon  # noqa: E402
from bridge.smpp.reassembly import Reassembler, Segment, SimMessage  # noqa: E402
from tests.e2e.harness import client_for, create_account, make_config, wait_until  # noqa: E402

NUMBER = "+447700900123"
MESSAGES = 300  # past 255, and past one 8-bit cycle


def text(i: int) -> str:
    return f"message {i:03d} " + "x" * 160  # two GSM parts


@pytest.fixture(params=["udh8", "udh16", "sar"])
async def daemon(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Daemon]:
    # The number exempt from the per-recipient limits (50 a day by default).
    rules = {"frequency": {"exempt": [NUMBER]}}
    d = Daemon(make_config(tmp_path, smscs=[{"split": request.param}], rules=rules))
    await d.start()
    try:
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        yield d
    finally:
        await d.stop()


async def test_references_past_255_to_one_number(daemon: Daemon) -> None:
    d = daemon
    sim = d.sim
    assert sim is not None
    split = d.config.smscs[0].split
    seen: dict[str, tuple[str, int]] = {}  # text -> (scheme, reference) of the last part

    class Recording(Reassembler):
        def add(self, system_id: str, source: str, destination: str, seg: Segment,
                message_id: str, now: float) -> SimMessage | None:  # fmt: skip
            msg = super().add(system_id, source, destination, seg, message_id, now)
            if msg is not None:
                seen[msg.text] = (seg.scheme, seg.ref)
            return msg

    sim.reassembler = Recording()
    creds = await create_account(d)
    async with client_for(d.http_port, creds) as c:
        for i in range(MESSAGES):
            r: dict[str, Any] = await c.send(NUMBER, text=text(i))
            assert r["messages"][0]["segments"] == 2
    await wait_until(lambda: len(seen) == MESSAGES, 30)
    # Every message reassembled to its own text: no two joined under one reference.
    assert set(seen) == {text(i) for i in range(MESSAGES)}
    assert sim.reassembler.abandoned == 0
    schemes = {scheme for scheme, _ in seen.values()}
    assert schemes == {split}
    refs = [seen[text(i)][1] for i in range(MESSAGES)]  # in the order accepted
    bits = 8 if split == "udh8" else 16
    size = 1 << bits
    assert all(0 <= r < size for r in refs)
    # One counter per number: each message the next reference, wrapping at 256 or 65,536.
    assert all(b == (a + 1) % size for a, b in itertools.pairwise(refs))
    if bits == 8:
        assert len(set(refs[:256])) == 256 and refs[256:] == refs[: MESSAGES - 256]
    else:
        assert len(set(refs)) == MESSAGES
