"""How many events a worker process holds at once (WORKER_MAX_EVENTS), taken a chunk at a
time: a job waits for one free slot, then takes every free slot it can use, so the events
it claims together stay one statement.

An `asyncio.Semaphore` cannot do this: once other jobs wait, `locked()` is true and a woken
job gets one slot, so a saturated worker claimed, resolved and credited its events a few
at a time; that doubled Postgres' work per event (stop 26, run A).
"""

from __future__ import annotations

import asyncio
from collections import deque


class EventSlots:
    """`take(wanted)` waits until a slot is free, then takes up to `wanted` of the free ones;
    `release(count)` gives slots back and wakes the first waiting job. Waiting jobs are
    served in order."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def take(self, wanted: int) -> int:
        if self.free == 0 or self._waiting:  # no slot, or jobs in line before this one
            while True:
                waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._waiting.append(waiter)
                try:
                    await waiter
                except asyncio.CancelledError:
                    if waiter.done() and not waiter.cancelled():
                        self._wake()  # woken, then cancelled: the next in line goes
                    raise
                finally:
                    self._waiting.remove(waiter)
                if self.free:
                    break
        taken = min(max(wanted, 1), self.free)
        self.free -= taken
        if self.free:
            self._wake()  # slots left over: the next job in line takes them
        return taken

    def release(self, count: int = 1) -> None:
        self.free += count
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiting:
            if not waiter.done():
                waiter.set_result(None)
                return
