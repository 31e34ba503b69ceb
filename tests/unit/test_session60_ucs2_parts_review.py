"""`split.udh_ucs2_parts` against `encode_message` where session 60's own test does not reach.

Why (session 60's review): that test draws its options over split, Latin-1, smart and
`max_parts` with a counter of one lane; an acceptor worker draws from a counter of several lanes
(`RefCounter(lane=, lanes=)`), and an SMSC may set `gsm_data_coding: 1` (IA5, where a GSM letter
outside ASCII goes UCS-2) or packed GSM. Over every such option, for texts from 71 characters
(the send's threshold) to past a few parts: the same parts and reference when it answers, and
the counter where the old path leaves it either way (None: nothing drawn, encode_message draws).
"""

from __future__ import annotations

import itertools
import random
from functools import partial

from bridge.text.split import (
    EncodeOptions,
    RefCounter,
    TextError,
    encode_message,
    udh_ucs2_parts,
)

ALPHABET = [*"中文字АБВabc €…“”é\n\x1b{}", "😀", "\ud800"]
OPTIONS = [
    EncodeOptions(split=s, gsm_data_coding=dc, allow_latin1=l1, packed_gsm=p, smart=sm, max_parts=m)
    for s, dc, l1, p, sm, m in itertools.product(
        ("udh8", "udh16", "sar", "payload"),
        (0, 1),
        (False, True),
        (False, True),
        (False, True),
        (1, 2, 3, 255),
    )
]


def test_udh_ucs2_parts_under_every_option_and_laned_counters() -> None:
    rng = random.Random(60)
    served = 0
    for _ in range(3000):
        length = rng.choice((71, 72, 100, 133, 134, 135, 201, 202, 203, 264, 265, 400))
        letters = ALPHABET[:3] if rng.random() < 0.5 else ALPHABET
        text = "".join(rng.choice(letters) for _ in range(length))
        opts = rng.choice(OPTIONS)
        lanes = rng.choice((1, 1, 3, 7))
        lane = rng.randrange(lanes)
        start = rng.randrange(65536)
        fast = RefCounter(start=partial(int, start), lane=lane, lanes=lanes)
        slow = RefCounter(start=partial(int, start), lane=lane, lanes=lanes)
        got = udh_ucs2_parts(text, opts, fast, "+8613800000000")
        if got is None:
            continue  # the send encodes it with encode_message, drawing from `fast` itself
        served += 1
        bits = 8 if opts.split == "udh8" else 16
        try:
            enc = encode_message(text, opts, partial(slow.next, "+8613800000000", bits))
        except TextError as exc:
            raise AssertionError(f"served a text encode_message refuses: {text!r} {opts}") from exc
        assert (enc.text, enc.data_coding, str(enc.encoding)) == (text, 8, "ucs2")
        want = [(p.seq, p.total, p.esm_class, p.short_message, p.tlvs) for p in enc.parts]
        assert [(i, len(got), 0x40, sm, ()) for i, sm in enumerate(got, 1)] == want, (text, opts)
        # The next reference either draws for the number is the same: one drawn, as there.
        assert fast.next("+8613800000000", 16) == slow.next("+8613800000000", 16)
    assert served > 200  # the long UCS-2 texts it serves were drawn, not only the others
