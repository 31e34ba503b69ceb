"""scripts/accept_differential.py: a seed runs the accepts it ran before session 60.

Why (session 60's review): the script's seeds are its record (the README quotes the seeds each
session ran against its start tree), and session 59's review drew its new choice (accepts without
sending rules) from a generator of its own so that the draws before it stayed each seed's. Session
60's parts a message were drawn from the scenario's own generator: every draw after the first
accept's moved (other recipients, accounts, signs, clocks), so no earlier seed ran what it had run.
The accepts' messages of seeds 1 and 3, but for their parts, are pinned here as the script before
session 60 drew them (its parts always 1); drawn from the scenario's generator they differ.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from pathlib import Path
from typing import Any

import pytest

import tests.integration.test_store_rules as store_rules

ROOT = Path(__file__).resolve().parents[2]

# seed -> (messages made, SHA-256 prefix of their repr lines), as the script of 52ffcc9^1 drew
# them (session 60's start): the message id, recipient, account, clock and sign of each.
BEFORE = {1: (18, "9cb7cc1372b9a6c0"), 3: (16, "5b47723a514e8eac")}


def _script() -> Any:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import accept_differential
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return accept_differential


@pytest.mark.parametrize("seed", sorted(BEFORE))
def test_a_seed_draws_the_accepts_it_drew_before_parts_were_drawn(
    seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    real = store_rules.message

    def message(mid: str, recipient: str, **kw: Any) -> Any:
        kw.pop("parts", None)  # the one draw the script did not make before
        made.append(repr((mid, recipient, sorted(kw.items()))))
        return real(mid, recipient, **kw)

    # The scenario imports `message` from the module when it runs: the recording one.
    monkeypatch.setattr(store_rules, "message", message)
    asyncio.run(_script().scenario(seed, tmp_path / "a.db"))
    digest = hashlib.sha256("\n".join(made).encode()).hexdigest()[:16]
    assert (len(made), digest) == BEFORE[seed], made
