"""Handlers of the native, signed `/v1/` API."""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from bridge import jsonio
from bridge.accounts import public_account
from bridge.api.accepted import Accepted
from bridge.api.auth import NonceClaim, refusal
from bridge.api.context import BODY, CTX, PRINCIPAL, ApiContext, keys_of, query_of
from bridge.api.errors import ApiError
from bridge.api.idempotency import check_key, replay
from bridge.api.plain_request import PLAIN_REQUEST
from bridge.api.sending import (
    RENDER_TRIES,
    after_accept,
    check_accepting,
    check_queue,
    current_tariff,
    outcome_error,
    prepare_now,
    prepare_send,
    template_changed,
)
from bridge.api.submit import (
    check_mapped_length,
    check_sign_name,
    encode_options,
    parse_send_request,
    signed_text,
)
from bridge.api.views import message_view
from bridge.config import SmscConfig
from bridge.domain.phone import PhoneError, normalize
from bridge.domain.tariffs import is_domestic
from bridge.fastinit import maker
from bridge.ids import id_time_ms
from bridge.store.base import Store
from bridge.store.models import (
    AcceptBatch,
    AcceptOutcome,
    Account,
    IdempotencyRecord,
    NewMessage,
)
from bridge.text.preview import preview
from bridge.text.split import TextError
from bridge.text.units import CountingRule

log = logging.getLogger("bridge.api")

_MSG_ID = re.compile(r"msg_[0-9A-Z]{26}")
_BATCH_ID = re.compile(r"bat_[0-9A-Z]{26}")
_STATES = ("queued", "sent", "delivered", "failed", "expired", "unknown")
# The accept's two values built without a class call (~1.5-2 k instructions each a send:
# fastinit.maker, session 57).
_new_accept_batch = maker(AcceptBatch)
_new_idempotency = maker(IdempotencyRecord)


def ctx_of(request: web.Request) -> ApiContext:
    return request.app[CTX]


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=jsonio.dumps(data), status=status, content_type="application/json", headers=headers
    )


def _charset(content_type: str) -> str | None:
    """The `charset` parameter of a Content-Type, lower-case and unquoted (None: not given)."""
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').strip().lower()
    return None


@functools.lru_cache(maxsize=64)
def _media_type(header: str) -> tuple[str, str | None]:
    """A Content-Type's media type (lower-case) and charset. Cached: a client sends the same
    header on every request, and taking it apart was ~1 µs of each send."""
    return header.split(";")[0].strip().lower(), _charset(header)


def _check_media_type(sent: str) -> None:
    """UNSUPPORTED_MEDIA_TYPE unless the Content-Type `sent` is JSON in UTF-8 (or says no type
    or charset)."""
    ctype, charset = _media_type(sent)
    if ctype not in ("application/json", ""):
        raise ApiError("UNSUPPORTED_MEDIA_TYPE", f"Content-Type {ctype!r}: send application/json")
    if charset not in (None, "utf-8"):
        # The body is read as UTF-8 whatever the header says (RFC 8259: JSON is UTF-8): a UTF-16
        # body was refused as INVALID_JSON with a parser message about its bytes.
        raise ApiError(
            "UNSUPPORTED_MEDIA_TYPE",
            f"Content-Type charset {charset[:40]!r}: send the JSON body as UTF-8 "
            "(charset=utf-8, or no charset)",
        )


def parse_json(body: bytes, request: web.Request) -> Any:
    headers = request._headers if PLAIN_REQUEST else request.headers  # (plain_request)
    sent = headers.get("Content-Type")
    # The usual header spelled as sent (or none) passes both checks below: not taken apart
    # (~600 instructions a send, session 62).
    if sent is not None and sent != "application/json":
        _check_media_type(sent)
    if not body:
        raise ApiError("INVALID_JSON", "the request body is empty; send a JSON object")
    try:
        # One pass parses and validates: lone surrogate escapes (\\ud800, which could not be
        # stored or echoed as UTF-8), NaN, overflowing numbers and nesting past 1,024 levels
        # are refused here, once, for every field.
        # A key repeated in an object is refused too: we would read the last, a WAF or the
        # customer's own logging may read the first (jsonio.check_unique).
        data = jsonio.loads_unique(body)
    except jsonio.DuplicateKeyError as exc:
        raise ApiError(
            "DUPLICATE_JSON_KEY",
            f"{exc.described()} in the request body: send each key once per object",
        ) from None
    except jsonio.DecodeError as exc:
        raise ApiError("INVALID_JSON", f"the body is not valid JSON: {exc}") from None
    # U+0000 is valid JSON ("\u0000") but no text column of PostgreSQL holds it (a 500 there,
    # stored on SQLite and echoed raw into CDRs). Only a body spelling the escape is walked.
    # `find`, not `in`: bytes' `in` first tries its operand as an integer (a byte value), and a
    # bytes operand raised and cleared a TypeError with its formatted message on every send
    # (~2,000 instructions, session 59).
    if body.find(b"\\u0000") != -1 and jsonio.has_nul(data):
        raise ApiError("INVALID_JSON", "the body holds a U+0000 character (\\u0000): not allowed")
    return data


# Validations of one send against an account that keeps changing under it.
_STALE_TRIES = 4


def send_handler(ctx: ApiContext) -> Callable[[web.Request], Awaitable[web.Response]]:
    """POST /v1/messages over the app's context, which it reads from the closure, not through
    `request.app[CTX]` (two properties and a Python `__getitem__`) on every send."""

    async def post_messages(request: web.Request) -> web.Response:
        keys = keys_of(request)
        principal = keys[PRINCIPAL]
        claim = principal.deferred
        now_ms = int(ctx.clock() * 1000)  # ApiContext.now_ms without its frame (session 62)
        # Whether the request's nonce is recorded (by the accept transaction, or by auth.spend in
        # `_refused_once`, which says so in the request): a local, not a request key set per send.
        spent = False
        try:
            # The request's own checks and the tries of its accept here, not in coroutines of their
            # own (a frame and an await more on every send each).
            if not ctx.accepting:  # check_accepting's refusal, without its call on every send
                check_accepting(ctx)
            headers = request._headers if PLAIN_REQUEST else request.headers  # (plain_request)
            key = headers.get("Idempotency-Key")
            if key is None:
                raise ApiError("IDEMPOTENCY_KEY_REQUIRED", "Idempotency-Key header is required")
            # check_key's test inline, the function called only to refuse (a frame less a send,
            # session 62; tests/unit/test_session62_send_parse.py holds the two alike).
            if not (0 < len(key) <= 255 and key.isascii() and key.isprintable() and " " not in key):
                check_key(key)
            body: bytes = keys[BODY]
            # The body's hash was verified with the signature: not computed a second time.
            req_hash = principal.body_sha256 or hashlib.sha256(body).hexdigest()
            account = principal.account
            for attempt in range(1, _STALE_TRIES + 1):
                # One try: the request's checks, its rows, its answer and the accept
                # transaction, here rather than in a coroutine of its own (its creation, frame
                # and await: ~2,000 instructions a send, session 62). Only a refusal before the
                # transaction awaits `_refused_once`, which looks for an answer to replay.
                try:
                    check_queue(ctx)
                    data = parse_json(body, request)
                    req = parse_send_request(
                        data,
                        account,
                        max_recipients=ctx.config.server.max_recipients,
                        now_ms=now_ms,
                    )
                    prepared = prepare_now(ctx, account, req, now_ms)
                    if prepared is None:
                        prepared = await prepare_send(ctx, account, req, now_ms)
                except ApiError:
                    answered = await _refused_once(
                        ctx, request, account, claim, key, req_hash, now_ms
                    )
                    if answered is None:
                        raise
                    outcome, payload, messages = answered
                else:
                    batch_id, messages, admission = prepared
                    one = _one_answer(batch_id, messages) if len(messages) == 1 else None
                    payload = jsonio.dumps(_answer(batch_id, messages)) if one is None else one
                    # By position, in the class's order (see NewMessage in submit.Submitter.build).
                    outcome = await ctx.store.accept(
                        _new_accept_batch(
                            account.id,  # account_id
                            tuple(messages),  # messages
                            key,  # idempotency_key
                            _new_idempotency(req_hash, 202, payload),  # idempotency
                            now_ms + ctx.config.server.idempotency_hours * 3_600_000,  # expires
                            account.tps,  # tps
                            claim.key_id if claim else None,  # key_id
                            claim.nonce if claim else None,  # nonce
                            claim.expires_at if claim else 0,  # nonce_expires_at
                            account.updated_at if claim else None,  # account_version
                            admission,  # rules
                        ),
                        now_ms,
                    )
                # A replay's answer. Not isinstance(outcome, web.Response): an ABC, ~0.5 µs more.
                if not isinstance(outcome, AcceptOutcome):
                    return outcome
                # The accept transaction kept the nonce when it accepted or found the key's first
                # request; a refusal took it back (the except below spends it then).
                spent = claim is not None and (outcome.accepted or outcome.existing is not None)
                if outcome.auth_refusal == "stale" and outcome.account is not None:
                    # The account changed since the cached copy validated this request: validate
                    # again with the settings the transaction saw (nothing was written). Changed
                    # again each time (an operator script updating it in a loop): refusal("stale")
                    # below, a retryable 503, not the "unknown app key" a second stale once became.
                    account = outcome.account
                    ctx.auth.remember(account)
                    if attempt < _STALE_TRIES:
                        continue
                if (
                    messages
                    and template_changed(ctx, outcome, messages[0].template)
                    and attempt < RENDER_TRIES
                ):
                    continue  # rendered from a copy corrected since: render it again
                break
            else:  # run only when the tries ran out on a continue (a replay returned above)
                assert isinstance(outcome, AcceptOutcome)
            if not outcome.accepted:
                if outcome.auth_refusal is not None:
                    raise refusal(outcome.auth_refusal)
                if outcome.existing is not None:
                    return replay(outcome.existing, req_hash)
                raise outcome_error(outcome, account)
            after_accept(ctx, account, messages, outcome)
            return Accepted(payload)
        except ApiError as exc:
            if (
                claim is not None
                and exc.code not in _AUTH_CODES
                and not spent
                and not request.get(_SPENT)
            ):
                # A refused send still spends its nonce: the same signed request must not be
                # accepted later by replaying it (the accept transaction that would have recorded
                # the nonce was never committed). And a key revoked (or an account disabled) since
                # the cached copy is the answer, before what was wrong with the request.
                await ctx.auth.spend(claim, now_ms)
            raise

    return post_messages


# Set when `_refused_once` spent the request's nonce itself (a replay found on a refusal's path).
_SPENT: web.RequestKey[bool] = web.RequestKey("nonce_spent", bool)
# Refusals that already come from the key and nonce checks (nothing to spend). ACCOUNT_DISABLED
# is not one: refused, its nonce is still spent, or the captured request would be accepted when
# the operator enabled the account again within the skew window.
_AUTH_CODES = frozenset({"NONCE_REUSED", "KEY_REVOKED", "UNKNOWN_APP_KEY"})


async def _refused_once(
    ctx: ApiContext,
    request: web.Request,
    account: Account,
    claim: NonceClaim | None,
    key: str,
    req_hash: str,
    now_ms: int,
) -> tuple[AcceptOutcome | web.Response, bytes, list[NewMessage]] | None:
    """A try refused before its accept transaction (the ApiError being handled): the answer to
    give instead (a replay, or a stale account's outcome to try again with), or None: the
    refusal stands (the caller raises it)."""
    # A retry of an accepted request replays its answer even if it would be refused now
    # (queue full, rate, settings changed). Looked up only on this path: on the happy path
    # the accept transaction itself detects a replay, saving a read per request.
    existing = await ctx.store.get_idempotency(account.id, key, now_ms)
    if existing is not None:
        if claim is not None and existing.request_hash == req_hash:
            # The replay is an answer like any other: its nonce is spent and the key and
            # account are checked live first (a captured request replayed again, a key
            # revoked a moment ago).
            request[_SPENT] = True
            await ctx.auth.spend(claim, now_ms)
        return replay(existing, req_hash), b"", []
    if claim is not None:
        # Refused with the cached account: refuse only what the current settings refuse.
        fresh = await ctx.store.get_account(account.id)
        if fresh is not None and fresh.updated_at != account.updated_at:
            return AcceptOutcome(accepted=False, auth_refusal="stale", account=fresh), b"", []
    return None


def _answer(batch_id: str, messages: list[NewMessage]) -> dict[str, Any]:
    """The 202's body of an accepted send."""
    return {
        "batch_id": batch_id,
        "count": len(messages),
        "messages": [
            {
                "id": m.id,
                "to": m.recipient,
                "client_ref": m.client_ref,
                "status": "queued",
                "encoding": m.encoding,
                "segments": m.air_segments or len(m.segments),
                "billable_units": m.billable_units,
            }
            for m in messages
        ],
    }


def _one_answer(batch_id: str, messages: list[NewMessage]) -> bytes | None:
    """`jsonio.dumps(_answer(...))` of a send of one message (nearly every send), as one
    f-string, or None when its client_ref is not a string orjson writes (the dict's way then).
    Why: the dict, the list's comprehension (a function of its own on 3.11) and orjson's walk
    were ~3,000 instructions of each send (session 59). The same bytes: the ids are "msg_" and
    "bat_" and base32, the number E.164 ("+" and digits), the encoding a name of
    `bridge.text.split.Encoding`, the counts integers (as orjson writes them), and the
    client_ref is orjson's own serialisation of the string
    (tests/unit/test_session59_accept_answer.py compares both ways)."""
    m = messages[0]
    ref = m.client_ref
    if ref is None:
        ref_json = "null"
    else:
        try:
            ref_json = orjson.dumps(ref).decode()
        except TypeError:  # orjson.JSONEncodeError: a lone surrogate (parse_json refuses those)
            return None
    return (
        f'{{"batch_id":"{batch_id}","count":1,"messages":[{{"id":"{m.id}","to":"{m.recipient}",'
        f'"client_ref":{ref_json},"status":"queued","encoding":"{m.encoding}",'
        f'"segments":{m.air_segments or len(m.segments)},"billable_units":{m.billable_units}}}]}}'
    ).encode()


async def get_message(request: web.Request) -> web.Response:
    account = request[PRINCIPAL].account
    store = ctx_of(request).store
    return json_response(await one_message(store, account.id, request.match_info["id"]))


async def one_message(store: Store, account_id: str, mid: str) -> dict[str, Any]:
    """A message of the account with its parts, or 404 (the customer's and the operator's)."""
    record = await store.get_message(account_id, mid) if _MSG_ID.fullmatch(mid) else None
    if record is None:  # another account's id looks exactly like an unknown one: no probing
        raise ApiError("NOT_FOUND", f"no message {mid!r}")
    return message_view(record)


async def cancel_message(request: web.Request) -> web.Response:
    """A message still queued or scheduled that no SMSC may have taken (never submitted, or
    refused with an error) ends `expired` with error CANCELED, refunded, and its status report
    is pushed; any other is 409 NOT_CANCELABLE."""
    ctx = ctx_of(request)
    account = request[PRINCIPAL].account
    mid = request.match_info["id"]
    canceled, found = (0, 0)
    if _MSG_ID.fullmatch(mid):
        canceled, found = await ctx.store.cancel_queued(account.id, ctx.now_ms(), message_id=mid)
    record = await ctx.store.get_message(account.id, mid) if found else None
    if record is None:
        raise ApiError("NOT_FOUND", f"no message {mid!r}")
    if not canceled:
        why = (
            "was handed to an SMSC already (on a bind, or waiting to retry a submit that may "
            "have reached it)"
            if record.state == "queued"
            else f"is {record.state}"
        )
        raise ApiError(
            "NOT_CANCELABLE",
            f"message {mid} {why}: only a message not yet handed to an SMSC can be canceled",
        )
    log.info("message canceled", extra={"account": account.id, "message_id": mid})
    return json_response(message_view(record))


async def cancel_batch(request: web.Request) -> web.Response:
    """Every message of the batch still queued or scheduled, canceled as cancel_message does;
    the others are counted, not refused: a campaign half sent is stopped where it is."""
    ctx = ctx_of(request)
    account = request[PRINCIPAL].account
    bid = request.match_info["batch_id"]
    at = id_time_ms(bid, "bat_") if _BATCH_ID.fullmatch(bid) else None
    canceled, found = (0, 0)
    if at is not None:  # a batch's messages carry its id's time as accepted_at
        canceled, found = await ctx.store.cancel_queued(account.id, ctx.now_ms(), batch=(bid, at))
    if not found:
        raise ApiError("NOT_FOUND", f"no batch {bid!r}")
    log.info(
        "batch canceled",
        extra={"account": account.id, "batch_id": bid, "canceled": canceled, "found": found},
    )
    return json_response(
        {"batch_id": bid, "canceled": canceled, "not_cancelable": found - canceled}
    )


MESSAGE_QUERY = ("to", "date", "timezone", "status", "batch_id", "cursor", "limit")


async def list_messages(request: web.Request) -> web.Response:
    from bridge.api.reports import query_params  # reports imports this module

    q = query_params(query_of(request), MESSAGE_QUERY)
    account = request[PRINCIPAL].account
    ctx = ctx_of(request)
    return json_response(await messages_page(ctx.store, ctx.config.rules.timezone, account, q))


async def messages_page(
    store: Store, local_tz: str, account: Account, q: Mapping[str, str]
) -> dict[str, Any]:
    """A page of an account's messages by the list's filters (`MESSAGE_QUERY`): the customer's
    GET /v1/messages, the operator's GET /admin/accounts/{ref}/messages and `message list`."""
    from bridge.api.reports import day_range  # reports imports this module

    recipient = None
    if "to" in q:
        try:
            recipient = normalize(q["to"], account.default_country)
        except PhoneError as exc:
            raise ApiError("INVALID_NUMBER", f"to: {exc.message}") from None
    since = until = None
    if "date" in q:
        # The strict YYYY-MM-DD of /v1/stats (strptime took "2026-1-5" too); with
        # timezone=local the day of rules.timezone, as /v1/stats and the CDRs count it.
        since, until = day_range(q["date"], q.get("timezone"), local_tz)
    elif "timezone" in q:
        raise ApiError("INVALID_FIELD", "timezone: only with date")
    state = q.get("status")
    if state is not None and state not in _STATES:
        raise ApiError("INVALID_FIELD", f"status: one of {', '.join(_STATES)}")
    limit = 50
    if "limit" in q:
        # [0-9] and not str.isdigit(): "²" is a digit to isdigit() and a ValueError to int().
        if not re.fullmatch(r"[0-9]{1,3}", q["limit"]) or not 1 <= int(q["limit"]) <= 200:
            raise ApiError("INVALID_FIELD", "limit: an integer from 1 to 200")
        limit = int(q["limit"])
    cursor = q.get("cursor")
    if cursor is not None and not _MSG_ID.fullmatch(cursor):
        raise ApiError("INVALID_CURSOR", "cursor: not a cursor returned by this API")
    # A campaign's messages (the batch_id of its 202): what went out of a batch half canceled,
    # without a request per message id.
    batch_id = q.get("batch_id")
    if batch_id is not None and not _BATCH_ID.fullmatch(batch_id):
        raise ApiError("INVALID_FIELD", "batch_id: a batch_id a send answered (bat_...)")
    rows = await store.list_messages(
        account.id,
        recipient=recipient,
        since=since,
        until=until,
        state=state,
        before_id=cursor,
        limit=limit + 1,
        batch_id=batch_id,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "messages": [message_view(r, with_parts=False) for r in rows],
        "next_cursor": rows[-1].id if more and rows else None,
    }


async def post_preview(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    data = parse_json(request[BODY], request)
    if not isinstance(data, dict):
        raise ApiError("INVALID_REQUEST", "the body must be a JSON object")
    unknown = sorted(
        set(data) - {"text", "template", "params", "sign_name", "to", "smart_encoding"}
    )
    if unknown:
        raise ApiError("UNKNOWN_FIELD", f"{unknown[0]}: unknown field")
    text = data.get("text")
    code = data.get("template")
    tpl = None
    if code is not None:
        # The rendered template as it would be sent (any status: preview while it is reviewed).
        if text is not None:
            raise ApiError("INVALID_REQUEST", "text and template are mutually exclusive")
        if not isinstance(code, str):
            raise ApiError("INVALID_FIELD", "template: expected a string")
        params = data.get("params") or {}
        if not isinstance(params, dict):
            raise ApiError("INVALID_FIELD", "params: expected an object of string values")
        # As stored, not this process's cached copy: a preview after a correction shows the
        # corrected text.
        tpl = await ctx.send_rules.stored_template(request[PRINCIPAL].account.id, code)
        if tpl is None:
            raise ApiError("TEMPLATE_NOT_FOUND", f"template: {code!r} is not known")
        text = ctx.submitter.render_template(tpl, params)
    elif data.get("params") is not None:
        raise ApiError("INVALID_FIELD", "params: only used with template")
    if not isinstance(text, str):
        raise ApiError("MISSING_FIELD", "text: required string (or template)")
    sign = data.get("sign_name")
    if sign is not None:
        if not isinstance(sign, str):
            raise ApiError("INVALID_FIELD", "sign_name: expected a string")
        check_sign_name(sign)
    smart = data.get("smart_encoding")
    if smart is None:  # null is absent, as the send reads it (a preview of an accepted send)
        smart = ctx.config.text.smart_encoding
    if not isinstance(smart, bool):
        raise ApiError("INVALID_FIELD", "smart_encoding: expected true or false")
    number: str | None = None
    to = data.get("to")
    if to is not None:
        if not isinstance(to, str):
            raise ApiError("INVALID_FIELD", "to: expected a string")
        try:
            number = normalize(to, request[PRINCIPAL].account.default_country)
        except PhoneError as exc:
            raise ApiError("INVALID_NUMBER", f"to: {exc.message}") from None
    smsc = _preview_smsc(ctx, number)
    # The send's own refusals of the text, with its codes and words: a preview priced 600
    # characters (over text.max_chars) and blank texts that the send then refused, and texts
    # the content filter refuses (a preview said fine to what every send then refused).
    body = text
    text = signed_text(text, sign, ctx.config.text)
    ctx.submitter.screen(body, tpl)
    # Units as the send would bill them: the counting rule of the tariff in force, and for an
    # international destination its transmitted segments (the preview said 70/67 units).
    tariff = await current_tariff(ctx, ctx.now_ms())
    rule = ctx.config.text.counting_rule if tariff is None else tariff.counting_rule
    try:
        result = preview(text, encode_options(smsc, smart), rule=CountingRule(rule))
    except TextError as exc:
        raise ApiError(exc.code, exc.message) from None
    if result["text"] != text:
        check_mapped_length(result["text"], ctx.config.text.max_chars)
    if tariff is not None and number is not None and not is_domestic(number, tariff):
        result["billable_units"] = result["segments"]
    result["smsc"] = smsc.name
    return json_response(result)


def _preview_smsc(ctx: ApiContext, number: str | None) -> SmscConfig:
    """The SMSC whose options a send to `number` is encoded with: its route's first, as
    Submitter.build takes it; NO_ROUTE where the send would answer so.

    Without a number, the route of a number that no country's prefix matches: "+" matches no
    prefix but a "+" route (which would take such a number), else the default route. It was
    the first SMSC listed, whose options (Latin-1, IA5, split) the typical send did not use.
    With no such route either (routes for some prefixes only), the first SMSC listed: a preview
    must encode for some SMSC, and its answer names which.
    """
    router = ctx.submitter.router
    if number is not None:
        candidates = router.candidates(number)
        if not candidates:
            raise ApiError("NO_ROUTE", f"to: no route to {number}")
    else:
        candidates = router.candidates("+") or (ctx.config.smscs[0].name,)
    return next(s for s in ctx.config.smscs if s.name == candidates[0])


async def get_account(request: web.Request) -> web.Response:
    account = request[PRINCIPAL].account
    data = public_account(account)
    data["app_key"] = request[PRINCIPAL].key.key_id
    return json_response(data)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", send_handler(app[CTX]))
    app.router.add_get("/v1/messages", list_messages)
    app.router.add_get("/v1/messages/{id}", get_message)
    app.router.add_post("/v1/messages/{id}/cancel", cancel_message)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)
    app.router.add_post("/v1/preview", post_preview)
    app.router.add_get("/v1/account", get_account)
