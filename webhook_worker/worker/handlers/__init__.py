"""What each Stripe event type does: one registry keyed by event type, one module per Stripe
object (`checkout`, `payment_intents`, `charges` for charges, refunds and disputes,
`invoices` for invoices and credit notes). The money rules they apply live in
webhook_worker.money; the handlers reach users, the ledger and payment state only through
the `MoneyStore` (worker.money_store).

Before any handler, `scope.out_of_scope_reason` ignores events of the other mode, of a
connected account that is not listed, and thin events: they never move money. Every type not
in `HANDLERS` is `ignored` (`unhandled_type`). Handlers that touch the ledger mark the event
`completed` inside the ledger transaction (`Outcome.recorded`); the worker writes every
other outcome, with its reason. To handle a new event type: write its handler in the module
of its Stripe object and add one line here.
"""

from __future__ import annotations

from webhook_worker.envelope import StoredEvent
from webhook_worker.worker import scope
from webhook_worker.worker.handlers import charges, checkout, invoices, payment_intents
from webhook_worker.worker.handlers.outcome import (
    Handler,
    HandlerContext,
    Outcome,
    handled,
    ignored,
)

__all__ = ["HANDLERS", "Handler", "HandlerContext", "Outcome", "StoredEvent", "handle_event"]
__all__ += ["handled", "ignored"]

HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": checkout.handle_checkout_completed,
    "checkout.session.async_payment_succeeded": checkout.handle_async_payment_succeeded,
    "checkout.session.async_payment_failed": checkout.handle_async_payment_failed,
    "payment_intent.succeeded": payment_intents.handle_payment_intent_succeeded,
    "charge.refunded": charges.handle_charge_refunded,
    "charge.captured": charges.handle_charge_refunded,
    "charge.refund.updated": charges.handle_refund_updated,
    "refund.updated": charges.handle_refund_updated,
    "refund.failed": charges.handle_refund_updated,
    "charge.dispute.created": charges.handle_dispute,
    "charge.dispute.funds_withdrawn": charges.handle_dispute,
    "charge.dispute.closed": charges.handle_dispute,
    "charge.dispute.funds_reinstated": charges.handle_dispute,
    "invoice.paid": invoices.handle_invoice_paid,
    "invoice_payment.paid": invoices.handle_invoice_payment_paid,
    "credit_note.created": invoices.handle_credit_note_created,
}


async def handle_event(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    """Check the event's scope, then dispatch on its type; unknown types are `ignored`."""
    out_of_scope = scope.out_of_scope_reason(ctx.settings, event.payload)
    if out_of_scope is not None:
        return ignored(out_of_scope)
    handler = HANDLERS.get(event.type)
    if handler is None:
        return ignored("unhandled_type")
    return await handler(ctx, event)
