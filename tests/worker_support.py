"""Helpers for the worker tests: store events the way the receiver does, enqueue them, run
real arq workers (in-process burst workers, or `webhook-worker work` processes).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
from arq.connections import ArqRedis

from webhook_worker import job_queue as queue
from webhook_worker.config import Settings
from webhook_worker.db import store
from webhook_worker.dev.servicekit import spawn_command, stop_process
from webhook_worker.ops.sample_events import encode_event
from webhook_worker.worker.jobs import WorkerResources, sweep_stale_events
from webhook_worker.worker.supervisor import WorkerSupervisor

try:
    from webhook_worker.envelope import parse_envelope
except ImportError:  # pragma: no cover - the receiver's module is not there yet
    parse_envelope = None  # type: ignore[assignment]


def envelope(event: dict[str, Any]) -> Any:
    """The row the receiver stores for `event` (its envelope fields and raw JSON text)."""
    body = encode_event(event)
    if parse_envelope is not None:
        return parse_envelope(body)
    return store.EnvelopeRow(  # type: ignore[attr-defined]
        event_id=event["id"],
        type=event["type"],
        livemode=bool(event.get("livemode")),
        api_version=event.get("api_version"),
        account=event.get("account"),
        stripe_created_at=None,
        raw_json=body.decode(),
    )


async def store_events(conn: asyncpg.Connection, events: Iterable[dict[str, Any]]) -> list[str]:
    """INSERT … ON CONFLICT DO NOTHING, as the receiver does; returns the event ids."""
    rows = [envelope(event) for event in events]
    for start in range(0, len(rows), 500):
        await store.insert_events(conn, rows[start : start + 500])
    return [row.event_id for row in rows]


async def enqueue(settings: Settings, event_ids: Sequence[str]) -> int:
    """Enqueue jobs for `event_ids` (each call under fresh job ids); how many events."""
    redis = await queue.create_redis(settings)
    try:
        return await queue.enqueue_events(redis, event_ids)
    finally:
        await redis.aclose()


async def queued_event_ids(redis: ArqRedis) -> list[str]:
    """The event ids the queued `process_stripe_events` jobs carry, sorted (a duplicate
    twice), through arq's public `queued_jobs`."""
    jobs = await redis.queued_jobs(queue_name=redis.default_queue_name)
    return sorted(
        event_id
        for job in jobs
        if job.function == queue.PROCESS_EVENTS_JOB
        for event_id in job.args[0]
    )


async def deliver(
    conn: asyncpg.Connection, settings: Settings, *events: dict[str, Any]
) -> list[str]:
    """Store and enqueue, like one accepted webhook delivery per event."""
    ids = await store_events(conn, events)
    await enqueue(settings, ids)
    return ids


async def sweep(settings: Settings) -> int:
    """One run of the worker's sweeper cron (wakes `waiting` events whose purchase landed,
    re-enqueues stale ones); returns the events enqueued."""
    pool = await store.create_pool(settings)
    redis = await queue.create_redis(settings)
    try:
        ctx = {"resources": WorkerResources.build(settings, pool), "redis": redis}
        return await sweep_stale_events(ctx)
    finally:
        await redis.aclose()
        await pool.close()


def in_process_worker(settings: Settings, **overrides: Any) -> WorkerSupervisor:
    """The worker `webhook-worker work --burst` runs, in this process (no signal handlers)."""
    options: dict[str, Any] = {"burst": True, "poll_delay": 0, "with_cron": False}
    options.update(overrides)
    return WorkerSupervisor(settings, **options)


async def drain(settings: Settings, **overrides: Any) -> WorkerSupervisor:
    """Run an in-process burst worker until the queue is empty."""
    worker = in_process_worker(settings, **overrides)
    try:
        await worker.async_run()
    finally:
        await worker.close()
    return worker


async def status_of(conn: asyncpg.Connection, event_id: str) -> asyncpg.Record:
    row = await conn.fetchrow(
        "SELECT processing_status, status_reason, attempts, error_message, "
        "raw_data IS NULL AS pruned "
        "FROM stripe_events WHERE event_id = $1",
        event_id,
    )
    assert row is not None
    return row


async def balance(conn: asyncpg.Connection, user_id: int) -> int:
    return int(await conn.fetchval("SELECT credits_balance FROM users WHERE id = $1", user_id))


async def assert_balance_after_is_running_sum(conn: asyncpg.Connection, user_id: int) -> None:
    """Every ledger row's balance_after is the sum of the amounts up to it: the user's
    balance changes really were serialised."""
    rows = await conn.fetch(
        "SELECT amount, balance_after FROM credit_transactions WHERE user_id = $1 ORDER BY id",
        user_id,
    )
    running = 0
    for row in rows:
        running += row["amount"]
        assert row["balance_after"] == running


async def ledger_sum(conn: asyncpg.Connection, user_id: int) -> int:
    value = await conn.fetchval(
        "SELECT COALESCE(sum(amount), 0) FROM credit_transactions WHERE user_id = $1", user_id
    )
    return int(value)


async def new_user(conn: asyncpg.Connection, email: str | None = None, **columns: Any) -> int:
    names = ["email", *columns]
    values = [email, *columns.values()]
    placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    user_id = await conn.fetchval(
        f"INSERT INTO users ({', '.join(names)}) VALUES ({placeholders}) RETURNING id", *values
    )
    return int(user_id)


async def count_where_status(conn: asyncpg.Connection, status: str) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM stripe_events WHERE processing_status = $1", status
        )
    )


def worker_env(database_url: str, redis_url: str, **overrides: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "APP_ENV": "test",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "warning",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "RETRY_BASE_SECONDS": "0",
        "DB_POOL_MIN": "1",
        "DB_POOL_MAX": "10",
    }
    env.update(overrides)
    return env


def spawn_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """A real `webhook-worker work` process (its own session, so signals stay local)."""
    return spawn_command(["work"], env, log_path)


stop_worker = stop_process  # SIGTERM, then SIGKILL after 15 s


async def redis_client(settings: Settings) -> ArqRedis:
    return await queue.create_redis(settings)


async def spend(db: asyncpg.Connection, user: int, credits: int) -> None:
    """The host application spends credits (a USAGE row and the balance, together)."""
    await db.execute(
        "WITH spend AS (UPDATE users SET credits_balance = credits_balance - $2 WHERE id = $1 "
        "RETURNING credits_balance) INSERT INTO credit_transactions "
        "(user_id, amount, balance_after, transaction_type) "
        "SELECT $1, -$2::bigint, credits_balance, 'USAGE' FROM spend",
        user,
        credits,
    )


async def received_days_ago(conn: asyncpg.Connection, event_id: str, days: int) -> None:
    """As if Stripe had delivered the event `days` ago (for WAIT_MAX_DAYS and the like)."""
    await conn.execute(
        "UPDATE stripe_events SET received_at = now() - make_interval(days => $2) "
        "WHERE event_id = $1",
        event_id,
        days,
    )
