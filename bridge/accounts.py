"""Account and app-key operations shared by the operator CLI and the admin HTTP API.

Secrets are generated here, sealed before they reach the store, and returned to the caller exactly
once (at creation); nothing here logs them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bridge import callback_urls
from bridge.crypto import Sealer, new_app_key, new_secret
from bridge.domain import senders
from bridge.ids import new_id
from bridge.store.base import CLOSED_MESSAGE, Store, StoreError
from bridge.store.models import Account, AppKey

MAX_ACTIVE_KEYS = 2
# Used with fullmatch: `$` would also match before a trailing newline ("acme\n").
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_COUNTRY = re.compile(r"[A-Za-z]{2}")
_URL = re.compile(r"https?://\S+")

# Fields an operator may set, with their types; webhook secret rotation is its own operation.
SETTABLE: dict[str, type | tuple[type, ...]] = {
    "kind": str,
    "raw_text": bool,
    "marketing": bool,
    "default_country": (str, type(None)),
    "tps": int,
    "daily_quota": int,
    "status_callback_url": (str, type(None)),
    "mo_callback_url": (str, type(None)),
    "low_balance_threshold": int,
    "report_format": str,
    "senders": (list, tuple),
}


_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    list: "a list",
    tuple: "a list",
    type(None): "null",
}


def _json_type(value: Any) -> str:
    """The JSON name of what an operator sent (they write JSON, not Python)."""
    for t in (bool, int, str, list, tuple, type(None)):
        if isinstance(value, t):
            return _TYPE_NAMES[t]
    return {float: "a number", dict: "an object"}.get(type(value), type(value).__name__)


def _open(account: Account | None) -> Account:
    """The account an update returned; the store leaves a closed account as it is."""
    assert account is not None
    if account.status == "closed":
        raise AccountError("ACCOUNT_CLOSED", CLOSED_MESSAGE)
    return account


class AccountError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class NewCredentials:
    account: Account
    app_key: str
    app_secret: str
    webhook_secret: str | None = None


def validate_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Check operator-supplied account settings; every error names the field."""
    out: dict[str, Any] = {}
    for name, value in settings.items():
        if name not in SETTABLE:
            raise AccountError("UNKNOWN_FIELD", f"{name}: not an account setting")
        # Any, not the union: isinstance against that would narrow `value` to object, where each
        # name's checks below read it as that name's type.
        expected: Any = SETTABLE[name]
        if isinstance(value, bool) and expected is int:
            raise AccountError("INVALID_FIELD", f"{name}: expected an integer, got a boolean")
        if not isinstance(value, expected):
            kinds = expected if isinstance(expected, tuple) else (expected,)
            want = " or ".join(dict.fromkeys(_TYPE_NAMES[t] for t in kinds))
            raise AccountError("INVALID_FIELD", f"{name}: expected {want}, got {_json_type(value)}")
        if name == "kind" and value not in ("prepaid", "postpaid"):
            raise AccountError("INVALID_FIELD", "kind: must be 'prepaid' or 'postpaid'")
        if name in ("tps", "daily_quota") and not 0 <= value <= 1_000_000_000:
            raise AccountError("INVALID_FIELD", f"{name}: must be between 0 and 1000000000")
        if name == "report_format" and value not in ("native", "aliyun"):
            raise AccountError("INVALID_FIELD", "report_format: 'native' or 'aliyun'")
        if name == "low_balance_threshold" and not 0 <= value <= 10**15:
            raise AccountError(
                "INVALID_FIELD", "low_balance_threshold: micro-units, between 0 and 10^15"
            )
        if name == "default_country" and value is not None:
            # Checked before upper-casing: "ß".upper() is "SS", which looks like a country.
            if not _COUNTRY.fullmatch(value):
                raise AccountError(
                    "INVALID_FIELD", "default_country: must be an ISO 3166 alpha-2 code like CN"
                )
            value = value.upper()
        if name == "senders":
            try:
                value = senders.parse_entries(value)
            except senders.SenderError as exc:
                raise AccountError("INVALID_FIELD", exc.message) from None
        if name.endswith("_url") and value is not None:
            if not _URL.fullmatch(value):
                raise AccountError("INVALID_FIELD", f"{name}: must be an http(s) URL")
            why = callback_urls.problem(value)
            if why is not None:
                raise AccountError("INVALID_FIELD", f"{name}: {why}")
        out[name] = value
    return out


def public_account(account: Account) -> dict[str, Any]:
    """An account as shown to operators and to its owner: never a secret."""
    data = asdict(account)
    for sealed in ("webhook_secret_enc", "prev_webhook_secret_enc", "prev_webhook_secret_until"):
        data.pop(sealed, None)
    return data


def public_key(key: AppKey) -> dict[str, Any]:
    return {
        "app_key": key.key_id,
        "account": key.account_id,
        "status": key.status,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
        "last_used_at": key.last_used_at,
    }


# How long a rotated webhook secret keeps signing beside the new one, by default.
DEFAULT_WEBHOOK_OVERLAP_MS = 24 * 3_600_000


class AccountService:
    def __init__(
        self, store: Store, sealer: Sealer, assigned_only: Callable[[], bool] = lambda: False
    ) -> None:
        self.store = store
        self.sealer = sealer
        # rules.sender_policy == "assigned", read at each change (a reload changes it): which
        # waiting messages a change of assigned senders leaves not allowed.
        self.assigned_only = assigned_only

    async def create(self, name: str, settings: dict[str, Any], now: int) -> NewCredentials:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise AccountError(
                "INVALID_FIELD",
                "name: 1-64 characters of letters, digits and _ . @ -, starting with a letter "
                "or digit",
            )
        values = validate_settings(settings)
        account_id = new_id("acc_", now)
        webhook_secret = new_secret()
        account = Account(
            id=account_id,
            name=name,
            webhook_secret_enc=self.sealer.seal(webhook_secret, account_id),
            created_at=now,
            updated_at=now,
            **values,
        )
        try:
            await self.store.create_account(account)
        except StoreError as exc:
            raise AccountError(exc.code, exc.message) from None
        key_id, secret = await self._new_key(account_id, now)
        return NewCredentials(account, key_id, secret, webhook_secret)

    async def _new_key(self, account_id: str, now: int) -> tuple[str, str]:
        key_id = new_app_key()
        secret = new_secret()
        key = AppKey(
            key_id=key_id,
            account_id=account_id,
            secret_enc=self.sealer.seal(secret, key_id),
            status="active",
            created_at=now,
        )
        try:
            await self.store.add_key(key, MAX_ACTIVE_KEYS)
        except StoreError as exc:
            raise AccountError(exc.code, exc.message) from None
        return key_id, secret

    async def resolve(self, ref: str) -> Account:
        """An account by id or by name."""
        account = await self.store.get_account(ref)
        if account is None:
            account = await self.store.get_account_by_name(ref)
        if account is None:
            raise AccountError("NOT_FOUND", f"no account {ref!r}")
        return account

    async def create_key(self, ref: str, now: int) -> tuple[Account, str, str]:
        account = await self.resolve(ref)
        key_id, secret = await self._new_key(account.id, now)
        return account, key_id, secret

    async def revoke_key(self, key_id: str, now: int) -> None:
        if not await self.store.revoke_key(key_id, now):
            key = await self.store.get_key(key_id)
            if key is None:
                raise AccountError("NOT_FOUND", f"no app key {key_id!r}")
            # Not KEY_REVOKED: that code is a 401 for a request signed with a revoked key, and
            # the operator asking here is authenticated.
            raise AccountError("KEY_ALREADY_REVOKED", f"app key {key_id!r} is already revoked")

    async def update(self, ref: str, settings: dict[str, Any], now: int) -> Account:
        account = await self.resolve(ref)
        values = validate_settings(settings)
        return _open(
            await self.store.update_account(
                account.id, values, now, assigned_only=self.assigned_only()
            )
        )

    async def set_status(self, ref: str, status: str, now: int) -> Account:
        """Enable or disable; a closed account is refused (enabling it would let it send to
        numbers whose reply opt-outs the closure erased)."""
        account = await self.resolve(ref)
        return _open(await self.store.update_account(account.id, {"status": status}, now))

    async def rotate_webhook_secret(
        self, ref: str, now: int, overlap_ms: int = DEFAULT_WEBHOOK_OVERLAP_MS
    ) -> tuple[Account, str]:
        """A new webhook secret; the old one keeps signing beside it for `overlap_ms` (two v1=
        in X-Bridge-Signature), so the customer's receiver verifies throughout its update. 0:
        the old one stops at once."""
        account = await self.resolve(ref)
        secret = new_secret()
        changes: dict[str, Any] = {
            "webhook_secret_enc": self.sealer.seal(secret, account.id),
            "prev_webhook_secret_enc": account.webhook_secret_enc if overlap_ms > 0 else None,
            "prev_webhook_secret_until": now + overlap_ms if overlap_ms > 0 else None,
        }
        updated = await self.store.update_account(account.id, changes, now)
        return _open(updated), secret

    def webhook_secret(self, account: Account) -> str:
        return self.sealer.open(account.webhook_secret_enc, account.id)

    def webhook_secrets(self, account: Account, now: int) -> list[str]:
        """The secrets a report is signed with now: the current one, and the one before the last
        rotation while its overlap lasts."""
        out = [self.webhook_secret(account)]
        until = account.prev_webhook_secret_until
        if account.prev_webhook_secret_enc and until is not None and now < until:
            out.append(self.sealer.open(account.prev_webhook_secret_enc, account.id))
        return out

    async def app_secret(self, key: AppKey) -> str:
        return self.sealer.open(key.secret_enc, key.key_id)
