"""Recovery in seconds (issue 28), with real receiver and worker processes and today's
default settings (sweeper every 30 s, stale after 120 s, job timeout 30 s): after each fault
ends, every event completes within 15 s — not the two minutes the stale-event sweeper takes.
Each test prints its measured recovery time (docs/reliability.md)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import wait_for
from tests.integration.cluster import Cluster, post_event
from tests.integration.invariants import unfinished_events
from webhook_worker.dev.embedded import EmbeddedPostgres, EmbeddedRedis
from webhook_worker.dev.servicekit import stop_process
from webhook_worker.ops.sample_events import checkout_session_event, encode_event, sign_payload

SECRET = "whsec_recovery_secret_00000001"
RECOVERY_LIMIT_S = 15.0
# Today's defaults, over the cluster's test-speed overrides.
DEFAULTS = {
    "STALE_AFTER_SECONDS": "120",
    "SWEEP_INTERVAL_SECONDS": "30",
    "JOB_TIMEOUT_SECONDS": "30",
    "MAX_TRIES": "8",
    "RETRY_BASE_SECONDS": "2",
    "LOG_LEVEL": "info",
}


@pytest.fixture
def cluster(
    own_postgres: EmbeddedPostgres, own_redis: EmbeddedRedis, tmp_path: Path
) -> Iterator[Cluster]:
    logs = tmp_path / "logs"
    logs.mkdir()
    c = Cluster(own_postgres, own_redis, logs, SECRET, extra_env=dict(DEFAULTS))
    yield c
    c.stop()


def _purchase(user: int, credits: int = 2) -> bytes:
    return encode_event(checkout_session_event(email=f"r{user}@example.com", credits=credits))


async def _deliver(url: str, bodies: list[bytes]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for body in bodies:
            response = await post_event(client, url, body, sign_payload(body, SECRET))
            assert response.status_code == 200, response.text


async def _recovered_within(cluster: Cluster, events: int, since: float, what: str) -> float:
    """Wait until `events` events are stored and none unfinished; the seconds since `since`."""

    async def done() -> bool:
        try:
            conn = await asyncpg.connect(cluster.postgres.url, timeout=2)
        except (OSError, asyncpg.PostgresError):
            return False
        try:
            stored = await conn.fetchval("SELECT count(*) FROM stripe_events")
            return bool(stored == events and not await unfinished_events(conn))
        finally:
            await conn.close()

    remaining = RECOVERY_LIMIT_S - (time.monotonic() - since)
    try:
        await wait_for(done, timeout=max(remaining, 0.1), interval=0.1)
    except AssertionError as exc:
        conn = await asyncpg.connect(cluster.postgres.url)
        try:
            rows = await conn.fetch(
                "SELECT event_id, processing_status, attempts, error_message, updated_at, "
                "next_attempt_at FROM stripe_events "
                "WHERE processing_status IN ('received', 'processing')"
            )
        finally:
            await conn.close()
        unfinished = "\n".join(str(dict(row)) for row in rows)
        raise AssertionError(
            f"{what}: not recovered within 15 s: {exc}\nunfinished:\n{unfinished}\n{cluster.logs()}"
        ) from None
    elapsed = time.monotonic() - since
    print(f"\n{what}: every event completed {elapsed:.1f} s after the fault ended")
    return elapsed


async def _credits(cluster: Cluster) -> Any:
    conn = await asyncpg.connect(cluster.postgres.url)
    try:
        return await conn.fetchrow(
            "SELECT (SELECT count(*) FROM credit_transactions) AS rows, "
            "(SELECT coalesce(sum(credits_balance), 0) FROM users) AS balance"
        )
    finally:
        await conn.close()


async def test_redis_restart_losing_the_queue_under_running_workers(cluster: Cluster) -> None:
    url = cluster.start_receiver()
    workers = [cluster.start_worker(), cluster.start_worker()]
    # Frozen, the workers leave the jobs queued; Redis then restarts empty under them.
    for worker in workers:
        os.kill(worker.pid, signal.SIGSTOP)
    await _deliver(url, [_purchase(user) for user in range(30)])
    await asyncio.to_thread(cluster.redis.restart)
    for worker in workers:
        os.kill(worker.pid, signal.SIGCONT)
    ended = time.monotonic()
    await _recovered_within(cluster, 30, ended, "Redis restart losing the queue, workers running")
    row = await _credits(cluster)
    assert (row["rows"], row["balance"]) == (30, 60)


async def test_redis_restart_losing_the_queue_then_a_worker_starts(cluster: Cluster) -> None:
    url = cluster.start_receiver()
    await _deliver(url, [_purchase(user) for user in range(30)])
    await asyncio.to_thread(cluster.redis.restart)
    ended = time.monotonic()
    cluster.start_worker()
    await _recovered_within(
        cluster, 30, ended, "Redis restart losing the queue, worker started after"
    )
    row = await _credits(cluster)
    assert (row["rows"], row["balance"]) == (30, 60)


async def test_a_worker_sigtermed_mid_batch_hands_its_events_to_another_at_once(
    cluster: Cluster,
) -> None:
    url = cluster.start_receiver()
    first = cluster.start_worker()
    blocker = await asyncpg.connect(cluster.postgres.url)
    try:
        # One user, whose row the test locks: the worker's batch claims the events and
        # waits inside its ledger transaction.
        user = await blocker.fetchval(
            "INSERT INTO users (email) VALUES ('held@example.com') RETURNING id"
        )
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user)
        bodies = [
            encode_event(checkout_session_event(client_reference_id=str(user), credits=1))
            for _ in range(3)
        ]
        await _deliver(url, bodies)
        probe = await asyncpg.connect(cluster.postgres.url)
        try:

            async def claimed() -> bool:
                held = await probe.fetchval(
                    "SELECT count(*) FROM stripe_events WHERE processing_status = 'processing'"
                )
                return bool(held == 3)

            await wait_for(claimed, timeout=30)
        finally:
            await probe.close()
        cluster.start_worker()
        await asyncio.to_thread(stop_process, first)  # SIGTERM mid-batch
        ended = time.monotonic()
        await transaction.rollback()  # the row lock goes; the events are the other worker's
    finally:
        await blocker.close()
    await _recovered_within(cluster, 3, ended, "worker SIGTERM mid-batch")
    row = await _credits(cluster)
    assert (row["rows"], row["balance"]) == (3, 3)


async def test_a_3_second_redis_outage_under_load(cluster: Cluster) -> None:
    url = cluster.start_receiver()
    for _ in range(2):
        cluster.start_worker()
    sent: list[bytes] = []

    async def load(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        async with httpx.AsyncClient(timeout=10) as client:
            while time.monotonic() < deadline:
                body = _purchase(len(sent) % 50)
                sent.append(body)
                response = await post_event(client, url, body, sign_payload(body, SECRET))
                assert response.status_code == 200, response.text
                await asyncio.sleep(0.02)

    sender = asyncio.create_task(load(9.0))
    await asyncio.sleep(3.0)
    await asyncio.to_thread(cluster.redis.stop)
    await asyncio.sleep(3.0)
    await asyncio.to_thread(cluster.redis.start)  # empty: what was queued is gone too
    ended = time.monotonic()
    await sender
    await _recovered_within(cluster, len(sent), ended, "3 s Redis outage under load")
    row = await _credits(cluster)
    assert (row["rows"], row["balance"]) == (len(sent), 2 * len(sent))
