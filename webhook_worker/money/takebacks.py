"""What a payment's refunds and disputes take back: the readings of Stripe's objects that
decide how much money the merchant lost, in the currency the customer paid.

- `dispute_held`: what a dispute keeps from the merchant as its newest event tells it. A
  `won` dispute keeps nothing. Otherwise the dispute's `balance_transactions` say what was
  actually withdrawn (negative) and reinstated (positive): the difference, at most the
  dispute's amount. A dispute "partially won" (`funds_reinstated` with status `lost`, e.g.
  after a partial refund Stripe returns only the already refunded part) keeps the rest.
  Without balance transactions (inquiries aside) the whole disputed amount counts: the
  reading that never credits money the merchant did not keep.
- `charged_amount`: the amount the customer was charged, in the currency refunds and
  disputes come in (the charge's currency), from the purchase's own object when no charge
  event has told the captured amount yet. A basil Adaptive Pricing session's `amount_total`
  is in the merchant's currency: its `presentment_details.presentment_amount` is what the
  customer paid. One currency's amount is never divided by another's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhook_worker.money.amounts import positive_int

WON = "won"


def _moves(dispute: Mapping[str, Any]) -> list[tuple[int, object]]:
    listed = dispute.get("balance_transactions")
    moves: list[tuple[int, object]] = []
    for entry in listed if isinstance(listed, list) else []:
        if not isinstance(entry, Mapping):
            continue  # an unexpanded id: its amount is not in the event
        amount = entry.get("amount")
        if isinstance(amount, int) and not isinstance(amount, bool):
            moves.append((amount, entry.get("currency")))
    return moves


def dispute_held(dispute: Mapping[str, Any], amount: int) -> int:
    """The part of the dispute's `amount` the merchant has lost (see the module doc)."""
    if dispute.get("status") == WON:
        return 0
    moves = _moves(dispute)
    withdrawn = -sum(moved for moved, _ in moves if moved < 0)
    if withdrawn <= 0:
        return amount
    net = withdrawn - sum(moved for moved, _ in moves if moved > 0)
    currency = str(dispute.get("currency") or "").lower()
    if all(str(code or "").lower() == currency for _, code in moves):
        return min(max(net, 0), amount)
    # Settled in another currency: the same share of the dispute's own amount, rounded up.
    return min(-(-amount * net // withdrawn), amount) if net > 0 else 0


def charged_amount(purchase: Mapping[str, Any] | None) -> int | None:
    """What the purchase's object says the customer paid, in the charge's currency; None
    when it says nothing (no object: pruned)."""
    if purchase is None:
        return None
    presentment = purchase.get("presentment_details")
    if isinstance(presentment, Mapping):
        paid = positive_int(presentment.get("presentment_amount"))
        if paid is not None:
            return paid
    for key in ("amount_total", "amount_received", "amount_paid"):
        paid = positive_int(purchase.get(key))
        if paid is not None:
            return paid
    return None
