"""Coalesced claims and credits against a real Postgres: concurrent jobs share one statement
and one commit, and still each purchase is credited once, a bad purchase fails alone, and
a user whose lock is held elsewhere holds up only its own credit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest
from prometheus_client import REGISTRY

from tests.worker_support import (
    assert_balance_after_is_running_sum,
    balance,
    ledger_sum,
    new_user,
    status_of,
    store_events,
)
from webhook_worker.config import Settings
from webhook_worker.db import store
from webhook_worker.errors import PermanentError
from webhook_worker.ops.sample_events import checkout_session_event, new_id
from webhook_worker.worker import ledger, resolver
from webhook_worker.worker.batching import WorkerBatches


def _credit_batches() -> tuple[float, float]:
    """(batches, events) so far in the `worker_batch_size{statement="credit"}` histogram."""
    labels = {"statement": "credit"}
    count = REGISTRY.get_sample_value("worker_batch_size_count", labels) or 0.0
    return count, REGISTRY.get_sample_value("worker_batch_size_sum", labels) or 0.0


def _purchase(user_id: int, event_id: str, credits: int) -> ledger.Purchase:
    return ledger.Purchase(
        user_id=user_id,
        credits=credits,
        event_id=event_id,
        checkout_session_id=new_id("cs"),
        payment_intent_id=None,
        description="batched purchase",
    )


@pytest.fixture
async def batches(settings: Settings) -> AsyncIterator[WorkerBatches]:
    pool = await store.create_pool(settings)
    yield WorkerBatches(pool)
    await pool.close()


async def _events(db: asyncpg.Connection, count: int) -> list[str]:
    return await store_events(db, [checkout_session_event() for _ in range(count)])


async def test_concurrent_credits_commit_together_each_once(
    db: asyncpg.Connection, batches: WorkerBatches
) -> None:
    hot = await new_user(db, "hot@example.com")
    others = [await new_user(db, f"u{i}@example.com") for i in range(10)]
    event_ids = await _events(db, 40)
    purchases = [
        _purchase(hot if i % 2 else others[i % 10], event_id, i + 1)
        for i, event_id in enumerate(event_ids)
    ]
    batches_before, events_before = _credit_batches()
    results = await asyncio.gather(*(batches.credit(p) for p in purchases))
    assert all(r.applied for r in results)
    # One transaction wrote every ledger row: the coalescing really happened.
    assert await db.fetchval("SELECT count(DISTINCT xmin::text) FROM credit_transactions") == 1
    batches_after, events_after = _credit_batches()
    assert (batches_after - batches_before, events_after - events_before) == (1, 40)  # metric
    for user in [hot, *others]:
        assert await balance(db, user) == await ledger_sum(db, user)
    assert await balance(db, hot) == sum(i + 1 for i in range(40) if i % 2)
    # The hot user's balance_after is a running sum: the lock order inside the batch held.
    await assert_balance_after_is_running_sum(db, hot)
    statuses = {(await status_of(db, e))["processing_status"] for e in event_ids}
    assert statuses == {"completed"}

    # The same purchases again, concurrently, and twice within one batch: nothing changes.
    again = await asyncio.gather(*(batches.credit(p) for p in purchases + purchases))
    assert not any(r.applied for r in again)
    assert await db.fetchval("SELECT count(*) FROM credit_transactions") == 40


async def test_batch_max_one_gives_every_event_its_own_transaction(
    db: asyncpg.Connection, settings: Settings
) -> None:
    user = await new_user(db, "single@example.com")
    event_ids = await _events(db, 12)
    pool = await store.create_pool(settings)
    try:
        singles = WorkerBatches(pool, max_batch=1, max_events=12)
        results = await asyncio.gather(*(singles.credit(_purchase(user, e, 2)) for e in event_ids))
    finally:
        await pool.close()
    assert all(r.applied for r in results)
    assert await db.fetchval("SELECT count(DISTINCT xmin::text) FROM credit_transactions") == 12
    assert await balance(db, user) == 24 == await ledger_sum(db, user)


async def test_a_bad_purchase_fails_alone_and_its_neighbours_are_credited(
    db: asyncpg.Connection, batches: WorkerBatches
) -> None:
    user = await new_user(db, "good@example.com")
    event_ids = await _events(db, 6)
    purchases = [_purchase(user, e, 5) for e in event_ids[:5]]
    nobody = _purchase(987_654_321, event_ids[5], 5)
    results = await asyncio.gather(
        *(batches.credit(p) for p in [*purchases[:2], nobody, *purchases[2:]]),
        return_exceptions=True,
    )
    assert isinstance(results[2], PermanentError)
    assert "does not exist" in str(results[2])
    assert all(
        isinstance(r, ledger.CreditResult) and r.applied for i, r in enumerate(results) if i != 2
    )
    assert await balance(db, user) == 25 == await ledger_sum(db, user)
    assert (await status_of(db, event_ids[5]))["processing_status"] == "received"


async def test_a_user_locked_elsewhere_holds_up_only_its_own_credit(
    db: asyncpg.Connection, database_url: str, batches: WorkerBatches
) -> None:
    locked = await new_user(db, "locked@example.com")
    free = [await new_user(db, f"free{i}@example.com") for i in range(5)]
    event_ids = await _events(db, 6)
    holder = await asyncpg.connect(database_url)
    held = holder.transaction()
    await held.start()
    await ledger.lock_user(holder, locked)
    try:
        blocked = asyncio.create_task(batches.credit(_purchase(locked, event_ids[0], 9)))
        others = [
            asyncio.create_task(batches.credit(_purchase(user, e, 3)))
            for user, e in zip(free, event_ids[1:], strict=True)
        ]
        done = await asyncio.wait_for(asyncio.gather(*others), timeout=20)
        assert all(r.applied for r in done)
        assert not blocked.done()
    finally:
        await held.rollback()
        await holder.close()
    assert (await blocked).applied
    assert await balance(db, locked) == 9


async def test_concurrent_claims_share_one_statement(
    db: asyncpg.Connection, batches: WorkerBatches
) -> None:
    event_ids = await _events(db, 30)
    await db.execute(
        "UPDATE stripe_events SET processing_status = 'completed' WHERE event_id = $1",
        event_ids[0],
    )
    # Three jobs at once, one of them carrying an event another carries too (a duplicate job).
    jobs = [(event_ids[0], *event_ids[1:15]), (*event_ids[15:], "evt_unknown"), (event_ids[20],)]
    first, second, duplicate = await asyncio.gather(*(batches.claim(job) for job in jobs))
    assert list(first) == event_ids[1:15]  # the completed one is not claimed
    assert list(second) == event_ids[15:]  # nor the unknown one
    assert duplicate == {}  # each event goes to one job only
    assert {row["attempts"] for row in [*first.values(), *second.values()]} == {1}
    assert (
        await db.fetchval(
            "SELECT count(DISTINCT xmin::text) FROM stripe_events "
            "WHERE processing_status = 'processing'"
        )
        == 1
    )


async def test_concurrent_lookups_match_what_the_resolver_would(
    db: asyncpg.Connection, batches: WorkerBatches
) -> None:
    by_id = await new_user(db, "id@example.com")
    by_email = await new_user(db, "Mixed.Case@Example.com")
    user_uuid = str(await db.fetchval("SELECT uuid FROM users WHERE id = $1", by_email))
    wanted = [
        resolver.classify(str(by_id)),
        resolver.classify("mixed.case@example.COM"),
        resolver.classify(user_uuid.upper()),
        resolver.classify("nobody@example.com"),
        resolver.classify("999999999"),
        resolver.classify(str(by_id)),
    ]
    found = await asyncio.gather(*(batches.lookup(c) for c in wanted))
    assert found == [by_id, by_email, by_email, None, None, by_id]
    async with batches._pool.acquire() as conn:
        alone = [await resolver.lookup_user(conn, c) for c in wanted]
    assert alone == found


def test_first_candidate_is_what_the_resolver_looks_up_first() -> None:
    session = {
        "client_reference_id": "{CHECKOUT_SESSION_ID}",
        "metadata": {"user_id": "null", "email": "buyer@example.com"},
        "customer_email": "other@example.com",
    }
    assert resolver.first_candidate(session) == (
        "metadata.email",
        resolver.Candidate("email", "buyer@example.com"),
    )
    assert resolver.first_candidate({"client_reference_id": "<email>"}) is None


async def test_without_a_statement_cache_as_behind_pgbouncer_it_all_still_works(
    db: asyncpg.Connection, make_settings: Callable[..., Settings]
) -> None:
    user = await new_user(db, "bouncer@example.com")
    event_ids = await _events(db, 8)
    pool = await store.create_pool(make_settings(DB_STATEMENT_CACHE_SIZE="0"))
    try:
        uncached = WorkerBatches(pool)
        claimed = await asyncio.gather(*(uncached.claim((e,)) for e in event_ids))
        assert all(rows for rows in claimed)
        found = await asyncio.gather(
            *(uncached.lookup(resolver.classify(str(user))) for _ in event_ids)
        )
        assert found == [user] * 8
        results = await asyncio.gather(*(uncached.credit(_purchase(user, e, 1)) for e in event_ids))
        assert all(r.applied for r in results)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM pg_prepared_statements") == 0
    finally:
        await pool.close()
    assert await balance(db, user) == 8
