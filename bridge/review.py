"""Sign names and templates: customer submissions, the automatic review, the operator's decision.

A submission is validated and auto-reviewed here (bridge.domain.signs / templates hold the rules);
anything the automatic review rejects is stored as rejected with every reason, so the customer
sees why at GET /v1/templates/{code}; the rest waits for an operator (`smpp-bridge template
review`, /admin/templates). One service for the API and the CLI.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import Any

from bridge.config import Config
from bridge.domain.content_filter import ContentFilter
from bridge.domain.signs import SignError, canonical, ensure_not_taken, impersonates
from bridge.domain.signs import validate_sign_name as _validate_sign_name
from bridge.domain.templates import TemplateKind, review
from bridge.store.models import Sign, Template

SIGN_SOURCES = ("company", "trademark", "app", "website", "public_account", "other")
TEMPLATE_KINDS = tuple(k.value for k in TemplateKind)
_DECISIONS = {"approve": "approved", "reject": "rejected"}


class ReviewError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _fields(body: Any, allowed: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ReviewError("INVALID_REQUEST", "the body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ReviewError("UNKNOWN_FIELD", f"{unknown[0]}: unknown field")
    for name in sorted(required):
        if body.get(name) is None:
            raise ReviewError("MISSING_FIELD", f"{name}: required")
    return body


def _text(body: dict[str, Any], name: str, max_len: int, default: str = "") -> str:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ReviewError("INVALID_FIELD", f"{name}: expected a string")
    if len(value) > max_len:
        raise ReviewError("INVALID_FIELD", f"{name}: at most {max_len} characters")
    return value


def validate_sign_name(name: Any) -> str:
    if not isinstance(name, str):
        raise ReviewError("INVALID_FIELD", "name: expected a string")
    try:
        return _validate_sign_name(name)
    except SignError as exc:
        raise ReviewError(exc.code, exc.message) from None


async def _approved_of_others(store: Any, account_id: str) -> list[str]:
    return [
        s.name
        for s in await store.list_signs(status="approved", limit=1_000_000)
        if s.account_id != account_id
    ]


async def submit_sign(store: Any, account_id: str, body: Any, now: int) -> Sign:
    data = _fields(body, {"name", "source", "remark"}, {"name"})
    name = validate_sign_name(data["name"])
    source = data.get("source")
    if source is None:
        source = "company"
    if not isinstance(source, str) or source not in SIGN_SOURCES:
        raise ReviewError("INVALID_FIELD", f"source: one of {', '.join(SIGN_SOURCES)}")
    remark = _text(data, "remark", 500)
    others = await _approved_of_others(store, account_id)
    try:
        ensure_not_taken(name, others)
    except SignError as exc:
        raise ReviewError(exc.code, exc.message) from None
    similar = impersonates(name, others)
    flag = f"resembles the approved sign {similar!r} of another account" if similar else None
    sign = Sign(account_id, name, canonical(name), source, remark, "pending", None, flag, now)
    await store.add_sign(sign)
    return sign


def new_template_code() -> str:
    """Codes look like the cloud service's ("SMS_" + 9 digits), so migrating clients keep theirs'
    shape; random, so they reveal nothing about other accounts' templates."""
    return f"SMS_{secrets.randbelow(900_000_000) + 100_000_000}"


_TEMPLATE_FIELDS = {"type", "name", "content", "remark", "allow_urls", "international"}
_FLAGS = ("allow_urls", "international")


def _template_values(data: dict[str, Any]) -> dict[str, Any]:
    """The Template fields of a submission, or of a correction merged over the template it
    corrects (kind, name, content, remark, allow_urls, international)."""
    kind = data["type"]
    if kind not in TEMPLATE_KINDS:
        raise ReviewError("INVALID_FIELD", f"type: one of {', '.join(TEMPLATE_KINDS)}")
    name = _text(data, "name", 64)
    if not name.strip():
        raise ReviewError("INVALID_FIELD", "name: must not be empty")
    out: dict[str, Any] = {
        "kind": kind,
        "name": name,
        "content": _text(data, "content", 2000),
        "remark": _text(data, "remark", 500),
    }
    for flag in _FLAGS:
        value = data.get(flag, False)
        if not isinstance(value, bool):
            raise ReviewError("INVALID_FIELD", f"{flag}: expected true or false")
        out[flag] = value
    return out


async def _auto_review(
    store: Any,
    account_id: str,
    kind: str,
    content: str,
    config: Config,
    content_filter: ContentFilter,
) -> tuple[str, str | None]:
    """(status, reason) the automatic review gives: pending (for an operator) or rejected."""
    longest = max((len(s.name) for s in await store.list_signs(account_id=account_id)), default=0)
    result = review(
        TemplateKind(kind),
        content,
        content_filter=content_filter,
        sign_format=config.text.sign_format,
        longest_sign=longest,
        max_chars=config.text.max_chars,
    )
    if result.approved:
        return "pending", None
    return "rejected", "; ".join(
        f"{c}: {r}" for c, r in zip(result.codes, result.reasons, strict=True)
    )


async def submit_template(
    store: Any, account_id: str, body: Any, now: int, config: Config, content_filter: ContentFilter
) -> Template:
    data = _fields(body, _TEMPLATE_FIELDS, {"type", "name", "content"})
    values = _template_values(data)
    status, reason = await _auto_review(
        store, account_id, values["kind"], values["content"], config, content_filter
    )
    for _attempt in range(5):
        t = Template(
            code=new_template_code(),
            account_id=account_id,
            status=status,
            reason=reason,
            created_at=now,
            reviewed_at=None,  # an operator's decision; an automatic rejection leaves it unset
            **values,
        )
        try:
            await store.add_template(t)
            return t
        except Exception as exc:  # a code collision (1 in 10^8): draw again
            if "UNIQUE" not in str(exc).upper() and "duplicate" not in str(exc).lower():
                raise
    raise ReviewError("INTERNAL_ERROR", "could not allocate a template code")


def _no_nulls(data: dict[str, Any]) -> None:
    """A correction's fields are values: a field left out is kept, a null is refused (it read
    as "keep" and counted a revision for nothing)."""
    for name in sorted(data):
        if data[name] is None:
            raise ReviewError("INVALID_FIELD", f"{name}: a value (leave it out to keep it)")


def _not_editable(what: str, status: str) -> str:
    if status == "approved":
        return f"{what} is approved; only a rejected one can be corrected (submit a new one)"
    return f"{what} is {status}; only a rejected one can be corrected (wait for the review)"


async def edit_template(
    store: Any,
    account_id: str,
    code: str,
    body: Any,
    now: int,
    config: Config,
    content_filter: ContentFilter,
) -> Template:
    """Correct a rejected template under the same code: the fields given replace the stored ones,
    the automatic review runs again, and the result waits for an operator (or is rejected
    again, with its reasons). Its revision counts the correction, so no process sends the old
    text from its cache (rules.SendRules)."""
    data = _fields(body, _TEMPLATE_FIELDS, set())
    if not data:
        raise ReviewError("MISSING_FIELD", f"one of {', '.join(sorted(_TEMPLATE_FIELDS))}")
    _no_nulls(data)
    t = await store.get_template(code)
    if t is None or t.account_id != account_id:
        raise ReviewError("NOT_FOUND", f"no template {code!r}")
    if t.status != "rejected":
        raise ReviewError("TEMPLATE_NOT_EDITABLE", _not_editable(f"template {code}", t.status))
    # The stored fields as a submission names them (the view's names), the correction over them.
    merged = {k: v for k, v in template_view(t).items() if k in _TEMPLATE_FIELDS}
    merged.update(data)
    values = _template_values(merged)
    status, reason = await _auto_review(
        store, account_id, values["kind"], values["content"], config, content_filter
    )
    new = replace(
        t,
        **values,
        status=status,
        reason=reason,
        reviewed_at=None,  # the review starts over
        revision=t.revision + 1,
        updated_at=now,
    )
    if not await store.edit_template(new):
        now_t = await store.get_template(code)
        if now_t is None:
            raise ReviewError("NOT_FOUND", f"no template {code!r}")
        raise ReviewError(
            "TEMPLATE_NOT_EDITABLE",
            _not_editable(f"template {code}", now_t.status)
            if now_t.status != "rejected"
            else f"template {code} was corrected meanwhile; read it again",
        )
    return new


async def edit_sign(
    store: Any, account_id: str, name: str, body: Any, now: int, *, unchanged: bool = False
) -> Sign:
    """Correct a rejected sign name's papers (source, remark) and send it for review again. The
    name itself is what was reviewed: a different name is a new submission. `unchanged`: an
    empty correction resubmits it as it is (the Alibaba face, whose papers we do not keep)."""
    data = _fields(body, {"source", "remark"}, set())
    if not data and not unchanged:
        raise ReviewError("MISSING_FIELD", "one of remark, source")
    _no_nulls(data)
    sign = await store.get_sign(account_id, name)
    if sign is None:
        raise ReviewError("NOT_FOUND", f"no sign name {name!r}")
    if sign.status != "rejected":
        raise ReviewError("SIGN_NOT_EDITABLE", _not_editable(f"sign name {name!r}", sign.status))
    source = data.get("source", sign.source)
    if not isinstance(source, str) or source not in SIGN_SOURCES:
        raise ReviewError("INVALID_FIELD", f"source: one of {', '.join(SIGN_SOURCES)}")
    remark = _text(data, "remark", 500, sign.remark)
    others = await _approved_of_others(store, account_id)
    try:  # taken by another account since it was submitted: it could never be approved
        ensure_not_taken(name, others)
    except SignError as exc:
        raise ReviewError(exc.code, exc.message) from None
    similar = impersonates(name, others)
    flag = f"resembles the approved sign {similar!r} of another account" if similar else None
    new = replace(
        sign, source=source, remark=remark, status="pending", reason=None, flag=flag,
        reviewed_at=None, updated_at=now,
    )  # fmt: skip
    if not await store.edit_sign(new):
        now_s = await store.get_sign(account_id, name)
        if now_s is None:
            raise ReviewError("NOT_FOUND", f"no sign name {name!r}")
        raise ReviewError("SIGN_NOT_EDITABLE", _not_editable(f"sign name {name!r}", now_s.status))
    return new


def decision(value: Any, reason: Any) -> tuple[str, str | None]:
    if not isinstance(value, str) or value not in _DECISIONS:  # [] or {} is not hashable
        raise ReviewError("INVALID_FIELD", "decision: 'approve' or 'reject'")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
        raise ReviewError("INVALID_FIELD", "reason: a string of at most 500 characters")
    status = _DECISIONS[value]
    if status == "rejected" and not (reason or "").strip():
        raise ReviewError("MISSING_FIELD", "reason: required when rejecting")
    return status, reason


async def decide_template(
    store: Any, code: str, value: Any, reason: Any, now: int, revision: Any = None
) -> Template:
    """The operator's decision. With `revision` (what the operator read), a template corrected
    since is refused TEMPLATE_CHANGED rather than decided unseen."""
    status, why = decision(value, reason)
    if revision is not None and (type(revision) is not int or revision < 1):
        raise ReviewError("INVALID_FIELD", "revision: a positive integer (the one read)")
    t = await store.get_template(code)
    if t is None:
        raise ReviewError("NOT_FOUND", f"no template {code!r}")
    if revision is not None and t.revision != revision:
        raise ReviewError(
            "TEMPLATE_CHANGED",
            f"template {code} is at revision {t.revision}, not {revision}: read it again",
        )
    if status == "approved" and t.status == "rejected" and t.reviewed_at is None:
        raise ReviewError(
            "INVALID_REQUEST",
            f"template {code} was rejected by the automatic review ({t.reason}); "
            "the customer must submit a corrected template",
        )
    out = await store.review_template(code, status, why, now, t.revision)
    if out is None:
        raise ReviewError("NOT_FOUND", f"no template {code!r}")
    if out.revision != t.revision:  # corrected between the read and the decision
        raise ReviewError(
            "TEMPLATE_CHANGED",
            f"template {code} was corrected (revision {out.revision}) while it was decided; "
            "read it again",
        )
    return out


async def decide_sign(
    store: Any, account_id: str, name: str, value: Any, reason: Any, now: int
) -> Sign:
    status, why = decision(value, reason)
    sign = await store.get_sign(account_id, name)
    if sign is None:
        raise ReviewError("NOT_FOUND", f"no sign {name!r} for account {account_id}")
    if status == "approved":
        try:
            ensure_not_taken(name, await _approved_of_others(store, account_id))
        except SignError as exc:
            raise ReviewError(exc.code, exc.message) from None
    out = await store.review_sign(account_id, name, status, why, now)
    assert out is not None
    return out


def sign_view(s: Sign, *, operator: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": s.name,
        "source": s.source,
        "remark": s.remark,
        "status": s.status,
        "reason": s.reason,
        "created_at": s.created_at,
        "reviewed_at": s.reviewed_at,
        "updated_at": s.updated_at,
    }
    if operator:
        out["account"] = s.account_id
        out["flag"] = s.flag
    return out


def template_view(t: Template, *, operator: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "code": t.code,
        "type": t.kind,
        "name": t.name,
        "content": t.content,
        "remark": t.remark,
        "allow_urls": t.allow_urls,
        "international": t.international,
        "status": t.status,
        "reason": t.reason,
        "created_at": t.created_at,
        "reviewed_at": t.reviewed_at,
        "revision": t.revision,
        "updated_at": t.updated_at,
    }
    if operator:
        out["account"] = t.account_id
    return out
