"""bridge/domain/erasure.masked_answer against the SQL it stands in for (sqlite_erase.mask_range).

On SQLite an erasure masks the stored idempotent answers in chunks; until a record's chunk, a
replay of it answers `masked_answer`'s bytes, after it the row's. The two must be the same
bytes, or a retry is answered one way and then another: each case here runs both on the row.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.domain.erasure import masked_answer
from bridge.store.sqlite_erase import mask_range

NUMBER, LONGER, OTHER = "+491511234567", "+4915112345678", "+8613800138000"
MASK = "+49**********"


@pytest.fixture(scope="module")
def conn() -> Iterator[sqlite3.Connection]:
    c = sqlite3.connect(":memory:")
    c.execute(
        "CREATE TABLE idempotency (id INTEGER PRIMARY KEY, account_id TEXT NOT NULL, "
        "key TEXT NOT NULL, request_hash TEXT NOT NULL, status_code INTEGER NOT NULL, "
        "response BLOB NOT NULL, expires_at INTEGER NOT NULL)"
    )
    yield c
    c.close()


def by_sql(c: sqlite3.Connection, response: bytes, number: str = NUMBER) -> bytes:
    c.execute("DELETE FROM idempotency")
    c.execute("INSERT INTO idempotency VALUES (7, 'acc_a', 'k', 'h', 202, ?, 1)", (response,))
    mask_range(c, "acc_a", number, MASK, None, "k", 7)
    return bytes(c.execute("SELECT response FROM idempotency").fetchone()[0])


def test_an_accept_s_answer_loses_the_number_and_its_client_ref(conn: sqlite3.Connection) -> None:
    answer = orjson.dumps(
        {
            "batch_id": "b",
            "count": 3,
            "messages": [
                {"id": "m1", "to": NUMBER, "client_ref": "order-17", "status": "queued"},
                {"id": "m2", "to": LONGER, "client_ref": "order-18", "status": "queued"},
                {"id": "m3", "to": NUMBER, "status": "queued"},
            ],
        }
    )
    out = masked_answer(answer, NUMBER, MASK)
    assert out == by_sql(conn, answer)
    messages = json.loads(out)["messages"]
    assert messages[0] == {"id": "m1", "to": MASK, "client_ref": None, "status": "queued"}
    assert messages[1]["to"] == LONGER and messages[1]["client_ref"] == "order-18"
    assert messages[2] == {"id": "m3", "to": MASK, "status": "queued", "client_ref": None}


def test_an_answer_without_the_number_is_left_as_it_is(conn: sqlite3.Connection) -> None:
    answer = json.dumps({"messages": [{"to": LONGER}]}, indent=2).encode()
    assert masked_answer(answer, NUMBER, MASK) == answer == by_sql(conn, answer)


@pytest.mark.parametrize(
    "answer",
    [
        b'not json, "+491511234567" named',
        b'{"messages": "+491511234567"}',
        b'{"messages": [{"to": "+491511234567"}], "messages": 1}',
        b'[{"to": "+491511234567"}]',
        b'{"a": NaN, "to": "+491511234567"}',
        b'{"messages":[{"to":"+491511234567","client_ref":1,"client_ref":2},null,[]]}',
        b'{"messages":[{"t\\u006f":"+491511234567","to":"\\u002b491511234567"}]}',
        b'{"messages": [{"to": "+491511234567", "x": 1.50E+3, "y": "\\u00e9\\/"}]} ',
        '{"messages":[{"to":"+491511234567","n":"名前"}]}'.encode(),
        b'\xff\xfe{"to": "+491511234567"}',
    ],
)
def test_edge_answers_agree_with_the_sql(conn: sqlite3.Connection, answer: bytes) -> None:
    assert masked_answer(answer, NUMBER, MASK) == by_sql(conn, answer)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from([NUMBER, LONGER, OTHER, f"call {NUMBER}"]),
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["to", "a", "b", "client_ref", "é"]), inner, max_size=3)
    ),
    max_leaves=8,
)
_entry = st.fixed_dictionaries(
    {"id": st.text(max_size=4), "to": st.sampled_from([NUMBER, LONGER, OTHER])},
    optional={"client_ref": st.one_of(st.none(), st.text(max_size=6)), "extra": _json},
)
_answer = st.fixed_dictionaries(
    {"messages": st.lists(st.one_of(_entry, _scalars, st.lists(_json, max_size=2)), max_size=4)},
    optional={"batch_id": st.text(max_size=4), "count": st.integers(0, 9), "extra": _json},
)


def _encodings() -> st.SearchStrategy[object]:
    return st.sampled_from(
        [
            orjson.dumps,
            lambda d: json.dumps(d).encode(),
            lambda d: json.dumps(d, ensure_ascii=False, indent=1).encode(),
            lambda d: json.dumps(d, separators=(",", ":")).encode(),
        ]
    )


@settings(max_examples=300, deadline=None)
@given(doc=_answer, encode=_encodings(), number=st.sampled_from([NUMBER, OTHER]))
def test_python_and_sql_leave_the_same_bytes(doc: dict, encode: object, number: str) -> None:
    c = sqlite3.connect(":memory:")
    try:
        c.execute(
            "CREATE TABLE idempotency (id INTEGER PRIMARY KEY, account_id TEXT, key TEXT, "
            "request_hash TEXT, status_code INTEGER, response BLOB, expires_at INTEGER)"
        )
        answer = encode(doc)  # type: ignore[operator]
        assert masked_answer(answer, number, MASK) == by_sql(c, answer, number)
    finally:
        c.close()


@settings(max_examples=100, deadline=None)
@given(doc=_answer)
def test_no_entry_to_the_number_keeps_it_or_its_client_ref(doc: dict) -> None:
    """The number never stays; nor its client_ref, in an answer whose messages are objects (as
    every send's answer is). One holding a scalar entry, which no endpoint stores, keeps its
    entries as written, client_ref included (sqlite_erase._REFS: rewriting them keeps a scalar as
    written only with SQLite 3.38's `->`)."""
    out = json.loads(masked_answer(orjson.dumps(doc), NUMBER, MASK))
    objects = all(isinstance(e, (dict, list)) or e is None for e in out["messages"])
    for entry in out["messages"]:
        if isinstance(entry, dict) and entry.get("to") == MASK and objects:
            assert entry["client_ref"] is None
        if isinstance(entry, dict):
            assert entry.get("to") != NUMBER
