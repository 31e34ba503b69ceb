"""Split a TCP byte stream into SMPP PDUs by their command_length.

TCP hands us arbitrary chunks: half a PDU, or fifty PDUs in one read. ``Framer`` keeps the partial
tail and returns whole frames only. Buffered octets are moved a constant number of times overall (a
bytearray plus a read offset, compacted only when the consumed prefix is large), so a 64 KiB PDU
arriving one octet at a time costs linear, not quadratic, work. Pure: no sockets, no clock.
"""

from __future__ import annotations

from struct import Struct
from typing import Final

from bridge.smpp.constants import ESME_RINVCMDLEN

__all__ = ["MAX_PDU", "MIN_PDU", "FrameError", "Framer"]

MAX_PDU: Final = 65536
MIN_PDU: Final = 16

_COMPACT_AT: Final = 65536
_U32 = Struct(">I")
_HDR = Struct(">IIII")


class FrameError(Exception):
    """command_length is < 16 or > MAX_PDU: the stream cannot be resynchronised.

    The caller answers generic_nack with ``status`` (ESME_RINVCMDLEN) and ``seq``, then closes.
    ``frames`` holds the complete frames that preceded the bad header in the same ``feed`` call, so
    they can still be handled (or at least accounted for) before closing.
    """

    code: Final = "ESME_RINVCMDLEN"

    def __init__(
        self, message: str, seq: int = 0, command_id: int = 0, frames: list[bytes] | None = None
    ) -> None:
        super().__init__(message)
        self.status = ESME_RINVCMDLEN
        self.message = message
        self.seq = seq
        self.command_id = command_id
        self.frames: list[bytes] = frames if frames is not None else []


class Framer:
    """Accumulates stream bytes; ``feed`` returns the complete frames, in order.

    After a FrameError the framer stays broken: every later ``feed`` raises again, because nothing
    after a bad length can be trusted to start on a PDU boundary.
    """

    __slots__ = ("_buf", "_error", "_off", "max_pdu")

    def __init__(self, max_pdu: int = MAX_PDU) -> None:
        self._buf = bytearray()
        self._off = 0
        self._error: str | None = None
        self.max_pdu = max_pdu

    @property
    def buffered(self) -> int:
        """Octets held for an incomplete frame (for limits and tests)."""
        return len(self._buf) - self._off

    def take(self, data: bytes) -> bytes:
        """The stream's octets from the first not yet framed: those held before `data` (the
        buffer emptied) and `data`, or `data` itself when none are held (the usual read), or b""
        when the frame held is still not whole with `data` (kept, `data` after it). For a
        reader that frames them itself (`BindSession.receive_data`, session 62: a list of
        frames built and walked again a read, the length read twice a frame) and hands `feed`
        what it does not take whole: it then keeps it, or raises, as it would have. Raises
        FrameError once broken, as `feed`."""
        if self._error is not None:
            raise FrameError(self._error)
        buf = self._buf
        if self._off == len(buf):
            return data if type(data) is bytes else bytes(data)
        off = self._off
        held = len(buf) - off
        if held >= 4:
            (length,) = _U32.unpack_from(buf, off)
            if MIN_PDU <= length <= self.max_pdu and held + len(data) < length:
                # The frame held is still not whole with `data`: kept with it, as `feed`
                # keeps it, and nothing to read (b""). Joined to a new bytes here, the held
                # octets were copied twice a read (here and back by `feed`): a 64 KiB PDU
                # arriving an octet a read cost ~4 G octets copied, quadratic, where `feed`
                # alone is linear (session 62's review, r4).
                buf += data
                return b""
        src = bytes(memoryview(buf)[off:]) + data
        buf.clear()
        self._off = 0
        return src

    def feed(self, data: bytes) -> list[bytes]:
        if self._error is not None:
            raise FrameError(self._error)
        buf = self._buf
        if self._off == len(buf):
            # Nothing pending (the common case): slice frames straight out of ``data``.
            src: bytes | bytearray = data if type(data) is bytes else bytes(data)
            off = 0
            buf.clear()
            self._off = 0
        else:
            buf += data
            src = buf
            off = self._off
        n = len(src)
        frames: list[bytes] = []
        max_pdu = self.max_pdu
        while n - off >= 4:
            (length,) = _U32.unpack_from(src, off)
            if length < MIN_PDU:
                self._fail(f"command_length {length} is below the 16-octet header", 0, 0, frames)
            if length > max_pdu:
                if n - off < 16:
                    break  # wait for the header, to echo its sequence number in generic_nack
                _, cid, _, seq = _HDR.unpack_from(src, off)
                self._fail(f"command_length {length} exceeds {max_pdu}", seq, cid, frames)
            end = off + length
            if end > n:
                break
            # Not buf: src is `data`, bytes, whose slice is bytes (mypy cannot tell it from the
            # `is`, and a check per frame would cost on every PDU received).
            frames.append(bytes(src[off:end]) if src is buf else src[off:end])  # type: ignore[arg-type]
            off = end
        if src is buf:
            if off == n:
                buf.clear()
                off = 0
            elif off >= _COMPACT_AT or off * 2 >= n:
                # Compact only when the consumed prefix is large or outweighs the kept tail, so
                # each octet is moved O(1) times overall.
                del buf[:off]
                off = 0
        else:
            if off < n:
                buf += memoryview(src)[off:]
            off = 0
        self._off = off
        return frames

    def _fail(self, message: str, seq: int, cid: int, frames: list[bytes]) -> None:
        self._error = message
        self._buf = bytearray()
        self._off = 0
        raise FrameError(message, seq, cid, frames)
