"""Rotating a webhook secret with an overlap (`account rotate-webhook-secret --overlap-hours`):
the old secret signs beside the new one until the overlap ends, so a customer's receiver, still
verifying with the old secret, or already with the new one, accepts every report. A real daemon,
its simulator and a real receiver checking X-Bridge-Signature."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.api import signing
from bridge.app import Daemon
from tests.e2e.harness import (
    WebhookReceiver,
    client_for,
    create_account,
    final_status,
    make_config,
    wait_until,
)

CN = "+8613800138000"


async def _report_header(d: Daemon, creds: dict[str, str], receiver: WebhookReceiver) -> str:
    """Send one message; the X-Bridge-Signature of its status report."""
    before = len(receiver.requests)
    async with client_for(d.http_port, creds) as c:
        r = await c.send(CN, text="hi")
        await final_status(c, r["messages"][0]["id"], 15)
    await wait_until(lambda: len(receiver.requests) > before, 15, 0.02)
    return receiver.requests[-1]["headers"][signing.WEBHOOK_HEADER]


def _v1s(header: str) -> int:
    return sum(part.strip().startswith("v1=") for part in header.split(","))


@contextlib.asynccontextmanager
async def _daemon_and_receiver(tmp_path: Path) -> AsyncIterator[tuple[Daemon, WebhookReceiver]]:
    """A started daemon with its simulator bound, and a customer's receiver."""
    d = Daemon(make_config(tmp_path))
    await d.start()
    receiver = WebhookReceiver()
    await receiver.start()
    try:
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        yield d, receiver
    finally:
        await d.stop()
        await receiver.stop()


async def test_the_old_secret_signs_beside_the_new_one_during_the_overlap(tmp_path: Path) -> None:
    d = Daemon(make_config(tmp_path))
    await d.start()
    old_receiver = WebhookReceiver()  # the customer's receiver, not updated yet
    await old_receiver.start()
    try:
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        creds = await create_account(d, "acme", status_callback_url=old_receiver.url)
        old = creds["webhook_secret"]
        old_receiver.secret = old
        assert _v1s(await _report_header(d, creds, old_receiver)) == 1

        svc = d.ctx.accounts
        account, new = await svc.rotate_webhook_secret("acme", int(time.time() * 1000))
        assert account.prev_webhook_secret_until is not None
        header = await _report_header(d, creds, old_receiver)  # verified with the old secret
        assert _v1s(header) == 2 and old_receiver.bad_signatures == 0
        old_receiver.secret = new  # the customer updates its receiver: still verified
        assert _v1s(await _report_header(d, creds, old_receiver)) == 2
        assert old_receiver.bad_signatures == 0

        # Overlap 0: the previous secret stops signing at once.
        account, newest = await svc.rotate_webhook_secret("acme", int(time.time() * 1000), 0)
        assert account.prev_webhook_secret_enc is None and account.prev_webhook_secret_until is None
        old_receiver.secret = newest
        assert _v1s(await _report_header(d, creds, old_receiver)) == 1
        assert old_receiver.bad_signatures == 0
    finally:
        await d.stop()
        await old_receiver.stop()


async def test_an_overlap_that_ended_signs_with_the_new_secret_alone(tmp_path: Path) -> None:
    async with _daemon_and_receiver(tmp_path) as (d, receiver):
        creds = await create_account(d, "acme", status_callback_url=receiver.url)
        _acc, new = await d.ctx.accounts.rotate_webhook_secret(
            "acme", int(time.time() * 1000), 1
        )  # 1 ms: over before the report
        receiver.secret = new
        header = await _report_header(d, creds, receiver)
        assert _v1s(header) == 1 and receiver.bad_signatures == 0


# -- the store's side, both engines (CI=1 needs PostgreSQL) ------------------------------------

import tests.store_engines as engines  # noqa: E402

engine = engines.engine
store = engines.store


async def test_rotation_keeps_the_previous_secret_on_each_engine(store: object) -> None:
    import os

    from bridge.accounts import AccountService
    from bridge.crypto import Sealer

    svc = AccountService(store, Sealer(os.urandom(32)))  # type: ignore[arg-type]
    now = 1_700_000_000_000
    creds = await svc.create("acme", {"raw_text": True}, now)
    _account, new = await svc.rotate_webhook_secret("acme", now, 3_600_000)
    stored = await store.get_account(creds.account.id)  # type: ignore[attr-defined]
    assert stored.prev_webhook_secret_until == now + 3_600_000
    assert svc.webhook_secrets(stored, now) == [new, creds.webhook_secret]
    assert svc.webhook_secrets(stored, now + 3_600_000) == [new]  # the overlap is over
    _a, newest = await svc.rotate_webhook_secret("acme", now + 1, 0)
    stored = await store.get_account(creds.account.id)  # type: ignore[attr-defined]
    assert (stored.prev_webhook_secret_enc, stored.prev_webhook_secret_until) == (None, None)
    assert svc.webhook_secrets(stored, now + 1) == [newest]
    kinds = sorted(k for k, _i, _b in await store.sealed_secrets())  # type: ignore[attr-defined]
    assert kinds == ["account", "key"]


async def test_a_webhook_secret_that_does_not_open_is_retried_with_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An account's webhook secret sealed under a key this daemon lacks (a store restored from
    elsewhere, a rotation's previous key dropped early): its reports cannot be signed. They are
    retried on the schedule with the reason on the report, and an ERROR line says which key,
    not a traceback at every lease's end with the reports left leased."""
    import logging
    import os
    import sqlite3

    from bridge.crypto import Sealer

    async with _daemon_and_receiver(tmp_path) as (d, receiver):
        creds = await create_account(d, "acme", status_callback_url=receiver.url)
        foreign = Sealer(os.urandom(32)).seal("whsec_elsewhere", creds["account"])
        now = int(time.time() * 1000)
        await d.ctx.store.update_account(creds["account"], {"webhook_secret_enc": foreign}, now)
        db = str(d.config.store.path)

        def retried() -> tuple[int, str] | None:
            with sqlite3.connect(db) as c:
                row = c.execute(
                    "SELECT attempts, last_error FROM webhook_outbox WHERE kind='status'"
                ).fetchone()
            return row if row and row[0] >= 1 else None

        with caplog.at_level(logging.INFO, logger="bridge"):
            async with client_for(d.http_port, creds) as c:
                r = await c.send(CN, text="hi")
                await final_status(c, r["messages"][0]["id"], 15)
            _attempts, error = await wait_until(retried, 15, 0.05)
        assert error.startswith("webhook secret does not open: sealed secret is under master key")
        assert receiver.requests == []
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any(
            f"webhook secret of account {creds['account']} does not open" in m for m in errors
        )
