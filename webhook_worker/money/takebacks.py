"""What a payment's refunds and disputes take back: the readings of Stripe's objects that
decide how much money the merchant lost, in the currency the customer paid, and the rule
that brings the ledger to Stripe's newest state (`settle`; the state itself is kept by the
money store, webhook_worker.worker.postgres_money_store, whose docstring tells the ordering rules).

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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from webhook_worker.errors import PermanentError
from webhook_worker.money import UserId
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


Family = Literal["refund", "dispute"]

# Row types by the family of the event that moves the ledger, and the direction.
_DEBIT = {"refund": "REFUND", "dispute": "DISPUTE"}
_CREDIT = {"refund": "REFUND_REVERSAL", "dispute": "DISPUTE_REVERSAL"}

STAGE_OPEN, STAGE_CLOSED, STAGE_REINSTATED = 1, 2, 3


@dataclass(frozen=True)
class ChargeSnapshot:
    """What a charge event says: captured, and net refunded of that, as of `created`."""

    payment_intent_id: str
    captured: int
    refunded: int
    created: datetime


@dataclass(frozen=True)
class RefundFailure:
    payment_intent_id: str
    refund_id: str
    amount: int
    status: str  # failed | canceled
    refund_created: datetime | None
    failed_at: datetime  # the event's created


@dataclass(frozen=True)
class DisputeStage:
    payment_intent_id: str
    dispute_id: str
    amount: int  # what the dispute keeps from the merchant at this stage (money.takebacks)
    stage: int
    status: str


@dataclass(frozen=True)
class CreditNoteRefunds:
    """What a credit note says: refunds (id, amount) of the payment that paid its invoice."""

    payment_intent_id: str
    credit_note_id: str
    invoice_id: str
    refunds: tuple[tuple[str, int], ...]


Change = ChargeSnapshot | RefundFailure | DisputeStage | CreditNoteRefunds


def share(purchased: int, captured: int, amount: int) -> int:
    """Credits matching `amount` of `captured`, rounded down, integers only."""
    if captured <= 0 or purchased <= 0:
        return 0
    return purchased * min(max(amount, 0), captured) // captured


def target_taken(
    purchased: int,
    captured: int,
    refunded: int | None,
    disputed: int,
    legacy: int,
    noted: int = 0,
) -> int:
    """The credits Stripe's state says are taken back. `refunded` None: no charge snapshot
    yet, the refunds taken before 0015 (`legacy`) stand for the refunded part. `noted`: the
    refunds credit notes name, the same money as the charge's refunds: the larger of the
    two counts, never their sum."""
    if refunded is None and legacy:
        refunds = max(legacy, share(purchased, captured, noted))
        return min(purchased, refunds + share(purchased, captured, disputed))
    return share(purchased, captured, max(refunded or 0, noted) + disputed)


def plan(
    delta: int, balance: int, shortfall: int, family: Family
) -> tuple[str | None, int, int, int]:
    """How the ledger follows a change of `delta` credits to take back: (row type or None,
    credits moved, shortfall added, shortfall after). Never below zero: what is spent becomes
    shortfall; a give-back cancels shortfall first and returns only what was really taken."""
    if delta > 0:
        debit = min(delta, balance)
        added = delta - debit
        return (_DEBIT[family] if debit else None), -debit, added, shortfall + added
    if delta < 0:
        cancelled = min(-delta, shortfall)
        credit = -delta - cancelled
        return (_CREDIT[family] if credit else None), credit, 0, shortfall - cancelled
    return None, 0, 0, shortfall


@dataclass(frozen=True)
class PaymentView:
    """One payment as the rule sees it, after the event's change was recorded, whichever
    store holds it (Postgres: payment_states and friends; the unit tier: memory)."""

    purchased: int  # credits its PURCHASE / SUBSCRIPTION_CREDIT rows gave
    captured: int | None  # from charge events; None: none seen yet
    purchase: Mapping[str, Any] | None  # the purchase event's object (captured's fallback)
    refunded: int | None  # newest snapshot less the refunds that failed since; None: none
    disputed: int  # what the disputes keep, each at its furthest stage
    legacy_taken: int  # refunds taken before migration 0015
    taken: int  # credits taken back so far (including shortfall)
    shortfall: int  # what could not be taken because it was spent
    balance: int  # the user's balance now
    noted: int = 0  # refunds credit notes name, less failed ones (the same money as refunded)


@dataclass(frozen=True)
class Settlement:
    """What the ledger must do to follow the payment's new state."""

    target: int  # credits taken back, per Stripe's newest state
    delta: int  # target - taken: > 0 take more, < 0 give back
    kind: str | None  # the ledger row's type, None: no row
    moved: int  # credits the row moves (negative: taken)
    added_shortfall: int
    shortfall: int  # shortfall after


def settle(view: PaymentView, family: Family, change: Change, payment_intent_id: str) -> Settlement:
    """The money rule for refunds and disputes, pure: one place for both stores."""
    captured = view.captured
    if captured is None:
        captured = charged_amount(view.purchase)
    if captured is None:
        raise PermanentError(
            f"the captured amount of payment {payment_intent_id} is unknown: no charge event "
            "was seen and the purchase event's payload was pruned; nothing was taken back"
        )
    if isinstance(change, ChargeSnapshot) and not view.refunded and view.disputed:
        # A charge that refunds nothing but tells the captured amount (basil's
        # charge.captured) can only move the disputes' share.
        family = "dispute"
    target = target_taken(
        view.purchased,
        int(captured),
        view.refunded,
        view.disputed,
        view.legacy_taken,
        view.noted,
    )
    delta = target - view.taken
    kind, moved, added, shortfall = plan(delta, view.balance, view.shortfall, family)
    return Settlement(target, delta, kind, moved, added, shortfall)


@dataclass(frozen=True)
class Applied:
    """What one event did to the ledger."""

    user_id: UserId
    advanced: bool  # the payment's state moved; False: a stale or repeated event
    transaction_type: str | None  # the ledger row written, None when none
    amount: int  # credits moved (negative: taken back), 0 when no row
    shortfall: int  # credits this event could not take back (already spent)
    balance: int


# --- newest state wins: the state rules both stores apply to the facts they hold ----------


def snapshot_is_newer(
    held_as_of: datetime | None, held_refunded: int | None, change: ChargeSnapshot
) -> bool:
    """A charge snapshot replaces the held one when it is newer: created later, or in the
    same second with a larger refunded amount (within a second, refunds only add up)."""
    return (
        held_as_of is None
        or change.created > held_as_of
        or (change.created == held_as_of and change.refunded > (held_refunded or 0))
    )


def stage_moves(held_stage: int | None, change: DisputeStage) -> bool:
    """A dispute moves forward through its stages, never back."""
    return held_stage is None or change.stage > held_stage


@dataclass(frozen=True)
class HeldFailure:
    """A failed or canceled refund as the store holds it."""

    refund_id: str
    amount: int
    refund_created: datetime | None
    failed_at: datetime


def net_refunded(
    refunded: int | None, as_of: datetime | None, failures: Iterable[HeldFailure]
) -> int | None:
    """The snapshot's refunded amount less the refunds that failed after it and were in it
    (created by then); None without a snapshot."""
    if refunded is None or as_of is None:
        return None
    failed = sum(
        f.amount
        for f in failures
        if f.failed_at > as_of and (f.refund_created is None or f.refund_created <= as_of)
    )
    return max(refunded - failed, 0)


def noted_refunds(noted: Iterable[tuple[str, int]], failed_ids: Iterable[str]) -> int:
    """The refunds credit notes name, (refund id, amount) per credit note, less failed ones."""
    failed = set(failed_ids)
    return sum(amount for refund_id, amount in noted if refund_id not in failed)


@dataclass(frozen=True)
class HeldPayment:
    """What a store holds of one payment, raw (payment_states and its child tables)."""

    purchased: int
    purchase: Mapping[str, Any] | None
    captured: int | None
    refunded: int | None
    refunded_as_of: datetime | None
    legacy_taken: int
    taken: int
    shortfall: int
    failures: tuple[HeldFailure, ...]
    disputes: tuple[int, ...]  # what each dispute keeps, at its furthest stage
    noted: tuple[tuple[str, int], ...]  # (refund id, amount) per credit note


def payment_view(held: HeldPayment, balance: int) -> PaymentView:
    """The payment as `settle` sees it, from the raw facts a store holds."""
    return PaymentView(
        purchased=held.purchased,
        captured=held.captured,
        purchase=held.purchase,
        refunded=net_refunded(held.refunded, held.refunded_as_of, held.failures),
        disputed=sum(held.disputes),
        legacy_taken=held.legacy_taken,
        taken=held.taken,
        shortfall=held.shortfall,
        balance=balance,
        noted=noted_refunds(held.noted, (f.refund_id for f in held.failures)),
    )
