"""Session-wide fixtures: one throw-away PostgreSQL cluster for the whole run, started only when a
test asks for it (SQLite-only runs never start one).

Without PostgreSQL binaries (and without SMPP_BRIDGE_TEST_PG_DSN) the PostgreSQL tests skip with
the reason; under CI (SMPP_BRIDGE_CI=1, set by .ci/run) they fail instead, so CI cannot pass by
silently skipping half the store suite.
"""

from __future__ import annotations

import asyncio
import compileall
import contextlib
import faulthandler
import gc
import io
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

import bridge
from tests import long_first, ports, rewrite_share
from tests.e2e.harness import WebhookReceiver
from tests.pg_cluster import (
    Cluster,
    ClusterUnavailable,
    Migrated,
    ci,
    create_database,
    drop_database,
    migrated_database,
    new_database_name,
    settled,
    start_cluster,
)

# CI runs the property tests on a fixed seed: a landing must not hang on the one random draw in
# thousands that finds a new case. Exploration is the development loop's job (random there), and
# what it finds is pinned with @example, as test_text_split's full-part CR texts are.
settings.register_profile("ci", derandomize=True, database=None)
if ci():
    settings.load_profile("ci")

# tests/ports.py's reservations, shared by every test run on the machine and the scripts their
# tests start (inherited): a fixed path, outside each run's TMPDIR.
if Path("/tmp").is_dir():
    os.environ.setdefault(ports.LOCK_ENV, "/tmp/smpp-bridge-test-ports.lock")


def pytest_configure(config: pytest.Config) -> None:
    """The package's bytecode, written once before the workers start: a few hundred tests start
    the daemon or the CLI as processes of their own, and where PYTHONDONTWRITEBYTECODE is set
    (it is on these machines) each of them compiled every module it imported from source,
    ~0.2 s of CPU per process (py_compile writes whatever that variable says)."""
    if not hasattr(config, "workerinput"):  # the controller (or a run without -n): once
        compileall.compile_dir(Path(bridge.__file__).parent, quiet=1)
    rewrite_share.write_share(config)  # a worker: its share of the test modules' rewrite
    long_first.register(config)  # a worker: the longest tests at the heads of the blocks
    limit = float(config.getini("timeout") or 0)
    if limit > TASK_DUMP_BEFORE_S:
        threading.Thread(
            target=_watch_for_hangs, args=(config, limit - TASK_DUMP_BEFORE_S), daemon=True
        ).start()


# -- hung tests --------------------------------------------------------------------------------
# pytest-timeout ends a hung test's worker, but under xdist its report goes nowhere (a worker's
# terminal is not the run's), and an asyncio test hangs in the loop's select, which says nothing.
# Shortly before, this writes to the run's own stderr (capture suspended, as pdb does) every
# thread's stack and the stack of each task of every running event loop: how CI's hang in
# Daemon.stop (waiting on a heartbeat that had lost its cancel) was found.
# (tests/integration/test_hang_report.py sets it lower, to hang for seconds, not a minute)
TASK_DUMP_BEFORE_S = float(os.environ.get("SMPP_BRIDGE_TEST_DUMP_BEFORE_S", "30"))
_running: dict[str, Any] = {}


def _hang_report(name: str, seconds: float) -> str:
    out = io.StringIO()
    print(f"\n+++ {name} still running after {seconds:.0f} s: its stacks +++", file=out)
    for obj in gc.get_objects():
        if isinstance(obj, asyncio.AbstractEventLoop) and obj.is_running():
            for task in asyncio.all_tasks(obj):
                print(f"- task {task!r}", file=out)
                task.print_stack(limit=20, file=out)
    return out.getvalue()


def _watch_for_hangs(config: pytest.Config, limit_s: float) -> None:
    dumped = None
    while True:
        time.sleep(1.0)
        test, since = _running.get("test"), _running.get("since", 0.0)
        if test is None or test == dumped or time.monotonic() - since < limit_s:
            continue
        dumped = test
        report = _hang_report(test, time.monotonic() - since)
        capman = config.pluginmanager.getplugin("capturemanager")
        with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
            sys.stderr.write(report)
            sys.stderr.flush()
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    _running.update(test=item.nodeid, since=time.monotonic())
    try:
        return (yield)
    finally:
        _running["test"] = None


def run_async(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, whether or not a loop runs in this thread."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = asyncio.run(coro)
        except BaseException as exc:  # handed to the caller
            out["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out.get("value")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    try:
        cluster = start_cluster()
    except ClusterUnavailable as exc:
        if ci():
            pytest.fail(f"PostgreSQL is required under SMPP_BRIDGE_CI: {exc}", pytrace=False)
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        run_async(settled(cluster.admin_dsn))
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_dsn(pg_cluster: Cluster) -> Iterator[str]:
    """A DSN to a fresh, empty database (dropped after the test)."""
    name = new_database_name()
    dsn = run_async(create_database(pg_cluster, name))
    try:
        yield dsn
    finally:
        run_async(drop_database(pg_cluster, name))


@pytest.fixture(scope="session")
def _pg_migrated_held(pg_cluster: Cluster) -> Iterator[list[Migrated]]:
    held: list[Migrated] = []
    yield held
    for db in held:  # an external server's (ours goes with the cluster)
        with contextlib.suppress(Exception):
            run_async(drop_database(pg_cluster, db.name))


@pytest.fixture
def pg_migrated_dsn(pg_cluster: Cluster, _pg_migrated_held: list[Migrated]) -> str:
    """A DSN to a database as a fresh migration leaves it: one kept by this worker and put back
    before each test (tests/pg_cluster.py's migrated_database), not one created and migrated."""
    return str(run_async(migrated_database(pg_cluster, _pg_migrated_held)))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that runs on PostgreSQL (`-m "not postgres"` leaves them out)."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        names = getattr(item, "fixturenames", ())
        if params.get("engine") == "postgres" or "pg_dsn" in names or "pg_cluster" in names:
            item.add_marker(pytest.mark.postgres)


@pytest.fixture
async def receiver():
    """A real aiohttp server that records the webhooks posted to it (e2e and metrics suites)."""
    r = WebhookReceiver()
    await r.start()
    yield r
    await r.stop()
