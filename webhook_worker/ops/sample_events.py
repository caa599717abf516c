"""Realistic test-mode Stripe events built from Stripe's own sample objects, and signing.

`data/stripe_objects.json` is a copy of Stripe's OpenAPI fixtures (see ../shared); the
builders wrap a `checkout.session`, `charge`, `refund`, `dispute`, `invoice` or `credit_note`
in the `event` envelope
and set the fields a scenario needs. `sign_payload` signs exact bytes the way Stripe does, for
`send-test-event`, the smoke test, benchmarks and the test suite.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import secrets
import time
from functools import cache
from pathlib import Path
from typing import Any

API_VERSION = "2024-06-20"


@cache
def _objects() -> dict[str, Any]:
    path = Path(__file__).parent / "data" / "stripe_objects.json"
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def stripe_object(kind: str) -> dict[str, Any]:
    """A fresh deep copy of one of Stripe's sample objects (`checkout.session`, `charge`, …)."""
    return copy.deepcopy(_objects()[kind])


def new_id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(12)}"


def event_envelope(
    event_type: str,
    data_object: dict[str, Any],
    *,
    event_id: str | None = None,
    created: int | None = None,
    livemode: bool = False,
    account: str | None = None,
    api_version: str = API_VERSION,
) -> dict[str, Any]:
    event = stripe_object("event")
    event.update(
        id=event_id or new_id("evt"),
        type=event_type,
        created=created if created is not None else int(time.time()),
        livemode=livemode,
        api_version=api_version,
        data={"object": data_object},
        pending_webhooks=1,
    )
    if account is not None:
        event["account"] = account
    return event


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


# The API versions the money-flow fixtures are built for: the shape of a released
# authorization changed with basil (see money.stripe_shapes.charge_snapshot).
PRE_BASIL = "2024-06-20"
BASIL = "2025-03-31.basil"


def charge_refunded_event(
    *,
    payment_intent: str,
    amount: int = 1000,
    amount_refunded: int = 1000,
    amount_captured: int | None = None,
    captured: bool = True,
    charge_id: str | None = None,
    event_id: str | None = None,
    customer: str | None = None,
    created: int | None = None,
    api_version: str = API_VERSION,
    event_type: str = "charge.refunded",
    currency: str = "usd",
) -> dict[str, Any]:
    """A `charge.refunded` (or `charge.captured`) event; `amount_refunded` is cumulative, as
    Stripe sends it.

    `amount_captured` defaults to the whole `amount`. For a partial capture before basil,
    `amount_refunded` includes the released remainder (`amount - amount_captured`); from
    basil on it counts real refunds only: the caller sets it as the version would.
    """
    charge = stripe_object("charge")
    charge.update(
        id=charge_id or new_id("ch"),
        amount=amount,
        amount_captured=amount if amount_captured is None else amount_captured,
        amount_refunded=amount_refunded,
        captured=captured,
        refunded=amount_refunded >= amount,
        payment_intent=payment_intent,
        customer=customer,
        currency=currency,
        livemode=False,
    )
    return event_envelope(
        event_type, charge, event_id=event_id, created=created, api_version=api_version
    )


def _charge_child_event(
    kind: str,
    event_type: str,
    fields: dict[str, Any],
    *,
    payment_intent: str,
    object_id: str | None,
    amount: int,
    status: str,
    created: int | None = None,
    event_id: str | None = None,
    api_version: str = API_VERSION,
    currency: str = "usd",
) -> dict[str, Any]:
    """An event about an object that hangs off a charge (a `refund`, a `dispute`): Stripe's
    sample object with its id, amount, status, payment intent and `fields` set."""
    obj = stripe_object(kind)
    obj.update(
        id=object_id or new_id("re" if kind == "refund" else "dp"),
        amount=amount,
        status=status,
        payment_intent=payment_intent,
        charge=new_id("ch"),
        currency=currency,
        **fields,
    )
    return event_envelope(
        event_type, obj, event_id=event_id, created=created, api_version=api_version
    )


def refund_event(
    *,
    payment_intent: str,
    refund_id: str | None = None,
    amount: int = 1000,
    status: str = "failed",
    event_type: str = "charge.refund.updated",
    refund_created: int | None = None,
    **envelope: Any,
) -> dict[str, Any]:
    """A `charge.refund.updated` / `refund.updated` / `refund.failed` event (a Refund);
    `envelope`: `created`, `event_id`, `api_version`, `currency` (see `_charge_child_event`)."""
    fields: dict[str, Any] = {
        "created": refund_created if refund_created is not None else int(time.time())
    }
    if status == "failed":
        fields["failure_reason"] = "expired_or_canceled_card"
    return _charge_child_event(
        "refund",
        event_type,
        fields,
        payment_intent=payment_intent,
        object_id=refund_id,
        amount=amount,
        status=status,
        **envelope,
    )


def dispute_event(
    *,
    payment_intent: str,
    dispute_id: str | None = None,
    amount: int = 1000,
    status: str = "needs_response",
    event_type: str = "charge.dispute.created",
    balance_transactions: list[int] | None = None,
    currency: str = "usd",
    **envelope: Any,
) -> dict[str, Any]:
    """A `charge.dispute.*` event (a Dispute); `status` as Stripe sets it for that event.
    `balance_transactions`: the amounts of the dispute's balance transactions (negative:
    withdrawn, positive: reinstated), in the dispute's currency; `envelope`: `created`,
    `event_id`, `api_version`."""
    inquiry = status.startswith("warning_")
    transactions = [
        {
            "id": new_id("txn"),
            "object": "balance_transaction",
            "amount": moved,
            "currency": currency,
            "type": "adjustment",
            "reporting_category": "dispute" if moved < 0 else "dispute_reversal",
        }
        for moved in balance_transactions or []
    ]
    event = _charge_child_event(
        "dispute",
        event_type,
        {
            "is_charge_refundable": inquiry,
            "livemode": False,
            "balance_transactions": transactions,
        },
        payment_intent=payment_intent,
        object_id=dispute_id,
        amount=amount,
        status=status,
        currency=currency,
        **envelope,
    )
    card = event["data"]["object"]["payment_method_details"]["card"]
    card["case_type"] = "inquiry" if inquiry else "chargeback"
    return event


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
    if _is_basil(api_version):
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


def _is_basil(api_version: str) -> bool:
    return api_version[:10] >= BASIL[:10]


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
    if _is_basil(api_version):
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
    if _is_basil(api_version):
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
    if invoice is not None and not _is_basil(api_version):
        intent["invoice"] = invoice  # before basil only: the invoice a payment pays
    return event_envelope(
        "payment_intent.succeeded", intent, event_id=event_id, api_version=api_version
    )


def encode_event(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def compute_signature(payload: bytes, secret: str, timestamp: int) -> str:
    signed = f"{timestamp}.".encode() + payload
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign_payload(
    payload: bytes, secret: str, *, timestamp: int | None = None, scheme: str = "v1"
) -> str:
    """The `Stripe-Signature` header value for `payload`: `t=<unix>,v1=<hex hmac>`."""
    ts = int(time.time()) if timestamp is None else timestamp
    return f"t={ts},{scheme}={compute_signature(payload, secret, ts)}"
