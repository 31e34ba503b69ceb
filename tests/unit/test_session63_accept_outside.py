"""Session 63 (h3): the accept's Python outside the write lock, cheaper and the same.

- `ids.new_id` makes a new millisecond's time part from the first eight characters kept for
  its 1,024-ms span (`_last_kms`), without `_time_part`'s call: every id must still spell its
  own millisecond, after any sequence of others (in the same span, the next, or far away).
- `SendRules.raw_frequency` is `frequency(None, ...)` (a free text's rule, whatever template
  the request names) with its limits found at load and again at each reload.
- `sqlite._message_row` is `_MESSAGE_NONES.row(m.insert_values(), _message_nones(m))`: the
  same text and row for a message of any pattern of Nones.
- `SqliteStore.accept`'s job reads what it needs from one tuple (`state`) that `accept_writes`
  unpacks, not through a cell for each name: the two lists of names must be the same list.
"""

from __future__ import annotations

import ast
import base64
import inspect
import os
import textwrap
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import ids
from bridge.config import parse_config
from bridge.rules import SendRules
from bridge.store import sqlite
from bridge.store.models import NewMessage, NewSegment
from bridge.store.sqlite import SqliteStore

MAX_MS = 2**48 - 1


@settings(max_examples=500, deadline=None)
@given(
    st.integers(0, MAX_MS - 5_000),
    st.lists(st.integers(-3_000, 3_000), min_size=1, max_size=12),
)
def test_each_id_spells_its_own_millisecond_near_the_last(start: int, steps: list[int]) -> None:
    # Near one another: most new milliseconds fall in the span `_last_kms` keeps (or the next,
    # or the one before), the way a daemon's clock moves between ids.
    ms = start
    for step in steps:
        ms = min(max(ms + step, 0), MAX_MS)
        for prefix in ("msg_", "bat_"):  # two ids of one millisecond, as a send makes
            ident = ids.new_id(prefix, ms)
            assert ident[len(prefix) : len(prefix) + 10] == ids._b32(ms, 10), (ms, ident)
            assert ids.id_time_ms(ident, prefix) == ms


def test_every_millisecond_of_a_span_and_its_edges() -> None:
    base = 1_765_000_000_000 >> 10 << 10
    for ms in (*range(base - 3, base + 1_030), base + 2**20, base, base + 2**20 - 1, base + 1):
        assert ids.new_id("m", ms)[1:11] == ids._b32(ms, 10), ms


def _config(tmp_path: Path, frequency: dict[str, Any]) -> Any:
    return parse_config(
        {
            "server": {"port": 8080},
            "store": {"path": str(tmp_path / "b.db")},
            "security": {"master_key": base64.b64encode(os.urandom(32)).decode()},
            "smscs": [{"name": "a", "system_id": "s"}],
            "rules": {"timezone": "Asia/Shanghai", "frequency": frequency},
        },
        env={},
        base_dir=tmp_path,
    )


NUMBERS = ("+8613800000001", "+8613800000002", "+8613800000003", "+12025550100")
LIMITS = st.fixed_dictionaries(
    {"per_minute": st.integers(0, 3), "per_hour": st.integers(0, 3), "per_day": st.integers(0, 3)}
)


@settings(max_examples=200, deadline=None)
@given(
    raw=LIMITS,
    other=LIMITS,
    exempt=st.lists(st.sampled_from(NUMBERS), max_size=3, unique=True),
    numbers=st.lists(st.sampled_from(NUMBERS), min_size=1, max_size=4, unique=True),
    sign=st.sampled_from([None, "Acme"]),
    template=st.sampled_from([None, "SMS_1"]),
)
def test_raw_frequency_is_frequency_of_a_free_text(
    tmp_path_factory: Any,
    raw: dict[str, int],
    other: dict[str, int],
    exempt: list[str],
    numbers: list[str],
    sign: str | None,
    template: str | None,
) -> None:
    tmp = tmp_path_factory.mktemp("f")
    first = _config(tmp, {"exempt": [], "raw_text": other})
    cfg = _config(tmp, {"exempt": exempt, "raw_text": raw, "notification": other})
    rules = SendRules(first, store=None, content_filter=object())  # type: ignore[arg-type]
    rules.reload(cfg, object())  # type: ignore[arg-type]  # the limits found again
    to = tuple(numbers)
    assert rules.raw_frequency(sign, to) == rules.frequency(None, sign, template, to)
    fresh = SendRules(cfg, store=None, content_filter=object())  # type: ignore[arg-type]
    assert fresh.raw_frequency(sign, to) == fresh.frequency(None, sign, template, to)


def _accept_tree() -> ast.FunctionDef:
    source = textwrap.dedent(inspect.getsource(SqliteStore.accept))
    tree = ast.parse(source).body[0]
    assert isinstance(tree, ast.AsyncFunctionDef | ast.FunctionDef)
    return tree  # type: ignore[return-value]


def _names(node: ast.expr) -> list[str]:
    assert isinstance(node, ast.Tuple)
    out = []
    for elt in node.elts:
        assert isinstance(elt, ast.Name)
        out.append(elt.id)
    return out


def test_the_jobs_state_is_packed_and_unpacked_in_one_order() -> None:
    accept = _accept_tree()
    packed = [
        _names(n.value)
        for n in ast.walk(accept)
        if isinstance(n, ast.Assign) and [getattr(t, "id", None) for t in n.targets] == ["state"]
    ]
    unpacked = [
        _names(n.targets[0])
        for n in ast.walk(accept)
        if isinstance(n, ast.Assign)
        and isinstance(n.value, ast.Name)
        and n.value.id == "state"
        and isinstance(n.targets[0], ast.Tuple)
    ]
    assert len(packed) == 1 and len(unpacked) == 1
    assert packed[0] == unpacked[0]
    assert len(set(packed[0])) == len(packed[0])


def test_the_accepts_closures_hold_two_cells_not_one_a_name() -> None:
    # `accept` is a coroutine function: its code's cells are what its closures share (and
    # `blob`, which the segments' comprehensions read: a comprehension is a function on 3.11).
    code = SqliteStore.accept.__code__
    assert sorted(code.co_cellvars) == ["accept_writes", "blob", "state"]
    inner = {c.co_name: c for c in code.co_consts if inspect.iscode(c)}
    assert sorted(inner["accept_writes"].co_freevars) == ["state"]
    assert sorted(inner["job"].co_freevars) == ["accept_writes", "state"]


def _optional(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), values)


MESSAGES = st.builds(
    NewMessage,
    id=st.text(min_size=1, max_size=8),
    account_id=st.text(min_size=1, max_size=8),
    batch_id=st.text(min_size=1, max_size=8),
    recipient=st.text(min_size=1, max_size=8),
    encoding=st.sampled_from(["GSM7", "UCS2", "LATIN1"]),
    data_coding=st.integers(0, 8),
    billable_units=st.integers(0, 9),
    segments=st.lists(
        st.builds(
            NewSegment,
            st.integers(1, 3),
            st.integers(1, 3),
            st.integers(0, 64),
            st.binary(max_size=4),
            st.binary(max_size=2),
        ),
        max_size=3,
    ).map(tuple),
    accepted_at=st.integers(0, 2**42),
    text=_optional(st.text(max_size=5)),
    client_ref=_optional(st.text(max_size=5)),
    sender=_optional(st.text(max_size=5)),
    sign_name=_optional(st.text(max_size=5)),
    template=_optional(st.text(max_size=5)),
    # 0 and None alike falsy: `or` picks the accepted time for both
    scheduled_at=_optional(st.integers(0, 2**42)),
    expires_at=_optional(st.integers(0, 2**42)),
    air_segments=st.integers(0, 4),
    kind=_optional(st.sampled_from(["verification", "notification", "marketing"])),
    price_class=_optional(st.sampled_from(["D", "44", "1"])),
    wire=_optional(st.integers(0, 63)),
)


@settings(max_examples=1_500, deadline=None)
@given(MESSAGES)
def test_a_messages_row_is_the_known_nones_row_of_its_insert_values(m: NewMessage) -> None:
    assert sqlite._message_row(m) == sqlite._MESSAGE_NONES.row(
        m.insert_values(), sqlite._message_nones(m)
    )
    assert tuple(eval(e, {"m": m}) for e in sqlite._MESSAGE_EXPRS) == m.insert_values()
