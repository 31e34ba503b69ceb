"""Session 60: receipts read without their ShortMessage, over real TCP (README note 27).

An SMSC written here binds the ESME and sends a mix of deliver_sm (standard receipts with their
TLVs, a receipt in message_payload, an unparsable one, one marked by its TLV alone, an MO, a
malformed receipt the session salvages) in one write; the real `SmppProtocol` and `BindSession`
through `open_bind`, the real `Inbound` with a store whose commit is a stub. With the receipt
handler (`on_receipt=inbound.on_receipt`, as app.py wires it) the receipts marked by esm_class
reach it with the deliver_sm's ShortMessage decode made unusable for them; what is stored, the
answers the SMSC reads and the counts are those of the same bind without it (the general path).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

from bridge.config import SmscConfig
from bridge.pipeline.inbound import Inbound
from bridge.smpp import codec
from bridge.smpp import constants as C
from bridge.smpp.codec import Bind, BindResp, Pdu, encode
from bridge.smpp.framing import Framer
from bridge.smpp.protocol import open_bind
from bridge.smpp.session import BindMode, BindSession
from bridge.store.models import ReceiptOutcome

_TEXT = (
    b"id:%s sub:001 dlvrd:001 submit date:2612061100 done date:2612061101 stat:%s err:000 "
    b"text:??????????"
)


def _deliver(seq: int, esm: int, sm: bytes, tlvs: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(
        [b"\0\x01\x018613800138000\0\x05\x00BRIDGE\0", bytes([esm, 0, 0]), b"\0\0",
         b"\x00\x00\x00\x00", bytes([len(sm)]), sm]
        + [struct.pack(">HH", t, len(v)) + v for t, v in tlvs]
    )  # fmt: skip
    return struct.pack(">IIII", 16 + len(body), C.DELIVER_SM, 0, seq) + body


def _frames() -> bytes:
    out = []
    for i in range(30):
        mid = b"%08X" % (0x12D687 + i)
        stat = b"DELIVRD" if i % 3 else b"UNDELIV"
        tlvs = [
            (C.RECEIPTED_MESSAGE_ID, mid + b"\0"),
            (C.MESSAGE_STATE, b"\x02" if i % 3 else b"\x05"),
        ]
        if not i % 3:
            tlvs.append((C.NETWORK_ERROR_CODE, b"\x03\x00\x22"))
        out.append(_deliver(100 + i, C.ESM_DELIVERY_RECEIPT, _TEXT % (mid, stat), tlvs))
    out.append(_deliver(200, 0x04, b"", [(C.MESSAGE_PAYLOAD, _TEXT % (b"0A1B", b"EXPIRED"))]))
    out.append(_deliver(201, 0x04, b"no id here", []))  # unparsable: answered at once
    out.append(
        _deliver(202, 0x00, _TEXT % (b"77", b"DELIVRD"), [(C.RECEIPTED_MESSAGE_ID, b"77\0")])
    )
    out.append(_deliver(203, 0x00, b"hello", []))  # an MO
    out.append(_deliver(204, 0x20, _TEXT % (b"0C", b"UNDELIV"), []))  # intermediate
    bad = bytearray(_deliver(205, 0x04, _TEXT % (b"0D", b"DELIVRD"), []))
    bad += b"\x00\x1e\x00\x09AB"  # a TLV cut short: salvaged by the general path
    struct.pack_into(">I", bad, 0, len(bad))
    out.append(bytes(bad))
    return b"".join(out)


class _Smsc:
    def __init__(self) -> None:
        self.answers: list[tuple[int, int, int]] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self._writers.append(w)
        framer = Framer()
        while data := await reader.read(65536):
            for frame in framer.feed(data):
                _len, cid, status, seq = struct.unpack(">IIII", frame[:16])
                if cid == C.BIND_TRANSCEIVER:
                    w.write(encode(Pdu(C.BIND_TRANSCEIVER_RESP, 0, seq, BindResp("smsc"))))
                    w.write(_frames())
                else:
                    self.answers.append((cid, status, seq))


async def _until(cond: Callable[[], bool], within_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def _run(with_handler: bool) -> dict[str, Any]:
    stored: list[Any] = []
    mos: list[Any] = []

    class Store:
        commits_in_order = True

        async def apply_receipts(self, items: list[Any], now: int) -> ReceiptOutcome:
            stored.extend(items)
            return ReceiptOutcome(len(items), 0)

    smsc = _Smsc()
    await smsc.start()
    cfg = SmscConfig(
        name="s", system_id="t", password="t", port=smsc.port, resp_id_base="hex",
        receipt_id_base="hex",
    )  # fmt: skip
    inbound = Inbound(Store(), {"s": cfg}, batch_delay_s=0.0, clock=lambda: 1_000.0)  # type: ignore[arg-type]

    async def mo(_smsc: str, body: Any) -> int:
        mos.append(body.short_message)
        return C.ESME_ROK

    inbound._mo_guarded = mo  # type: ignore[method-assign,assignment]  # no MO store here
    session = BindSession(Bind("t", "t"), BindMode.TRANSCEIVER, window=10)
    proto = await open_bind(
        "127.0.0.1", smsc.port, session, lambda body, _s: inbound.on_deliver("s", body),
        on_receipt=(lambda ev: inbound.on_receipt("s", ev)) if with_handler else None,
    )  # fmt: skip
    try:
        await proto.wait_bound()
        await _until(lambda: len(smsc.answers) == 36)
        await inbound.drain()
        return {
            "answers": sorted(smsc.answers, key=lambda a: a[2]),
            "stored": [(i.smsc_msg_id, i.state, i.stat, i.err, i.done_at, i.raw) for i in stored],
            "mos": mos,
            "counts": (inbound.receipts, inbound.unparsable, proto.delivers, session.read_receipts),
        }
    finally:
        proto.abort("test over")
        await smsc.close()


async def test_receipts_read_without_their_shortmessage_store_and_answer_as_before() -> None:
    general = await _run(False)
    decoders = codec._DECODERS
    real = decoders[C.DELIVER_SM]

    def only_others(f: bytes, status: int) -> Any:
        body = real(f, status)
        assert (body.esm_class & 0x3C) not in (4, 8, 16, 32), "a receipt decoded generally"
        return body

    decoders[C.DELIVER_SM] = only_others
    try:
        fast = await _run(True)
    finally:
        decoders[C.DELIVER_SM] = real
    assert fast["counts"][3] is True and general["counts"][3] is False
    assert fast["counts"][:3] == general["counts"][:3] == (34, 1, 36)
    assert fast["stored"] == general["stored"] and len(fast["stored"]) == 34
    assert fast["answers"] == general["answers"]
    assert {a[1] for a in fast["answers"]} == {C.ESME_ROK}
    assert fast["mos"] == general["mos"] == [b"hello"]
