"""Upgrades, after an adversarial review: an operator running an older release in production, with
data in its store, installs this one and starts it (README, "Running in production" / "Upgrades").

The old stores are real. Each test takes the older release's own code out of this repository's
history (`git archive <commit> bridge`, into a temporary directory: nothing outside the checkout
is needed) and runs it as a subprocess with PYTHONPATH pointing at it, so the rows are written by
that release's daemon, CLI and API, the way its operator's were. The releases used:

- EARLY    fa68078 (SQLite schema 3, PostgreSQL 3): sending rules and billing first shipped.
- MIDDLE   0c72e11 (SQLite 5, PostgreSQL 4): claim routes (q_route) and their migration.
- PREVIOUS 41ad589 = 86dce2a^ (SQLite 9, PostgreSQL 8): the release just before the
  q_unanswered migration, the newest when this review began. (Tests compare with
  `migrate.latest`, so migrations added since are part of every upgrade they run.)

This release then opens that store: in-process (`bridge.app.Daemon`, `open_store`), or as the CLI.
One simulated SMSC (the current simulator, in this process) serves both releases, so submits left
unanswered and receipts still owed at the upgrade reach the upgraded daemon as they would in
production; a webhook receiver that fails while the old release runs leaves its outbox pending.

Defects found (each pinned by a test below that fails on the code as reviewed):

1. A tariff version an older release stored makes the upgraded daemon refuse to start, for good.
   Releases before 4ebb699 accepted `domestic_bill_on: submitted` (and `international_bill_on:
   delivered`) in POST /admin/tariffs; this release's `validate_tariff`
   (bridge/domain/tariffs.py) refuses them, and it runs on every stored version as it is loaded:
   `billing.Tariffs.load` -> `tariff_from_dict` raises BillingError(INVALID_TARIFF), and
   `Daemon._start_http` (bridge/app.py) lets it end the start-up, after recovery has run, the
   SMSC binds are up and the dispatcher is running. `smpp-bridge run` exits 1 ("INVALID_TARIFF:
   domestic_bill_on: must be 'delivered'"); the shipped unit restarts it 5 times in 2 minutes,
   then leaves it down. `bill settle` and `bill show` fail the same way. Versions are never
   edited and no migration rewrites them; `config check` and `db migrate` both pass, so the
   README's upgrade routine gives no warning, and there is no way out short of editing the
   tariffs table by hand (or restoring the backup and staying on the old release).
   -> test_a_tariff_version_an_older_release_stored_does_not_keep_the_daemon_down

2. An international message sent as one message_payload PDU (SMSC `split: payload`) by a release
   before 122e780, still awaiting its receipt at the upgrade, is refunded all but one segment when
   the receipt comes, and reads back with more segments delivered than sent. 122e780 changed what
   `messages.segments_sent` counts (PDUs -> segments on the air: lifecycle.on_air, used by
   sqlite_pipeline.record_submits and the PostgreSQL twin) without a migration converting the
   rows already there; the upgraded code reads the old count with the new meaning:
   `admission.refund_share` gives back (segments - segments_sent)/segments of the charge, and
   `lifecycle.summarize` scales the delivered count to `segments`. A 4-segment message charged
   0.20 keeps 0.05 (the undercharge 122e780 fixed, carried over for every such message in flight
   at the upgrade), and its status shows segments_sent 1, segments_delivered 4 (a mix neither
   release produces). Both engines (PostgreSQL too, the same refund_share).
   -> test_a_payload_message_sent_before_the_upgrade_is_billed_per_segment_on_the_air

Checked and found right (the other tests pass):

- The migration from each of the three releases succeeds on both engines; every row the old
  release wrote is still there with the same values in its columns (compared row by row on the
  two full stores); balances, ledger and pockets agree (`bill check`'s comparison); finished
  and scheduled messages read the same through the API. (During the review the full scenario
  ran for all six release/engine pairs, and the account, ledger, bill, sign, template, tariff,
  opt-out and do-not-contact views read the same too; the suite keeps two pairs, for time.)
- Messages queued, scheduled, in flight (a submit never answered) and sent awaiting receipts at
  the upgrade: the queued and scheduled ones wait as before; the unanswered parts are sent again
  once, as a restart of this release sends them (SQLite at start-up; PostgreSQL when the dead old
  instance's claims are taken back); receipts owed for parts the old release submitted match them;
  a receipt the old release could not match stays listed as unmatched.
- Idempotency keys the old release stored replay its answer (and refuse another body) afterwards;
  a signed request the old release answered cannot be replayed to the new one (NONCE_REUSED);
  its second key signs, its revoked key stays revoked.
- SMSCs configured `in_flight_on_restart: unknown`: claims the early release left (it recorded
  a claim's answers only once all its parts were answered, so nothing says which SMSC took them)
  are sent again, every part once more, as a restart of that release did (0005_claim_route
  keeps its decision); only this release's own claims are marked unknown.
- Webhooks the old release could not deliver are delivered by the new one, signed, once each; an
  MO part the old release kept is completed by its other part arriving after the upgrade.
- A downgrade (the previous release started, or its `db migrate`, on the migrated store) is
  refused with SchemaTooNew and a one-line message, and changes nothing in the store.
- Migrations are atomic under SIGKILL: SQLite runs all pending ones in one transaction (killed
  between the DROP and the RENAME of 0004's idempotency rebuild, the store is exactly the old one);
  PostgreSQL runs each in its own transaction (killed inside one, the earlier ones stay, that one
  is rolled back); either way the next start finishes the job.
- Several processes opening an old store at once (this release's `db migrate` three times, and
  the previous release's at the same moment: the flock plus BEGIN IMMEDIATE on SQLite, the
  advisory lock on PostgreSQL) apply each migration once and keep every row; the old process
  applies its own share first, finds nothing to do, or is refused.

Note on the README: it says migrations are applied "in one transaction each"; on SQLite all the
pending ones share one transaction (SqliteStore._migrate), which is stricter, and harmless.

Not tested: rolling upgrades of a PostgreSQL fleet with old and new instances running together
(the README describes no such procedure; the migrations are additive); workers mode's acceptor
respawned by an old supervisor after `pip install -U` (it runs the new code and migrates under
the old owner); stores from releases before fa68078 (before billing; schema 1-2).

Fixed (the tests pass since): 1. stored versions are read by `billing.stored_tariff`, which
reads a retired `*_bill_on` value as the service rules' own with one warning per version;
2. migrations sqlite 0011 / postgres 0011 recount `segments_sent` of payload messages still
awaiting their receipt. The README's migration wording was corrected (SQLite applies all pending
migrations in one transaction, PostgreSQL one transaction each).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from bridge.app import Daemon  # noqa: E402
from bridge.client import BridgeClient, BridgeError  # noqa: E402
from bridge.config import Config, SimConfig, parse_config  # noqa: E402
from bridge.sim import server as simmod  # noqa: E402
from bridge.sim.server import SimSmsc  # noqa: E402
from bridge.store import migrate  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.wiring import open_store  # noqa: E402
from tests.e2e.harness import WebhookReceiver, free_port  # noqa: E402
from tests.pg_cluster import ci  # noqa: E402

EARLY = "fa68078ab0cc29d45d961de0522713f36154dab4"
MIDDLE = "0c72e11952092ea2781d8774b3ed8edf58ffbc2d"
PREVIOUS = "41ad589aa23685c778a24c1211eb701240dc3e19"  # 86dce2a^: before q_unanswered

MASTER_KEY = base64.b64encode(b"u" * 32).decode()
ADMIN_TOKEN = "upgrade-review-admin-token-0123"
INTERNATIONAL = {f"+{d}": 50_000 for d in range(1, 10)}
FINAL = ("delivered", "failed", "expired", "unknown")
DAY_MS = 86_400_000


# -- the older releases' code ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def old_code(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`old_code(sha)`: a directory holding that commit's `bridge` package, from this checkout's
    history (extracted once per session)."""
    trees: dict[str, Path] = {}

    def get(sha: str) -> Path:
        if sha not in trees:
            tar = subprocess.run(
                ["git", "-C", str(_ROOT), "archive", "--format=tar", sha, "bridge"],
                capture_output=True,
                timeout=60,
            )
            if tar.returncode != 0:  # no .git, or a shallow clone without that commit
                why = f"release {sha[:7]} not in this checkout's history: {tar.stderr[:200]!r}"
                if ci():
                    pytest.fail(why, pytrace=False)
                pytest.skip(why)
            dest = tmp_path_factory.mktemp(f"release-{sha[:7]}")
            with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as t:
                if hasattr(tarfile, "data_filter"):
                    t.extractall(dest, filter="data")
                else:  # Python before 3.11.4; the archive is this repository's own
                    t.extractall(dest)
            trees[sha] = dest
        return trees[sha]

    return get


def _env(code: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(code), "PYTHONUNBUFFERED": "1"}


def old_cli(code: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`smpp-bridge <args> --config F` as the release in `code` (or this one: _ROOT)."""
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args, "--config", str(config)],
        env=_env(code),
        cwd=str(config.parent),
        capture_output=True,
        text=True,
        timeout=60,
    )


class OldDaemon:
    """`smpp-bridge run` of an older release, as a subprocess."""

    def __init__(self, code: Path, conf: dict[str, Any], tmp: Path, tag: str = "old") -> None:
        self.code = code
        self.path = tmp / f"{tag}.yaml"
        self.path.write_text(yaml.safe_dump(conf))
        self.log = tmp / f"{tag}.log"
        self.port = conf["server"]["port"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", "run", "--config", str(self.path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(self.code),
                cwd=str(self.path.parent),
            )

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"old release exited: {self.log.read_text()[-2000:]}")
                with suppress(aiohttp.ClientError, OSError):
                    async with s.get(f"http://127.0.0.1:{self.port}/readyz") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise AssertionError(f"old release not ready: {self.log.read_text()[-2000:]}")

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as s,
            s.request(
                method,
                f"http://127.0.0.1:{self.port}{path}",
                json=body,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ) as r,
        ):
            return r.status, await r.json()

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    async def terminate(self) -> int:
        """SIGTERM, and wait for the drain without blocking this loop: the simulator and the
        webhook receiver the old release talks to while it drains run on it."""
        assert self.proc is not None
        self.proc.terminate()
        proc = self.proc
        with suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(proc.wait, 20)
        self.kill9()
        return self.proc.returncode


# -- the SMSC both releases talk to ----------------------------------------------------------------


class HoldSim(SimSmsc):
    """The simulator, able to leave chosen destinations' submits unanswered (in flight at the
    upgrade) and to keep receipts owed until told (sent, awaiting receipts at the upgrade).

    `hold` maps a destination to how many of its submits are answered before the rest are not."""

    def __init__(self, cfg: SimConfig) -> None:
        super().__init__(cfg)
        self.hold: dict[str, int] = {}
        self.withhold_receipts = False
        self.withheld: list[Any] = []
        self.submits: Counter[str] = Counter()

    def _on_submit(self, sess: Any, pdu: Any, out: list[bytes], now: float) -> None:
        dest = pdu.body.destination_addr
        self.submits[dest] += 1
        if dest in self.hold and self.submits[dest] > self.hold[dest]:
            return
        super()._on_submit(sess, pdu, out, now)

    def _schedule(self, job: Any, due: float) -> None:
        if self.withhold_receipts and job.kind == "receipt":
            self.withheld.append(job)
            return
        super()._schedule(job, due)

    def release_receipts(self) -> None:
        self.withhold_receipts = False
        jobs, self.withheld = self.withheld, []
        for job in jobs:
            super()._schedule(job, self._loop_time())

    def mo_part(self, source: str, destination: str, text: str, ref: int, index: int) -> None:
        """One part of a concatenated MO (its others left out, or sent later)."""
        sess = next(s for s in self._sessions if s.can_receive and not s.closing)
        enc = simmod.encode_message(text, simmod.EncodeOptions(split=simmod.SplitMode.UDH8), ref)
        part = enc.parts[index]
        body = simmod.ShortMessage(
            source_addr=source,
            destination_addr=destination,
            esm_class=part.esm_class,
            data_coding=enc.data_coding,
            short_message=part.short_message,
            tlvs=part.tlvs,
        )
        seq = sess.next_seq()
        sess.outstanding[seq] = simmod._Job(sess.system_id, body, "mo", 1, self._loop_time())
        sess.write(simmod.encode(simmod.Pdu(simmod.DELIVER_SM, 0, seq, body)))

    def stray_receipt(self, smsc_id: str) -> None:
        """A receipt for an id nobody submitted: the old release keeps it unmatched."""
        sm = simmod.ShortMessage(source_addr="", destination_addr="+8613811111111")
        body = self._receipt(sm, 1, smsc_id, "DELIVRD", "x", self._loop_time())
        super()._schedule(simmod._Job("bridge", body, "receipt"), self._loop_time())


@pytest.fixture
async def sim() -> AsyncIterator[HoldSim]:
    s = HoldSim(
        SimConfig(
            enabled=True,
            port=0,
            control_port=0,  # ephemeral: 2776 may be a running daemon's simulator
            system_id="bridge",
            password="bridge",
            receipt_delay_ms=5,
        )
    )
    await s.start()
    yield s
    await s.stop()


# -- configuration and stores ----------------------------------------------------------------------


def store_section(engine: str, tmp: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    if engine == "sqlite":
        return {"engine": "sqlite", "path": str(tmp / "bridge.db")}
    return {"engine": "postgres", "dsn": request.getfixturevalue("pg_dsn")}


def config_dict(store: dict[str, Any], sim_port: int, **smsc: Any) -> dict[str, Any]:
    """A configuration every release used here reads the same way."""
    return {
        "server": {
            "host": "127.0.0.1",
            "port": free_port(),
            "admin_token": ADMIN_TOKEN,
            "shutdown_grace_s": 1,
        },
        "store": store,
        "security": {"master_key": MASTER_KEY},
        "logging": {"level": "WARNING"},
        "webhooks": {"retry_schedule_s": [1], "timeout_s": 2},
        "billing": {"tariff": {"international": INTERNATIONAL}},
        "smscs": [
            {
                "name": "sim",
                "port": sim_port,
                "system_id": "bridge",
                "password": "bridge",
                "reconnect_min_s": 0.1,
                "reconnect_max_s": 0.5,
                **smsc,
            }
        ],
    }


def current(conf: dict[str, Any], tmp: Path) -> Config:
    return parse_config(conf, env={}, base_dir=tmp)


async def table_rows(store: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table (schema_version apart), straight from the database."""
    out: dict[str, list[dict[str, Any]]] = {}
    if store["engine"] == "sqlite":
        c = sqlite3.connect(store["path"])
        try:
            names = [
                r[0]
                for r in c.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' "
                    "AND name NOT IN ('schema_version', 'sqlite_sequence')"
                )
            ]
            for name in names:
                cur = c.execute(f"SELECT * FROM {name}")
                cols = [d[0] for d in cur.description]
                out[name] = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        finally:
            c.close()
        return out
    conn = await asyncpg.connect(store["dsn"])
    try:
        names = [
            r[0]
            for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename <> 'schema_version'"
            )
        ]
        for name in names:
            out[name] = [dict(r) for r in await conn.fetch(f"SELECT * FROM {name}")]
    finally:
        await conn.close()
    return out


async def schema_versions(store: dict[str, Any]) -> list[int]:
    if store["engine"] == "sqlite":
        c = sqlite3.connect(store["path"])
        try:
            return sorted(r[0] for r in c.execute("SELECT version FROM schema_version"))
        finally:
            c.close()
    conn = await asyncpg.connect(store["dsn"])
    try:
        return sorted(r[0] for r in await conn.fetch("SELECT version FROM schema_version"))
    finally:
        await conn.close()


async def schema_shape(store: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Tables, columns and indexes, to tell whether anything touched the schema."""
    if store["engine"] == "sqlite":
        c = sqlite3.connect(store["path"])
        try:
            return sorted(c.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))
        finally:
            c.close()
    conn = await asyncpg.connect(store["dsn"])
    try:
        cols = await conn.fetch(
            "SELECT table_name, column_name, data_type, column_default FROM "
            "information_schema.columns WHERE table_schema = 'public'"
        )
        idx = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname='public'"
        )
        return sorted(tuple(r) for r in [*cols, *idx])
    finally:
        await conn.close()


def missing_rows(
    before: dict[str, list[dict[str, Any]]], after: dict[str, list[dict[str, Any]]]
) -> list[str]:
    """Rows of `before` not found with the same values (in the columns they had) in `after`."""
    problems = []
    for table, rows in before.items():
        now = after.get(table)
        if now is None:
            problems.append(f"{table}: table gone")
            continue
        if len(now) != len(rows):
            problems.append(f"{table}: {len(rows)} rows before, {len(now)} after")
        if not rows:
            continue
        cols = list(rows[0])
        seen = Counter(tuple(repr(r.get(c)) for c in cols) for r in now)
        for r in rows:
            key = tuple(repr(r[c]) for c in cols)
            if seen[key] <= 0:
                problems.append(f"{table}: row changed or lost: {str(r)[:300]}")
            seen[key] -= 1
    return problems


async def until(pred: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


async def books_balance(store: Store) -> list[tuple[str, str, int, int]]:
    """`smpp-bridge bill check`: each pocket's running sum against the ledger's."""
    off = []
    for account in await store.list_accounts():
        sums = await store.ledger_sums(account.id)
        kept = {p.pocket: p.amount for p in await store.get_pockets(account.id)}
        for pocket in sorted(set(sums) | set(kept)):
            if int(sums.get(pocket) or 0) != int(kept.get(pocket) or 0):
                off.append((account.id, pocket, int(sums.get(pocket) or 0), kept.get(pocket, 0)))
    return off


def client(port: int, creds: dict[str, Any], key: tuple[str, str] | None = None) -> BridgeClient:
    app_key, secret = key or (creds["app_key"], creds["app_secret"])
    c = BridgeClient(f"http://127.0.0.1:{port}", app_key, secret)
    c.max_retries = 0
    return c


async def status_of(c: BridgeClient, mid: str) -> dict[str, Any]:
    return await c.message(mid)


# -- the older release at work ---------------------------------------------------------------------


async def old_account(d: OldDaemon, name: str, sign: str, **settings: Any) -> dict[str, Any]:
    st, acc = await d.admin("POST", "/admin/accounts", {"name": name, "raw_text": True, **settings})
    assert st == 201, acc
    aid = acc["account"]["id"]
    st, body = await d.admin(
        "POST", f"/admin/accounts/{aid}/signs", {"name": sign, "source": "company"}
    )
    assert st == 201, body
    st, body = await d.admin(
        "POST", f"/admin/accounts/{aid}/signs/{sign}/review", {"decision": "approve"}
    )
    assert st == 200, body
    return {**acc, "id": aid}


async def populate(d: OldDaemon, sim: HoldSim, hook: WebhookReceiver) -> dict[str, Any]:
    """What an operator's store holds on upgrade day, written by the older release through its
    API: two accounts (prepaid with a voucher and a card, postpaid), keys (one revoked), signs
    (approved, pending), an approved template, messages in every state the upgrade meets, an
    idempotency record, webhooks the customer's endpoint refused, an MO and half of another, an
    unmatched receipt, an opt-out, a settled month."""
    w: dict[str, Any] = {"ids": {}}
    acme = await old_account(
        d, "acme", "Acme", status_callback_url=hook.url, mo_callback_url=hook.url
    )
    beta = await old_account(d, "beta", "Beta", kind="postpaid")
    hook.secret = acme["webhook_secret"]
    aid = acme["id"]
    w["acme"], w["beta"] = acme, beta
    now = int(time.time() * 1000)
    for path, body in (
        ("topups", {"amount_micro": 100_000_000}),
        ("vouchers", {"amount_micro": 5_000_000, "expires_at": now + 30 * DAY_MS}),
        ("cards", {"face_value_micro": 999_000_000}),
    ):
        st, out = await d.admin("POST", f"/admin/accounts/{aid}/{path}", body)
        assert st == 201, out
    st, out = await d.admin(
        "POST", f"/admin/accounts/{aid}/signs", {"name": "Later", "source": "app"}
    )
    assert st == 201, out
    st, revoked = await d.admin("POST", f"/admin/accounts/{aid}/keys", {})
    assert st == 201, revoked
    st, out = await d.admin("POST", f"/admin/keys/{revoked['app_key']}/revoke", {})
    assert st == 200, out
    st, second = await d.admin("POST", f"/admin/accounts/{aid}/keys", {})
    assert st == 201, second
    w["key2"] = (second["app_key"], second["app_secret"])
    w["key3"] = (revoked["app_key"], revoked["app_secret"])
    ids = w["ids"]
    async with client(d.port, acme) as c:
        _, _, tpl = await c.request(
            "POST",
            "/v1/templates",
            json_body={"type": "verification", "name": "otp", "content": "Your code is ${code}"},
        )
        st, out = await d.admin(
            "POST", f"/admin/templates/{tpl['code']}/review", {"decision": "approve"}
        )
        assert st == 200, out
        w["idem_key"] = "upgrade-" + uuid.uuid4().hex
        w["idem_body"] = {"to": "+8613800138000", "text": "hello one", "sign_name": "Acme"}
        _, _, first = await c.request(
            "POST", "/v1/messages", json_body=w["idem_body"], idempotency_key=w["idem_key"]
        )
        w["idem_answer"] = first
        ids["delivered"] = first["messages"][0]["id"]

        async def send(name: str, to: str, **body: Any) -> str:
            r = await c.send(to, sign_name="Acme", **body)
            ids[name] = r["messages"][0]["id"]
            return str(ids[name])

        async def final(mid: str) -> bool:
            return (await status_of(c, mid))["status"] in FINAL

        await send("international", "+447700900123", text="international hello")
        await send("long", "+8613800138003", text="long " * 40)
        await send("template", "+8613800138004", template=tpl["code"], params={"code": "123456"})
        for name in ("delivered", "international", "long", "template"):
            await until(lambda n=name: final(ids[n]), 10, f"{name} final under the old release")
        sim.outcomes = {"UNDELIV": 1.0}
        await send("undeliverable", "+8613800138008", text="will fail")
        await until(lambda: final(ids["undeliverable"]), 10, "undeliverable final")
        sim.outcomes = {"DELIVRD": 1.0}
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86_400))
        await send("scheduled", "+8613800138005", text="tomorrow", scheduled_at=at)
        await c.request("POST", "/v1/optouts", json_body={"numbers": ["+8613800138999"]})
        # Inbound: a reply, half of a long one, a receipt for an id nobody sent.
        sim.mo_part("+8613800138000", "10690001", MO_TEXT, 77, 0)
        await sim.inject_mo("+8613800138000", "10690001", "a short reply")
        sim.stray_receipt("DEADBEEF")
        # Sent, their receipts still owed at the upgrade.
        sim.withhold_receipts = True
        await send("awaiting", "+8613800138006", text="receipt comes later")
        await send("awaiting_long", "+8613800138016", text="long receipt later " * 12)
        # In flight: submitted, never answered.
        sim.hold = {"8613800138007": 0, "8613800138017": 0}
        await send("in_flight", "+8613800138007", text="in flight")
        await send("in_flight_long", "+8613800138017", text="in flight long " * 12)

        async def settled() -> bool:
            views = [await status_of(c, ids[n]) for n in ("awaiting", "awaiting_long")]
            return (
                all(v["status"] == "sent" for v in views)
                and sim.submits["8613800138017"] >= 1
                and sim.submits["8613800138007"] >= 1
            )

        await until(settled, 10, "awaiting sent and in-flight submitted under the old release")
        w["views"] = {n: await status_of(c, ids[n]) for n in STABLE}
        # A signed request the old release answered: its nonce is spent for good.
        w["signed"] = c.signed_headers("GET", "/v1/balance", "", b"", {})
        assert (await _raw_get(d.port, "/v1/balance", w["signed"]))[0] == 200
        _, _, w["balance"] = await c.request("GET", "/v1/balance")
    async with client(d.port, beta) as c:
        r = await c.send("+8613800138100", text="beta says hi", sign_name="Beta")
        ids["beta"] = r["messages"][0]["id"]

        async def beta_sent() -> bool:
            return (await status_of(c, ids["beta"]))["status"] == "sent"

        # Recorded as sent: killed before that, the part is sent again after the upgrade (as
        # after any crash) and the receipt for its first copy stays unmatched.
        await until(beta_sent, 10, "beta's message sent under the old release")
    st, out = await d.admin("POST", "/admin/bills/settle", {"month": SETTLED_MONTH})
    assert st == 200, out
    w["beta_balance"] = (await d.admin("GET", f"/admin/accounts/{beta['id']}/balance"))[1]
    return w


MO_TEXT = "part one of a long reply, " * 8


def _as_before(view: dict[str, Any]) -> dict[str, Any]:
    """A message as this release shows it, less the fields added since the old releases: each
    part's receipt_inferred_from (smscs[].receipts), null for parts settled before."""
    parts = view.get("parts", [])
    assert all(p.get("receipt_inferred_from") is None for p in parts), view
    return {**view, "parts": [{k: v for k, v in p.items() if k != "receipt_inferred_from"}
                              for p in parts]}  # fmt: skip


def _balance_as_before(view: dict[str, Any]) -> dict[str, Any]:
    """A balance as this release shows it, less low_balance_warned_at (session 37): shown
    whatever the account's threshold, and null here (none is set)."""
    assert view.pop("low_balance_warned_at", "absent") is None, view
    return view


def _month_back(n: int) -> str:
    y, m = time.gmtime().tm_year, time.gmtime().tm_mon - n
    while m < 1:
        y, m = y - 1, m + 12
    return f"{y:04d}-{m:02d}"


SETTLED_MONTH = _month_back(2)  # over in every time zone, settled by the old release
STABLE = ("delivered", "international", "long", "template", "undeliverable", "scheduled")
UPGRADES = [
    pytest.param(PREVIOUS, "sqlite", "sigterm", id="previous-release-sqlite-sigterm"),
    pytest.param(EARLY, "postgres", "sigkill", id="early-release-postgres-sigkill"),
]


@pytest.mark.parametrize(("sha", "engine", "stop"), UPGRADES)
async def test_a_store_an_older_release_wrote_upgrades_in_place(
    sha: str,
    engine: str,
    stop: str,
    sim: HoldSim,
    old_code: Callable[[str], Path],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """The README's routine on a store in use: the older release stopped (SIGTERM, drained as far
    as its grace allows; or killed), this one started on the same configuration. Everything the
    old release wrote is kept and means the same; what was under way finishes."""
    hook = WebhookReceiver()
    hook.fail_with = 500  # the customer's endpoint is down while the old release runs
    await hook.start()
    store = store_section(engine, tmp_path, request)
    conf = config_dict(store, sim.port)
    old = OldDaemon(old_code(sha), conf, tmp_path)
    old.start()
    try:
        await old.wait_ready()
        w = await populate(old, sim, hook)
    finally:
        if stop == "sigterm":  # systemctl restart: drains what it can within its grace
            await old.terminate()
        old.kill9()
    if engine == "postgres":
        # The upgrade (install, restart) took a minute: the old instance's heartbeat is that old.
        conn = await asyncpg.connect(store["dsn"])
        await conn.execute("UPDATE instances SET heartbeat_at = heartbeat_at - 60000")
        await conn.close()
    before = await table_rows(store)
    assert before["messages"] and before["ledger"] and before["webhook_outbox"]
    assert before["mo_parts"] and before["pending_receipts"] and before["idempotency"]

    # The migration alone: every row the old release wrote is still there, as it was.
    cfg = current(conf, tmp_path)
    plain = open_store(cfg)
    await plain.open()
    try:
        assert await plain.schema_version() == migrate.latest(engine)
        assert not await books_balance(plain)
    finally:
        await plain.close()
    assert missing_rows(before, await table_rows(store)) == []
    assert await schema_versions(store) == list(range(1, migrate.latest(engine) + 1))

    # The upgraded daemon.
    sim.hold = {}
    hook.fail_with = None
    daemon = Daemon(cfg)
    await daemon.start()
    try:
        ids = w["ids"]
        acme = w["acme"]
        sim.release_receipts()

        async def bound() -> bool:
            return any(s.can_receive and not s.closing for s in sim._sessions)

        await until(bound, 15, "the upgraded daemon binds")
        sim.mo_part("+8613800138000", "10690001", MO_TEXT, 77, 1)
        async with (
            client(daemon.http_port or 0, acme) as c,
            client(daemon.http_port or 0, w["beta"]) as cb,
        ):

            async def all_final() -> bool:
                for name in ("awaiting", "awaiting_long", "in_flight", "in_flight_long"):
                    if (await status_of(c, ids[name]))["status"] not in FINAL:
                        return False
                return (await status_of(cb, ids["beta"]))["status"] in FINAL

            await until(all_final, 15, "in flight and awaiting at the upgrade: final now")
            views = {n: await status_of(c, ids[n]) for n in ids if n != "beta"}
            for name in ("awaiting", "awaiting_long", "in_flight", "in_flight_long"):
                v = views[name]
                assert v["status"] == "delivered", (name, v)
                assert v["segments_sent"] == v["segments_delivered"] == v["segments"], (name, v)
            # What was final or waiting reads as the old release showed it.
            for name in STABLE:
                assert _as_before(views[name]) == w["views"][name], name
            # Unanswered parts are sent again once (no part was answered: all of them resent).
            assert (await status_of(cb, ids["beta"]))["status"] == "delivered"
            assert sim.submits["8613800138100"] == 1
            assert sim.submits["8613800138007"] == 2
            assert sim.submits["8613800138017"] == 1 + views["in_flight_long"]["segments"]
            # Receipts owed for the old release's submits matched them: none left unmatched
            # apart from the one nobody sent.
            st, unmatched = await _admin(daemon, "GET", "/admin/receipts/unmatched?older_than_s=0")
            assert st == 200
            assert [r["smsc_message_id"] for r in unmatched["receipts"]] == ["DEADBEEF"]
            # The old idempotency record: the same request replays, another body is refused.
            st, headers, again = await c.request(
                "POST", "/v1/messages", json_body=w["idem_body"], idempotency_key=w["idem_key"]
            )
            replayed = (st, headers.get("Idempotent-Replayed"), again)
            assert replayed == (202, "true", w["idem_answer"])
            with pytest.raises(BridgeError) as refused:
                await c.request(
                    "POST",
                    "/v1/messages",
                    json_body={**w["idem_body"], "text": "another"},
                    idempotency_key=w["idem_key"],
                )
            assert refused.value.code == "IDEMPOTENCY_KEY_REUSED"
            # Money: nothing moved by the upgrade.
            _, _, balance = await c.request("GET", "/v1/balance")
            assert _balance_as_before(balance) == w["balance"]
            beta = f"/admin/accounts/{w['beta']['id']}/balance"
            assert _balance_as_before((await _admin(daemon, "GET", beta))[1]) == w["beta_balance"]
            assert daemon.store is not None
            assert not await books_balance(daemon.store)
            _, _, bill = await c.request("GET", f"/v1/bills/{SETTLED_MONTH}")
            assert bill["status"] == "settled"
            # A request the old release answered cannot be replayed to the new one.
            st, body = await _raw_get(daemon.http_port or 0, "/v1/balance", w["signed"])
            assert (st, body["error"]["code"]) == (401, "NONCE_REUSED")
            # Keys: the second one signs, the revoked one stays revoked.
            async with client(daemon.http_port or 0, acme, w["key2"]) as c2:
                assert (await c2.message(ids["delivered"]))["status"] == "delivered"
            async with client(daemon.http_port or 0, acme, w["key3"]) as c3:
                with pytest.raises(BridgeError) as revoked:
                    await c3.message(ids["delivered"])
                assert revoked.value.status == 401
            # Webhooks the customer refused before are delivered now, once each, signed.
            finals = {ids[n] for n in ids if n not in ("scheduled", "beta")}

            async def reported() -> bool:
                kinds = (r for r in hook.reports if r.get("type") == "message.status")
                return finals <= {r.get("message_id") for r in kinds}

            await until(reported, 10, "every final status reported")
            status_reports = Counter(
                r["message_id"] for r in hook.reports if r.get("type") == "message.status"
            )
            assert all(n == 1 for n in status_reports.values()), status_reports
            assert hook.bad_signatures == 0
            # The MO part the old release kept is completed by the part arriving now.
            assert daemon.store is not None

            async def mo_done() -> bool:
                return await _mo_texts(store) >= {"a short reply", MO_TEXT}

            await until(mo_done, 10, "the long MO completed across the upgrade")
            # And the upgraded daemon sends.
            r = await c.send("+8613800138200", text="after the upgrade", sign_name="Acme")

            async def sent_now() -> bool:
                m = await status_of(c, r["messages"][0]["id"])
                return m["status"] == "delivered"

            await until(sent_now, 10, "a send after the upgrade")
    finally:
        await daemon.stop()
        await hook.stop()


async def _admin(daemon: Daemon, method: str, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(
            method,
            f"http://127.0.0.1:{daemon.http_port}{path}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as r,
    ):
        return r.status, await r.json()


async def _raw_get(port: int, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{port}{path}", headers=headers, skip_auto_headers=["Host"]) as r,
    ):
        return r.status, await r.json()


async def _mo_texts(store: dict[str, Any]) -> set[str]:
    if store["engine"] == "sqlite":
        c = sqlite3.connect(store["path"])
        try:
            return {r[0] for r in c.execute("SELECT text FROM mo_inbox")}
        finally:
            c.close()
    conn = await asyncpg.connect(store["dsn"])
    try:
        return {r[0] for r in await conn.fetch("SELECT text FROM mo_inbox")}
    finally:
        await conn.close()


# -- 1. a tariff version an older release stored ---------------------------------------------------


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_a_tariff_version_an_older_release_stored_does_not_keep_the_daemon_down(
    engine: str,
    sim: HoldSim,
    old_code: Callable[[str], Path],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Defect 1. The older release took this version through POST /admin/tariffs (its
    validate_tariff allowed either bill_on value); after the upgrade the daemon must still start
    and keep serving, with the version still listed (versions are never edited)."""
    store = store_section(engine, tmp_path, request)
    conf = config_dict(store, sim.port)
    old = OldDaemon(old_code(MIDDLE), conf, tmp_path)
    old.start()
    try:
        await old.wait_ready()
        st, body = await old.admin(
            "POST",
            "/admin/tariffs",
            {
                "version": "2027-domestic-on-submit",
                "effective_at": int(time.time() * 1000) + 3_600_000,
                "starting_price": 45_000,
                "tiers": [{"up_to": None, "price": 45_000}],
                "domestic_bill_on": "submitted",
                "international": {"+44": 50_000},
                "domestic_prefix": "+86",
            },
        )
        assert st == 201, body
        creds = await old_account(old, "acme", "Acme")
        st, body = await old.admin(
            "POST", f"/admin/accounts/{creds['id']}/topups", {"amount_micro": 10_000_000}
        )
        assert st == 201, body
    finally:
        old.kill9()  # what it answered 201 to is durable
    cfg = current(conf, tmp_path)
    daemon = Daemon(cfg)
    try:
        await daemon.start()  # raised BillingError INVALID_TARIFF: the daemon exits 1
        st, listed = await _admin(daemon, "GET", "/admin/tariffs")
        assert st == 200
        assert [t["version"] for t in listed["tariffs"]] == ["initial", "2027-domestic-on-submit"]
        async with client(daemon.http_port or 0, creds) as c:
            r = await c.send("+8613800138000", text="still sending", sign_name="Acme")
            assert r["count"] == 1
    finally:
        with suppress(Exception):
            await daemon.stop()


# -- 2. segments_sent changed meaning without a migration ------------------------------------------


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_a_payload_message_sent_before_the_upgrade_is_billed_per_segment_on_the_air(
    engine: str,
    sim: HoldSim,
    old_code: Callable[[str], Path],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Defect 2. An international 4-segment message the older release sent as one
    message_payload PDU, its receipt still owed at the upgrade: once delivered it is billed for
    its 4 segments on the air, as the same message sent by this release is, and reads back with
    as many segments sent as delivered."""
    store = store_section(engine, tmp_path, request)
    conf = config_dict(store, sim.port, split="payload")
    old = OldDaemon(old_code(MIDDLE), conf, tmp_path)
    old.start()
    try:
        await old.wait_ready()
        creds = await old_account(old, "acme", "Acme")
        st, body = await old.admin(
            "POST", f"/admin/accounts/{creds['id']}/topups", {"amount_micro": 100_000_000}
        )
        assert st == 201, body
        sim.withhold_receipts = True
        async with client(old.port, creds) as c:
            r = await c.send("+447700900123", text="x" * 200, sign_name="Acme")
            mid = r["messages"][0]["id"]
            assert r["messages"][0]["segments"] == 4

            async def sent() -> bool:
                return (await status_of(c, mid))["status"] == "sent"

            await until(sent, 10, "sent under the old release")
    finally:
        old.kill9()
    assert sim.submits["447700900123"] == 1  # one PDU, split by the SMSC
    daemon = Daemon(current(conf, tmp_path))
    await daemon.start()
    try:
        sim.release_receipts()
        async with client(daemon.http_port or 0, creds) as c:

            async def delivered() -> dict[str, Any] | None:
                m = await status_of(c, mid)
                return m if m["status"] == "delivered" else None

            view = await until(delivered, 10, "the receipt matched after the upgrade")
            _, _, ledger = await c.request("GET", "/v1/ledger")
        entries = [e for e in ledger["entries"] if e["ref"] == mid]
        assert sum(e["amount_micro"] for e in entries) == -4 * 50_000, entries  # kept 50_000
        assert view["segments_sent"] == view["segments_delivered"] == 4, view  # sent 1
    finally:
        await daemon.stop()


# -- downgrade -------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_the_previous_release_refuses_a_store_this_one_migrated_and_leaves_it_alone(
    engine: str, old_code: Callable[[str], Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A downgrade without restoring the backup: the previous release's `db migrate` and `run`
    end with one line saying the schema is newer, and leave schema and rows as they were."""
    store = store_section(engine, tmp_path, request)
    conf = config_dict(store, free_port())
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(conf))
    code = old_code(PREVIOUS)
    made = old_cli(code, path, "db", "migrate")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["schema_version"] < migrate.latest(engine)
    upgraded = open_store(current(conf, tmp_path))
    await upgraded.open()
    await upgraded.close()
    shape, versions = await schema_shape(store), await schema_versions(store)
    rows = await table_rows(store)
    assert versions == list(range(1, migrate.latest(engine) + 1))
    for args in (("db", "migrate"), ("run",)):
        refused = old_cli(code, path, *args)
        assert refused.returncode == 1, (args, refused.stdout, refused.stderr)
        assert "newer than this release" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert await schema_shape(store) == shape
    assert await schema_versions(store) == versions
    assert missing_rows(rows, await table_rows(store)) == []


# -- SIGKILL in the middle of a migration ----------------------------------------------------------

_KILL_SQLITE = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from bridge.store import sqlite as engine
    split = engine._split_sql

    def dying(sql):
        for statement in split(sql):
            if statement.startswith("ALTER TABLE idempotency_new RENAME"):
                os.kill(os.getpid(), signal.SIGKILL)  # after DROP TABLE idempotency ran
            yield statement

    engine._split_sql = dying
    asyncio.run(engine.SqliteStore(sys.argv[1]).open())
    """
)


async def test_sqlite_migration_killed_midway_leaves_the_old_store_and_a_restart_finishes(
    old_code: Callable[[str], Path], tmp_path: Path
) -> None:
    """All pending migrations run in one transaction: killed between 0004's DROP TABLE
    idempotency and its RENAME, the store is the early release's, records and all."""
    db = tmp_path / "bridge.db"
    conf = config_dict({"engine": "sqlite", "path": str(db)}, free_port())
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(conf))
    made = old_cli(old_code(EARLY), path, "db", "migrate")
    assert made.returncode == 0, made.stderr
    c = sqlite3.connect(db)
    with c:
        c.executemany(
            "INSERT INTO idempotency VALUES (?,?,?,?,?,?)",
            [(f"acc_{i % 3}", f"key-{i}", f"h{i}", 202, b'{"ok":1}', 2**40) for i in range(500)],
        )
    before = sorted(c.execute("SELECT * FROM idempotency"))
    c.close()
    killed = subprocess.run(
        [sys.executable, "-c", _KILL_SQLITE, str(db)],
        env=_env(_ROOT),
        capture_output=True,
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    c = sqlite3.connect(db)
    try:
        assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert c.execute("SELECT MAX(version) FROM schema_version").fetchone() == (3,)
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "idempotency_new" not in tables
        assert sorted(c.execute("SELECT * FROM idempotency")) == before
    finally:
        c.close()
    restarted = open_store(current(conf, tmp_path))
    await restarted.open()
    try:
        assert await restarted.schema_version() == migrate.latest("sqlite")
        record = await restarted.get_idempotency("acc_1", "key-7", 0)
        assert record is not None and record.request_hash == "h7"
    finally:
        await restarted.close()
    c = sqlite3.connect(db)
    try:
        after = sorted(
            c.execute(
                "SELECT account_id, key, request_hash, status_code, response, expires_at "
                "FROM idempotency"
            )
        )
    finally:
        c.close()
    assert after == before


_KILL_POSTGRES = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    import asyncpg
    from bridge.store import migrate
    from bridge.store.postgres import PostgresStore

    pending = migrate.pending

    def slow(engine, current):
        # Migration 5 ends with a pause: the process is killed while it runs.
        return [
            (v, n, sql + ";\\nSELECT pg_sleep(1.5);" if v == 5 else sql)
            for v, n, sql in pending(engine, current)
        ]

    migrate.pending = slow
    execute = asyncpg.connection.Connection.execute

    async def dying(self, query, *args, **kwargs):
        if "pg_sleep(1.5)" in query:
            asyncio.get_running_loop().call_later(0.4, os.kill, os.getpid(), signal.SIGKILL)
        return await execute(self, query, *args, **kwargs)

    asyncpg.connection.Connection.execute = dying
    asyncio.run(PostgresStore(sys.argv[1], min_size=1, max_size=2).open())
    """
)


async def test_postgres_migration_killed_midway_rolls_that_one_back_and_a_restart_finishes(
    old_code: Callable[[str], Path], tmp_path: Path, pg_dsn: str
) -> None:
    """Each migration is its own transaction: killed inside 0005 (mo_inbox.sign_name,
    webhook_outbox.retry_from), 0004 stays applied and 0005 is wholly absent; the next start
    applies the rest (after the killed session's server side gives up its lock)."""
    conf = config_dict({"engine": "postgres", "dsn": pg_dsn}, free_port())
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(conf))
    made = old_cli(old_code(EARLY), path, "db", "migrate")
    assert made.returncode == 0, made.stderr
    killed = subprocess.run(
        [sys.executable, "-c", _KILL_POSTGRES, pg_dsn],
        env=_env(_ROOT),
        capture_output=True,
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT MAX(version) FROM schema_version") == 4
        columns = {
            (r[0], r[1])
            for r in await conn.fetch(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = 'public'"
            )
        }
        assert ("messages", "q_route") in columns
        assert ("mo_inbox", "sign_name") not in columns
        assert ("webhook_outbox", "retry_from") not in columns
    finally:
        await conn.close()
    restarted = open_store(current(conf, tmp_path))
    await asyncio.wait_for(restarted.open(), 30)
    try:
        assert await restarted.schema_version() == migrate.latest("postgres")
    finally:
        await restarted.close()
    assert await schema_versions(conf["store"]) == list(range(1, migrate.latest("postgres") + 1))


# -- several processes at once ---------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_processes_opening_an_old_store_together_migrate_it_once(
    engine: str, old_code: Callable[[str], Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Three of this release's `db migrate` (the daemon, its acceptors and an operator's CLI
    open the store the same way) and the previous release's, started at the same moment."""
    store = store_section(engine, tmp_path, request)
    conf = config_dict(store, free_port())
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(conf))
    code = old_code(MIDDLE)
    made = old_cli(code, path, "db", "migrate")
    assert made.returncode == 0, made.stderr
    before = await table_rows(store)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "db", "migrate", "--config", str(path)],
            env=_env(tree),
            cwd=str(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tree in (_ROOT, old_code(PREVIOUS), _ROOT, _ROOT)
    ]
    results = [(p.wait(60), *p.communicate()) for p in procs]
    for i, (rc, out, err) in enumerate(results):
        if i == 1:  # the previous release: done before the migration, or refused after it
            assert rc == 0 or "newer than this release" in err, (rc, out, err)
        else:
            assert rc == 0, err
            assert json.loads(out)["schema_version"] == migrate.latest(engine)
    assert await schema_versions(store) == list(range(1, migrate.latest(engine) + 1))
    assert missing_rows(before, await table_rows(store)) == []


# -- in_flight_on_restart: unknown, claims left by a release before q_route ------------------------


async def test_claims_an_early_release_left_keep_its_restart_decision_for_unknown_smscs(
    sim: HoldSim, old_code: Callable[[str], Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The early release decided by the last SMSC that answered (messages.smsc), which it wrote
    only once every part of a claim was answered: killed with a long message's first part
    answered and its second on the wire, and a short message unanswered, it left both claimed
    with no SMSC, and a restart of it resent both, even for an SMSC configured
    `in_flight_on_restart: unknown`. 0005_claim_route keeps that decision for its claims
    (q_route = smsc, here NULL), so after the upgrade both are sent again, every part, once more;
    this release's own claims are marked unknown instead (q_route is written as the first part
    leaves). Checked: both delivered, each part submitted exactly once more."""
    store = store_section("sqlite", tmp_path, request)
    conf = config_dict(store, sim.port, in_flight_on_restart="unknown")
    old = OldDaemon(old_code(EARLY), conf, tmp_path)
    old.start()
    try:
        await old.wait_ready()
        creds = await old_account(old, "acme", "Acme")
        st, body = await old.admin(
            "POST", f"/admin/accounts/{creds['id']}/topups", {"amount_micro": 100_000_000}
        )
        assert st == 201, body
        sim.hold = {"8613800138031": 1, "8613800138032": 0}
        async with client(old.port, creds) as c:
            sent = await c.send("+8613800138031", text="part " * 60, sign_name="Acme")
            long_id = sent["messages"][0]["id"]
            parts = sent["messages"][0]["segments"]
            sent = await c.send("+8613800138032", text="first try", sign_name="Acme")
            short_id = sent["messages"][0]["id"]

            async def on_the_wire() -> bool:
                return sim.submits["8613800138031"] == 2 and sim.submits["8613800138032"] == 1

            await until(on_the_wire, 10, "part 1 answered, part 2 and the short one unanswered")
    finally:
        old.kill9()
    sim.hold = {}
    daemon = Daemon(current(conf, tmp_path))
    await daemon.start()
    try:
        async with client(daemon.http_port or 0, creds) as c:

            async def ended() -> dict[str, Any] | None:
                views = {m: await status_of(c, m) for m in (long_id, short_id)}
                return views if all(v["status"] in FINAL for v in views.values()) else None

            views = await until(ended, 10, "both messages final after the upgrade")
        assert [v["status"] for v in views.values()] == ["delivered", "delivered"]
        assert sim.submits["8613800138031"] == 2 + parts
        assert sim.submits["8613800138032"] == 2
    finally:
        await daemon.stop()
