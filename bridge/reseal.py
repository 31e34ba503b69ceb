"""Rotating the master key: seal every stored secret anew under the current key.

The procedure (README, "Secrets"): give every daemon the new key as `security.master_key` and the
old one as `security.previous_master_key` (restart); run `smpp-bridge secrets reseal`, which
opens each secret with whichever key sealed it and seals it under the current one; when it
reports nothing left under another key, remove the previous key. Daemons keep verifying
requests throughout: a secret opens with either key.

A row changed while the run works (a webhook secret rotated) is left as the other writer wrote
it, which is under the current key already (seal() uses it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge.crypto import MasterKeyError, Sealer


@dataclass(slots=True)
class ResealReport:
    """What a run found and did; `unreadable` (kind, id, why) opens with neither key."""

    total: int = 0
    resealed: int = 0
    current: int = 0
    changed_meanwhile: int = 0
    unreadable: list[tuple[str, str, str]] = field(default_factory=list)

    def as_dict(self, dry_run: bool) -> dict[str, Any]:
        return {
            "dry_run": dry_run,
            "total": self.total,
            "to_reseal" if dry_run else "resealed": self.resealed,
            "already_current": self.current,
            "changed_meanwhile": self.changed_meanwhile,
            "unreadable": [{"kind": k, "id": i, "error": why} for k, i, why in self.unreadable],
        }


def plan(
    rows: list[tuple[str, str, bytes]], sealer: Sealer, *, seal: bool = True
) -> tuple[list[Any], ResealReport]:
    """Pure: the (kind, id, old blob, new blob) to write, and the report so far. Without
    `seal`, the report alone (no writes): what a starting daemon asks, not sealing anew every
    secret still under the previous key."""
    report = ResealReport(total=len(rows))
    writes = []
    for kind, row_id, blob in rows:
        if sealer.is_current(blob):
            report.current += 1
            continue
        try:
            plain = sealer.open(blob, row_id)
        except MasterKeyError as exc:
            report.unreadable.append((kind, row_id, str(exc)))
            continue
        report.resealed += 1
        if seal:
            writes.append((kind, row_id, blob, sealer.seal(plain, row_id)))
    return writes, report


async def reseal(store: Any, sealer: Sealer, *, dry_run: bool = False) -> ResealReport:
    writes, report = plan(await store.sealed_secrets(), sealer)
    if dry_run:
        return report
    for kind, row_id, old, new in writes:
        if not await store.reseal(kind, row_id, old, new):
            report.resealed -= 1
            report.changed_meanwhile += 1
    return report


def start_verdict(report: ResealReport) -> tuple[str | None, str | None]:
    """(refusal, warning) for a daemon starting with the stored secrets `report` describes.

    Why: with a wrong master key (another deployment's, a typo in the file, the previous key
    dropped before `reseal` finished) the daemon started, said it was ready, and answered every
    signed request 500. None of the stored secrets opening means exactly that: refused, naming
    the keys they need. Some not opening (a store restored from elsewhere, an old revoked key)
    is worth an ERROR, not an outage of the rest."""
    if not report.unreadable:
        return None, None
    needs = "; ".join(sorted({why for _kind, _id, why in report.unreadable}))
    n, total = len(report.unreadable), report.total
    if n == total:
        return (
            f"the master key opens none of the {total} stored secrets ({needs}): give the key "
            "they were sealed with as SMPP_BRIDGE_MASTER_KEY (or "
            "SMPP_BRIDGE_PREVIOUS_MASTER_KEY), see README 'Secrets'",
            None,
        )
    return None, (
        f"{n} of {total} stored secrets open with neither master key ({needs}); requests signed "
        "with those app keys answer 500 until that key is given or the secrets are re-issued "
        "(`smpp-bridge secrets reseal --dry-run` lists them)"
    )
