"""The worker's event slots: a job takes every free slot it can use, so events claimed
together stay one statement, and jobs in line are served in order."""

from __future__ import annotations

import asyncio

from webhook_worker.worker.event_slots import EventSlots


async def _settle() -> None:
    """Let every ready task run until it waits again (no time passes)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_job_takes_what_is_free_up_to_what_it_wants() -> None:
    slots = EventSlots(10)
    assert await slots.take(4) == 4
    assert await slots.take(100) == 6
    assert slots.free == 0


async def test_slots_freed_one_by_one_go_to_the_first_waiting_job_as_one_chunk() -> None:
    """The regression of stop 26's run A: with a semaphore, a job woken while others waited
    got one slot, and a saturated worker claimed its events one at a time."""
    slots = EventSlots(100)
    assert await slots.take(100) == 100
    second = asyncio.create_task(slots.take(100))
    third = asyncio.create_task(slots.take(100))
    await _settle()
    assert not second.done() and not third.done()
    for _ in range(100):  # a credit batch's events end in one loop iteration
        slots.release()
    await _settle()
    assert second.done() and second.result() == 100
    assert not third.done()
    slots.release(30)
    assert await third == 30


async def test_jobs_in_line_are_served_before_a_newcomer() -> None:
    slots = EventSlots(2)
    assert await slots.take(2) == 2
    waiting = asyncio.create_task(slots.take(5))
    await _settle()
    slots.release(1)
    newcomer = asyncio.create_task(slots.take(5))
    await _settle()
    assert waiting.done() and waiting.result() == 1
    assert not newcomer.done()
    slots.release(2)
    assert await newcomer == 2


async def test_a_woken_job_that_is_cancelled_passes_its_turn_on() -> None:
    slots = EventSlots(1)
    assert await slots.take(1) == 1
    first = asyncio.create_task(slots.take(1))
    second = asyncio.create_task(slots.take(1))
    await _settle()
    slots.release()  # wakes `first`…
    first.cancel()  # …which is cancelled before it runs
    await _settle()
    assert first.cancelled()
    assert second.done() and second.result() == 1
    assert slots.free == 0
