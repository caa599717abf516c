"""Sample events of a purchase: a Checkout Session, and a Payment Element payment (a
`payment_intent.succeeded` without Checkout); `credits` goes to `metadata.credits`."""

from __future__ import annotations

from typing import Any

from webhook_worker.ops.sample_events.stripe_objects import (
    API_VERSION,
    event_envelope,
    is_basil,
    new_id,
    stripe_object,
)


def checkout_session_event(
    *,
    event_type: str = "checkout.session.completed",
    credits: int | None = 10,
    amount_total: int = 1000,
    payment_status: str = "paid",
    email: str | None = None,
    client_reference_id: str | None = None,
    metadata: dict[str, str] | None = None,
    customer: str | None = None,
    session_id: str | None = None,
    payment_intent: str | None = None,
    event_id: str | None = None,
    account: str | None = None,
    livemode: bool = False,
    mode: str = "payment",
    subscription: str | None = None,
    amount_tax: int = 0,
    amount_shipping: int = 0,
    tax_on_top: bool = True,
    currency: str = "usd",
    presentment: tuple[int, str] | None = None,
    invoice: str | None = None,
    api_version: str = API_VERSION,
    created: int | None = None,
) -> dict[str, Any]:
    """A `checkout.session.*` event; `credits` goes to `metadata.credits` when given. A
    `mode="subscription"` session has a `subscription` and no `payment_intent`.

    `amount_total` is what the customer paid, tax and shipping included: a tax added on top
    (`tax_on_top`) is not part of `amount_subtotal`, an included one is. `presentment`
    (amount, currency) is basil's Adaptive Pricing `presentment_details`; `invoice` a
    post-payment invoice (`invoice_creation.enabled`)."""
    session = stripe_object("checkout.session")
    meta = dict(metadata or {})
    if credits is not None:
        meta.setdefault("credits", str(credits))
    session.update(
        id=session_id or new_id("cs"),
        payment_status=payment_status,
        status="complete",
        amount_total=amount_total,
        amount_subtotal=amount_total - amount_shipping - (amount_tax if tax_on_top else 0),
        total_details={
            "amount_discount": 0,
            "amount_shipping": amount_shipping,
            "amount_tax": amount_tax,
        },
        currency=currency,
        client_reference_id=client_reference_id,
        metadata=meta,
        customer=customer,
        customer_email=email,
        payment_intent=payment_intent or new_id("pi"),
        livemode=livemode,
        mode=mode,
    )
    if mode == "subscription":
        session.update(payment_intent=None, subscription=subscription or new_id("sub"))
    session["currency_conversion"] = None  # Adaptive Pricing before basil: not used here
    session["presentment_details"] = None
    if presentment is not None:
        session["presentment_details"] = {
            "presentment_amount": presentment[0],
            "presentment_currency": presentment[1],
        }
    session["invoice_creation"]["enabled"] = invoice is not None
    session["invoice"] = invoice
    session["customer_details"]["email"] = email
    return event_envelope(
        event_type,
        session,
        event_id=event_id,
        account=account,
        livemode=livemode,
        api_version=api_version,
        created=created,
    )


def payment_intent_succeeded_event(
    *,
    credits: int | None = 10,
    amount: int = 1000,
    metadata: dict[str, str] | None = None,
    customer: str | None = None,
    payment_intent: str | None = None,
    invoice: str | None = None,
    event_id: str | None = None,
    api_version: str = API_VERSION,
) -> dict[str, Any]:
    """A `payment_intent.succeeded` of a Payment Element (no Checkout) payment; `credits`
    goes to `metadata.credits` when given, the user reference in `metadata`."""
    intent = stripe_object("payment_intent")
    meta = dict(metadata or {})
    if credits is not None:
        meta.setdefault("credits", str(credits))
    intent.update(
        id=payment_intent or new_id("pi"),
        amount=amount,
        amount_received=amount,
        amount_capturable=0,
        currency="usd",
        customer=customer,
        metadata=meta,
        status="succeeded",
        livemode=False,
        latest_charge=new_id("ch"),
    )
    if invoice is not None and not is_basil(api_version):
        intent["invoice"] = invoice  # before basil only: the invoice a payment pays
    return event_envelope(
        "payment_intent.succeeded", intent, event_id=event_id, api_version=api_version
    )
