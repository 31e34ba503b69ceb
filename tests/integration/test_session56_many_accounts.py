"""Many accounts (session 56): the accept's per-account caches hold the accounts that send, and
an account's change is seen by its very next send whatever they hold.

Until session 56 the Account built from a key's account row was kept for 256 accounts (emptied
when full), a key's Authorization head for 256 keys, and the copy of an account that validates
a send for one second: a gateway whose customers' sends came round more accounts than those
built them again on every accept (bench_accept_inproc.py --accounts 1,000). Now they hold
`server.account_cache` (default 10,000) each, the least recently used dropped, and the
validation copy lives 30 s (Authenticator.ACCOUNT_S): a copy out of date is caught by the
accept transaction's version check (it answers "stale" and the send is validated again).

A real HTTP server on a real SQLite file, 300 accounts (more than the old caps):
- a second round of sends over them builds no Account, reads no account and parses no head
  again (fails on the tree before: its first assertion, 300 Accounts built again);
- with the caches at 16 and at the default, and with or without sends of other accounts in
  between (which push the account out of a small cache), every kind of change is seen by the
  account's next send: disabled and enabled by the operator, disabled behind the daemon's back
  (an operator's sqlite3, its version left alone), its rate, raw text turned off and on, and a
  top-up of an account without money;
- the caches hold at most their bound.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any

import pytest

from bridge.api import signing
from bridge.store import account_rows
from bridge.store import sqlite as sqlite_mod
from tests.integration.conftest import ApiServer, Creds
from tests.sending import approve_sign

ACCOUNTS = 300  # more than the 256 of the caches before session 56
_numbers = iter(range(10**8))


def _to() -> str:
    """A new number for each send: the frequency rules allow one number a few a day."""
    return f"+86138{next(_numbers):08d}"


@pytest.fixture(autouse=True)
def _default_sizes() -> Iterator[None]:
    """The process-wide caches back at their defaults after each test (a server configured
    small sized them for every later test of this worker)."""
    yield
    account_rows.set_account_cache(account_rows.ACCOUNT_CACHE_DEFAULT)
    signing.set_key_cache(signing.KEY_CACHE_DEFAULT)


async def _accounts(api: ApiServer, n: int, **settings: Any) -> list[Creds]:
    out: list[Creds] = []
    for k in range(0, n, 50):
        out += await asyncio.gather(
            *(api.create_account(**settings) for _ in range(k, min(n, k + 50)))
        )
    return out


async def _round(api: ApiServer, accounts: list[Creds]) -> None:
    """One send of each account, in order, each accepted."""
    for creds in accounts:
        r = await api.send(creds, {"to": _to(), "text": "hello"})
        assert r.status == 202, (creds.account_id, r.status, r.json)


async def test_a_second_round_over_300_accounts_builds_nothing_again(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = api_server
    accounts = await _accounts(api, ACCOUNTS)
    await _round(api, accounts)
    built: list[str] = []
    real_built = sqlite_mod.account_json_cached

    def counting(text: str) -> Any:
        built.append(text)
        return real_built(text)

    monkeypatch.setattr(sqlite_mod, "account_json_cached", counting)
    reads: list[str] = []
    real_get = api.store.get_account

    async def get_account(account_id: str) -> Any:
        reads.append(account_id)
        return await real_get(account_id)

    monkeypatch.setattr(api.store, "get_account", get_account)
    heads = signing._usual_head.cache_info().misses
    keyed = signing._keyed.cache_info().misses
    await _round(api, accounts)
    assert len(built) == 0, f"{len(built)} Accounts built again"
    assert reads == [], f"{len(reads)} accounts read again for validation"
    assert signing._usual_head.cache_info().misses == heads
    assert signing._keyed.cache_info().misses == keyed


def _sql(api: ApiServer, sql: str, args: tuple[Any, ...]) -> None:
    """`sql` on a connection of its own (an operator's sqlite3), committed."""
    with closing(sqlite3.connect(api.store.path)) as db:
        db.execute(sql, args)
        db.commit()


@pytest.mark.parametrize(
    ("cache", "churn"),
    [(16, True), (16, False), (None, True), (None, False)],
    ids=["cache16-others-between", "cache16-next", "default-others-between", "default-next"],
)
async def test_each_change_is_seen_by_the_accounts_next_send(
    make_api: Callable[..., Any], cache: int | None, churn: bool
) -> None:
    api: ApiServer = await make_api({"server": {"account_cache": cache}} if cache else None)
    accounts = await _accounts(api, ACCOUNTS)
    await _round(api, accounts)  # every account held (or pushed out of a small cache)
    others = iter(accounts[2:] * 4)

    async def between() -> None:
        """With `churn`, 20 other accounts send (a cache of 16 then holds none of the two)."""
        if churn:
            for _ in range(20):
                creds = next(others)
                assert (await api.send(creds, {"to": _to(), "text": "x"})).status == 202

    async def sends(creds: Creds, **extra: Any) -> tuple[int, str | None]:
        await between()
        r = await api.send(creds, {"to": _to(), "text": "hello", **extra})
        return r.status, r.code

    a, b = accounts[0], accounts[1]
    path = f"/admin/accounts/{a.account_id}"
    # Disabled and enabled by the operator.
    assert (await api.admin("POST", f"{path}/disable")).status == 200
    assert await sends(a) == (403, "ACCOUNT_DISABLED")
    assert await sends(b) == (202, None)
    assert (await api.admin("POST", f"{path}/enable")).status == 200
    assert await sends(a) == (202, None)
    # Disabled behind the daemon's back: updated_at left as it was (only row_version moves).
    _sql(api, "UPDATE accounts SET status='disabled' WHERE id=?", (a.account_id,))
    assert await sends(a) == (403, "ACCOUNT_DISABLED")
    _sql(api, "UPDATE accounts SET status='active' WHERE id=?", (a.account_id,))
    assert await sends(a) == (202, None)
    # Its rate (the test clock stands still: a second send within the second waits).
    api.clock.freeze()
    assert (await api.admin("PATCH", path, json={"tps": 1})).json["tps"] == 1
    assert await sends(a) == (202, None)
    status, code = await sends(a)
    assert (status, code) == (429, "ACCOUNT_RATE_LIMIT")
    assert (await api.admin("PATCH", path, json={"tps": 0})).json["tps"] == 0
    assert await sends(a) == (202, None)
    # Raw text turned off, and on again.
    assert (await api.admin("PATCH", path, json={"raw_text": False})).status == 200
    assert await sends(a) == (403, "RAW_TEXT_NOT_ALLOWED")
    assert (await api.admin("PATCH", path, json={"raw_text": True})).status == 200
    assert await sends(a) == (202, None)
    # An account without money, topped up.
    (poor,) = await _accounts(api, 1, ready=False)
    await approve_sign(api.store, poor.account_id, "Acme", api.ctx.now_ms())
    assert await sends(poor) == (402, "INSUFFICIENT_BALANCE")
    topup = await api.admin(
        "POST", f"/admin/accounts/{poor.account_id}/topups", json={"amount_micro": 1_000_000}
    )
    assert topup.status == 201
    assert await sends(poor) == (202, None)
    # The bound holds, whatever came through.
    bound = cache or account_rows.ACCOUNT_CACHE_DEFAULT
    auth = api.ctx.auth
    held = {
        "Account by version": len(account_rows._BY_VERSION),
        "Account by row": len(account_rows._BUILT),
        "keys": len(auth._cache),
        "validation copies": len(auth._accounts),
        "keyed HMACs": signing._keyed.cache_info().currsize,
        "Authorization heads": signing._usual_head.cache_info().currsize,
    }
    assert all(n <= bound for n in held.values()), held
    if cache:  # full: 300 accounts sent through a cache of 16
        assert all(n == bound for n in held.values()), held
