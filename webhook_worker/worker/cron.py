"""The worker's cron jobs: the stale-event sweeper (and the waiting events it wakes or
ends), the payload pruner and the release of expired spending holds."""

from __future__ import annotations

from typing import Any

from arq import cron
from arq.cron import CronJob

from webhook_worker import job_queue as queue
from webhook_worker import metrics
from webhook_worker.config import Settings
from webhook_worker.db import store
from webhook_worker.db.queries import query
from webhook_worker.errors import TransientError
from webhook_worker.log import get_logger
from webhook_worker.worker import postgres_money_store
from webhook_worker.worker.job_run import error_text
from webhook_worker.worker.resources import lease_seconds, resources

log = get_logger("webhook_worker.worker")

SWEEP_BATCH = 1000


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
        log.warning("sweep_failed", error=error_text(exc))
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
        log.warning("prune_failed", error=error_text(exc))
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
        log.warning("hold_release_failed", error=error_text(exc))
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
