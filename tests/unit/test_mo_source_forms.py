"""The addresses an erasure looks for among the waiting parts of long replies
(phone.mo_source_forms) are the ones the inbound reading (inbound._e164) turns into the number,
and reply_destinations mirrors how a reply's address is matched to a message's sender."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from bridge.domain.phone import mo_source_forms, reply_destinations
from bridge.pipeline.inbound import _e164

E164 = st.from_regex(r"\+[1-9][0-9]{9,13}", fullmatch=True)


@given(E164, st.sampled_from(["+86", "+44", "+1", "+852"]))
def test_every_form_reads_back_as_the_number(number: str, prefix: str) -> None:
    assume(number[len(prefix) :].strip("0"))  # no subscriber number is all zeros
    forms = mo_source_forms(number, [prefix])
    # Each form with a TON an SMSC sends it with: international (1), unknown (0), national (2).
    for form in forms:
        read = {_e164(form, ton, prefix) for ton in (0, 1, 2)}
        assert number in read, (form, read)
    assert forms[:3] == (number, number[1:], "00" + number[1:])
    national = number.startswith(prefix)
    assert len(forms) == (5 if national else 3)


def test_national_forms_only_for_the_prefixes_the_smscs_use() -> None:
    assert mo_source_forms("+8613800138000") == (
        "+8613800138000",
        "8613800138000",
        "008613800138000",
    )
    assert mo_source_forms("+8613800138000", ["+86", "+44", "+86"])[3:] == (
        "013800138000",
        "13800138000",
    )


def test_reply_destinations() -> None:
    assert reply_destinations(["1069", "+44700", "BRAND"]) == (
        "1069",
        "+1069",
        "44700",
        "+44700",
        "BRAND",
    )
    assert reply_destinations(["1069", None]) is None  # the SMSC's default source: any
    assert reply_destinations([]) == ()
