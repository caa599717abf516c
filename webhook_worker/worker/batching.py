"""The worker's coalesced statements: concurrent events share one claim, lookup and credit.

Under load a worker processes many events at once (the events of each
`process_stripe_events` job, up to `WORKER_MAX_EVENTS` at once). Claiming them, looking up their
users and crediting their purchases one statement per event costs a round trip (and a
commit) each, and on a hot user every credit waits for the previous one's commit under the
user's lock. Here the claims of one event-loop iteration become one
`claim_events` statement, the users' first lookups one `users_match`, and the credits
one `ledger_credit_many` call: one commit for the batch, the hot user's lock taken once.

Nothing about the semantics changes: each purchase is still its own ledger row, applied at
most once, and marked `completed` in the transaction that credits it. When a batch fails,
each of its callers retries its own item alone, concurrently: a bad purchase fails alone,
and a user whose lock is held elsewhere keeps only its own events waiting.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from webhook_worker import metrics
from webhook_worker.coalesce import Coalescer
from webhook_worker.db import store
from webhook_worker.db.host import UserId
from webhook_worker.errors import PermanentError, TransientError
from webhook_worker.money.ledger_rows import CreditResult, Purchase
from webhook_worker.worker import ledger, resolver

Row = dict[str, Any] | None
Item = TypeVar("Item")
Result = TypeVar("Result")

_CLAIM_TRIES = 3
# Two batches in flight per statement: one runs while the next one fills up.
_INFLIGHT = 2


def _interrupted() -> Exception:
    return TransientError("worker shutting down: batch interrupted")


async def claim_one(
    conn: store.Connection, event_id: str, *, lease_seconds: float = store.DEFAULT_LEASE_S
) -> Row:
    """Claim with a few quick tries: a connection blip should not cost a whole job retry."""
    return await _quick_retries(
        lambda: store.claim_event(conn, event_id, lease_seconds=lease_seconds)
    )


async def _quick_retries(claim: Callable[[], Awaitable[Result]]) -> Result:
    """Backoff 50 ms, then 100 ms; a plain loop, so the happy path costs one awaited statement."""
    for attempt in range(1, _CLAIM_TRIES + 1):
        try:
            return await claim()
        except TransientError:
            if attempt == _CLAIM_TRIES:
                raise
            await asyncio.sleep(min(0.05 * 2 ** (attempt - 1), 0.5))
    raise AssertionError("unreachable")  # pragma: no cover


One = Callable[[store.Connection, Item], Awaitable[Result]]
Many = Callable[[store.Connection, list[Item]], Awaitable[Sequence[Result]]]


class _Coalesced(Generic[Item, Result]):
    """One statement shape, called per item: `many` for a batch, `one` for a lone item.

    A batch that fails as a whole sends each caller back to run its own item alone, on its
    own connection, concurrently with the others.
    """

    def __init__(
        self,
        pool: store.Pool,
        statement: str,
        action: str,
        one: One[Item, Result],
        many: Many[Item, Result],
        *,
        max_batch: int,
        max_inflight: int,
        orphaned: Callable[[Item, Result], None] | None = None,
    ) -> None:
        self._pool = pool
        self._batch_size = metrics.WORKER_BATCH_SIZE.labels(statement)
        self._action = action
        self._one = one
        self._many = many
        self._coalescer: Coalescer[Item, Result] = Coalescer(
            self._batch,
            max_batch=max_batch,
            max_inflight=max_inflight,
            interrupted=_interrupted,
            run_one=self._alone,
            alone_on=(TransientError, PermanentError),
            orphaned=orphaned,
        )

    async def __call__(self, item: Item) -> Result:
        return await self._coalescer.submit(item)

    async def _alone(self, item: Item) -> Result:
        async with store.acquire(self._pool, self._action) as conn:
            return await self._one(conn, item)

    async def drain(self) -> None:
        await self._coalescer.drain()

    async def _batch(self, items: list[Item]) -> Sequence[Result]:
        self._batch_size.observe(len(items))
        async with store.acquire(self._pool, self._action) as conn:
            if len(items) == 1:
                return [await self._one(conn, items[0])]
            return await self._many(conn, items)


Claimed = dict[str, dict[str, Any]]


class _Claims:
    """The claim statements with this worker's lease (see `store.LEASE_MARGIN_S`). An item is
    the event ids of one job (a chunk of it), and its result the rows claimed for it: one
    future per job, not per event, and the jobs running at once still share one statement."""

    def __init__(self, lease_seconds: float) -> None:
        self.lease_seconds = lease_seconds

    async def one(self, conn: store.Connection, event_ids: tuple[str, ...]) -> Claimed:
        if len(event_ids) == 1:
            row = await claim_one(conn, event_ids[0], lease_seconds=self.lease_seconds)
            return {event_ids[0]: row} if row is not None else {}
        return await _quick_retries(
            lambda: store.claim_events(conn, event_ids, lease_seconds=self.lease_seconds)
        )

    async def many(self, conn: store.Connection, jobs: list[tuple[str, ...]]) -> list[Claimed]:
        rows = await store.claim_events(
            conn, [event_id for job in jobs for event_id in job], lease_seconds=self.lease_seconds
        )
        # An event two jobs carry (a duplicate enqueue) goes to the first of them only.
        return [
            {event_id: row for event_id in job if (row := rows.pop(event_id, None)) is not None}
            for job in jobs
        ]


class WorkerBatches:
    """The coalesced statements of one worker process, on its pool.

    `claim(event_ids)`: the rows claimed (`processing`, attempts + 1) by event id; an event
    missing is final, unknown, not yet due or held by a live job (`lease_seconds`).
    `lookup(candidate)`: the user id a resolver candidate matches, or None.
    `credit(purchase)`: credit once and mark the event completed, in the same commit.
    `max_batch` = 1 gives every event its own statements and transaction (no batching);
    then as many run at once as the worker runs events. `collect_shortfall`
    (SHORTFALL_POLICY=collect): each credit first pays the user's shortfall, in the same call.
    """

    def __init__(
        self,
        pool: store.Pool,
        *,
        max_batch: int = 256,
        max_events: int = 100,
        lease_seconds: float = store.DEFAULT_LEASE_S,
        collect_shortfall: bool = False,
    ) -> None:
        self._pool = pool
        claims = _Claims(lease_seconds)
        sizes: dict[str, Any] = {
            "max_batch": max_batch,
            "max_inflight": max(_INFLIGHT, -(-max_events // max(1, max_batch))),
        }
        self._releases: set[asyncio.Task[None]] = set()
        self.claim: _Coalesced[tuple[str, ...], Claimed] = _Coalesced(
            pool,
            "claim",
            "claiming events",
            claims.one,
            claims.many,
            orphaned=self._release_orphan,
            **sizes,
        )
        self.lookup: _Coalesced[resolver.Candidate, UserId | None] = _Coalesced(
            pool, "lookup", "looking up users", resolver.lookup_user, resolver.lookup_users, **sizes
        )
        self.credit: _Coalesced[Purchase, CreditResult] = _Coalesced(
            pool,
            "credit",
            "crediting purchases",
            functools.partial(ledger.credit_purchase, collect_shortfall=collect_shortfall),
            functools.partial(ledger.credit_purchases, collect_shortfall=collect_shortfall),
            **sizes,
        )

    def _release_orphan(self, _event_ids: tuple[str, ...], rows: Claimed) -> None:
        """A claim whose job was cancelled before it heard the answer (a shutdown, a Redis
        outage): give its events back at once rather than leave them held until their lease
        ends."""
        for event_id in rows:
            task = asyncio.get_running_loop().create_task(self._release(event_id))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)

    async def _release(self, event_id: str) -> None:
        try:
            async with store.acquire(self._pool, "releasing an event") as conn:
                await store.release_event(conn, event_id, "worker stopped during the claim")
        except (TransientError, PermanentError):
            pass  # left `processing`: its lease runs out and the sweeper takes it

    async def drain(self) -> None:
        if self._releases:
            await asyncio.wait(set(self._releases))
        await self.claim.drain()
        await self.lookup.drain()
        await self.credit.drain()
