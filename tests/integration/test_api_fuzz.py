"""Hypothesis against the real server: correctly signed requests with generated bodies, query
strings, path ids, content types and Alibaba Cloud parameters, on both faces, answered by the
daemon's own listeners (bridge.api.http_errors.AppRunner, as Daemon._listen makes them) over a
real SQLite file. One server for the module; it runs in its own thread so hypothesis can drive it
synchronously (conftest.ThreadedApi).

On every answer: never a 5xx but a 503 the README documents, never an authentication refusal
(the signature is right); a refusal is the face's envelope (native: `{"error": {code, message,
request_id}}` with a code from errors.CODES and that code's status; Alibaba: RequestId, Code,
Message, JSON or XML); every native answer matches the OpenAPI document (conftest.check_reply);
no traceback, exception name or object repr in a body; no secret (app and webhook secrets, the
admin token, the master key) in an answer or in any log line; and no log line at ERROR, nor any
with a traceback, from the request (LogWatch: a fault answered as if nothing happened counts).
What an answer promises is read back: an accepted send is stored as answered, listed in its
batch, charged once a message and replayed byte for byte without a second charge; a refusal
charges nothing; money credited is exactly the entries answered.

CI runs these on a fixed seed (tests/conftest.py's "ci" profile); locally each run draws new
examples. `FUZZ_EXAMPLES=2000 pytest tests/integration/test_api_fuzz.py --hypothesis-seed=N`
searches longer. What it found: tests/integration/test_session42_fuzz_findings.py."""

from __future__ import annotations

import datetime
import http.client
import json
import logging
import os
import re
import secrets
import socket
import string
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pytest
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bridge import logs, review
from bridge.api.app import make_app, render_unparsed
from bridge.api.connections import ConnectionCap
from bridge.api.errors import CODES
from bridge.api.http_errors import ENDPOINT, AppRunner
from bridge.api.signing import sign_request
from bridge.compat.aliyun_api import UNPARSED_ENDPOINT as ALIYUN_UNPARSED
from bridge.compat.aliyun_api import make_aliyun_app
from bridge.compat.aliyun_api import render_unparsed as render_aliyun_unparsed
from bridge.compat.aliyun_canon import (
    acs3_canonical_headers,
    acs3_canonical_query,
    acs3_canonical_request,
    acs3_signature,
    acs3_string_to_sign,
    payload_hash,
    percent_encode,
    rpc_v1_signature,
    rpc_v1_string_to_sign,
)
from bridge.compat.aliyun_sign import FORM_TYPE
from tests.integration.conftest import (
    Creds,
    Reply,
    ThreadedApi,
    prepare_headers,
    send_prepared,
)

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

# Text including surrogates (serialised as \ud800 escapes), controls and astral characters.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
phoneish = st.one_of(
    st.sampled_from(
        ["+8613800138000", "13800138000", "+86 138 0013 8000", "008613800138000", "+1", "", " "]
    ),
    st.text("+0123456789 -().", max_size=20),
    any_text,
)
numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False),
    st.integers(min_value=-2, max_value=10_100),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, any_text)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(any_text, children, max_size=5)
    ),
    max_leaves=15,
)

SEND_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "to": st.one_of(phoneish, st.lists(phoneish, max_size=4), json_values),
    "text": st.one_of(any_text, st.text("ab€[]{}你😀 ", max_size=600), json_values),
    "template": st.one_of(any_text, json_values),
    "params": st.one_of(st.dictionaries(any_text, scalars, max_size=3), json_values),
    "sign_name": st.one_of(st.text(max_size=40), json_values),
    "client_ref": st.one_of(st.text(max_size=70), json_values),
    "sender": st.one_of(st.text(string.printable, max_size=25), json_values),
    "validity_minutes": st.one_of(numbers, json_values),
    "scheduled_at": st.one_of(
        st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
        st.sampled_from(["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+01:00", "now"]),
        json_values,
    ),
    "smart_encoding": st.one_of(st.booleans(), json_values),
}
PREVIEW_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "text": SEND_FIELDS["text"],
    "sign_name": SEND_FIELDS["sign_name"],
    "to": SEND_FIELDS["to"],
    "smart_encoding": SEND_FIELDS["smart_encoding"],
}


good_number = st.one_of(
    st.integers(13_000_000_000, 19_999_999_999).map(lambda n: f"+86{n}"),
    st.integers(13_000_000_000, 19_999_999_999).map(str),  # national, for default_country CN
    st.sampled_from(["+447700900123", "+12025550123", "+6581234567"]),
)
good_text = st.text(
    st.sampled_from("abcXYZ 0123456789.,!?€[]{}^~\\|你好世界😀é\n"), min_size=1, max_size=300
).filter(str.strip)
VALID: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "send": st.fixed_dictionaries(
        {
            "to": st.one_of(
                good_number, st.lists(good_number, min_size=1, max_size=5, unique=True)
            ),
            "text": good_text,
        },
        optional={
            "sign_name": st.text(string.ascii_letters, min_size=1, max_size=12),
            "client_ref": st.text(min_size=1, max_size=64),
            "sender": st.sampled_from(["1069", "Acme", "+8610690000"]),
            "validity_minutes": st.integers(1, 10080),
            "scheduled_at": st.sampled_from(["2020-01-01T00:00:00Z", "2099-01-01T00:00:00+08:00"]),
            "smart_encoding": st.booleans(),
        },
    ),
    "preview": st.fixed_dictionaries(
        {"text": good_text},
        optional={
            "sign_name": st.text(min_size=1, max_size=12),
            "to": good_number,
            "smart_encoding": st.booleans(),
        },
    ),
}


@st.composite
def objects(draw: st.DrawFn, fields: dict[str, st.SearchStrategy[Any]], valid: str) -> Any:
    """Mostly a valid body with one or two fields replaced by anything, removed or added; else
    any JSON value or a random subset of the known fields."""
    kind = draw(st.integers(0, 9))
    if kind <= 5:
        out: dict[str, Any] = draw(VALID[valid])
        for _ in range(draw(st.integers(0, 2))):
            action = draw(st.integers(0, 5))
            name = draw(st.sampled_from(sorted(fields)))
            if action == 0:
                out.pop(name, None)
            elif action == 1:
                out[draw(any_text)] = draw(json_values)
            else:
                out[name] = draw(fields[name])
        return out
    if kind <= 7:
        names = draw(st.lists(st.sampled_from(sorted(fields)), unique=True))
        return {name: draw(fields[name]) for name in names}
    return draw(json_values)


def _encode(value: Any, ascii_only: bool) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=ascii_only).encode()
    except UnicodeEncodeError:  # lone surrogates: only as \\u escapes
        return json.dumps(value, ensure_ascii=True).encode()


@st.composite
def bodies(draw: st.DrawFn, fields: dict[str, st.SearchStrategy[Any]], valid: str) -> bytes:
    """Nine in ten a JSON document (mostly near-valid), else raw bytes or a known nasty body."""
    if draw(st.integers(0, 9)) < 9:
        return _encode(draw(objects(fields, valid)), draw(st.booleans()))
    return draw(
        st.one_of(
            st.sampled_from(
                [
                    b"",
                    b"{",
                    b"[" * 50_000 + b"]" * 50_000,
                    b'{"to": "+8613800138000", "text": "x", "validity_minutes": 1e999}',
                    b'{"to": "+8613800138000", "text": "x", "validity_minutes": -Infinity}',
                    b'{"to": "+8613800138000", "text": "\\udfff"}',
                    b'{"to": "+8613800138000", "text": "x", "to": 5}',
                    b"\xef\xbb\xbf{}",
                ]
            ),
            st.binary(max_size=200),
        )
    )


def _assert_sane(reply: Any, ok: set[int]) -> None:
    event(f"{reply.status} {reply.code or ''}".strip())  # see --hypothesis-show-statistics
    assert reply.status < 500, (reply.status, reply.text[:300])
    if reply.status in ok:
        return
    assert reply.status not in (401, 405), (reply.status, reply.text[:300])  # signed correctly
    assert reply.code in CODES and CODES[reply.code] == reply.status


# -- one server per module: the native face, the Alibaba face and a watch on the logs ----------

# 5xx answers the README documents (back-pressure, shutdown, store outage, tariff set-up).
DOCUMENTED_503 = {
    "QUEUE_FULL",
    "SHUTTING_DOWN",
    "STORE_UNAVAILABLE",
    "STORE_BUSY",
    "TARIFF_NOT_FOUND",
    "TARIFF_AMBIGUOUS",
}
# Text that only a leaked exception puts in an answer (unless the request itself carried it).
LEAK_MARKERS = (b"Traceback", b"Exception", b'File "', b" object at 0x", b"Error(")
# What a correctly signed Alibaba call must never be told.
ALIYUN_AUTH_CODES = {
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "InvalidSignatureMethod",
    "InvalidTimeStamp.Expired",
    "InvalidTimeStamp.Format",
    "SignatureNonceUsed",
    "InvalidAccessKeyId.NotFound",
    "InvalidAccessKeyId.Inactive",
}
ALIYUN_REQUEST_ID = re.compile(r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}")


class LogWatch(logging.Handler):
    """Every record logged while the module runs: a secret in one is a leak (checked when the
    request that caused it is checked, so a secret the request itself issued counts too), and an
    ERROR (or any record with a traceback) is a fault the client may never see."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.secrets: list[str] = []
        self.faults: list[str] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception as exc:  # a record that cannot be formatted is a fault of its own
            text = f"unformattable record {record.msg!r}: {exc!r}"
            self.faults.append(text)
        self.lines.append(text)
        if record.exc_info or record.levelno >= logging.ERROR:
            self.faults.append(f"{record.levelname} {record.name}: {text[:3000]}")

    def take(self) -> list[str]:
        """The faults since the last call, secrets in the lines logged since then included."""
        lines, self.lines = self.lines, []
        out, self.faults = self.faults, []
        for text in lines:
            if any(secret in text for secret in self.secrets):
                out.append(f"a secret in the log: {text[:500]}")
        return out


@dataclass
class Fuzz:
    """The module's server and accounts. Every request goes through `native` or `aliyun`, which
    check the answer and the log lines it caused."""

    threaded: ThreadedApi  # the context, store and event loop
    port: int  # the native face, as the daemon listens (Daemon._listen)
    aliyun_port: int  # the Alibaba face, likewise
    creds: Creds  # raw text, default_country CN
    tcreds: Creds  # template sends only, for the Alibaba face
    rcreds: Creds  # files signs, templates and opt-outs (which would block the others' sends)
    template: str  # an approved template of tcreds' account: "Your code is ${code}."
    watch: LogWatch
    secrets: list[str]  # never in an answer (but the one issuing it) nor in a log line
    ledger_seen: dict[str, int] = field(default_factory=dict)
    # Ids, batch ids, sign names, template codes and numbers the fuzz's own requests made: the
    # path fuzz takes them too, so that some of its requests reach a real row.
    known: list[str] = field(default_factory=list)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("Fuzz(...)")  # hypothesis prints a failing example's arguments

    @property
    def store(self) -> Any:
        return self.threaded.api.store

    def check_common(self, status: int, headers: Any, body: bytes, sent: bytes) -> None:
        for marker in LEAK_MARKERS:
            if marker not in sent:
                assert marker not in body, (status, body[:500])
        for secret in self.secrets:
            assert secret.encode() not in body, ("a secret in the answer", status)
            assert all(secret not in v for v in headers.values()), ("a secret in a header", status)
        faults = self.watch.take()
        assert not faults, "\n".join(faults)

    def native(
        self,
        method: str,
        path: str,
        *,
        creds: Creds | None = None,
        body: bytes = b"",
        sign: bool = True,
        **kw: Any,
    ) -> Reply:
        """A request signed with `creds` (the raw-text account's by default), or not signed."""
        creds = (creds or self.creds) if sign else None
        reply = self._send(method, path, creds, body, **kw)
        if reply.status in (201, 202) and isinstance(reply.json, dict) and len(self.known) < 500:
            found = reply.json.get("messages") or [reply.json]
            for item in found[:2]:
                for name in ("id", "batch_id", "code", "name"):
                    if isinstance(item.get(name), str):
                        self.known.append(item[name])
            if isinstance(reply.json.get("batch_id"), str):
                self.known.append(reply.json["batch_id"])
        event(f"{reply.status} {reply.code or ''}".strip())
        if reply.status >= 500:
            assert reply.status == 503 and reply.code in DOCUMENTED_503, (reply.status, reply.text)
        sent = body + kw.get("query", "").encode() + path.encode()
        issued = []  # an account's or key's credentials, answered once by their creation
        if reply.status == 201 and isinstance(reply.json, dict):
            issued = [reply.json.get(k) for k in ("app_secret", "webhook_secret")]
            issued = [v for v in issued if isinstance(v, str) and len(v) >= 8]
            self.watch.secrets += issued
        self.check_common(reply.status, reply.headers, reply.body, sent)
        self.secrets += issued
        return reply

    def _send(
        self,
        method: str,
        path: str,
        creds: Creds | None,
        body: bytes,
        *,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        content_type: str | None = None,
    ) -> Reply:
        """As ThreadedApi.request, to the daemon's listener: signed, sent, checked (envelope,
        status of its code, the OpenAPI document: conftest.check_reply)."""
        if content_type is None and body:
            content_type = "application/json"
        hdrs = prepare_headers(
            f"127.0.0.1:{self.port}",
            method,
            path,
            query,
            body,
            creds=creds,
            headers=headers,
            content_type=content_type,
            idempotency_key=idempotency_key,
            when=self.threaded.clock.utc(),
            nonce=None,
        )
        return send_prepared(self.port, method, path, query, hdrs, body)

    def aliyun(
        self,
        params: list[tuple[str, str]],
        *,
        fmt: str = "JSON",
        method: str = "POST",
        creds: Creds | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """The call signed RPC v1 (HMAC-SHA1) with the app secret, the signing parameters ours
        and the rest the fuzz's: a POST sends them as a form body, a GET in the query."""
        creds = creds or self.tcreds
        signing = [
            ("AccessKeyId", creds.app_key),
            ("Format", fmt),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", secrets.token_hex(16)),
            ("SignatureVersion", "1.0"),
            ("Timestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
            ("Version", "2017-05-25"),
        ]
        pairs = signing + params
        signature = rpc_v1_signature(rpc_v1_string_to_sign(method, pairs), creds.app_secret)
        form = _form([*pairs, ("Signature", signature)])
        if method == "GET":
            sent = self._aliyun_http("GET", "/?" + form.decode(), b"", {})
        else:
            form_type = {"Content-Type": "application/x-www-form-urlencoded"}
            sent = self._aliyun_http("POST", "/", form, form_type)
        return self._aliyun_check(*sent, form)

    def aliyun_acs3(
        self,
        params: list[tuple[str, str]],
        *,
        fmt: str = "JSON",
        in_body: bool = False,
        creds: Creds | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """The call signed ACS3-HMAC-SHA256 (the newer SDKs' scheme): the action and version in
        signed x-acs-* headers, the parameters in the query or, `in_body`, a form body."""
        creds = creds or self.tcreds
        action = next((v for k, v in params if k == "Action"), "")
        action = action.replace("\r", "").replace("\n", "")  # http.client refuses to send them
        params = [(k, v) for k, v in params if k != "Action"] + [("Format", fmt)]
        body = _form(params) if in_body else b""
        query = "" if in_body else _form(params).decode()
        headers = {
            "host": f"127.0.0.1:{self.aliyun_port}",
            "x-acs-action": action,
            "x-acs-version": "2017-05-25",
            "x-acs-date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "x-acs-signature-nonce": secrets.token_hex(16),
            "x-acs-content-sha256": payload_hash(body),
        }
        if in_body:
            headers["content-type"] = "application/x-www-form-urlencoded"
        names = sorted(headers)
        canonical = acs3_canonical_request(
            "POST",
            "/",
            acs3_canonical_query([] if in_body else params),
            acs3_canonical_headers({k: [v] for k, v in headers.items()}, names),
            ";".join(names),
            headers["x-acs-content-sha256"],
        )
        signature = acs3_signature(
            acs3_string_to_sign("ACS3-HMAC-SHA256", canonical), creds.app_secret
        )
        headers["Authorization"] = (
            f"ACS3-HMAC-SHA256 Credential={creds.app_key},"
            f"SignedHeaders={';'.join(names)},Signature={signature}"
        )
        sent = self._aliyun_http("POST", "/?" + query if query else "/", body, headers)
        return self._aliyun_check(*sent, body + query.encode())

    def _aliyun_http(
        self, method: str, target: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.aliyun_port, timeout=30)
        try:
            # Header values as UTF-8 (http.client would send Latin-1), as the SDKs send them.
            encoded = {k: v.encode("utf-8", "surrogateescape") for k, v in headers.items()}
            conn.request(method, target, body=body or None, headers=encoded)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def _aliyun_check(
        self, status: int, headers: dict[str, str], raw: bytes, form: bytes
    ) -> tuple[int, dict[str, Any]]:
        """The Alibaba face's promises, on any answer."""
        answer = _aliyun_answer(headers.get("Content-Type", ""), raw)
        code = answer.get("Code")
        event(f"aliyun {status} {code}")
        assert status < 500 or (status == 503 and code == "ServiceUnavailable"), (status, raw)
        assert ALIYUN_REQUEST_ID.fullmatch(answer.get("RequestId", "")), answer
        assert headers.get("x-acs-request-id") == answer["RequestId"], headers
        assert isinstance(code, str) and code, answer
        assert isinstance(answer.get("Message"), str) and answer["Message"], answer
        assert code not in ALIYUN_AUTH_CODES, (status, answer)  # signed correctly
        if status != 200:
            assert set(answer) <= {"RequestId", "Code", "Message", "HostId", "Recommend"}, answer
        elif code != "OK":  # a business refusal: Alibaba's isv.* / isp.* codes
            assert set(answer) == {"RequestId", "Code", "Message"}, answer
            assert code.startswith(("isv.", "isp.")), answer
        self.check_common(status, headers, raw, form)
        return status, answer

    def new_entries(self, creds: Creds) -> list[Any]:
        """The entries written to the account's ledger since the last call."""
        after = self.ledger_seen.get(creds.account_id, 0)
        rows = self.threaded.run(self.store.ledger_page(creds.account_id, after, 10_000))
        if rows:
            self.ledger_seen[creds.account_id] = rows[-1].id
        return list(rows)

    def new_charges(self, creds: Creds) -> Counter[str]:
        """Charge entries written to the account's ledger since the last call, by their ref."""
        return Counter(r.ref for r in self.new_entries(creds) if r.kind == "charge")

    def message(self, creds: Creds, message_id: str) -> Reply:
        reply = self.native("GET", f"/v1/messages/{message_id}", creds=creds)
        assert reply.status == 200, (message_id, reply.status, reply.text[:300])
        return reply


def _form(pairs: list[tuple[str, str]]) -> bytes:
    return "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in pairs).encode()


def _aliyun_answer(ctype: str, raw: bytes) -> dict[str, Any]:
    """The answer's fields: JSON, or XML's root children (text, or a nested dict)."""
    if ctype.startswith("text/xml"):
        root = ET.fromstring(raw)
        assert root.tag.endswith("Response") or root.tag == "Error", raw[:300]
        return {child.tag: child.text or {} for child in root}
    assert ctype.startswith("application/json"), (ctype, raw[:300])
    answer = json.loads(raw)
    assert isinstance(answer, dict), raw[:300]
    return answer


async def _listen(ctx: Any, app: web.Application, render: Any, endpoint: str) -> web.AppRunner:
    """A listener as Daemon._listen makes it (its HTTP-parser refusals in the face's envelope,
    bodies read as sent, the connection cap), on a free port of 127.0.0.1."""
    cfg = ctx.config.server
    runner = AppRunner(
        app,
        render,
        ctx.metrics,
        endpoint=endpoint,
        cap=ConnectionCap(cfg.max_connections, cfg.max_connections_per_ip),
        access_log=None,
        shutdown_timeout=2.0,
        keepalive_timeout=cfg.idle_timeout_s,
        auto_decompress=False,
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def _port(runner: web.AppRunner) -> int:
    return next(iter(runner.addresses))[1]


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    watch = LogWatch()
    watch.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    loggers = [logging.getLogger(name) for name in ("bridge", "aiohttp", "asyncio")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(watch)
    # What bridge.logs.configure puts on aiohttp's parser refusals in the daemon: one line, the
    # request's bytes and the traceback left out. Any other traceback,
    # and any ERROR of ours, is a fault.
    refused = logs._RefusedRequests()
    logging.getLogger("aiohttp.server").addFilter(refused)
    # body_timeout_s 1: a body that never comes whole is answered in a second, not 30.
    overrides = {"aliyun": {"enabled": True}, "server": {"body_timeout_s": 1}}
    threaded = ThreadedApi(tmp_path_factory.mktemp("fuzz"), overrides)
    ctx = threaded.ctx
    native = threaded.run(_listen(ctx, make_app(ctx), render_unparsed, ENDPOINT))
    aliyun = threaded.run(
        _listen(ctx, make_aliyun_app(ctx), render_aliyun_unparsed, ALIYUN_UNPARSED)
    )
    try:
        creds = threaded.create_account("fuzzer", raw_text=True, default_country="CN")
        tcreds = threaded.create_account("fuzzer-t", raw_text=False, default_country="CN")
        rcreds = threaded.create_account("fuzzer-r", raw_text=True, default_country="CN")
        now = threaded.ctx.now_ms()
        template = threaded.run(
            review.submit_template(
                threaded.api.store,
                tcreds.account_id,
                {"type": "verification", "name": "t", "content": "Your code is ${code}."},
                now,
                threaded.ctx.config,
                threaded.ctx.send_rules.filter,
            )
        ).code
        threaded.run(threaded.api.store.review_template(template, "approved", None, now))
        cfg = threaded.api.config
        hidden = [
            creds.app_secret,
            tcreds.app_secret,
            rcreds.app_secret,
            cfg.server.admin_token or "",
        ]
        hidden += [c.webhook_secret or "" for c in (creds, tcreds, rcreds)]
        hidden += [cfg.security.master_key or ""]
        watch.secrets = [s for s in hidden if len(s) >= 8]
        ports = _port(native), _port(aliyun)
        accounts = creds, tcreds, rcreds
        fz = Fuzz(threaded, *ports, *accounts, template, watch, list(watch.secrets))
        for account in accounts:
            fz.new_entries(account)  # the set-up's top-ups
        yield fz
        assert not watch.take()  # nothing logged after the last request's check
    finally:
        threaded.run(aliyun.cleanup())
        threaded.run(native.cleanup())
        threaded.close()
        root.removeHandler(watch)
        logging.getLogger("aiohttp.server").removeFilter(refused)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


ADMIN_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "name": st.one_of(st.text(max_size=70), json_values),
    "kind": st.one_of(st.sampled_from(["prepaid", "postpaid"]), any_text, json_values),
    "raw_text": st.one_of(st.booleans(), json_values),
    "marketing": st.one_of(st.booleans(), json_values),
    "tps": st.one_of(numbers, json_values),
    "daily_quota": st.one_of(numbers, json_values),
    "default_country": st.one_of(st.text(string.ascii_letters, max_size=3), any_text, json_values),
    "status_callback_url": st.one_of(st.just("https://x.example/cb"), any_text, json_values),
    "mo_callback_url": st.one_of(st.just("http://x.example/mo"), any_text, json_values),
}
VALID["admin"] = st.fixed_dictionaries(
    {"name": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,20}", fullmatch=True)},
    optional={
        "kind": st.sampled_from(["prepaid", "postpaid"]),
        "raw_text": st.booleans(),
        "tps": st.integers(0, 1000),
        "default_country": st.sampled_from(["CN", "gb", None]),
    },
)


@st.composite
def idempotency_keys(draw: st.DrawFn) -> str | None:
    """Mostly a fresh UUID (hypothesis leans towards the first choice), sometimes odd ones."""
    choice = draw(st.integers(0, 9))
    if choice == 7:
        return None
    if choice == 8:
        text = string.ascii_letters + string.digits + string.punctuation + " "
        return draw(st.text(text, max_size=30)) + "-" + secrets.token_hex(4)
    if choice == 9:
        return draw(st.text(string.ascii_letters, min_size=250, max_size=260))
    return f"{draw(st.uuids())}-{secrets.token_hex(4)}"  # hypothesis repeats its uuids


def check_accepted(fuzz: Fuzz, creds: Creds, reply: Reply, body: bytes, key: str | None) -> None:
    """What a send's answer promises, read back: each message charged once (a refusal or a
    replay: nothing), stored as answered (by its id, and as the batch's list), and the same
    request again replayed byte for byte without a second charge."""
    charged = fuzz.new_charges(creds)
    if reply.status != 202 or reply.headers.get("Idempotent-Replayed") == "true":
        assert not charged, (reply.status, charged)
        return
    messages = reply.json["messages"]
    ids = [m["id"] for m in messages]
    assert reply.json["count"] == len(ids) >= 1
    asked = json.loads(body)
    numbers = asked["to"] if isinstance(asked["to"], list) else [asked["to"]]
    assert len(ids) == len(numbers), (numbers, messages)  # one message per number given
    for m in messages:
        assert re.fullmatch(r"\+[1-9][0-9]{6,14}", m["to"]), m
        assert m["client_ref"] == asked.get("client_ref"), (m, asked.get("client_ref"))
    assert charged == Counter(ids), (charged, ids)
    for sent in messages[:2]:
        stored = fuzz.message(creds, sent["id"]).json
        for name in ("id", "to", "client_ref", "status", "encoding", "segments", "billable_units"):
            assert stored[name] == sent[name], (name, stored, sent)
    batch = fuzz.native(
        "GET", "/v1/messages", creds=creds, query="batch_id=" + reply.json["batch_id"]
    )
    assert batch.status == 200 and {m["id"] for m in batch.json["messages"]} == set(ids[:50])
    again = fuzz.native("POST", "/v1/messages", creds=creds, body=body, idempotency_key=key)
    assert again.headers.get("Idempotent-Replayed") == "true", again.status
    assert (again.status, again.body) == (reply.status, reply.body)
    assert not fuzz.new_charges(creds)


@FUZZ
@given(body=bodies(SEND_FIELDS, "send"), key=idempotency_keys())
def test_fuzz_send(fuzz: Fuzz, body: bytes, key: str | None) -> None:
    reply = fuzz.native("POST", "/v1/messages", body=body, idempotency_key=key)
    _assert_sane(reply, {202})
    check_accepted(fuzz, fuzz.creds, reply, body, key)
    if reply.status != 202:
        return
    # The preview of the same text, sign and first number encodes and counts as the send did.
    sent = json.loads(body)
    if "text" not in sent:
        return
    fields = {k: sent[k] for k in ("text", "sign_name", "smart_encoding") if k in sent}
    fields["to"] = reply.json["messages"][0]["to"]
    preview = fuzz.native("POST", "/v1/preview", body=json.dumps(fields).encode())
    assert preview.status == 200, preview.text[:300]
    first = reply.json["messages"][0]
    for name in ("encoding", "segments", "billable_units"):
        assert preview.json[name] == first[name], (name, preview.json, first)


_param_values = st.one_of(
    st.text(max_size=20),
    any_text,
    st.integers(-(10**20), 10**20),
    st.floats(),
    st.sampled_from(["", "${code}", "【x】", "\u202e", "http://x.example", "1" * 400]),
    json_values,
)
TEMPLATE_SEND_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "to": SEND_FIELDS["to"],
    "sign_name": st.one_of(st.just("Acme"), SEND_FIELDS["sign_name"]),
    "template": st.one_of(st.just("<template>"), any_text, json_values),
    "params": st.one_of(
        st.fixed_dictionaries({"code": _param_values}),
        st.dictionaries(st.sampled_from(["code", "name", "", "code "]), _param_values),
        json_values,
    ),
    "client_ref": SEND_FIELDS["client_ref"],
    "smart_encoding": SEND_FIELDS["smart_encoding"],
}
VALID["template_send"] = st.fixed_dictionaries(
    {
        "to": st.one_of(good_number, st.lists(good_number, min_size=1, max_size=3, unique=True)),
        "sign_name": st.just("Acme"),
        "template": st.just("<template>"),
        "params": st.fixed_dictionaries({"code": st.text("0123456789", min_size=1, max_size=8)}),
    }
)


@FUZZ
@given(body=bodies(TEMPLATE_SEND_FIELDS, "template_send"), key=idempotency_keys())
def test_fuzz_template_send(fuzz: Fuzz, body: bytes, key: str | None) -> None:
    """Template sends (the template account's approved template, or another code) with odd
    values: the same promises as a free text's."""
    body = body.replace(b'"<template>"', json.dumps(fuzz.template).encode())
    reply = fuzz.native("POST", "/v1/messages", creds=fuzz.tcreds, body=body, idempotency_key=key)
    _assert_sane(reply, {202})
    check_accepted(fuzz, fuzz.tcreds, reply, body, key)
    if reply.status != 202:
        return
    # The preview of the same template, values and sign renders, encodes and counts as sent.
    sent = json.loads(body)
    fields = {
        k: sent[k] for k in ("template", "params", "sign_name", "smart_encoding") if k in sent
    }
    fields["to"] = reply.json["messages"][0]["to"]
    preview = fuzz.native(
        "POST", "/v1/preview", creds=fuzz.tcreds, body=json.dumps(fields).encode()
    )
    assert preview.status == 200, preview.text[:300]
    first = reply.json["messages"][0]
    for name in ("encoding", "segments", "billable_units"):
        assert preview.json[name] == first[name], (name, preview.json, first)
    stored = fuzz.message(fuzz.tcreds, first["id"]).json
    assert stored["text"] == preview.json["text"], (stored, preview.json)


@FUZZ
@given(body=bodies(PREVIEW_FIELDS, "preview"))
def test_fuzz_preview(fuzz: Fuzz, body: bytes) -> None:
    reply = fuzz.native("POST", "/v1/preview", body=body)
    _assert_sane(reply, {200})


_known_values = {
    "to": st.one_of(good_number, st.sampled_from(["+8613800138000", "hello", ""])),
    "date": st.one_of(
        st.dates().map(str), st.sampled_from(["9999-12-31", "0000-01-01", "2026-2-30", ""])
    ),
    "status": st.sampled_from(["queued", "sent", "delivered", "failed", "expired", "unknown", "x"]),
    "cursor": st.one_of(
        st.from_regex(r"msg_[0-9A-Z]{26}", fullmatch=True), st.sampled_from(["msg_", ""])
    ),
    "limit": st.one_of(st.integers(-5, 300).map(str), st.sampled_from(["²", "١٢", "1.5", ""])),
}


@st.composite
def query_strings(draw: st.DrawFn) -> str:
    parts = []
    strange = draw(st.integers(0, 9)) == 9  # one query in ten may carry unknown names
    for _ in range(draw(st.integers(0, 5))):
        if not strange or draw(st.booleans()):
            name = draw(st.sampled_from(sorted(_known_values)))
            value = draw(_known_values[name] if draw(st.integers(0, 3)) < 3 else any_text)
        else:
            name, value = draw(any_text), draw(any_text)
        safe = draw(st.sampled_from(["", "", "", "+", "+=&"]))  # a raw + is a space; or worse
        enc = lambda s, safe=safe: quote(s.encode("utf-8", "surrogatepass"), safe=safe)  # noqa: E731
        bare = not value and draw(st.booleans())
        parts.append(enc(name) if bare else f"{enc(name)}={enc(value)}")
    if strange:
        parts.append(draw(st.sampled_from(["%", "%zz", "=", "&", "%ED%A0%80=1", "a=%FF"])))
    return "&".join(parts)


_PLAIN = re.compile(r"[A-Za-z0-9_-]*")
_STATS_PARTS = ("delivered", "failed", "canceled", "withdrawn", "pending", "unknown")


def check_read(path: str, query: str, reply: Reply) -> None:
    """A 200 read answers what was asked: the list's filters hold on every message, newest
    first, at most `limit`; the stats' days are consecutive and add up to the totals, each day's
    `submitted` the sum of its outcomes."""
    if reply.status != 200:
        return
    asked: dict[str, str] = {}
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if _PLAIN.fullmatch(name) and _PLAIN.fullmatch(value):
            asked[name] = value
    if path == "/v1/messages":
        rows = reply.json["messages"]
        assert len(rows) <= int(asked.get("limit", "50")), (query, len(rows))
        ids = [m["id"] for m in rows]
        assert ids == sorted(ids, reverse=True), ids  # ULIDs: newest first
        for m in rows:
            for name, field_ in (("status", "status"), ("batch_id", "batch_id")):
                if name in asked:
                    assert m[field_] == asked[name], (query, m)
            if "date" in asked:
                assert m["accepted_at"][:10] == asked["date"], (query, m)
    elif path == "/v1/stats":
        days = reply.json["days"]
        dates = [datetime.date.fromisoformat(d["date"]) for d in days]
        assert dates == [dates[0] + datetime.timedelta(days=i) for i in range(len(dates))]
        assert (str(dates[0]), str(dates[-1])) == (reply.json["from"], reply.json["to"])
        for name, total in reply.json["totals"].items():
            assert sum(d[name] for d in days) == total, (name, reply.json)
        for d in [*days, reply.json["totals"]]:
            assert d["submitted"] == sum(d[k] for k in _STATS_PARTS), d


@FUZZ
@given(query=query_strings())
def test_fuzz_list_query(fuzz: Fuzz, query: str) -> None:
    reply = fuzz.native("GET", "/v1/messages", query=query)
    _assert_sane(reply, {200})
    check_read("/v1/messages", query, reply)


@FUZZ
@given(body=bodies(ADMIN_FIELDS, "admin"))
def test_fuzz_admin_create(fuzz: Fuzz, body: bytes) -> None:
    headers = {"Authorization": f"Bearer {fuzz.threaded.api.config.server.admin_token}"}
    reply = fuzz.native("POST", "/admin/accounts", body=body, headers=headers, sign=False)
    _assert_sane(reply, {201})


# -- more of the native face: every list's query, ids in paths, the rules' bodies, the wire ----

# Each GET endpoint that reads its query, with the names it reads and values near theirs.
_dates = st.one_of(
    st.dates().map(str),
    st.sampled_from(["9999-12-31", "0000-01-01", "2026-2-30", "2026-13-01", "", "2026-12-01Z"]),
)
_months = st.one_of(
    st.sampled_from(["2026-12", "1969-12", "9999-12", "0000-01", "2026-00", "2026-1", "", "x"]),
    st.from_regex(r"[0-9]{4}-[0-9]{2}", fullmatch=True),
)
_numbers_text = st.one_of(
    st.integers(-5, 10**20).map(str),
    st.sampled_from(["1e3", "0x10", "+5", " 5", "5 ", "²", "١٢", "1.5", "-0", "", "NaN"]),
)
QUERIES: dict[str, dict[str, st.SearchStrategy[str]]] = {
    "/v1/messages": {
        "to": _known_values["to"],
        "date": _dates,
        "status": _known_values["status"],
        "batch_id": st.one_of(st.from_regex(r"bat_[0-9A-Z]{26}", fullmatch=True), st.just("")),
        "cursor": _known_values["cursor"],
        "limit": _numbers_text,
    },
    "/v1/stats": {
        "from": _dates,
        "to": _dates,
        "timezone": st.sampled_from(["utc", "local", "UTC", "Asia/Shanghai", ""]),
    },
    "/v1/cdrs": {
        "month": _months,
        "timezone": st.sampled_from(["utc", "local", "LOCAL", ""]),
    },
    "/v1/ledger": {"after": _numbers_text, "cursor": _numbers_text, "limit": _numbers_text},
    "/v1/optouts": {
        "cursor": st.one_of(_numbers_text, st.sampled_from(["x", "xAA", "x!!", "+86"])),
        "limit": _numbers_text,
    },
    "/v1/signs": {"status": _known_values["status"]},
    "/v1/templates": {"status": _known_values["status"], "limit": _numbers_text},
    "/v1/balance": {"x": any_text},
    "/v1/account": {"x": any_text},
}


@st.composite
def endpoint_queries(draw: st.DrawFn) -> tuple[str, str]:
    """A GET endpoint and a query of its own names (now and then repeated, unknown, malformed or
    percent-encoded oddly)."""
    path = draw(st.sampled_from(sorted(QUERIES)))
    names = QUERIES[path]
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.integers(0, 9)) < 8:
            name = draw(st.sampled_from(sorted(names)))
            value = draw(names[name] if draw(st.integers(0, 4)) else any_text)
        else:
            name, value = draw(any_text), draw(any_text)
        safe = draw(st.sampled_from(["", "", "+", "+=&"]))
        enc = lambda s, safe=safe: quote(s.encode("utf-8", "surrogatepass"), safe=safe)  # noqa: E731
        parts.append(f"{enc(name)}={enc(value)}" if value or draw(st.booleans()) else enc(name))
    if draw(st.integers(0, 9)) == 9:
        parts.append(draw(st.sampled_from(["%", "%zz", "=", "&", "%ED%A0%80=1", "limit=%FF"])))
    return path, "&".join(parts)


@FUZZ
@given(target=endpoint_queries())
def test_fuzz_get_queries(fuzz: Fuzz, target: tuple[str, str]) -> None:
    path, query = target
    reply = fuzz.native("GET", path, query=query)
    _assert_sane(reply, {200})
    check_read(path, query, reply)


_segment = st.one_of(
    st.from_regex(r"msg_[0-9A-Z]{26}", fullmatch=True),
    st.from_regex(r"bat_[0-9A-Z]{26}", fullmatch=True),
    st.sampled_from(["Acme", "SMS_1", "2026-12", "+8613800138000", "..", ".", "%", "%2F", "0"]),
    st.text(string.printable, min_size=1, max_size=80),
    any_text.filter(bool),
    st.text(min_size=300, max_size=400),
)
PATHS = [
    ("GET", "/v1/messages/{}"),
    ("POST", "/v1/messages/{}/cancel"),
    ("POST", "/v1/batches/{}/cancel"),
    ("GET", "/v1/signs/{}"),
    ("GET", "/v1/templates/{}"),
    ("DELETE", "/v1/optouts/{}"),
    ("GET", "/v1/bills/{}"),
    ("POST", "/v1/recipients/{}/erase"),
]


@FUZZ
@given(
    route=st.sampled_from(PATHS),
    segment=_segment,
    encoded=st.sampled_from(["", "%", "~"]),
    body=st.sampled_from([b"", b"{}", b"null", b"[]", b'{"x": 1}']),
    known=st.one_of(st.none(), st.integers(0, 10_000)),
)
def test_fuzz_path_ids(
    fuzz: Fuzz, route: tuple[str, str], segment: str, encoded: str, body: bytes, known: int | None
) -> None:
    """Ids that are not ids, in every path that takes one (percent-encoded, or raw where the
    request line allows): refused as NOT_FOUND or invalid, never a 5xx."""
    method, template = route
    if known is not None and fuzz.known:  # a real id or name: the path's own kind, or another's
        segment = fuzz.known[known % len(fuzz.known)]
    raw = segment.encode("utf-8", "surrogatepass")
    seg = quote(raw, safe="") if encoded != "~" else quote(raw, safe="%!$'()*,;=:@")
    reply = fuzz.native(method, template.format(seg), body=body if method != "GET" else b"")
    _assert_sane(reply, {200})


RULES_BODIES: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "/v1/signs": {
        "name": st.one_of(st.text(max_size=30), json_values),
        "source": st.one_of(st.sampled_from(["company", "app", "trademark", "x"]), json_values),
        "remark": st.one_of(st.text(max_size=600), json_values),
    },
    "/v1/templates": {
        "type": st.one_of(
            st.sampled_from(["verification", "notification", "marketing", "x"]), json_values
        ),
        "name": st.one_of(st.text(max_size=40), json_values),
        "content": st.one_of(
            st.text("ab ${}code你😀\\", max_size=200),
            st.sampled_from(["Your code is ${code}.", "${", "${}", "${a}${a}", "$${x}}"]),
            json_values,
        ),
        "remark": st.one_of(st.text(max_size=40), json_values),
        "allow_urls": st.one_of(st.booleans(), json_values),
        "international": st.one_of(st.booleans(), json_values),
    },
    "/v1/optouts": {
        "numbers": st.one_of(st.lists(phoneish, max_size=5), phoneish, json_values),
    },
}


RULES_VALID: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "/v1/signs": st.fixed_dictionaries(
        {"name": st.text(string.ascii_letters + "你好 ", min_size=2, max_size=12)},
        optional={"source": st.just("company"), "remark": st.text(max_size=20)},
    ),
    "/v1/templates": st.fixed_dictionaries(
        {
            "type": st.sampled_from(["verification", "notification"]),
            "name": st.text(string.ascii_letters, min_size=1, max_size=10),
            "content": st.sampled_from(["Your code is ${code}.", "Hi ${name}, ok", "Plain"]),
        },
        optional={"remark": st.text(max_size=20), "international": st.booleans()},
    ),
    "/v1/optouts": st.fixed_dictionaries(
        {"numbers": st.lists(good_number, min_size=1, max_size=3, unique=True)}
    ),
}


@st.composite
def rules_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    """Mostly a valid body with a field or two replaced, dropped or added; else any JSON."""
    path = draw(st.sampled_from(sorted(RULES_BODIES)))
    fields = RULES_BODIES[path]
    if draw(st.integers(0, 9)) < 8:
        value: Any = draw(RULES_VALID[path])
        for _ in range(draw(st.integers(0, 2))):
            name = draw(st.sampled_from(sorted(fields)))
            action = draw(st.integers(0, 5))
            if action == 0:
                value.pop(name, None)
            elif action == 1:
                value[draw(any_text)] = draw(json_values)
            else:
                value[name] = draw(fields[name])
    else:
        value = draw(json_values)
    return path, _encode(value, draw(st.booleans()))


@FUZZ
@given(target=rules_requests(), key=st.one_of(st.none(), idempotency_keys()))
def test_fuzz_rules_bodies(fuzz: Fuzz, target: tuple[str, bytes], key: str | None) -> None:
    """Sign names, templates and opt-outs filed with odd bodies, on an account of their own."""
    path, body = target
    reply = fuzz.native("POST", path, creds=fuzz.rcreds, body=body, idempotency_key=key)
    _assert_sane(reply, {200, 201})


# Content types a client may send, right and wrong; the signature covers each as sent.
CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            None,
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=UTF-8",
            "application/json;charset=latin-1",
            "application/json; charset=",
            "application/json; boundary=x",
            "APPLICATION/JSON",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/problem+json",
            "",
            ";",
            "application/",
            "*/*",
        ]
    ),
    st.text(string.printable.strip(), max_size=40),
)
WIRE_BODIES = st.one_of(
    st.sampled_from(
        [
            b'{"to": "+8613800138000", "text": "hi"}',
            b'{"to": "+8613800138000", "text": "hi", "validity_minutes": NaN}',
            b'{"to": "+8613800138000", "text": "hi", "validity_minutes": 1e400}',
            b'{"to": "+8613800138000", "text": "hi", "validity_minutes": 9223372036854775808}',
            b'{"to": "+8613800138000", "text": "hi", "validity_minutes": -0}',
            b'{"to": "+8613800138000", "text": "\\ud800"}',
            b'{"to": "+8613800138000", "text": "a\\u0000b"}',
            b'{"to": "+8613800138000", "text": "\xff\xfe"}',
            b'{"to": "+8613800138000", "text": "\xed\xa0\x80"}',
            b'{"to": "+8613800138000", "text": "\xe2\x80\xae\xe2\x80\x8bhi"}',
            b'{"to": "+8613800138000", "text": "hi"} trailing',
            b'{"to": "+8613800138000", "text": "hi"}{}',
            b'{"to": ["+8613800138000"], "text": "hi", "to": []}',
            b'\xef\xbb\xbf{"to": "+8613800138000", "text": "hi"}',
            b'"{\\"to\\": 1}"',
            b"[]",
            b"null",
            b"to=%2B8613800138000&text=hi",
            b"",
        ]
    ),
    st.binary(max_size=64),
)


# Extra headers, signed or not as the rules say: each changes how the body is read.
EXTRA_HEADERS = st.sampled_from(
    [
        {},
        {},
        {"Expect": "100-continue"},
        {"Content-Encoding": "identity"},
        {"Content-Encoding": "gzip"},
        {"Content-Encoding": ""},
        {"Accept-Encoding": "br"},
        {"Idempotency-Key": "second-key"},  # a second Idempotency-Key line
        {"Content-Type": "application/json"},  # a second Content-Type line
        {"X-Bridge-Nonce": "AAAAAAAAAAAAAAAAAAAAAAAA"},  # a second, unsigned nonce line
        {"Transfer-Encoding": "identity"},
    ]
)


@FUZZ
@given(
    content_type=CONTENT_TYPES,
    body=WIRE_BODIES,
    framing=st.sampled_from(["length", "length", "short", "zero", "chunked", "bad chunk", "both"]),
    extra=EXTRA_HEADERS,
    path=st.sampled_from(["/v1/messages", "/v1/preview", "/v1/templates", "/v1/optouts"]),
)
def test_fuzz_wire(
    fuzz: Fuzz,
    content_type: str | None,
    body: bytes,
    framing: str,
    extra: dict[str, str],
    path: str,
) -> None:
    """Raw requests: any Content-Type (signed, as the rules say), bodies that are not UTF-8 or
    not JSON, repeated or odd headers, and every framing: Content-Length right, shorter than
    the body (the rest is read as the next request) or 0, chunked, a bad chunk size, and both
    Content-Length and chunked (a smuggling attempt). A Content-Length longer than the body
    waits for server.body_timeout_s: test_content_length_longer_than_the_body below. A refusal
    is the envelope with its code's status, a 202 is charged once a message, anything else
    charges nothing."""
    key = f"wire-{secrets.token_hex(8)}"
    headers = {"Host": f"127.0.0.1:{fuzz.port}", "Idempotency-Key": key}
    if content_type is not None:
        headers["Content-Type"] = content_type
    creds = fuzz.creds
    headers.update(
        sign_request(
            creds.app_key, creds.app_secret, "POST", path, "", headers, body,
            fuzz.threaded.clock.utc(), secrets.token_urlsafe(18),
        )
    )  # fmt: skip
    head = [f"POST {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    head += [f"{k}: {v}" for k, v in extra.items()]
    payload = body
    if framing in ("chunked", "bad chunk", "both"):
        size = f"{len(body):x}" if framing != "bad chunk" else f"{len(body) + 7:x}zz"
        payload = (f"{size}\r\n".encode() + body + b"\r\n0\r\n\r\n") if body else b"0\r\n\r\n"
        head.append("Transfer-Encoding: chunked")
    if framing != "chunked" and framing != "bad chunk":
        length = {"short": max(0, len(body) - 3), "zero": 0}.get(framing, len(payload))
        head.append(f"Content-Length: {length}")
    head.append("Connection: close")
    wire = "\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + payload
    status, answer, raw = _raw_exchange(fuzz.port, wire)
    code = answer["error"]["code"] if status >= 400 and answer else None
    event(f"wire {status} {code or ''}")
    assert status < 500, (status, raw[:300])
    if framing in ("length", "chunked") and not extra:
        assert status not in (401, 405), (status, raw[:300])  # signed correctly
    if status >= 400:
        assert answer is not None and CODES.get(code) == status, (status, raw[:300])
    charged = fuzz.new_charges(creds)
    if status == 202:
        assert answer is not None
        ids = [m["id"] for m in answer["messages"]]
        assert charged == Counter(ids), (charged, ids)
    else:
        assert not charged, (status, charged)
    fuzz.check_common(status, {}, raw, wire)


@pytest.mark.parametrize("face", ["native", "alibaba"])
def test_content_length_longer_than_the_body(fuzz: Fuzz, face: str) -> None:
    """A Content-Length that promises more than comes: answered at server.body_timeout_s with
    the face's REQUEST_TIMEOUT (408), nothing accepted or charged."""
    body = b'{"to": "+8613800138000", "text": "hi"}'
    if face == "native":
        port, path, creds = fuzz.port, "/v1/messages", fuzz.creds
        headers = {"Host": f"127.0.0.1:{port}", "Idempotency-Key": secrets.token_hex(8)}
        headers["Content-Type"] = "application/json"
        headers.update(
            sign_request(
                creds.app_key, creds.app_secret, "POST", path, "", headers, body,
                fuzz.threaded.clock.utc(), secrets.token_urlsafe(18),
            )
        )  # fmt: skip
    else:
        port, path, creds = fuzz.aliyun_port, "/", fuzz.tcreds
        headers = {"Host": f"127.0.0.1:{port}", "Content-Type": FORM_TYPE}
    head = [f"POST {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    head.append(f"Content-Length: {len(body) + 10}")
    wire = "\r\n".join(head).encode() + b"\r\n\r\n" + body
    started = time.monotonic()
    status, answer, raw = _raw_exchange(port, wire)
    assert status == 408 and answer is not None, (status, raw[:300])
    assert time.monotonic() - started < 10
    if face == "native":
        assert answer["error"]["code"] == "REQUEST_TIMEOUT", answer
    else:
        assert answer["Code"] == "isv.INVALID_PARAMETERS" and answer["RequestId"], answer
    assert not fuzz.new_charges(creds)
    fuzz.check_common(status, {}, raw, wire)


def _raw_exchange(port: int, wire: bytes) -> tuple[int, dict[str, Any] | None, bytes]:
    """Send bytes, read the first answer (status, JSON body or None, the body's bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(wire)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        raw = resp.read()
    ctype = resp.getheader("Content-Type") or ""
    answer = json.loads(raw) if raw and ctype.startswith("application/json") else None
    return resp.status, answer, raw


# -- the Alibaba face -----------------------------------------------------------------------------

_cn = st.integers(13_000_000_000, 19_999_999_999).map(str)
_ali_text = st.text(st.characters(codec="utf-8"), max_size=30)
_ali_phones = st.one_of(
    _cn,
    st.lists(_cn, min_size=1, max_size=4).map(",".join),
    st.sampled_from(["8613800138000", "+8613800138000", "0086138", ",", " , ", "", "1" * 30]),
    _ali_text,
)
_ali_json = st.one_of(
    st.sampled_from(['{"code":"1234"}', '{"code":1234}', '{"code":"1","code":"2"}', "{}", "[]"]),
    st.sampled_from(['{"code":NaN}', '{"code":1e400}', '{"code":"\\ud800"}', '{"code":null}']),
    st.sampled_from(['{"code":"a\\u0000"}', "[" * 5000, "null", "1", '"x"', "{", ""]),
    json_values.map(lambda v: _encode(v, True).decode()),
)
_ali_int = st.one_of(
    st.integers(-3, 120).map(str),
    st.sampled_from(["", "0", "1", "50", "51", "100001", "1.0", "１", "²", "-0", "9" * 30]),
)
_ali_date = st.one_of(
    st.dates().map(lambda d: d.strftime("%Y%m%d")),
    st.sampled_from(["00000101", "99991231", "20261301", "2026-12-01", "", "2026120", "２０２６"]),
)
ALIYUN_PARAMS: dict[str, st.SearchStrategy[str]] = {
    "PhoneNumbers": _ali_phones,
    "PhoneNumber": _ali_phones,
    "PhoneNumberJson": st.one_of(_cn.map(lambda n: json.dumps([n])), _ali_json),
    "SignName": st.one_of(st.just("Acme"), _ali_text),
    "SignNameJson": st.one_of(st.just('["Acme"]'), _ali_json),
    "TemplateCode": st.one_of(st.just("<template>"), _ali_text),
    "TemplateParam": _ali_json,
    "TemplateParamJson": st.one_of(st.just('[{"code":"12"}]'), _ali_json),
    "SmsUpExtendCode": st.one_of(st.sampled_from(["", "12", "1" * 13]), _ali_text),
    "SmsUpExtendCodeJson": _ali_json,
    "OutId": st.one_of(st.text(max_size=10), st.text(min_size=250, max_size=300)).filter(
        lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)
    ),
    "SendDate": _ali_date,
    "StartDate": _ali_date,
    "EndDate": _ali_date,
    "BizId": st.one_of(st.from_regex(r"bat_[0-9A-Z]{26}", fullmatch=True), _ali_text),
    "PageSize": _ali_int,
    "CurrentPage": _ali_int,
    "PageIndex": _ali_int,
    "IsGlobe": _ali_int,
    "TemplateType": st.one_of(_ali_int, _ali_text),
    "TemplateName": _ali_text,
    "TemplateContent": st.one_of(st.just("Code ${code}"), _ali_text),
    "SignSource": _ali_int,
    "Remark": _ali_text,
}
ALIYUN_ACTIONS = {
    "SendSms": ("PhoneNumbers", "SignName", "TemplateCode", "TemplateParam"),
    "SendBatchSms": ("PhoneNumberJson", "SignNameJson", "TemplateCode", "TemplateParamJson"),
    "QuerySendDetails": ("PhoneNumber", "SendDate", "PageSize", "CurrentPage"),
    "QuerySendStatistics": ("IsGlobe", "StartDate", "EndDate", "PageIndex", "PageSize"),
    "QuerySmsTemplateList": ("PageIndex", "PageSize"),
    "QuerySmsSignList": ("PageIndex", "PageSize"),
    "QuerySmsTemplate": ("TemplateCode",),
    "QuerySmsSign": ("SignName",),
    "AddSmsTemplate": ("TemplateType", "TemplateName", "TemplateContent", "Remark"),
    "AddSmsSign": ("SignName", "SignSource", "Remark"),
}


@st.composite
def aliyun_calls(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]]]:
    """An action (now and then an unknown one) with its parameters, most near-valid, some
    dropped, replaced, repeated or unknown."""
    action = draw(st.sampled_from(sorted(ALIYUN_ACTIONS)))
    wire = action if draw(st.integers(0, 19)) else draw(_ali_text)
    params: list[tuple[str, str]] = [("Action", wire)]
    names = list(ALIYUN_ACTIONS[action])
    extra = draw(st.lists(st.sampled_from(sorted(ALIYUN_PARAMS)), max_size=2))
    for name in names + extra:
        if draw(st.integers(0, 9)) == 0:
            continue  # left out
        value = draw(ALIYUN_PARAMS[name])
        params.append((name, value))
        if draw(st.integers(0, 19)) == 0:
            params.append((name, draw(ALIYUN_PARAMS[name])))  # repeated
    if draw(st.integers(0, 9)) == 0:
        params.append((draw(_ali_text.filter(bool)), draw(_ali_text)))
    return action, params


@FUZZ
@given(
    call=aliyun_calls(),
    fmt=st.sampled_from(["JSON", "JSON", "XML", "xml", "Json", ""]),
    method=st.sampled_from(["POST", "POST", "GET", "ACS3", "ACS3 form"]),
)
def test_fuzz_aliyun(
    fuzz: Fuzz, call: tuple[str, list[tuple[str, str]]], fmt: str, method: str
) -> None:
    """Correctly signed calls with generated parameters, JSON or XML answers: the envelope
    always, never an authentication refusal, never a 5xx; an accepted send is stored and charged
    once a message."""
    action, params = call
    params = [(k, fuzz.template if v == "<template>" else v) for k, v in params]
    if method.startswith("ACS3"):
        status, answer = fuzz.aliyun_acs3(params, fmt=fmt, in_body=method == "ACS3 form")
    else:
        status, answer = fuzz.aliyun(params, fmt=fmt, method=method)
    charged = fuzz.new_charges(fuzz.tcreds)
    if status == 200 and answer["Code"] == "OK" and action in ("SendSms", "SendBatchSms"):
        rows = fuzz.threaded.run(
            fuzz.store.list_messages(fuzz.tcreds.account_id, batch_id=answer["BizId"], limit=2000)
        )
        assert rows, answer
        assert charged == Counter(r.id for r in rows), (charged, [r.id for r in rows])
        fuzz.message(fuzz.tcreds, rows[0].id)
        sent = dict(params)  # the last of a repeated parameter wins
        out_id = sent.get("OutId") or None
        for row in rows:
            assert (row.template, row.client_ref) == (fuzz.template, out_id), (row, sent)
        # QuerySendDetails finds it: its number, its local day, its BizId.
        zone = ZoneInfo(fuzz.threaded.ctx.config.rules.timezone)
        day = datetime.datetime.fromtimestamp(rows[0].accepted_at / 1000, zone)
        _, details = fuzz.aliyun(
            [
                ("Action", "QuerySendDetails"),
                ("PhoneNumber", rows[0].recipient),
                ("SendDate", day.strftime("%Y%m%d")),
                ("BizId", answer["BizId"]),
                ("PageSize", "50"),
            ]
        )
        assert details["Code"] == "OK", details
        listed = details["SmsSendDetailDTOs"]["SmsSendDetailDTO"]
        same = [r for r in rows if r.recipient == rows[0].recipient]
        assert details["TotalCount"] == str(len(same)) == str(len(listed)), (details, same)
        assert all(d["OutId"] == (out_id or "") for d in listed), (listed, out_id)
    else:
        assert not charged, (status, answer, charged)


# -- money in, on the admin API --------------------------------------------------------------------

_money = st.one_of(
    st.integers(-2, 10**16),
    st.sampled_from([2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30, 999_000_000, 0]),
    st.floats(allow_nan=False),
    json_values,
)
_millis = st.one_of(
    st.integers(-(2**63), 2**64),
    st.sampled_from([253402300799999, 253402300800000, 4102444800000, 0, -1]),
    json_values,
)
MONEY_FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "topups": {"amount_micro": _money, "ref": st.one_of(st.text(max_size=70), json_values)},
    "vouchers": {
        "amount_micro": _money,
        "expires_at": _millis,
        "ref": st.one_of(st.text(max_size=70), json_values),
    },
    "cards": {
        "face_value_micro": st.one_of(
            st.sampled_from([999_000_000, 1_999_000_000, 4_999_000_000]), _money
        ),
        "ref": st.one_of(st.text(max_size=70), json_values),
    },
}


@st.composite
def money_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(sorted(MONEY_FIELDS)))
    fields = MONEY_FIELDS[kind]
    names = draw(st.lists(st.sampled_from(sorted(fields)), unique=True, min_size=1))
    value: Any = {name: draw(fields[name]) for name in names}
    if draw(st.integers(0, 9)) == 0:
        value = draw(json_values)
    return kind, _encode(value, draw(st.booleans()))


@FUZZ
@given(target=money_requests())
def test_fuzz_money_in(fuzz: Fuzz, target: tuple[str, bytes]) -> None:
    """Top-ups, vouchers and cards with odd amounts, dates and refs: a 201 writes to the ledger
    exactly the entries it answers, a repeat (200 duplicate_ref) and a refusal write none."""
    kind, body = target
    headers = {"Authorization": f"Bearer {fuzz.threaded.api.config.server.admin_token}"}
    path = f"/admin/accounts/{fuzz.rcreds.account_id}/{kind}"
    reply = fuzz.native("POST", path, body=body, headers=headers, sign=False)
    _assert_sane(reply, {200, 201})
    written = fuzz.new_entries(fuzz.rcreds)
    if reply.status == 201:
        added = [(e["kind"], e["amount_micro"]) for e in reply.json["added"]]
        assert [(r.kind, r.amount) for r in written] == added, (written, added)
        assert all(isinstance(a, int) for _, a in added)
    else:
        assert not written, (reply.status, reply.text[:300], written)


# -- the admin API's queries and account settings ----------------------------------------------

_ms_text = st.one_of(
    st.integers(-(2**64), 2**64).map(str),
    st.sampled_from(["", "1e3", "1.5", "-0", "9" * 40, "2026-12-01", "now"]),
)
ADMIN_QUERIES: dict[str, dict[str, st.SearchStrategy[str]]] = {
    "/admin/audit": {
        "cursor": _ms_text,
        "limit": _numbers_text,
        "since": _ms_text,
        "until": _ms_text,
    },
    "/admin/receipts/unmatched": {"older_than_s": _ms_text, "limit": _numbers_text},
    "/admin/webhooks/dead": {"account": any_text, "limit": _numbers_text},
    "/admin/signs": {"account": any_text, "status": _known_values["status"]},
    "/admin/templates": {"account": any_text, "status": _known_values["status"]},
    "/admin/accounts": {"limit": _numbers_text, "cursor": any_text},
    "/admin/queue": {"x": any_text},
}


@FUZZ
@given(
    path=st.sampled_from(sorted(ADMIN_QUERIES)),
    pairs=st.lists(st.tuples(st.integers(0, 9), st.integers(0, 4), any_text), max_size=4),
    data=st.data(),
)
def test_fuzz_admin_queries(
    fuzz: Fuzz, path: str, pairs: list[tuple[int, int, str]], data: st.DataObject
) -> None:
    names = ADMIN_QUERIES[path]
    parts = []
    for pick, odd, raw in pairs:
        name = sorted(names)[pick % len(names)] if pick < 8 else raw
        value = data.draw(names[name]) if odd and name in names else raw
        parts.append(
            f"{quote(name.encode('utf-8', 'surrogatepass'), safe='')}="
            + quote(value.encode("utf-8", "surrogatepass"), safe="")
        )
    headers = {"Authorization": f"Bearer {fuzz.threaded.api.config.server.admin_token}"}
    reply = fuzz.native("GET", path, query="&".join(parts), headers=headers, sign=False)
    _assert_sane(reply, {200})


VALID["admin_update"] = st.fixed_dictionaries(
    {},
    optional={
        "raw_text": st.booleans(),
        "tps": st.integers(0, 1000),
        "daily_quota": st.integers(0, 10**6),
        "default_country": st.sampled_from(["CN", "GB", None]),
        "status_callback_url": st.sampled_from(["https://x.example/cb", None]),
    },
)


@FUZZ
@given(body=bodies({k: v for k, v in ADMIN_FIELDS.items() if k != "name"}, "admin_update"))
def test_fuzz_admin_update(fuzz: Fuzz, body: bytes) -> None:
    """PATCH of an account's settings (the rules account's: the send fuzz's accounts keep
    theirs); a refusal changes nothing."""
    headers = {"Authorization": f"Bearer {fuzz.threaded.api.config.server.admin_token}"}
    path = f"/admin/accounts/{fuzz.rcreds.account_id}"
    before = fuzz.threaded.run(fuzz.store.get_account(fuzz.rcreds.account_id))
    reply = fuzz.native("PATCH", path, body=body, headers=headers, sign=False)
    _assert_sane(reply, {200})
    if reply.status != 200:
        after = fuzz.threaded.run(fuzz.store.get_account(fuzz.rcreds.account_id))
        assert after == before, (reply.status, reply.text[:300])
