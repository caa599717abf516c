"""Test support, not used by the service: `MoneyStore` in memory, the unit tier of the money
rules, with no Postgres, Redis or arq (as procrastinate ships its `InMemoryConnector` in a
testing module).

Like procrastinate's `InMemoryConnector`, it re-states in Python what the SQL statements
guarantee (one ledger row per event, one PURCHASE per checkout session and per payment
intent, one SUBSCRIPTION_CREDIT per invoice, a balance never below zero, the newest
payment state winning) and nothing more: the rules themselves (`user_reference.resolve`,
`takebacks.settle`, the handlers) are the service's own code. `tests/money_cases.py` runs one
table of cases through this store and through Postgres, so the two cannot drift apart
unnoticed. An integer-keyed users table, one tenant; `SUBSCRIPTION_CREDITS_EXPIRE` is proven
against Postgres only (tests/test_subscriptions.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from webhook_worker.errors import PermanentError
from webhook_worker.money import takebacks, user_reference
from webhook_worker.money.ledger_rows import CreditResult, InvoiceCredit, InvoiceCredited, Purchase
from webhook_worker.money.takebacks import (
    Applied,
    Change,
    ChargeSnapshot,
    CreditNoteRefunds,
    DisputeStage,
    Family,
    PaymentView,
    RefundFailure,
)
from webhook_worker.money.user_reference import Candidate, Resolution

PURCHASE_TYPES = ("PURCHASE", "SUBSCRIPTION_CREDIT")


@dataclass
class User:
    id: int
    email: str | None = None
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    stripe_customer_id: str | None = None
    credits_balance: int = 0


@dataclass
class LedgerRow:
    user_id: int
    amount: int
    balance_after: int
    transaction_type: str
    event_id: str
    checkout_session_id: str | None = None
    payment_intent_id: str | None = None
    invoice_id: str | None = None


@dataclass
class KeptEvent:
    """What `stripe_events` keeps of an event, for the rules that read it back."""

    payload: dict[str, Any]
    status: str = "received"
    reason: str | None = None
    waiting_for: str | None = None


@dataclass
class _Payment:
    """payment_states, payment_refund_failures and payment_disputes of one payment."""

    captured: int | None = None
    refunded: int | None = None
    refunded_as_of: datetime | None = None
    taken: int = 0
    shortfall: int = 0
    failures: dict[str, RefundFailure] = field(default_factory=dict)
    disputes: dict[str, DisputeStage] = field(default_factory=dict)
    noted: dict[tuple[str, str], int] = field(default_factory=dict)  # credit_note_refunds


class InMemoryMoneyStore:
    """Users, ledger and payment state in dictionaries (see the module doc)."""

    def __init__(self) -> None:
        self.users: dict[int, User] = {}
        self.ledger: list[LedgerRow] = []
        self.events: dict[str, KeptEvent] = {}
        self.payments: dict[str, _Payment] = {}

    # --- arranging and asserting ----------------------------------------------------------

    def add_user(self, email: str | None = None, *, user_id: int | None = None) -> User:
        new_id = user_id if user_id is not None else max(self.users, default=0) + 1
        user = User(new_id, email)
        self.users[new_id] = user
        return user

    def store_event(self, payload: dict[str, Any]) -> str:
        """As the receiver does: keep the payload under its id (a duplicate keeps the first)."""
        event_id = str(payload["id"])
        self.events.setdefault(event_id, KeptEvent(payload))
        return event_id

    def finish(self, event_id: str, status: str, reason: str | None = None) -> None:
        event = self.events[event_id]
        if event.status not in ("completed", "ignored"):
            event.status, event.reason = status, reason

    def balances(self) -> dict[int, int]:
        return {user_id: user.credits_balance for user_id, user in self.users.items()}

    # --- MoneyStore -----------------------------------------------------------------------

    async def find_user(self, candidate: Candidate) -> int | None:
        for user in self.users.values():
            if _matches(user, candidate):
                return user.id
        return None

    async def resolve_user(self, reference: Mapping[str, Any]) -> Resolution:
        return await user_reference.resolve(_Directory(self), reference)

    async def credit_purchase(self, purchase: Purchase) -> CreditResult:
        if purchase.credits <= 0:
            raise PermanentError(f"credits must be a positive integer, got {purchase.credits}")
        user = self._user(purchase.user_id)
        if self._purchased(purchase):
            self.finish(purchase.event_id, "completed", "already_credited")
            return CreditResult(applied=False, balance=user.credits_balance)
        refs = {"checkout_session_id": purchase.checkout_session_id}
        refs["payment_intent_id"] = purchase.payment_intent_id
        refs["invoice_id"] = purchase.invoice_id
        self._move(user.id, purchase.credits, "PURCHASE", purchase.event_id, **refs)
        self.finish(purchase.event_id, "completed")
        return CreditResult(applied=True, balance=user.credits_balance)

    async def credit_invoice(self, credit: InvoiceCredit) -> InvoiceCredited:
        if credit.expire:
            raise NotImplementedError("SUBSCRIPTION_CREDITS_EXPIRE is proven against Postgres")
        user = self._user(credit.user_id)
        repeat = any(
            row.event_id == credit.event_id
            or (row.transaction_type in PURCHASE_TYPES and row.invoice_id == credit.invoice_id)
            for row in self.ledger
        )
        if not repeat:
            refs = {"invoice_id": credit.invoice_id, "payment_intent_id": credit.payment_intent_id}
            self._move(user.id, credit.credits, "SUBSCRIPTION_CREDIT", credit.event_id, **refs)
        self.finish(credit.event_id, "completed", "already_credited" if repeat else None)
        return InvoiceCredited(not repeat, user.id, user.credits_balance)

    async def link_invoice_payment(self, invoice_id: str, payment_intent_id: str) -> str | None:
        for row in self.ledger:
            if row.transaction_type in PURCHASE_TYPES and row.invoice_id == invoice_id:
                row.payment_intent_id = row.payment_intent_id or payment_intent_id
                return row.payment_intent_id
        return None

    async def invoice_credited(self, invoice_id: str) -> bool:
        return any(
            row.transaction_type in PURCHASE_TYPES and row.invoice_id == invoice_id
            for row in self.ledger
        )

    async def invoice_payment_intent(self, invoice_id: str) -> str | None:
        for row in self.ledger:
            if row.transaction_type in PURCHASE_TYPES and row.invoice_id == invoice_id:
                return row.payment_intent_id
        return None

    async def apply_payment_change(
        self, event_id: str, family: Family, change: Change, description: str
    ) -> Applied | None:
        pi = change.payment_intent_id
        bought = [
            r
            for r in self.ledger
            if r.payment_intent_id == pi and r.transaction_type in PURCHASE_TYPES
        ]
        if not bought:
            return None
        user = self.users[bought[0].user_id]
        payment = self.payments.setdefault(pi, _Payment())
        advanced = _record(payment, change)
        plan = takebacks.settle(self._view(payment, bought, user), family, change, pi)
        if plan.kind is not None:
            if any(row.event_id == event_id for row in self.ledger):
                raise PermanentError(
                    f"event {event_id} already has a ledger row but moved payment {pi} "
                    "again; rolled back"
                )
            session = bought[0].checkout_session_id
            refs = {"payment_intent_id": pi, "checkout_session_id": session}
            self._move(user.id, plan.moved, plan.kind, event_id, **refs)
        if plan.delta:
            payment.taken, payment.shortfall = plan.target, plan.shortfall
        self.finish(event_id, "completed", None if advanced else "stale_event")
        return Applied(
            user.id, advanced, plan.kind, plan.moved, plan.added_shortfall, user.credits_balance
        )

    async def park(self, event_id: str, waiting_for: str, reason: str) -> None:
        event = self.events[event_id]
        event.status, event.reason, event.waiting_for = "waiting", reason, waiting_for

    # --- the constraints of the tables -----------------------------------------------------

    def _user(self, user_id: object) -> User:
        user = self.users.get(int(str(user_id)))
        if user is None:
            raise PermanentError(f"user {user_id} does not exist; nothing was credited")
        return user

    def _purchased(self, purchase: Purchase) -> bool:
        """The event, its checkout session or its payment intent already bought credits."""
        for row in self.ledger:
            if row.event_id == purchase.event_id:
                return True
            if (
                purchase.invoice_id
                and row.transaction_type in PURCHASE_TYPES
                and row.invoice_id == purchase.invoice_id
            ):
                return True
            if row.transaction_type != "PURCHASE":
                continue
            if (
                purchase.checkout_session_id
                and row.checkout_session_id == purchase.checkout_session_id
            ):
                return True
            if purchase.payment_intent_id and row.payment_intent_id == purchase.payment_intent_id:
                return True
        return False

    def _move(
        self, user_id: int, amount: int, kind: str, event_id: str, **refs: str | None
    ) -> None:
        """One ledger row and the balance it moves (credits_balance_nonneg, amount <> 0)."""
        user = self.users[user_id]
        if amount == 0 or user.credits_balance + amount < 0:
            raise PermanentError("a ledger row must move a balance that stays >= 0")
        user.credits_balance += amount
        self.ledger.append(LedgerRow(user_id, amount, user.credits_balance, kind, event_id, **refs))

    def _view(self, payment: _Payment, bought: list[LedgerRow], user: User) -> PaymentView:
        event = self.events.get(bought[0].event_id)
        obj = (event.payload.get("data") or {}).get("object") if event else None
        held = takebacks.HeldPayment(
            purchased=sum(r.amount for r in bought),
            purchase=obj if isinstance(obj, dict) else None,
            captured=payment.captured,
            refunded=payment.refunded,
            refunded_as_of=payment.refunded_as_of,
            legacy_taken=0,  # no refunds from before migration 0015 in memory
            taken=payment.taken,
            shortfall=payment.shortfall,
            failures=tuple(
                takebacks.HeldFailure(f.refund_id, f.amount, f.refund_created, f.failed_at)
                for f in payment.failures.values()
            ),
            disputes=tuple(d.amount for d in payment.disputes.values()),
            noted=tuple((refund_id, amount) for (_, refund_id), amount in payment.noted.items()),
        )
        return takebacks.payment_view(held, user.credits_balance)


def _matches(user: User, candidate: Candidate) -> bool:
    if candidate.kind == "integer":
        return user.id == int(candidate.value)
    if candidate.kind == "uuid":
        return user.uuid == candidate.value
    if candidate.kind == "email":
        return user.email is not None and user.email.lower() == candidate.value.lower()
    return False  # opaque ids match text keys only; this users table is integer-keyed


def _record(payment: _Payment, change: Change) -> bool:
    """The statements of worker.postgres_money_store._record on dictionaries; the rules are the same
    functions (takebacks.snapshot_is_newer, stage_moves)."""
    if isinstance(change, ChargeSnapshot):
        payment.captured = change.captured
        newer = takebacks.snapshot_is_newer(payment.refunded_as_of, payment.refunded, change)
        if newer:
            payment.refunded, payment.refunded_as_of = change.refunded, change.created
        return newer
    if isinstance(change, RefundFailure):
        if change.refund_id in payment.failures:
            return False
        payment.failures[change.refund_id] = change
        return True
    if isinstance(change, CreditNoteRefunds):
        new = {
            (change.credit_note_id, refund_id): amount
            for refund_id, amount in change.refunds
            if (change.credit_note_id, refund_id) not in payment.noted
        }
        payment.noted.update(new)
        return bool(new)
    held = payment.disputes.get(change.dispute_id)
    if not takebacks.stage_moves(None if held is None else held.stage, change):
        return False
    payment.disputes[change.dispute_id] = change
    return True


class _Directory:
    """`user_reference.UserDirectory` over the store's users."""

    def __init__(self, store: InMemoryMoneyStore) -> None:
        self._store = store

    async def match(self, candidate: Candidate) -> int | None:
        return await self._store.find_user(candidate)

    async def by_customer(self, customer: str) -> int | None:
        found = (u.id for u in self._store.users.values() if u.stripe_customer_id == customer)
        return next(found, None)

    async def create_by_email(self, email: str, tenant: str | None) -> tuple[int, bool] | None:
        return self._store.add_user(email).id, True

    async def remember_customer(self, user_id: object, customer: str) -> None:
        if any(u.stripe_customer_id == customer for u in self._store.users.values()):
            return  # held by a user already: it stays theirs
        user = self._store.users[int(str(user_id))]
        user.stripe_customer_id = user.stripe_customer_id or customer
