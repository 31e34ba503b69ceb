"""Adversarial review of the operations signals (metrics, logs, health): each test fails on the
code as reviewed, for the reason its name gives, driving real components (the daemon with its
aiohttp servers, the built-in simulator over TCP, a real SQLite store, the real log formatters).

Findings:

1. Alibaba-face answers produced by its error middleware are not counted in
   `smpp_bridge_api_requests_total` (README: "every HTTP answer"): a 413 for a body over
   `server.max_body_bytes`, and the 503 while the store is unreachable, leave no sample, so the
   "Refused requests by code" panel is blind to a store outage on that face (bridge/compat/
   aliyun_api.py `errors_middleware` answers without `ctx.metrics.request`).
2. Lines logged while the Alibaba face handles a call carry no request id (README: "every line
   logged while a request is handled carries its request_id ... the id the client got back"):
   that face never sets `logs.REQUEST_ID`, and its store-unavailable answer even makes a second,
   different RequestId after logging (bridge/compat/aliyun_api.py `handle`, `errors_middleware`).
3. The master key read from `security.master_key_file` (the systemd set-up the README shows, and
   `generate_master_key`) is not in the log redaction net (README: "every configured secret value
   (admin token, master key, ...) is replaced by ***"): `logs.config_secrets` only walks config
   fields, and the file's key is never one.
4. An SMSC password that arrives with a SIGHUP reload (a new SMSC, or a rotated password) is not
   in the redaction net either: the formatter's secrets are fixed at start-up (bridge/cli.py
   `setup_logging`); `Daemon.reload` never refreshes them.
5. The text log format writes control characters that come from an SMSC raw: a receipt whose
   receipted_message_id holds a carriage return or an ESC sequence (and no space, quote or =) is
   logged with them as they came, so one event can overwrite or forge what a terminal shows
   (bridge/logs.py `_kv` quotes only space, quote, =, newline, tab and backslash).

The store outage of findings 1 and 2 is made by flagging the real SQLite runner closed (what
`close()` does first), so the store raises its own StoreClosedError on the next read.
"""

from __future__ import annotations

import base64
import io
import logging
import re
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bridge import logs
from bridge.app import Daemon
from bridge.config import LoggingConfig
from bridge.smpp import constants as C
from bridge.smpp.codec import ShortMessage

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.e2e.harness import free_port, make_config, wait_until  # noqa: E402

Samples = list[tuple[str, dict[str, str], float]]


async def _scrape(port: int) -> Samples:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def _aliyun_answers(samples: Samples) -> dict[tuple[str, str, str], float]:
    return {
        (labels["endpoint"], labels["status"], labels["code"]): value
        for name, labels, value in samples
        if name == "smpp_bridge_api_requests_total" and labels["endpoint"].startswith("aliyun")
    }


async def _started(cfg: Any) -> Daemon:
    d = Daemon(cfg)
    await d.start()
    await wait_until(lambda: d.connectors["sim"].is_up, 10)
    return d


# -- 1. the Alibaba face's middleware answers are not counted -------------------------------------


async def test_aliyun_413_answer_is_counted_like_every_http_answer(tmp_path):
    aliyun_port = free_port()
    cfg = make_config(
        tmp_path,
        server={"max_body_bytes": 1024},
        aliyun={"enabled": True, "port": aliyun_port},
    )
    d = await _started(cfg)
    try:
        url = f"http://127.0.0.1:{aliyun_port}/"
        async with aiohttp.ClientSession() as s:
            async with s.get(url) as r:  # a refusal the handler itself answers: counted
                assert r.status == 400
            # A body over server.max_body_bytes: the native face counts BODY_TOO_LARGE.
            async with s.post(
                url, data=b"a=" + b"x" * 4000, headers={"Content-Type": "text/plain"}
            ) as r:
                assert r.status == 413
        counted = _aliyun_answers(await _scrape(d.http_port))
        assert sum(counted.values()) >= 1, counted  # the face's answers are counted at all
        assert any(status == "413" for _e, status, _c in counted), counted
    finally:
        await d.stop()


async def _aliyun_call_with_the_store_gone(d: Daemon, aliyun_port: int) -> tuple[int, str]:
    """(status, x-acs-request-id) of a well-formed SendSms while the store cannot be read."""
    assert d.store is not None
    # The store goes away (as a lost disk does): reads raise StoreClosedError, which
    # `is_unavailable` takes for an outage (503 + Retry-After).
    runner = d.store._runner  # type: ignore[attr-defined]
    runner._closed = True
    try:
        # Dated now: the first thing the call needs from the store is its key.
        stamp = time.strftime("%Y-%m-%dT%H%%3A%M%%3A%SZ", time.gmtime())
        query = (
            "Action=SendSms&Version=2017-05-25&Format=JSON&AccessKeyId=LTAIabcdefgh"
            "&SignatureMethod=HMAC-SHA1&SignatureVersion=1.0&SignatureNonce=n1"
            f"&Timestamp={stamp}&Signature=x&PhoneNumbers=13800138000"
            "&SignName=a&TemplateCode=SMS_1"
        )
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{aliyun_port}/?{query}") as r,
        ):
            return r.status, r.headers.get("x-acs-request-id", "")
    finally:
        runner._closed = False


async def test_aliyun_store_unavailable_answer_is_counted(tmp_path):
    aliyun_port = free_port()
    d = await _started(make_config(tmp_path, aliyun={"enabled": True, "port": aliyun_port}))
    try:
        status, _rid = await _aliyun_call_with_the_store_gone(d, aliyun_port)
        assert status == 503
        counted = _aliyun_answers(await _scrape(d.http_port))
        assert any(st == "503" for _e, st, _c in counted), counted
    finally:
        await d.stop()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_aliyun_request_log_lines_carry_the_request_id_the_client_got(tmp_path):
    """README: every line logged while a request is handled carries its request_id (the id the
    client got back). The Alibaba face's RequestId / x-acs-request-id never reaches a line."""
    aliyun_port = free_port()
    d = await _started(make_config(tmp_path, aliyun={"enabled": True, "port": aliyun_port}))
    records = _Records()
    records.addFilter(logs.ContextFilter())
    logger = logging.getLogger("bridge.aliyun")
    logger.addHandler(records)
    try:
        status, rid = await _aliyun_call_with_the_store_gone(d, aliyun_port)
    finally:
        logger.removeHandler(records)
        await d.stop()
    assert status == 503 and rid
    line = next(
        r for r in records.records if r.getMessage().startswith("aliyun face: store unavailable")
    )
    assert getattr(line, "request_id", None) == rid, logs.extras(line)


# -- 2 and 3. the redaction net misses configured secrets -----------------------------------------


def _json_handler(cfg: Any) -> tuple[io.StringIO, logging.Logger, logging.Handler]:
    out = io.StringIO()
    handler = logs.make_handler(
        LoggingConfig(format="json"), secrets=logs.config_secrets(cfg), stream=out
    )
    logger = logging.getLogger("bridge.test.signals_review")
    logger.addHandler(handler)
    logger.propagate = False
    return out, logger, handler


def test_master_key_from_master_key_file_is_redacted_like_an_inline_one(tmp_path):
    key = base64.b64encode(b"F1le-k3y-for-the-redaction-net!!").decode()
    key_file = tmp_path / "master.key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    cfg = make_config(tmp_path, security={"master_key": None, "master_key_file": str(key_file)})
    assert cfg.security.master_key is None and cfg.security.master_key_file == key_file
    out, logger, handler = _json_handler(cfg)
    try:
        logger.warning("a bug passed the key %s", key)  # what the net is there for
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        logs.make_handler(None)
    assert key not in out.getvalue(), out.getvalue()


async def test_an_smsc_password_added_by_a_reload_is_redacted(tmp_path):
    cfg = make_config(tmp_path)
    new_password = "N3wPassw"  # SMPP passwords are at most 8 octets; 8 is the redaction floor
    out = io.StringIO()
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    # As `smpp-bridge run` does: cli.setup_logging(cfg) once, then the daemon.
    handler = logs.configure(
        LoggingConfig(format="json"), secrets=logs.config_secrets(cfg), stream=out
    )
    d = await _started(cfg)
    try:
        added = replace(cfg.smscs[0], name="second", password=new_password)
        await d.reload(replace(cfg, smscs=(*cfg.smscs, added)))
        assert d.config.smscs[1].password == new_password
        logging.getLogger("bridge.smpp").warning("a bug passed the password %s", new_password)
    finally:
        await d.stop()
        root.removeHandler(handler)
        for h in saved[1]:
            root.addHandler(h)
        root.setLevel(saved[0])
        logs.make_handler(None)
    assert new_password not in out.getvalue()


# -- 4. the text format lets an SMSC's control characters through ---------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x85\u2028\u2029]")


async def test_text_log_lines_carry_no_raw_control_characters_from_a_received_pdu(tmp_path):
    cfg = make_config(tmp_path, logging={"level": "DEBUG", "format": "text"})
    out = io.StringIO()
    handler = logs.make_handler(cfg.logging, secrets=logs.config_secrets(cfg), stream=out)
    logger = logging.getLogger("bridge.inbound")
    saved_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    d = await _started(cfg)
    try:
        assert d.inbound is not None
        # No space, quote or "=": `_kv` then writes the value unquoted, control bytes and all.
        forged = b"AB12\r\x1b[2K2026-01-01T00:00:00.000Z\x1b[1A"
        receipt = ShortMessage(
            source_addr="8613800138000",
            destination_addr="smpp-bridge",
            esm_class=0x04,
            short_message=b"id:AB12 sub:001 dlvrd:001 submit date:2601010000 "
            b"done date:2601010000 stat:DELIVRD err:000 text:",
            tlvs=((C.RECEIPTED_MESSAGE_ID, forged + b"\0"),),
        )
        assert await d.inbound.on_deliver("sim", receipt) == C.ESME_ROK
    finally:
        await d.stop()
        logger.removeHandler(handler)
        logger.setLevel(saved_level)
        logs.make_handler(None)
    lines = [x for x in out.getvalue().split("\n") if "receipt received" in x]
    assert lines, out.getvalue()
    assert not _CONTROL.search(lines[0]), repr(lines[0])
