"""Invoices and credit notes (rules: webhook_worker.money.invoice_pricing; the credit and its
expiry: webhook_worker.worker.subscriptions).

- `invoice.paid`: one `SUBSCRIPTION_CREDIT` per invoice, credits per line; an invoice whose
  customer no user holds yet is `waiting` (`awaiting_customer`) until a `mode: subscription`
  Checkout Session links the customer. A Checkout Session's post-payment invoice its session
  credited completes as `already_credited`.
- `invoice_payment.paid` (basil) links the payment intent that paid an invoice to its
  credit, so the charge's refunds and disputes find it.
- `credit_note.created` with a refund takes back the refunded share of its invoice's
  credits on the invoice payment's state, the same money as that charge's
  `charge.refunded` (counted once); it waits (`awaiting_invoice_payment`) until the invoice
  is credited and linked to its payment.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from webhook_worker.envelope import StoredEvent
from webhook_worker.errors import PermanentError
from webhook_worker.money import invoice_pricing, takebacks, user_reference
from webhook_worker.money.stripe_shapes import text, timestamp
from webhook_worker.worker.handlers.charges import apply_change
from webhook_worker.worker.handlers.outcome import (
    HandlerContext,
    Outcome,
    handled,
    ignored,
    waiting,
)
from webhook_worker.worker.money_store import InvoiceCredit

_INVOICE_USER_KEYS = ("user_id", "user_uuid")


async def _invoice_user(
    ctx: HandlerContext, invoice: Mapping[str, Any], customer: str | None
) -> user_reference.Resolution | None:
    """The invoice's user: `metadata.user_id` / `user_uuid` of the subscription (copied
    onto the invoice), else the customer linked by `users.stripe_customer_id`. An invoice
    never creates a user (its e-mail is the customer's, not a user reference). None: no
    user yet."""
    metadata = invoice_pricing.subscription_metadata(invoice)
    reference: dict[str, Any] = {
        "metadata": {k: metadata[k] for k in _INVOICE_USER_KEYS if k in metadata},
        "customer": customer,
    }
    try:
        return await ctx.money.resolve_user(reference)
    except user_reference.UserNotFound:
        return None


def _invoice_created(invoice: Mapping[str, Any], event: StoredEvent) -> datetime:
    return timestamp(invoice.get("created")) or event.created


async def handle_invoice_paid(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    """`invoice.paid`: one SUBSCRIPTION_CREDIT row per invoice; waits for an unlinked
    customer (`awaiting_customer`) until its subscription's Checkout Session links it."""
    invoice = event.data_object
    invoice_id = text(invoice, "id")
    if invoice_id is None:
        raise PermanentError("invoice.paid invoice has no id")
    found = invoice_pricing.invoice_credits(
        invoice, ctx.settings.price_credits, ctx.settings.max_credits_per_event
    )
    fields: dict[str, Any] = {
        "invoice_id": invoice_id,
        "billing_reason": str(invoice.get("billing_reason"))[:40],
        "subscription": invoice_pricing.subscription_id(invoice),
    }
    if found.reason is not None:
        return ignored(found.reason, **fields)
    if invoice.get("billing_reason") == "manual" and await ctx.money.invoice_credited(invoice_id):
        # A Checkout Session's post-payment invoice its session credited: the same payment.
        return handled("already_credited", **fields)
    customer = user_reference.customer_id(invoice)
    who = await _invoice_user(ctx, invoice, customer)
    if who is None:
        if customer is None:
            raise user_reference.UserNotFound(
                "user_not_found: the invoice has no customer and its subscription metadata "
                "no user_id / user_uuid; set metadata.user_id on the subscription and replay"
            )
        await ctx.money.park(event.event_id, customer, "awaiting_customer")
        fields["customer"] = customer
        return waiting("awaiting_customer", **fields)
    result = await ctx.money.credit_invoice(
        InvoiceCredit(
            user_id=who.user_id,
            credits=found.credits,
            event_id=event.event_id,
            invoice_id=invoice_id,
            payment_intent_id=text(invoice, "payment_intent"),  # before basil only
            description=f"{event.type} {invoice_id}",
            subscription=invoice_pricing.subscription_id(invoice),
            invoice_created=_invoice_created(invoice, event),
            starts_period=invoice.get("billing_reason") != "subscription_update",
            expire=ctx.settings.subscription_credits_expire,
        )
    )
    fields.update(
        user_id=who.user_id,
        resolved_by=who.source,
        credits=found.credits if result.applied else 0,
        expired=result.expired,
        balance=result.balance,
    )
    if result.applied:
        return Outcome("completed", "event_credited", recorded=True, fields=fields)
    return Outcome(
        "completed", "event_recorded", recorded=True, fields=fields, reason="already_credited"
    )


async def handle_invoice_payment_paid(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    """`invoice_payment.paid` (from basil on, invoices name no payment intent): links the
    payment intent to the invoice's SUBSCRIPTION_CREDIT row, so that `charge.refunded` and
    disputes of its charge take back the invoice's share. Waits (`awaiting_invoice`) for an
    invoice not credited yet."""
    payment = event.data_object
    invoice_id = text(payment, "invoice")
    details = payment.get("payment")
    intent = text(details, "payment_intent") if isinstance(details, Mapping) else None
    fields: dict[str, Any] = {"invoice_id": invoice_id, "payment_intent_id": intent}
    if invoice_id is None or intent is None:
        return ignored("no_payment_intent", **fields)
    linked = await ctx.money.link_invoice_payment(invoice_id, intent)
    if linked is None:
        await ctx.money.park(event.event_id, invoice_id, "awaiting_invoice")
        return waiting("awaiting_invoice", **fields)
    if linked != intent:
        fields["linked_payment_intent_id"] = linked
        return handled("invoice_already_linked", **fields)
    return handled("invoice_payment_linked", **fields)


async def handle_credit_note_created(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    """`credit_note.created` with a refund takes back the refunded share of its invoice's
    credits, as `charge.refunded` does and on the same payment state: the credit note's
    refunds and the charge's are the same money, counted once (worker.postgres_money_store).
    A credit note without a refund (a credit to the customer's balance, outside Stripe or
    before payment) moves nothing. One whose invoice is not credited, or from basil on not
    yet linked to its payment intent, waits (`awaiting_invoice_payment`)."""
    note = event.data_object
    note_id = text(note, "id")
    invoice_id = text(note, "invoice")
    if note_id is None:
        raise PermanentError("credit_note.created credit note has no id")
    fields: dict[str, Any] = {"credit_note_id": note_id, "invoice_id": invoice_id}
    found = invoice_pricing.credit_note_refunds(note)
    if found.reason is not None:
        return ignored(found.reason, **fields)
    if invoice_id is None:
        return ignored("no_invoice", **fields)
    intent = await ctx.money.invoice_payment_intent(invoice_id)
    if intent is None:
        await ctx.money.park(event.event_id, invoice_id, "awaiting_invoice_payment")
        return waiting("awaiting_invoice_payment", **fields)
    change = takebacks.CreditNoteRefunds(intent, note_id, invoice_id, found.refunds)
    return await apply_change(ctx, event, "refund", change, f"{event.type} {note_id}")
