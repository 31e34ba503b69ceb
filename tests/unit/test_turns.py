"""Turns: one holder at a time, priority first, FIFO within a priority, cancellation safe."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.smpp.turns import Turns


async def _holders(turns: Turns, plan: list[tuple[str, bool]]) -> list[str]:
    """Each name takes a turn (in `plan` order of arrival), records itself, yields, gives."""
    order: list[str] = []

    async def one(name: str, priority: bool) -> None:
        await turns.take(priority)
        try:
            order.append(name)
            await asyncio.sleep(0)
        finally:
            turns.give()

    tasks = []
    for name, priority in plan:
        tasks.append(asyncio.create_task(one(name, priority)))
        await asyncio.sleep(0)  # arrives now: queued behind the ones before
    await asyncio.gather(*tasks)
    return order


async def test_the_first_takes_it_at_once_then_priority_then_arrival() -> None:
    turns = Turns()
    await turns.take()  # held by the test
    got = asyncio.create_task(
        _holders(turns, [("a", False), ("b", True), ("c", False), ("d", True)])
    )
    await asyncio.sleep(0.01)
    assert turns.waiting == 4
    turns.give()
    assert await got == ["b", "d", "a", "c"]
    assert turns.waiting == 0
    await asyncio.wait_for(turns.take(), 0.1)  # free again: taken at once
    turns.give()


async def test_a_cancelled_waiter_leaves_the_line() -> None:
    turns = Turns()
    await turns.take()
    a = asyncio.create_task(turns.take())
    b = asyncio.create_task(turns.take())
    await asyncio.sleep(0)
    a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a
    assert turns.waiting == 1
    turns.give()
    await asyncio.wait_for(b, 0.1)  # b holds it now
    c = asyncio.create_task(turns.take())
    await asyncio.sleep(0)
    assert not c.done()  # held by b
    turns.give()
    await asyncio.wait_for(c, 0.1)
    turns.give()


async def test_a_waiter_cancelled_as_it_is_handed_the_turn_passes_it_on() -> None:
    turns = Turns()
    await turns.take()
    a = asyncio.create_task(turns.take())
    b = asyncio.create_task(turns.take())
    await asyncio.sleep(0)
    turns.give()  # a is handed the turn, but has not run yet
    a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a
    await asyncio.wait_for(b, 0.1)  # not lost with a: b has it
    turns.give()
    await asyncio.wait_for(turns.take(), 0.1)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(0, 3)), min_size=1, max_size=25),
    st.integers(0, 2**32 - 1),
)
def test_never_two_holders_and_every_waiter_not_cancelled_gets_a_turn(
    ops: list[tuple[bool, bool, int]], seed: int
) -> None:
    """Waiters arrive (some with priority), hold for a few loop steps, some are cancelled at a
    random moment: at most one holds at a time, and each that was not cancelled held once."""

    async def run() -> None:
        rng = random.Random(seed)
        turns = Turns()
        holding = 0
        held: list[int] = []

        async def waiter(i: int, priority: bool, steps: int) -> None:
            nonlocal holding
            await turns.take(priority)
            try:
                holding += 1
                assert holding == 1
                held.append(i)
                for _ in range(steps):
                    await asyncio.sleep(0)
            finally:
                holding -= 1
                turns.give()

        tasks: list[asyncio.Task[None]] = []
        cancelled: set[int] = set()
        for i, (priority, cancel, steps) in enumerate(ops):
            tasks.append(asyncio.create_task(waiter(i, priority, steps)))
            if rng.random() < 0.5:
                await asyncio.sleep(0)
            if cancel:
                victim = rng.randrange(len(tasks))
                if not tasks[victim].done():
                    tasks[victim].cancel()
                    cancelled.add(victim)
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        finished = {i for i, r in enumerate(results) if not isinstance(r, BaseException)}
        assert finished | cancelled == set(range(len(ops)))
        assert sorted(held) == sorted(set(held))  # nobody twice
        assert finished <= set(held)
        await asyncio.wait_for(turns.take(), 1)  # and it is free at the end

    asyncio.run(run())
