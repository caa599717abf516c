"""The worker's coalesced statements: concurrent jobs share one claim and one credit call.

Under load a worker runs up to `WORKER_MAX_JOBS` jobs at once. Claiming their events,
looking up their users and crediting their purchases one statement per job costs a round
trip (and a commit) each, and on a hot user every credit waits for the previous one's
commit under the user's lock. Here the claims of one event-loop iteration become one
`claim_events` statement, the users' first lookups one `users_lookup_many`, and the credits
one `ledger_credit_many` call: one commit for the batch, the hot user's lock taken once.

Nothing about the semantics changes: each purchase is still its own ledger row, applied at
most once, and marked `completed` in the transaction that credits it. When a batch fails,
each of its callers retries its own item alone, concurrently: a bad purchase fails alone,
and a user whose lock is held elsewhere keeps only its own jobs waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from webhook_worker import ledger, resolver, store
from webhook_worker.coalesce import Coalescer
from webhook_worker.errors import PermanentError, TransientError

Row = dict[str, Any] | None
Item = TypeVar("Item")
Result = TypeVar("Result")

_CLAIM_TRIES = 3
# Two batches in flight per statement: one runs while the next one fills up.
_INFLIGHT = 2


def _interrupted() -> Exception:
    return TransientError("worker shutting down: batch interrupted")


async def claim_one(conn: store.Connection, event_id: str) -> Row:
    """Claim with a few quick tries: a connection blip should not cost a whole job retry.

    Backoff 50 ms, then 100 ms; a plain loop, so the happy path costs one awaited statement.
    """
    for attempt in range(1, _CLAIM_TRIES + 1):
        try:
            return await store.claim_event(conn, event_id)
        except TransientError:
            if attempt == _CLAIM_TRIES:
                raise
            await asyncio.sleep(min(0.05 * 2 ** (attempt - 1), 0.5))
    raise AssertionError("unreachable")  # pragma: no cover


class _RetryAlone(Exception):
    """The batch failed as a whole: each caller runs its own item alone."""


class WorkerBatches:
    """The claim and credit coalescers of one worker process, on its pool."""

    def __init__(self, pool: store.Pool, *, max_batch: int = 256, max_jobs: int = 100) -> None:
        """`max_batch` = 1 gives every event its own statements and transaction (no batching);
        then as many run at once as the worker runs jobs."""
        self._pool = pool
        inflight = max(_INFLIGHT, -(-max_jobs // max(1, max_batch)))
        self._claims: Coalescer[str, Row] = Coalescer(
            self._claim_batch,
            max_batch=max_batch,
            max_inflight=inflight,
            interrupted=_interrupted,
        )
        self._lookups: Coalescer[resolver.Candidate, int | None] = Coalescer(
            self._lookup_batch,
            max_batch=max_batch,
            max_inflight=inflight,
            interrupted=_interrupted,
        )
        self._credits: Coalescer[ledger.Purchase, ledger.CreditResult] = Coalescer(
            self._credit_batch,
            max_batch=max_batch,
            max_inflight=inflight,
            interrupted=_interrupted,
        )

    async def claim(self, event_id: str) -> Row:
        """The claimed row (`processing`, attempts + 1), or None if final or unknown."""
        try:
            return await self._claims.submit(event_id)
        except _RetryAlone:
            return await self._alone(claim_one, event_id)

    async def credit(self, purchase: ledger.Purchase) -> ledger.CreditResult:
        """Credit once and mark the event completed, in the same commit."""
        try:
            return await self._credits.submit(purchase)
        except _RetryAlone:
            return await self._alone(ledger.credit_purchase, purchase)

    async def lookup(self, candidate: resolver.Candidate) -> int | None:
        """The user id a resolver candidate matches, or None."""
        try:
            return await self._lookups.submit(candidate)
        except _RetryAlone:
            return await self._alone(resolver.lookup_user, candidate)

    async def drain(self) -> None:
        await self._claims.drain()
        await self._lookups.drain()
        await self._credits.drain()

    async def _claim_batch(self, event_ids: list[str]) -> Sequence[Row | Exception]:
        try:
            async with store.acquire(self._pool, "claiming events") as conn:
                if len(event_ids) == 1:
                    return [await claim_one(conn, event_ids[0])]
                rows = await store.claim_events(conn, event_ids)
            return [rows.get(event_id) for event_id in event_ids]
        except (TransientError, PermanentError) as exc:
            if len(event_ids) == 1:
                raise
            raise _RetryAlone() from exc

    async def _lookup_batch(
        self, candidates: list[resolver.Candidate]
    ) -> Sequence[int | Exception | None]:
        try:
            async with store.acquire(self._pool, "looking up users") as conn:
                if len(candidates) == 1:
                    return [await resolver.lookup_user(conn, candidates[0])]
                return await resolver.lookup_users(conn, candidates)
        except (TransientError, PermanentError) as exc:
            if len(candidates) == 1:
                raise
            raise _RetryAlone() from exc

    async def _credit_batch(
        self, purchases: list[ledger.Purchase]
    ) -> Sequence[ledger.CreditResult | Exception]:
        try:
            async with store.acquire(self._pool, "crediting purchases") as conn:
                if len(purchases) == 1:
                    return [await ledger.credit_purchase(conn, purchases[0])]
                return await ledger.credit_purchases(conn, purchases)
        except (TransientError, PermanentError) as exc:
            if len(purchases) == 1:
                raise
            raise _RetryAlone() from exc

    async def _alone(
        self, call: Callable[[store.Connection, Item], Awaitable[Result]], item: Item
    ) -> Result:
        """One item of a failed batch, on its own connection."""
        async with store.acquire(self._pool, "retrying one item of a batch") as conn:
            return await call(conn, item)
