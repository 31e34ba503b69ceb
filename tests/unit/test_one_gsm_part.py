"""Session 54: a send's one plain GSM-7 part is made by `split.one_gsm_part` and stored by
`Submitter.build` without `encode_message` (its Part and EncodedMessage, ~16,000 instructions
of an accept). These hold the short path to the long one: for any text and any options, where
`one_gsm_part` answers, `encode_message` makes exactly that one part (whatever the reference
and smart encoding), and where `encode_message` makes such a part under options that allow it,
`one_gsm_part` answers; and a send built through it stores the same rows as one built through
`encode_message` alone.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import os
import types
from pathlib import Path
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
from bridge.store.models import Template
from bridge.text.gsm import BASE_TABLE, EXTENSION_TABLE
from bridge.text.split import EncodeOptions, Encoding, SplitMode, encode_message, one_gsm_part

PROPS = settings(max_examples=300, deadline=None)
NOW = 1_780_000_000_000

GSM_BASE = [c for c in BASE_TABLE if c != "\x1b"]
# GSM letters, the extension's (two septets each), Latin-1 ones that are not GSM (é is, è is;
# ô is not), a CJK character, an emoji (a surrogate pair in UTF-16), smart encoding's "…" and
# curly quotes, CR (packed parts double a final one).
ALPHABET = st.sampled_from(
    [*GSM_BASE[:40], *EXTENSION_TABLE, "ô", "中", "😀", "…", "“", "\r", "é", "€", "a", " "]
)
TEXTS = st.one_of(
    st.text(ALPHABET, min_size=0, max_size=200),
    # Around the one-part limit: 150 to 170 septets of GSM, some of them escape pairs.
    st.builds(
        lambda n, tail: "x" * n + tail, st.integers(140, 170), st.text(ALPHABET, max_size=12)
    ),
)
OPTIONS = [
    EncodeOptions(
        split=split, gsm_data_coding=dc, allow_latin1=latin1, packed_gsm=packed, smart=smart
    )
    for split, dc, latin1, packed, smart in itertools.product(
        list(SplitMode), (0, 1), (False, True), (False, True), (False, True)
    )
]


def _plain_gsm_part(text: str, opts: EncodeOptions) -> bytes | None:
    """The one part `encode_message` makes of `text`, when it is one plain GSM-7 part with
    nothing mapped (else None); with a stand-in reference and with a drawing function alike."""
    try:
        enc = encode_message(text, opts, 0)
    except Exception:
        return None
    if enc.encoding is not Encoding.GSM7 or enc.data_coding != 0 or len(enc.parts) != 1:
        return None
    assert encode_message(text, opts, lambda: 7) == enc  # one part: no reference drawn
    (part,) = enc.parts
    if part.esm_class or part.tlvs or enc.air_segments or enc.text != text:
        return None
    assert (part.seq, part.total, part.chars, enc.segments) == (1, 1, len(text), 1)
    return part.short_message


@PROPS
@given(text=TEXTS, which=st.integers(0, len(OPTIONS) - 1))
@example(text="x" * 160, which=0)
@example(text="x" * 159 + "€", which=0)  # 161 septets: two parts
@example(text="x" * 158 + "€", which=0)  # 160 septets: one
@example(text="", which=0)
def test_one_gsm_part_is_the_part_encode_message_makes(text: str, which: int) -> None:
    opts = OPTIONS[which]
    fast = one_gsm_part(text, opts)
    slow = _plain_gsm_part(text, opts)
    if fast is not None:
        assert fast == slow
    elif not (opts.packed_gsm or opts.gsm_data_coding or opts.split is SplitMode.PAYLOAD):
        # The options it serves: every plain GSM part taken (packed, IA5 and message_payload
        # parts are not plain septets; encode_message makes those).
        assert slow is None


def test_packed_ia5_and_payload_parts_are_left_to_encode_message() -> None:
    for opts in (
        EncodeOptions(packed_gsm=True),
        EncodeOptions(gsm_data_coding=1),
        EncodeOptions(split=SplitMode.PAYLOAD),
    ):
        assert one_gsm_part("Your code is 1234.", opts) is None
    assert one_gsm_part("Your code is 1234.", EncodeOptions()) == b"Your code is 1234."


def _config(tmp_path: Path, smsc: dict[str, object]) -> object:
    return parse_config(
        {
            "server": {"port": 8080},
            "store": {"path": str(tmp_path / "b.db")},
            "security": {"master_key": base64.b64encode(os.urandom(32)).decode()},
            "smscs": [{"name": "a", "system_id": "s", **smsc}],
        },
        env={},
        base_dir=tmp_path,
    )


BODIES = [
    {"to": "+8613800000054", "text": "Your code is 5454."},
    {"to": "+8613800000054", "text": "x" * 160, "sign_name": "Acme"},
    {"to": ["+8613800000054", "+8613800000055", "+8613900000056"], "text": "{[€]} ~ |^\\"},
    {"to": "+8613800000054", "text": "x" * 161},
    {"to": "+8613800000054", "text": "x" * 159 + "€"},
    {"to": "+8613800000054", "text": "Vos données… “ok”", "smart_encoding": True},
    {"to": "+8613800000054", "text": "【示例】您的验证码是123456。" * 6},
    {"to": "+8613800000054", "text": "line\r"},
]


@pytest.mark.parametrize(
    "smsc",
    [{}, {"packed_gsm": True}, {"split": "sar"}, {"split": "payload"}, {"gsm_data_coding": 1}],
)
@pytest.mark.parametrize("billing", [False, True])
def test_a_send_stores_what_encode_message_alone_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smsc: dict[str, object], billing: bool
) -> None:
    cfg = _config(tmp_path, smsc)
    tariff = tariff_from_config(cfg.billing.tariff, 0) if billing else None  # type: ignore[attr-defined]
    account = types.SimpleNamespace(
        id="acc_54", raw_text=True, marketing=False, default_country="CN"
    )

    def build(body: dict[str, object]) -> object:
        req = parse_send_request(body, account, max_recipients=10, now_ms=NOW)  # type: ignore[arg-type]
        ids = (f"id_{i}" for i in itertools.count())
        submitter = Submitter(cfg, make_router(cfg), refs=submit.RefCounter(start=lambda: 54))  # type: ignore[arg-type]
        try:
            return submitter.build(req, account, NOW, lambda p, n: next(ids), tariff=tariff)  # type: ignore[arg-type]
        except ApiError as exc:  # refused alike (a text too long for message_payload's units)
            return (exc.code, exc.message)

    for body in BODIES:
        fast = build(body)
        with monkeypatch.context() as m:
            # Since session 62 build asks gsm_septets itself (one_gsm_part's options per route).
            m.setattr(submit, "gsm_septets", lambda text: None)
            slow = build(body)
        assert fast == slow, body


# The whole build through the short path against the long one (`one_gsm_part` answering
# nothing), over what reaches it: every wire option set an SMSC can have, sign formats that keep
# the text GSM and one that does not, templates, smart encoding asked and configured, both
# counting rules and the mapped-length limit, a tariff's domestic and international prices (and
# a refusal), several recipients; and the reference counter as the send leaves it.
GSM_TEXTS = st.one_of(
    st.text(st.sampled_from([*GSM_BASE, *EXTENSION_TABLE, "\r", "\n"]), min_size=1, max_size=170),
    st.builds(lambda n, tail: "@" * n + tail, st.integers(150, 162), st.text(ALPHABET, max_size=6)),
    st.text(ALPHABET, min_size=0, max_size=120),
)
SMSCS = [
    {"split": s, "gsm_data_coding": dc, "allow_latin1": latin1, "packed_gsm": packed}
    for s, dc, latin1, packed in itertools.product(
        ("udh8", "udh16", "sar", "payload"), (0, 1), (False, True), (False, True)
    )
]
# The option sets the short path serves (unpacked, data_coding 0, not message_payload).
PLAIN = [
    i
    for i, s in enumerate(SMSCS)
    if s["split"] != "payload" and not s["packed_gsm"] and not s["gsm_data_coding"]
]
TEXT_CONFIGS = [
    {"sign_format": f, "counting_rule": r, "smart_encoding": smart, "max_chars": n}
    for f, r, smart, n in itertools.product(
        ("【{sign}】", "[{sign}] ", "{sign}: "),
        ("chars_70_67", "wire_segments"),
        (False, True),
        (500, 160),
    )
]
NUMBERS = ["+8613800000054", "+8613800000055", "+12025550123", "+442071234567"]
TEMPLATES = ["Your code is ${code}.", "您的验证码是${code}", "Dear ${name}: {x} ~ € ${code}"]
_CONFIGS: dict[tuple[int, int], object] = {}


@settings(max_examples=300, deadline=None)
@given(
    text=GSM_TEXTS,
    smsc=st.one_of(st.sampled_from(PLAIN), st.integers(0, len(SMSCS) - 1)),
    conf=st.integers(0, len(TEXT_CONFIGS) - 1),
    sign=st.sampled_from([None, None, "Acme", "阿里云"]),
    template=st.sampled_from([None, None, 0, 1, 2]),
    smart=st.sampled_from([None, False, True]),
    to=st.lists(
        st.sampled_from(NUMBERS[:3] * 4 + NUMBERS[3:]), min_size=1, max_size=3, unique=True
    ),
    billing=st.sampled_from([None, "chars_70_67", "wire_segments"]),
    start=st.integers(0, 65535),
)
def test_a_send_builds_alike_through_either_path(
    tmp_path_factory: pytest.TempPathFactory,
    text: str,
    smsc: int,
    conf: int,
    sign: str | None,
    template: int | None,
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
        id="acc_54", raw_text=True, marketing=False, default_country="CN"
    )
    body: dict[str, object] = {"to": to if len(to) > 1 else to[0]}
    tpl = None
    if template is None:
        body["text"] = text
    else:
        body["template"] = "T1"
        body["params"] = {"code": text[:20] or "1"}
        if template == 2:
            body["params"]["name"] = text[20:40] or "n"  # type: ignore[index]
        sign = sign or "Acme"
        tpl = Template(
            "T1", "acc_54", "verification", "t", TEMPLATES[template], "", False, "approved", None, 0
        )
    if sign is not None:
        body["sign_name"] = sign
    if smart is not None:
        body["smart_encoding"] = smart
    tariff = None
    if billing is not None:
        tariff = dataclasses.replace(
            tariff_from_config(cfg.billing.tariff, 0), counting_rule=billing
        )  # type: ignore[attr-defined]

    def build() -> object:
        refs = submit.RefCounter(start=lambda: start)
        submitter = Submitter(cfg, make_router(cfg), refs=refs)  # type: ignore[arg-type]
        ids = (f"id_{i}" for i in itertools.count())
        try:
            req = parse_send_request(body, account, max_recipients=10, now_ms=NOW)  # type: ignore[arg-type]
            out = submitter.build(
                req, account, NOW, lambda p, n: next(ids), template=tpl, tariff=tariff
            )  # type: ignore[arg-type]
        except ApiError as exc:
            out = (exc.code, exc.message, exc.details, exc.status, exc.reason)
        return out, [refs.next(n, 16) for n in NUMBERS]

    fast = build()
    with mock.patch.object(submit, "gsm_septets", lambda text: None):  # build's own (session 62)
        slow = build()
    assert fast == slow
