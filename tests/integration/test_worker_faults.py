"""Fault injection under a running worker: Postgres restarted mid-way."""

from __future__ import annotations

import asyncio

import asyncpg

from tests.conftest import base_env, wait_for
from tests.worker_support import enqueue, in_process_worker, status_of, store_events
from webhook_worker.config import Settings
from webhook_worker.embedded import EmbeddedPostgres
from webhook_worker.sample_events import checkout_session_event


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
    try:
        await wait_for(lambda: "pool" in worker.ctx)  # on_startup connected
        await asyncio.to_thread(own_postgres.stop)
        await enqueue(settings, [event_id])
        await wait_for(lambda: worker.jobs_retried >= 1, timeout=30)  # a transient fault
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
