"""Coalescing: concurrent calls made in one event-loop iteration share one batch call.

The receiver's group commit (concurrent webhook requests share one INSERT and one commit)
and the worker's coalesced statements (the jobs it runs at once share one claim, lookup
and credit statement, and arq's job clean-ups) are all this one mechanism. `submit(item)`
queues the item and schedules a flush with `call_soon`, so every caller that submits during
the current iteration joins it. At most `max_inflight` batches run at once (each holds one
pooled connection); while they are busy, new items queue up and form a larger next batch,
so batches grow exactly when load does.

`run_batch` receives the items in submit order and returns one result per item: a value,
or an exception that only that item's caller sees. If `run_batch` raises, every caller in
the batch gets that error — unless it is one of `alone_on` and the batch had more than one
item: then each caller runs its own item alone (`run_one`), concurrently, so that one bad
item (an unstorable row, a purchase for a missing user, a user locked elsewhere) never
fails or holds up its neighbours. This is the one "batch, then each alone" of the service.
A caller cancelled while waiting (a timed-out job, a client that
went away) does not cancel the batch: its transaction commits for everyone or for no one.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

BatchRunner = Callable[[list[Item]], Awaitable[Sequence[Result | Exception]]]


class _RunAlone(Exception):
    """The batch failed as a whole with an `alone_on` error: run the item alone."""


@dataclass
class _Waiting(Generic[Item, Result]):
    item: Item
    future: asyncio.Future[Result]


class Coalescer(Generic[Item, Result]):
    """Batches concurrent `submit` calls into calls of `run_batch` (see the module doc)."""

    def __init__(
        self,
        run_batch: BatchRunner[Item, Result],
        *,
        max_batch: int = 256,
        max_inflight: int = 2,
        interrupted: Callable[[], Exception] = lambda: RuntimeError("batch interrupted"),
        run_one: Callable[[Item], Awaitable[Result]] | None = None,
        alone_on: tuple[type[Exception], ...] = (),
        orphaned: Callable[[Item, Result], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        # Told of each result whose caller was cancelled meanwhile (e.g. a claim that took
        # an event for a job that no longer runs), so it can be undone.
        self._orphaned = orphaned
        self._run_one = run_one
        self._alone_on = alone_on if run_one is not None else ()
        self._max_batch = max(1, max_batch)
        self._max_inflight = max(1, max_inflight)
        self._interrupted = interrupted
        self._waiting: list[_Waiting[Item, Result]] = []
        self._scheduled = False
        self._inflight: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The loop this coalescer runs on, asked of asyncio only when it changes: on Python
        3.11 each `get_running_loop()` is a `getpid()` system call, and `submit` runs once
        per event and statement (5 % of a worker's CPU on the credit bench)."""
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    async def submit(self, item: Item) -> Result:
        """The result for `item` once its batch has run; raises that item's error."""
        future: asyncio.Future[Result] = self._running_loop().create_future()
        self._waiting.append(_Waiting(item, future))
        self._schedule()
        try:
            return await future
        except _RunAlone:
            assert self._run_one is not None
            return await self._run_one(item)

    async def drain(self) -> None:
        """Wait for every queued and in-flight batch (on shutdown, before the pool closes)."""
        while self._waiting or self._inflight or self._scheduled:
            if self._inflight:
                await asyncio.wait(set(self._inflight))
            else:
                await asyncio.sleep(0)

    def _schedule(self) -> None:
        if not self._scheduled and len(self._inflight) < self._max_inflight:
            self._scheduled = True
            self._running_loop().call_soon(self._start_flush)

    def _start_flush(self) -> None:
        self._scheduled = False
        if not self._waiting or len(self._inflight) >= self._max_inflight:
            return
        batch = self._waiting[: self._max_batch]
        self._waiting = self._waiting[self._max_batch :]
        # A fresh context: the batch's logs must not carry the first caller's event id.
        task = self._running_loop().create_task(self._flush(batch), context=contextvars.Context())
        self._inflight.add(task)
        task.add_done_callback(functools.partial(self._flush_done, batch))
        if self._waiting:  # more than one batch's worth: start the next one too
            self._schedule()

    def _flush_done(self, batch: list[_Waiting[Item, Result]], task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        _fail_all(batch, self._interrupted())  # cancelled, even before it started: answer all
        if self._waiting:
            self._schedule()

    async def _flush(self, batch: list[_Waiting[Item, Result]]) -> None:
        try:
            results = await self._run_batch([waiting.item for waiting in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch returned {len(results)} results for {len(batch)}")
            for waiting, result in zip(batch, results, strict=True):
                if waiting.future.done():  # its caller was cancelled
                    if self._orphaned is not None and not isinstance(result, Exception):
                        self._orphaned(waiting.item, result)
                    continue
                if isinstance(result, Exception):
                    waiting.future.set_exception(result)
                else:
                    waiting.future.set_result(result)
        except self._alone_on as exc:
            _fail_all(batch, _RunAlone() if len(batch) > 1 else exc)
        except Exception as exc:  # every caller must get an answer, whatever failed
            _fail_all(batch, exc)


def _fail_all(batch: Sequence[_Waiting[Item, Result]], exc: Exception) -> None:
    for waiting in batch:
        if not waiting.future.done():
            waiting.future.set_exception(exc)
