"""The sending rules and billing part of the Store contract, on every engine (store_engines.py).

The accept transaction decides with `admission.decide` on facts it read itself; these tests hold
both engines to the same answers: each refusal leaves nothing behind (no message, no ledger entry,
idempotency key and nonce free), a charge lands in the ledger with the message id, refunds happen
once per failed message, and concurrent sends cannot take more than the balance (on PostgreSQL
from two Store instances, as two daemon processes would).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.domain.admission import FrequencyRule, Priced, Rules  # noqa: E402
from bridge.domain.frequency import Limits  # noqa: E402
from bridge.domain.ledger import (  # noqa: E402
    Entry,
    EntryKind,
    card_purchase,
    grant_voucher,
    topup,
)
from bridge.store.base import LowBalance, Store, StoreError  # noqa: E402
from bridge.store.models import (  # noqa: E402
    AcceptBatch,
    AcceptOutcome,
    Account,
    AppKey,
    BillRow,
    DncInfo,
    IdempotencyRecord,
    MoMessage,
    NewMessage,
    NewSegment,
    ReceiptIn,
    Release,
    Sign,
    SubmitResult,
    TariffRow,
    Template,
)
from tests.store_engines import EngineHandle  # noqa: E402

# Module fixtures take precedence over tests/integration/conftest.py's API-server `store`.
engine = engines.engine
store = engines.store

NOW = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC: the next clock minute starts 40 s later
SEC = 1_000
MIN = 60 * SEC
DAY = 24 * 60 * MIN
LEASE = 5 * MIN
CN = "+8613800138000"
CN2 = "+8613900139000"
UK = "+447700900123"
CNY = 1_000_000  # micro-units


# ---------------------------------------------------------------- builders


def account(
    aid: str = "acc_a",
    *,
    kind: str = "prepaid",
    status_url: str | None = None,
    threshold: int = 0,
    daily_quota: int = 0,
    tps: int = 0,
) -> Account:
    return Account(
        id=aid,
        name=f"name-{aid}",
        kind=kind,
        tps=tps,
        daily_quota=daily_quota,
        status_callback_url=status_url,
        webhook_secret_enc=b"sealed",
        created_at=NOW,
        updated_at=NOW,
        low_balance_threshold=threshold,
    )


def message(
    mid: str,
    recipient: str = CN,
    *,
    account_id: str = "acc_a",
    parts: int = 1,
    at: int = NOW,
    sign: str | None = "Acme",
    template: str | None = None,
    kind: str | None = None,
    price_class: str | None = "D",
) -> NewMessage:
    return NewMessage(
        id=mid,
        account_id=account_id,
        batch_id="b_" + mid,
        recipient=recipient,
        encoding="gsm7",
        data_coding=0,
        billable_units=parts,
        segments=tuple(
            NewSegment(i, parts, 0x40 if parts > 1 else 0, f"{mid}/{i}".encode(), b"")
            for i in range(1, parts + 1)
        ),
        accepted_at=at,
        text=f"text of {mid}",
        client_ref="ref-" + mid,
        sign_name=sign,
        template=template,
        kind=kind,
        price_class=price_class,
    )


def charges(*msgs: NewMessage, amount: int = 100) -> tuple[Priced, ...]:
    return tuple(
        Priced(m.id, amount * m.billable_units, m.price_class not in (None, "D")) for m in msgs
    )


def batch(
    *msgs: NewMessage,
    rules: Rules | None,
    key: str | None = None,
    account_id: str = "acc_a",
) -> AcceptBatch:
    return AcceptBatch(
        account_id=account_id,
        messages=tuple(msgs),
        idempotency_key=key,
        idempotency=IdempotencyRecord(f"hash-{key}", 202, f"resp-{key}".encode()) if key else None,
        idempotency_expires_at=NOW + DAY,
        rules=rules,
    )


def billed(*msgs: NewMessage, amount: int = 100, **kw: object) -> Rules:
    """Rules of a billed send of `msgs` (sign Acme unless given), each at `amount` per unit."""
    base = Rules(sign_name="Acme", charges=charges(*msgs, amount=amount), billing=True)
    return replace(base, **kw)  # type: ignore[arg-type]


async def send(
    store: Store,
    *msgs: NewMessage,
    rules: Rules | None = None,
    key: str | None = None,
    now: int = NOW,
    amount: int = 100,
) -> AcceptOutcome:
    r = rules if rules is not None else billed(*msgs, amount=amount)
    return await store.accept(batch(*msgs, rules=r, key=key), now)


async def sign(
    store: Store, name: str = "Acme", status: str = "approved", aid: str = "acc_a"
) -> None:
    await store.add_sign(Sign(aid, name, name.lower(), "company", "", status, None, None, NOW))


async def funded(store: Store, amount: int = 1000, **kw: object) -> None:
    """acc_a with an approved sign "Acme" and `amount` micro-units of cash."""
    await store.create_account(account(**kw))  # type: ignore[arg-type]
    await sign(store)
    if amount:
        await store.append_ledger("acc_a", topup(amount, NOW, "funds"))


async def cash(store: Store, aid: str = "acc_a") -> int:
    return {p.pocket: p.amount for p in await store.get_pockets(aid)}.get("cash", 0)


async def ids(store: Store, aid: str = "acc_a") -> list[str]:
    return sorted(m.id for m in await store.list_messages(aid))


def sent(mid: str, seq: int = 1, smsc: str = "smscA") -> SubmitResult:
    ident = f"{mid}-{seq}"
    return SubmitResult(mid, seq, "sent", smsc, ident, ident, at=NOW)


def rcpt(msg_id: str, state: str = "delivered", smsc: str = "smscA") -> ReceiptIn:
    return ReceiptIn(smsc, msg_id, state, None, None, None, NOW + MIN, raw=f"id:{msg_id}")


async def deliver(store: Store, mid: str, state: str = "delivered", parts: int = 1) -> None:
    """Claim (everything queued), record every part of `mid` sent, apply a receipt per part."""
    await store.claim("inst-1", 1000, NOW + DAY, LEASE)
    await store.record_submits([sent(mid, s) for s in range(1, parts + 1)], [], NOW)
    await store.apply_receipts([rcpt(f"{mid}-{s}", state) for s in range(1, parts + 1)], NOW)


# ---------------------------------------------------------------- signs and templates


async def test_signs_add_get_list_review(store: Store) -> None:
    await store.add_sign(Sign("acc_a", "Acme", "acme", "company", "r", "pending", None, "x", NOW))
    await store.add_sign(Sign("acc_a", "Beta", "beta", "app", "", "pending", None, None, NOW + 1))
    await store.add_sign(Sign("acc_b", "Acme", "acme", "company", "", "pending", None, None, NOW))
    with pytest.raises(StoreError) as err:
        await store.add_sign(Sign("acc_a", "Acme", "acme", "app", "", "pending", None, None, NOW))
    assert err.value.code == "SIGN_NAME_EXISTS"
    got = await store.get_sign("acc_a", "Acme")
    assert got == Sign("acc_a", "Acme", "acme", "company", "r", "pending", None, "x", NOW, None)
    assert await store.get_sign("acc_a", "Nope") is None
    assert [(s.account_id, s.name) for s in await store.list_signs()] == [
        ("acc_a", "Acme"),
        ("acc_b", "Acme"),
        ("acc_a", "Beta"),
    ]
    assert [s.name for s in await store.list_signs("acc_a", limit=1)] == ["Acme"]
    reviewed = await store.review_sign("acc_a", "Beta", "rejected", "looks like Acme", NOW + 5)
    assert reviewed is not None
    assert (reviewed.status, reviewed.reason, reviewed.reviewed_at) == (
        "rejected",
        "looks like Acme",
        NOW + 5,
    )
    assert [s.name for s in await store.list_signs(status="pending")] == ["Acme", "Acme"]
    assert [s.name for s in await store.list_signs("acc_a", "rejected")] == ["Beta"]
    assert await store.review_sign("acc_a", "Nope", "approved", None, NOW) is None


async def test_templates_add_get_list_review(store: Store) -> None:
    t1 = Template("T1", "acc_a", "verification", "otp", "code ${code}", "", False, "pending",
                  None, NOW)  # fmt: skip
    t2 = Template("T2", "acc_a", "marketing", "promo", "sale ${url} TD", "r", True, "pending",
                  None, NOW + 1)  # fmt: skip
    t3 = replace(t1, code="T3", account_id="acc_b", created_at=NOW + 2)
    for t in (t2, t1, t3):
        await store.add_template(t)
    assert await store.get_template("T2") == t2
    assert (await store.get_template("T2")).allow_urls is True  # type: ignore[union-attr]
    assert await store.get_template("T9") is None
    assert [t.code for t in await store.list_templates()] == ["T1", "T2", "T3"]
    assert [t.code for t in await store.list_templates("acc_a")] == ["T1", "T2"]
    ok = await store.review_template("T1", "approved", None, NOW + 9)
    assert ok == replace(t1, status="approved", reviewed_at=NOW + 9)
    assert [t.code for t in await store.list_templates(status="pending")] == ["T2", "T3"]
    assert [t.code for t in await store.list_templates("acc_a", "approved", 5)] == ["T1"]
    assert await store.review_template("T9", "approved", None, NOW) is None


# ---------------------------------------------------------------- recipients


async def test_optouts_add_list_with_cursor_remove(store: Store) -> None:
    assert await store.add_optouts("acc_a", [CN2, CN, CN2], "mo", NOW) == 2
    assert await store.add_optouts("acc_a", [CN, UK], "api", NOW + 1) == 1
    assert await store.add_optouts("acc_b", [CN], "api", NOW) == 1
    page = await store.list_optouts("acc_a", limit=2)
    assert [(o.recipient, o.source, o.created_at) for o in page] == [
        (UK, "api", NOW + 1),
        (CN, "mo", NOW),
    ]
    rest = await store.list_optouts("acc_a", after=page[-1].recipient, limit=2)
    assert [o.recipient for o in rest] == [CN2]
    assert await store.remove_optout("acc_a", CN, sources=None) == "mo"
    assert await store.remove_optout("acc_a", CN, sources=None) is None
    assert [o.recipient for o in await store.list_optouts("acc_a")] == [UK, CN2]
    assert [o.recipient for o in await store.list_optouts("acc_b")] == [CN]


async def test_dnc_import_replace_delete_and_blocks(store: Store) -> None:
    info = DncInfo("L1", "regulator", "CN", 1, 1, NOW)
    await store.import_dnc(info, [CN], ["+861390"])
    assert await store.dnc_blocks(CN) is True  # exact number
    assert await store.dnc_blocks(CN2) is True  # by prefix +861390
    assert await store.dnc_blocks("+8613800138001") is False  # a neighbour of the exact number
    assert await store.dnc_blocks(UK) is False
    await store.import_dnc(DncInfo("L2", "uk", "GB", 0, 1, NOW), [], ["+4477009"])
    assert await store.dnc_blocks(UK) is True
    assert await store.list_dnc() == [info, DncInfo("L2", "uk", "GB", 0, 1, NOW)]
    # A re-import replaces the list: its old entries stop blocking.
    new = DncInfo("L1", "regulator v2", "CN", 1, 0, NOW + 1)
    await store.import_dnc(new, ["+8613800138001"], [])
    assert (await store.dnc_blocks(CN), await store.dnc_blocks(CN2)) == (False, False)
    assert await store.dnc_blocks("+8613800138001") is True
    assert (await store.list_dnc())[0] == new
    assert await store.delete_dnc("L2") is True
    assert await store.delete_dnc("L2") is False
    assert await store.dnc_blocks(UK) is False
    assert [d.id for d in await store.list_dnc()] == ["L1"]


# ---------------------------------------------------------------- tariffs and ledger


async def test_tariffs_add_list_and_versions_never_edited(store: Store) -> None:
    await store.add_tariff(TariffRow("v2", NOW + DAY, '{"v":2}', NOW))
    await store.add_tariff(TariffRow("v1", NOW, '{"v":1}', NOW))
    for dup in (TariffRow("v1", NOW + 5, "{}", NOW), TariffRow("v3", NOW, "{}", NOW)):
        with pytest.raises(StoreError) as err:
            await store.add_tariff(dup)
        assert err.value.code == "TARIFF_EXISTS"
    assert await store.list_tariffs() == [
        TariffRow("v1", NOW, '{"v":1}', NOW),
        TariffRow("v2", NOW + DAY, '{"v":2}', NOW),
    ]


async def test_append_ledger_and_pockets_agree_with_sums(store: Store) -> None:
    await store.create_account(account())
    card_end = card_purchase(999 * CNY, NOW, "c1")[0].expires_at
    entries = [
        *topup(500, NOW, "t1"),
        *grant_voucher(300, NOW, "v1", NOW + DAY),
        *card_purchase(999 * CNY, NOW, "c1"),
        Entry(EntryKind.CHARGE, -120, "cash", NOW + 1, "msg_1"),
        Entry(EntryKind.VOUCHER_SPEND, -50, "voucher:v1", NOW + 1, "msg_1", NOW + DAY),
    ]
    await store.append_ledger("acc_a", entries[:3])
    await store.append_ledger("acc_a", entries[3:])
    pockets = {p.pocket: (p.amount, p.expires_at) for p in await store.get_pockets("acc_a")}
    assert pockets == {
        "cash": (380, None),
        "voucher:v1": (250, NOW + DAY),
        "card:c1": (999 * CNY, card_end),
    }
    assert await store.ledger_sums("acc_a") == {k: v[0] for k, v in pockets.items()}
    page = await store.ledger_page("acc_a", limit=3)
    assert [(r.kind, r.amount, r.pocket, r.ref) for r in page] == [
        ("topup", 500, "cash", "t1"),
        ("voucher_grant", 300, "voucher:v1", "v1"),
        ("card_purchase", 999 * CNY, "card:c1", "c1"),
    ]
    rest = await store.ledger_page("acc_a", after_id=page[-1].id)
    assert [(r.kind, r.amount, r.at, r.expires_at) for r in rest] == [
        ("charge", -120, NOW + 1, None),
        ("voucher_spend", -50, NOW + 1, NOW + DAY),
    ]
    assert page[0].id < page[1].id < page[2].id < rest[0].id < rest[1].id
    with pytest.raises(StoreError) as err:
        await store.append_ledger("acc_nope", topup(1, NOW))
    assert err.value.code == "NOT_FOUND"
    assert await store.ledger_sums("acc_nope") == {}


# ---------------------------------------------------------------- accept: refusals


async def _refusal_case(store: Store, case: str) -> tuple[NewMessage, Rules, int]:
    """Set up acc_a so that the send returned is refused with `case`; (message, rules, now)."""
    await funded(store, 1000, daily_quota=2 if case == "DAILY_QUOTA_EXCEEDED" else 0)
    m = message("m_x")
    rules = billed(m)
    now = NOW
    if case == "SIGN_NAME_NOT_APPROVED":
        await sign(store, "Pend", "pending")
        m = message("m_x", sign="Pend")
        rules = billed(m, sign_name="Pend")
    elif case == "TEMPLATE_NOT_FOUND":
        m = message("m_x", template="T404", kind="notification")
        rules = billed(m, template_code="T404")
    elif case == "TEMPLATE_NOT_APPROVED":
        await store.add_template(
            Template("T1", "acc_a", "notification", "n", "hi", "", False, "pending", None, NOW)
        )
        m = message("m_x", template="T1", kind="notification")
        rules = billed(m, template_code="T1")
    elif case == "RECIPIENT_OPTED_OUT":
        await store.add_optouts("acc_a", [CN], "mo", NOW)
    elif case == "RECIPIENT_BLOCKED":
        await store.import_dnc(DncInfo("L1", "l", "CN", 0, 1, NOW), [], ["+86138"])
    elif case == "FREQUENCY_LIMIT_MINUTE":
        first = message("m_0", kind="verification")
        fr = FrequencyRule("verification", "Acme", None, Limits(1, 5, 10), "UTC", (CN,))
        assert (await send(store, first, rules=billed(first, frequency=fr))).accepted
        m = message("m_x", kind="verification", at=NOW + SEC)
        rules = billed(m, frequency=fr)
        now = NOW + SEC
    elif case == "DAILY_QUOTA_EXCEEDED":
        two = (message("m_0"), message("m_1", CN2))
        assert (await send(store, *two)).accepted
    elif case == "INSUFFICIENT_BALANCE":
        rules = billed(m, amount=1001)
    return m, rules, now


REFUSALS = [
    "SIGN_NAME_NOT_APPROVED",
    "TEMPLATE_NOT_FOUND",
    "TEMPLATE_NOT_APPROVED",
    "RECIPIENT_OPTED_OUT",
    "RECIPIENT_BLOCKED",
    "FREQUENCY_LIMIT_MINUTE",
    "DAILY_QUOTA_EXCEEDED",
    "INSUFFICIENT_BALANCE",
]


async def test_a_do_not_contact_list_blocks_from_its_import_to_its_deletion(store: Store) -> None:
    """One recipient, one statement: the prefixes are looked up only while some list is loaded
    (sqlite_rules._one_sql), so the same send passes with no list, is refused once a list
    covers the number, passes beside a list that does not, and passes again once it is gone."""
    await funded(store, 10_000)
    assert (await send(store, message("m_1"))).accepted
    await store.import_dnc(DncInfo("L1", "l", "CN", 0, 1, NOW), [], ["+86138"])
    out = await send(store, message("m_2"))
    assert out.refusal is not None and out.refusal.code == "RECIPIENT_BLOCKED"
    assert (await send(store, message("m_3", CN2))).accepted  # +86139: not covered
    assert await store.delete_dnc("L1")
    assert (await send(store, message("m_4"))).accepted
    assert [m.id for m in await store.list_messages("acc_a")] == ["m_4", "m_3", "m_1"]


LONGEST = "+861380013800012"  # 15 digits: the longest E.164 number
SHORTEST = "+4470012"  # 7 digits


@pytest.mark.parametrize("number", [LONGEST, SHORTEST])
async def test_every_prefix_of_a_number_blocks_its_one_recipient_send(
    store: Store, number: str
) -> None:
    """The one-recipient statement matches the entries the general path does (number_prefixes):
    each prefix of 5 characters up to the whole number, and the number's exact entry; the exact
    entry of a number one digit shorter, and a neighbour's prefix, do not block it (SQLite
    spells the prefixes in SQL from the number; PostgreSQL binds them)."""
    await funded(store, 10_000)
    blocking = [([], [number[:n]]) for n in range(5, len(number) + 1)] + [([number], [])]
    for i, (numbers, prefixes) in enumerate(blocking):
        info = DncInfo(f"L{i}", "l", None, len(numbers), len(prefixes), NOW)
        await store.import_dnc(info, numbers, prefixes)
        out = await send(store, message(f"m_{i}", number, price_class="+44"))
        assert out.refusal is not None and out.refusal.code == "RECIPIENT_BLOCKED", (i, info)
        assert await store.delete_dnc(f"L{i}")
    neighbour = number[:-1] + ("1" if number[-1] != "1" else "2")
    near = DncInfo("L_near", "l", None, 1, 1, NOW)
    await store.import_dnc(near, [number[:-1]], [neighbour])
    out = await send(store, message("m_ok", number, price_class="+44"))
    assert out.accepted, out.refusal
    assert [m.id for m in await store.list_messages("acc_a")] == ["m_ok"]


@pytest.mark.parametrize("case", REFUSALS)
async def test_each_refusal_leaves_nothing_written(store: Store, case: str) -> None:
    m, rules, now = await _refusal_case(store, case)
    before_ids, before_ledger = await ids(store), await store.ledger_page("acc_a")
    out = await store.accept(batch(m, rules=rules, key="k-x"), now)
    assert out.accepted is False
    assert out.refusal is not None and out.refusal.code == case
    assert out.refusal.message
    assert (out.plan, out.existing, out.auth_refusal) == (None, None, None)
    if case == "DAILY_QUOTA_EXCEEDED":
        assert out.refusal.retry_after is not None and out.refusal.retry_after > 0
    assert await ids(store) == before_ids
    assert await store.get_message("acc_a", "m_x") is None
    assert await store.ledger_page("acc_a") == before_ledger
    assert await store.get_idempotency("acc_a", "k-x", now) is None
    # Nothing counted either: the same request passes once the rules no longer refuse it.
    if case == "FREQUENCY_LIMIT_MINUTE":
        later = replace(m, accepted_at=NOW + 40 * SEC)  # the next clock minute
        assert (await store.accept(batch(later, rules=rules, key="k-x"), NOW + 40 * SEC)).accepted
    if case == "INSUFFICIENT_BALANCE":
        assert (await store.accept(batch(m, rules=billed(m, amount=1000), key="k-x"), now)).accepted
        assert await cash(store) == 0


async def test_refusal_reports_the_recipient_of_a_batch(store: Store) -> None:
    await funded(store)
    await store.add_optouts("acc_a", [CN2], "api", NOW)
    await store.import_dnc(DncInfo("L1", "l", None, 1, 0, NOW), [UK], [])
    msgs = (message("m1"), message("m2", UK, price_class="+44"), message("m3", CN2))
    out = await send(store, *msgs)
    # Opt-outs are checked before do-not-contact lists, whatever the order of recipients.
    assert out.refusal is not None and out.refusal.code == "RECIPIENT_OPTED_OUT"
    assert "to[2]" in out.refusal.message
    out = await send(store, *msgs[:2])
    assert out.refusal is not None and out.refusal.code == "RECIPIENT_BLOCKED"
    assert "to[1]" in out.refusal.message
    assert await ids(store) == []


async def test_frequency_scopes_by_kind_sign_and_template(store: Store) -> None:
    await funded(store)
    await sign(store, "Other")
    lim = Limits(1, 0, 0)

    def fr(kind: str, sgn: str | None, tpl: str | None = None) -> FrequencyRule:
        return FrequencyRule(kind, sgn, tpl, lim, "UTC", (CN,))

    async def go(mid: str, kind: str, sgn: str | None, tpl: str | None, mkind: str | None) -> str:
        m = message(mid, sign=sgn, template=tpl, kind=mkind)
        out = await send(
            store, m, rules=Rules(sign_name=sgn, frequency=fr(kind, sgn, tpl)), now=NOW
        )
        return "ok" if out.accepted else out.refusal.code  # type: ignore[union-attr]

    limit = "FREQUENCY_LIMIT_MINUTE"
    # verification: every verification template of the sign counts.
    assert await go("v1", "verification", "Acme", "T1", "verification") == "ok"
    assert await go("v2", "verification", "Acme", "T2", "verification") == limit
    assert await go("v3", "verification", "Other", "T1", "verification") == "ok"
    # template: per (sign, template); the verification sends above were T1 and T1.
    assert await go("t1", "template", "Acme", "T7", "notification") == "ok"
    assert await go("t2", "template", "Acme", "T7", "notification") == limit
    assert await go("t3", "template", "Acme", "T1", "notification") == limit  # v1 was Acme/T1
    # raw (free text): only free-text sends of the sign, no sign matching no sign.
    assert await go("r1", "raw", "Acme", None, None) == "ok"
    assert await go("r2", "raw", "Acme", None, None) == limit
    assert await go("r3", "raw", None, None, None) == "ok"
    assert await go("r4", "raw", None, None, None) == limit


async def test_every_sign_name_of_a_batch_must_be_approved(store: Store) -> None:
    await funded(store)
    await sign(store, "Beta", "pending")
    ms = (message("m1"), message("m2", CN2, sign="Beta"))
    rules = billed(*ms, more_signs=("Beta",))
    out = await send(store, *ms, rules=rules)
    assert out.refusal is not None and out.refusal.code == "SIGN_NAME_NOT_APPROVED"
    assert "'Beta' is pending" in out.refusal.message
    gone = await send(store, *ms, rules=billed(*ms, more_signs=("Gamma",)))
    assert gone.refusal is not None and "'Gamma' is not registered" in gone.refusal.message
    await store.review_sign("acc_a", "Beta", "approved", None, NOW)
    assert (await send(store, *ms, rules=rules)).accepted


async def test_frequency_counts_each_number_under_its_own_sign(store: Store) -> None:
    await funded(store)
    lim = Limits(1, 0, 0)

    async def go(*pairs: tuple[str, str, str]) -> str:
        msgs = tuple(message(mid, number, sign=sgn) for mid, number, sgn in pairs)
        fr = FrequencyRule(
            "raw",
            None,
            None,
            lim,
            "UTC",
            tuple(m.recipient for m in msgs),
            tuple(p[2] for p in pairs),
        )
        out = await send(store, *msgs, rules=Rules(frequency=fr))
        return "ok" if out.accepted else out.refusal.message  # type: ignore[union-attr]

    assert await go(("m1", CN, "Acme")) == "ok"
    assert await go(("m2", CN2, "Acme")) == "ok"
    assert await go(("m3", CN2, "Beta")) == "ok"
    refused = await go(("x1", CN, "Beta"), ("x2", CN2, "Acme"))
    assert refused.startswith(f"to[1] ({CN2}):"), refused
    assert await go(("x3", CN, "Beta"), ("x4", CN2, "Gamma")) == "ok"


async def test_rate_and_rules_in_one_transaction(store: Store) -> None:
    await funded(store)
    m1, m2 = message("m1"), message("m2")
    first = await store.accept(replace(batch(m1, rules=billed(m1), key="k1"), tps=1.0), NOW)
    assert first.accepted
    second = await store.accept(replace(batch(m2, rules=billed(m2), key="k2"), tps=1.0), NOW)
    assert (second.accepted, second.refusal) == (False, None)
    assert second.retry_after > 0
    assert await ids(store) == ["m1"]
    assert await cash(store) == 900
    assert await store.get_idempotency("acc_a", "k2", NOW) is None
    later = await store.accept(replace(batch(m2, rules=billed(m2), key="k2"), tps=1.0), NOW + SEC)
    assert later.accepted


# ---------------------------------------------------------------- accept: deferred authorisation


def key(kid: str = "K1") -> AppKey:
    return AppKey(kid, "acc_a", b"sealed", "active", NOW)


def signed(mid: str, nonce: str, *, key: str | None = None, kid: str = "K1",
           version: int | None = NOW, amount: int = 100) -> AcceptBatch:  # fmt: skip
    """POST /v1/messages as the API commits it: nonce, key and account checks, and the rules."""
    m = message(mid)
    idem = key or f"idem-{mid}"
    return AcceptBatch(
        "acc_a",
        (m,),
        idem,
        IdempotencyRecord(f"hash-{idem}", 202, f"resp-{idem}".encode()),
        NOW + DAY,
        key_id=kid,
        nonce=nonce,
        nonce_expires_at=NOW + 5 * MIN,
        account_version=version,
        rules=billed(m, amount=amount),
    )


async def test_send_path_with_rules_checks_key_account_and_nonce(store: Store) -> None:
    await funded(store)
    await store.add_key(key("K1"), max_active=2)
    assert (await store.accept(signed("m1", "n1"), NOW)).accepted
    replay = await store.accept(signed("m2", "n1"), NOW + 1)
    assert (replay.accepted, replay.auth_refusal) == (False, "nonce_reused")
    unknown = await store.accept(signed("m3", "n3", kid="nope"), NOW)
    assert (unknown.accepted, unknown.auth_refusal) == (False, "unknown_key")
    # The first request's idempotency key: its record comes back, the nonce is spent.
    dup = await store.accept(signed("m4", "n4", key="idem-m1"), NOW)
    assert dup.existing == IdempotencyRecord("hash-idem-m1", 202, b"resp-idem-m1")
    assert (await store.accept(signed("m5", "n4"), NOW)).auth_refusal == "nonce_reused"
    await store.update_account("acc_a", {"marketing": True}, NOW + 7)
    stale = await store.accept(signed("m6", "n6"), NOW)
    assert (stale.auth_refusal, stale.account and stale.account.updated_at) == ("stale", NOW + 7)
    # Refused by a rule: the nonce is not spent, so the request can be sent again as it is.
    poor = await store.accept(signed("m6", "n6", version=NOW + 7, amount=10_000), NOW)
    assert poor.refusal is not None and poor.refusal.code == "INSUFFICIENT_BALANCE"
    assert (await store.accept(signed("m6", "n6", version=NOW + 7), NOW)).accepted
    await store.update_account("acc_a", {"status": "disabled"}, NOW + 8)
    off = await store.accept(signed("m7", "n7", version=NOW + 8), NOW)
    assert (off.accepted, off.auth_refusal) == (False, "disabled")
    await store.update_account("acc_a", {"status": "active"}, NOW + 9)
    await store.revoke_key("K1", NOW + 9)
    gone = await store.accept(signed("m8", "n8", version=NOW + 9), NOW)
    assert (gone.accepted, gone.auth_refusal) == (False, "revoked")
    assert await ids(store) == ["m1", "m6"]
    # Both were still queued when the account was disabled: ended unsent then, and refunded.
    assert await cash(store) == 1000
    assert await store.use_nonce("K1", "n7", NOW + 5 * MIN, NOW) is True
    assert await store.use_nonce("K1", "n8", NOW + 5 * MIN, NOW) is True


@pytest.mark.parametrize("case", REFUSALS)
async def test_each_refusal_of_a_signed_accept(store: Store, case: str) -> None:
    """A signed send reads its facts with its key (SQLite: one statement for both): each rule
    refuses it as it refuses an unsigned one, its nonce is given back, and once the rule no
    longer refuses, the same request goes through."""
    m, rules, now = await _refusal_case(store, case)
    await store.add_key(key("K1"), max_active=2)
    b = replace(signed("m_x", "n_x"), messages=(m,), rules=rules)
    out = await store.accept(b, now)
    assert out.refusal is not None and out.refusal.code == case
    assert out.auth_refusal is None
    if case == "INSUFFICIENT_BALANCE":
        b = replace(b, rules=billed(m, amount=1000))
        assert (await store.accept(b, now)).accepted
        assert await cash(store) == 0
    else:
        assert await store.use_nonce("K1", "n_x", NOW + 5 * MIN, now) is True  # given back


async def test_a_signed_accept_reads_the_facts_of_its_own_account(store: Store) -> None:
    """Another account's key is unknown whatever that account's facts; a key of the account
    sees the facts of the account (its opt-outs, its day count), none of another's."""
    await funded(store, 10_000, daily_quota=1)
    await store.create_account(account("acc_b"))
    await store.add_key(replace(key("KB"), account_id="acc_b"), max_active=2)
    await store.add_key(key("K1"), max_active=2)
    await store.add_optouts("acc_b", [CN], "mo", NOW)
    other = await store.accept(signed("m_b", "n_b", kid="KB"), NOW)
    assert (other.accepted, other.auth_refusal) == (False, "unknown_key")
    assert (await store.accept(signed("m_1", "n_1"), NOW)).accepted  # acc_b's opt-out
    quota = await store.accept(signed("m_2", "n_2"), NOW)  # acc_a's quota of 1 a day
    assert quota.refusal is not None and quota.refusal.code == "DAILY_QUOTA_EXCEEDED"
    assert await ids(store) == ["m_1"]


async def test_a_replay_refused_twice_keeps_the_first_requests_records(store: Store) -> None:
    """A refused accept takes back only what it wrote itself: a replay (same nonce, same
    idempotency key) must not erase the nonce or the idempotency record of the request it
    replays, or a third copy would go through."""
    await funded(store)
    await store.add_key(key("K1"), max_active=2)
    assert (await store.accept(signed("r1", "rn1"), NOW)).accepted
    for i in range(3):
        again = await store.accept(signed(f"r1x{i}", "rn1", key="idem-r1"), NOW + 1 + i)
        assert (again.accepted, again.auth_refusal) == (False, "nonce_reused")
    # The idempotency record of r1 is still there for a retry with a fresh nonce.
    retry = await store.accept(signed("r1y", "rn2", key="idem-r1"), NOW + 5)
    assert retry.existing == IdempotencyRecord("hash-idem-r1", 202, b"resp-idem-r1")
    # And a refusal by a rule after both writes takes back its own nonce and key only.
    poor = await store.accept(signed("r2", "rn3", amount=10_000), NOW + 6)
    assert poor.refusal is not None and poor.refusal.code == "INSUFFICIENT_BALANCE"
    assert (await store.accept(signed("r2", "rn3"), NOW + 7)).accepted
    assert await ids(store) == ["r1", "r2"]


async def test_refused_signed_accepts_of_one_group_leave_no_trace(store: Store) -> None:
    """Signed accepts of one account that run together (one PostgreSQL transaction): a refused
    one takes back its nonce and idempotency record, so it can be sent again as it is; a replay
    of a nonce or an idempotency key of an earlier accept in the group is caught."""
    await funded(store)
    await store.add_key(key("K1"), max_active=2)
    outs = await asyncio.gather(
        store.accept(signed("g1", "gn1"), NOW),
        store.accept(signed("g2", "gn2", amount=10_000), NOW),  # more than the balance
        store.accept(signed("g3", "gn1"), NOW),  # g1's nonce
        store.accept(signed("g4", "gn4", key="idem-g1"), NOW),  # g1's idempotency key
        store.accept(signed("g5", "gn5"), NOW),
    )
    assert outs[0].accepted and outs[4].accepted
    assert outs[1].refusal is not None and outs[1].refusal.code == "INSUFFICIENT_BALANCE"
    assert (outs[2].accepted, outs[2].auth_refusal) == (False, "nonce_reused")
    assert outs[3].existing == IdempotencyRecord("hash-idem-g1", 202, b"resp-idem-g1")
    # g2's nonce and idempotency key were given back: the same request, affordable now, goes.
    again = await store.accept(signed("g2", "gn2"), NOW)
    assert again.accepted and again.existing is None
    assert await store.use_nonce("K1", "gn4", NOW + 5 * MIN, NOW) is False  # a replay spends it
    assert await ids(store) == ["g1", "g2", "g5"]
    assert await cash(store) == 1000 - 300


async def test_later_signed_accepts_of_a_group_see_the_earlier_ones(store: Store) -> None:
    """The later accepts of a group read their facts in their first statement (PostgreSQL): the
    messages, charges and day count of the earlier ones must be in them."""
    await funded(store, 300)
    await store.add_key(key("K1"), max_active=2)
    fr = FrequencyRule("verification", "Acme", None, Limits(1, 5, 10), "UTC", (CN,))

    def verify(mid: str, nonce: str, to: str) -> AcceptBatch:
        m = message(mid, to, kind="verification")
        b = signed(mid, nonce)
        return replace(b, messages=(m,), rules=billed(m, frequency=fr if to == CN else None))

    outs = await asyncio.gather(
        store.accept(verify("f1", "fn1", CN), NOW),
        store.accept(verify("f2", "fn2", CN), NOW),  # 1 a minute to CN: f1 was it
        store.accept(verify("f3", "fn3", CN2), NOW),
        store.accept(verify("f4", "fn4", CN2), NOW),
        store.accept(verify("f5", "fn5", CN2), NOW),  # 300 paid for three
    )
    assert [o.accepted for o in outs] == [True, False, True, True, False]
    assert outs[1].refusal is not None and outs[1].refusal.code == "FREQUENCY_LIMIT_MINUTE"
    assert outs[4].refusal is not None and outs[4].refusal.code == "INSUFFICIENT_BALANCE"
    assert await ids(store) == ["f1", "f3", "f4"]
    assert await cash(store) == 0


async def test_an_error_in_one_accept_of_a_group_fails_only_that_one(store: Store) -> None:
    """A database error in one accept (here a message id already taken) must not take the
    accepts it shared a transaction with down with it."""
    await funded(store, 10_000)
    assert (await send(store, message("d0", CN), key="d-0")).accepted
    msgs = [message(f"d{i}", f"+86138001300{i:02d}") for i in range(1, 6)]
    taken = message("d0", CN2)  # the id of the message above
    outs = await asyncio.gather(
        *(send(store, m, key=f"d-{i + 1}") for i, m in enumerate(msgs[:2])),
        send(store, taken, key="d-x"),
        *(send(store, m, key=f"d-{i + 3}") for i, m in enumerate(msgs[2:])),
        return_exceptions=True,
    )
    assert isinstance(outs[2], Exception)
    assert all(isinstance(o, AcceptOutcome) and o.accepted for o in outs[:2] + outs[3:]), outs
    assert await ids(store) == sorted(["d0", *(m.id for m in msgs)])
    assert await cash(store) == 10_000 - 100 * 6
    # Nothing of the failed request stayed: its idempotency key is free.
    assert (await send(store, message("d9", CN2), key="d-x")).accepted


# ---------------------------------------------------------------- accept: charges


async def test_accept_charges_with_message_refs_and_moves_pockets(store: Store) -> None:
    await funded(store, 1000)
    m1, m2 = message("m1"), message("m2", CN2, parts=2)
    out = await send(store, m1, m2, key="k1")
    assert out.accepted and out.plan is not None
    assert [(mid, e.kind, e.amount) for mid, e in out.plan.entries] == [
        ("m1", "charge", -100),
        ("m2", "charge", -200),
    ]
    assert out.plan.low_balance is None and out.plan.day == "2023-11-14"
    assert await ids(store) == ["m1", "m2"]
    rows = (await store.ledger_page("acc_a"))[1:]
    assert [(r.kind, r.amount, r.pocket, r.ref, r.at) for r in rows] == [
        ("charge", -100, "cash", "m1", NOW),
        ("charge", -200, "cash", "m2", NOW),
    ]
    assert await cash(store) == 700
    assert await store.ledger_sums("acc_a") == {"cash": 700}
    # Billing off: no entries, nothing moves (the day still counts).
    m3 = message("m3", price_class=None)
    off = await send(store, m3, rules=Rules(sign_name="Acme"))
    assert off.accepted and off.plan is not None and off.plan.entries == ()
    assert await cash(store) == 700


async def test_vouchers_are_spent_before_cash(store: Store) -> None:
    await funded(store, 1000)
    await store.append_ledger("acc_a", grant_voucher(150, NOW, "v1", NOW + DAY))
    m1, m2 = message("m1"), message("m2")
    assert (await send(store, m1)).accepted
    assert (await send(store, m2)).accepted
    rows = (await store.ledger_page("acc_a"))[2:]
    assert [(r.kind, r.amount, r.pocket, r.ref) for r in rows] == [
        ("voucher_spend", -100, "voucher:v1", "m1"),
        ("voucher_spend", -50, "voucher:v1", "m2"),
        ("charge", -50, "cash", "m2"),
    ]
    assert {p.pocket: p.amount for p in await store.get_pockets("acc_a")} == {
        "cash": 950,
        "voucher:v1": 0,
    }


async def test_postpaid_accrues_domestic_but_international_needs_funds(store: Store) -> None:
    await funded(store, 0, kind="postpaid")
    dom = message("m1")
    out = await send(store, dom, amount=300)
    # Domestic postpaid traffic is invoiced at settlement: accepted with no funds, no entry.
    assert out.accepted and out.plan is not None and out.plan.entries == ()
    assert await store.ledger_page("acc_a") == []
    intl = message("m2", UK, price_class="+44")
    refused = await send(store, intl)
    assert refused.refusal is not None and refused.refusal.code == "INSUFFICIENT_BALANCE"
    # A stored-value card pays international traffic (never domestic).
    await store.append_ledger("acc_a", card_purchase(999 * CNY, NOW, "c1"))
    assert (await send(store, intl)).accepted
    assert (await send(store, message("m3"), amount=10 * 999 * CNY)).accepted
    pockets = {p.pocket: p.amount for p in await store.get_pockets("acc_a")}
    assert pockets == {"card:c1": 999 * CNY - 100}


async def test_low_balance_crossing_enqueues_one_event(store: Store) -> None:
    await funded(store, 1000, status_url="https://cb.example/st", threshold=500)
    outs = []
    for i, amount in enumerate((300, 300, 100)):  # 700, 400 (crossing), 300
        m = message(f"m{i}")
        outs.append(await send(store, m, amount=amount))
    assert [o.plan.low_balance for o in outs if o.plan] == [None, (700, 400), None]
    jobs = await store.claim_webhooks(NOW + DAY, 100, LEASE)
    events = [j for j in jobs if j.kind == "event"]
    assert len(events) == 1
    body = json.loads(events[0].payload)
    assert (body["event"], body["available_micro"], body["previous_micro"]) == (
        "balance.low",
        400,
        700,
    )
    assert events[0].url == "https://cb.example/st"
    # A top-up above the threshold re-arms it; without a callback URL nothing is queued.
    await store.append_ledger("acc_a", topup(1000, NOW))  # 1300
    await store.update_account("acc_a", {"status_callback_url": None}, NOW)
    crossed = await send(store, message("m9"), amount=900)  # 1300 -> 400
    assert crossed.plan is not None and crossed.plan.low_balance == (1300, 400)
    assert [j for j in await store.claim_webhooks(NOW + DAY, 100, LEASE) if j.kind == "event"] == []


async def test_a_credit_that_ends_the_dip_clears_the_low_balance_mark(store: Store) -> None:
    """`rearm_low_balance`, on each engine: a credit that leaves the balance under the
    threshold keeps the mark (one warning per dip), one that brings it back to it clears it.
    Without the clearing the PostgreSQL money state machine passed (session 54, h4): a fall
    across the threshold warns whatever the mark says, and its falls mostly crossed."""

    async def mark() -> int | None:
        got = await store.get_account("acc_a")
        assert got is not None
        return got.low_balance_warned_at

    await funded(store, 1000, threshold=500)
    assert await mark() is None
    first = await send(store, message("m1"), amount=600)  # 1000 -> 400: warned
    assert first.plan is not None and first.plan.low_balance == (1000, 400)
    assert await mark() == NOW
    await store.append_ledger("acc_a", topup(50, NOW + MIN, "some"))  # 450: still in the dip
    assert await mark() == NOW
    await store.append_ledger("acc_a", topup(50, NOW + 2 * MIN, "more"))  # 500: the dip is over
    assert await mark() is None


# ---------------------------------------------------------------- refunds on receipts


async def test_failed_receipt_refunds_domestic_once(store: Store) -> None:
    await funded(store, 1000)
    assert (await send(store, message("m1"))).accepted
    assert await cash(store) == 900
    await deliver(store, "m1", "undeliverable")
    assert (await store.get_message("acc_a", "m1")).state == "failed"  # type: ignore[union-attr]
    assert await cash(store) == 1000
    await store.apply_receipts([rcpt("m1-1", "undeliverable")], NOW + 2 * MIN)
    await store.apply_receipts([rcpt("m1-1", "delivered")], NOW + 3 * MIN)
    assert await cash(store) == 1000
    rows = [r for r in await store.ledger_page("acc_a") if r.ref == "m1"]
    assert [(r.kind, r.amount) for r in rows] == [("charge", -100), ("refund", 100)]
    assert await store.ledger_sums("acc_a") == {"cash": 1000}


async def test_delivered_is_not_refunded(store: Store) -> None:
    await funded(store, 1000)
    await store.append_ledger("acc_a", grant_voucher(30, NOW, "v1", None))
    assert (await send(store, message("m1", parts=2))).accepted
    await deliver(store, "m1", "delivered", parts=2)
    assert (await store.get_message("acc_a", "m1")).state == "delivered"  # type: ignore[union-attr]
    assert {p.pocket: p.amount for p in await store.get_pockets("acc_a")} == {
        "cash": 830,
        "voucher:v1": 0,
    }


async def test_failed_refund_returns_voucher_portion_to_its_voucher(store: Store) -> None:
    await funded(store, 1000)
    await store.append_ledger("acc_a", grant_voucher(30, NOW, "v1", NOW + DAY))
    assert (await send(store, message("m1"))).accepted
    await deliver(store, "m1", "rejected")
    pockets = {p.pocket: p.amount for p in await store.get_pockets("acc_a")}
    assert pockets == {"cash": 1000, "voucher:v1": 30}
    assert await store.ledger_sums("acc_a") == pockets


async def test_international_refunds_the_parts_never_submitted(store: Store) -> None:
    await funded(store, 10_000)
    never = message("i1", UK, price_class="+44")
    half = message("i2", "+447700900124", parts=2, price_class="+44")
    assert (await send(store, never, half)).accepted  # 100 + 200
    await store.claim("inst-1", 10, NOW, LEASE)
    # i2's first part was accepted by the SMSC (its receipt even came before the submit_sm_resp)
    # and its second failed, in the same batch of results: final, half of it refunded.
    await store.apply_receipts([rcpt("i2-1", "delivered")], NOW)
    results = [
        SubmitResult("i1", 1, "failed", "smscA", error_code="ESME_RINVDSTADR", at=NOW),
        sent("i2", 1),
        SubmitResult("i2", 2, "failed", "smscA", error_code="ESME_RSUBMITFAIL", at=NOW),
    ]
    await store.record_submits(results, [], NOW)
    states = [(await store.get_message("acc_a", m)).state for m in ("i1", "i2")]  # type: ignore[union-attr]
    assert states == ["failed", "failed"]
    refunds = [(r.ref, r.amount) for r in await store.ledger_page("acc_a") if r.kind == "refund"]
    assert sorted(refunds) == [("i1", 100), ("i2", 100)]
    assert await cash(store) == 10_000 - 300 + 200
    # A repeated receipt changes nothing.
    await store.apply_receipts([rcpt("i2-1", "undeliverable")], NOW + MIN)
    assert await cash(store) == 10_000 - 100


# ---------------------------------------------------------------- settlement


async def test_usage_groups(store: Store) -> None:
    await funded(store, 10_000)
    await store.append_ledger("acc_a", grant_voucher(50, NOW, "v1", None))
    ms = [
        message("msg_1", at=NOW),
        message("msg_2", CN2, parts=2, at=NOW + 1),
        message("msg_3", "+8613700137000", at=NOW + 2),
        message("msg_4", UK, at=NOW + 3, price_class="+44"),
        message("msg_5", "+8613600136000", at=NOW + 4, price_class=None),
    ]
    for m in ms:
        assert (await send(store, m, now=m.accepted_at)).accepted
    await store.claim("inst-1", 10, NOW + DAY, LEASE)
    await store.record_submits(
        [sent("msg_1"), sent("msg_2", 1), sent("msg_2", 2), sent("msg_3")], [], NOW
    )
    await store.apply_receipts(
        [rcpt("msg_1-1"), rcpt("msg_2-1"), rcpt("msg_2-2"), rcpt("msg_3-1", "undeliverable")], NOW
    )
    start, end = NOW - DAY, NOW + DAY
    assert sorted(await store.usage_groups("acc_a", start, end, [])) == sorted(
        [
            (NOW, 3, 300, "D", 3, "delivered", 50, 2),  # m1 (voucher 50 + cash 50) and m2
            (NOW + 2, 1, 0, "D", 1, "failed", 0, 1),  # m3: charged, then refunded
            (NOW + 3, 1, 100, "+44", 0, "queued", 0, 1),
        ]
    )
    split = sorted(await store.usage_groups("acc_a", start, end, [NOW + 1]))
    assert split == sorted(
        [
            (NOW, 1, 100, "D", 1, "delivered", 50, 1),
            (NOW + 1, 2, 200, "D", 2, "delivered", 0, 1),
            (NOW + 2, 1, 0, "D", 1, "failed", 0, 1),
            (NOW + 3, 1, 100, "+44", 0, "queued", 0, 1),
        ]
    )
    assert await store.usage_groups("acc_a", NOW + 4, end, []) == []


async def test_save_bill_is_idempotent(store: Store) -> None:
    await funded(store, 1000)
    bill = BillRow("acc_a", "2023-11", '{"units":1}', NOW)
    adjust = [Entry(EntryKind.SETTLEMENT_ADJUSTMENT, 40, "cash", NOW, "2023-11")]
    assert await store.get_bill("acc_a", "2023-11") is None
    assert await store.save_bill(bill, adjust) is True
    ledger = await store.ledger_page("acc_a")
    assert await store.save_bill(replace(bill, body="{}", settled_at=NOW + 1), adjust) is False
    assert await store.ledger_page("acc_a") == ledger
    assert await store.get_bill("acc_a", "2023-11") == bill
    assert await cash(store) == 1040
    assert await store.save_bill(BillRow("acc_a", "2023-12", "{}", NOW), []) is True


async def test_concurrent_settlements_record_once(store: Store, engine: EngineHandle) -> None:
    await funded(store, 1000)
    other = engine.new_store() if engine.multi_instance else store
    if other is not store:
        await other.open()
    try:
        adjust = [Entry(EntryKind.SETTLEMENT_ADJUSTMENT, 40, "cash", NOW, "2023-11")]
        bill = BillRow("acc_a", "2023-11", "{}", NOW)
        done = await asyncio.gather(
            *(s.save_bill(bill, adjust) for s in (store, other, store, other))
        )
        assert sorted(done) == [False, False, False, True]
        assert await cash(store) == 1040
    finally:
        if other is not store:
            await other.close()


# ---------------------------------------------------------------- erasure


async def test_erase_recipient_masks_and_ends_queued_with_refund(store: Store) -> None:
    await funded(store, 1000)
    done, queued, other = message("m1"), message("m2", at=NOW + 1), message("m3", CN2)
    assert (await send(store, done)).accepted
    await deliver(store, "m1")
    assert (await send(store, queued, other)).accepted
    await store.store_mo(MoMessage("mo1", "acc_a", "smscA", CN, "1069", "hello", NOW))
    await store.store_mo(MoMessage("mo2", "acc_a", "smscA", CN2, "1069", "hi", NOW))
    assert await cash(store) == 700
    assert await store.erase_recipient("acc_a", CN, "+86138****8000", NOW + 5) == 2
    for mid in ("m1", "m2"):
        rec = await store.get_message("acc_a", mid)
        assert rec is not None
        assert (rec.recipient, rec.text, rec.client_ref) == ("+86138****8000", None, None)
    m1, m2 = await store.get_message("acc_a", "m1"), await store.get_message("acc_a", "m2")
    assert m1 is not None and m2 is not None
    assert (m1.state, m1.billable_units) == ("delivered", 1)
    assert (m2.state, m2.error_code, m2.done_at) == ("expired", "ERASED", NOW + 5)
    assert await cash(store) == 800  # m2 refunded, m1 (delivered) and m3 (queued) billed
    m3 = await store.get_message("acc_a", "m3")
    assert m3 is not None and (m3.recipient, m3.text, m3.state) == (CN2, "text of m3", "queued")
    # Nothing of the erased number is left to send.
    work = await store.claim("inst-1", 10, NOW + DAY, LEASE)
    assert [w.id for w in work] == ["m3"]
    mo1, mo2 = await store.get_mo("mo1"), await store.get_mo("mo2")
    assert mo1 is not None and (mo1.source, mo1.text) == ("+86138****8000", None)
    assert mo2 is not None and (mo2.source, mo2.text) == (CN2, "hi")
    assert await store.list_messages("acc_a", recipient=CN) == []
    assert await store.erase_recipient("acc_a", CN, "+86138****8000", NOW + 6) == 0


async def test_an_erased_message_in_flight_is_not_sent_again(store: Store) -> None:
    """Erased while claimed (on a bind, maybe waiting for a window slot): it cannot be recalled,
    but if it comes back to the queue its next claim must not send the blanked parts to the
    masked number: it comes back expired, and the dispatcher ends it so."""
    await funded(store, 1000)
    assert (await send(store, message("m1"))).accepted
    assert [w.id for w in await store.claim("inst-1", 10, NOW + 1, LEASE)] == ["m1"]
    assert await store.erase_recipient("acc_a", CN, "+86138****8000", NOW + 5) == 1
    await store.record_submits([], [Release("m1", NOW + 6, count_attempt=True)], NOW + 6)
    again = await store.claim("inst-1", 10, NOW + 10, LEASE)
    assert [(w.id, w.recipient) for w in again] == [("m1", "+86138****8000")]
    assert again[0].expires_at is not None and again[0].expires_at <= NOW + 5


IN_FLIGHT_ENDS = ["RECIPIENT_OPTED_OUT", "ACCOUNT_DISABLED", "SIGN_DELETED", "TEMPLATE_DELETED",
                  "ERASED"]  # fmt: skip


async def _end_while_claimed(store: Store, reason: str, at: int) -> None:
    if reason == "RECIPIENT_OPTED_OUT":
        await store.add_optouts("acc_a", [CN], "mo", at)
    elif reason == "ACCOUNT_DISABLED":
        await store.update_account("acc_a", {"status": "disabled"}, at)
    elif reason == "SIGN_DELETED":
        assert await store.delete_sign("acc_a", "Acme", at) == 0  # nothing queued: on a bind
    elif reason == "TEMPLATE_DELETED":
        assert await store.delete_template("acc_a", "T1", at) == 0
    else:
        assert await store.erase_recipient("acc_a", CN, "+86138****8000", at) == 1


async def _claimed_pair(store: Store) -> None:
    """m1 (3 parts, to CN) and m2 (to CN2, another sign and template) on a bind."""
    await funded(store, 1000)
    await sign(store, "Other")
    for code in ("T1", "T2"):
        await store.add_template(
            Template(code, "acc_a", "notification", code, "hi", "", False, "approved", None, NOW)
        )
    m1 = message("m1", parts=3, template="T1", kind="notification")
    m2 = message("m2", CN2, sign="Other", template="T2", kind="notification")
    assert (await send(store, m1, rules=billed(m1, template_code="T1"))).accepted
    assert (await send(store, m2, rules=billed(m2, sign_name="Other", template_code="T2"))).accepted
    assert sorted(w.id for w in await store.claim("inst-1", 10, NOW + 1, LEASE)) == ["m1", "m2"]


@pytest.mark.parametrize("reason", IN_FLIGHT_ENDS)
async def test_a_message_ended_on_a_bind_is_not_sent_when_it_comes_back(
    store: Store, reason: str
) -> None:
    """An opt-out, a disable, a sign or template deleted, an erasure while a message is on a
    bind: it cannot be recalled, but its first part throttled (released to retry), its next
    claim finds it expired and the dispatcher ends the rest unsent with the reason, refunded
    for what never went out. Before, the retry sent the parts to a number that had opted out,
    for an account disabled. The other message on the bind, untouched by the action, is sent."""
    await _claimed_pair(store)
    await _end_while_claimed(store, reason, NOW + 5)
    # m1's first part went out, its second was throttled; m2 went out whole.
    await store.record_submits(
        [sent("m1", 1), sent("m2", 1)], [Release("m1", NOW + 6, count_attempt=True)], NOW + 6
    )
    again = await store.claim("inst-1", 10, NOW + 10, LEASE)
    assert [w.id for w in again] == ["m1"]
    w = again[0]
    assert w.expires_at is not None and w.expires_at <= NOW + 5
    await store.record_submits(
        [SubmitResult("m1", s.seq, "expired", "", at=NOW + 10) for s in w.segments], [], NOW + 10
    )
    m1 = await store.get_message("acc_a", "m1")
    assert m1 is not None and (m1.state, m1.error_code, m1.segments_sent) == ("sent", reason, 1)
    assert await store.claim("inst-1", 10, NOW + DAY, LEASE) == []
    m2 = await store.get_message("acc_a", "m2")
    assert m2 is not None and (m2.state, m2.error_code) == ("sent", None)


@pytest.mark.parametrize("reason", ["RECIPIENT_OPTED_OUT", "ACCOUNT_DISABLED"])
async def test_the_sweep_ends_a_returned_message_with_its_reason(store: Store, reason: str) -> None:
    """Released with nothing sent and never claimed again (its route down): the sweep ends it
    with the reason too, once its hold is over, and refunds it whole."""
    await _claimed_pair(store)
    await _end_while_claimed(store, reason, NOW + 5)
    await store.record_submits(
        [sent("m2", 1)], [Release("m1", NOW + 6, count_attempt=True)], NOW + 6
    )
    before = await cash(store)
    await store.sweep(NOW + MIN, receipt_timeout_ms=DAY)
    m1 = await store.get_message("acc_a", "m1")
    assert m1 is not None and (m1.state, m1.error_code) == ("expired", reason)
    assert await cash(store) == before + 300
    assert await store.claim("inst-1", 10, NOW + DAY, LEASE) == []


async def test_an_end_while_on_a_bind_keeps_the_first_reason_and_a_delivery(store: Store) -> None:
    """Two ends while on a bind keep the first reason; a message whose parts all went out
    is delivered as usual (nothing came back to the queue)."""
    await _claimed_pair(store)
    await _end_while_claimed(store, "ACCOUNT_DISABLED", NOW + 5)
    await _end_while_claimed(store, "RECIPIENT_OPTED_OUT", NOW + 6)
    await store.record_submits(
        [sent("m1", 1), sent("m1", 2), sent("m1", 3), sent("m2", 1)], [], NOW + 7
    )
    await store.apply_receipts([rcpt("m2-1")], NOW + 8)
    m2 = await store.get_message("acc_a", "m2")
    assert m2 is not None and (m2.state, m2.error_code) == ("delivered", None)
    await store.record_submits([], [], NOW + 9)
    m1 = await store.get_message("acc_a", "m1")
    assert m1 is not None and (m1.state, m1.error_code) == ("sent", None)


async def test_a_cancel_leaves_a_message_on_a_bind_alone(store: Store) -> None:
    """A cancel answers for what it ended: a message on a bind is not canceled, and a throttle
    then sends it as before (the API said it was not canceled)."""
    await _claimed_pair(store)
    assert await store.cancel_queued("acc_a", NOW + 5, message_id="m1") == (0, 1)
    await store.record_submits([], [Release("m1", NOW + 6, count_attempt=True)], NOW + 6)
    again = await store.claim("inst-1", 10, NOW + 10, LEASE)
    assert [w.id for w in again] == ["m1"] and again[0].expires_at is None


async def test_close_account(store: Store) -> None:
    await funded(store, 1000, status_url="https://cb.example/st")
    await store.add_key(key("K1"), max_active=2)
    await store.add_optouts("acc_a", [CN2], "api", NOW)
    assert (await send(store, message("m1"), key="k1")).accepted
    assert await store.close_account("acc_a", NOW + 5) is not None
    acc = await store.get_account("acc_a")
    assert acc is not None
    assert (acc.status, acc.active, acc.status_callback_url, acc.updated_at) == (
        "closed",
        False,
        None,
        NOW + 5,
    )
    k = await store.get_key("K1")
    assert k is not None and (k.status, k.revoked_at) == ("revoked", NOW + 5)
    assert await store.list_optouts("acc_a") == []
    assert await store.get_idempotency("acc_a", "k1", NOW) is None
    rec = await store.get_message("acc_a", "m1")
    assert rec is not None
    assert (rec.recipient, rec.text, rec.state, rec.error_code) == (
        "+***",
        None,
        "expired",
        "ERASED",
    )
    # The unsent message was refunded, then the cash written off as owed back (session 36);
    # billing history stays: top-up, charge, refund, closed.
    assert await cash(store) == 0
    ledger = await store.ledger_page("acc_a")
    assert [(str(e.kind), e.amount) for e in ledger][-1] == ("closed", -1000)
    assert len(ledger) == 4
    assert await store.claim_webhooks(NOW + DAY, 100, LEASE) == []  # nothing pushed any more
    assert await store.close_account("acc_nope", NOW) is None


async def test_a_closed_account_takes_no_update_and_no_key(store: Store) -> None:
    """Closing is final, in the store's own transaction (not a check before it): an update
    leaves the row as it is (the caller sees status closed) and a new key is refused."""
    await funded(store, 1000)
    assert await store.close_account("acc_a", NOW + 5) is not None
    after = await store.update_account("acc_a", {"status": "active", "tps": 7}, NOW + 6)
    assert after is not None and (after.status, after.updated_at) == ("closed", NOW + 5)
    assert after.tps != 7
    with pytest.raises(StoreError) as info:
        await store.add_key(key("K9"), max_active=2)
    assert info.value.code == "ACCOUNT_CLOSED"
    assert await store.get_key("K9") is None


async def test_a_closed_account_takes_no_money(store: Store) -> None:
    """Session 35 finance review 5: refused in append_ledger's own transaction, with or without
    a payment ref, so the admin API and the CLI both get ACCOUNT_CLOSED."""
    await funded(store, 1000)
    assert await store.close_account("acc_a", NOW + 5) is not None
    before = await store.ledger_sums("acc_a")
    for entries, once in (
        (topup(5 * CNY, NOW + 6, "BANK-9"), True),
        (topup(5 * CNY, NOW + 6), False),
        (grant_voucher(CNY, NOW + 6, "v1", None), False),
        (card_purchase(999 * CNY, NOW + 6, "c1", ref="SHOP-1"), True),
    ):
        with pytest.raises(StoreError) as info:
            await store.append_ledger("acc_a", entries, once=once)
        assert info.value.code == "ACCOUNT_CLOSED", entries
    assert await store.ledger_sums("acc_a") == before


async def test_a_payment_ref_is_credited_once_and_not_reused(store: Store) -> None:
    """Session 35 finance review 3 and 4: the same kind and amount again is a retry (nothing
    appended); another amount, or the ref on another kind, is PAYMENT_REF_REUSED."""
    await funded(store, 0)
    assert await store.append_ledger("acc_a", topup(500 * CNY, NOW, "BANK-7731"), once=True)
    assert not await store.append_ledger("acc_a", topup(500 * CNY, NOW + 1, "BANK-7731"), once=True)
    for entries in (
        topup(1_000 * CNY, NOW + 2, "BANK-7731"),
        card_purchase(999 * CNY, NOW + 2, "c9", ref="BANK-7731"),
    ):
        with pytest.raises(StoreError) as info:
            await store.append_ledger("acc_a", entries, once=True)
        assert info.value.code == "PAYMENT_REF_REUSED"
        assert "'BANK-7731'" in info.value.message and "500.00" in info.value.message
    sale = card_purchase(999 * CNY, NOW, "c1", ref="SHOP-88")
    assert await store.append_ledger("acc_a", sale, once=True)
    again = card_purchase(999 * CNY, NOW + 3, "c2", ref="SHOP-88")  # a new id: the retry's
    assert not await store.append_ledger("acc_a", again, once=True)
    grant = grant_voucher(CNY, NOW, "v1", None, "PROMO-1")
    assert await store.append_ledger("acc_a", grant, once=True)
    assert not await store.append_ledger("acc_a", grant, once=True)
    assert await store.ledger_sums("acc_a") == {
        "cash": 500 * CNY,
        "card:c1": 999 * CNY,
        "voucher:v1": CNY,
    }
    rows = await store.ledger_page("acc_a")
    assert [(r.kind, r.ref) for r in rows] == [
        ("topup", "BANK-7731"),
        ("card_purchase", "SHOP-88"),
        ("voucher_grant", "PROMO-1"),
    ]


async def test_the_sweep_reports_the_low_balance_crossing_a_voucher_expiry_made(
    store: Store,
) -> None:
    """Session 35 finance review 2: the crossing comes back with its account and amounts, for
    the daemon to log as a send's is (the event is queued by the sweep itself)."""
    await store.create_account(account(threshold=500_000, status_url="https://cb.example/st"))
    await store.append_ledger("acc_a", topup(100_000, NOW))
    await store.append_ledger("acc_a", grant_voucher(CNY, NOW, "v1", NOW + MIN))
    swept = await store.sweep(NOW + MIN - 1, receipt_timeout_ms=DAY)
    assert (swept["vouchers_lapsed"], swept["low_balance"]) == (0, [])
    swept = await store.sweep(NOW + MIN, receipt_timeout_ms=DAY)
    assert swept["vouchers_lapsed"] == 1 and swept["balance_warnings"] == 1
    assert swept["low_balance"] == [LowBalance("acc_a", 1_100_000, 100_000)]
    assert (await store.sweep(NOW + 2 * MIN, receipt_timeout_ms=DAY))["low_balance"] == []


# ---------------------------------------------------------------- races


@pytest.fixture
async def stores(store: Store, engine: EngineHandle) -> AsyncIterator[list[Store]]:
    """The test's store, plus (PostgreSQL) a second instance on the same database."""
    if not engine.multi_instance:
        yield [store]
        return
    other = engine.new_store()
    await other.open()
    try:
        yield [store, other]
    finally:
        await other.close()


async def test_concurrent_sends_take_exactly_the_affordable(stores: list[Store]) -> None:
    store = stores[0]
    n, k, price = 16, 5, 100
    await funded(store, k * price)
    msgs = [message(f"m{i:02d}", f"+861380013{i:04d}") for i in range(n)]
    outs = await asyncio.gather(
        *(send(stores[i % len(stores)], m, key=f"k{i}") for i, m in enumerate(msgs))
    )
    accepted = [m.id for m, o in zip(msgs, outs, strict=True) if o.accepted]
    assert len(accepted) == k
    codes = {o.refusal.code for o in outs if o.refusal is not None}
    assert codes == {"INSUFFICIENT_BALANCE"}
    assert await ids(store) == sorted(accepted)
    assert await cash(store) == 0
    assert await store.ledger_sums("acc_a") == {"cash": 0}
    running = 0
    for row in await store.ledger_page("acc_a", limit=1000):  # in commit order: never below 0
        running += row.amount
        assert running >= 0
    charged = sorted(r.ref for r in await store.ledger_page("acc_a") if r.kind == "charge")
    assert charged == sorted(accepted)


async def test_concurrent_sends_to_one_number_pass_a_minute_limit_once(
    stores: list[Store],
) -> None:
    store = stores[0]
    await funded(store, 10_000)
    fr = FrequencyRule("verification", "Acme", None, Limits(1, 5, 10), "UTC", (CN,))
    msgs = [message(f"v{i}", kind="verification") for i in range(8)]
    outs = await asyncio.gather(
        *(
            send(stores[i % len(stores)], m, rules=billed(m, frequency=fr))
            for i, m in enumerate(msgs)
        )
    )
    assert sum(o.accepted for o in outs) == 1
    assert {o.refusal.code for o in outs if o.refusal} == {"FREQUENCY_LIMIT_MINUTE"}
    assert await cash(store) == 10_000 - 100


async def test_concurrent_sends_of_one_account_stay_independent(store: Store) -> None:
    """Accepts of one account that run together (one transaction on PostgreSQL, each in its own
    savepoint) keep their own fate: a refused one, an idempotent replay and the accepted ones."""
    await funded(store, 10_000)
    await store.add_optouts("acc_a", ["+8613800139999"], "api", NOW)
    first = message("m00", "+8613800130000")
    assert (await send(store, first, key="k-dup")).accepted
    msgs = [message(f"m{i:02d}", f"+86138001300{i:02d}") for i in range(1, 9)]
    opted = message("mopt", "+8613800139999")
    replay = message("mrep", "+8613800138888")  # same idempotency key as `first`
    outs = await asyncio.gather(
        *(send(store, m, key=f"k{i}") for i, m in enumerate(msgs)),
        send(store, opted, key="k-opt"),
        send(store, replay, key="k-dup"),
    )
    assert all(o.accepted for o in outs[: len(msgs)])
    assert outs[-2].refusal is not None and outs[-2].refusal.code == "RECIPIENT_OPTED_OUT"
    assert not outs[-1].accepted and outs[-1].existing is not None  # replayed, not re-accepted
    assert await ids(store) == sorted(["m00", *(m.id for m in msgs)])
    assert await cash(store) == 10_000 - 100 * (1 + len(msgs))
    assert await store.ledger_sums("acc_a") == {"cash": 10_000 - 100 * (1 + len(msgs))}


async def test_an_accept_without_a_nonce_still_checks_the_account_it_was_validated_against(
    store: Store,
) -> None:
    """The Alibaba face records its nonce (reading the account) before its action runs and
    accepts with `account_version` alone: an account changed or disabled in between is refused in
    the accept's transaction with nothing written, as on the native face. Until session 18 the
    store did not look, so a send a moment after a disable was queued and went out."""
    await funded(store)
    m = [message(f"m{i}", f"+861380013800{i}") for i in range(1, 6)]
    ok = await store.accept(replace(batch(m[0], rules=billed(m[0])), account_version=NOW), NOW)
    assert ok.accepted
    await store.update_account("acc_a", {"marketing": True}, NOW + 7)
    stale = await store.accept(replace(batch(m[1], rules=billed(m[1])), account_version=NOW), NOW)
    assert (stale.accepted, stale.auth_refusal) == (False, "stale")
    assert stale.account is not None and stale.account.updated_at == NOW + 7
    plain = replace(batch(m[2], rules=None), account_version=NOW)  # without rules: the same
    assert (await store.accept(plain, NOW)).auth_refusal == "stale"
    assert await cash(store) == 1000 - 100  # m1 only
    await store.update_account("acc_a", {"status": "disabled"}, NOW + 8)  # m1 ended, refunded
    for mm, rules in ((m[3], billed(m[3])), (m[4], None)):
        off = await store.accept(replace(batch(mm, rules=rules), account_version=NOW + 8), NOW)
        assert (off.accepted, off.auth_refusal, off.account) == (False, "disabled", None)
    assert [r.id for r in await store.list_messages("acc_a", limit=10)] == ["m1"]
    assert (await cash(store), await store.ledger_sums("acc_a")) == (1000, {"cash": 1000})
