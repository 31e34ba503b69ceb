"""bridge/store/sqlite_binds.py: None, bool and bytes bound through registered adapters (one
dict lookup), not the sqlite3 module's failed `__adapt__` lookup, and stored as before."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bridge.store import sqlite_binds, sqlite_runner


def test_the_store_registers_an_adapter_for_each() -> None:
    # What the store's runner imports: the adapters are there for every connection it opens.
    assert sqlite_runner.sqlite_binds is not None
    for kind in (type(None), bool, bytes):
        assert (kind, sqlite3.PrepareProtocol) in sqlite3.adapters, kind


def test_the_values_are_stored_as_without_adapters(tmp_path: Path) -> None:
    c = sqlite_runner.connect(tmp_path / "binds.db")
    try:
        c.execute("CREATE TABLE t (a, b, c, d, e, f)")
        c.execute("INSERT INTO t VALUES (?,?,?,?,?,?)", (None, True, False, b"\x00x", b"", 7))
        row = c.execute(
            "SELECT a, b, c, d, e, f, typeof(a), typeof(b), typeof(d), typeof(e) FROM t"
        ).fetchone()
        assert row == (None, 1, 0, b"\x00x", b"", 7, "null", "integer", "blob", "blob")
        assert type(row[1]) is int
        # Named arguments and executemany take the same path.
        c.executemany("INSERT INTO t (a, b) VALUES (:a, :b)", [{"a": None, "b": b"y"}] * 2)
        assert c.execute("SELECT count(*) FROM t WHERE a IS NULL AND b = x'79'").fetchone() == (2,)
    finally:
        c.close()


# -- statements rewritten before the write lock (session 53) -------------------------------------


def test_without_nones_writes_them_into_the_text() -> None:
    sql = "INSERT INTO t (a, b, c) VALUES (?, '?', ?)"
    assert sqlite_binds.without_nones(sql, ("x", None)) == (
        "INSERT INTO t (a, b, c) VALUES (?, '?', NULL)",
        ("x",),
    )
    row = ("x", 1)
    assert sqlite_binds.without_nones(sql, row) == (sql, row)  # no None: as it was
    with pytest.raises(ValueError, match="more values"):
        sqlite_binds.without_nones(sql, ("x", None, None))


def test_rows_share_one_text_only_with_their_nones_alike() -> None:
    sql = "INSERT INTO t (a, b) VALUES (?,?)"
    assert sqlite_binds.rows_without_nones(sql, [(1, None), (2, None)]) == (
        "INSERT INTO t (a, b) VALUES (?,NULL)",
        [(1,), (2,)],
    )
    mixed = [(1, None), (None, 2)]
    assert sqlite_binds.rows_without_nones(sql, mixed) == (sql, mixed)


def test_positional_numbers_names_and_writes_nones() -> None:
    sql = "SELECT :a, ':b', \"c:d\", :c IS :a FROM t WHERE x=:n OR y=:a"
    assert sqlite_binds.positional(sql, {"a": 1, "c": None, "n": "q", "unused": None}) == (
        "SELECT ?1, ':b', \"c:d\", NULL IS ?1 FROM t WHERE x=?2 OR y=?1",
        (1, "q"),
    )
    with pytest.raises(KeyError):  # a name without a value, as the module's own error
        sqlite_binds.positional(sql, {"a": 1})


def test_the_rewritten_statements_store_and_read_as_the_originals(tmp_path: Path) -> None:
    c = sqlite_runner.connect(tmp_path / "rewritten.db")
    try:
        c.execute("CREATE TABLE t (k, a, b, c)")
        ins = "INSERT INTO t (k, a, b, c) VALUES (?,?,?,?)"
        for k, row in enumerate([(None, b"", 3), ("s", None, None), (None, None, None)]):
            c.execute(ins, (f"old{k}", *row))
            c.execute(*sqlite_binds.without_nones(ins, (f"new{k}", *row[:1], *row[1:])))
            blobbed = tuple(sqlite_binds.blob(v) if isinstance(v, bytes) else v for v in row)
            c.execute(*sqlite_binds.without_nones(ins, (f"arr{k}", *blobbed)))
            got = c.execute(
                "SELECT a, b, c, typeof(a), typeof(b), typeof(c) FROM t WHERE k IN (?,?,?) "
                "ORDER BY k",
                (f"old{k}", f"new{k}", f"arr{k}"),
            ).fetchall()
            assert got[0] == got[1] == got[2], got
        q = "SELECT count(*) FROM t WHERE a IS :a AND (b = :b OR :b IS NULL) AND k > :k"
        for args in ({"a": None, "b": None, "k": ""}, {"a": "s", "b": None, "k": "n"}):
            assert (
                c.execute(q, args).fetchone()
                == c.execute(*sqlite_binds.positional(q, args)).fetchone()
            )
    finally:
        c.close()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT ? -- isn't it?\n, ?",  # a comment's quote read as a literal's start
        "SELECT ?, /* ? */ ?",
        "SELECT ?1, ?",  # a numbered parameter: `?` then `1`
        "SELECT ?, $v",
        "SELECT ?, @v",
        "SELECT [a?b], ? FROM t",
        "SELECT `a?b`, ? FROM t",
    ],
)
def test_a_text_the_scan_cannot_read_is_refused_not_rewritten(sql: str) -> None:
    # Review of session 53: these were rewritten wrong (a NULL where no parameter was, or a
    # parameter left bound with its value dropped) or refused only by luck.
    sqlite_binds._nulled.cache_clear()
    with pytest.raises(ValueError, match="cannot rewrite"):
        sqlite_binds.without_nones(sql, (None, 1))


@pytest.mark.parametrize(
    "sql",
    ["SELECT :a -- isn't :b\n, :b", "SELECT :a, /* :b */ :b", "SELECT :a, $b", "SELECT :a, @b"],
)
def test_a_named_text_the_scan_cannot_read_is_refused(sql: str) -> None:
    with pytest.raises(ValueError, match="cannot rewrite"):
        sqlite_binds.positional(sql, {"a": None, "b": 1})


def test_every_text_the_accept_rewrites_is_read() -> None:
    # The texts sqlite_binds is applied to: the message row's, and the key's statement with each
    # form of a send's facts (sqlite_rules._one_cols), every value None or not.
    from bridge.store import sqlite_rules
    from bridge.store.sqlite import _MESSAGES_INSERT, _authorize_facts_sql

    sqlite_binds.without_nones(_MESSAGES_INSERT, (None,) * 20)
    for history in (None, "verification", "template", "raw"):
        sql = _authorize_facts_sql(sqlite_rules._one_cols(history))
        names = {"day", "sign", "tpl", "trev", "to", "acc", "pockets", "key_id", "aver", "reads"}
        names |= {"since", "fsign", "ftpl"} if history else set()
        for value in (None, 1):
            text, _args = sqlite_binds.positional(sql, dict.fromkeys(names, value))
            assert ":" not in text.replace("':'", "")


def test_the_message_rows_known_nones_rewrite_as_the_scan_does() -> None:
    # Session 54: the accept says which of a message row's optional values are None
    # (`sqlite._message_nones`, read from the NewMessage's fields) instead of scanning every
    # value; for each of the 1,024 patterns of its ten optional fields, the text and values
    # are those `rows_without_nones` gives, one row or several alike, and rows of two patterns
    # are bound as they are.
    from itertools import product

    from bridge.store.models import NewMessage, NewSegment
    from bridge.store.sqlite import _MESSAGE_NONES, _MESSAGES_INSERT, _message_nones

    given = {
        "client_ref": "ref", "sender": "10690", "sign_name": "Acme", "template": "T1",
        "text": "hello", "scheduled_at": 5, "expires_at": 9, "kind": "otp",
        "price_class": "D", "wire": 3,
    }  # fmt: skip
    seg = NewSegment(1, 1, 0, b"x", b"")
    rows = []
    for nones in product((False, True), repeat=len(given)):
        fields = {
            k: (None if none else v) for (k, v), none in zip(given.items(), nones, strict=True)
        }
        m = NewMessage("m1", "acc", "b1", "+8613800000000", "gsm7", 0, 1, (seg,), 1, **fields)
        row = m.insert_values()
        assert [i for i, v in enumerate(row) if v is None] == [
            p for p, none in zip((3, 5, 6, 7, 8, 14, 15, 17, 18, 19), nones, strict=True) if none
        ]
        assert _message_nones(m) == nones
        want = sqlite_binds.rows_without_nones(_MESSAGES_INSERT, [row])
        assert _MESSAGE_NONES.row(row, nones) == want
        assert _MESSAGE_NONES.rows([row], [nones]) == (want[0], list(want[1]))
        two = sqlite_binds.rows_without_nones(_MESSAGES_INSERT, [row, row])
        assert _MESSAGE_NONES.rows([row, row], [nones, nones]) == (two[0], list(two[1]))
        rows.append((row, nones))
    (a, na), (b, nb) = rows[1], rows[2]
    assert _MESSAGE_NONES.rows([a, b], [na, nb]) == (_MESSAGES_INSERT, [a, b])
