"""The money against an independent oracle (issue 25): random Stripe histories delivered to
the real worker (Postgres + Redis) shuffled and duplicated, in both API shapes, and every
user's final balance and owed shortfall compared to `tests/reference_model.py`, which
shares no code with `webhook_worker`.

A history has 1-3 users with 1-2 payments each: Checkout purchases (some with Adaptive
Pricing, some with a post-payment invoice whose `invoice.paid` surfaces the same payment),
PaymentIntent purchases and subscription invoices; partial refunds (some fail, some named
by credit notes), disputes open, won, lost and partially won. A user may spend credits
between the purchases and the take-backs. `make test` runs a few examples;
`make test-slow` many more (marker `slow`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests import reference_model as model
from tests.worker_support import deliver, drain, new_user, spend, sweep
from webhook_worker.config import Settings
from webhook_worker.ops.sample_events import (
    BASIL,
    PRE_BASIL,
    charge_refunded_event,
    checkout_session_event,
    credit_note_event,
    dispute_event,
    invoice_line,
    invoice_paid_event,
    invoice_payment_paid_event,
    new_id,
    payment_intent_succeeded_event,
    refund_event,
)

T0 = 1_760_000_000
KINDS = ("checkout", "adaptive", "intent", "invoiced", "subscription")
OUTCOMES = ("open", "won", "lost", "partial")
FAIL_TYPES = ("charge.refund.updated", "refund.updated", "refund.failed")
PRICE_ENV = {"PRICE_CREDITS": "price_unit:1"}


@dataclass
class Plan:
    """One payment: what happened to it, in Stripe's order (`steps`)."""

    kind: str
    version: str
    credits: int
    charged: int
    refunds: list[tuple[int, bool, bool]]  # (amount, fails later, named by a credit note)
    dispute: tuple[int, str, int] | None  # (amount, outcome, reinstated when partial)
    steps: list[tuple[str, int]] = field(default_factory=list)


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    kind = draw(st.sampled_from(KINDS))
    version = BASIL if kind == "adaptive" else draw(st.sampled_from([PRE_BASIL, BASIL]))
    charged = draw(st.integers(100, 3000))
    refunds: list[tuple[int, bool, bool]] = []
    for amount in draw(st.lists(st.integers(1, charged), max_size=3)):
        if sum(r[0] for r in refunds) + amount <= charged:
            invoiced = kind in ("invoiced", "subscription")
            refunds.append((amount, draw(st.booleans()), invoiced and draw(st.booleans())))
    dispute = None
    if draw(st.booleans()):
        amount = draw(st.integers(2, charged))
        outcome = draw(st.sampled_from(OUTCOMES))
        dispute = (amount, outcome, draw(st.integers(1, amount - 1)))
    plan = Plan(kind, version, draw(st.integers(1, 200)), charged, refunds, dispute)
    steps: list[tuple[str, int]] = []
    for index, (_, fails, noted) in enumerate(refunds):
        at = len(steps)
        steps.append(("refund", index))
        if noted:
            steps.insert(draw(st.integers(at + 1, len(steps))), ("note", index))
        if fails:
            steps.insert(draw(st.integers(at + 1, len(steps))), ("fail", index))
    if dispute is not None:
        steps.insert(draw(st.integers(0, len(steps))), ("dispute", 0))
        steps.append(("dispute", 1))  # how it ends (nothing more when it stays open)
    plan.steps = steps
    return plan


@dataclass
class Built:
    purchase: list[dict[str, Any]]  # the events that credit (and link) the payment
    takebacks: list[dict[str, Any]]
    final: model.Payment


def _purchase_events(
    plan: Plan, user: str, customer: str, pi: str, invoice_id: str
) -> list[dict[str, Any]]:
    version = plan.version
    line = invoice_line(
        price="price_unit",
        amount=plan.charged,
        quantity=plan.credits,
        api_version=version,
        price_metadata={"credits": "1"},
    )
    invoice = {
        "customer": customer,
        "lines": [line],
        "invoice_id": invoice_id,
        "payment_intent": pi,
        "api_version": version,
    }
    link = [invoice_payment_paid_event(invoice=invoice_id, payment_intent=pi, amount=plan.charged)]
    link = link if version == BASIL else []
    session = {
        "credits": plan.credits,
        "client_reference_id": user,
        "payment_intent": pi,
        "api_version": version,
    }
    if plan.kind == "checkout":
        return [checkout_session_event(amount_total=plan.charged, **session)]
    if plan.kind == "adaptive":  # the merchant's USD total, the customer paid EUR `charged`
        return [
            checkout_session_event(
                amount_total=plan.charged * 107 // 100, presentment=(plan.charged, "eur"), **session
            )
        ]
    if plan.kind == "intent":
        return [
            payment_intent_succeeded_event(
                credits=plan.credits,
                amount=plan.charged,
                metadata={"user_id": user},
                payment_intent=pi,
                api_version=version,
            )
        ]
    if plan.kind == "invoiced":
        return [
            checkout_session_event(
                amount_total=plan.charged, customer=customer, invoice=invoice_id, **session
            ),
            invoice_paid_event(billing_reason="manual", one_off=True, **invoice),
            *link,
        ]
    paid = invoice_paid_event(
        billing_reason="subscription_create", subscription_metadata={"user_id": user}, **invoice
    )
    return [paid, *link]


def build(plan: Plan, user: str, customer: str) -> Built:
    """The payment's events, each stamped one second after the one before, and its final
    state as the reference model reads it."""
    pi, invoice_id, charge = new_id("pi"), new_id("in"), new_id("ch")
    currency = "eur" if plan.kind == "adaptive" else "usd"
    final = model.Payment(user, plan.credits, plan.charged)
    out: list[dict[str, Any]] = []
    refund_ids = [new_id("re") for _ in plan.refunds]
    created_at: dict[int, int] = {}
    failed: set[int] = set()
    dispute_id = new_id("dp")
    for second, (kind, index) in enumerate(plan.steps, start=1):
        at = T0 + second
        if kind == "refund":
            created_at[index] = at
            live = sum(
                a for i, (a, _, _) in enumerate(plan.refunds) if i in created_at and i not in failed
            )
            out.append(
                charge_refunded_event(
                    payment_intent=pi,
                    amount=plan.charged,
                    amount_refunded=live,
                    charge_id=charge,
                    created=at,
                    api_version=plan.version,
                    currency=currency,
                )
            )
        elif kind == "fail":
            failed.add(index)
            out.append(
                refund_event(
                    payment_intent=pi,
                    refund_id=refund_ids[index],
                    amount=plan.refunds[index][0],
                    event_type=FAIL_TYPES[index % 3],
                    refund_created=created_at[index],
                    created=at,
                    api_version=plan.version,
                    currency=currency,
                )
            )
        elif kind == "note":
            out.append(
                credit_note_event(
                    invoice=invoice_id,
                    amount=plan.refunds[index][0],
                    refund_id=refund_ids[index],
                    api_version=plan.version,
                    created=at,
                )
            )
        else:
            out += _dispute_events(plan, pi, dispute_id, at, index, currency)
    for index, (amount, fails, _) in enumerate(plan.refunds):
        final.refunds[refund_ids[index]] = (amount, "failed" if fails else "succeeded")
    if plan.dispute is not None:
        amount, outcome, back = plan.dispute
        moved = {"open": [-amount], "won": [-amount, amount], "lost": [-amount]}
        status = {"open": "needs_response", "won": "won"}.get(outcome, "lost")
        final.disputes[dispute_id] = model.Dispute(
            amount, status, moved.get(outcome, [-amount, back])
        )
    return Built(_purchase_events(plan, user, customer, pi, invoice_id), out, final)


def _dispute_events(
    plan: Plan, pi: str, dispute_id: str, at: int, stage: int, currency: str
) -> list[dict[str, Any]]:
    assert plan.dispute is not None
    amount, outcome, back = plan.dispute

    def event(event_type: str, status: str, moved: list[int], second: int) -> dict[str, Any]:
        return dispute_event(
            payment_intent=pi,
            dispute_id=dispute_id,
            amount=amount,
            status=status,
            event_type=event_type,
            created=at + second,
            api_version=plan.version,
            currency=currency,
            balance_transactions=moved,
        )

    if stage == 0:
        return [event("charge.dispute.created", "needs_response", [-amount], 0)]
    if outcome == "open":
        return []
    if outcome == "won":
        return [
            event("charge.dispute.closed", "won", [-amount, amount], 100),
            event("charge.dispute.funds_reinstated", "won", [-amount, amount], 101),
        ]
    ended = [event("charge.dispute.closed", "lost", [-amount], 100)]
    if outcome == "partial":  # e.g. after a partial refund Stripe returns part, stays lost
        ended.append(event("charge.dispute.funds_reinstated", "lost", [-amount, back], 101))
    return ended


def _shuffled_with_duplicates(
    events: list[dict[str, Any]], rng: random.Random
) -> list[dict[str, Any]]:
    """The events in any order, some twice as-is and some again under a new id (a replay,
    a second endpoint)."""
    again = [e for e in events if rng.random() < 0.3]
    resent = [{**e, "id": new_id("evt")} for e in events if rng.random() < 0.2]
    out = events + again + resent
    rng.shuffle(out)
    return out


async def _settle(db: asyncpg.Connection, settings_: Settings) -> None:
    """Drain, then sweep (wakes waiting events) and drain until nothing is woken."""
    await drain(settings_)
    for _ in range(10):
        if not await sweep(settings_):
            return
        await drain(settings_)


async def _deliver_all(
    db: asyncpg.Connection, settings_: Settings, events: list[dict[str, Any]]
) -> None:
    for start in range(0, len(events), 8):  # a few deliveries, then the worker, and again
        await deliver(db, settings_, *events[start : start + 8])
        await drain(settings_)


async def check_histories(
    db: asyncpg.Connection,
    settings_: Settings,
    users: list[tuple[list[Plan], int]],
    seed: int,
) -> None:
    rng = random.Random(seed)
    first, later = [], []
    finals: list[model.Payment] = []
    spent: dict[str, int] = {}
    spenders: list[tuple[str, int]] = []
    for payments, spend_share in users:
        user = str(await new_user(db, f"{new_id('u')}@example.com"))
        customer = "cus_P" + new_id("x").rsplit("_", 1)[1]  # one Stripe customer per user
        builds = [build(plan, user, customer) for plan in payments]
        finals += [b.final for b in builds]
        purchases = [e for b in builds for e in b.purchase]
        takebacks = [e for b in builds for e in b.takebacks]
        if spend_share:  # bought, spends, then the refunds and disputes come
            first += purchases
            later += takebacks
            spenders.append((user, spend_share))
        else:
            later += purchases + takebacks
    await _deliver_all(db, settings_, _shuffled_with_duplicates(first, rng))
    await _settle(db, settings_)
    for user, share in spenders:
        balance = int(
            await db.fetchval("SELECT credits_balance FROM users WHERE id = $1", int(user))
        )
        spent[user] = balance * share // 100
        if spent[user]:
            await spend(db, int(user), spent[user])
    await _deliver_all(db, settings_, _shuffled_with_duplicates(later, rng))
    await _settle(db, settings_)
    left = await db.fetch(
        "SELECT processing_status, status_reason, error_message FROM stripe_events "
        "WHERE processing_status NOT IN ('completed', 'ignored')"
    )
    assert [dict(r) for r in left] == []
    want = model.expected(finals, spent)
    for user, (balance, shortfall) in want.items():
        got_balance = int(
            await db.fetchval("SELECT credits_balance FROM users WHERE id = $1", int(user))
        )
        got_shortfall = int(  # what is owed now (docs/stripe.md, Shortfalls)
            await db.fetchval(
                "SELECT coalesce(sum(s.shortfall), 0) FROM payment_states s WHERE EXISTS ("
                "SELECT 1 FROM credit_transactions p WHERE p.payment_intent_id = "
                "s.payment_intent_id AND p.user_id = $1 AND p.transaction_type IN "
                "('PURCHASE', 'SUBSCRIPTION_CREDIT'))",
                int(user),
            )
        )
        rows = await db.fetchval(
            "SELECT coalesce(sum(credits), 0) FROM refund_shortfalls WHERE user_id = $1", int(user)
        )
        assert rows == got_shortfall, user  # the per-event rows say the same
        if spent.get(user) and sum(p.user == user for p in finals) > 1:
            # Shortfall is kept per payment (docs/stripe.md, limits): the net must hold.
            assert got_balance - got_shortfall == balance - shortfall, user
        else:
            assert (got_balance, got_shortfall) == (balance, shortfall), user


histories = st.lists(
    st.tuples(st.lists(plans(), min_size=1, max_size=2), st.sampled_from([0, 0, 50, 100])),
    min_size=1,
    max_size=3,
)
_HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
# No shrinking: each example runs the real worker, and shrinking one takes many minutes. A
# failure prints its whole (small) history and the seed to replay it.
_PHASES = [Phase.explicit, Phase.reuse, Phase.generate]


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=_HEALTH,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(users=histories, seed=st.integers(0, 2**32))
async def test_random_histories_end_where_the_reference_model_says(
    db: asyncpg.Connection,
    make_settings: Callable[..., Settings],
    users: list[tuple[list[Plan], int]],
    seed: int,
) -> None:
    await check_histories(db, make_settings(**PRICE_ENV), users, seed)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=_HEALTH, phases=_PHASES)
@given(users=histories, seed=st.integers(0, 2**32))
async def test_many_random_histories_end_where_the_reference_model_says(
    db: asyncpg.Connection,
    make_settings: Callable[..., Settings],
    users: list[tuple[list[Plan], int]],
    seed: int,
) -> None:
    await check_histories(db, make_settings(**PRICE_ENV), users, seed)
