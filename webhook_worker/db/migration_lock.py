"""The migration lock: one migration run at a time, safe through a transaction-mode pooler.

Each step of a run is its own transaction, which first takes a transaction-scoped advisory
lock (`pg_try_advisory_xact_lock`): nothing outlives the transaction, so no lock strands on
a pooled backend. The lock is polled, never waited for inside a statement: a waiting
statement would hold a snapshot that a concurrent `CREATE INDEX CONCURRENTLY` waits for (a
deadlock). A run that finds it taken says who holds it (pid, application_name, since when)
and gives up after `timeout` seconds (`MigrationLockTimeout`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from webhook_worker.db.queries import query
from webhook_worker.errors import MigrationLockTimeout
from webhook_worker.log import get_logger

log = get_logger("webhook_worker.migrations")

# Fixed advisory-lock key for migrations ("wwmigrat" as bytes); the ledger uses another space.
MIGRATION_LOCK_KEY = 0x77776D6967726174
DEFAULT_LOCK_TIMEOUT_S = 60.0
_LOCK_POLL_S = 0.25


@dataclass(frozen=True)
class LockHolder:
    pid: int
    application_name: str
    since: datetime | None
    state: str

    def describe(self) -> str:
        since = self.since.isoformat(timespec="seconds") if self.since else "an unknown time"
        name = self.application_name or "(no application_name)"
        return f"pid {self.pid} ({name}, {self.state or 'state hidden'}) since {since}"


async def lock_holder(conn: asyncpg.Connection) -> LockHolder | None:
    """Who holds the migration lock now (a run of this or an earlier version), if anyone."""
    row = await conn.fetchrow(query("migration_lock_holder"), MIGRATION_LOCK_KEY)
    if row is None:
        return None
    return LockHolder(
        pid=int(row["pid"]),
        application_name=str(row["application_name"] or ""),
        since=row["since"],
        state=str(row["state"] or ""),
    )


def report_wait(message: str) -> None:
    log.warning("migration_lock_waiting", holder=message)


@contextlib.asynccontextmanager
async def locked_transaction(
    conn: asyncpg.Connection,
    timeout: float = DEFAULT_LOCK_TIMEOUT_S,  # noqa: ASYNC109 - a polling deadline
    on_wait: Callable[[str], None] = report_wait,
) -> AsyncIterator[None]:
    """A transaction holding the migration lock (transaction-scoped), waiting at most
    `timeout` seconds for it. Each try is its own short transaction, rolled back when the
    lock is taken: a waiting run holds no transaction, which a concurrent `CREATE INDEX
    CONCURRENTLY` in the run holding the lock would otherwise wait for (a deadlock). While
    it waits, `on_wait` hears who holds it; then MigrationLockTimeout names the holder."""
    deadline = time.monotonic() + timeout
    told: list[LockHolder | None] = [None]
    while True:
        transaction = conn.transaction()
        await transaction.start()
        try:
            taken = await conn.fetchval(query("migration_try_lock"), MIGRATION_LOCK_KEY)
        except BaseException:
            await transaction.rollback()
            raise
        if taken:
            break
        await transaction.rollback()
        await _waited(conn, deadline, timeout, on_wait, told)
    try:
        yield
    except BaseException:
        await transaction.rollback()
        raise
    await transaction.commit()


async def _waited(
    conn: asyncpg.Connection,
    deadline: float,
    timeout: float,  # noqa: ASYNC109 - a polling deadline
    on_wait: Callable[[str], None],
    told: list[LockHolder | None],
) -> None:
    """One wait for the lock: name a new holder, give up past the deadline, else sleep."""
    holder = await lock_holder(conn)
    described = holder.describe() if holder else "a session this role cannot see"
    if time.monotonic() >= deadline:
        raise MigrationLockTimeout(
            f"gave up after {timeout:g}s waiting for the migration lock, held by {described}; "
            "let that run finish, or end it with SELECT pg_terminate_backend(<pid>) if it "
            "is stuck, then run again (MIGRATION_LOCK_TIMEOUT_SECONDS sets the wait)"
        )
    if holder != told[0]:
        on_wait(f"waiting for the migration lock, held by {described}")
        told[0] = holder
    await asyncio.sleep(_LOCK_POLL_S)


async def take_session_lock(
    conn: asyncpg.Connection,
    timeout: float,  # noqa: ASYNC109 - a polling deadline
    on_wait: Callable[[str], None],
) -> None:
    """Outside a transaction (a no-transaction migration): the session form of the lock."""
    deadline = time.monotonic() + timeout
    told: list[LockHolder | None] = [None]
    while not await conn.fetchval(query("migration_try_session_lock"), MIGRATION_LOCK_KEY):
        await _waited(conn, deadline, timeout, on_wait, told)


async def release_session_lock(conn: asyncpg.Connection) -> None:
    await conn.execute(query("migration_session_unlock"), MIGRATION_LOCK_KEY)
