"""Session 53's short ways for one number: phone.normalize returns an E.164 number as it is, and
parse_send_request checks a single `to` without the list's loop. Both must answer what the long
way answers: the same number, or the same refusal."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.api.errors import ApiError
from bridge.api.submit import parse_send_request
from bridge.domain.phone import PhoneError, normalize
from bridge.store.models import Account

RAWS = ["+8613800000000", "+86 138 0000 0000", "008613800000000", "13800000000", "+0123456789",
        "+12345", "+1234567890123456", "+86138000000OO", "", "   ", "+８613800000000",
        "+86١٣٨00000000", " +8613800000000", "+8613800000000\n", "(+86)13800000000"]  # fmt: skip


def _long_way(raw: str, country: str | None) -> str | tuple[str, str]:
    """normalize with a blank added: never the short way, and the blank changes nothing."""
    try:
        return normalize(raw + " ", country)
    except PhoneError as exc:
        return ("refused", exc.message.replace(repr(raw + " "), repr(raw)))


def _short_way(raw: str, country: str | None) -> str | tuple[str, str]:
    try:
        return normalize(raw, country)
    except PhoneError as exc:
        return ("refused", exc.message)


@pytest.mark.parametrize("raw", RAWS)
@pytest.mark.parametrize("country", [None, "CN"])
def test_normalize_short_way_is_the_long_way(raw: str, country: str | None) -> None:
    assert _short_way(raw, country) == _long_way(raw, country)


@given(st.text(alphabet="+0123456789 -", max_size=20))
def test_normalize_short_way_is_the_long_way_generated(raw: str) -> None:
    assert _short_way(raw, "CN") == _long_way(raw, "CN")


def _parsed(to: object) -> object:
    account = Account(id="acc_1", name="a", default_country="CN")
    try:
        return parse_send_request({"to": to, "text": "hi"}, account, max_recipients=10, now_ms=1)
    except ApiError as exc:
        return (exc.status, exc.code, exc.message, exc.details)


@pytest.mark.parametrize("raw", [*RAWS, 5, None, ["+8613800000000"]])
def test_one_number_is_checked_as_a_list_of_one(raw: object) -> None:
    one = _parsed(raw)
    listed = _parsed([raw])
    if isinstance(listed, tuple):  # refused: the same, named "to" instead of "to[0]"
        assert isinstance(one, tuple) or raw is None or not isinstance(raw, str)
        if isinstance(raw, str):
            status, code, message, details = listed
            assert one == (status, code, message.replace("to[0]:", "to:", 1), details)
    else:
        assert one == listed
