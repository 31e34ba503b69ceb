"""The audit trail of operators' actions: what goes in, decided here; the store keeps it.

Every admin API request that may change something (any method but GET, HEAD and OPTIONS), refused
ones included (a wrong token is worth knowing about), and every store command of the CLI that may
change something. Money has its own record (the ledger); this one answers "who disabled this
account, approved that template, imported that list, and when". Secrets never go in: the admin
API's bodies are not recorded (only the route and the path, numbers masked as in the logs) and
the CLI's arguments have URLs' query strings and credentials cut.

The actor of an API request made with a named operator's own token (admin.operators) is
`operator:<name>`; with the shared server.admin_token it is `api`, or `api:<name>` when the
tooling sends `X-Operator: <name>` (the caller's word, recorded as such, not an identity). The
CLI's is `cli:<OS user>`.
"""

from __future__ import annotations

import getpass
import re
from collections.abc import Sequence

_OPERATOR = re.compile(r"[A-Za-z0-9._@+\-]{1,64}")
# The user information runs to the LAST @ before the path, as URL parsers (yarl) read it: cut
# at the first, "u:pa@ss@host" left "ss@host" of the password in the trail.
_URL = re.compile(r"([a-z][a-z0-9+.\-]*://)([^/?#\s]*@)?([^?\s#]*)(\S*)", re.IGNORECASE)

# Store commands of the CLI that change nothing: (command, action). `template review` with no
# CODE lists the queue, with no decision shows one; `secrets reseal --dry-run` counts (see
# cli_action).
READ_ONLY = frozenset(
    {
        ("account", "list"),
        ("account", "show"),
        ("key", "list"),
        ("sign", "list"),
        ("template", "list"),
        ("bill", "balance"),
        ("bill", "show"),
        ("bill", "check"),
        ("tariff", "list"),
        ("dnc", "list"),
        ("audit", "list"),
        ("mo", "list"),
        ("message", "list"),
        ("message", "show"),
    }
)
_SKIPPED_OPTIONS = frozenset({"--config", "-c"})


def api_actor(header: str | None, operator: str | None = None) -> str:
    """`operator:<name>` for a request made with a named operator's own token (admin.operators:
    an identity); else `api`, or `api:<name>` for a well-formed X-Operator header (the
    caller's word; anything else is dropped, not recorded raw: it is the caller's text)."""
    if operator:
        return f"operator:{operator}"
    if header and _OPERATOR.fullmatch(header.strip()):
        return f"api:{header.strip()}"
    return "api"


def cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name for this uid (a container's arbitrary uid)
        return "cli:?"


def mutating_method(method: str) -> bool:
    return method.upper() not in ("GET", "HEAD", "OPTIONS")


def scrub(arg: str) -> str:
    """A URL keeps its scheme, host and path; user:password@ and the query string (where
    tokens hide) are cut."""
    return _URL.sub(lambda m: m[1] + m[3] + ("?…" if m[4] else ""), arg)


def cli_action(
    argv: Sequence[str], *, queue: bool = False, dry_run: bool = False
) -> tuple[str, str] | None:
    """(action, target) of a CLI command line (without the program name), or None when it
    changes nothing: `cli <command> <action>` and the remaining arguments, scrubbed, without
    --config (a path, not the action). `queue` and `dry_run` come from the parsed arguments
    (argparse takes abbreviations: `--dry` is --dry-run), for the two commands that read only
    with them: `template review` without a CODE or a decision, `secrets reseal --dry-run`."""
    words = list(argv)
    if len(words) < 2:
        return None
    command, action = words[0], words[1]
    rest: list[str] = []
    skip = False
    for a in words[2:]:
        if skip:
            skip = False
            continue
        if a in _SKIPPED_OPTIONS:
            skip = True
            continue
        if a.startswith("--config="):
            continue
        rest.append(scrub(a))
    if (command, action) in READ_ONLY or queue or dry_run:
        return None
    return f"cli {command} {action}", " ".join(rest)[:1000]


def clean(text: str) -> str:
    """A recorded value without NUL (PostgreSQL text cannot hold one: the row was lost)."""
    return text.replace("\x00", "\\0")
