"""Real `webhook-worker work` processes on one database: exactly once under load, a hot
user, and a worker SIGKILLed mid-batch."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from itertools import accumulate
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import wait_for
from tests.worker_support import (
    balance,
    count_where_status,
    enqueue,
    ledger_sum,
    new_user,
    spawn_worker,
    stop_worker,
    store_events,
    worker_env,
)
from webhook_worker.config import Settings
from webhook_worker.ops.sample_events import checkout_session_event
from webhook_worker.worker import ledger

Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn(database_url: str, clean_redis_url: str, tmp_path: Path) -> Iterator[Spawn]:
    """Start worker processes on this test's database and Redis; all stopped at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(**env: str) -> subprocess.Popen[bytes]:
        proc = spawn_worker(
            worker_env(database_url, clean_redis_url, **env), tmp_path / f"worker-{len(procs)}.log"
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop_worker(proc)


def _logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-2000:] for p in tmp_path.glob("*.log"))


async def _all_completed(db: asyncpg.Connection, total: int) -> bool:
    return await count_where_status(db, "completed") == total


async def test_1000_events_for_100_users_across_3_workers(
    db: asyncpg.Connection, settings: Settings, spawn: Spawn, tmp_path: Path
) -> None:
    users = [await new_user(db, f"load{i}@example.com") for i in range(100)]
    expected = dict.fromkeys(users, 0)
    events = []
    for index in range(1000):
        user = users[index % 100]
        credits = 1 + index % 37
        expected[user] += credits
        by_email = index % 3 == 0  # a third resolve by (upper-cased) email, the rest by id
        events.append(
            checkout_session_event(
                credits=credits,
                client_reference_id=None if by_email else str(user),
                email=f"LOAD{index % 100}@example.com" if by_email else None,
            )
        )
    ids = await store_events(db, events)
    for _ in range(3):
        # Two jobs at a time, 100 jobs of 10 events: no worker can take them all at once,
        # and each keeps polling for more while the others work.
        spawn(WORKER_MAX_JOBS="2", LOG_LEVEL="info")
    logs = sorted(tmp_path.glob("worker-*.log"))
    await wait_for(lambda: all("worker_started" in p.read_text() for p in logs), timeout=30)
    for start in range(0, len(ids), 10):
        await enqueue(settings, ids[start : start + 10])

    try:
        await wait_for(lambda: _all_completed(db, 1000), timeout=90, interval=0.2)
    except AssertionError:
        raise AssertionError(_logs(tmp_path)) from None
    assert all("event_credited" in p.read_text() for p in logs)  # all three did work
    assert await db.fetchval("SELECT count(*) FROM credit_transactions") == 1000
    assert await db.fetchval("SELECT count(*) FROM users") == 100  # no stray upserts
    for user, credits in expected.items():
        assert await balance(db, user) == credits == await ledger_sum(db, user)


async def test_hot_user_500_events_across_3_workers(
    db: asyncpg.Connection, settings: Settings, spawn: Spawn, tmp_path: Path
) -> None:
    user = await new_user(db, "hot@example.com")
    events = [
        checkout_session_event(credits=1 + i % 9, client_reference_id=str(user)) for i in range(500)
    ]
    ids = await store_events(db, events)
    for _ in range(3):
        spawn()
    await enqueue(settings, ids)

    try:
        await wait_for(lambda: _all_completed(db, 500), timeout=90, interval=0.2)
    except AssertionError:
        raise AssertionError(_logs(tmp_path)) from None
    total = sum(1 + i % 9 for i in range(500))
    assert await balance(db, user) == total == await ledger_sum(db, user)
    # Serialised by the lock: ordered by balance_after, each row's balance_after is the
    # running sum of the amounts, so no two transactions ever read the same balance.
    rows = await db.fetch(
        "SELECT amount, balance_after FROM credit_transactions ORDER BY balance_after"
    )
    assert [r["balance_after"] for r in rows] == list(accumulate(r["amount"] for r in rows))


async def test_worker_sigkilled_mid_batch_loses_and_doubles_nothing(
    db: asyncpg.Connection, database_url: str, settings: Settings, spawn: Spawn, tmp_path: Path
) -> None:
    blocked_user = await new_user(db, "blocked@example.com")
    others = [await new_user(db, f"other{i}@example.com") for i in range(20)]
    blocked = [
        checkout_session_event(credits=7, client_reference_id=str(blocked_user)) for _ in range(5)
    ]
    rest = [
        checkout_session_event(credits=3, client_reference_id=str(others[i % 20]))
        for i in range(200)
    ]
    blocked_ids = await store_events(db, blocked)
    await store_events(db, rest)

    # Hold the blocked user's ledger lock: the first worker's jobs for that user claim their
    # events and then wait inside their ledger transaction, where the SIGKILL finds them.
    holder = await asyncpg.connect(database_url)
    held = holder.transaction()
    await held.start()
    await ledger.lock_user(holder, blocked_user)
    # A short job timeout: arq re-runs a dead worker's jobs after job_timeout + 10 s.
    first = spawn(JOB_TIMEOUT_SECONDS="3")
    await enqueue(settings, [e["id"] for e in blocked + rest])
    try:

        async def mid_batch() -> bool:
            statuses = await db.fetch(
                "SELECT processing_status FROM stripe_events WHERE event_id = ANY($1::text[])",
                blocked_ids,
            )
            return all(s["processing_status"] == "processing" for s in statuses) and (
                await count_where_status(db, "completed") >= 50
            )

        await wait_for(mid_batch, timeout=30, interval=0.02)
        first.kill()  # SIGKILL: no shutdown hook, transactions abandoned mid-way
        first.wait(10)
    finally:
        await held.rollback()
        await holder.close()

    spawn(JOB_TIMEOUT_SECONDS="3")
    try:
        await wait_for(lambda: _all_completed(db, 205), timeout=60, interval=0.2)
    except AssertionError:
        raise AssertionError(_logs(tmp_path)) from None
    assert await db.fetchval("SELECT count(*) FROM credit_transactions") == 205
    assert await balance(db, blocked_user) == 35 == await ledger_sum(db, blocked_user)
    for user in others:
        assert await balance(db, user) == 30 == await ledger_sum(db, user)
