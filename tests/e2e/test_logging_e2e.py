"""Logs of a whole daemon run at DEBUG, captured: no secret and no message text (nor a full phone
number) in any record, in either format; the ids that tie lines together are there.

The run touches every path that could leak: signed sends (app secret), a refused signature, admin
calls with the right and a wrong token, webhooks signed with the webhook secret (one refused with
500, so the retry is logged), an MO pushed to its callback, receipts, and an SMSC whose password
is refused (the bind failure is logged). Records are checked before formatting as well as after:
the redaction in the formatter is a net, the rule is that secrets never reach a log call."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge import logs
from bridge.app import Daemon
from bridge.client import BridgeError
from bridge.config import LoggingConfig
from tests.e2e.harness import (
    WebhookReceiver,
    client_for,
    create_account,
    make_config,
    wait_until,
)

ADMIN = "adm-Tok3n-6b1f0c9e2d7a4e85"
MASTER = base64.b64encode(b"M4st3r-k3y-for-the-logging-test!").decode()
SMSC_PASSWORD = "Pw7zQx2k"  # what the simulator accepts (SMPP passwords are at most 8 octets)
WRONG_PASSWORD = "Wr0ngPw9"  # a second SMSC bound with a refused password
NUMBER = "+8613800138000"
TEXT = "Your login code is 749201 TOPSECRET-BODY"
LONG_TEXT = "验证码 583920，请勿泄露 " * 10  # UCS-2, several parts
MO_TEXT = "MO-REPLY-SECRET 5521"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def texts(self) -> Iterator[str]:
        for r in self.records:
            yield r.getMessage()
            yield repr(logs.extras(r))
            if r.exc_info:
                yield logging.Formatter().formatException(r.exc_info)


def _capture(cfg: Any) -> tuple[io.StringIO, Records, Any]:
    root = logging.getLogger()
    out = io.StringIO()
    formatted = logs.make_handler(cfg.logging, secrets=logs.config_secrets(cfg), stream=out)
    records = Records()
    records.addFilter(logs.ContextFilter())
    saved = (root.level, list(root.handlers))
    root.addHandler(formatted)
    root.addHandler(records)
    root.setLevel(logging.DEBUG)

    def restore() -> None:
        root.removeHandler(formatted)
        root.removeHandler(records)
        root.setLevel(saved[0])
        logs.make_handler(None)  # masking back to the default

    return out, records, restore


async def _run(tmp_path: Path, fmt: str, mask: bool) -> tuple[str, Records, dict[str, str], str]:
    cfg = make_config(
        tmp_path,
        server={"admin_token": ADMIN},
        security={"master_key": MASTER},
        logging={"level": "DEBUG", "format": fmt, "mask_bodies": mask},
        sim={"password": SMSC_PASSWORD},
        smscs=[{"password": SMSC_PASSWORD}, {"name": "refused", "password": WRONG_PASSWORD}],
    )
    # The second SMSC points at the simulator too, with a password it refuses.
    refused = cfg.smscs[1]
    assert refused.password == WRONG_PASSWORD
    cfg = replace(cfg, smscs=(cfg.smscs[0], replace(refused, port=cfg.sim.port)))
    out, records, restore = _capture(cfg)
    receiver = WebhookReceiver()
    await receiver.start()
    d = Daemon(cfg)
    try:
        await d.start()
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        creds = await create_account(
            d, "logged", status_callback_url=receiver.url, mo_callback_url=receiver.url
        )
        receiver.secret = creds["webhook_secret"]
        receiver.fail_with = 500  # the first webhook attempt fails: the retry is logged
        async with client_for(d.http_port, creds) as c:
            first = await c.send(NUMBER, text=TEXT)
            await c.send("+8613800138001", text=LONG_TEXT)
            mid = first["messages"][0]["id"]

            async def final() -> bool:
                return (await c.message(mid))["status"] == "delivered"

            await wait_until(final, 15, 0.05)
        async with client_for(d.http_port, {**creds, "app_secret": "f" * 40}) as bad:
            with pytest.raises(BridgeError):
                await bad.account()
        async with aiohttp.ClientSession() as s:
            for token in (ADMIN, "not-the-admin-token-123456"):
                async with s.get(
                    f"http://127.0.0.1:{d.http_port}/admin/smscs",
                    headers={"Authorization": f"Bearer {token}"},
                ) as r:
                    await r.read()
        await wait_until(lambda: d.webhooks is not None and d.webhooks.failed_attempts > 0, 10)
        receiver.fail_with = None
        await d.sim.inject_mo(NUMBER.lstrip("+"), "smpp-bridge", MO_TEXT)
        await wait_until(lambda: any(r.get("text") == MO_TEXT for r in receiver.reports), 15)
        await wait_until(lambda: len(receiver.reports) >= 3, 15)  # 2 status reports + the MO
        assert d.connectors["refused"].snapshot()["last_error"] is not None
    finally:
        await d.stop()
        await receiver.stop()
        restore()
    return out.getvalue(), records, creds, mid


def _forbidden(creds: dict[str, str]) -> list[str]:
    return [
        creds["app_secret"],
        creds["webhook_secret"],
        ADMIN,
        MASTER,
        SMSC_PASSWORD,
        WRONG_PASSWORD,
        "TOPSECRET",
        "749201",
        "583920",
        "MO-REPLY-SECRET",
        NUMBER,
        NUMBER.lstrip("+"),
        "8613800138001",
    ]


@pytest.mark.parametrize("fmt", ["json", "text"])
async def test_a_debug_run_logs_no_secret_no_body_and_ties_lines_to_ids(tmp_path, fmt):
    output, records, creds, mid = await _run(tmp_path, fmt, mask=True)
    assert len(records.records) > 20, "the run logged next to nothing: the test would prove nothing"
    for secret in _forbidden(creds):
        assert secret not in output, f"{secret!r} in the formatted log"
        for text in records.texts():
            assert secret not in text, f"{secret!r} in a log record: {text[:300]}"

    by_msg = {r.getMessage() for r in records.records}
    expected = ("message accepted", "message submitted", "receipt received", "mo received",
                "refused", "answered", "webhook retry")  # fmt: skip
    for msg in expected:
        assert msg in by_msg, (msg, sorted(by_msg))
    assert any(m.startswith("smpp bind refused for credentials") for m in by_msg)
    accepted = next(
        r for r in records.records if r.getMessage() == "message accepted" and r.message_id == mid
    )
    assert accepted.to == "+86*******8000"
    assert accepted.text == f"<masked {len(TEXT)} chars>"
    assert accepted.request_id.startswith("req_")
    # Every line logged while handling a request carries its id; every dispatcher line its message.
    for r in records.records:
        if r.name == "bridge.api":
            assert getattr(r, "request_id", "").startswith("req_"), r.getMessage()
        if r.getMessage() == "message submitted":
            assert getattr(r, "message_id", "").startswith("msg_")
    retry = next(r for r in records.records if r.getMessage() == "webhook retry")
    assert mid in retry.message_ids or len(retry.message_ids) >= 1

    if fmt == "json":
        lines = [json.loads(line) for line in output.splitlines() if line.strip()]
        assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
        line = next(x for x in lines if x["msg"] == "message accepted" and x["message_id"] == mid)
        assert line["to"] == "+86*******8000" and line["request_id"].startswith("req_")
    else:
        line = next(x for x in output.splitlines() if "message accepted" in x and mid in x)
        assert f"message_id={mid}" in line and "to=+86*******8000" in line
        assert "request_id=req_" in line


async def test_with_masking_off_the_text_is_logged_so_the_check_above_can_fail(tmp_path):
    output, records, _creds, mid = await _run(tmp_path, "text", mask=False)
    accepted = next(
        r for r in records.records if r.getMessage() == "message accepted" and r.message_id == mid
    )
    assert accepted.text == TEXT and accepted.to == NUMBER
    assert "TOPSECRET" in output
    # Secrets stay out regardless of masking.
    assert ADMIN not in output and MASTER not in output and SMSC_PASSWORD not in output


def test_redaction_is_the_net_under_the_rule(tmp_path) -> None:
    """A secret that does reach a log call (a bug) is still printed as ***."""
    cfg = make_config(tmp_path, server={"admin_token": ADMIN}, security={"master_key": MASTER})
    out = io.StringIO()
    handler = logs.make_handler(LoggingConfig(format="json"), secrets=logs.config_secrets(cfg),
                                stream=out)  # fmt: skip
    logger = logging.getLogger("bridge.test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("token %s", ADMIN, extra={"key": MASTER})
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    line = json.loads(out.getvalue())
    assert line["msg"] == "token ***" and line["key"] == "***"
