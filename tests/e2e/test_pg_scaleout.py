"""Scale-out end to end: two `smpp-bridge run` processes on one PostgreSQL database and one
simulated SMSC (in this process, so it outlives the kill and counts what reached the "carrier").

Load goes to both instances; one is killed with kill -9 mid-load. Then: every accepted message
reaches a final state, receipts for parts one instance submitted that came back on the other
instance's bind are matched, and the simulator never sees more binds of the system_id than the
configured count (the instances share it through advisory locks).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bridge.client import BridgeError
from bridge.sim.server import SimSmsc
from bridge.smpp.codec import decode
from tests.e2e.harness import (
    DaemonProcess,
    client_for,
    config_dict,
    free_port,
    make_config,
    statuses_once_final,
    wait_until,
)

pytestmark = pytest.mark.slow

N = 1200
WINDOW = 20
BINDS = 2
SYSTEM_ID = "bridge"
# The receipt's first "id:" (no \b: in the simulator's octets the sm_length byte before it may
# be a word character).
_RECEIPT_ID = re.compile(r"id:(\S+)")


class WatchingSim(SimSmsc):
    """The simulator, also recording which instance (by the bind's system_type) submitted each
    part and acknowledged each receipt, and the most binds of the system_id ever open at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner: dict[object, str] = {}
        self.max_binds = 0
        self.submitted_by: dict[str, str] = {}
        self.receipt_acked_by: dict[str, str] = {}
        self.bind_log: list[tuple[float, str, int]] = []

    def _open_binds(self) -> int:
        return sum(
            1 for s in self._sessions if s.mode and not s.closing and s.system_id == SYSTEM_ID
        )

    def _on_bind(self, sess: Any, pdu: Any, out: list[bytes], now: float) -> None:
        super()._on_bind(sess, pdu, out, now)
        if sess.mode:
            self.owner[sess] = pdu.body.system_type
            n = self._open_binds()
            self.max_binds = max(self.max_binds, n)
            self.bind_log.append((time.monotonic(), pdu.body.system_type, n))

    def _on_submit(self, sess: Any, pdu: Any, out: list[bytes], now: float) -> None:
        before = self.counters["messages"]
        super()._on_submit(sess, pdu, out, now)
        for k in range(self.counters["messages"] - before, 0, -1):  # completed by this part
            for mid in self.messages[-k].message_ids:
                self.submitted_by[mid] = self.owner.get(sess, "?")

    def _on_deliver_resp(self, sess: Any, seq: int, status: int, now: float, *args: Any) -> None:
        job = sess.outstanding.get(seq)
        if job is not None and job.kind == "receipt" and status == 0:
            body = job.body
            if type(body) is bytes:  # since session 60 a receipt's deliver_sm body as octets
                frame = (16 + len(body)).to_bytes(4, "big") + job.cid.to_bytes(4, "big")
                body = decode(frame + bytes(8) + body).body
            found = _RECEIPT_ID.search(body.short_message.decode("latin-1"))
            if found:
                self.receipt_acked_by[found.group(1)] = self.owner.get(sess, "?")
        super()._on_deliver_resp(sess, seq, status, now, *args)

    def binds_by_owner(self) -> Counter[str]:
        return Counter(
            self.owner.get(s, "?")
            for s in self._sessions
            if s.mode and not s.closing and s.system_id == SYSTEM_ID
        )


def _create_account(cfg_path: Path) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "account", "create", "scaleco", "--raw-text",
         "--topup", "100000", "--config", str(cfg_path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def _instance(tmp: Path, name: str, dsn: str, sim_port: int) -> DaemonProcess:
    home = tmp / name
    home.mkdir()
    cfg = config_dict(
        home,
        store={"engine": "postgres", "dsn": dsn},
        sim={"enabled": False, "port": sim_port},
        smscs=[{"port": sim_port, "window": WINDOW, "binds": BINDS, "system_type": name}],
    )
    return DaemonProcess(home, cfg)


async def test_two_instances_one_killed_mid_load(tmp_path: Path, pg_dsn: str) -> None:
    sim_port = free_port()
    sim = WatchingSim(
        replace(make_config(tmp_path).sim, port=sim_port, control_port=free_port(),
                receipt_delay_ms=150)
    )  # fmt: skip
    await sim.start()
    a = _instance(tmp_path, "inst-a", pg_dsn, sim_port)
    b = _instance(tmp_path, "inst-b", pg_dsn, sim_port)
    try:
        subprocess.run(
            [sys.executable, "-m", "bridge.cli", "db", "migrate", "--config", str(a.path)],
            check=True, capture_output=True,
        )  # fmt: skip
        creds = _create_account(a.path)
        a.start()
        await a.wait_ready(30)
        await wait_until(lambda: sim.binds_by_owner() == {"inst-a": BINDS}, 20)  # alone: all
        b.start()
        await b.wait_ready(30)  # ready without a bind of its own: a's binds send its work
        # a hands one bind over to b (its bind drains and unbinds first).
        await wait_until(lambda: sim.binds_by_owner() == {"inst-a": 1, "inst-b": 1}, 20)
        split_at_start = dict(sim.binds_by_owner())

        keys = {i: str(uuid.uuid4()) for i in range(N)}
        accepted: dict[int, str] = {}

        async def send(i: int, client: Any) -> None:
            try:
                r = await client.send(
                    f"+86138{i:08d}", text=f"scale-out message {i}", idempotency_key=keys[i]
                )
                accepted[i] = r["messages"][0]["id"]
            except (TimeoutError, BridgeError, OSError):
                pass  # the instance died under this request: retried on the other one
            except Exception as exc:  # aiohttp's disconnect errors
                if "Server disconnected" not in str(exc) and "Connect" not in type(exc).__name__:
                    raise

        async def load(indices: list[int], client: Any) -> None:
            sem = asyncio.Semaphore(10)

            async def one(i: int) -> None:
                async with sem:
                    await send(i, client)

            await asyncio.gather(*(one(i) for i in indices))

        async with client_for(a.port, creds) as ca, client_for(b.port, creds) as cb:
            ca.max_retries = cb.max_retries = 0
            to_a = [i for i in range(N) if i % 2 == 0]
            to_b = [i for i in range(N) if i % 2 == 1]
            tasks = [asyncio.create_task(load(to_a, ca)), asyncio.create_task(load(to_b, cb))]
            await wait_until(lambda: len(accepted) >= N // 3, 60, 0.005)
            a.kill9()
            killed_at = len(accepted)
            await asyncio.gather(*tasks)
            # Whatever A did not confirm goes to B with the same idempotency key: a request A
            # committed before dying replays its first answer (the key lives in the database).
            for _ in range(3):
                missing = [i for i in range(N) if i not in accepted]
                if not missing:
                    break
                await load(missing, cb)
            assert len(accepted) == N
            assert len(set(accepted.values())) == N

            # B takes over A's bind slots, and A's claims once A is known dead.
            await wait_until(lambda: sim.binds_by_owner() == {"inst-b": BINDS}, 20)

            final = ("delivered", "failed", "unknown", "expired")
            statuses = await statuses_once_final(cb, accepted.values(), final, 120)
        assert statuses == {"delivered": N}, statuses
        assert sim.max_binds <= BINDS, sim.bind_log
        texts = Counter(m.text for m in sim.messages)
        assert all(texts[f"scale-out message {i}"] >= 1 for i in range(N))
        duplicates = sum(c - 1 for c in texts.values())
        assert duplicates <= BINDS * WINDOW, duplicates  # at most A's window at the kill
        # Receipts acknowledged (so committed: deliver_sm_resp waits for the commit) by the
        # instance that did not submit the part: matched through the shared tables.
        crossed = Counter(
            (sim.submitted_by.get(mid), by)
            for mid, by in sim.receipt_acked_by.items()
            if sim.submitted_by.get(mid) not in (None, by)
        )
        assert crossed[("inst-a", "inst-b")] > 0, (
            crossed,
            split_at_start,
            len(sim.submitted_by),
            len(sim.receipt_acked_by),
            list(sim.submitted_by.items())[:3],
            list(sim.receipt_acked_by.items())[:3],
            sim.bind_log,
        )
        print(
            f"binds at start {split_at_start}; accepted before the kill {killed_at}; "
            f"duplicates {duplicates}; receipts acked by the other instance {dict(crossed)}; "
            f"max concurrent binds {sim.max_binds}"
        )
    finally:
        a.stop()
        b.stop()
        await sim.stop()
