"""Recurring credits: a paid invoice's one ledger row, and the expiry of unspent periods
(what an invoice credits: webhook_worker.money.invoice_pricing).

`SUBSCRIPTION_CREDITS_EXPIRE=true` (plans that do not roll over): when a period's invoice
is credited, the unspent credits of the subscription's earlier periods expire, one `EXPIRY`
debit per earlier invoice (unique), never below zero. Credits are ordered by the invoice's
`created`; an upgrade's `subscription_update` invoice starts no period, its credits belong
to the period it falls in. Unspent = the period's credits minus what was spent since they
were credited (the fall of the balance not explained by other expiries), spending counting
against the period first, capped by the balance: one-off purchases never expire with a
period. An invoice that arrives after a later period's (out of order) expires at once.

The credit is ONE `SUBSCRIPTION_CREDIT` row per invoice (unique on `invoice_id`, migration
0016) written by the ledger's one row statement (`ledger.apply_row`) under the user's
advisory lock with the event's `completed` mark, in one transaction: a renewal is credited
once however often it is delivered, replayed or reconciled. Renewals are monthly per
subscription, far from the purchase hot path, so this takes an explicit transaction rather
than the coalesced `ledger_credit_many` call.

A credit note with a refund (`credit_note_refunds`) takes back the refunded share of its
invoice's credits through the payment state of the payment intent that paid the invoice
(worker.postgres_money_store), where `charge.refunded` of the same refund counts the same
money.
"""

from __future__ import annotations

from datetime import datetime

from webhook_worker.db import store
from webhook_worker.db.host import UserId
from webhook_worker.db.queries import query
from webhook_worker.db.store import Connection, translate_errors
from webhook_worker.errors import PermanentError
from webhook_worker.money.invoice_pricing import unspent
from webhook_worker.money.ledger_rows import InvoiceCredited
from webhook_worker.worker.ledger import InvoiceColumns, apply_row, lock_user

KIND = "SUBSCRIPTION_CREDIT"


async def expire_previous_periods(
    conn: Connection, user_id: UserId, subscription: str, description: str
) -> int:
    """SUBSCRIPTION_CREDITS_EXPIRE: EXPIRY debits for the unspent credits of the
    subscription's periods older than its newest credited one (inside the caller's
    transaction, under the user's lock). Returns the credits expired."""
    total = 0
    periods = await conn.fetch(query("subscription_periods_to_expire"), user_id, subscription)
    for period in periods:
        since = await conn.fetchrow(query("subscription_moves_since"), user_id, period["id"])
        balance = int(await conn.fetchval(query("ledger_user_balance"), user_id))
        assert since is not None
        left = unspent(
            int(period["amount"]),
            int(period["balance_after"]),
            int(since["added"]),
            int(since["expired"]),
            balance,
        )
        if left <= 0:
            continue  # all spent: nothing to expire (the amount of a row is never 0)
        moved = await apply_row(
            conn,
            user_id,
            -left,
            "EXPIRY",
            None,  # no event of its own: the renewal's event holds its SUBSCRIPTION_CREDIT
            None,
            None,
            f"expiry of {period['invoice_id']} ({description})",
            InvoiceColumns(period["invoice_id"], subscription),
        )
        if moved is None:
            continue  # this invoice's credits already expired
        total += left
    return total


async def credit_invoice(
    conn: Connection,
    *,
    user_id: UserId,
    credits: int,
    event_id: str,
    invoice_id: str,
    payment_intent_id: str | None,
    description: str,
    subscription: str | None = None,
    invoice_created: datetime | None = None,
    starts_period: bool = True,
    expire: bool = False,
    collect_shortfall: bool = False,
) -> InvoiceCredited:
    """One SUBSCRIPTION_CREDIT row for the invoice and the event's `completed` mark, in one
    transaction under the user's lock. A repeat inserts nothing and changes nothing. With
    `expire` (SUBSCRIPTION_CREDITS_EXPIRE), the unspent credits of the subscription's
    earlier periods expire in the same transaction. With `collect_shortfall`
    (SHORTFALL_POLICY=collect), the user's shortfall is then paid from the balance in the same
    transaction (`credits_collect_shortfall`, migration 0025)."""
    with translate_errors("crediting an invoice"):
        async with conn.transaction():
            await lock_user(conn, user_id)
            exists = await conn.fetchval(query("ledger_user_balance"), user_id)
            if exists is None:
                raise PermanentError(f"user {user_id} does not exist; nothing was credited")
            credited = await apply_row(
                conn,
                user_id,
                credits,
                KIND,
                event_id,
                None,
                payment_intent_id,
                description,
                InvoiceColumns(
                    invoice_id,
                    subscription,
                    invoice_created,
                    invoice_created if starts_period else None,
                ),
            )
            applied = credited is not None
            balance = int(exists) if credited is None else credited
            expired = 0
            if expire and applied and subscription is not None:
                expired = await expire_previous_periods(conn, user_id, subscription, description)
                balance -= expired
            if collect_shortfall and applied:
                balance -= await conn.fetchval(
                    query("credits_collect_shortfall"),
                    user_id,
                    f"shortfall collected from invoice {invoice_id}",
                )
            await store.finish_event(
                conn, event_id, "completed", reason=None if applied else "already_credited"
            )
    return InvoiceCredited(applied, user_id, balance, expired)


async def link_payment(conn: Connection, invoice_id: str, payment_intent_id: str) -> str | None:
    """The payment intent the invoice's credit row holds after linking `payment_intent_id`
    (basil's `invoice_payment.paid`); None when the invoice is not credited (yet)."""
    with translate_errors("linking an invoice's payment"):
        linked = await conn.fetchval(
            query("subscription_link_payment"), invoice_id, payment_intent_id
        )
    return None if linked is None else str(linked)


async def invoice_credited(conn: Connection, invoice_id: str) -> bool:
    """Whether the invoice is credited (its own row, or its Checkout Session's PURCHASE)."""
    with translate_errors("finding an invoice's credit"):
        return bool(await conn.fetchval(query("subscription_invoice_credited"), invoice_id))


async def invoice_payment_intent(conn: Connection, invoice_id: str) -> str | None:
    """The payment intent that paid a credited invoice; None when the invoice is not
    credited (yet) or, from basil on, not linked by `invoice_payment.paid` (yet)."""
    with translate_errors("finding an invoice's payment"):
        found = await conn.fetchval(query("subscription_invoice_payment_intent"), invoice_id)
    return None if found is None else str(found)
