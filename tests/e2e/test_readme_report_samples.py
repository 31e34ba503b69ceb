"""README, Webhooks: its sample status report and inbound message list the fields in the order
the daemon sends them (session 49, h6).

A receiver's author copies the samples, and some compare or log reports as text: the samples
put `webhook_id` second, where the daemon sends it last (WebhookSender.render adds it to the
rendered report). Here a real daemon sends a message through the simulator and takes a reply,
and posts both reports to a real endpoint; each sample's keys, read from README.md, must be
those of the report it stands for, in the same order."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.e2e.harness import client_for, create_account, final_status, wait_until

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def _webhooks_section() -> str:
    return README.split("### Webhooks", 1)[1].split("\n## ", 1)[0]


def status_sample() -> dict[str, Any]:
    block = re.search(
        r"```json\n(\[\{\"type\": \"message\.status\".*?)\n```", _webhooks_section(), re.S
    )
    assert block is not None, "README's Webhooks section has no sample status report"
    (report,) = json.loads(block[1])
    return dict(report)


def inbound_sample() -> dict[str, Any]:
    found = re.search(r"An inbound message: `(\{.*?\})`", _webhooks_section(), re.S)
    assert found is not None, "README's Webhooks section has no sample inbound message"
    return dict(json.loads(found[1]))


async def test_the_readme_samples_list_the_fields_the_daemon_sends_in_its_order(
    start_daemon, receiver
) -> None:
    d = await start_daemon()
    creds = await create_account(d, status_callback_url=receiver.url, mo_callback_url=receiver.url)
    receiver.secret = creds["webhook_secret"]
    async with client_for(d.http_port, creds) as c:
        sent = await c.send("+8613800138000", text="Reply YES to confirm", client_ref="order-42")
        await final_status(c, sent["messages"][0]["id"])
    await d.sim.inject_mo("8613800138000", "smpp-bridge", "YES")
    await wait_until(lambda: {r.get("type") for r in receiver.reports} >= {
        "message.status", "message.inbound"}, 15)  # fmt: skip
    assert receiver.bad_signatures == 0
    real = {r["type"]: r for r in receiver.reports}
    assert list(status_sample()) == list(real["message.status"]), real["message.status"]
    assert list(inbound_sample()) == list(real["message.inbound"]), real["message.inbound"]
