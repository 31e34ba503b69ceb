"""tests/rewrite_share.py: under PYTHONDONTWRITEBYTECODE each xdist worker rewrites its share of
the test modules once, and the others read that rewrite instead of making their own.

The end-to-end tests run a throwaway pytest project with `-n 2` in a child process, with the
share's real hook, and count, per worker, the modules pytest's private helpers wrote and the
ones collection rewrote itself (a conftest wraps the helpers to log their calls)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import rewrite_share

REPO = Path(__file__).resolve().parents[2]
MODULES = [f"test_m{i}.py" for i in range(6)]

# The throwaway project's conftest: logs every rewritten module written during the share (by
# write_share) and every module rewritten during collection. A barrier after the share makes the
# count deterministic (without it a fast worker may reach a module the other has not written
# yet, and rewrite it itself: correct, only slower). SHARE_NO_IMPORT makes the share's import of
# pytest's private helpers fail, as it would if pytest renamed them.
CONFTEST = """
import builtins, os, sys, time
from pathlib import Path

sys.path.insert(0, {repo!r})
from _pytest.assertion import rewrite
from tests import rewrite_share

LOG = Path(os.environ["SHARE_LOG"])

if os.environ.get("SHARE_NO_IMPORT"):
    _import = builtins.__import__

    def _failing(name, globals=None, *args, **kwargs):
        if name == "_pytest.assertion.rewrite" and (globals or {{}}).get("__name__") == (
            "tests.rewrite_share"
        ):
            raise ImportError("renamed by a new pytest")
        return _import(name, globals, *args, **kwargs)

    builtins.__import__ = _failing


def _log(line):
    with open(LOG / f"{{os.getpid()}}.log", "a") as f:
        f.write(line + "\\n")


def pytest_configure(config):
    workerinput = getattr(config, "workerinput", None)
    me = workerinput["workerid"] if workerinput else "controller"
    write = rewrite._write_pyc

    def logged_write(state, co, source, pyc):
        _log(f"wrote {{me}} {{Path(pyc).name.split('.')[0]}}")
        return write(state, co, source, pyc)

    rewrite._write_pyc = logged_write
    _log(f"count {{me}} {{rewrite_share.write_share(config)}}")
    rewrite._write_pyc = write
    if workerinput:
        (LOG / f"ready-{{me}}").touch()
        deadline = time.monotonic() + 60
        while len(list(LOG.glob("ready-*"))) < workerinput["workercount"]:
            assert time.monotonic() < deadline, "the other worker never got ready"
            time.sleep(0.01)
    rewrite_test = rewrite._rewrite_test

    def logged_rewrite(fn, config):
        _log(f"rewrote {{me}} {{Path(fn).stem}}")
        return rewrite_test(fn, config)

    rewrite._rewrite_test = logged_rewrite
"""

# Each module checks that its asserts are pytest's rewrite (a plain assert says nothing).
MODULE = """
def test_rewritten():
    seen = 1
    try:
        assert seen == 2
    except AssertionError as e:
        assert "assert 1 == 2" in str(e)
    else:
        raise RuntimeError("asserts are off")
"""


def _run(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    project = tmp_path / "project"
    log = tmp_path / "log"
    project.mkdir()
    log.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "conftest.py").write_text(CONFTEST.format(repo=str(REPO)))
    for name in MODULES:
        (project / name).write_text(MODULE)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider", "."],
        cwd=project,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "SHARE_LOG": str(log), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for f in sorted(log.glob("*.log")) for line in f.read_text().splitlines()]
    return run, lines


def _by_kind(lines: list[str], kind: str) -> list[tuple[str, str]]:
    return [tuple(line.split()[1:]) for line in lines if line.startswith(kind + " ")]  # type: ignore[misc]


def test_each_module_is_rewritten_once_and_read_by_the_other_worker(tmp_path: Path) -> None:
    run, lines = _run(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "6 passed" in run.stdout
    tests = {name[:-3] for name in MODULES}
    wrote = [(who, mod) for who, mod in _by_kind(lines, "wrote") if mod in tests]
    # every module written once, by one worker, the two splitting the work
    assert sorted(mod for _, mod in wrote) == sorted(tests)
    assert {who for who, _ in wrote} == {"gw0", "gw1"}
    cached = {p.name.split(".")[0] for p in (tmp_path / "project").glob("__pycache__/*.pyc")}
    assert tests <= cached
    # collection rewrote none of them: each worker read the other's cached rewrite
    assert [(w, m) for w, m in _by_kind(lines, "rewrote") if m in tests] == []
    # the controller wrote nothing (it has no share; it does not collect under xdist)
    assert ("controller", "0") in _by_kind(lines, "count")


def test_without_pytests_private_helpers_the_share_is_skipped_and_the_run_passes(
    tmp_path: Path,
) -> None:
    run, lines = _run(tmp_path, SHARE_NO_IMPORT="1")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "6 passed" in run.stdout
    assert sorted(_by_kind(lines, "count")) == [("controller", "0"), ("gw0", "0"), ("gw1", "0")]
    # as before the share: every worker rewrites every module itself, and writes none
    tests = {name[:-3] for name in MODULES}
    rewrote = Counter(w for w, m in _by_kind(lines, "rewrote") if m in tests)
    assert rewrote == {"gw0": len(MODULES), "gw1": len(MODULES)}
    assert not list((tmp_path / "project").glob("__pycache__/test_m*.pyc"))


def test_no_workers_no_share_and_an_import_failure_returns_0(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert rewrite_share.write_share(SimpleNamespace()) == 0  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "_pytest.assertion.rewrite", None)  # type: ignore[arg-type]
    worker = SimpleNamespace(workerinput={"workerid": "gw0", "workercount": 2})
    assert rewrite_share.write_share(worker) == 0  # type: ignore[arg-type]


def test_module_paths_are_the_files_collection_would_import(tmp_path: Path) -> None:
    for rel in [
        "a/test_one.py",
        "a/conftest.py",
        "a/helpers.py",
        "a/b/test_two.py",
        "a/b/two_test.py",
        "a/node_modules/test_three.py",
        "a/.venv/lib/test_four.py",
        "c/test_five.py",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    found = rewrite_share.module_paths(
        ["a", "c/test_five.py::test_x", "missing"],
        tmp_path,
        ["test_*.py", "*_test.py"],
        [".*", "node_modules"],
    )
    names = [str(p.relative_to(tmp_path.resolve())) for p in found]
    assert names == [
        "a/b/test_two.py",
        "a/b/two_test.py",
        "a/conftest.py",
        "a/test_one.py",
        "c/test_five.py",
    ]


@pytest.mark.parametrize(
    ("workerinput", "share"),
    [
        ({"workerid": "gw2", "workercount": 3}, (2, 3)),
        ({"workerid": "gw4", "workercount": 3}, (1, 3)),  # a replaced worker: a share still
        ({"workerid": "box", "workercount": 3}, None),  # not xdist's naming: no share
        ({"workerid": "gw0", "workercount": 0}, None),
        ({}, None),
    ],
)
def test_worker_share(workerinput: dict[str, object], share: tuple[int, int] | None) -> None:
    assert rewrite_share.worker_share(workerinput) == share
