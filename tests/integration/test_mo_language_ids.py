"""Two replies with the same septets under different national language tables (UDH IE 0x25
locking shift, 0x24 single shift) are different texts: each is stored and pushed. An MO's id
(inbound._mo_id: SMSC, addresses, coding, octets, 2-minute window) and the test of a resent
part (mo_sets.place_part: same seq, total, coding, octets) left the tables out, so the second
was taken for a resend of the first and dropped, and a long reply's part for a copy of another
reply's part under the same reference. Driven through the real `Inbound` handler on every engine
of tests/store_engines.py."""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.text.national import LOCKING_TABLES  # noqa: E402
from tests.integration.test_mo_national import (  # noqa: E402
    NOW,
    SEC,
    TIMEOUT,
    Clock,
    concat,
    deliver,
    ies,
    inbound,
    mo_texts,
    pdu,
    replying_account,
)

engine = engines.engine
store = engines.store

TURKISH, PORTUGUESE = 1, 3
# Septets whose letters differ between the default alphabet, Turkish and Portuguese locking
# tables (0x07: ì / ı / ú; 0x60: ¿ / ç / ~).
SEPTETS = b"Ok \x07 \x60 ok"


def read(locking: int) -> str:
    return SEPTETS.decode("latin-1").translate(dict(enumerate(LOCKING_TABLES[locking])))


def test_the_tables_read_those_septets_differently() -> None:
    assert len({read(0), read(TURKISH), read(PORTUGUESE)}) == 3


async def test_single_replies_differing_only_in_their_tables_are_each_stored(store: Store) -> None:
    await replying_account(store)
    clock = Clock()
    handler = inbound(store, clock)
    await deliver(handler, clock, NOW, pdu(ies(locking=TURKISH), SEPTETS))
    await deliver(handler, clock, NOW + SEC, pdu(b"", SEPTETS))  # the default alphabet
    await deliver(handler, clock, NOW + 2 * SEC, pdu(ies(locking=PORTUGUESE), SEPTETS))
    # A resend (the very deliver_sm again) is still one.
    await deliver(handler, clock, NOW + 3 * SEC, pdu(ies(locking=TURKISH), SEPTETS))
    assert await mo_texts(store) == sorted([read(TURKISH), read(0), read(PORTUGUESE)])
    assert handler.mo == 3


async def test_long_replies_under_one_reference_differing_only_in_their_tables(
    store: Store,
) -> None:
    """Three long replies under reference 9, one after the other (the first is stored before
    the second starts): the third was taken for a repeat of the second, whose id its octets
    gave."""
    await replying_account(store)
    clock = Clock()
    handler = inbound(store, clock)
    at = NOW
    for locking in (TURKISH, 0, PORTUGUESE):
        for seq in (1, 2):
            lang = ies(locking=locking) if locking else b""
            await deliver(handler, clock, at, pdu(concat(9, 2, seq) + lang, SEPTETS))
            at += SEC
    whole = {n: read(n) + read(n) for n in (TURKISH, 0, PORTUGUESE)}
    assert await mo_texts(store) == sorted(whole.values())


async def test_a_part_differing_only_in_its_tables_is_not_a_resend(store: Store) -> None:
    """Two long replies under one reference: the second starts while the first waits for its
    part 2, its part 1 with the octets of the first's part 1 but other tables. Taken for the
    first's part 1 resent, it was dropped; the second's part 2 completed the first's part 1 (a
    text nobody wrote) and the first's own part 2 came out alone, incomplete, after the
    timeout."""
    await replying_account(store)
    clock = Clock()
    handler = inbound(store, clock)
    tr = ies(locking=TURKISH)
    await deliver(handler, clock, NOW, pdu(concat(5, 2, 1) + tr, SEPTETS))
    await deliver(handler, clock, NOW + SEC, pdu(concat(5, 2, 1), SEPTETS))
    await deliver(handler, clock, NOW + 2 * SEC, pdu(concat(5, 2, 2), SEPTETS))
    await deliver(handler, clock, NOW + 3 * SEC, pdu(concat(5, 2, 2) + tr, SEPTETS))
    assert await handler.flush_stale_mo(NOW + 3 * SEC + TIMEOUT + 1, timeout_ms=TIMEOUT) == 0
    assert await mo_texts(store) == sorted([read(TURKISH) * 2, read(0) * 2])
    assert handler.mo == 2 and handler.mo_incomplete == 0
