"""`payment_intent.succeeded` with `metadata.credits`: a purchase without Checkout (Payment
Element or API), one PURCHASE per payment intent, so the Checkout Session of the same payment
intent never credits it twice, whichever comes first."""

from __future__ import annotations

from webhook_worker.envelope import StoredEvent
from webhook_worker.errors import PermanentError
from webhook_worker.money.checkout_pricing import (
    checked_credits,
    metadata_credit_count,
    metadata_credits,
)
from webhook_worker.money.stripe_shapes import text
from webhook_worker.worker.handlers.checkout import credit_purchase, resolve
from webhook_worker.worker.handlers.outcome import HandlerContext, Outcome, ignored


async def handle_payment_intent_succeeded(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    """A Payment Element (or API) payment with `metadata.credits` and a user reference
    credits like a Checkout purchase: a PURCHASE keyed on the payment intent (one per
    payment intent, migration 0016), so the Checkout Session of the same payment intent,
    whichever comes first, never credits it twice."""
    intent = event.data_object
    intent_id = text(intent, "id")
    if intent_id is None:
        raise PermanentError("payment_intent.succeeded payment intent has no id")
    if text(intent, "invoice") is not None:
        return ignored("invoice_payment", payment_intent_id=intent_id)  # invoice.paid credits
    raw = metadata_credits(intent)
    if raw is None:
        return ignored("not_a_credit_purchase", payment_intent_id=intent_id)
    credits = checked_credits(metadata_credit_count(raw, "PaymentIntent"), "payment", ctx.settings)
    who = await resolve(ctx, intent)
    return await credit_purchase(
        ctx, event, who, credits, session_id=None, payment_intent_id=intent_id
    )
