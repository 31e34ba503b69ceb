"""Every module of the package imports on its own, whichever is imported first.

Why: an import cycle hides as long as some other module happens to be imported before the one
that closes it. `bridge.store.sqlite_ends` imported first failed for sessions (sqlite_ends ->
sqlite_pipeline -> sqlite_rules -> sqlite_erase -> sqlite_ends), and a daemon on PostgreSQL once
exited with an ImportError when the order of its imports changed. One child process imports each
module with every `bridge` module forgotten before it, so each import starts from nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import bridge

_CHILD = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "bridge" or m.startswith("bridge.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print("\\n".join(failed))
"""


def _modules() -> list[str]:
    root = Path(bridge.__file__).parent
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__main__":
            continue  # running it is the daemon's start, not an import
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_each_module_imports_first() -> None:
    names = _modules()
    assert "bridge.store.sqlite_ends" in names and len(names) > 50
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, *names],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert out.stdout.strip() == "", out.stdout
