"""An independent reference model of the money: from the FINAL state of the Stripe objects of
a history, what each user's balance and owed shortfall must be.

It imports nothing from `webhook_worker` and shares no code with it (the standard library
only), so a wrong rule in the service cannot also be the rule of its test. It reads Stripe's
documented meaning of each object, not the events that carried it:

- a payment bought `credits` and charged `charged` minor units in the currency the customer
  paid (Adaptive Pricing: the presentment amount), all captured;
- a refund takes its amount back unless its final status is `failed` or `canceled`; a
  credit note's refund is the same Refund, never counted twice;
- a dispute keeps from the merchant: nothing once `won`; otherwise what its balance
  transactions withdrew less what they reinstated (at most its amount), or its whole amount
  when it has none;
- credits taken back from a payment = credits * min(charged, refunded + kept) // charged;
- spending (`spent`) happens after the purchases and before any take-back. Spending rows of
  the application (issue 27: `credits_spend`, holds) add to `spent` here; a
  `SHORTFALL_POLICY=collect` collection would lower the owed shortfall by what it collects.

Balance and shortfall per user: what is left, never below zero, and what could not be taken
because it was spent: balance = max(0, bought - spent - taken), shortfall = max(0, taken -
(bought - spent)). The service keeps shortfall per payment: a user who spent credits and
has several payments is compared on balance - shortfall only (see docs/stripe.md, limits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

FAILED_REFUND = frozenset({"failed", "canceled"})


@dataclass
class Dispute:
    amount: int
    status: str  # the final status: needs_response, won, lost, …
    moved: list[int] = field(default_factory=list)  # balance transactions: - out, + back


@dataclass
class Payment:
    user: str
    credits: int  # what the purchase bought (one credit per payment, whatever surfaced it)
    charged: int  # in the currency the customer paid
    refunds: dict[str, tuple[int, str]] = field(default_factory=dict)  # id: (amount, status)
    disputes: dict[str, Dispute] = field(default_factory=dict)


def kept(dispute: Dispute) -> int:
    if dispute.status == "won":
        return 0
    withdrawn = -sum(m for m in dispute.moved if m < 0)
    if withdrawn == 0:
        return dispute.amount
    reinstated = sum(m for m in dispute.moved if m > 0)
    return min(max(withdrawn - reinstated, 0), dispute.amount)


def taken_back(payment: Payment) -> int:
    refunded = sum(a for a, status in payment.refunds.values() if status not in FAILED_REFUND)
    lost = refunded + sum(kept(d) for d in payment.disputes.values())
    return payment.credits * min(payment.charged, lost) // payment.charged


def expected(payments: list[Payment], spent: dict[str, int]) -> dict[str, tuple[int, int]]:
    """user: (balance, owed shortfall)."""
    users = {p.user for p in payments} | set(spent)
    out = {}
    for user in users:
        mine = [p for p in payments if p.user == user]
        left = sum(p.credits for p in mine) - spent.get(user, 0)
        taken = sum(taken_back(p) for p in mine)
        out[user] = (max(0, left - taken), max(0, taken - left))
    return out
