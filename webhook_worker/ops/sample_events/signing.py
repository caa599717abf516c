"""An event's exact bytes and their `Stripe-Signature`, signed the way Stripe signs them,
for `send-test-event`, the deploy smoke test, benchmarks and the test suite."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any


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
