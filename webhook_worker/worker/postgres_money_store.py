"""The Postgres money store: the only place that runs the money SQL of the worker (named
statements of sql/queries/), returning facts; the rules are webhook_worker.money.

`PostgresMoneyStore` is the handlers' `MoneyStore` on the worker's pool, with purchases,
claims and first lookups going through the coalesced statements of `batching.WorkerBatches`.
Below it, the payment state of refunds, refund failures, disputes and credit notes:

Refunds, failed refunds, disputes and credit notes: the credits taken back follow Stripe's
newest state.

Each event updates a per-payment high-water state (migration 0015) and then the ledger is
brought to what that state asks for, in ONE transaction under the purchase's user lock:

- a charge event (`charge.refunded`) is a *snapshot*: the net refunded amount of what was
  captured, taken as of the event's `created`. It replaces the held snapshot only when it
  is newer (later `created`, or the same second with a larger amount: within a second
  refunds only add up). An older snapshot is stale and changes nothing.
- a failed or canceled refund (`charge.refund.updated`, `refund.updated`, `refund.failed`)
  is recorded once per refund id. It lowers the refunded amount only for snapshots it is
  newer than (failed after the snapshot) and that held it (refund created by then): a
  newer snapshot already says the refund is gone, an older one never had it.
- a dispute moves forward through stages, never back: 1 open (`charge.dispute.created`,
  `charge.dispute.funds_withdrawn`), 2 closed (`won` or `lost`), 3 funds reinstated. Open
  and lost disputes count as taken back; won and reinstated do not. Inquiries
  (`warning_*` statuses) withdraw no money and count for nothing.

- a credit note with refunds (`credit_note.created`, from the invoice it credits to the
  payment intent that paid it) records each refund it names once per credit note and
  refund id (migration 0019). Those refunds are refunds of that same charge: the money a
  `charge.refunded` snapshot already counts, or will. So the refunded amount is the LARGER
  of the two, never their sum: max(snapshot, credit notes' refunds not failed). A credit
  note that arrives first takes its share back at once; the `charge.refunded` of the same
  refund then moves nothing, and the other way round. A snapshot older than a credit note's
  refund may lag behind until the charge's next event (Stripe sends one per refund): the
  credits follow the larger of what is known, never more than was refunded.

Target credits taken back = purchased * min(captured, refunded + disputed) // captured,
rounded down: disputes and refunds together never take back more than the purchase. The
ledger moves by the difference with what was taken so far (`taken`, counting what could not
be taken because it was spent: `shortfall`). A rise is a REFUND / DISPUTE debit (never
below zero; the rest is a shortfall in refund_shortfalls); a fall first cancels shortfall
and gives back the rest as REFUND_REVERSAL / DISPUTE_REVERSAL. Whatever order or number of
times the events arrive, the balance ends at purchase - target (+ shortfall).

Limits: Stripe's `created` has one-second resolution. A refund that fails within the same
second as the snapshot it should change is taken as already in it (not given back by that
failure), and a second snapshot in the same second with a smaller amount (a failure and a
new refund in one second) is taken as older. Without any charge event the captured amount
is the purchase session's `amount_total` (its stored payload); once that is pruned too
(RETENTION_DAYS) a dispute fails with a message rather than guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import asyncpg
import orjson

from webhook_worker.db import store
from webhook_worker.db.host import UserId, user_key
from webhook_worker.db.queries import query
from webhook_worker.db.store import Connection, translate_errors
from webhook_worker.errors import PermanentError
from webhook_worker.money.ledger_rows import CreditResult, InvoiceCredit, InvoiceCredited, Purchase
from webhook_worker.money.takebacks import (
    Applied,
    Change,
    ChargeSnapshot,
    CreditNoteRefunds,
    Family,
    HeldFailure,
    HeldPayment,
    PaymentView,
    RefundFailure,
    payment_view,
    settle,
    snapshot_is_newer,
    stage_moves,
)
from webhook_worker.money.user_reference import Candidate, Resolution
from webhook_worker.worker import ledger, resolver, subscriptions
from webhook_worker.worker.batching import WorkerBatches
from webhook_worker.worker.ledger import apply_row, lock_user


class PostgresMoneyStore:
    """The service's `MoneyStore`; one per worker process."""

    def __init__(
        self, pool: store.Pool, batches: WorkerBatches, *, collect_shortfall: bool = False
    ) -> None:
        self._pool = pool
        self._batches = batches
        self._collect_shortfall = collect_shortfall  # SHORTFALL_POLICY=collect

    async def find_user(self, candidate: Candidate) -> UserId | None:
        return await self._batches.lookup(candidate)

    async def resolve_user(self, reference: Mapping[str, Any]) -> Resolution:
        async with store.acquire(self._pool, "resolving a user") as conn:
            return await resolver.resolve_user(conn, reference)

    async def credit_purchase(self, purchase: Purchase) -> CreditResult:
        if purchase.invoice_id is not None:  # rare: a session with a post-payment invoice
            async with store.acquire(self._pool, "crediting a purchase") as conn:
                return await ledger.credit_invoiced_purchase(
                    conn, purchase, collect_shortfall=self._collect_shortfall
                )
        result = await self._batches.credit(purchase)
        if not result.applied:  # rare: a repeat of a session or payment already credited
            async with store.acquire(self._pool, "recording a repeat purchase") as conn:
                await store.note_reason(conn, purchase.event_id, "already_credited")
        return result

    async def credit_invoice(self, credit: InvoiceCredit) -> InvoiceCredited:
        async with store.acquire(self._pool, "crediting an invoice") as conn:
            return await subscriptions.credit_invoice(
                conn, **asdict(credit), collect_shortfall=self._collect_shortfall
            )

    async def link_invoice_payment(self, invoice_id: str, payment_intent_id: str) -> str | None:
        async with store.acquire(self._pool, "linking an invoice's payment") as conn:
            return await subscriptions.link_payment(conn, invoice_id, payment_intent_id)

    async def invoice_credited(self, invoice_id: str) -> bool:
        async with store.acquire(self._pool, "finding an invoice's credit") as conn:
            return await subscriptions.invoice_credited(conn, invoice_id)

    async def invoice_payment_intent(self, invoice_id: str) -> str | None:
        async with store.acquire(self._pool, "finding an invoice's payment") as conn:
            return await subscriptions.invoice_payment_intent(conn, invoice_id)

    async def apply_payment_change(
        self, event_id: str, family: Family, change: Change, description: str
    ) -> Applied | None:
        async with store.acquire(self._pool, "applying a payment change") as conn:
            return await apply(conn, event_id, family, change, description)

    async def park(self, event_id: str, waiting_for: str, reason: str) -> None:
        async with store.acquire(self._pool, "parking an event") as conn:
            await wait_for(conn, event_id, waiting_for, reason)


async def _record(conn: Connection, change: Change, event_id: str, state: asyncpg.Record) -> bool:
    """Move the high-water state (rules: takebacks.snapshot_is_newer, stage_moves; the
    unique keys make a repeated failure or credit note insert nothing). True when this event
    was newer than what was held."""
    pi = change.payment_intent_id
    if isinstance(change, ChargeSnapshot):
        if snapshot_is_newer(state["refunded_as_of"], state["refunded"], change):
            await conn.execute(
                query("payment_state_snapshot"),
                pi,
                change.captured,
                change.refunded,
                change.created,
            )
            return True
        await conn.execute(query("payment_state_captured"), pi, change.captured)
        return False
    if isinstance(change, RefundFailure):
        inserted = await conn.fetchval(
            query("payment_refund_failed"),
            change.refund_id,
            pi,
            change.amount,
            change.status,
            change.refund_created,
            change.failed_at,
            event_id,
        )
        return inserted is not None
    if isinstance(change, CreditNoteRefunds):
        inserted = await conn.fetch(
            query("payment_credit_note_refunds"),
            change.credit_note_id,
            pi,
            change.invoice_id,
            [refund_id for refund_id, _ in change.refunds],
            [amount for _, amount in change.refunds],
            event_id,
        )
        return bool(inserted)
    if not stage_moves(
        await conn.fetchval(query("payment_dispute_get"), change.dispute_id), change
    ):
        return False
    await conn.execute(
        query("payment_dispute_stage"),
        change.dispute_id,
        pi,
        change.amount,
        change.stage,
        change.status,
        event_id,
    )
    return True


async def wait_for(conn: Connection, event_id: str, waiting_for: str, reason: str) -> None:
    """Park the event as `waiting` (no try spent): `awaiting_purchase` on a payment intent's
    purchase, `awaiting_customer` on a Stripe customer id linked to a user."""
    with translate_errors("parking an event"):
        await conn.execute(query("payment_wait_event"), event_id, waiting_for, reason)


def _object(raw: str | None) -> Mapping[str, Any] | None:
    loaded = None if raw is None else orjson.loads(raw)
    return loaded if isinstance(loaded, dict) else None


async def _view(
    conn: Connection, pi: str, purchase: asyncpg.Record, user_id: UserId
) -> PaymentView:
    """The payment's raw facts, and the view the rule computes from them."""
    state = await conn.fetchrow(query("payment_state_get"), pi)
    assert state is not None
    failures = await conn.fetch(query("payment_failures"), pi)
    held = HeldPayment(
        purchased=int(purchase["purchased"]),
        purchase=_object(purchase["purchase_object"]),
        captured=None if state["captured"] is None else int(state["captured"]),
        refunded=None if state["refunded"] is None else int(state["refunded"]),
        refunded_as_of=state["refunded_as_of"],
        legacy_taken=int(state["legacy_taken"]),
        taken=int(state["taken"]),
        shortfall=int(state["shortfall"]),
        failures=tuple(
            HeldFailure(f["refund_id"], int(f["amount"]), f["refund_created"], f["failed_at"])
            for f in failures
        ),
        disputes=tuple(
            int(d["amount"]) for d in await conn.fetch(query("payment_dispute_amounts"), pi)
        ),
        noted=tuple(
            (n["refund_id"], int(n["amount"])) for n in await conn.fetch(query("payment_noted"), pi)
        ),
    )
    balance = int(await conn.fetchval(query("ledger_user_balance"), user_id))
    return payment_view(held, balance)


async def apply(
    conn: Connection, event_id: str, family: Family, change: Change, description: str
) -> Applied | None:
    """Record `change` and bring the payment's ledger to its target (`settle`); mark the
    event `completed`. None (nothing done) when the payment's purchase is not in the ledger."""
    pi = change.payment_intent_id
    with translate_errors("finding a payment's purchase"):
        purchase = await conn.fetchrow(query("payment_purchase"), pi)
    if purchase is None:
        return None
    user_id = user_key(purchase["user_id"])
    with translate_errors("taking back a payment's credits"):
        async with conn.transaction():
            await lock_user(conn, user_id)
            await conn.execute(query("payment_state_create"), pi)
            held = await conn.fetchrow(query("payment_state_get"), pi)
            assert held is not None
            advanced = await _record(conn, change, event_id, held)
            view = await _view(conn, pi, purchase, user_id)
            plan_ = settle(view, family, change, pi)
            balance = view.balance
            if plan_.added_shortfall:
                await conn.execute(
                    query("ledger_insert_shortfall"), event_id, user_id, pi, plan_.added_shortfall
                )
            if plan_.kind is not None:
                applied = await apply_row(
                    conn,
                    user_id,
                    plan_.moved,
                    plan_.kind,
                    event_id,
                    purchase["checkout_session_id"],
                    pi,
                    description,
                )
                if applied is None:
                    raise PermanentError(
                        f"event {event_id} already has a ledger row but moved payment {pi} "
                        "again; rolled back"
                    )
                balance = applied
            if plan_.delta:
                await conn.execute(query("payment_state_taken"), pi, plan_.target, plan_.shortfall)
            if plan_.shortfall < view.shortfall:  # a give-back cancelled owed shortfall
                await conn.execute(
                    query("ledger_cancel_shortfall"), pi, view.shortfall - plan_.shortfall
                )
            reason = None if advanced else "stale_event"
            await store.finish_event(conn, event_id, "completed", reason=reason)
    return Applied(
        user_id=user_id,
        advanced=advanced,
        transaction_type=plan_.kind,
        amount=plan_.moved,
        shortfall=plan_.added_shortfall,
        balance=balance,
    )


async def wake_waiting(conn: Connection, limit: int) -> list[str]:
    """Waiting events whose purchase is now in the ledger, back to `received`."""
    with translate_errors("waking waiting events"):
        rows = await conn.fetch(query("payment_wake_waiting"), limit)
    return [str(row["event_id"]) for row in rows]


async def expire_waiting(conn: Connection, max_days: int, limit: int) -> list[str]:
    """Waiting events older than `max_days`: `ignored`, `no_purchase_for_payment`."""
    with translate_errors("expiring waiting events"):
        rows = await conn.fetch(query("payment_expire_waiting"), max_days, limit)
    return [str(row["event_id"]) for row in rows]
