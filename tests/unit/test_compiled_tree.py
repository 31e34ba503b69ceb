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


def _checkout_in(tmp_path: Path) -> Path:
    """A copy of the script in a checkout of its own under tmp_path (its ROOT is its parent's
    parent): what a run given a wrong DEST would delete stays inside tmp_path."""
    root = tmp_path / "work" / "checkout"
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "compiled_tree.py").write_bytes(
        (ROOT / "scripts" / "compiled_tree.py").read_bytes()
    )
    (root / "README.md").write_text("the checkout\n")
    return root


def _run(root: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    script = root / "scripts" / "compiled_tree.py"
    return subprocess.run(
        [sys.executable, str(script), str(dest)], capture_output=True, text=True, timeout=60
    )


def test_a_destination_holding_the_checkout_is_refused_and_nothing_is_removed(
    tmp_path: Path,
) -> None:
    """`compiled_tree.py ..` (a slip for ../build) emptied the checkout's parent, the checkout
    with it: DEST is removed before the copy."""
    root = _checkout_in(tmp_path)
    done = _run(root, root.parent)
    assert done.returncode != 0 and "holds this checkout" in done.stderr, done.stderr
    assert (root / "README.md").read_text() == "the checkout\n"


def test_an_existing_directory_it_did_not_build_is_not_removed(tmp_path: Path) -> None:
    root = _checkout_in(tmp_path)
    other = tmp_path / "home"
    (other / "notes").mkdir(parents=True)
    (other / "notes" / "keep.txt").write_text("mine\n")
    done = _run(root, other)
    assert done.returncode != 0 and "not removed" in done.stderr, done.stderr
    assert (other / "notes" / "keep.txt").read_text() == "mine\n"
