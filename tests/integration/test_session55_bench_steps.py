"""scripts/bench_accept_steps.py (session 55): each named step of the stubbed accept counted alone
under callgrind, per request; a step called inside another counts less than it, and each is a
part of the whole."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_bench_accept_steps_counts_each_step_alone() -> None:
    steps = ("bridge.api.signing:verify_checked", "bridge.api.signing:_canonical",
             "bridge.api.submit:Submitter.build")  # fmt: skip
    out = subprocess.run(
        [sys.executable, "scripts/bench_accept_steps.py", "--requests", "50", *steps],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    counts = {
        m.group(1): int(m.group(2).replace(",", ""))
        for m in re.finditer(r"^(\S.*?) +([0-9,]+)$", out, re.M)
    }
    assert set(counts) == {*steps, "total (wrapped)"}, out
    verify, canonical, build = (counts[s] for s in steps)
    total = counts["total (wrapped)"]
    # _canonical is called once a request inside verify_checked (the canonical request: since
    # session 61 the HMAC is made inline, `sign` not called); build once a request.
    assert 1_000 < canonical < verify < total, out
    assert 1_000 < build < total < 20_000_000, out


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_bench_accept_steps_counts_the_three_part_ucs2_send_with_kind() -> None:
    # Session 57: `--kind ucs3` sends bench.py's 3-part UCS-2 text, which the long encoder
    # path makes (a one-part GSM send never calls it). Since session 60 that path for a long
    # UCS-2 text behind UDHs is split.udh_ucs2_parts, not encode_message.
    steps = ("bridge.api.submit:Submitter.build", "bridge.text.split:udh_ucs2_parts")
    counts = {}
    for kind in ("gsm1", "ucs3"):
        out = subprocess.run(
            [sys.executable, "scripts/bench_accept_steps.py", "--requests", "50",
             "--kind", kind, *steps],
            cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
        ).stdout  # fmt: skip
        counts[kind] = {
            m.group(1): int(m.group(2).replace(",", ""))
            for m in re.finditer(r"^(\S.*?) +([0-9,]+)$", out, re.M)
        }
    build, encode = steps
    assert counts["gsm1"][encode] == 0, counts
    assert 1_000 < counts["ucs3"][encode] < counts["ucs3"][build], counts
    assert counts["gsm1"][build] < counts["ucs3"][build], counts
