"""Checkout Sessions: `checkout.session.completed` credits a paid `mode: payment` session
(`unpaid`: `ignored`, the credit waits for `async_payment_succeeded`) and links the customer
of a `mode: subscription` one; `.async_payment_succeeded` credits; `.async_payment_failed`
is recorded. What a session buys: webhook_worker.money.checkout_pricing. A session with a
post-payment invoice records it: that invoice's `invoice.paid` credits nothing more."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhook_worker.envelope import StoredEvent
from webhook_worker.errors import PermanentError
from webhook_worker.money import user_reference
from webhook_worker.money.checkout_pricing import PAID_STATUSES, credits_for
from webhook_worker.money.stripe_shapes import text
from webhook_worker.worker.handlers.outcome import (
    HandlerContext,
    Outcome,
    handled,
    ignored,
)
from webhook_worker.worker.money_store import Purchase


async def resolve(ctx: HandlerContext, session: Mapping[str, Any]) -> user_reference.Resolution:
    """The common case, the first candidate matches and there is no customer id to remember,
    takes one coalesced lookup; everything else goes through the full resolver."""
    first = user_reference.first_candidate(session)
    if first is not None and user_reference.customer_id(session) is None:
        source, candidate = first
        user_id = await ctx.money.find_user(candidate)
        if user_id is not None:
            return user_reference.Resolution(user_id, source)
    return await ctx.money.resolve_user(session)


async def _credit_session(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    session = event.data_object
    session_id = text(session, "id")
    if session_id is None:
        raise PermanentError("checkout session has no id")
    credits = credits_for(session, ctx.settings)  # before resolving: a bad event makes no user
    if credits is None:
        return ignored("not_a_credit_purchase", mode=str(session.get("mode"))[:32])
    who = await resolve(ctx, session)
    return await credit_purchase(
        ctx,
        event,
        who,
        credits,
        session_id=session_id,
        payment_intent_id=text(session, "payment_intent"),
        invoice_id=text(session, "invoice"),
    )


async def credit_purchase(
    ctx: HandlerContext,
    event: StoredEvent,
    who: user_reference.Resolution,
    credits: int,
    *,
    session_id: str | None,
    payment_intent_id: str | None,
    invoice_id: str | None = None,
) -> Outcome:
    """One PURCHASE through the coalesced credit call, and the outcome it leads to. A session
    with a post-payment invoice (`invoice_creation`) records that invoice: its `invoice.paid`
    is the same payment and credits nothing more, whichever comes first."""
    reference = session_id or payment_intent_id
    result = await ctx.money.credit_purchase(
        Purchase(
            user_id=who.user_id,
            credits=credits,
            event_id=event.event_id,
            checkout_session_id=session_id,
            payment_intent_id=payment_intent_id,
            description=f"{event.type} {reference}",
            invoice_id=invoice_id,
        ),
    )
    fields: dict[str, Any] = {
        "user_id": who.user_id,
        "resolved_by": who.source,
        "user_created": who.created,
        "credits": credits if result.applied else 0,
        "balance": result.balance,
    }
    if session_id is not None:
        fields["checkout_session_id"] = session_id
    else:
        fields["payment_intent_id"] = payment_intent_id
    if result.applied:
        return Outcome("completed", "event_credited", recorded=True, fields=fields)
    return Outcome(
        "completed", "event_recorded", recorded=True, fields=fields, reason="already_credited"
    )


async def _link_subscription(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    """A `mode: subscription` session credits nothing: its first invoice's `invoice.paid`
    does (one source for the first period). It links the Stripe customer to the user
    (`stripe_customer_id`), so that invoices resolve by customer; waiting invoices of that
    customer are woken by the sweeper."""
    session = event.data_object
    customer = user_reference.customer_id(session)
    fields: dict[str, Any] = {
        "checkout_session_id": text(session, "id"),
        "customer": customer,
        "subscription": text(session, "subscription"),
    }
    if customer is None:
        return ignored("no_customer_to_link", **fields)
    try:
        who = await ctx.money.resolve_user(session)
    except user_reference.UserNotFound:
        return ignored("no_user_to_link", **fields)
    fields.update(user_id=who.user_id, resolved_by=who.source, user_created=who.created)
    return handled("subscription_linked", **fields)


async def handle_checkout_completed(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    if event.data_object.get("mode") == "subscription":
        return await _link_subscription(ctx, event)
    payment_status = event.data_object.get("payment_status")
    if payment_status not in PAID_STATUSES:
        # Delayed payment methods: the credit comes with async_payment_succeeded.
        return ignored("awaiting_payment", payment_status=str(payment_status)[:32])
    return await _credit_session(ctx, event)


async def handle_async_payment_succeeded(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    return await _credit_session(ctx, event)


async def handle_async_payment_failed(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    session_id = text(event.data_object, "id")
    return handled("async_payment_failed", checkout_session_id=session_id)
