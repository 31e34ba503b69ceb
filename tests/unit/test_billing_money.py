"""billing.money_entries and billing.credited_once: what an operator's money in becomes, and
when it is credited once (session 35 finance review 3 and 4: a card or voucher names its
payment like a top-up)."""

from __future__ import annotations

from typing import Any

import pytest

from bridge import billing
from bridge.domain.ledger import EntryKind
from bridge.domain.tariffs import BillingError

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("kind", "body", "entry_kind"),
    [
        ("topup", {"amount_micro": 5_000_000, "ref": "BANK-9"}, EntryKind.TOPUP),
        ("voucher", {"amount_micro": 1_000_000, "ref": "PROMO-1"}, EntryKind.VOUCHER_GRANT),
        ("card", {"face_value_micro": 999_000_000, "ref": "SHOP-88"}, EntryKind.CARD_PURCHASE),
    ],
)
def test_every_kind_takes_a_ref_and_is_credited_once_with_it(
    kind: str, body: dict[str, Any], entry_kind: EntryKind
) -> None:
    [entry] = billing.money_entries(kind, body, T0, "Asia/Shanghai")
    assert (entry.kind, entry.ref) == (entry_kind, body["ref"])
    assert billing.credited_once(body)
    without = {k: v for k, v in body.items() if k != "ref"}
    [plain] = billing.money_entries(kind, without, T0, "Asia/Shanghai")
    assert not billing.credited_once(without)
    # Without a ref a voucher or card is named by its own id, as before.
    assert plain.ref is None if kind == "topup" else plain.ref == plain.pocket.split(":", 1)[1]


@pytest.mark.parametrize("ref", ["", "x" * 65, 7, True, ["a"]])
@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("topup", {"amount_micro": 1}),
        ("voucher", {"amount_micro": 1}),
        ("card", {"face_value_micro": 999_000_000}),
    ],
)
def test_a_ref_is_1_to_64_characters(kind: str, body: dict[str, Any], ref: object) -> None:
    with pytest.raises(BillingError) as e:
        billing.money_entries(kind, {**body, "ref": ref}, T0, "UTC")
    assert e.value.code == "INVALID_FIELD" and e.value.message.startswith("ref:")


def test_credited_once_needs_a_ref() -> None:
    assert not billing.credited_once({"amount_micro": 1, "ref": None})
    assert not billing.credited_once([{"ref": "x"}])
