"""The send path both API faces share (native /v1/messages and the Alibaba-compatible SendSms):
from a validated request to rows and the rules the accept transaction enforces, and from the
store's outcome to an error or the bookkeeping of an accepted batch."""

from __future__ import annotations

import logging
import math

from bridge import billing, logs
from bridge.api.context import ApiContext
from bridge.api.errors import ApiError
from bridge.api.submit import SendRequest
from bridge.domain import senders
from bridge.domain.admission import Priced, Rules
from bridge.domain.tariffs import BillingError, Tariff, tariff_at
from bridge.fastinit import maker
from bridge.store.models import AcceptOutcome, Account, NewMessage, Template

log = logging.getLogger("bridge.api")
# Built on every send, without entering the interpreter again (fastinit.maker).
_new_rules = maker(Rules)


def check_accepting(ctx: ApiContext) -> None:
    """A stopping daemon, or a draining acceptor (workers mode), takes no new sends: a retry
    goes to another instance, or to this one once it is back."""
    if not ctx.accepting:
        raise ApiError(
            "SHUTTING_DOWN", "the gateway is shutting down", headers={"Retry-After": "5"}
        )


def check_queue(ctx: ApiContext) -> None:
    """Back-pressure: refuse new work while the queue is over store.max_queued_segments."""
    if ctx.queue_depth >= ctx.config.store.max_queued_segments:
        raise ApiError(
            "QUEUE_FULL", "the send queue is full; retry later", headers={"Retry-After": "5"}
        )


# No tariff in force (the stored one starts later): an operator's matter, minutes away at best.
TARIFF_RETRY = {"Retry-After": "60"}


async def current_tariff(ctx: ApiContext, now_ms: int) -> Tariff | None:
    """The tariff in force (None when billing is off)."""
    if ctx.config.billing.enabled and not ctx.tariff_book.versions:
        await ctx.tariff_book.load(now_ms)
    return tariff_now(ctx, now_ms)


def tariff_loaded(ctx: ApiContext) -> bool:
    """Whether `tariff_now` answers as `current_tariff` would: billing off, or its book read."""
    return not ctx.config.billing.enabled or bool(ctx.tariff_book.versions)


def tariff_now(ctx: ApiContext, now_ms: int) -> Tariff | None:
    """`current_tariff` once its book is read (`tariff_loaded`), from a plain call: nearly every
    send, and awaiting a coroutine that returns at once was ~1,200 instructions more (session
    55)."""
    if not ctx.config.billing.enabled:
        return None
    try:
        return ctx.tariff_book.at(now_ms)
    except BillingError as exc:
        raise _tariff_refusal(exc) from None


def _tariff_refusal(exc: BillingError) -> ApiError:
    """No tariff in force: a 503 like any other, a client retries after Retry-After."""
    code = exc.code if exc.code in ("TARIFF_NOT_FOUND", "TARIFF_AMBIGUOUS") else "TARIFF_NOT_FOUND"
    return ApiError(code, exc.message, status=503, headers=TARIFF_RETRY)


async def check_sender(ctx: ApiContext, account: Account, sender: str) -> None:
    """SENDER_NOT_ALLOWED unless the account may send from `sender` (bridge/domain/senders.py):
    its own list read fresh with the account, the others' from the shared cache."""
    others = await ctx.sender_assignments.all()
    assigned_only = ctx.config.rules.sender_policy == "assigned"
    if senders.may_send(account.id, account.senders, sender, others, assigned_only=assigned_only):
        return
    if senders.claim_rank(account.senders, sender) is not None:
        why = "another account holds it more firmly"
    elif senders.owners(others, sender):
        why = "another account holds it"
    elif account.senders:
        why = "not one of the addresses assigned to this account"
    else:
        why = "this account has no assigned addresses (send without a sender)"
    raise ApiError("SENDER_NOT_ALLOWED", f"sender {sender}: {why}")


def prepare_now(
    ctx: ApiContext, account: Account, req: SendRequest, now_ms: int
) -> tuple[str, list[NewMessage], Rules] | None:
    """`prepare_send`'s answer when it has nothing to wait for (no sender to check, no template
    to read, the tariff book read: nearly every send of a free text), from a plain call; else
    None, and the caller awaits `prepare_send`. Why: awaiting a coroutine that returns at once
    was ~1,200 instructions more (session 55)."""
    if req.sender is not None or req.template is not None:
        return None
    # tariff_loaded and tariff_now in one: billing's flag and the book read once (the book
    # through its attribute, not ApiContext.tariff_book's property: ~2,500 instructions less a
    # send, session 62); a book with no versions read yet is prepare_send's to load.
    if ctx.config.billing.enabled:
        book = ctx.tariffs
        assert book is not None
        if not book.versions:
            return None
        try:
            tariff: Tariff | None = tariff_at(book.versions, now_ms)  # Tariffs.at's own call
        except BillingError as exc:
            raise _tariff_refusal(exc) from None
    else:
        tariff = None
    batch_id, messages, charges = ctx.submitter.build(req, account, now_ms, tariff=tariff)
    return batch_id, messages, _admission(ctx, req, None, charges, tariff)


async def prepare_send(
    ctx: ApiContext, account: Account, req: SendRequest, now_ms: int
) -> tuple[str, list[NewMessage], Rules]:
    """Render, encode, route and price; ApiError for what can be refused without the store."""
    if req.sender is not None:
        await check_sender(ctx, account, req.sender)
    rules = ctx.send_rules
    template = await rules.template(account.id, req.template) if req.template is not None else None
    tariff = tariff_now(ctx, now_ms) if tariff_loaded(ctx) else await current_tariff(ctx, now_ms)
    try:
        batch_id, messages, charges = ctx.submitter.build(
            req, account, now_ms, template=template, tariff=tariff
        )
    except ApiError:
        # Refused as rendered from this process's copy, which may predate a correction (a
        # renamed placeholder, links allowed since): read it once more, and render again if it
        # changed. Only refusals pay the read.
        if template is None or req.template is None:
            raise
        stored = await rules.stored_template(account.id, req.template)
        if stored is None or stored.revision == template.revision:
            raise
        template = stored
        batch_id, messages, charges = ctx.submitter.build(
            req, account, now_ms, template=template, tariff=tariff
        )
    return batch_id, messages, _admission(ctx, req, template, charges, tariff)


def _admission(
    ctx: ApiContext,
    req: SendRequest,
    template: Template | None,
    charges: tuple[Priced, ...],
    tariff: Tariff | None,
) -> Rules:
    """The rules the accept transaction enforces for the send `build` made."""
    kind = template.kind if template is not None else None
    rules = ctx.rules  # ApiContext.send_rules' answer without its property (~900 instructions)
    assert rules is not None
    # By position, in the class's order (see NewMessage in submit.Submitter.build).
    return _new_rules(
        req.sign_name,  # sign_name
        (),  # more_signs: SendBatchSms's alone
        req.template,  # template_code
        template.revision if template is not None else None,  # template_revision
        # req.to, not the messages' recipients gathered again: build made one message of each
        # number, in order, or refused the send (a generator per send, ~3,000 instructions).
        (
            rules.raw_frequency(req.sign_name, req.to)  # a free text's (nearly every send)
            if kind is None
            else rules.frequency(kind, req.sign_name, req.template, req.to)
        ),  # frequency
        charges,  # charges
        tariff is not None,  # billing
        ctx.config.rules.timezone,  # tz
    )


class TemplateChanged(ApiError):
    """TEMPLATE_CHANGED: the template was corrected since this process cached the copy the
    request was rendered from; the send path renders it again (RENDER_TRIES in all)."""


# Renderings of one send whose template keeps being corrected under it: a client sees
# TEMPLATE_CHANGED (409, send again) only when it changed every time.
RENDER_TRIES = 3


def template_changed(ctx: ApiContext, outcome: AcceptOutcome, code: str | None) -> bool:
    """True when the store refused a stale rendering of template `code`; the cached copy is
    dropped, so the next rendering reads the stored one."""
    r = outcome.refusal
    if r is None or r.code != "TEMPLATE_CHANGED" or code is None:
        return False
    ctx.send_rules.forget(code)
    return True


def outcome_error(outcome: AcceptOutcome, account: Account) -> ApiError:
    """The refusal of a batch the store did not accept (a rule, or the account's rate)."""
    if outcome.refusal is not None:
        r = outcome.refusal
        headers = None
        if r.retry_after is not None:
            headers = {"Retry-After": str(max(1, math.ceil(r.retry_after)))}
        cls = TemplateChanged if r.code == "TEMPLATE_CHANGED" else ApiError
        return cls(r.code, r.message, headers=headers, details=r.details)
    return ApiError(
        "ACCOUNT_RATE_LIMIT",
        f"account rate of {account.tps:g} messages/s exceeded",
        headers={"Retry-After": str(max(1, math.ceil(outcome.retry_after)))},
    )


def after_accept(
    ctx: ApiContext, account: Account, messages: list[NewMessage], outcome: AcceptOutcome
) -> None:
    plan = outcome.plan
    if plan is not None and plan.low_balance is not None:
        before, after = plan.low_balance
        billing.warn_low_balance(log, ctx.metrics, account.id, before, after)
    segments = 0
    for m in messages:  # a loop, not sum() of a generator: ~3,000 instructions less a send
        segments += len(m.segments)
    ctx.queue_depth += segments
    ctx.on_accepted(segments)
    ctx.metrics.accepted(len(messages), segments)
    if log.isEnabledFor(logging.DEBUG):
        for m in messages:
            log.debug(
                "message accepted",
                extra={
                    "message_id": m.id,
                    "batch_id": m.batch_id,
                    "account": m.account_id,
                    "to": logs.number(m.recipient),
                    "segments": len(m.segments),
                    "encoding": m.encoding,
                    "text": logs.body(m.text),
                },
            )
