"""`MoneyStore` on Postgres: the worker's pool, with purchases, claims and first lookups
going through the coalesced statements of `batching.WorkerBatches`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from webhook_worker.db import store
from webhook_worker.db.host import UserId
from webhook_worker.worker import payments, resolver, subscriptions
from webhook_worker.worker.batching import WorkerBatches
from webhook_worker.worker.ledger import CreditResult, Purchase
from webhook_worker.worker.payments import Applied, Change, Family
from webhook_worker.worker.resolver import Candidate, Resolution
from webhook_worker.worker.subscriptions import InvoiceCredit, InvoiceCredited


class PostgresMoneyStore:
    """The service's `MoneyStore`; one per worker process."""

    def __init__(
        self, pool: store.Pool, batches: WorkerBatches, *, collect_shortfall: bool = False
    ) -> None:
        self._pool = pool
        self._batches = batches
        self._collect_shortfall = collect_shortfall  # SHORTFALL_POLICY=collect

    async def find_user(self, candidate: Candidate) -> UserId | None:
        return await self._batches.lookup(candidate)

    async def resolve_user(self, reference: Mapping[str, Any]) -> Resolution:
        async with store.acquire(self._pool, "resolving a user") as conn:
            return await resolver.resolve_user(conn, reference)

    async def credit_purchase(self, purchase: Purchase) -> CreditResult:
        result = await self._batches.credit(purchase)
        if not result.applied:  # rare: a repeat of a session or payment already credited
            async with store.acquire(self._pool, "recording a repeat purchase") as conn:
                await store.note_reason(conn, purchase.event_id, "already_credited")
        return result

    async def credit_invoice(self, credit: InvoiceCredit) -> InvoiceCredited:
        async with store.acquire(self._pool, "crediting an invoice") as conn:
            return await subscriptions.credit_invoice(
                conn, **asdict(credit), collect_shortfall=self._collect_shortfall
            )

    async def link_invoice_payment(self, invoice_id: str, payment_intent_id: str) -> str | None:
        async with store.acquire(self._pool, "linking an invoice's payment") as conn:
            return await subscriptions.link_payment(conn, invoice_id, payment_intent_id)

    async def invoice_payment_intent(self, invoice_id: str) -> str | None:
        async with store.acquire(self._pool, "finding an invoice's payment") as conn:
            return await subscriptions.invoice_payment_intent(conn, invoice_id)

    async def apply_payment_change(
        self, event_id: str, family: Family, change: Change, description: str
    ) -> Applied | None:
        async with store.acquire(self._pool, "applying a payment change") as conn:
            return await payments.apply(conn, event_id, family, change, description)

    async def park(self, event_id: str, waiting_for: str, reason: str) -> None:
        async with store.acquire(self._pool, "parking an event") as conn:
            await payments.wait_for(conn, event_id, waiting_for, reason)
