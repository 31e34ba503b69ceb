"""POST /v1/messages: validate a send request and turn it into stored messages and segments.

The request is checked completely before anything is stored, so a refusal never leaves half a
batch behind. Encoding and splitting happen here, at acceptance, with the options of the SMSC the
destination routes to: the response can then state the exact segment and unit counts, and the
dispatcher sends stored bytes without re-encoding.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache, partial
from typing import Any

from bridge import jsonio
from bridge.api.errors import ApiError
from bridge.billing import PriceNotFound, price
from bridge.config import Config, SmscConfig, TextConfig
from bridge.domain.admission import Priced, RecipientRefusal, refused_details
from bridge.domain.content_filter import ContentFilter
from bridge.domain.phone import E164_FULLMATCH as _e164
from bridge.domain.phone import PhoneError, normalize
from bridge.domain.signs import SignError, validate_sign_name
from bridge.domain.tariffs import Tariff
from bridge.domain.templates import TemplateError, TemplateKind, literal_text, render
from bridge.fastinit import fast_init, maker
from bridge.ids import new_id
from bridge.smpp.router import Router
from bridge.smpp.tlvpack import pack_tlvs
from bridge.store.models import Account, NewMessage, NewSegment, Template
from bridge.text.gsm import gsm_septets
from bridge.text.preview import with_sign
from bridge.text.split import (
    ESM_UDHI,
    GSM_ONE_PART,
    EncodeOptions,
    Encoding,
    RefCounter,
    SplitMode,
    TextError,
    encode_message,
    plain_gsm_options,
    udh_ucs2_parts,
    wire_code,
)
from bridge.text.units import CountingRule, billable_units, tariff_chars, units_of_chars

ALLOWED_FIELDS = frozenset(
    {
        "to",
        "sign_name",
        "template",
        "params",
        "text",
        "client_ref",
        "sender",
        "validity_minutes",
        "scheduled_at",
        "smart_encoding",
    }
)
# Inner blanks only: a handset shows "ACME " as ACME, so outer blanks let a sender pass for an
# id another account holds (the README's "no blank at either end").
_SENDER = re.compile(
    r"\+?[0-9]{1,20}|[A-Za-z0-9._-](?:[A-Za-z0-9 ._-]{0,9}[A-Za-z0-9._-])?", re.ASCII
)
_MAX_SCHEDULE_DAYS = 30
# Read once: a member read off its enum class costs ~1,000 instructions on Python 3.11.
_UDH8 = SplitMode.UDH8
_GSM7_NAME = str(Encoding.GSM7)  # the name NewMessage stores (str(enc.encoding))
_UCS2_NAME = str(Encoding.UCS2)
_CHARS_70_67 = CountingRule.CHARS_70_67
# Submitter.build's straight way for a free text (False: every text through final_text and
# billable_units, as before session 62; tests/unit/test_session62_send_parse.py compares both).
_STRAIGHT = True


@fast_init
@dataclass(frozen=True, slots=True)
class SendRequest:
    to: tuple[str, ...]  # E.164
    text: str | None
    template: str | None
    params: dict[str, Any]
    sign_name: str | None
    client_ref: str | None
    sender: str | None
    validity_minutes: int | None
    scheduled_at: int | None  # unix ms
    smart_encoding: bool | None


# The values every send builds, without entering the interpreter again for each (~1,500
# instructions a value; fastinit.maker).
_new_send_request = maker(SendRequest)
_new_message = maker(NewMessage)
_new_segment = maker(NewSegment)
_new_priced = maker(Priced)


def _field_error(code: str, message: str) -> ApiError:
    return ApiError(code, message)


def _recipients_refused(problems: list[RecipientRefusal], given: int) -> ApiError:
    """The refusal of a batch's numbers: the first one's code and message, as before, and with
    several numbers given, every refused one in `details` (admission.refused_details), so a
    campaign with 50 malformed numbers in 10,000 learns them from one answer, not 50."""
    first = min(problems, key=lambda r: r.index)
    details = refused_details(problems) if given > 1 else None
    return ApiError(first.code, first.message, details=details)


def _as_sent(raw: Any) -> str:
    """A refused `to` entry as the answer names it: the string as sent (cut), or its JSON."""
    return (raw if isinstance(raw, str) else jsonio.dumps(raw).decode())[:64]


def _opt_str(body: dict[str, Any], name: str, max_len: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _field_error("INVALID_FIELD", f"{name}: expected a string")
    if not value or len(value) > max_len:
        raise _field_error("INVALID_FIELD", f"{name}: must be 1 to {max_len} characters")
    return value


def _numbers(raw_to: Any, account: Account, max_recipients: int) -> list[str]:
    """A list of numbers' E.164 forms, each checked; every refused one named at once."""
    if isinstance(raw_to, list):
        if not raw_to:
            raise _field_error("INVALID_FIELD", "to: the list is empty")
        if len(raw_to) > max_recipients:
            raise _field_error(
                "TOO_MANY_RECIPIENTS",
                f"to: {len(raw_to)} recipients, at most {max_recipients} per request",
            )
        raw_list = raw_to
        names = [f"to[{i}]" for i in range(len(raw_to))]
    else:
        raise _field_error("INVALID_FIELD", "to: expected a string or a list of strings")
    numbers: list[str] = []
    seen: dict[str, str] = {}
    problems: list[RecipientRefusal] = []
    for i, (name, raw) in enumerate(zip(names, raw_list, strict=True)):
        if not isinstance(raw, str):
            problems.append(
                RecipientRefusal(i, _as_sent(raw), "INVALID_FIELD", f"{name}: expected a string")
            )
            continue
        try:
            e164 = normalize(raw, account.default_country)
        except PhoneError as exc:
            problems.append(
                RecipientRefusal(i, _as_sent(raw), "INVALID_NUMBER", f"{name}: {exc.message}")
            )
            continue
        if e164 in seen:
            why = f"{name}: duplicate of {seen[e164]} ({e164})"
            problems.append(RecipientRefusal(i, e164, "INVALID_FIELD", why))
            continue
        seen[e164] = name
        numbers.append(e164)
    if problems:
        raise _recipients_refused(problems, len(raw_list))
    return numbers


def parse_send_request(
    body: Any, account: Account, *, max_recipients: int, now_ms: int
) -> SendRequest:
    """Validate the JSON body of POST /v1/messages (pure).

    The usual send, an object of a "to" already in E.164, a "text" and perhaps a "client_ref"
    and a "sign_name" (each a string of 1 to 64 and 32 characters, or null), is answered here
    in a straight line: what `parse_any_send_request` answers for it, without its ~25 lookups
    and checks of the fields it does not hold (~5,000 instructions a send, session 62). Any
    other body, and any such body with a value it would refuse, goes its way
    (tests/unit/test_session62_send_parse.py holds the two to each other)."""
    if body.__class__ is dict:
        to = body.get("to")
        text = body.get("text")
        if to.__class__ is str and text.__class__ is str and _e164(to) is not None:
            # Only these keys: two, and each other one of the two optional ones it holds.
            n = len(body)
            ref = sign = None
            if n != 2:
                if "client_ref" in body:
                    n -= 1
                    ref = body["client_ref"]
                    if ref is not None and (ref.__class__ is not str or not 0 < len(ref) <= 64):
                        n = -1
                if "sign_name" in body:
                    n -= 1
                    sign = body["sign_name"]
                    if sign is not None and (sign.__class__ is not str or not 0 < len(sign) <= 32):
                        n = -1
            if n == 2:
                # By position, in the class's order (see NewMessage in Submitter.build).
                return _new_send_request((to,), text, None, {}, sign, ref, None, None, None, None)
    return parse_any_send_request(body, account, max_recipients=max_recipients, now_ms=now_ms)


def parse_any_send_request(
    body: Any, account: Account, *, max_recipients: int, now_ms: int
) -> SendRequest:
    """Validate the JSON body of POST /v1/messages (pure): any body (`parse_send_request`
    answers the usual one in a straight line)."""
    if not isinstance(body, dict):
        raise _field_error("INVALID_REQUEST", "the body must be a JSON object")
    if not ALLOWED_FIELDS.issuperset(body):  # one C call; the set of the others only if any
        unknown = sorted(set(body) - ALLOWED_FIELDS)
        raise _field_error("UNKNOWN_FIELD", f"{unknown[0]}: unknown field")

    raw_to = body.get("to")
    if raw_to is None:
        raise _field_error("MISSING_FIELD", "to: required (a number or a list of numbers)")
    if isinstance(raw_to, str):
        # One number (nearly every send): _numbers' loop without its lists, enumerate and
        # strict zip (~5,000 instructions); refused as that loop refuses a list's one number.
        try:
            numbers = [normalize(raw_to, account.default_country)]
        except PhoneError as exc:
            why = f"to: {exc.message}"
            one = RecipientRefusal(0, _as_sent(raw_to), "INVALID_NUMBER", why)
            raise _recipients_refused([one], 1) from None
    else:
        numbers = _numbers(raw_to, account, max_recipients)

    text = body.get("text")
    template = body.get("template")
    if text is not None and template is not None:
        raise _field_error("INVALID_REQUEST", "text and template are mutually exclusive")
    if text is None and template is None:
        raise _field_error("MISSING_FIELD", "template: required (or text, for raw-text accounts)")
    if text is not None and not isinstance(text, str):
        raise _field_error("INVALID_FIELD", "text: expected a string")
    if template is not None and not isinstance(template, str):
        raise _field_error("INVALID_FIELD", "template: expected a string")
    params = body.get("params", {})
    if params is None:
        params = {}
    # `params and`: a send with none (a raw text) makes no generator (~3,000 instructions).
    if not isinstance(params, dict) or (
        params
        and not all(
            isinstance(k, str) and isinstance(v, str | int | float) and not isinstance(v, bool)
            for k, v in params.items()
        )
    ):
        raise _field_error("INVALID_FIELD", "params: expected an object of string values")
    if text is not None and params:
        raise _field_error("INVALID_FIELD", "params: only used with template")

    validity = body.get("validity_minutes")
    if validity is not None and (
        isinstance(validity, bool) or not isinstance(validity, int) or not 1 <= validity <= 10080
    ):
        raise _field_error("INVALID_FIELD", "validity_minutes: an integer from 1 to 10080")
    smart = body.get("smart_encoding")
    if smart is not None and not isinstance(smart, bool):
        raise _field_error("INVALID_FIELD", "smart_encoding: expected true or false")

    scheduled_ms: int | None = None
    scheduled = body.get("scheduled_at")
    if scheduled is not None:
        if not isinstance(scheduled, str):
            raise _field_error("INVALID_FIELD", "scheduled_at: expected an ISO-8601 string")
        try:
            when = datetime.fromisoformat(
                scheduled[:-1] + "+00:00" if scheduled[-1:] in ("Z", "z") else scheduled
            )
            # astimezone overflows at the ends of the calendar (9999-12-31T23:00-05:00).
            utc = when.astimezone(UTC) if when.tzinfo is not None else None
        except (ValueError, OverflowError):
            raise _field_error(
                "INVALID_FIELD", "scheduled_at: not ISO-8601 (e.g. 2026-12-01T08:00:00+08:00)"
            ) from None
        if utc is None:
            raise _field_error("INVALID_FIELD", "scheduled_at: must carry a UTC offset or Z")
        scheduled_ms = int(utc.timestamp() * 1000)
        if scheduled_ms > now_ms + _MAX_SCHEDULE_DAYS * 86_400_000:
            raise _field_error(
                "INVALID_SCHEDULE", f"scheduled_at: at most {_MAX_SCHEDULE_DAYS} days ahead"
            )
        if scheduled_ms <= now_ms:
            scheduled_ms = None  # in the past or now: send at once

    # The optional strings: _opt_str only for one given (a call each saved, ~2,000 in all).
    sender = body.get("sender")
    if sender is not None:
        sender = _opt_str(body, "sender", 21)
    if sender is not None and not _SENDER.fullmatch(sender):
        raise _field_error(
            "INVALID_FIELD",
            "sender: digits (up to 20) or up to 11 letters/digits, no blank at either end",
        )
    # By position, in the class's order (see NewMessage in Submitter.build).
    return _new_send_request(
        tuple(numbers),  # to
        text,  # text
        template,  # template
        dict(params) if params else {},  # params
        None if body.get("sign_name") is None else _opt_str(body, "sign_name", 32),  # sign_name
        None if body.get("client_ref") is None else _opt_str(body, "client_ref", 64),
        sender,  # sender
        validity,  # validity_minutes
        scheduled_ms,  # scheduled_at
        smart,  # smart_encoding
    )


# Characters that show nothing and are not whitespace to str.strip(): a text of only these was
# sent and billed as an invisible message.
_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"


def _blank(text: str) -> bool:
    return not text.strip().strip(_INVISIBLE).strip()


# The refusals of a text as such, whoever sends it to whom: shared by the send (Submitter) and
# POST /v1/preview, so a preview never prices a text the send refuses, and both say it alike.


def check_sign_name(sign: str) -> None:
    """Refuse a sign name that is not in its registered (NFKC) form: SIGN_NAME_INVALID."""
    try:
        if validate_sign_name(sign) != sign:
            raise SignError(
                "SIGN_NAME_INVALID", "sign_name: use the registered (NFKC) form of the name"
            )
    except SignError as exc:
        raise ApiError("SIGN_NAME_INVALID", exc.message.replace("name:", "sign_name:", 1)) from None


def signed_text(body: str, sign: str | None, conf: TextConfig) -> str:
    """The text as sent, `body` behind its sign; refused when `body` is blank (EMPTY_MESSAGE)
    or the whole is over `text.max_chars` (MESSAGE_TOO_LONG)."""
    text = with_sign(body, sign, conf.sign_format)
    if _blank(body):  # a rendered template or a raw text alike
        raise ApiError("EMPTY_MESSAGE", "text: the message is empty")
    n = tariff_chars(text)
    if n > conf.max_chars:
        raise ApiError(
            "MESSAGE_TOO_LONG",
            f"text: {n} characters including the sign name, at most {conf.max_chars}",
        )
    return text


def check_mapped_length(mapped: str, max_chars: int) -> None:
    """Refuse a text that smart encoding lengthened over `max_chars` ("…" is "..."): what is
    sent and billed is the mapped text, and the limit is on that (MESSAGE_TOO_LONG)."""
    n = tariff_chars(mapped)
    if n > max_chars:
        raise ApiError(
            "MESSAGE_TOO_LONG",
            f"text: {n} characters including the sign name once smart encoding mapped it, "
            f"at most {max_chars}",
        )


def encode_options(smsc: SmscConfig, smart: bool) -> EncodeOptions:
    return EncodeOptions(
        split=SplitMode(smsc.split),
        gsm_data_coding=smsc.gsm_data_coding,
        allow_latin1=smsc.allow_latin1,
        packed_gsm=smsc.packed_gsm,
        smart=smart,
    )


@lru_cache(maxsize=8)
def _rule_of_name(name: str) -> CountingRule:
    return CountingRule(name)


def _rule_of(tariff: Tariff) -> CountingRule:
    return _rule_of_name(tariff.counting_rule)


class Submitter:
    """Turns a validated request into NewMessage rows (pure apart from the reference counter)."""

    def __init__(
        self,
        config: Config,
        router: Router,
        refs: RefCounter | None = None,
        content_filter: ContentFilter | None = None,
    ) -> None:
        self.config = config
        self.content_filter = content_filter
        self._breaks: dict[str, frozenset[str]] = {}  # template content -> approved_breaks
        self._breaks_of: ContentFilter | None = None  # the filter they were found with
        self.router = router
        # `is None`, not `or`: an empty RefCounter is falsy (len 0) and was replaced.
        self.refs = refs if refs is not None else RefCounter()
        # Per SMSC, with and without smart encoding: built once instead of once per recipient.
        self._options = {
            (s.name, smart): encode_options(s, smart)
            for s in config.smscs
            for smart in (False, True)
        }
        # Per SMSC, the stamp of its wire options each message carries (wire_code): the
        # dispatcher encodes again a message whose stamp is not its route's now.
        self._wires = {s.name: wire_code(encode_options(s, False)) for s in config.smscs}
        # Per SMSC and smart flag, what build reads of it for each message: the options,
        # whether a plain GSM-7 part may be made under them (`one_gsm_part`'s first test), the
        # wire stamp. One lookup a message, not three and one_gsm_part's frame (session 62).
        self._routes = {
            (name, smart): (opts, plain_gsm_options(opts), self._wires[name])
            for (name, smart), opts in self._options.items()
        }
        self._rule = CountingRule(config.text.counting_rule)

    def render_template(self, template: Template, params: dict[str, Any]) -> str:
        """The template's content with `params` filled in (no sign yet); ApiError if refused."""
        try:
            return render(
                template.content,
                params,
                max_param_len=self.config.rules.max_param_chars,
                allow_urls=template.allow_urls,
            )
        except TemplateError as exc:
            raise ApiError(exc.code, exc.message, reason=exc.reason) from None

    def _approved_breaks(self, content: str) -> frozenset[str]:
        """The filter rules an approved template's own words break (cached for the filter in
        use: a reload that changes the lists makes a new one)."""
        f = self.content_filter
        if f is None:
            return frozenset()
        if f is not self._breaks_of or len(self._breaks) >= 4096:
            self._breaks.clear()
            self._breaks_of = f
        found = self._breaks.get(content)
        if found is None:
            found = self._breaks[content] = f.broken(literal_text(content))
        return found

    def final_text(
        self, req: SendRequest, account: Account, template: Template | None = None
    ) -> str:
        """The text as sent: `【sign】` + the rendered template, or the account's free text."""
        sign = req.sign_name
        if sign is not None:
            check_sign_name(sign)
        if req.template is not None:
            if template is None:
                raise ApiError("TEMPLATE_NOT_FOUND", f"template: {req.template!r} is not known")
            if sign is None:
                raise ApiError(
                    "SIGN_NAME_REQUIRED", "sign_name: required with a template (an approved sign)"
                )
            if template.kind == TemplateKind.MARKETING and not account.marketing:
                raise ApiError(
                    "MARKETING_NOT_ALLOWED",
                    "template: marketing messages are not enabled for this account",
                )
            body = self.render_template(template, req.params)
        else:
            if not account.raw_text:
                raise ApiError(
                    "RAW_TEXT_NOT_ALLOWED", "text: this account may only send approved templates"
                )
            assert req.text is not None
            body = req.text
        text = signed_text(body, sign, self.config.text)
        self.screen(body, template)  # after the length check (signed_text)
        return text

    def screen(self, body: str, template: Template | None) -> None:
        """The content filter, for a send and its preview alike. Called after the length
        check: the filter folds the whole text, which a body of up to 1 MiB must not cost before
        its refusal. A template's values are the customer's free text inside approved words:
        screened in the rendered body (a value beside literal text can complete a word), except
        for what the approved text breaks by itself (an operator's decision at review).
        Unscreened, a templates-only account sent filtered words as values."""
        if self.content_filter is None:
            return
        skip = frozenset() if template is None else self._approved_breaks(template.content)
        match = self.content_filter.check(body, skip)
        if match is not None:
            raise ApiError(
                "CONTENT_FILTERED",
                f"text: matches the content filter ({match.kind} {match.rule!r})",
            )

    def _encoded(
        self, text: str, opts: EncodeOptions, number: str
    ) -> tuple[str, str, int, int, tuple[NewSegment, ...]]:
        """`text` encoded for `number` under `opts` (a text `one_gsm_part` leaves): the text as
        sent (smart encoding may map it), the encoding's name, data_coding, the segments on the
        air and the parts' rows."""
        # SAR's sar_msg_ref_num is 16 bits too: drawn from 8, it repeated every 256.
        bits = 8 if opts.split is _UDH8 else 16
        try:
            # A reference is drawn only for a message of several parts: a single part
            # (GSM-7 up to 160 characters, `split: payload`) carries none, so it takes no
            # slot in the per-destination counter, whose cycle (256 / lanes with UDH8) is
            # then counted in concatenated messages alone. The text's length cannot tell
            # (a character outside the BMP takes two UTF-16 units, smart mapping lengthens
            # "…": 70 characters may need two parts, 160 only one), so the encoder draws it
            # when it cuts. At most 70 characters, though, are one part but for those rare
            # cases: encoded with a stand-in and, if they did need parts, again with a drawn
            # reference, the usual short message does not pay for a drawing function.
            # (Never 0 for "not drawn": 0 is a reference like any other, and lane 0 of the
            # acceptor workers' references starts at it.)
            if len(text) <= 70:
                enc = encode_message(text, opts, 0)
                if len(enc.parts) > 1:
                    enc = encode_message(text, opts, self.refs.next(number, bits))
            else:
                enc = encode_message(text, opts, partial(self.refs.next, number, bits))
        except TextError as exc:
            raise ApiError(exc.code, exc.message) from None
        if enc.text != text:
            check_mapped_length(enc.text, self.config.text.max_chars)
        # A list made into a tuple, not tuple() of a generator: ~1,000 instructions less.
        # Fields by position (seq, total, esm_class, short_message, tlvs): see NewSegment. A
        # part without TLVs (all but SAR's and message_payload's) packs none: ~3,000 a part.
        segments = tuple(
            [
                _new_segment(
                    p.seq,
                    p.total,
                    p.esm_class,
                    p.short_message,
                    pack_tlvs(p.tlvs) if p.tlvs else b"",
                )
                for p in enc.parts
            ]
        )
        return enc.text, str(enc.encoding), enc.data_coding, enc.segments, segments

    def build(
        self,
        req: SendRequest,
        account: Account,
        now_ms: int,
        id_factory: Callable[[str, int], str] = new_id,
        *,
        template: Template | None = None,
        tariff: Tariff | None = None,
    ) -> tuple[str, list[NewMessage], tuple[Priced, ...]]:
        """Messages ready to store, and what each costs under `tariff` (None: billing off)."""
        # A free text without a sign (a raw-text account's usual send): `final_text`'s answer
        # where it passes it as it is (not blank, within text.max_chars; the tariff's count of
        # it kept for its units below), without its calls (final_text, signed_text, with_sign,
        # _blank, tariff_chars, screen with no filter: ~2,500 instructions, session 62). Any
        # other send, or a text it may refuse, goes its way and is refused there alike.
        free = req.text
        chars = -1  # tariff_chars of the text where the straight way counted it
        if (
            _STRAIGHT
            and free is not None
            and req.sign_name is None
            and req.template is None
            and template is None
            and account.raw_text
        ):
            if free.isascii():
                if free and not free.isspace():  # `_blank` of an ASCII text
                    chars = len(free)
            elif not _blank(free):
                chars = tariff_chars(free)
        if 0 <= chars <= self.config.text.max_chars and free is not None:
            text = free
            if self.content_filter is not None:
                self.screen(text, None)
        else:
            chars = -1
            text = self.final_text(req, account, template)
        kind = template.kind if template is not None else None
        smart = (
            self.config.text.smart_encoding if req.smart_encoding is None else req.smart_encoding
        )
        batch_id = id_factory("bat_", now_ms)
        start = req.scheduled_at or now_ms
        expires = start + req.validity_minutes * 60_000 if req.validity_minutes else None
        messages: list[NewMessage] = []
        charges: list[Priced] = []
        problems: list[RecipientRefusal] = []  # no route, no price: every one named at once
        rule = self._rule if tariff is None else _rule_of(tariff)  # once a send, not a message
        for i, number in enumerate(req.to):
            candidates = self.router.candidates(number)
            if not candidates:
                why = f"to: no route to {number}"
                problems.append(RecipientRefusal(i, number, "NO_ROUTE", why))
                continue
            opts, plain, wire = self._routes[candidates[0], smart]
            # one_gsm_part(text, opts), its options asked once per route (plain_gsm_options).
            septets = gsm_septets(text) if plain else None
            if septets is not None and 0 < len(septets) <= GSM_ONE_PART:
                # Nearly every send: one plain GSM-7 part, as encode_message would make it
                # (tests/unit/test_one_gsm_part.py), without its Part and EncodedMessage, its
                # other cases' checks and a TLV packing of nothing (~16,000 instructions).
                enc_text, encoding, data_coding, air = text, _GSM7_NAME, 0, 1
                segments: tuple[NewSegment, ...] = (_new_segment(1, 1, 0, septets, b""),)
            elif len(text) > 70 and (sms := udh_ucs2_parts(text, opts, self.refs, number)):
                # A long UCS-2 text behind UDHs (a Chinese text over 70 characters): its parts
                # as encode_message would make them, without its Part and EncodedMessage
                # (tests/unit/test_session60_ucs2_parts.py); the text is not mapped.
                enc_text, encoding, data_coding, air = text, _UCS2_NAME, 8, len(sms)
                # A loop, not a comprehension over enumerate: on 3.11 a comprehension is a
                # function of its own (~1,000 instructions a send, session 62).
                parts: list[NewSegment] = []
                seq = 0
                for sm in sms:
                    seq += 1
                    parts.append(_new_segment(seq, air, ESM_UDHI, sm, b""))
                segments = tuple(parts)
            else:
                enc_text, encoding, data_coding, air, segments = self._encoded(text, opts, number)
            mid = id_factory("msg_", now_ms)
            price_class = None
            # The tariff in force decides how units are counted; international traffic is
            # counted (and priced) by transmitted segments. billable_units' count of the text
            # as sent, its characters known (the text not mapped): without its two calls.
            if chars >= 0 and rule is _CHARS_70_67 and enc_text is text:
                units = units_of_chars(chars)
            else:
                units = billable_units(enc_text, rule, air)
            if tariff is not None:
                try:
                    price_class, amount, intl = price(tariff, number, units, air)
                except PriceNotFound as exc:
                    problems.append(RecipientRefusal(i, number, "PRICE_NOT_FOUND", exc.message))
                    continue
                if intl:
                    units = air
                charges.append(_new_priced(mid, amount, intl))
            # Every field by position, in NewMessage's order: a class called with keywords
            # gets them as a dict its __init__ unpacks again, ~500 instructions a field (10,000
            # a message); tests/unit/test_session51_positional.py holds the order to the class.
            messages.append(
                _new_message(
                    mid,  # id
                    account.id,  # account_id
                    batch_id,  # batch_id
                    number,  # recipient
                    encoding,  # encoding
                    data_coding,  # data_coding
                    units,  # billable_units
                    segments,  # segments
                    now_ms,  # accepted_at
                    enc_text,  # text
                    req.client_ref,  # client_ref
                    req.sender,  # sender
                    req.sign_name,  # sign_name
                    req.template,  # template
                    req.scheduled_at,  # scheduled_at
                    expires,  # expires_at
                    air,  # air_segments
                    kind,  # kind
                    price_class,  # price_class
                    wire,  # wire
                )
            )
        if problems:
            raise _recipients_refused(problems, len(req.to))
        return batch_id, messages, tuple(charges)
