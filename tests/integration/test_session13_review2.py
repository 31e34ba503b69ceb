"""Session 13's second adversarial review: 9935003 (a part is not resent inside its claim after
its message was held) and 667bccd (master key rotation).

Real daemons on the built-in simulator (its submit handler scripted for one number: sit on a part,
answer it throttled or ESME_RSYSERR), real SQLite, PostgreSQL where marked (tests/store_engines.py;
CI=1 needs it), `smpp-bridge` as a subprocess, no mock of the code under test.

Checked right:
- every hold reason made while the SMSC sits on part 2, which it then answers throttled or
  ESME_RSYSERR, stops the resend: an API opt-out, an account disabled through the admin API, the
  template deleted or rejected, the sign deleted or rejected (admin API), a DNC import, an
  erasure (both engines): the SMSC sees parts 1 and 2 once each, the message ends expired with
  the hold's code, parts [delivered, expired_unsent, expired_unsent], 2/3 refunded; the status
  webhook says expired with the code (and no longer holds an erased number);
- a hold arriving after part 2 of 3 was accepted, part 3 throttled: [delivered, delivered,
  expired_unsent], 1/3 refunded, SMSC saw parts 1, 2, 3 in order and nothing again;
- with in_flight_on_restart: unknown the hold still stops a resend after an answered error;
- a message_held read that fails resends (the part goes out again and the message is delivered);
- no message_held read on the happy path (0 reads for three 3-part messages), one per throttle;
- store.message_held on both engines: unknown id, another account, a message whose own validity
  ran out before the hold (False: it ends VALIDITY_EXPIRED), a held one (True);
- master key rotation: invalid previous keys (not base64, 31 bytes from the env, an integer, a
  list) refused by `config check` naming the field and never printing the value; a valid one from
  the env masked; previous == current refused by the store commands in one clean line; a missing
  previous key file refused naming the file; `secrets reseal` JSON and exit codes on each engine
  (dry-run: to_reseal; exit 1 with --dry-run too while a secret opens with neither key; no key in
  any output at DEBUG logging); reseal racing rotate-webhook-secret, key create, key revoke and
  an account close (both engines): the rotated secret is left as rotated (changed_meanwhile 1),
  revoked keys and closed accounts are resealed and stay revoked/closed, the new key is current;
  after the rotation a revoked key is refused 401 KEY_REVOKED (not 500) by a daemon with the new
  key alone; a workers daemon (2 acceptors; the previous key in a file named relative to the
  configuration, which the acceptors read from a copy elsewhere) verifies every request while
  the reseal runs; the audit trail has each real reseal run (dry runs are not audited).

Found (fixed in the commit after this review; the tests below now pass):
- a throttle that pauses the bind (throttle_tolerance exceeded): the hold check runs right after
  the throttle answer, BEFORE the pause (`_send_part`: `_throttle`, `await self._held(context)`,
  `continue`, then `_submit_on` -> `_acquire` waits until `paused_until`), so a STOP that arrives
  during the pause (1-10 s by default, the longest window there is) is not seen: the part goes
  out again to the number that replied STOP and the message is delivered. The same on the
  transient path: after ESME_RINVBNDSTS the check runs after the back-off but before
  `_pick_bind` waits (up to 1 s) for the new bind; an opt-out meanwhile is not seen. The check
  belongs right before the PDU leaves (after the slot, the pause and the bind were waited for);
- `config check` passes security.previous_master_key equal to security.master_key (exit 0),
  while `run` and every store command refuse it ("the previous master key is the current one"):
  the check calls valid a configuration the daemon will not start with.
The fixes: the check is the resend's `before` hook, awaited holding its window slot right before
the PDU leaves (after the pause, the back-off and the wait for a new bind); the configuration
refuses a previous key equal to the current one. For the first doubt below, the report now says
`total` and the README's last step asks for already_current == total and nothing unreadable.

Doubts (no test asserts them):
- README step 3 says to drop the previous key "once it reports `resealed` 0"; a run on the wrong
  store (no --config: the built-in demo configuration, ./data/bridge.db, created and migrated on
  the spot) also reports resealed 0, already_current 0 and exits 0. `already_current` equal to
  the number of secrets is the signal; the README does not say so.
- a previous key file that is missing or bad is reported as "master key file ... does not
  exist" / "master key must decode to 32 bytes": only the path says it is the previous key.
- `is_current` looks at the header only: a blob naming the current key that does not open (a
  copy from another row) counts as already_current, not unreadable. Dropping the previous key
  loses nothing by it, so the exit status is still right.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.accounts import AccountService  # noqa: E402
from bridge.app import Daemon  # noqa: E402
from bridge.client import BridgeError  # noqa: E402
from bridge.config import check_main  # noqa: E402
from bridge.crypto import Sealer, key_id  # noqa: E402
from bridge.reseal import reseal  # noqa: E402
from bridge.smpp import constants as C  # noqa: E402
from bridge.smpp.codec import Pdu, encode  # noqa: E402
from bridge.store.models import Template  # noqa: E402
from tests.e2e.harness import (  # noqa: E402
    ADMIN_TOKEN,
    DaemonProcess,
    WebhookReceiver,
    client_for,
    config_dict,
    create_account,
    make_config,
    wait_until,
)
from tests.integration import test_session12_review as s12  # noqa: E402
from tests.store_engines import EngineHandle  # noqa: E402

engine = engines.engine
store = engines.store

UK = "+447700900123"
UNIT = 50_000  # TEST_INTERNATIONAL's price per UK segment
K1 = os.urandom(32)
K2 = os.urandom(32)


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def _daemon_store(engine: EngineHandle) -> dict[str, Any]:
    if engine.name == "postgres":
        return {"engine": "postgres", "dsn": engine.location}
    return {"engine": "sqlite", "path": engine.location}


# ---------------------------------------------------------------- A: the scripted SMSC


def _part_no(body: Any) -> int:
    """The part number in a concatenated part's UDH (8-bit reference), 1 for a lone part."""
    sm = body.short_message
    if body.esm_class & 0x40 and len(sm) >= 6:
        return int(sm[5])
    return 1


class _Smsc:
    """The simulator's submit handler, scripted for submits to UK: the Nth of them (1-based) is
    kept unanswered ("sit") or answered at once with a status; all else goes to the simulator."""

    def __init__(self, sim: Any, script: dict[int, Any]) -> None:
        self.sim = sim
        self.real = sim._on_submit
        self.script = script
        self.parts: list[int] = []  # the part number of each submit_sm to UK, in order
        self.sitting: list[tuple[Any, Any]] = []

    def __call__(self, sess: Any, pdu: Any, out: list[bytes], now: float) -> None:
        body = pdu.body
        if body.destination_addr.endswith(UK.lstrip("+")):
            self.parts.append(_part_no(body))
            action = self.script.get(len(self.parts))
            if action == "sit":
                self.sitting.append((sess, pdu))
                return
            if isinstance(action, int):
                sess.write(encode(Pdu(C.SUBMIT_SM_RESP, action, pdu.seq)))
                return
        self.real(sess, pdu, out, now)

    def answer(self, status: int) -> None:
        sess, pdu = self.sitting.pop()
        sess.write(encode(Pdu(C.SUBMIT_SM_RESP, status, pdu.seq)))


class _Rig:
    def __init__(self, d: Daemon, smsc: _Smsc, receiver: WebhookReceiver) -> None:
        self.d = d
        self.smsc = smsc
        self.receiver = receiver

    @property
    def store(self) -> Any:
        return self.d.store

    async def admin(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", **kw.pop("headers", {})}
        async with (
            aiohttp.ClientSession() as s,
            s.request(
                method, f"http://127.0.0.1:{self.d.http_port}{path}", headers=headers, **kw
            ) as r,
        ):
            return r.status, await r.json(content_type=None)

    async def cash(self, account: str) -> int:
        status, data = await self.admin("GET", f"/admin/accounts/{account}/balance")
        assert status == 200, data
        return int(data["cash_micro"])

    async def done(self, account: str, mid: str, timeout: float = 30) -> Any:
        async def finished() -> Any:
            rec = await self.store.get_message(account, mid)
            return rec if rec is not None and rec.done_at is not None else None

        return await wait_until(finished, timeout, 0.05)


@contextlib.asynccontextmanager
async def _rig(
    tmp: Path, engine: EngineHandle, script: dict[int, Any], **smsc: Any
) -> AsyncIterator[_Rig]:
    cfg = make_config(
        tmp,
        store=_daemon_store(engine),
        smscs=[{"max_transient_retries": 3, "response_timeout_s": 30, **smsc}],
        logging={"level": "WARNING"},
    )
    d = Daemon(cfg)
    await d.start()
    hook = _Smsc(d.sim, script)
    d.sim._on_submit = hook
    receiver = WebhookReceiver()
    await receiver.start()
    try:
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        yield _Rig(d, hook, receiver)
    finally:
        d.sim._on_submit = hook.real
        await d.stop()
        await receiver.stop()


# Each hold, applied while part 2 of a 3-part message to UK sits on the SMSC: (code it ends with).
async def _hold_api_optout(r: _Rig, c: Any, creds: dict[str, str]) -> None:
    await c.opt_out(UK)


async def _hold_disable(r: _Rig, c: Any, creds: dict[str, str]) -> None:
    status, data = await r.admin("POST", f"/admin/accounts/{creds['account']}/disable")
    assert status == 200, data


async def _hold_template_delete(r: _Rig, c: Any, creds: dict[str, str]) -> None:
    await c.request("DELETE", "/v1/templates/T1")


async def _hold_sign_delete(r: _Rig, c: Any, creds: dict[str, str]) -> None:
    await c.request("DELETE", "/v1/signs/Acme")


async def _hold_dnc(r: _Rig, c: Any, creds: dict[str, str]) -> None:
    status, data = await r.admin(
        "PUT", "/admin/dnc/L1", data=f"{UK}\n", headers={"Content-Type": "text/csv"}
    )
    assert status == 200, data


async def _hold_erase(r: _Rig, c: Any, creds: dict[str, str]) -> None:
    await c.erase_recipient(UK)


async def _hold_template_reject(r: _Rig, c: Any, creds: dict[str, str]) -> None:
    body = {"decision": "reject", "reason": "fraud found at a second look"}
    status, data = await r.admin("POST", "/admin/templates/T1/review", json=body)
    assert status == 200, data


async def _hold_sign_reject(r: _Rig, c: Any, creds: dict[str, str]) -> None:
    body = {"decision": "reject", "reason": "not theirs"}
    path = f"/admin/accounts/{creds['account']}/signs/Acme/review"
    status, data = await r.admin("POST", path, json=body)
    assert status == 200, data


HOLDS = {
    "api-optout": (_hold_api_optout, "RECIPIENT_OPTED_OUT"),
    "disable": (_hold_disable, "ACCOUNT_DISABLED"),
    "template-delete": (_hold_template_delete, "TEMPLATE_DELETED"),
    "sign-delete": (_hold_sign_delete, "SIGN_DELETED"),
    "dnc-import": (_hold_dnc, "RECIPIENT_BLOCKED"),
    "erase": (_hold_erase, "ERASED"),
    "template-reject": (_hold_template_reject, "TEMPLATE_REJECTED"),
    "sign-reject": (_hold_sign_reject, "SIGN_REJECTED"),
}
LONG = "x" * 180  # 3 UCS-2 parts with the sign (its brackets are not GSM)


async def _send_long(r: _Rig, c: Any, creds: dict[str, str], *, template: bool) -> str:
    if template:
        now = int(time.time() * 1000)
        fields = ("notification", "n", LONG, "", False, "approved", None, now, now)
        await r.store.add_template(Template("T1", creds["account"], *fields))
        sent = await c.send(UK, template="T1", params={}, sign_name="Acme")
    else:
        sent = await c.send(UK, text=LONG, sign_name="Acme")
    m = sent["messages"][0]
    assert m["segments"] == 3, m
    return str(m["id"])


@pytest.mark.parametrize("reason", sorted(HOLDS))
@pytest.mark.parametrize(
    "answer", [C.ESME_RTHROTTLED, C.ESME_RSYSERR], ids=["throttled", "system-error"]
)
async def test_each_hold_between_a_part_and_its_resend_stops_the_resend(
    engine: EngineHandle, tmp_path: Path, reason: str, answer: int
) -> None:
    """Checked right: the SMSC sits on part 2 while the hold is made, then answers it throttled
    (resent at once) or ESME_RSYSERR (resent after its back-off). The resend does not go out;
    the message ends with the hold's code, 2/3 refunded, and the status webhook reports it so
    (an erased number is not in it)."""
    hold, code = HOLDS[reason]
    async with _rig(tmp_path, engine, {2: "sit"}) as r:
        creds = await create_account(r.d, f"h-{reason}", status_callback_url=r.receiver.url)
        r.receiver.secret = creds["webhook_secret"]
        async with client_for(r.d.http_port, creds) as c:
            mid = await _send_long(r, c, creds, template=reason.startswith("template"))
            start = await r.cash(creds["account"]) + 3 * UNIT
            await wait_until(lambda: r.smsc.sitting, 15)
            await hold(r, c, creds)
            assert await r.store.message_held(mid) is True
            r.smsc.answer(answer)
            rec = await r.done(creds["account"], mid)
        assert r.smsc.parts == [1, 2], "a part went out again after the hold"
        assert (rec.state, rec.error_code) == ("expired", code), rec
        assert [(s.seq, s.state) for s in rec.segment_rows] == [
            (1, "delivered"),
            (2, "expired_unsent"),
            (3, "expired_unsent"),
        ]
        assert {s.error_code for s in rec.segment_rows[1:]} == {code}

        async def refunded() -> bool:
            return await r.cash(creds["account"]) == start - UNIT

        assert await wait_until(refunded, 10, 0.1)
        await wait_until(lambda: r.receiver.reports, 10)
        report = r.receiver.reports[-1]
        assert report["message_id"] == mid and report["status"] == "expired", report
        assert report.get("error_code") == code, report
        if reason == "erase":
            assert UK.lstrip("+") not in json.dumps(r.receiver.reports), r.receiver.reports


async def test_a_hold_after_part_2_of_3_was_accepted_ends_part_3_only(
    engine: EngineHandle, tmp_path: Path
) -> None:
    """Checked right: parts 1 and 2 accepted, the SMSC sits on part 3 while STOP arrives and
    answers it throttled: part 3 is not resent; 1/3 refunded; the parts went in order, once."""
    async with _rig(tmp_path, engine, {3: "sit"}) as r:
        creds = await create_account(r.d, "late-hold", status_callback_url=r.receiver.url)
        r.receiver.secret = creds["webhook_secret"]
        async with client_for(r.d.http_port, creds) as c:
            mid = await _send_long(r, c, creds, template=False)
            start = await r.cash(creds["account"]) + 3 * UNIT
            await wait_until(lambda: r.smsc.sitting, 15)
            await r.d.sim.inject_mo(UK.lstrip("+"), "smpp-bridge", "STOP")
            await wait_until(lambda: r.store.message_held(mid), 15, 0.05)
            r.smsc.answer(C.ESME_RTHROTTLED)
            rec = await r.done(creds["account"], mid)
        assert r.smsc.parts == [1, 2, 3]
        assert (rec.state, rec.error_code) == ("expired", "RECIPIENT_OPTED_OUT"), rec
        assert [s.state for s in rec.segment_rows] == ["delivered", "delivered", "expired_unsent"]

        async def refunded() -> bool:
            return await r.cash(creds["account"]) == start - 2 * UNIT

        assert await wait_until(refunded, 10, 0.1)
        await wait_until(lambda: r.receiver.reports, 10)
        assert (r.receiver.reports[-1]["status"], r.receiver.reports[-1].get("error_code")) == (
            "expired",
            "RECIPIENT_OPTED_OUT",
        )


async def test_in_flight_unknown_smsc_still_holds_after_an_answered_error(tmp_path: Path) -> None:
    """Checked right: in_flight_on_restart: unknown returns unanswered attempts at once, but an
    answered ESME_RSYSERR is retried after its back-off; a STOP meanwhile stops that retry."""
    eng = engines.ENGINES["sqlite"](None, tmp_path)  # type: ignore[arg-type]
    async with _rig(tmp_path, eng, {2: "sit"}, in_flight_on_restart="unknown") as r:
        creds = await create_account(r.d, "unknown-smsc")
        async with client_for(r.d.http_port, creds) as c:
            mid = await _send_long(r, c, creds, template=False)
            await wait_until(lambda: r.smsc.sitting, 15)
            await r.d.sim.inject_mo(UK.lstrip("+"), "smpp-bridge", "STOP")
            await wait_until(lambda: r.store.message_held(mid), 15, 0.05)
            r.smsc.answer(C.ESME_RSYSERR)
            rec = await r.done(creds["account"], mid)
    assert r.smsc.parts == [1, 2]
    assert (rec.state, rec.error_code) == ("expired", "RECIPIENT_OPTED_OUT"), rec


async def test_a_failed_hold_read_resends(tmp_path: Path) -> None:
    """Checked right (as the commit says): when message_held raises, the resend goes out, even
    after a STOP (the read failed; dropping the part would lose a message on a store hiccup)."""
    eng = engines.ENGINES["sqlite"](None, tmp_path)  # type: ignore[arg-type]
    async with _rig(tmp_path, eng, {2: "sit"}) as r:
        calls: list[str] = []

        async def broken(message_id: str) -> bool:
            calls.append(message_id)
            raise RuntimeError("store hiccup")

        r.store.message_held = broken
        creds = await create_account(r.d, "hiccup")
        async with client_for(r.d.http_port, creds) as c:
            mid = await _send_long(r, c, creds, template=False)
            await wait_until(lambda: r.smsc.sitting, 15)
            await c.opt_out(UK)
            r.smsc.answer(C.ESME_RTHROTTLED)
            rec = await r.done(creds["account"], mid)
    assert calls == [mid]
    assert r.smsc.parts == [1, 2, 2, 3]
    assert rec.state == "delivered", rec


async def test_no_hold_read_on_the_happy_path(engine: EngineHandle, tmp_path: Path) -> None:
    """Checked right: three 3-part messages with no throttle and no error read message_held 0
    times; a 4th whose part 2 is throttled once reads it once and is delivered."""
    async with _rig(tmp_path, engine, {11: C.ESME_RTHROTTLED}) as r:
        real = r.store.message_held
        calls: list[str] = []

        async def counted(message_id: str) -> bool:
            calls.append(message_id)
            return bool(await real(message_id))

        r.store.message_held = counted
        creds = await create_account(r.d, "happy")
        async with client_for(r.d.http_port, creds) as c:
            mids = [await _send_long(r, c, creds, template=False) for _ in range(3)]
            for mid in mids:
                assert (await r.done(creds["account"], mid)).state == "delivered"
            assert calls == [] and len(r.smsc.parts) == 9
            mid = await _send_long(r, c, creds, template=False)
            assert (await r.done(creds["account"], mid)).state == "delivered"
    assert calls == [mid]
    assert r.smsc.parts[9:] == [1, 2, 2, 3]


async def test_a_stop_during_the_throttle_pause_stops_the_resend_after_it(tmp_path: Path) -> None:
    """Found: part 2 is answered throttled at once; the bind pauses (throttle_tolerance 0, so
    the first throttle pauses, as a throttled bind's does by default once its rate passes 0.1;
    pauses are 1-10 s by default). STOP arrives during the pause. connector._send_part asked
    message_held right after the answer (False then), `continue`d, and _submit_on/_acquire waited
    out the pause: the resend goes out with no new check and the message is delivered to the
    number that replied STOP. Expected: 2 submits to the number, expired/RECIPIENT_OPTED_OUT."""
    eng = engines.ENGINES["sqlite"](None, tmp_path)  # type: ignore[arg-type]
    async with _rig(
        tmp_path,
        eng,
        {2: C.ESME_RTHROTTLED},
        throttle_tolerance=0,
        throttle_pause_min_s=2.0,
        throttle_pause_max_s=2.0,
    ) as r:
        creds = await create_account(r.d, "paused")
        async with client_for(r.d.http_port, creds) as c:
            mid = await _send_long(r, c, creds, template=False)
            await wait_until(lambda: len(r.smsc.parts) == 2, 15, 0.01)
            await r.d.sim.inject_mo(UK.lstrip("+"), "smpp-bridge", "STOP")
            await wait_until(lambda: r.store.message_held(mid), 1.5, 0.02)
            assert len(r.smsc.parts) == 2, "the STOP came after the pause: no evidence"
            rec = await r.done(creds["account"], mid)
    assert r.smsc.parts == [1, 2], f"sent again after the STOP: parts {r.smsc.parts}"
    assert (rec.state, rec.error_code) == ("expired", "RECIPIENT_OPTED_OUT"), rec


async def test_an_opt_out_while_the_connector_rebinds_stops_the_resend(tmp_path: Path) -> None:
    """Found (fixed), the same cause on the transient path: part 2 is answered ESME_RINVBNDSTS;
    the connector drops the bind, sleeps its back-off and waits for a new bind (the bind is back
    in 0.7 s here). The hold check ran before that wait, so an opt-out made during it went
    unseen and parts 2 and 3 went to the number. The check now runs when the resend holds its
    window slot on the new bind, right before it leaves: one check, True, nothing sent."""
    eng = engines.ENGINES["sqlite"](None, tmp_path)  # type: ignore[arg-type]
    async with _rig(
        tmp_path, eng, {2: C.ESME_RINVBNDSTS}, reconnect_min_s=0.7, reconnect_max_s=0.7
    ) as r:
        real = r.store.message_held
        calls: list[bool] = []

        async def counted(message_id: str) -> bool:
            calls.append(bool(await real(message_id)))
            return calls[-1]

        r.store.message_held = counted
        creds = await create_account(r.d, "rebind")
        async with client_for(r.d.http_port, creds) as c:
            mid = await _send_long(r, c, creds, template=False)
            await wait_until(lambda: len(r.smsc.parts) == 2, 15, 0.005)
            await c.opt_out(UK)  # while the bind is down: before the resend's check
            assert calls == [], "checked before the wait for a new bind"
            rec = await r.done(creds["account"], mid)
    assert calls == [True]
    assert r.smsc.parts == [1, 2], f"sent again after the opt-out: parts {r.smsc.parts}"
    assert (rec.state, rec.error_code) == ("expired", "RECIPIENT_OPTED_OUT"), rec


async def test_message_held_on_each_engine(store: Any) -> None:
    """Checked right: message_held is True only for a message held within its validity; a
    message whose own validity ran out before the hold is not (it ends VALIDITY_EXPIRED, not
    with the opt-out's code), nor another account's message to the number, nor an unknown id."""
    NOW, DAY = s12.NOW, s12.DAY
    await s12._funded(store)
    await s12._funded(store, "acc_b")
    await s12._send(
        store,
        s12._message("m1", parts=2, expires_at=NOW + DAY),
        s12._message("m2", parts=2, expires_at=NOW + 2),
    )
    await s12._send(store, s12._message("m3", aid="acc_b", parts=2))
    assert sorted(await s12._claim_ids(store, NOW + 1)) == ["m1", "m2", "m3"]
    assert [await store.message_held(m) for m in ("m1", "m2", "m3", "nope")] == [False] * 4
    await store.add_optouts("acc_a", [s12.CN], "mo", NOW + 5)
    held = {m: await store.message_held(m) for m in ("m1", "m2", "m3", "nope")}
    assert held == {"m1": True, "m2": False, "m3": False, "nope": False}
    from bridge.store.models import SubmitResult

    await store.record_submits(
        [s12._sent(m, 1) for m in ("m1", "m2", "m3")]
        + [SubmitResult(m, 2, "expired", "", at=NOW + 6) for m in ("m1", "m2")],
        [],
        NOW + 6,
    )
    m1 = await store.get_message("acc_a", "m1")
    m2 = await store.get_message("acc_a", "m2")
    assert m1.segment_rows[1].error_code == "RECIPIENT_OPTED_OUT"
    assert m2.segment_rows[1].error_code == "VALIDITY_EXPIRED"


# ---------------------------------------------------------------- B: master key rotation


def _write_cfg(tmp: Path, store_cfg: dict[str, Any], security: dict[str, Any] | None) -> Path:
    data: dict[str, Any] = {
        "store": store_cfg,
        "smscs": [{"name": "main", "system_id": "bridge"}],
        "logging": {"level": "DEBUG"},
    }
    if security is not None:
        data["security"] = security
    path = tmp / "rotate.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`python -m bridge.cli ARGS` with only `env` of the SMPP_BRIDGE_ variables; asserts no key
    (base64, URL-safe base64 or hex) and no traceback in any output."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("SMPP_BRIDGE_")}
    full.update(env or {})
    p = subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=60,
    )
    for key in (K1, K2):
        for shown in (_b64(key), key.hex(), base64.urlsafe_b64encode(key).decode()):
            assert shown not in p.stdout + p.stderr, "key material printed"
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize(
    ("value", "env", "says"),
    [
        ("not base64 at all: hunter2hunter2", None, "not valid base64"),
        (None, _b64(os.urandom(31)), "got 31 bytes (from env SMPP_BRIDGE_PREVIOUS_MASTER_KEY)"),
        (123456789012345678901234567890, None, "got an integer"),
        (["aGVsbG8=", "d29ybGQ="], None, "got a list"),
    ],
    ids=["not-base64", "env-31-bytes", "integer", "list"],
)
def test_config_check_refuses_a_bad_previous_key_without_printing_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    value: Any,
    env: str | None,
    says: str,
) -> None:
    """Checked right: exit 1, the field named, the value never shown (YAML or env)."""
    security: dict[str, Any] = {"master_key": _b64(K2)}
    if value is not None:
        security["previous_master_key"] = value
    if env is not None:
        monkeypatch.setenv("SMPP_BRIDGE_PREVIOUS_MASTER_KEY", env)
    cfg = _write_cfg(tmp_path, {"engine": "sqlite", "path": str(tmp_path / "b.db")}, security)
    assert check_main(str(cfg)) == 1
    out, err = capsys.readouterr()
    assert "security.previous_master_key" in err and says in err, err
    for shown in filter(None, (env, str(value), "hunter2", "123456789012", "aGVsbG8")):
        assert shown not in out + err, err


def test_config_check_masks_a_previous_key_from_the_env(tmp_path: Path) -> None:
    """Checked right: the real CLI, the previous key from SMPP_BRIDGE_PREVIOUS_MASTER_KEY: exit
    0, shown as '***'."""
    cfg = _write_cfg(tmp_path, {"engine": "sqlite", "path": str(tmp_path / "b.db")}, None)
    code, out, _err = _cli(
        "config",
        "check",
        str(cfg),
        env={"SMPP_BRIDGE_MASTER_KEY": _b64(K2), "SMPP_BRIDGE_PREVIOUS_MASTER_KEY": _b64(K1)},
    )
    assert code == 0
    sec = yaml.safe_load(out.split("\n", 1)[1])["security"]
    assert (sec["master_key"], sec["previous_master_key"]) == ("***", "***")


def test_previous_equal_to_current_is_refused_by_the_store_commands(tmp_path: Path) -> None:
    """Checked right: `secrets reseal` with the same key twice (standard and URL-safe spelling
    alike) exits 1 with one line, no traceback, no key."""
    cfg = _write_cfg(tmp_path, {"engine": "sqlite", "path": str(tmp_path / "b.db")}, None)
    for spelled in (_b64(K2), base64.urlsafe_b64encode(K2).decode()):
        code, out, err = _cli(
            "secrets",
            "reseal",
            "--config",
            str(cfg),
            env={"SMPP_BRIDGE_MASTER_KEY": _b64(K2), "SMPP_BRIDGE_PREVIOUS_MASTER_KEY": spelled},
        )
        assert (code, out) == (1, "")
        # Refused as the configuration is loaded (it was the Sealer's refusal before the fix).
        assert "security.previous_master_key: is the master key itself" in err, err
        assert _b64(K2) not in err and "Traceback" not in err


def test_config_check_refuses_a_previous_key_equal_to_the_current_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found (fixed): `config check` exited 0 for previous_master_key equal to master_key
    (inline or env), while Daemon.start -> make_sealer -> Sealer refused it ("the previous
    master key is the current one"): the daemon did not start on a configuration the check
    called valid. The configuration refuses it now, naming the field, never the key."""
    cfg = _write_cfg(
        tmp_path,
        {"engine": "sqlite", "path": str(tmp_path / "b.db")},
        {"master_key": _b64(K2), "previous_master_key": base64.urlsafe_b64encode(K2).decode()},
    )
    assert check_main(str(cfg)) == 1, "config check calls it valid"
    printed = capsys.readouterr()
    assert "previous_master_key" in printed.out + printed.err
    assert _b64(K2) not in printed.out + printed.err


def test_a_missing_or_bad_previous_key_file_is_named_not_printed(tmp_path: Path) -> None:
    """Checked right: a previous key file that does not exist: exit 1 naming the file; one that
    holds 31 bytes: exit 1, the length, not the content. Doubt: both say "master key", not
    "previous master key" (only the path tells the operator which key is meant)."""
    missing = tmp_path / "gone.key"
    cfg = _write_cfg(
        tmp_path,
        {"engine": "sqlite", "path": str(tmp_path / "b.db")},
        {"master_key": _b64(K2), "previous_master_key_file": str(missing)},
    )
    code, out, err = _cli("secrets", "reseal", "--config", str(cfg))
    assert (code, out) == (1, "") and f"master key file {missing} does not exist" in err, err
    short = tmp_path / "short.key"
    content = _b64(os.urandom(31))
    short.write_text(content + "\n")
    cfg = _write_cfg(
        tmp_path,
        {"engine": "sqlite", "path": str(tmp_path / "b.db")},
        {"master_key": _b64(K2), "previous_master_key_file": str(short)},
    )
    code, out, err = _cli("secrets", "reseal", "--config", str(cfg), "--dry-run")
    assert (code, out) == (1, "") and "got 31" in err and content not in err, err


async def _seal_some(store: Any, sealer: Sealer, n: int = 2, prefix: str = "acc") -> list[Any]:
    svc = AccountService(store, sealer)
    now = int(time.time() * 1000)
    return [await svc.create(f"{prefix}{i}", {"raw_text": True}, now) for i in range(n)]


async def test_secrets_reseal_cli_on_each_engine(engine: EngineHandle, tmp_path: Path) -> None:
    """Checked right: the CLI on each engine (PostgreSQL's bytea included): --dry-run counts
    (to_reseal) and writes nothing; a secret under a third key makes both runs exit 1 and is
    listed by kind and id with its key id, never a key; the real run reseals the rest; the audit
    trail has each real run with its exit status."""
    s = engine.new_store()
    await s.open()
    try:
        good = await _seal_some(s, Sealer(K1))
        stray = (await _seal_some(s, Sealer(os.urandom(32)), 1, "stray"))[0]
        before = sorted(await s.sealed_secrets())
    finally:
        await s.close()
    cfg = _write_cfg(tmp_path, _daemon_store(engine), None)
    env = {"SMPP_BRIDGE_MASTER_KEY": _b64(K2), "SMPP_BRIDGE_PREVIOUS_MASTER_KEY": _b64(K1)}
    code, out, _err = _cli("secrets", "reseal", "--config", str(cfg), "--dry-run", env=env)
    dry = json.loads(out)
    assert code == 1 and (dry["dry_run"], dry["to_reseal"], dry["already_current"]) == (
        True,
        4,
        0,
    ), dry
    assert "resealed" not in dry
    unreadable = {(u["kind"], u["id"]) for u in dry["unreadable"]}
    assert unreadable == {("account", stray.account.id), ("key", stray.app_key)}
    assert all("which this daemon does not have" in u["error"] for u in dry["unreadable"])
    s = engine.new_store()
    await s.open()
    try:
        assert sorted(await s.sealed_secrets()) == before  # a dry run writes nothing
        code, out, _err = _cli("secrets", "reseal", "--config", str(cfg), env=env)
        done = json.loads(out)
        assert code == 1 and (done["dry_run"], done["resealed"], done["changed_meanwhile"]) == (
            False,
            4,
            0,
        ), done
        rows = {i: b for _k, i, b in await s.sealed_secrets()}
        assert isinstance(next(iter(rows.values())), bytes)
        for c in good:
            assert rows[c.account.id][1:5] == key_id(K2)
            assert Sealer(K2).open(rows[c.app_key], c.app_key) == c.app_secret
        assert rows[stray.app_key] == dict((i, b) for _k, i, b in before)[stray.app_key]
        # Once the previous key is dropped: the stray still keeps the exit status at 1.
        only = {"SMPP_BRIDGE_MASTER_KEY": _b64(K2)}
        code, out, _err = _cli("secrets", "reseal", "--config", str(cfg), env=only)
        last = json.loads(out)
        assert (code, last["resealed"], last["already_current"]) == (1, 0, 4), last
        trail = [(e.action, e.target, e.status) for e in await s.audit_page(0, 100)]
        assert trail == [("cli secrets reseal", "", 1)] * 2, trail  # dry runs are not audited
    finally:
        await s.close()


class _Racing:
    """A store whose reseal writes wait until `meanwhile` ran once (after the read)."""

    def __init__(self, store: Any, meanwhile: Any) -> None:
        self._store = store
        self._meanwhile = meanwhile
        self._ran = False

    async def sealed_secrets(self) -> list[tuple[str, str, bytes]]:
        return list(await self._store.sealed_secrets())

    async def reseal(self, kind: str, row_id: str, old: bytes, new: bytes) -> bool:
        if not self._ran:
            self._ran = True
            await self._meanwhile()
        return bool(await self._store.reseal(kind, row_id, old, new))


async def test_reseal_racing_rotations_creations_revocations_and_closes(store: Any) -> None:
    """Checked right (both engines): between the reseal's read and its writes, a daemon with
    both keys rotates one account's webhook secret, creates a key, revokes a key and closes an
    account. The rotated secret is left as rotated (changed_meanwhile 1) and opens with the new
    key alone; the revoked key and the closed account's secrets are resealed and stay revoked /
    closed; the created key was sealed under the new key; a second run finds everything current.
    """
    a, b, c = await _seal_some(store, Sealer(K1), 3)
    rotating = Sealer(K2, (K1,))
    svc = AccountService(store, rotating)
    now = int(time.time() * 1000)
    got: dict[str, Any] = {}

    async def meanwhile() -> None:
        _acc, got["webhook"] = await svc.rotate_webhook_secret(a.account.id, now)
        _acc, got["key"], got["secret"] = await svc.create_key(b.account.id, now)
        await svc.revoke_key(b.app_key, now)
        assert await store.close_account(c.account.id, now)

    report = await reseal(_Racing(store, meanwhile), rotating)
    assert (report.resealed, report.changed_meanwhile, report.current, report.unreadable) == (
        5,
        1,
        0,
        [],
    )
    alone = Sealer(K2)
    acc_a = await store.get_account(a.account.id)
    assert alone.open(acc_a.webhook_secret_enc, a.account.id) == got["webhook"]
    new_key = await store.get_key(got["key"])
    assert alone.open(new_key.secret_enc, got["key"]) == got["secret"]
    revoked = await store.get_key(b.app_key)
    assert revoked.status == "revoked" and alone.open(revoked.secret_enc, b.app_key) == b.app_secret
    closed = await store.get_account(c.account.id)
    assert closed.status == "closed"
    assert alone.open(closed.webhook_secret_enc, c.account.id) == c.webhook_secret
    # Since webhook secrets rotate with an overlap (0017), the rotation kept the old secret,
    # still under key 1, signing beside the new one: the second run reseals it too, and a third
    # finds all 8 current.
    again = await reseal(store, rotating)
    assert (again.resealed, again.current, again.changed_meanwhile) == (1, 7, 0)
    acc_a = await store.get_account(a.account.id)
    assert alone.open(acc_a.prev_webhook_secret_enc, a.account.id) == a.webhook_secret
    third = await reseal(store, rotating)
    assert (third.resealed, third.current, third.total) == (0, 8, 8)


async def _account_status(d: Daemon, creds: dict[str, str]) -> tuple[int, str | None]:
    async with client_for(d.http_port, creds) as c:
        try:
            status, _h, _data = await c.request("GET", "/v1/account")
        except BridgeError as exc:
            return exc.status, exc.code
    return status, None


async def test_a_revoked_key_is_still_refused_401_after_the_rotation(tmp_path: Path) -> None:
    """Checked right: a key revoked before the rotation, resealed with the rest; a daemon with
    the new key alone answers it 401 KEY_REVOKED (not 500: its secret still opens) and serves
    the live key."""
    d = Daemon(make_config(tmp_path, security={"master_key": _b64(K1)}))
    await d.start()
    try:
        live = await create_account(d, "rot")
        _acc, old_key, old_secret = await d.ctx.accounts.create_key(live["account"], 1)
        await d.ctx.accounts.revoke_key(old_key, 2)
    finally:
        await d.stop()
    d = Daemon(
        make_config(tmp_path, security={"master_key": _b64(K2), "previous_master_key": _b64(K1)})
    )
    await d.start()
    try:
        report = await reseal(d.store, d.ctx.accounts.sealer)
        assert (report.resealed, report.unreadable) == (3, [])
    finally:
        await d.stop()
    d = Daemon(make_config(tmp_path, security={"master_key": _b64(K2)}))
    await d.start()
    try:
        assert await _account_status(d, live) == (200, None)
        revoked = {**live, "app_key": old_key, "app_secret": old_secret}
        assert await _account_status(d, revoked) == (401, "KEY_REVOKED")
    finally:
        await d.stop()


async def test_a_workers_daemon_verifies_every_request_while_the_reseal_runs(
    tmp_path: Path,
) -> None:
    """Checked right: `run` with server.workers 2 (an owner and two acceptor processes), the new
    key inline and the previous one in previous_master_key_file given relative to the config
    file (the acceptors read a copy of the configuration elsewhere): requests on fresh
    connections all verify before, during and after `secrets reseal`; no key in the DEBUG log."""
    d = Daemon(make_config(tmp_path, security={"master_key": _b64(K1)}))
    await d.start()
    try:
        accounts = [await create_account(d, f"w{i}") for i in range(3)]
    finally:
        await d.stop()
    # The previous key in a file named relative to the configuration: the acceptors load a copy
    # of the configuration from a temporary directory, and must resolve it as the owner does.
    (tmp_path / "prev.key").write_text(_b64(K1) + "\n")
    security = {"master_key": _b64(K2), "previous_master_key_file": "prev.key"}
    cfg = config_dict(tmp_path, security=security, logging={"level": "DEBUG"})
    cfg["server"]["workers"] = 2
    proc = DaemonProcess(tmp_path, cfg)
    proc.start()
    try:
        await proc.wait_ready(30)

        async def all_verify() -> list[int]:
            out = []
            for creds in accounts * 3:
                async with client_for(proc.port, creds) as c:
                    status, _h, _d = await c.request("GET", "/v1/account")
                    out.append(status)
            return out

        assert set(await all_verify()) == {200}
        reseal_cfg = _write_cfg(tmp_path, cfg["store"], {"master_key": _b64(K2)})
        run = asyncio.get_running_loop().run_in_executor(
            None,
            lambda: _cli(
                "secrets",
                "reseal",
                "--config",
                str(reseal_cfg),
                env={"SMPP_BRIDGE_PREVIOUS_MASTER_KEY": _b64(K1)},
            ),
        )
        during: list[int] = []
        while not run.done():  # requests the whole time the command runs
            during += await all_verify()
        code, out, _err = await run
        assert code == 0 and json.loads(out)["resealed"] == 6, out
        assert len(during) >= 9 and set(during) == {200}, during
        assert set(await all_verify()) == {200}
        log = proc.log.read_text()
        assert "acceptor 0 started" in log and "acceptor 1 started" in log
        for key in (K1, K2):
            assert _b64(key) not in log
    finally:
        proc.stop()
