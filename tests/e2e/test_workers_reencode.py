"""Re-encoding after a reload in workers mode (`server.workers`), against the real daemon: a send
accepted by an acceptor still on the configuration before the reload, after the owner's
re-encoding pass had gone over the queue, goes out encoded for the configuration the owner runs.

Before, such a message went out as the acceptor encoded it: the pass had passed, and nothing
looked at it again (unpacked septets to an SMSC now set to packed_gsm: garbage on the handset).
An acceptor is left on the old configuration for certain by making its copy of the file
unwritable (the supervisor then tells the acceptors nothing: `reload: the acceptors' copy of
the configuration was not updated`); a slow acceptor, or one reloading after the others, is
the same case for the seconds it lasts.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import pytest
import yaml

from bridge.app import Daemon
from bridge.config import load_config, parse_config
from tests.e2e.harness import (
    DaemonProcess,
    client_for,
    create_account,
    final_status,
    free_port,
    wait_until,
)
from tests.e2e.test_metrics_review import scrape
from tests.e2e.test_store_ops_review import _create_account, _external_sim_config, _sim

NUMBER = "+8613800138000"


def _stored(db: Path) -> list[tuple[str, bytes]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        rows = c.execute("SELECT state, short_message FROM segments ORDER BY message_id, seq")
        return [(r[0], bytes(r[1])) for r in rows]


async def test_a_send_by_an_acceptor_not_yet_reloaded_goes_out_encoded_for_the_new_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SMSC reads GSM text packed: the reload says so (packed_gsm) to a daemon that sent it
    # unpacked.
    sim_port = free_port()
    sim = await _sim(tmp_path, sim_port, packed_gsm=True)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))  # where the supervisor keeps the acceptors' copy
    cfg = _external_sim_config(tmp_path, sim_port)
    cfg["server"]["workers"] = 1
    daemon = DaemonProcess(tmp_path, cfg)
    creds = _create_account(daemon.path)
    daemon.start()
    try:
        await daemon.wait_ready(30)
        await wait_until(lambda: "acceptor listening on" in daemon.log.read_text(), 30, 0.05)
        (copy_dir,) = [p for p in tmp.iterdir() if (p / "config.yaml").exists()]
        (copy_dir / "config.tmp").mkdir()  # the copy's rewrite fails: the acceptor keeps it
        cfg["smscs"][0]["packed_gsm"] = True
        daemon.path.write_text(yaml.safe_dump(cfg))
        assert daemon.proc is not None
        os.kill(daemon.proc.pid, signal.SIGHUP)

        def said(what: str) -> bool:
            return what in daemon.log.read_text()

        await wait_until(lambda: said("acceptors' copy of the configuration was not updated"), 15)
        # The reload did not reach the acceptors: the metric an alert watches says so.
        scraped = await scrape(daemon.port)
        assert scraped.series("smpp_bridge_config_last_reload_successful") == {frozenset(): 0.0}
        # The owner's pass has gone over the (empty) queue: nothing waits for it any more.
        await wait_until(lambda: said("re-encoded waiting messages after a reload"), 15)
        async with client_for(daemon.port, creds) as c:
            await c.send(NUMBER, text="later")
        await wait_until(lambda: len(sim.messages) == 1, 15)
        await wait_until(lambda: all(s != "queued" for s, _ in _stored(tmp_path / "bridge.db")))
    finally:
        daemon.stop()
        await sim.stop()
    # The acceptor encoded it unpacked (5 octets of "later"); the owner sent it packed.
    assert [m.text for m in sim.messages] == ["later"], daemon.log.read_text()[-3000:]
    packed = bytes.fromhex("ec30bd2c07")  # "later": 5 septets packed
    assert [sm for _s, sm in _stored(tmp_path / "bridge.db")] == [packed]
    assert "claimed message encoded again" in daemon.log.read_text()


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_an_acceptor_on_the_old_configuration_beside_a_reloaded_owner(
    tmp_path: Path, request: pytest.FixtureRequest, engine: str
) -> None:
    """The same on both engines, in one process: an acceptor (its own Daemon, on the store the
    owner sends from) still runs the configuration before the reload when the owner's pass is
    over. Its sends carry the wire options they were encoded for; the owner, claiming them,
    encodes them again for the SMSC as it is configured now (packed), and the SMSC reads them."""
    sim_port = free_port()
    sim = await _sim(tmp_path, sim_port, packed_gsm=True)
    data = _external_sim_config(tmp_path, sim_port)
    if engine == "postgres":
        data["store"] = {"engine": "postgres", "dsn": request.getfixturevalue("pg_dsn")}
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(data))
    owner = Daemon(load_config(str(path)), config_path=str(path))
    old = {**data, "server": {**data["server"], "port": free_port()}}
    acceptor = Daemon(parse_config(old, env={}, base_dir=tmp_path), role="acceptor")
    await owner.start()
    try:
        await acceptor.start()
        creds = await create_account(owner)
        data["smscs"][0]["packed_gsm"] = True
        path.write_text(yaml.safe_dump(data))
        assert await owner.reload_from_file()
        assert owner.dispatcher is not None
        await wait_until(lambda: not owner.dispatcher._rewired, 10)  # the pass is over
        async with client_for(acceptor.http_port or 0, creds) as c:
            sent = await c.send(NUMBER, text="later")
            await wait_until(lambda: len(sim.messages) == 1, 15)
            mid = sent["messages"][0]["id"]
            await final_status(c, mid)
        assert [m.text for m in sim.messages] == ["later"]
        assert owner.dispatcher.reencoded_claimed == 1
    finally:
        await acceptor.stop()
        await owner.stop()
        await sim.stop()
