"""The suite's longest tests start first, one share of them at the head of each xdist worker's
first block, so none of them starts in the last minute and sets the end of the run.

Why: with `--dist worksteal`, xdist hands worker k of n a first block of consecutive tests (the
k-th n-th of the collection, as `WorkStealingScheduling.check_schedule` cuts it) and, when a
worker runs dry, moves half of the busiest one's remaining queue, taken from its end, to it. A
50-s test (the soaks, the stateful money test) sitting in the middle of a block started
whenever its worker reached it, up to a minute before the others were done, and then ran
alone on an otherwise idle machine (session 57: the run's last minute was one worker's). Here
the tests named in `tests/long_tests.txt` (measured, longest first) are dealt to the blocks
longest first, each to the block with the least long-test time so far, and go to the head of
their block: they start in the first minutes and are never what is stolen (steals take a
queue's end). Everything else keeps its collection order.

The tests of one module listed there go together, in their module's order, and the module's
other tests that use one of their module-scoped fixtures (a PostgreSQL cluster of its own, an
11-s traffic run, say) go with them, so such a fixture is set up once for the group, not again
for the tests left behind (50 tests go along with the 60 listed). Only xdist's workers
reorder (`workerinput`: a run in one process, `-n 0`, keeps the collection's order, which is
easier to follow when debugging), and only what is left after `-k`/`-m` deselected (the hook
runs last). A name in the list that no longer exists only does
nothing; tests/unit/test_long_first.py checks that each still names a test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

LIST = Path(__file__).with_name("long_tests.txt")


def read_list(path: Path = LIST) -> dict[str, float]:
    """`seconds node-id` per line (`#` starts a comment): the node ids and their seconds."""
    out: dict[str, float] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            seconds, nodeid = line.split(None, 1)
            out[nodeid.strip()] = float(seconds)
    return out


def block_sizes(total: int, workers: int) -> list[int]:
    """The sizes of the first blocks worksteal hands its workers: each idle worker in turn gets
    the pending tests divided by the workers still to serve (xdist 3.x's check_schedule)."""
    sizes = []
    for left in range(workers, 0, -1):
        sizes.append(total // left)
        total -= sizes[-1]
    return sizes


def order(
    ids: Sequence[str],
    seconds: Mapping[str, float],
    workers: int,
    shared: Sequence[frozenset[str]] | None = None,
) -> list[int]:
    """A permutation of range(len(ids)): the listed tests, grouped by module, dealt longest
    group first to the block with the least listed time so far and put at its head (longest
    group first there too); every other test in its collection order after them.

    `shared[i]`: the module-scoped fixtures test i uses. A test of a listed test's module that
    uses one of the listed tests' joins their group, so the fixture is set up once for all of
    them (test_store_ops_review.py's 11-s traffic fixture serves a listed test and its neighbour
    not listed, which would otherwise run it again in another block)."""
    modules: dict[str, list[int]] = {}
    for i, nodeid in enumerate(ids):
        modules.setdefault(nodeid.split("::", 1)[0], []).append(i)
    groups: dict[str, list[int]] = {}
    for module, members in modules.items():
        listed_here = [i for i in members if ids[i] in seconds]
        if not listed_here:
            continue
        held: frozenset[str] = frozenset()
        if shared is not None:
            held = frozenset().union(*(shared[i] for i in listed_here))
        groups[module] = [
            i for i in members if ids[i] in seconds or (shared is not None and shared[i] & held)
        ]
    if not groups:
        return list(range(len(ids)))
    listed = {i for members in groups.values() for i in members}
    rest = [i for i in range(len(ids)) if i not in listed]
    cost = {m: sum(seconds.get(ids[i], 0.0) for i in members) for m, members in groups.items()}
    sizes = block_sizes(len(ids), max(1, workers))
    heads: list[list[int]] = [[] for _ in sizes]
    load = [0.0] * len(sizes)
    for module in sorted(groups, key=lambda m: (-cost[m], m)):
        k = min(range(len(sizes)), key=lambda b: (load[b], b))
        heads[k] += groups[module]
        load[k] += cost[module]
    out: list[int] = []
    taken = 0
    for head, size in zip(heads, sizes, strict=True):
        fill = max(0, size - len(head))
        out += head + rest[taken : taken + fill]
        taken += fill
    return out + rest[taken:]


class Plugin:
    """Registered by tests/conftest.py's pytest_configure on xdist's workers."""

    def __init__(self, workers: int, seconds: Mapping[str, float]) -> None:
        self.workers = workers
        self.seconds = seconds

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        ids = [item.nodeid for item in items]
        shared = [module_fixtures(item) for item in items]
        items[:] = [items[i] for i in order(ids, self.seconds, self.workers, shared)]


def module_fixtures(item: pytest.Item) -> frozenset[str]:
    """The names of the module-, class- or package-scoped fixtures `item` uses (pytest's
    fixture info, private: without it, none, and a shared fixture may be set up once more)."""
    info = getattr(item, "_fixtureinfo", None)
    defs = getattr(info, "name2fixturedefs", {}) or {}
    return frozenset(
        name
        for name, chain in defs.items()
        if chain and getattr(chain[-1], "scope", "function") in ("module", "class", "package")
    )


def register(config: pytest.Config, path: Path = LIST) -> None:
    """On an xdist worker, put the tests `path` lists at the heads of the blocks. (A worker
    cannot tell the run's `--dist`: xdist sets it to "no" there. The blocks are worksteal's, the
    README's command; under another mode the order is as valid, only not tuned for it.)"""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        return
    workers = int(workerinput.get("workercount", 1))
    config.pluginmanager.register(Plugin(workers, read_list(path)), "long_first")
