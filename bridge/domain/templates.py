"""Message templates: ``${name}`` placeholders, automatic review, and rendering with parameters.

Templates are reviewed once and then sent millions of times, so everything a reviewer relies on
must survive rendering: parameters are substituted in a single pass (a value containing ``${x}`` is
not expanded again), bounded in length, and by default may not carry a link, which is how an
approved "your code is ${code}" template gets abused to send phishing.

Placeholder syntax: ``${`` + a name matching ``[A-Za-z_][A-Za-z0-9_]{0,31}`` + ``}``. There is no
escape: a ``${`` that does not start a valid placeholder makes the template malformed. A ``$`` or
``{`` on its own is literal text.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from bridge.domain.content_filter import ContentFilter, fold
from bridge.domain.optout import DEFAULT_OPTOUT_PHRASES, has_optout_wording
from bridge.text.units import tariff_chars

TEMPLATE_MALFORMED = "TEMPLATE_MALFORMED"
TEMPLATE_MISSING_PARAMETERS = "TEMPLATE_MISSING_PARAMETERS"
TEMPLATE_UNKNOWN_PARAMETERS = "TEMPLATE_UNKNOWN_PARAMETERS"
TEMPLATE_PARAMETER_INVALID = "TEMPLATE_PARAMETER_INVALID"
# Review-only reasons (Review.codes).
TEMPLATE_EMPTY = "TEMPLATE_EMPTY"
TEMPLATE_CONTENT_FILTERED = "TEMPLATE_CONTENT_FILTERED"
TEMPLATE_NO_OPTOUT_WORDING = "TEMPLATE_NO_OPTOUT_WORDING"
TEMPLATE_TOO_LONG = "TEMPLATE_TOO_LONG"

NAME_MAX = 32
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}(?=\})", re.ASCII)
_NAME_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


class TemplateKind(StrEnum):
    VERIFICATION = "verification"
    NOTIFICATION = "notification"
    MARKETING = "marketing"


class TemplateError(Exception):
    """A template or its parameters refused; ``field`` is "content" or "params.<name>"."""

    def __init__(
        self,
        code: str,
        message: str,
        field: str = "content",
        names: tuple[str, ...] = (),
        position: int | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.names = names  # the parameters concerned (missing, unknown or invalid)
        self.position = position  # 0-based index in the content, for TEMPLATE_MALFORMED
        # Why a parameter was refused, where a face tells them apart ("length", "link"):
        # Alibaba answers isv.PARAM_LENGTH_LIMIT and isv.PARAM_NOT_SUPPORT_URL for those.
        self.reason = reason


def _malformed(content: str, at: int) -> TemplateError:
    after = content[at + 2 :]
    name = _NAME_PREFIX.match(after)
    if after.startswith("}"):
        why = "the placeholder name is empty"
    elif name and len(name.group()) > NAME_MAX:
        why = f"the placeholder name is longer than {NAME_MAX} characters"
    elif name and after[name.end() : name.end() + 2] == "${":
        why = "placeholders cannot be nested"
    elif name and name.end() == len(after):
        why = "the placeholder is not closed with '}'"
    else:
        why = "'${' must be followed by a name ([A-Za-z_][A-Za-z0-9_]*, at most 32) and '}'"
    snippet = content[at : at + 20]
    return TemplateError(
        TEMPLATE_MALFORMED,
        f"content: malformed placeholder at index {at} ({snippet!r}): {why}",
        position=at,
    )


def _split(content: str) -> tuple[list[str], list[str]]:
    """(literal pieces, placeholder names): len(literals) == len(names) + 1, interleaved."""
    literals: list[str] = []
    names: list[str] = []
    pos = 0
    while True:
        at = content.find("${", pos)
        if at < 0:
            literals.append(content[pos:])
            return literals, names
        m = _NAME.match(content, at + 2)
        if m is None:
            raise _malformed(content, at)
        literals.append(content[pos:at])
        names.append(m.group())
        pos = m.end() + 1


def literal_text(content: str) -> str:
    """The template's own words, a space where each placeholder is (TemplateError if
    malformed): what its review screened, apart from the values a send fills in."""
    return " ".join(_split(content)[0])


def placeholders(content: str) -> tuple[str, ...]:
    """Distinct placeholder names in order of first appearance (TemplateError if malformed)."""
    return tuple(dict.fromkeys(_split(content)[1]))


@dataclass(frozen=True, slots=True)
class Review:
    """The automatic review: operators still approve; any reason here rejects outright.

    ``codes`` is parallel to ``reasons``: a stable code for each human reason.
    """

    approved: bool
    reasons: tuple[str, ...]
    codes: tuple[str, ...] = ()


def _sign_overhead(sign_format: str, longest_sign: int) -> int:
    if "{sign}" not in sign_format:
        raise ValueError(f"sign_format {sign_format!r} has no {{sign}}")
    return tariff_chars(sign_format.replace("{sign}", "")) + longest_sign


def _bad_control(text: str, allowed: str) -> str | None:
    for ch in text:
        if ch in allowed:
            continue
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cs", "Zl", "Zp") or (cat == "Cf" and ch not in "\u200c\u200d"):
            return ch
    return None


def review(
    kind: TemplateKind,
    content: str,
    *,
    content_filter: ContentFilter,
    sign_format: str,
    longest_sign: int,
    max_chars: int = 500,
    optout_phrases: Sequence[str] = DEFAULT_OPTOUT_PHRASES,
) -> Review:
    """Automatic review of a submitted template; every failing rule is listed, not just the first.

    Rejects: empty content; malformed placeholders; control characters other than newline, CR
    and tab; a content-filter match (the rule is named; the text is checked with placeholders
    read as nothing and as a space, so a placeholder cannot split a filtered word); a marketing
    template whose literal text (not a parameter) has no opt-out wording; and content over
    ``max_chars`` together with a sign name of ``longest_sign`` characters in ``sign_format``,
    counted with ``tariff_chars``. For the length check each placeholder counts as 0 characters
    (its declared maximum length for this check): parameters are unknown until send time, so the
    rendered text with its sign must be checked against the limit again when sending.
    """
    kind = TemplateKind(kind)
    overhead = _sign_overhead(sign_format, longest_sign)
    reasons: list[str] = []
    codes: list[str] = []

    def reject(code: str, reason: str) -> None:
        codes.append(code)
        reasons.append(reason)

    if not content.strip():
        reject(TEMPLATE_EMPTY, "content: empty")
        return Review(False, tuple(reasons), tuple(codes))
    try:
        literals, _names = _split(content)
    except TemplateError as e:
        reject(e.code, e.message)
        literals = [content]
    bad = _bad_control(content, "\n\r\t")
    if bad is not None:
        reject(TEMPLATE_MALFORMED, f"content: contains the control character U+{ord(bad):04X}")
    # Placeholders read as nothing and as a space: a placeholder must not hide a filtered word
    # by splitting it ("代开发${x}票"), nor glue two words into one the filter then misses.
    match = content_filter.check("".join(literals)) or content_filter.check(" ".join(literals))
    if match is not None:
        reject(
            TEMPLATE_CONTENT_FILTERED,
            f"content: matches the content filter {match.kind} {match.rule!r}",
        )
    if kind == TemplateKind.MARKETING and not any(
        has_optout_wording(piece, optout_phrases) for piece in literals
    ):
        reject(
            TEMPLATE_NO_OPTOUT_WORDING,
            "content: a marketing template must tell the recipient how to opt out "
            "(e.g. '回T退订' or 'Reply STOP to unsubscribe')",
        )
    total = overhead + sum(tariff_chars(piece) for piece in literals)
    if total > max_chars:
        reject(
            TEMPLATE_TOO_LONG,
            f"content: {total} characters with a sign name of {longest_sign} "
            f"(placeholders counted as 0), over the {max_chars} limit",
        )
    return Review(not reasons, tuple(reasons), tuple(codes))


# --- rendering ------------------------------------------------------------------------------

# What counts as a link in a parameter when the template does not allow URLs (checked on the
# folded text, so fullwidth "ｗｗｗ．", "。" as a dot and zero-width characters do not hide one):
#   - anything with "://" (any scheme), and the URL characters that follow;
#   - "www." and the URL characters that follow;
#   - a host name "label.label.tld" followed by "/" or ":<digit>" (a.b.cn/x, bit.ly/x), or ending
#     in one of _LINK_TLDS (example.com, t.cn) even without a path;
#   - an IPv4 address followed by "/" or ":<digit>" (a bare IP is allowed: login alerts show one).
# The domain part of an e-mail address (after "@") is not a link. A dotted name ending in another
# word ("Dr.Smith", "No.5") is not a link. IDN host names are not recognised.
_LINK_TLDS = frozenset(
    "com net org info biz io co me ly cc tv top xyz site online app dev shop vip club link live "
    "store tech cloud fun icu pro work click wiki group ltd xin asia mobi "
    "cn hk tw mo jp kr sg uk us eu ru de fr in au ca gl gd ws su tk ml ga cf gq".split()
)
# The rest of a link: ASCII URL characters, without the punctuation that usually ends a sentence
# around it (",;!'()*"), so text after a fixed link in a template is not taken for part of it.
_URL_CHARS = r"[a-z0-9\-._~:/?#@$&+=%\[\]]*"
_LINK = re.compile(
    r"(?P<scheme>(?:[a-z][a-z0-9+.\-]*)?://" + _URL_CHARS + r")"
    r"|(?P<www>(?<![a-z0-9])www\." + _URL_CHARS + r")"
    r"|(?P<ip>(?<![0-9.])\d{1,3}(?:\.\d{1,3}){3}(?=/|:\d))"
    r"|(?P<host>(?<![a-z0-9@._\-])(?:[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?\.)+(?P<tld>[a-z]{2,63})"
    r"(?![a-z0-9\-]))",
    re.ASCII,
)
_DOTS = str.maketrans({"\u3002": ".", "\uff61": "."})  # ideographic full stops work as dots in IDNA


def _link_spans(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in _LINK.finditer(text):
        if m.group("host") is not None:
            after = text[m.end() : m.end() + 2]
            if m.group("tld") not in _LINK_TLDS and not (
                after.startswith("/") or (after[:1] == ":" and after[1:2].isdigit())
            ):
                continue
        spans.append(m.span())
    return spans


def _format_number(value: int | float, name: str) -> str:
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # more digits than int->str allows
            raise _invalid(name, "is too long", "length") from None
    if not math.isfinite(value):
        raise _invalid(name, "must be a finite number")
    text = repr(value)
    if "e" in text or "E" in text:  # plainly: 1e+20 -> 100000000000000000000
        text = format(Decimal(text), "f")
    return text


def _invalid(name: str, why: str, reason: str | None = None) -> TemplateError:
    return TemplateError(
        TEMPLATE_PARAMETER_INVALID,
        f"params.{name}: {why}",
        field=f"params.{name}",
        names=(name,),
        reason=reason,
    )


def _value_text(name: str, value: object, max_len: int) -> str:
    if isinstance(value, bool) or value is None:
        raise _invalid(
            name, "must be a string or a number, not " + ("null" if value is None else "a boolean")
        )
    if isinstance(value, int | float):
        text = _format_number(value, name)
    elif isinstance(value, str):
        text = value
    else:
        raise _invalid(name, f"must be a string or a number, not {type(value).__name__}")
    n = tariff_chars(text)  # first: cheap, and bounds the per-character scan below
    if n > max_len:
        raise _invalid(name, f"is {n} characters, over the {max_len} limit", "length")
    bad = _bad_control(text, "")
    if bad is not None:
        raise _invalid(name, f"contains the control character U+{ord(bad):04X}")
    return text


def render(
    content: str,
    params: Mapping[str, object],
    *,
    max_param_len: int = 35,
    allow_urls: bool = False,
) -> str:
    """The template text with every placeholder replaced, in one pass; TemplateError if refused.

    Checks, in order: placeholders well formed; no placeholder without a value (all missing names
    listed, in template order); no value without a placeholder (listed, sorted); each value a str,
    int or float (floats written out without exponent; bool, None, NaN and others refused), no
    control characters (ZWJ/ZWNJ allowed for emoji), at most ``max_param_len`` characters as the
    tariff counts them; then, unless ``allow_urls``, no link (see _LINK above) that a value makes
    or is part of in the rendered text, including one made by two adjacent values.
    """
    literals, names = _split(content)
    wanted = list(dict.fromkeys(names))
    if not isinstance(params, Mapping):
        raise TemplateError(
            TEMPLATE_PARAMETER_INVALID, "params: must be an object of name: value", field="params"
        )
    missing = tuple(n for n in wanted if n not in params)
    if missing:
        raise TemplateError(
            TEMPLATE_MISSING_PARAMETERS,
            "params: missing values for " + ", ".join(missing),
            field="params",
            names=missing,
        )
    known = set(wanted)
    unknown = tuple(sorted(str(k) for k in params if k not in known))
    if unknown:
        raise TemplateError(
            TEMPLATE_UNKNOWN_PARAMETERS,
            "params: not in the template: " + ", ".join(unknown),
            field="params",
            names=unknown,
        )
    values = {n: _value_text(n, params[n], max_param_len) for n in wanted}
    if not allow_urls:
        _refuse_links(literals, names, values)
    out = [literals[0]]
    for name, literal in zip(names, literals[1:], strict=True):
        out.append(values[name])
        out.append(literal)
    return "".join(out)


def _refuse_links(literals: list[str], names: list[str], values: dict[str, str]) -> None:
    """Refuse a value that is, contains or helps form a link in the rendered text."""
    if not names:
        return
    pieces = [fold(literals[0]).translate(_DOTS)]
    value_spans: list[tuple[int, int, str]] = []
    pos = len(pieces[0])
    for name, literal in zip(names, literals[1:], strict=True):
        value = fold(values[name]).translate(_DOTS)
        value_spans.append((pos, pos + len(value), name))
        lit = fold(literal).translate(_DOTS)
        pieces += [value, lit]
        pos += len(value) + len(lit)
    for start, end in _link_spans("".join(pieces)):
        for v_start, v_end, name in value_spans:
            if v_start < v_end and v_start < end and start < v_end:
                raise _invalid(name, "must not contain a link (URL or domain name)", "link")
