"""Python client SDK: signs every request with BRIDGE-HMAC-SHA256 and retries safely.

POST /v1/messages always carries an Idempotency-Key (generated when the caller gives none), so a
retry after a 429/503 or a lost connection can never send a message twice; so do the writes of
sign names, templates, opt-outs and erasures, which the server runs once per key too.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
from multidict import CIMultiDict

from bridge import ids
from bridge.api import signing


class BridgeError(Exception):
    """A refusal from the gateway: `status`, the stable `code`, the `message`, the `request_id`,
    and `details` when the refusal has some (a send refused for its recipients: every refused
    one and why, `details["recipients"]`), else None."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        request_id: str | None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.details = details


class BridgeClient:
    def __init__(
        self,
        base_url: str,
        app_key: str,
        app_secret: str,
        *,
        session: aiohttp.ClientSession | None = None,
        max_retries: int = 3,
        timeout_s: float = 30.0,
        max_retry_delay_s: float = 60.0,
        max_connections: int = 64,
    ) -> None:
        """`max_retry_delay_s` caps each wait between retries (Retry-After included), for callers
        with a latency budget such as a login code that is useless a minute later.

        `max_connections` bounds the connections of the session this client opens (requests
        beyond it wait for one): the README recommends `server.max_connections_per_ip: 64`, and
        aiohttp's own default of 100 had a burst of 100 sends refused 72 connections there (each
        then retried). A session given by the caller keeps its own limit."""
        self.base_url = base_url.rstrip("/")
        self.app_key = app_key
        self._secret = app_secret
        self._session = session
        self._own_session = session is None
        self.max_retries = max_retries
        self.max_retry_delay_s = max_retry_delay_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_connections = max_connections

    def __repr__(self) -> str:
        return f"BridgeClient({self.base_url!r}, app_key={self.app_key!r})"

    async def __aenter__(self) -> BridgeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=self._max_connections),
            )
        return self._session

    def signed_headers(
        self, method: str, path: str, query: str, body: bytes, headers: dict[str, str]
    ) -> dict[str, str]:
        host = urlsplit(self.base_url).netloc
        all_headers = {"Host": host, **headers}
        added = signing.sign_request(
            self.app_key,
            self._secret,
            method,
            path,
            query,
            all_headers,
            body,
            datetime.now(UTC),
            _fresh(),
        )
        return {**all_headers, **added}

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        json_body: Any = None,
        idempotency_key: str | None = None,
        raw: bool = False,
    ) -> tuple[int, CIMultiDict[str], Any]:
        """One signed call. A query may come in `path` too (`/v1/stats?from=...`): it was signed
        as part of the path, and the server, which reads it as the query, answered every such
        call SIGNATURE_MISMATCH. `raw`: a 2xx answer's body as bytes (the CDR export's CSV)."""
        path, _, in_path = path.partition("?")
        qs = urlencode({k: v for k, v in (query or {}).items() if v is not None}, quote_via=_quote)
        qs = "&".join(q for q in (in_path, qs) if q)
        body = b"" if json_body is None else json.dumps(json_body, ensure_ascii=False).encode()
        base_headers: dict[str, str] = {}
        if json_body is not None:
            base_headers["Content-Type"] = "application/json"
        if idempotency_key is not None:
            base_headers["Idempotency-Key"] = idempotency_key
        url = self.base_url + path + (f"?{qs}" if qs else "")
        # Retrying cannot send twice: a GET, or a POST the server de-duplicates by its key.
        idempotent = method == "GET" or idempotency_key is not None
        attempt = 0
        while True:
            headers = self.signed_headers(method, path, qs, body, base_headers)
            try:
                async with self._http().request(
                    method,
                    url,
                    data=body or None,
                    headers=headers,
                    skip_auto_headers=("Content-Type",),
                    timeout=self._timeout,  # a caller's own session too
                ) as resp:
                    body_in = await resp.read()
                    status = resp.status
                    # Case-insensitive: the server spells X-Request-ID, a proxy as it likes.
                    resp_headers = CIMultiDict(resp.headers)
            # A body cut off mid-way (ClientPayloadError) is a lost connection like the others.
            except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
                if attempt >= self.max_retries or not idempotent:
                    raise
                attempt += 1
                await asyncio.sleep(min(2**attempt * 0.25, 5, self.max_retry_delay_s))
                continue
            # 409 with a Retry-After: IDEMPOTENCY_IN_PROGRESS, the first try with this key still
            # running on the server (its answer comes to the retry).
            retryable = (
                status in (429, 503)
                or (status in (502, 504) and idempotent)
                or (status == 409 and idempotency_key is not None and "Retry-After" in resp_headers)
            )
            told = _retry_after(resp_headers.get("Retry-After"))
            # A 429 says exactly when its window opens again (a day's frequency limit, the daily
            # quota): told to wait longer than this client may, an earlier retry is refused anyway,
            # so the refusal is the answer. A 503's Retry-After is an estimate (a queue draining):
            # capped and retried sooner, as max_retry_delay_s promises.
            too_long = status == 429 and told > self.max_retry_delay_s
            if retryable and attempt < self.max_retries and not too_long:
                attempt += 1
                backoff = min(2**attempt * 0.5, 10.0)
                await asyncio.sleep(min(backoff if told < 0 else told, self.max_retry_delay_s))
                continue
            if raw and status < 400:
                return status, resp_headers, body_in
            try:
                data = json.loads(body_in) if body_in else None
            except ValueError:  # a proxy's or the HTTP layer's own text/HTML page
                if status < 400:
                    raise BridgeError(
                        status,
                        "INVALID_RESPONSE",
                        f"HTTP {status} with a body that is not JSON: "
                        + body_in.decode(errors="replace")[:200],
                        resp_headers.get("X-Request-Id"),
                    ) from None
                data = None
            if status >= 400:
                err = data.get("error") if isinstance(data, dict) else None
                if not isinstance(err, dict):  # an ingress's {"error": "Bad Gateway"}
                    err = {}
                raise BridgeError(
                    status,
                    err.get("code", f"HTTP_{status}"),
                    err.get("message", body_in.decode(errors="replace")[:200]),
                    err.get("request_id") or resp_headers.get("X-Request-Id"),
                    err.get("details") if isinstance(err.get("details"), dict) else None,
                )
            return status, resp_headers, data

    async def send(
        self,
        to: str | list[str],
        *,
        text: str | None = None,
        template: str | None = None,
        params: dict[str, str] | None = None,
        sign_name: str | None = None,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"to": to, **{k: v for k, v in extra.items() if v is not None}}
        if text is not None:
            body["text"] = text
        if template is not None:
            body["template"] = template
            body["params"] = params or {}
        if sign_name is not None:
            body["sign_name"] = sign_name
        _, _, data = await self.request(
            "POST",
            "/v1/messages",
            json_body=body,
            idempotency_key=idempotency_key or _fresh(),
        )
        return data

    async def message(self, message_id: str) -> dict[str, Any]:
        _, _, data = await self.request("GET", f"/v1/messages/{_quote(message_id)}")
        return data

    async def messages(self, **query: Any) -> dict[str, Any]:
        _, _, data = await self.request("GET", "/v1/messages", query=query)
        return data

    async def preview(self, text: str, sign_name: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"text": text}
        if sign_name:
            body["sign_name"] = sign_name
        _, _, data = await self.request("POST", "/v1/preview", json_body=body)
        return data

    async def account(self) -> dict[str, Any]:
        _, _, data = await self.request("GET", "/v1/account")
        return data

    # -- sign names, templates, recipients, money -------------------------------------------------

    async def add_sign(
        self, name: str, source: str = "company", remark: str = ""
    ) -> dict[str, Any]:
        body = {"name": name, "source": source, "remark": remark}
        key = _fresh()
        return (await self.request("POST", "/v1/signs", json_body=body, idempotency_key=key))[2]

    async def sign(self, name: str) -> dict[str, Any]:
        return (await self.request("GET", f"/v1/signs/{_quote(name)}"))[2]

    async def add_template(
        self, type: str, name: str, content: str, remark: str = "", allow_urls: bool = False
    ) -> dict[str, Any]:
        """Submit a template (`type`: verification | notification | marketing); the answer
        carries its code and status (pending, or rejected by the automatic review with reasons)."""
        body = {
            "type": type,
            "name": name,
            "content": content,
            "remark": remark,
            "allow_urls": allow_urls,
        }
        return (
            await self.request("POST", "/v1/templates", json_body=body, idempotency_key=_fresh())
        )[2]

    async def template(self, code: str) -> dict[str, Any]:
        return (await self.request("GET", f"/v1/templates/{_quote(code)}"))[2]

    async def preview_template(
        self, code: str, params: dict[str, Any], sign_name: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"template": code, "params": params}
        if sign_name:
            body["sign_name"] = sign_name
        return (await self.request("POST", "/v1/preview", json_body=body))[2]

    async def opt_out(self, *numbers: str) -> dict[str, Any]:
        body = {"numbers": list(numbers)}
        _, _, data = await self.request(
            "POST", "/v1/optouts", json_body=body, idempotency_key=_fresh()
        )
        return data

    async def opt_in(self, number: str) -> dict[str, Any]:
        return (await self.request("DELETE", f"/v1/optouts/{_quote(number)}"))[2]

    async def erase_recipient(self, number: str) -> dict[str, Any]:
        path = f"/v1/recipients/{_quote(number)}/erase"
        return (await self.request("POST", path, idempotency_key=_fresh()))[2]

    async def balance(self) -> dict[str, Any]:
        return (await self.request("GET", "/v1/balance"))[2]

    async def bill(self, month: str) -> dict[str, Any]:
        return (await self.request("GET", f"/v1/bills/{_quote(month)}"))[2]

    # -- reports ---------------------------------------------------------------------------------

    async def stats(
        self, date_from: str, date_to: str, timezone: str | None = None
    ) -> dict[str, Any]:
        """`GET /v1/stats`: per day from `date_from` to `date_to` (YYYY-MM-DD), UTC days or with
        `timezone="local"` those of the gateway's `rules.timezone`."""
        query = {"from": date_from, "to": date_to, "timezone": timezone}
        return (await self.request("GET", "/v1/stats", query=query))[2]

    async def cdrs(self, month: str, timezone: str | None = None) -> str:
        """`GET /v1/cdrs`: the month's (YYYY-MM) messages as CSV text, a header row first."""
        query = {"month": month, "timezone": timezone}
        body: bytes = (await self.request("GET", "/v1/cdrs", query=query, raw=True))[2]
        return body.decode()


def _fresh() -> str:
    """A fresh Idempotency-Key for one call (its retries, after a lost connection or a 503,
    carry it, so the server runs the write once: bridge/api/idempotency.py), or a fresh nonce
    for one signature. A ULID, the time and then 80 random bits, not a random UUID: the server
    stores both in b-trees by key, where keys that sort by time are appended, a commit's together
    on a page or two, and random ones each dirty a page of their own (README, `Idempotency-Key`
    under "Endpoints")."""
    return ids.new_id("")


def _quote(
    value: str | bytes, safe: object = "", encoding: str | None = None, errors: str | None = None
) -> str:
    # urlencode's quote_via: whatever `safe` it passes, only the unreserved characters stay.
    from urllib.parse import quote

    return quote(value, safe="-_.~")


def _retry_after(value: str | None) -> float:
    """The server's Retry-After in seconds, or -1 when it gave none (or none we read)."""
    try:
        return max(0.0, float(value)) if value else -1.0
    except ValueError:
        return -1.0
