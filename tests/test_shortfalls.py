"""Shortfalls follow reversals (issue 25): credits a refund or a dispute could not take back
because they were spent are owed (`refund_shortfalls`); a failed refund or a won dispute
cancels what it no longer asks for, so `stats --json`, the console's user page and the
`shortfall_outstanding_credits` metric show what is really owed. Real worker, Postgres, Redis."""

from __future__ import annotations

import asyncpg
from prometheus_client import REGISTRY

from tests.money_cases import CLOSED, CREATED, Ids, disputed, refund_failed, refunded
from tests.worker_support import balance, deliver, drain, new_user, spend
from webhook_worker.config import Settings
from webhook_worker.console import data
from webhook_worker.db import store
from webhook_worker.ops.sample_events import checkout_session_event, new_id
from webhook_worker.ops.stats import collect_stats
from webhook_worker.worker.jobs import WorkerResources, release_expired_holds


async def _bought_and_spent(
    db: asyncpg.Connection, settings: Settings, spent: int
) -> tuple[int, Ids]:
    user = await new_user(db, f"{new_id('u')}@example.com")
    ids: Ids = {"pi": new_id("pi")}
    session = checkout_session_event(
        credits=100, amount_total=1000, client_reference_id=str(user), payment_intent=ids["pi"]
    )
    await deliver(db, settings, session)
    await drain(settings)
    await spend(db, user, spent)
    return user, ids


async def _owed(db: asyncpg.Connection, settings: Settings, user: int) -> tuple[int, ...]:
    """(stats --json figure, the console user page's figure, the metric after the cron that
    refreshes it, the refund_shortfalls rows): all what is owed now."""
    stats = await collect_stats(db)
    page = await data.user_history(db, user)
    pool = await store.create_pool(settings)
    try:
        await release_expired_holds({"resources": WorkerResources.build(settings, pool)})
    finally:
        await pool.close()
    metric = REGISTRY.get_sample_value("shortfall_outstanding_credits")
    assert metric is not None
    rows = await db.fetchval("SELECT coalesce(sum(credits), 0) FROM refund_shortfalls")
    return stats["shortfall_outstanding"], page["shortfall_owed"], int(metric), int(rows)


async def test_a_failed_refund_cancels_the_shortfall_it_made(
    db: asyncpg.Connection, settings: Settings
) -> None:
    user, ids = await _bought_and_spent(db, settings, spent=70)
    await deliver(db, settings, refunded(10, 1000)(ids))
    await drain(settings)
    assert await balance(db, user) == 0
    assert await _owed(db, settings, user) == (70, 70, 70, 70)
    # Part of the refunded money comes back (a refund of 600 of the 1000 fails): 60 credits
    # less are taken back, all of them cancelling owed shortfall; nothing is credited.
    await deliver(db, settings, refund_failed(20, 600, created=10)(ids))
    await drain(settings)
    assert await balance(db, user) == 0
    assert await _owed(db, settings, user) == (10, 10, 10, 10)
    await deliver(db, settings, refund_failed(30, 400, refund="re2", created=10)(ids))
    await drain(settings)
    assert await balance(db, user) == 30
    assert await _owed(db, settings, user) == (0, 0, 0, 0)
    assert await db.fetchval("SELECT count(*) FROM refund_shortfalls") == 0


async def test_a_won_dispute_cancels_the_shortfall_it_made(
    db: asyncpg.Connection, settings: Settings
) -> None:
    user, ids = await _bought_and_spent(db, settings, spent=80)
    await deliver(db, settings, disputed(10, 1000, CREATED, "needs_response")(ids))
    await drain(settings)
    assert await _owed(db, settings, user) == (80, 80, 80, 80)
    await deliver(db, settings, disputed(50, 1000, CLOSED, "won")(ids))
    await drain(settings)
    assert await balance(db, user) == 20
    assert await _owed(db, settings, user) == (0, 0, 0, 0)
