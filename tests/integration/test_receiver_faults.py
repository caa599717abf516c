"""The receiver under a real uvicorn server while Postgres or Redis stop, die and come back.

The server runs in the test's event loop (so the shared metrics registry and test hooks are
visible); the start-up tests run `webhook-worker serve` as a real process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import httpx
import uvicorn
from prometheus_client import REGISTRY

from tests.conftest import TEST_SECRET, sign, wait_for
from tests.worker_support import queued_event_ids
from webhook_worker.config import Settings
from webhook_worker.dev.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from webhook_worker.job_queue import redis_from_url
from webhook_worker.ops.sample_events import checkout_session_event, encode_event
from webhook_worker.receiver.app import create_app

MakeSettings = Callable[..., Settings]
CLI = str(Path(sys.executable).parent / "webhook-worker")


@contextlib.asynccontextmanager
async def running_receiver(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app under uvicorn on a free port, and a client for it."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_config=None, lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started or task.done(), timeout=30)
        assert server.started, "the receiver did not start"
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30
        ) as client:
            yield client
    finally:
        server.should_exit = True
        await task


def new_event(**kwargs: object) -> tuple[str, bytes]:
    event = checkout_session_event(**kwargs)  # type: ignore[arg-type]
    return event["id"], encode_event(event)


async def post(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post(
        "/webhooks/stripe", content=body, headers={"Stripe-Signature": sign(body)}
    )


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def stored(dsn: str, event_id: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return bool(
            await conn.fetchval("SELECT 1 FROM stripe_events WHERE event_id = $1", event_id)
        )
    finally:
        await conn.close()


async def test_redis_stopped_still_answers_200_and_the_row_is_stored(
    make_settings: MakeSettings, own_redis: EmbeddedRedis, database_url: str
) -> None:
    settings = make_settings(REDIS_URL=own_redis.url, METRICS_ON_RECEIVER="true")
    async with running_receiver(settings) as client:
        assert (await client.get("/readyz")).status_code == 200
        await asyncio.to_thread(own_redis.stop)
        failures = metric("webhook_enqueue_failures_total")
        event_id, body = new_event()
        response = await post(client, body)
        assert response.json() == {"received": True, "duplicate": False}
        assert await stored(database_url, event_id)
        assert metric("webhook_enqueue_failures_total") == failures + 1
        assert (await client.get("/readyz")).status_code == 503

        await asyncio.to_thread(own_redis.start)
        later_id, later = new_event()
        assert (await post(client, later)).status_code == 200
        probe = redis_from_url(own_redis.url)
        probe.default_queue_name = Settings.from_env({"DATABASE_URL": database_url}).queue_name
        try:
            assert later_id in await queued_event_ids(probe)
        finally:
            await probe.aclose()
        assert (await client.get("/readyz")).status_code == 200


async def test_postgres_stopped_answers_503_and_stores_nothing(
    make_settings: MakeSettings, own_postgres: EmbeddedPostgres
) -> None:
    settings = make_settings(DATABASE_URL=own_postgres.url, METRICS_ON_RECEIVER="true")
    async with running_receiver(settings) as client:
        first_id, first = new_event()
        assert (await post(client, first)).status_code == 200
        await asyncio.to_thread(own_postgres.stop)
        lost_id, lost = new_event()
        response = await post(client, lost)
        assert response.status_code == 503
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200

        await asyncio.to_thread(own_postgres.start)
        assert not await stored(own_postgres.url, lost_id)
        # The pool reconnects by itself; Stripe's retry is then stored.
        assert (await post(client, lost)).json() == {"received": True, "duplicate": False}
        assert await stored(own_postgres.url, lost_id)
        assert await stored(own_postgres.url, first_id)


async def test_postgres_killed_under_a_blocked_batch_answers_all_503_and_keeps_nothing(
    make_settings: MakeSettings, own_postgres: EmbeddedPostgres
) -> None:
    settings = make_settings(DATABASE_URL=own_postgres.url, METRICS_ON_RECEIVER="true")
    locker = await asyncpg.connect(own_postgres.url)
    async with running_receiver(settings) as client:
        assert (await client.get("/readyz")).status_code == 200
        # Hold the table so every batch waits inside its INSERT, then kill the server.
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE stripe_events IN ACCESS EXCLUSIVE MODE")
        observed = metric("webhook_insert_batch_size_sum")
        events = [new_event() for _ in range(10)]
        requests = [asyncio.create_task(post(client, body)) for _, body in events]
        await wait_for(lambda: metric("webhook_insert_batch_size_sum") - observed >= 10)
        await wait_for(lambda: _waiting_inserts(locker))
        await asyncio.to_thread(own_postgres.kill)
        responses = await asyncio.gather(*requests)
    assert [r.status_code for r in responses] == [503] * 10
    await asyncio.to_thread(own_postgres.start)
    conn = await asyncpg.connect(own_postgres.url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM stripe_events") == 0
    finally:
        await conn.close()


async def _waiting_inserts(conn: asyncpg.Connection) -> bool:
    count = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND query LIKE 'INSERT INTO stripe_events%'"
    )
    return bool(count)


async def test_fifty_concurrent_deliveries_over_real_http_store_one_row(
    settings: Settings, db: asyncpg.Connection
) -> None:
    _, body = new_event()
    async with running_receiver(settings) as client:
        responses = await asyncio.gather(*(post(client, body) for _ in range(50)))
    assert [r.status_code for r in responses] == [200] * 50
    assert sum(not r.json()["duplicate"] for r in responses) == 1
    assert await db.fetchval("SELECT count(*) FROM stripe_events") == 1


async def test_concurrent_distinct_deliveries_are_group_committed(
    settings: Settings, db: asyncpg.Connection
) -> None:
    batches_before = metric("webhook_insert_batch_size_count")
    events = [new_event() for _ in range(200)]
    async with running_receiver(settings) as client:
        responses = await asyncio.gather(*(post(client, body) for _, body in events))
    assert all(r.json() == {"received": True, "duplicate": False} for r in responses)
    assert await db.fetchval("SELECT count(*) FROM stripe_events") == 200
    # Fewer INSERT statements than requests: some batches held more than one event.
    assert metric("webhook_insert_batch_size_count") - batches_before < 200


def _serve_env(settings: Settings, **overrides: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": settings.database_url or "",
        "REDIS_URL": settings.redis_url or "",
        "STRIPE_WEBHOOK_SECRET": TEST_SECRET,
        "APP_ENV": "test",
        "LOG_FORMAT": "json",
    }
    env.update(overrides)
    return env


def test_serve_refuses_e2e_mode_in_production_with_exit_2(settings: Settings) -> None:
    result = subprocess.run(
        [CLI, "serve", "--port", str(free_port())],
        env=_serve_env(settings, E2E_TEST_MODE="true", APP_ENV="production"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "E2E_TEST_MODE=true skips signature verification" in result.stderr
    assert "APP_ENV=production" in result.stderr


async def test_serve_in_e2e_mode_accepts_unsigned_events_and_every_log_line_says_so(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [CLI, "serve", "--port", str(port)],
            env=_serve_env(settings, E2E_TEST_MODE="true", STRIPE_WEBHOOK_SECRET=""),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                await wait_for(lambda: _healthy(client))
                event_id, body = new_event()
                response = await client.post("/webhooks/stripe", content=body)
                assert response.json() == {"received": True, "duplicate": False}
        finally:
            proc.terminate()
            proc.wait(30)
    assert await db.fetchval("SELECT count(*) FROM stripe_events") == 1
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert any(line.get("stripe_event_id") == event_id for line in lines)
    assert lines and all("signature_bypass" in line for line in lines)
    started = [line for line in lines if line.get("event") == "receiver_started"]
    assert started and started[0]["gc_frozen_objects"] > 0  # the serve process froze its heap


async def _healthy(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/healthz")).status_code == 200
    except httpx.TransportError:
        return False
