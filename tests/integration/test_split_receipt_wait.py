"""The receipt wait of a message whose parts went out on two SMSCs (session 49, both engines).

A message's parts follow its first part's SMSC, but not always: that SMSC removed by a reload while
the rest waited sends the rest through the route's next one (rebound, it did too until this
session: the last test). The message row names
the SMSC that took its last part (`messages.smsc`), and the sweep read the receipt deadline
(lifecycle.receipt_deadline) from that SMSC alone: with the last part on an SMSC without a long
validity, or one asked for no final receipt (`silent_smscs`), the earlier parts' SMSC could still
deliver them and send their receipts for days, yet the message ended `unknown` (NO_RECEIPT) at
the receipt timeout, and those receipts then changed nothing. The deadline is now the latest of
the SMSCs whose parts still await their receipts (lifecycle.split_deadline).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.domain import lifecycle as lc  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.store.models import NewSegment, ReceiptIn, Release, SubmitResult  # noqa: E402
from tests.integration.test_billing_edges import accept, make_account, msg  # noqa: E402

engine = engines.engine
store = engines.store

NOW = 1_700_000_000_000
HOUR = 3_600_000
DAY = 24 * HOUR
TIMEOUT = 72 * HOUR
LEASE = 300_000
MARGIN = lc.VALIDITY_RECEIPT_MARGIN_MS
SENT = NOW + 1000  # the message's sent_at: when its last part went out (split)


async def split(
    store: Store, mid: str, first: str, last: str, expires_at: int | None = None
) -> None:
    """Accept a 2-part message; part 1 goes out on `first` and part 2 is throttled; claimed
    again, part 2 goes out on `last` (the first SMSC was gone from the dispatcher meanwhile)."""
    m = replace(
        msg(mid, NOW),
        billable_units=2,
        expires_at=expires_at,
        segments=tuple(NewSegment(i, 2, 0x40, f"{mid}/{i}".encode(), b"") for i in (1, 2)),
    )
    await accept(store, m)
    assert [w.id for w in await store.claim("inst-1", 10, NOW, LEASE)] == [mid]
    one = SubmitResult(mid, 1, "sent", first, f"{mid}-1", f"{mid}-1", at=NOW)
    await store.record_submits([one], [Release(mid, NOW + 1000, False)], NOW, instance="inst-1")
    work = await store.claim("inst-1", 10, NOW + 1000, LEASE)
    assert [(w.id, [s.seq for s in w.segments]) for w in work] == [(mid, [2])]
    two = SubmitResult(mid, 2, "sent", last, f"{mid}-2", f"{mid}-2", at=NOW + 1000)
    await store.record_submits([two], [], NOW + 1000, instance="inst-1")
    got = await store.get_message("acc_a", mid)
    assert got is not None and (got.state, got.smsc, got.sent_at) == ("sent", last, SENT)


async def state(store: Store, mid: str) -> str:
    m = await store.get_message("acc_a", mid)
    assert m is not None
    return m.state


async def test_earlier_parts_on_a_long_validity_smsc_wait_for_it(store: Store) -> None:
    await make_account(store)
    await split(store, "m_long", "smscA", "smscB")
    await split(store, "m_got", "smscA", "smscB")
    validity = {"smscA": 5 * DAY}  # smscB: none, the timeout alone
    end = SENT + 5 * DAY + MARGIN
    swept = await store.sweep(SENT + TIMEOUT + HOUR, TIMEOUT, smsc_validity_ms=validity)
    assert swept["timed_out"] == 0, "part 1 may still be delivered until smscA's validity ends"
    assert [await state(store, m) for m in ("m_long", "m_got")] == ["sent", "sent"]
    # Part 1's receipt on day 4 counts; part 2's SMSC waits no longer than the timeout, long
    # past: the message ends at the next sweep.
    day4 = NOW + 4 * DAY
    await store.apply_receipts(
        [ReceiptIn("smscA", "m_got-1", "delivered", None, None, None, day4, raw="x")], day4
    )
    assert (await store.sweep(day4 + 1, TIMEOUT, smsc_validity_ms=validity))["timed_out"] == 1
    m = await store.get_message("acc_a", "m_got")
    assert m is not None and (m.state, m.segments_delivered) == ("unknown", 1)
    assert [s.state for s in m.segment_rows] == ["delivered", "timeout"]
    # No receipt at all: the message ends at the end of smscA's wait.
    assert (await store.sweep(end - 1, TIMEOUT, smsc_validity_ms=validity))["timed_out"] == 0
    assert (await store.sweep(end, TIMEOUT, smsc_validity_ms=validity))["timed_out"] == 1
    assert await state(store, "m_long") == "unknown"


async def test_a_silent_last_smsc_does_not_cut_the_earlier_parts_wait(store: Store) -> None:
    """The last part's SMSC asked for no final receipt (it ends at the timeout); the first's
    did, under the message's own validity (expires_at)."""
    await make_account(store)
    await split(store, "m_own", "smscA", "quiet", expires_at=SENT + 6 * DAY)
    await split(store, "m_rel", "smscA", "quiet")
    validity = {"smscA": 6 * DAY}
    quiet = ["quiet"]
    at = SENT + TIMEOUT + HOUR
    swept = await store.sweep(at, TIMEOUT, smsc_validity_ms=validity, silent_smscs=quiet)
    assert swept["timed_out"] == 0
    assert [await state(store, m) for m in ("m_own", "m_rel")] == ["sent", "sent"]
    end = SENT + 6 * DAY + MARGIN
    swept = await store.sweep(end - 1, TIMEOUT, smsc_validity_ms=validity, silent_smscs=quiet)
    assert swept["timed_out"] == 0
    swept = await store.sweep(end, TIMEOUT, smsc_validity_ms=validity, silent_smscs=quiet)
    assert swept["timed_out"] == 2


async def test_a_silent_or_short_first_smsc_keeps_the_last_ones_wait(store: Store) -> None:
    """The other way round the last part's SMSC was already the one waiting longest: as before."""
    await make_account(store)
    await split(store, "m_rev", "quiet", "smscA")
    validity = {"smscA": 5 * DAY}
    quiet = ["quiet"]
    end = SENT + 5 * DAY + MARGIN
    swept = await store.sweep(end - 1, TIMEOUT, smsc_validity_ms=validity, silent_smscs=quiet)
    assert swept["timed_out"] == 0
    swept = await store.sweep(end, TIMEOUT, smsc_validity_ms=validity, silent_smscs=quiet)
    assert swept["timed_out"] == 1
    assert await state(store, "m_rev") == "unknown"


# -- how a message comes to be split ---------------------------------------------------------------


async def test_the_rest_waits_for_its_smsc_while_a_reload_rebinds_it(store: Store) -> None:
    """A reload that rebinds an SMSC (a changed bind setting) takes its connector out of the
    dispatcher's while the old binds drain, and puts a new one in after. A message whose first
    part went there, claimed meanwhile, sent the rest through the route's next SMSC: one
    concatenated SMS over two carriers, which README ("The rest of a message whose earlier
    parts went to an SMSC follows them there, waiting while it is down") says does not happen.
    It waits now, as for an SMSC that is down; only an SMSC the reload removed sends the rest
    elsewhere (it is no longer there to wait for)."""
    import asyncio

    from bridge.pipeline.dispatcher import Dispatcher
    from bridge.smpp.router import Router
    from tests.integration.test_dispatch_edges import Clock, SlotWaitConnector, _smsc

    await make_account(store)
    m = replace(
        msg("m_rb", NOW),
        billable_units=2,
        segments=tuple(NewSegment(i, 2, 0x40, f"m_rb/{i}".encode(), b"") for i in (1, 2)),
    )
    await accept(store, m)
    assert [w.id for w in await store.claim("inst-1", 10, NOW, LEASE)] == ["m_rb"]
    one = SubmitResult("m_rb", 1, "sent", "smscA", "m_rb-1", "m_rb-1", at=NOW)
    await store.record_submits([one], [Release("m_rb", NOW, False)], NOW, instance="inst-1")
    b = SlotWaitConnector("smscB")
    connectors = {"smscB": b}  # smscA's connector is out: the reload is rebinding it
    smscs = {"smscA": _smsc("smscA"), "smscB": _smsc("smscB")}
    clock = Clock(NOW + 1000)
    d = Dispatcher(
        store, connectors, Router([], ["smscA", "smscB"]), smscs,  # type: ignore[arg-type]
        instance="inst-1", idle_s=0.01, clock=clock,
    )  # fmt: skip
    task = asyncio.create_task(d.run())
    try:
        # Until the dispatcher decided (it waited, or sent): a fixed pause passed on a loaded
        # machine before its first claim, whatever the code did.
        for _ in range(3000):
            if b.left or "m_rb" in d._no_route:
                break
            await asyncio.sleep(0.01)
        assert b.left == [], "the rest left through another carrier"
        assert "m_rb" in d._no_route, "the dispatcher never took the message"
        d.reconfigure(Router([], ["smscB"]), {"smscB": _smsc("smscB")})  # smscA removed
        clock.ms += 120_000  # past the back-off
        for _ in range(3000):
            if b.left:
                break
            await asyncio.sleep(0.01)
        assert b.left == ["m_rb/2"]
    finally:
        await d.stop(0.5)
        task.cancel()
