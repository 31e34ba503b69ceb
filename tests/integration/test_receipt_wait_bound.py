"""A message's wait for its receipt is bounded (review of session 48, both engines).

Session 48 let a message wait for its receipt until an hour past its validity's end when that
is later than pipeline.receipt_timeout_hours; the SMSC's validity (smscs[].validity_minutes)
may be up to a year. A month's bill waits for every message of it to be final
(SettlementNotReady), and billing.auto_settle looks back SETTLE_LOOKBACK_MONTHS for a month
without a bill, counting on a receipt's wait of at most 30 days (receipt_timeout_hours' largest).
A message sent on the last day of a month through an SMSC with a 90-day validity stayed `sent`
past that look-back: the month was never settled by the daemon (a postpaid invoice never
raised), and the retention kept every message from it on. The wait now stops at
lifecycle.MAX_RECEIPT_WAIT_MS (720 h), as long as the longest receipt timeout.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge import billing  # noqa: E402
from bridge.domain import lifecycle as lc  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from tests.integration.test_billing_edges import (  # noqa: E402
    SMSC,
    accept,
    config,
    make_account,
    ms,
    msg,
    submit,
)

engine = engines.engine
store = engines.store

DAY = 86_400_000
TIMEOUT = 72 * 3_600_000
BOUND = 720 * 3_600_000  # lifecycle.MAX_RECEIPT_WAIT_MS: the longest receipt timeout


async def test_a_long_smsc_validity_does_not_keep_a_month_from_its_bill(store: Store) -> None:
    await make_account(store, "postpaid", funds=0)
    sent_at = ms(2026, 1, 31, 10)
    await accept(store, msg("msg_jan", sent_at))
    await submit(store, "msg_jan", sent_at)
    validity = {SMSC: 90 * DAY}  # validity_minutes: 129600, no receipt ever comes
    cfg = config()
    book = billing.Tariffs(store, cfg.billing)
    await book.load(0)
    now = ms(2026, 2, 1, 3)
    while now < ms(2026, 6, 30):  # the daemon sweeps and settles through to the end of June
        await store.sweep(now, TIMEOUT, smsc_validity_ms=validity)
        await billing.auto_settle(store, book, cfg, now)
        now += DAY
    assert await store.get_bill("acc_a", "2026-01") is not None, "January is never settled"
    m = await store.get_message("acc_a", "msg_jan")
    assert m is not None and (m.state, m.error_code) == ("unknown", "NO_RECEIPT")
    assert m.done_at is not None and m.done_at - sent_at < BOUND + DAY


async def test_a_validity_beyond_the_bound_waits_until_the_bound(store: Store) -> None:
    """The message's own validity (an absolute one, expires_at) and its SMSC's relative one."""
    await make_account(store, "postpaid", funds=0)
    sent_at = ms(2026, 1, 5)
    await accept(store, replace(msg("own", sent_at), expires_at=sent_at + 60 * DAY))
    await submit(store, "own", sent_at)
    await accept(store, msg("smscs", sent_at))
    await submit(store, "smscs", sent_at)
    validity = {SMSC: 365 * DAY}
    bound = sent_at + BOUND
    assert (await store.sweep(bound - 1, TIMEOUT, smsc_validity_ms=validity))["timed_out"] == 0
    assert (await store.sweep(bound, TIMEOUT, smsc_validity_ms=validity))["timed_out"] == 2
    for mid in ("own", "smscs"):
        m = await store.get_message("acc_a", mid)
        assert m is not None and (m.state, m.done_at) == ("unknown", bound)
    assert lc.MAX_RECEIPT_WAIT_MS == BOUND
