"""Session 60: a long UCS-2 text's parts behind UDHs are made by `split.udh_ucs2_parts` and
stored by `Submitter.build` without `encode_message` (its three `Part`s and `EncodedMessage`
for a 3-part Chinese text). These hold the short path to the long one: for any text and
options, where `udh_ucs2_parts` answers, `encode_message` with the send's drawing function
makes exactly those parts and draws the same one reference; where it answers None it draws
nothing, and where `encode_message` makes such parts under the options it serves, it answers;
and a send built through it stores the same rows and leaves the counter as one built through
`encode_message` alone.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import os
import types
from functools import partial
from unittest import mock

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridge.api import submit
from bridge.api.errors import ApiError
from bridge.api.submit import Submitter, parse_send_request
from bridge.app import make_router
from bridge.billing import tariff_from_config
from bridge.config import parse_config
from bridge.text.gsm import BASE_TABLE, EXTENSION_TABLE
from bridge.text.split import (
    ESM_UDHI,
    EncodeOptions,
    Encoding,
    RefCounter,
    SplitMode,
    TextError,
    encode_message,
    udh_ucs2_parts,
)

PROPS = settings(max_examples=400, deadline=None)
NOW = 1_780_000_000_000
DEST = "+8613800000060"

GSM_BASE = [c for c in BASE_TABLE if c != "\x1b"]
# GSM letters and the extension's, Latin-1 letters that are not GSM (ô), CJK, an emoji (a
# surrogate pair), smart encoding's "…" and curly quotes (mapped to GSM), a lone surrogate.
ALPHABET = st.sampled_from(
    [*GSM_BASE[:30], *EXTENSION_TABLE, "ô", "ß", "中", "文", "，", "😀", "…", "“", "\r", "é"]
)
CJK = st.sampled_from(["中", "文", "，", "。", "示", "例", "1", "a", " ", "€", "ô"])
TEXTS = st.one_of(
    st.text(ALPHABET, min_size=0, max_size=300),
    # Latin-1 but for what smart encoding maps ("…", "“"): Latin-1 once mapped, where allowed.
    st.builds(
        lambda body, tail: body + tail,
        st.text(st.sampled_from(["ô", "ß", "é", "a", " ", "“"]), min_size=60, max_size=300),
        st.sampled_from(["", "…", "中", "😀"]),
    ),
    # Around each part boundary (70 one part; 67 and 66 a part behind a UDH): a CJK text of
    # 60 to 410 characters, with an emoji, a lone surrogate or a mapped character sometimes.
    st.builds(
        lambda n, body, tail: (body * 410)[:n] + tail,
        st.sampled_from([*range(60, 75), *range(128, 140), *range(195, 206), 268, 400, 410]),
        st.text(CJK, min_size=1, max_size=5),
        st.sampled_from(["", "", "😀", "\ud800", "…", "ô", "a"]),
    ),
)
OPTIONS = [
    EncodeOptions(split=split, allow_latin1=latin1, smart=smart, max_parts=max_parts)
    for split, latin1, smart, max_parts in itertools.product(
        list(SplitMode), (False, True), (False, True), (255, 3)
    )
]


def _bits(opts: EncodeOptions) -> int:
    return 8 if opts.split is SplitMode.UDH8 else 16


@PROPS
@given(text=TEXTS, which=st.integers(0, len(OPTIONS) - 1), start=st.integers(0, 65535))
@example(text="中" * 71, which=0, start=255)
@example(text="中" * 134, which=0, start=0)  # 2 full parts of 67
@example(text="中" * 135, which=2, start=9)
@example(text="中" * 133 + "😀", which=0, start=0)  # a pair at the boundary
@example(text="中" * 70, which=0, start=0)  # one part
@example(text="ô“" * 40, which=6, start=0)  # Latin-1 once mapped: one Latin-1 part
@example(text="中" * 202, which=1, start=0)  # max_parts 3: 4 parts refused
def test_udh_ucs2_parts_are_the_parts_encode_message_makes(
    text: str, which: int, start: int
) -> None:
    opts = OPTIONS[which]
    fast_refs = RefCounter(start=lambda: start)
    slow_refs = RefCounter(start=lambda: start)
    fast = udh_ucs2_parts(text, opts, fast_refs, DEST)
    try:
        enc = encode_message(text, opts, partial(slow_refs.next, DEST, _bits(opts)))
    except TextError:
        enc = None
    if fast is None:
        assert len(fast_refs) == 0  # nothing drawn
        served = (
            enc is not None
            and opts.split in (SplitMode.UDH8, SplitMode.UDH16)
            and enc.encoding is Encoding.UCS2
            and len(enc.parts) > 1
            and enc.text == text
            and len(text.encode("utf-16-be", "surrogatepass")) == 2 * len(text)
        )
        assert not served  # every case it serves is taken
        return
    assert enc is not None
    assert enc.encoding is Encoding.UCS2 and enc.data_coding == 8 and enc.text == text
    assert fast == [p.short_message for p in enc.parts]
    assert len(fast) > 1 and enc.segments == len(fast)
    for seq, p in enumerate(enc.parts, 1):
        assert (p.seq, p.total, p.esm_class, p.tlvs) == (seq, len(fast), ESM_UDHI, ())
    # The same one reference drawn: the counters go on alike.
    assert [fast_refs.next(DEST, 16) for _ in range(3)] == [
        slow_refs.next(DEST, 16) for _ in range(3)
    ]


SMSCS = [
    {"split": s, "allow_latin1": latin1, "packed_gsm": packed}
    for s, latin1, packed in itertools.product(
        ("udh8", "udh16", "sar", "payload"), (False, True), (False, True)
    )
]
TEXT_CONFIGS = [
    {"sign_format": f, "counting_rule": r, "smart_encoding": smart, "max_chars": n}
    for f, r, smart, n in itertools.product(
        ("【{sign}】", "{sign}: "), ("chars_70_67", "wire_segments"), (False, True), (1000, 200)
    )
]
NUMBERS = ["+8613800000060", "+8613800000061", "+12025550123"]
_CONFIGS: dict[tuple[int, int], object] = {}


@settings(max_examples=300, deadline=None)
@given(
    text=TEXTS,
    smsc=st.integers(0, len(SMSCS) - 1),
    conf=st.integers(0, len(TEXT_CONFIGS) - 1),
    sign=st.sampled_from([None, "Acme", "阿里云"]),
    smart=st.sampled_from([None, False, True]),
    to=st.lists(st.sampled_from(NUMBERS), min_size=1, max_size=3),
    billing=st.sampled_from([None, "chars_70_67", "wire_segments"]),
    start=st.integers(0, 65535),
)
def test_a_send_builds_alike_through_either_path(
    tmp_path_factory: pytest.TempPathFactory,
    text: str,
    smsc: int,
    conf: int,
    sign: str | None,
    smart: bool | None,
    to: list[str],
    billing: str | None,
    start: int,
) -> None:
    if (smsc, conf) not in _CONFIGS:
        base = tmp_path_factory.getbasetemp()
        _CONFIGS[smsc, conf] = parse_config(
            {
                "server": {"port": 8080},
                "store": {"path": str(base / "b.db")},
                "security": {"master_key": base64.b64encode(os.urandom(32)).decode()},
                "smscs": [{"name": "a", "system_id": "s", **SMSCS[smsc]}],
                "text": TEXT_CONFIGS[conf],
                "billing": {"tariff": {"international": {"+1": 60000}}},
            },
            env={},
            base_dir=base,
        )
    cfg = _CONFIGS[smsc, conf]
    account = types.SimpleNamespace(
        id="acc_60", raw_text=True, marketing=False, default_country="CN"
    )
    # A number given twice is refused: the same number in two sends draws twice.
    body: dict[str, object] = {"to": list(dict.fromkeys(to)), "text": text}
    if sign is not None:
        body["sign_name"] = sign
    if smart is not None:
        body["smart_encoding"] = smart
    tariff = None
    if billing is not None:
        tariff = dataclasses.replace(
            tariff_from_config(cfg.billing.tariff, 0),  # type: ignore[attr-defined]
            counting_rule=billing,
        )

    def build() -> object:
        refs = submit.RefCounter(start=lambda: start)
        submitter = Submitter(cfg, make_router(cfg), refs=refs)  # type: ignore[arg-type]
        ids = (f"id_{i}" for i in itertools.count())
        outs: list[object] = []
        for _ in range(2):  # twice: the second send's references follow the first's
            try:
                req = parse_send_request(body, account, max_recipients=10, now_ms=NOW)  # type: ignore[arg-type]
                outs.append(
                    submitter.build(req, account, NOW, lambda p, n: next(ids), tariff=tariff)
                )  # type: ignore[arg-type]
            except ApiError as exc:
                outs.append((exc.code, exc.message, exc.details, exc.status, exc.reason))
        return outs, [refs.next(n, 16) for n in NUMBERS]

    fast = build()
    with mock.patch.object(submit, "udh_ucs2_parts", lambda *a: None):
        slow = build()
    assert fast == slow


def test_a_chinese_text_of_three_parts_takes_the_short_path() -> None:
    """The benchmark's text (bench.py's ucs3) is served, so the cut is where it is counted."""
    text = (
        "【示例】您的验证码是123456，五分钟内有效。请勿泄露给他人。如非本人操作，请忽略本短信。" * 3
    )
    refs = RefCounter(start=lambda: 0x1234)
    parts = udh_ucs2_parts(text, EncodeOptions(), refs, DEST)
    assert parts is not None and len(parts) == 3
    assert parts[0][:6] == bytes((5, 0, 3, 0x34, 3, 1))
    parts16 = udh_ucs2_parts(text, EncodeOptions(split=SplitMode.UDH16), refs, DEST)
    assert parts16 is not None and parts16[0][:7] == bytes((6, 8, 4, 0x12, 0x35, 3, 1))
