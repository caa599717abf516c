"""Postgres access for events: the pool, driver-error translation and the event statements.

Callers never see asyncpg exceptions: `translate_errors` turns connection loss, restarts,
serialization failures and deadlocks into `TransientError` and the rest into
`PermanentError`. Statements come from `sql/queries/` by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from webhook_worker.config import Settings
from webhook_worker.db.queries import bind_users_table, query
from webhook_worker.envelope import EnvelopeRow as EnvelopeRow
from webhook_worker.errors import PermanentError, TransientError
from webhook_worker.log import get_logger

_sql_log = get_logger("webhook_worker.sql")
_ECHO_CHARS = 500

Pool = asyncpg.Pool
# A plain connection or one lent by the pool: both run statements the same way.
Connection = asyncpg.Connection | PoolConnectionProxy

# `waiting`: cannot apply until another event arrives (a refund before its purchase).
EVENT_STATUSES = ("received", "processing", "waiting", "completed", "failed", "ignored")
FINAL_STATUSES = ("completed", "failed", "ignored")

_TRANSIENT: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.LockNotAvailableError,
    asyncpg.QueryCanceledError,
    # A statement sent on a pooled connection whose server just went away (a restart, a
    # failover) can meet asyncpg's protocol already "not connected": the connection is
    # lost, not the event bad. Retried like any connection fault (within MAX_TRIES).
    asyncpg.InternalClientError,
    ConnectionError,
    OSError,
    TimeoutError,
)


@contextlib.contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """Re-raise driver errors as the project's own; the message names the action only."""
    try:
        yield
    except (TransientError, PermanentError):
        raise
    except _TRANSIENT as exc:
        raise TransientError(f"{action}: {type(exc).__name__}: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise PermanentError(f"{action}: {type(exc).__name__}: {exc}") from exc


def _connection_setup(echo: bool) -> Callable[[asyncpg.Connection], Coroutine[Any, Any, None]]:
    async def init(conn: asyncpg.Connection) -> None:
        # jsonb arrives and leaves as text; the callers decide when to parse (orjson).
        await conn.set_type_codec("jsonb", encoder=str, decoder=str, schema="pg_catalog")
        if echo:
            conn.add_query_logger(log_statement)

    return init


def log_statement(record: Any) -> None:
    """DB_ECHO: each statement and its duration at debug level; never its arguments, which
    carry emails and payloads (asyncpg's `LoggedQuery`)."""
    if not logging.getLogger("webhook_worker.sql").isEnabledFor(logging.DEBUG):
        return
    _sql_log.debug(
        "sql",
        statement=" ".join(str(record.query).split())[:_ECHO_CHARS],
        duration_ms=round(float(record.elapsed) * 1000, 3),
        failed=type(record.exception).__name__ if record.exception else None,
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's default reset query (unlock-all, CLOSE ALL, UNLISTEN, RESET).

    asyncpg still rolls back any open transaction first. Nothing else needs resetting: we take
    only transaction-scoped advisory locks, set no session settings, keep no cursors and never
    LISTEN. Skipping it saves one round trip on every release, on the hot paths of both the
    receiver and the worker.
    """


async def create_pool(
    settings: Settings, *, min_size: int | None = None, max_size: int | None = None
) -> Pool:
    """A connection pool, retried briefly so a Postgres restart at boot is not fatal.

    Also names the host's users table (USERS_TABLE) in the process's statements, once."""
    dsn = settings.require_database()
    bind_users_table(settings.users_table)
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(_TRANSIENT),
        stop=stop_after_attempt(5),
        wait=wait_exponential(multiplier=0.2, max=2),
        reraise=True,
    ):
        with attempt, translate_errors("connecting to Postgres"):
            pool: Pool = await asyncpg.create_pool(
                dsn,
                min_size=settings.db_pool_min if min_size is None else min_size,
                max_size=settings.db_pool_max if max_size is None else max_size,
                init=_connection_setup(settings.db_echo),
                reset=_keep_session,
                # 0 behind PgBouncer in transaction mode (no named prepared statements).
                statement_cache_size=settings.db_statement_cache_size,
                command_timeout=30,
                timeout=5,
            )
            return pool
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.asynccontextmanager
async def acquire(pool: Pool, action: str) -> AsyncIterator[Connection]:
    """A pooled connection whose driver errors come out translated."""
    with translate_errors(action):
        async with pool.acquire() as conn:
            yield conn


async def ping(pool: Pool, within: float = 2.0) -> bool:
    try:
        async with asyncio.timeout(within), acquire(pool, "ping") as conn:
            await conn.fetchval("SELECT 1")
        return True
    except (TransientError, PermanentError, TimeoutError):
        return False


async def insert_events(conn: Connection, rows: Sequence[EnvelopeRow]) -> set[str]:
    """Insert many events in one statement; return the ids that were new (not duplicates)."""
    with translate_errors("storing events"):
        inserted = await conn.fetch(
            query("insert_events"),
            [r.event_id for r in rows],
            [r.type for r in rows],
            [r.livemode for r in rows],
            [r.api_version for r in rows],
            [r.account for r in rows],
            [r.stripe_created_at for r in rows],
            [r.raw_json for r in rows],
        )
    return {record["event_id"] for record in inserted}


async def event_statuses(conn: Connection, event_ids: Sequence[str]) -> dict[str, str]:
    with translate_errors("reading event statuses"):
        rows = await conn.fetch(query("event_statuses"), list(event_ids))
    return {row["event_id"]: row["processing_status"] for row in rows}


async def get_event(conn: Connection, event_id: str) -> dict[str, Any] | None:
    with translate_errors("reading an event"):
        row = await conn.fetchrow(query("get_event"), event_id)
    return dict(row) if row else None


# How long a `processing` event belongs to the job that claimed it, beyond which another
# job may claim it (its worker died). The worker passes its job timeout + LEASE_MARGIN_S:
# longer than a live job can hold it, shorter than arq's in-progress key (timeout + 10 s),
# so the job arq runs again after a SIGKILL finds the event free.
LEASE_MARGIN_S = 5
DEFAULT_LEASE_S = 30 + LEASE_MARGIN_S


async def claim_event(
    conn: Connection, event_id: str, *, lease_seconds: float = DEFAULT_LEASE_S
) -> dict[str, Any] | None:
    """Mark a due `received` event, or one whose lease ran out, `processing`; count the try.

    Returns None otherwise (final, unknown, not yet due, or held by a live job), so a
    duplicate job is a no-op.
    """
    with translate_errors("claiming an event"):
        row = await conn.fetchrow(query("claim_event"), event_id, lease_seconds)
    return dict(row) if row else None


async def claim_events(
    conn: Connection, event_ids: Sequence[str], *, lease_seconds: float = DEFAULT_LEASE_S
) -> dict[str, dict[str, Any]]:
    """`claim_event` for many events in one statement: the claimed rows by event id.

    An id missing from the result was not claimed, as when `claim_event` returns None.
    """
    with translate_errors("claiming events"):
        rows = await conn.fetch(query("claim_events"), sorted(set(event_ids)), lease_seconds)
    return {row["event_id"]: dict(row) for row in rows}


async def finish_event(
    conn: Connection,
    event_id: str,
    status: str,
    error_message: str | None = None,
    *,
    reason: str | None = None,
) -> None:
    """The final status, its error (for `failed`) and why (`status_reason`, for `ignored`)."""
    assert status in EVENT_STATUSES
    with translate_errors("recording an event outcome"):
        await conn.execute(query("finish_event"), event_id, status, error_message, reason)


async def note_reason(conn: Connection, event_id: str, reason: str) -> None:
    """Why a final event changed nothing (`already_credited`), when the statement that
    finished it could not say so (the ledger's server-side credit call)."""
    with translate_errors("recording an event's reason"):
        await conn.execute(query("note_event_reason"), event_id, reason)


async def release_event(
    conn: Connection, event_id: str, error_message: str, *, delay_seconds: float = 0
) -> None:
    """Back to `received` after a transient fault, due again in `delay_seconds`."""
    with translate_errors("releasing an event"):
        await conn.execute(query("release_event"), event_id, error_message, delay_seconds)


async def take_stale_events(
    conn: Connection, stale_after_seconds: int, limit: int, *, lease_seconds: float
) -> list[str]:
    """Ids of events left `received` (since due) or stuck `processing` (past the lease too)
    for longer than `stale_after_seconds`, set `received` and touched (see the query)."""
    with translate_errors("finding stale events"):
        rows = await conn.fetch(
            query("take_stale_events"), stale_after_seconds, lease_seconds, limit
        )
    return sorted(row["event_id"] for row in rows)


PRUNE_CHUNK = 1000


async def prune_events(
    conn: Connection, older_than_days: int, *, dry_run: bool = False, chunk: int = PRUNE_CHUNK
) -> int:
    """Drop the raw payload of old completed/ignored events; ids, status and ledger stay.

    In chunks of `chunk` rows, each its own autocommit transaction, oldest first.
    """
    with translate_errors("pruning events"):
        if dry_run:
            return int(await conn.fetchval(query("count_prunable_events"), older_than_days) or 0)
        total = 0
        cursor = datetime.min.replace(tzinfo=UTC)
        while True:
            row = await conn.fetchrow(query("prune_events"), older_than_days, cursor, chunk)
            assert row is not None  # an aggregate: always one row
            pruned = int(row["pruned"])
            total += pruned
            if pruned < chunk:
                return total
            cursor = row["last_received_at"]


async def event_backlog_counts(conn: Connection) -> dict[str, int]:
    """Events `received`, `processing` and `failed`, for the worker's gauges."""
    with translate_errors("counting the backlog"):
        rows = await conn.fetch(query("event_backlog_counts"))
    return {row["status"]: int(row["events"]) for row in rows}


async def record_shortfall_policy(conn: Connection, policy: str) -> None:
    """SHORTFALL_POLICY where the spending functions read it (credits_settings, migration
    0025); written by `migrate` and at worker start, only when it changed. Before 0025 is
    applied there is nowhere to write it, and nothing reads it."""
    with translate_errors("recording SHORTFALL_POLICY"):
        if await conn.fetchval("SELECT to_regclass('credits_settings') IS NOT NULL"):
            await conn.execute(query("credits_set_policy"), policy)
