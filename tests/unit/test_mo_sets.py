"""Placing a long MO's part among the messages kept under its reference (bridge.domain.mo_sets):
the order parts come in is the only signal, and each rule is checked on the pattern it is for."""

from __future__ import annotations

from dataclasses import dataclass, replace

from bridge.domain.mo_sets import completed, place_part


@dataclass(frozen=True)
class Part:
    seq: int
    payload: bytes
    received_at: int
    total: int = 3
    data_coding: int = 0
    set_no: int = 0
    locking: int = 0
    single: int = 0


def run(*parts: Part) -> list[list[bytes]]:
    """Feed the parts in order as the store does; the messages completed, in order."""
    held: list[Part] = []
    done: list[list[bytes]] = []
    for p in parts:
        placed = replace(p, set_no=place_part(held, p))
        held = [h for h in held if (h.set_no, h.seq) != (placed.set_no, placed.seq)] + [placed]
        whole = completed(held, placed)
        if whole is not None:
            done.append([w.payload for w in whole])
            held = [h for h in held if h.set_no != placed.set_no]
    return done


def P(name: str, at: int, total: int = 3, dc: int = 0) -> Part:
    return Part(int(name[1]), name.encode(), at, total, dc)


def test_one_message_in_any_order() -> None:
    assert run(P("A3", 1), P("A1", 2), P("A2", 3)) == [[b"A1", b"A2", b"A3"]]


def test_a_held_seq_starts_another_message_never_overwrites() -> None:
    # The first lost its part 3 for good: the second is whole, the first waits (incomplete).
    assert run(P("A1", 1), P("A2", 2), P("B1", 3), P("B2", 4), P("B3", 5)) == [
        [b"B1", b"B2", b"B3"]
    ]


def test_a_late_part_goes_to_the_message_it_continues() -> None:
    assert run(P("A1", 1), P("A2", 2), P("B1", 3), P("A3", 4), P("B2", 5), P("B3", 6)) == [
        [b"A1", b"A2", b"A3"],
        [b"B1", b"B2", b"B3"],
    ]


def test_a_lost_middle_part_is_not_filled_by_the_next_message() -> None:
    assert run(P("A1", 1), P("A3", 2), P("B1", 3), P("B2", 4), P("B3", 5)) == [
        [b"B1", b"B2", b"B3"]
    ]


def test_a_resent_part_is_kept_once_not_a_new_message() -> None:
    held = [Part(1, b"A1", 1, set_no=0), Part(1, b"B1", 2, set_no=1), Part(2, b"A2", 3)]
    assert place_part(held, Part(2, b"A2", 9)) == 0


def test_another_total_or_coding_is_another_message() -> None:
    held = [Part(1, b"A1", 1)]
    assert place_part(held, Part(2, b"x", 2, total=2)) == 1
    assert place_part(held, Part(2, b"x", 2, data_coding=8)) == 1
    assert place_part(held, Part(2, b"x", 2)) == 0


def test_set_numbers_are_reused_and_not_capped() -> None:
    held = [Part(1, b"A1", 1, set_no=0), Part(1, b"C1", 1, set_no=2)]
    assert place_part(held, Part(1, b"B1", 2)) == 1
    # mo_parts.set_no is a column of its own (migration 0021): no number past 15 bits is folded
    # into the last set, as when it was packed above the 16-bit reference.
    full = [Part(1, b"%d" % n, 1, set_no=n) for n in range(0x8000)]
    assert place_part(full, Part(1, b"new", 2)) == 0x8000


def test_the_same_octets_under_other_language_tables_are_not_a_resend() -> None:
    """National language tables (UDH IEs 0x25, 0x24) make the same septets another text: a
    part naming other tables is another message's, not the held part sent again."""
    held = [Part(1, b"A1", 1, set_no=0, locking=1)]
    assert place_part(held, Part(1, b"A1", 2, locking=1)) == 0  # resent: kept once
    assert place_part(held, Part(1, b"A1", 2)) == 1
    assert place_part(held, Part(1, b"A1", 2, locking=1, single=1)) == 1
