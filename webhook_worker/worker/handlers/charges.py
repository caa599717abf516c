"""Charges, refunds and disputes: each event moves its payment's newest state and the
ledger follows it (rules: webhook_worker.money.takebacks; state: worker.postgres_money_store).

- `charge.refunded` / `charge.captured`: a snapshot of what was captured and net refunded,
  both API shapes (before basil a released authorization reads as a refund and takes nothing).
- `charge.refund.updated`, `refund.updated`, `refund.failed`: a refund `failed` or
  `canceled` gives back what it took (`REFUND_REVERSAL`); other statuses are recorded.
  `refund.created` is not handled: `charge.refunded` carries every refund (docs/stripe.md).
- `charge.dispute.*`: each dispute at its furthest stage keeps what its balance
  transactions withdrew less what they reinstated (nothing once won); inquiries move nothing.
- Before its purchase an event is `waiting` (no try spent); the sweeper wakes it.
"""

from __future__ import annotations

from typing import Any

from webhook_worker.envelope import StoredEvent
from webhook_worker.money import takebacks
from webhook_worker.money.stripe_shapes import (
    FAILED_REFUND_STATUSES,
    charge_snapshot,
    dispute_stage,
    non_negative_int,
    payment_and_own_id,
    text,
    timestamp,
)
from webhook_worker.money.takebacks import dispute_held
from webhook_worker.worker.handlers.outcome import (
    HandlerContext,
    Outcome,
    handled,
    ignored,
    waiting,
)


def _applied_outcome(result: takebacks.Applied | None, pi: str) -> Outcome:
    if result is None:
        return waiting("awaiting_purchase", payment_intent_id=pi)
    fields: dict[str, Any] = {
        "user_id": result.user_id,
        "transaction_type": result.transaction_type,
        "credits": result.amount,
        "shortfall": result.shortfall,
        "balance": result.balance,
        "payment_intent_id": pi,
    }
    if not result.advanced:
        # Stripe does not order deliveries: an older state never undoes a newer one.
        return Outcome(
            "completed", "event_stale", recorded=True, fields=fields, reason="stale_event"
        )
    if result.amount < 0:
        return Outcome("completed", "event_debited", recorded=True, fields=fields)
    if result.amount > 0:
        return Outcome("completed", "event_credited", recorded=True, fields=fields)
    return Outcome("completed", "event_recorded", recorded=True, fields=fields)


async def apply_change(
    ctx: HandlerContext,
    event: StoredEvent,
    family: takebacks.Family,
    change: takebacks.Change,
    description: str,
) -> Outcome:
    pi = change.payment_intent_id
    result = await ctx.money.apply_payment_change(event.event_id, family, change, description)
    if result is None:
        await ctx.money.park(event.event_id, pi, "awaiting_purchase")
    return _applied_outcome(result, pi)


async def handle_charge_refunded(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    charge = event.data_object
    payment_intent = text(charge, "payment_intent")
    if payment_intent is None:
        return ignored("no_payment_intent")
    created = event.created
    captured, refunded = charge_snapshot(charge, event.payload.get("api_version"))
    change = takebacks.ChargeSnapshot(payment_intent, captured, refunded, created)
    description = f"{event.type} {text(charge, 'id') or ''}".strip()
    return await apply_change(ctx, event, "refund", change, description)


async def handle_refund_updated(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    """`charge.refund.updated`, `refund.updated`, `refund.failed`: only a refund that failed
    or was canceled moves money (it gives back what it took)."""
    refund = event.data_object
    status = refund.get("status")
    if status not in FAILED_REFUND_STATUSES:
        return handled("refund_not_failed", refund_status=str(status)[:32])
    ids = payment_and_own_id(refund, f"{event.type} refund")
    if ids is None:
        return ignored("no_payment_intent")
    payment_intent, refund_id = ids
    amount = non_negative_int(refund, "amount", "refund")
    if amount == 0:
        return handled("refund_of_nothing")
    refund_created = refund.get("created")
    change = takebacks.RefundFailure(
        payment_intent_id=payment_intent,
        refund_id=refund_id,
        amount=amount,
        status=str(status),
        refund_created=timestamp(refund_created),
        failed_at=event.created,
    )
    return await apply_change(ctx, event, "refund", change, f"{event.type} {refund_id}")


async def handle_dispute(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    """`charge.dispute.created` / `.funds_withdrawn` take the disputed share, `.closed` won
    or `.funds_reinstated` give it back, `.closed` lost changes nothing more."""
    dispute = event.data_object
    status = str(dispute.get("status") or "")
    stage = dispute_stage(event.type, status)
    if stage is None:
        return handled("dispute_inquiry", dispute_status=status[:32])
    ids = payment_and_own_id(dispute, f"{event.type} dispute")
    if ids is None:
        return ignored("no_payment_intent")
    payment_intent, dispute_id = ids
    change = takebacks.DisputeStage(
        payment_intent_id=payment_intent,
        dispute_id=dispute_id,
        amount=dispute_held(dispute, non_negative_int(dispute, "amount", "dispute")),
        stage=stage,
        status=status[:32],
    )
    return await apply_change(ctx, event, "dispute", change, f"{event.type} {dispute_id}")
