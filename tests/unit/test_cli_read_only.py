"""Which CLI commands open the store for reads only (bridge.cli._reads_only), for every command
the parser defines (session 49, h6).

A command opened for reads is one a PostgreSQL role with SELECT alone may run, and one the audit
trail leaves out: opened so while it writes, it is refused halfway (or, where the write is
swallowed, answers wrongly) and its change goes unaudited; a read opened for writes is refused
to a monitoring role. The choice is made from the command line's words (bridge.audit.cli_action)
and two parsed flags. Here every command and action of the parser must be listed as a read or
a write, so a new one is classified by whoever adds it; test_pg_read_only_cli.py runs each of
these command lines against a real SELECT-only role (reads answer as to the owner, writes are
refused at the opening).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from bridge import cli

# A command line per store command that changes nothing ({msg}: a message id), and the variants
# a flag makes a read: `template review` without a CODE lists the queue, with one and no
# decision shows it; --dry-run counts.
READS: tuple[tuple[str, ...], ...] = (
    ("account", "list"),
    ("account", "show", "acc_a"),
    ("key", "list", "acc_a"),
    ("sign", "list"),
    ("sign", "list", "--account", "acc_a", "--status", "approved"),
    ("template", "list"),
    ("template", "review"),
    ("template", "review", "--account", "acc_a"),
    ("template", "review", "SMS_000000001"),  # a CODE without a decision: shows it
    ("bill", "balance", "acc_a"),
    ("bill", "show", "acc_a", "--month", "2026-11"),
    ("bill", "show", "acc_a", "--month", "2026-10"),  # no usage, no bill
    ("bill", "check"),
    ("bill", "check", "acc_a"),
    ("tariff", "list"),
    ("dnc", "list"),
    ("audit", "list"),
    ("mo", "list", "--unattributed"),
    ("message", "list", "acc_a"),
    ("message", "show", "acc_a", "{msg}"),
    ("secrets", "reseal", "--dry-run"),
    ("secrets", "reseal", "--dry"),  # argparse's abbreviation of --dry-run
    ("db", "after-restore", "--dry-run"),
)
# A command line per store command that may change something.
WRITES: tuple[tuple[str, ...], ...] = (
    ("account", "create", "beta"),
    ("account", "update", "acc_a", "--tps", "5"),
    ("account", "disable", "acc_a"),
    ("account", "enable", "acc_a"),
    ("account", "rotate-webhook-secret", "acc_a"),
    ("account", "close", "acc_a"),
    ("key", "create", "acc_a"),
    ("key", "revoke", "ak_none"),
    ("sign", "add", "acc_a", "Beta", "--source", "company"),
    ("sign", "review", "acc_a", "Acme", "--approve"),
    ("template", "review", "SMS_1", "--approve"),
    ("template", "review", "--reject", "no", "SMS_1"),
    ("bill", "topup", "acc_a", "10"),
    ("bill", "voucher", "acc_a", "10", "--never"),
    ("bill", "card", "acc_a", "999"),
    ("bill", "refund", "acc_a", "1", "--ref", "r1"),
    ("bill", "settle", "--month", "2026-10"),
    ("tariff", "add", "tariff.yaml"),
    ("dnc", "import", "list1", "dnc.csv"),
    ("dnc", "delete", "list1"),
    ("secrets", "reseal"),
    ("db", "after-restore"),
    ("db", "migrate"),
)
# What opens no store through the store commands' path: the daemon (it writes, and is refused a
# SELECT-only role at its start as README says), the simulator, the tools without a store, the
# client of a running daemon, and the SQLite file copies (refused on PostgreSQL before a store
# is opened; `db restore` then runs after-restore, a write).
NOT_STORE_COMMANDS = frozenset(
    {
        ("run",),
        ("sim",),
        ("sim-mo",),
        ("config", "check"),
        ("preview",),
        ("send",),
        ("status",),
        ("db", "backup"),
        ("db", "restore"),
    }
)


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple]:
    """Every command of the parser: (command,) or (command, action)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path
        return
    for name, sub in subs[0].choices.items():
        yield from _commands(sub, (*path, name))


def _reads_only(words: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> bool:
    """What main() leaves for _with_services to decide with, for this command line."""
    argv = [*words, "--config", "bridge.yaml"]
    monkeypatch.setattr(cli, "_ARGV", argv)
    monkeypatch.setattr(cli, "_ARGS", [cli.build_parser().parse_args(argv)])
    return cli._reads_only()


def test_every_command_of_the_parser_is_listed_as_a_read_or_a_write() -> None:
    listed = {w[:2] for w in READS} | {w[:2] for w in WRITES} | NOT_STORE_COMMANDS
    defined = set(_commands(cli.build_parser()))
    assert defined - listed == set(), "classify the new command here"
    assert listed - defined == set()
    # A command is a read or a write, whatever its flags, but for the two a flag makes a read.
    both = {w[:2] for w in READS} & {w[:2] for w in WRITES}
    assert both == {("template", "review"), ("secrets", "reseal"), ("db", "after-restore")}


@pytest.mark.parametrize("words", READS, ids=" ".join)
def test_a_read_opens_the_store_for_reads(words: tuple[str, ...], monkeypatch) -> None:
    assert _reads_only(words, monkeypatch)


@pytest.mark.parametrize("words", WRITES, ids=" ".join)
def test_a_write_opens_the_store_for_writes(words: tuple[str, ...], monkeypatch) -> None:
    assert not _reads_only(words, monkeypatch)


def test_without_a_command_line_the_store_is_opened_for_writes(monkeypatch) -> None:
    """A command function called without main() (a test, a caller of its own): nothing says
    it changes nothing."""
    monkeypatch.setattr(cli, "_ARGV", [])
    monkeypatch.setattr(cli, "_ARGS", [])
    assert not cli._reads_only()


@pytest.mark.parametrize("words", [("account", "disable", "--help"), ("bill", "-h")])
def test_help_exits_before_a_store_is_opened(words: tuple[str, ...], capsys) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([*words])
    assert done.value.code == 0
    assert "usage: smpp-bridge" in capsys.readouterr().out
