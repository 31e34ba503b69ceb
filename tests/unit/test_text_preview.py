"""preview(): the JSON the API and CLI show for a text (encoding, segments, units, parts)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.text.preview import preview, with_sign
from bridge.text.split import EncodeOptions, SplitMode, TextError, encode_message
from bridge.text.units import CountingRule

KEYS = {
    "text",
    "encoding",
    "data_coding",
    "segments",
    "billable_units",
    "chars",
    "parts",
    "ucs2_chars",
}


def test_ascii_160_is_one_segment_three_units() -> None:
    p = preview("a" * 160)
    assert p == {
        "text": "a" * 160,
        "encoding": "gsm7",
        "data_coding": 0,
        "segments": 1,
        "billable_units": 3,
        "chars": 160,
        "parts": [{"chars": 160, "septets_or_octets": 160}],
        "ucs2_chars": [],
    }


def test_sign_is_prefixed_counted_and_forces_ucs2() -> None:
    p = preview("Your code is 1234", sign="Acme")
    assert p["text"] == "【Acme】Your code is 1234"
    assert p["encoding"] == "ucs2"
    assert p["data_coding"] == 8
    assert p["ucs2_chars"] == ["【", "】"]
    assert p["chars"] == 23
    assert p["segments"] == 1 and p["billable_units"] == 1
    assert p["parts"] == [{"chars": 23, "septets_or_octets": 46}]


def test_sign_at_the_70_71_boundary() -> None:
    assert preview("中" * 64, sign="Acme")["billable_units"] == 1  # 6 + 64 = 70
    p = preview("中" * 65, sign="Acme")  # 71
    assert p["billable_units"] == 2
    assert p["segments"] == 2
    assert p["parts"] == [
        {"chars": 67, "septets_or_octets": 134},
        {"chars": 4, "septets_or_octets": 8},
    ]


def test_latin_sign_format_keeps_gsm() -> None:
    p = preview("Code 1234", sign="Acme", sign_format="[{sign}] ")
    assert p["text"] == "[Acme] Code 1234"
    assert p["encoding"] == "gsm7"
    assert p["parts"] == [{"chars": 16, "septets_or_octets": 18}]  # [ and ] cost 2 septets
    assert with_sign("x", "{a}", "<{sign}>") == "<{a}>x"
    assert with_sign("x", None) == with_sign("x", "") == "x"


def test_multipart_gsm_with_extension_and_wire_rule() -> None:
    text = "a" * 152 + "€" + "b" * 20
    p = preview(text, rule=CountingRule.WIRE_SEGMENTS)
    assert p["segments"] == 2 and p["billable_units"] == 2
    assert p["parts"] == [
        {"chars": 152, "septets_or_octets": 152},
        {"chars": 21, "septets_or_octets": 22},
    ]
    assert preview(text)["billable_units"] == 3  # 173 chars under chars_70_67


def test_split_modes_and_payload() -> None:
    text = "a" * 305
    assert preview(text, EncodeOptions(split=SplitMode.UDH16))["segments"] == 3
    assert preview(text, EncodeOptions(split=SplitMode.SAR))["segments"] == 2
    p = preview(text, EncodeOptions(split=SplitMode.PAYLOAD))
    assert p["segments"] == 2  # segments the SMSC sends on the air
    assert p["parts"] == [{"chars": 305, "septets_or_octets": 305}]


def test_smart_and_latin1_options() -> None:
    p = preview("It’s “ok”…", EncodeOptions(smart=True))
    assert p["text"] == 'It\'s "ok"...'
    assert p["encoding"] == "gsm7" and p["chars"] == 12
    p = preview("Ação", EncodeOptions(allow_latin1=True))
    assert (p["encoding"], p["data_coding"]) == ("latin1", 3)


def test_emoji_counted_two() -> None:
    p = preview("Hi 😀")
    assert p["encoding"] == "ucs2"
    assert p["chars"] == 5
    assert p["ucs2_chars"] == ["😀"]
    assert p["parts"] == [{"chars": 4, "septets_or_octets": 10}]


def test_errors_propagate() -> None:
    with pytest.raises(TextError) as ei:
        preview("")
    assert ei.value.code == "EMPTY_MESSAGE"
    with pytest.raises(TextError) as ei:
        preview("中" * 20000)
    assert ei.value.code == "MESSAGE_TOO_LONG"


@settings(max_examples=150, deadline=None)
@given(
    st.text(alphabet=st.sampled_from("ab€{中😀ã “"), min_size=1, max_size=500),
    st.one_of(st.none(), st.sampled_from(["Acme", "示例"])),
)
def test_preview_is_json_and_consistent(text: str, sign: str | None) -> None:
    p = preview(text, sign=sign)
    assert set(p) == KEYS
    assert json.loads(json.dumps(p)) == p
    msg = encode_message(p["text"])
    assert p["segments"] == msg.segments == len(p["parts"])
    assert sum(part["chars"] for part in p["parts"]) == len(p["text"])
    assert p["encoding"] == msg.encoding.value


def test_ucs2_chars_on_an_ia5_smsc() -> None:
    # gsm_data_coding 1 sends GSM-7 as ASCII octets: é and £ are what made this text UCS-2.
    p = preview("Your café order: £5", EncodeOptions(gsm_data_coding=1))
    assert (p["encoding"], p["data_coding"], p["ucs2_chars"]) == ("ucs2", 8, ["é", "£"])
    p = preview("Your café order: £5", EncodeOptions(gsm_data_coding=1, allow_latin1=True))
    assert (p["encoding"], p["ucs2_chars"]) == ("latin1", [])
