"""Two long MOs from one number under one concatenation reference, as real deliver_sm PDUs over a
real SMPP bind: the built-in simulator (``inject_mo`` with ``ref`` and ``parts``) delivers them to
the daemon, whose MO callback is a real webhook receiver; on both store engines.

8-bit references come round quickly, and some handsets and SMSCs use one for every long
message. The parts were kept per reference, a part with a seq already held overwrote it, and a
later message filled the gaps of an earlier incomplete one: two replies became one mixed text,
or one vanished; and a second complete reply under the reference within the repeat window got
the first one's id and was dropped as a repeat.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.app import Daemon
from bridge.config import parse_config

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.e2e.harness import (  # noqa: E402
    WebhookReceiver,
    client_for,
    config_dict,
    create_account,
    final_status,
    wait_until,
)

PHONE = "8613800138000"
TEXT_A = "Reply one: " + "a" * 380  # GSM, 3 parts of 153
TEXT_B = "Reply two: " + "b" * 380
REF = 7


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def setup(
    tmp_path: Path, engine: str, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., Any]]:
    """A started daemon (MO reassembly timeout 1 s) and a receiver on its account's MO URL."""
    hook = WebhookReceiver()
    await hook.start()
    store = (
        {"engine": "sqlite", "path": str(tmp_path / "bridge.db")}
        if engine == "sqlite"
        else {"engine": "postgres", "dsn": request.getfixturevalue("pg_dsn")}
    )
    data = config_dict(tmp_path, store=store, pipeline={"mo_reassembly_timeout_s": 1})
    d = Daemon(parse_config(data, env={}, base_dir=tmp_path))
    await d.start()
    try:
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        creds = await create_account(d, "replies", mo_callback_url=hook.url)
        async with client_for(d.http_port, creds) as c:  # the replies answer this message
            sent = await c.send("+" + PHONE, text="Tell us more")
            await final_status(c, sent["messages"][0]["id"])

        async def go() -> tuple[Daemon, WebhookReceiver]:
            d.test_creds = creds  # type: ignore[attr-defined]
            return d, hook

        yield go
    finally:
        await d.stop()
        await hook.stop()


async def _inject(d: Daemon, text: str, parts: list[int]) -> None:
    assert d.sim is not None
    await d.sim.inject_mo(PHONE, "smpp-bridge", text, split="udh8", ref=REF, parts=parts)
    assert d.inbound is not None


def _texts(hook: WebhookReceiver) -> list[tuple[str, bool, Any]]:
    return sorted(
        (r["text"], r["incomplete"], r["parts_received"])
        for r in hook.reports
        if r.get("type") == "message.inbound"
    )


async def test_a_reply_with_a_lost_part_is_not_overwritten_by_the_next(setup) -> None:
    d, hook = await setup()
    await _inject(d, TEXT_A, [1, 2])  # its part 3 never comes
    await _inject(d, TEXT_B, [1, 2, 3])
    await wait_until(lambda: len(_texts(hook)) == 1, 10)
    assert _texts(hook) == [(TEXT_B, False, None)]
    # The first reply is delivered as what it is, flagged, by the incomplete-MO rule.
    await wait_until(lambda: len(_texts(hook)) == 2, 15)
    assert _texts(hook) == [(TEXT_A[:306], True, [1, 2]), (TEXT_B, False, None)]


async def test_interleaved_parts_make_two_replies_not_one_mixed(setup) -> None:
    d, hook = await setup()
    await _inject(d, TEXT_A, [1, 2])
    await _inject(d, TEXT_B, [1])
    await _inject(d, TEXT_A, [3])  # late: completes the first reply, not {B1, A3}
    await wait_until(lambda: len(_texts(hook)) == 1, 10)
    await _inject(d, TEXT_B, [2, 3])
    await wait_until(lambda: len(_texts(hook)) == 2, 10)
    assert _texts(hook) == [(TEXT_A, False, None), (TEXT_B, False, None)]
    assert d.inbound is not None and d.inbound.mo_incomplete == 0


async def test_a_second_reply_under_the_reference_is_not_taken_for_a_repeat(setup) -> None:
    d, hook = await setup()
    await _inject(d, TEXT_A, [1, 2, 3])
    await wait_until(lambda: len(_texts(hook)) == 1, 10)
    await _inject(d, TEXT_B, [1, 2, 3])
    await wait_until(lambda: len(_texts(hook)) == 2, 10)
    # Counted once its write returned (after the fsync); the webhook sender may read the
    # committed row and report it before that, so the count is waited for, not read at once.
    inbound = d.inbound
    assert inbound is not None
    await wait_until(lambda: inbound.mo == 2, 10)
    # The SMSC resending each (a lost deliver_sm_resp) is still a repeat: stored once.
    await _inject(d, TEXT_B, [1, 2, 3])
    await _inject(d, TEXT_A, [1, 2, 3])
    await wait_until(lambda: d.sim is not None and d.sim.counters["mo_acked"] >= 12, 10)
    await inbound.flush_stale_mo(10**13, timeout_ms=0)
    assert inbound.mo == 2 and inbound.mo_incomplete == 0
    assert _texts(hook) == [(TEXT_A, False, None), (TEXT_B, False, None)]


async def test_a_resend_after_an_erasure_does_not_bring_the_text_back(setup) -> None:
    """The recipient's data erased, then the SMSC resends the reply it stored (a lost
    deliver_sm_resp): its text is gone, so it is not told from another reply by its text; it
    is the same reference in the window, taken for the one erased, not stored again."""
    d, hook = await setup()
    await _inject(d, TEXT_A, [1, 2, 3])
    await wait_until(lambda: len(_texts(hook)) == 1, 10)
    async with client_for(d.http_port, d.test_creds) as c:  # type: ignore[attr-defined]
        await c.erase_recipient("+" + PHONE)
    await _inject(d, TEXT_A, [1, 2, 3])
    assert d.sim is not None and d.inbound is not None
    await wait_until(lambda: d.sim is not None and d.sim.counters["mo_acked"] >= 6, 10)
    await d.inbound.flush_stale_mo(10**13, timeout_ms=0)
    assert d.inbound.mo == 1 and d.inbound.mo_incomplete == 0
    assert len(_texts(hook)) == 1
