"""Long random sequences of money operations against a model of the service rules.

The examples elsewhere check chosen cases; this drives the real HTTP API and the real store (each
engine of tests/store_engines.py: SQLite always, PostgreSQL under SMPP_BRIDGE_CI) through random
sequences of top-ups, vouchers, stored-value cards, domestic and international sends, submits,
receipts, time passing (the daemon's sweep), tariff versions, month settlements, account kind
changes, low-balance thresholds, closes and refund payouts (with payment refs and retries). A
plain-Python model, written from /work/shared/spec/service-rules.md and README.md "Sending rules
and billing" (not from the code), says what every pocket, every ledger kind's sum, every refusal,
every bill (open and settled) and every balance.low event must be; after each step the store
must agree to the micro-unit, and `bill check` must pass.

The pipeline is driven through the store as the dispatcher and the receipt handler drive it.
Each example starts on a fresh database (SQLite: a copy of a migrated file; PostgreSQL: one
migrated database, its rows and sequences put back as the migration left them,
tests/pg_cluster.py's Snapshot).
Raise the run with `MONEY_EXAMPLES=500 MONEY_STEPS=50`; `MONEY_NO_SHRINK=1` reports a failure as
found (shrinking one takes minutes); `MONEY_SHOW=1 pytest -s` prints what the examples reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import os
import shutil
import sys
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bridge.store.models import ReceiptIn, SubmitResult  # noqa: E402
from tests.integration.conftest import ApiServer, Clock, Creds, start_api  # noqa: E402

TZ = "Asia/Shanghai"  # the shipped rules.timezone
ZONE = ZoneInfo(TZ)
SMSC = "main"
LEASE = 300_000
HOUR = 3_600_000
HOOK = "https://example.com/hook"
RECEIPT_TIMEOUT = 72 * HOUR
VALIDITY_MIN = 120  # every send's validity: a message never submitted ends `expired` after it
START = int(datetime(2026, 3, 10, 12, 0, tzinfo=ZONE).timestamp() * 1000)

# Version 1: small tiers, so a few messages cross them; prices in whole fen (an invoice is exact).
V1_TIERS = ((2, 40_000), (4, 30_000), (None, 20_000))
V1_START = 45_000
INTL_V1 = 50_000
OVERRIDES = {
    "billing": {
        "tariff": {
            "tiers": [{"up_to": u, "price": p} for u, p in V1_TIERS],
            "starting_price": V1_START,
            "international": {f"+{d}": INTL_V1 for d in range(1, 10)},
        }
    },
    "rules": {"timezone": TZ},
}
# Later versions a step may add: (start, tiers, international price per segment).
LATER = (
    (50_000, ((1, 40_000), (3, 20_000), (None, 10_000)), 60_000),
    (45_000, ((3, 30_000), (None, 20_000)), 40_000),
)
TEXTS = {2: "hi", 100: "x" * 100, 200: "y" * 200}  # length -> text (GSM-7, no sign)

EXAMPLES = int(os.environ.get("MONEY_EXAMPLES", "0") or 0)
STEPS = int(os.environ.get("MONEY_STEPS", "30"))
SEEN: Counter[str] = Counter()  # what the examples reached: printed with MONEY_SHOW=1


def event(what: str) -> None:
    """Counted for MONEY_SHOW: hypothesis's own statistics are not shown for a state machine
    run inside a test, and a rule no example reaches is a rule the test does not check."""
    SEEN[what] += 1


# -- the rules, as the model reads them -----------------------------------------------------------


def domestic_units(n: int) -> int:
    """Service rules: 1 if n <= 70 else ceil(n / 67)."""
    return 1 if n <= 70 else math.ceil(n / 67)


def gsm_segments(n: int) -> int:
    """GSM-7: 160 septets in one part, 153 per part when concatenated."""
    return 1 if n <= 160 else math.ceil(n / 153)


def month_of(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, ZONE).strftime("%Y-%m")


def month_end(month: str) -> int:
    y, m = int(month[:4]), int(month[5:7])
    y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return int(datetime(y, m, 1, tzinfo=ZONE).timestamp() * 1000)


def tier_of(units: int, tiers: tuple[tuple[int | None, int], ...]) -> tuple[int, int]:
    """(1-based tier, price) the month's total reaches: all units at that price."""
    for i, (up_to, p) in enumerate(tiers, start=1):
        if up_to is None or units <= up_to:
            return i, p
    raise AssertionError("unbounded last tier")


def fen_round(micro: int) -> int:
    """An invoice in whole fen, half up."""
    whole, rest = divmod(micro, 10_000)
    return (whole + (rest * 2 >= 10_000)) * 10_000


@dataclass
class Version:
    name: str
    effective_at: int
    start: int
    tiers: tuple[tuple[int | None, int], ...]
    intl: int


@dataclass
class Msg:
    id: str
    account: str
    domestic: bool
    units: int
    segments: int
    at: int
    version: Version
    price: int  # what it was charged (or, postpaid domestic, accrued) at acceptance
    paid: list[tuple[str, int]]  # (pocket, micro) it was charged from
    state: str = "queued"
    net: int | None = None  # international: what it cost once its unsent parts came back
    parts: list[str] = field(default_factory=list)  # SMSC ids
    sent_at: int | None = None

    @property
    def pending(self) -> bool:
        return self.state in ("queued", "sent")


@dataclass
class Account:
    creds: Creds
    kind: str
    closed: bool = False
    pockets: Counter[str] = field(default_factory=Counter)
    expiry: dict[str, int | None] = field(default_factory=dict)
    kinds: Counter[str] = field(default_factory=Counter)
    bills: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The low-balance warning, watched on accounts prepaid all their life (the README's rule is
    # for a prepaid balance): threshold, warned (`low_balance_warned_at` set), events due.
    threshold: int = 0
    watch: bool = False
    warned: bool = False
    events: list[tuple[int, int]] = field(default_factory=list)
    # Payment refs: money in (kind, amount) and payouts (amount), each recorded once.
    refs: dict[str, tuple[str, int]] = field(default_factory=dict)
    payouts: dict[str, int] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.creds.account.id

    def valid(self, pocket: str, now: int) -> bool:
        exp = self.expiry.get(pocket)
        return exp is None or now < exp

    def domestic(self, now: int) -> int:
        """The balance the threshold watches: cash and valid vouchers."""
        return self.pockets["cash"] + sum(
            v for p, v in self.pockets.items() if family(p) == "voucher" and self.valid(p, now)
        )

    def seen(self) -> int:
        """The domestic balance as last seen: vouchers that expired since still in it."""
        return self.pockets["cash"] + sum(
            v for p, v in self.pockets.items() if family(p) == "voucher" and v > 0
        )

    def fell(self, before: int, after: int) -> None:
        """A charge or an expiry took the balance from `before` to `after`: one warning per
        dip below the threshold, and a crossing from at or above it always warns."""
        if not self.watch or not self.threshold or after >= before or after >= self.threshold:
            return
        if not self.warned or before >= self.threshold:
            self.events.append((before, after))
            self.warned = True

    def credited(self, now: int) -> None:
        """A top-up, voucher or settlement refund back to or over the threshold clears it."""
        if self.domestic(now) >= self.threshold:
            self.warned = False

    def credit(self, kind: str, pocket: str, amount: int) -> None:
        self.pockets[pocket] += amount
        self.kinds[kind] += amount


def family(pocket: str) -> str:
    return pocket.split(":", 1)[0]


# -- the server, one per example, on the test's engine --------------------------------------------


class Harness:
    """An event loop thread (hypothesis drives synchronously) and a fresh database per example."""

    def __init__(self, engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self.engine = engine
        self.tmp_path = tmp_path
        self.n = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.cluster: Any = None
        self.database: str | None = None
        if engine == "sqlite":
            # A migrated file each example starts on a copy of: migrating a new one took
            # 0.05-0.15 s, 80 times a run.
            self.template_file = tmp_path / "migrated.db"
            self.run(self._migrate_file(self.template_file))
        if engine == "postgres":
            from tests.pg_cluster import create_database, new_database_name, take_snapshot

            self.cluster = request.getfixturevalue("pg_cluster")
            self.database = new_database_name("money")
            self.dsn = self.run(create_database(self.cluster, self.database))
            self.run(self._migrate(self.dsn))
            self.snapshot = self.run(take_snapshot(self.dsn))

    async def _migrate(self, dsn: str) -> None:
        from bridge.store.postgres import PostgresStore

        s = PostgresStore(dsn, min_size=1, max_size=2)
        await s.open()
        await s.close()

    async def _migrate_file(self, path: Path) -> None:
        from bridge.store.sqlite import SqliteStore

        s = SqliteStore(str(path))
        await s.open()
        await s.close()

    def copy_template(self, to: Path) -> None:
        assert not self.template_file.with_name("migrated.db-wal").exists(), "not all in the file"
        shutil.copyfile(self.template_file, to)

    def run(self, coro: Awaitable[Any], timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def start(self, clock: Clock) -> tuple[ApiServer, Callable[[], None]]:
        self.n += 1
        path = self.tmp_path / f"ex{self.n}"
        path.mkdir()
        if self.engine == "sqlite":
            self.copy_template(path / "bridge.db")  # build_config's store.path
            api = self.run(start_api(path, clock, OVERRIDES))

            def cleanup() -> None:
                self.run(api.close())
                shutil.rmtree(path, ignore_errors=True)

            return api, cleanup
        from bridge.store.postgres import PostgresStore
        from tests.pg_cluster import restore_snapshot

        # The one database, put back as the migration left it (rows and sequences).
        self.run(restore_snapshot(self.dsn, self.snapshot))
        store = PostgresStore(self.dsn, min_size=1, max_size=4)
        api = self.run(start_api(path, clock, OVERRIDES, store=store))

        def cleanup_pg() -> None:
            self.run(api.close())

        return api, cleanup_pg

    def close(self) -> None:
        if self.database is not None:
            from tests.pg_cluster import drop_database

            self.run(drop_database(self.cluster, self.database))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# -- the machine ----------------------------------------------------------------------------------


class MoneyMachine(RuleBasedStateMachine):
    harness: ClassVar[Harness]

    accounts = Bundle("accounts")

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.clock.freeze(START / 1000)
        self.api, self._cleanup = self.harness.start(self.clock)
        self.accts: dict[str, Account] = {}
        self.msgs: dict[str, Msg] = {}
        self.versions = [Version("v1", 0, V1_START, V1_TIERS, INTL_V1)]
        self.numbers = 0
        self.later_added = 0

    def teardown(self) -> None:
        event(f"messages per example: {min(len(self.msgs) // 5 * 5, 30):2d}+")
        self._cleanup()

    # -- plumbing --

    def run(self, coro: Awaitable[Any]) -> Any:
        return self.harness.run(coro)

    @property
    def now(self) -> int:
        return int(self.clock() * 1000)

    def version_at(self, at: int) -> Version:
        return max((v for v in self.versions if v.effective_at <= at), key=lambda v: v.effective_at)

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        kw = {} if body is None else {"json": body}
        return self.run(self.api.admin(method, path, **kw))

    def tick(self) -> None:
        """One second on: no two money events share a millisecond (the spend order of two
        pockets expiring at the same instant is not a rule)."""
        self.clock.advance(1)

    # -- model operations --

    def lapse(self, a: Account, families: tuple[str, ...] = ("voucher", "card")) -> None:
        """Service rules: an expired voucher's (card's) remainder is void."""
        for pocket, amount in list(a.pockets.items()):
            if family(pocket) in families and amount > 0 and not a.valid(pocket, self.now):
                a.credit(f"{family(pocket)}_expire", pocket, -amount)

    def give_back(
        self, a: Account, paid: list[tuple[str, int]], refund_kind: dict[str, str]
    ) -> None:
        """Back to the pockets it came from; a voucher's or card's expired meanwhile is void, and
        whatever a closed account is credited leaves the books as owed or void."""
        for pocket, amount in paid:
            fam = family(pocket)
            a.credit(refund_kind[fam], pocket, amount)
            if fam != "cash" and not a.valid(pocket, self.now):
                a.credit(f"{fam}_expire", pocket, -amount)
            elif a.closed:
                a.credit("closed" if fam == "cash" else f"{fam}_void", pocket, -amount)

    def refund_msg(self, m: Msg) -> None:
        kinds = {"cash": "refund", "voucher": "voucher_refund", "card": "card_refund"}
        self.give_back(self.accts[m.account], m.paid, kinds)

    def plan(self, a: Account, price: int, domestic: bool) -> list[tuple[str, int]] | None:
        """Vouchers first (earliest expiry first), then cards (international only), then cash;
        None when they do not cover the price."""
        now = self.now

        def order(fam: str) -> list[str]:
            ps = [p for p, v in a.pockets.items() if family(p) == fam and v > 0 and a.valid(p, now)]
            return sorted(ps, key=lambda p: (a.expiry[p] is None, a.expiry[p] or 0))

        sources = order("voucher") + ([] if domestic else order("card")) + ["cash"]
        out, left = [], price
        for p in sources:
            take = min(left, max(0, a.pockets[p]))
            if take:
                out.append((p, take))
                left -= take
        return None if left else out

    # -- rules: accounts and money in --

    @initialize(
        target=accounts,
        kind=st.sampled_from(["prepaid", "postpaid"]),
        cash=st.sampled_from([2_000_000, 300_000, 100_000, 0]),
        threshold=st.sampled_from([0, 200_000, 1_000_000]),
    )
    def first_account(self, kind: str, cash: int, threshold: int = 0) -> str:
        acct = self.new_account(kind, threshold)
        if cash:
            self.topup(acct, cash)
        return acct

    @initialize(
        target=accounts,
        kind=st.sampled_from(["prepaid", "postpaid"]),
        cash=st.sampled_from([200_000, 0, 1_000_000]),
        voucher=st.sampled_from([100_000, 60_000]),
        hours=st.sampled_from([3, 30, 24 * 40, None]),
    )
    def second_account(self, kind: str, cash: int, voucher: int, hours: int | None) -> str:
        acct = self.first_account(kind, cash)
        self.voucher(acct, voucher, hours)
        return acct

    @rule(
        target=accounts,
        kind=st.sampled_from(["prepaid", "postpaid"]),
        threshold=st.sampled_from([0, 100_000]),
    )
    def new_account(self, kind: str, threshold: int = 0) -> str:
        settings: dict[str, Any] = {"kind": kind}
        if kind == "prepaid" and threshold:
            settings.update(low_balance_threshold=threshold, status_callback_url=HOOK)
        creds = self.run(self.api.create_account(ready=False, **settings))
        a = Account(creds, kind, threshold=threshold, watch=bool(threshold) and kind == "prepaid")
        self.accts[a.id] = a
        return a.id

    @rule(
        acct=accounts,
        what=st.one_of(
            st.tuples(
                st.just("topup"),
                st.sampled_from([1_000_000, 10_000, 45_000, 100_000]),
                st.sampled_from([None, "pay-A", "pay-B"]),
            ),
            st.tuples(
                st.just("voucher"),
                st.sampled_from([20_000, 45_000, 60_000, 100_000]),
                st.sampled_from([1, 3, 30, 24 * 40, None]),
            ),
            st.tuples(
                st.just("card"),
                st.sampled_from([999_000_000, 1_999_000_000]),
                st.sampled_from([None, "pay-A", "pay-B"]),
            ),
        ),
    )
    def money_in(self, acct: str, what: tuple[Any, ...]) -> None:
        getattr(self, what[0])(acct, *what[1:])

    def paid_in(self, a: Account, r: Any, kind: str, amount: int, ref: str | None) -> bool:
        """Whether money in was credited: a payment ref is recorded once per account, whatever
        the kind; the same again is a retry (200, nothing credited), another amount or kind
        a conflict (409 PAYMENT_REF_REUSED); a closed account takes nothing."""
        seen = a.refs.get(ref) if ref is not None else None
        outcomes = set()
        if a.closed:
            outcomes.add((409, "ACCOUNT_CLOSED"))
        if seen is not None:
            outcomes.add((200, None) if seen == (kind, amount) else (409, "PAYMENT_REF_REUSED"))
        if not outcomes:
            outcomes.add((201, None))
        assert (r.status, r.code) in outcomes, (r.status, r.json, outcomes)
        if r.status == 200:
            assert r.json["added"] == [] and r.json["duplicate_ref"] == ref, r.json
        if r.status != 201:
            return False
        if ref is not None:
            a.refs[ref] = (kind, amount)
        return True

    def topup(self, acct: str, amount: int, ref: str | None = None) -> None:
        a = self.accts[acct]
        self.tick()
        body: dict[str, Any] = {"amount_micro": amount}
        if ref is not None:
            body["ref"] = ref
        r = self.admin("POST", f"/admin/accounts/{acct}/topups", body)
        if not self.paid_in(a, r, "topup", amount, ref):
            return
        a.credit("topup", "cash", amount)
        a.credited(self.now)

    def voucher(self, acct: str, amount: int, hours: int | None) -> None:
        a = self.accts[acct]
        self.tick()
        expires = None if hours is None else self.now + hours * HOUR
        r = self.admin(
            "POST",
            f"/admin/accounts/{acct}/vouchers",
            {"amount_micro": amount, "expires_at": expires},
        )
        if a.closed:
            assert (r.status, r.code) == (409, "ACCOUNT_CLOSED"), r.json
            return
        assert r.status == 201, r.json
        (added,) = r.json["added"]
        assert added["expires_at"] == expires
        a.expiry[added["pocket"]] = expires
        a.credit("voucher_grant", added["pocket"], amount)
        a.credited(self.now)

    def card(self, acct: str, face: int, ref: str | None = None) -> None:
        a = self.accts[acct]
        self.tick()
        body: dict[str, Any] = {"face_value_micro": face}
        if ref is not None:
            body["ref"] = ref
        r = self.admin("POST", f"/admin/accounts/{acct}/cards", body)
        if not self.paid_in(a, r, "card_purchase", face, ref):
            return
        (added,) = r.json["added"]
        # Valid for one year from purchase (in the deployment's zone).
        bought = datetime.fromtimestamp(self.now / 1000, ZONE)
        year_on = bought.replace(year=bought.year + 1)
        assert added["expires_at"] == int(year_on.timestamp() * 1000), (added, self.now)
        a.expiry[added["pocket"]] = added["expires_at"]
        a.credit("card_purchase", added["pocket"], face)

    @rule(acct=accounts)
    def switch_kind(self, acct: str) -> None:
        a = self.accts[acct]
        if a.closed:
            return
        kind = "postpaid" if a.kind == "prepaid" else "prepaid"
        a.watch = False  # the warning is a prepaid balance's; no rule for one that switched
        r = self.admin("PATCH", f"/admin/accounts/{acct}", {"kind": kind})
        assert r.status == 200, r.json
        a.kind = kind

    @rule(acct=accounts, threshold=st.sampled_from([50_000, 300_000, 2_000_000]))
    def set_threshold(self, acct: str, threshold: int) -> None:
        """A new threshold is a new dip to warn of: the mark is cleared."""
        a = self.accts[acct]
        if not a.watch or threshold == a.threshold:
            return
        r = self.admin("PATCH", f"/admin/accounts/{acct}", {"low_balance_threshold": threshold})
        assert r.status == 200, r.json
        a.threshold, a.warned = threshold, False

    # -- rules: sending --

    def _number(self, domestic: bool) -> str:
        self.numbers += 1
        return f"+86138{self.numbers:08d}" if domestic else f"+1202555{self.numbers:04d}"

    @rule(
        acct=accounts,
        sends=st.lists(
            st.tuples(
                st.sampled_from([(True,), (False,), (False, True), (True, True)]),
                st.sampled_from(sorted(TEXTS)),
            ),
            min_size=2,
            max_size=6,
        ),
    )
    def sends(self, acct: str, sends: list[tuple[tuple[bool, ...], int]]) -> None:
        for recipients, length in sends:
            self.send(acct, recipients, length)

    def send(self, acct: str, recipients: tuple[bool, ...], length: int) -> None:
        a = self.accts[acct]
        self.tick()
        to = [self._number(d) for d in recipients]
        body = {"to": to if len(to) > 1 else to[0], "text": TEXTS[length]}
        body["validity_minutes"] = VALIDITY_MIN
        r = self.run(self.api.send(a.creds, body))
        if a.closed:
            assert r.status in (401, 403), (r.status, r.json)
            return
        # Vouchers and cards that expired since the last sweep are void (the plan skips them);
        # an accepted send writes them off, else the sweep does (within seconds, in the daemon).
        before = a.seen()
        lapsing = Account(a.creds, a.kind, pockets=Counter(a.pockets), expiry=a.expiry)
        self.lapse(lapsing)
        v = self.version_at(self.now)
        units, segs = domestic_units(length), gsm_segments(length)
        # A batch is accepted or refused whole; its domestic messages are charged first.
        order = sorted(range(len(to)), key=lambda i: not recipients[i])
        trial = Account(a.creds, a.kind, pockets=Counter(lapsing.pockets), expiry=a.expiry)
        plans: dict[int, tuple[int, list[tuple[str, int]]]] = {}
        refused = False
        for i in order:
            domestic = recipients[i]
            price = v.start * units if domestic else v.intl * segs
            if domestic and a.kind == "postpaid":
                plans[i] = (price, [])
                continue
            p = self.plan(trial, price, domestic)
            if p is None:
                refused = True
                break
            for pocket, amount in p:
                trial.pockets[pocket] -= amount
            plans[i] = (price, p)
        event(f"send {a.kind} {recipients} {'refused' if refused else 'accepted'}")
        if refused:
            assert (r.status, r.code) == (402, "INSUFFICIENT_BALANCE"), (r.status, r.json)
            return
        self.lapse(a)
        assert r.status == 202, (r.status, r.json)
        kinds = {"cash": "charge", "voucher": "voucher_spend", "card": "card_spend"}
        for i, m in enumerate(r.json["messages"]):
            domestic = recipients[i]
            # International tariffs count transmitted segments.
            want = (to[i], segs, units if domestic else segs)
            assert (m["to"], m["segments"], m["billable_units"]) == want, m
            price, paid = plans[i]
            for pocket, amount in paid:
                a.credit(kinds[family(pocket)], pocket, -amount)
            self.msgs[m["id"]] = Msg(m["id"], acct, domestic, units, segs, self.now, v, price, paid)
        a.fell(before, a.domestic(self.now))

    @rule(acct=accounts, n=st.integers(2, 5), length=st.sampled_from(sorted(TEXTS)))
    def sends_together(self, acct: str, n: int, length: int) -> None:
        """`n` one-recipient domestic sends of one account at once (asyncio.gather): the store
        takes them in one write batch when they meet there (SQLite holds the batch's daily
        count and pocket sums for its end: session 53). Sent together only when each one the
        model accepts is charged alike, so their order in the batch cannot matter: as many are
        accepted as the balance covers, whichever they are, the others refused for it; else
        one after another."""
        a = self.accts[acct]
        self.tick()
        lapsing = Account(a.creds, a.kind, pockets=Counter(a.pockets), expiry=a.expiry)
        self.lapse(lapsing)
        price = self.version_at(self.now).start * domestic_units(length)
        trial = Account(a.creds, a.kind, pockets=Counter(lapsing.pockets), expiry=a.expiry)
        plans = []
        for _ in range(n):
            p = [] if a.kind == "postpaid" else self.plan(trial, price, True)
            if p is None:
                break
            for pocket, amount in p:
                trial.pockets[pocket] -= amount
            plans.append(p)
        if a.closed or any(p != plans[0] for p in plans):
            for _ in range(n):
                self.send(acct, (True,), length)
            return
        to = [self._number(True) for _ in range(n)]
        body = {"text": TEXTS[length], "validity_minutes": VALIDITY_MIN}
        store = self.api.store
        commits = getattr(getattr(store, "_runner", None), "commits", None)

        async def all_at_once() -> list[Any]:
            return list(
                await asyncio.gather(*(self.api.send(a.creds, {**body, "to": t}) for t in to))
            )

        replies = self.run(all_at_once())
        if commits is not None:
            event(f"sends together: {n} in {store._runner.commits - commits} commits")
        refused = [r for r in replies if r.status != 202]
        for r in refused:
            assert (r.status, r.code) == (402, "INSUFFICIENT_BALANCE"), (r.status, r.json)
        assert len(replies) - len(refused) == len(plans), [r.status for r in replies]
        event(f"sends together: {len(refused)} of {n} refused")
        if not plans:
            return  # none accepted: none writes an expired pocket off (as `send`)
        before = a.seen()  # as `send`: an expiry and the first charge are one fall
        self.lapse(a)
        kinds = {"cash": "charge", "voucher": "voucher_spend", "card": "card_spend"}
        v = self.version_at(self.now)
        units, segs = domestic_units(length), gsm_segments(length)
        accepted = [r for r in replies if r.status == 202]
        for r, p in zip(accepted, plans, strict=True):
            (m,) = r.json["messages"]
            assert (m["segments"], m["billable_units"]) == (segs, units), m
            for pocket, amount in p:
                a.credit(kinds[family(pocket)], pocket, -amount)
            self.msgs[m["id"]] = Msg(m["id"], acct, True, units, segs, self.now, v, price, p)
            a.fell(before, a.domestic(self.now))
            before = a.seen()

    @rule(data=st.data())
    def submit(self, data: st.DataObject) -> None:
        """The dispatcher: every due message claimed; the SMSC accepts or refuses each."""
        now = self.now
        work = self.run(self.api.store.claim("inst", 1000, now, LEASE))
        due = {m.id for m in self.msgs.values() if m.state == "queued"}
        assert {w.id for w in work} == due
        results = []
        # In the order they were sent (ids are random: hypothesis must replay the same draws).
        for w in sorted(work, key=lambda w: list(self.msgs).index(w.id)):
            m = self.msgs[w.id]
            accepted = data.draw(st.booleans(), label=f"SMSC accepts {w.id}")
            # An international message's later parts may be refused after its first went out.
            first_only = (
                accepted
                and not m.domestic
                and len(w.segments) > 1
                and data.draw(st.booleans(), label=f"SMSC refuses the rest of {w.id}")
            )
            for s in w.segments:
                if accepted and not (first_only and s.seq > 1):
                    ident = f"S-{w.id}-{s.seq}"
                    m.parts.append(ident)
                    results.append(SubmitResult(w.id, s.seq, "sent", SMSC, ident, ident, at=now))
                else:
                    results.append(
                        SubmitResult(
                            w.id, s.seq, "failed", SMSC, error_code="ESME_RINVDSTADR", at=now
                        )
                    )
            if accepted:
                m.state, m.sent_at = "sent", now
            else:
                # Never reached anyone: refunded, domestic and international alike.
                m.state = "failed"
                self.refund_msg(m)
        self.run(self.api.store.record_submits(results, [], now, instance="inst"))

    @precondition(lambda self: any(m.state == "sent" for m in self.msgs.values()))
    @rule(data=st.data(), delivered=st.booleans())
    def receipt(self, data: st.DataObject, delivered: bool) -> None:
        sent = [m.id for m in self.msgs.values() if m.state == "sent"]
        self._receipt(self.msgs[data.draw(st.sampled_from(sent), label="message")], delivered)

    @precondition(lambda self: any(m.pending for m in self.msgs.values()))
    @rule(data=st.data())
    def traffic_ends(self, data: st.DataObject) -> None:
        """Everything waiting is submitted and every message sent gets its receipt."""
        self.submit(data)
        for m in list(self.msgs.values()):
            if m.state == "sent":
                delivered = data.draw(
                    st.sampled_from([True, True, False]), label=f"{m.id} delivered"
                )
                self._receipt(m, delivered)

    @precondition(lambda self: any(m.parts and not m.pending for m in self.msgs.values()))
    @rule(data=st.data(), delivered=st.booleans())
    def receipt_again(self, data: st.DataObject, delivered: bool) -> None:
        """A carrier repeats a receipt, or contradicts one, after the message ended: its
        outcome was decided once, and nothing is charged or given back twice."""
        done = [m.id for m in self.msgs.values() if m.parts and not m.pending]
        m = self.msgs[data.draw(st.sampled_from(done), label="message")]
        now = self.now
        state, stat = ("delivered", "DELIVRD") if delivered else ("undeliverable", "UNDELIV")
        receipts = [ReceiptIn(SMSC, p, state, stat, None, now, now, raw=f"id:{p}") for p in m.parts]
        self.run(self.api.store.apply_receipts(receipts, now))

    def _receipt(self, m: Msg, delivered: bool) -> None:
        now = self.now
        state, stat = ("delivered", "DELIVRD") if delivered else ("undeliverable", "UNDELIV")
        receipts = [ReceiptIn(SMSC, p, state, stat, None, now, now, raw=f"id:{p}") for p in m.parts]
        self.run(self.api.store.apply_receipts(receipts, now))
        m.state = "delivered" if delivered else "failed"
        if not delivered and m.domestic:
            self.refund_msg(m)  # domestic is billed on delivery; international on submission
        self.unsent_parts_back(m)

    def unsent_parts_back(self, m: Msg) -> None:
        """International is billed per submitted segment: the share of the parts the SMSC
        refused comes back when the message is final (its receipt, or none in 72 h). Which of
        the pockets it was paid from gets it is not a rule: cash first, then cards, then
        vouchers (the product's choice; the test avoids depending on it beyond that)."""
        if m.domestic or not 0 < len(m.parts) < m.segments:
            return
        charged = sum(x for _, x in m.paid)
        left = charged * (m.segments - len(m.parts)) // m.segments
        back = []
        for pocket, x in sorted(
            m.paid, key=lambda px: (["cash", "card", "voucher"].index(family(px[0])), px[0])
        ):
            take = min(left, x)
            if take:
                back.append((pocket, take))
                left -= take
        kinds = {"cash": "refund", "voucher": "voucher_refund", "card": "card_refund"}
        self.give_back(self.accts[m.account], back, kinds)
        m.net = charged - sum(x for _, x in back)

    # -- rules: time --

    def _sweep(self) -> None:
        now = self.now
        self.run(self.api.store.sweep(now, RECEIPT_TIMEOUT))
        for m in self.msgs.values():
            if m.state == "queued" and now >= m.at + VALIDITY_MIN * 60_000:
                m.state = "expired"
                self.refund_msg(m)
            elif m.state == "sent" and m.sent_at is not None and m.sent_at <= now - RECEIPT_TIMEOUT:
                m.state = "unknown"  # no receipt in 72 h: billed
                self.unsent_parts_back(m)
        for a in self.accts.values():
            before = a.seen()
            self.lapse(a)
            a.fell(before, a.domestic(now))

    @rule(hours=st.sampled_from([1, 2, 5, 24, 73]))
    def advance(self, hours: int) -> None:
        self.clock.advance(hours * 3600)
        self._sweep()

    def next_month(self, minutes: int) -> None:
        """To just after the next month's start (in the deployment's zone)."""
        end = month_end(month_of(self.now))
        self.clock.freeze((end + minutes * 60_000) / 1000)
        self._sweep()

    @rule(
        what=st.sampled_from(["month", "tariff", "voucher", "settle"]),
        offset=st.sampled_from([-1, 0]),
    )
    def edge(self, what: str, offset: int) -> None:
        """To the millisecond before, or at, the next month's start, a tariff version's effective
        time, a voucher's (card's) expiry or the first moment a month may be settled: a voucher
        is valid while now < its expiry, a version is in force from its effective time, a month
        starts at local midnight and is settled from 10 minutes after."""
        now = self.now
        if what == "month":
            at = month_end(month_of(now))
        elif what == "settle":  # the first moment a month may be settled
            at = month_end(month_of(now - 10 * 60_000)) + 10 * 60_000
        elif what == "tariff":
            at = min((v.effective_at for v in self.versions if v.effective_at > now), default=0)
        else:
            expiries = [e for a in self.accts.values() for e in a.expiry.values() if e]
            at = min((e for e in expiries if e > now), default=0)
        if at + offset <= now:
            return
        self.clock.freeze((at + offset) / 1000)
        assert self.now == at + offset
        self._sweep()

    @precondition(lambda self: self.later_added < len(LATER))
    @rule(hours=st.sampled_from([1, 24, 24 * 25]))
    def tariff(self, hours: int) -> None:
        start, tiers, intl = LATER[self.later_added]
        self.later_added += 1
        latest = max(v.effective_at for v in self.versions)
        at = max(self.now + hours * HOUR, latest + HOUR)
        name = f"v{len(self.versions) + 1}"
        body = {
            "version": name,
            "effective_at": at,
            "starting_price": start,
            "tiers": [{"up_to": u, "price": p} for u, p in tiers],
            "international": {f"+{d}": intl for d in range(1, 10)},
        }
        r = self.admin("POST", "/admin/tariffs", body)
        assert r.status == 201, r.json
        self.versions.append(Version(name, at, start, tiers, intl))

    # -- rules: settlement, close, payouts --

    @rule(data=st.data(), minutes=st.sampled_from([10, 60 * 74]))
    def month_ends(self, data: st.DataObject, minutes: int) -> None:
        """The month's traffic ends, the month ends, and it is settled for every account."""
        if any(m.pending for m in self.msgs.values()):
            self.traffic_ends(data)
        self.next_month(minutes)
        for acct in list(self.accts):
            self.settle(acct, 1)

    def expected_bill(
        self, a: Account, month: str, *, open_: bool = False
    ) -> dict[str, Any] | None:
        """The month's bill by the rules; None while a message of it awaits its outcome (an
        open month's bill leaves those out, counted apart)."""
        mine = [m for m in self.msgs.values() if m.account == a.id and month_of(m.at) == month]
        if any(m.pending for m in mine) and not open_:
            return None
        mine = [m for m in mine if not m.pending]
        billed = [m for m in mine if m.domestic and m.state in ("delivered", "unknown")]
        total = sum(m.units for m in billed)
        amount = sum(m.units * tier_of(total, m.version.tiers)[1] for m in billed)
        charged = sum(sum(x for _, x in m.paid) for m in billed)  # the others were refunded
        intl = [m for m in mine if not m.domestic and m.parts]
        intl_amount = sum(len(m.parts) * m.version.intl for m in intl)
        intl_charged = sum(sum(x for _, x in m.paid) if m.net is None else m.net for m in intl)
        refund = max(0, charged - amount)
        owed = max(0, amount - charged) + max(0, intl_amount - intl_charged)
        # Each voucher: what it paid above the tier price (per version), the rest to cash.
        over: dict[str, Fraction] = {}
        for m in billed:
            price = tier_of(total, m.version.tiers)[1]
            for pocket, x in m.paid:
                if family(pocket) == "voucher":
                    share = Fraction(x * (m.version.start - price), m.version.start)
                    over[pocket] = over.get(pocket, Fraction()) + share
        shares = {p: math.floor(x) for p, x in over.items()}
        if sum(shares.values()) > refund:
            t = sum(shares.values())
            shares = {p: n * refund // t for p, n in shares.items()}
        return {
            "units": total,
            "domestic_amount_micro": amount,
            "charged_micro": charged,
            "refund_micro": refund,
            "invoice_total_micro": fen_round(owed),
            "international_amount_micro": intl_amount,
            "international_charged_micro": intl_charged,
            "refund_vouchers_micro": sum(n for p, n in shares.items() if a.valid(p, self.now)),
            "refund_void_micro": sum(n for p, n in shares.items() if not a.valid(p, self.now)),
            "refund_cash_micro": refund - sum(shares.values()),
            "_shares": shares,
        }

    @rule(
        acct=accounts,
        amount=st.sampled_from([60_000, 100_000, 200_000]),
        hours=st.sampled_from([None, 30]),
        lengths=st.lists(st.sampled_from(sorted(TEXTS)), min_size=2, max_size=6),
        data=st.data(),
    )
    def voucher_month(
        self,
        acct: str,
        amount: int,
        hours: int | None,
        lengths: list[int],
        data: st.DataObject,
    ) -> None:
        """A month that vouchers paid part of, all its messages ended, settled: the path where
        each voucher's share of the refund (whole micro-units, the rest to cash) is decided."""
        self.voucher(acct, amount, hours)
        for n in lengths:
            self.send(acct, (True,), n)
        self.month_ends(data, 10)

    @rule(acct=accounts)
    def open_bill(self, acct: str) -> None:
        """The month so far: priced as settlement would, messages awaiting an outcome apart."""
        a, month = self.accts[acct], month_of(self.now)
        if month in a.bills:
            return
        want = self.expected_bill(a, month, open_=True)
        assert want is not None
        del want["_shares"]
        for k in ("refund_vouchers_micro", "refund_void_micro", "refund_cash_micro"):
            want[k] = None  # decided at settlement
        want["pending_messages_units"] = sum(
            m.units if m.domestic else m.segments
            for m in self.msgs.values()
            if m.account == acct and m.pending and month_of(m.at) == month
        )
        r = self.admin("GET", f"/admin/accounts/{acct}/bills/{month}")
        assert r.status == 200, r.json
        assert r.json["status"] == "open", r.json
        got = {k: r.json[k] for k in want}
        assert got == want, (month, got, want)

    @rule(acct=accounts, back=st.sampled_from([1, 2]))
    def settle(self, acct: str, back: int) -> None:
        a = self.accts[acct]
        month = month_of(self.now)
        for _ in range(back):
            y, m = int(month[:4]), int(month[5:7])
            month = f"{y - (m == 1):04d}-{(m - 2) % 12 + 1:02d}"
        if month < month_of(START):
            return
        r = self.admin("POST", "/admin/bills/settle", {"month": month, "account": acct})
        if self.now < month_end(month) + 10 * 60_000:
            # Not before 10 minutes after the month's end: a send still in flight may belong.
            assert r.status >= 400 and r.code == "SETTLEMENT_NOT_READY", (r.status, r.json)
            return
        assert r.status == 200, r.json
        (row,) = r.json["results"]
        event(f"settle {row['status']}")
        if month in a.bills:
            assert row["status"] == "already_settled", row
            return
        want = self.expected_bill(a, month)
        if want is None:
            assert row["status"] == "not_ready", row
            return
        assert row["status"] == "settled", (row, want)
        shares = want.pop("_shares")
        bill = self.admin("GET", f"/admin/accounts/{acct}/bills/{month}").json
        got = {k: bill[k] for k in want}
        assert got == want, (month, got, want)
        refunded = bool(want["refund_micro"])
        event(f"settled: units {want['units']} refund {refunded} shares {bool(shares)}")
        a.bills[month] = want
        # The entries: cash adjustment, invoice, each voucher's share (void if it has expired);
        # a closed account's credit leaves the books at once.
        a.credit("settlement_adjustment", "cash", want["refund_cash_micro"])
        if a.closed and want["refund_cash_micro"]:
            a.credit("closed", "cash", -want["refund_cash_micro"])
        a.credit("invoice", "invoice", want["invoice_total_micro"])
        for pocket, n in shares.items():
            if n:
                self.give_back(a, [(pocket, n)], {"voucher": "voucher_refund"})
        if want["refund_micro"]:
            a.credited(self.now)

    @rule(acct=accounts, really=st.integers(0, 2))
    def close(self, acct: str, really: int) -> None:
        if really:  # a close ends an account's story: not too often
            return
        a = self.accts[acct]
        self.tick()
        r = self.admin("POST", f"/admin/accounts/{acct}/close")
        if a.closed:
            assert r.status in (200, 409), r.json
            return
        assert r.status == 200, r.json
        for m in self.msgs.values():
            if m.account == acct and m.state == "queued":
                m.state = "expired"  # ended unsent and refunded
                self.refund_msg(m)
        a.closed = True
        a.watch = False  # nothing to warn of on an account that can never send again
        for pocket, amount in list(a.pockets.items()):
            fam = family(pocket)
            if fam == "cash" and amount > 0:
                a.credit("closed", pocket, -amount)
            elif fam in ("voucher", "card") and amount > 0:
                kind = f"{fam}_void" if a.valid(pocket, self.now) else f"{fam}_expire"
                a.credit(kind, pocket, -amount)
        assert r.json["refund_owed_micro"] == -a.kinds["closed"], r.json

    @rule(
        acct=accounts,
        part=st.sampled_from([1, 2, 3]),
        ref=st.sampled_from(["new", "again", "money in"]),
    )
    def pay_refund(self, acct: str, part: int, ref: str) -> None:
        """part 1: half of what is outstanding, 2: all of it, 3: one micro more than it;
        under a new ref, the last payout's again (a retry), or a ref money in used."""
        a = self.accts[acct]
        owed, paid = -a.kinds["closed"], a.kinds["refund_paid"]
        outstanding = owed - paid
        amount = max(1, {1: outstanding // 2, 2: outstanding, 3: outstanding + 1}[part])
        self.tick()
        name = f"payout-{self.now}"
        if ref == "again" and a.payouts:
            name, amount = list(a.payouts.items())[-1]
        elif ref == "money in" and a.refs:
            name = sorted(a.refs)[0]
        r = self.admin(
            "POST", f"/admin/accounts/{acct}/refunds", {"amount_micro": amount, "ref": name}
        )
        outcomes = set()
        if not a.closed:
            outcomes.add((409, "ACCOUNT_NOT_CLOSED"))
            if name in a.refs:  # which refusal comes first is not a rule
                outcomes.add((409, "PAYMENT_REF_REUSED"))
        elif name in a.payouts:
            same = a.payouts[name] == amount
            outcomes.add((200, None) if same else (409, "PAYMENT_REF_REUSED"))
        else:
            if name in a.refs:
                outcomes.add((409, "PAYMENT_REF_REUSED"))
            if amount > outstanding:
                outcomes.add((409, "REFUND_NOT_OWED"))
        if not outcomes:
            outcomes.add((201, None))
        assert (r.status, r.code) in outcomes, (r.status, r.json, outcomes)
        if r.status in (200, 201):
            want = (owed, paid + amount * (r.status == 201))
            got = (r.json["refund_owed_micro"], r.json["refund_paid_micro"])
            assert got == want, (r.json, want)
        if r.status == 201:
            a.payouts[name] = amount
            a.credit("refund_paid", "refunded", amount)

    # -- after every step --

    @invariant()
    def books_agree(self) -> None:
        for a in self.accts.values():
            store = self.api.store
            pockets = {p.pocket: p.amount for p in self.run(store.get_pockets(a.id)) if p.amount}
            assert pockets == {k: v for k, v in a.pockets.items() if v}, (a.id, pockets, a.pockets)
            kinds = {k: v for k, v in self.run(store.ledger_kind_sums(a.id)).items() if v}
            assert kinds == {k: v for k, v in a.kinds.items() if v}, (a.id, kinds, a.kinds)
            now = self.now
            bal = self.admin("GET", f"/admin/accounts/{a.id}/balance").json
            valid = {
                p: v for p, v in a.pockets.items() if family(p) != "cash" and v and a.valid(p, now)
            }
            vouchers = sum(v for p, v in valid.items() if family(p) == "voucher")
            cards = sum(v for p, v in valid.items() if family(p) == "card")
            assert bal["cash_micro"] == a.pockets["cash"]
            assert bal["available_domestic_micro"] == a.pockets["cash"] + vouchers, bal
            assert bal["available_international_micro"] == a.pockets["cash"] + vouchers + cards
        self.check_books()
        self.check_warnings()

    def check_warnings(self) -> None:
        now = self.now
        jobs = self.run(self.api.store.claim_webhooks(now, 1000, LEASE))
        if jobs:
            self.run(self.api.store.webhook_done([j.id for j in jobs], now))
        got: dict[str, list[tuple[int, int]]] = {}
        for j in jobs:
            if j.kind == "event":
                e = json.loads(j.payload)
                if e.get("event") == "balance.low":
                    got.setdefault(j.account_id, []).append(
                        (e["previous_micro"], e["available_micro"])
                    )
        for a in self.accts.values():
            if a.watch:
                assert got.get(a.id, []) == a.events, (a.id, got.get(a.id), a.events)
                bal = self.admin("GET", f"/admin/accounts/{a.id}/balance").json
                assert (bal["low_balance_warned_at"] is not None) == a.warned, (bal, a.warned)
            a.events.clear()

    def check_books(self) -> None:
        """`smpp-bridge bill check`'s own function, on this store: ok, and the refunds it lists
        as outstanding are the model's."""
        from bridge.cli_ops import Ops, _check

        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            rc = self.run(_check(Ops(self.api.config, self.api.ctx.accounts, self.now), None))
        report = json.loads(out.getvalue())
        assert rc == 0 and report["ok"], report
        outstanding = {x["account"]: x["outstanding_micro"] for x in report["refunds_outstanding"]}
        want = {
            a.id: -a.kinds["closed"] - a.kinds["refund_paid"]
            for a in self.accts.values()
            if -a.kinds["closed"] - a.kinds["refund_paid"] > 0
        }
        assert outstanding == want, (outstanding, want)


def _settings(engine: str) -> settings:
    examples = EXAMPLES or (80 if engine == "sqlite" else 50)
    return settings(
        max_examples=examples,
        stateful_step_count=STEPS,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        print_blob=True,
        # MONEY_NO_SHRINK=1: report the first failure as found (shrinking one takes minutes).
        phases=[Phase.explicit, Phase.reuse, Phase.generate]
        if os.environ.get("MONEY_NO_SHRINK")
        else list(Phase),
    )


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_money_follows_the_rules(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    harness = Harness(engine, request, tmp_path)
    MoneyMachine.harness = harness
    try:
        run_state_machine_as_test(MoneyMachine, settings=_settings(engine))
    finally:
        harness.close()
        if os.environ.get("MONEY_SHOW"):
            print("\n".join(f"{n:6d} {k}" for k, n in sorted(SEEN.items())))
