"""A year of a monthly plan for 50 users through real HTTP and real workers (issue 18).

One `webhook-worker serve` and two `webhook-worker work` processes on a database of their
own. Every user subscribes through a `mode: subscription` Checkout Session and is billed
twelve months (basic: 1,000 credits for 900 cents; pro: 5,000 for 2,900), in either API
shape (before and from `2025-03-31.basil`). Users by `i % 5`:

0. basic all year;
1. an upgrade half-way through month 4 (a `subscription_update` invoice with two proration
   lines: -500 + 2,500 credits), then pro;
2. pro for six months, then a downgrade (a proration invoice that charges nothing and
   credits nothing), then basic;
3. basic, and month 6 is refunded in full through a credit note: `credit_note.created`
   (its refund) and that refund's `charge.refunded` on the invoice's payment intent (from
   basil on linked by `invoice_payment.paid`) are the same money: its 1,000 credits are
   taken back once, by whichever arrives first;
4. basic, cancelled after month 8 (`customer.subscription.deleted`, which moves nothing).

Every event is POSTed signed, shuffled, a third of them twice: invoices that arrive before
their session wait for the customer link, a refund before its invoice waits for its
credit, and the sweeper wakes both. Then every balance equals the plan's sum, the ledger
holds one SUBSCRIPTION_CREDIT per paid invoice that credits, and replaying every event
(`webhook-worker replay --force`) changes nothing.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import TEST_SECRET, create_database, drop_database, sign, wait_for
from tests.ops_support import receiver_healthy, running_receiver
from tests.worker_support import spawn_worker, stop_worker, worker_env
from webhook_worker.ops.sample_events import (
    BASIL,
    PRE_BASIL,
    charge_refunded_event,
    checkout_session_event,
    credit_note_event,
    encode_event,
    event_envelope,
    invoice_line,
    invoice_paid_event,
    invoice_payment_paid_event,
)

USERS = 50
MONTHS = 12
DAY = 86_400
T0 = 1_767_225_600  # 2026-01-01
PLANS = {"price_basic": (900, 1000), "price_pro": (2900, 5000)}  # cents, credits a month
FINAL = ("completed", "ignored", "failed")


@dataclass
class Plan:
    """One user's year: the events Stripe sends and what the ledger must end with."""

    user_id: int
    customer: str
    api_version: str
    events: list[dict[str, Any]] = field(default_factory=list)
    credits: int = 0
    credited_invoices: int = 0
    refunds: int = 0


def _month(m: int) -> tuple[int, int]:
    return T0 + m * 30 * DAY, T0 + (m + 1) * 30 * DAY


def _renewal(plan: Plan, subscription: str, m: int, price: str) -> dict[str, Any]:
    cents, credits = PLANS[price]
    event = invoice_paid_event(
        customer=plan.customer,
        price=price,
        amount=cents,
        subscription=subscription,
        billing_reason="subscription_create" if m == 0 else "subscription_cycle",
        invoice_id=f"in_year_{plan.user_id}_{m}",
        api_version=plan.api_version,
        created=_month(m)[0] + 60,
        period=_month(m),
    )
    plan.events.append(event)
    plan.credits += credits
    plan.credited_invoices += 1
    return event


def _proration(plan: Plan, subscription: str, m: int, old: str, new: str) -> dict[str, Any]:
    """A change half-way through month `m`: the old plan's unused half back, the new one's
    remaining half charged."""
    start, end = _month(m)
    half = (start + end) // 2
    lines = [
        invoice_line(price=old, amount=-PLANS[old][0] // 2, unit_amount=PLANS[old][0],
                     proration=True, subscription=subscription, api_version=plan.api_version,
                     period=(half, end)),
        invoice_line(price=new, amount=PLANS[new][0] // 2, unit_amount=PLANS[new][0],
                     proration=True, subscription=subscription, api_version=plan.api_version,
                     period=(half, end)),
    ]  # fmt: skip
    event = invoice_paid_event(
        customer=plan.customer,
        lines=lines,
        subscription=subscription,
        billing_reason="subscription_update",
        invoice_id=f"in_year_{plan.user_id}_{m}_change",
        api_version=plan.api_version,
        created=half,
        period=(half, end),
    )
    plan.events.append(event)
    net = (PLANS[new][1] - PLANS[old][1]) // 2
    if net > 0:
        plan.credits += net
        plan.credited_invoices += 1
    return event


def _refund_month(plan: Plan, invoice: dict[str, Any], m: int, price: str) -> None:
    """A credit note refunding the month in full, and the refund's own charge.refunded."""
    cents = PLANS[price][0]
    paid = invoice["data"]["object"]
    intent = paid.get("payment_intent") or f"pi_year_{plan.user_id}_{m}"
    if plan.api_version == BASIL:  # basil invoices name no payment intent
        plan.events.append(
            invoice_payment_paid_event(invoice=paid["id"], payment_intent=intent, amount=cents)
        )
    refunded_at = _month(m)[0] + 10 * DAY
    plan.events.append(
        credit_note_event(
            invoice=paid["id"],
            amount=cents,
            refund_id=f"re_year_{plan.user_id}_{m}",
            customer=plan.customer,
            api_version=plan.api_version,
            created=refunded_at,
        )
    )
    plan.events.append(
        charge_refunded_event(
            payment_intent=intent,
            amount=cents,
            amount_refunded=cents,
            created=refunded_at + 1,
            api_version=plan.api_version,
        )
    )
    plan.credits -= PLANS[price][1]
    plan.refunds += 1


def year_of(user_id: int, i: int) -> Plan:
    kind = i % 5
    version = PRE_BASIL if i % 2 else BASIL
    plan = Plan(user_id, f"cus_Year{user_id:05d}x{i}", version)
    subscription = f"sub_year_{user_id}"
    plan.events.append(
        checkout_session_event(
            mode="subscription",
            subscription=subscription,
            credits=None,
            amount_total=PLANS["price_pro" if kind == 2 else "price_basic"][0],
            client_reference_id=str(user_id),
            customer=plan.customer,
        )
    )
    months = 8 if kind == 4 else MONTHS
    for m in range(months):
        if kind == 1:
            price = "price_basic" if m < 4 else "price_pro"
            if m == 4:
                _proration(plan, subscription, 3, "price_basic", "price_pro")
        elif kind == 2:
            price = "price_pro" if m < 6 else "price_basic"
            if m == 6:
                _proration(plan, subscription, 5, "price_pro", "price_basic")
        else:
            price = "price_basic"
        invoice = _renewal(plan, subscription, m, price)
        if kind == 3 and m == 5:
            _refund_month(plan, invoice, m, price)
    if kind == 4:
        cancelled = {"id": subscription, "object": "subscription", "status": "canceled",
                     "customer": plan.customer}  # fmt: skip
        plan.events.append(event_envelope("customer.subscription.deleted", cancelled))
    return plan


@pytest.fixture
def deployment(
    postgres_admin_dsn: str, clean_redis_url: str, template_database: str, tmp_path: Path
) -> Iterator[tuple[str, str, dict[str, str]]]:
    dsn = asyncio.run(create_database(postgres_admin_dsn, template_database))
    env = worker_env(
        dsn,
        clean_redis_url,
        STRIPE_WEBHOOK_SECRET=TEST_SECRET,
        PRICE_CREDITS="price_basic:1000,price_pro:5000",
        SWEEP_INTERVAL_SECONDS="1",
        WORKER_POLL_DELAY_MS="5",
    )
    try:
        with running_receiver(env, tmp_path / "receiver.log") as url:
            workers = [spawn_worker(env, tmp_path / f"worker-{n}.log") for n in range(2)]
            try:
                asyncio.run(wait_for(lambda: receiver_healthy(url), timeout=30))
                yield url, dsn, env
            finally:
                for worker in workers:
                    stop_worker(worker)
    finally:
        asyncio.run(drop_database(postgres_admin_dsn, dsn))


async def _post_all(url: str, events: list[dict[str, Any]]) -> None:
    limit = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def post(event: dict[str, Any]) -> None:
            body = encode_event(event)
            async with limit:
                response = await client.post(
                    "/webhooks/stripe",
                    content=body,
                    headers={"Stripe-Signature": sign(body), "Content-Type": "application/json"},
                )
            assert response.status_code == 200, response.text

        await asyncio.gather(*(post(event) for event in events))


async def _settled(conn: asyncpg.Connection, expected: int) -> bool:
    row = await conn.fetchrow(
        "SELECT count(*) AS total, count(*) FILTER (WHERE processing_status = ANY($1)) AS done "
        "FROM stripe_events",
        list(FINAL),
    )
    assert row is not None
    return bool(row["total"] == expected and row["done"] == expected)


async def _ledger(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
    rows = await conn.fetch(
        "SELECT id, user_id, transaction_type, amount, balance_after, invoice_id, event_id "
        "FROM credit_transactions ORDER BY id"
    )
    return [tuple(r) for r in rows]


def _replay(env: dict[str, str], status: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "webhook_worker.cli", "replay", "--status", status, "--force"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_a_year_of_a_monthly_plan_for_50_users(
    deployment: tuple[str, str, dict[str, str]],
) -> None:
    url, dsn, env = deployment
    conn = await asyncpg.connect(dsn)
    try:
        plans = []
        for i in range(USERS):
            email = f"year-{i}@example.com"
            user = await conn.fetchval("INSERT INTO users (email) VALUES ($1) RETURNING id", email)
            plans.append(year_of(int(user), i))
        unique = [event for plan in plans for event in plan.events]
        rng = random.Random(18)
        deliveries = unique + rng.sample(unique, len(unique) // 3)
        rng.shuffle(deliveries)
        await _post_all(url, deliveries)
        await wait_for(lambda: _settled(conn, len(unique)), timeout=180, interval=0.2)

        failed = await conn.fetch(
            "SELECT event_id, type, error_message FROM stripe_events "
            "WHERE processing_status = 'failed'"
        )
        assert [tuple(r) for r in failed] == []
        notes = await conn.fetchval(
            "SELECT count(*) FROM stripe_events WHERE type = 'credit_note.created' "
            "AND processing_status = 'completed'"
        )
        assert notes == USERS // 5
        for plan in plans:
            balance = await conn.fetchval(
                "SELECT credits_balance FROM users WHERE id = $1", plan.user_id
            )
            assert balance == plan.credits, (plan.user_id, plan.api_version)
            counts = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE transaction_type = 'SUBSCRIPTION_CREDIT') AS paid, "
                "count(DISTINCT invoice_id) AS invoices, "
                "count(*) FILTER (WHERE transaction_type = 'REFUND') AS refunds, "
                "COALESCE(sum(amount), 0) AS total "
                "FROM credit_transactions WHERE user_id = $1",
                plan.user_id,
            )
            assert counts is not None
            assert (counts["paid"], counts["invoices"]) == (plan.credited_invoices,) * 2
            assert (counts["refunds"], counts["total"]) == (plan.refunds, plan.credits)
        reasons = dict(
            await conn.fetch(
                "SELECT status_reason, count(*) FROM stripe_events "
                "WHERE processing_status = 'ignored' GROUP BY 1"
            )
        )
        assert reasons == {"nothing_charged": USERS // 5, "unhandled_type": USERS // 5}

        before = await _ledger(conn)
        balances = await conn.fetch("SELECT id, credits_balance FROM users ORDER BY id")
        for status in ("completed", "ignored"):
            _replay(env, status)
        await wait_for(lambda: _settled(conn, len(unique)), timeout=180, interval=0.2)
        await _post_all(url, unique)  # and Stripe redelivering everything
        assert await _ledger(conn) == before
        assert await conn.fetch("SELECT id, credits_balance FROM users ORDER BY id") == balances
    finally:
        await conn.close()
