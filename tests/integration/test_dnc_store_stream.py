"""Both engines take a do-not-contact import's numbers as an iterator read once, in bounded
memory (rules_rows.DncEntries: 8 bytes a number), and still end the waiting messages it blocks.

Before, each engine made a list of str entries and a frozenset of them (~150 bytes a number on
top of the caller's own copies). The numbers come here from a generator, in no order, with
repeats; the Python heap's peak is measured with tracemalloc around the import alone.
"""

from __future__ import annotations

import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.store.models import DncInfo  # noqa: E402
from tests.integration.test_store import NOW, accept, account, get, message  # noqa: E402

engine = engines.engine
store = engines.store

N = 200_000


def _numbers() -> Iterator[str]:
    """Every +86137 number below N once, shuffled (k * 7919 mod N is a permutation), then the
    first thousand again."""
    for k in range(N):
        yield f"+86137{k * 7919 % N:08d}"
    for k in range(1000):
        yield f"+86137{k:08d}"


async def test_an_iterator_of_numbers_imported_in_bounded_memory(store: Store) -> None:
    await store.create_account(account())
    await accept(
        store,
        message("listed", recipient=f"+86137{N - 1:08d}"),
        message("by_prefix", recipient="+8613900000001"),
        message("other", recipient=f"+86137{N:08d}"),
    )
    numbers = _numbers()
    tracemalloc.start()
    try:
        ended = await store.import_dnc(
            DncInfo("reg", "reg", "CN", N, 1, NOW + 1), numbers, iter(["+86139"])
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert next(numbers, None) is None  # read to the end, once
    assert ended == 2
    for mid in ("listed", "by_prefix"):
        assert (await get(store, mid)).error_code == "RECIPIENT_BLOCKED", mid
    assert (await get(store, "other")).state == "queued"
    assert await store.dnc_blocks("+8613700000000")
    assert await store.dnc_blocks(f"+86137{N - 1:08d}")
    assert not await store.dnc_blocks(f"+86137{N:08d}")
    # 8 bytes a number, twice at the sort's merge; and buffers whatever the size: the sort's run
    # of 100,000 Python ints (~4 MB), a chunk of entries written (PostgreSQL: 50,000). Measured
    # 5.6 MB (SQLite) and 9.0 MB (PostgreSQL); before, 30+ MB.
    assert peak < 16 * N + (8 << 20), f"{peak / N:.0f} bytes a number"
