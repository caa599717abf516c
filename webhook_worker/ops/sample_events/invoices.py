"""Sample events of subscription billing: an invoice and its line items (`invoice.paid`),
the payment that paid it (`invoice_payment.paid`) and a credit note refunding it
(`credit_note.created`), each in the shape of the API version asked for."""

from __future__ import annotations

import copy
import time
from typing import Any

from webhook_worker.ops.sample_events.stripe_objects import (
    API_VERSION,
    BASIL,
    event_envelope,
    is_basil,
    new_id,
    stripe_object,
)


def invoice_line(
    *,
    price: str,
    amount: int,
    quantity: int = 1,
    api_version: str = API_VERSION,
    subscription: str | None = None,
    metadata: dict[str, str] | None = None,
    price_metadata: dict[str, str] | None = None,
    proration: bool = False,
    period: tuple[int, int] = (0, 0),
    invoice: str | None = None,
    unit_amount: int | None = None,
) -> dict[str, Any]:
    """One subscription line item in the shape of `api_version`: before basil it embeds the
    `price` object (and `plan`, `proration`, `subscription`); from basil on it names the
    price only under `pricing.price_details` and the subscription under `parent`.
    `price_metadata` exists only before basil (basil lines carry no price object)."""
    line: dict[str, Any] = copy.deepcopy(stripe_object("invoice")["lines"]["data"][0])
    if unit_amount is None:  # a proration line charges part of it: pass the price's
        unit_amount = amount // quantity if quantity else 0
    line.update(
        id=new_id("il"),
        invoice=invoice,
        amount=amount,
        subtotal=amount,
        currency="usd",
        description=f"{quantity} x plan ({price})",
        metadata=dict(metadata or {}),
        period={"start": period[0], "end": period[1]},
        quantity=quantity,
    )
    if is_basil(api_version):
        line.pop("subscription", None)
        line["parent"] = {
            "type": "subscription_item_details",
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": None,
                "proration": proration,
                "proration_details": {"credited_items": None},
                "subscription": subscription,
                "subscription_item": new_id("si"),
            },
        }
        line["pricing"] = {
            "type": "price_details",
            "price_details": {"price": price, "product": "prod_test_plan"},
            "unit_amount_decimal": str(unit_amount),
        }
        return line
    for key in ("parent", "pricing", "pretax_credit_amounts", "taxes"):
        line.pop(key, None)
    price_object = {
        "id": price,
        "object": "price",
        "active": True,
        "currency": "usd",
        "metadata": dict(price_metadata or {}),
        "product": "prod_test_plan",
        "recurring": {"interval": "month", "interval_count": 1, "usage_type": "licensed"},
        "type": "recurring",
        "unit_amount": unit_amount,
        "unit_amount_decimal": str(unit_amount),
    }
    line.update(
        price=price_object,
        plan={"id": price, "object": "plan", "amount": unit_amount, "interval": "month"},
        proration=proration,
        subscription=subscription,
        type="subscription",
        tax_amounts=[],
    )
    return line


def invoice_paid_event(
    *,
    customer: str,
    lines: list[dict[str, Any]] | None = None,
    price: str = "price_test_monthly",
    amount: int = 1000,
    quantity: int = 1,
    subscription: str | None = None,
    billing_reason: str = "subscription_cycle",
    subscription_metadata: dict[str, str] | None = None,
    invoice_id: str | None = None,
    payment_intent: str | None = None,
    api_version: str = API_VERSION,
    event_id: str | None = None,
    created: int | None = None,
    period: tuple[int, int] | None = None,
    account: str | None = None,
    livemode: bool = False,
    one_off: bool = False,
) -> dict[str, Any]:
    """An `invoice.paid` event for a subscription invoice (a renewal by default), in the shape
    of `api_version`: before basil the invoice carries `subscription`, `charge`,
    `payment_intent` and `subscription_details`; from basil on those are gone (payments
    are invoice payments) and the subscription is under `parent.subscription_details`.
    `one_off`: an invoice of no subscription (a Checkout Session's post-payment invoice)."""
    invoice = stripe_object("invoice")
    invoice_id = invoice_id or new_id("in")
    subscription = subscription or new_id("sub")
    now = int(time.time()) if created is None else created
    start, end = period or (now, now + 30 * 86400)
    if lines is None:
        lines = [
            invoice_line(
                price=price,
                amount=amount,
                quantity=quantity,
                api_version=api_version,
                subscription=subscription,
                period=(start, end),
            )
        ]
    for line in lines:
        line["invoice"] = invoice_id
    total = sum(int(line["amount"]) for line in lines)
    invoice.update(
        id=invoice_id,
        customer=customer,
        currency="usd",
        billing_reason=billing_reason,
        status="paid",
        paid=True,
        amount_due=total,
        amount_paid=total,
        amount_remaining=0,
        amount_overpaid=0,
        subtotal=total,
        total=total,
        attempted=True,
        attempt_count=1,
        created=now,
        period_start=start,
        period_end=end,
        livemode=livemode,
        lines={
            "object": "list",
            "data": lines,
            "has_more": False,
            "total_count": len(lines),
            "url": f"/v1/invoices/{invoice_id}/lines",
        },
    )
    metadata = dict(subscription_metadata or {})
    if is_basil(api_version):
        invoice["parent"] = {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {"metadata": metadata, "subscription": subscription},
        }
    else:
        invoice.pop("parent", None)
        invoice.update(
            subscription=subscription,
            subscription_details={"metadata": metadata},
            charge=new_id("ch"),
            payment_intent=payment_intent or new_id("pi"),
            paid=True,
        )
    if one_off:
        invoice.update(parent=None, subscription=None, subscription_details=None)
        for line in lines:
            line["subscription"] = None
            line.pop("parent", None)
    return event_envelope(
        "invoice.paid",
        invoice,
        event_id=event_id,
        created=now,
        account=account,
        livemode=livemode,
        api_version=api_version,
    )


def invoice_payment_paid_event(
    *, invoice: str, payment_intent: str, amount: int = 1000, event_id: str | None = None
) -> dict[str, Any]:
    """`invoice_payment.paid` (from basil on): the payment intent that paid an invoice."""
    now = int(time.time())
    payment = {
        "id": new_id("inpay"),
        "object": "invoice_payment",
        "amount_paid": amount,
        "amount_requested": amount,
        "created": now,
        "currency": "usd",
        "invoice": invoice,
        "is_default": True,
        "livemode": False,
        "payment": {"type": "payment_intent", "payment_intent": payment_intent},
        "status": "paid",
        "status_transitions": {"canceled_at": None, "paid_at": now},
    }
    return event_envelope("invoice_payment.paid", payment, event_id=event_id, api_version=BASIL)


def credit_note_event(
    *,
    invoice: str,
    amount: int = 1000,
    refunded: int | None = None,
    refund_id: str | None = None,
    customer: str | None = None,
    credit_note_id: str | None = None,
    api_version: str = API_VERSION,
    event_id: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """A `credit_note.created` for a paid invoice (`post_payment`), refunding `refunded` of
    its `amount` (default: all of it; 0: a credit to the customer's balance, no refund), in
    the shape of `api_version`: from basil on `refunds: [{refund, amount_refunded}]` (and
    `post_payment_amount`); before basil one `refund` id and no refund amount, the rest of
    the amount in `customer_balance_transaction`."""
    note = stripe_object("credit_note")
    refunded = amount if refunded is None else refunded
    note_id = credit_note_id or new_id("cn")
    refund = refund_id or new_id("re") if refunded else None
    line = note["lines"]["data"][0]
    line.update(
        id=new_id("cnli"),
        amount=amount,
        invoice_line_item=new_id("il"),
        tax_rates=[],
        pretax_credit_amounts=[],
    )
    now = int(time.time()) if created is None else created
    note.update(
        id=note_id,
        amount=amount,
        subtotal=amount,
        subtotal_excluding_tax=amount,
        total=amount,
        total_excluding_tax=amount,
        created=now,
        effective_at=now,
        currency="usd",
        customer=customer or new_id("cus"),
        customer_balance_transaction=new_id("cbtxn") if refunded < amount else None,
        invoice=invoice,
        out_of_band_amount=None,
        reason="requested_by_customer",
        status="issued",
        type="post_payment",
        voided_at=None,
        shipping_cost=None,
        pretax_credit_amounts=[],
        lines={
            "object": "list",
            "data": [line],
            "has_more": False,
            "url": f"/v1/credit_notes/{note_id}/lines",
        },
    )
    if is_basil(api_version):
        note.update(
            refunds=(
                [{"amount_refunded": refunded, "refund": refund, "type": "refund"}]
                if refund
                else []
            ),
            pre_payment_amount=0,
            post_payment_amount=amount,
            total_taxes=[],
        )
    else:
        for key in ("refunds", "pre_payment_amount", "post_payment_amount", "total_taxes"):
            note.pop(key, None)
        line.pop("taxes", None)
        line.update(tax_amounts=[], amount_excluding_tax=amount)
        note.update(refund=refund, tax_amounts=[])
    return event_envelope(
        "credit_note.created", note, event_id=event_id, created=now, api_version=api_version
    )
