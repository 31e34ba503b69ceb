"""scripts/compiled_tree.py never builds inside the checkout: a .so beside a .py wins its
import, so an edited .py there would silently not run (README, Benchmarks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_destination_inside_the_checkout_is_refused_and_nothing_is_written() -> None:
    dest = ROOT / "build-compiled-test"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compiled_tree.py"), str(dest)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "outside this checkout" in done.stderr
    assert not dest.exists()
    assert not list((ROOT / "bridge").rglob("*.so"))
