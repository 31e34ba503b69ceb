"""Session 63 (h5): the parts' six array literals written in C.

`postgres._segment_arrays` (a multi-part or multi-message accept's $21..$26) takes its columns by
two transpositions, writes the ints by one "%d" format a length (`_ints`) and the bytes by
`bytea_array`'s one join of `bytes.hex`: it must give what session 62's form gave (each column
by a comprehension through text_array, int_array and bytea_array, kept below as the reference)
for parts of every shape: one to 300 parts (past the formats kept), ids needing escapes, bools
and floats where ints are due, empty, bytearray and memoryview octets, and a None (refused or
written alike). A column swapped (the attrgetter's order) or the hex prefix lost fails here; a
format of the wrong length raises TypeError and goes to int_array: slower, never wrong.
"""

from __future__ import annotations

import os
import random
from typing import Any

import pytest

from bridge.store import postgres as pg
from bridge.store.models import NewSegment


def _escaped(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"')


def _text_array(values: list[Any]) -> str:
    return "{" + ",".join("NULL" if v is None else '"' + _escaped(v) + '"' for v in values) + "}"


def _int_array(values: list[Any]) -> str:
    return "{" + ",".join("NULL" if v is None else str(int(v)) for v in values) + "}"


def _bytea_array(values: list[Any]) -> str:
    return "{" + ",".join("NULL" if v is None else '"\\\\x' + v.hex() + '"' for v in values) + "}"


def reference(segs: list[tuple[str, Any]]) -> list[str]:
    """Each column element by element (session 56's literals, before any fast form)."""
    return [
        _text_array([m for m, _s in segs]),
        _int_array([s.seq for _m, s in segs]),
        _int_array([s.total for _m, s in segs]),
        _int_array([s.esm_class for _m, s in segs]),
        _bytea_array([s.short_message for _m, s in segs]),
        _bytea_array([s.tlvs for _m, s in segs]),
    ]


def _octets(rnd: random.Random) -> Any:
    r = rnd.random()
    if r < 0.7:
        return os.urandom(rnd.choice([0, 1, 67, 140]))
    if r < 0.8:
        return bytearray(os.urandom(rnd.randint(0, 9)))
    if r < 0.9:
        return memoryview(os.urandom(rnd.randint(0, 9)))
    return b'\\"{},NULL'


def _int(rnd: random.Random) -> Any:
    return rnd.choice([1, 2, 255, 0x40, 0, True, False, 3.0, 2**62, -1])


@pytest.mark.parametrize("seed", range(4))
def test_parts_literals_as_element_wise(seed: int) -> None:
    rnd = random.Random(seed)
    ids = ["01JZ" + "X" * 22, "01JZ" + "Y" * 22, 'q"t', "b\\s", "NULL", "", "汉 {,}"]
    for _ in range(1_500):
        n = rnd.choice([1, 1, 2, 3, 6, 50, 255, 256, 300]) if rnd.random() < 0.97 else 0
        one = rnd.random() < 0.5  # one message's parts (shape 1) or several messages'
        mid = rnd.choice(ids)
        segs = [
            (
                mid if one else rnd.choice(ids),
                NewSegment(_int(rnd), _int(rnd), _int(rnd), _octets(rnd), _octets(rnd)),
            )
            for _ in range(n)
        ]
        assert pg._segment_arrays(segs) == reference(segs)


def test_a_none_or_a_str_goes_as_before() -> None:
    segs: list[tuple[str, Any]] = [
        ("m1", NewSegment(1, 2, 0, b"a", b"")),
        ("m1", NewSegment(None, "2", 0, None, b"")),  # type: ignore[arg-type]
    ]
    assert pg._segment_arrays(segs) == reference(segs)
    assert pg._segment_arrays(segs)[1] == "{1,NULL}"
    bad = [("m1", NewSegment(float("nan"), 1, 0, b"", b""))]
    with pytest.raises(ValueError):
        pg._segment_arrays(bad)
    with pytest.raises(ValueError):
        reference(bad)


def test_a_usual_ucs2_send_is_three_parts_of_the_same_id() -> None:
    mid = "01JZ" + "X" * 22
    parts = [
        NewSegment(i, 3, 0x40, bytes([5, 0, 3, 7, 3, i]) + b"\x4f\x60" * 67, b"") for i in (1, 2, 3)
    ]
    got = pg._segment_arrays([(mid, s) for s in parts])
    assert got[:4] == ['{"' + '","'.join([mid] * 3) + '"}', "{1,2,3}", "{3,3,3}", "{64,64,64}"]
    assert got[4].startswith('{"\\\\x0500030703014f60') and got[5] == '{"\\\\x","\\\\x","\\\\x"}'
