"""Request authentication for the native API: the BRIDGE-HMAC-SHA256 checks in their fixed order.

Order matters: cheap syntax checks first, then the key, the clock, the body hash, the signature
(constant time), and only then the nonce is recorded, so forged requests can never fill the nonce
table. The pure parts live in `bridge.api.signing`; this is the shell with the store and clock.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from bridge import logs
from bridge.api import signing
from bridge.api.errors import ApiError
from bridge.api.key_use import KeyUse
from bridge.api.plain_request import PLAIN_REQUEST
from bridge.config import Config
from bridge.crypto import MasterKeyError, Sealer
from bridge.domain.skew_window import SkewWindow
from bridge.fastinit import fast_init, maker
from bridge.store.base import Store
from bridge.store.models import Account, AppKey

log = logging.getLogger("bridge.api")

# Who a /v1/ request said it was, for the log line of its refusal: (app key, account id or None).
# Set once the Authorization header parsed, so a refusal at any later check (revoked key, clock,
# body hash, signature, nonce, then the handler's own) names the customer an operator greps for.
CALLER: web.RequestKey[tuple[str, str | None]] = web.RequestKey("caller", tuple)
# The form app keys are issued in (bridge.crypto.new_app_key): an unknown Credential is logged
# only in it, as a mistyped or deleted key; anything else (a client that put its secret there)
# is not written to the log.
_ISSUED_KEY = re.compile(r"AK[0-9A-F]{24}")


def loggable_key(key_id: str) -> bool:
    """Whether an app key id nobody holds may be logged: only in the issued form."""
    return _ISSUED_KEY.fullmatch(key_id) is not None


@fast_init
@dataclass(frozen=True, slots=True)
class NonceClaim:
    """A verified request whose nonce is still to be recorded (with the key's and account's live
    state) inside the handler's own write: one transaction instead of two for a send."""

    key_id: str
    nonce: str
    expires_at: int


@fast_init
@dataclass(frozen=True, slots=True)
class Principal:
    account: Account
    key: AppKey
    deferred: NonceClaim | None = None
    # The body's hex SHA-256, as verified against X-Bridge-Content-SHA256: a send's idempotency
    # record keeps it, hashed once per request instead of twice.
    body_sha256: str | None = None


# Built on every signed request: without entering the interpreter again (fastinit.maker).
_new_claim = maker(NonceClaim)
_new_principal = maker(Principal)


def refusal(outcome: str) -> ApiError:
    """The API error for an authorize outcome other than "ok"."""
    if outcome == "revoked":
        return ApiError("KEY_REVOKED", "this app key has been revoked")
    if outcome == "nonce_reused":
        return ApiError("NONCE_REUSED", "this X-Bridge-Nonce was already used; sign a new request")
    if outcome == "disabled":
        return ApiError("ACCOUNT_DISABLED", "this account is disabled")
    if outcome == "stale":  # never an authentication error: the request may be retried as is
        return ApiError(
            "STORE_UNAVAILABLE",
            "the account changed while this request was validated; retry it",
            headers={"Retry-After": "1"},
        )
    return ApiError("UNKNOWN_APP_KEY", "the app key in Credential is not known")


class Authenticator:
    CACHE_S = 30.0
    # How long the copy of an account that validates a deferred send is used. Any time is
    # safe: the accept transaction compares the row's version (updated_at) with the copy's and
    # answers "stale" when it changed, and a send the copy refused is checked again against the
    # row (v1.post_messages); a copy out of date costs that send one more try. Until session 56
    # it was one second: a gateway taking sends from more accounts than it takes sends a second
    # (1,000s of them, round-robin) read the account from the store on every send.
    ACCOUNT_S = 30.0

    def __init__(
        self,
        store: Store,
        sealer: Sealer,
        *,
        max_skew_s: int = 300,
        clock: Callable[[], float] = time.time,
        window: SkewWindow | None = None,
        aliyun_window: SkewWindow | None = None,
        cache_size: int = signing.KEY_CACHE_DEFAULT,
    ) -> None:
        self._store = store
        self._sealer = sealer
        self._max_skew = max_skew_s
        self._clock = clock
        self._window = window
        self._aliyun_window = aliyun_window
        # The native window's end and its two answers (it is set here and never changes): read
        # on every signed request, its three calls were ~2 k instructions of each send.
        self._native_late = (
            None if window is None else (window.until_ms(), window.skew_s, window.prev_s)
        )
        # Keys and accounts by id, at most `cache_size` of each (server.account_cache): a new
        # one drops the one stored longest ago (until session 56 both were emptied at 10,000).
        self._cache: dict[str, tuple[float, AppKey, str]] = {}
        self._accounts: dict[str, tuple[float, Account]] = {}
        self._size = max(1, cache_size)
        # A secret the master key does not open answers 500 to the customer; the operator must
        # learn why, and which key the secret needs (README, "Secrets"): one line per 10 s.
        self._unopened = logs.Throttled(log)
        # Keys whose signature checked, for their last_used_at (both faces note here).
        self.key_use = KeyUse()

    @classmethod
    async def start(
        cls, store: Store, sealer: Sealer, config: Config, clock: Callable[[], float]
    ) -> Authenticator:
        """The authenticator of a process starting now: each face's window of request dates read
        from the store, and recorded there if its skew changed (bridge/domain/skew_window.py)."""
        now_ms = int(clock() * 1000)
        window = await store.skew_window("native", config.server.clock_skew_s, now_ms)
        aliyun = None
        if config.aliyun.enabled:
            aliyun = await store.skew_window("aliyun", config.aliyun.clock_skew_s, now_ms)
        signing.set_key_cache(config.server.account_cache)
        return cls(
            store,
            sealer,
            max_skew_s=config.server.clock_skew_s,
            clock=clock,
            window=window,
            aliyun_window=aliyun,
            cache_size=config.server.account_cache,
        )

    def late_s(self, now: float, *, aliyun: bool = False) -> int | None:
        """How far in the past a request may be dated now; None: as far as the skew allows."""
        if not aliyun:  # SkewWindow.late_s, its bounds read at the start
            native = self._native_late
            if native is None:
                return None
            until_ms, skew_s, prev_s = native
            return skew_s if int(now * 1000) >= until_ms else prev_s
        window = self._aliyun_window
        return None if window is None else window.late_s(int(now * 1000))

    def _cached_key(self, key_id: str) -> tuple[AppKey, str] | None:
        """`_key`'s answer while its cached copy is fresh, else None; a plain call. Why: nearly
        every request finds it there, and awaiting a coroutine that returns at once was ~1,200
        instructions more than a call (session 55)."""
        hit = self._cache.get(key_id)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1], hit[2]
        return None

    async def _key(self, key_id: str) -> tuple[AppKey, str] | None:
        """The key and its decrypted secret, cached briefly: the secret never changes for a key
        id, and the key's live status is re-read by `authorize_request` on every request."""
        now = time.monotonic()
        hit = self._cache.get(key_id)
        if hit is not None and hit[0] > now:
            return hit[1], hit[2]
        key = await self._store.get_key(key_id)
        if key is None:
            return None
        try:
            secret = self._sealer.open(key.secret_enc, key.key_id)
        except MasterKeyError as exc:
            self._unopened.error(f"the secret of app key {key_id} does not open", exc)
            raise ApiError(
                "INTERNAL_ERROR", "this key cannot be verified; contact the operator", status=500
            ) from None
        _store_newest(self._cache, key_id, (now + self.CACHE_S, key, secret), self._size)
        return key, secret

    async def lookup(self, key_id: str) -> tuple[AppKey, str] | None:
        """The key and its secret for another signing scheme (the Alibaba-compatible face)."""
        return await self._key(key_id)

    def remember(self, account: Account) -> None:
        _store_newest(
            self._accounts, account.id, (time.monotonic() + self.ACCOUNT_S, account), self._size
        )

    def _cached_account(self, account_id: str) -> Account | None:
        """`_account`'s answer while its cached copy is fresh, else None (see `_cached_key`)."""
        hit = self._accounts.get(account_id)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return None

    async def _account(self, account_id: str) -> Account | None:
        """Account settings for validating a deferred request, cached for ACCOUNT_S; the live
        status and rate are re-read inside the accept transaction."""
        now = time.monotonic()
        hit = self._accounts.get(account_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        account = await self._store.get_account(account_id)
        if account is not None:
            _store_newest(self._accounts, account_id, (now + self.ACCOUNT_S, account), self._size)
        return account

    async def authenticate(
        self,
        request: web.Request,
        read: Callable[[web.Request], Awaitable[bytes]],
        *,
        defer: bool = False,
        read_now: Callable[[web.Request], bytes | None] | None = None,
    ) -> Principal:
        """The checks in their documented order; `read` fetches the body once the headers alone
        passed (syntax, key known and active, clock skew): it was read first, so a client with
        no Authorization at all made the server read and buffer up to max_body_bytes.
        `read_now`: `read`'s answer from a plain call when it has nothing to wait for, else None
        (then `read` is awaited)."""
        try:
            # The getters' attributes where they answer them (bridge.api.plain_request).
            headers = request._headers if PLAIN_REQUEST else request.headers
            auth = signing.parse_authorization(headers.get("Authorization"))
            # The signed headers' values, by name: x-bridge-date and x-bridge-nonce among them.
            lowered, once = signing.signed_values(auth, headers)
            if once:  # each sent once: its value is the first one, stripped as the checks strip
                date_value: str | None = lowered["x-bridge-date"]
                nonce_value: str | None = lowered["x-bridge-nonce"]
            else:  # a header sent twice: the first one's value decides, as it always did
                date_value = headers.get("X-Bridge-Date")
                nonce_value = headers.get("X-Bridge-Nonce")
            if date_value is None:
                raise signing.SignatureError(
                    "SIGNATURE_MISMATCH", "X-Bridge-Date header is missing"
                )
            when, when_s = signing.parse_date_seconds(date_value)
            nonce = signing.check_nonce(nonce_value)
        except signing.SignatureError as exc:
            raise ApiError(exc.code, exc.message) from None

        cached = self._cached_key(auth.app_key)
        if cached is None:
            cached = await self._key(auth.app_key)
        if cached is None:
            if loggable_key(auth.app_key):
                request[CALLER] = (auth.app_key, None)
            raise ApiError("UNKNOWN_APP_KEY", "the app key in Credential is not known")
        key, secret = cached
        # The caller named in a refusal's log line (app._caller), set only when one is raised:
        # a request key set on every request for the few refused past this point.
        try:
            if key.status != "active":
                raise ApiError("KEY_REVOKED", "this app key has been revoked")

            now = self._clock()
            late = self.late_s(now)
            if not signing.skew_seconds_within(when_s, now, self._max_skew, late):
                try:
                    signing.check_skew(when, _utc(now), self._max_skew, late)
                except signing.SignatureError as exc:
                    raise ApiError(exc.code, exc.message) from None
            body = read_now(request) if read_now is not None else None
            if body is None:
                body = await read(request)
            try:
                if PLAIN_REQUEST:
                    method, url = request._method, request._rel_url
                else:
                    method, url = request.method, request.rel_url
                signing.verify_checked(
                    secret,
                    method,
                    url.raw_path,
                    url.raw_query_string,
                    lowered,
                    body,
                    auth,
                )
            except signing.SignatureError as exc:
                raise ApiError(exc.code, exc.message) from None

            # verify_checked compared it with the hash of the body it computed: equal, so the same.
            body_sha256 = lowered["x-bridge-content-sha256"]
            now_ms = int(now * 1000)
            # Whoever signed this holds the secret: the key is in use, whatever the nonce's fate.
            self.key_use.note(key.key_id, now_ms)
            # Kept until no copy can pass the skew check any more: a request dated up to max_skew
            # ahead is valid until max_skew after its date, inclusive; one second past that, or the
            # copy replayed at that very millisecond found its nonce expired.
            expires_at = now_ms + 2 * self._max_skew * 1000 + 1000
            if defer:
                deferred_account = self._cached_account(key.account_id)
                if deferred_account is None:
                    deferred_account = await self._account(key.account_id)
                if deferred_account is None:
                    raise refusal("unknown_key")
                claim = _new_claim(key.key_id, nonce, expires_at)
                return _new_principal(deferred_account, key, claim, body_sha256)
            account = await self.spend(NonceClaim(key.key_id, nonce, expires_at), now_ms)
            return Principal(account=account, key=key, body_sha256=body_sha256)
        except ApiError:
            request[CALLER] = (key.key_id, key.account_id)
            raise

    async def spend(self, claim: NonceClaim, now_ms: int) -> Account:
        """Record the nonce and re-read the key and account live; the refusal for a replayed
        nonce, a revoked or unknown key or a disabled account is raised. The send path calls it
        for answers given without its accept transaction (a refusal, an idempotent replay)."""
        outcome, account = await self._store.authorize_request(
            claim.key_id, claim.nonce, claim.expires_at, now_ms
        )
        if outcome != "ok" or account is None:
            self._cache.pop(claim.key_id, None)
            raise refusal(outcome if account is not None else "unknown_key")
        if not account.active:
            raise refusal("disabled")
        return account


def _store_newest(cache: dict[str, Any], key: str, value: Any, size: int) -> None:
    """`value` stored under `key` as the newest entry (after every other: a dict keeps the order
    of insertion), the oldest dropped while `cache` holds more than `size`. Why not the least
    recently used: a hit would cost a move on every request; an entry stored again when it
    expires moves then."""
    cache.pop(key, None)
    cache[key] = value
    while len(cache) > size:
        del cache[next(iter(cache))]


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
