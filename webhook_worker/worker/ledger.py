"""The credit ledger: every balance change, its ledger row and the event's `completed` mark
commit together in ONE transaction under the user's advisory lock.

`pg_advisory_xact_lock(LOCK_NAMESPACE, user key)` (the two-int form, a fixed namespace, no
`hashtext`) serialises all balance changes of one user, so `balance_after` is read and
written consistently. The ledger row's unique `event_id` and the one-PURCHASE-per-session
index make any repeat (duplicate delivery, replay, a second worker, a crash and re-run)
insert nothing, and then nothing else changes either. Money is `int` everywhere.

Purchases run as one server-side call (`ledger_credit`, migration 0005): one round trip and
one autocommit transaction, the lock held only inside the server. Refunds, refund failures,
disputes, credit notes and invoices, rare and with more logic, use an explicit transaction
(worker.postgres_money_store, worker.subscriptions) and write their rows with `apply_row`
(sql/queries/ledger.sql).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from webhook_worker.db import store
from webhook_worker.db.host import UserId
from webhook_worker.db.host import lock_key as lock_key  # re-exported: the user's int4 lock key
from webhook_worker.db.queries import query
from webhook_worker.db.store import Connection, translate_errors
from webhook_worker.errors import PermanentError
from webhook_worker.money.ledger_rows import CreditResult, Purchase

# "WWLG" as an int4: the ledger's advisory-lock space. Migrations use the one-bigint form,
# a different lock space altogether.
LOCK_NAMESPACE = 0x57574C47


# What ledger_credit raises when the balance moved outside the lock (the call rolls back).
BALANCE_MOVED_SQLSTATE = "WWL01"
# … and when the user does not exist (nothing is credited, the event is not marked).
NO_USER_SQLSTATE = "WWL02"


# How long a batch of credits waits for one user's lock before it gives up (and the worker
# credits that batch one purchase at a time): far above a batch's own commit time.
BATCH_LOCK_TIMEOUT_MS = 500


def _balance_moved(user_id: UserId) -> str:
    return f"balance of user {user_id} moved outside the ledger lock; rolled back"


async def lock_user(conn: Connection, user_id: UserId) -> None:
    """Take the user's transaction-scoped lock; call inside `conn.transaction()`.

    The key is computed by the server (`ledger_lock_key`), the function `ledger_credit`
    locks with, so refunds and credits of one user always share one lock.
    """
    with translate_errors("locking a user's balance"):
        await conn.execute(query("ledger_lock_user"), LOCK_NAMESPACE, user_id)


@dataclass(frozen=True)
class InvoiceColumns:
    """What a SUBSCRIPTION_CREDIT or EXPIRY row records of its invoice (migration 0016)."""

    invoice_id: str
    subscription_id: str | None = None
    invoice_created: datetime | None = None
    period_start: datetime | None = None  # set on the invoices that start a period


async def apply_row(
    conn: Connection,
    user_id: UserId,
    amount: int,
    kind: str,
    event_id: str | None,
    checkout_session_id: str | None,
    payment_intent_id: str | None,
    description: str,
    invoice: InvoiceColumns | None = None,
) -> int | None:
    """Insert one ledger row and move the balance (`ledger_apply`, the one statement every
    row outside `ledger_credit` goes through); None when the row already existed."""
    row = await conn.fetchrow(
        query("ledger_apply"),
        user_id,
        amount,
        kind,
        event_id,
        checkout_session_id,
        payment_intent_id,
        description,
        invoice.invoice_id if invoice else None,
        invoice.subscription_id if invoice else None,
        invoice.invoice_created if invoice else None,
        invoice.period_start if invoice else None,
    )
    if row is None:
        return None
    balance = row["credits_balance"]
    if balance != row["balance_after"]:  # someone changed the balance without the lock
        raise PermanentError(_balance_moved(user_id))
    return int(balance)


def _purchase_row(
    p: Purchase,
) -> tuple[UserId, int, str, str | None, str | None, str | None, str]:
    """A purchase's ledger columns, in the order of `ledger_credit` and `apply_row`."""
    return (
        p.user_id,
        p.credits,
        "PURCHASE",
        p.event_id,
        p.checkout_session_id,
        p.payment_intent_id,
        p.description,
    )


def _check_credits(purchase: Purchase) -> None:
    if purchase.credits <= 0:
        raise PermanentError(f"credits must be a positive integer, got {purchase.credits}")


async def credit_purchases(
    conn: Connection, purchases: Sequence[Purchase], *, collect_shortfall: bool = False
) -> list[CreditResult]:
    """`credit_purchase` for many purchases in one server-side call and one commit.

    The same semantics one by one (`ledger_credit_many`, migration 0006), results in the
    order given. Any error rolls back the whole call: callers that must isolate a bad
    purchase from its neighbours retry each one alone with `credit_purchase`.
    """
    for purchase in purchases:
        _check_credits(purchase)
    with translate_errors("crediting purchases"):
        rows = await conn.fetch(
            query("ledger_credit_many_collect" if collect_shortfall else "ledger_credit_many"),
            [p.user_id for p in purchases],
            [p.credits for p in purchases],
            ["PURCHASE"] * len(purchases),
            [p.event_id for p in purchases],
            [p.checkout_session_id for p in purchases],
            [p.payment_intent_id for p in purchases],
            [p.description for p in purchases],
            BATCH_LOCK_TIMEOUT_MS,
        )
    # One row per purchase; the same event twice in a batch gets applied=false the second time.
    by_event: dict[str, list[CreditResult]] = {}
    for row in rows:
        result = CreditResult(applied=bool(row["applied"]), balance=int(row["balance"]))
        by_event.setdefault(row["credited_event_id"], []).append(result)
    return [by_event[p.event_id].pop(0) for p in purchases]


async def credit_purchase(
    conn: Connection, purchase: Purchase, *, collect_shortfall: bool = False
) -> CreditResult:
    """Credit once and mark the event completed, in one transaction.

    One autocommit statement: the server-side `ledger_credit` takes the user's lock, inserts
    the ledger row, moves the balance and marks the event `completed` (inside a caller's
    transaction it becomes part of that one).
    """
    _check_credits(purchase)
    with translate_errors("crediting a purchase"):
        try:
            row = await conn.fetchrow(
                query("ledger_credit_collect" if collect_shortfall else "ledger_credit"),
                *_purchase_row(purchase),
            )
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == BALANCE_MOVED_SQLSTATE:
                raise PermanentError(_balance_moved(purchase.user_id)) from exc
            if exc.sqlstate == NO_USER_SQLSTATE:
                raise PermanentError(
                    f"user {purchase.user_id} does not exist; nothing was credited"
                ) from exc
            raise
    assert row is not None
    return CreditResult(applied=bool(row["applied"]), balance=int(row["balance"]))


async def credit_invoiced_purchase(
    conn: Connection, purchase: Purchase, *, collect_shortfall: bool = False
) -> CreditResult:
    """A PURCHASE that names its post-payment invoice, and the event's `completed` mark, in
    one transaction under the user's lock. The invoice's row is unique among PURCHASE and
    SUBSCRIPTION_CREDIT rows (migration 0020): whichever of the session and its
    `invoice.paid` comes second inserts nothing. With `collect_shortfall`
    (SHORTFALL_POLICY=collect) the user's shortfall is then paid, in the same transaction."""
    _check_credits(purchase)
    assert purchase.invoice_id is not None
    with translate_errors("crediting a purchase with its invoice"):
        async with conn.transaction():
            await lock_user(conn, purchase.user_id)
            exists = await conn.fetchval(query("ledger_user_balance"), purchase.user_id)
            if exists is None:
                raise PermanentError(
                    f"user {purchase.user_id} does not exist; nothing was credited"
                )
            credited = await apply_row(
                conn, *_purchase_row(purchase), InvoiceColumns(purchase.invoice_id)
            )
            if collect_shortfall and credited is not None:  # SHORTFALL_POLICY=collect
                credited -= await conn.fetchval(
                    query("credits_collect_shortfall"),
                    purchase.user_id,
                    f"shortfall collected from purchase {purchase.event_id}",
                )
            reason = None if credited is not None else "already_credited"
            await store.finish_event(conn, purchase.event_id, "completed", reason=reason)
    balance = int(exists) if credited is None else credited
    return CreditResult(applied=credited is not None, balance=balance)
