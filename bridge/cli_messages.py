"""`smpp-bridge message list|show ACCOUNT`: an account's messages for the operator.

What GET /admin/accounts/{ref}/messages[/{id}] answers, read from the store (the daemon may be
stopped, as for `audit list`): a customer's "my message never arrived" was answerable only with
the customer's own key or with sqlite3 on the store.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from bridge.cli import CliError, _print

Configured = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]
# The list's filters, as GET /v1/messages names them (bridge.api.v1.MESSAGE_QUERY).
_FILTERS = ("to", "date", "timezone", "status", "batch_id", "cursor", "limit")


def cmd_message(args: argparse.Namespace) -> int:
    from bridge.api.errors import ApiError
    from bridge.api.v1 import messages_page, one_message
    from bridge.cli_ops import Ops, _run

    async def go(ops: Ops) -> int:
        account = await ops.account(args.account)
        try:
            if args.action == "show":
                _print(await one_message(ops.store, account.id, args.message_id))
                return 0
            query = {k: str(v) for k in _FILTERS if (v := getattr(args, k)) is not None}
            _print(await messages_page(ops.store, ops.config.rules.timezone, account, query))
        except ApiError as exc:  # the API's refusal of a filter, or an unknown message
            raise CliError(f"{exc.code}: {exc.message}") from None
        return 0

    return _run(args, go)


def add_parsers(sub: Any, with_config: Configured) -> None:
    msg = sub.add_parser("message", help="an account's messages, as the customer's API shows them")
    m = msg.add_subparsers(dest="action", required=True)
    ml = with_config(m.add_parser("list", help="newest first, a page at a time"))
    ml.add_argument("account", help="account id or name")
    ml.add_argument("--to", help="a recipient (a national form as for sends)")
    ml.add_argument("--date", help="day of acceptance, YYYY-MM-DD (UTC, or --timezone local)")
    ml.add_argument("--timezone", choices=("utc", "local"), help="local: rules.timezone's day")
    ml.add_argument("--status", help="queued, sent, delivered, failed, expired or unknown")
    ml.add_argument("--batch-id", dest="batch_id", help="the messages of one send (bat_...)")
    ml.add_argument("--cursor", help="next_cursor of the page before")
    ml.add_argument("--limit", type=int, help="1-200 (default 50)")
    ms = with_config(m.add_parser("show", help="one message with its parts"))
    ms.add_argument("account", help="account id or name")
    ms.add_argument("message_id")
    msg.set_defaults(fn=cmd_message)
