"""The daemon's collector settings (bridge.cli._tune_gc), in a fresh interpreter: they are
process-wide, so not set in the test process itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = (
    "import gc, json\n"
    "import bridge.app\n"
    "from bridge.cli import _tune_gc, GC_THRESHOLD\n"
    "before = gc.get_threshold()\n"
    "_tune_gc()\n"
    "print(json.dumps({'default': GC_THRESHOLD, 'before': before,\n"
    "    'after': gc.get_threshold(), 'frozen': gc.get_freeze_count(),\n"
    "    'tracked': len(gc.get_objects())}))\n"
)


def _probe(**env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout)


def _cpython_default() -> list[int]:
    """This interpreter's own thresholds: 700 young objects before Python 3.13, 2000 from it."""
    out = subprocess.run(
        [sys.executable, "-c", "import gc; print(list(gc.get_threshold()))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout)


def test_start_up_objects_are_frozen_and_young_collections_are_rarer() -> None:
    got = _probe()
    # CPython's own default (700 measured 5-7% of the CPU): importing the daemon changes nothing.
    assert got["before"] == _cpython_default()
    assert got["after"] == [got["default"], *got["before"][1:]]
    assert got["default"] > got["before"][0]
    # Every module's objects left the generations that collections walk.
    assert got["frozen"] > 20_000 and got["tracked"] < 1_000, got


def test_the_threshold_can_be_set_from_the_environment() -> None:
    default = _cpython_default()
    got = _probe(SMPP_BRIDGE_GC_THRESHOLD=str(default[0]))
    assert got["after"] == got["before"] == default, got
    got = _probe(SMPP_BRIDGE_GC_THRESHOLD="1234")
    assert got["after"] == [1234, *default[1:]], got
