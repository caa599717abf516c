"""The coalescer on its own: calls of one loop iteration share a batch, errors stay with
their callers, a failed batch answers everyone, a cancelled caller cancels nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from webhook_worker.coalesce import Coalescer

pytestmark = pytest.mark.timeout(10)


class Recorder:
    """A batch runner that records its batches; 'bad' items fail alone."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.batches: list[list[str]] = []
        self.gate = gate

    async def __call__(self, items: list[str]) -> Sequence[str | Exception]:
        self.batches.append(items)
        if self.gate is not None:
            await self.gate.wait()
        return [ValueError(item) if item.startswith("bad") else item.upper() for item in items]


async def test_calls_in_one_iteration_share_one_batch_in_submit_order() -> None:
    runner = Recorder()
    coalescer: Coalescer[str, str] = Coalescer(runner, max_inflight=1)
    results = await asyncio.gather(*(coalescer.submit(f"e{i}") for i in range(50)))
    assert results == [f"E{i}" for i in range(50)]
    assert runner.batches == [[f"e{i}" for i in range(50)]]


async def test_an_item_error_reaches_only_its_caller() -> None:
    coalescer: Coalescer[str, str] = Coalescer(Recorder())
    results = await asyncio.gather(
        coalescer.submit("a"),
        coalescer.submit("bad"),
        coalescer.submit("b"),
        return_exceptions=True,
    )
    assert results[0] == "A" and results[2] == "B"
    assert isinstance(results[1], ValueError)


async def test_a_failing_batch_answers_every_caller_with_its_error() -> None:
    async def broken(items: list[str]) -> Sequence[str]:
        raise ConnectionResetError("lost")

    coalescer: Coalescer[str, str] = Coalescer(broken)
    results = await asyncio.gather(
        *(coalescer.submit(str(i)) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionResetError) for r in results)


async def test_a_result_count_mismatch_is_an_error_not_a_hang() -> None:
    async def short(items: list[str]) -> Sequence[str]:
        return items[:-1]

    coalescer: Coalescer[str, str] = Coalescer(short)
    results = await asyncio.gather(
        coalescer.submit("a"), coalescer.submit("b"), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)


async def test_while_batches_are_busy_new_items_form_a_larger_next_batch() -> None:
    gate = asyncio.Event()
    runner = Recorder(gate)
    coalescer: Coalescer[str, str] = Coalescer(runner, max_inflight=1)
    first = asyncio.create_task(coalescer.submit("first"))
    await asyncio.sleep(0)  # the first batch starts and waits on the gate
    await asyncio.sleep(0)
    later = [asyncio.create_task(coalescer.submit(f"later{i}")) for i in range(10)]
    await asyncio.sleep(0)
    assert runner.batches == [["first"]]
    gate.set()
    assert await first == "FIRST"
    assert await asyncio.gather(*later) == [f"LATER{i}" for i in range(10)]
    assert runner.batches == [["first"], [f"later{i}" for i in range(10)]]


async def _loop_turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_max_batch_splits_a_burst() -> None:
    runner = Recorder()
    coalescer: Coalescer[str, str] = Coalescer(runner, max_batch=4, max_inflight=8)
    await asyncio.gather(*(coalescer.submit(str(i)) for i in range(10)))
    assert [len(b) for b in runner.batches] == [4, 4, 2]


async def test_a_cancelled_caller_does_not_cancel_its_batch() -> None:
    gate = asyncio.Event()
    runner = Recorder(gate)
    coalescer: Coalescer[str, str] = Coalescer(runner)
    doomed = asyncio.create_task(coalescer.submit("doomed"))
    kept = asyncio.create_task(coalescer.submit("kept"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    doomed.cancel()
    gate.set()
    assert await kept == "KEPT"
    with pytest.raises(asyncio.CancelledError):
        await doomed
    await coalescer.drain()
    assert runner.batches == [["doomed", "kept"]]


async def test_a_batch_cancelled_at_shutdown_answers_its_callers() -> None:
    """At shutdown the loop cancels every task (as `asyncio.run` does): the callers of a
    running batch, and of one whose task was cancelled before it ever ran, get an answer."""
    gate = asyncio.Event()
    runner = Recorder(gate)
    coalescer: Coalescer[str, str] = Coalescer(
        runner, interrupted=lambda: TimeoutError("shutting down")
    )
    callers = [asyncio.create_task(coalescer.submit("x"))]
    await _loop_turns(5)
    assert runner.batches == [["x"]]  # running, held by the gate
    callers.append(asyncio.create_task(coalescer.submit("y")))
    await asyncio.sleep(0)  # y is queued and its flush scheduled
    await asyncio.sleep(0)  # y's batch task exists but has not run a step
    assert runner.batches == [["x"]]
    me = asyncio.current_task()
    for task in asyncio.all_tasks():
        if task is not me and task not in callers:
            task.cancel()
    for caller in callers:
        with pytest.raises(TimeoutError, match="shutting down"):
            await caller
    assert runner.batches == [["x"]]


class Poisoned(Exception):
    """A whole batch fails because of one of its items."""


async def test_a_batch_failing_with_an_alone_on_error_runs_each_item_alone() -> None:
    alone: list[str] = []

    async def batch(items: list[str]) -> Sequence[str]:
        if "poison" in items:
            raise Poisoned("the whole batch rolled back")
        return [item.upper() for item in items]

    async def one(item: str) -> str:
        alone.append(item)
        if item == "poison":
            raise Poisoned(item)
        return item.upper()

    coalescer: Coalescer[str, str] = Coalescer(batch, run_one=one, alone_on=(Poisoned,))
    results = await asyncio.gather(
        *(coalescer.submit(item) for item in ("a", "poison", "b")), return_exceptions=True
    )
    assert results[0] == "A" and results[2] == "B"
    assert isinstance(results[1], Poisoned) and str(results[1]) == "poison"
    assert sorted(alone) == ["a", "b", "poison"]
    # A batch of one that fails is that item's own error: nothing runs again.
    alone.clear()
    with pytest.raises(Poisoned, match="whole batch"):
        await coalescer.submit("poison")
    assert alone == []


async def test_other_errors_still_fail_the_whole_batch_without_running_alone() -> None:
    ran_alone: list[str] = []

    async def batch(items: list[str]) -> Sequence[str]:
        raise RuntimeError("a bug")

    async def one(item: str) -> str:
        ran_alone.append(item)
        return item

    coalescer: Coalescer[str, str] = Coalescer(batch, run_one=one, alone_on=(Poisoned,))
    results = await asyncio.gather(
        *(coalescer.submit(item) for item in ("a", "b")), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results) and ran_alone == []


def test_a_coalescer_serves_the_next_event_loop_once_the_first_has_ended() -> None:
    """It keeps its loop between calls (asking asyncio costs a system call on 3.11), so it
    must notice a new one: a process may run a loop, close it and start another."""
    runner = Recorder()
    coalescer: Coalescer[str, str] = Coalescer(runner)

    async def one(item: str) -> str:
        return await coalescer.submit(item)

    assert asyncio.run(one("first")) == "FIRST"
    assert asyncio.run(one("second")) == "SECOND"
    assert runner.batches == [["first"], ["second"]]
