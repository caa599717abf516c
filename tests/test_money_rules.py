"""The money rules' unit tier: the table of `tests/money_cases.py` through the real handlers
and the in-memory store (`InMemoryMoneyStore`) — no Postgres, Redis or arq, milliseconds a
case. The integration tier (tests/test_money_flows.py, tests/test_money_rules_postgres.py)
runs the same table through real deliveries, the worker and Postgres.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.money_cases import (
    FLOWS,
    NOTE_CASES,
    PURCHASES,
    Flow,
    Ids,
    NoteCase,
    PurchaseCase,
    note_step,
)
from webhook_worker.config import Settings
from webhook_worker.errors import PermanentError
from webhook_worker.money import takebacks
from webhook_worker.ops.sample_events import (
    BASIL,
    PRE_BASIL,
    checkout_session_event,
    dispute_event,
    invoice_paid_event,
    new_id,
    refund_event,
)
from webhook_worker.testing import InMemoryMoneyStore, LedgerRow
from webhook_worker.worker import handlers

BASE_ENV = {"APP_ENV": "test"}


def _context(
    store: InMemoryMoneyStore, env: dict[str, str] | None = None
) -> handlers.HandlerContext:
    return handlers.HandlerContext(Settings.from_env({**BASE_ENV, **(env or {})}), store)


async def process(ctx: handlers.HandlerContext, store: InMemoryMoneyStore, event_id: str) -> None:
    """What the worker's job does with one claimed event, minus the queue and the database."""
    stored = store.events[event_id]
    if stored.status in ("completed", "ignored", "failed"):
        return
    stored.status = "processing"
    row = {
        "event_id": event_id,
        "type": stored.payload["type"],
        "raw_data": orjson.dumps(stored.payload).decode(),
    }
    try:
        outcome = await handlers.handle_event(ctx, handlers.StoredEvent.from_row(row))
    except PermanentError as exc:
        stored.status, stored.reason = "failed", str(exc)[:200]
        return
    if not outcome.recorded:
        store.finish(event_id, outcome.status, outcome.reason)


async def deliver_all(
    ctx: handlers.HandlerContext, store: InMemoryMoneyStore, events: list[dict[str, Any]]
) -> list[str]:
    """Each event stored and processed in order; then, as the sweeper does, waiting events
    run again until none is left waiting on something that now exists."""
    ids = []
    for event in events:
        ids.append(store.store_event(event))
        await process(ctx, store, ids[-1])
    waiting = [i for i in ids if store.events[i].status == "waiting"]
    while waiting:
        for event_id in waiting:
            store.events[event_id].status = "received"
            await process(ctx, store, event_id)
        still = [i for i in ids if store.events[i].status == "waiting"]
        if still == waiting:
            break
        waiting = still
    return ids


def _status(store: InMemoryMoneyStore, event_id: str) -> tuple[str, str | None]:
    event = store.events[event_id]
    return (event.status, None if event.status == "failed" else event.reason)


@pytest.mark.parametrize("flow", FLOWS, ids=[flow.name for flow in FLOWS])
async def test_money_flow_in_memory(flow: Flow) -> None:
    store = InMemoryMoneyStore()
    ctx = _context(store)
    user = store.add_user(f"{new_id('u')}@example.com")
    pi = new_id("pi")
    await deliver_all(
        ctx,
        store,
        [
            checkout_session_event(
                credits=flow.credits,
                amount_total=flow.amount_total,
                presentment=flow.presentment,
                client_reference_id=str(user.id),
                payment_intent=pi,
            )
        ],
    )
    assert user.credits_balance == flow.credits
    if flow.spent:
        user.credits_balance -= flow.spent
        store.ledger.append(LedgerRow(user.id, -flow.spent, user.credits_balance, "USAGE", ""))
    ids: Ids = {"pi": pi}
    event_ids = await deliver_all(ctx, store, [build(ids) for build in flow.events])
    assert [_status(store, e) for e in event_ids] == flow.statuses
    moved = [
        (r.transaction_type, r.amount, r.balance_after)
        for r in store.ledger
        if r.payment_intent_id == pi and r.transaction_type != "PURCHASE"
    ]
    assert moved == flow.rows
    final = flow.rows[-1][2] if flow.rows else flow.credits - flow.spent
    assert user.credits_balance == final == sum(r.amount for r in store.ledger)


@pytest.mark.parametrize("case", PURCHASES, ids=[case.name for case in PURCHASES])
async def test_purchase_in_memory(case: PurchaseCase) -> None:
    store = InMemoryMoneyStore()
    refs: dict[str, str] = {}
    for index, email in enumerate(case.users):
        user = store.add_user(email)
        refs |= {f"u{index}": str(user.id), f"uuid{index}": user.uuid, f"email{index}": str(email)}
    event_ids = await deliver_all(
        _context(store, case.env), store, [build(refs) for build in case.events]
    )
    assert [_status(store, e) for e in event_ids] == case.statuses
    by_name = {f"u{i}": store.users[int(refs[f"u{i}"])] for i in range(len(case.users))}
    by_name |= {u.email.lower(): u for u in store.users.values() if u.email}
    assert {name: by_name[name].credits_balance for name in case.balances} == case.balances
    assert sum(store.balances().values()) == sum(case.balances.values())


async def _wake(ctx: handlers.HandlerContext, store: InMemoryMoneyStore) -> None:
    """The sweeper: waiting events run again until none moves."""
    while True:
        waiting = [i for i, e in store.events.items() if e.status == "waiting"]
        for event_id in waiting:
            store.events[event_id].status = "received"
            await process(ctx, store, event_id)
        if [i for i, e in store.events.items() if e.status == "waiting"] == waiting:
            return


@pytest.mark.parametrize("api_version", [PRE_BASIL, BASIL])
@pytest.mark.parametrize("case", NOTE_CASES, ids=[case.name for case in NOTE_CASES])
async def test_credit_note_in_memory(case: NoteCase, api_version: str) -> None:
    store = InMemoryMoneyStore()
    ctx = _context(store, {"PRICE_CREDITS": "price_basic:1000"})
    user = store.add_user(f"{new_id('u')}@example.com")
    user.stripe_customer_id = new_id("cus").replace("_test_", "_")  # Stripe's id shape
    invoice = invoice_paid_event(
        customer=user.stripe_customer_id,
        price="price_basic",
        amount=900,
        api_version=api_version,
    )
    pi = invoice["data"]["object"].get("payment_intent") or new_id("pi")
    sent: list[dict[str, Any]] = []
    for n, step in enumerate(case.steps):
        event = None
        if step.startswith("replay:"):  # forced: back to received, run again
            replayed = sent[int(step.split(":")[1])]["id"]
            store.events[replayed].status = "received"
            await process(ctx, store, replayed)
        else:
            event = note_step(step, n, invoice, pi, sent)
        sent.append(event or {})
        if event is not None:
            await process(ctx, store, store.store_event(event))
        if step == "invoice" and case.spent:
            user.credits_balance -= case.spent
            store.ledger.append(LedgerRow(user.id, -case.spent, user.credits_balance, "USAGE", ""))
    await _wake(ctx, store)
    rows = [(r.transaction_type, r.amount) for r in store.ledger if r.transaction_type != "USAGE"]
    assert rows == [("SUBSCRIPTION_CREDIT", 1000), *case.rows]
    assert user.credits_balance == case.balance == sum(r.amount for r in store.ledger)
    assert {e.status for e in store.events.values()} == {"completed"}


def test_the_settle_rule_never_takes_more_than_was_bought_nor_below_zero() -> None:
    view = takebacks.PaymentView(
        purchased=100,
        captured=1000,
        purchase=None,
        refunded=1000,
        disputed=1000,
        legacy_taken=0,
        taken=0,
        shortfall=0,
        balance=30,
    )
    change = takebacks.ChargeSnapshot("pi_1", 1000, 1000, created=None)  # type: ignore[arg-type]
    plan = takebacks.settle(view, "refund", change, "pi_1")
    assert (plan.target, plan.kind, plan.moved, plan.added_shortfall) == (100, "REFUND", -30, 70)


@pytest.mark.parametrize("kind", ["refund", "dispute"])
async def test_refund_or_dispute_without_payment_intent_is_ignored_and_without_id_fails(
    kind: str,
) -> None:
    """Not ours (no payment intent): ignored. Ours but with no id of its own: malformed, the
    event fails permanently and no money moves."""
    build = refund_event if kind == "refund" else dispute_event
    store = InMemoryMoneyStore()
    ctx = _context(store)
    orphan = build(payment_intent="pi_orphan")
    orphan["data"]["object"]["payment_intent"] = None
    no_id = build(payment_intent="pi_x")
    del no_id["data"]["object"]["id"]
    orphan_id, no_id_id = store.store_event(orphan), store.store_event(no_id)
    await process(ctx, store, orphan_id)
    await process(ctx, store, no_id_id)
    assert (store.events[orphan_id].status, store.events[orphan_id].reason) == (
        "ignored",
        "no_payment_intent",
    )
    assert store.events[no_id_id].status == "failed"
    assert store.events[no_id_id].reason == f"{no_id['type']} {kind} has no id"
    assert store.ledger == []
