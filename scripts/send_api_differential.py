#!/usr/bin/env python3
"""Send seeded, hostile POST /v1/messages requests over raw TCP to two trees' API and compare
every answer's bytes, the log lines and every table.

Usage: python scripts/send_api_differential.py --base DIR [--tree DIR] [--seeds 40] [--first 0]

Why (session 62's review r3 of h6's straight send): the usual send's parse, its text checks,
its units, the tariff read, the body's one-chunk read, the Content-Type test and the accept's
try moved into the handler must answer every request as before. Each seed draws a config (an
SMSC's split, packed GSM, gsm_data_coding; text.max_chars; the counting rule; smart encoding;
a content filter; billing on or off; a second tariff version taking effect mid-run, a send at
its very millisecond), three accounts (raw text, templates only, raw text without funds), then
40-60 requests: bodies of every odd shape (duplicate keys, nested objects, `to` as a list, a
number or an object, E.164 edge forms, GSM-7 extension characters, ESC, texts at 70/67/160/153
boundaries, blank and invisible texts, client_ref and sign_name at and over their limits and of
other types, keys in another case, a BOM, whitespace), Content-Types with parameters and odd
case, bodies in one piece, in several TCP writes and chunked, Idempotency-Keys fresh, replayed
(same and another body) and malformed; now and then the store's `accept` or `get_idempotency`
fails once (a lost connection: 503 and "store unavailable"; another fault: 500). The answers
(ids and Date masked), the `bridge` log lines and every table (ids masked, random secrets and
the nonces left out) must be equal. Each tree runs in a child process that imports `bridge` and
`tests` from it (tests/integration/conftest.py's `start_api` and `ServedApi`: the daemon's
runner on a real port, a real SQLite file, a frozen clock).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import random
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # children.py

from children import Children  # noqa: E402

# The two children (one a tree), ended with this script however it ends (children.py).
CHILDREN = Children()
T0 = 1_780_000_020.0  # the frozen clock's start (seconds)
_IDS = re.compile(r"\b((?:msg|bat|req|acc|key|ak|app)_)[0-9A-Za-z]{10,}\b")
_DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")
_RANDOM_COLS = {"secret_enc", "webhook_secret_enc", "nonce", "key_id", "app_key", "secret_hash"}

GSM = "Hello world 123 @£$¥èé"
EXT = "^{}\\[~]|€"
TEXTS_FIXED = [
    "",
    " ",
    "\t\n",
    "\u200b",
    " \u200b ",
    "\x1b",
    "a\x1bb",
    "€",
    "{}",
    "Your code is 123456.",
    "您的验证码是123456",
    "😀",
    "a😀",
    "\u00a0",
    "…hello",
    "ab\r\ncd",
    "BAD word here",
]


def _text(rr: random.Random) -> str:
    pick = rr.random()
    if pick < 0.3:
        return rr.choice(TEXTS_FIXED)
    n = rr.choice([1, 2, 66, 67, 68, 69, 70, 71, 80, 133, 134, 135, 152, 153, 154, 159, 160, 161,
                   200, 201, 202, 306, 307, 499, 500, 501])  # fmt: skip
    pools = ["a", GSM, GSM + EXT, "中文", "Привет", "a😀", "é", "a\u200b", GSM + "…"]
    pool = rr.choice(pools)
    s = "".join(rr.choice(pool) for _ in range(n))
    if rr.random() < 0.2:  # an extension or odd character at a boundary
        at = rr.randrange(len(s) + 1)
        s = s[:at] + rr.choice(EXT + "😀中\x1b") + s[at:]
    return s


NUMBERS = ["+8613800138000", "+12025550123", "+1234567", "+123456789012345",
           "+1234567890123456", "+0123456789", "8613800138000", "13800138000",
           "+86 138 0013 8000", "", "+", "+861380013800a", "+８613800138000", "+44 20 7946 0958",
           "+8613800138001", "+85291234567", "+99912345678", "0086 13800138002"]  # fmt: skip


GOOD = ["+8613800138000", "+8613800138001", "+8613800138002", "+12025550123", "+85291234567",
        "+447946095800", "+1234567", "+123456789012345"]  # fmt: skip


def _to(rr: random.Random) -> Any:
    r = rr.random()
    if r < 0.75:
        return rr.choice(NUMBERS)
    if r < 0.85:
        return [rr.choice(NUMBERS) for _ in range(rr.randint(0, 3))]
    return rr.choice([8613800138000, None, {"n": "+8613800138000"}, ["+8613800138000", 5], True])


def _opt(rr: random.Random, limit: int) -> Any:
    return rr.choice(["a" * limit, "a" * (limit + 1), "", None, 5, "Acme", "é" * limit,
                      "x", ["a"], "Other", "ａｃｍｅ", " Acme"])  # fmt: skip


OTHER_KEYS = ["To", "TEXT", "extra", "template", "params", "sender", "smart_encoding",
              "validity_minutes", "Client_ref"]  # fmt: skip


def _body(rr: random.Random) -> bytes:
    """A body: mostly the usual send, every kind of oddity now and then."""
    d: dict[str, Any] = {}
    if rr.random() < 0.7:  # the usual send, as valid as the parse may take it straight
        d["to"] = rr.choice(GOOD)
        d["text"] = _text(rr)
        if rr.random() < 0.3:
            d["client_ref"] = rr.choice(["r-1", "a" * 64, "é" * 64, None])
        if rr.random() < 0.3:
            d["sign_name"] = rr.choice(["Acme", "Acme", None, "Other", "a" * 32])
        return json.dumps(d, ensure_ascii=rr.random() < 0.5).encode()
    if rr.random() < 0.95:
        d["to"] = _to(rr)
    if rr.random() < 0.93:
        d["text"] = _text(rr) if rr.random() < 0.95 else rr.choice([5, None, ["a"], {"a": 1}])
    if rr.random() < 0.35:
        d["client_ref"] = _opt(rr, 64)
    if rr.random() < 0.3:
        d["sign_name"] = _opt(rr, 32)
    if rr.random() < 0.1:
        d[rr.choice(OTHER_KEYS)] = rr.choice(["x", 5, None, {}, True, {"a": "b"}])
    if rr.random() < 0.1:
        d = dict(reversed(list(d.items())))
    if rr.random() < 0.05:
        return rr.choice([b"", b"[]", b"null", b'"x"', b"{", b"{}", b"\xef\xbb\xbf{}", b"   "])
    raw = json.dumps(d, ensure_ascii=rr.random() < 0.5).encode()
    r = rr.random()
    if r < 0.06 and len(d) >= 1:  # a key repeated
        k = rr.choice(list(d))
        raw = raw[:-1] + b", " + json.dumps(k).encode() + b": " + json.dumps(d[k]).encode() + b"}"
    elif r < 0.1:
        raw = b"\xef\xbb\xbf" + raw
    elif r < 0.15:
        raw = b"  \n" + raw + b"\n "
    elif r < 0.2:
        raw = raw[:-1] + b', "nested": {"to": "+8613800138000"}}'
    elif r < 0.23 and raw.startswith(b'{"'):
        raw = b'{"to": "\\u002b8613800138000", ' + raw[1:]  # an escaped key of another value
    return raw


CTYPES = [
    *["application/json"] * 30,
    None,
    "application/json; charset=utf-8",
    "Application/JSON",
    "application/json;charset=UTF-8",
    "application/json; charset=latin-1",
    "text/plain",
    "application/json ",
    "",
    "application/problem+json",
]
KEYS = ["fresh"] * 20 + ["replay"] * 3 + ["bad"]
BAD_KEYS = ["a b", "x" * 256, "x" * 255, "\t", "é"]


async def child(tree: str, seed: int, tmp: Path) -> list[str]:
    """One seed's config, accounts and requests against `tree`'s API: its lines."""
    from bridge import billing
    from tests.integration import conftest as ic

    rr = random.Random(seed)
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(f"{record.name} {record.levelname} {record.getMessage()}")

    keep = Keep(logging.DEBUG)
    logging.getLogger("bridge").addHandler(keep)
    smsc: dict[str, Any] = {"name": "main", "system_id": "bridge"}
    smsc["split"] = rr.choice(["udh8", "udh16", "sar", "payload", "udh8"])
    smsc["packed_gsm"] = rr.random() < 0.2
    smsc["gsm_data_coding"] = rr.choice([0, 0, 0, 1])
    overrides: dict[str, Any] = {
        "smscs": [smsc],
        "text": {
            "max_chars": rr.choice([500, 500, 500, 160, 70, 1000]),
            "counting_rule": rr.choice(["chars_70_67", "chars_70_67", "wire_segments"]),
            "smart_encoding": rr.random() < 0.3,
        },
        "billing": {"enabled": rr.random() < 0.8},
    }
    tmp.mkdir()
    if rr.random() < 0.4:
        words = tmp / "filter.txt"
        words.write_text("BAD\n")
        overrides["rules"] = {"content_filter_file": str(words)}
    clock = ic.Clock()
    clock.freeze(T0)
    api = await ic.start_api(tmp, clock, overrides)
    served = ic.ServedApi(api)
    await served.start()
    import bridge

    assert bridge.__file__ is not None and bridge.__file__.startswith(tree), bridge.__file__
    shown_config = {**overrides, "rules": "filter" if "rules" in overrides else None}
    lines: list[str] = [json.dumps(shown_config, sort_keys=True, default=str)]
    try:
        raw = await api.create_account("raw")
        tpl = await api.create_account("tpl", raw_text=False)
        poor = await api.create_account("poor", ready=False)
        accounts = [raw] * 10 + [tpl, poor]
        second_at = None
        if api.config.billing.enabled and rr.random() < 0.6:
            now = api.ctx.now_ms()
            first = billing.tariff_from_config(api.config.billing.tariff, 0)
            second_at = now + 60_000 + rr.randrange(0, 3) * 1000
            v2 = dataclasses.replace(
                first,
                version="v2-diff",
                effective_at=second_at,
                starting_price=first.starting_price * 2 + 1,
                counting_rule=rr.choice(["chars_70_67", "wire_segments"]),
            )
            await api.ctx.tariff_book.add(v2, now)
        used: list[tuple[str, bytes, Any]] = []
        n = rr.randint(40, 60)
        for i in range(n):
            if second_at is not None and i == n // 3:
                clock.freeze(second_at / 1000 - 0.001)
            if second_at is not None and i == n // 3 + 1:
                clock.freeze(second_at / 1000)
            if second_at is not None and i == n // 3 + 2:
                clock.freeze(second_at / 1000 + 1)
            kind = rr.choice(KEYS)
            creds = rr.choice(accounts)
            body = _body(rr)
            if kind == "replay" and used:
                key, old_body, creds = rr.choice(used)
                if rr.random() < 0.7:
                    body = old_body
            elif kind == "bad":
                key = rr.choice(BAD_KEYS)
            else:
                key = f"idem-{seed}-{i}"
            used.append((key, body, creds))
            ctype = rr.choice(CTYPES)
            headers = ic.prepare_headers(
                f"127.0.0.1:{served.port}",
                "POST",
                "/v1/messages",
                "",
                body,
                creds=creds,
                headers=None,
                content_type=ctype,
                idempotency_key=key,
                when=clock.utc(),
                nonce=f"nonce-{seed}-{i}-{rr.randrange(10**9)}",
            )
            how = rr.choice(["one", "one", "pieces", "chunked"])
            fault = rr.choice(["accept", "get_idempotency"]) if rr.random() < 0.08 else None
            if fault is not None:  # this request's first call of it fails as a lost store would
                lost = rr.random() < 0.7
                exc = ConnectionError("store lost") if lost else RuntimeError("a fault")
                _fail_once(api.ctx.store, fault, exc)
            if how == "chunked":
                headers["Transfer-Encoding"] = "chunked"
                cuts = sorted(rr.sample(range(1, len(body)), 2)) if len(body) > 2 else []
                pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
                chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p)
                payload = chunks + b"0\r\n\r\n"
            else:
                headers["Content-Length"] = str(len(body))
                payload = body
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
            data = b"POST /v1/messages HTTP/1.1\r\n" + head + b"\r\n" + payload
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            try:
                if how == "pieces" and len(data) > 3:
                    cut1 = rr.randrange(1, len(data))
                    for part in (data[:cut1], data[cut1:]):
                        writer.write(part)
                        await writer.drain()
                        await asyncio.sleep(0.01)
                else:
                    writer.write(data)
                async with asyncio.timeout(20):
                    answer = await reader.read(1 << 20)
                    while b"\r\n\r\n" in answer and not _complete(answer):
                        more = await reader.read(1 << 20)
                        if not more:
                            break
                        answer += more
            finally:
                writer.close()
            shown = _DATE.sub(b"\r\nDate: -\r\n", answer).decode("utf-8", "backslashreplace")
            if fault is not None:
                api.ctx.store.__dict__.pop(fault, None)  # its own method again
            lines.append(f"{i} {how} {fault} {ctype!r} {key[:20]!r} {body[:200]!r}")
            lines.append(_IDS.sub(r"\1-", shown))
            lines.extend(_IDS.sub(r"\1-", r) for r in records)
            records.clear()
        lines.append(_dump(Path(api.config.store.path)))
    finally:
        logging.getLogger("bridge").removeHandler(keep)
        await served.runner.cleanup()
        await api.close()
    return lines


def _fail_once(store: Any, name: str, exc: Exception) -> None:
    """The store's `name` raises `exc` at its next call (a lost store's ConnectionError: a 503
    and the throttled "store unavailable" line; another: a 500 and "internal error"), then is
    the method again."""
    real = getattr(store, name)

    async def failing(*args: Any, **kw: Any) -> Any:
        setattr(store, name, real)
        raise exc

    setattr(store, name, failing)


def _complete(answer: bytes) -> bool:
    head, _, rest = answer.partition(b"\r\n\r\n")
    m = re.search(rb"\r\ncontent-length: (\d+)", head, re.I)
    return m is None or len(rest) >= int(m.group(1))


def _dump(path: Path) -> str:
    import sqlite3

    c = sqlite3.connect(path)
    out = []
    try:
        for (name,) in c.execute(
            "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"
        ).fetchall():
            if name in ("schema_version", "sqlite_sequence", "nonces", "api_keys", "app_keys"):
                continue
            cur = c.execute(f'SELECT * FROM "{name}"')
            cols = [d[0] for d in cur.description]
            keep = [i for i, col in enumerate(cols) if col not in _RANDOM_COLS | {"row_version"}]
            rows = []
            for r in cur.fetchall():
                vals = []
                for i in keep:
                    v = r[i]
                    if isinstance(v, str):
                        v = _IDS.sub(r"\1-", v)
                    elif isinstance(v, bytes):
                        v = f"<{len(v)} bytes>"
                    vals.append(v)
                rows.append(repr(tuple(vals)))
            out.append(f"{name} {[cols[i] for i in keep]}\n" + "\n".join(sorted(rows)))
    finally:
        c.close()
    return "\n".join(out)


async def children_seeds(tree: str, first: int, seeds: int, out: Path) -> None:
    """Every seed's lines, each seed's behind a `seed N` line, in one file."""
    sys.path.insert(0, tree)
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="send-api-diff-") as tmp:
        for seed in range(first, first + seeds):
            lines.append(f"seed {seed}")
            lines.extend(await child(tree, seed, Path(tmp, str(seed))))
    out.write_text("\n".join(lines) + "\n", "utf-8", "surrogatepass")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", help="the tree compared with (a checkout)")
    ap.add_argument("--tree", default=str(HERE), help="the tree under test (this one)")
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        asyncio.run(children_seeds(args.child, args.first, args.seeds, Path(args.out)))
        return
    if not args.base:
        ap.error("--base is required")
    CHILDREN.on_signals()
    # In each tree's directory: its `bridge` and `tests` are imported (sys.path[0] too).
    seeds = ["--seeds", str(args.seeds), "--first", str(args.first)]
    base, new = CHILDREN.two_trees(__file__, args.base, args.tree, seeds, cwd_tree=True)
    seed, answers = "", 0
    differing: list[tuple[str, int, str, str]] = []
    for i, (a, b) in enumerate(zip(base, new, strict=False)):
        if a.startswith("seed "):
            seed = a
        answers += a.startswith("HTTP/1.1 ")
        if a != b and (not differing or differing[-1][0] != seed):
            differing.append((seed, i, a, b))
    for seed, i, a, b in differing:
        print(f"differ at line {i} ({seed}):\n  base: {a[:600]}\n  tree: {b[:600]}")
    if len(base) != len(new):
        print(f"differ in length: {len(base)} against {len(new)} lines")
    print(f"seeds {args.seeds}, answers {answers}, differing seeds {len(differing)}")
    sys.exit(1 if differing or len(base) != len(new) else 0)


if __name__ == "__main__":
    main()
