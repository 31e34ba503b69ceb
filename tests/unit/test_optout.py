"""bridge/domain/optout.py: opt-out replies (MO) and opt-out wording in marketing templates."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.domain.optout import (
    DEFAULT_KEYWORDS,
    DEFAULT_OPTOUT_PHRASES,
    has_optout_wording,
    is_optout,
)


def test_r_is_a_default_keyword_because_templates_may_say_reply_r() -> None:
    # 拒收请回复R is accepted opt-out wording, so an "R" reply must opt out.
    assert has_optout_wording("拒收请回复R")
    assert is_optout("R") and is_optout("回复R")
    assert not is_optout("Re: hello")


def test_default_keywords() -> None:
    assert DEFAULT_KEYWORDS == ("TD", "T", "R", "STOP", "UNSUBSCRIBE", "退订")


@pytest.mark.parametrize(
    "text",
    [
        "T",
        "t",
        "TD",
        "td",
        "Td",
        "td.",
        "TD。",
        "TD!",
        "ｔｄ！",
        "ＴＤ",
        "Ｔ",
        "退订",
        "退订。",
        "STOP",
        "stop",
        "Stop!!",
        " STOP ",
        "\tstop\n",
        '"STOP"',
        "“TD”",
        "UNSUBSCRIBE",
        "Unsubscribe.",
        "T D",  # whitespace inside ignored
        "退 订",
        "S T O P",
        "td\u200b",  # zero-width
        "TD 👍",  # symbols at the ends
        # The instruction echoed back.
        "回复TD",
        "回复 TD",
        "回T",
        "回TD退订",
        "回T退订",
        "TD退订",
        "回复退订",
        "Reply STOP",
        "reply t",
    ],
)
def test_optout_replies(text: str) -> None:
    assert is_optout(text) is True


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "...",
        "Thanks",
        "Tt",
        "TDD",
        "STOPS",
        "T1",
        "stop it",
        "please stop sending",
        "我不想退订",
        "退订了吗",
        "回复",
        "reply",
        "OK",
        "TD TD",
        "回复TD谢谢",
    ],
)
def test_not_optout(text: str) -> None:
    assert is_optout(text) is False


def test_custom_keywords() -> None:
    assert is_optout("cancel", ["CANCEL", "END"]) is True
    assert is_optout("ＥＮＤ.", ["CANCEL", "END"]) is True
    assert is_optout("T", ["CANCEL"]) is False
    assert is_optout("回复R", ["R"]) is True
    # An empty keyword is ignored, never "every blank reply".
    assert is_optout("", [""]) is False
    assert is_optout("!", ["", "STOP"]) is False
    assert is_optout("stop", ["", "STOP"]) is True


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(DEFAULT_KEYWORDS),
    st.text(alphabet=" \t.!?。！", max_size=3),
    st.text(alphabet=" \t.!?。！", max_size=3),
    st.booleans(),
)
def test_keyword_with_noise_around_is_optout(kw: str, before: str, after: str, up: bool) -> None:
    assert is_optout(before + (kw.upper() if up else kw.lower()) + after)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(DEFAULT_KEYWORDS), st.text(alphabet="abcxyz0123", min_size=1, max_size=4))
def test_keyword_glued_to_other_letters_is_not_optout(kw: str, extra: str) -> None:
    assert not is_optout(kw + extra)
    assert not is_optout(extra + kw)


# --- wording in templates --------------------------------------------------------------------


@pytest.mark.parametrize("phrase", DEFAULT_OPTOUT_PHRASES)
def test_every_default_phrase_is_recognised_in_context(phrase: str) -> None:
    assert has_optout_wording(f"【Acme】新品上市，全场五折。{phrase}")
    assert has_optout_wording(f"Big sale today! {phrase}.")


@pytest.mark.parametrize(
    "content",
    [
        "全场五折，回T退订",
        "全场五折 回 T 退订",
        "全场五折，回Ｔ退订",  # fullwidth
        "全场五折，退订回T",
        "全场五折，拒收请回复R",
        "Sale! Reply STOP to unsubscribe",
        "Sale! reply 'stop' to opt out",
        "Sale! REPLY STOP",
        "Sale! Text STOP to opt out",
        "Sale! Reply TD to unsubscribe",
        "Sale! Reply TD to opt out",  # TD is a default keyword: any wording around it
        "Sale! Text TD to stop these messages",
        "Sale! Reply T to opt out",
    ],
)
def test_wording_present(content: str) -> None:
    assert has_optout_wording(content) is True


@pytest.mark.parametrize(
    "content",
    [
        "",
        "全场五折",
        "全场五折，退订",  # says nothing about how
        "全场五折，回复查询",
        "Reply today for a discount",
        "Reply T",  # too short a phrase to be a default (would match "Reply today")
        "Reply to TDK support for details",
        "Stop by our store",
    ],
)
def test_wording_absent(content: str) -> None:
    assert has_optout_wording(content) is False


def test_custom_phrases_and_empty_phrase() -> None:
    assert has_optout_wording("Sale! Send END to quit", ["send END"]) is True
    assert has_optout_wording("Sale! 回T退订", ["send END"]) is False
    with pytest.raises(ValueError, match="no letters or digits"):
        has_optout_wording("anything", ["回T退订", " ! "])
