"""Session 62 (h6): the usual send's straight ways, each held to the general way it skips.

- `parse_send_request` answers `{"to": E.164, "text": ..., ["client_ref"], ["sign_name"]}` itself
  and hands any other body to `parse_any_send_request` (the function as before): both give the
  same SendRequest or the same refusal for any body.
- `Submitter.build` takes a free text without a sign through `final_text`'s checks inline and
  its units from the count it made (`submit._STRAIGHT`): the same rows, charges, refusals and
  references drawn as with it off.
- `jsonio.check_unique` tells a body of one object by `find`: the same answers as the
  function before (kept here as the oracle).
- `bodies.sent_body_now` takes a body fed in one chunk without `read_nowait`, where the probe
  of aiohttp's stream passes: the same bytes and stream state as `read_nowait`.
- `v1.parse_json` does not take apart a Content-Type of exactly "application/json".
Each "is taken" test fails on the tree before (the straight way is not there).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import inspect
import itertools
import os
import random
import types
from typing import Any
from unittest import mock

import orjson
import pytest
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridge import jsonio
from bridge.api import bodies, submit, v1
from bridge.api.errors import ApiError
from bridge.api.idempotency import check_key
from bridge.api.submit import Submitter, parse_any_send_request, parse_send_request
from bridge.app import make_router
from bridge.billing import tariff_from_config
from bridge.config import parse_config
from bridge.domain.content_filter import ContentFilter
from bridge.text.gsm import gsm_septets
from bridge.text.split import (
    GSM_ONE_PART,
    EncodeOptions,
    RefCounter,
    SplitMode,
    one_gsm_part,
    plain_gsm_options,
)

NOW = 1_780_000_000_000
ACCOUNT = types.SimpleNamespace(id="acc_62", raw_text=True, marketing=False, default_country="CN")


def _outcome(fn: Any, *args: Any, **kw: Any) -> Any:
    try:
        return ("ok", fn(*args, **kw))
    except ApiError as exc:
        return ("refused", exc.code, exc.message, exc.details, exc.status, exc.reason)


# -- the parse ---------------------------------------------------------------------------------

NUMBER = st.sampled_from(
    ["+8613800138000", "+12025550123", "+1234567", "+123456789012345", "+1234567890123456",
     "+0123456789", "8613800138000", "13800138000", "+86 138 0013 8000", "", " ", "+",
     "+861380013800a", "+８613800138000", "+86138001380001"]
)  # fmt: skip
STRING = st.one_of(
    st.text(max_size=3),
    st.text(min_size=30, max_size=34),
    st.text(min_size=62, max_size=66),
    st.sampled_from(["", " ", "Acme", "阿里云", "a" * 32, "a" * 33, "a" * 64, "a" * 65]),
)
VALUE = st.one_of(
    STRING, NUMBER, st.none(), st.booleans(), st.integers(-5, 20_000), st.floats(),
    st.lists(NUMBER, max_size=3), st.dictionaries(st.text(max_size=3), STRING, max_size=2),
)  # fmt: skip
KEYS = ["to", "text", "client_ref", "sign_name", "template", "params", "sender",
        "validity_minutes", "scheduled_at", "smart_encoding", "x", "TO"]  # fmt: skip


@st.composite
def _bodies(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 19)) == 0:
        return draw(VALUE)  # not an object
    body: dict[str, Any] = {}
    # Mostly the usual shape, sometimes with odd values or another key.
    if draw(st.booleans()):
        body["to"] = draw(NUMBER)
    elif draw(st.booleans()):
        body["to"] = draw(VALUE)
    if draw(st.integers(0, 3)):
        body["text"] = draw(STRING)
    elif draw(st.booleans()):
        body["text"] = draw(VALUE)
    for key in draw(st.lists(st.sampled_from(KEYS[2:]), max_size=3, unique=True)):
        body[key] = draw(st.one_of(STRING, VALUE))
    keys = list(body)
    draw(st.randoms()).shuffle(keys)
    return {k: body[k] for k in keys}


@settings(max_examples=1500, deadline=None)
@given(body=_bodies())
@example(body={"to": "+8613800138000", "text": "hi"})
@example(body={"to": "+8613800138000", "text": "hi", "client_ref": None, "sign_name": None})
@example(body={"to": "+8613800138000", "text": "hi", "client_ref": ""})
@example(body={"to": "+8613800138000", "text": "hi", "client_ref": "a" * 65})
@example(body={"to": "+8613800138000", "text": "hi", "sign_name": "a" * 33})
@example(body={"to": "+8613800138000", "text": "hi", "sign_name": 5})
@example(body={"to": "+8613800138000", "text": "hi", "client_ref": "r", "x": 1})
@example(body={"to": "+8613800138000", "text": None})
@example(body={"to": "13800138000", "text": "hi"})
def test_the_parse_answers_as_the_general_one(body: Any) -> None:
    args = (ACCOUNT,)
    kw = {"max_recipients": 3, "now_ms": NOW}
    assert _outcome(parse_send_request, body, *args, **kw) == _outcome(
        parse_any_send_request, body, *args, **kw
    )


def test_the_usual_body_is_parsed_in_a_straight_line() -> None:
    """Fails on the tree before (no parse_any_send_request to set aside)."""
    with mock.patch.object(submit, "parse_any_send_request", side_effect=AssertionError):
        for body in (
            {"to": "+8613800138000", "text": "Your code is 1234."},
            {"text": "验证码", "to": "+12025550123", "client_ref": "r-1"},
            {"to": "+8613800138000", "text": "x", "client_ref": None, "sign_name": "Acme"},
        ):
            req = parse_send_request(body, ACCOUNT, max_recipients=3, now_ms=NOW)  # type: ignore[arg-type]
            assert req.to == (body["to"],) and req.text == body["text"]
        with pytest.raises(AssertionError):  # anything else goes the general way
            parse_send_request(
                {"to": ["+8613800138000"], "text": "x"}, ACCOUNT, max_recipients=3, now_ms=NOW
            )


# -- the build ---------------------------------------------------------------------------------

SMSCS = [
    {"split": s, "packed_gsm": p} for s, p in itertools.product(("udh8", "payload"), (False, True))
]
TEXT_CONFIGS = [
    {"sign_format": "【{sign}】", "counting_rule": r, "smart_encoding": smart, "max_chars": n}
    for r, smart, n in itertools.product(("chars_70_67", "wire_segments"), (False, True), (500, 80))
]
TEXTS = st.one_of(
    st.text(st.sampled_from(["a", "Z", "1", " ", "\t", "\n", "`", "^", "€", "é"]), max_size=200),
    st.text(
        st.sampled_from(["中", "文", "，", "a", " ", "😀", "\u200b", "\ufeff", "…"]), max_size=200
    ),
    st.sampled_from(["", " ", "\t\n", "\u200b", " \u200b ", "spam here", "a" * 80, "中" * 81]),
)
NUMBERS = ["+8613800000062", "+12025550123", "+4915100000000"]
_CONFIGS: dict[tuple[int, int], Any] = {}


def _config(base: Any, smsc: int, conf: int) -> Any:
    if (smsc, conf) not in _CONFIGS:
        _CONFIGS[smsc, conf] = parse_config(
            {
                "server": {"port": 8080},
                "store": {"path": str(base / "b.db")},
                "security": {"master_key": base64.b64encode(os.urandom(32)).decode()},
                "smscs": [{"name": "a", "system_id": "s", **SMSCS[smsc]}],
                "text": TEXT_CONFIGS[conf],
                "billing": {"tariff": {"international": {"+1": 60000}}},
            },
            env={},
            base_dir=base,
        )
    return _CONFIGS[smsc, conf]


@settings(max_examples=600, deadline=None)
@given(
    text=TEXTS,
    smsc=st.integers(0, len(SMSCS) - 1),
    conf=st.integers(0, len(TEXT_CONFIGS) - 1),
    sign=st.sampled_from([None, None, "Acme"]),
    to=st.lists(st.sampled_from(NUMBERS), min_size=1, max_size=3, unique=True),
    billing=st.sampled_from([None, "chars_70_67", "wire_segments"]),
    raw_text=st.sampled_from([True, True, False]),
    filtered=st.booleans(),
    smart=st.sampled_from([None, False, True]),
)
def test_a_send_builds_alike_either_way(
    tmp_path_factory: pytest.TempPathFactory,
    text: str,
    smsc: int,
    conf: int,
    sign: str | None,
    to: list[str],
    billing: str | None,
    raw_text: bool,
    filtered: bool,
    smart: bool | None,
) -> None:
    cfg = _config(tmp_path_factory.getbasetemp(), smsc, conf)
    account = types.SimpleNamespace(**vars(ACCOUNT))
    account.raw_text = raw_text
    body: dict[str, Any] = {"to": to if len(to) > 1 else to[0], "text": text}
    if sign is not None:
        body["sign_name"] = sign
    if smart is not None:
        body["smart_encoding"] = smart
    tariff = None
    if billing is not None:
        tariff = dataclasses.replace(
            tariff_from_config(cfg.billing.tariff, 0), counting_rule=billing
        )

    def build() -> Any:
        refs = RefCounter(start=lambda: 7)
        flt = ContentFilter(words=["spam"]) if filtered else None
        submitter = Submitter(cfg, make_router(cfg), refs=refs, content_filter=flt)
        ids = (f"id_{i}" for i in itertools.count())
        outs = []
        for _ in range(2):
            try:
                req = parse_any_send_request(body, account, max_recipients=5, now_ms=NOW)  # type: ignore[arg-type]
                outs.append(
                    _outcome(
                        submitter.build, req, account, NOW, lambda p, n: next(ids), tariff=tariff
                    )
                )
            except ApiError as exc:
                outs.append(("refused", exc.code, exc.message))
        return outs, [refs.next(n, 16) for n in NUMBERS]

    straight = build()
    with mock.patch.object(submit, "_STRAIGHT", False):
        general = build()
    assert straight == general


def test_the_usual_text_skips_final_text(tmp_path: Any) -> None:
    """The benchmark's texts are built without `final_text` (fails on the tree before)."""
    cfg = _config(tmp_path, 0, 0)
    submitter = Submitter(cfg, make_router(cfg), refs=RefCounter(start=lambda: 1))
    for text in ("Your verification code is 123456. It expires in 5 minutes.", "验证码" * 50):
        req = parse_send_request(
            {"to": NUMBERS[0], "text": text}, ACCOUNT, max_recipients=5, now_ms=NOW
        )  # type: ignore[arg-type]
        with mock.patch.object(Submitter, "final_text", side_effect=AssertionError):
            _, messages, _ = submitter.build(req, ACCOUNT, NOW)  # type: ignore[arg-type]
        assert messages[0].text == text


# -- check_unique --------------------------------------------------------------------------------


def _old_check_unique(raw: bytes | str, value: Any) -> None:
    """jsonio.check_unique before session 62 (the oracle)."""
    if isinstance(raw, bytes):
        colons, objects = raw.count(b":"), raw.count(b"{")
    else:
        colons, objects = raw.count(":"), raw.count("{")
    keys = len(value) if objects == 1 and type(value) is dict else jsonio.count_keys(value, objects)
    if colons == keys:
        return
    try:
        if orjson.dumps(value).count(b":") == colons + jsonio._escaped_colons(raw):
            return
    except TypeError:
        pass
    found = jsonio.find_duplicate(raw)
    if found is not None:
        raise jsonio.DuplicateKeyError(*found)


def _unique_outcome(fn: Any, raw: Any, value: Any) -> Any:
    try:
        return fn(raw, value)
    except jsonio.DuplicateKeyError as exc:
        return ("dup", exc.key, exc.path)


def test_check_unique_answers_as_before() -> None:
    rng = random.Random(62)
    pieces = ['"a"', '"b"', '"{"', '"}"', '":"', '"\\u003a"', "1", "[]", "{}", '"中:{"']

    def value(depth: int) -> str:
        r = rng.random()
        if depth > 2 or r < 0.4:
            return rng.choice(pieces)
        if r < 0.6:
            return "[" + ",".join(value(depth + 1) for _ in range(rng.randint(0, 3))) + "]"
        keys = [rng.choice(['"a"', '"b"', '"c"', '"{"', '":"']) for _ in range(rng.randint(0, 4))]
        return "{" + ",".join(f"{k}:{value(depth + 1)}" for k in keys) + "}"

    seen = 0
    for _ in range(4000):
        text = value(0)
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue
        seen += 1
        for raw in (text, text.encode()):
            assert _unique_outcome(jsonio.check_unique, raw, parsed) == _unique_outcome(
                _old_check_unique, raw, parsed
            ), raw
    assert seen > 3000


# -- the body read -------------------------------------------------------------------------------


def _request_with(chunks: list[bytes], *, waiter: bool = False) -> tuple[web.Request, StreamReader]:
    loop = asyncio.new_event_loop()
    protocol = mock.Mock(_reading_paused=False)
    stream = StreamReader(protocol, 2**16, loop=loop)
    for chunk in chunks:
        stream.feed_data(chunk)
    stream.feed_eof()
    if waiter:
        stream._waiter = loop.create_future()
    request = make_mocked_request("POST", "/v1/messages", payload=stream, loop=loop)
    loop.close()
    return request, stream


def test_the_probe_knows_this_aiohttp() -> None:
    assert bodies._ONE_CHUNK


@pytest.mark.parametrize("chunks", [[b'{"to":"+1"}'], [b'{"to"', b':"+1"}'], []])
def test_a_body_fed_whole_reads_as_read_nowait(chunks: list[bytes]) -> None:
    ours, stream = _request_with(chunks)
    theirs, other = _request_with(chunks)
    with mock.patch.object(bodies, "_ONE_CHUNK", False):
        expected = bodies.sent_body_now(theirs)
    assert bodies.sent_body_now(ours) == expected == b"".join(chunks)
    keep = ("_size", "_cursor", "_buffer", "_buffer_offset", "_eof", "_exception")
    assert {k: getattr(stream, k) for k in keep} == {k: getattr(other, k) for k in keep}
    assert ours._read_bytes == theirs._read_bytes == expected
    assert bodies.sent_body_now(ours) == expected  # the cache answers a second read


def test_one_chunk_is_read_without_read_nowait() -> None:
    """Fails on the tree before (read_nowait is called for every body)."""
    request, _ = _request_with([b'{"to":"+8613800138000","text":"hi"}'])
    with mock.patch.object(StreamReader, "read_nowait", side_effect=AssertionError):
        assert bodies.sent_body_now(request) == b'{"to":"+8613800138000","text":"hi"}'
    # Two chunks, or a waiter, go read_nowait's way (which refuses a waiter).
    request, _ = _request_with([b"{", b"}"])
    with mock.patch.object(StreamReader, "read_nowait", return_value=b"{}") as read:
        assert bodies.sent_body_now(request) == b"{}"
    assert read.called
    request, _ = _request_with([b"{}"], waiter=True)
    with pytest.raises(RuntimeError):
        bodies.sent_body_now(request)


def test_the_probe_refuses_another_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(bodies._STREAM_SOURCES, "read_nowait", "0" * 64)
    assert not bodies._one_chunk_reads()


# -- the Content-Type ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ctype",
    [None, "application/json", "Application/JSON", "application/json; charset=utf-8",
     "application/json;charset=UTF-16", "text/plain", "", " application/json ",
     "application/json; charset=\"utf-8\"", "application/json ; charset=latin1"],
)  # fmt: skip
def test_parse_json_refuses_as_before(ctype: str | None) -> None:
    headers = {} if ctype is None else {"Content-Type": ctype}
    request = make_mocked_request("POST", "/v1/messages", headers=headers)
    got = _outcome(v1.parse_json, b'{"a":1}', request)
    ctype_l, charset = v1._media_type(ctype if ctype is not None else "application/json")
    if ctype_l not in ("application/json", ""):
        assert got[:2] == ("refused", "UNSUPPORTED_MEDIA_TYPE") and repr(ctype_l) in got[2]
    elif charset not in (None, "utf-8"):
        assert got[:2] == ("refused", "UNSUPPORTED_MEDIA_TYPE") and "charset" in got[2]
    else:
        assert got == ("ok", {"a": 1})


def test_the_usual_content_type_is_not_taken_apart() -> None:
    """Fails on the tree before (every Content-Type went through `_media_type`)."""
    request = make_mocked_request(
        "POST", "/v1/messages", headers={"Content-Type": "application/json"}
    )
    with mock.patch.object(v1, "_media_type", side_effect=AssertionError):
        assert v1.parse_json(b'{"a":1}', request) == {"a": 1}


# -- one_gsm_part's options per route ----------------------------------------------------------

GSM_OPTIONS = [
    EncodeOptions(
        split=split, gsm_data_coding=dc, packed_gsm=packed, smart=smart, allow_latin1=latin1
    )
    for split, dc, packed, smart, latin1 in itertools.product(
        list(SplitMode), (0, 1), (False, True), (False, True), (False, True)
    )
]


@settings(max_examples=400, deadline=None)
@given(
    text=st.one_of(
        TEXTS,
        st.text(st.sampled_from(["a", "^", "{", "€", "é", "Ω", "\x1b"]), min_size=75, max_size=170),
    )
)
def test_the_route_s_gsm_flag_and_septets_are_one_gsm_part(text: str) -> None:
    for opts in GSM_OPTIONS:
        septets = gsm_septets(text) if plain_gsm_options(opts) else None
        if septets is not None and not 0 < len(septets) <= GSM_ONE_PART:
            septets = None
        assert septets == one_gsm_part(text, opts), (text, opts)


def test_build_asks_no_one_gsm_part(tmp_path: Any) -> None:
    """Fails on the tree before (build called one_gsm_part for every message)."""
    cfg = _config(tmp_path, 0, 0)
    submitter = Submitter(cfg, make_router(cfg), refs=RefCounter(start=lambda: 1))
    body = {"to": NUMBERS[0], "text": "Your verification code is 123456."}
    req = parse_send_request(body, ACCOUNT, max_recipients=5, now_ms=NOW)  # type: ignore[arg-type]
    with mock.patch.object(submit, "one_gsm_part", side_effect=AssertionError, create=True):
        _, messages, _ = submitter.build(req, ACCOUNT, NOW)  # type: ignore[arg-type]
    assert messages[0].segments[0].short_message == body["text"].encode()


@pytest.mark.parametrize(
    "key",
    ["k", "a" * 255, "a" * 256, "", " ", "a b", "a\tb", "é", "a\x7f", "!~", "a\u2028", "\x00"],
)
def test_the_key_s_inline_test_is_check_key_s(key: str) -> None:
    inline = 0 < len(key) <= 255 and key.isascii() and key.isprintable() and " " not in key
    try:
        check_key(key)
        passed = True
    except ApiError:
        passed = False
    assert inline == passed
    source = inspect.getsource(v1.send_handler)
    assert (
        '0 < len(key) <= 255 and key.isascii() and key.isprintable() and " " not in key' in source
    )
