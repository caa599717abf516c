"""Stripe's money flows through the real worker and Postgres (issue 16), one row of
`tests/money_cases.FLOWS` per flow (the unit tier, tests/test_money_rules.py, runs the
same table through the in-memory store): partial captures in both API shapes, failed and
canceled refunds, disputes, stale deliveries. Each row lists the events in delivery order
and what the ledger must hold after (rows of type, amount, balance_after), the balance and
every event's status.

The fixtures are Stripe's own objects
(webhook_worker/ops/sample_events/data/stripe_objects.json) with the fields a flow needs, per
API version: before `2025-03-31.basil` a partial capture raises `amount_refunded` by the
released remainder and sends `charge.refunded`; from basil on `amount_refunded` counts real
refunds only.

A property test then delivers one purchase's refund, refund-failure and dispute events in
any order, with duplicates, and checks the balance always ends at
max(0, purchase - spent - share(net refunded + disputes not won)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from tests import reference_model as model
from tests.money_cases import (
    CLOSED,
    CREATED,
    FLOWS,
    REINSTATED,
    Flow,
    Ids,
    disputed,
    refund_failed,
    refunded,
)
from tests.worker_support import (
    assert_balance_after_is_running_sum,
    balance,
    deliver,
    drain,
    ledger_sum,
    new_user,
    received_days_ago,
    spend,
    status_of,
    sweep,
)
from webhook_worker.config import Settings
from webhook_worker.money.stripe_shapes import charge_snapshot
from webhook_worker.ops.sample_events import (
    BASIL,
    PRE_BASIL,
    checkout_session_event,
    new_id,
)


async def _purchase(
    db: asyncpg.Connection,
    settings: Settings,
    credits: int,
    amount_total: int,
    presentment: tuple[int, str] | None = None,
) -> tuple[int, str]:
    user = await new_user(db, f"{new_id('u')}@example.com")
    pi = new_id("pi")
    session = checkout_session_event(
        credits=credits,
        amount_total=amount_total,
        client_reference_id=str(user),
        payment_intent=pi,
        presentment=presentment,
    )
    await deliver(db, settings, session)
    await drain(settings)
    assert await balance(db, user) == credits
    return user, pi


async def _money_rows(db: asyncpg.Connection, pi: str) -> list[tuple[str, int, int]]:
    rows = await db.fetch(
        "SELECT transaction_type, amount, balance_after FROM credit_transactions "
        "WHERE payment_intent_id = $1 AND transaction_type <> 'PURCHASE' ORDER BY id",
        pi,
    )
    return [(r["transaction_type"], r["amount"], r["balance_after"]) for r in rows]


@pytest.mark.parametrize("flow", FLOWS, ids=[flow.name for flow in FLOWS])
async def test_money_flow(db: asyncpg.Connection, settings: Settings, flow: Flow) -> None:
    user, pi = await _purchase(db, settings, flow.credits, flow.amount_total, flow.presentment)
    if flow.spent:
        await spend(db, user, flow.spent)
    ids: Ids = {"pi": pi}
    event_ids = []
    for build in flow.events:
        [event_id] = await deliver(db, settings, build(ids))
        await drain(settings)
        event_ids.append(event_id)
    statuses = [await status_of(db, event_id) for event_id in event_ids]
    assert [
        (s["processing_status"], None if s["processing_status"] == "failed" else s["status_reason"])
        for s in statuses
    ] == flow.statuses
    assert await _money_rows(db, pi) == flow.rows  # balance_after counts any spending
    final = flow.rows[-1][2] if flow.rows else flow.credits - flow.spent
    assert await balance(db, user) == final == await ledger_sum(db, user)
    await assert_balance_after_is_running_sum(db, user)
    mismatches = await db.fetch(
        "SELECT * FROM payment_states s WHERE s.payment_intent_id = $1 AND s.taken <> s.shortfall"
        " + coalesce((SELECT -sum(amount) FROM credit_transactions t WHERE t.payment_intent_id "
        "= s.payment_intent_id AND t.transaction_type <> 'PURCHASE'), 0)",
        pi,
    )
    assert mismatches == []


# --- both API shapes, unit level -----------------------------------------------------------


@pytest.mark.parametrize(
    ("charge", "api_version", "expected"),
    [
        ({"amount": 1000, "amount_captured": 600, "amount_refunded": 400}, PRE_BASIL, (600, 0)),
        ({"amount": 1000, "amount_captured": 600, "amount_refunded": 700}, PRE_BASIL, (600, 300)),
        ({"amount": 1000, "amount_captured": 600, "amount_refunded": 300}, BASIL, (600, 300)),
        ({"amount": 1000, "amount_captured": 600, "amount_refunded": 0}, BASIL, (600, 0)),
        (
            {"amount": 1000, "amount_captured": None, "amount_refunded": 1000, "captured": False},
            PRE_BASIL,
            (0, 0),
        ),
        ({"amount": 1000, "amount_refunded": 250}, "2019-02-19", (1000, 250)),
        ({"amount": 1000, "amount_captured": 1000, "amount_refunded": 250}, None, (1000, 250)),
    ],
)
def test_charge_snapshot_reads_both_api_shapes(
    charge: dict[str, Any], api_version: str | None, expected: tuple[int, int]
) -> None:
    assert charge_snapshot(charge, api_version) == expected


# --- waiting -------------------------------------------------------------------------------


async def test_events_before_their_purchase_wait_and_all_apply_once_it_lands(
    db: asyncpg.Connection, settings: Settings
) -> None:
    user = await new_user(db, f"{new_id('u')}@example.com")
    ids: Ids = {"pi": new_id("pi")}
    early = [refunded(10, 500)(ids), refund_failed(20, 500, created=10)(ids)]
    early.append(disputed(30, 500, CREATED, "needs_response")(ids))
    event_ids = await deliver(db, settings, *early)
    await drain(settings)
    for event_id in event_ids:
        status = await status_of(db, event_id)
        assert (status["processing_status"], status["attempts"]) == ("waiting", 0)
    assert await sweep(settings) == 0  # nothing to wake yet
    assert REGISTRY.get_sample_value("stripe_events_by_status", {"status": "waiting"}) == 3

    session = checkout_session_event(
        credits=100, client_reference_id=str(user), payment_intent=ids["pi"]
    )
    await deliver(db, settings, session)
    await drain(settings)
    assert await sweep(settings) == 3
    await drain(settings)
    assert {(await status_of(db, e))["processing_status"] for e in event_ids} == {"completed"}
    # Refund 500 failed, dispute 500 open: half the purchase taken back, whatever the order.
    assert await balance(db, user) == 50 == await ledger_sum(db, user)


async def test_a_wait_past_wait_max_days_ends_ignored_no_purchase_for_payment(
    db: asyncpg.Connection, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(WAIT_MAX_DAYS="7")
    ids: Ids = {"pi": new_id("pi")}
    old, fresh = await deliver(db, settings, refunded(10, 500)(ids), refunded(20, 600)(ids))
    await drain(settings)
    # The first arrived eight days ago (its purchase never came: not a credits purchase).
    await received_days_ago(db, old, 8)
    await sweep(settings)
    status = await status_of(db, old)
    assert (status["processing_status"], status["status_reason"]) == (
        "ignored",
        "no_purchase_for_payment",
    )
    assert (await status_of(db, fresh))["processing_status"] == "waiting"


# --- property: any order, any duplication --------------------------------------------------

PURCHASE, CAPTURED = 100, 1000


@st.composite
def histories(draw: st.DrawFn) -> dict[str, Any]:
    """One payment's Stripe history: refunds (some fail later), maybe a dispute and its end.
    Events carry increasing `created` seconds, as Stripe would stamp them."""
    amounts = draw(st.lists(st.integers(1, 400), max_size=3))
    amounts = [a for i, a in enumerate(amounts) if sum(amounts[: i + 1]) <= CAPTURED]
    fails = [draw(st.booleans()) for _ in amounts]
    dispute = draw(st.one_of(st.none(), st.integers(1, CAPTURED)))
    outcome = draw(st.sampled_from(["open", "won", "lost", "reinstated"]))
    spent = draw(st.integers(0, PURCHASE))
    timeline: list[tuple[str, Any]] = [("refund", index) for index in range(len(amounts))]
    for index in range(len(amounts)):
        if fails[index]:
            # the failure comes after its refund, anywhere later in the history
            after = timeline.index(("refund", index)) + 1
            timeline.insert(draw(st.integers(after, len(timeline))), ("fail", index))
    if dispute is not None:
        timeline.insert(draw(st.integers(0, len(timeline))), ("dispute", "created"))
        if outcome != "open":
            timeline.append(("dispute", "closed"))
        if outcome == "reinstated":
            timeline.append(("dispute", "reinstated"))
    return {
        "amounts": amounts,
        "fails": fails,
        "dispute": dispute,
        "outcome": outcome,
        "spent": spent,
        "timeline": timeline,
    }


def _events(history: dict[str, Any], ids: Ids) -> list[dict[str, Any]]:
    """The events of a history, with Stripe's cumulative `amount_refunded` at each moment;
    a failure may come as one, two or three event types."""
    amounts, dispute = history["amounts"], history["dispute"]
    out: list[dict[str, Any]] = []
    created_at: dict[int, int] = {}
    failed: set[int] = set()
    closed_status = "lost" if history["outcome"] == "lost" else "won"
    for second, (kind, what) in enumerate(history["timeline"], start=1):
        if kind == "refund":
            created_at[what] = second
            live = sum(a for i, a in enumerate(amounts) if i in created_at and i not in failed)
            out.append(refunded(second, live)(ids))
        elif kind == "fail":
            failed.add(what)
            for event_type in ("charge.refund.updated", "refund.updated", "refund.failed")[
                : 1 + what % 3
            ]:
                build = refund_failed(
                    second, amounts[what], refund=f"re{what}", created=created_at[what]
                )
                out.append({**build(ids), "type": event_type})
        elif what == "created":
            out.append(disputed(second, dispute, CREATED, "needs_response")(ids))
        elif what == "closed":
            out.append(disputed(second, dispute, CLOSED, closed_status)(ids))
        else:
            out.append(disputed(second, dispute, REINSTATED, "won")(ids))
    return out


def _expected_balance(history: dict[str, Any]) -> int:
    """The independent reference model's balance (tests/reference_model.py), never the
    service's own rule."""
    payment = model.Payment("u", PURCHASE, CAPTURED)
    for index, (amount, fails) in enumerate(zip(history["amounts"], history["fails"], strict=True)):
        payment.refunds[f"re{index}"] = (amount, "failed" if fails else "succeeded")
    if history["dispute"] is not None:
        won = history["outcome"] in ("won", "reinstated")
        status = "won" if won else ("lost" if history["outcome"] == "lost" else "needs_response")
        payment.disputes["dp"] = model.Dispute(history["dispute"], status)
    balance, _ = model.expected([payment], {"u": history["spent"]})["u"]
    return balance


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=histories(), data=st.data())
async def test_any_order_and_duplication_ends_at_the_same_balance(
    db: asyncpg.Connection, settings: Settings, history: dict[str, Any], data: st.DataObject
) -> None:
    user, pi = await _purchase(db, settings, PURCHASE, CAPTURED)
    if history["spent"]:
        await spend(db, user, history["spent"])
    events = _events(history, {"pi": pi})
    # Duplicates: a few events again under new ids (a replay, another endpoint) and as-is.
    again = data.draw(st.lists(st.sampled_from(events), max_size=3)) if events else []
    again = [{**event, "id": new_id("evt")} for event in again] + again[:1]
    order = data.draw(st.permutations(events + again))
    for event in order:
        await deliver(db, settings, event)
        await drain(settings)
    assert await balance(db, user) == _expected_balance(history) == await ledger_sum(db, user)
    assert await balance(db, user) >= 0
    await assert_balance_after_is_running_sum(db, user)
