"""The arq worker: `process_stripe_event(ctx, event_id)`, the stale-event sweeper and the pruner.

A job claims the stored event (`processing`, attempts + 1; a final event is a no-op),
dispatches on its type through `handlers.HANDLERS` and records the outcome. Credits and
debits mark the event `completed` inside the ledger transaction. Transient faults release
the event (back to `received`) and raise arq's `Retry` with exponential backoff until
`MAX_TRIES`, then the event is `failed` with its error; permanent faults fail at once.

Settings are data: `build_worker(settings, **overrides)` gives an `arq.Worker` for any
database and Redis (the tests build in-process workers this way); `run_worker` is what
`webhook-worker work` runs. Pools live in `ctx`, opened in on_startup, closed on_shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import structlog
from arq import Retry, Worker, cron, func
from arq.cron import CronJob

from webhook_worker import internal_listener as internal
from webhook_worker import job_queue as queue
from webhook_worker import metrics, runtime
from webhook_worker.config import Settings
from webhook_worker.db import store
from webhook_worker.errors import PermanentError, TransientError
from webhook_worker.log import get_logger, redact_text
from webhook_worker.worker import handlers, payments, reconcile
from webhook_worker.worker.arq_worker import ArqWorker
from webhook_worker.worker.batching import WorkerBatches
from webhook_worker.worker.postgres_money_store import PostgresMoneyStore

log = get_logger("webhook_worker.worker")

SWEEP_BATCH = 1000
MAX_RETRY_DELAY_SECONDS = 600
_ERROR_MESSAGE_LIMIT = 1000


# --- the job -------------------------------------------------------------------------------


def retry_delay(settings: Settings, job_try: int) -> int:
    """Exponential backoff: base, 2 * base, 4 * base, … capped at ten minutes."""
    exponent = min(max(job_try - 1, 0), 20)
    return int(min(settings.retry_base_seconds * 2**exponent, MAX_RETRY_DELAY_SECONDS))


def _deadline(settings: Settings) -> float:
    """Give up inside the job (and retry) a little before arq's job_timeout cancels it."""
    timeout = float(settings.job_timeout_seconds)
    return max(timeout - 1.0, timeout * 0.8)


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return redact_text(text)[:_ERROR_MESSAGE_LIMIT]


def _retry_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "database"


def _observe_final(event: handlers.StoredEvent | None, status: str, event_type: str) -> None:
    metrics.EVENTS_PROCESSED.labels(status, event_type).inc()
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
        log.warning("event_failure_unrecorded", error=_error_text(exc))
        return False


async def _release(pool: store.Pool, event_id: str, message: str) -> None:
    try:
        async with store.acquire(pool, "releasing an event") as conn:
            await store.release_event(conn, event_id, message)
    except (TransientError, PermanentError) as exc:
        log.warning("event_release_failed", error=_error_text(exc))


class _Job:
    """One run of `process_stripe_event`: its state for the canonical log line."""

    def __init__(self, ctx: dict[str, Any], event_id: str) -> None:
        self.settings: Settings = ctx["settings"]
        self.pool: store.Pool = ctx["pool"]
        self.handler_context: handlers.HandlerContext = ctx["handler_context"]
        self.batches: WorkerBatches = ctx["batches"]
        self.event_id = event_id
        self.job_try = int(ctx.get("job_try") or 1)
        self.started = time.perf_counter()
        self.event: handlers.StoredEvent | None = None
        self.event_type = "unknown"

    def _line(self, action: str, level: str = "info", **fields: Any) -> None:
        duration_ms = round((time.perf_counter() - self.started) * 1000, 2)
        getattr(log, level)(
            action,
            event_type=self.event_type,
            job_try=self.job_try,
            attempts=self.event.attempts if self.event else None,
            duration_ms=duration_ms,
            **fields,
        )

    async def run(self) -> str:
        async with asyncio.timeout(_deadline(self.settings)):
            row = await self.batches.claim(self.event_id)
            if row is None:
                self._line("event_skipped", reason="already_final_or_unknown")
                return "skipped"
            self.event_type = str(row.get("type") or "unknown")
            self.event = handlers.StoredEvent.from_row(row)
            outcome = await handlers.handle_event(self.handler_context, self.event)
            if not outcome.recorded:
                async with store.acquire(self.pool, "recording an event outcome") as conn:
                    await store.finish_event(
                        conn, self.event_id, outcome.status, reason=outcome.reason
                    )
        _observe_final(self.event, outcome.status, _type_label(self.event_type))
        if outcome.status == "ignored":
            metrics.EVENTS_IGNORED.labels(outcome.reason or "unknown").inc()
        self._line(outcome.action, outcome=outcome.status, reason=outcome.reason, **outcome.fields)
        return outcome.status

    async def fail(self, exc: BaseException) -> str:
        message = _error_text(exc)
        await _record_failure(self.pool, self.event_id, message)
        _observe_final(self.event, "failed", _type_label(self.event_type))
        self._line("event_failed", "warning", outcome="failed", error=message)
        return "failed"

    async def retry_or_fail(self, exc: BaseException) -> str:
        if self.job_try >= self.settings.max_tries:
            return await self.fail(exc)
        message = _error_text(exc)
        await _release(self.pool, self.event_id, message)
        reason = _retry_reason(exc)
        metrics.RETRIES.labels(reason).inc()
        delay = retry_delay(self.settings, self.job_try)
        self._line("event_retried", "warning", reason=reason, retry_in_s=delay, error=message)
        raise Retry(defer=delay)


async def process_stripe_event(ctx: dict[str, Any], event_id: str) -> str:
    """arq job: process one stored event; returns the outcome (`completed`, `failed`, …)."""
    job = _Job(ctx, event_id)
    with structlog.contextvars.bound_contextvars(stripe_event_id=event_id):
        try:
            return await job.run()
        except (TransientError, TimeoutError) as exc:
            return await job.retry_or_fail(exc)
        except PermanentError as exc:
            return await job.fail(exc)
        except Exception as exc:  # a bug: fail the event visibly rather than retry forever
            log.exception("event_handler_crashed", event_type=job.event_type)
            return await job.fail(RuntimeError(f"internal error: {type(exc).__name__}: {exc}"))


# --- cron: sweeper and pruner --------------------------------------------------------------


async def sweep_stale_events(ctx: dict[str, Any]) -> int:
    """Re-enqueue events left `received` (Redis lost the job) or stuck `processing`, wake
    `waiting` events whose purchase is now in the ledger and end those that waited longer
    than WAIT_MAX_DAYS (`ignored`, `no_purchase_for_payment`).

    Jobs are enqueued under the event id, so an event whose job still waits in Redis (a
    deferred retry, a job whose worker died and that arq will re-run) is not doubled.
    """
    settings: Settings = ctx["settings"]
    try:
        async with store.acquire(ctx["pool"], "sweeping stale events") as conn:
            woken = await payments.wake_waiting(conn, SWEEP_BATCH)
            expired = await payments.expire_waiting(conn, settings.wait_max_days, SWEEP_BATCH)
            stale = await store.events_to_sweep(conn, settings.stale_after_seconds, SWEEP_BATCH)
            backlog = await store.event_backlog_counts(conn)
        event_ids = woken + sorted(set(stale) - set(woken))
        queued = await queue.enqueue_events(ctx["redis"], event_ids) if event_ids else 0
        metrics.QUEUE_DEPTH.set(await queue.queue_depth(ctx["redis"]))
    except TransientError as exc:
        log.warning("sweep_failed", error=_error_text(exc))
        return 0
    for status, count in backlog.items():
        metrics.EVENTS_BY_STATUS.labels(status).set(count)
    if woken:
        metrics.WOKEN.inc(len(woken))
        log.info("waiting_events_woken", woken=len(woken))
    if expired:
        metrics.WAIT_EXPIRED.inc(len(expired))
        metrics.EVENTS_IGNORED.labels("no_purchase_for_payment").inc(len(expired))
        log.info("waiting_events_expired", expired=len(expired), days=settings.wait_max_days)
    if event_ids:
        metrics.SWEPT.inc(queued)
        log.info("events_swept", stale=len(stale), woken=len(woken), enqueued=queued)
    return queued


async def prune_old_events(ctx: dict[str, Any]) -> int:
    """Null the raw payload of completed/ignored events older than RETENTION_DAYS.

    Event ids, statuses and the ledger stay forever; failed events keep their payload.
    """
    settings: Settings = ctx["settings"]
    try:
        async with store.acquire(ctx["pool"], "pruning events") as conn:
            pruned = await store.prune_events(conn, settings.retention_days)
    except TransientError as exc:
        log.warning("prune_failed", error=_error_text(exc))
        return 0
    log.info("events_pruned", pruned=pruned, retention_days=settings.retention_days)
    return pruned


def _every(seconds: int) -> dict[str, Any]:
    """arq cron fields that fire every `seconds` (on whole minutes from 60 up)."""
    if seconds < 60:
        return {"second": set(range(0, 60, seconds))}
    minutes = min(seconds // 60, 60)
    return {"second": 0, "minute": set(range(0, 60, minutes))}


def cron_jobs(settings: Settings) -> list[CronJob]:
    # Cron jobs inherit job_timeout: a longer timeout here would lengthen arq's in-progress
    # key for every job, and with it the recovery time after a SIGKILL.
    return [
        cron(sweep_stale_events, **_every(settings.sweep_interval_seconds)),
        cron(prune_old_events, minute={17}, second=0),
    ]


# --- the worker ----------------------------------------------------------------------------


async def _on_startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    ctx["pool"] = await store.create_pool(settings)
    batches = WorkerBatches(
        ctx["pool"], max_batch=settings.worker_batch_max, max_jobs=settings.worker_max_jobs
    )
    ctx["batches"] = batches
    ctx["handler_context"] = handlers.HandlerContext(
        settings, PostgresMoneyStore(ctx["pool"], batches)
    )
    pool = ctx["pool"]
    ctx["internal_listener"] = await internal.start(
        settings, lambda: internal.readiness(pool, ctx["redis"]), "worker"
    )
    if settings.stripe_api_key and ctx.get("reconcile_cron", True):
        ctx["reconcile_task"] = asyncio.create_task(reconcile.run_reconcile_cron(ctx))
    frozen = runtime.freeze_startup_heap() if ctx.get("freeze_heap") else 0
    log.info(
        "worker_started",
        gc_frozen_objects=frozen,
        max_jobs=settings.worker_max_jobs,
        job_timeout_s=settings.job_timeout_seconds,
        max_tries=settings.max_tries,
    )


async def _on_shutdown(ctx: dict[str, Any]) -> None:
    reconciling: asyncio.Task[None] | None = ctx.pop("reconcile_task", None)
    if reconciling is not None:
        reconciling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reconciling
    await internal.stop(ctx.pop("internal_listener", None))
    ctx.pop("handler_context", None)
    batches: WorkerBatches | None = ctx.pop("batches", None)
    if batches is not None:
        await batches.drain()
    pool: store.Pool | None = ctx.pop("pool", None)
    if pool is not None:
        await pool.close()
    log.info("worker_stopped")


def worker_options(settings: Settings, *, with_cron: bool = True) -> dict[str, Any]:
    """Keyword arguments for `arq.Worker`, all derived from `settings`."""
    redis = replace(queue.redis_settings(settings), conn_retries=5, conn_retry_delay=1)
    return {
        "functions": [func(process_stripe_event, name=queue.PROCESS_EVENT_JOB)],
        "cron_jobs": cron_jobs(settings) if with_cron else None,
        "redis_settings": redis,
        "queue_name": queue.QUEUE_NAME,
        "on_startup": _on_startup,
        "on_shutdown": _on_shutdown,
        # The reconcile loop runs beside the cron jobs (only with STRIPE_API_KEY).
        "ctx": {"settings": settings, "reconcile_cron": with_cron},
        "max_jobs": settings.worker_max_jobs,
        "poll_delay": settings.worker_poll_delay,
        # arq re-runs a job whose worker died once its in-progress key expires, which is
        # job_timeout + 10 s: the default 30 s brings a SIGKILLed job back within ~40 s.
        "job_timeout": settings.job_timeout_seconds,
        # The job itself turns the last transient fault into `failed` (job_try == max_tries),
        # so arq's own limit only bites when a worker died during the last try; the sweeper
        # then finds the event still `processing` and enqueues it afresh.
        "max_tries": settings.max_tries,
        # No results are kept: a finished job's id (the event id) is free again at once, so
        # the sweeper and the receiver can enqueue that event again; Postgres has the outcome.
        "keep_result": 0,
    }


def build_worker(settings: Settings, *, with_cron: bool = True, **overrides: Any) -> Worker:
    """An arq Worker for these settings; overrides go to `arq.Worker` (burst, poll_delay…).

    Tests: `build_worker(settings, burst=True, poll_delay=0, handle_signals=False,
    with_cron=False)` then `await worker.async_run()` and `await worker.close()`.
    """
    options = worker_options(settings, with_cron=with_cron)
    options.update(overrides)
    return ArqWorker(**options)


def run_worker(settings: Settings, *, burst: bool = False) -> None:
    """`webhook-worker work`: run until SIGINT/SIGTERM (or until the queue is empty)."""
    # One canonical line per job is ours; arq's own per-job start/finish lines would triple it.
    logging.getLogger("arq.worker").setLevel(logging.WARNING)
    loop = _new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        # A burst run drains the queue and exits: cron jobs would keep it waiting.
        worker = build_worker(settings, burst=burst, with_cron=not burst)
        worker.ctx["freeze_heap"] = True  # a process of its own (see runtime.freeze_startup_heap)
        worker.run()
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop
