"""`verify` warns when the Stripe webhook endpoints lack an event the money rules need
(issue 25: an endpoint on `refund.*` alone never takes refunds back). Real HTTP through the
official client to the fake Stripe API (tests/fake_stripe.py)."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from tests.fake_stripe import API_KEY, serve_fake_stripe
from webhook_worker.config import Settings
from webhook_worker.ops import verify
from webhook_worker.ops.webhook_endpoints import REQUIRED_EVENTS, missing_events


def test_refund_events_alone_miss_charge_refunded() -> None:
    only_refunds = [{"status": "enabled", "enabled_events": ["refund.created", "refund.updated"]}]
    assert "charge.refunded" in missing_events(only_refunds)
    everything = [*REQUIRED_EVENTS, "refund.failed"]
    assert missing_events([{"status": "enabled", "enabled_events": everything}]) == []
    assert missing_events([{"status": "enabled", "enabled_events": ["*"]}]) == []
    assert missing_events([{"status": "disabled", "enabled_events": ["*"]}]) != []


async def _subscription_check(db: asyncpg.Connection, settings: Settings) -> verify.Check:
    report = await verify.verify(db, stale_after_seconds=120, settings=settings)
    [check] = [c for c in report.checks if c.name == "webhook subscriptions"]
    return check


async def test_verify_warns_when_the_endpoint_lacks_charge_refunded(
    db: asyncpg.Connection, make_settings: Callable[..., Settings]
) -> None:
    async with serve_fake_stripe() as fake:
        settings = make_settings(STRIPE_API_KEY=API_KEY, STRIPE_API_BASE=fake.url)
        fake.webhook_endpoints = [
            {"id": "we_1", "status": "enabled", "enabled_events": ["refund.created"]}
        ]
        check = await _subscription_check(db, settings)
        assert check.ok and check.warning
        assert "charge.refunded" in check.detail
        fake.webhook_endpoints = [{"id": "we_1", "status": "enabled", "enabled_events": ["*"]}]
        check = await _subscription_check(db, settings)
        assert check.ok and not check.warning


async def test_verify_warns_when_the_key_cannot_read_endpoints(
    db: asyncpg.Connection, make_settings: Callable[..., Settings]
) -> None:
    async with serve_fake_stripe() as fake:
        settings = make_settings(STRIPE_API_KEY="rk_test_other_key_0002", STRIPE_API_BASE=fake.url)
        check = await _subscription_check(db, settings)
        assert check.warning and "Webhook Endpoints: read" in check.detail
