"""A HEAD request and the nonce of a signed GET (real aiohttp server, real socket).

aiohttp answers HEAD with the GET handler, and the signed API records a request's nonce once
its signature verified. The worry: a signed HEAD on a GET endpoint spends the nonce, so the same
signed request sent afterwards as GET is refused as a replay. Checked, and not a defect:

- The method is part of what is signed (bridge/api/signing.py, the canonical request's first
  line, `request.method` as received), so HEAD and GET of one path are different requests with
  different signatures. A GET's signed headers sent with HEAD fail verification before any
  nonce is recorded (forged requests can never spend one), and the GET then goes through.
- A HEAD is a GET without a body, so it is authenticated like one: unsigned or badly signed it
  is refused, signed as HEAD it is answered (no body) and spends its own nonce, a request of
  its own: sent again it is a replay, and a GET reusing that nonce is refused too (a nonce is
  one request's, whatever its method). A client signs each request with a fresh nonce.

The Alibaba face is the same: RPC v1's string to sign starts with the method, ACS3's canonical
request too, and SignatureNonce is recorded only after the signature verified.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from yarl import URL

from tests.integration.conftest import ApiServer, Creds, new_nonce, prepare_headers
from tests.integration.test_aliyun_api import Face, face, rpc_v1_params, rpc_v1_query

__all__ = ["face"]  # the Alibaba face's fixture, used here

PATH = "/v1/account"


async def call(api: ApiServer, creds: Creds | None, signed_as: str, sent_as: str, nonce: str
               ) -> tuple[int, bytes, dict[str, Any]]:  # fmt: skip
    """Sign a request for `signed_as` with `nonce` and send it with `sent_as`."""
    headers = prepare_headers(
        api.host, signed_as, PATH, "", b"", creds=creds, headers=None, content_type=None,
        idempotency_key=None, when=api.clock.utc(), nonce=nonce,
    )  # fmt: skip
    async with api.session.request(
        sent_as, URL(api.url + PATH, encoded=True), headers=headers
    ) as r:
        return r.status, await r.read(), dict(r.headers)


async def code_of(api: ApiServer, creds: Creds, nonce: str) -> tuple[int, str | None]:
    status, body, _ = await call(api, creds, "GET", "GET", nonce)
    return status, (None if status == 200 else json.loads(body)["error"]["code"])


async def test_a_get_signed_request_sent_as_head_spends_no_nonce(
    api_server: ApiServer, make_account: Callable[..., Awaitable[Creds]]
) -> None:
    api = api_server
    creds = await make_account()
    nonce = new_nonce()
    status, body, _ = await call(api, creds, "GET", "HEAD", nonce)
    assert status == 401 and body == b""  # the signature covers the method: HEAD is not GET
    assert await code_of(api, creds, nonce) == (200, None)  # the GET goes through after it
    assert await code_of(api, creds, nonce) == (401, "NONCE_REUSED")  # and spent it


async def test_a_head_is_authenticated_and_spends_its_own_nonce(
    api_server: ApiServer, make_account: Callable[..., Awaitable[Creds]]
) -> None:
    api = api_server
    creds = await make_account()
    assert (await call(api, None, "HEAD", "HEAD", new_nonce()))[0] == 401  # unsigned
    nonce = new_nonce()
    status, body, headers = await call(api, creds, "HEAD", "HEAD", nonce)
    assert status == 200 and body == b""
    assert headers["Content-Type"].startswith("application/json")
    assert (await call(api, creds, "HEAD", "HEAD", nonce))[0] == 401  # a replay
    assert await code_of(api, creds, nonce) == (401, "NONCE_REUSED")
    assert await code_of(api, creds, new_nonce()) == (200, None)


async def test_the_alibaba_face_signs_the_method_too(face: Face) -> None:
    creds = await face.api.create_account()
    params = rpc_v1_params(creds, "QuerySmsSign", SignName="Acme")
    query = rpc_v1_query(params, creds.app_secret, "GET")
    url = URL(f"{face.url}/?{query}", encoded=True)
    async with face.api.session.head(url) as resp:
        assert resp.status == 400  # SignatureDoesNotMatch: signed for GET
    async with face.api.session.get(url) as resp:  # its SignatureNonce was not spent
        assert resp.status == 200 and json.loads(await resp.read())["Code"] == "OK"
    async with face.api.session.get(url) as resp:
        assert json.loads(await resp.read())["Code"] == "SignatureNonceUsed"
