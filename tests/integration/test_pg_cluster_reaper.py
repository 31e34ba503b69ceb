"""The test clusters of a run killed from outside are stopped by the next run (tests/pg_cluster.py).

A pytest killed by SIGKILL (or a `timeout` around it) never reaches its fixtures' teardown, so
its throw-away PostgreSQL servers kept running until someone found them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.pg_cluster import Cluster, reap_orphans

CHILD = """
import time
from tests.pg_cluster import start_cluster
c = start_cluster()
print(c.datadir, c.port, flush=True)
time.sleep(600)
"""


def accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_killed_runs_cluster_is_stopped_and_removed(pg_cluster: Cluster) -> None:
    if pg_cluster.bindir is None or pg_cluster.datadir is None:
        pytest.skip("an external server: no throw-away clusters here")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        assert child.stdout is not None
        datadir, port = child.stdout.readline().split()
    finally:
        os.kill(child.pid, signal.SIGKILL)  # as a killed pytest: no teardown runs
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    root = os.path.dirname(datadir)
    assert accepts(int(port)), "the orphan's server runs on"
    reaped = reap_orphans(pg_cluster.bindir)
    assert [str(r) for r in reaped if str(r) == root] == [root]
    assert not os.path.exists(root)
    assert not accepts(int(port))
    # This run's own cluster (its starter, this process, lives) is left alone.
    assert pg_cluster.datadir.parent not in reaped
    assert accepts(pg_cluster.port) and pg_cluster.datadir.exists()
