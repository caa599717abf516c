"""`verify`: the Stripe webhook endpoints (read through `STRIPE_API_KEY`) subscribe to the
events the money rules need (docs/stripe.md, "Which events to subscribe to").

`charge.refunded` is the only source of a charge's refunded amount: an endpoint subscribed
to `refund.created` / `refund.updated` alone would never take refunds back. The check warns
(never fails) when no enabled endpoint of the account covers a required event, and when
the key may not read the endpoints."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import stripe

from webhook_worker.config import Settings

REQUIRED_EVENTS = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "charge.refunded",
    "charge.dispute.created",
    "charge.dispute.closed",
    "charge.dispute.funds_reinstated",
)
# A failed or canceled refund gives back: any one of these is enough.
REFUND_FAILURE_EVENTS = ("charge.refund.updated", "refund.updated", "refund.failed")


def missing_events(endpoints: Iterable[Mapping[str, Any]]) -> list[str]:
    """The required events no enabled endpoint subscribes to (`*` covers all)."""
    subscribed: set[str] = set()
    for endpoint in endpoints:
        events = endpoint.get("enabled_events")
        if endpoint.get("status", "enabled") == "enabled" and isinstance(events, list):
            subscribed.update(str(e) for e in events)
    if "*" in subscribed:
        return []
    missing = [event for event in REQUIRED_EVENTS if event not in subscribed]
    if not subscribed.intersection(REFUND_FAILURE_EVENTS):
        missing.append(" or ".join(REFUND_FAILURE_EVENTS))
    return missing


async def list_endpoints(settings: Settings) -> list[dict[str, Any]]:
    """The account's webhook endpoints (first 100), raw, through the official client."""
    http = stripe.HTTPXClient(timeout=15)
    client = stripe.StripeClient(
        settings.require_stripe_api(),
        base_addresses={"api": settings.stripe_api_base},
        http_client=http,
        max_network_retries=0,
    )
    try:
        page = await client.v1.webhook_endpoints.list_async({"limit": 100})
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]
    response = page.last_response
    assert response is not None
    data = orjson.loads(response.body).get("data")
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []


async def subscription_warning(settings: Settings) -> str | None:
    """None when the endpoints cover every required event; else what to fix."""
    try:
        endpoints = await list_endpoints(settings)
    except stripe.StripeError as exc:
        return (
            f"could not read the webhook endpoints with STRIPE_API_KEY ({exc.http_status}); "
            "give the key Webhook Endpoints: read to check the event subscriptions"
        )
    missing = missing_events(endpoints)
    if not missing:
        return None
    return (
        "no enabled webhook endpoint subscribes to " + ", ".join(missing) + ": without them "
        "credits are not taken back (refund.created / refund.updated alone do not); add them "
        "to the endpoint (docs/stripe.md, Which events to subscribe to)"
    )
