"""Which busy tables PostgreSQL's sweeper analyses (bridge/store/postgres_stats.py)."""

from __future__ import annotations

import pytest

from bridge.store.postgres_stats import MIN_ROWS, TableStats, stale_tables


@pytest.mark.parametrize(
    ("live", "at_analysis", "mine", "due"),
    [
        (MIN_ROWS - 1, -1, True, False),  # never analysed, still small
        (MIN_ROWS, -1, True, True),  # never analysed, big enough
        (5_000, 3_000, True, False),  # grew, not doubled
        (6_000, 3_000, True, True),  # doubled
        (6_000, 0, True, True),  # analysed empty
        (10**6, 10**6 - 1, True, False),  # big and analysed: autovacuum's business
        (6_000, -1, False, False),  # another role's table: ANALYZE would only warn
    ],
)
def test_which_tables_are_due(live: int, at_analysis: float, mine: bool, due: bool) -> None:
    stats = [TableStats("segments", live, at_analysis, mine)]
    assert stale_tables(stats) == (["segments"] if due else [])


def test_tables_come_in_name_order() -> None:
    stats = [TableStats(n, MIN_ROWS, -1, True) for n in ("segments", "ledger", "messages")]
    assert stale_tables(stats) == ["ledger", "messages", "segments"]
