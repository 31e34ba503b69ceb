#!/usr/bin/env python3
"""CPU of the accept path's pure steps, per request, in one process (no HTTP, no store).

Usage: python scripts/bench_accept.py [--seconds 1.0]

Why: end to end the machine's noise (±15% between runs) hides a cut of a few microseconds per
request, and the accept path is made of such steps. Each case runs what the daemon runs for one
signed one-recipient POST /v1/messages, on the same bytes `scripts/bench.py` sends; compare two
trees by running this script from each (it imports the `bridge` beside it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multidict import CIMultiDict

from bridge import jsonio
from bridge.api import signing
from bridge.api.submit import Submitter, parse_send_request
from bridge.app import make_router
from bridge.config import parse_config
from bridge.domain.admission import Rules
from bridge.ids import new_id
from bridge.store import sqlite_rules
from bridge.store.models import Account

KEY = "ak_bench0123456789"
SECRET = "s" * 43
BODY = b'{"to":"+8613800000000","text":"Your verification code is 123456."}'
# A text with colons: the repeated-key check's first count does not pass it, the second does.
COLON_BODY = b'{"to":"+8613800000000","text":"Your code: 123456, valid until 10:30."}'
# What parse_json parses with (a tree from before the repeated-key check: plain loads), so the
# same script measures both trees.
LOADS: Callable[[bytes], Any] = getattr(jsonio, "loads_unique", jsonio.loads)
UCS3 = "【示例】您的验证码是123456，五分钟内有效。请勿泄露给他人。如非本人操作，请忽略本短信。" * 3
ACCOUNT = Account(id="acc_bench", name="bench", raw_text=True)
# What prepare_send hands the store for bench.py's requests (billing on, the default tariff).
RULES = Rules(billing=True, tz="Asia/Shanghai")


def request_headers(now: datetime) -> CIMultiDict[str]:
    """The headers of one signed request, as aiohttp hands them to the handler."""
    headers = {
        "Host": "127.0.0.1:8080",
        "Content-Type": "application/json",
        "Idempotency-Key": uuid.uuid4().hex,
        "Content-Length": str(len(BODY)),
    }
    nonce = uuid.uuid4().hex + uuid.uuid4().hex[:8]
    headers.update(
        signing.sign_request(KEY, SECRET, "POST", "/v1/messages", "", headers, BODY, now, nonce)
    )
    return CIMultiDict(headers)


def signature_check(headers: CIMultiDict[str], now: float) -> None:
    """What Authenticator.authenticate runs besides the key lookup and the nonce write."""
    auth = signing.parse_authorization(headers.get("Authorization"))
    lowered = signing.lower_headers(headers)
    signing.check_signed_headers(auth, lowered)
    when = signing.parse_date(headers["X-Bridge-Date"])
    signing.check_nonce(headers.get("X-Bridge-Nonce"))
    signing.check_skew(when, datetime.fromtimestamp(now, UTC), 300)
    signing.verify_checked(SECRET, "POST", "/v1/messages", "", lowered, BODY, auth)


def run(step: Callable[[int], object], seconds: float) -> float:
    """Microseconds of CPU per call."""
    n = 0
    start = time.process_time()
    while True:
        for i in range(500):
            step(n + i)
        n += 500
        spent = time.process_time() - start
        if spent >= seconds:
            return spent / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=1.0, help="CPU time per case")
    args = ap.parse_args()
    now = time.time()
    pool = [request_headers(datetime.fromtimestamp(now, UTC)) for _ in range(1000)]
    base_ms = int(now * 1000)
    cfg = parse_config(
        {"security": {"generate_master_key": True}, "smscs": [{"name": "a", "system_id": "s"}]},
        env={},
        base_dir=Path("/srv/bridge"),
    )
    submitter = Submitter(cfg, make_router(cfg))
    gsm1 = parse_send_request(jsonio.loads(BODY), ACCOUNT, max_recipients=100, now_ms=base_ms)
    ucs3 = parse_send_request(
        {"to": "+8613800000000", "text": UCS3}, ACCOUNT, max_recipients=100, now_ms=base_ms
    )
    cases: dict[str, Callable[[int], object]] = {
        "signature check (parse, headers, date, skew, HMAC)": lambda i: signature_check(
            pool[i % 1000], now
        ),
        "message id, a new millisecond each": lambda i: new_id("msg_", base_ms + i),
        "message id, the same millisecond": lambda i: new_id("msg_", base_ms),
        "request body: JSON and validation": lambda i: parse_send_request(
            LOADS(BODY), ACCOUNT, max_recipients=100, now_ms=base_ms
        ),
        "request body, colons in the text": lambda i: parse_send_request(
            LOADS(COLON_BODY), ACCOUNT, max_recipients=100, now_ms=base_ms
        ),
        "messages built, 1-part GSM (encode, parts, ids)": lambda i: submitter.build(
            gsm1, ACCOUNT, base_ms + i
        ),
        "messages built, 3-part UCS-2": lambda i: submitter.build(ucs3, ACCOUNT, base_ms + i),
        # The arguments of the statement that reads a one-recipient send's facts with its key
        # (SqliteStore.accept, before the write lock): prefixes, day, sign, pockets.
        "send facts' statement arguments (SQLite)": lambda i: sqlite_rules.one_facts_query(
            ACCOUNT.id, RULES, (f"+86138{i % 100_000_000:08d}",), base_ms + i
        ),
    }
    with tempfile.TemporaryDirectory() as tmp:
        cases["key check with the facts (SQLite, in the write lock)"] = key_check(
            Path(tmp), base_ms
        )
        for name, step in cases.items():
            print(f"  {name:<55} {run(step, args.seconds):8.2f} us")


def key_check(tmp: Path, now_ms: int) -> Callable[[int], None]:
    """What an accept runs first inside the write lock (sqlite._authorize): one statement reads
    the key, its account and the send's facts, one inserts the nonce; against a real store file,
    each 500 rolled back. The statement's arguments are made first, as SqliteStore.accept makes
    them before the lock (this tree's way: with the key's argument or without)."""
    import asyncio
    import inspect
    import sqlite3

    from bridge.accounts import AccountService
    from bridge.crypto import Sealer
    from bridge.store import sqlite as sqlite_store

    async def made() -> str:
        store = sqlite_store.SqliteStore(str(tmp / "bridge.db"))
        await store.open()
        try:
            creds = await AccountService(store, Sealer(bytes(32))).create(
                "bench", {"raw_text": True}, now_ms
            )
        finally:
            await store.close()
        return creds.app_key

    key_id = asyncio.run(made())
    source = inspect.getsource(sqlite_store.SqliteStore.accept)
    merged = 'one_facts[1]["key_id"]' in source
    # Session 53: the whole statement and its parameters, positional, made before the lock.
    positional = "sqlite_binds.positional" in source
    # Session 55: with the version of the account row held (`aver`, none here: the row's JSON is
    # read each time) and whether to read today's count and the pockets (`reads`).
    versioned = "sqlite_binds.positional_at" in source
    # Session 58: the facts' values by position (`one_facts_values`), the statement and the
    # getter of its values kept per pattern of Nones (`sqlite._key_plan`).
    planned = "_key_plan(" in source
    # Session 62: two statements a pattern (reading today's count and the pockets or not), only
    # the columns whose value the accept cannot know; the first, which reads them, here.
    two = "key_row_held" in source
    c = sqlite3.connect(tmp / "bridge.db", isolation_level=None)
    c.execute("BEGIN IMMEDIATE")

    queries: list[Any] = []  # its shape follows the tree measured (see `positional`)
    for i in range(1000):
        number = f"+86138{i:08d}"
        query: Any = sqlite_rules.one_facts_query(ACCOUNT.id, RULES, (number,), now_ms)
        assert query is not None
        if planned:
            values = sqlite_rules.one_facts_values(ACCOUNT.id, RULES, (number,), now_ms)
            assert values is not None
            cols, v = values
            nones = tuple(v[i] is None for i in (1, 2, 3, 8, 9, 10))
            if two:
                plans: Any = sqlite_store._key_plan(cols, (*nones, True), v[6] == 1)
                sql, pick, _row = plans[0]
            else:
                before: Any = sqlite_store._key_plan  # its signature before session 62
                sql, pick, _at = before(cols, (*nones, True))  # no version held
            query = (sql, pick((*v, key_id, None)), None)
        elif versioned:
            from bridge.store import sqlite_binds

            sql, args, _at = sqlite_binds.positional_at(
                sqlite_store._authorize_facts_sql(query[0]),
                {**query[1], "key_id": key_id, "aver": None},
                "reads",
            )
            query = (sql, args, None)
        elif positional:
            from bridge.store import sqlite_binds

            query = sqlite_binds.positional(
                sqlite_store._authorize_facts_sql(query[0]), {**query[1], "key_id": key_id}
            )
        elif merged:
            query[1]["key_id"] = key_id
        queries.append(query)

    def step(i: int) -> None:
        row: list[Any] = []
        outcome, _account = sqlite_store._authorize(
            c,
            key_id,
            f"nonce{i:012d}",
            now_ms + 601_000,
            now_ms,
            [],
            (*queries[i % 1000], row),
        )
        assert outcome == "ok", outcome
        if i % 500 == 499:
            c.execute("ROLLBACK")
            c.execute("BEGIN IMMEDIATE")

    return step


if __name__ == "__main__":
    main()
