"""Reliability scenarios with real processes: receivers, workers, Postgres and Redis that the
test stops, restarts or kills. Every scenario ends with the shared invariant checker.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from tests.conftest import wait_for
from tests.integration.cluster import Cluster, post_event
from tests.integration.invariants import (
    check_invariants,
    check_payment_targets,
    unfinished_events,
)
from tests.integration.stripe_model import StripeModel
from tests.worker_support import queued_event_ids
from webhook_worker.dev.embedded import EmbeddedPostgres, EmbeddedRedis
from webhook_worker.job_queue import redis_from_url
from webhook_worker.ops.sample_events import (
    charge_refunded_event,
    checkout_session_event,
    compute_signature,
    encode_event,
    sign_payload,
)

OLD_SECRET = "whsec_old_rotation_secret_0001"
NEW_SECRET = "whsec_new_rotation_secret_0002"


@pytest.fixture
def cluster(
    own_postgres: EmbeddedPostgres, own_redis: EmbeddedRedis, tmp_path: Path
) -> Iterator[Cluster]:
    logs = tmp_path / "logs"
    logs.mkdir()
    c = Cluster(own_postgres, own_redis, logs, OLD_SECRET)
    yield c
    c.stop()


async def _all_final(cluster: Cluster, expected_rows: int, timeout: float) -> None:
    async def done() -> bool:
        try:
            conn = await asyncpg.connect(cluster.postgres.url, timeout=2)
        except (OSError, asyncpg.PostgresError):
            return False
        try:
            stored = await conn.fetchval("SELECT count(*) FROM stripe_events")
            return stored == expected_rows and not await unfinished_events(conn)
        finally:
            await conn.close()

    try:
        await wait_for(done, timeout=timeout, interval=0.25)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{cluster.logs()}") from None


def _purchase(user: int, credits: int) -> dict[str, Any]:
    return checkout_session_event(email=f"user{user}@example.com", credits=credits)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_load_with_faults_keeps_every_invariant(cluster: Cluster) -> None:
    """2 receivers, 3 workers, 2,000+ events for 200 users with 10 % duplicate deliveries
    and Stripe's money flows on ~12 % of steps (refunds, failed refunds, partial captures in
    both API shapes, disputes won and lost), while a worker is SIGKILLed, Redis restarts and
    Postgres restarts. Every payment ends taking back what Stripe's final state says."""
    rng = random.Random(20261122)
    cluster.extra_env.update(RETRY_BASE_SECONDS="1")
    urls = [cluster.start_receiver(), cluster.start_receiver()]
    for _ in range(3):
        cluster.start_worker()

    deliveries: list[bytes] = []
    expected: dict[str, int] = {}
    purchases: list[dict[str, Any]] = []
    money: list[dict[str, Any]] = []  # purchases whose payments Stripe refunds or disputes
    stripe = StripeModel(rng)
    for _ in range(2000):
        roll = rng.random()
        if roll < 0.15 and money:
            # a few recent payments each see several steps (refund, failure, dispute, close)
            bought = rng.choice(money[-4:])["data"]["object"]
            events = stripe.step(bought["payment_intent"])
        else:
            event = _purchase(rng.randrange(200), rng.randint(1, 50))
            purchases.append(event)
            if rng.random() < 0.05:
                money.append(event)
            session = event["data"]["object"]
            credits = int(session["metadata"]["credits"])
            expected[session["id"]] = credits
            events = [event, *stripe.add(session, credits)]
        deliveries += [encode_event(event) for event in events]
    deliveries += [rng.choice(deliveries) for _ in range(200)]  # 10 % duplicates
    unique = {body for body in deliveries}

    faults = {
        500: lambda: (cluster.kill_worker(0), cluster.start_worker()),
        1000: cluster.redis.restart,
        1600: cluster.postgres.restart,
    }
    semaphore = asyncio.Semaphore(32)
    async with httpx.AsyncClient(timeout=10) as client:

        async def deliver(index: int, body: bytes) -> int:
            async with semaphore:
                header = sign_payload(body, OLD_SECRET)
                response = await post_event(client, urls[index % 2], body, header)
                return response.status_code

        tasks = []
        for index, body in enumerate(deliveries):
            if index in faults:
                await asyncio.gather(*tasks)
                await asyncio.to_thread(faults[index])
            tasks.append(asyncio.create_task(deliver(index, body)))
        statuses = await asyncio.gather(*tasks)

    assert set(statuses) == {200}
    await _all_final(cluster, expected_rows=len(unique), timeout=300)
    conn = await asyncpg.connect(cluster.postgres.url)
    try:
        await check_invariants(conn, expected_purchases=expected)
        await check_payment_targets(conn, stripe.targets())
        failed = await conn.fetch(
            "SELECT event_id, error_message FROM stripe_events WHERE processing_status = 'failed'"
        )
        assert not failed, failed[:5]
        kinds = await conn.fetch(
            "SELECT transaction_type, count(*) FROM credit_transactions GROUP BY 1"
        )
        # The scenario really exercised every flow.
        assert {"REFUND", "REFUND_REVERSAL", "DISPUTE", "DISPUTE_REVERSAL"} <= {
            row["transaction_type"] for row in kinds
        }
    finally:
        await conn.close()


async def test_redis_flushed_with_jobs_in_it_sweeper_recovers(cluster: Cluster) -> None:
    cluster.extra_env.update(STALE_AFTER_SECONDS="1", SWEEP_INTERVAL_SECONDS="1")
    url = cluster.start_receiver()
    expected: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=10) as client:
        for user in range(40):
            event = _purchase(user, 3)
            expected[event["data"]["object"]["id"]] = 3
            body = encode_event(event)
            assert (await post_event(client, url, body, sign_payload(body, OLD_SECRET))).is_success
    redis = redis_from_url(cluster.redis.url)
    redis.default_queue_name = "arq:queue:postgres"  # derived from the cluster's database
    try:
        assert len(await queued_event_ids(redis)) == 40  # the jobs were there…
        await redis.flushall()  # …and Redis lost them
    finally:
        await redis.aclose()
    cluster.start_worker()
    await _all_final(cluster, expected_rows=40, timeout=60)
    conn = await asyncpg.connect(cluster.postgres.url)
    try:
        await check_invariants(conn, expected_purchases=expected)
    finally:
        await conn.close()


async def test_secret_rotation_under_load_loses_nothing(cluster: Cluster) -> None:
    """[old] → [old, new] → [new], rolled one receiver at a time while events flow; Stripe
    signs with the old secret, then with both, then with the new one."""
    urls = [cluster.start_receiver(), cluster.start_receiver()]
    cluster.start_worker()
    now_signing = {"secrets": [OLD_SECRET]}
    sent: dict[str, int] = {}
    statuses: list[int] = []
    stop = asyncio.Event()

    async def stripe_traffic(client: httpx.AsyncClient, lane: int) -> None:
        index = 0
        while not stop.is_set():
            event = _purchase(lane * 1000 + index, 2)
            body = encode_event(event)
            ts = int(time.time())
            header = f"t={ts}," + ",".join(
                f"v1={compute_signature(body, s, ts)}" for s in now_signing["secrets"]
            )
            response = await post_event(client, urls[index % 2], body, header)
            statuses.append(response.status_code)
            sent[event["data"]["object"]["id"]] = 2
            index += 1

    async with httpx.AsyncClient(timeout=10) as client:
        lanes = [asyncio.create_task(stripe_traffic(client, lane)) for lane in range(4)]
        both = f"{OLD_SECRET},{NEW_SECRET}"
        await wait_for(lambda: len(statuses) >= 20)
        for index in range(2):
            await asyncio.to_thread(cluster.restart_receiver, index, STRIPE_WEBHOOK_SECRET=both)
        now_signing["secrets"] = [OLD_SECRET, NEW_SECRET]  # Stripe rolls the secret
        await wait_for(lambda: len(statuses) >= 60)
        now_signing["secrets"] = [NEW_SECRET]  # the old one expires at Stripe
        await wait_for(lambda: len(statuses) >= 80)
        for index in range(2):
            await asyncio.to_thread(
                cluster.restart_receiver, index, STRIPE_WEBHOOK_SECRET=NEW_SECRET
            )
        await wait_for(lambda: len(statuses) >= 120)
        stop.set()
        await asyncio.gather(*lanes)

    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    await _all_final(cluster, expected_rows=len(sent), timeout=60)
    conn = await asyncpg.connect(cluster.postgres.url)
    try:
        await check_invariants(conn, expected_purchases=sent)
    finally:
        await conn.close()


async def test_refunds_delivered_before_their_purchases(cluster: Cluster) -> None:
    """100 purchases whose full or half refunds arrive first, in random order."""
    rng = random.Random(7)
    cluster.extra_env.update(RETRY_BASE_SECONDS="1", MAX_TRIES="12")
    url = cluster.start_receiver()
    cluster.start_worker()
    purchases, refunds = [], []
    expected_balance: dict[str, int] = {}
    for user in range(100):
        event = _purchase(user, 10)
        session = event["data"]["object"]
        refunded = rng.choice((1000, 500))
        refunds.append(
            charge_refunded_event(
                payment_intent=session["payment_intent"], amount=1000, amount_refunded=refunded
            )
        )
        purchases.append(event)
        expected_balance[f"user{user}@example.com"] = 10 - 10 * refunded // 1000
    rng.shuffle(refunds)
    rng.shuffle(purchases)
    async with httpx.AsyncClient(timeout=10) as client:

        async def deliver(event: dict[str, Any]) -> int:
            body = encode_event(event)
            return (await post_event(client, url, body, sign_payload(body, OLD_SECRET))).status_code

        assert set(await asyncio.gather(*(deliver(e) for e in refunds))) == {200}
        assert set(await asyncio.gather(*(deliver(e) for e in purchases))) == {200}

    await _all_final(cluster, expected_rows=200, timeout=120)
    conn = await asyncpg.connect(cluster.postgres.url)
    try:
        await check_invariants(conn)
        rows = await conn.fetch("SELECT email, credits_balance FROM users")
        assert {r["email"]: r["credits_balance"] for r in rows} == expected_balance
        statuses = await conn.fetch(
            "SELECT processing_status, count(*) FROM stripe_events GROUP BY 1"
        )
        assert {r["processing_status"]: r["count"] for r in statuses} == {"completed": 200}
    finally:
        await conn.close()


async def test_clock_skew_rejected_then_retries_accepted(cluster: Cluster) -> None:
    """A receiver clock 10 minutes off rejects every delivery with a clear reason; once the
    clock is right, Stripe's retries of the same events are accepted and processed once."""
    url = cluster.start_receiver(METRICS_ON_RECEIVER="true")
    cluster.start_worker()
    events = [_purchase(user, 4) for user in range(10)]
    skewed = int(time.time()) - 600
    async with httpx.AsyncClient(timeout=10) as client:
        for event in events:
            body = encode_event(event)
            response = await post_event(
                client, url, body, sign_payload(body, OLD_SECRET, timestamp=skewed)
            )
            assert response.status_code == 400
            assert "timestamp_too_old" in response.text
        async with asyncpg.create_pool(cluster.postgres.url, min_size=1, max_size=1) as pool:
            assert await pool.fetchval("SELECT count(*) FROM stripe_events") == 0
        metrics = (await client.get(url.replace("/webhooks/stripe", "/metrics"))).text
        assert 'reason="timestamp_too_old"' in metrics
        for event in events:  # Stripe retries with a fresh timestamp
            body = encode_event(event)
            response = await post_event(client, url, body, sign_payload(body, OLD_SECRET))
            assert response.status_code == 200
    await _all_final(cluster, expected_rows=10, timeout=60)
    conn = await asyncpg.connect(cluster.postgres.url)
    try:
        await check_invariants(
            conn, expected_purchases={e["data"]["object"]["id"]: 4 for e in events}
        )
    finally:
        await conn.close()


_CRASHING_RECEIVER = """
import os, sys
import uvicorn
from webhook_worker.config import Settings
from webhook_worker.receiver.app import create_app

async def die_after_commit(event_ids):
    os._exit(137)  # killed after the INSERT committed, before the enqueue

app = create_app(Settings.from_env(), after_commit_hook=die_after_commit)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None)
"""


async def test_receiver_killed_between_commit_and_enqueue_sweeper_processes_it(
    cluster: Cluster,
) -> None:
    import subprocess
    import sys

    from webhook_worker.dev.embedded import free_port

    port = free_port()
    log = (cluster.log_dir / "crashing-receiver.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_RECEIVER, str(port)],
        env=cluster.env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            await wait_for(lambda: _healthy(client, port), timeout=30)
            event = _purchase(1, 6)
            body = encode_event(event)
            with pytest.raises(httpx.HTTPError):  # the process died mid-request
                await client.post(
                    f"http://127.0.0.1:{port}/webhooks/stripe",
                    content=body,
                    headers={"Stripe-Signature": sign_payload(body, OLD_SECRET)},
                )
        assert await asyncio.to_thread(proc.wait, 10) == 137
    finally:
        if proc.poll() is None:
            proc.kill()
    conn = await asyncpg.connect(cluster.postgres.url)
    redis = aioredis.from_url(cluster.redis.url)
    try:
        status = await conn.fetchval(
            "SELECT processing_status FROM stripe_events WHERE event_id = $1", event["id"]
        )
        assert status == "received"  # durable…
        assert await redis.zcard("arq:queue:postgres") == 0  # …but never enqueued
        cluster.extra_env.update(STALE_AFTER_SECONDS="1", SWEEP_INTERVAL_SECONDS="1")
        cluster.start_worker()
        await _all_final(cluster, expected_rows=1, timeout=60)
        await check_invariants(conn, expected_purchases={event["data"]["object"]["id"]: 6})
    finally:
        await redis.aclose()
        await conn.close()


async def _healthy(client: httpx.AsyncClient, port: int) -> bool:
    try:
        return (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
    except httpx.HTTPError:
        return False
