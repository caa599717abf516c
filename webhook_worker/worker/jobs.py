"""The arq jobs: `process_stripe_events(ctx, event_ids)` (`job_run`), the cron jobs
(`cron`), and the process resources they share.

A job processes its stored events in phases: the events that free slots allow
(`WORKER_MAX_EVENTS`) are claimed in one statement, shared with the jobs running beside it,
then handled concurrently, each on its own; their user lookups share one statement and
their credits one `ledger_credit_many` call (`worker.batching`). The job itself always ends
normally: arq's `Retry` is not used.

Settings are data: `worker_options(settings)` gives the `arq.Worker` arguments and
`open_resources` / `close_resources` the Postgres pool and the coalesced statements, which
`webhook_worker.worker_supervisor` holds for the process lifetime around arq's `main()`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import replace
from typing import Any

from arq import func
from arq.constants import job_key_prefix

from webhook_worker import internal_listener as internal
from webhook_worker import job_queue as queue
from webhook_worker import runtime
from webhook_worker.config import Settings
from webhook_worker.db import recovery, store
from webhook_worker.errors import PermanentError, TransientError
from webhook_worker.job_format import UNDECODABLE_JOB, dump_job, load_job
from webhook_worker.log import get_logger
from webhook_worker.worker import reconcile
from webhook_worker.worker.cron import (
    cron_jobs,
    prune_old_events,
    release_expired_holds,
    sweep_stale_events,
)
from webhook_worker.worker.job_run import EventJob, retry_delay
from webhook_worker.worker.resources import WorkerResources, lease_seconds, resources

__all__ = [
    "WorkerResources",
    "close_resources",
    "cron_jobs",
    "drop_undecodable_job",
    "lease_seconds",
    "open_resources",
    "process_stripe_events",
    "prune_old_events",
    "release_expired_holds",
    "retry_delay",
    "sweep_stale_events",
    "worker_options",
]

log = get_logger("webhook_worker.worker")


async def process_stripe_events(ctx: dict[str, Any], event_ids: list[str]) -> dict[str, int]:
    """arq job: process stored events concurrently, each on its own; outcome counts.

    Each event's own outcome (`completed`, `ignored`, `waiting`, `failed`, `retried`, or
    `skipped` when another job has it or it is final) never affects the others.
    """
    unique = list(dict.fromkeys(event_ids))
    outcomes = await EventJob(ctx).run(unique)
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
