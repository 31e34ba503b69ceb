"""Test set-up shared by the suites: make an account able to send (an approved sign, funds).

Billing and the sending rules are on in every test server, as in production; tests about other
things start from an account that passes them, and the rules' own tests start from bare accounts.
"""

from __future__ import annotations

from typing import Any

from bridge.domain.ledger import topup
from bridge.domain.signs import canonical
from bridge.store.models import Sign

DEFAULT_SIGNS = ("Acme",)
DEFAULT_FUNDS = 1_000_000 * 1_000_000  # one million CNY in micro-units
# Every country code priced, so tests may send anywhere (+86 stays domestic).
TEST_INTERNATIONAL = {f"+{d}": 50_000 for d in range(1, 10)}


async def approve_sign(store: Any, account_id: str, name: str, now: int) -> None:
    await store.add_sign(
        Sign(account_id, name, canonical(name), "company", "", "approved", None, None, now, now)
    )


async def ready_to_send(
    store: Any,
    account_id: str,
    now: int,
    *,
    signs: tuple[str, ...] = DEFAULT_SIGNS,
    funds: int = DEFAULT_FUNDS,
) -> None:
    for name in signs:
        await approve_sign(store, account_id, name, now)
    if funds:
        await store.append_ledger(account_id, topup(funds, now, "test funds"))


async def submit_template(
    api: Any, creds: Any, content: str, kind: str = "verification", **extra: Any
) -> dict[str, Any]:
    """POST /v1/templates as the account (name "t"); asserts it was taken (201)."""
    r = await api.request(
        "POST", "/v1/templates", creds=creds,
        json={"type": kind, "name": "t", "content": content, **extra},
    )  # fmt: skip
    assert r.status == 201, r.json
    return r.json
