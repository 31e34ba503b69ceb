#!/usr/bin/env python3
"""Run seeded texts, sends and signed requests through two trees and compare every answer.

Usage: python scripts/text_sign_differential.py --base DIR [--tree DIR] [--seeds 200] [--first 0]

Why (session 57, review of the accept's Python outside the write lock): the encoder, the
segment counts and prices a send is billed, and the canonical request were rewritten for speed
(remembered last answers, an early refusal by the first characters, direct codec calls, plain
slices, builders generated per header count, the date's seconds cached with its parse); each
must answer byte for byte as before, for every input. Each seed draws texts over GSM, the GSM
extension, national-table letters, Latin-1, smart-mapped punctuation, UCS-2 (CJK, Cyrillic),
emoji (surrogate pairs in UTF-16), lone surrogates and mixes, of lengths around every part
boundary, with a non-GSM character placed around the 16th; each text goes through
`encode_message` under a sample of every option set (with a fixed and a drawing reference),
`gsm_septets`, `gsm_encode`, `tariff_chars`, `billable_units`, `one_gsm_part`, twice and as an
equal string of another identity; then whole sends (`parse_send_request` and `Submitter.build`
with ids from a counter: every message, segment and price) under SMSC and text configurations
and tariffs; then canonical requests of random methods, paths, queries and headers (odd values:
blanks, commas, braces, "%", non-ASCII, repeated names; signed names absent), dates (valid,
invalid, padded), nonces and Authorization values, each asked twice (built, then from the
caches). Each tree runs in a child process that imports `bridge` from it and writes one line an
answer; the lines must be equal.
"""

from __future__ import annotations

import argparse
import base64
import functools
import itertools
import random
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # children.py

from children import Children  # noqa: E402

# The two children (one a tree), ended with this script however it ends (children.py).
CHILDREN = Children()

GSM_BASE = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
EXTENSION = "^{}\\[~]|€\f"
NATIONAL = "ğĞşŞıİçÇáíóúÁÍÓÚêÊâÂãõÃÕ"  # Turkish, Spanish, Portuguese shift-table letters
LATIN1 = "ôâîûëïÿ«»°±²³µ¶·¹º¼½¾"
SMART = "…“”‘’–—\u00a0\u2022"
CJK = "中文短信验证码您的是示例阿里云【】。，"
CYRILLIC = "Привет мир ваш код"
EMOJI = ["😀", "👍", "🎉", "𝄞", "👨\u200d👩\u200d👧"]
ODD = ["\ud800", "\udc00", "\u0301", "\u200b", "\t", "\x00", "\x7f"]
POOLS: list[list[str]] = [
    list(GSM_BASE),
    list(GSM_BASE + EXTENSION),
    list(GSM_BASE[:60] + NATIONAL),
    list(GSM_BASE[:40] + LATIN1),
    list(GSM_BASE[:40] + SMART),
    list(CJK),
    list(CYRILLIC),
    [*CJK, *EMOJI],
    [*GSM_BASE, *EXTENSION, *NATIONAL, *LATIN1, *SMART, *CJK, *EMOJI],
    list(GSM_BASE[:30]) * 20 + EMOJI + ODD,
]
LENGTHS = [0, 1, 2, 15, 16, 17, 66, 67, 69, 70, 71, 72, 133, 134, 135, 140, 141, 152, 153]
LENGTHS += [154, 159, 160, 161, 201, 268, 306, 307, 459, 460, 1000, 3000]


def _text(rng: random.Random) -> str:
    """A text of a drawn pool and a length near a boundary, sometimes a GSM head before other
    characters (the early refusal reads the first 16)."""
    n = max(0, rng.choice(LENGTHS) + rng.randint(-2, 2))
    pool = rng.choice(POOLS)
    kind = rng.randrange(4)
    if kind == 0:
        return "".join(rng.choice(pool) for _ in range(n))
    if kind == 1:  # a GSM head, then one other character around the 16th, then GSM again
        at = rng.choice([0, 1, 14, 15, 16, 17, 30])
        head = "".join(rng.choice(GSM_BASE + EXTENSION) for _ in range(at))
        odd = rng.choice([*CJK, *EMOJI, *LATIN1, *SMART, *NATIONAL, *ODD])
        return head + odd + "".join(rng.choice(GSM_BASE) for _ in range(n))
    if kind == 2:  # one character repeated to a part boundary, then a tail
        return rng.choice(pool) * n + "".join(
            rng.choice(POOLS[-1]) for _ in range(rng.randint(0, 3))
        )
    return "".join(rng.choice(GSM_BASE) for _ in range(n)) + rng.choice([*EMOJI, "€", "\r", "中"])


def _date_seconds(parse: Callable[[str], Any], value: str) -> tuple[Any, float]:
    """The pre-session-57 tree's `parse_date_seconds`: the parse and its timestamp."""
    date = parse(value)
    return date, date.timestamp()


def _next_ref(counter: Iterator[int]) -> int:
    return next(counter) % 65536


def _next_id(ids: Iterator[str], prefix: str, now_ms: int) -> str:
    return next(ids)


def _out(value: Any) -> str:
    return repr(value).replace("\n", "\\n")


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    try:
        return _out(fn(*args, **kwargs))
    except Exception as exc:  # the refusal is the answer: its type and words
        return f"{type(exc).__name__}: {getattr(exc, 'code', '')} {exc}"


def _texts(rng: random.Random, emit: Callable[[str], None]) -> None:
    from bridge.text import gsm, split, units
    from bridge.text.split import EncodeOptions, SplitMode, encode_message, one_gsm_part

    options = [
        EncodeOptions(
            split=s, gsm_data_coding=dc, allow_latin1=l1, packed_gsm=p, smart=sm, max_parts=m
        )
        for s, dc, l1, p, sm, m in itertools.product(
            list(SplitMode), (0, 1), (False, True), (False, True), (False, True), (255, 3)
        )
    ]
    for _ in range(12):
        text = _text(rng)
        again = "".join(list(text))  # equal, another object (when not interned)
        for t in (text, text, again):
            emit(_call(gsm.gsm_septets, t))
            emit(_call(gsm.septet_count, t))
            emit(_call(gsm.gsm_encode, t))
            emit(_call(units.tariff_chars, t))
            emit(_call(split.choose_encoding, t, True))
        for rule in units.CountingRule:
            emit(_call(units.billable_units, text, rule, 3))
        for opts in rng.sample(options, 10):
            emit(_call(one_gsm_part, text, opts))
            emit(_call(encode_message, text, opts, 7))
            counter = itertools.count(rng.randrange(65536))
            emit(_call(encode_message, again, opts, functools.partial(_next_ref, counter)))
            emit(_call(one_gsm_part, again, opts))
        emit(_call(gsm.gsm_septets, text + "x"))  # another text after the remembered one
        emit(_call(units.tariff_chars, text[1:]))


SMSCS = [
    {"split": s, "gsm_data_coding": dc, "allow_latin1": l1, "packed_gsm": p}
    for s, dc, l1, p in itertools.product(
        ("udh8", "udh16", "sar", "payload"), (0, 1), (False, True), (False, True)
    )
]
TEXT_CONFIGS = [
    {"sign_format": f, "counting_rule": r, "smart_encoding": sm, "max_chars": n}
    for f, r, sm, n in itertools.product(
        ("【{sign}】", "[{sign}] ", "{sign}: "),
        ("chars_70_67", "wire_segments"),
        (False, True),
        (500, 160, 2000),
    )
]
NUMBERS = ["+8613800000054", "+8613800000055", "+12025550123", "+442071234567"]
TEMPLATES = ["Your code is ${code}.", "您的验证码是${code}", "Dear ${name}: {x} ~ € ${code} 👍"]
_CONFIGS: dict[tuple[int, int], Any] = {}


def _sends(rng: random.Random, emit: Callable[[str], None], tmp: Path) -> None:
    import dataclasses

    from bridge.api import submit
    from bridge.api.errors import ApiError
    from bridge.api.submit import Submitter, parse_send_request
    from bridge.app import make_router
    from bridge.billing import tariff_from_config
    from bridge.config import parse_config
    from bridge.store.models import Template

    for _ in range(8):
        key = (rng.randrange(len(SMSCS)), rng.randrange(len(TEXT_CONFIGS)))
        if key not in _CONFIGS:
            _CONFIGS[key] = parse_config(
                {
                    "server": {"port": 8080},
                    "store": {"path": str(tmp / "b.db")},
                    "security": {"master_key": base64.b64encode(bytes(32)).decode()},
                    "smscs": [{"name": "a", "system_id": "s", **SMSCS[key[0]]}],
                    "text": TEXT_CONFIGS[key[1]],
                    "billing": {"tariff": {"international": {"+1": 60000, "+44": 45000}}},
                },
                env={},
                base_dir=tmp,
            )
        cfg = _CONFIGS[key]
        account: Any = types.SimpleNamespace(
            id="acc_57", raw_text=True, marketing=False, default_country="CN"
        )
        text = _text(rng)
        to = rng.sample(NUMBERS, rng.randint(1, 3))
        body: dict[str, Any] = {"to": to if len(to) > 1 else to[0]}
        template = rng.choice([None, None, None, 0, 1, 2])
        sign = rng.choice([None, None, "Acme", "阿里云"])
        tpl = None
        if template is None:
            body["text"] = text
        else:
            body["template"] = "T1"
            body["params"] = {"code": text[:20] or "1", "name": text[20:40] or "n"}
            sign = sign or "Acme"
            tpl = Template(
                "T1",
                "acc_57",
                "verification",
                "t",
                TEMPLATES[template],
                "",
                False,
                "approved",
                None,
                0,
            )
        if sign is not None:
            body["sign_name"] = sign
        smart = rng.choice([None, False, True])
        if smart is not None:
            body["smart_encoding"] = smart
        billing = rng.choice([None, "chars_70_67", "wire_segments"])
        tariff = None
        if billing is not None:
            tariff = dataclasses.replace(
                tariff_from_config(cfg.billing.tariff, 0), counting_rule=billing
            )
        start = rng.randrange(65536)
        refs = submit.RefCounter(start=functools.partial(int, start))
        submitter = Submitter(cfg, make_router(cfg), refs=refs)
        ids: Iterator[str] = (f"id_{i}" for i in itertools.count())
        try:
            req = parse_send_request(body, account, max_recipients=10, now_ms=1_780_000_000_000)
            emit(_out(req))
            out: Any = submitter.build(
                req,
                account,
                1_780_000_000_000,
                functools.partial(_next_id, ids),
                template=tpl,
                tariff=tariff,
            )
        except ApiError as exc:
            out = (exc.code, exc.message, exc.details, exc.status, exc.reason)
        except Exception as exc:  # a fault is an answer too: compared, not a crash
            out = f"{type(exc).__name__}: {exc}"
        emit(_out(out))
        emit(_out([refs.next(n, 16) for n in NUMBERS]))


HEADER_VALUES = [
    "",
    " ",
    "a",
    " padded ",
    "x,y",
    "{0}",
    "{{}}",
    "%s%d",
    "'q'",
    '"dq"',
    "中文",
    "é",
    "\t tab",
    "application/json; charset=utf-8",
    "a" * 300,
    "{values[0]}",
    "\\n",
    "😀",
]
PATHS = ["/v1/messages", "/v1/messages/", "", "/", "/a b/%7e~/%2F", "/中/{x}", "//x//", "/%zz/%"]
QUERIES = ["", "a=1", "b=2&a=1", "a=1&&b=%20+c", "=&x", "k=中&k=a", "z" * 50 + "=1&%41=2"]


def _signing(rng: random.Random, emit: Callable[[str], None]) -> None:
    from multidict import CIMultiDict

    from bridge.api import signing

    parse_seconds = getattr(signing, "parse_date_seconds", None)
    for _ in range(25):
        count = rng.choice([0, 1, 2, 3, 5, 6, 7, 15, 16, 17, 20])
        names = [
            rng.choice(["X-H", "x-h", "Host", "x-bridge-date"]) + str(rng.randrange(25))
            for _ in range(count)
        ]
        headers: CIMultiDict[str] = CIMultiDict()
        for name in names:
            if rng.random() < 0.98:
                headers.add(
                    rng.choice([name, name.upper(), name.lower()]), rng.choice(HEADER_VALUES)
                )
        signed = list(names) + (["absent-one"] if rng.random() < 0.05 else [])
        method = rng.choice(["POST", "get", "Put", "DELETE"])
        path = rng.choice(PATHS) + rng.choice(["", "x", "/%41"])
        query = rng.choice(QUERIES)
        sha = rng.choice(["e3b0" * 16, "", "x"])
        for _ in range(2):
            emit(_call(signing.canonical_request, method, path, query, headers, signed, sha))
            lowered = signing.lower_headers(headers)
            canon = tuple(sorted(set(n.lower() for n in names)))
            emit(
                _call(
                    signing._canonical,
                    method,
                    path,
                    query,
                    lowered,
                    canon,
                    sha,
                    names_canonical=True,
                )
            )
        date = rng.choice(
            [
                "2026-11-29T08:00:00Z",
                " 2026-11-29T08:00:00Z ",
                "2026-11-29T23:59:59Z",
                "2026-11-30T00:00:00Z",
                "2024-02-29T12:00:00Z",
                "2023-02-29T12:00:00Z",
                "2026-11-29T08:00:60Z",
                "1970-01-01T00:00:00Z",
                "0001-01-01T00:00:00Z",
                "9999-12-31T23:59:59Z",
                "2026-11-29 08:00:00Z",
                "",
                "2026-13-01T00:00:00Z",
            ]
        )
        for _ in range(2):
            emit(_call(signing.parse_date, date))
            if parse_seconds is not None:
                got = _call(parse_seconds, date)
            else:
                got = _call(_date_seconds, signing.parse_date, date)
            emit(got)
        now = 1_796_000_000.0 + rng.choice([0, 0.5, -300, 300, 299.9, -299.9, 1e6])
        try:
            when = signing.parse_date(date)
            for late in (None, 60, 600):
                emit(_out(signing.skew_clearly_within(when, now, 300, late)))
                within = getattr(signing, "skew_seconds_within", None)
                if within is not None:
                    emit(_out(within(when.timestamp(), now, 300, late)))
                else:
                    emit(_out(signing.skew_clearly_within(when, now, 300, late)))
        except signing.SignatureError:
            pass
        nonce = rng.choice(["a" * 16, " " + "b" * 20 + " ", "c" * 15, "d" * 65, "\te-f_g" * 4, ""])
        emit(_call(signing.check_nonce, nonce))
        emit(_call(signing.check_nonce, None))
        key = "ak_" + "0123456789abcdef"[: rng.choice([16, 8])]
        heads = ";".join(sorted(set(n.lower() for n in names))) or "host"
        sig = rng.choice(["0" * 64, "A" * 64, "0" * 63])
        auth = rng.choice(
            [
                f"BRIDGE-HMAC-SHA256 Credential={key}, SignedHeaders={heads}, Signature={sig}",
                f"BRIDGE-HMAC-SHA256 Credential={key},SignedHeaders={heads},Signature={sig}",
                f"BRIDGE-HMAC-SHA256 SignedHeaders={heads}, Credential={key}, Signature={sig}",
                f"bridge-hmac-sha256 Credential={key}, SignedHeaders={heads}, Signature={sig}",
                "",
            ]
        )
        emit(_call(signing.parse_authorization, auth))


def child(tree: str, seeds: int, first: int, out: str) -> None:
    sys.path.insert(0, tree)
    import bridge

    assert Path(bridge.__file__).resolve().is_relative_to(Path(tree).resolve()), bridge.__file__
    with (
        open(out, "w", encoding="utf-8", errors="surrogatepass") as f,
        tempfile.TemporaryDirectory() as tmp,
    ):

        def emit(line: str) -> None:
            f.write(line + "\n")

        for seed in range(first, first + seeds):
            emit(f"seed {seed}")
            rng = random.Random(seed)
            _texts(rng, emit)
            _sends(rng, emit, Path(tmp))
            _signing(rng, emit)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", help="the tree compared with (a checkout)")
    ap.add_argument("--tree", default=str(HERE), help="the tree under test (this one)")
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.seeds, args.first, args.out)
        return
    if not args.base:
        ap.error("--base is required")
    CHILDREN.on_signals()
    seeds = ["--seeds", str(args.seeds), "--first", str(args.first)]
    base, new = CHILDREN.two_trees(__file__, args.base, args.tree, seeds, cwd_tree=False)
    seed = ""
    for i, (a, b) in enumerate(zip(base, new, strict=False)):
        if a.startswith("seed "):
            seed = a
        if a != b:
            print(f"differ at line {i} ({seed}):\n  base: {a[:600]}\n  tree: {b[:600]}")
            sys.exit(1)
    if len(base) != len(new):
        print(f"differ in length: {len(base)} against {len(new)} lines")
        sys.exit(1)
    print(f"same: {args.seeds} seeds, {len(base)} answers")


if __name__ == "__main__":
    main()
