"""Stripe's objects in both API shapes (before and from `2025-03-31.basil`), read into plain
values: ids, non-negative amounts, timestamps, a charge's captured and net refunded amount,
the stage a dispute event puts its dispute at. Pure; malformed input raises PermanentError."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from webhook_worker.errors import PermanentError
from webhook_worker.money.takebacks import STAGE_CLOSED, STAGE_OPEN, STAGE_REINSTATED

BASIL = "2025-03-31"  # from this API version on, releasing an authorization is no refund


FAILED_REFUND_STATUSES = frozenset({"failed", "canceled"})


def text(obj: Mapping[str, Any], key: str) -> str | None:
    """The text at `key` (an expanded object: its id); None when blank or absent."""
    value = obj.get(key)
    if isinstance(value, Mapping):  # an expanded object
        value = value.get("id")
    return value.strip() if isinstance(value, str) and value.strip() else None


def non_negative_int(obj: Mapping[str, Any], key: str, what: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PermanentError(f"{what} without a non-negative integer {key}")
    return value


def timestamp(raw: object) -> datetime | None:
    """A Stripe `created` (seconds) as an aware datetime; None when not an integer."""
    if isinstance(raw, bool) or not isinstance(raw, int):
        return None
    return datetime.fromtimestamp(raw, UTC)


def is_basil_or_later(api_version: object) -> bool:
    """`2025-03-31.basil` and later: partial captures and cancelled authorizations no
    longer create a Refund nor raise `amount_refunded`. Unknown versions are read as
    earlier: the reading that never takes back credits for money that was not refunded."""
    return isinstance(api_version, str) and api_version[:10] >= BASIL


def charge_snapshot(charge: Mapping[str, Any], api_version: object) -> tuple[int, int]:
    """(captured, net refunded of the captured amount) from a charge object, both shapes.

    Before basil a partial capture or a cancelled authorization releases the uncaptured
    remainder as a refund: `amount_refunded` holds `amount - amount_captured` that was never
    paid, and `captured: false` with `refunded: true` is an authorization released whole.
    From basil on `amount_refunded` counts real refunds only.
    """
    amount = non_negative_int(charge, "amount", "charge")
    refunded = non_negative_int(charge, "amount_refunded", "charge")
    raw_captured = charge.get("amount_captured")
    if charge.get("captured") is False:
        captured = 0
    elif isinstance(raw_captured, int) and not isinstance(raw_captured, bool):
        captured = min(max(raw_captured, 0), amount)
    else:
        captured = amount  # API versions before amount_captured: a captured charge, in full
    if not is_basil_or_later(api_version):
        refunded -= amount - captured
    return captured, min(max(refunded, 0), captured)


def payment_and_own_id(obj: Mapping[str, Any], what: str) -> tuple[str, str] | None:
    """(payment intent, the object's own id) of a refund or dispute; None when it belongs to
    no payment intent (nothing of ours to move). An object without an id is malformed."""
    payment_intent = text(obj, "payment_intent")
    if payment_intent is None:
        return None
    own_id = text(obj, "id")
    if own_id is None:
        raise PermanentError(f"{what} has no id")
    return payment_intent, own_id


def dispute_stage(event_type: str, status: str) -> int | None:
    """The stage an event puts its dispute at; None for inquiries, which move no money."""
    if event_type == "charge.dispute.funds_reinstated":
        return STAGE_REINSTATED
    if event_type == "charge.dispute.closed":
        return STAGE_CLOSED
    if status.startswith("warning_"):
        return None  # an inquiry: no funds are withdrawn unless it becomes a chargeback
    return STAGE_OPEN
