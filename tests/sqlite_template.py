"""A SQLite store file as a fresh migration leaves it, made once per test process and copied to
a test's store path before the store's first open, which then finds it migrated.

Why: ~1,500 tests (the SQLite engine of tests/store_engines.py, the API servers of
tests/integration/conftest.py's start_api) each migrated a new file: ~20 ms of CPU and the
migration's commit and fsyncs, 0.1-0.35 s of wall on a busy 2-core machine, against 2 ms and
16-38 ms for a copy (the money state machine's examples start the same way). A test that puts
a file there first (an old schema, a corrupt file) keeps it: nothing is copied over it.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_template: list[Path] = []  # this process's, once made


def migrated_copy(to: Path) -> None:
    """Make `to` a copy of a freshly migrated store file, unless it exists already (or its
    folder does not: the store's open says what is wrong, as without the copy)."""
    if to.exists() or not to.parent.is_dir():
        return
    template = _made()
    shutil.copyfile(template, to)
    shutil.copymode(template, to)  # the mode SQLite gave the file it made


def _made() -> Path:
    if not _template:
        from bridge.store.sqlite import SqliteStore
        from tests.conftest import run_async

        folder = Path(tempfile.mkdtemp(prefix="smpp-bridge-migrated-"))
        atexit.register(shutil.rmtree, folder, True)
        path = folder / "bridge.db"

        async def migrate() -> None:
            store = SqliteStore(path)
            await store.open()
            await store.close()

        run_async(migrate())
        # A clean close leaves everything in the file (the WAL emptied and removed): a copy of
        # the file alone is the whole store.
        assert not path.with_name("bridge.db-wal").exists(), "the migration not all in the file"
        _template.append(path)
    return _template[0]
