"""Handlers through real in-process arq workers: what each event type does to the ledger."""

from __future__ import annotations

import time
from collections.abc import Callable

import asyncpg
import pytest
from prometheus_client import REGISTRY

from tests.stripe_currencies import ZERO_DECIMAL
from tests.worker_support import (
    balance,
    deliver,
    drain,
    ledger_sum,
    new_user,
    status_of,
    sweep,
)
from webhook_worker.config import Settings
from webhook_worker.errors import PermanentError
from webhook_worker.money.checkout_pricing import credits_for
from webhook_worker.ops.sample_events import (
    charge_refunded_event,
    checkout_session_event,
    event_envelope,
    new_id,
)


def _settings(cents_per_credit: int | None = None, **prices: int) -> Settings:
    if cents_per_credit is not None:
        prices["usd"] = cents_per_credit
    return Settings(credit_prices=prices)


# --- credit amount -------------------------------------------------------------------------


def test_credits_come_from_metadata_first() -> None:
    session = {"metadata": {"credits": " 25 "}, "amount_total": 9900, "currency": "usd"}
    assert credits_for(session, _settings(cents_per_credit=100)) == 25


def test_credits_fall_back_to_amount_total_by_the_currency_price() -> None:
    session = {"metadata": {}, "amount_total": 1999, "currency": "usd"}
    assert credits_for(session, _settings(100)) == 19
    assert credits_for({**session, "currency": "EUR"}, _settings(100, eur=95)) == 21


@pytest.mark.parametrize("raw", ["0", "-5", "abc", "1.5", "\uff11\uff12", "99999999999999999999"])
def test_invalid_metadata_credits_fail_with_a_clear_message(raw: str) -> None:
    with pytest.raises(PermanentError, match=r"metadata\.credits"):
        credits_for({"metadata": {"credits": raw}, "amount_total": 1000}, _settings(100))


def test_a_session_with_no_credits_rule_is_not_a_credits_purchase() -> None:
    assert (
        credits_for({"metadata": {}, "amount_total": 1000, "currency": "usd"}, _settings()) is None
    )


@pytest.mark.parametrize("mode", ["subscription", "setup"])
def test_only_payment_mode_sessions_are_credits_purchases(mode: str) -> None:
    session = {"mode": mode, "metadata": {"credits": "10"}, "amount_total": 1000}
    assert credits_for(session, _settings(100)) is None


def test_a_zero_amount_session_is_not_a_credits_purchase() -> None:
    session = {"mode": "payment", "metadata": {}, "amount_total": 0, "currency": "usd"}
    assert credits_for(session, _settings(100)) is None


def test_an_amount_below_one_credit_fails_with_a_clear_message() -> None:
    with pytest.raises(PermanentError, match="below the price of one credit"):
        credits_for({"metadata": {}, "amount_total": 50, "currency": "usd"}, _settings(100))


def test_an_unpriced_currency_fails_naming_it_and_the_variable() -> None:
    session = {"metadata": {}, "amount_total": 1000, "currency": "jpy"}
    with pytest.raises(PermanentError, match=r"currency 'jpy'.*CREDIT_PRICES=usd:100,jpy:"):
        credits_for(session, _settings(100))


@pytest.mark.parametrize("currency", ZERO_DECIMAL)
def test_zero_decimal_currencies_credit_by_their_own_price_or_fail(currency: str) -> None:
    session = {"metadata": {}, "amount_total": 1000, "currency": currency}
    with pytest.raises(PermanentError, match=f"currency '{currency}'"):
        credits_for(session, _settings(100))
    assert credits_for(session, _settings(100, **{currency: 150})) == 6  # 1000 // 150


def test_credits_above_the_ceiling_fail_naming_the_variable() -> None:
    settings = Settings(credit_prices={"usd": 1}, max_credits_per_event=1000)
    assert credits_for({"metadata": {"credits": "1000"}}, settings) == 1000
    with pytest.raises(PermanentError, match="MAX_CREDITS_PER_EVENT=1000"):
        credits_for({"metadata": {"credits": "1001"}}, settings)
    with pytest.raises(PermanentError, match="MAX_CREDITS_PER_EVENT=1000"):
        credits_for({"metadata": {}, "amount_total": 1001, "currency": "usd"}, settings)


# --- checkout sessions ---------------------------------------------------------------------


async def test_paid_checkout_credits_the_user(db: asyncpg.Connection, settings: Settings) -> None:
    user = await new_user(db, "buyer@example.com")
    event = checkout_session_event(credits=40, client_reference_id=str(user))
    [event_id] = await deliver(db, settings, event)
    await drain(settings)
    assert (await status_of(db, event_id))["processing_status"] == "completed"
    assert await balance(db, user) == 40
    row = await db.fetchrow("SELECT * FROM credit_transactions WHERE event_id = $1", event_id)
    assert row["transaction_type"] == "PURCHASE"
    assert (row["amount"], row["balance_after"]) == (40, 40)
    assert row["checkout_session_id"] == event["data"]["object"]["id"]
    assert row["payment_intent_id"] == event["data"]["object"]["payment_intent"]


async def test_no_payment_required_checkout_credits(
    db: asyncpg.Connection, settings: Settings
) -> None:
    user = await new_user(db, "free@example.com")
    event = checkout_session_event(
        credits=5, payment_status="no_payment_required", client_reference_id=str(user)
    )
    await deliver(db, settings, event)
    await drain(settings)
    assert await balance(db, user) == 5


async def test_unpaid_checkout_waits_for_async_payment_succeeded(
    db: asyncpg.Connection, settings: Settings
) -> None:
    user = await new_user(db, "sepa@example.com")
    unpaid = checkout_session_event(
        credits=30, payment_status="unpaid", client_reference_id=str(user)
    )
    [unpaid_id] = await deliver(db, settings, unpaid)
    await drain(settings)
    assert (await status_of(db, unpaid_id))["processing_status"] == "ignored"
    assert await balance(db, user) == 0

    session = unpaid["data"]["object"]
    succeeded = event_envelope(
        "checkout.session.async_payment_succeeded", {**session, "payment_status": "paid"}
    )
    [succeeded_id] = await deliver(db, settings, succeeded)
    await drain(settings)
    assert (await status_of(db, succeeded_id))["processing_status"] == "completed"
    assert await balance(db, user) == 30


async def test_async_payment_failed_is_recorded_without_credit(
    db: asyncpg.Connection, settings: Settings
) -> None:
    user = await new_user(db, "failed@example.com")
    event = checkout_session_event(
        event_type="checkout.session.async_payment_failed",
        payment_status="unpaid",
        client_reference_id=str(user),
    )
    [event_id] = await deliver(db, settings, event)
    await drain(settings)
    assert (await status_of(db, event_id))["processing_status"] == "completed"
    assert await db.fetchval("SELECT count(*) FROM credit_transactions") == 0
    assert await balance(db, user) == 0


async def test_unknown_types_are_ignored(db: asyncpg.Connection, settings: Settings) -> None:
    def counted() -> float:
        labels = {"reason": "unhandled_type"}
        return REGISTRY.get_sample_value("worker_events_ignored_total", labels) or 0.0

    before = counted()
    event = event_envelope("customer.created", {"id": "cus_test_123", "object": "customer"})
    [event_id] = await deliver(db, settings, event)
    await drain(settings)
    assert counted() == before + 1
    status = await status_of(db, event_id)
    assert (status["processing_status"], status["status_reason"]) == ("ignored", "unhandled_type")
    assert status["error_message"] is None


async def test_amount_total_and_cents_per_credit_give_the_credits(
    db: asyncpg.Connection, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(CENTS_PER_CREDIT="25")
    user = await new_user(db, "cents@example.com")
    await deliver(
        db,
        settings,
        checkout_session_event(credits=None, amount_total=1010, client_reference_id=str(user)),
    )
    await drain(settings)
    assert await balance(db, user) == 40  # 1010 // 25


async def test_a_session_without_a_credits_rule_is_ignored_not_failed(
    db: asyncpg.Connection, settings: Settings
) -> None:
    user = await new_user(db, "nocredits@example.com")
    [event_id] = await deliver(
        db, settings, checkout_session_event(credits=None, client_reference_id=str(user))
    )
    await drain(settings)
    status = await status_of(db, event_id)
    assert (status["processing_status"], status["status_reason"]) == (
        "ignored",
        "not_a_credit_purchase",
    )
    assert status["error_message"] is None
    assert await balance(db, user) == 0


async def test_a_bad_metadata_credits_fails_at_once(
    db: asyncpg.Connection, settings: Settings
) -> None:
    user = await new_user(db, "badcredits@example.com")
    event = checkout_session_event(credits=None, client_reference_id=str(user))
    event["data"]["object"]["metadata"]["credits"] = "ten"
    [event_id] = await deliver(db, settings, event)
    await drain(settings)
    status = await status_of(db, event_id)
    assert status["processing_status"] == "failed"
    assert status["attempts"] == 1  # permanent: no retry
    assert "metadata.credits='ten' is not a positive integer" in status["error_message"]
    assert await balance(db, user) == 0


async def test_no_user_fails_with_user_not_found(
    db: asyncpg.Connection, settings: Settings
) -> None:
    event = checkout_session_event(client_reference_id="{CHECKOUT_SESSION_ID}", email=None)
    [event_id] = await deliver(db, settings, event)
    await drain(settings)
    status = await status_of(db, event_id)
    assert status["processing_status"] == "failed"
    assert status["attempts"] == 1
    assert status["error_message"].startswith("user_not_found")
    assert await db.fetchval("SELECT count(*) FROM users") == 0


# --- refunds -------------------------------------------------------------------------------


async def _purchase(
    db: asyncpg.Connection, settings: Settings, credits: int, amount: int = 1000
) -> tuple[int, str]:
    user = await new_user(db, f"{new_id('u')}@example.com")
    payment_intent = new_id("pi")
    await deliver(
        db,
        settings,
        checkout_session_event(
            credits=credits,
            amount_total=amount,
            client_reference_id=str(user),
            payment_intent=payment_intent,
        ),
    )
    await drain(settings)
    assert await balance(db, user) == credits
    return user, payment_intent


async def _refund(
    db: asyncpg.Connection,
    settings: Settings,
    payment_intent: str,
    refunded: int,
    amount: int = 1000,
    created: int | None = None,
) -> str:
    event = charge_refunded_event(
        payment_intent=payment_intent, amount=amount, amount_refunded=refunded, created=created
    )
    [event_id] = await deliver(db, settings, event)
    await drain(settings)
    return event_id


async def _refund_rows(db: asyncpg.Connection, payment_intent: str) -> list[int]:
    rows = await db.fetch(
        "SELECT amount FROM credit_transactions WHERE payment_intent_id = $1 "
        "AND transaction_type = 'REFUND' ORDER BY id",
        payment_intent,
    )
    return [row["amount"] for row in rows]


async def test_partial_refund_debits_the_refunded_share(
    db: asyncpg.Connection, settings: Settings
) -> None:
    user, pi = await _purchase(db, settings, credits=100)
    event_id = await _refund(db, settings, pi, refunded=250)  # a quarter of 1000 cents
    assert (await status_of(db, event_id))["processing_status"] == "completed"
    assert await _refund_rows(db, pi) == [-25]
    assert await balance(db, user) == 75 == await ledger_sum(db, user)


async def test_full_refund_debits_everything(db: asyncpg.Connection, settings: Settings) -> None:
    user, pi = await _purchase(db, settings, credits=100)
    await _refund(db, settings, pi, refunded=1000)
    assert await _refund_rows(db, pi) == [-100]
    assert await balance(db, user) == 0


async def test_two_partial_refunds_debit_only_what_is_new(
    db: asyncpg.Connection, settings: Settings
) -> None:
    user, pi = await _purchase(db, settings, credits=90, amount=900)
    now = int(time.time())
    first = await _refund(db, settings, pi, refunded=300, amount=900, created=now)  # 1/3
    await _refund(db, settings, pi, refunded=600, amount=900, created=now + 1)  # 2/3
    assert await _refund_rows(db, pi) == [-30, -30]
    assert await balance(db, user) == 30 == await ledger_sum(db, user)
    # An older cumulative refund delivered late changes nothing (newest state wins).
    late = await _refund(db, settings, pi, refunded=300, amount=900, created=now - 5)
    assert (await status_of(db, late))["status_reason"] == "stale_event"
    assert (await status_of(db, first))["status_reason"] is None
    assert await balance(db, user) == 30


async def test_refund_of_spent_credits_stops_at_zero_and_records_the_shortfall(
    db: asyncpg.Connection, settings: Settings
) -> None:
    user, pi = await _purchase(db, settings, credits=100)
    # The user spends 80 credits (a USAGE row, as the host application would write it).
    await db.execute(
        "WITH spend AS (UPDATE users SET credits_balance = credits_balance - 80 WHERE id = $1 "
        "RETURNING credits_balance) INSERT INTO credit_transactions "
        "(user_id, amount, balance_after, transaction_type) "
        "SELECT $1, -80, credits_balance, 'USAGE' FROM spend",
        user,
    )
    event_id = await _refund(db, settings, pi, refunded=1000)
    assert (await status_of(db, event_id))["processing_status"] == "completed"
    assert await _refund_rows(db, pi) == [-20]
    assert await balance(db, user) == 0 == await ledger_sum(db, user)
    shortfall = await db.fetchrow("SELECT * FROM refund_shortfalls WHERE event_id = $1", event_id)
    assert (shortfall["user_id"], shortfall["credits"]) == (user, 80)
    assert shortfall["payment_intent_id"] == pi


async def test_refund_before_its_purchase_waits_then_the_sweeper_wakes_it(
    db: asyncpg.Connection, settings: Settings
) -> None:
    user = await new_user(db, "early@example.com")
    pi = new_id("pi")
    [refund_id] = await deliver(
        db, settings, charge_refunded_event(payment_intent=pi, amount=1000, amount_refunded=500)
    )
    await drain(settings)
    status = await status_of(db, refund_id)
    # Waiting spends no tries and is no error: the purchase may come days later.
    assert (status["processing_status"], status["status_reason"]) == (
        "waiting",
        "awaiting_purchase",
    )
    assert (status["attempts"], status["error_message"]) == (0, None)

    await deliver(
        db,
        settings,
        checkout_session_event(credits=60, client_reference_id=str(user), payment_intent=pi),
    )
    await drain(settings)
    assert (await status_of(db, refund_id))["processing_status"] == "waiting"
    assert await sweep(settings) == 1
    await drain(settings)
    assert (await status_of(db, refund_id))["processing_status"] == "completed"
    assert await _refund_rows(db, pi) == [-30]
    assert await balance(db, user) == 30 == await ledger_sum(db, user)
