"""tests/long_first.py: the listed long tests start at the heads of xdist's first blocks, and the
list names tests that exist.

The end-to-end test runs a throwaway pytest project with `-n 3 --dist worksteal` in a child
process, with the real hook, and reads which worker ran each test first."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from tests import long_first

REPO = Path(__file__).resolve().parents[2]


def test_block_sizes_are_worksteals_first_blocks() -> None:
    assert long_first.block_sizes(10, 3) == [3, 3, 4]
    assert long_first.block_sizes(7409, 3) == [2469, 2470, 2470]
    assert long_first.block_sizes(5, 1) == [5]
    assert sum(long_first.block_sizes(7409, 4)) == 7409


def test_the_longest_go_to_the_heads_of_the_blocks_and_the_rest_keeps_its_order() -> None:
    ids = [f"t/m{i // 4}.py::t{i}" for i in range(24)]  # six modules of four tests
    seconds = {ids[22]: 50.0, ids[3]: 40.0, ids[9]: 30.0, ids[17]: 5.0, ids[18]: 4.0}
    out = long_first.order(ids, seconds, 3)
    assert sorted(out) == list(range(24))
    blocks = [out[0:8], out[8:16], out[16:24]]
    # 50 s to block 0, 40 to 1, 30 to 2, then m4's 5 + 4 (one module: together) to block 2
    assert blocks[0][0] == 22
    assert blocks[1][0] == 3
    assert blocks[2][:3] == [9, 17, 18]
    rest = [i for i in out if ids[i] not in seconds]
    assert rest == sorted(rest)


def test_a_module_fixture_brings_the_tests_sharing_it_along() -> None:
    """m0's t1 is listed and uses the module fixture `traffic`, which t3 uses too: t3 comes
    along (one set-up of it); t2 uses none and stays where it was."""
    ids = [f"t/m{i // 4}.py::t{i}" for i in range(12)]
    shared = [frozenset()] * 12
    shared[1] = shared[3] = frozenset({"traffic"})
    out = long_first.order(ids, {ids[1]: 10.0}, 3, shared)
    assert out[:2] == [1, 3]
    assert sorted(out) == list(range(12))
    assert [i for i in out if i not in (1, 3)] == [0, 2, 4, 5, 6, 7, 8, 9, 10, 11]
    assert long_first.order(ids, {ids[1]: 10.0}, 3)[:2] == [1, 0]  # without: t1 alone


def test_nothing_listed_keeps_the_order() -> None:
    ids = [f"t/m.py::t{i}" for i in range(5)]
    assert long_first.order(ids, {"t/other.py::x": 9.0}, 3) == [0, 1, 2, 3, 4]


def test_every_listed_test_still_exists() -> None:
    """A name the list keeps after its test was renamed or removed orders nothing: say so."""
    seconds = long_first.read_list()
    assert len(seconds) >= 20
    missing = []
    for nodeid in seconds:
        path, _, name = nodeid.partition("::")
        func = re.sub(r"\[.*\]$", "", name.split("::")[-1])
        file = REPO / path
        names = (
            {n.name for n in ast.walk(ast.parse(file.read_text())) if hasattr(n, "name")}
            if file.exists()
            else set()
        )
        if func not in names:
            missing.append(nodeid)
    assert not missing, f"tests/long_tests.txt names tests that do not exist: {missing}"


CONFTEST = """
import os
from pathlib import Path
import pytest
from tests import long_first

def pytest_configure(config):
    long_first.register(config, Path(os.environ["LONG_FIRST_LIST"]))

@pytest.fixture(autouse=True)
def _log(request):
    wid = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(os.environ["LONG_FIRST_LOG"], wid), "a") as f:
        f.write(request.node.nodeid + "\\n")
"""


def test_a_worksteal_run_starts_each_worker_on_a_listed_test(tmp_path: Path) -> None:
    """Three modules of 30 quick tests, and one listed test near the end of each: without the
    hook, every worker's first test is an unlisted one (the listed sit at the ends of the
    blocks); with it, each worker starts on one of the three."""
    (tmp_path / "conftest.py").write_text(CONFTEST)
    for m in range(3):
        body = "".join(f"def test_{i}():\n    pass\n" for i in range(30))
        (tmp_path / f"test_m{m}.py").write_text(body)
    listed = [f"test_m{m}.py::test_28" for m in range(3)]
    (tmp_path / "long_tests.txt").write_text(
        "".join(f"{9 - m} {n}\n" for m, n in enumerate(listed))
    )
    log = tmp_path / "log"
    log.mkdir()
    env = {
        **os.environ,
        "LONG_FIRST_LOG": str(log),
        "LONG_FIRST_LIST": str(tmp_path / "long_tests.txt"),
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "3", "--dist", "worksteal",
         "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    firsts = {f.read_text().splitlines()[0] for f in log.iterdir()}
    assert firsts == set(listed), firsts
