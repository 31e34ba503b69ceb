"""PUT /admin/dnc/{id} with the body parsed a line at a time (admin_rules._body_lines): the same
answers as when it was decoded whole, on a real server. Bad lines: all counted, the first 20 in
the refusal, the first 100 in `skipped`; a byte that is not UTF-8 anywhere refuses the list."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bridge.api.admin_rules import _body_lines
from bridge.domain.dnc import parse_dnc_lines


async def _dnc(api: Any, list_id: str, body: bytes, query: str = "") -> Any:
    return await api.admin("PUT", f"/admin/dnc/{list_id}", body=body, query=query,
                           content_type="text/csv")  # fmt: skip


async def test_bad_lines_counted_all_listed_first(api_server):
    body = b"msisdn\r\n+8613800138000\r\n" + b"12345\r\n" * 250 + b"+86139*\r\n"
    r = await _dnc(api_server, "l1", body, "country=CN")
    assert (r.status, r.code) == (400, "INVALID_FIELD")
    assert r.message.startswith("250 bad line(s), nothing imported (strict=false skips them): ")
    assert r.message.count("line ") == 20
    assert "line 3: " in r.message and "line 22: " in r.message and "line 23: " not in r.message
    assert (await api_server.admin("GET", "/admin/dnc")).json == {"lists": []}

    r = await _dnc(api_server, "l1", body, "country=CN&strict=false")
    assert r.status == 200
    assert (r.json["numbers"], r.json["prefixes"]) == (1, 1)
    assert len(r.json["skipped"]) == 100
    assert r.json["skipped"][0].startswith("line 3: ")
    assert r.json["skipped"][-1].startswith("line 102: ")
    assert await api_server.store.dnc_blocks("+8613800138000")
    assert await api_server.store.dnc_blocks("+8613900000001")


async def test_a_byte_not_utf8_late_in_the_body_refuses_the_list(api_server):
    body = b"".join(b"+861380013%04d\n" % k for k in range(5000)) + b"+86138\xff0000000\n"
    r = await _dnc(api_server, "l1", body)
    assert (r.status, r.code) == (400, "INVALID_REQUEST")
    assert "UTF-8" in r.message
    assert (await api_server.admin("GET", "/admin/dnc")).json == {"lists": []}
    assert not await api_server.store.dnc_blocks("+8613800130000")


async def test_the_server_keeps_answering_while_a_large_list_parses(make_api):
    api_server = await make_api({"server": {"max_body_bytes": 16 * 1_048_576}})
    # On the event loop, every other request of the process waited for the whole parse; in a
    # thread the loop gets the GIL back every switch interval (5 ms).
    body = b"".join(b"+86138%08d\n" % k for k in range(400_000))
    t = time.perf_counter()
    parse_dnc_lines(_body_lines(body), None)  # how long the parse alone takes here
    parse_s = time.perf_counter() - t
    loop = asyncio.get_running_loop()
    put = asyncio.ensure_future(_dnc(api_server, "big", body))
    slowest, last = 0.0, loop.time()  # the longest time from one GET's answer to the next's
    while not put.done():
        r = await api_server.admin("GET", "/admin/dnc")
        assert r.status == 200
        slowest, last = max(slowest, loop.time() - last), loop.time()
        await asyncio.sleep(0.01)
    assert (await put).status == 200
    assert slowest < parse_s / 3, f"a GET waited {slowest:.2f} s; the parse takes {parse_s:.2f}"
