"""The ledger rows the money rules decide to write, and what writing them did: plain data
that the money stores (Postgres in the service, memory in the unit tier) take and return."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from webhook_worker.money import UserId


@dataclass(frozen=True)
class Purchase:
    user_id: UserId
    credits: int
    event_id: str
    checkout_session_id: str | None  # None: a payment without Checkout (payment_intent.*)
    payment_intent_id: str | None
    description: str
    # A session's post-payment invoice (`invoice_creation`): that invoice's `invoice.paid` is
    # the same payment. Such purchases take `credit_invoiced_purchase`, off the batched path.
    invoice_id: str | None = None


@dataclass(frozen=True)
class CreditResult:
    applied: bool  # False: this event or this checkout session was already credited
    balance: int


@dataclass(frozen=True)
class InvoiceCredit:
    """One paid invoice's credit, as `credit_invoice` applies it."""

    user_id: UserId
    credits: int
    event_id: str
    invoice_id: str
    payment_intent_id: str | None  # before basil only; later linked by invoice_payment.paid
    description: str
    subscription: str | None = None
    invoice_created: datetime | None = None
    starts_period: bool = True  # False for an upgrade's proration invoice
    expire: bool = False  # SUBSCRIPTION_CREDITS_EXPIRE


@dataclass(frozen=True)
class InvoiceCredited:
    applied: bool  # False: this invoice (or this event) was already credited
    user_id: UserId
    balance: int
    expired: int = 0  # credits of earlier periods expired (SUBSCRIPTION_CREDITS_EXPIRE)
