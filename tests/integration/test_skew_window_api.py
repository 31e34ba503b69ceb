"""Raising the allowed clock skew does not reopen replay (bridge/domain/skew_window.py), on
both engines and both signed faces, through a real HTTP server restarted on the same store.

Nonces are kept for twice the skew in force when spent. After a restart with a wider skew,
requests dated further in the past than the old skew are refused for old + new seconds (until
every nonce spent under the old skew would have been kept long enough); then the whole new
window applies. A restart during that transition keeps it (the window is in the store).
"""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer

import tests.store_engines as engines
from bridge.compat.aliyun_api import make_aliyun_app
from tests.integration.conftest import ApiServer, Clock, Creds, start_api
from tests.integration.test_aliyun_api import Face, raw_post, rpc_v1_params, rpc_v1_query, utc_stamp

engine = engines.engine
store = engines.store

TEMPLATE = {"type": "verification", "name": "otp", "content": "Your code is ${code}."}


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


async def restart(
    engine: engines.EngineHandle, tmp_path: Path, clock: Clock, key: str, **skews: int
) -> ApiServer:
    overrides: dict[str, Any] = {
        "security": {"master_key": key},
        "server": {"clock_skew_s": skews.get("native", 300)},
        "aliyun": {"enabled": True, "clock_skew_s": skews.get("aliyun", 900)},
    }
    return await start_api(tmp_path, clock, overrides, store=engine.new_store())


async def templates(api: ApiServer, creds: Creds, late_s: int) -> Any:
    """GET /v1/templates signed `late_s` seconds before the server's clock, fresh nonce."""
    return await api.request(
        "GET", "/v1/templates", creds=creds, when=at(api.clock() - late_s), validate=False
    )


async def test_native_face_refuses_requests_older_than_the_old_skew_until_it_settles(
    engine: engines.EngineHandle, tmp_path: Path, clock: Clock
) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    t0 = clock.freeze()
    api = await restart(engine, tmp_path, clock, key)
    try:
        creds = await api.create_account()
        assert (await templates(api, creds, 290)).status == 200
        assert (await templates(api, creds, 310)).code == "REQUEST_EXPIRED"
    finally:
        await api.close()

    clock.freeze(t0 + 700)
    api = await restart(engine, tmp_path, clock, key, native=900)
    try:
        refused = await templates(api, creds, 400)
        assert (refused.status, refused.code) == (401, "REQUEST_EXPIRED")
        assert "-300 s to +900 s" in refused.json["error"]["message"]
        assert (await templates(api, creds, 290)).status == 200
        ahead = await api.request(
            "GET", "/v1/templates", creds=creds, when=at(clock() + 800), validate=False
        )
        assert ahead.status == 200  # the future side is the new skew at once
    finally:
        await api.close()

    clock.freeze(t0 + 1_500)  # restarted again inside the transition: it starts over
    api = await restart(engine, tmp_path, clock, key, native=900)
    try:
        assert (await templates(api, creds, 400)).code == "REQUEST_EXPIRED"
        clock.freeze(t0 + 1_500 + 1_199)
        assert (await templates(api, creds, 400)).code == "REQUEST_EXPIRED"
        clock.freeze(t0 + 1_500 + 1_200)
        settled = await templates(api, creds, 890)
        assert settled.status == 200, settled.json
    finally:
        await api.close()


async def test_the_captured_request_of_before_the_raise_is_not_replayed(
    engine: engines.EngineHandle, tmp_path: Path, clock: Clock
) -> None:
    """The review's case on each engine: captured 700 s before a restart that raised 300 ->
    900; the replay is refused and files nothing."""
    key = base64.b64encode(os.urandom(32)).decode()
    t0 = clock.freeze()
    api = await restart(engine, tmp_path, clock, key)
    when, nonce = clock.utc(), "n" * 24
    try:
        creds = await api.create_account()
        first = await api.request(
            "POST", "/v1/templates", creds=creds, json=TEMPLATE, nonce=nonce, when=when
        )
        assert first.status == 201
    finally:
        await api.close()
    clock.freeze(t0 + 700)
    api = await restart(engine, tmp_path, clock, key, native=900)
    try:
        replay = await api.request(
            "POST", "/v1/templates", creds=creds, json=TEMPLATE, nonce=nonce, when=when,
            validate=False,
        )  # fmt: skip
        listed = await api.request("GET", "/v1/templates", creds=creds)
    finally:
        await api.close()
    assert (replay.status, replay.code) == (401, "REQUEST_EXPIRED")
    assert len(listed.json["templates"]) == 1


async def test_alibaba_face_keeps_its_own_window(
    engine: engines.EngineHandle, tmp_path: Path, clock: Clock
) -> None:
    """aliyun.clock_skew_s raised 900 -> 1800: a call dated 1,000 s ago is refused with
    InvalidTimeStamp.Expired until 2,700 s after the restart; the native face, unchanged,
    keeps its 300 s."""
    key = base64.b64encode(os.urandom(32)).decode()
    t0 = clock.freeze()
    api = await restart(engine, tmp_path, clock, key)
    try:
        creds = await api.create_account()
    finally:
        await api.close()

    async def query_sign(api: ApiServer, late_s: int) -> Any:
        server = TestServer(make_aliyun_app(api.ctx), host="127.0.0.1", port=0)
        await server.start_server()
        try:
            params = rpc_v1_params(creds, "QuerySmsSignList")
            params["Timestamp"] = utc_stamp(clock() - late_s)
            face = Face(api, server, clock)
            return await raw_post(face, rpc_v1_query(params, creds.app_secret))
        finally:
            await server.close()

    clock.freeze(t0 + 10)
    api = await restart(engine, tmp_path, clock, key, aliyun=1_800)
    try:
        refused = await query_sign(api, 1_000)
        assert (refused.status, refused.json["Code"]) == (400, "InvalidTimeStamp.Expired")
        assert "-900 s to +1800 s" in refused.json["Message"]
        assert (await query_sign(api, 800)).status == 200
        assert (await templates(api, creds, 290)).status == 200
        clock.freeze(t0 + 10 + 2_700)
        assert (await query_sign(api, 1_000)).status == 200
    finally:
        await api.close()
