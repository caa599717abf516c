"""One `process_stripe_events` job's events: each claimed when due, dispatched on its type,
its outcome recorded, retried or failed on its own.

An event is claimed only when it is due and not held by a live job (`processing`, attempts
+ 1; otherwise the job skips it), dispatched on its type through `handlers.HANDLERS` and its
outcome recorded. Credits and debits mark the event `completed` inside the ledger
transaction. A transient fault puts that event alone back to `received`, due after a
backoff, and enqueues a job for it deferred by the same delay; at `MAX_TRIES` (counted in
`stripe_events.attempts`) it is `failed` with its error. A permanent fault fails it at once.
A cancelled job (shutdown) gives its claimed events back at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any

import structlog

from webhook_worker import job_queue as queue
from webhook_worker import metrics
from webhook_worker.config import Settings
from webhook_worker.db import store
from webhook_worker.errors import PermanentError, TransientError
from webhook_worker.log import get_logger, redact_text
from webhook_worker.worker import handlers
from webhook_worker.worker.resources import resources

log = get_logger("webhook_worker.worker")

MAX_RETRY_DELAY_SECONDS = 600
_ERROR_MESSAGE_LIMIT = 1000


def retry_delay(settings: Settings, job_try: int) -> int:
    """Exponential backoff: base, 2 * base, 4 * base, … capped at ten minutes."""
    exponent = min(max(job_try - 1, 0), 20)
    return int(min(settings.retry_base_seconds * 2**exponent, MAX_RETRY_DELAY_SECONDS))


def _deadline(settings: Settings) -> float:
    """Give up inside the job (and retry) a little before arq's job_timeout cancels it."""
    timeout = float(settings.job_timeout_seconds)
    return max(timeout - 1.0, timeout * 0.8)


def error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return redact_text(text)[:_ERROR_MESSAGE_LIMIT]


def _retry_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "database"


def _observe_final(event: handlers.StoredEvent | None, status: str, event_type: str) -> None:
    metrics.labelled(metrics.EVENTS_PROCESSED, status, event_type).inc()
    if status == "waiting":  # not final: its ingest-to-completed time ends when it applies
        return
    if event is not None and event.received_at is not None:
        lag = (datetime.now(UTC) - event.received_at).total_seconds()
        metrics.INGEST_TO_COMPLETED.observe(max(lag, 0.0))


def _type_label(event_type: str) -> str:
    return event_type if event_type in handlers.HANDLERS else "other"


async def _record_failure(pool: store.Pool, event_id: str, message: str) -> bool:
    try:
        async with store.acquire(pool, "recording a failure") as conn:
            await store.finish_event(conn, event_id, "failed", message)
        return True
    except (TransientError, PermanentError) as exc:
        # Left `processing`: the sweeper brings it back once Postgres answers again.
        log.warning("event_failure_unrecorded", error=error_text(exc))
        return False


async def _release(pool: store.Pool, event_id: str, message: str, delay_seconds: float = 0) -> bool:
    try:
        async with store.acquire(pool, "releasing an event") as conn:
            await store.release_event(conn, event_id, message, delay_seconds=delay_seconds)
        return True
    except (TransientError, PermanentError) as exc:
        # Left `processing`: once its lease runs out a job (or the sweeper) takes it again.
        log.warning("event_release_failed", error=error_text(exc))
        return False


class _EventRun:
    """One event of a `process_stripe_events` job: its state for the canonical log line."""

    def __init__(self, job: EventJob, event_id: str, started: float) -> None:
        self.job = job
        self.event_id = event_id
        self.started = started  # when its slot was taken
        self.event: handlers.StoredEvent | None = None
        self.event_type = "unknown"
        self.claimed = False
        self.finished = False
        self.task: asyncio.Task[None] | None = None  # the task handling it, once claimed

    def _line(self, action: str, level: str = "info", **fields: Any) -> None:
        duration_ms = round((time.perf_counter() - self.started) * 1000, 2)
        getattr(log, level)(
            action,
            event_type=self.event_type,
            job_try=self.job.job_try,
            attempts=self.event.attempts if self.event else None,
            duration_ms=duration_ms,
            **fields,
        )

    async def _apply(self, event: handlers.StoredEvent) -> handlers.Outcome:
        """Dispatch and record the outcome (the part the job's deadline bounds)."""
        shared = self.job.shared
        outcome = await handlers.handle_event(shared.handler_context, event)
        if not outcome.recorded:
            async with store.acquire(shared.pool, "recording an event outcome") as conn:
                await store.finish_event(conn, self.event_id, outcome.status, reason=outcome.reason)
        self.finished = True
        return outcome

    def skipped(self) -> str:
        self.finished = True
        self._line("event_skipped", reason="final_unknown_not_due_or_held")
        return "skipped"

    async def handle(self, row: dict[str, Any]) -> str:
        """The claimed event: dispatched on its type, its outcome recorded and logged."""
        self.claimed = True
        self.event_type = str(row.get("type") or "unknown")
        # Parsed first: an event whose deadline has already passed retries on its attempts.
        self.event = event = handlers.StoredEvent.from_row(row)
        with self.job.deadline_for(self):
            outcome = await self._apply(event)
        _observe_final(self.event, outcome.status, _type_label(self.event_type))
        if outcome.status == "ignored":
            metrics.labelled(metrics.EVENTS_IGNORED, outcome.reason or "unknown").inc()
        self._line(outcome.action, outcome=outcome.status, reason=outcome.reason, **outcome.fields)
        return outcome.status

    async def fail(self, exc: BaseException) -> str:
        self.finished = True
        message = error_text(exc)
        await _record_failure(self.job.shared.pool, self.event_id, message)
        _observe_final(self.event, "failed", _type_label(self.event_type))
        self._line("event_failed", "warning", outcome="failed", error=message)
        return "failed"

    async def retry_or_fail(self, exc: BaseException) -> str:
        """This event alone goes back, due after its backoff, with a deferred job of its own."""
        # A claimed event's tries are its attempts; one that could not even be claimed
        # (Postgres away) counts the tries of the jobs that carried it alone.
        settings = self.job.shared.settings
        tries = self.event.attempts if self.event is not None else self.job.job_try
        if self.claimed and tries >= settings.max_tries:
            return await self.fail(exc)
        self.finished = True
        message = error_text(exc)
        delay = retry_delay(settings, tries)
        if self.claimed:
            await _release(self.job.shared.pool, self.event_id, message, delay)
        reason = _retry_reason(exc)
        metrics.RETRIES.labels(reason).inc()
        self._line("event_retried", "warning", reason=reason, retry_in_s=delay, error=message)
        # Unclaimed, the next job's arq try number carries the count (`_job_try`).
        job_try = None if self.claimed else min(tries + 1, settings.max_tries)
        try:
            await queue.enqueue_event_jobs(
                self.job.ctx["redis"], [self.event_id], defer_seconds=delay, job_try=job_try
            )
        except TransientError as exc:  # the sweeper enqueues it once it is overdue
            log.warning("retry_enqueue_failed", error=error_text(exc))
        return "retried"

    async def release_unfinished(self) -> None:
        """The job was cancelled (shutdown): a claimed event goes back, due at once, with a
        fresh job of its own enqueued after the release committed, so any worker takes it
        now (arq's re-run of the cancelled job may have been picked up before the release
        and skipped it)."""
        if not self.claimed or self.finished:
            return
        if await _release(self.job.shared.pool, self.event_id, "worker stopped during the job"):
            try:
                await queue.enqueue_event_jobs(self.job.ctx["redis"], [self.event_id])
            except TransientError as exc:  # Redis away: the worker that starts sweeps
                log.warning("release_enqueue_failed", error=error_text(exc))

    async def settle(self, step: Awaitable[str]) -> str:
        """Run one step of this event (its claim's failure, or its handling) to an outcome:
        a transient fault retries it, a permanent one fails it, a bug fails it visibly, and a
        cancellation (shutdown) gives a claimed event back."""
        try:
            return await step
        except (TransientError, TimeoutError) as exc:
            return await self.retry_or_fail(exc)
        except PermanentError as exc:
            return await self.fail(exc)
        except asyncio.CancelledError:
            # Shielded: a second cancellation must not leave the release half done.
            await asyncio.shield(self.release_unfinished())
            raise
        except Exception as exc:  # a bug: fail the event visibly rather than retry forever
            log.exception("event_handler_crashed", event_type=self.event_type)
            return await self.fail(RuntimeError(f"internal error: {type(exc).__name__}: {exc}"))


async def _raise(exc: BaseException) -> str:
    raise exc


class _UnderDeadline:
    """One event's handling under its job's deadline, as `asyncio.timeout_at` would bound it
    (a cancellation by the deadline leaves as `TimeoutError`, so the event is retried, not
    released), but on one timer per job: `timeout_at` costs a timer and two `getpid()`
    system calls per event on Python 3.11."""

    __slots__ = ("job", "task")

    def __init__(self, job: EventJob, task: asyncio.Task[Any]) -> None:
        self.job = job
        self.task = task

    def __enter__(self) -> None:
        if self.job.expired:
            raise TimeoutError
        self.job.bounded.add(self.task)

    def __exit__(self, exc_type: type[BaseException] | None, exc: Any, tb: Any) -> None:
        self.job.bounded.discard(self.task)
        # Ours unless someone else cancelled the task too (a shutdown stays a cancellation).
        if exc_type is asyncio.CancelledError and self.job.expired and self.task.uncancel() == 0:
            raise TimeoutError from exc


class EventJob:
    """One `process_stripe_events` job, in phases: take event slots, claim the events they
    allow in one statement (shared with the jobs running beside it), then handle the claimed
    ones concurrently, each in its slot until it ends. One claim future, one deadline and one
    slot count per chunk of events, where each event had its own; one deadline timer per
    job, where each event had its own."""

    def __init__(self, ctx: dict[str, Any]) -> None:
        self.ctx = ctx
        self.shared = resources(ctx)
        self.job_try = int(ctx.get("job_try") or 1)
        self.loop = asyncio.get_running_loop()
        self.deadline = self.loop.time() + _deadline(self.shared.settings)
        self.expired = False
        self.bounded: set[asyncio.Task[Any]] = set()  # handling inside the deadline now
        self.outcomes: dict[str, str] = {}

    def deadline_for(self, run: _EventRun) -> _UnderDeadline:
        task = run.task or asyncio.current_task()
        if task is None:
            raise RuntimeError("an event is handled inside a task")
        return _UnderDeadline(self, task)

    def _expire(self) -> None:
        self.expired = True
        for task in list(self.bounded):
            task.cancel()

    async def run(self, event_ids: list[str]) -> dict[str, str]:
        timer = self.loop.call_at(self.deadline, self._expire)
        try:
            return await self._run(event_ids)
        finally:
            timer.cancel()

    async def _run(self, event_ids: list[str]) -> dict[str, str]:
        slots = self.shared.event_slots  # see WorkerResources
        handling: list[asyncio.Task[None]] = []
        pending = event_ids
        try:
            while pending:
                taken = await slots.take(len(pending))
                chunk, pending = pending[:taken], pending[taken:]
                now = time.perf_counter()
                runs = [_EventRun(self, event_id, now) for event_id in chunk]
                try:
                    rows = await self._claim(runs)
                except BaseException:
                    slots.release(len(runs))
                    raise
                for run in runs:
                    row = rows.get(run.event_id)
                    if row is None:
                        slots.release()
                        if run.event_id not in self.outcomes:
                            with structlog.contextvars.bound_contextvars(
                                stripe_event_id=run.event_id
                            ):
                                self.outcomes[run.event_id] = run.skipped()
                        continue
                    run.task = self.loop.create_task(self._handle(run, row))
                    handling.append(run.task)
            await asyncio.gather(*handling)
        except BaseException:
            for task in handling:
                task.cancel()
            await asyncio.gather(*handling, return_exceptions=True)
            raise
        return self.outcomes

    async def _claim(self, runs: list[_EventRun]) -> dict[str, dict[str, Any]]:
        """The chunk's claimed rows; when the claim itself fails, each event is settled here
        (retried unclaimed, or failed) and none is returned."""
        try:
            async with asyncio.timeout_at(self.deadline):
                return await self.shared.batches.claim(tuple(run.event_id for run in runs))
        except Exception as exc:
            await asyncio.gather(*(self._settle_unclaimed(run, exc) for run in runs))
            return {}

    async def _settle_unclaimed(self, run: _EventRun, exc: BaseException) -> None:
        with structlog.contextvars.bound_contextvars(stripe_event_id=run.event_id):
            self.outcomes[run.event_id] = await run.settle(_raise(exc))

    async def _handle(self, run: _EventRun, row: dict[str, Any]) -> None:
        # Each task has its own copy of the context: bound here, gone with the task.
        structlog.contextvars.bind_contextvars(stripe_event_id=run.event_id)
        try:
            self.outcomes[run.event_id] = await run.settle(run.handle(row))
        finally:
            self.shared.event_slots.release()
