"""A long inbound message (MO) whose other parts never arrive is delivered flagged incomplete, not
dropped. Driven through the real `Inbound` handler (the function the SMPP connector awaits) and
its sweep step (`flush_stale_mo`), on every engine of tests/store_engines.py, down to the pushed
webhook body as `WebhookSender.render` makes it."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge import logs  # noqa: E402
from bridge.config import SmscConfig, WebhooksConfig  # noqa: E402
from bridge.domain.optout import is_optout  # noqa: E402
from bridge.metrics import Metrics  # noqa: E402
from bridge.pipeline.inbound import Inbound, incomplete_mo_id, join_runs  # noqa: E402
from bridge.pipeline.webhooks import WebhookSender  # noqa: E402
from bridge.smpp import constants as C  # noqa: E402
from bridge.smpp.codec import ShortMessage  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.store.models import (  # noqa: E402
    AcceptBatch,
    Account,
    MoPart,
    NewMessage,
    NewSegment,
)
from tests.integration.conftest import OPENAPI  # noqa: E402
from tests.store_engines import EngineHandle, schema_before  # noqa: E402

engine = engines.engine
store = engines.store

NOW = 1_700_000_000_000
SEC = 1_000
MIN = 60 * SEC
HOUR = 60 * MIN
LEASE = 5 * MIN
TIMEOUT = 300 * SEC  # pipeline.mo_reassembly_timeout_s default
PHONE = "+8613800138000"
SRC = "8613800138000"  # as the SMSC sends it (TON 1)
DEST = "10690000"  # smscA's default_source


class Clock:
    def __init__(self, at: int = NOW) -> None:
        self.ms = at

    def __call__(self) -> float:
        return self.ms / 1000


def account(aid: str, report_format: str = "native") -> Account:
    return Account(
        id=aid,
        name=f"name-{aid}",
        mo_callback_url=f"https://{aid}/mo",
        webhook_secret_enc=b"sealed",
        created_at=NOW,
        updated_at=NOW,
        report_format=report_format,
    )


async def sent_before(store: Store, aid: str, *, recipient: str = PHONE) -> None:
    """A message of `aid` to the number an hour ago, from smscA's default address: the reply
    is attributed to `aid`."""
    m = NewMessage(
        id=f"m_{aid}_{recipient[-4:]}",
        account_id=aid,
        batch_id=f"b_{aid}",
        recipient=recipient,
        encoding="gsm7",
        data_coding=0,
        billable_units=1,
        segments=(NewSegment(1, 1, 0, b"hi", b""),),
        accepted_at=NOW - HOUR,
        text="hi",
        sign_name="Acme",
    )
    out = await store.accept(AcceptBatch(aid, (m,), None, None), NOW - HOUR)
    assert out.accepted


def part_pdu(
    payload: bytes,
    seq: int,
    total: int = 3,
    *,
    ref: int = 42,
    source: str = SRC,
    ton: int = 1,
    data_coding: int = 0,
) -> ShortMessage:
    return ShortMessage(
        source_addr_ton=ton,
        source_addr_npi=1,
        source_addr=source,
        dest_addr_ton=0,
        destination_addr=DEST,
        esm_class=0x40,
        data_coding=data_coding,
        short_message=bytes([5, 0, 3, ref, total, seq]) + payload,
    )


def inbound(store: Any, clock: Clock, metrics: Metrics | None = None) -> Inbound:
    smsc = SmscConfig(name="smscA", host="127.0.0.1", port=2775, system_id="esme",
                      default_source=DEST)  # fmt: skip
    return Inbound(store, {"smscA": smsc}, clock=clock, metrics=metrics)


async def deliver(handler: Inbound, clock: Clock, at: int, pdu: ShortMessage) -> None:
    clock.ms = at
    assert await handler.on_deliver("smscA", pdu) == C.ESME_ROK


async def mo_jobs(store: Store, now: int) -> list[Any]:
    return [j for j in await store.claim_webhooks(now, 100, LEASE) if j.kind == "mo"]


async def render(store: Store, job: Any) -> dict[str, Any]:
    sender = WebhookSender(store, None, WebhooksConfig())  # type: ignore[arg-type]
    payload = await sender.render(job)
    assert payload is not None
    return payload


def check_schema(payload: dict[str, Any]) -> None:
    """The native MO body matches the InboundMessage schema of the OpenAPI document."""
    schema = OPENAPI.to_jsonschema(OPENAPI.doc["components"]["schemas"]["InboundMessage"])
    jsonschema.validate(payload, schema)


def id_of(first_at: int, ref: int = 42, total: int = 3, source: str = SRC) -> str:
    return incomplete_mo_id("smscA", source, DEST, ref, total, first_at)


class FlushFails:
    """The store, except that `store_mo_from_parts` fails (a crash or a store error inside the
    sweep's transaction: nothing of it is committed) `times` times."""

    def __init__(self, inner: Store, times: int = 1) -> None:
        self.inner = inner
        self.left = times

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def store_mo_from_parts(self, *args: Any) -> bool | None:
        if self.left > 0:
            self.left -= 1
            raise RuntimeError("database went away")
        return await self.inner.store_mo_from_parts(*args)


class DropFails:
    """The store, except that `_mo`'s store of a long MO (store_mo_from_parts) stores the MO
    and then fails to drop its parts, `times` times: what a crash (or a store error) between
    the two left when they were two transactions, as in the releases before session 39, whose
    kept parts an upgrade may still find."""

    def __init__(self, inner: Store, times: int = 1) -> None:
        self.inner = inner
        self.left = times

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def store_mo_from_parts(self, mo: Any, parts: Any) -> bool | None:
        if self.left > 0 and mo is not None:
            self.left -= 1
            await self.inner.store_mo(mo)
            raise RuntimeError("database went away")
        return await self.inner.store_mo_from_parts(mo, parts)


# ---------------------------------------------------------------- 2 of 3 parts


async def test_two_of_three_parts_are_delivered_flagged_after_the_timeout(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await store.create_account(account("acc_a"))
    await sent_before(store, "acc_a")
    clock = Clock()
    metrics = Metrics()
    handler = inbound(store, clock, metrics)
    await deliver(handler, clock, NOW, part_pdu(b"part1", 1))
    await deliver(handler, clock, NOW + SEC, part_pdu(b"part3", 3))  # part 2 lost
    # The cut-off runs from the newest part: at exactly the timeout after it, still waiting.
    assert await handler.flush_stale_mo(NOW + SEC + TIMEOUT, timeout_ms=TIMEOUT) == 0
    assert await mo_jobs(store, NOW + SEC + TIMEOUT) == []
    with caplog.at_level(logging.INFO, logger="bridge.inbound"):
        assert await handler.flush_stale_mo(NOW + SEC + TIMEOUT + 1, timeout_ms=TIMEOUT) == 1

    mo = await store.get_mo(id_of(NOW))
    assert mo is not None
    assert (mo.text, mo.parts_total, mo.parts_received) == ("part1 ... part3", 3, (1, 3))
    assert (mo.account_id, mo.sign_name, mo.source, mo.destination, mo.smsc) == (
        "acc_a", "Acme", PHONE, DEST, "smscA",
    )  # fmt: skip
    assert mo.received_at == NOW + SEC  # when the last part that came arrived
    assert (handler.mo_incomplete, handler.mo, handler.optouts) == (1, 0, 0)
    metrics.flush()
    sample = metrics.registry.get_sample_value
    assert sample("smpp_bridge_mo_incomplete_total", {"smsc": "smscA"}) == 1
    assert sample("smpp_bridge_mo_received_total", {"smsc": "smscA"}) is None
    assert await store.stale_mo_groups(NOW + HOUR, 10) == []  # the parts are gone

    (job,) = await mo_jobs(store, NOW + HOUR)
    payload = await render(store, job)
    assert payload["incomplete"] is True
    assert (payload["parts_total"], payload["parts_received"]) == (3, [1, 3])
    assert (payload["text"], payload["mo_id"], payload["from"]) == (
        "part1 ... part3", mo.id, PHONE,
    )  # fmt: skip
    check_schema(payload)

    # One INFO line: who and how much, never the text.
    (rec,) = [r for r in caplog.records if r.name == "bridge.inbound"]
    assert rec.levelno == logging.INFO
    assert rec.getMessage() == "incomplete mo delivered: 2 of 3 parts"
    extra = vars(rec)
    assert (extra["smsc"], extra["mo_id"], extra["from"]) == ("smscA", mo.id, logs.number(PHONE))
    assert (extra["parts_received"], extra["parts_total"]) == ([1, 3], 3)
    assert "part1" not in repr(extra) and "part3" not in repr(extra)

    # Nothing left to do on the next rounds: still one MO, one push.
    assert await handler.flush_stale_mo(NOW + HOUR, timeout_ms=TIMEOUT) == 0
    assert handler.mo_incomplete == 1


async def test_a_late_part_restarts_the_wait(store: Store) -> None:
    """The timeout runs from the newest part: part 3 arriving 4 minutes after part 1 gives the
    missing part 2 another 5 minutes."""
    clock = Clock()
    handler = inbound(store, clock)
    await deliver(handler, clock, NOW, part_pdu(b"a", 1))
    assert await handler.flush_stale_mo(NOW + 4 * MIN, timeout_ms=TIMEOUT) == 0
    await deliver(handler, clock, NOW + 4 * MIN, part_pdu(b"c", 3))
    assert await handler.flush_stale_mo(NOW + 4 * MIN + TIMEOUT, timeout_ms=TIMEOUT) == 0
    assert await handler.flush_stale_mo(NOW + 4 * MIN + TIMEOUT + 1, timeout_ms=TIMEOUT) == 1
    mo = await store.get_mo(id_of(NOW))
    assert mo is not None and (mo.text, mo.account_id) == ("a ... c", None)  # nobody wrote


async def test_missing_first_and_last_parts(store: Store) -> None:
    """Only the middle of a 4-part message: no marker at the edges, the flags say what is
    missing; two runs of two parts each decode as runs."""
    clock = Clock()
    handler = inbound(store, clock)
    await deliver(handler, clock, NOW, part_pdu(b"two", 2, 4))
    await deliver(handler, clock, NOW + 1, part_pdu(b"three", 3, 4))
    await deliver(handler, clock, NOW + 2, part_pdu(b"B1", 1, 5, ref=7))
    await deliver(handler, clock, NOW + 3, part_pdu(b"B2", 2, 5, ref=7))
    await deliver(handler, clock, NOW + 4, part_pdu(b"B4", 4, 5, ref=7))
    await deliver(handler, clock, NOW + 5, part_pdu(b"B5", 5, 5, ref=7))
    assert await handler.flush_stale_mo(NOW + HOUR, timeout_ms=TIMEOUT) == 2
    a = await store.get_mo(id_of(NOW, total=4))
    b = await store.get_mo(id_of(NOW + 2, ref=7, total=5))
    assert a is not None and (a.text, a.parts_total, a.parts_received) == ("twothree", 4, (2, 3))
    assert b is not None and (b.text, b.parts_received) == ("B1B2 ... B4B5", (1, 2, 4, 5))


# ---------------------------------------------------------------- redo after a crash


async def test_a_sweep_that_fails_stores_nothing_and_the_next_stores_one(store: Store) -> None:
    """The MO and the drop of its parts are one transaction (`store_mo_from_parts`): a sweep
    that fails in it (a crash, a store error) leaves neither an MO nor a half-done group, and
    the next round delivers it once, with the same id."""
    await store.create_account(account("acc_a"))
    await sent_before(store, "acc_a")
    clock = Clock()
    await deliver(inbound(store, clock), clock, NOW, part_pdu(b"part1", 1))
    await deliver(inbound(store, clock), clock, NOW + SEC, part_pdu(b"part3", 3))
    crashing = inbound(FlushFails(store), clock)
    later = NOW + SEC + TIMEOUT + 1
    assert await crashing.flush_stale_mo(later, timeout_ms=TIMEOUT) == 0
    assert crashing.mo_incomplete == 0
    assert [len(g) for g in await store.stale_mo_groups(later, 10)] == [2]
    assert await mo_jobs(store, later + HOUR) == []
    # The restarted daemon sweeps the same parts again.
    again = inbound(store, clock)
    assert await again.flush_stale_mo(later + 5 * SEC, timeout_ms=TIMEOUT) == 1
    assert await again.flush_stale_mo(later + 10 * SEC, timeout_ms=TIMEOUT) == 0
    assert again.mo_incomplete == 1
    assert await store.stale_mo_groups(later + HOUR, 10) == []
    (job,) = await mo_jobs(store, later + HOUR)
    assert job.payload == id_of(NOW)


async def test_a_part_resent_after_the_read_makes_the_group_wait_again(store: Store) -> None:
    """The SMSC sends part 3 once more (its deliver_sm_resp was lost) between the sweep's read
    and its store: the group is no longer what was read, so nothing is stored; it waits a new
    timeout from the resend and is delivered once, with the same id (the first part's arrival
    did not change)."""
    await store.create_account(account("acc_a"))
    await sent_before(store, "acc_a")
    clock = Clock()
    handler = inbound(store, clock)
    await deliver(handler, clock, NOW, part_pdu(b"part1", 1))
    await deliver(handler, clock, NOW + SEC, part_pdu(b"part3", 3))
    later = NOW + SEC + TIMEOUT + 1
    (read,) = await store.stale_mo_groups(later - TIMEOUT, 10)
    await deliver(handler, clock, later, part_pdu(b"part3", 3))  # resent
    assert await handler._flush_group(read) is False
    assert await handler.flush_stale_mo(later + TIMEOUT, timeout_ms=TIMEOUT) == 0
    assert await handler.flush_stale_mo(later + TIMEOUT + 1, timeout_ms=TIMEOUT) == 1
    assert await store.stale_mo_groups(later + HOUR, 10) == []
    (job,) = await mo_jobs(store, later + HOUR)
    assert job.payload == id_of(NOW)


async def test_two_sweepers_at_once_store_and_count_one_mo(store: Store) -> None:
    """Every instance runs the sweeper (PostgreSQL): both may read the same stale group."""
    await store.create_account(account("acc_a"))
    await sent_before(store, "acc_a")
    clock = Clock()
    a, b = inbound(store, clock), inbound(store, clock)
    await deliver(a, clock, NOW, part_pdu(b"x", 2))
    (group,) = await store.stale_mo_groups(NOW + TIMEOUT + 1, 10)
    assert await a._flush_group(group) is True
    assert await b._flush_group(group) is False  # read before a dropped it
    assert (a.mo_incomplete, b.mo_incomplete) == (1, 0)
    assert len(await mo_jobs(store, NOW + HOUR)) == 1


async def test_a_complete_mo_left_by_a_crash_is_not_delivered_again(store: Store) -> None:
    """`_mo` stored the complete MO and failed to drop its parts: the sweep finds every part
    and only drops them (storing them again, as incomplete or not, would push it twice)."""
    await store.create_account(account("acc_a"))
    await sent_before(store, "acc_a")
    clock = Clock()
    crashing = inbound(DropFails(store), clock)
    clock.ms = NOW
    assert await crashing.on_deliver("smscA", part_pdu(b"one ", 1, 2)) == C.ESME_ROK
    # The last part: the MO is stored, the drop fails, the SMSC is asked to resend and does not.
    assert await crashing.on_deliver("smscA", part_pdu(b"two", 2, 2)) == C.ESME_RX_T_APPN
    handler = inbound(store, clock)
    assert await handler.flush_stale_mo(NOW + HOUR, timeout_ms=TIMEOUT) == 0
    assert await store.stale_mo_groups(NOW + 2 * HOUR, 10) == []
    (job,) = await mo_jobs(store, NOW + HOUR)
    mo = await store.get_mo(job.payload)
    assert mo is not None and (mo.text, mo.parts_total) == ("one two", None)


async def test_one_failing_group_does_not_hold_up_the_others(store: Store) -> None:
    class AttributionFailsFor:
        def __init__(self, inner: Store, source: str) -> None:
            self.inner, self.source = inner, source

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        async def attribute_mo(self, source: str, *args: Any, **kw: Any) -> Any:
            if source == self.source:
                raise RuntimeError("bad row")
            return await self.inner.attribute_mo(source, *args, **kw)

    clock = Clock()
    handler = inbound(store, clock)
    await deliver(handler, clock, NOW, part_pdu(b"bad", 1, source="8613900000001"))
    await deliver(handler, clock, NOW + 1, part_pdu(b"good", 1, source="8613900000002"))
    flaky = inbound(AttributionFailsFor(store, "+8613900000001"), clock)
    assert await flaky.flush_stale_mo(NOW + HOUR, timeout_ms=TIMEOUT) == 1
    (left,) = await store.stale_mo_groups(NOW + HOUR, 10)
    assert left[0].source == "8613900000001"  # kept for the next round
    assert await store.get_mo(id_of(NOW + 1, source="8613900000002")) is not None


# ---------------------------------------------------------------- decoding


async def test_ucs2_pair_cut_at_a_missing_part_does_not_raise(store: Store) -> None:
    """ "ab😀cd" + "ef": the surrogate pair of 😀 is cut between parts 1 and 2. With part 2 lost
    the lone high surrogate decodes as U+FFFD; with parts 1 and 2 present (3 lost) the pair
    still joins. An odd octet left by a part cut mid-character is replaced too."""
    emoji = "😀".encode("utf-16-be")
    p1, p2, p3 = (
        "ab".encode("utf-16-be") + emoji[:2],
        emoji[2:] + "cd".encode("utf-16-be"),
        b"\x00e\x00f",
    )
    clock = Clock()
    handler = inbound(store, clock)
    await deliver(handler, clock, NOW, part_pdu(p1, 1, data_coding=8))
    await deliver(handler, clock, NOW + 1, part_pdu(p3, 3, data_coding=8))
    await deliver(handler, clock, NOW + 2, part_pdu(p1, 1, ref=43, data_coding=8))
    await deliver(handler, clock, NOW + 3, part_pdu(p2, 2, ref=43, data_coding=8))
    await deliver(handler, clock, NOW + 4, part_pdu(b"\x00g\x00", 1, 2, ref=44, data_coding=8))
    assert await handler.flush_stale_mo(NOW + HOUR, timeout_ms=TIMEOUT) == 3
    cut = await store.get_mo(id_of(NOW))
    whole = await store.get_mo(id_of(NOW + 2, ref=43))
    odd = await store.get_mo(id_of(NOW + 4, ref=44, total=2))
    assert cut is not None and cut.text == "ab\ufffd ... ef"
    assert whole is not None and whole.text == "ab😀cd"
    assert odd is not None and odd.text == "g\ufffd"


def test_join_runs_decodes_each_run_with_its_coding() -> None:
    def p(seq: int, payload: bytes, dc: int = 0) -> MoPart:
        return MoPart("s", "1", "2", 1, 6, seq, dc, payload, NOW)

    assert join_runs([p(1, b"a"), p(2, b"b"), p(4, b"d"), p(6, b"f")]) == "ab ... d ... f"
    # GSM: an escape at the end of a run (its pair in the missing part) is dropped, not fatal.
    assert join_runs([p(1, b"x\x1b"), p(3, b"\x65y")]) == "x ... ey"
    assert join_runs([p(1, b"x\x1b"), p(2, b"\x65y")]) == "x€y"  # the pair joined across parts
    assert join_runs([p(2, b"\x00\xe9", 8), p(3, b"\x00!", 8)]) == "é!"


# ---------------------------------------------------------------- opt-out


async def test_an_incomplete_stop_does_not_opt_the_number_out(store: Store) -> None:
    await store.create_account(account("acc_a"))
    await sent_before(store, "acc_a")
    clock = Clock()
    handler = inbound(store, clock)
    assert is_optout("STOP", handler.optout_keywords)  # a keyword when it comes whole
    await deliver(handler, clock, NOW, part_pdu(b"STOP", 1, 2))
    assert await handler.flush_stale_mo(NOW + HOUR, timeout_ms=TIMEOUT) == 1
    mo = await store.get_mo(id_of(NOW, total=2))
    assert mo is not None and (mo.text, mo.account_id) == ("STOP", "acc_a")
    assert await store.list_optouts("acc_a") == []
    assert handler.optouts == 0
    assert len(await mo_jobs(store, NOW + HOUR)) == 1  # the customer still reads it


# ---------------------------------------------------------------- complete MOs and formats


async def test_complete_mos_carry_incomplete_false(store: Store) -> None:
    await store.create_account(account("acc_a"))
    await sent_before(store, "acc_a")
    clock = Clock()
    handler = inbound(store, clock)
    single = ShortMessage(source_addr_ton=1, source_addr=SRC, destination_addr=DEST,
                          short_message=b"hello")  # fmt: skip
    await deliver(handler, clock, NOW, single)
    await deliver(handler, clock, NOW + SEC, part_pdu(b"long ", 1, 2, ref=5))
    await deliver(handler, clock, NOW + 2 * SEC, part_pdu(b"reply", 2, 2, ref=5))
    jobs = await mo_jobs(store, NOW + MIN)
    assert len(jobs) == 2
    texts = []
    for job in jobs:
        mo = await store.get_mo(job.payload)
        assert mo is not None and (mo.parts_total, mo.parts_received) == (None, None)
        payload = await render(store, job)
        assert payload["incomplete"] is False
        assert (payload["parts_total"], payload["parts_received"]) == (None, None)
        check_schema(payload)
        texts.append(payload["text"])
    assert sorted(texts) == ["hello", "long reply"]
    assert handler.mo == 2 and handler.mo_incomplete == 0


async def test_aliyun_format_keeps_its_fields_with_the_joined_text(store: Store) -> None:
    await store.create_account(account("acc_y", report_format="aliyun"))
    await sent_before(store, "acc_y")
    clock = Clock()
    handler = inbound(store, clock)
    await deliver(handler, clock, NOW, part_pdu(b"part1", 1))
    await deliver(handler, clock, NOW + 1, part_pdu(b"part3", 3))
    assert await handler.flush_stale_mo(NOW + HOUR, timeout_ms=TIMEOUT) == 1
    (job,) = await mo_jobs(store, NOW + HOUR)
    payload = await render(store, job)
    assert payload["content"] == "part1 ... part3"
    assert set(payload) == {
        "phone_number", "send_time", "content", "sign_name", "dest_code", "sequence_id",
    }  # fmt: skip


async def test_a_national_source_stays_national(store: Store) -> None:
    """The part keeps the source's TON: a national 11-digit number (TON 2) is not read as
    international (+13800138000, North America), as it is not for a complete MO."""
    clock = Clock()
    handler = inbound(store, clock)
    await deliver(handler, clock, NOW, part_pdu(b"ni hao", 1, 2, source="13800138000", ton=2))
    assert await handler.flush_stale_mo(NOW + HOUR, timeout_ms=TIMEOUT) == 1
    mo = await store.get_mo(id_of(NOW, total=2, source="13800138000"))
    assert mo is not None and mo.source == "13800138000"


# ---------------------------------------------------------------- the store


def kept(ref: int, seq: int, at: int, *, total: int = 3) -> MoPart:
    return MoPart("smscA", SRC, DEST, ref, total, seq, 0, b"p%d" % seq, at, 1)


async def test_stale_mo_groups_cut_off_by_the_newest_part_and_limited(store: Store) -> None:
    await store.add_mo_part(kept(1, 3, NOW))  # A: started first, newest at NOW + 10 s
    await store.add_mo_part(kept(1, 1, NOW + 10 * SEC))
    await store.add_mo_part(kept(2, 2, NOW + SEC))  # B
    await store.add_mo_part(kept(3, 1, NOW + 2 * SEC))  # C
    await store.add_mo_part(kept(3, 3, NOW + 2 * SEC))

    def shape(groups: list[list[MoPart]]) -> list[tuple[int, list[int]]]:
        return [(g[0].ref, [p.seq for p in g]) for g in groups]

    # A's newest part is recent: not stale, although its oldest is the oldest of all.
    assert shape(await store.stale_mo_groups(NOW + 5 * SEC, 10)) == [(2, [2]), (3, [1, 3])]
    assert shape(await store.stale_mo_groups(NOW + 2 * SEC, 10)) == [(2, [2])]  # strictly before
    assert shape(await store.stale_mo_groups(NOW + 10 * SEC, 10)) == [(2, [2]), (3, [1, 3])]
    # Oldest groups first (by their first part), in seq order, at most `limit` groups.
    assert shape(await store.stale_mo_groups(NOW + 10 * SEC + 1, 10)) == [
        (1, [1, 3]), (2, [2]), (3, [1, 3]),
    ]  # fmt: skip
    assert shape(await store.stale_mo_groups(NOW + 10 * SEC + 1, 2)) == [(1, [1, 3]), (2, [2])]
    (a, _) = await store.stale_mo_groups(NOW + HOUR, 2)
    assert a[0] == kept(1, 1, NOW + 10 * SEC) and a[1] == kept(1, 3, NOW)  # every field back


async def test_flush_takes_at_most_the_limit_per_sweep(store: Store) -> None:
    clock = Clock()
    handler = inbound(store, clock)
    for ref in range(5):
        await deliver(handler, clock, NOW + ref, part_pdu(b"x", 1, 2, ref=ref))
    assert await handler.flush_stale_mo(NOW + HOUR, timeout_ms=TIMEOUT, limit=3) == 3
    assert [g[0].ref for g in await store.stale_mo_groups(NOW + HOUR, 10)] == [3, 4]
    assert await handler.flush_stale_mo(NOW + HOUR, timeout_ms=TIMEOUT, limit=3) == 2


async def test_upgrade_keeps_mos_and_parts_stored_before_it(engine: EngineHandle) -> None:
    """A database of the release before: an MO stored and a part kept without its TON. After
    the migration the MO reads back complete, and the part is delivered (its TON unknown: read
    as SMSCs that send TON 0 mean it)."""
    s = engine.new_store()
    await s.open()
    await s.create_account(account("acc_a"))
    await sent_before(s, "acc_a")
    clock = Clock()
    old_mo = ShortMessage(source_addr=SRC, destination_addr=DEST, short_message=b"old")
    await deliver(inbound(s, clock), clock, NOW, old_mo)
    await deliver(inbound(s, clock), clock, NOW, part_pdu(b"kept", 1, 2))
    (job,) = await mo_jobs(s, NOW)
    await s.close()
    await schema_before(engine, 8, 7)
    upgraded = engine.new_store()
    await upgraded.open()  # the migration runs
    try:
        old = await upgraded.get_mo(job.payload)
        assert old is not None and (old.text, old.parts_total, old.parts_received) == (
            "old", None, None,
        )  # fmt: skip
        (group,) = await upgraded.stale_mo_groups(NOW + HOUR, 10)
        assert group[0].source_ton is None
        handler = inbound(upgraded, clock)
        assert await handler.flush_stale_mo(NOW + HOUR, timeout_ms=TIMEOUT) == 1
        mo = await upgraded.get_mo(id_of(NOW, total=2))
        assert mo is not None and (mo.source, mo.text, mo.parts_received) == (PHONE, "kept", (1,))
    finally:
        await upgraded.close()


# ---------------------------------------------------------------- races and lost MOs (review)


class StoreMoFails:
    """The store, except that storing an MO fails `times` times (`store_mo`, and for a long one
    `store_mo_from_parts`, whose transaction then commits nothing): `_mo` had every part (the
    last one's add_mo_part committed) and could not store the MO; the SMSC is asked to resend."""

    def __init__(self, inner: Store, times: int = 1) -> None:
        self.inner = inner
        self.left = times

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _fail(self) -> None:
        if self.left > 0:
            self.left -= 1
            raise RuntimeError("database went away")

    async def store_mo(self, mo: Any) -> bool:
        self._fail()
        return await self.inner.store_mo(mo)

    async def store_mo_from_parts(self, mo: Any, parts: Any) -> bool | None:
        self._fail()
        return await self.inner.store_mo_from_parts(mo, parts)


async def test_a_part_arriving_while_its_group_is_flushed_is_not_lost(store: Store) -> None:
    """The sweep read parts 1 and 2 of 4 as stale; part 3 arrives (and is acknowledged) before
    the sweep stores and drops them. Part 3 must not vanish with the parts the sweep delivers:
    the group waits again and is delivered once, with everything that arrived."""
    await store.create_account(account("acc_a"))
    await sent_before(store, "acc_a")
    clock = Clock()
    handler = inbound(store, clock)
    await deliver(handler, clock, NOW, part_pdu(b"p1", 1, 4))
    await deliver(handler, clock, NOW + 1, part_pdu(b"p2", 2, 4))
    sweep_at = NOW + 1 + TIMEOUT + 1
    (read,) = await store.stale_mo_groups(sweep_at - TIMEOUT, 10)
    await deliver(handler, clock, sweep_at, part_pdu(b"p3", 3, 4))  # just after the read
    await handler._flush_group(read)
    # Nothing is delivered without part 3, and part 3 is still kept.
    assert await mo_jobs(store, sweep_at + HOUR) == []
    (left,) = await store.stale_mo_groups(sweep_at + HOUR, 10)
    assert [p.seq for p in left] == [1, 2, 3]
    assert await handler.flush_stale_mo(sweep_at + TIMEOUT + 1, timeout_ms=TIMEOUT) == 1
    (job,) = await mo_jobs(store, sweep_at + HOUR)
    mo = await store.get_mo(job.payload)
    assert mo is not None and (mo.text, mo.parts_received) == ("p1p2p3", (1, 2, 3))
    assert await store.stale_mo_groups(sweep_at + 2 * HOUR, 10) == []


async def test_the_last_part_arriving_while_its_group_is_flushed_makes_one_mo(
    store: Store,
) -> None:
    """Part 3 of 3 arrives after the sweep read parts 1 and 2: `_mo` delivers the complete MO;
    the sweep must not deliver the fragment as well (the customer would read it twice)."""
    await store.create_account(account("acc_a"))
    await sent_before(store, "acc_a")
    clock = Clock()
    handler = inbound(store, clock)
    await deliver(handler, clock, NOW, part_pdu(b"one ", 1))
    await deliver(handler, clock, NOW + 1, part_pdu(b"two ", 2))
    sweep_at = NOW + 1 + TIMEOUT + 1
    (read,) = await store.stale_mo_groups(sweep_at - TIMEOUT, 10)
    await deliver(handler, clock, sweep_at, part_pdu(b"three", 3))  # complete: stored
    assert await handler._flush_group(read) is False
    (job,) = await mo_jobs(store, sweep_at + HOUR)
    mo = await store.get_mo(job.payload)
    assert mo is not None and (mo.text, mo.parts_total) == ("one two three", None)
    assert (handler.mo, handler.mo_incomplete) == (1, 0)


async def test_a_complete_mo_never_stored_is_delivered_not_dropped(store: Store) -> None:
    """`_mo` had every part but could not store the MO (a store error, or a crash after the
    last part was kept) and the SMSC's resend did not come before the timeout: the sweep finds
    every part. It may drop them only when the MO is stored; otherwise the reply is delivered,
    complete, opt-out keyword included, once."""
    await store.create_account(account("acc_a"))
    await sent_before(store, "acc_a")
    clock = Clock()
    failing = inbound(StoreMoFails(store), clock)
    clock.ms = NOW
    assert await failing.on_deliver("smscA", part_pdu(b"ST", 1, 2)) == C.ESME_ROK
    clock.ms = NOW + SEC
    assert await failing.on_deliver("smscA", part_pdu(b"OP", 2, 2)) == C.ESME_RX_T_APPN
    assert await mo_jobs(store, NOW + HOUR) == []
    handler = inbound(store, clock)
    assert await handler.flush_stale_mo(NOW + HOUR, timeout_ms=TIMEOUT) == 1
    assert await store.stale_mo_groups(NOW + 2 * HOUR, 10) == []
    (job,) = await mo_jobs(store, NOW + HOUR)
    mo = await store.get_mo(job.payload)
    assert mo is not None
    assert (mo.text, mo.parts_total, mo.parts_received, mo.account_id, mo.source) == (
        "STOP", None, None, "acc_a", PHONE,
    )  # fmt: skip
    assert [(o.recipient, o.source) for o in await store.list_optouts("acc_a")] == [(PHONE, "mo")]
    assert (handler.mo, handler.mo_incomplete, handler.optouts) == (1, 0, 1)
    # Swept again (another instance read it too): nothing more.
    assert await handler.flush_stale_mo(NOW + 2 * HOUR, timeout_ms=TIMEOUT) == 0
    assert len(await mo_jobs(store, NOW + 2 * HOUR)) == 1


async def test_a_stored_complete_sar_mo_is_recognised_by_the_sweep(store: Store) -> None:
    """As test_a_complete_mo_left_by_a_crash_is_not_delivered_again, for parts that came with
    SAR TLVs (data_sm from carriers that send MO that way) and a reference above 255: the
    sweep finds the MO `_mo` stored under that scheme and only drops the parts."""
    await store.create_account(account("acc_a"))
    await sent_before(store, "acc_a")
    clock = Clock()
    crashing = inbound(DropFails(store), clock)

    def sar(payload: bytes, seq: int) -> ShortMessage:
        return ShortMessage(
            source_addr_ton=1, source_addr=SRC, destination_addr=DEST, data_coding=8,
            tlvs=((C.SAR_MSG_REF_NUM, b"\x01\x2c"), (C.SAR_TOTAL_SEGMENTS, b"\x02"),
                  (C.SAR_SEGMENT_SEQNUM, bytes([seq])), (C.MESSAGE_PAYLOAD, payload)),
        )  # fmt: skip

    clock.ms = NOW
    assert await crashing.on_deliver("smscA", sar("你".encode("utf-16-be"), 1)) == C.ESME_ROK
    clock.ms = NOW + SEC
    assert await crashing.on_deliver("smscA", sar("好".encode("utf-16-be"), 2)) == (
        C.ESME_RX_T_APPN
    )
    handler = inbound(store, clock)
    assert await handler.flush_stale_mo(NOW + HOUR, timeout_ms=TIMEOUT) == 0
    assert await store.stale_mo_groups(NOW + 2 * HOUR, 10) == []
    (job,) = await mo_jobs(store, NOW + HOUR)
    mo = await store.get_mo(job.payload)
    assert mo is not None and (mo.text, mo.parts_total) == ("你好", None)
    assert handler.mo == 0


async def test_a_redelivered_mo_is_stored_pushed_and_counted_once(store: Store) -> None:
    """The SMSC resends an MO whose deliver_sm_resp it did not get (same window, same id):
    `store_mo` keeps one and says so, and the handler counts what it stored, not what came."""
    await store.create_account(account("acc_a"))
    await sent_before(store, "acc_a")
    clock = Clock()
    metrics = Metrics()
    handler = inbound(store, clock, metrics)
    single = ShortMessage(source_addr_ton=1, source_addr=SRC, destination_addr=DEST,
                          short_message=b"hello")  # fmt: skip
    await deliver(handler, clock, NOW, single)
    await deliver(handler, clock, NOW + SEC, single)  # resent
    await deliver(handler, clock, NOW + 2 * SEC, part_pdu(b"a", 1, 2, ref=9))
    await deliver(handler, clock, NOW + 3 * SEC, part_pdu(b"b", 2, 2, ref=9))
    await deliver(handler, clock, NOW + 4 * SEC, part_pdu(b"b", 2, 2, ref=9))  # resent
    assert len(await mo_jobs(store, NOW + MIN)) == 2
    assert handler.mo == 2
    metrics.flush()
    sample = metrics.registry.get_sample_value
    assert sample("smpp_bridge_mo_received_total", {"smsc": "smscA"}) == 2
    # The resent last part came after its MO was stored and its parts dropped: it waits alone,
    # and must not be delivered as an "incomplete" fragment of the reply already delivered.
    assert await handler.flush_stale_mo(NOW + HOUR, timeout_ms=TIMEOUT) == 0
    assert await store.stale_mo_groups(NOW + 2 * HOUR, 10) == []
    assert len(await mo_jobs(store, NOW + 2 * HOUR)) == 2
    assert handler.mo_incomplete == 0


async def test_a_flush_and_the_missing_part_on_two_instances_lose_nothing(
    engine: EngineHandle,
) -> None:
    """Instance A flushes groups it read as stale while instance B receives their missing
    part at the same moment (PostgreSQL: two pools on one database; SQLite: two stores on one
    file). Whichever commits first, every part ends in exactly one place: in the fragment A
    stored (and B's part then waits alone), or in the complete message B's add_mo_part
    returned (and A stored nothing)."""
    a, b = engine.new_store(), engine.new_store()
    await a.open()
    await b.open()
    try:
        for ref in range(30):
            await a.add_mo_part(kept(ref, 1, NOW))
            await a.add_mo_part(kept(ref, 3, NOW))
        groups = await a.stale_mo_groups(NOW + 1, 100)
        assert len(groups) == 30

        def fragment(g: list[MoPart]) -> Any:
            from bridge.store.models import MoMessage

            mo_id = incomplete_mo_id("smscA", SRC, DEST, g[0].ref, 3, NOW)
            return MoMessage(mo_id, None, "smscA", PHONE, DEST, "x", NOW, None, 3, (1, 3))

        outs = await asyncio.gather(
            *(
                job
                for g in groups
                for job in (
                    a.store_mo_from_parts(fragment(g), g),  # type: ignore[attr-defined]
                    b.add_mo_part(kept(g[0].ref, 2, NOW + SEC)),
                )
            )
        )
        for g, flushed, completed in zip(groups, outs[0::2], outs[1::2], strict=True):
            kept_now = [
                p.seq for grp in await a.stale_mo_groups(NOW + HOUR, 100)
                if grp[0].ref == g[0].ref for p in grp
            ]  # fmt: skip
            stored = await a.get_mo(fragment(g).id)
            if flushed is None:  # B first: A stored nothing, B has the whole message
                assert completed is not None and [p.seq for p in completed] == [1, 2, 3]
                assert stored is None and kept_now == [1, 2, 3]
            else:  # A first: the fragment is stored, B's part waits on its own
                assert flushed is True and completed is None
                assert stored is not None and kept_now == [2]
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize(
    ("ref", "total", "seq"),
    [
        (b"\xff\xff\xff\xff", b"\x02", b"\x01"),  # ref beyond 2 octets: PostgreSQL INTEGER
        (b"\x00\x07", b"\x00\x01\x11\x70", b"\x01"),  # total 70,000 in 4 octets
        (b"\x00\x07", b"\x00\x00\x01\x2c", b"\x00\x00\x01\x2b"),  # part 299 of 300
    ],
)
async def test_sar_values_beyond_smpp_ranges_make_a_single_message(
    store: Store, ref: bytes, total: bytes, seq: bytes
) -> None:
    """SMPP 3.4 5.3.2.22-24: sar_msg_ref_num is 2 octets, sar_total_segments and
    sar_segment_seqnum 1. A data_sm (or deliver_sm) whose SAR TLVs carry more is not a part of
    a message we could ever complete: it was refused by the store on every resend (a ref over
    2^31-1 overflows PostgreSQL's INTEGER: ESME_RX_T_APPN for ever), or kept waiting for tens
    of thousands of parts (and a total of 2^32-1 would have built a list that size on each).
    It is read as a single message, as an inconsistent UDH header is."""
    clock = Clock()
    handler = inbound(store, clock)
    pdu = ShortMessage(
        source_addr_ton=1, source_addr=SRC, destination_addr=DEST,
        tlvs=((C.SAR_MSG_REF_NUM, ref), (C.SAR_TOTAL_SEGMENTS, total),
              (C.SAR_SEGMENT_SEQNUM, seq), (C.MESSAGE_PAYLOAD, b"hello")),
    )  # fmt: skip
    await deliver(handler, clock, NOW, pdu)
    assert handler.mo == 1
    assert await store.stale_mo_groups(NOW + HOUR, 10) == []
    from bridge.pipeline.inbound import mo_id_for
    from bridge.smpp.reassembly import Segment

    mo = await store.get_mo(mo_id_for("smscA", pdu, Segment(0, b"hello"), NOW))
    assert mo is not None and (mo.text, mo.parts_total) == ("hello", None)
