"""Operator commands for the sending rules and money: `sign`, `template`, `bill`, `tariff`, `dnc`.

The same services as the admin API (bridge.review, bridge.billing, the store), opened directly on
the store so an operator can act with the daemon stopped. Kept out of bridge.cli so the daemon's
entry point stays small; bridge.cli registers these parsers and catches CliError for them.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bridge.cli import (
    CliError,
    _config,
    _now_ms,
    _print,
    _with_services,
    parse_amount,
    setup_logging,
)
from bridge.config import Config
from bridge.store.models import Account

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_STATUSES = ("pending", "approved", "rejected")
CARD_CHOICES = ("999", "1999", "4999")


@dataclass(frozen=True, slots=True)
class Ops:
    """What every command works with: the config, the account service (and its store), one clock
    reading (one `now` per command, so a printed result is consistent with itself)."""

    config: Config
    svc: Any  # bridge.accounts.AccountService
    now: int

    @property
    def store(self) -> Any:
        return self.svc.store

    async def account(self, ref: str) -> Account:
        account: Account = await self.svc.resolve(ref)
        return account

    async def account_id(self, ref: str | None) -> str | None:
        return None if ref is None else (await self.account(ref)).id

    def now_ms(self) -> int:
        return self.now


def _run(args: argparse.Namespace, fn: Callable[[Ops], Awaitable[int]]) -> int:
    """Open the store, run `fn`, turn every service refusal into one line and exit code 1."""
    from bridge.accounts import AccountError
    from bridge.domain.tariffs import BillingError
    from bridge.review import ReviewError
    from bridge.store.base import StoreError

    cfg = _config(args)
    setup_logging(cfg, "WARNING")

    async def go(svc: Any) -> int:
        try:
            return await fn(Ops(cfg, svc, _now_ms()))
        except (AccountError, BillingError, ReviewError, StoreError) as exc:
            raise CliError(f"{exc.code}: {exc.message}") from None

    return asyncio.run(_with_services(cfg, go))


def _decision(args: argparse.Namespace) -> tuple[str, str | None] | None:
    if args.approve:
        return "approve", None
    if args.reject is not None:
        return "reject", args.reject  # "" reaches the service, which names the missing reason
    return None


# -- sign names ------------------------------------------------------------------------------------


def cmd_sign(args: argparse.Namespace) -> int:
    from bridge import review

    async def go(ops: Ops) -> int:
        if args.action == "list":
            rows = await ops.store.list_signs(
                account_id=await ops.account_id(args.account), status=args.status
            )
            _print([review.sign_view(s, operator=True) for s in rows])
            return 0
        account = await ops.account(args.account)
        if args.action == "add":
            body: dict[str, Any] = {"name": args.name, "source": args.source}
            if args.remark is not None:
                body["remark"] = args.remark
            sign = await review.submit_sign(ops.store, account.id, body, ops.now)
            if args.approve:
                sign = await review.decide_sign(
                    ops.store, account.id, sign.name, "approve", None, ops.now
                )
        else:
            decided = _decision(args)
            assert decided is not None  # the parser requires one of --approve / --reject
            sign = await review.decide_sign(ops.store, account.id, args.name, *decided, ops.now)
        _print(review.sign_view(sign, operator=True))
        return 0

    return _run(args, go)


# -- templates -------------------------------------------------------------------------------------


async def _pending_view(ops: Ops, t: Any, names: dict[str, str], flt: Any) -> dict[str, Any]:
    """A pending template as the reviewer needs it, with the automatic review run again now: the
    content filter or the account's longest sign may have changed since it was submitted."""
    from bridge.domain.templates import TemplateError, TemplateKind, placeholders, review

    if t.account_id not in names:
        account = await ops.store.get_account(t.account_id)
        names[t.account_id] = account.name if account else t.account_id
    signs = await ops.store.list_signs(account_id=t.account_id)
    auto = review(
        TemplateKind(t.kind),
        t.content,
        content_filter=flt,
        sign_format=ops.config.text.sign_format,
        longest_sign=max((len(s.name) for s in signs), default=0),
        max_chars=ops.config.text.max_chars,
    )
    try:
        params: list[str] | None = list(placeholders(t.content))
    except TemplateError:
        params = None
    return {
        "code": t.code,
        "account": t.account_id,
        "account_name": names[t.account_id],
        "type": t.kind,
        "name": t.name,
        "content": t.content,
        "remark": t.remark,
        "allow_urls": t.allow_urls,
        "international": t.international,
        "placeholders": params,
        "created_at": t.created_at,
        "revision": t.revision,  # what `template review CODE --revision N` names
        "updated_at": t.updated_at,
        "automatic_review": {
            "passed": auto.approved,
            "notes": [f"{c}: {r}" for c, r in zip(auto.codes, auto.reasons, strict=True)],
        },
    }


async def _show_for_review(ops: Ops, args: argparse.Namespace) -> int:
    """`template review CODE` without a decision: the template as the queue shows it (the
    automatic review run again, the revision to decide with), with its status and reason. A
    read: it used to refuse ("give --approve or --reject"), and as a command that might write,
    refused a SELECT-only role with a permission error instead (bridge/cli.py, _reads_only)."""
    from bridge.rules import load_filter

    if args.revision is not None:
        raise CliError(f"template review {args.code}: --revision goes with --approve or --reject")
    t = await ops.store.get_template(args.code)
    if t is None:
        raise CliError(f"template review: no template {args.code!r}")
    flt = load_filter(ops.config.rules.content_filter_file)
    view = await _pending_view(ops, t, {}, flt)
    _print({**view, "status": t.status, "reason": t.reason})
    return 0


def cmd_template(args: argparse.Namespace) -> int:
    from bridge import review
    from bridge.rules import load_filter

    async def go(ops: Ops) -> int:
        decided = _decision(args) if args.action == "review" else None
        if args.action == "review" and args.code is not None:
            if decided is None:
                return await _show_for_review(ops, args)
            t = await review.decide_template(ops.store, args.code, *decided, ops.now, args.revision)
            _print(review.template_view(t, operator=True))
            return 0
        if decided is not None:
            raise CliError("template review: --approve/--reject need a template CODE")
        account_id = await ops.account_id(args.account)
        if args.action == "list":
            rows = await ops.store.list_templates(account_id=account_id, status=args.status)
            _print([review.template_view(t, operator=True) for t in rows])
            return 0
        rows = await ops.store.list_templates(account_id=account_id, status="pending")
        flt = load_filter(ops.config.rules.content_filter_file)
        names: dict[str, str] = {}
        _print([await _pending_view(ops, t, names, flt) for t in rows])
        return 0

    return _run(args, go)


# -- money -----------------------------------------------------------------------------------------


def end_of_day(text: str, tz: str) -> int:
    """`--expires 2025-12-31`: the voucher is valid through that whole local day, i.e. until the
    next local midnight (a voucher is valid while now < expires_at)."""
    try:
        if not _DATE.fullmatch(text):
            raise ValueError
        day = date.fromisoformat(text)
    except ValueError:
        raise CliError(f"--expires: {text!r} is not a date (YYYY-MM-DD)") from None
    local = datetime.combine(day + timedelta(days=1), time(0), tzinfo=ZoneInfo(tz))
    return (local - _EPOCH) // _MS


async def _money(ops: Ops, ref: str, kind: str, body: dict[str, Any]) -> int:
    from bridge import billing

    account = await ops.account(ref)
    entries = billing.money_entries(kind, body, ops.now, ops.config.rules.timezone)
    once = billing.credited_once(body)  # with --ref: safe to run again
    # ACCOUNT_CLOSED and PAYMENT_REF_REUSED are StoreErrors: _run prints them and exits 1.
    added = await ops.store.append_ledger(account.id, entries, once=once)
    view = await _balance(ops, account)
    if not added:
        view["duplicate_ref"] = entries[0].ref
        view["added"] = []
        _print(view)
        return 0
    view["added"] = billing.added_view(entries)
    _print(view)
    return 0


async def _balance(ops: Ops, account: Account) -> dict[str, Any]:
    from bridge import billing

    view = {"account": account.id}
    view.update(
        await billing.account_balance(ops.store, account, ops.now, ops.config.billing.currency)
    )
    return view


async def _bill_show(ops: Ops, ref: str, month: str) -> dict[str, Any]:
    from bridge.api.errors import ApiError
    from bridge.api.rules_api import check_month
    from bridge.billing import Tariffs, month_view

    account = await ops.account(ref)
    book = Tariffs(ops.store, ops.config.billing)
    await book.load(ops.now, store_first=False)  # a read (it may have SELECT alone)
    try:
        view = await month_view(ops.store, account, check_month(month), book.versions, ops.config)
    except ApiError as exc:  # check_month: INVALID_MONTH; BillingError is turned by _run
        raise CliError(f"{exc.code}: {exc.message}") from None
    return {"account": account.id, **view}


async def _check(ops: Ops, ref: str | None) -> int:
    """Each pocket's running sum (what sends are checked against) against the ledger's own sum;
    the money closed accounts hold (none may); the refunds owed back and not yet recorded as
    paid (listed, not a failure: the operator's to pay), and any recorded as paid beyond what
    was owed (a failure: money the books cannot account for)."""
    from bridge.domain import admission as adm
    from bridge.domain import ledger

    accounts = [await ops.account(ref)] if ref else await ops.store.list_accounts()
    differences = []
    closed_holding = []
    refunds_outstanding = []
    refunds_overpaid = []
    pockets_checked = 0
    for account in accounts:
        refund = ledger.refund_position(await ops.store.ledger_kind_sums(account.id))
        owed = {"account": account.id, "owed_micro": refund.owed, "paid_micro": refund.paid}
        if refund.outstanding > 0:
            refunds_outstanding.append({**owed, "outstanding_micro": refund.outstanding})
        elif refund.outstanding < 0:
            refunds_overpaid.append({**owed, "overpaid_micro": -refund.outstanding})
        sums = await ops.store.ledger_sums(account.id)
        pockets = await ops.store.get_pockets(account.id)
        kept = {p.pocket: p.amount for p in pockets}
        if account.status == "closed":
            # A close writes off what the pockets hold (admission.close_plan), and so does any
            # credit after it: money left on a closed account is money the books lost track of.
            left = adm.close_plan(pockets, ops.now)
            closed_holding += [
                {"account": account.id, "pocket": e.pocket, "pocket_micro": -e.amount} for e in left
            ]
        for pocket in sorted(set(sums) | set(kept)):
            pockets_checked += 1
            ledger_sum, running = int(sums.get(pocket) or 0), int(kept.get(pocket) or 0)
            if ledger_sum != running:
                differences.append(
                    {
                        "account": account.id,
                        "pocket": pocket,
                        "ledger_micro": ledger_sum,
                        "pocket_micro": running,
                    }
                )
    _print(
        {
            "accounts": len(accounts),
            "pockets": pockets_checked,
            "ok": not differences and not closed_holding and not refunds_overpaid,
            "differences": differences,
            "closed_holding": closed_holding,
            "refunds_outstanding": refunds_outstanding,
            "refunds_overpaid": refunds_overpaid,
        }
    )
    if differences:
        print(
            f"smpp-bridge: {len(differences)} pocket(s) disagree with the ledger", file=sys.stderr
        )
    if closed_holding:
        print(
            f"smpp-bridge: {len(closed_holding)} pocket(s) of closed accounts hold money",
            file=sys.stderr,
        )
    if refunds_overpaid:
        print(
            f"smpp-bridge: {len(refunds_overpaid)} account(s) paid back more than they were owed",
            file=sys.stderr,
        )
    return 1 if differences or closed_holding or refunds_overpaid else 0


def cmd_bill(args: argparse.Namespace) -> int:
    from bridge import billing

    async def go(ops: Ops) -> int:
        action = args.action
        if action == "topup":
            body: dict[str, Any] = {"amount_micro": parse_amount(args.amount)}
            if args.ref is not None:
                body["ref"] = args.ref
            return await _money(ops, args.account, "topup", body)
        if action == "voucher":
            expires = None if args.never else end_of_day(args.expires, ops.config.rules.timezone)
            body = {"amount_micro": parse_amount(args.amount), "expires_at": expires}
            if args.ref is not None:
                body["ref"] = args.ref
            return await _money(ops, args.account, "voucher", body)
        if action == "card":
            body = {"face_value_micro": int(args.face_value) * 1_000_000}
            if args.ref is not None:
                body["ref"] = args.ref
            return await _money(ops, args.account, "card", body)
        if action == "refund":
            body = {"amount_micro": parse_amount(args.amount), "ref": args.ref}
            view, _added = await billing.pay_refund(
                ops.store,
                await ops.account(args.account),
                body,
                ops.now,
                ops.config.billing.currency,
            )
            _print(view)  # a retry: duplicate_ref, exit 0 (the payout is recorded once)
            return 0
        if action == "balance":
            _print(await _balance(ops, await ops.account(args.account)))
            return 0
        if action == "show":
            _print(await _bill_show(ops, args.account, args.month))
            return 0
        if action == "check":
            return await _check(ops, args.account)
        # settle
        if args.account is not None:
            accounts = [await ops.account(args.account)]
        else:
            accounts = await ops.store.list_accounts()
        book = billing.Tariffs(ops.store, ops.config.billing)
        await book.load(ops.now)
        results = await billing.settle_accounts(
            ops.store, accounts, args.month, book.versions, ops.config, ops.now
        )
        _print({"month": args.month, "results": results})
        return 0

    return _run(args, go)


# -- tariffs ---------------------------------------------------------------------------------------


def effective_ms(value: Any) -> Any:
    """`effective_at` as unix ms: given as ms, or ISO-8601 with an offset (a string, or the
    datetime YAML makes of an unquoted one). Anything else goes on to the validator to name."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise CliError(
                f"effective_at: {value!r} is not ISO-8601 (e.g. 2025-07-01T00:00:00+08:00)"
            ) from None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise CliError("effective_at: give the UTC offset (e.g. 2025-07-01T00:00:00+08:00)")
        return (value - _EPOCH) // _MS
    if isinstance(value, date):
        raise CliError("effective_at: a date alone is ambiguous; give a time and a UTC offset")
    return value


def read_tariff_file(path: str) -> Any:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: not YAML or JSON: {' '.join(str(exc).split())}") from None
    except (ValueError, RecursionError):  # a number of thousands of digits, nesting too deep
        raise CliError(f"{path}: a number too long or lists nested too deep to read") from None
    if isinstance(data, dict) and "effective_at" in data:
        data["effective_at"] = effective_ms(data["effective_at"])
    return data


def cmd_tariff(args: argparse.Namespace) -> int:
    from bridge import billing

    async def go(ops: Ops) -> int:
        # Read inside the store's session, so a refused file is in the audit trail too.
        data = read_tariff_file(args.file) if args.action == "add" else None
        book = billing.Tariffs(ops.store, ops.config.billing)
        # Loading first stores the configured tariff when there is none yet: a version added now
        # must not become the only one (nothing would price the time before it). `tariff list`
        # changes nothing (its store may be opened for reads only): it shows that tariff unstored.
        await book.load(ops.now, store_first=args.action != "list")
        if args.action == "list":
            _print([billing.tariff_view(t) for t in book.versions])
            return 0
        t = billing.tariff_from_dict(data)
        await book.add(t, ops.now)
        _print(billing.tariff_view(t))
        return 0

    return _run(args, go)


# -- do-not-contact lists --------------------------------------------------------------------------


def cmd_dnc(args: argparse.Namespace) -> int:
    from bridge.api.admin_rules import COUNTRY, LIST_ID, dnc_view
    from bridge.domain.dnc import DncImport, parse_dnc_lines
    from bridge.store.models import DncInfo

    def read_list() -> DncImport:
        # Checked inside the store's session, so these refusals are in the audit trail too.
        if not LIST_ID.fullmatch(args.id):
            raise CliError("ID: 1-64 of A-Z a-z 0-9 _ . -")
        if args.country is not None and not COUNTRY.fullmatch(args.country):
            raise CliError("--country: ISO 3166 alpha-2, upper case (e.g. CN)")
        # Line by line: a national registry is tens of millions of lines, read whole it was
        # held as one str and again as a list of lines.
        try:
            with open(args.file, encoding="utf-8", newline="") as f:
                return parse_dnc_lines(f, args.country)
        except OSError as exc:
            raise CliError(f"{args.file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise CliError(f"{args.file}: the list must be UTF-8 text") from None

    async def go(ops: Ops) -> int:
        if args.action == "list":
            _print([dnc_view(d) for d in await ops.store.list_dnc()])
            return 0
        if args.action == "delete":
            if not await ops.store.delete_dnc(args.id):
                raise CliError(f"NOT_FOUND: no do-not-contact list {args.id!r}")
            _print({"id": args.id, "deleted": True})
            return 0
        parsed = read_list()
        if parsed.bad_count and not args.lenient:
            raise CliError(
                f"INVALID_FIELD: {args.file}: {parsed.bad_count} bad line(s), nothing imported "
                "(--lenient skips them): " + "; ".join(parsed.bad[:20])
            )
        name = (args.name or args.id)[:200]
        info = DncInfo(
            args.id, name, args.country, len(parsed.numbers), len(parsed.prefixes), ops.now
        )
        ended = await ops.store.import_dnc(info, parsed.numbers, parsed.prefixes)
        view = dnc_view(info)
        view["skipped"] = list(parsed.bad)
        view["messages_ended"] = ended
        _print(view)
        return 0

    return _run(args, go)


def cmd_secrets(args: argparse.Namespace) -> int:
    """`secrets reseal`: every stored secret sealed under the current master key (bridge/reseal.py).
    Exit 1 while some secret opens with neither key: removing the previous key then would lose
    it."""
    from bridge.reseal import reseal

    async def go(ops: Ops) -> int:
        current, previous = ops.svc.sealer.key_ids
        if not previous:
            # Why: the daemon's keys often come from its unit's environment file, which an
            # operator's shell does not load; a run there had only the old key (the file's) and
            # reported every secret already current, the README's signal to drop the previous
            # key, and the restart without it refused to start (session 48's trial).
            print(
                f"smpp-bridge: WARNING: no previous master key: this command has master key "
                f"{current} alone, so it reseals nothing and counts as current what is under "
                f"{current}. During a rotation run it with the daemon's keys (under systemd: "
                "set -a; . /etc/smpp-bridge/env; set +a) and check that master_key names the "
                "new key (the daemon's start line says which it has)",
                file=sys.stderr,
            )
        report = await reseal(ops.store, ops.svc.sealer, dry_run=args.dry_run)
        _print(
            {
                **report.as_dict(args.dry_run),
                "master_key": current,
                "previous_master_keys": previous,
            }
        )
        return 1 if report.unreadable else 0

    return _run(args, go)


def cmd_audit(args: argparse.Namespace) -> int:
    """`audit list`: the operators' actions, oldest first (bridge/audit.py)."""
    from bridge.api.admin_ops import audit_view

    if not 1 <= args.limit <= 1000:
        raise CliError("--limit: an integer from 1 to 1000")
    if args.after < 0:
        raise CliError("--after: an entry id (0 or more)")

    async def go(ops: Ops) -> int:
        rows = await ops.store.audit_page(args.after, args.limit)
        _print([audit_view(e) for e in rows])
        return 0

    return _run(args, go)


def cmd_mo(args: argparse.Namespace) -> int:
    """`mo list --unattributed`: GET /admin/mo's page, read from the store (the daemon may be
    stopped, as for `audit list`)."""
    from bridge.api.admin_mo import mo_cursor, mo_view, parse_cursor
    from bridge.api.errors import ApiError

    if not args.unattributed:
        raise CliError("mo list: --unattributed is required (the replies stored for no account)")
    if not 1 <= args.limit <= 1000:
        raise CliError("--limit: an integer from 1 to 1000")
    try:
        before = parse_cursor(args.cursor) if args.cursor else None
    except ApiError as exc:
        raise CliError(f"--cursor: {exc.message.partition(': ')[2]}") from None

    async def go(ops: Ops) -> int:
        rows = await ops.store.unattributed_mo(before, args.limit + 1)
        page = rows[: args.limit]
        more = len(rows) > args.limit
        _print(
            {"mo": [mo_view(m) for m in page], "next_cursor": mo_cursor(page[-1]) if more else None}
        )
        return 0

    return _run(args, go)


# -- parsers ---------------------------------------------------------------------------------------


Configured = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]


def _decide(sp: argparse.ArgumentParser, required: bool) -> None:
    g = sp.add_mutually_exclusive_group(required=required)
    g.add_argument("--approve", action="store_true")
    # REASON is required: `--reject` alone is a usage error, and `--reject ""` reaches the
    # service, which refuses an empty reason by name (MISSING_FIELD).
    g.add_argument("--reject", metavar="REASON", help="reject, telling the customer why")


def add_parsers(sub: Any, with_config: Configured) -> None:
    """Register sign, template, bill, tariff and dnc under the top-level subparsers."""
    sign = sub.add_parser("sign", help="sign names: list, register, review")
    s = sign.add_subparsers(dest="action", required=True)
    sl = with_config(s.add_parser("list"))
    sl.add_argument("--status", choices=_STATUSES)
    sl.add_argument("--account", help="account id or name")
    sa = with_config(s.add_parser("add", help="register a sign name for an account"))
    sa.add_argument("account")
    sa.add_argument("name")
    sa.add_argument("--source", default="company", help="company, trademark, app, website, ...")
    sa.add_argument("--remark")
    sa.add_argument("--approve", action="store_true", help="approve it at once")
    sr = with_config(s.add_parser("review", help="approve or reject a pending sign name"))
    sr.add_argument("account")
    sr.add_argument("name")
    _decide(sr, required=True)
    sign.set_defaults(fn=cmd_sign)

    tpl = sub.add_parser("template", help="templates: list, review")
    t = tpl.add_subparsers(dest="action", required=True)
    tl = with_config(t.add_parser("list"))
    tl.add_argument("--status", choices=_STATUSES)
    tl.add_argument("--account", help="account id or name")
    tr = with_config(
        t.add_parser(
            "review",
            help="no CODE: the pending templates; CODE: show it, or decide on it (--approve, "
            "--reject)",
        )
    )
    tr.add_argument("code", nargs="?")
    tr.add_argument("--account", help="only this account's pending templates")
    _decide(tr, required=False)
    tr.add_argument(
        "--revision",
        type=int,
        help="decide only if the template is still at this revision (as listed): a correction "
        "the customer made since is not decided unseen",
    )
    tpl.set_defaults(fn=cmd_template)

    bill = sub.add_parser("bill", help="balances, top-ups, vouchers, cards, monthly bills")
    b = bill.add_subparsers(dest="action", required=True)
    bt = with_config(b.add_parser("topup", help="add cash (AMOUNT in currency units)"))
    bt.add_argument("account")
    bt.add_argument("amount")
    bt.add_argument(
        "--ref",
        help="payment reference (1-64 characters): credited once; again with the same amount is "
        "a duplicate, with another refused (PAYMENT_REF_REUSED)",
    )
    bv = with_config(b.add_parser("voucher", help="grant a voucher (spent before cash)"))
    bv.add_argument("account")
    bv.add_argument("amount")
    exp = bv.add_mutually_exclusive_group(required=True)
    exp.add_argument(
        "--expires", metavar="YYYY-MM-DD", help="valid through this day (rules.timezone)"
    )
    exp.add_argument("--never", action="store_true", help="a voucher that never expires")
    bv.add_argument("--ref", help="what the grant names (1-64 characters): granted once")
    bc = with_config(b.add_parser("card", help="sell a stored-value card (international only)"))
    bc.add_argument("account")
    bc.add_argument("face_value", choices=CARD_CHOICES)
    bc.add_argument("--ref", help="the sale's payment reference (1-64 characters): sold once")
    br = with_config(
        b.add_parser("refund", help="record a closed account's refund as paid back (AMOUNT)")
    )
    br.add_argument("account")
    br.add_argument("amount", help="in currency units; at most what is still owed back")
    br.add_argument(
        "--ref",
        required=True,
        help="the payout's reference (1-64 characters): recorded once; again with the same "
        "amount is a duplicate, with another refused (PAYMENT_REF_REUSED)",
    )
    with_config(b.add_parser("balance")).add_argument("account")
    bs = with_config(b.add_parser("settle", help="settle a month (idempotent)"))
    bs.add_argument("--month", required=True, metavar="YYYY-MM")
    bs.add_argument("--account", help="only this account (default: all)")
    bw = with_config(b.add_parser("show", help="a month's bill (open or settled)"))
    bw.add_argument("account")
    bw.add_argument("--month", required=True, metavar="YYYY-MM")
    bk = with_config(b.add_parser("check", help="pocket sums against the ledger; exit 1 if off"))
    bk.add_argument("account", nargs="?")
    bill.set_defaults(fn=cmd_bill)

    tar = sub.add_parser("tariff", help="price versions")
    ta = tar.add_subparsers(dest="action", required=True)
    with_config(ta.add_parser("list"))
    with_config(ta.add_parser("add", help="add a version from a YAML or JSON file")).add_argument(
        "file"
    )
    tar.set_defaults(fn=cmd_tariff)

    dnc = sub.add_parser("dnc", help="do-not-contact lists (block every account)")
    d = dnc.add_subparsers(dest="action", required=True)
    di = with_config(d.add_parser("import", help="create or replace a list from a CSV file"))
    di.add_argument("id")
    di.add_argument("file")
    di.add_argument("--name")
    di.add_argument("--country", help="country of national numbers in the file (e.g. CN)")
    di.add_argument("--lenient", action="store_true", help="skip bad lines instead of refusing")
    with_config(d.add_parser("list"))
    with_config(d.add_parser("delete")).add_argument("id")
    dnc.set_defaults(fn=cmd_dnc)

    sec = sub.add_parser("secrets", help="stored secrets: rotate the master key")
    sc = sec.add_subparsers(dest="action", required=True)
    rs = with_config(
        sc.add_parser(
            "reseal",
            help="seal every stored secret under security.master_key (opening those under "
            "security.previous_master_key); run during a master key rotation",
        )
    )
    rs.add_argument("--dry-run", action="store_true", help="count only; write nothing")
    sec.set_defaults(fn=cmd_secrets)

    aud = sub.add_parser("audit", help="the audit trail of operators' actions (API and CLI)")
    au = aud.add_subparsers(dest="action", required=True)
    al = with_config(au.add_parser("list", help="oldest first"))
    al.add_argument("--after", type=int, default=0, help="entries after this id (a page's last)")
    al.add_argument("--limit", type=int, default=100, help="entries to print (default 100)")
    aud.set_defaults(fn=cmd_audit)

    mo = sub.add_parser("mo", help="replies (MOs) stored for no account")
    ml = with_config(mo.add_subparsers(dest="action", required=True).add_parser("list"))
    ml.add_argument("--unattributed", action="store_true", help="required: those of no account")
    ml.add_argument("--cursor", default="", help="next_cursor of the page before")
    ml.add_argument("--limit", type=int, default=100, help="replies to print (default 100)")
    mo.set_defaults(fn=cmd_mo)

    from bridge.cli_messages import add_parsers as add_message_parsers

    add_message_parsers(sub, with_config)
