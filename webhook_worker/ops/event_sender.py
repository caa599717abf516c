"""`send-test-event`: build a realistic test event, sign it and deliver it to an endpoint."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from webhook_worker.config import Settings
from webhook_worker.db.queries import query
from webhook_worker.db.store import Connection, translate_errors
from webhook_worker.errors import ConfigError, TransientError
from webhook_worker.ops import sample_events
from webhook_worker.ops.values import OpsInputError

SMOKE_EVENT_TYPE = "webhook_worker.smoke_test"


def build_test_event(
    event_type: str = "checkout.session.completed",
    *,
    email: str | None = None,
    user_id: str | None = None,
    user_uuid: str | None = None,
    credits: int | None = 10,
    payment_intent: str | None = None,
    customer: str | None = None,
    invoice: str | None = None,
) -> dict[str, Any]:
    """A realistic test-mode event: a checkout session, a refunded charge, a subscription
    renewal (`invoice.paid`), a credit note refunding an invoice, a payment without
    Checkout, or any other type."""
    if event_type == "invoice.paid":
        # A renewal (billing_reason subscription_cycle) of a monthly plan: the credits on the
        # subscription's metadata (copied onto the invoice and its line), the user reference
        # there too; the customer must be linked to a user unless a reference is given.
        reference = {"user_id": user_id} if user_id else {}
        if user_uuid:
            reference = {"user_uuid": user_uuid}
        plan_credits = {"credits": str(credits)} if credits is not None else {}
        now = int(time.time())
        subscription = sample_events.new_id("sub")
        line = sample_events.invoice_line(
            price=sample_events.new_id("price"),
            amount=100 * (credits or 10),
            subscription=subscription,
            metadata=plan_credits,
            period=(now, now + 30 * 86400),
        )
        return sample_events.invoice_paid_event(
            customer=customer or sample_events.new_id("cus"),
            lines=[line],
            subscription=subscription,
            subscription_metadata={**reference, **plan_credits},
            payment_intent=payment_intent,
            created=now,
        )
    if event_type == "payment_intent.succeeded":
        metadata = {"user_id": user_id} if user_id else {}
        if user_uuid:
            metadata = {"user_uuid": user_uuid}
        if email:
            metadata = {"email": email}
        return sample_events.payment_intent_succeeded_event(
            credits=credits,
            amount=100 * (credits or 10),
            metadata=metadata,
            customer=customer,
            payment_intent=payment_intent,
        )
    if event_type.startswith("checkout.session."):
        metadata = {"user_uuid": user_uuid} if user_uuid else {}
        return sample_events.checkout_session_event(
            event_type=event_type,
            credits=credits,
            amount_total=100 * (credits or 10),
            email=email,
            client_reference_id=user_id,
            metadata=metadata,
            payment_intent=payment_intent,
        )
    if event_type == "credit_note.created":
        if not invoice:
            raise OpsInputError("credit_note.created needs --invoice in_… of a credited invoice")
        # Refunds the whole invoice a `send-test-event --type invoice.paid` of as many credits
        # would have charged (100 minor units a credit).
        return sample_events.credit_note_event(
            invoice=invoice, amount=100 * (credits or 10), customer=customer
        )
    if event_type == "charge.refunded":
        if not payment_intent:
            raise OpsInputError(
                "charge.refunded needs --payment-intent pi_… of a credited purchase"
            )
        return sample_events.charge_refunded_event(payment_intent=payment_intent)
    kind = event_type.split(".", 1)[0]
    known = {"charge", "customer", "refund", "checkout.session"}
    data = sample_events.stripe_object(kind) if kind in known else {"object": kind}
    data["id"] = sample_events.new_id(kind[:3] or "obj")
    return sample_events.event_envelope(event_type, data)


@dataclass(frozen=True)
class DeliveryResult:
    event_id: str
    event_type: str
    status_code: int
    body: str


async def send_event(
    url: str, event: dict[str, Any], secret: str, *, within: float = 10.0
) -> DeliveryResult:
    """POST one event signed like Stripe does; any HTTP answer is returned, not raised."""
    payload = sample_events.encode_event(event)
    headers = {
        "Content-Type": "application/json",
        "Stripe-Signature": sample_events.sign_payload(payload, secret),
        "User-Agent": "webhook-worker send-test-event",
    }
    try:
        async with httpx.AsyncClient(timeout=within) as client:
            response = await client.post(url, content=payload, headers=headers)
    except httpx.HTTPError as exc:
        raise TransientError(f"cannot POST to {url}: {type(exc).__name__}: {exc}") from exc
    return DeliveryResult(event["id"], event["type"], response.status_code, response.text)


async def event_status(conn: Connection, event_id: str) -> str | None:
    with translate_errors("reading an event status"):
        status = await conn.fetchval(query("ops_event_stored"), event_id)
    return str(status) if status is not None else None


async def event_outcome(conn: Connection, event_id: str) -> tuple[str, str | None] | None:
    """(status, reason or error) of a stored event; None when it is not stored."""
    with translate_errors("reading an event outcome"):
        row = await conn.fetchrow(query("ops_event_outcome"), event_id)
    if row is None:
        return None
    return str(row["processing_status"]), row["status_reason"] or row["error_message"]


def pick_secret(settings: Settings, secret: str | None) -> str:
    if secret:
        return secret
    if settings.webhook_secrets:
        return settings.webhook_secrets[0]
    raise ConfigError(
        "no signing secret: set STRIPE_WEBHOOK_SECRET=whsec_… or pass --secret whsec_…"
    )
