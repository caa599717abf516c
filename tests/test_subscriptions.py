"""Recurring credits (issue 18): what a paid invoice credits, per line, in both API shapes
(before and from `2025-03-31.basil`), its one SUBSCRIPTION_CREDIT row, the subscription
session that links the customer, invoices that wait for it, and payments without Checkout.

Unit cases run the rules on Stripe-shaped invoices; the rest go through real in-process arq
workers and Postgres.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from tests.money_cases import NOTE_CASES, NoteCase, note_step
from tests.worker_support import (
    assert_balance_after_is_running_sum,
    balance,
    deliver,
    drain,
    enqueue,
    ledger_sum,
    new_user,
    received_days_ago,
    spend,
    status_of,
    sweep,
)
from webhook_worker.config import ConfigError, Settings, parse_price_credits
from webhook_worker.errors import PermanentError
from webhook_worker.money.invoice_pricing import credit_note_refunds, invoice_credits, line_price_id
from webhook_worker.money.takebacks import target_taken
from webhook_worker.ops import replay
from webhook_worker.ops.event_sender import build_test_event
from webhook_worker.ops.sample_events import (
    BASIL,
    PRE_BASIL,
    charge_refunded_event,
    checkout_session_event,
    credit_note_event,
    invoice_line,
    invoice_paid_event,
    invoice_payment_paid_event,
    new_id,
    payment_intent_succeeded_event,
)

VERSIONS = pytest.mark.parametrize("api_version", [PRE_BASIL, BASIL])
PRICES = {"price_basic": 1000, "price_pro": 5000}


# --- what an invoice credits ---------------------------------------------------------------


def _invoice(api_version: str, *lines: dict[str, Any]) -> dict[str, Any]:
    event = invoice_paid_event(customer="cus_Test1", lines=list(lines), api_version=api_version)
    invoice: dict[str, Any] = event["data"]["object"]
    return invoice


@VERSIONS
def test_the_price_id_is_read_in_both_shapes(api_version: str) -> None:
    line = invoice_line(price="price_basic", amount=900, api_version=api_version)
    assert line_price_id(line) == "price_basic"
    if api_version == BASIL:
        assert "price" not in line and line["pricing"]["price_details"]["price"] == "price_basic"
    else:
        assert line["price"]["id"] == "price_basic" and "pricing" not in line


# (line options, PRICE_CREDITS, credits expected, rule) for each API version; None: no rule.
RULES: list[tuple[str, dict[str, Any], dict[str, int], int | None, str | None]] = [
    ("price_credits per unit", {"quantity": 3}, PRICES, 3000, "price_credits"),
    ("line metadata is the whole line", {"quantity": 3, "metadata": {"credits": "700"}}, {}, 700,
     "line_metadata"),
    ("price_credits wins over metadata", {"metadata": {"credits": "7"}}, PRICES, 1000,
     "price_credits"),
    ("no rule", {}, {"price_other": 5}, None, None),
]  # fmt: skip


@VERSIONS
@pytest.mark.parametrize(
    ("name", "options", "prices", "expected", "rule"), RULES, ids=[r[0] for r in RULES]
)
def test_line_rules_first_hit_wins(
    api_version: str,
    name: str,
    options: dict[str, Any],
    prices: dict[str, int],
    expected: int | None,
    rule: str | None,
) -> None:
    line = invoice_line(price="price_basic", amount=900, api_version=api_version, **options)
    found = invoice_credits(_invoice(api_version, line), prices, 10**6)
    if expected is None:
        assert (found.credits, found.reason) == (0, "no_credits_rule")
    else:
        assert (found.credits, found.reason) == (expected, None)
        assert [c.rule for c in found.lines] == [rule]


def test_price_metadata_credits_per_unit_before_basil_only() -> None:
    """Basil lines carry no price object: its metadata cannot be read there (use
    PRICE_CREDITS or the subscription's metadata)."""
    options: dict[str, Any] = {"quantity": 2, "price_metadata": {"credits": "250"}}
    pre = invoice_line(price="price_x", amount=900, api_version=PRE_BASIL, **options)
    assert invoice_credits(_invoice(PRE_BASIL, pre), {}, 10**6).credits == 500
    basil = invoice_line(price="price_x", amount=900, api_version=BASIL, **options)
    assert invoice_credits(_invoice(BASIL, basil), {}, 10**6).reason == "no_credits_rule"


@VERSIONS
def test_lines_add_up_and_trial_and_proration_lines_credit_nothing(api_version: str) -> None:
    lines = [
        invoice_line(price="price_basic", amount=900, api_version=api_version),
        invoice_line(price="price_pro", amount=2900, quantity=2, api_version=api_version),
        invoice_line(price="price_pro", amount=0, api_version=api_version),  # trial
        invoice_line(price="price_none", amount=100, api_version=api_version),  # no rule
    ]
    assert invoice_credits(_invoice(api_version, *lines), PRICES, 10**6).credits == 11000
    trial = invoice_line(price="price_pro", amount=0, api_version=api_version)
    assert invoice_credits(_invoice(api_version, trial), PRICES, 10**6).reason == (
        "nothing_charged"
    )


def _upgrade(api_version: str, unused: int, remaining: int, **kw: Any) -> dict[str, Any]:
    """An upgrade from basic (900 a month) to pro (2900) part-way through a period."""
    lines = [
        invoice_line(price="price_basic", amount=-unused, unit_amount=900, proration=True,
                     api_version=api_version, **kw),
        invoice_line(price="price_pro", amount=remaining, unit_amount=2900, proration=True,
                     api_version=api_version, **kw),
    ]  # fmt: skip
    invoice = _invoice(api_version, *lines)
    invoice["billing_reason"] = "subscription_update"
    return invoice


@VERSIONS
@pytest.mark.parametrize(
    ("unused", "remaining", "expected"),
    [
        (450, 1450, 2000),  # half-way: -500 + 2500
        (300, 967, 1333),  # a third left: -333.33 + 1667.24, rounded down once
        (900, 2900, 4000),  # at the very start: the whole difference
    ],
)
def test_an_upgrade_credits_the_difference_the_invoice_charged(
    api_version: str, unused: int, remaining: int, expected: int
) -> None:
    found = invoice_credits(_upgrade(api_version, unused, remaining), PRICES, 10**6)
    assert (found.credits, found.reason) == (expected, None)
    assert all(line.prorated for line in found.lines)


@VERSIONS
def test_a_downgrade_credits_nothing_and_takes_nothing(api_version: str) -> None:
    lines = [
        invoice_line(price="price_pro", amount=-1450, unit_amount=2900, proration=True,
                     api_version=api_version),
        invoice_line(price="price_basic", amount=450, unit_amount=900, proration=True,
                     api_version=api_version),
    ]  # fmt: skip
    found = invoice_credits(_invoice(api_version, *lines), PRICES, 10**6)
    assert (found.credits, found.reason) == (0, "nothing_charged")


def test_bad_metadata_too_many_credits_and_truncated_lines_fail_clearly() -> None:
    bad = invoice_line(price="price_x", amount=900, metadata={"credits": "-5"})
    with pytest.raises(PermanentError, match=r"metadata\.credits='-5' is not a positive"):
        invoice_credits(_invoice(PRE_BASIL, bad), {}, 10**6)
    big = invoice_line(price="price_pro", amount=900, quantity=3)
    with pytest.raises(PermanentError, match="above MAX_CREDITS_PER_EVENT=10000"):
        invoice_credits(_invoice(PRE_BASIL, big), PRICES, 10_000)
    invoice = _invoice(PRE_BASIL, invoice_line(price="price_pro", amount=900))
    invoice["lines"]["has_more"] = True
    with pytest.raises(PermanentError, match="has_more"):
        invoice_credits(invoice, PRICES, 10**6)


def test_price_credits_setting_parses_and_fails_naming_the_variable() -> None:
    assert parse_price_credits(" price_123:1000, price_456:5000 ,") == {
        "price_123": 1000,
        "price_456": 5000,
    }
    for raw in ("price_1:0", "prod_1:5", "price_1", "price_1:1.5", "price_1:5,price_1:6"):
        with pytest.raises(ConfigError, match=r"PRICE_CREDITS.*PRICE_CREDITS=price_"):
            parse_price_credits(raw)
    env = {"PRICE_CREDITS": "price_a:10", "SUBSCRIPTION_CREDITS_EXPIRE": "1"}
    settings = Settings.from_env(env)
    assert settings.price_credits == {"price_a": 10} and settings.subscription_credits_expire
    with pytest.raises(ConfigError, match="SUBSCRIPTION_CREDITS_EXPIRE=true"):
        Settings.from_env({"SUBSCRIPTION_CREDITS_EXPIRE": "sometimes"})


# --- invoice.paid through the worker -------------------------------------------------------


@pytest.fixture
def priced(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(PRICE_CREDITS="price_basic:1000,price_pro:5000")


async def _linked_user(db: asyncpg.Connection) -> tuple[int, str]:
    customer = new_id("cus").replace("_test_", "_")
    return await new_user(db, f"{customer}@example.com", stripe_customer_id=customer), customer


async def _rows(db: asyncpg.Connection, user: int) -> list[tuple[str, int, str | None]]:
    rows = await db.fetch(
        "SELECT transaction_type, amount, invoice_id FROM credit_transactions "
        "WHERE user_id = $1 ORDER BY id",
        user,
    )
    return [(r["transaction_type"], r["amount"], r["invoice_id"]) for r in rows]


@VERSIONS
async def test_a_renewal_credits_once_however_often_it_arrives(
    db: asyncpg.Connection, priced: Settings, api_version: str
) -> None:
    user, customer = await _linked_user(db)
    event = invoice_paid_event(
        customer=customer, price="price_basic", amount=900, api_version=api_version
    )
    invoice_id = event["data"]["object"]["id"]
    [event_id] = await deliver(db, priced, event)
    await deliver(db, priced, event)  # the same delivery again
    # Another event about the same invoice (a resend under a new id) credits nothing either.
    again = invoice_paid_event(
        customer=customer,
        price="price_basic",
        amount=900,
        api_version=api_version,
        invoice_id=invoice_id,
    )
    [again_id] = await deliver(db, priced, again)
    await drain(priced)
    assert await _rows(db, user) == [("SUBSCRIPTION_CREDIT", 1000, invoice_id)]
    assert await balance(db, user) == 1000 == await ledger_sum(db, user)
    # The worker may run the two events in either order: whichever comes second credits
    # nothing and says why.
    outcomes = []
    for stored_id in (event_id, again_id):
        status = await status_of(db, stored_id)
        outcomes.append((status["processing_status"], status["status_reason"] or ""))
    assert sorted(outcomes) == [("completed", ""), ("completed", "already_credited")]
    row = await db.fetchrow("SELECT * FROM credit_transactions WHERE user_id = $1", user)
    # The row carries the payment intent (before basil only) of whichever event credited.
    credited = event if outcomes[0] == ("completed", "") else again
    expected_pi = credited["data"]["object"].get("payment_intent")
    assert row["payment_intent_id"] == expected_pi and row["checkout_session_id"] is None


async def test_an_invoice_without_a_credits_rule_is_ignored_with_a_reason(
    db: asyncpg.Connection, priced: Settings
) -> None:
    user, customer = await _linked_user(db)
    event = invoice_paid_event(customer=customer, price="price_unmapped", amount=900)
    [event_id] = await deliver(db, priced, event)
    await drain(priced)
    status = await status_of(db, event_id)
    assert (status["processing_status"], status["status_reason"]) == (
        "ignored",
        "no_credits_rule",
    )
    assert await balance(db, user) == 0


@VERSIONS
async def test_subscription_metadata_user_id_resolves_and_links_the_customer(
    db: asyncpg.Connection, settings: Settings, api_version: str
) -> None:
    user = await new_user(db, "meta@example.com")
    customer = "cus_MetaLinked" + new_id("x")[-6:]
    line = invoice_line(
        price="price_any", amount=500, api_version=api_version, metadata={"credits": "300"}
    )
    event = invoice_paid_event(
        customer=customer,
        lines=[line],
        subscription_metadata={"user_id": str(user), "credits": "300"},
        api_version=api_version,
    )
    await deliver(db, settings, event)
    await drain(settings)
    assert await balance(db, user) == 300
    linked = await db.fetchval("SELECT stripe_customer_id FROM users WHERE id = $1", user)
    assert linked == customer


@VERSIONS
async def test_the_first_invoice_waits_for_its_subscription_session_which_credits_nothing(
    db: asyncpg.Connection, priced: Settings, api_version: str
) -> None:
    user = await new_user(db, "first@example.com")
    customer = "cus_First" + new_id("x")[-8:]
    subscription = new_id("sub")
    invoice = invoice_paid_event(
        customer=customer,
        price="price_pro",
        amount=2900,
        subscription=subscription,
        billing_reason="subscription_create",
        api_version=api_version,
    )
    [invoice_event] = await deliver(db, priced, invoice)
    await drain(priced)
    status = await status_of(db, invoice_event)
    assert (status["processing_status"], status["status_reason"]) == (
        "waiting",
        "awaiting_customer",
    )
    assert (status["attempts"], status["error_message"]) == (0, None)
    assert await sweep(priced) == 0  # nothing linked yet: it stays asleep

    session = checkout_session_event(
        mode="subscription",
        subscription=subscription,
        credits=5000,  # a subscription session's own credits are never credited
        amount_total=2900,
        client_reference_id=str(user),
        customer=customer,
    )
    [session_event] = await deliver(db, priced, session)
    await drain(priced)
    linked = await status_of(db, session_event)
    assert (linked["processing_status"], linked["status_reason"]) == (
        "completed",
        "subscription_linked",
    )
    assert await balance(db, user) == 0
    assert await db.fetchval("SELECT stripe_customer_id FROM users WHERE id = $1", user) == (
        customer
    )
    assert await sweep(priced) == 1
    await drain(priced)
    assert (await status_of(db, invoice_event))["processing_status"] == "completed"
    invoice_id = invoice["data"]["object"]["id"]
    assert await _rows(db, user) == [("SUBSCRIPTION_CREDIT", 5000, invoice_id)]
    await deliver(db, priced, session)  # replaying the session changes nothing
    await drain(priced)
    assert await balance(db, user) == 5000 == await ledger_sum(db, user)


async def test_an_invoice_whose_customer_is_never_linked_fails_after_wait_max_days(
    db: asyncpg.Connection, priced: Settings
) -> None:
    customer = "cus_Never" + new_id("x")[-8:]
    [event_id] = await deliver(
        db, priced, invoice_paid_event(customer=customer, price="price_basic", amount=900)
    )
    await drain(priced)
    await received_days_ago(db, event_id, 30)
    await sweep(priced)
    status = await status_of(db, event_id)
    assert (status["processing_status"], status["status_reason"]) == (
        "failed",
        "no_user_for_customer",
    )
    assert customer in status["error_message"] and "replay" in status["error_message"]


async def test_a_subscription_session_without_a_user_is_ignored(
    db: asyncpg.Connection, settings: Settings
) -> None:
    session = checkout_session_event(mode="subscription", credits=None, customer="cus_Nobody1")
    session["data"]["object"]["customer_details"]["email"] = None
    [event_id] = await deliver(db, settings, session)
    await drain(settings)
    status = await status_of(db, event_id)
    assert (status["processing_status"], status["status_reason"]) == (
        "ignored",
        "no_user_to_link",
    )


async def test_a_refunded_invoice_charge_takes_back_its_share_before_basil(
    db: asyncpg.Connection, priced: Settings
) -> None:
    user, customer = await _linked_user(db)
    event = invoice_paid_event(customer=customer, price="price_basic", amount=900)
    pi = event["data"]["object"]["payment_intent"]
    await deliver(db, priced, event)
    await drain(priced)
    await deliver(
        db, priced, charge_refunded_event(payment_intent=pi, amount=900, amount_refunded=450)
    )
    await drain(priced)
    assert [r[:2] for r in await _rows(db, user)] == [
        ("SUBSCRIPTION_CREDIT", 1000),
        ("REFUND", -500),
    ]
    assert await balance(db, user) == 500
    await assert_balance_after_is_running_sum(db, user)


ORDERS = {
    "invoice, link, refund": ("invoice", "link", "refund"),
    "refund, link, invoice": ("refund", "link", "invoice"),
    "link, refund, invoice": ("link", "refund", "invoice"),
}


@pytest.mark.parametrize("order", list(ORDERS), ids=list(ORDERS))
async def test_a_refunded_basil_invoice_takes_back_its_share_through_its_invoice_payment(
    db: asyncpg.Connection, priced: Settings, order: str
) -> None:
    """Basil invoices name no payment intent: `invoice_payment.paid` links it, in any
    order; whatever waits is woken by the sweeper."""
    user, customer = await _linked_user(db)
    invoice = invoice_paid_event(
        customer=customer, price="price_basic", amount=900, api_version=BASIL
    )
    assert "payment_intent" not in invoice["data"]["object"]
    pi = new_id("pi")
    invoice_id = invoice["data"]["object"]["id"]
    events = {
        "invoice": invoice,
        "link": invoice_payment_paid_event(invoice=invoice_id, payment_intent=pi, amount=900),
        "refund": charge_refunded_event(
            payment_intent=pi, amount=900, amount_refunded=300, api_version=BASIL
        ),
    }
    for name in ORDERS[order]:
        await deliver(db, priced, events[name])
        await drain(priced)
    for _ in range(2):
        await sweep(priced)
        await drain(priced)
    assert [r[:2] for r in await _rows(db, user)] == [
        ("SUBSCRIPTION_CREDIT", 1000),
        ("REFUND", -333),
    ]
    waiting = await db.fetchval(
        "SELECT count(*) FROM stripe_events WHERE processing_status <> 'completed'"
    )
    assert waiting == 0
    await deliver(db, priced, events["link"])  # again: nothing changes
    await drain(priced)
    assert await balance(db, user) == 667 == await ledger_sum(db, user)


# --- credit notes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api_version", "amount", "refunded", "expected"),
    [
        (BASIL, 900, 900, 900),  # a full credit note
        (BASIL, 900, 300, 300),  # part refunded, the rest to the customer's balance
        (BASIL, 900, 0, None),  # all to the customer's balance: no_refund
        (PRE_BASIL, 900, 900, 900),
        (PRE_BASIL, 300, 300, 300),  # a partial credit note: 300 of a 900 invoice
        (PRE_BASIL, 900, 300, None),  # part to the balance: refund_amount_unknown
        (PRE_BASIL, 900, 0, None),
    ],
)
def test_a_credit_note_names_its_refunds_in_both_shapes(
    api_version: str, amount: int, refunded: int, expected: int | None
) -> None:
    note = credit_note_event(
        invoice="in_1", amount=amount, refunded=refunded, api_version=api_version
    )["data"]["object"]
    basil = api_version == BASIL
    assert ("refunds" in note, "refund" in note) == (basil, not basil)
    found = credit_note_refunds(note)
    if expected is None:
        assert found.refunds == ()
        assert found.reason == ("refund_amount_unknown" if refunded else "no_refund")
    else:
        [(refund_id, amount_refunded)] = found.refunds
        assert refund_id.startswith("re_") and amount_refunded == expected
        assert found.reason is None


def test_a_basil_credit_note_adds_a_split_refund_and_skips_payment_record_refunds() -> None:
    note = credit_note_event(invoice="in_1", amount=900, api_version=BASIL)["data"]["object"]
    note["refunds"] = [
        {"amount_refunded": 200, "refund": "re_1", "type": "refund"},
        {"amount_refunded": 100, "refund": {"id": "re_1", "object": "refund"}, "type": None},
        {"amount_refunded": 600, "refund": None, "type": "payment_record_refund"},
        {"amount_refunded": 0, "refund": "re_2", "type": "refund"},
    ]
    assert credit_note_refunds(note).refunds == (("re_1", 300),)
    note["refunds"][0]["amount_refunded"] = "200"
    with pytest.raises(PermanentError, match="re_1"):
        credit_note_refunds(note)


@pytest.mark.parametrize(
    ("snapshot", "noted", "expected"),
    [
        (None, 300, 333),  # a credit note, no charge event yet
        (300, 0, 333),  # a charge event, no credit note
        (300, 300, 333),  # both name the same refund: once
        (600, 300, 666),  # the charge has another refund too
        (300, 600, 666),  # the charge is older than a second credit note: it lags
    ],
)
def test_credit_notes_and_the_charge_count_the_larger_never_the_sum(
    snapshot: int | None, noted: int, expected: int
) -> None:
    assert target_taken(1000, 900, snapshot, 0, 0, noted) == expected


async def _replay(db: asyncpg.Connection, settings: Settings, event_id: str) -> None:
    selection = await replay.select_replay(db, event_ids=[event_id], force=True)
    await replay.replay_events(db, None, selection)
    await enqueue(settings, [event_id])


@VERSIONS
@pytest.mark.parametrize("case", NOTE_CASES, ids=[case.name for case in NOTE_CASES])
async def test_a_credit_note_takes_back_the_refunded_share_once(
    db: asyncpg.Connection, priced: Settings, api_version: str, case: NoteCase
) -> None:
    user, customer = await _linked_user(db)
    invoice = invoice_paid_event(
        customer=customer, price="price_basic", amount=900, api_version=api_version
    )
    pi = invoice["data"]["object"].get("payment_intent") or new_id("pi")
    sent: list[dict[str, Any]] = []
    for n, step in enumerate(case.steps):
        if step.startswith("replay:"):
            await _replay(db, priced, sent[int(step.split(":")[1])]["id"])
            event = None
        else:
            event = note_step(step, n, invoice, pi, sent)
        sent.append(event or {})
        if event is not None:
            await deliver(db, priced, event)
        await drain(priced)
        if step == "invoice" and case.spent:
            await spend(db, user, case.spent)
    for _ in range(2):
        await sweep(priced)
        await drain(priced)
    rows = [r[:2] for r in await _rows(db, user) if r[0] != "USAGE"]
    assert rows == [("SUBSCRIPTION_CREDIT", 1000), *case.rows]
    assert await balance(db, user) == case.balance == await ledger_sum(db, user)
    await assert_balance_after_is_running_sum(db, user)
    pending = await db.fetch(
        "SELECT type, processing_status, status_reason FROM stripe_events "
        "WHERE processing_status <> 'completed'"
    )
    assert pending == []
    state = await db.fetchrow(
        "SELECT taken, shortfall FROM payment_states WHERE payment_intent_id = $1", pi
    )
    assert state["taken"] - state["shortfall"] == -sum(amount for _, amount in case.rows)


async def test_a_credit_note_without_a_refund_or_invoice_moves_nothing(
    db: asyncpg.Connection, priced: Settings
) -> None:
    user, customer = await _linked_user(db)
    invoice = invoice_paid_event(customer=customer, price="price_basic", amount=900)
    invoice_id = invoice["data"]["object"]["id"]
    balance_only = credit_note_event(invoice=invoice_id, refunded=0, customer=customer)
    unknown = credit_note_event(invoice=invoice_id, amount=900, refunded=300, customer=customer)
    ids = await deliver(db, priced, invoice, balance_only, unknown)
    await drain(priced)
    reasons = [(await status_of(db, i))["status_reason"] for i in ids[1:]]
    assert reasons == ["no_refund", "refund_amount_unknown"]
    assert await balance(db, user) == 1000


async def test_a_credit_note_of_an_invoice_never_credited_is_ignored_after_wait_max_days(
    db: asyncpg.Connection, priced: Settings
) -> None:
    note = credit_note_event(invoice=new_id("in"), amount=900, api_version=BASIL)
    [event_id] = await deliver(db, priced, note)
    await drain(priced)
    status = await status_of(db, event_id)
    assert (status["processing_status"], status["status_reason"]) == (
        "waiting",
        "awaiting_invoice_payment",
    )
    await received_days_ago(db, event_id, 8)
    await sweep(priced)
    status = await status_of(db, event_id)
    assert (status["processing_status"], status["status_reason"]) == (
        "ignored",
        "no_purchase_for_payment",
    )


# --- payments without Checkout ------------------------------------------------------------


async def test_payment_intent_with_credits_credits_once_and_its_session_never_again(
    db: asyncpg.Connection, settings: Settings
) -> None:
    user = await new_user(db, "pe@example.com")
    pi = new_id("pi")
    intent = payment_intent_succeeded_event(
        credits=40, payment_intent=pi, metadata={"user_id": str(user)}
    )
    [intent_id] = await deliver(db, settings, intent)
    await drain(settings)
    assert await balance(db, user) == 40
    row = await db.fetchrow("SELECT * FROM credit_transactions WHERE event_id = $1", intent_id)
    assert (row["transaction_type"], row["payment_intent_id"]) == ("PURCHASE", pi)
    assert row["checkout_session_id"] is None

    session = checkout_session_event(credits=40, client_reference_id=str(user), payment_intent=pi)
    [session_id] = await deliver(db, settings, session)
    await deliver(db, settings, intent)
    await drain(settings)
    assert (await status_of(db, session_id))["processing_status"] == "completed"
    assert await balance(db, user) == 40 == await ledger_sum(db, user)
    assert await db.fetchval("SELECT count(*) FROM credit_transactions") == 1

    # and a refund of that payment takes back its share
    await deliver(
        db, settings, charge_refunded_event(payment_intent=pi, amount=1000, amount_refunded=250)
    )
    await drain(settings)
    assert await balance(db, user) == 30


async def test_a_checkout_session_first_then_its_payment_intent_credits_once(
    db: asyncpg.Connection, settings: Settings
) -> None:
    user = await new_user(db, "cs-first@example.com")
    pi = new_id("pi")
    await deliver(
        db,
        settings,
        checkout_session_event(credits=15, client_reference_id=str(user), payment_intent=pi),
    )
    await drain(settings)
    intent = payment_intent_succeeded_event(
        credits=15, payment_intent=pi, metadata={"user_id": str(user)}
    )
    [intent_id] = await deliver(db, settings, intent)
    await drain(settings)
    assert (await status_of(db, intent_id))["processing_status"] == "completed"
    assert await balance(db, user) == 15 == await ledger_sum(db, user)
    assert await db.fetchval("SELECT count(*) FROM credit_transactions") == 1


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"credits": None}, "not_a_credit_purchase"),
        ({"invoice": "in_1PaysAnInvoice"}, "invoice_payment"),
    ],
    ids=["no-credits", "pays-an-invoice"],
)
async def test_payment_intents_that_are_not_credit_purchases_are_ignored(
    db: asyncpg.Connection, settings: Settings, options: dict[str, Any], reason: str
) -> None:
    user = await new_user(db)
    intent = payment_intent_succeeded_event(metadata={"user_id": str(user)}, **options)
    [event_id] = await deliver(db, settings, intent)
    await drain(settings)
    status = await status_of(db, event_id)
    assert (status["processing_status"], status["status_reason"]) == ("ignored", reason)
    assert await balance(db, user) == 0


# --- send-test-event ---------------------------------------------------------------------


async def test_the_test_invoice_is_a_renewal_that_credits_its_user(
    db: asyncpg.Connection, settings: Settings
) -> None:
    user = await new_user(db, "renewal@example.com")
    event = build_test_event("invoice.paid", user_id=str(user), credits=120)
    invoice = event["data"]["object"]
    assert invoice["billing_reason"] == "subscription_cycle" and invoice["status"] == "paid"
    assert invoice["amount_paid"] == sum(line["amount"] for line in invoice["lines"]["data"])
    await deliver(db, settings, event)
    await drain(settings)
    assert await balance(db, user) == 120


# --- SUBSCRIPTION_CREDITS_EXPIRE -----------------------------------------------------------


@pytest.fixture
def expiring(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(PRICE_CREDITS="price_basic:1000", SUBSCRIPTION_CREDITS_EXPIRE="true")


def _month_invoice(customer: str, subscription: str, m: int, version: str) -> dict[str, Any]:
    start = 1_767_225_600 + m * 30 * 86_400
    return invoice_paid_event(
        customer=customer,
        price="price_basic",
        amount=900,
        subscription=subscription,
        invoice_id=f"in_exp_{subscription}_{m}",
        created=start,
        period=(start, start + 30 * 86_400),
        api_version=version,
    )


async def _types(db: asyncpg.Connection, user: int) -> list[tuple[str, int]]:
    return [(t, a) for t, a, _ in await _rows(db, user)]


@VERSIONS
async def test_unspent_credits_of_a_period_expire_when_the_next_is_credited(
    db: asyncpg.Connection, expiring: Settings, api_version: str
) -> None:
    user, customer = await _linked_user(db)
    sub = new_id("sub")
    await deliver(db, expiring, _month_invoice(customer, sub, 0, api_version))
    await drain(expiring)
    await db.execute("UPDATE users SET credits_balance = credits_balance - 300 WHERE id = $1", user)
    second = _month_invoice(customer, sub, 1, api_version)
    await deliver(db, expiring, second)
    await drain(expiring)
    assert await _types(db, user) == [
        ("SUBSCRIPTION_CREDIT", 1000),
        ("SUBSCRIPTION_CREDIT", 1000),
        ("EXPIRY", -700),  # 1000 credited, 300 spent
    ]
    assert await balance(db, user) == 1000
    expiry = await db.fetchrow(
        "SELECT * FROM credit_transactions WHERE transaction_type = 'EXPIRY'"
    )
    assert expiry["invoice_id"] == f"in_exp_{sub}_0" and expiry["event_id"] is None
    await deliver(db, expiring, second)  # replays change nothing
    await drain(expiring)
    assert await balance(db, user) == 1000


async def test_one_off_purchases_never_expire_and_late_periods_expire_at_once(
    db: asyncpg.Connection, expiring: Settings
) -> None:
    user, customer = await _linked_user(db)
    sub = new_id("sub")
    # month 1 arrives before month 0; a one-off purchase of 500 in between
    await deliver(db, expiring, _month_invoice(customer, sub, 1, PRE_BASIL))
    await drain(expiring)
    await deliver(db, expiring, checkout_session_event(credits=500, client_reference_id=str(user)))
    await drain(expiring)
    await deliver(db, expiring, _month_invoice(customer, sub, 0, PRE_BASIL))
    await drain(expiring)
    assert await _types(db, user) == [
        ("SUBSCRIPTION_CREDIT", 1000),
        ("PURCHASE", 500),
        ("SUBSCRIPTION_CREDIT", 1000),
        ("EXPIRY", -1000),  # month 0's period is already over
    ]
    assert await balance(db, user) == 1500 == await ledger_sum(db, user)
    await assert_balance_after_is_running_sum(db, user)


async def test_an_upgrade_mid_period_expires_nothing_and_expires_with_its_period(
    db: asyncpg.Connection, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(
        PRICE_CREDITS="price_basic:1000,price_pro:5000", SUBSCRIPTION_CREDITS_EXPIRE="true"
    )
    user, customer = await _linked_user(db)
    sub = new_id("sub")
    await deliver(db, settings, _month_invoice(customer, sub, 0, BASIL))
    await drain(settings)
    lines = [
        invoice_line(price="price_basic", amount=-450, unit_amount=900, proration=True,
                     api_version=BASIL),
        invoice_line(price="price_pro", amount=1450, unit_amount=2900, proration=True,
                     api_version=BASIL),
    ]  # fmt: skip
    upgrade = invoice_paid_event(
        customer=customer,
        lines=lines,
        subscription=sub,
        billing_reason="subscription_update",
        created=1_767_225_600 + 15 * 86_400,
        api_version=BASIL,
    )
    await deliver(db, settings, upgrade)
    await drain(settings)
    assert await _types(db, user) == [("SUBSCRIPTION_CREDIT", 1000), ("SUBSCRIPTION_CREDIT", 2000)]
    await deliver(db, settings, _month_invoice(customer, sub, 1, BASIL))
    await drain(settings)
    assert [t for t in await _types(db, user) if t[0] == "EXPIRY"] == [
        ("EXPIRY", -1000),
        ("EXPIRY", -2000),
    ]
    assert await balance(db, user) == 1000  # month 1's price_basic credits


async def test_expiry_is_off_by_default(db: asyncpg.Connection, priced: Settings) -> None:
    user, customer = await _linked_user(db)
    sub = new_id("sub")
    for m in (0, 1):
        await deliver(db, priced, _month_invoice(customer, sub, m, BASIL))
    await drain(priced)
    assert await balance(db, user) == 2000
