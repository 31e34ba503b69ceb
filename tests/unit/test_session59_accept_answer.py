"""Session 59: pieces of a send's accept cut outside the store, each the same answer as before.

- A send of one message has its 202 body written as one f-string (`v1._one_answer`), not as
  `jsonio.dumps` of the dict `v1._answer` builds: the same bytes for any client_ref.
- `parse_json` looks for a body's `\\u0000` escape with `bytes.find`, not `in` (whose integer
  try raised and cleared a TypeError on every send).
- A request id is "req_" and 16 random lower-case hex digits, from a hexed draw
  (`ids.new_request_id`), a forked child's of its own.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import replace
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request

from bridge import ids, jsonio
from bridge.api import app, context, v1
from bridge.api.errors import ApiError
from bridge.store.models import NewMessage, NewSegment

_REFS = [
    None,
    "",
    "order-1",
    'a "quoted" ref',
    "back\\slash",
    "tab\there",
    "nl\nand\rcr",
    "\x00\x01\x1f\x7f",
    "é ü ß",
    "【示例】",
    "emoji 😀 and 𝄞",
    "\u2028\u2029",
    "</script>",
    "x" * 64,
]


def _message(**changes: Any) -> NewMessage:
    segment = NewSegment(seq=1, total=1, esm_class=0, short_message=b"hi", tlvs=b"")
    base = NewMessage(
        id="msg_01KBX5QZ8Y3J9T6W2V4R7N5M3P",
        account_id="acc_1",
        batch_id="bat_01KBX5QZ8Y3J9T6W2V4R7N5M3Q",
        recipient="+8613800138000",
        encoding="gsm7",
        data_coding=0,
        billable_units=1,
        segments=(segment,),
        accepted_at=0,
        text="hi",
    )
    return replace(base, **changes)


def _random_ref(rng: random.Random) -> str:
    alphabet = ['"', "\\", "/", "\b", "\f", "\n", "\r", "\t", "\x00", "\x1f", " ", "a", "Z",
                "é", "\u2028", "中", "😀", "\ud7ff", "\ue000", "\uffff"]  # fmt: skip
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))


def test_one_message_answer_is_the_dicts_bytes() -> None:
    """Every client_ref (escapes, controls, non-ASCII, astral), every encoding name, counts from
    the air segments or the rows: the f-string's bytes are `jsonio.dumps` of the dict's."""
    rng = random.Random(59)
    refs = _REFS + [_random_ref(rng) for _ in range(500)]
    two = (_message().segments[0],) * 2
    for i, ref in enumerate(refs):
        for encoding, air, segments, units in (
            ("gsm7", 1, None, 1),
            ("ucs2", 3, None, 3),
            ("latin1", 0, two, 2),
            ("gsm7", 2, None, 120),
        ):
            m = _message(client_ref=ref, encoding=encoding, air_segments=air, billable_units=units)
            if segments is not None:
                m = replace(m, segments=segments)
            batch = f"bat_{i:026d}"
            one = v1._one_answer(batch, [m])
            assert one == jsonio.dumps(v1._answer(batch, [m])), (ref, encoding)
            assert orjson.loads(one)["messages"][0]["client_ref"] == ref


def test_a_ref_orjson_cannot_write_goes_the_dicts_way() -> None:
    """A lone surrogate (parse_json refuses those): None, and the caller's dict way answers."""
    assert v1._one_answer("bat_x", [_message(client_ref="a\ud800b")]) is None


class _NoIn(bytes):
    """A body whose `in` fails the test: the escape must be looked for without it."""

    def __contains__(self, item: object) -> bool:
        raise AssertionError("parse_json used `in` on the body")


def test_parse_json_looks_for_the_nul_escape_by_find(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails on the tree before (`b"\\\\u0000" in body`: bytes' `in` tries its operand as an
    integer first, a TypeError raised and cleared on every send); the same answers. (orjson
    takes no bytes subclass: the parse is given the plain bytes.)"""
    loads = jsonio.loads_unique
    monkeypatch.setattr(jsonio, "loads_unique", lambda raw: loads(bytes(raw)))
    request = make_mocked_request("POST", "/v1/messages")
    assert v1.parse_json(_NoIn(b'{"to":"+8613800138000","text":"hi"}'), request) == {
        "to": "+8613800138000",
        "text": "hi",
    }
    assert v1.parse_json(_NoIn(b'{"text":"a\\\\u0000"}'), request) == {"text": "a\\u0000"}
    with pytest.raises(ApiError) as refused:
        v1.parse_json(_NoIn(b'{"text":"a\\u0000"}'), request)
    assert refused.value.code == "INVALID_JSON"


def test_request_ids_are_64_random_bits_in_hex() -> None:
    """The form the answers' X-Request-Id always had, unique across draws (fails on the tree
    before: no `ids.new_request_id`; the app's name is the same function)."""
    assert app.new_request_id is ids.new_request_id
    made = [ids.new_request_id() for _ in range(3 * ids._HEX_SIZE // 16 + 7)]  # four draws
    assert all(re.fullmatch(r"req_[0-9a-f]{16}", rid) for rid in made)
    assert len(set(made)) == len(made)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_draws_its_own_request_ids() -> None:
    """A child forked with a draw under way does not hand out the parent's next ids."""
    ids.new_request_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        # Whatever happens, the child ends here: an exception escaping would carry it on
        # through the rest of the pytest session (a second runner of the same tests).
        try:
            os.close(read)
            os.write(write, " ".join(ids.new_request_id() for _ in range(8)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = f.read().split()
    os.waitpid(pid, 0)
    parent = [ids.new_request_id() for _ in range(8)]
    assert len(child) == 8
    assert not set(child) & set(parent)


def test_a_requests_keys_are_its_own() -> None:
    """`keys_of` is the dict aiohttp's `request[KEY]` reads and stores (this aiohttp keeps them
    in `_state`), so a key stored either way reads back either way (fails on the tree before:
    no `keys_of`)."""
    assert context._keys_in_state()
    request = make_mocked_request("POST", "/v1/messages")
    keys_of = context.keys_of
    keys_of(request)[context.REQUEST_ID] = "req_0123456789abcdef"
    request[context.BODY] = b"{}"
    assert request[context.REQUEST_ID] == "req_0123456789abcdef"
    assert keys_of(request)[context.BODY] == b"{}"
    assert dict(keys_of(request)) == dict(request)
