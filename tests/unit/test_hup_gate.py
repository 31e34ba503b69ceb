"""reload.HupGate: SIGHUPs around start-up."""

from __future__ import annotations

from bridge.reload import HupGate


def test_a_signal_while_starting_is_applied_once_started_and_only_once() -> None:
    done: list[int] = []
    gate = HupGate(lambda: done.append(1))
    gate.signal()
    gate.signal()
    assert done == []
    gate.opened(changed=False)
    assert done == [1]
    gate.signal()
    assert done == [1, 1]


def test_a_file_changed_since_it_was_read_is_applied_at_start() -> None:
    done: list[int] = []
    HupGate(lambda: done.append(1)).opened(changed=True)
    assert done == [1]
    quiet: list[int] = []
    HupGate(lambda: quiet.append(1)).opened(changed=False)
    assert quiet == []
