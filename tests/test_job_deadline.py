"""A job's one deadline timer: what `asyncio.timeout_at` per event did, for all its events."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from webhook_worker.worker.job_run import EventJob, _UnderDeadline

pytestmark = pytest.mark.timeout(10)


def _job() -> Any:
    return SimpleNamespace(expired=False, bounded=set())


async def _handle(job: Any, started: asyncio.Event) -> str:
    task = asyncio.current_task()
    assert task is not None
    with _UnderDeadline(job, task):
        started.set()
        await asyncio.get_running_loop().create_future()  # never answered
    return "finished"


async def test_the_deadline_cancels_the_events_inside_it_and_each_leaves_with_timeout() -> None:
    job, started = _job(), [asyncio.Event(), asyncio.Event()]
    tasks = [asyncio.create_task(_handle(job, s)) for s in started]
    for s in started:
        await s.wait()
    assert job.bounded == set(tasks)
    EventJob._expire(job)  # what the job's timer calls
    for task in tasks:
        with pytest.raises(TimeoutError):
            await task
        assert task.cancelling() == 0  # the deadline's own cancellation, taken back
    assert job.bounded == set()


async def test_a_shutdown_during_the_deadline_stays_a_cancellation() -> None:
    job, started = _job(), asyncio.Event()
    task = asyncio.create_task(_handle(job, started))
    await started.wait()
    EventJob._expire(job)
    task.cancel()  # the worker stopping, at the same moment
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_event_that_starts_after_the_deadline_times_out_at_once() -> None:
    job, started = _job(), asyncio.Event()
    job.expired = True
    with pytest.raises(TimeoutError):
        await _handle(job, started)
    assert not started.is_set() and job.bounded == set()
