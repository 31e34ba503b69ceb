"""Shared fixtures for API integration tests: a real SQLite file, a real aiohttp server on
127.0.0.1, an ApiContext built like `bridge.app.Daemon.start` builds it (without connectors or the
simulator: the API works without them), an injectable clock, accounts made through
AccountService, and requests signed with `bridge.api.signing.sign_request`.

Every reply that passes through `ApiServer.request` / `ApiServer.admin` (or the threaded twin used
by hypothesis tests) is checked on the way: it carries an X-Request-Id, an error is the JSON
envelope with a code from `errors.CODES` and that code's status, nothing looks like a traceback,
and the body and headers match the OpenAPI document for that path, method and status. So any test
that talks to the server also keeps `/openapi.json` true.

Fixtures: clock, make_api (factory for servers with config overrides), api_server, store,
api_client (a raw aiohttp session), make_account, signed_request, sdk_client, threaded_api.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for
from multidict import CIMultiDict
from yarl import URL

from bridge import logs
from bridge.accounts import AccountService
from bridge.api import http_errors
from bridge.api.app import make_app, render_unparsed
from bridge.api.auth import Authenticator
from bridge.api.context import ApiContext
from bridge.api.errors import CODES, LISTED_CODES, RECIPIENT_CODES
from bridge.api.openapi import openapi_document
from bridge.api.signing import sign_request
from bridge.api.submit import Submitter
from bridge.app import make_router
from bridge.client import BridgeClient
from bridge.config import Config, parse_config
from bridge.crypto import Sealer
from bridge.store.models import Account
from bridge.store.sqlite import SqliteStore
from bridge.wiring import configure_store
from tests.sending import TEST_INTERNATIONAL, ready_to_send
from tests.sqlite_template import migrated_copy

ADMIN_TOKEN = "test-admin-token-0123456789"
CN_MOBILE = "+8613800138000"
_UNSET: Any = object()


# -- clock ---------------------------------------------------------------------------------------


class Clock:
    """The server's clock: real time by default (the SDK and CLI sign with real time), or frozen
    at a whole second so skew and rate tests are exact."""

    def __init__(self) -> None:
        self.frozen: float | None = None
        self.offset = 0.0

    def __call__(self) -> float:
        return self.frozen if self.frozen is not None else time.time() + self.offset

    def freeze(self, at: float | None = None) -> float:
        self.frozen = float(int(time.time())) if at is None else float(at)
        return self.frozen

    def advance(self, seconds: float) -> None:
        if self.frozen is not None:
            self.frozen += seconds
        else:
            self.offset += seconds

    def utc(self) -> datetime:
        return datetime.fromtimestamp(self(), UTC)


# -- configuration -------------------------------------------------------------------------------


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def build_config(tmp_path: Path, overrides: Mapping[str, Any] | None = None) -> Config:
    """A config with one SMSC (never connected), an admin token and an inline master key."""
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 8080, "admin_token": ADMIN_TOKEN},
        "store": {"path": str(tmp_path / "bridge.db"), "group_commit_ms": 0},
        "security": {"master_key": base64.b64encode(os.urandom(32)).decode()},
        "smscs": [{"name": "main", "system_id": "bridge"}],
        "logging": {"level": "WARNING"},
        "billing": {"tariff": {"international": TEST_INTERNATIONAL}},
    }
    return parse_config(_merge(data, overrides or {}), env={}, base_dir=tmp_path)


# -- OpenAPI response checking -------------------------------------------------------------------


class OpenApi:
    """Validates replies against the served document: body schema (components resolved, 3.0
    `nullable` turned into JSON Schema) and required response headers."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        # (kind, id of the document's node) -> its validator, built once: jsonschema.validate
        # checked the schema itself and built a validator on every call, and to_jsonschema
        # converted the node again, for every header and body of every reply of the suite.
        self._validators: dict[tuple[str, int], Any] = {}
        self._paths = []
        for template in doc["paths"]:
            pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
            literal = sum(1 for seg in template.split("/") if seg and not seg.startswith("{"))
            self._paths.append((re.compile(f"^{pattern}$"), literal, template))
        self._paths.sort(key=lambda p: -p[1])  # literal segments win over {params}

    def deref(self, node: Any) -> Any:
        while isinstance(node, dict) and "$ref" in node:
            target: Any = self.doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    def to_jsonschema(self, node: Any) -> Any:
        node = self.deref(node)
        if isinstance(node, list):
            return [self.to_jsonschema(n) for n in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "nullable":
                continue
            if key in ("properties", "patternProperties"):
                out[key] = {name: self.to_jsonschema(s) for name, s in value.items()}
            elif key in ("enum", "required", "pattern", "description", "format", "type"):
                out[key] = value
            else:
                out[key] = self.to_jsonschema(value)
        if node.get("nullable"):
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
            if "type" in out:
                out["type"] = [out["type"], "null"]
            else:
                out = {"anyOf": [out, {"type": "null"}]}
        return out

    def validator(self, node: Any, *, body: bool) -> Any:
        """A body is validated as Draft 7, a header as jsonschema.validate would (the draft its
        schema names, else the latest); each schema checked once, as that did on every call."""
        key = ("body" if body else "header", id(node))
        found = self._validators.get(key)
        if found is None:
            schema = self.to_jsonschema(node)
            cls = jsonschema.Draft7Validator if body else validator_for(schema)
            cls.check_schema(schema)
            found = self._validators[key] = cls(schema)
        return found

    def template_for(self, path: str) -> str | None:
        for pattern, _, template in self._paths:
            if pattern.match(path):
                return template
        return None

    def operation(self, method: str, path: str) -> dict[str, Any] | None:
        template = self.template_for(path)
        if template is None:
            return None
        return self.doc["paths"][template].get(method.lower())

    def check(self, method: str, path: str, reply: Reply) -> None:
        op = self.operation(method, path)
        if op is None or method.upper() == "HEAD":
            return  # unknown path (404) or method (405): only the envelope check applies
        responses = op["responses"]
        spec = responses.get(str(reply.status)) or responses.get("default")
        assert spec is not None, (
            f"{method} {path} answered {reply.status}, which the OpenAPI document does not list "
            f"for this operation (listed: {sorted(responses)}); body={reply.text[:300]}"
        )
        spec = self.deref(spec)
        for name, header in spec.get("headers", {}).items():
            header = self.deref(header)
            value = reply.headers.get(name)
            if header.get("required"):
                assert value is not None, f"{method} {path} {reply.status}: header {name} missing"
            if value is not None:
                error = best_match(self.validator(header["schema"], body=False).iter_errors(value))
                if error is not None:
                    raise error  # as jsonschema.validate raised it
        content = spec.get("content", {}).get("application/json")
        if content is None:
            return
        assert reply.json is not _UNSET, f"{method} {path}: JSON expected, got {reply.text[:200]}"
        validator = self.validator(content["schema"], body=True)
        errors = sorted(validator.iter_errors(reply.json), key=lambda e: e.path)
        assert not errors, (
            f"{method} {path} {reply.status} does not match the OpenAPI document: "
            + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])
        )


OPENAPI = OpenApi(openapi_document())


# -- replies -------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: CIMultiDict[str]
    body: bytes
    json: Any = _UNSET

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def code(self) -> str | None:
        if isinstance(self.json, dict) and isinstance(self.json.get("error"), dict):
            return self.json["error"].get("code")
        return None

    @property
    def message(self) -> str:
        return self.json["error"]["message"] if self.code else ""

    @property
    def request_id(self) -> str | None:
        return self.headers.get("X-Request-Id")


def send_prepared(
    port: int, method: str, path: str, query: str, hdrs: Mapping[str, str], body: bytes
) -> Reply:
    """A request whose headers are prepared (prepare_headers) sent as they are over one
    connection (http.client: no Host or Accept-Encoding of its own), its answer checked
    (check_reply)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        target = path + (f"?{query}" if query else "")
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for name, value in hdrs.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        resp = conn.getresponse()
        reply = make_reply(resp.status, CIMultiDict(resp.getheaders()), resp.read())
    finally:
        conn.close()
    check_reply(method, path, reply)
    return reply


def make_reply(status: int, headers: CIMultiDict[str], body: bytes) -> Reply:
    reply = Reply(status, headers, body)
    if body and headers.get("Content-Type", "").startswith("application/json"):
        reply.json = json.loads(body)
    return reply


def check_reply(method: str, path: str, reply: Reply, validate: bool = True) -> None:
    """What every response of this API must satisfy, whatever the test is about."""
    rid = reply.request_id
    assert rid and re.fullmatch(r"req_[0-9a-f]{16}", rid), f"no X-Request-Id: {reply.headers}"
    for marker in (b"Traceback", b'File "', b"Error:\n"):
        assert marker not in reply.body, f"traceback-like text in body: {reply.text[:300]}"
    not_ready = path == "/readyz" and reply.status == 503  # a report, not a refusal
    if reply.status >= 400 and method.upper() != "HEAD" and not not_ready:
        assert isinstance(reply.json, dict), f"error is not JSON: {reply.status} {reply.text[:200]}"
        assert set(reply.json) == {"error"}, reply.json
        err = reply.json["error"]
        # `details` only on a refusal of recipients (errors.RECIPIENT_CODES), always there; on
        # a batch's numbers refused as sent (errors.LISTED_CODES) when several were given.
        extra = {"details"} if err.get("code") in RECIPIENT_CODES else set()
        if err.get("code") in LISTED_CODES:
            extra = {"details"} & set(err)
        assert set(err) == {"code", "message", "request_id", *extra}, err
        assert err["code"] in CODES, f"code {err['code']!r} is not in errors.CODES"
        assert CODES[err["code"]] == reply.status, (err["code"], reply.status)
        assert err["request_id"] == rid
        assert isinstance(err["message"], str) and err["message"]
    if validate:
        OPENAPI.check(method, path, reply)


# -- credentials and signing ---------------------------------------------------------------------


@dataclass(frozen=True)
class Creds:
    account: Account
    app_key: str
    app_secret: str
    webhook_secret: str | None = None

    @property
    def account_id(self) -> str:
        return self.account.id


def new_nonce() -> str:
    return secrets.token_urlsafe(18)


def prepare_headers(
    host: str,
    method: str,
    path: str,
    query: str,
    body: bytes,
    *,
    creds: Creds | None,
    headers: Mapping[str, str] | None,
    content_type: str | None,
    idempotency_key: str | None,
    when: datetime,
    nonce: str | None,
) -> dict[str, str]:
    out: dict[str, str] = {"Host": host}
    if content_type is not None:
        out["Content-Type"] = content_type
    if idempotency_key is not None:
        out["Idempotency-Key"] = idempotency_key
    out.update(headers or {})
    if creds is not None:
        out.update(
            sign_request(
                creds.app_key,
                creds.app_secret,
                method,
                path,
                query,
                out,
                body,
                when,
                nonce or new_nonce(),
            )
        )
    return out


def _body_of(json_body: Any, body: bytes | None) -> bytes:
    if body is not None:
        return body
    if json_body is _UNSET:
        return b""
    return json.dumps(json_body, ensure_ascii=False).encode()


# -- the server ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """One request as the server answered it (seen by an outermost observing middleware)."""

    method: str
    path: str
    status: int
    idempotency_key: str | None


class Observer:
    """Records every answer and wakes waiters: lets a test act between a client's attempts."""

    def __init__(self) -> None:
        self.served: list[Served] = []
        self._changed = asyncio.Condition()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        resp = await handler(request)
        key = request.headers.get("Idempotency-Key")
        self.served.append(Served(request.method, request.path, resp.status, key))
        async with self._changed:
            self._changed.notify_all()
        return resp

    async def wait_for(self, predicate: Callable[[Served], bool]) -> Served:
        """The first answer matching `predicate` (wrap in asyncio.timeout to bound the wait)."""
        async with self._changed:
            while True:
                for item in self.served:
                    if predicate(item):
                        return item
                await self._changed.wait()


@dataclass
class ApiServer:
    """A running API: `request` signs with `creds` (when given) and checks the reply."""

    config: Config
    ctx: ApiContext
    store: SqliteStore
    clock: Clock
    server: TestServer
    session: aiohttp.ClientSession
    observer: Observer
    history: list[tuple[str, str, Reply]] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    async def request(
        self,
        method: str,
        path: str,
        *,
        creds: Creds | None = None,
        json: Any = _UNSET,
        body: bytes | None = None,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        content_type: str | None = _UNSET,
        idempotency_key: str | None = None,
        when: datetime | None = None,
        nonce: str | None = None,
        send_body: bytes | None = None,
        tamper: Callable[[dict[str, str]], None] | None = None,
        validate: bool = True,
    ) -> Reply:
        """Sign (over `body`), optionally tamper with the headers or send another body, send
        exactly those bytes, and check the reply.

        `content_type` defaults to application/json when there is a body, none otherwise.
        """
        raw = _body_of(json, body)
        if content_type is _UNSET:
            content_type = "application/json" if raw else None
        hdrs = prepare_headers(
            self.host,
            method,
            path,
            query,
            raw,
            creds=creds,
            headers=headers,
            content_type=content_type,
            idempotency_key=idempotency_key,
            when=when or self.clock.utc(),
            nonce=nonce,
        )
        if tamper is not None:
            tamper(hdrs)
        wire = raw if send_body is None else send_body
        url = URL(self.url + path + (f"?{query}" if query else ""), encoded=True)
        async with self.session.request(
            method,
            url,
            data=wire or None,
            headers=hdrs,
            skip_auto_headers=("Content-Type",),
        ) as resp:
            reply = make_reply(resp.status, CIMultiDict(resp.headers), await resp.read())
        self.history.append((method, path, reply))
        check_reply(method, path, reply, validate)
        return reply

    async def admin(
        self, method: str, path: str, *, token: str | None = ADMIN_TOKEN, **kw: Any
    ) -> Reply:
        headers = dict(kw.pop("headers", None) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return await self.request(method, path, headers=headers, **kw)

    async def create_account(self, name: str | None = None, **settings: Any) -> Creds:
        """Through AccountService, as the CLI does; raw text allowed unless told otherwise."""
        settings.setdefault("raw_text", True)
        ready = settings.pop("ready", True)
        creds = await self.ctx.accounts.create(
            name or f"acct-{secrets.token_hex(4)}", settings, self.ctx.now_ms()
        )
        if ready:  # an approved "Acme" sign and funds, unless the test is about those
            await ready_to_send(self.store, creds.account.id, self.ctx.now_ms())
        return Creds(creds.account, creds.app_key, creds.app_secret, creds.webhook_secret)

    @staticmethod
    def creds_for(account: Account, app_key: str, app_secret: str) -> Creds:
        """Credentials from an admin API answer (or forged ones, for refusal tests)."""
        return Creds(account, app_key, app_secret)

    async def send(self, creds: Creds, payload: Any, *, key: str | None = None, **kw: Any) -> Reply:
        """POST /v1/messages with a fresh Idempotency-Key unless one is given."""
        return await self.request(
            "POST",
            "/v1/messages",
            creds=creds,
            json=payload,
            idempotency_key=key or f"idem-{secrets.token_hex(8)}",
            **kw,
        )

    def client(self, creds: Creds, **kw: Any) -> BridgeClient:
        return BridgeClient(self.url, creds.app_key, creds.app_secret, **kw)

    async def close(self) -> None:
        await self.session.close()
        await self.server.close()
        await self.store.close()


async def start_api(
    tmp_path: Path,
    clock: Clock,
    overrides: Mapping[str, Any] | None = None,
    store: Any = None,
) -> ApiServer:
    """Build the context the way Daemon.start does, minus connectors, pipeline and simulator.
    `store`: another engine's store, not open yet (default: a SQLite file under tmp_path)."""
    cfg = build_config(tmp_path, overrides)
    sealer = Sealer(base64.b64decode(cfg.security.master_key or ""))
    if store is None:
        migrated_copy(Path(cfg.store.path))  # as a first open leaves it (tests/sqlite_template.py)
        store = SqliteStore(
            cfg.store.path,
            linger_ms=cfg.store.group_commit_ms,
            max_batch=cfg.store.group_commit_max,
        )
    configure_store(store, cfg)  # as open_store does
    await store.open()
    ctx = ApiContext(
        config=cfg,
        store=store,
        auth=await Authenticator.start(store, sealer, cfg, clock),
        submitter=Submitter(cfg, make_router(cfg)),
        accounts=AccountService(store, sealer),
        clock=clock,
    )
    ctx.queue_depth = await store.queue_depth()
    app = make_app(ctx)
    observer = Observer()
    app.middlewares.insert(0, observer.middleware)  # outermost: sees the final answers
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    session = aiohttp.ClientSession()
    return ApiServer(cfg, ctx, store, clock, server, session, observer)


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def openapi_checker() -> OpenApi:
    """The checker every reply goes through (exposed to test the checker itself)."""
    return OPENAPI


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make_api(
    tmp_path: Path, clock: Clock
) -> AsyncIterator[Callable[..., Awaitable[ApiServer]]]:
    """`await make_api({"server": {"max_body_bytes": 2048}})`: a server with config overrides,
    each in its own directory, all closed at teardown."""
    started: list[ApiServer] = []

    async def factory(overrides: Mapping[str, Any] | None = None) -> ApiServer:
        path = tmp_path / f"api{len(started)}"
        path.mkdir()
        api = await start_api(path, clock, overrides)
        started.append(api)
        return api

    yield factory
    for api in reversed(started):
        await api.close()


@pytest.fixture
async def engine_api(engine: Any, tmp_path: Path, clock: Clock) -> AsyncIterator[ApiServer]:
    """The server (start_api) on the store of the test module's `engine` fixture
    (tests/store_engines.py: every engine in turn) instead of a SQLite file."""
    served = await start_api(tmp_path, clock, store=engine.new_store())
    try:
        yield served
    finally:
        await served.close()


@pytest.fixture
async def api_server(make_api: Callable[..., Awaitable[ApiServer]]) -> ApiServer:
    return await make_api()


class ServedApi:
    """The API app over `api`'s context behind the daemon's runner (`http_errors.AppRunner`,
    its short way and unparsed-request answers) on a real port, for raw TCP: what the
    `daemon` fixture serves."""

    def __init__(self, api: ApiServer) -> None:
        self.api = api
        self.runner = http_errors.AppRunner(
            make_app(api.ctx), render_unparsed, api.ctx.metrics, access_log=None
        )
        self.port = 0

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def head_and_body(
        self, creds: Creds, n: int, *, version: str = "1.1", extra: dict[str, str] | None = None
    ) -> tuple[bytes, bytes]:
        body = json.dumps({"to": f"+86138000{n:05d}", "text": "Your code is 123456."}).encode()
        headers = prepare_headers(
            f"127.0.0.1:{self.port}",
            "POST",
            "/v1/messages",
            "",
            body,
            creds=creds,
            headers=None,
            content_type="application/json",
            idempotency_key=f"idem-{secrets.token_hex(8)}",
            when=self.api.clock.utc(),
            nonce=None,
        )
        headers.update(extra or {})
        if "Transfer-Encoding" not in headers:
            headers["Content-Length"] = str(len(body))
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return f"POST /v1/messages HTTP/{version}\r\n{head}\r\n".encode(), body

    def request(self, creds: Creds, n: int, **kw: Any) -> bytes:
        head, body = self.head_and_body(creds, n, **kw)
        return head + body

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@pytest.fixture
async def daemon(api_server: ApiServer) -> AsyncIterator[ServedApi]:
    """`api_server`'s app served by the daemon's runner on a port of its own (raw TCP tests of
    sessions 57-58: the 202's short way, the route cache; one fixture, not a copy a module).
    A module that defines its own `daemon` fixture keeps it (pytest takes the nearest)."""
    served = ServedApi(api_server)
    await served.start()
    yield served
    await served.runner.cleanup()


@pytest.fixture
def store(api_server: ApiServer) -> SqliteStore:
    return api_server.store


@pytest.fixture
def api_client(api_server: ApiServer) -> aiohttp.ClientSession:
    """A plain aiohttp session for hand-made requests (use api_server.url)."""
    return api_server.session


@pytest.fixture
def make_account(api_server: ApiServer) -> Callable[..., Awaitable[Creds]]:
    return api_server.create_account


@pytest.fixture
def signed_request(api_server: ApiServer) -> Callable[..., Awaitable[Reply]]:
    """`await signed_request("GET", "/v1/account", creds=creds)`; see ApiServer.request."""
    return api_server.request


@pytest.fixture
async def sdk_client(api_server: ApiServer) -> AsyncIterator[Callable[..., BridgeClient]]:
    """`sdk_client(creds, max_retries=...)`: BridgeClient instances on the server, closed after."""
    made: list[BridgeClient] = []

    def factory(creds: Creds, **kw: Any) -> BridgeClient:
        client = api_server.client(creds, **kw)
        made.append(client)
        return client

    yield factory
    for client in made:
        await client.close()


# -- the same server in a thread, for synchronous (hypothesis) tests -----------------------------


class ThreadedApi:
    """An ApiServer running in its own event loop thread, driven with http.client."""

    def __init__(self, tmp_path: Path, overrides: Mapping[str, Any] | None = None) -> None:
        self.clock = Clock()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.api: ApiServer = self.run(start_api(tmp_path, self.clock, overrides))

    def run(self, coro: Awaitable[Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    @property
    def ctx(self) -> ApiContext:
        return self.api.ctx

    def create_account(self, name: str | None = None, **settings: Any) -> Creds:
        return self.run(self.api.create_account(name, **settings))

    def request(
        self,
        method: str,
        path: str,
        *,
        creds: Creds | None = None,
        body: bytes = b"",
        query: str = "",
        headers: Mapping[str, str] | None = None,
        content_type: str | None = _UNSET,
        idempotency_key: str | None = None,
    ) -> Reply:
        if content_type is _UNSET:
            content_type = "application/json" if body else None
        hdrs = prepare_headers(
            self.api.host,
            method,
            path,
            query,
            body,
            creds=creds,
            headers=headers,
            content_type=content_type,
            idempotency_key=idempotency_key,
            when=self.clock.utc(),
            nonce=None,
        )
        return send_prepared(self.api.server.port, method, path, query, hdrs, body)

    def close(self) -> None:
        self.run(self.api.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def threaded_api(tmp_path: Path) -> Iterator[ThreadedApi]:
    api = ThreadedApi(tmp_path)
    yield api
    api.close()


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """For tests that run the CLI in this process, which replaces the root handlers and level
    (bridge.logs.configure) and sets body masking: put them back for the tests that follow."""
    root = logging.getLogger()
    handlers, level, mask = list(root.handlers), root.level, logs.masking()
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    logs._mask = mask
