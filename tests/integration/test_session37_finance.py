"""Session 37: the money an operator handles, on both store engines (a real SQLite file, a real
PostgreSQL cluster) behind the real aiohttp app (conftest.engine_api), and through the CLI (a
real subprocess on a SQLite file).

1. The low-balance mark (accounts.low_warned_at, session 36) was kept but never shown: an
   operator or customer looking at a balance under its threshold could not tell whether the
   balance.low warning of this dip had fired (and so would not fire again). Every answer that
   shows the threshold now shows `low_balance_warned_at` (unix ms, null when not warned): the
   admin and customer account answers, the balances (GET /v1/balance, the admin's, `bill
   balance`) and `account show`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from tests.integration.conftest import ApiServer, Clock  # noqa: E402
from tests.integration.test_billing_flow import MARCH, funded, number, send_ok  # noqa: E402
from tests.integration.test_cli_rules import cfg, create_accounts, db, ok  # noqa: E402

engine = engines.engine
cfg = cfg


async def _shown(api: ApiServer, creds: Any) -> dict[str, Any]:
    """low_balance_warned_at as each answer shows it."""
    acc = f"/admin/accounts/{creds.account.id}"
    answers = {
        "admin account": await api.admin("GET", acc),
        "admin balance": await api.admin("GET", f"{acc}/balance"),
        "own account": await api.request("GET", "/v1/account", creds=creds),
        "own balance": await api.request("GET", "/v1/balance", creds=creds),
    }
    for r in answers.values():
        assert r.status == 200, r.json
    return {k: r.json["low_balance_warned_at"] for k, r in answers.items()}


async def test_the_low_balance_mark_is_shown_with_the_threshold(
    engine_api: ApiServer, clock: Clock
) -> None:
    clock.freeze(MARCH)
    api = engine_api
    creds = await funded(api, 300_000, low_balance_threshold=1_000_000)
    assert set((await _shown(api, creds)).values()) == {None}  # below, but nothing charged yet
    await send_ok(api, creds, number(1))  # the charge that warns
    warned_at = api.ctx.now_ms()
    assert set((await _shown(api, creds)).values()) == {warned_at}
    clock.advance(60)
    await send_ok(api, creds, number(2))  # the same dip: the mark keeps its time
    assert set((await _shown(api, creds)).values()) == {warned_at}
    # Back at the threshold: the dip is over, nothing warned.
    acc = f"/admin/accounts/{creds.account.id}"
    r = await api.admin("POST", f"{acc}/topups", json={"amount_micro": 1_000_000})
    assert r.status == 201, r.json
    assert set((await _shown(api, creds)).values()) == {None}
    # Read-only: not a setting an update takes.
    r = await api.admin("PATCH", acc, json={"low_balance_warned_at": None})
    assert (r.status, r.code) == (400, "UNKNOWN_FIELD"), r.json


def test_the_cli_shows_the_low_balance_mark(cfg: Path) -> None:
    ids = create_accounts(cfg, ("acme",))
    ok(cfg, "bill", "topup", ids["acme"], "1.00")
    shown = ok(cfg, "account", "show", ids["acme"]), ok(cfg, "bill", "balance", ids["acme"])
    assert [v["low_balance_warned_at"] for v in shown] == [None, None]
    with db(cfg) as c:  # as an accept's warning leaves it (no CLI flag sets a threshold)
        c.execute(
            "UPDATE accounts SET low_balance_threshold=5000000, low_warned_at=1234 WHERE id=?",
            (ids["acme"],),
        )
    shown = ok(cfg, "account", "show", ids["acme"]), ok(cfg, "bill", "balance", ids["acme"])
    assert [v["low_balance_warned_at"] for v in shown] == [1234, 1234]
