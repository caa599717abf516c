"""A small model of Stripe's side of one payment, for the load-with-faults scenario: refunds
(some fail later), partial captures in both API shapes and disputes, each step emitting the
events Stripe would send with increasing `created`, and the final state's take-back target.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from webhook_worker.ops.sample_events import (
    BASIL,
    PRE_BASIL,
    charge_refunded_event,
    dispute_event,
    new_id,
    refund_event,
)

CLOCK_START = 1_760_000_000


@dataclass
class Payment:
    """One purchase's payment at Stripe: authorized `amount`, `captured` of it."""

    payment_intent: str
    credits: int
    amount: int
    captured: int
    api_version: str
    refunds: dict[str, int] = field(default_factory=dict)  # live refunds: id -> amount
    failed: set[str] = field(default_factory=set)
    dispute: str | None = None
    dispute_amount: int = 0
    dispute_status: str | None = None  # needs_response, won, lost

    @property
    def live_refunded(self) -> int:
        return sum(self.refunds.values())

    def target(self) -> int:
        """Credits Stripe's final state takes back: refunded share + disputes not won."""
        disputed = self.dispute_amount if self.dispute_status in ("needs_response", "lost") else 0
        # Written here, not imported: the model must not share the rule it checks.
        if self.captured <= 0:
            return 0
        taken_back = min(self.live_refunded + disputed, self.captured)
        return self.credits * taken_back // self.captured


class StripeModel:
    """Payments keyed by payment intent and a global clock (one second per event)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.clock = CLOCK_START
        self.payments: dict[str, Payment] = {}
        self.created_of: dict[str, int] = {}  # refund id -> its created

    def _tick(self) -> int:
        self.clock += 1
        return self.clock

    def add(self, session: dict[str, Any], credits: int) -> list[dict[str, Any]]:
        """A paid session; 30 % are partial captures (600 of 1,000), half of all basil. A
        partial capture sends `charge.captured`; before basil it also releases the rest as a
        refund and sends `charge.refunded`."""
        amount = int(session["amount_total"])
        partial = self.rng.random() < 0.3
        payment = Payment(
            payment_intent=session["payment_intent"],
            credits=credits,
            amount=amount,
            captured=amount * 6 // 10 if partial else amount,
            api_version=self.rng.choice((PRE_BASIL, BASIL)),
        )
        self.payments[payment.payment_intent] = payment
        if not partial:
            return []
        events = [self._snapshot(payment, "charge.captured")]
        if payment.api_version == PRE_BASIL:
            events.append(self._snapshot(payment))
        return events

    def _snapshot(self, p: Payment, event_type: str = "charge.refunded") -> dict[str, Any]:
        refunded = p.live_refunded
        if p.api_version == PRE_BASIL:
            refunded += p.amount - p.captured  # the released remainder reads as a refund
        return charge_refunded_event(
            payment_intent=p.payment_intent,
            amount=p.amount,
            amount_captured=p.captured,
            amount_refunded=refunded,
            created=self._tick(),
            api_version=p.api_version,
            event_type=event_type,
        )

    def step(self, payment_intent: str) -> list[dict[str, Any]]:
        """One thing happening to a payment at Stripe, as the events it sends."""
        p = self.payments[payment_intent]
        room = p.captured - p.live_refunded - p.dispute_amount
        choice = self.rng.random()
        if p.dispute is not None and p.dispute_status == "needs_response":
            p.dispute_status = self.rng.choice(("won", "lost"))
            return [
                dispute_event(
                    payment_intent=payment_intent,
                    dispute_id=p.dispute,
                    amount=p.dispute_amount,
                    status=p.dispute_status,
                    event_type="charge.dispute.closed",
                    created=self._tick(),
                    api_version=p.api_version,
                )
            ]
        if p.refunds and choice < 0.3:
            refund_id = self.rng.choice(sorted(p.refunds))
            amount = p.refunds.pop(refund_id)
            p.failed.add(refund_id)
            failed_at = self._tick()
            types = ["charge.refund.updated"]
            if p.api_version == BASIL:
                types += ["refund.updated", "refund.failed"]
            return [
                {
                    **refund_event(
                        payment_intent=payment_intent,
                        refund_id=refund_id,
                        amount=amount,
                        refund_created=self.created_of[refund_id],
                        created=failed_at,
                        api_version=p.api_version,
                    ),
                    "type": event_type,
                }
                for event_type in types
            ]
        if p.dispute is None and room > 0 and choice < 0.45:
            p.dispute, p.dispute_amount, p.dispute_status = new_id("dp"), room, "needs_response"
            return [
                dispute_event(
                    payment_intent=payment_intent,
                    dispute_id=p.dispute,
                    amount=room,
                    event_type="charge.dispute.created",
                    created=self._tick(),
                    api_version=p.api_version,
                )
            ]
        if room > 0 and p.dispute is None:
            refund_id = new_id("re")
            p.refunds[refund_id] = self.rng.randint(1, room)
            event = self._snapshot(p)
            self.created_of[refund_id] = event["created"]
            return [event]
        return []

    def targets(self) -> dict[str, int]:
        return {pi: p.target() for pi, p in self.payments.items() if p.target()}
