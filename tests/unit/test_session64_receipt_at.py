"""A receipt's deliver_sm read in the bind's read buffer, not sliced out of it (session 64, README
note 27).

`BindSession._read` hands `codec.read_receipt_at` the octets of the read with the frame's
bounds, where it sliced each receipt's frame out first (`read_receipt_sm(frame)`). What must
hold: `read_receipt_at(src, start, end)` is `read_receipt_sm(src[start:end])` for every frame,
whatever comes before and after it in `src` (octets that would complete a C-string, an
sm_length or a TLV cut short at `end` must not be read), and the session's events and answers
for a read of several frames are those of the frames fed one by one.
"""

from __future__ import annotations

import random
import struct

from bridge.smpp import constants as C
from bridge.smpp.codec import Bind, BindResp, Pdu, encode, read_receipt_at, read_receipt_sm
from bridge.smpp.session import BindMode, BindSession
from tests.unit.test_session60_receipt_frame import _frame, _mutated, _random_body

# What may follow a frame in a read: NULs (a C-string's end), octets (an sm_length's), a TLV.
_AFTER = (
    b"",
    b"\0" * 40,
    bytes(range(256)),
    struct.pack(">HH", C.RECEIPTED_MESSAGE_ID, 3) + b"ab\0",
    struct.pack(">HH", C.MESSAGE_STATE, 1) + b"\x02" + b"\0" * 300,
)


def test_a_frame_read_in_place_is_the_frame_read_alone() -> None:
    """30,000 seeded bodies (session 60's: C-strings at and past their maxima, every esm_class
    kind, TLVs repeated, unknown, cut short; mutated most of the time) with random octets, NULs
    or a whole TLV before and after them: the same answer as the frame sliced out."""
    r = random.Random(64)
    taken = 0
    for _ in range(30_000):
        f = _frame(_random_body(r))
        if r.random() < 0.7:
            f = _mutated(r, f)
        before = r.choice(
            [b"", b"\0" * r.randrange(1, 20), bytes(r.randrange(256) for _ in range(9))]
        )
        after = (
            r.choice(_AFTER)
            if r.random() < 0.8
            else bytes(r.randrange(256) for _ in range(r.randrange(1, 50)))
        )
        src = before + f + after
        want = read_receipt_sm(f)
        got = read_receipt_at(src, len(before), len(before) + len(f))
        assert got == want, (src.hex(), len(before), len(f))
        assert got is None or all(type(v) is bytes for v in got[1:] if v is not None)
        taken += got is not None
    assert taken > 1_500


def _bound() -> BindSession:
    s = BindSession(Bind("t", "t"), BindMode.TRANSCEIVER, window=10)
    s.read_receipts = True
    s.start(0.0)
    s.data_to_send()
    s.receive_data(encode(Pdu(C.BIND_TRANSCEIVER_RESP, 0, 1, BindResp("smsc"))), 0.0)
    return s


def test_a_read_of_many_frames_gives_what_each_frame_alone_gives() -> None:
    """Runs of 2-6 seeded deliver_sm frames (receipts, MOs, mutated ones whose own length is
    kept right) in one read, against the same frames fed to another session one read each:
    the same events and octets written back."""
    r = random.Random(641)
    for _ in range(2_000):
        frames = []
        for k in range(r.randrange(2, 7)):
            f = _frame(_random_body(r), seq=100 + k)
            if r.random() < 0.5:
                f = _mutated(r, f)
            frames.append(f)
        one, each = _bound(), _bound()
        got = one.receive_data(b"".join(frames), 1.0)
        want = [ev for f in frames for ev in each.receive_data(f, 1.0)]
        assert got == want
        assert one.data_to_send() == each.data_to_send()
