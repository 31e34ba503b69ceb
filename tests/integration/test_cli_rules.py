"""The operator CLI for sending rules and money, run as a real subprocess on a SQLite store.

`smpp-bridge sign|template|bill|tariff|dnc|account close`: each command's happy path and its
refusals (one line on stderr, exit 1, never a traceback). Process start-up costs ~0.5 s, so each
test groups many steps and runs independent refusals side by side.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge import review
from bridge.app import open_store
from bridge.config import load_config
from bridge.domain.ledger import Entry, EntryKind
from bridge.rules import load_filter
from bridge.store.models import MoPart

CST = timezone(timedelta(hours=8))  # rules.timezone defaults to Asia/Shanghai (no DST)
JAN_2024 = int(datetime(2024, 1, 15, 12, tzinfo=CST).timestamp() * 1000)


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "store": {"engine": "sqlite", "path": str(tmp_path / "bridge.db")},
                "security": {"master_key": base64.b64encode(os.urandom(32)).decode()},
                "smscs": [{"name": "main", "system_id": "bridge"}],
                "logging": {"level": "WARNING"},
                "billing": {"tariff": {"international": {"+1": 60_000}}},
            }
        )
    )
    # Create the schema here: the tests start CLI processes side by side, and two processes
    # migrating one fresh database at the same instant is not what these tests are about.
    in_store(path, lambda _store, _config: asyncio.sleep(0))
    return path


def _start(cfg: Path, args: tuple[str, ...]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", *args, "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cfg.parent,  # operators run it from anywhere
    )


def run_all(cfg: Path, *commands: tuple[str, ...]) -> list[tuple[int, str, str]]:
    """Run independent commands side by side: [(exit code, stdout, stderr)] in order."""
    procs = [_start(cfg, c) for c in commands]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=60)
        out.append((p.returncode, stdout, stderr))
    return out


def ok(cfg: Path, *args: str) -> Any:
    ((rc, stdout, stderr),) = run_all(cfg, args)
    assert rc == 0, (args, stderr)
    return json.loads(stdout)


def check_refused(result: tuple[int, str, str], *fragments: str) -> None:
    rc, _stdout, stderr = result
    assert rc == 1, (rc, stderr)
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smpp-bridge: "), stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def refused(cfg: Path, *cases: tuple[tuple[str, ...], tuple[str, ...]]) -> None:
    """Each (argv, fragments expected in the one-line message), all run at once."""
    results = run_all(cfg, *(argv for argv, _f in cases))
    for (argv, fragments), result in zip(cases, results, strict=True):
        try:
            check_refused(result, *fragments)
        except AssertionError as exc:
            raise AssertionError(f"{argv}: {exc}") from None


def create_accounts(cfg: Path, *specs: tuple[str, ...]) -> dict[str, str]:
    """name -> account id, created through the CLI (`account create NAME [flags]`)."""
    results = run_all(cfg, *(("account", "create", *spec) for spec in specs))
    ids = {}
    for spec, (rc, stdout, stderr) in zip(specs, results, strict=True):
        assert rc == 0, stderr
        ids[spec[0]] = json.loads(stdout)["account"]
    return ids


def in_store(cfg: Path, fn: Any) -> Any:
    """Run `fn(store, config)` on the same store, in this process (setup the CLI cannot do)."""
    config = load_config(str(cfg))

    async def go() -> Any:
        store = open_store(config)
        await store.open()
        try:
            return await fn(store, config)
        finally:
            await store.close()

    return asyncio.run(go())


def db(cfg: Path) -> sqlite3.Connection:
    return sqlite3.connect(cfg.parent / "bridge.db")


# -- sign names ------------------------------------------------------------------------------------


def test_sign_add_list_review_and_refusals(cfg: Path) -> None:
    ids = create_accounts(cfg, ("acme",), ("globex",))
    pending, approved = run_all(
        cfg,
        ("sign", "add", "acme", "Acme Shop", "--source", "trademark", "--remark", "TM 123"),
        ("sign", "add", "globex", "Globex", "--approve"),
    )
    assert pending[0] == 0 and approved[0] == 0, (pending, approved)
    got = json.loads(pending[1])
    assert (got["account"], got["name"], got["source"], got["remark"], got["status"]) == (
        ids["acme"], "Acme Shop", "trademark", "TM 123", "pending",
    )  # fmt: skip
    assert json.loads(approved[1])["status"] == "approved"

    listed = run_all(
        cfg,
        ("sign", "list", "--status", "pending"),
        ("sign", "list", "--account", "globex"),
    )
    by_status, by_account = (json.loads(r[1]) for r in listed)
    assert [(s["account"], s["name"]) for s in by_status] == [(ids["acme"], "Acme Shop")]
    assert [(s["name"], s["status"]) for s in by_account] == [("Globex", "approved")]

    refused(
        cfg,
        (("sign", "review", "acme", "Acme Shop", "--reject", ""), ("MISSING_FIELD", "reason")),
        (("sign", "review", "nobody", "Acme Shop", "--approve"), ("NOT_FOUND", "nobody")),
        (("sign", "review", "acme", "Nope", "--approve"), ("NOT_FOUND", "Nope")),
        (("sign", "add", "acme", "X"), ("name",)),  # too short
        (("sign", "add", "acme", "Globex"), ("Globex",)),  # another account's approved sign
        (("sign", "add", "nobody", "Nobody Inc"), ("NOT_FOUND",)),
        (("sign", "list", "--account", "nobody"), ("NOT_FOUND",)),
    )
    rejected = ok(cfg, "sign", "review", "acme", "Acme Shop", "--reject", "no trademark proof")
    assert (rejected["status"], rejected["reason"]) == ("rejected", "no trademark proof")
    assert rejected["reviewed_at"] is not None
    again = ok(cfg, "sign", "review", "acme", "Acme Shop", "--approve")
    assert again["status"] == "approved"


# -- templates -------------------------------------------------------------------------------------


def test_template_review_lists_pending_and_decides(cfg: Path) -> None:
    ids = create_accounts(cfg, ("acme",))

    async def submit(store: Any, config: Any) -> list[Any]:
        flt = load_filter(config.rules.content_filter_file)
        bodies = [
            {"type": "verification", "name": "code", "content": "Your code is ${code}."},
            {"type": "notification", "name": "ship", "content": "Order ${order} has shipped."},
            {"type": "marketing", "name": "promo", "content": "Big sale today"},  # no opt-out
        ]
        return [
            await review.submit_template(store, ids["acme"], b, 1_700_000_000_000, config, flt)
            for b in bodies
        ]

    code_t, ship_t, promo_t = in_store(cfg, submit)
    assert promo_t.status == "rejected"  # by the automatic review

    pending = ok(cfg, "template", "review")
    assert sorted(p["code"] for p in pending) == sorted([code_t.code, ship_t.code])
    first = next(p for p in pending if p["code"] == code_t.code)
    assert first == {
        "code": code_t.code,
        "account": ids["acme"],
        "account_name": "acme",
        "type": "verification",
        "name": "code",
        "content": "Your code is ${code}.",
        "remark": "",
        "allow_urls": False,
        "international": False,
        "placeholders": ["code"],
        "created_at": 1_700_000_000_000,
        "revision": 1,
        "updated_at": None,
        "automatic_review": {"passed": True, "notes": []},
    }

    # A CODE without a decision shows that template as the queue does, with its status (a
    # read: it was refused, "give --approve or --reject", and so was a SELECT-only role).
    shown = ok(cfg, "template", "review", code_t.code)
    assert shown == {**first, "status": "pending", "reason": None}
    promo = ok(cfg, "template", "review", promo_t.code)
    assert (promo["status"], promo["automatic_review"]["passed"]) == ("rejected", False)
    assert promo["reason"], promo
    refused(
        cfg,
        (("template", "review", ship_t.code, "--reject", ""), ("MISSING_FIELD", "reason")),
        (("template", "review", ship_t.code, "--revision", "1"), ("--revision", "--approve")),
        (("template", "review", "SMS_000000000"), ("no template", "SMS_000000000")),
        (("template", "review", "--approve"), ("CODE",)),  # a decision without a code
        (("template", "review", "SMS_000000000", "--approve"), ("NOT_FOUND",)),
        (("template", "review", promo_t.code, "--approve"), ("INVALID_REQUEST", "automatic")),
    )
    decided = run_all(
        cfg,
        ("template", "review", code_t.code, "--approve"),
        ("template", "review", ship_t.code, "--reject", "say which carrier"),
    )
    assert [r[0] for r in decided] == [0, 0], decided
    approved, rejected = (json.loads(r[1]) for r in decided)
    assert (approved["status"], approved["account"]) == ("approved", ids["acme"])
    assert (rejected["status"], rejected["reason"]) == ("rejected", "say which carrier")

    listed = run_all(
        cfg,
        ("template", "review"),
        ("template", "list", "--account", "acme"),
    )
    still_pending, all_of_acme = (json.loads(r[1]) for r in listed)
    assert still_pending == []
    assert sorted((t["code"], t["status"]) for t in all_of_acme) == sorted(
        [(code_t.code, "approved"), (ship_t.code, "rejected"), (promo_t.code, "rejected")]
    )


# -- money -----------------------------------------------------------------------------------------


def test_topup_voucher_card_balance_and_check(cfg: Path) -> None:
    ids = create_accounts(cfg, ("acme",), ("globex", "--topup", "5"))
    top = ok(cfg, "bill", "topup", "acme", "100.5", "--ref", "inv-1")
    assert (top["account"], top["cash_micro"], top["cash"]) == (ids["acme"], 100_500_000, "100.50")
    assert top["added"] == [
        {"kind": "topup", "amount_micro": 100_500_000, "pocket": "cash", "ref": "inv-1",
         "expires_at": None}
    ]  # fmt: skip
    tiny = ok(cfg, "bill", "topup", "acme", "0.000001")  # the smallest exact amount
    assert tiny["cash_micro"] == 100_500_001

    refused(
        cfg,
        (("bill", "topup", "acme", "1.0000001"), ("1.0000001", "6 decimal places")),
        (("bill", "topup", "acme", "0"), ("amount",)),
        (("bill", "topup", "nobody", "1"), ("NOT_FOUND", "nobody")),
        (("bill", "voucher", "acme", "5", "--expires", "2020-01-01"), ("expires_at",)),
        (("bill", "voucher", "acme", "5", "--expires", "2099-02-30"), ("--expires", "2099-02-30")),
        (("bill", "balance", "nobody"), ("NOT_FOUND",)),
    )
    dated = ok(cfg, "bill", "voucher", "acme", "20", "--expires", "2099-12-31")
    # Valid through 31 December in Asia/Shanghai: until local midnight starting 1 January.
    end = _ms(datetime(2100, 1, 1, tzinfo=CST))
    assert dated["added"][0]["expires_at"] == end
    assert dated["added"][0]["amount_micro"] == 20_000_000
    forever = ok(cfg, "bill", "voucher", "acme", "0.5", "--never")
    assert forever["added"][0]["expires_at"] is None
    card = ok(cfg, "bill", "card", "acme", "999")
    (added,) = card["added"]
    assert (added["kind"], added["amount_micro"]) == ("card_purchase", 999_000_000)
    bought = datetime.fromtimestamp(added["expires_at"] / 1000, CST)
    assert bought.year == datetime.now(CST).year + 1

    balance = ok(cfg, "bill", "balance", "acme")
    assert balance["cash_micro"] == 100_500_001
    assert sorted(v["remaining_micro"] for v in balance["vouchers"]) == [500_000, 20_000_000]
    assert [c["remaining_micro"] for c in balance["cards"]] == [999_000_000]
    assert balance["available_domestic_micro"] == 100_500_001 + 20_500_000
    assert balance["available_international_micro"] == 100_500_001 + 20_500_000 + 999_000_000
    assert balance["account_kind"] == "prepaid"

    clean = ok(cfg, "bill", "check")
    assert (clean["accounts"], clean["pockets"], clean["ok"], clean["differences"]) == (
        2, 5, True, [],
    )  # fmt: skip  # acme: cash, 2 vouchers, card; globex: cash

    with db(cfg) as c:  # a running sum drifting from its ledger: what `bill check` is for
        c.execute(
            "UPDATE pockets SET amount = amount + 7 WHERE account_id=? AND pocket='cash'",
            (ids["acme"],),
        )
    (bad,) = run_all(cfg, ("bill", "check"))
    assert bad[0] == 1 and "1 pocket(s) disagree" in bad[2]
    report = json.loads(bad[1])
    assert report["ok"] is False
    assert report["differences"] == [
        {"account": ids["acme"], "pocket": "cash", "ledger_micro": 100_500_001,
         "pocket_micro": 100_500_008}
    ]  # fmt: skip


# -- settlement ------------------------------------------------------------------------------------


def _insert_message(cfg: Path, mid: str, account: str, state: str, units: int) -> None:
    """A January 2024 domestic message in its final (or still open) state."""
    with db(cfg) as c:
        c.execute(
            "INSERT INTO messages (id, account_id, batch_id, recipient, encoding, data_coding, "
            "segments, billable_units, segments_sent, state, accepted_at, q_state, q_not_before, "
            "price_class) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (mid, account, "bat_1", "+8613800138000", "gsm7", 0, units, units,
             0 if state == "queued" else units, state, JAN_2024,
             "queued" if state == "queued" else "done", JAN_2024, "D"),
        )  # fmt: skip


def test_settle_is_idempotent_and_reports_months_not_ready(cfg: Path) -> None:
    ids = create_accounts(cfg, ("acme", "--topup", "1"), ("globex",))
    _insert_message(cfg, "msg_a", ids["acme"], "delivered", 3)
    _insert_message(cfg, "msg_b", ids["globex"], "queued", 1)  # still awaiting its outcome

    async def charge(store: Any, _config: Any) -> None:
        # Charged 0.20 for 3 units priced 0.045 each at settlement: 0.065 comes back once.
        await store.append_ledger(
            ids["acme"], [Entry(EntryKind.CHARGE, -200_000, "cash", JAN_2024, "msg_a")]
        )

    in_store(cfg, charge)
    first = ok(cfg, "bill", "settle", "--month", "2024-01")
    assert first["month"] == "2024-01"
    results = {r["account"]: r for r in first["results"]}
    assert results[ids["acme"]] == {
        "account": ids["acme"],
        "status": "settled",
        "units": 3,
        "tier": 1,
        "refund_micro": 65_000,
        "refund_cash_micro": 65_000,
        "refund_vouchers_micro": 0,
        "refund_void_micro": 0,
        "invoice_total_micro": 0,
    }
    assert results[ids["globex"]]["status"] == "not_ready"
    assert results[ids["globex"]]["message"]

    second = ok(cfg, "bill", "settle", "--month", "2024-01")
    again = {r["account"]: r for r in second["results"]}
    assert again[ids["acme"]] == {**results[ids["acme"]], "status": "already_settled"}
    assert again[ids["globex"]]["status"] == "not_ready"
    only = ok(cfg, "bill", "settle", "--month", "2024-01", "--account", "acme")
    assert [r["status"] for r in only["results"]] == ["already_settled"]
    with db(cfg) as c:
        rows = c.execute(
            "SELECT account_id, amount, ref FROM ledger WHERE kind='settlement_adjustment'"
        ).fetchall()
    assert rows == [(ids["acme"], 65_000, "2024-01")]

    shown = run_all(
        cfg,
        ("bill", "show", "acme", "--month", "2024-01"),
        ("bill", "show", "acme", "--month", "2024-02"),
        ("bill", "balance", "acme"),
        ("bill", "check"),
    )
    assert [r[0] for r in shown] == [0, 0, 0, 0], shown
    settled, open_month, balance, check = (json.loads(r[1]) for r in shown)
    assert (settled["account"], settled["status"], settled["units"]) == (ids["acme"], "settled", 3)
    assert (settled["charged_micro"], settled["refund_micro"]) == (200_000, 65_000)
    assert (open_month["status"], open_month["units"]) == ("open", 0)
    assert open_month["settled_at"] is None
    assert balance["cash_micro"] == 1_000_000 - 200_000 + 65_000
    assert check["ok"] is True

    future = datetime.now(CST) + timedelta(days=40)
    refused(
        cfg,
        (("bill", "settle", "--month", "2024-13"), ("INVALID_MONTH", "2024-13")),
        (("bill", "settle", "--month", f"{future:%Y-%m}"), ("SETTLEMENT_NOT_READY",)),
        (("bill", "settle", "--month", "2024-01", "--account", "nobody"), ("NOT_FOUND",)),
        (("bill", "show", "acme", "--month", "2024-1"), ("INVALID_MONTH",)),
        (("bill", "show", "nobody", "--month", "2024-01"), ("NOT_FOUND",)),
    )


# -- tariffs ---------------------------------------------------------------------------------------


def test_tariff_list_add_and_validation(cfg: Path) -> None:
    tmp = cfg.parent
    (tmp / "july.yaml").write_text(
        "version: 2030-07\n"
        "effective_at: 2030-07-01T00:00:00+08:00\n"  # YAML reads this as a datetime
        "starting_price: 44000\n"
        "tiers:\n  - {up_to: 100000, price: 44000}\n  - {price: 40000}\n"
        "international: {'+1': 55000}\n"
    )
    (tmp / "aug.json").write_text(
        json.dumps(
            {
                "version": "2030-08",
                "effective_at": "2030-08-01T00:00:00Z",
                "tiers": [{"price": 43000}],
                "starting_price": 43000,
            }
        )
    )
    (tmp / "ms.json").write_text(
        json.dumps({"version": "2030-09", "effective_at": 1914422400000,
                    "tiers": [{"price": 42000}], "starting_price": 42000})
    )  # fmt: skip
    bad = {
        "tiers.json": {"version": "b1", "effective_at": 1, "tiers": [{"up_to": 5, "price": 1}],
                       "starting_price": 1},
        "unknown.json": {"version": "b2", "effective_at": 1, "colour": "red"},
        "cheap.json": {"version": "b3", "effective_at": 1, "tiers": [{"price": 50000}],
                       "starting_price": 45000},
        "naive.json": {"version": "b4", "effective_at": "2030-07-01T00:00:00"},
        "date.yaml": {"version": "b5", "effective_at": "2030-07-01"},
        "notiso.json": {"version": "b6", "effective_at": "next tuesday"},
        "past.json": {"version": "b7", "effective_at": "2024-01-01T00:00:00Z",
                      "tiers": [{"price": 40000}], "starting_price": 40000},
        "between.json": {"version": "b8", "effective_at": "2030-07-15T00:00:00Z",
                         "tiers": [{"price": 40000}], "starting_price": 40000},
    }  # fmt: skip
    for name, body in bad.items():
        text = json.dumps(body)
        if name == "date.yaml":
            text = "version: b5\neffective_at: 2030-07-01\n"  # a YAML date, no time
        (tmp / name).write_text(text)
    (tmp / "broken.yaml").write_text("version: [\n")

    initial = ok(cfg, "tariff", "list")
    assert [(t["version"], t["effective_at"]) for t in initial] == [("initial", 0)]
    assert initial[0]["international"] == {"+1": 60_000}
    july = ok(cfg, "tariff", "add", str(tmp / "july.yaml"))
    assert july["effective_at"] == _ms(datetime(2030, 7, 1, tzinfo=CST))
    assert (july["starting_price"], july["international"]) == (44_000, {"+1": 55_000})
    assert july["tiers"] == [{"up_to": 100_000, "price": 44_000}, {"up_to": None, "price": 40_000}]
    added = run_all(cfg, ("tariff", "add", str(tmp / "aug.json")))
    assert added[0][0] == 0, added
    assert json.loads(added[0][1])["effective_at"] == _ms(datetime(2030, 8, 1, tzinfo=UTC))
    assert ok(cfg, "tariff", "add", str(tmp / "ms.json"))["effective_at"] == 1_914_422_400_000

    refused(
        cfg,
        (("tariff", "add", str(tmp / "july.yaml")), ("TARIFF_EXISTS", "2030-07")),
        (("tariff", "add", str(tmp / "tiers.json")), ("INVALID_TARIFF", "tiers[1].up_to")),
        (("tariff", "add", str(tmp / "unknown.json")), ("colour: unknown tariff field",)),
        (("tariff", "add", str(tmp / "cheap.json")), ("starting_price",)),
        (("tariff", "add", str(tmp / "naive.json")), ("effective_at", "offset")),
        (("tariff", "add", str(tmp / "date.yaml")), ("effective_at",)),
        (("tariff", "add", str(tmp / "notiso.json")), ("effective_at", "ISO-8601")),
        # A version never re-prices what was already accepted: not in the past, not before
        # the latest version.
        (("tariff", "add", str(tmp / "past.json")), ("INVALID_TARIFF", "in the past")),
        (("tariff", "add", str(tmp / "between.json")), ("INVALID_TARIFF", "later than")),
        (("tariff", "add", str(tmp / "broken.yaml")), ("broken.yaml", "not YAML or JSON")),
    )
    versions = ok(cfg, "tariff", "list")
    assert [t["version"] for t in versions] == ["initial", "2030-07", "2030-08", "2030-09"]


# -- do-not-contact lists --------------------------------------------------------------------------


def test_dnc_import_superseded_prints_the_code_and_exits_1(
    cfg: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another import of the list (an operator's PUT) starts while this one writes its entries
    (SQLite, in chunks): this one stops, says so on one line, exits 1; the other's stands."""
    from bridge import cli
    from bridge.store import sqlite_dnc

    tmp = cfg.parent
    (tmp / "cn.csv").write_text("".join(f"+86138{k:08d}\n" for k in range(10)))
    monkeypatch.setattr(sqlite_dnc, "ENTRY_CHUNK", 4)
    real = sqlite_dnc._write_entries

    def entries(c: sqlite3.Connection, list_id: str, gen: int, chunk: Any) -> None:
        real(c, list_id, gen, chunk)
        sqlite_dnc._latest(c, list_id, gen + 1)  # the other import records itself

    monkeypatch.setattr(sqlite_dnc, "_write_entries", entries)
    rc = cli.main(["dnc", "import", "cn", str(tmp / "cn.csv"), "-c", str(cfg)])
    out = capsys.readouterr()
    assert rc == 1 and out.out == ""
    check_refused((rc, out.out, out.err), "smpp-bridge: DNC_IMPORT_SUPERSEDED: ", "'cn'",
                  "imported again or deleted", "smpp-bridge dnc list")  # fmt: skip
    c = sqlite3.connect(tmp / "bridge.db")
    try:  # 4 entries written before it stopped; the later import's step 4 removes them
        assert c.execute("SELECT COUNT(*) FROM dnc_entries").fetchone() == (4,)
        assert c.execute("SELECT COUNT(*) FROM dnc_lists").fetchone() == (0,)
    finally:
        c.close()


def test_dnc_import_list_delete(cfg: Path) -> None:
    tmp = cfg.parent
    (tmp / "cn.csv").write_text(
        "number,note\n13800138000,a\n+8613900139000\n# a comment\n\n+86137*\nbogus-1\n"
    )
    (tmp / "clean.csv").write_text("+447700900123\n+447700900124\n")
    (tmp / "latin1.csv").write_bytes("13800138000,caf\xe9\n".encode("latin-1"))

    refused(
        cfg,
        (("dnc", "import", "cn", str(tmp / "cn.csv"), "--country", "CN"),
         ("INVALID_FIELD: ", "1 bad line(s)", "nothing imported", "line 7")),
        (("dnc", "import", "bad id!", str(tmp / "clean.csv")), ("ID",)),
        (("dnc", "import", "cn", str(tmp / "clean.csv"), "--country", "cn"), ("--country",)),
        (("dnc", "import", "cn", str(tmp / "latin1.csv")), ("UTF-8",)),
        (("dnc", "delete", "cn"), ("NOT_FOUND",)),
    )  # fmt: skip
    assert ok(cfg, "dnc", "list") == []  # the strict refusal imported nothing

    cn = ok(cfg, "dnc", "import", "cn", str(tmp / "cn.csv"), "--country", "CN", "--lenient",
            "--name", "CN register")  # fmt: skip
    assert (cn["id"], cn["name"], cn["country"], cn["numbers"], cn["prefixes"]) == (
        "cn", "CN register", "CN", 2, 1,
    )  # fmt: skip
    assert len(cn["skipped"]) == 1 and cn["skipped"][0].startswith("line 7:")
    uk = ok(cfg, "dnc", "import", "uk", str(tmp / "clean.csv"))
    assert (uk["name"], uk["numbers"], uk["prefixes"], uk["skipped"]) == ("uk", 2, 0, [])

    async def blocks(store: Any, _config: Any) -> list[bool]:
        numbers = ("+8613800138000", "+8613712345678", "+8613600000000", "+447700900123")
        return [await store.dnc_blocks(n) for n in numbers]

    assert in_store(cfg, blocks) == [True, True, False, True]
    # Re-importing an id replaces the whole list.
    replaced = ok(cfg, "dnc", "import", "cn", str(tmp / "clean.csv"))
    assert (replaced["numbers"], replaced["prefixes"], replaced["country"]) == (2, 0, None)
    assert [(d["id"], d["numbers"]) for d in ok(cfg, "dnc", "list")] == [("cn", 2), ("uk", 2)]
    assert ok(cfg, "dnc", "delete", "uk") == {"id": "uk", "deleted": True}
    assert [d["id"] for d in ok(cfg, "dnc", "list")] == ["cn"]
    assert in_store(cfg, blocks) == [False, False, False, True]  # now only via "cn"


# -- account closure -------------------------------------------------------------------------------


def test_account_close_keeps_money_records_and_revokes_keys(cfg: Path) -> None:
    ids = create_accounts(cfg, ("acme", "--topup", "10"))
    closed = ok(cfg, "account", "close", "acme")
    assert (closed["id"], closed["status"]) == (ids["acme"], "closed")
    assert closed["refund_owed_micro"] == 10_000_000  # session 36: the cash is owed back
    assert closed["status_callback_url"] is None
    after = run_all(cfg, ("key", "list", "acme"), ("bill", "balance", ids["acme"]))
    assert [r[0] for r in after] == [0, 0], after
    keys, balance = (json.loads(r[1]) for r in after)
    assert keys and all(k["status"] == "revoked" for k in keys)
    assert balance["cash_micro"] == 0  # written off as `closed`; the ledger keeps the top-up
    refused(cfg, (("account", "close", "nobody"), ("NOT_FOUND", "nobody")))


def test_account_close_drops_the_waiting_reply_parts_in_the_smscs_national_form(
    cfg: Path,
) -> None:
    """`account close` drops the waiting parts of long replies from the numbers the account
    wrote to, as the SMSC gave their address: with the SMSCs' national_prefix, the national
    form too (as the erasure and the admin close read it)."""
    data = yaml.safe_load(cfg.read_text())
    data["smscs"][0]["national_prefix"] = "+86"
    cfg.write_text(yaml.safe_dump(data))
    ids = create_accounts(cfg, ("acme",))
    _insert_message(cfg, "m1", ids["acme"], "delivered", 1)  # to +8613800138000, no sender
    sources = ("013800138000", "13800138000", "013900139000")

    async def waiting(store: Any, _config: Any) -> None:
        for ref, source in enumerate(sources):
            await store.add_mo_part(MoPart("main", source, "1069", ref, 2, 1, 0, b"p", JAN_2024, 1))

    in_store(cfg, waiting)
    ok(cfg, "account", "close", "acme")
    with db(cfg) as c:
        left = [r[0] for r in c.execute("SELECT source FROM mo_parts")]
    assert left == ["013900139000"]


def test_bill_refs_are_credited_once_and_a_closed_account_takes_no_money(cfg: Path) -> None:
    """Session 35 finance review 3-5 on the CLI: a ref again with the same amount is a
    duplicate (exit 0), with another amount refused (exit 1, PAYMENT_REF_REUSED naming the ref
    and both amounts); a card or voucher takes --ref as a top-up; a closed account takes
    nothing (ACCOUNT_CLOSED)."""
    ids = create_accounts(cfg, ("acme",))
    first = ok(cfg, "bill", "topup", "acme", "500", "--ref", "BANK-7731")
    assert first["cash_micro"] == 500_000_000
    again = ok(cfg, "bill", "topup", "acme", "500", "--ref", "BANK-7731")
    assert (again["duplicate_ref"], again["added"]) == ("BANK-7731", [])
    refused(
        cfg,
        (
            ("bill", "topup", "acme", "1000", "--ref", "BANK-7731"),
            ("PAYMENT_REF_REUSED", "'BANK-7731'", "500.00", "1000.00"),
        ),
    )
    card = ok(cfg, "bill", "card", "acme", "999", "--ref", "SHOP-88")
    assert [(a["kind"], a["ref"]) for a in card["added"]] == [("card_purchase", "SHOP-88")]
    assert ok(cfg, "bill", "card", "acme", "999", "--ref", "SHOP-88")["duplicate_ref"] == "SHOP-88"
    grant = ("bill", "voucher", "acme", "1", "--never", "--ref", "PROMO-1")
    assert ok(cfg, *grant)["added"][0]["ref"] == "PROMO-1"
    assert ok(cfg, *grant)["duplicate_ref"] == "PROMO-1"
    balance = ok(cfg, "bill", "balance", "acme")
    assert (balance["cash_micro"], len(balance["cards"]), len(balance["vouchers"])) == (
        500_000_000,
        1,
        1,
    )
    ok(cfg, "account", "close", "acme")
    refused(
        cfg,
        (("bill", "topup", ids["acme"], "5", "--ref", "BANK-9"), ("ACCOUNT_CLOSED",)),
        (("bill", "voucher", ids["acme"], "1", "--never"), ("ACCOUNT_CLOSED",)),
        (("bill", "card", ids["acme"], "999"), ("ACCOUNT_CLOSED",)),
    )
    assert ok(cfg, "bill", "balance", ids["acme"])["cash_micro"] == 0  # owed back at the close


def test_reject_takes_a_reason_in_help_and_on_the_command_line(cfg: Path) -> None:
    """`--reject REASON`: --help shows the reason as required (it once read `--reject [REASON]`,
    though a rejection without one is refused), and `--reject` alone is a usage error (exit 2)
    that reaches no store."""
    commands = (("sign", "review"), ("template", "review"))
    helps = run_all(cfg, *((*c, "--help") for c in commands))
    for command, (rc, stdout, _stderr) in zip(commands, helps, strict=True):
        assert rc == 0 and "--reject REASON" in stdout, (command, stdout)
        assert "[REASON]" not in stdout, (command, stdout)
    bare = run_all(
        cfg,
        ("sign", "review", "acme", "Acme", "--reject"),
        ("template", "review", "SMS_000000000", "--reject"),
    )
    for rc, stdout, stderr in bare:
        assert (rc, stdout) == (2, ""), stderr
        assert "--reject: expected one argument" in stderr, stderr


def test_account_low_balance_threshold_in_currency_units(cfg: Path) -> None:
    """`--low-balance-threshold` on create and update: an amount like every CLI amount, stored
    as the API's micro-units, refused as the API refuses it (and before an account is made)."""
    created = ok(cfg, "account", "create", "acme", "--low-balance-threshold", "20.5")
    assert created["settings"]["low_balance_threshold"] == 20_500_000
    updated = ok(cfg, "account", "update", "acme", "--low-balance-threshold", "0.000001")
    assert updated["low_balance_threshold"] == 1
    assert ok(cfg, "account", "show", "acme")["low_balance_threshold"] == 1
    refused(
        cfg,
        (
            ("account", "update", "acme", "--low-balance-threshold", "1000000000.000001"),
            ("INVALID_FIELD", "low_balance_threshold", "10^15"),
        ),
        (("account", "update", "acme", "--low-balance-threshold", "-1"), ("not negative",)),
        (("account", "update", "acme", "--low-balance-threshold", "0.0000001"), ("6 decimal",)),
        (("account", "update", "acme", "--low-balance-threshold", "ten"), ("not an amount",)),
        (("account", "create", "globex", "--low-balance-threshold", "x"), ("not an amount",)),
        (
            ("account", "create", "globex", "--low-balance-threshold", "2000000000"),
            ("INVALID_FIELD", "low_balance_threshold"),
        ),
    )
    assert (
        ok(cfg, "account", "update", "acme", "--low-balance-threshold", "0")[
            "low_balance_threshold"
        ]
        == 0
    )
    names = [a["name"] for a in ok(cfg, "account", "list")]
    assert names == ["acme"]  # the refused creates made nothing
