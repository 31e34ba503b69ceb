"""`smpp-bridge` command line: run the daemon, the simulator, and the operator tools.

Every failure is a one-line message and exit code 1 (2 for usage), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bridge import __version__
from bridge.config import Config, ConfigError, check_main, load_config, read_config_text

log = logging.getLogger("bridge.cli")


class CliError(Exception):
    pass


def _config(args: argparse.Namespace) -> Config:
    path = getattr(args, "config", None)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        raise CliError(f"invalid configuration:\n{exc}") from None
    if path is None:
        _say_demo_store(cfg)
    return cfg


def _say_demo_store(cfg: Config) -> None:
    """A store command without --config works on the demo store under ./data, made there empty
    (with a new master key) when it is not: on a server, `account list` printed [] with exit 0
    and `account create` made credentials the daemon had never heard of, with nothing to say
    that the command had not used the daemon's store. Said on stderr, so stdout stays JSON."""
    store = Path(cfg.store.path).resolve()
    new = "" if store.exists() else " (not there: made now, empty)"
    print(
        f"smpp-bridge: no --config: the built-in demo configuration, store {store}{new}; "
        "for a daemon's store pass -c FILE, the daemon's --config",
        file=sys.stderr,
    )


def setup_logging(cfg: Config | None, level: str | None = None) -> None:
    from bridge.logs import config_secrets, configure

    configure(cfg.logging if cfg else None, level, secrets=config_secrets(cfg))


def _stdout_gone() -> None:
    """Later writes (the interpreter's own flush at exit among them) go nowhere, as Python's
    documentation advises for a closed pipe, instead of a second BrokenPipeError."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _print(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- commands ------------------------------------------------------------------------------------


def _master_key_if_any(cfg: Config) -> bytes | None:
    """The master key when it can be had without making one (the daemon's start reports what is
    wrong with it): inline, from the environment or from its file."""
    from bridge.crypto import load_master_key

    sec = cfg.security
    try:
        return load_master_key(inline=sec.master_key, key_file=sec.master_key_file)
    except Exception:
        return None


def cmd_run(args: argparse.Namespace) -> int:
    from bridge.app import Daemon

    # The text read once, for both: a process publishes a name of the text it runs (see
    # Daemon), and a second read could meet the next edit.
    try:
        text = read_config_text(args.config) if args.config else None
        cfg = load_config(args.config, text=text)
    except ConfigError as exc:
        raise CliError(f"invalid configuration:\n{exc}") from None
    setup_logging(cfg)
    if args.role != "acceptor":  # an acceptor inherits its owner's key
        from bridge.reload import key_generations_by

        key_generations_by(_master_key_if_any(cfg))
    loop_factory = event_loop_factory(cfg.server.event_loop)
    # The store's fsync thread releases the GIL and must take it back; with the default 5 ms
    # switch interval it can queue behind the event loop. 0.5 ms keeps both moving.
    sys.setswitchinterval(float(os.environ.get("SMPP_BRIDGE_SWITCH_INTERVAL", "0.0005")))
    workers = cfg.server.workers if args.workers is None else args.workers
    if args.role == "acceptor":
        _be_nicer(cfg.server.acceptor_nice)
        main_coro = Daemon(
            cfg, role="acceptor", config_path=args.config, config_text=text
        ).run_forever
    elif workers > 0:
        from bridge.supervisor import Supervisor

        main_coro = Supervisor(cfg, args.config, workers, text).run
    else:
        from bridge import tempdirs

        # What a workers-mode daemon killed with -9 left (its configuration copy holds secrets):
        # a start in one process made no directories, so it swept none.
        tempdirs.sweep_once()
        _fresh_metric_files()
        main_coro = Daemon(cfg, config_path=args.config, config_text=text).run_forever
    _tune_gc()
    profile_to = os.environ.get("SMPP_BRIDGE_PROFILE")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        if profile_to:  # a performance investigation aid: cProfile stats written at shutdown
            import cProfile

            cProfile.runctx(
                "runner.run(main_coro())", globals(), locals(), f"{profile_to}.{args.role}"
            )
            return 0
        runner.run(main_coro())
    return 0


def _fresh_metric_files() -> None:
    """One process with PROMETHEUS_MULTIPROC_DIR set (an operator's environment) writes its
    values to files there, and a scrape merges every file: the files of earlier runs were added
    to this one's counters. Emptied at start, as the workers supervisor does."""
    from bridge import metrics

    if os.environ.get(metrics.MULTIPROC_ENV):
        metrics.enable_multiprocess()


def _be_nicer(increment: int) -> None:
    """An acceptor yields the CPU to the owner (ServerConfig.acceptor_nice). Where a sandbox
    forbids it (a seccomp filter answering EPERM), it runs at the owner's priority, with a
    warning, rather than not at all."""
    try:
        os.nice(increment)
    except OSError as exc:
        log.warning(
            "acceptor runs at normal priority: os.nice(%d) refused (%s); allow setpriority "
            "(the shipped systemd unit does)",
            increment,
            exc.strerror or exc,
        )


# Container objects the youngest generation may gain before a collection (CPython's default
# is 700, 2000 from Python 3.13); SMPP_BRIDGE_GC_THRESHOLD overrides it.
GC_THRESHOLD = 5_000


def _tune_gc() -> None:
    """Why: measured under the 1-part benchmark, each process spent 5-7% of its CPU in the
    cyclic collector, although the traffic makes next to no cyclic garbage (the net growth
    of tracked objects over 20,000 messages stays under 50,000). Most of it was hundreds of
    young collections a second, and each full collection walked every imported module's
    objects, holding the event loop 60-80 ms. What exists at start-up (modules, config) is
    frozen, so full collections walk only what the daemon made since, and the young
    generation is collected every 5,000 objects instead of every 700: a few times per 20,000
    messages here. 10,000 measured the same, but the garbage held between collections raised
    an acceptor's RSS drift in the leak soak from 0.2-0.9 MB to 1.1-1.5 MB (5,000: 0.5-1.2)."""
    import gc

    threshold = int(os.environ.get("SMPP_BRIDGE_GC_THRESHOLD", GC_THRESHOLD))
    gc.freeze()  # no collection first: start-up leaves a few dozen garbage objects, not worth 45 ms
    gc.set_threshold(threshold, *gc.get_threshold()[1:])


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The daemon's event loop (ServerConfig.event_loop): uvloop's where it is installed (the
    optional extra `smpp-bridge[uvloop]`), unless the configuration asks for the standard
    library's; None is asyncio's default. A setting, not only an import that may or may not
    succeed: an operator who suspects the loop can rule it out without reinstalling, and one who
    wants uvloop is told at start that it is missing instead of running without it. `smpp-bridge
    sim` keeps asyncio's loop, so the simulator weighs the same in a comparison with another
    gateway (the built-in one, `sim.enabled`, runs on the daemon's loop)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise CliError(
                "server.event_loop is uvloop, but uvloop is not installed in this Python "
                f"({sys.executable}): pip install 'smpp-bridge[uvloop]' (or uvloop), or set "
                "server.event_loop to auto"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def cmd_sim(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from bridge.config import load_sim_config
    from bridge.sim.server import run_sim

    try:
        cfg = load_sim_config(getattr(args, "config", None))
    except ConfigError as exc:
        raise CliError(f"invalid configuration:\n{exc}") from None
    setup_logging(cfg)
    sim = cfg.sim
    changes: dict[str, Any] = {"enabled": True}
    if args.port is not None:
        changes["port"] = args.port
    if args.control_port is not None:
        changes["control_port"] = args.control_port
    if args.receipt_delay_ms is not None:
        changes["receipt_delay_ms"] = args.receipt_delay_ms
    if args.answer_delay_ms is not None:
        changes["answer_delay_ms"] = args.answer_delay_ms
    sim = replace(sim, **changes)
    try:
        asyncio.run(run_sim(sim))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_sim_mo(args: argparse.Namespace) -> int:
    from bridge.sim.server import mo_command

    return mo_command(
        args.control_url,
        args.source,
        args.destination,
        args.text,
        args.split,
        ref=args.ref,
        parts=args.parts,
    )


def cmd_config_check(args: argparse.Namespace) -> int:
    return check_main(args.file)


def cmd_preview(args: argparse.Namespace) -> int:
    from bridge.text.preview import preview
    from bridge.text.split import EncodeOptions, SplitMode, TextError
    from bridge.text.units import CountingRule

    try:
        result = preview(
            args.text,
            EncodeOptions(split=SplitMode(args.split), smart=args.smart),
            sign=args.sign,
            sign_format=args.sign_format,
            rule=CountingRule(args.rule),
        )
    except TextError as exc:
        raise CliError(f"{exc.code}: {exc.message}") from None
    print(json.dumps(result, ensure_ascii=False))
    return 0


# The command line being run (without the program name) and its parsed arguments, for the
# audit trail.
_ARGV: list[str] = []
_ARGS: list[argparse.Namespace] = []
_CODE = re.compile(r"([A-Z][A-Z0-9_]+): ")


async def _with_services(cfg: Config, fn: Callable[[Any], Awaitable[int]]) -> int:
    from bridge.accounts import AccountService
    from bridge.wiring import make_sealer, open_store

    store = open_store(cfg, read_only=_reads_only())
    await store.open()
    status, code = 1, None
    try:
        assigned = cfg.rules.sender_policy == "assigned"
        status = await fn(AccountService(store, make_sealer(cfg), lambda: assigned))
        return status
    except BrokenPipeError:
        # The reader went away (`| head`) while the result was printed: printed last, after
        # the change committed. It was audited as failed (exit 1) although it was done.
        _stdout_gone()
        status = 0
        return status
    except Exception as exc:
        m = _CODE.match(str(exc))
        code = m[1] if m else type(exc).__name__
        raise
    finally:
        try:
            await _audit(store, status, code)
        finally:
            await store.close()


def _reads_only() -> bool:
    """Whether the command line being run changes nothing (it is not audited): its store is
    opened for reads only, which a PostgreSQL role with SELECT alone may do. Its argv words are
    those the parser matched (argparse takes no abbreviation of a command or action, nor an
    option before them): tests/unit/test_cli_read_only.py walks the parser's commands."""
    return bool(_ARGV) and _audited() is None


def _audited() -> tuple[str, str] | None:
    """(action, target) of the command line being run for the audit trail; None when it
    changes nothing (bridge.audit.cli_action)."""
    from bridge.audit import cli_action

    args = _ARGS[0] if _ARGS else None
    return cli_action(
        _ARGV,
        # `template review` decides only given a CODE and a decision: without one it lists
        # the queue, without the other it shows the template.
        queue=getattr(args, "command", None) == "template"
        and getattr(args, "action", None) == "review"
        and (
            getattr(args, "code", None) is None
            or (not getattr(args, "approve", False) and getattr(args, "reject", None) is None)
        ),
        dry_run=bool(getattr(args, "dry_run", False)),
    )


async def _audit(store: Any, status: int, code: str | None) -> None:
    """A store command that may change something goes into the audit trail (bridge/audit.py)
    with its exit status, refused ones too."""
    from bridge.audit import cli_actor
    from bridge.store.models import AuditEntry

    if (what := _audited()) is None:
        return
    entry = AuditEntry(int(time.time() * 1000), cli_actor(), what[0], what[1], status, code)
    try:
        await store.audit_add(entry)
    except Exception as exc:  # the command's own outcome stands; say the trail missed it
        print(f"smpp-bridge: audit trail not written: {type(exc).__name__}", file=sys.stderr)


def _account_settings(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "kind", None):
        out["kind"] = args.kind
    for name in ("raw_text", "marketing"):
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    mapping = {
        "country": "default_country",
        "tps": "tps",
        "daily_quota": "daily_quota",
        "callback": "status_callback_url",
        "mo_callback": "mo_callback_url",
    }
    for arg, field in mapping.items():
        value = getattr(args, arg, None)
        if value is not None:
            out[field] = None if value == "" else value
    threshold = getattr(args, "low_balance_threshold", None)
    if threshold is not None:
        # In currency units like every CLI amount, kept as the API's integer micro-units; the
        # range is the API's (validate_settings), checked before anything is written.
        out["low_balance_threshold"] = parse_amount(threshold)
    senders = getattr(args, "senders", None)
    if senders is not None:  # "--senders ''" clears the list
        out["senders"] = [s.strip() for s in senders.split(",") if s.strip()]
    return out


def parse_amount(text: str) -> int:
    """A decimal currency amount ("100", "0.045") as exact micro-units; no floats."""
    from decimal import Decimal, InvalidOperation

    try:
        value = Decimal(text)
    except InvalidOperation:
        raise CliError(f"{text!r} is not an amount (e.g. 100 or 12.50)") from None
    micro = value * 1_000_000
    if not value.is_finite() or micro != micro.to_integral_value() or micro < 0:
        raise CliError(f"{text!r}: at most 6 decimal places, not negative")
    return int(micro)


async def _check_account_extras(store: Any, args: argparse.Namespace) -> None:
    """Refuse a bad `--topup` or `--sign` before the account is created: its secrets are shown
    only by that command, so a refusal after it left an account nobody had the keys of, whose
    name a corrected command could not take again."""
    from bridge.domain.signs import SignError, ensure_not_taken, validate_sign_name

    amount = getattr(args, "topup", None)
    if amount:
        parse_amount(amount)
    names = getattr(args, "sign", None) or ()
    if not names:
        return
    taken = [s.name for s in await store.list_signs(status="approved", limit=1_000_000)]
    for name in names:
        try:
            ensure_not_taken(validate_sign_name(name), taken)
        except SignError as exc:
            raise CliError(f"{exc.code}: {exc} (nothing created)") from None


async def _account_extras(store: Any, account_id: str, args: argparse.Namespace) -> None:
    """`account create --sign NAME --topup AMOUNT`: an operator's approved sign and first funds."""
    from bridge import review
    from bridge.domain.ledger import topup

    now = _now_ms()
    for name in getattr(args, "sign", None) or ():
        try:
            await review.submit_sign(store, account_id, {"name": name}, now)
            await review.decide_sign(store, account_id, name, "approve", None, now)
        except review.ReviewError as exc:
            raise CliError(f"{exc.code}: {exc.message}") from None
    amount = getattr(args, "topup", None)
    if amount:
        await store.append_ledger(account_id, topup(parse_amount(amount), now, "initial"))


def cmd_account(args: argparse.Namespace) -> int:
    from bridge.accounts import AccountError, public_account, public_key

    cfg = _config(args)
    setup_logging(cfg, "WARNING")

    async def go(svc: Any) -> int:
        try:
            if args.action == "create":
                await _check_account_extras(svc.store, args)
                creds = await svc.create(args.name, _account_settings(args), _now_ms())
                await _account_extras(svc.store, creds.account.id, args)
                _print(
                    {
                        "account": creds.account.id,
                        "name": creds.account.name,
                        "app_key": creds.app_key,
                        "app_secret": creds.app_secret,
                        "webhook_secret": creds.webhook_secret,
                        "settings": public_account(creds.account),
                    }
                )
            elif args.action == "list":
                _print([public_account(a) for a in await svc.store.list_accounts()])
            elif args.action == "show":
                from bridge import billing

                account = await svc.resolve(args.ref)
                data = public_account(account)
                data.update(await billing.refund_fields(svc.store, account.id))
                data["keys"] = [public_key(k) for k in await svc.store.list_keys(account.id)]
                _print(data)
            elif args.action == "update":
                _print(
                    public_account(await svc.update(args.ref, _account_settings(args), _now_ms()))
                )
            elif args.action in ("disable", "enable"):
                status = "disabled" if args.action == "disable" else "active"
                _print(public_account(await svc.set_status(args.ref, status, _now_ms())))
            elif args.action == "rotate-webhook-secret":
                if not 0 <= args.overlap_hours <= 720:
                    raise CliError("--overlap-hours: from 0 to 720")
                account, secret = await svc.rotate_webhook_secret(
                    args.ref, _now_ms(), round(args.overlap_hours * 3_600_000)
                )
                _print(
                    {
                        "account": account.id,
                        "webhook_secret": secret,
                        "previous_signs_until": account.prev_webhook_secret_until,
                    }
                )
            elif args.action == "close":
                # Erases the account's message texts and numbers, revokes its keys; the ledger and
                # bills stay (money records are kept). Asks nothing: scripts call it.
                from bridge import billing

                account = await svc.resolve(args.ref)
                done = await svc.store.close_account(
                    account.id,
                    _now_ms(),
                    cfg.national_prefixes(),
                    mo_defaults=cfg.default_sources(),
                )
                closed = await svc.resolve(account.id)
                entries = done.entries if done is not None else ()
                currency = cfg.billing.currency
                _print(await billing.closed_view(svc.store, closed, entries, currency))
        except AccountError as exc:
            raise CliError(f"{exc.code}: {exc.message}") from None
        return 0

    return asyncio.run(_with_services(cfg, go))


def cmd_key(args: argparse.Namespace) -> int:
    from bridge.accounts import AccountError, public_key

    cfg = _config(args)
    setup_logging(cfg, "WARNING")

    async def go(svc: Any) -> int:
        try:
            if args.action == "create":
                account, key_id, secret = await svc.create_key(args.account, _now_ms())
                _print({"account": account.id, "app_key": key_id, "app_secret": secret})
            elif args.action == "list":
                account = await svc.resolve(args.account)
                _print([public_key(k) for k in await svc.store.list_keys(account.id)])
            elif args.action == "revoke":
                await svc.revoke_key(args.key, _now_ms())
                _print({"app_key": args.key, "status": "revoked"})
        except AccountError as exc:
            raise CliError(f"{exc.code}: {exc.message}") from None
        return 0

    return asyncio.run(_with_services(cfg, go))


def cmd_db_after_restore(args: argparse.Namespace) -> int:
    """Why a command and not a start-up behaviour: only the operator knows the store was just
    restored. A backup's queued messages were, most likely, sent in the hours between the
    backup and the restore; started as it is, the daemon would send them all again."""
    cfg = _config(args)
    setup_logging(cfg, "WARNING")

    async def go(svc: Any) -> int:
        from bridge.store.base import StoreError
        from bridge.wiring import warn_open_modes

        warn_open_modes(cfg, log)  # a restored copy has the mode of whoever copied it
        try:
            counts = await svc.store.after_restore(_now_ms(), dry_run=args.dry_run)
        except StoreError as exc:
            raise CliError(f"{exc.code}: {exc.message}") from None
        print(json.dumps({**counts, "dry_run": args.dry_run}))
        return 0

    return asyncio.run(_with_services(cfg, go))


def _sqlite_only(args: argparse.Namespace, why: str) -> Config:
    """The configuration of a command that works on a SQLite store's files; refused otherwise."""
    cfg = _config(args)
    if cfg.store.engine != "sqlite":
        raise CliError(f"NOT_SQLITE: {why} (README, Running in production)")
    return cfg


def cmd_db_backup(args: argparse.Namespace) -> int:
    """SQLite only: PostgreSQL has pg_dump, which does this job better than we would."""
    from bridge.store.sqlite_backup import BackupError, backup
    from bridge.wiring import warn_open_modes

    cfg = _sqlite_only(args, "db backup copies a SQLite store; back up PostgreSQL with pg_dump")
    setup_logging(cfg, "WARNING")
    warn_open_modes(cfg, log)  # the copy gets the store's mode
    try:
        result = backup(Path(cfg.store.path), Path(args.dest))
    except BackupError as exc:
        raise CliError(f"{exc.code}: {exc.message}") from None
    print(json.dumps(result))
    return 0


def cmd_db_restore(args: argparse.Namespace) -> int:
    """SQLite only (PostgreSQL has pg_restore). The files first, then, unless told not to, what
    `db after-restore` does: the operator restoring a backup is the one who knows it is one,
    and started as it is the daemon would send again what the backup still had to send."""
    from bridge.store.sqlite_backup import BackupError, restore

    cfg = _sqlite_only(
        args,
        "db restore puts a SQLite backup in place; restore PostgreSQL with pg_restore, then "
        "run db after-restore",
    )
    setup_logging(cfg, "WARNING")
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    try:
        result: dict[str, Any] = restore(Path(cfg.store.path), Path(args.backup), stamp)
    except BackupError as exc:
        raise CliError(f"{exc.code}: {exc.message}") from None
    result["after_restore"] = None
    if args.no_after_restore:
        print(json.dumps(result))
        return 0

    async def go(svc: Any) -> int:
        from bridge.store.base import StoreError

        try:
            result["after_restore"] = await svc.store.after_restore(_now_ms())
        except StoreError as exc:
            raise CliError(
                f"{exc.code}: {exc.message} (the backup is in place; run db after-restore "
                "before the daemon starts)"
            ) from None
        print(json.dumps(result))
        return 0

    return asyncio.run(_with_services(cfg, go))


def cmd_db_migrate(args: argparse.Namespace) -> int:
    from bridge.wiring import open_store, warn_open_modes

    cfg = _config(args)
    setup_logging(cfg, "WARNING")

    async def go() -> int:
        store = open_store(cfg)
        await store.open()  # applies what is missing
        warn_open_modes(cfg, log)
        try:
            print(
                json.dumps(
                    {
                        "engine": cfg.store.engine,
                        "schema_version": await store.schema_version(),
                        # What it found: an operator's upgrade log says from which schema.
                        "from_version": store.migrated_from,
                    }
                )
            )
            # A schema change is a change: recorded like every other store command (the trail's
            # table exists once the migrations ran).
            await _audit(store, 0, None)
        finally:
            await store.close()
        return 0

    return asyncio.run(go())


def _credentials(args: argparse.Namespace) -> tuple[str, str]:
    key = os.environ.get("SMPP_BRIDGE_APP_KEY")
    secret = os.environ.get("SMPP_BRIDGE_APP_SECRET")
    if args.credentials:
        try:
            data = json.loads(Path(args.credentials).read_text())
        except (OSError, ValueError) as exc:
            raise CliError(f"--credentials {args.credentials}: {exc}") from None
        if not isinstance(data, dict):
            raise CliError(
                f"--credentials {args.credentials}: a JSON object with app_key and app_secret"
            )
        key, secret = data.get("app_key"), data.get("app_secret")
        if not isinstance(key, str) or not isinstance(secret, str):
            key = secret = None
    if not key or not secret:
        raise CliError(
            "no credentials: set SMPP_BRIDGE_APP_KEY and SMPP_BRIDGE_APP_SECRET, or pass "
            "--credentials FILE (the JSON printed by `smpp-bridge account create`)"
        )
    return key, secret


def cmd_send(args: argparse.Namespace) -> int:
    from bridge.client import BridgeClient, BridgeError

    key, secret = _credentials(args)
    params = None
    if args.params:
        from bridge import jsonio

        try:  # a repeated key would be collapsed here, before the server could refuse it
            params = jsonio.loads_unique(args.params)
        except jsonio.DuplicateKeyError as exc:
            raise CliError(f"--params: {exc.described()}: give each key once") from None
        except ValueError as exc:
            raise CliError(f"--params: not JSON: {exc}") from None
    to: str | list[str] = args.to[0] if len(args.to) == 1 else list(args.to)

    async def go() -> int:
        async with BridgeClient(args.url, key, secret) as client:
            try:
                if args.status:
                    return _print_answer(await client.message(args.status))
                result = await client.send(
                    to,
                    text=args.text,
                    template=args.template,
                    params=params,
                    sign_name=args.sign,
                    client_ref=args.client_ref,
                )
            except BridgeError as exc:
                error: dict[str, Any] = {
                    "status": exc.status,
                    "code": exc.code,
                    "message": exc.message,
                    "request_id": exc.request_id,
                }
                if exc.details is not None:  # every refused recipient, not the first only
                    error["details"] = exc.details
                print(json.dumps({"error": error}), file=sys.stderr)
                return 1
            return _print_answer(result)

    try:
        return asyncio.run(go())
    except OSError as exc:
        raise CliError(f"cannot reach {args.url}: {exc}") from None


def _print_answer(data: Any) -> int:
    """The daemon's answer on stdout; a reader gone (`| head`) is not an error: the send was
    made. It was raised as an OSError, reported as "cannot reach" the daemon with exit 1, and a
    script or an operator sent the message again, a second SMS to the handset."""
    try:
        _print(data)
    except BrokenPipeError:
        _stdout_gone()
    return 0


def _check_url(url: str) -> None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        ok = False
    if not ok:
        raise CliError(f"--url {url!r}: expected http(s)://host[:port]")


def _seconds(text: str) -> float:
    """argparse type: a finite, positive number of seconds (-1 and nan printed a ValueError)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:  # also false for nan
        raise argparse.ArgumentTypeError(f"{text!r}: more than 0 and at most 3600 seconds")
    return value


def _workers(text: str) -> int:
    """argparse type: the acceptor count server.workers allows (0..64)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= 64:
        raise argparse.ArgumentTypeError(f"{value}: from 0 to 64")
    return value


def cmd_status(args: argparse.Namespace) -> int:
    from bridge.status import StatusError, fetch, render

    token = args.token or os.environ.get("SMPP_BRIDGE_ADMIN_TOKEN") or None
    _check_url(args.url)
    try:
        status = fetch(args.url, token, timeout=args.timeout)
    except StatusError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        _print(status.as_json())
    else:
        print(render(status))
    return 0 if status.ready else 1


# -- parser --------------------------------------------------------------------------------------


def _daemon_url() -> str:
    """`send`'s and `status`'s daemon: SMPP_BRIDGE_URL, else this host at the port the daemon
    takes from SMPP_BRIDGE_PORT (server.port; two instances on one host each have their own),
    else 8080. An empty variable counts as unset, as in the configuration."""
    if url := os.environ.get("SMPP_BRIDGE_URL"):
        return url
    port = os.environ.get("SMPP_BRIDGE_PORT", "").strip()
    return f"http://127.0.0.1:{port if port.isdigit() else 8080}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smpp-bridge", description="Signed HTTP to SMPP SMS gateway")
    p.add_argument("--version", action="version", version=f"smpp-bridge {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", "-c", help="YAML file (default: built-in demo config)")
        return sp

    run = with_config(sub.add_parser("run", help="run the daemon"))
    run.add_argument(
        "--workers", type=_workers, help="HTTP acceptor processes (overrides server.workers)"
    )
    run.add_argument("--role", choices=["all", "acceptor"], default="all", help=argparse.SUPPRESS)
    run.set_defaults(fn=cmd_run)

    sim = with_config(sub.add_parser("sim", help="run the simulated SMSC on its own"))
    sim.add_argument("--port", type=int)
    sim.add_argument("--control-port", type=int)
    sim.add_argument("--receipt-delay-ms", type=int)
    sim.add_argument("--answer-delay-ms", type=int)
    sim.set_defaults(fn=cmd_sim)

    mo = sub.add_parser("sim-mo", help="make a running simulator send an MO")
    mo.add_argument("--control-url", default="http://127.0.0.1:2776")
    mo.add_argument(
        "--from",
        dest="source",
        required=True,
        help="the sender, sent with TON 0: give its country code (8613800138000); a national "
        "number of 10+ digits is read as international (13800138000: +13800138000)",
    )
    mo.add_argument(
        "--to",
        dest="destination",
        required=True,
        help="the address replied to (a sender, or the SMSC's default_source)",
    )
    mo.add_argument("--text", required=True)
    mo.add_argument("--split", choices=["udh8", "udh16", "sar"], default="udh8")
    # A handset that reuses a concatenation reference; a network that loses or reorders parts.
    mo.add_argument("--ref", type=int, help="concatenation reference (default: the next one)")
    mo.add_argument(
        "--parts",
        type=lambda v: [int(n) for n in v.split(",")],
        help="send only these parts, in this order (e.g. 3,1)",
    )
    mo.set_defaults(fn=cmd_sim_mo)

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="action", required=True)
    check = cfg_sub.add_parser("check", help="validate and print the effective config")
    check.add_argument("file", nargs="?")
    check.set_defaults(fn=cmd_config_check)

    pv = sub.add_parser("preview", help="encoding, segments and units of a text")
    pv.add_argument("text")
    pv.add_argument("--sign")
    pv.add_argument("--sign-format", default="【{sign}】")
    pv.add_argument("--split", choices=["udh8", "udh16", "sar", "payload"], default="udh8")
    pv.add_argument("--smart", action="store_true")
    pv.add_argument("--rule", choices=["chars_70_67", "wire_segments"], default="chars_70_67")
    pv.set_defaults(fn=cmd_preview)

    acc = sub.add_parser("account", help="manage accounts")
    acc_sub = acc.add_subparsers(dest="action", required=True)

    def settings(sp: argparse.ArgumentParser) -> None:
        kind = sp.add_mutually_exclusive_group()
        kind.add_argument("--prepaid", dest="kind", action="store_const", const="prepaid")
        kind.add_argument("--postpaid", dest="kind", action="store_const", const="postpaid")
        raw = sp.add_mutually_exclusive_group()
        raw.add_argument("--raw-text", dest="raw_text", action="store_const", const=True)
        raw.add_argument("--no-raw-text", dest="raw_text", action="store_const", const=False)
        mk = sp.add_mutually_exclusive_group()
        mk.add_argument("--marketing", dest="marketing", action="store_const", const=True)
        mk.add_argument("--no-marketing", dest="marketing", action="store_const", const=False)
        sp.add_argument("--country", help="default country, ISO alpha-2 (e.g. CN)")
        sp.add_argument("--tps", type=int)
        sp.add_argument("--daily-quota", type=int)
        sp.add_argument(
            "--low-balance-threshold",
            metavar="AMOUNT",
            help="send balance.low once per dip below this balance, in currency units exact "
            "to 6 decimals (e.g. 20 or 0.50); 0 turns it off",
        )
        sp.add_argument("--callback", help="status report URL ('' to clear)")
        sp.add_argument("--mo-callback", help="MO URL ('' to clear)")
        sp.add_argument(
            "--senders",
            help="assigned source addresses, comma-separated: numbers, alphanumeric ids, "
            "extension ranges like 106900* ('' to clear: not restricted)",
        )

    ac = with_config(acc_sub.add_parser("create"))
    ac.add_argument("name")
    settings(ac)
    ac.add_argument(
        "--sign", action="append", help="register and approve this sign name (repeatable)"
    )
    ac.add_argument("--topup", help="first top-up, in currency units (e.g. 100 or 12.50)")
    with_config(acc_sub.add_parser("list"))
    for action in ("show", "disable", "enable", "rotate-webhook-secret", "close"):
        sp = with_config(acc_sub.add_parser(action))
        sp.add_argument("ref", help="account id or name")
        if action == "rotate-webhook-secret":
            sp.add_argument(
                "--overlap-hours",
                type=float,
                default=24.0,
                help="the old secret keeps signing beside the new one this long (two v1= in "
                "X-Bridge-Signature), so the receiver is updated without a gap; 0 stops it at "
                "once (default 24)",
            )
    au = with_config(acc_sub.add_parser("update"))
    au.add_argument("ref")
    settings(au)
    acc.set_defaults(fn=cmd_account)

    key = sub.add_parser("key", help="manage app keys")
    key_sub = key.add_subparsers(dest="action", required=True)
    with_config(key_sub.add_parser("create")).add_argument("account")
    with_config(key_sub.add_parser("list")).add_argument("account")
    with_config(key_sub.add_parser("revoke")).add_argument("key")
    key.set_defaults(fn=cmd_key)

    db = sub.add_parser("db", help="database tools")
    db_sub = db.add_subparsers(dest="action", required=True)
    with_config(db_sub.add_parser("migrate", help="apply schema migrations")).set_defaults(
        fn=cmd_db_migrate
    )
    restored = with_config(
        db_sub.add_parser(
            "after-restore",
            help="on a store restored from a backup, before the daemon starts: end what the "
            "backup still had to send as unknown instead of sending it again",
        )
    )
    restored.add_argument("--dry-run", action="store_true", help="count only")
    restored.set_defaults(fn=cmd_db_after_restore)
    backed = with_config(
        db_sub.add_parser(
            "backup",
            help="copy the SQLite store to DEST while the daemon runs, and check the copy",
        )
    )
    backed.add_argument("dest", help="the new backup file (must not exist)")
    backed.set_defaults(fn=cmd_db_backup)
    put_back = with_config(
        db_sub.add_parser(
            "restore",
            help="with the daemon stopped: put a SQLite backup in place as the store (the "
            "store it replaces kept aside), then do what after-restore does",
        )
    )
    put_back.add_argument("backup", help="the backup file (db backup's)")
    put_back.add_argument(
        "--no-after-restore",
        action="store_true",
        help="leave what the backup had to send waiting: the daemon sends it again",
    )
    put_back.set_defaults(fn=cmd_db_restore)

    send = sub.add_parser("send", help="send a message through a running daemon")
    send.add_argument("--url", default=_daemon_url())
    send.add_argument("--credentials", help="JSON file with app_key and app_secret")
    send.add_argument("--to", nargs="+", default=[])
    body = send.add_mutually_exclusive_group()
    body.add_argument("--text")
    body.add_argument("--template")
    send.add_argument("--params", help="template parameters as JSON")
    send.add_argument("--sign")
    send.add_argument("--client-ref")
    send.add_argument("--status", metavar="MESSAGE_ID", help="show a message instead of sending")
    send.set_defaults(fn=cmd_send)

    st = sub.add_parser(
        "status", help="binds, queue depth and throughput of a running daemon (admin API)"
    )
    st.add_argument("--url", default=_daemon_url())
    st.add_argument(
        "--token", help="admin token (default: env SMPP_BRIDGE_ADMIN_TOKEN, which ps cannot see)"
    )
    st.add_argument("--timeout", type=_seconds, default=5.0, help="seconds per request (default 5)")
    st.add_argument("--json", action="store_true", help="print the raw views as JSON")
    st.set_defaults(fn=cmd_status)

    from bridge.cli_ops import add_parsers

    add_parsers(sub, with_config)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    _ARGV[:] = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    _ARGS[:] = [args]
    if (
        args.command == "send"
        and not args.status
        and (not args.to or not (args.text or args.template))
    ):
        parser.error("send: --to and one of --text/--template are required")
    try:
        return args.fn(args)
    except BrokenPipeError:  # a command without the store (preview, status) piped into `head`
        _stdout_gone()
        return 0
    except CliError as exc:
        print(f"smpp-bridge: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the promise: no tracebacks for operators
        from bridge.crypto import MasterKeyError

        if isinstance(exc, MasterKeyError | OSError):
            print(f"smpp-bridge: {exc}", file=sys.stderr)
            return 1
        if os.environ.get("SMPP_BRIDGE_DEBUG"):
            raise
        code = getattr(exc, "code", None)
        what = f"{code}: {getattr(exc, 'message', exc)}" if code else f"{type(exc).__name__}: {exc}"
        print(f"smpp-bridge: {what} (SMPP_BRIDGE_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # `python -m bridge.cli`: run the importable module's main, not this __main__ copy, so the
    # CliError that bridge.cli_ops raises is the class main() catches.
    from bridge.cli import main as _main

    sys.exit(_main())
