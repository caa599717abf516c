"""Realistic test-mode Stripe events built from Stripe's own sample objects, and signing.

The builders wrap a `checkout.session`, `payment_intent`, `charge`, `refund`, `dispute`,
`invoice` or `credit_note` (from `data/stripe_objects.json`) in the `event` envelope and set
the fields a scenario needs; `sign_payload` signs exact bytes the way Stripe does. Used by
`send-test-event`, the deploy smoke test, benchmarks and the test suite, which import
everything from here.
"""

from webhook_worker.ops.sample_events.charges import (
    charge_refunded_event,
    dispute_event,
    refund_event,
)
from webhook_worker.ops.sample_events.checkout import (
    checkout_session_event,
    payment_intent_succeeded_event,
)
from webhook_worker.ops.sample_events.invoices import (
    credit_note_event,
    invoice_line,
    invoice_paid_event,
    invoice_payment_paid_event,
)
from webhook_worker.ops.sample_events.signing import compute_signature, encode_event, sign_payload
from webhook_worker.ops.sample_events.stripe_objects import (
    API_VERSION,
    BASIL,
    PRE_BASIL,
    event_envelope,
    new_id,
    stripe_object,
)

__all__ = [
    "API_VERSION",
    "BASIL",
    "PRE_BASIL",
    "charge_refunded_event",
    "checkout_session_event",
    "compute_signature",
    "credit_note_event",
    "dispute_event",
    "encode_event",
    "event_envelope",
    "invoice_line",
    "invoice_paid_event",
    "invoice_payment_paid_event",
    "new_id",
    "payment_intent_succeeded_event",
    "refund_event",
    "sign_payload",
    "stripe_object",
]
