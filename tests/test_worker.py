"""The arq worker in-process (real Redis, real Postgres): exactly once, retries, failures,
sweeper, pruner, the canonical log line and metrics."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from tests.conftest import wait_for
from tests.worker_support import (
    balance,
    deliver,
    drain,
    enqueue,
    in_process_worker,
    ledger_sum,
    new_user,
    status_of,
    store_events,
)
from webhook_worker import job_queue as queue
from webhook_worker.config import Settings
from webhook_worker.db import store
from webhook_worker.errors import TransientError
from webhook_worker.job_format import UNDECODABLE_JOB, dump_job, load_job
from webhook_worker.ops.sample_events import (
    checkout_session_event,
    event_envelope,
)
from webhook_worker.worker import batching as worker_batches
from webhook_worker.worker import handlers, ledger
from webhook_worker.worker.jobs import (
    WorkerResources,
    cron_jobs,
    lease_seconds,
    prune_old_events,
    retry_delay,
    sweep_stale_events,
    worker_options,
)


@pytest.fixture
async def ctx(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    """What a worker's ctx holds (its `WorkerResources`, arq's `redis`), for calling cron
    functions directly."""
    pool = await store.create_pool(settings)
    redis = await queue.create_redis(settings)
    yield {"resources": WorkerResources.build(settings, pool), "redis": redis}
    await redis.aclose()
    await pool.close()


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- configuration -------------------------------------------------------------------------


def test_worker_options_follow_the_settings() -> None:
    settings = Settings(
        redis_url="redis://localhost:6379/0",
        max_tries=4,
        job_timeout_seconds=20,
        worker_max_jobs=7,
        worker_poll_delay=0.2,
    )
    options = worker_options(settings)
    assert options["max_tries"] == 4
    assert options["job_timeout"] == 20
    assert options["max_jobs"] == 7
    assert options["poll_delay"] == 0.2
    assert options["keep_result"] == 0  # job ids are never reused; Postgres has the outcome
    assert options["handle_signals"] is False  # the supervisor handles signals
    assert options["queue_name"] == settings.queue_name
    assert [f.name for f in options["functions"]] == [queue.PROCESS_EVENTS_JOB, UNDECODABLE_JOB]
    assert (options["job_serializer"], options["job_deserializer"]) == (dump_job, load_job)
    assert {job.name for job in options["cron_jobs"]} == {
        "cron:sweep_stale_events",
        "cron:prune_old_events",
        "cron:release_expired_holds",
    }
    assert worker_options(settings, with_cron=False)["cron_jobs"] is None


def test_sweeper_runs_every_sweep_interval() -> None:
    sweeper = cron_jobs(Settings(sweep_interval_seconds=15))[0]
    assert sweeper.second == {0, 15, 30, 45}
    every_two_minutes = cron_jobs(Settings(sweep_interval_seconds=120))[0]
    assert (every_two_minutes.second, every_two_minutes.minute) == (0, set(range(0, 60, 2)))


def test_default_job_timeout_brings_a_killed_job_back_within_a_minute() -> None:
    # arq's in-progress key lives job_timeout + 10 s; then another worker runs the job again,
    # and the lease of the events it claimed (job_timeout + 5 s) has run out by then.
    settings = Settings()
    assert (
        settings.job_timeout_seconds < lease_seconds(settings) < settings.job_timeout_seconds + 10
    )
    assert settings.job_timeout_seconds + 10 <= 60


def test_retry_delay_is_exponential_and_capped() -> None:
    settings = Settings(retry_base_seconds=2)
    assert [retry_delay(settings, n) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert retry_delay(settings, 40) == 600
    assert retry_delay(Settings(retry_base_seconds=0), 5) == 0


# --- exactly once --------------------------------------------------------------------------


async def test_same_event_processed_twice_in_a_row_credits_once(
    db: asyncpg.Connection, settings: Settings
) -> None:
    user = await new_user(db, "twice@example.com")
    [event_id] = await deliver(db, settings, checkout_session_event(client_reference_id=str(user)))
    await drain(settings)
    assert await enqueue(settings, [event_id]) == 1  # a replay-style second job
    await drain(settings)
    assert await balance(db, user) == 10
    assert await db.fetchval("SELECT count(*) FROM credit_transactions") == 1
    assert (await status_of(db, event_id))["attempts"] == 1  # the second job found it final


async def test_same_events_processed_by_two_workers_at_once_credit_once(
    db: asyncpg.Connection, settings: Settings
) -> None:
    users = [await new_user(db, f"both{i}@example.com") for i in range(5)]
    events = [
        checkout_session_event(credits=3, client_reference_id=str(users[i % 5])) for i in range(60)
    ]
    ids = await store_events(db, events)
    for _ in range(2):  # every event is in two jobs; 12 jobs of 10 events
        for start in range(0, 60, 10):
            await enqueue(settings, ids[start : start + 10])
    # Two jobs at a time each: neither worker can take every job in its first poll.
    first, second = (in_process_worker(settings, max_jobs=2) for _ in range(2))
    try:
        await asyncio.gather(first.async_run(), second.async_run())
    finally:
        await first.close()
        await second.close()
    assert first.jobs_complete > 0 and second.jobs_complete > 0  # both really worked
    assert await db.fetchval("SELECT count(*) FROM credit_transactions") == 60
    for user in users:
        assert await balance(db, user) == 36 == await ledger_sum(db, user)


async def test_two_event_ids_for_one_checkout_session_credit_once(
    db: asyncpg.Connection, settings: Settings
) -> None:
    user = await new_user(db, "session@example.com")
    first = checkout_session_event(credits=25, client_reference_id=str(user))
    second = checkout_session_event(
        credits=25, client_reference_id=str(user), session_id=first["data"]["object"]["id"]
    )
    ids = await deliver(db, settings, first, second)
    await drain(settings)
    assert await balance(db, user) == 25
    assert [(await status_of(db, i))["processing_status"] for i in ids] == ["completed"] * 2


# --- retries and failures ------------------------------------------------------------------


async def test_always_failing_event_ends_failed_after_max_tries(
    db: asyncpg.Connection,
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(MAX_TRIES="3", RETRY_BASE_SECONDS="0")

    async def never_reachable(ctx: handlers.HandlerContext, event: handlers.StoredEvent) -> Any:
        raise TransientError("the host's database is unreachable")

    # A handler that always meets a transient fault (the store path itself stays real).
    monkeypatch.setitem(handlers.HANDLERS, "test.always_transient", never_reachable)
    retries_before = _sample("worker_retries_total", reason="database")
    [event_id] = await deliver(db, settings, event_envelope("test.always_transient", {}))
    await drain(settings)
    status = await status_of(db, event_id)
    assert status["processing_status"] == "failed"
    assert status["attempts"] == 3
    assert "unreachable" in status["error_message"]
    retries = _sample("worker_retries_total", reason="database") - retries_before
    assert retries == 2


async def test_a_job_stuck_past_its_deadline_is_released_and_retried(
    db: asyncpg.Connection, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(JOB_TIMEOUT_SECONDS="2", RETRY_BASE_SECONDS="0", MAX_TRIES="5")
    user = await new_user(db, "stuck@example.com")
    [event_id] = await store_events(db, [checkout_session_event(client_reference_id=str(user))])
    holder = db.transaction()
    await holder.start()
    await ledger.lock_user(db, user)  # the worker's ledger transaction will wait on this
    worker = in_process_worker(settings, burst=False)
    task = asyncio.create_task(worker.async_run())
    observer = await asyncpg.connect(settings.database_url)
    try:
        await enqueue(settings, [event_id])

        async def released_after_timeout() -> bool:
            row = await status_of(observer, event_id)
            return row["attempts"] >= 1 and "TimeoutError" in (row["error_message"] or "")

        await wait_for(released_after_timeout, timeout=15)
        await holder.rollback()

        async def completed() -> bool:
            return (await status_of(observer, event_id))["processing_status"] == "completed"

        await wait_for(completed, timeout=15)
        assert await balance(observer, user) == 10
    finally:
        await observer.close()
        await worker.close()
        task.cancel()


# --- sweeper and pruner --------------------------------------------------------------------


async def test_sweeper_requeues_a_received_event_that_lost_its_job(
    db: asyncpg.Connection, settings: Settings, ctx: dict[str, Any]
) -> None:
    user = await new_user(db, "swept@example.com")
    lost, fresh = await store_events(
        db,
        [
            checkout_session_event(client_reference_id=str(user)),
            checkout_session_event(client_reference_id=str(user)),
        ],
    )
    await enqueue(settings, [lost])
    await ctx["redis"].flushdb()  # Redis lost the job
    await db.execute(
        "UPDATE stripe_events SET updated_at = now() - interval '1 hour' WHERE event_id = $1", lost
    )
    swept_before = _sample("worker_swept_events_total")

    assert await sweep_stale_events(ctx) == 1  # only the stale one
    assert await sweep_stale_events(ctx) == 0  # its job is queued: not doubled
    assert _sample("worker_swept_events_total") - swept_before == 1
    # The same pass publishes the backlog: both events wait, one job sits in the queue.
    assert REGISTRY.get_sample_value("stripe_events_by_status", {"status": "received"}) == 2
    assert REGISTRY.get_sample_value("worker_queue_depth") == 1

    await drain(settings)
    assert (await status_of(db, lost))["processing_status"] == "completed"
    assert (await status_of(db, fresh))["processing_status"] == "received"  # not stale yet
    assert await balance(db, user) == 10


async def test_pruner_nulls_old_completed_payloads_but_keeps_failed(
    db: asyncpg.Connection, settings: Settings, ctx: dict[str, Any]
) -> None:
    user = await new_user(db, "prune@example.com")
    failing = checkout_session_event(credits=None, client_reference_id=str(user))
    failing["data"]["object"]["metadata"]["credits"] = "ten"  # fails: not a positive integer
    old_done, old_failed, recent_done = await deliver(
        db,
        settings,
        checkout_session_event(client_reference_id=str(user)),
        failing,
        checkout_session_event(client_reference_id=str(user)),
    )
    await drain(settings)
    await db.execute(
        "UPDATE stripe_events SET received_at = now() - make_interval(days => $1) "
        "WHERE event_id = ANY($2::text[])",
        settings.retention_days + 1,
        [old_done, old_failed],
    )
    assert await prune_old_events(ctx) == 1
    old = await status_of(db, old_done)
    assert (old["processing_status"], old["pruned"]) == ("completed", True)
    failed = await status_of(db, old_failed)
    assert (failed["processing_status"], failed["pruned"]) == ("failed", False)
    assert (await status_of(db, recent_done))["pruned"] is False
    assert (
        await db.fetchval("SELECT count(*) FROM credit_transactions WHERE event_id = $1", old_done)
        == 1
    )  # the ledger stays


async def test_pruner_works_in_chunks_until_every_old_payload_is_gone(
    db: asyncpg.Connection,
) -> None:
    ids = await store_events(db, [checkout_session_event() for _ in range(25)])
    await db.execute(
        "UPDATE stripe_events SET processing_status = 'completed', "
        "received_at = now() - make_interval(days => 40) - make_interval(secs => random())"
    )
    assert await store.prune_events(db, 30, dry_run=True) == 25
    assert await store.prune_events(db, 30, chunk=10) == 25  # chunks of 10, 10 and 5
    assert (
        await db.fetchval(
            "SELECT count(*) FROM stripe_events WHERE raw_data IS NULL AND event_id = ANY($1)", ids
        )
        == 25
    )
    assert await store.prune_events(db, 30, chunk=10) == 0


# --- observability -------------------------------------------------------------------------


async def test_one_canonical_line_per_job_without_raw_email(
    db: asyncpg.Connection, settings: Settings, log_stream: io.StringIO
) -> None:
    credited_before = _sample(
        "worker_events_total", outcome="completed", type="checkout.session.completed"
    )
    email = "Secret.Buyer@Example.com"
    credited = checkout_session_event(credits=12, email=email)
    ignored = checkout_session_event(payment_status="unpaid", email=email)
    credited_id, ignored_id = await deliver(db, settings, credited, ignored)
    await drain(settings)

    output = log_stream.getvalue()
    assert "Secret.Buyer" not in output and "@Example.com" not in output.lower()
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    by_event = {line.get("stripe_event_id"): line for line in lines if line.get("duration_ms")}
    assert by_event[credited_id]["event"] == "event_credited"
    assert by_event[credited_id]["credits"] == 12
    assert by_event[credited_id]["resolved_by"] == "upsert"
    assert by_event[ignored_id]["event"] == "event_ignored"
    assert by_event[ignored_id]["reason"] == "awaiting_payment"
    assert all(isinstance(line["duration_ms"], float) for line in by_event.values())
    credited_after = _sample(
        "worker_events_total", outcome="completed", type="checkout.session.completed"
    )
    assert credited_after - credited_before == 1


@pytest.mark.parametrize(("blips", "claimed"), [(0, True), (2, True), (3, False)])
async def test_claim_rides_out_two_connection_blips(
    monkeypatch: pytest.MonkeyPatch, blips: int, claimed: bool
) -> None:
    calls: list[str] = []
    sleeps: list[float] = []

    async def claim(conn: Any, event_id: str, *, lease_seconds: float) -> dict[str, Any] | None:
        calls.append(event_id)
        if len(calls) <= blips:
            raise TransientError("connection lost")
        return {"event_id": event_id}

    async def no_sleep(delay: float) -> None:
        sleeps.append(delay)

    monkeypatch.setattr(store, "claim_event", claim)
    monkeypatch.setattr(worker_batches.asyncio, "sleep", no_sleep)
    if claimed:
        assert await worker_batches.claim_one(None, "evt_blip") == {"event_id": "evt_blip"}  # type: ignore[arg-type]
    else:
        with pytest.raises(TransientError):
            await worker_batches.claim_one(None, "evt_blip")  # type: ignore[arg-type]
    assert len(calls) == min(blips + 1, 3)
    assert sleeps == [0.05, 0.1][: min(blips, 2)]


async def test_a_process_works_on_at_most_worker_max_events_events_at_once(
    db: asyncpg.Connection, make_settings: Callable[..., Settings]
) -> None:
    """One job of 6 events, WORKER_MAX_EVENTS=2: two are claimed, the rest wait unclaimed for a
    slot (without the limit all six are claimed by one coalesced statement)."""
    settings = make_settings(WORKER_MAX_EVENTS="2")
    user = await new_user(db, "slots@example.com")
    events = [checkout_session_event(client_reference_id=str(user)) for _ in range(6)]
    event_ids = await store_events(db, events)
    holder = db.transaction()
    await holder.start()
    await ledger.lock_user(db, user)  # claimed events wait in their ledger transaction
    worker = in_process_worker(settings, burst=False)
    task = asyncio.create_task(worker.async_run())
    observer = await asyncpg.connect(settings.database_url)

    async def statuses() -> list[str]:
        rows = [await status_of(observer, event_id) for event_id in event_ids]
        return sorted(row["processing_status"] for row in rows)

    try:
        await enqueue(settings, event_ids)  # one job carries all six
        await wait_for(lambda: _claimed_at_least(observer, event_ids, 1), timeout=15)
        assert await statuses() == ["processing"] * 2 + ["received"] * 4
        await holder.rollback()

        async def all_completed() -> bool:
            return await statuses() == ["completed"] * 6

        await wait_for(all_completed, timeout=30)
        assert await balance(observer, user) == 60
    finally:
        await observer.close()
        await worker.close()
        task.cancel()


async def _claimed_at_least(conn: asyncpg.Connection, event_ids: list[str], count: int) -> bool:
    claimed = await conn.fetchval(
        "SELECT count(*) FROM stripe_events WHERE event_id = ANY($1::text[]) AND attempts > 0",
        event_ids,
    )
    return int(claimed) >= count


async def test_jobs_of_another_deployment_sharing_the_queue_are_named_at_warning_level(
    settings: Settings, db: asyncpg.Connection, log_stream: io.StringIO
) -> None:
    """Another deployment's receiver wrote to this queue (same QUEUE_NAME): its event ids
    are not in this database. The worker leaves them and says so, with the fix."""
    user = await new_user(db, "ours@example.com")
    [ours] = await store_events(db, [checkout_session_event(client_reference_id=str(user))])
    await enqueue(settings, [ours, "evt_of_another_deployment_1"])
    await drain(settings)
    assert (await status_of(db, ours))["processing_status"] == "completed"
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines() if line.strip()]
    [warning] = [line for line in lines if line.get("event") == "foreign_jobs_found"]
    assert warning["level"] == "warning"
    assert warning["events"] == 1
    assert warning["queue"] == settings.queue_name
    assert "QUEUE_NAME" in warning["fix"]
