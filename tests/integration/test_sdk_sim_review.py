"""Adversarial review of the client SDK (bridge/client.py) and the simulated SMSC (bridge/sim/).

Every test talks to a real server on 127.0.0.1: the project's API server (`api_server` fixture), a
small aiohttp stand-in for what sits between a customer and the gateway (a proxy that answers HTML
or cuts a response short, a server that hangs), or a `SimSmsc` driven over raw TCP by a minimal
ESME written here, independent of the engine's SMPP session code.

The review's 12 defects, each pinned by a test that failed before its fix. SDK: a Retry-After
past the caller's cap is the answer (no early retries that are refused anyway); a body cut off
mid-way and a proxy's 502/504 are retried when retrying cannot send twice; error and success
bodies that are not our envelope become typed errors, with the request id read case-insensitively;
the timeout applies to a caller's own session; ids are quoted into paths. Simulator: a tps_limit
under 1/s still admits submits; the control API answers 400, not 500, to a non-ASCII digit, deep
JSON and an MO address too long for deliver_sm (encoded before anything is owed). The others pin
behaviour that was checked and found right (fresh nonce per retry, same key, the error envelope,
receipts per SMPP 3.4 Appendix B).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import re
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.api import signing
from bridge.client import BridgeClient, BridgeError
from bridge.config import SimConfig
from bridge.sim import SimSmsc
from bridge.smpp import constants as C
from bridge.smpp.codec import Bind, Pdu, ShortMessage, decode, encode, tlv_get, tlv_int
from bridge.text.split import EncodeOptions, SplitMode, encode_message

CN = "+8613800138000"
APP_KEY = "ak_review_0123456789"
SECRET = "review-secret-s3cr3t-value"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- a stand-in HTTP server ----------------------------------------------------------------------


@dataclasses.dataclass
class Hit:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


class FakeGateway:
    """Answers each request with the next handler of a script (the last one repeats) and keeps
    every request it saw, so a test can count attempts and read their headers."""

    def __init__(self) -> None:
        self.script: list[Handler] = []
        self.hits: list[Hit] = []
        self.release = asyncio.Event()  # lets a hanging handler finish at teardown
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.hits.append(
            Hit(
                request.method,
                request.raw_path.split("?", 1)[0],
                request.query_string,
                dict(request.headers),
                body,
            )
        )
        handler = self.script[min(len(self.hits) - 1, len(self.script) - 1)]
        return await handler(request)


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    gw = FakeGateway()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", gw.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    gw.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield gw
    gw.release.set()
    await runner.cleanup()


def refusal(status: int, code: str, retry_after: str | None = None) -> Handler:
    async def h(_: web.Request) -> web.StreamResponse:
        headers = {"X-Request-Id": "req_00000000000000aa"}
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        body = {"error": {"code": code, "message": f"{code} says so", "request_id": "req_1"}}
        return web.json_response(body, status=status, headers=headers)

    return h


async def accepted(_: web.Request) -> web.StreamResponse:
    return web.json_response({"count": 1, "messages": [{"id": "msg_1"}]}, status=202)


# -- SDK: retries --------------------------------------------------------------------------------


async def test_sdk_retry_keeps_key_and_resigns_with_fresh_nonce(gateway: FakeGateway) -> None:
    """Checked and right: each retry carries the same Idempotency-Key, a new nonce, and a signature
    the server's own verifier accepts for exactly the bytes sent."""
    gateway.script = [
        refusal(503, "STORE_UNAVAILABLE", "0"),
        refusal(429, "ACCOUNT_RATE_LIMIT", "0"),
        accepted,
    ]
    async with BridgeClient(gateway.url, APP_KEY, SECRET, max_retry_delay_s=0.01) as client:
        result = await client.send(CN, text="hi")
    assert result["count"] == 1
    assert len(gateway.hits) == 3
    keys = {h.headers.get("Idempotency-Key") for h in gateway.hits}
    assert len(keys) == 1 and None not in keys
    nonces = [h.headers["X-Bridge-Nonce"] for h in gateway.hits]
    assert len(set(nonces)) == 3
    now = datetime.now(UTC)
    for hit in gateway.hits:
        auth = signing.parse_authorization(hit.headers["Authorization"])
        assert "idempotency-key" in auth.signed_headers
        signing.check_skew(signing.parse_date(hit.headers["X-Bridge-Date"]), now, 5)
        signing.verify_signature(SECRET, "POST", hit.path, hit.query, hit.headers, hit.body, auth)


async def test_sdk_does_not_retry_refusals_that_are_final(gateway: FakeGateway) -> None:
    """Checked and right: 402/422/409/400 are answered once, never retried."""
    for status, code in ((402, "INSUFFICIENT_BALANCE"), (422, "IDEMPOTENCY_KEY_REUSED")):
        gateway.hits.clear()
        gateway.script = [refusal(status, code), accepted]
        async with BridgeClient(gateway.url, APP_KEY, SECRET, max_retry_delay_s=0.01) as client:
            with pytest.raises(BridgeError) as err:
                await client.send(CN, text="hi")
        assert (err.value.status, err.value.code) == (status, code)
        assert len(gateway.hits) == 1


async def test_sdk_does_not_hammer_when_retry_after_exceeds_its_cap(gateway: FakeGateway) -> None:
    """A 429 FREQUENCY_LIMIT_DAY (or DAILY_QUOTA_EXCEEDED) says "come back in an hour". With the
    wait capped below that, every early retry is a certain refusal that only burns the caller's
    latency budget and the account's rate limit: the SDK should give up at once."""
    gateway.script = [refusal(429, "FREQUENCY_LIMIT_DAY", "3600")]
    async with BridgeClient(gateway.url, APP_KEY, SECRET, max_retry_delay_s=0.05) as client:
        with pytest.raises(BridgeError) as err:
            await client.send(CN, text="hi")
    assert (err.value.status, err.value.code) == (429, "FREQUENCY_LIMIT_DAY")
    assert len(gateway.hits) == 1, f"{len(gateway.hits)} requests against Retry-After: 3600"


async def test_sdk_retries_a_send_whose_response_was_cut_off(gateway: FakeGateway) -> None:
    """The connection dies after the status line (a proxy restart, an LB idle cut): the send
    carries an Idempotency-Key, so a retry is safe and is what the SDK promises for "a lost
    connection". aiohttp reports this as ClientPayloadError, which the SDK neither retries nor
    wraps."""

    async def cut_off(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=202, headers={"Content-Type": "application/json", "Content-Length": "200"}
        )
        await resp.prepare(request)
        await resp.write(b'{"count": 1, "mess')
        assert request.transport is not None
        request.transport.close()
        return resp

    gateway.script = [cut_off, accepted]
    async with BridgeClient(gateway.url, APP_KEY, SECRET, max_retry_delay_s=0.01) as client:
        result = await client.send(CN, text="hi")
    assert result["count"] == 1
    assert len(gateway.hits) == 2
    assert len({h.headers["Idempotency-Key"] for h in gateway.hits}) == 1


async def test_sdk_retries_a_keyed_send_after_a_proxy_502(gateway: FakeGateway) -> None:
    """A 502/504 from the proxy in front of the gateway means "the upstream connection was lost":
    for a send with an Idempotency-Key a retry cannot duplicate, yet only 429/503 are retried."""

    async def bad_gateway(_: web.Request) -> web.StreamResponse:
        return web.Response(status=502, text="<html><h1>502 Bad Gateway</h1></html>")

    gateway.script = [bad_gateway, accepted]
    async with BridgeClient(gateway.url, APP_KEY, SECRET, max_retry_delay_s=0.01) as client:
        result = await client.send(CN, text="hi")
    assert result["count"] == 1
    assert len(gateway.hits) == 2


# -- SDK: errors ---------------------------------------------------------------------------------


async def test_sdk_html_error_page_keeps_the_request_id_header(gateway: FakeGateway) -> None:
    """A non-JSON error (a proxy's HTML 502, the HTTP layer's own text page) is a BridgeError with
    a synthetic code and no secret in its text (right), but its request id is always lost: the
    SDK copies the headers into a plain, case-sensitive dict, aiohttp's parser spells the header
    `X-Request-ID` (hdrs.X_REQUEST_ID), and the lookup is for `X-Request-Id`."""

    async def html(_: web.Request) -> web.StreamResponse:
        return web.Response(
            status=502, text="<html>Bad Gateway</html>", headers={"X-Request-Id": "req_proxy"}
        )

    gateway.script = [html]
    client = BridgeClient(gateway.url, APP_KEY, SECRET, max_retries=0)
    async with client:
        with pytest.raises(BridgeError) as err:
            await client.account()
    assert (err.value.status, err.value.code, err.value.request_id) == (
        502,
        "HTTP_502",
        "req_proxy",
    )
    for text in (str(err.value), repr(err.value), repr(client)):
        assert SECRET not in text


async def test_sdk_json_error_without_envelope_becomes_a_typed_error(
    gateway: FakeGateway,
) -> None:
    """Ingresses and WAFs answer `{"error": "Bad Gateway"}` or `{"error": "rate limited"}`; the SDK
    does `.get` on that string and raises AttributeError, which no caller catches."""

    async def plain(_: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "Bad Gateway"}, status=502)

    gateway.script = [plain]
    async with BridgeClient(gateway.url, APP_KEY, SECRET, max_retries=0) as client:
        with pytest.raises(BridgeError) as err:
            await client.account()
    assert (err.value.status, err.value.code) == (502, "HTTP_502")


async def test_sdk_non_json_success_body_becomes_a_typed_error(gateway: FakeGateway) -> None:
    """A captive portal or misrouted proxy answering 200 with HTML makes the SDK raise a bare
    json.JSONDecodeError (and `smpp-bridge send` print a traceback): it should be a BridgeError."""

    async def portal(_: web.Request) -> web.StreamResponse:
        return web.Response(status=200, text="<html>please log in</html>", content_type="text/html")

    gateway.script = [portal]
    async with BridgeClient(gateway.url, APP_KEY, SECRET, max_retries=0) as client:
        with pytest.raises(BridgeError) as err:
            await client.account()
    assert err.value.status == 200


# -- SDK: timeouts -------------------------------------------------------------------------------


async def test_sdk_timeout_applies_to_a_caller_supplied_session(gateway: FakeGateway) -> None:
    """`timeout_s` is only given to a session the SDK creates; with the caller's shared session
    (the documented way to reuse connections) it is silently ignored and a hung gateway holds the
    call for aiohttp's default 5 minutes."""

    async def hang(_: web.Request) -> web.StreamResponse:
        await gateway.release.wait()
        return web.json_response({})

    gateway.script = [hang]
    async with aiohttp.ClientSession() as session:
        client = BridgeClient(
            gateway.url, APP_KEY, SECRET, session=session, timeout_s=0.3, max_retries=0
        )
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.account(), 2.5)
        elapsed = time.monotonic() - started
    assert elapsed < 1.5, f"the 0.3 s timeout was not applied (gave up after {elapsed:.1f} s)"


# -- SDK: URLs and query encoding against the real server -----------------------------------------


async def test_sdk_query_values_with_reserved_characters_sign_correctly(
    api_server: Any, make_account: Any, sdk_client: Any
) -> None:
    """Checked and right: a query value with space, '+', '/', quote and '*' (which yarl re-encodes
    on the way out) still verifies: the server refuses the cursor, not the signature."""
    creds = await make_account()
    client = sdk_client(creds)
    with pytest.raises(BridgeError) as err:
        await client.messages(cursor="a b+/'*~%", to=CN)
    assert (err.value.status, err.value.code) == (400, "INVALID_CURSOR")


async def test_sdk_message_id_is_encoded_into_the_path(
    api_server: Any, make_account: Any, sdk_client: Any
) -> None:
    """`message(id)` puts the id into the path unquoted (other helpers quote): an id with '?'
    (pasted from a URL, or from untrusted input) is sent as a query string that was not signed, so
    the caller gets 401 SIGNATURE_MISMATCH instead of 404 NOT_FOUND."""
    creds = await make_account()
    client = sdk_client(creds)
    with pytest.raises(BridgeError) as err:
        await client.message("msg_nope?limit=1")
    assert (err.value.status, err.value.code) == (404, "NOT_FOUND")


# -- simulator: a minimal ESME -------------------------------------------------------------------


class Esme:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.seq = 100

    @classmethod
    async def connect(cls, port: int) -> Esme:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, cid: int, body: Any = None, seq: int | None = None) -> int:
        if seq is None:
            self.seq += 1
            seq = self.seq
        self.writer.write(encode(Pdu(cid, 0, seq, body)))
        return seq

    async def read(self, wait: float = 3.0) -> Pdu:
        head = await asyncio.wait_for(self.reader.readexactly(4), wait)
        (n,) = struct.unpack(">I", head)
        return decode(head + await asyncio.wait_for(self.reader.readexactly(n - 4), wait))

    async def call(self, cid: int, body: Any = None) -> Pdu:
        seq = self.send(cid, body)
        pdu = await self.read()
        assert pdu.seq == seq
        return pdu

    async def bind(self, cid: int = C.BIND_TRANSCEIVER) -> None:
        resp = await self.call(cid, Bind("bridge", "secret"))
        assert (resp.command_id, resp.status) == (cid | C.RESP_BIT, C.ESME_ROK)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


@pytest.fixture
async def make_sim() -> AsyncIterator[Callable[..., Awaitable[SimSmsc]]]:
    sims: list[SimSmsc] = []

    async def make(**kw: Any) -> SimSmsc:
        base: dict[str, Any] = {
            "port": 0,
            "password": "secret",
            "receipt_delay_ms": 0,
            "control_port": None,
        }
        base.update(kw)
        sim = SimSmsc(dataclasses.replace(SimConfig(), **base), rng=random.Random(7))
        await sim.start()
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        await sim.stop()


def short(text: bytes = b"hello", **kw: Any) -> ShortMessage:
    fields: dict[str, Any] = {
        "source_addr": "SENDER",
        "source_addr_ton": 5,
        "destination_addr": "4915112345678",
        "dest_addr_ton": 1,
        "dest_addr_npi": 1,
        "registered_delivery": 1,
        "short_message": text,
    }
    return ShortMessage(**{**fields, **kw})


RECEIPT_RE = re.compile(
    r"id:(\S{1,10}) sub:(\d{3}) dlvrd:(\d{3}) submit date:(\d{10}) done date:(\d{10}) "
    r"stat:([A-Z]{7}) err:(\d{3}) text:(.{0,20})",
    re.DOTALL,
)


# -- simulator: protocol ------------------------------------------------------------------------


async def test_sim_receipts_one_per_part_in_appendix_b_format(make_sim: Any) -> None:
    """Checked and right: a 3-part submit gets three receipts, each esm_class 0x04, Appendix B text
    with 10-digit dates, receipted_message_id equal to that part's submit_sm_resp id, message_state
    DELIVERED; the SMSC's own sequence numbers are fresh and rising; unknown command_id gets a
    generic_nack echoing the sequence number."""
    sim = await make_sim()
    esme = await Esme.connect(sim.port)
    try:
        await esme.bind()
        enc = encode_message("x" * 400, EncodeOptions(split=SplitMode.UDH8), 9)
        assert len(enc.parts) == 3
        seqs_sent = [
            esme.send(
                C.SUBMIT_SM,
                short(
                    part.short_message,
                    esm_class=part.esm_class,
                    data_coding=enc.data_coding,
                    tlvs=part.tlvs,
                ),
            )
            for part in enc.parts
        ]
        pdus = [await esme.read() for _ in range(6)]  # 3 resps and 3 receipts, interleaved
        resps = [p for p in pdus if p.command_id == C.SUBMIT_SM_RESP]
        assert [(p.seq, p.status) for p in resps] == [(s, C.ESME_ROK) for s in seqs_sent]
        ids = [p.body.message_id for p in resps]
        receipts = [p for p in pdus if p.command_id != C.SUBMIT_SM_RESP]
        for pdu in receipts:
            esme.send(C.DELIVER_SM_RESP, None, seq=pdu.seq)
        assert [p.command_id for p in receipts] == [C.DELIVER_SM] * 3
        seqs = [p.seq for p in receipts]
        assert seqs == sorted(seqs) and len(set(seqs)) == 3
        got = []
        for pdu in receipts:
            body = pdu.body
            assert body.esm_class == C.ESM_DELIVERY_RECEIPT
            m = RECEIPT_RE.fullmatch(body.short_message.decode("ascii"))
            assert m, body.short_message
            assert m.group(2, 3, 6, 7) == ("001", "001", "DELIVRD", "000")
            assert tlv_get(body.tlvs, C.RECEIPTED_MESSAGE_ID) == m.group(1).encode() + b"\0"
            assert tlv_int(body.tlvs, C.MESSAGE_STATE) == C.MSG_STATE_DELIVERED
            got.append(m.group(1))
        assert sorted(got) == sorted(ids)

        esme.writer.write(struct.pack(">IIII", 16, 0x000000AB, 0, 4242))
        nack = await esme.read()
        assert (nack.command_id, nack.status, nack.seq) == (C.GENERIC_NACK, C.ESME_RINVCMDID, 4242)
    finally:
        await esme.close()


async def test_sim_tps_limit_below_one_per_second_still_admits_submits(make_sim: Any) -> None:
    """tps_limit 0.5 (one submit every 2 s, accepted by config and /config) throttles *every*
    submit forever: the bucket's capacity is the rate itself, so it never holds a whole token."""
    sim = await make_sim(tps_limit=0.5)
    esme = await Esme.connect(sim.port)
    try:
        await esme.bind(C.BIND_TRANSMITTER)
        resp = await esme.call(C.SUBMIT_SM, short(registered_delivery=0))
        assert resp.status == C.ESME_ROK, f"first submit under tps_limit 0.5: 0x{resp.status:X}"
    finally:
        await esme.close()


# -- simulator: control endpoint -----------------------------------------------------------------


async def control(sim: SimSmsc, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body)
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"http://127.0.0.1:{sim.control_port}{path}", data=data) as resp,
    ):
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


async def test_sim_control_messages_limit_with_unicode_digit_is_a_400(make_sim: Any) -> None:
    """`limit=²` passes str.isdigit() but not int(): a 500 text page instead of the JSON 400."""
    sim = await make_sim(control_port=0)
    status, body = await control(sim, "GET", "/messages?limit=%C2%B2")
    assert status == 400, (status, body)
    assert isinstance(body, dict) and body["error"] == "INVALID_QUERY"


async def test_sim_control_config_deeply_nested_json_is_a_400(make_sim: Any) -> None:
    """A deeply nested body makes json.loads raise RecursionError, which _json_body does not catch:
    a 500 instead of INVALID_JSON."""
    sim = await make_sim(control_port=0)
    status, body = await control(sim, "POST", "/config", b"[" * 100_000 + b"]" * 100_000)
    assert status == 400, (status, str(body)[:200])
    assert isinstance(body, dict) and body["error"] == "INVALID_JSON"


async def test_sim_mo_with_overlong_address_is_refused_cleanly(make_sim: Any) -> None:
    """POST /mo with a source longer than SMPP's 20 octets: the PDU encoder raises after the part
    was entered in the bind's outstanding table, so the caller gets a 500 and the bind keeps a
    phantom deliver_sm that holds a window slot and is later "resent" by the ack sweep (raising
    inside the receipt timer)."""
    sim = await make_sim(control_port=0)
    esme = await Esme.connect(sim.port)
    try:
        await esme.bind(C.BIND_RECEIVER)
        status, body = await control(
            sim, "POST", "/mo", {"source": "1" * 40, "destination": "12345", "text": "hi"}
        )
        outstanding = [b["outstanding"] for b in sim.binds()]
        assert status == 400, (status, str(body)[:200])
        assert isinstance(body, dict) and body["error"].startswith("INVALID")
        assert outstanding == [0]
    finally:
        await esme.close()
