"""`smpp-bridge dnc import` of a large list in bounded memory (bridge/domain/dnc_numbers.py).

The import held every number as a str several times over (the file read whole, its lines, a
set, a sorted list, the store's entries and a frozenset of them): ~200 bytes per number, 2 GB
for a national registry of ten million. Measured here in a subprocess running the real CLI on a
real SQLite file: the Python heap's peak (tracemalloc; SQLite's own page cache is outside it and
bounded by cache_size) over a process that already imported a small list.
"""

from __future__ import annotations

import base64
import json
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

N = 300_000
BYTES_PER_NUMBER = 40  # the target; measured ~25 at this size, ~8 of them per number

_CHILD = """
import contextlib, io, json, sys, tracemalloc
from bridge import cli
cfg, small, big = sys.argv[1:4]
with contextlib.redirect_stdout(io.StringIO()):  # the store opened, every module imported
    assert cli.main(["dnc", "import", "warm", small, "-c", cfg]) == 0
tracemalloc.start()
rc = cli.main(["dnc", "import", "big", big, "-c", cfg, "--country", "CN"])
print(json.dumps({"rc": rc, "peak": tracemalloc.get_traced_memory()[1]}))
"""


def test_import_of_300000_numbers_stays_under_40_bytes_a_number(tmp_path: Path) -> None:
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "store": {"engine": "sqlite", "path": str(tmp_path / "bridge.db")},
                "security": {"master_key": base64.b64encode(os.urandom(32)).decode()},
                "smscs": [{"name": "main", "system_id": "bridge"}],
                "logging": {"level": "WARNING"},
            }
        )
    )
    (tmp_path / "small.csv").write_text("+8613800138000\n")
    keys = list(range(N))
    random.Random(7).shuffle(keys)  # a registry in no particular order, with repeats
    with open(tmp_path / "big.csv", "w", encoding="utf-8") as f:
        f.write("msisdn,added\n")
        f.writelines(f"137{k:08d},2024-01-01\n" for k in keys)
        f.writelines(f"+86137{k:08d}\n" for k in keys[:1000])
        f.write("+86139*\n")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(cfg),
            str(tmp_path / "small.csv"),
            str(tmp_path / "big.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    view = json.loads("\n".join(lines[:-1]))
    assert result["rc"] == 0
    assert (view["numbers"], view["prefixes"], view["skipped"]) == (N, 1, [])
    with sqlite3.connect(tmp_path / "bridge.db") as c:
        assert c.execute("SELECT COUNT(*) FROM dnc_entries WHERE list_id='big'").fetchone() == (
            N + 1,
        )
        assert c.execute(
            "SELECT 1 FROM dnc_entries WHERE prefix=?", (f"=+86137{N - 1:08d}",)
        ).fetchone()
    assert result["peak"] < BYTES_PER_NUMBER * N, f"{result['peak'] / N:.0f} bytes a number"
