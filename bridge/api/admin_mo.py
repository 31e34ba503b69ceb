"""GET /admin/mo?unattributed=1: the replies (MOs) stored for no account.

Why: smpp_bridge_mo_unattributed_total counts them (no account's message went to that number
from the address the reply went to), and nobody is told of one: a STOP among them opted no one
out. The operator needs to see which they are (a source number read wrongly after a carrier
change, see smscs[].national_prefix) without reading the database. An account's own replies
reach it through its mo_callback_url; this lists only the ones no account gets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from bridge.api.admin_ops import MAX_LIST, int_param
from bridge.api.context import query_of
from bridge.api.errors import ApiError
from bridge.api.reports import query_params
from bridge.api.v1 import ctx_of, json_response
from bridge.api.views import mo_report
from bridge.store.models import MoMessage

# (received_at, id) of a page's last reply: ids are hashes, not time-ordered, so both. Both
# forms of id: today's 24 base32 characters, and the 26-character time-ordered ids (ids.new_id)
# that stores begun before 2026-11-30 hold MOs under (a page ending on one must go on).
_CURSOR = re.compile(r"([0-9]{1,15})\.(mo_(?:[a-z2-7]{24}|[0-9A-Z]{26}))")
_YES = ("1", "true")


def mo_view(mo: MoMessage) -> dict[str, Any]:
    """An MO as its native webhook report renders it (views.mo_report), less the report's own
    fields: its type, and the sign name of the message it answers (these answer none)."""
    view = mo_report(mo)
    del view["type"], view["sign_name"]
    return view


def mo_cursor(mo: MoMessage) -> str:
    return f"{mo.received_at}.{mo.id}"


def parse_cursor(cursor: str) -> tuple[int, str]:
    m = _CURSOR.fullmatch(cursor)
    if m is None:
        raise ApiError("INVALID_CURSOR", "cursor: not a cursor returned by this API")
    return int(m[1]), m[2]


def parse_query(query: Mapping[str, str]) -> tuple[tuple[int, str] | None, int]:
    """(after, limit) of a listing, or the refusal."""
    q = query_params(query, ("unattributed", "cursor", "limit"))
    if "unattributed" not in q:
        raise ApiError(
            "MISSING_FIELD",
            "unattributed: required, 1 (the replies stored for no account; an account's own "
            "reach its mo_callback_url)",
        )
    if q["unattributed"] not in _YES:
        raise ApiError("INVALID_FIELD", "unattributed: 1 (only those stored for no account)")
    limit = int_param(q, "limit", 100, 1, MAX_LIST)
    return (parse_cursor(q["cursor"]) if "cursor" in q else None), limit


async def list_mo(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    before, limit = parse_query(query_of(request))
    rows = await ctx.store.unattributed_mo(before, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return json_response(
        {
            "mo": [mo_view(m) for m in rows],
            "next_cursor": mo_cursor(rows[-1]) if more else None,
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/mo", list_mo)
