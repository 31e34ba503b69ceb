"""Each xdist worker rewrites the asserts of its share of the test modules, once, for all of them.

pytest rewrites every test module's asserts at import and caches the result in __pycache__, but
not where PYTHONDONTWRITEBYTECODE is set (it is on these machines and in CI): then every worker
rewrote and compiled all ~360 modules itself, ~25 s of CPU each before its first test, three
times over on two cores. Here, before collection, worker k of n rewrites every n-th module of
the run's paths and writes pytest's own cached form; collection then reads the cache for the
modules another worker has already done and rewrites only what is not there yet, as before.

Why it is safe: pytest writes the file under a name of the process's own and renames it into
place (os.replace), so a reader sees a whole file or none, with concurrent writers too; the file
carries the source's hash (pytest >= 9.1; its mtime and size before), which pytest checks before
using it, so a stale one is rewritten as without the share; only workers write (the controller
and a run without xdist, `-n 0` or `-p no:xdist`, have no `workerinput` and collect as before);
the files go to `__pycache__/`, which git ignores. A module another worker has not written yet
when collection reaches it is rewritten by the one that needs it: slower, never wrong.

It leans on pytest's private rewrite helpers; if they change, the share is skipped (the run is
as slow as before, never wrong), and tests/unit/test_rewrite_share.py says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatch
from pathlib import Path

import pytest


def module_paths(
    args: Iterable[str],
    cwd: Path,
    patterns: Sequence[str] = ("test_*.py",),
    skip_dirs: Sequence[str] = (),
) -> list[Path]:
    """The test modules (file names matching `patterns`, conftest.py) under the run's
    command-line paths (`file::name` counts as the file), in a fixed order; directories
    matching `skip_dirs` (pytest's norecursedirs) are not entered, as collection does not."""

    def wanted(name: str) -> bool:
        return name == "conftest.py" or any(fnmatch(name, p) for p in patterns)

    found: set[Path] = set()
    for arg in args:
        path = cwd / arg.split("::", 1)[0]
        if path.is_dir():
            for file in path.rglob("*.py"):
                inner = file.relative_to(path).parts[:-1]
                if wanted(file.name) and not any(fnmatch(d, s) for d in inner for s in skip_dirs):
                    found.add(file)
        elif path.is_file() and wanted(path.name) and path.suffix == ".py":
            found.add(path)
    return sorted(p.resolve() for p in found)


def worker_share(workerinput: dict[str, object]) -> tuple[int, int] | None:
    """(index, count) of this worker among the run's, or None if its id is not xdist's gwN."""
    try:
        index = int(str(workerinput["workerid"]).removeprefix("gw"))
        count = int(str(workerinput["workercount"]))
    except (KeyError, ValueError):
        return None
    return (index % count, count) if count > 0 else None


def write_share(config: pytest.Config) -> int:
    """Write the cached rewrite of this worker's share; the number of modules written."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:  # no workers: the one process collects, nothing to share
        return 0
    try:
        from _pytest.assertion.rewrite import (
            PYC_TAIL,
            _read_pyc,
            _rewrite_test,
            _write_pyc,
            assertstate_key,
            get_cache_dir,
        )
    except ImportError:
        return 0
    state = config.stash.get(assertstate_key, None)
    share = worker_share(workerinput)
    if state is None or share is None or config.getoption("assertmode") != "rewrite":
        return 0
    index, count = share
    paths = module_paths(
        config.args,
        config.invocation_params.dir,
        config.getini("python_files"),
        config.getini("norecursedirs"),
    )
    written = 0
    for path in paths[index::count]:
        pyc = get_cache_dir(path) / (path.name[:-3] + PYC_TAIL)
        if _read_pyc(path, pyc) is not None:
            continue
        try:
            source_hash, code = _rewrite_test(path, config)
        except Exception:  # a syntax error, bytes that do not decode: collection reports it
            continue
        try:
            pyc.parent.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only checkout: collection rewrites it as before
            continue
        written += _write_pyc(state, code, source_hash, pyc)
    return written
