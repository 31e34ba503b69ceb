"""An app key's last use (`last_used_at`), for an operator deciding whether a key may be revoked:
the API on each store engine (real SQLite file, real PostgreSQL), real signed requests on both
faces, the admin listing read back through its OpenAPI schema.

The request path only notes the use in memory (bridge/api/key_use.py); a flush writes it. These
tests flush by hand; tests/e2e/test_key_last_used_daemon.py has the daemon's own flushes."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from alibabacloud_dysmsapi20170525 import models

import tests.store_engines as engines
from bridge.api import key_use
from bridge.store.base import Store
from bridge.store.models import Account, AppKey
from tests.integration.conftest import ApiServer, Creds
from tests.integration.test_aliyun_api import Face, face  # noqa: F401 (the fixture)
from tests.store_engines import EngineHandle

engine = engines.engine


async def _listed(api: ApiServer, creds: Creds) -> dict[str, Any]:
    """app key -> its entry in the admin API's listing (each answer checked against OpenAPI)."""
    r = await api.admin("GET", f"/admin/accounts/{creds.account_id}/keys")
    assert r.status == 200, r.text
    shown = await api.admin("GET", f"/admin/accounts/{creds.account_id}")
    assert shown.status == 200, shown.text
    assert shown.json["keys"] == r.json["keys"]
    return {k["app_key"]: k for k in r.json["keys"]}


async def _second_key(api: ApiServer, creds: Creds) -> str:
    r = await api.admin("POST", f"/admin/accounts/{creds.account_id}/keys")
    assert r.status == 201, r.text
    return str(r.json["app_key"])


async def test_a_signed_request_records_its_key_and_no_other(engine_api: ApiServer) -> None:
    api = engine_api
    creds = await api.create_account()
    other = await _second_key(api, creds)
    listed = await _listed(api, creds)
    assert listed[creds.app_key]["last_used_at"] is None  # never used since the upgrade
    assert listed[other]["last_used_at"] is None

    before = int(time.time() * 1000)
    r = await api.request("GET", "/v1/account", creds=creds)
    assert r.status == 200, r.text
    after = int(time.time() * 1000)
    assert (await _listed(api, creds))[creds.app_key]["last_used_at"] is None  # not yet flushed

    assert await api.ctx.auth.key_use.flush(api.store)
    listed = await _listed(api, creds)
    assert before <= listed[creds.app_key]["last_used_at"] <= after
    assert listed[other]["last_used_at"] is None
    key = await api.store.get_key(creds.app_key)
    assert key is not None and key.last_used_at == listed[creds.app_key]["last_used_at"]


async def test_a_forged_signature_is_no_use(engine_api: ApiServer) -> None:
    """Only a request whose signature checked proves someone holds the secret."""
    api = engine_api
    creds = await api.create_account()
    forged = api.creds_for(creds.account, creds.app_key, "not-the-secret")
    r = await api.request("GET", "/v1/account", creds=forged)
    assert (r.status, r.code) == (401, "SIGNATURE_MISMATCH"), r.text
    await api.ctx.auth.key_use.flush(api.store)
    assert (await _listed(api, creds))[creds.app_key]["last_used_at"] is None


async def test_fifty_requests_write_nothing_until_the_flush(engine_api: ApiServer) -> None:
    """The per-request cost: no write of the key's time on the request path, one at the flush."""
    api = engine_api
    creds = await api.create_account()
    calls: list[dict[str, int]] = []
    real = api.store.keys_used

    async def counted(used: Any) -> None:
        calls.append(dict(used))
        await real(used)

    api.store.keys_used = counted  # type: ignore[method-assign]
    for _ in range(50):
        r = await api.request("GET", "/v1/account", creds=creds)
        assert r.status == 200, r.text
    assert calls == []
    assert (await _listed(api, creds))[creds.app_key]["last_used_at"] is None
    await api.ctx.auth.key_use.flush(api.store)
    assert len(calls) == 1 and list(calls[0]) == [creds.app_key]
    assert (await _listed(api, creds))[creds.app_key]["last_used_at"] == calls[0][creds.app_key]


async def test_two_processes_flushing_never_move_a_time_back(engine: EngineHandle) -> None:
    """Each process (acceptor, instance) flushes its own map, in any order: the store keeps the
    later time. Two stores on one database stand for two processes."""
    one, two = engine.new_store(), engine.new_store()
    await one.open()
    await two.open()
    try:
        ids = await _keys(one, 3)
        await one.keys_used({ids[0]: 2_000_000, ids[1]: 1_000_000})
        await two.keys_used({ids[0]: 1_500_000, ids[1]: 1_200_000, "AK_NOBODY": 5})
        got = {k.key_id: k.last_used_at for k in await two.list_keys("acc_klu")}
        assert got == {ids[0]: 2_000_000, ids[1]: 1_200_000, ids[2]: None}
    finally:
        await two.close()
        await one.close()


async def test_a_flush_of_many_keys_goes_in_chunks_on_sqlite(
    engine: EngineHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush holds SQLite's write lock one chunk of keys at a time (Architecture note 18)."""
    monkeypatch.setattr("bridge.store.sqlite.KEYS_USED_CHUNK", 2)
    store = engine.new_store()
    await store.open()
    try:
        ids = await _keys(store, 5)
        before = engine.commits(store) if engine.commits else 0
        await store.keys_used({k: 1_000 + i for i, k in enumerate(ids)})
        if engine.commits is not None:
            assert engine.commits(store) - before == 3
        got = {k.key_id: k.last_used_at for k in await store.list_keys("acc_klu")}
        assert got == {k: 1_000 + i for i, k in enumerate(ids)}
    finally:
        await store.close()


async def test_a_store_outage_keeps_the_uses_and_logs_once(
    engine: EngineHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """The uses noted before and during an outage are written by the first flush after it; the
    outage is one log line, however many flushes fail, and its end one more."""
    store = engine.new_store()
    await store.open()
    ids = await _keys(store, 2)
    uses = key_use.KeyUse()
    uses.note(ids[0], 1_000)
    gone = engine.new_store()
    await gone.open()
    await gone.close()  # a store that refuses every call, as one cut off does
    try:
        with caplog.at_level(logging.INFO, logger="bridge.api"):
            assert not await uses.flush(gone)
            uses.note(ids[1], 2_000)
            uses.note(ids[0], 3_000)
            assert not await uses.flush(gone)
            assert not await uses.flush(gone)
            assert uses.noted == {ids[0]: 3_000, ids[1]: 2_000}
            assert await uses.flush(store)
        lines = [r.getMessage() for r in caplog.records if "last use" in r.getMessage()]
        assert len(lines) == 2, lines
        assert "not recorded" in lines[0] and "recorded again" in lines[1]
        got = {k.key_id: k.last_used_at for k in await store.list_keys("acc_klu")}
        assert got == {ids[0]: 3_000, ids[1]: 2_000}
        assert uses.noted == {}
    finally:
        await store.close()


async def test_the_alibaba_face_records_its_key_too(face: Face) -> None:  # noqa: F811
    api = face.api
    creds = await api.create_account()
    before = face.clock() * 1000
    await face.call(face.client(creds), "query_sms_sign_list", models.QuerySmsSignListRequest())
    await api.ctx.auth.key_use.flush(api.store)
    used = (await _listed(api, creds))[creds.app_key]["last_used_at"]
    assert used is not None and used >= before


def test_merged_keeps_the_later_time() -> None:
    assert key_use.merged({"a": 5, "b": 1}, {"a": 3, "b": 4, "c": 2}) == {"a": 5, "b": 4, "c": 2}


async def _keys(store: Store, n: int) -> list[str]:
    """An account with `n` keys, through the protocol's own writes."""
    await store.create_account(
        Account(id="acc_klu", name="klu", webhook_secret_enc=b"sealed", created_at=1, updated_at=1)
    )
    ids = [f"AK{i:024X}" for i in range(n)]
    for i, key_id in enumerate(ids):
        await store.add_key(AppKey(key_id, "acc_klu", b"sealed", "active", 1_000 + i), 10)
    return ids
