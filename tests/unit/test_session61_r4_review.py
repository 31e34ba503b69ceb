"""Session 61's review (r4) of the owner's send path (merge d3bc669, helper h1).

`submit_sm._HEADS` keeps a usual message's submit_sm head per (sender, SMSC object, first
esm_class, data_coding): a dict's key, compared by `==`. An esm_class or data_coding equal to
the kept one but not the same int (1.0 or True for 1, 0.0 or False for 0) found the head
written for the int, where `_submit_bodies` (session 59's, the reference) refuses a float
(`plain_sm_head`: None; the part a ShortMessage the encoder refuses, its EncodeError the
part's outcome): the merged tree sent what the tree before refused. A field that is not
hashable raised TypeError from the dict's look-up (the message requeued as a fault), where the
tree before wrote its ShortMessage. Neither comes from the stores (their INTEGER columns give
ints), but `submit_bodies` claims session 59's octets for every message.
"""

from __future__ import annotations

from typing import Any

import pytest

from bridge.config import SmscConfig, parse_config
from bridge.pipeline import submit_sm
from bridge.pipeline.submit_sm import _submit_bodies, submit_bodies
from bridge.smpp.codec import EncodeError, encode_sm_request
from bridge.store.models import WorkMessage, WorkSegment

KEY = "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2s="


def _smsc() -> SmscConfig:
    smsc = {"name": "s", "host": "127.0.0.1", "port": 1, "system_id": "a", "password": "b"}
    return parse_config({"security": {"master_key": KEY}, "smscs": [smsc]}, env={}).smscs[0]


def _msg(esm: Any, coding: Any, n: int = 0) -> WorkMessage:
    seg = WorkSegment(1, 1, esm, b"hi", b"", 0)
    return WorkMessage(f"m{n}", "acc", "+4915112345678", "BRIDGE", coding, None, 0, (seg,))


def _outcome(bodies: list[Any]) -> list[Any]:
    """What each body puts on the wire: its octets, or the encoder's refusal."""
    out: list[Any] = []
    for body in bodies:
        try:
            out.append(encode_sm_request(4, 1, body))
        except EncodeError as exc:
            out.append(("refused", str(exc)))
    return out


@pytest.mark.parametrize(
    ("first", "then"),
    [
        ((1, 0), (1.0, 0)),  # esm_class 1.0 after 1
        ((0, 0), (0, 0.0)),  # data_coding 0.0 after 0
        ((0, 8), (0, 8.0)),
        ((1, 0), (True, 0)),  # True: the same octets, from either
        ((0, 1), (0, True)),
        ((0, 0), (False, False)),
    ],
)
def test_an_equal_field_of_another_type_is_written_as_session_59_did(
    first: tuple[Any, Any], then: tuple[Any, Any]
) -> None:
    submit_sm._HEADS.clear()
    smsc = _smsc()
    usual = _msg(*first)
    assert submit_bodies(usual, smsc) == _submit_bodies(usual, smsc)
    odd = _msg(*then, n=1)
    want = _submit_bodies(odd, smsc)
    got = submit_bodies(odd, smsc)
    assert [type(b) for b in got] == [type(b) for b in want]
    assert got == want
    assert _outcome(got) == _outcome(want)
    # The usual message after it still gets its own head.
    assert submit_bodies(usual, smsc) == _submit_bodies(usual, smsc)


@pytest.mark.parametrize("then", [([1], 0), (0, [0])])
def test_a_field_not_hashable_is_written_as_session_59_did(then: tuple[Any, Any]) -> None:
    submit_sm._HEADS.clear()
    smsc = _smsc()
    odd = _msg(*then)
    want = _submit_bodies(odd, smsc)  # a ShortMessage, refused as it leaves
    assert submit_bodies(odd, smsc) == want
