"""bridge/domain/templates.py: placeholders, automatic review and single-pass rendering."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.domain.content_filter import ContentFilter
from bridge.domain.templates import (
    TEMPLATE_CONTENT_FILTERED,
    TEMPLATE_EMPTY,
    TEMPLATE_MALFORMED,
    TEMPLATE_MISSING_PARAMETERS,
    TEMPLATE_NO_OPTOUT_WORDING,
    TEMPLATE_PARAMETER_INVALID,
    TEMPLATE_TOO_LONG,
    TEMPLATE_UNKNOWN_PARAMETERS,
    Review,
    TemplateError,
    TemplateKind,
    placeholders,
    render,
    review,
)
from bridge.text.units import tariff_chars

# --- placeholders ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "names"),
    [
        ("", ()),
        ("no placeholders", ()),
        ("Your code is ${code}", ("code",)),
        ("${a}${b}${a}", ("a", "b")),
        ("${b} then ${a} then ${b}", ("b", "a")),
        ("您的验证码${code}，${minutes}分钟内有效", ("code", "minutes")),
        ("${_x1}", ("_x1",)),
        ("${" + "a" * 32 + "}", ("a" * 32,)),
        ("cost $5 {approx}", ()),  # "$" and "{" alone are literal
        ("$${a}", ("a",)),
        ("${a}}", ("a",)),  # the extra "}" is literal
        ("{${a}}", ("a",)),
    ],
)
def test_placeholders(content: str, names: tuple[str, ...]) -> None:
    assert placeholders(content) == names


@pytest.mark.parametrize(
    ("content", "position", "why"),
    [
        ("${", 0, "must be followed by a name"),
        ("abc ${", 4, "must be followed by a name"),
        ("x${}", 1, "name is empty"),
        ("${1a}", 0, "must be followed by a name"),
        ("${a", 0, "not closed"),
        ("hi ${a b}", 3, "must be followed by a name"),
        ("${a-b}", 0, "must be followed by a name"),
        ("${a${b}}", 0, "cannot be nested"),
        ("ok ${a} ${é}", 8, "must be followed by a name"),
        ("${" + "a" * 33 + "}", 0, "longer than 32"),
        ("${ a}", 0, "must be followed by a name"),
    ],
)
def test_malformed_placeholders(content: str, position: int, why: str) -> None:
    with pytest.raises(TemplateError) as err:
        placeholders(content)
    e = err.value
    assert e.code == TEMPLATE_MALFORMED
    assert e.field == "content"
    assert e.position == position
    assert f"index {position}" in e.message
    assert why in e.message
    assert str(e) == e.message


_name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,31}", fullmatch=True)
_literal = st.text(max_size=12).filter(lambda s: "$" not in s)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_literal, _name), max_size=6), _literal)
def test_placeholders_round_trip(pairs: list[tuple[str, str]], tail: str) -> None:
    content = "".join(lit + "${" + name + "}" for lit, name in pairs) + tail
    assert placeholders(content) == tuple(dict.fromkeys(name for _, name in pairs))


# --- render ----------------------------------------------------------------------------------


def test_render_basic_and_repeated() -> None:
    assert render("Your code is ${code}", {"code": "123456"}) == "Your code is 123456"
    assert render("${a}-${b}-${a}", {"a": "x", "b": "y"}) == "x-y-x"
    assert render("no params", {}) == "no params"
    assert render("您的验证码${code}，5分钟内有效", {"code": 4821}) == "您的验证码4821，5分钟内有效"


def test_render_missing_lists_all_in_template_order() -> None:
    with pytest.raises(TemplateError) as err:
        render("${b} ${a} ${c}", {"a": "1"})
    e = err.value
    assert e.code == TEMPLATE_MISSING_PARAMETERS
    assert e.names == ("b", "c")
    assert e.field == "params"
    assert e.message == "params: missing values for b, c"


def test_render_unknown_lists_all_sorted() -> None:
    with pytest.raises(TemplateError) as err:
        render("${a}", {"a": "1", "z": "2", "m": "3"})
    e = err.value
    assert e.code == TEMPLATE_UNKNOWN_PARAMETERS
    assert e.names == ("m", "z")
    assert e.message == "params: not in the template: m, z"


def test_render_missing_reported_before_unknown() -> None:
    with pytest.raises(TemplateError) as err:
        render("${a}", {"b": "1"})
    assert err.value.code == TEMPLATE_MISSING_PARAMETERS


def test_render_malformed_template() -> None:
    with pytest.raises(TemplateError) as err:
        render("${a", {"a": "1"})
    assert err.value.code == TEMPLATE_MALFORMED


def test_render_params_not_a_mapping() -> None:
    with pytest.raises(TemplateError) as err:
        render("${a}", ["a"])  # type: ignore[arg-type]
    assert err.value.code == TEMPLATE_PARAMETER_INVALID
    assert err.value.field == "params"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("abc", "abc"),
        ("", ""),
        (0, "0"),
        (-42, "-42"),
        (123456, "123456"),
        (1.5, "1.5"),
        (2.0, "2.0"),
        (-0.25, "-0.25"),
        (1e20, "100000000000000000000"),
        (1e-7, "0.0000001"),
        (12345678901234567890, "12345678901234567890"),
    ],
)
def test_render_values(value: object, text: str) -> None:
    assert render("[${v}]", {"v": value}) == f"[{text}]"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (True, "not a boolean"),
        (False, "not a boolean"),
        (None, "not null"),
        ([1], "not list"),
        ({"a": 1}, "not dict"),
        (b"x", "not bytes"),
        (Decimal("1.5"), "not Decimal"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        ("a" * 36, "36 characters, over the 35 limit"),
        ("😀" * 18, "36 characters, over the 35 limit"),  # non-BMP counts 2
        (10**40, "41 characters"),
        ("line\nbreak", "U+000A"),
        ("nul\x00", "U+0000"),
        ("tab\t", "U+0009"),
        ("rtl\u202eevil", "U+202E"),
        ("bom\ufeff", "U+FEFF"),
        ("sep\u2028", "U+2028"),
    ],
)
def test_render_invalid_values(value: object, why: str) -> None:
    with pytest.raises(TemplateError) as err:
        render("x ${val} y", {"val": value})
    e = err.value
    assert e.code == TEMPLATE_PARAMETER_INVALID
    assert e.field == "params.val"
    assert e.names == ("val",)
    assert e.message.startswith("params.val: ")
    assert why in e.message


def test_render_huge_int_is_refused_not_crashing() -> None:
    with pytest.raises(TemplateError) as err:
        render("${v}", {"v": 10**5000})
    assert err.value.code == TEMPLATE_PARAMETER_INVALID
    assert "too long" in err.value.message


def test_render_length_boundary_and_custom_limit() -> None:
    assert render("${v}", {"v": "a" * 35}) == "a" * 35
    assert render("${v}", {"v": "中" * 35}) == "中" * 35
    assert render("${v}", {"v": "😀" * 17 + "a"}) == "😀" * 17 + "a"  # 35
    assert render("${v}", {"v": "a" * 10}, max_param_len=10) == "a" * 10
    with pytest.raises(TemplateError):
        render("${v}", {"v": "a" * 11}, max_param_len=10)


def test_render_allows_emoji_zwj_sequences() -> None:
    family = "👨\u200d👩\u200d👧"
    assert render("${v}", {"v": family}) == family


def test_render_is_single_pass() -> None:
    out = render("${a} and ${b}", {"a": "${b}", "b": "${a}"})
    assert out == "${b} and ${a}"
    assert render("${a}", {"a": "${"}) == "${"


@pytest.mark.parametrize(
    "value",
    [
        "http://x.y",
        "HTTPS://evil.example/path",
        "see https://a.cn",
        "ftp://files",
        "weixin://dl/chat",
        "://evil",
        "www.evil.com",
        "WWW.evil",
        "a.b.cn/x",
        "bit.ly/abc",
        "evil.top/x",
        "unknowntld.zz/path",  # any host with a path
        "host.local:8080",
        "example.com",
        "t.cn",
        "mail.qq.com",
        "Visit evil.com.",
        "ｗｗｗ．ｅｖｉｌ．ｃｏｍ",  # fullwidth
        "ｈｔｔｐ：／／x",
        "evil。com",  # ideographic full stop
        "еvil.com",  # Cyrillic е
        "1.2.3.4/x",
        "10.0.0.1:8080",
    ],
)
def test_render_refuses_links(value: str) -> None:
    with pytest.raises(TemplateError) as err:
        render("Hi ${name}", {"name": value})
    e = err.value
    assert e.code == TEMPLATE_PARAMETER_INVALID
    assert e.field == "params.name"
    assert "link" in e.message
    # The same value is fine where the template allows links.
    assert render("Hi ${name}", {"name": value}, allow_urls=True) == "Hi " + value


@pytest.mark.parametrize(
    "value",
    [
        "Dr.Smith",
        "Mr.Li",
        "No.5",
        "3.14",
        "v1.2.3",
        "e.g.",
        "U.S.A",
        "1.2.3.4",  # a bare IP (login alerts)
        "user@example.com",  # e-mail: not a link
        "a***@qq.com",
        "张三",
        "123456",
        "price: $5",
        "A/B test",
        "12:30",
    ],
)
def test_render_allows_non_links(value: str) -> None:
    assert render("Hi ${name}", {"name": value}) == "Hi " + value


def test_invisible_characters_are_refused_before_link_checks() -> None:
    with pytest.raises(TemplateError) as err:
        render("Hi ${name}", {"name": "evil\u200b.com"}, allow_urls=True)
    assert "U+200B" in err.value.message


def test_link_formed_by_adjacent_values_names_the_first() -> None:
    with pytest.raises(TemplateError) as err:
        render("${a}.${b}", {"a": "evil", "b": "com"})
    assert err.value.names == ("a",)
    with pytest.raises(TemplateError) as err:
        render("${a}${b}", {"a": "www", "b": ".x"})
    assert err.value.names == ("a",)


def test_link_in_template_text_is_the_reviewers_business() -> None:
    # A fixed link in the approved text, values outside it: fine.
    content = "点击https://m.acme.cn/o查看${name}的订单, ${code}"
    assert render(content, {"name": "张三", "code": "42"}).startswith("点击https://m.acme.cn/o查看")
    assert render("Visit https://acme.cn ${name}", {"name": "Bob"}) == "Visit https://acme.cn Bob"
    # A value inside the link can change where it goes: it needs a template that allows links.
    with pytest.raises(TemplateError) as err:
        render("https://acme.cn/o/${id}", {"id": "123"})
    assert err.value.names == ("id",)
    assert render("https://acme.cn/o/${id}", {"id": "123"}, allow_urls=True).endswith("/o/123")
    # An empty value inside a link changes nothing.
    assert render("https://acme.cn/${e}x", {"e": ""}) == "https://acme.cn/x"


_safe_value = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp")), max_size=35
).filter(lambda s: "$" not in s and "{" not in s and tariff_chars(s) <= 35)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_literal, _name), min_size=1, max_size=5), _literal, st.data())
def test_render_fills_every_placeholder(
    pairs: list[tuple[str, str]], tail: str, data: st.DataObject
) -> None:
    content = "".join(lit + "${" + name + "}" for lit, name in pairs) + tail
    names = list(dict.fromkeys(name for _, name in pairs))
    params = {n: data.draw(_safe_value) for n in names}
    out = render(content, params, allow_urls=True)
    assert "${" not in out
    assert out == "".join(lit + params[name] for lit, name in pairs) + tail


# --- review ----------------------------------------------------------------------------------

FILTER = ContentFilter(["viagra", "发票"])
BRACKETS = "【{sign}】"


def _review(kind: TemplateKind | str, content: str, **kw: object) -> Review:
    args: dict[str, object] = {
        "content_filter": FILTER,
        "sign_format": BRACKETS,
        "longest_sign": 10,
    }
    args.update(kw)
    return review(kind, content, **args)  # type: ignore[arg-type]


def test_review_approves_a_clean_template() -> None:
    r = _review(TemplateKind.VERIFICATION, "您的验证码${code}，5分钟内有效。")
    assert r == Review(True, (), ())


def test_review_marketing_needs_optout_wording() -> None:
    bad = _review(TemplateKind.MARKETING, "新品上市，全场五折")
    assert not bad.approved
    assert bad.codes == (TEMPLATE_NO_OPTOUT_WORDING,)
    assert "opt out" in bad.reasons[0]
    assert _review(TemplateKind.MARKETING, "新品上市，全场五折，回T退订").approved
    assert _review("marketing", "Sale today! Reply STOP to unsubscribe").approved
    # The same text is fine for a notification: wording is only required of marketing.
    assert _review(TemplateKind.NOTIFICATION, "新品上市，全场五折").approved


def test_review_optout_wording_must_be_literal() -> None:
    for content in ("全场五折 ${optout}", "全场五折 回${t}退订"):
        r = _review(TemplateKind.MARKETING, content)
        assert r.codes == (TEMPLATE_NO_OPTOUT_WORDING,)


def test_review_custom_optout_phrases() -> None:
    r = _review(TemplateKind.MARKETING, "Sale! Send END", optout_phrases=["send END"])
    assert r.approved


def test_review_content_filter_names_the_rule_not_the_text() -> None:
    r = _review(TemplateKind.NOTIFICATION, "Cheap V-I-A-G-R-A for ${name}, lots more text here")
    assert not r.approved
    assert r.codes == (TEMPLATE_CONTENT_FILTERED,)
    assert "'viagra'" in r.reasons[0]
    assert "lots more text" not in r.reasons[0]


@pytest.mark.parametrize(
    "content", ["代开发${x}票", "vi${x}agra", "buy vi${x}a g r a", "发${a}${b}票"]
)
def test_review_placeholder_cannot_split_a_filtered_word(content: str) -> None:
    r = _review(TemplateKind.NOTIFICATION, content)
    assert r.codes == (TEMPLATE_CONTENT_FILTERED,)


def test_review_placeholder_names_are_not_filtered() -> None:
    assert _review(TemplateKind.NOTIFICATION, "Hello ${viagra}").approved


def test_review_length_boundary() -> None:
    # 【】 is 2 characters + a 10-character sign = 12, so 488 content characters fit 500.
    assert _review(TemplateKind.NOTIFICATION, "a" * 488).approved
    r = _review(TemplateKind.NOTIFICATION, "a" * 489)
    assert r.codes == (TEMPLATE_TOO_LONG,)
    assert "501 characters" in r.reasons[0]
    assert "over the 500 limit" in r.reasons[0]
    # Placeholders count 0.
    assert _review(TemplateKind.NOTIFICATION, "a" * 488 + "${code}").approved
    # Counted like the tariff: an emoji is 2.
    assert _review(TemplateKind.NOTIFICATION, "a" * 486 + "😀").approved
    assert not _review(TemplateKind.NOTIFICATION, "a" * 487 + "😀").approved
    # The sign format and the longest sign decide the overhead.
    assert _review(TemplateKind.NOTIFICATION, "a" * 490, sign_format="{sign}").approved
    assert not _review(TemplateKind.NOTIFICATION, "a" * 488, longest_sign=11).approved
    assert _review(TemplateKind.NOTIFICATION, "a" * 88, max_chars=100).approved
    assert not _review(TemplateKind.NOTIFICATION, "a" * 89, max_chars=100).approved


def test_review_malformed_and_everything_at_once() -> None:
    r = _review(TemplateKind.MARKETING, "viagra ${" + "x" * 600)
    assert not r.approved
    assert r.codes == (
        TEMPLATE_MALFORMED,
        TEMPLATE_CONTENT_FILTERED,
        TEMPLATE_NO_OPTOUT_WORDING,
        TEMPLATE_TOO_LONG,
    )
    assert len(r.reasons) == 4
    assert "index 7" in r.reasons[0]


def test_review_empty_and_control_characters() -> None:
    assert _review(TemplateKind.NOTIFICATION, "").codes == (TEMPLATE_EMPTY,)
    assert _review(TemplateKind.NOTIFICATION, "  \n ").codes == (TEMPLATE_EMPTY,)
    assert _review(TemplateKind.NOTIFICATION, "line one\nline two\r\n\tend").approved
    r = _review(TemplateKind.NOTIFICATION, "bad\x07bell")
    assert r.codes == (TEMPLATE_MALFORMED,)
    assert "U+0007" in r.reasons[0]


def test_review_sign_format_must_hold_the_sign() -> None:
    with pytest.raises(ValueError, match="sign_format"):
        _review(TemplateKind.NOTIFICATION, "hi", sign_format="[]")


def test_review_unknown_kind() -> None:
    with pytest.raises(ValueError):
        _review("spam", "hi")


def test_literal_text_leaves_a_space_where_each_value_goes() -> None:
    from bridge.domain.templates import literal_text

    assert literal_text("Dear ${name}, code ${code}.") == "Dear  , code  ."
    assert literal_text("no values") == "no values"
    assert literal_text("${a}${b}") == "  "
