"""bridge/domain/signs.py: sign name validation, canonical form, impersonation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.domain.signs import (
    SIGN_NAME_INVALID,
    SIGN_NAME_TAKEN,
    SignError,
    canonical,
    ensure_not_taken,
    impersonates,
    validate_sign_name,
)


@pytest.mark.parametrize(
    ("name", "normalised"),
    [
        ("阿里云", "阿里云"),
        ("Acme", "Acme"),
        ("ab", "ab"),
        ("中国", "中国"),
        ("ACME Corp", "ACME Corp"),
        ("Acme Corp Co", "Acme Corp Co"),
        ("腾讯云2", "腾讯云2"),
        ("123", "123"),
        ("ＡＣＭＥ", "ACME"),  # fullwidth -> ASCII by NFKC
        ("ＡＣＭＥ１", "ACME1"),
        ("Cafe\u0301", "Café"),  # decomposed accent composed by NFKC
        ("Ünïcødé", "Ünïcødé"),
        ("Ωμέγα", "Ωμέγα"),
        ("Яндекс", "Яндекс"),
        ("abcdefghijkl", "abcdefghijkl"),  # 12
        ("一二三四五六七八九十百千", "一二三四五六七八九十百千"),
        ("नमस्ते", "नमस्ते"),  # combining vowel signs after letters
    ],
)
def test_valid_names(name: str, normalised: str) -> None:
    assert validate_sign_name(name) == normalised


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "must not be empty"),
        ("a", "2 to 12 characters, not 1"),
        ("中", "2 to 12 characters, not 1"),
        ("abcdefghijklm", "2 to 12 characters, not 13"),
        ("【Acme】", "brackets"),
        ("[Acme]", "brackets"),
        ("Acme】", "brackets"),
        ("Ac(me)", "brackets"),
        ("Acme（中国）", "brackets"),  # fullwidth parentheses become ASCII ones
        (" Acme", "start or end with a space"),
        ("Acme ", "start or end with a space"),
        ("\u3000Acme", "start or end with a space"),  # ideographic space -> space by NFKC
        ("Ac  me", "two spaces"),
        ("Ac\tme", "control or invisible"),
        ("Ac\nme", "control or invisible"),
        ("Ac\x00me", "control or invisible"),
        ("Ac\u200bme", "control or invisible"),
        ("Ac\u202eme", "control or invisible"),
        ("Acme😀", "outside the BMP"),
        ("𠀀汉字", "outside the BMP"),
        ("Acme☎", "letters, digits and spaces"),
        ("Ac-me", "letters, digits and spaces"),
        ("Ac.me", "letters, digits and spaces"),
        ("Ac&Co", "letters, digits and spaces"),
        ("Ac_me", "letters, digits and spaces"),
        ("中国·移动", "letters, digits and spaces"),
        ("\u0301abc", "must follow a letter"),
        ("ab \u0301c", "must follow a letter"),
        ("Acme\ue000", "control or invisible"),  # private use
    ],
)
def test_invalid_names(name: str, why: str) -> None:
    with pytest.raises(SignError) as err:
        validate_sign_name(name)
    e = err.value
    assert e.code == SIGN_NAME_INVALID
    assert e.field == "name"
    assert e.message.startswith("name: ")
    assert why in e.message


def test_not_a_string() -> None:
    with pytest.raises(SignError):
        validate_sign_name(None)  # type: ignore[arg-type]


_valid_chars = st.sampled_from([*"abcXYZ019", "中", "国", "云", "Ａ", "ｂ"])


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=_valid_chars, min_size=2, max_size=12))
def test_validation_is_idempotent(name: str) -> None:
    once = validate_sign_name(name)
    assert validate_sign_name(once) == once
    assert canonical(once) == canonical(name)


@pytest.mark.parametrize(
    "variant",
    ["acme", "ACME", "ＡＣＭＥ", "A C M E", "Ac\u200bme", "Асме", "A\u0301CME", "Ácmé"],
)
def test_canonical_variants(variant: str) -> None:
    assert canonical(variant) == "acme"


def test_impersonation_by_equal_canonical_form() -> None:
    assert impersonates("ＡＣＭＥ", ["Other", "Acme"]) == "Acme"
    assert impersonates("A c m e", ["acme"]) == "acme"
    assert impersonates("Асме", ["Acme"]) == "Acme"  # Cyrillic А and с
    assert impersonates("腾讯", ["腾讯"]) == "腾讯"  # short names: equality still counts


def test_impersonation_by_containment_needs_four_characters_each() -> None:
    assert impersonates("阿里巴巴集团", ["阿里巴巴"]) == "阿里巴巴"
    assert impersonates("阿里巴巴", ["阿里巴巴集团"]) == "阿里巴巴集团"
    assert impersonates("Acme Shop", ["ACME"]) == "ACME"
    assert impersonates("腾讯云", ["腾讯"]) is None  # 2 characters: too short to judge
    assert impersonates("Acm Shop", ["Acm"]) is None  # 3
    assert impersonates("中国移动", ["中国移动通信"]) == "中国移动通信"
    assert impersonates("小米有品", ["米有品牌"]) is None  # overlap is not containment


def test_impersonation_prefers_equality_and_otherwise_first_in_order() -> None:
    assert impersonates("Acme Shop", ["Acme", "ACMESHOP"]) == "ACMESHOP"
    assert impersonates("Acme Shop Plus", ["Shop Plus", "Acme Shop"]) == "Shop Plus"


def test_no_impersonation() -> None:
    assert impersonates("Acme", []) is None
    assert impersonates("Acme", ["Globex", "Initech", ""]) is None
    assert impersonates("", ["Acme"]) is None


def test_ensure_not_taken() -> None:
    ensure_not_taken("Acme", ["Globex", "Acme Shop"])  # containment is only a review flag
    with pytest.raises(SignError) as err:
        ensure_not_taken("ＡＣＭＥ", ["Globex", "acme"])
    assert err.value.code == SIGN_NAME_TAKEN
    assert err.value.field == "name"
    assert "already registered" in err.value.message
