"""The seam between the money rules and storage: everything a handler may ask of a store.

Handlers decide (which user, how many credits, what a refund takes back); a `MoneyStore`
keeps users, the ledger and each payment's state, and applies every change exactly once,
marking the event `completed` with it. Two implementations:
- `PostgresMoneyStore` (worker/postgres_money_store.py): the service, on the pool and the
  worker's coalesced statements;
- `InMemoryMoneyStore` (webhook_worker/testing.py, test support, not used by the service):
  the unit tier, no service at all.
`tests/money_cases.py` runs one table of cases through both.

The rules are written once, in webhook_worker.money, outside any store:
`user_reference.resolve` (who paid), `checkout_pricing.credits_for` /
`invoice_pricing.invoice_credits` (how many credits) and `takebacks.settle` (what a refund
or a dispute takes back). Stores return facts (rows, states, balances), never decisions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from webhook_worker.money import UserId
from webhook_worker.money.ledger_rows import CreditResult, InvoiceCredit, InvoiceCredited, Purchase
from webhook_worker.money.takebacks import Applied, Change, Family
from webhook_worker.money.user_reference import Candidate, Resolution

__all__ = [
    "Applied",
    "Candidate",
    "Change",
    "CreditResult",
    "Family",
    "InvoiceCredit",
    "InvoiceCredited",
    "MoneyStore",
    "Purchase",
    "Resolution",
    "UserId",
]


class MoneyStore(Protocol):
    """Users, the ledger and payment state, as the handlers see them."""

    async def find_user(self, candidate: Candidate) -> UserId | None:
        """The user one resolver candidate matches (the common case, coalesced)."""
        ...

    async def resolve_user(self, reference: Mapping[str, Any]) -> Resolution:
        """`resolver.resolve` on this store: may create the user by email and remember the
        Stripe customer; raises `resolver.UserNotFound`."""
        ...

    async def credit_purchase(self, purchase: Purchase) -> CreditResult:
        """One PURCHASE row, once per event, checkout session and payment intent."""
        ...

    async def credit_invoice(self, credit: InvoiceCredit) -> InvoiceCredited:
        """One SUBSCRIPTION_CREDIT row per invoice (and expiry, when asked)."""
        ...

    async def link_invoice_payment(self, invoice_id: str, payment_intent_id: str) -> str | None:
        """The payment intent the invoice's credit holds after linking; None: not credited."""
        ...

    async def invoice_credited(self, invoice_id: str) -> bool:
        """Whether the invoice is credited already (by its own row or, for a Checkout
        Session's post-payment invoice, by the session's PURCHASE)."""
        ...

    async def invoice_payment_intent(self, invoice_id: str) -> str | None:
        """The payment intent that paid a credited invoice; None: not credited, or (basil)
        not linked by `invoice_payment.paid` yet."""
        ...

    async def apply_payment_change(
        self, event_id: str, family: Family, change: Change, description: str
    ) -> Applied | None:
        """Record a refund / refund failure / dispute / credit note change and settle the ledger
        (`takebacks.settle`); None when the payment's purchase is not in the ledger."""
        ...

    async def park(self, event_id: str, waiting_for: str, reason: str) -> None:
        """The event waits (no try spent) until `waiting_for` exists."""
        ...
