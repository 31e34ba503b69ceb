"""bridge/logs.py: the two line formats with extra fields, context ids, secret redaction, body and
number masking, per-component levels."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from collections.abc import Iterator

import pytest

from bridge import logs
from bridge.config import LoggingConfig, parse_config

KEY = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO, list[logging.Handler]]]:
    logger = logging.getLogger("bridge.test.logs")
    out = io.StringIO()
    handlers: list[logging.Handler] = []
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, out, handlers
    for h in handlers:
        logger.removeHandler(h)
    logger.propagate = True
    logs.make_handler(None)  # masking back to the default


def use(cap, cfg: LoggingConfig, secrets: tuple[str, ...] = ()) -> None:
    logger, out, handlers = cap
    h = logs.make_handler(cfg, secrets=secrets, stream=out)
    logger.addHandler(h)
    handlers.append(h)


def test_json_lines_carry_the_extra_fields(capture) -> None:
    use(capture, LoggingConfig(format="json"))
    logger, out, _ = capture
    logger.info("smpp bound", extra={"smsc": "carrier-a", "bind": 0, "peer": None, "ids": [1, 2]})
    line = json.loads(out.getvalue())
    assert line["msg"] == "smpp bound" and line["level"] == "INFO"
    assert line["logger"] == "bridge.test.logs"
    assert (line["smsc"], line["bind"], line["peer"], line["ids"]) == ("carrier-a", 0, None, [1, 2])
    assert line["ts"].endswith("Z") and len(line["ts"]) == len("2026-01-01T00:00:00.000Z")


def test_text_lines_are_key_value_and_quote_what_needs_it(capture) -> None:
    use(capture, LoggingConfig(format="text"))
    logger, out, _ = capture
    logger.warning(
        "webhook retry",
        extra={"account": "acc_1", "error": 'HTTP 500 "x"', "n": 3, "ok": True, "d": {"a": 1}},
    )
    line = out.getvalue().rstrip("\n")
    ts, level, name, rest = line.split(" ", 3)
    assert (level, name) == ("WARNING", "bridge.test.logs") and ts.endswith("Z")
    assert rest == 'webhook retry account=acc_1 error="HTTP 500 \\"x\\"" n=3 ok=true d={"a":1}'


def test_an_exception_is_kept_with_its_traceback(capture) -> None:
    use(capture, LoggingConfig(format="json"))
    logger, out, _ = capture
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    line = json.loads(out.getvalue())
    assert "ValueError: boom" in line["exc"]


async def test_request_and_message_ids_come_from_the_task_context(capture) -> None:
    use(capture, LoggingConfig(format="json"))
    logger, out, _ = capture

    async def request() -> None:
        logs.REQUEST_ID.set("req_0011223344556677")
        await asyncio.sleep(0)
        logger.info("inside a request")

    async def message() -> None:
        logs.MESSAGE_ID.set("msg_01ABC")
        logger.info("inside a message", extra={"message_id": "msg_explicit"})
        logger.info("also inside")

    await asyncio.gather(request(), message())
    logger.info("outside")
    lines = {x["msg"]: x for x in map(json.loads, out.getvalue().splitlines())}
    assert lines["inside a request"]["request_id"] == "req_0011223344556677"
    assert "message_id" not in lines["inside a request"]  # tasks do not see each other's ids
    assert lines["inside a message"]["message_id"] == "msg_explicit"  # an explicit extra wins
    assert lines["also inside"]["message_id"] == "msg_01ABC"
    assert "request_id" not in lines["outside"] and "message_id" not in lines["outside"]


def test_configured_secrets_are_found_and_redacted_longest_first(capture) -> None:
    cfg = parse_config(
        {
            "server": {"admin_token": "admin-token-0123456789"},
            "store": {"engine": "postgres", "dsn": "postgresql://bridge:S3cretPass@db/bridge"},
            "security": {"master_key": KEY},
            "smscs": [
                {"name": "a", "system_id": "x", "password": "Pw123456"},
                {"name": "b", "system_id": "y", "password": "short"},  # too short to redact
            ],
            "sim": {"password": "simpas12"},
        },
        env={},
    )
    found = logs.config_secrets(cfg)
    assert set(found) == {
        "admin-token-0123456789",
        "postgresql://bridge:S3cretPass@db/bridge",
        "S3cretPass",
        KEY,
        "Pw123456",
        "simpas12",
    }
    assert list(found) == sorted(found, key=len, reverse=True)
    use(capture, LoggingConfig(format="text"), found)
    logger, out, _ = capture
    logger.error(
        "connect to postgresql://bridge:S3cretPass@db/bridge failed: password S3cretPass",
        extra={"token": "admin-token-0123456789"},
    )
    line = out.getvalue()
    assert "S3cretPass" not in line and "admin-token" not in line
    assert "connect to *** failed: password ***" in line and "token=***" in line
    assert logs.config_secrets(None) == ()


def test_bodies_and_numbers_are_masked_unless_told_otherwise() -> None:
    try:
        logs.make_handler(LoggingConfig(mask_bodies=True))
        assert logs.body("Your code is 123456") == "<masked 19 chars>"
        assert logs.number("+8613800138000") == "+86*******8000"
        assert logs.body(None) is None and logs.number(None) is None
        logs.make_handler(LoggingConfig(mask_bodies=False))
        assert logs.body("Your code is 123456") == "Your code is 123456"
        assert logs.number("+8613800138000") == "+8613800138000"
    finally:
        logs.make_handler(None)
    assert logs.masking() is True  # no configuration: mask


def test_configure_sets_a_level_per_component() -> None:
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    smpp, api = logging.getLogger("bridge.smpp"), logging.getLogger("bridge.api")
    levels = (smpp.level, api.level)
    try:
        out = io.StringIO()
        cfg = LoggingConfig(level="WARNING", components={"smpp": "DEBUG", "bridge.api": "ERROR"})
        logs.configure(cfg, stream=out)
        assert root.level == logging.WARNING
        assert smpp.getEffectiveLevel() == logging.DEBUG
        assert api.getEffectiveLevel() == logging.ERROR
        smpp.debug("shown")
        api.warning("hidden")
        logging.getLogger("bridge.store").info("hidden too")
        assert "shown" in out.getvalue() and "hidden" not in out.getvalue()
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[1]:
            root.addHandler(h)
        root.setLevel(saved[0])
        smpp.setLevel(levels[0])
        api.setLevel(levels[1])
        logs.make_handler(None)


def test_one_line_escapes_every_control_character_newlines_included() -> None:
    """For client text put into a log message (a request path): a message keeps its newlines,
    so a %0A in a path wrote a forged line (session 35 security review)."""
    from bridge.logs import one_line

    assert one_line("/v1/x\n2026 CRITICAL\r\t\x00\x85\u2028ok") == (
        "/v1/x\\u000a2026 CRITICAL\\u000d\\u0009\\u0000\\u0085\\u2028ok"
    )
    assert one_line("/v1/messages/msg_1") == "/v1/messages/msg_1"
