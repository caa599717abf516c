"""Sample events of what happens to a charge after the purchase: captured or refunded
(`charge.*`), a refund's own updates (`refund.*`, `charge.refund.updated`) and disputes
(`charge.dispute.*`)."""

from __future__ import annotations

import time
from typing import Any

from webhook_worker.ops.sample_events.stripe_objects import (
    API_VERSION,
    event_envelope,
    new_id,
    stripe_object,
)


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
