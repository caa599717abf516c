"""Operators and shortfalls (issue 27): `webhook-worker credits show|grant|adjust`, its audit,
and SHORTFALL_POLICY=collect through the real worker (Postgres and Redis).

Expected balances are written out by hand from the story each test tells.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

import asyncpg
import pytest
from prometheus_client import REGISTRY

from tests.conftest import base_env
from tests.ops_support import CliResult, run_cli
from tests.worker_support import deliver, drain, new_user, status_of
from webhook_worker import credits
from webhook_worker.config import Settings
from webhook_worker.db import store
from webhook_worker.ops import stats, verify
from webhook_worker.ops.sample_events import (
    charge_refunded_event,
    checkout_session_event,
    invoice_paid_event,
    refund_event,
)
from webhook_worker.worker.jobs import WorkerResources, release_expired_holds

Cli = Callable[..., Awaitable[CliResult]]


def _ctx(settings: Settings, pool: store.Pool) -> dict[str, object]:
    """A worker's arq ctx for calling a cron function directly."""
    return {"resources": WorkerResources.build(settings, pool)}


@pytest.fixture
def env(database_url: str, clean_redis_url: str) -> dict[str, str]:
    return base_env(database_url, clean_redis_url)


@pytest.fixture
def cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> Cli:
    async def run(*args: str) -> CliResult:
        return await run_cli(capsys, monkeypatch, env, *args)

    return run


@pytest.mark.parametrize("action", ["show", "grant", "adjust"])
async def test_credits_commands_have_help(cli: Cli, action: str) -> None:
    result = await cli("credits", action, "--help")
    assert result.code == 0 and "usage: webhook-worker credits" in result.out


async def test_credits_cli_grants_adjusts_shows_and_audits(
    cli: Cli, db: asyncpg.Connection
) -> None:
    user = await new_user(db, "Ada@Example.com")
    await db.execute("UPDATE users SET stripe_customer_id = 'cus_Ada1' WHERE id = $1", user)
    uuid = str(await db.fetchval("SELECT uuid FROM users WHERE id = $1", user))

    missing = await cli("credits", "grant", "ada@example.com", "10")
    assert missing.code == 2 and "--reason" in missing.err

    granted = await cli("credits", "grant", "ada@example.com", "10", "--reason", "apology",
                        "--json")  # fmt: skip
    assert granted.code == 0, granted.err
    assert granted.json()["status"] == "granted" and granted.json()["balance"] == 10
    by_id = await cli("credits", "adjust", str(user), "-3", "--reason", "typo", "--key", "k1")
    assert by_id.code == 0 and "now has 7 credits" in by_id.out
    again = await cli("credits", "adjust", uuid, "-3", "--reason", "typo", "--key", "k1")
    assert again.code == 0 and again.out.startswith("duplicate") and "now has 7" in again.out
    too_much = await cli("credits", "adjust", "cus_Ada1", "-8", "--reason", "claw back")
    assert too_much.code == 1 and "has 7 credits" in too_much.err
    blank = await cli("credits", "grant", str(user), "5", "--reason", " ")
    assert blank.code == 1 and "reason" in blank.err
    nobody = await cli("credits", "show", "nobody@example.com")
    assert nobody.code == 1 and "no user matches" in nobody.err

    shown = (await cli("credits", "show", "cus_Ada1", "--json")).json()
    assert shown["balance"] == 7
    assert [(t["transaction_type"], t["amount"]) for t in shown["history"]] == [
        ("ADJUSTMENT", -3),
        ("BONUS", 10),
    ]
    assert [a["filters"]["amount"] for a in shown["audit"]] == [-3, 10]
    table = await cli("credits", "show", str(user))
    assert table.code == 0 and "balance 7 credits" in table.out and "ADJUSTMENT" in table.out

    audit = await db.fetch("SELECT who, via, action, filters, count FROM ops_audit ORDER BY id")
    assert [(r["via"], r["action"], r["count"]) for r in audit] == [
        ("cli", "credits_grant", 1),
        ("cli", "credits_adjust", 1),
    ]  # the duplicate and the refused calls wrote nothing
    assert all(r["who"].startswith("cli:") for r in audit)
    for result in (granted, by_id, again, too_much, table):
        assert "ada@example.com" not in result.err.lower()  # no email in the logs


def _settings(database_url: str, redis_url: str, **env: str) -> Settings:
    values = base_env(database_url, redis_url)
    values.update(env)
    return Settings.from_env(values)


async def _spent_then_refunded(
    db: asyncpg.Connection, settings: Settings, user: int, created: int
) -> None:
    """Buy 10 credits (pi_1), spend all 10, then a full refund: 10 could not be taken."""
    ids = await deliver(
        db,
        settings,
        checkout_session_event(credits=10, client_reference_id=str(user), payment_intent="pi_1"),
    )
    await drain(settings)
    assert (await status_of(db, ids[0]))["processing_status"] == "completed"
    await credits.spend(db, user, 10, idempotency_key="all")
    ids = await deliver(
        db,
        settings,
        charge_refunded_event(payment_intent="pi_1", amount_refunded=1000, created=created),
    )
    await drain(settings)
    assert (await status_of(db, ids[0]))["processing_status"] == "completed"
    assert await credits.balance(db, user) == 0


async def test_forgive_is_the_default_and_collects_nothing(
    db: asyncpg.Connection, database_url: str, clean_redis_url: str
) -> None:
    settings = _settings(database_url, clean_redis_url)
    assert settings.shortfall_policy == "forgive"
    user = await new_user(db, "forgiven@example.com")
    await _spent_then_refunded(db, settings, user, int(time.time()) - 100)
    await deliver(db, settings, checkout_session_event(credits=4, client_reference_id=str(user)))
    await drain(settings)
    assert await credits.balance(db, user) == 4
    granted = await credits.grant(db, user, 3, idempotency_key="g", reason="promo")
    assert granted.balance == 7
    assert (await stats.collect_stats(db))["shortfall_outstanding"] == 10


async def test_collect_makes_the_next_purchase_and_grant_pay_the_shortfall(
    db: asyncpg.Connection, database_url: str, clean_redis_url: str
) -> None:
    settings = _settings(database_url, clean_redis_url, SHORTFALL_POLICY="collect")
    user = await new_user(db, "owes@example.com")
    refunded_at = int(time.time()) - 100
    await _spent_then_refunded(db, settings, user, refunded_at)

    # The worker starting records the policy where the SQL functions read it.
    await deliver(db, settings, checkout_session_event(credits=4, client_reference_id=str(user)))
    await drain(settings)
    assert await db.fetchval("SELECT shortfall_policy FROM credits_settings") == "collect"
    assert await credits.balance(db, user) == 0  # 4 bought, 4 of the 10 owed collected
    granted = await credits.grant(db, user, 9, idempotency_key="g", reason="promo")
    assert (granted.status, granted.balance) == ("granted", 3)  # the other 6 collected
    rows = await db.fetch(
        "SELECT transaction_type, amount, payment_intent_id FROM credit_transactions"
        " WHERE user_id = $1 ORDER BY id",
        user,
    )
    assert [(r["transaction_type"], r["amount"]) for r in rows] == [
        ("PURCHASE", 10),
        ("USAGE", -10),
        ("PURCHASE", 4),
        ("SHORTFALL_COLLECTION", -4),
        ("BONUS", 9),
        ("SHORTFALL_COLLECTION", -6),
    ]
    assert {
        r["payment_intent_id"] for r in rows if r["transaction_type"] == "SHORTFALL_COLLECTION"
    } == {"pi_1"}
    numbers = await stats.collect_stats(db)
    assert (numbers["shortfall_outstanding"], numbers["shortfall_collected"]) == (0, 10)
    assert numbers["shortfall_policy"] == "collect"
    pool = await store.create_pool(settings)
    try:
        await release_expired_holds(_ctx(settings, pool))  # the cron refreshes the two gauges
    finally:
        await pool.close()
    assert REGISTRY.get_sample_value("shortfall_outstanding_credits") == 0
    assert REGISTRY.get_sample_value("shortfall_collected_credits") == 10
    report = await verify.verify(db, stale_after_seconds=3600)
    assert report.problems == []

    # The refund fails: what was collected for it comes back.
    failed = await deliver(
        db,
        settings,
        refund_event(
            payment_intent="pi_1", refund_created=refunded_at - 10, created=refunded_at + 10
        ),
    )
    await drain(settings)
    assert (await status_of(db, failed[0]))["processing_status"] == "completed"
    assert await credits.balance(db, user) == 13  # 3 + the 10 collected
    assert (await verify.verify(db, stale_after_seconds=3600)).problems == []


async def test_collect_takes_the_shortfall_from_a_subscription_credit(
    db: asyncpg.Connection, database_url: str, clean_redis_url: str
) -> None:
    settings = _settings(
        database_url, clean_redis_url, SHORTFALL_POLICY="collect", PRICE_CREDITS="price_basic:8"
    )
    user = await new_user(db, "renews@example.com")
    await db.execute("UPDATE users SET stripe_customer_id = 'cus_Renews1' WHERE id = $1", user)
    await _spent_then_refunded(db, settings, user, int(time.time()) - 100)
    [event_id] = await deliver(
        db, settings, invoice_paid_event(customer="cus_Renews1", price="price_basic")
    )
    await drain(settings)
    assert (await status_of(db, event_id))["processing_status"] == "completed"
    assert await credits.balance(db, user) == 0  # 8 credited, 8 of the 10 owed collected
    assert (
        await db.fetchval(
            "SELECT -sum(amount) FROM credit_transactions WHERE transaction_type ="
            " 'SHORTFALL_COLLECTION' AND user_id = $1",
            user,
        )
        == 8
    )
    assert (await stats.collect_stats(db))["shortfall_outstanding"] == 2
    assert (await verify.verify(db, stale_after_seconds=3600)).problems == []


async def test_the_worker_cron_releases_expired_holds(
    db: asyncpg.Connection, database_url: str, clean_redis_url: str
) -> None:
    settings = _settings(database_url, clean_redis_url)
    user = await new_user(db, "holder@example.com")
    await credits.grant(db, user, 5, idempotency_key="g", reason="seed")
    await credits.hold(db, user, 2, idempotency_key="gone", expires_in=timedelta(microseconds=1))
    await credits.hold(db, user, 1, idempotency_key="kept", expires_in=timedelta(hours=1))
    pool = await store.create_pool(settings)
    try:
        assert await release_expired_holds(_ctx(settings, pool)) == 1
        assert await release_expired_holds(_ctx(settings, pool)) == 0
    finally:
        await pool.close()
    assert await credits.balance(db, user) == 4
    assert [h.idempotency_key for h in await credits.open_holds(db, user)] == ["kept"]
