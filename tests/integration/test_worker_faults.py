"""Fault injection under a running worker: Postgres restarted mid-way, Redis down for a while."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import asyncpg
from prometheus_client import REGISTRY

from tests.conftest import base_env, wait_for
from tests.worker_support import (
    enqueue,
    in_process_worker,
    spawn_worker,
    status_of,
    stop_worker,
    store_events,
    worker_env,
)
from webhook_worker.config import Settings
from webhook_worker.dev.embedded import EmbeddedPostgres, EmbeddedRedis
from webhook_worker.ops.sample_events import checkout_session_event


def _retries() -> float:
    return REGISTRY.get_sample_value("worker_retries_total", {"reason": "database"}) or 0.0


async def test_postgres_restart_under_the_worker_retries_then_completes(
    own_postgres: EmbeddedPostgres, clean_redis_url: str
) -> None:
    env = base_env(own_postgres.url, clean_redis_url)
    env.update(RETRY_BASE_SECONDS="1", MAX_TRIES="10")
    settings = Settings.from_env(env)
    conn = await asyncpg.connect(own_postgres.url)
    try:
        user = await conn.fetchval(
            "INSERT INTO users (email) VALUES ('pg@example.com') RETURNING id"
        )
        [event_id] = await store_events(
            conn, [checkout_session_event(credits=15, client_reference_id=str(user))]
        )
    finally:
        await conn.close()

    worker = in_process_worker(settings, burst=False)
    task = asyncio.create_task(worker.async_run())
    retries_before = _retries()
    try:
        await wait_for(lambda: worker.worker is not None)  # the pool is open, arq polls
        await asyncio.to_thread(own_postgres.stop)
        await enqueue(settings, [event_id])
        await wait_for(lambda: _retries() > retries_before, timeout=30)  # a transient fault
        await asyncio.to_thread(own_postgres.start)

        async def completed() -> bool:
            check = await asyncpg.connect(own_postgres.url)
            try:
                return (await status_of(check, event_id))["processing_status"] == "completed"
            finally:
                await check.close()

        await wait_for(completed, timeout=30, interval=0.2)
    finally:
        await worker.close()
        task.cancel()

    conn = await asyncpg.connect(own_postgres.url)
    try:
        assert await conn.fetchval("SELECT credits_balance FROM users WHERE id = $1", user) == 15
        assert await conn.fetchval("SELECT count(*) FROM credit_transactions") == 1
    finally:
        await conn.close()


async def test_worker_process_outlives_a_redis_outage_and_resumes(
    db: asyncpg.Connection, database_url: str, own_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    """arq's main() raises on a Redis connection error; the supervisor waits it out. Before
    issue 9, a Redis restart stopped every worker process and nothing was credited again."""
    env = worker_env(database_url, own_redis.url, LOG_LEVEL="info", SWEEP_INTERVAL_SECONDS="1")
    settings = Settings.from_env(env)
    user = await db.fetchval("INSERT INTO users (email) VALUES ('redis@example.com') RETURNING id")
    log_path = tmp_path / "worker.log"
    proc = spawn_worker(env, log_path)
    try:
        await wait_for(lambda: "worker_started" in log_path.read_text(errors="replace"))
        await asyncio.to_thread(own_redis.stop)

        def outage_seen_or_exited() -> bool:
            return proc.poll() is not None or "redis_unavailable" in log_path.read_text("utf-8")

        await wait_for(outage_seen_or_exited)
        assert proc.poll() is None, log_path.read_text(errors="replace")

        await asyncio.to_thread(own_redis.start)
        [event_id] = await store_events(
            db, [checkout_session_event(credits=9, client_reference_id=str(user))]
        )
        await enqueue(settings, [event_id])

        async def completed() -> bool:
            return (await status_of(db, event_id))["processing_status"] == "completed"

        await wait_for(completed, timeout=30, interval=0.1)
        assert proc.poll() is None, log_path.read_text(errors="replace")
        await wait_for(lambda: "redis_recovered" in log_path.read_text(errors="replace"))
        lines = [json.loads(line) for line in log_path.read_text().splitlines() if line[:1] == "{"]
        [started] = [line for line in lines if line.get("event") == "worker_started"]
        assert started["gc_frozen_objects"] > 0
    finally:
        stop_worker(proc)
    assert await db.fetchval("SELECT credits_balance FROM users WHERE id = $1", user) == 9


async def test_worker_stopped_during_a_redis_outage_shuts_down_cleanly(
    database_url: str, own_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    """With Redis away arq's close() fails (it deletes its health-check key first): the
    process once exited 1 with the Postgres pool open. Now SIGTERM still ends in 0."""
    env = worker_env(database_url, own_redis.url, LOG_LEVEL="info")
    log_path = tmp_path / "worker.log"
    proc = spawn_worker(env, log_path)
    try:
        await wait_for(lambda: "worker_started" in log_path.read_text(errors="replace"))
        await asyncio.to_thread(own_redis.stop)
        await wait_for(lambda: "redis_unavailable" in log_path.read_text(errors="replace"))
        proc.send_signal(signal.SIGTERM)
        returncode = await asyncio.to_thread(proc.wait, 20)
    finally:
        stop_worker(proc)
    text = log_path.read_text(errors="replace")
    assert returncode == 0, text
    assert "worker_stopping" in text  # the supervisor's own signal handler
    assert "worker_stopped" in text  # the Postgres pool was closed
