"""Spending: the application's side of the ledger, in Python (docs/spending.md).

A thin, typed layer over the SQL functions of migration 0025 (`credits_spend`,
`credits_grant`, `credits_adjust`, `credits_hold`, `credits_settle`, `credits_release`),
which take the same per-user advisory lock as the worker. Pass an asyncpg pool or
connection; inside your own `conn.transaction()` a call becomes part of that transaction
(and the user's lock is held until it ends).

    from webhook_worker import credits

    result = await credits.spend(pool, user_id, 5, idempotency_key=f"render:{job_id}")
    # result.status == "spent" | "duplicate"; InsufficientCredits when the balance is short

`spend`, `adjust` and `hold` raise `InsufficientCredits` (with the balance at that moment)
instead of returning `insufficient`; nothing was written then. A key reused with another
amount or kind raises `IdempotencyKeyReused`; settling a hold that was released (or
releasing a settled one) raises `HoldClosed`; an unknown user raises `UnknownUser`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from webhook_worker.db.host import UserId, user_key
from webhook_worker.db.queries import query
from webhook_worker.errors import WebhookWorkerError

Executor = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy

Status = Literal[
    "spent",
    "granted",
    "adjusted",
    "held",
    "settled",
    "released",
    "duplicate",
    "insufficient",
    "unknown_hold",
]

# SQLSTATEs raised by the functions of migration 0025.
KEY_REUSED_SQLSTATE = "WWS01"
HOLD_CLOSED_SQLSTATE = "WWS02"
NO_USER_SQLSTATE = "WWL02"


class CreditsError(WebhookWorkerError):
    """A credits call was refused; nothing was written."""


class InsufficientCredits(CreditsError):
    """The balance is too small for this debit; nothing was written."""

    def __init__(self, user_id: UserId, amount: int, balance: int) -> None:
        super().__init__(
            f"user {user_id} has {balance} credits, fewer than the {amount} asked; "
            "nothing was written"
        )
        self.user_id = user_id
        self.amount = amount
        self.balance = balance


class IdempotencyKeyReused(CreditsError):
    """This idempotency key was already used for another amount or kind."""


class HoldClosed(CreditsError):
    """The hold was already settled, released or expired another way."""


class UnknownUser(CreditsError):
    """No such user."""


class InvalidArgument(CreditsError):
    """An amount, key, reason or interval is out of range."""


@dataclass(frozen=True)
class Result:
    """One call's answer: `balance` after it, `transaction_id` the ledger row it wrote (or
    the original one for `duplicate`; None when nothing was written)."""

    status: Status
    balance: int
    transaction_id: int | None


@dataclass(frozen=True)
class Transaction:
    id: int
    amount: int
    balance_after: int
    transaction_type: str
    idempotency_key: str | None
    event_id: str | None
    payment_intent_id: str | None
    description: str | None
    created_at: datetime


@dataclass(frozen=True)
class Hold:
    idempotency_key: str
    amount: int
    expires_at: datetime
    created_at: datetime
    hold_transaction_id: int


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except asyncpg.PostgresError as exc:
        message = getattr(exc, "message", None) or str(exc)
        if exc.sqlstate == KEY_REUSED_SQLSTATE:
            raise IdempotencyKeyReused(message) from exc
        if exc.sqlstate == HOLD_CLOSED_SQLSTATE:
            raise HoldClosed(message) from exc
        if exc.sqlstate == NO_USER_SQLSTATE:
            raise UnknownUser(message) from exc
        if exc.sqlstate in ("22023", "22004"):
            raise InvalidArgument(message) from exc
        raise


@contextlib.asynccontextmanager
async def _connection(db: Executor) -> AsyncIterator[asyncpg.Connection | PoolConnectionProxy]:
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db


async def _call(db: Executor, name: str, *args: object) -> Result:
    async with _connection(db) as conn:
        with _translated():
            row = await conn.fetchrow(query(name), *args)
    assert row is not None  # each function returns exactly one row
    tid = row["transaction_id"]
    return Result(
        status=row["status"],
        balance=int(row["balance"]),
        transaction_id=None if tid is None else int(tid),
    )


def _raise_if_short(result: Result, user_id: UserId, amount: int) -> Result:
    if result.status == "insufficient":
        raise InsufficientCredits(user_id, amount, result.balance)
    return result


async def spend(
    db: Executor,
    user_id: UserId,
    amount: int,
    *,
    idempotency_key: str,
    description: str | None = None,
) -> Result:
    """Take `amount` (> 0) credits: a USAGE row. `spent` or `duplicate` (this key already
    spent this amount: the original row, nothing written); `InsufficientCredits` otherwise."""
    result = await _call(db, "credits_spend", user_id, amount, idempotency_key, description)
    return _raise_if_short(result, user_id, amount)


async def grant(
    db: Executor, user_id: UserId, amount: int, *, idempotency_key: str, reason: str
) -> Result:
    """Give `amount` (> 0) credits: a BONUS row. `granted` or `duplicate`. Under
    SHORTFALL_POLICY=collect the grant first pays the user's outstanding shortfall."""
    return await _call(db, "credits_grant", user_id, amount, idempotency_key, reason)


async def adjust(
    db: Executor, user_id: UserId, amount: int, *, idempotency_key: str, reason: str
) -> Result:
    """Move the balance by `amount` (either sign, not 0): an ADJUSTMENT row with its reason.
    `adjusted` or `duplicate`; `InsufficientCredits` when it would go below zero."""
    result = await _call(db, "credits_adjust", user_id, amount, idempotency_key, reason)
    return _raise_if_short(result, user_id, -amount)


async def hold(
    db: Executor,
    user_id: UserId,
    amount: int,
    *,
    idempotency_key: str,
    expires_in: timedelta,
) -> Result:
    """Take `amount` now for a cost known later: a HOLD row. `held` or `duplicate`;
    `InsufficientCredits` otherwise. Settle or release it with the same key; the worker
    releases it once `expires_in` has passed."""
    result = await _call(db, "credits_hold", user_id, amount, idempotency_key, expires_in)
    return _raise_if_short(result, user_id, amount)


async def settle(db: Executor, user_id: UserId, *, idempotency_key: str, actual: int) -> Result:
    """Keep `actual` (0 ≤ actual ≤ held) of a hold and give the rest back (a HOLD_RELEASE row
    when there is a rest). `settled`, `duplicate` or `unknown_hold`."""
    return await _call(db, "credits_settle", user_id, idempotency_key, actual)


async def release(db: Executor, user_id: UserId, *, idempotency_key: str) -> Result:
    """Give a hold back whole (a HOLD_RELEASE row). `released`, `duplicate` (already
    released, by a call or by expiry) or `unknown_hold`."""
    return await _call(db, "credits_release", user_id, idempotency_key)


async def balance(db: Executor, user_id: UserId) -> int:
    """The user's balance now (holds already taken out); `UnknownUser` if there is none."""
    async with _connection(db) as conn:
        value = await conn.fetchval(query("credits_balance"), user_id)
    if value is None:
        raise UnknownUser(f"user {user_id} does not exist")
    return int(value)


async def history(
    db: Executor, user_id: UserId, *, limit: int = 50, before: int | None = None
) -> list[Transaction]:
    """The user's ledger rows, newest first; `before` a transaction id for the next page."""
    async with _connection(db) as conn:
        rows = await conn.fetch(query("credits_history"), user_id, limit, before)
    return [
        Transaction(
            id=int(row["id"]),
            amount=int(row["amount"]),
            balance_after=int(row["balance_after"]),
            transaction_type=row["transaction_type"],
            idempotency_key=row["idempotency_key"],
            event_id=row["event_id"],
            payment_intent_id=row["payment_intent_id"],
            description=row["description"],
            created_at=row["created_at"],
        )
        for row in rows
    ]


async def open_holds(db: Executor, user_id: UserId) -> list[Hold]:
    """The user's holds not yet settled, released or expired, soonest expiry first."""
    async with _connection(db) as conn:
        rows = await conn.fetch(query("credits_open_holds"), user_id)
    return [
        Hold(
            idempotency_key=row["idempotency_key"],
            amount=int(row["amount"]),
            expires_at=row["expires_at"],
            created_at=row["created_at"],
            hold_transaction_id=int(row["hold_transaction_id"]),
        )
        for row in rows
    ]


__all__ = [
    "CreditsError",
    "Executor",
    "Hold",
    "HoldClosed",
    "IdempotencyKeyReused",
    "InsufficientCredits",
    "InvalidArgument",
    "Result",
    "Status",
    "Transaction",
    "UnknownUser",
    "adjust",
    "balance",
    "grant",
    "history",
    "hold",
    "open_holds",
    "release",
    "settle",
    "spend",
    "user_key",
]
