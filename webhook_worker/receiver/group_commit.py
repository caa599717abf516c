"""Group commit: the requests of one event-loop turn share one INSERT, one commit, one enqueue.

Requests that reach the store in the same event-loop tick (or while earlier batches are
still in flight) share one multi-row `INSERT … ON CONFLICT DO NOTHING`, one commit and one
Redis round trip. Each request waits for its own batch and gets its own duplicate flag; a
failed batch answers every request in it with 503. Redis only carries wake-ups: a failed
enqueue is counted and logged, and starts one recovery task per process that pings Redis
every half second and, once it answers, enqueues every event not yet processed
(`db.recovery`), so the events stored meanwhile wait seconds, not the sweeper's minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from arq.connections import ArqRedis
from redis.exceptions import RedisError

from webhook_worker import job_queue, metrics
from webhook_worker.coalesce import Coalescer
from webhook_worker.db import recovery, store
from webhook_worker.envelope import EnvelopeRow
from webhook_worker.errors import PermanentError, TransientError
from webhook_worker.log import get_logger

AfterCommitHook = Callable[[Sequence[str]], Awaitable[None]]

_MAX_BATCH = 512
_DB_TIMEOUT_SECONDS = 10.0
_ENQUEUE_TIMEOUT_SECONDS = 2.0
_RECOVERY_POLL_SECONDS = 0.5

log = get_logger("webhook_worker.receiver")


@dataclass
class _BatchResult:
    """Per event id: the duplicate flag; and the ids to enqueue."""

    duplicate: dict[str, bool] = field(default_factory=dict)
    to_enqueue: list[str] = field(default_factory=list)


class GroupCommitter:
    """Batches concurrent inserts into one statement and one commit, then one enqueue.

    The requests of one loop iteration share a batch (`coalesce.Coalescer`); at most
    `max_inflight` batches run at once (each holds one pooled connection), and while they
    are busy new rows queue up and form a larger next batch. Each request is answered only
    after its batch committed, with its own duplicate flag.
    """

    def __init__(
        self,
        pool: store.Pool,
        redis: ArqRedis,
        *,
        max_inflight: int,
        after_commit_hook: AfterCommitHook | None = None,
        lease_seconds: float = 35.0,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._hook = after_commit_hook
        self._lease_seconds = lease_seconds
        self._recovery: asyncio.Task[None] | None = None
        self._batches: Coalescer[EnvelopeRow, bool] = Coalescer(
            self._commit,
            max_batch=_MAX_BATCH,
            max_inflight=max_inflight,
            interrupted=lambda: TransientError("storing events: interrupted"),
            # One unstorable row must not fail its neighbours: each is then stored alone.
            run_one=self._commit_one,
            alone_on=(PermanentError,),
        )

    async def submit(self, row: EnvelopeRow) -> bool:
        """Store `row` durably and return whether its id was already stored.

        Raises TransientError/PermanentError when its batch could not be committed.
        """
        return await self._batches.submit(row)

    async def drain(self) -> None:
        """Wait for every queued and in-flight batch (on shutdown, before the pool closes)."""
        await self._batches.drain()
        if self._recovery is not None:  # what it had not enqueued, the sweeper will
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery

    async def _commit(self, rows: list[EnvelopeRow]) -> list[bool]:
        unique = _unique_rows(rows)
        metrics.INSERT_BATCH_SIZE.observe(len(unique))
        try:
            result = await self._insert(unique)
            if self._hook is not None:
                await self._hook([r.event_id for r in unique])
            await self._enqueue(result.to_enqueue)
        except Exception as exc:  # every waiting request must get an answer, whatever failed
            error = _as_store_error(exc)
            if error is exc:
                raise
            raise error from exc
        return _answers(rows, result)

    async def _commit_one(self, row: EnvelopeRow) -> bool:
        [duplicate] = await self._commit([row])
        return duplicate

    async def _insert(self, rows: list[EnvelopeRow]) -> _BatchResult:
        """One autocommitted INSERT: when it returns, the rows are durable."""
        result = _BatchResult()
        async with (
            asyncio.timeout(_DB_TIMEOUT_SECONDS),
            store.acquire(self._pool, "storing events") as conn,
        ):
            new_ids = await store.insert_events(conn, rows)
            duplicates = [r.event_id for r in rows if r.event_id not in new_ids]
            statuses = await store.event_statuses(conn, duplicates) if duplicates else {}
        for row in rows:
            result.duplicate[row.event_id] = row.event_id not in new_ids
        # A duplicate never processed yet is enqueued again; the worker's claim absorbs it.
        result.to_enqueue = [r.event_id for r in rows if r.event_id in new_ids] + [
            event_id for event_id in duplicates if statuses.get(event_id) == "received"
        ]
        return result

    async def _enqueue(self, event_ids: list[str]) -> None:
        if not event_ids:
            return
        try:
            async with asyncio.timeout(_ENQUEUE_TIMEOUT_SECONDS):
                await job_queue.enqueue_event_jobs(self._redis, event_ids)
        except (TransientError, TimeoutError) as exc:
            metrics.ENQUEUE_FAILURES.inc(len(event_ids))
            log.warning(
                "enqueue_failed",
                events=len(event_ids),
                error=type(exc).__name__,
                recovery="enqueued once Redis answers again",
            )
            if self._recovery is None or self._recovery.done():
                self._recovery = asyncio.create_task(self._recover())

    async def _recover(self) -> None:
        """Wait for Redis, then enqueue every unprocessed event (once; a later failure of an
        enqueue starts another)."""
        while True:
            await asyncio.sleep(_RECOVERY_POLL_SECONDS)
            try:
                async with asyncio.timeout(_ENQUEUE_TIMEOUT_SECONDS):
                    await self._redis.ping()
                enqueued = await recovery.enqueue_unfinished(
                    self._pool, self._redis, lease_seconds=self._lease_seconds
                )
            except (RedisError, OSError, TimeoutError, TransientError, PermanentError):
                continue
            log.info("unfinished_events_enqueued", trigger="redis_back", events=enqueued)
            return


def _unique_rows(rows: list[EnvelopeRow]) -> list[EnvelopeRow]:
    """One row per event id, sorted so concurrent batches take index locks in one order."""
    unique: dict[str, EnvelopeRow] = {}
    for row in rows:
        unique.setdefault(row.event_id, row)
    return [unique[event_id] for event_id in sorted(unique)]


def _answers(rows: list[EnvelopeRow], result: _BatchResult) -> list[bool]:
    """Each request's duplicate flag; within a batch only the first copy of a new id is new."""
    seen: set[str] = set()
    answers: list[bool] = []
    for row in rows:
        answers.append(result.duplicate[row.event_id] or row.event_id in seen)
        seen.add(row.event_id)
    return answers


def _as_store_error(exc: Exception) -> Exception:
    """Project errors pass through; anything else (a bug, a failing hook) becomes a logged 503."""
    if isinstance(exc, TransientError | PermanentError):
        return exc
    log.error("batch_failed", error=type(exc).__name__, exc_info=exc)
    wrapped = TransientError(f"storing events: {type(exc).__name__}")
    wrapped.__cause__ = exc
    return wrapped
