"""The arq jobs: `process_stripe_events(ctx, event_ids)`, the stale-event sweeper and the
pruner, and the process resources they share.

A job processes its batch of stored events concurrently, each on its own: the claims of the
batch (and of the jobs running beside it) share one `claim_events` statement, their user
lookups one statement and their credits one `ledger_credit_many` call (`worker_batches`).
An event is claimed only when it is due and not held by a live job (`processing`, attempts
+ 1; otherwise the job skips it), dispatched on its type through `handlers.HANDLERS` and its
outcome recorded. Credits and debits mark the event `completed` inside the ledger
transaction. A transient fault puts that event alone back to `received`, due after a
backoff, and enqueues a job for it deferred by the same delay; at `MAX_TRIES` (counted in
`stripe_events.attempts`) it is `failed` with its error. A permanent fault fails it at once.
The job itself always ends normally: arq's `Retry` is not used.

Settings are data: `worker_options(settings)` gives the `arq.Worker` arguments and
`open_resources` / `close_resources` the Postgres pool and the coalesced statements, which
`webhook_worker.worker_supervisor` holds for the process lifetime around arq's `main()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import structlog
from arq import cron, func
from arq.constants import job_key_prefix
from arq.cron import CronJob

from webhook_worker import internal_listener as internal
from webhook_worker import job_queue as queue
from webhook_worker import metrics, runtime
from webhook_worker.config import Settings
from webhook_worker.db import recovery, store
from webhook_worker.db.queries import query
from webhook_worker.errors import PermanentError, TransientError
from webhook_worker.job_format import UNDECODABLE_JOB, dump_job, load_job
from webhook_worker.log import get_logger, redact_text
from webhook_worker.worker import handlers, postgres_money_store, reconcile
from webhook_worker.worker.resources import WorkerResources, lease_seconds, resources

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


async def _release(pool: store.Pool, event_id: str, message: str, delay_seconds: float = 0) -> bool:
    try:
        async with store.acquire(pool, "releasing an event") as conn:
            await store.release_event(conn, event_id, message, delay_seconds=delay_seconds)
        return True
    except (TransientError, PermanentError) as exc:
        # Left `processing`: once its lease runs out a job (or the sweeper) takes it again.
        log.warning("event_release_failed", error=_error_text(exc))
        return False


class _EventRun:
    """One event of a `process_stripe_events` job: its state for the canonical log line."""

    def __init__(self, job: _Job, event_id: str, started: float) -> None:
        self.job = job
        self.event_id = event_id
        self.started = started  # when its slot was taken
        self.event: handlers.StoredEvent | None = None
        self.event_type = "unknown"
        self.claimed = False
        self.finished = False

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

    def skipped(self) -> str:
        self.finished = True
        self._line("event_skipped", reason="final_unknown_not_due_or_held")
        return "skipped"

    async def handle(self, row: dict[str, Any]) -> str:
        """The claimed event: dispatched on its type, its outcome recorded and logged."""
        self.claimed = True
        job = self.job
        async with asyncio.timeout_at(job.deadline):
            self.event_type = str(row.get("type") or "unknown")
            self.event = handlers.StoredEvent.from_row(row)
            outcome = await handlers.handle_event(job.shared.handler_context, self.event)
            if not outcome.recorded:
                async with store.acquire(job.shared.pool, "recording an event outcome") as conn:
                    await store.finish_event(
                        conn, self.event_id, outcome.status, reason=outcome.reason
                    )
            self.finished = True
        _observe_final(self.event, outcome.status, _type_label(self.event_type))
        if outcome.status == "ignored":
            metrics.EVENTS_IGNORED.labels(outcome.reason or "unknown").inc()
        self._line(outcome.action, outcome=outcome.status, reason=outcome.reason, **outcome.fields)
        return outcome.status

    async def fail(self, exc: BaseException) -> str:
        self.finished = True
        message = _error_text(exc)
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
        message = _error_text(exc)
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
            log.warning("retry_enqueue_failed", error=_error_text(exc))
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
                log.warning("release_enqueue_failed", error=_error_text(exc))

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


class _Job:
    """One `process_stripe_events` job, in phases: take event slots, claim the events they
    allow in one statement (shared with the jobs running beside it), then handle the claimed
    ones concurrently, each in its slot until it ends. One claim future, one deadline and one
    slot count per chunk of events, where each event had its own."""

    def __init__(self, ctx: dict[str, Any]) -> None:
        self.ctx = ctx
        self.shared = resources(ctx)
        self.job_try = int(ctx.get("job_try") or 1)
        self.deadline = asyncio.get_running_loop().time() + _deadline(self.shared.settings)
        self.outcomes: dict[str, str] = {}

    async def run(self, event_ids: list[str]) -> dict[str, str]:
        slots = self.shared.event_slots  # see WorkerResources
        handling: list[asyncio.Task[None]] = []
        pending = event_ids
        try:
            while pending:
                taken = await _take_slots(slots, len(pending))
                chunk, pending = pending[:taken], pending[taken:]
                now = time.perf_counter()
                runs = [_EventRun(self, event_id, now) for event_id in chunk]
                try:
                    rows = await self._claim(runs)
                except BaseException:
                    for _ in runs:
                        slots.release()
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
                    handling.append(asyncio.create_task(self._handle(run, row)))
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


async def _take_slots(slots: asyncio.Semaphore, wanted: int) -> int:
    """One slot, waited for if need be, then as many more as are free now (up to `wanted`):
    never waiting while holding slots no event uses yet, so two jobs cannot starve each
    other."""
    await slots.acquire()
    taken = 1
    while taken < wanted and not slots.locked():
        await slots.acquire()  # free: returns at once
        taken += 1
    return taken


async def process_stripe_events(ctx: dict[str, Any], event_ids: list[str]) -> dict[str, int]:
    """arq job: process stored events concurrently, each on its own; outcome counts.

    Each event's own outcome (`completed`, `ignored`, `waiting`, `failed`, `retried`, or
    `skipped` when another job has it or it is final) never affects the others.
    """
    unique = list(dict.fromkeys(event_ids))
    outcomes = await _Job(ctx).run(unique)
    counts = Counter(outcomes.values())
    if counts.get("skipped"):  # rare (a duplicate job): only then ask whether they are ours
        skipped = [event_id for event_id, outcome in outcomes.items() if outcome == "skipped"]
        await _warn_foreign(ctx, skipped)
    return dict(counts)


async def _warn_foreign(ctx: dict[str, Any], event_ids: list[str]) -> None:
    """Events this database never stored came from another deployment sharing the queue."""
    settings, pool = resources(ctx).settings, resources(ctx).pool
    try:
        async with store.acquire(pool, "looking events up") as conn:
            foreign = await recovery.unknown_events(conn, event_ids)
    except (TransientError, PermanentError):
        return
    if foreign:
        log.warning(
            "foreign_jobs_found",
            events=len(foreign),
            queue=settings.queue_name,
            fix="another deployment shares this Redis database and queue: give each its own "
            "QUEUE_NAME (or Redis database); its events are left alone here",
        )


async def drop_undecodable_job(ctx: dict[str, Any]) -> None:
    """What runs instead of a job that is not JSON of ours (`job_format.load_job`): a pickle
    queued before the upgrade or a value someone else wrote. Nothing of it is run; arq
    drops it once this returns, and the sweeper enqueues any of its events again."""
    log.warning("job_dropped", job_key=f"{job_key_prefix}{ctx.get('job_id')}")


# --- cron: sweeper and pruner --------------------------------------------------------------


async def sweep_stale_events(ctx: dict[str, Any]) -> int:
    """Re-enqueue events left `received` (Redis lost the job) or stuck `processing`, wake
    `waiting` events whose purchase is now in the ledger and end those that waited longer
    than WAIT_MAX_DAYS (`ignored`, `no_purchase_for_payment`).

    An event whose deferred retry is not yet due is left to its job, and a swept event is
    touched, so the next sweeps leave it to the job enqueued now (see `take_stale_events`).
    """
    settings, pool = resources(ctx).settings, resources(ctx).pool
    try:
        async with store.acquire(pool, "sweeping stale events") as conn:
            woken = await postgres_money_store.wake_waiting(conn, SWEEP_BATCH)
            expired = await postgres_money_store.expire_waiting(
                conn, settings.wait_max_days, SWEEP_BATCH
            )
            stale = await store.take_stale_events(
                conn,
                settings.stale_after_seconds,
                SWEEP_BATCH,
                lease_seconds=lease_seconds(settings),
            )
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
    settings, pool = resources(ctx).settings, resources(ctx).pool
    try:
        async with store.acquire(pool, "pruning events") as conn:
            pruned = await store.prune_events(conn, settings.retention_days)
    except TransientError as exc:
        log.warning("prune_failed", error=_error_text(exc))
        return 0
    log.info("events_pruned", pruned=pruned, retention_days=settings.retention_days)
    return pruned


async def release_expired_holds(ctx: dict[str, Any]) -> int:
    """Give back spending holds past their expiry (`credits_release_expired`, migration 0025):
    each once, under its user's lock, re-checked there, so a settle or release racing the
    cron and several workers' crons never give one back twice. Also refreshes the
    outstanding-shortfall gauge."""
    try:
        async with store.acquire(resources(ctx).pool, "releasing expired holds") as conn:
            released = 0
            while True:
                done = int(await conn.fetchval(query("credits_release_expired"), SWEEP_BATCH))
                released += done
                if done < SWEEP_BATCH:
                    break
            outstanding = await conn.fetchval(query("credits_shortfall_outstanding"))
            collected = await conn.fetchval(query("credits_shortfall_collected"))
    except TransientError as exc:
        log.warning("hold_release_failed", error=_error_text(exc))
        return 0
    metrics.SHORTFALL_OUTSTANDING.set(int(outstanding))
    metrics.SHORTFALL_COLLECTED.set(int(collected))
    if released:
        metrics.HOLDS_EXPIRED.inc(released)
        log.info("expired_holds_released", released=released)
    return released


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
        cron(release_expired_holds, **_every(settings.sweep_interval_seconds)),
    ]


# --- the process's resources (worker.resources) and arq's arguments ----------------------


async def open_resources(ctx: dict[str, Any]) -> None:
    """Put the process's `WorkerResources` in `ctx`; start the internal listener and the
    reconcile loop. `ctx` holds `settings`, and `redis` for the listener's readiness."""
    settings: Settings = ctx["settings"]
    shared = WorkerResources.build(settings, await store.create_pool(settings))
    ctx["resources"] = shared
    async with store.acquire(shared.pool, "recording SHORTFALL_POLICY") as conn:
        await store.record_shortfall_policy(conn, settings.shortfall_policy)
    ctx["internal_listener"] = await internal.start(
        settings, lambda: internal.readiness(shared.pool, ctx["redis"]), "worker"
    )
    if settings.stripe_api_key and ctx.get("reconcile_cron", True):
        ctx["reconcile_task"] = asyncio.create_task(
            reconcile.run_reconcile_cron(settings, shared.pool, lambda: ctx.get("redis"))
        )
    frozen = runtime.freeze_startup_heap() if ctx.get("freeze_heap") else 0
    log.info(
        "worker_started",
        gc_frozen_objects=frozen,
        max_jobs=settings.worker_max_jobs,
        max_events=settings.worker_max_events,
        job_timeout_s=settings.job_timeout_seconds,
        max_tries=settings.max_tries,
    )


async def close_resources(ctx: dict[str, Any]) -> None:
    """Undo `open_resources`; idempotent (it pops what it closes)."""
    reconciling: asyncio.Task[None] | None = ctx.pop("reconcile_task", None)
    if reconciling is not None:
        reconciling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reconciling
    await internal.stop(ctx.pop("internal_listener", None))
    shared: WorkerResources | None = ctx.pop("resources", None)
    if shared is not None:
        await shared.batches.drain()
        await shared.pool.close()
    log.info("worker_stopped")


def worker_options(settings: Settings, *, with_cron: bool = True) -> dict[str, Any]:
    """Keyword arguments for `arq.Worker`, all derived from `settings` (no ctx, no hooks:
    the supervisor adds the shared ctx; arq's on_startup/on_shutdown are not used)."""
    redis = replace(queue.redis_settings(settings), conn_retries=5, conn_retry_delay=1)
    return {
        "functions": [
            func(process_stripe_events, name=queue.PROCESS_EVENTS_JOB),
            func(drop_undecodable_job, name=UNDECODABLE_JOB, max_tries=1),
        ],
        # Jobs are JSON, never pickle: a key written to Redis must not be code (job_format).
        "job_serializer": dump_job,
        "job_deserializer": load_job,
        "cron_jobs": cron_jobs(settings) if with_cron else None,
        "redis_settings": redis,
        "queue_name": settings.queue_name,
        # Jobs held, not events in flight (WORKER_MAX_EVENTS): on every poll arq re-checks
        # each job of the queue that a worker holds (WATCH/EXISTS/ZSCORE), so a worker that
        # holds 100 jobs of 100 events spent a third of its CPU on Redis (make profile).
        "max_jobs": settings.worker_max_jobs,
        "poll_delay": settings.worker_poll_delay,
        # arq runs a job again once its in-progress key expires (job_timeout + 10 s) when its
        # worker died; its events are claimable again by then (the lease is job_timeout + 5 s).
        "job_timeout": settings.job_timeout_seconds,
        # Jobs never raise Retry (an event's tries are its attempts); arq's count only grows
        # when a job is cancelled (shutdown) or its worker dies, and past it arq drops the
        # job: the sweeper then finds its events.
        "max_tries": settings.max_tries,
        # Results are not kept: job ids are never reused, and Postgres has the outcome.
        "keep_result": 0,
        "handle_signals": False,  # the supervisor handles SIGINT/SIGTERM
    }
