"""Session 59: a send's answers over real HTTP after the accept's cuts outside the store (the 202
body of one message as an f-string, the error middleware's branch for a send's `Accepted`, the
request id's hexed draw, the body's escape looked for by `find`). The API behind the daemon's
runner on a real port, real signed requests over raw TCP, a real SQLite file.

`S59_DUMP=FILE` writes this tree's answers (ids and Date masked) and counts: run with this test
file in the tree before and in this one, the files must be equal."""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from bridge import jsonio
from bridge.api.app import make_app
from tests.integration.conftest import ApiServer, Creds
from tests.integration.test_session57_accepted import _Daemon, _masked
from tests.integration.test_session57_review_r4 import _counts


@pytest.fixture
async def daemon(api_server: ApiServer) -> AsyncIterator[_Daemon]:
    served = _Daemon(api_server, make_app(api_server.ctx))
    await served.start()
    yield served
    await served.runner.cleanup()


_REFS = [None, "order-1", 'a "quoted" ref', "back\\slash", "tab\tnl\n", "\u0001\u001f", "é 中 😀",
         "\u2028", "</script>", "x" * 64]  # fmt: skip


def _requests(daemon: _Daemon, creds: Creds) -> list[bytes]:
    """One-message sends with every kind of client_ref, GSM, UCS-2 and long texts, several
    numbers, a replay and a reused key, the body's refusals (a NUL escape, a client_ref too
    long, an unknown field), and a text spelling a backslash and "u0000" (no NUL: sent)."""
    out = []
    for i, ref in enumerate(_REFS):
        body: dict[str, Any] = {"to": f"+86138002{i:05d}", "text": "Your code is 123456."}
        if ref is not None:
            body["client_ref"] = ref
        out.append(daemon.request(creds, body))
    more: list[dict[str, Any]] = [
        {"to": "+8613800300001", "text": "您的验证码是123456", "client_ref": "ucs2"},
        {"to": "+8613800300002", "text": "long text " * 40, "client_ref": "long"},
        {"to": ["+8613800300003", "+8613800300004"], "text": "Hi.", "client_ref": "two"},
        {"to": "+8613800300005", "text": "a\u0000b"},
        {"to": "+8613800300006", "text": "escaped \\u0000 written"},
        {"to": "+8613800300007", "text": "x", "client_ref": "y" * 65},
        {"to": "+8613800300008", "text": "x", "nope": 1},
    ]
    out += [daemon.request(creds, body) for body in more]
    out.append(daemon.request(creds, {"to": "+8613800300009", "text": "k"}, key="idem-s59"))
    out.append(daemon.request(creds, {"to": "+8613800300009", "text": "k"}, key="idem-s59"))
    out.append(daemon.request(creds, {"to": "+8613800300010", "text": "k"}, key="idem-s59"))
    return out


def _body(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n", 1)[1]


async def test_a_sends_answers_and_counts(daemon: _Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every 202 body is what orjson writes for its dict, holding what the send asked; the
    body's refusals answer as before; a replay is counted REPLAYED, each first 202 once in the
    accept latency; a send of one message makes no `jsonio.dumps` of its answer (fails on the
    tree before, which made one for every send)."""
    dumped: list[Any] = []
    real = jsonio.dumps

    def counted(data: Any) -> bytes:
        if isinstance(data, dict) and "batch_id" in data:
            dumped.append(data)
        return real(data)

    monkeypatch.setattr(jsonio, "dumps", counted)
    metrics = daemon.api.ctx.metrics
    accepts_before = sum(metrics._accept.counts)
    before = _counts(daemon)
    answers = await daemon.exchange(_requests(daemon, await daemon.api.create_account("s59")))
    statuses = [a.split(b" ", 2)[1] for a in answers]
    assert statuses == [b"202"] * 13 + [b"400", b"202", b"400", b"400", b"202", b"202", b"422"]
    for i, answer in enumerate([*answers[:13], answers[14]]):
        body = _body(answer)
        assert orjson.dumps(orjson.loads(body)) == body
        sent = orjson.loads(body)
        assert re.fullmatch(r"bat_[0-9A-Z]{26}", sent["batch_id"])
        if i < len(_REFS):
            assert sent["count"] == 1
            assert sent["messages"][0]["client_ref"] == _REFS[i]
            assert sent["messages"][0]["to"] == f"+86138002{i:05d}"
    assert [m["encoding"] for m in orjson.loads(_body(answers[10]))["messages"]] == ["ucs2"]
    assert orjson.loads(_body(answers[11]))["messages"][0]["segments"] > 1
    assert orjson.loads(_body(answers[12]))["count"] == 2
    assert b"U+0000" in _body(answers[13])
    assert _body(answers[18]) == _body(answers[17])
    assert b"\r\nIdempotent-Replayed: true\r\n" in answers[18]
    # Only the send of two numbers went the dict's way.
    assert [d["count"] for d in dumped] == [2]
    after = _counts(daemon)
    counts = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert counts == {
        "POST /v1/messages 202 OK": 15,
        "POST /v1/messages 202 REPLAYED": 1,
        "POST /v1/messages 400 INVALID_JSON": 1,
        "POST /v1/messages 400 INVALID_FIELD": 1,
        "POST /v1/messages 400 UNKNOWN_FIELD": 1,
        "POST /v1/messages 422 IDEMPOTENCY_KEY_REUSED": 1,
    }
    assert sum(metrics._accept.counts) - accepts_before == 15


async def test_dump_for_the_tree_differential(daemon: _Daemon) -> None:
    """With S59_DUMP set: this tree's answers (masked) and counts into that file."""
    path = os.environ.get("S59_DUMP")
    if not path:
        pytest.skip("S59_DUMP not set")
    before = _counts(daemon)
    answers = await daemon.exchange(_requests(daemon, await daemon.api.create_account("s59")))
    after = _counts(daemon)
    with open(path, "w") as f:
        json.dump(
            {
                "answers": [_masked(a).decode("utf-8", "replace") for a in answers],
                "counts": {k: after[k] - before.get(k, 0) for k in after},
            },
            f,
            indent=0,
        )
