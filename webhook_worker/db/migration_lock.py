"""The migration lock: one migration run at a time, and safe through a transaction-mode pooler
(PgBouncer), because nothing is held by a database session.

Each step of a run is its own transaction, which first takes a transaction-scoped advisory
lock (`pg_try_advisory_xact_lock`). A no-transaction migration (`CREATE INDEX CONCURRENTLY`)
has no transaction to scope a lock, so its run holds the migration lease instead: the row
'migrate' of `reconcile_lease` (0030's table of named leases, which every no-transaction
file comes after), with an expiry. It is taken in a short transaction holding the advisory
lock, renewed before each statement, and deleted in the transaction that records the
migration. Each of its statements carries the lease's token in a leading comment: a long
statement is its own heartbeat (`pg_stat_activity` shows it running), so a concurrent build
needs no second connection to keep the lease. Every other step, once it holds the advisory
lock, waits while another run's lease is live; a lease whose holder died (expired, no
statement of it running) is taken over.

The lock is polled, never waited for inside a statement: a waiting statement would hold a
snapshot that a concurrent `CREATE INDEX CONCURRENTLY` waits for (a deadlock). A run that
finds it taken says who holds it (pid, application_name, since when) and gives up after
`timeout` seconds (`MigrationLockTimeout`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from asyncpg.transaction import Transaction

from webhook_worker.db.queries import query
from webhook_worker.errors import MigrationError, MigrationLockTimeout
from webhook_worker.log import get_logger

log = get_logger("webhook_worker.migrations")

# Fixed advisory-lock key for migrations ("wwmigrat" as bytes); the ledger uses another space.
MIGRATION_LOCK_KEY = 0x77776D6967726174
DEFAULT_LOCK_TIMEOUT_S = 60.0
LEASE_TABLE = "reconcile_lease"
LEASE_NAME = "migrate"
# How long a lease outlives its holder's last renewal when no statement of it runs.
LEASE_SECONDS = 30.0
_LOCK_POLL_S = 0.25
_NOT_IN_TOKEN = re.compile(r"[^A-Za-z0-9.-]")
_LOCK_REMEDY = (
    "let that run finish, or end it with SELECT pg_terminate_backend(<pid>) if it is stuck, "
    "then run again"
)


def _iso(when: datetime | None) -> str:
    return when.isoformat(timespec="seconds") if when else "an unknown time"


@dataclass(frozen=True)
class LockHolder:
    """A session holding the advisory lock: a run in one of its transactions, or an earlier
    version's session lock."""

    pid: int
    application_name: str
    since: datetime | None
    state: str

    @property
    def key(self) -> tuple[object, ...]:
        return (self.pid, self.application_name, self.since, self.state)

    def describe(self) -> str:
        name = self.application_name or "(no application_name)"
        return f"pid {self.pid} ({name}, {self.state or 'state hidden'}) since {_iso(self.since)}"

    def remedy(self) -> str:
        return _LOCK_REMEDY


@dataclass(frozen=True)
class LeaseHolder:
    """A run holding the lease: `holder` is "<host:pid:random> <migration> <application_name>";
    `backend_pid` is the backend running its statement, if one runs now."""

    holder: str
    since: datetime
    expires_at: datetime
    backend_pid: int | None
    running_since: datetime | None

    @property
    def token(self) -> str:
        return self.holder.split(" ", 1)[0]

    @property
    def key(self) -> tuple[object, ...]:
        return (self.holder, self.backend_pid)

    def describe(self) -> str:
        token, _, rest = self.holder.partition(" ")
        migration, _, name = rest.partition(" ")
        host, _, rest = token.partition(":")
        pid = rest.partition(":")[0]
        if self.backend_pid is not None:
            doing = f"statement running on backend pid {self.backend_pid}"
            doing += f" since {_iso(self.running_since)}"
        else:
            doing = f"lease expires {_iso(self.expires_at)}"
        name = name or "(no application_name)"
        return (
            f"pid {pid} on {host} ({name}, lease for {migration}, {doing}) since {_iso(self.since)}"
        )

    def remedy(self) -> str:
        if self.backend_pid is not None:
            return (
                "let that run finish, or end its statement with SELECT pg_cancel_backend"
                f"({self.backend_pid}) if it is stuck (the file runs again from its start), "
                "then run again"
            )
        return (
            f"let that run finish; if it died, its lease lapses at {_iso(self.expires_at)} and "
            "the next run takes it over"
        )


async def lock_holder(conn: asyncpg.Connection) -> LockHolder | None:
    """Who holds the advisory lock now (a run of this or an earlier version), if anyone."""
    row = await conn.fetchrow(query("migration_lock_holder"), MIGRATION_LOCK_KEY)
    if row is None:
        return None
    return LockHolder(
        pid=int(row["pid"]),
        application_name=str(row["application_name"] or ""),
        since=row["since"],
        state=str(row["state"] or ""),
    )


async def lease_holder(conn: asyncpg.Connection) -> LeaseHolder | None:
    """The run holding a live lease now, if any (none before 0030 created the table)."""
    if not await conn.fetchval(query("table_exists"), LEASE_TABLE):
        return None
    row = await conn.fetchrow(query("migration_lease_holder"), LEASE_NAME)
    if row is None:
        return None
    return LeaseHolder(
        holder=str(row["holder"]),
        since=row["acquired_at"],
        expires_at=row["expires_at"],
        backend_pid=row["backend_pid"],
        running_since=row["query_start"],
    )


def report_wait(message: str) -> None:
    log.warning("migration_lock_waiting", holder=message)


@dataclass(frozen=True)
class Lease:
    """This run's lease, while it runs one no-transaction migration."""

    token: str
    migration: str
    seconds: float

    async def run(self, conn: asyncpg.Connection, statement: str) -> None:
        """Renew the lease, then run `statement` outside a transaction, tagged with the token:
        while it runs, however long, other runs see the lease is alive."""
        renewed = await conn.fetchval(
            query("migration_renew_lease"), LEASE_NAME, self.token, self.seconds
        )
        if renewed is None:
            raise MigrationError(self.lost(await lease_holder(conn)))
        # The token has only [A-Za-z0-9.:-] (_new_token): the comment cannot end early.
        await conn.execute(f"/* migration lease {self.token} */ {statement}")

    def lost(self, holder: LeaseHolder | None) -> str:
        now = holder.describe() if holder else "no run now"
        return (
            f"{self.migration} stopped: its migration lease expired and another run took it "
            f"over (held by {now}), which runs the file again from its start"
        )


def _new_token() -> str:
    """Host, pid and a random part (pids repeat across hosts and restarts)."""
    host = _NOT_IN_TOKEN.sub("_", socket.gethostname())
    return f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class _Wait:
    """One wait for the lock: a deadline, and the holder last named to `on_wait`."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        timeout: float,
        on_wait: Callable[[str], None],
    ) -> None:
        self.conn = conn
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.on_wait = on_wait
        self.told: tuple[object, ...] | None = None
        self.ending: Lease | None = None

    async def locked(self, ending: Lease | None = None) -> Transaction:
        """A started transaction holding the advisory lock while no other run holds a live
        lease. Each try is its own short transaction, rolled back when the lock is taken: a
        waiting run holds no transaction a concurrent build would wait for."""
        self.ending = ending
        while True:
            transaction = self.conn.transaction()
            await transaction.start()
            try:
                free = await self._try(ending)
            except BaseException:
                await transaction.rollback()
                raise
            if free:
                return transaction
            await transaction.rollback()
            await self.waited()

    async def _try(self, ending: Lease | None) -> bool:
        if not await self.conn.fetchval(query("migration_try_lock"), MIGRATION_LOCK_KEY):
            return False
        if ending is None:
            return await lease_holder(self.conn) is None
        # The transaction that records the migration also ends its lease.
        if await self.conn.fetchval(query("migration_end_lease"), LEASE_NAME, ending.token):
            return True
        raise MigrationError(ending.lost(await lease_holder(self.conn)))

    async def waited(self) -> None:
        """Name a new holder, give up past the deadline, else sleep one poll. A live lease
        is named first: the runs holding the advisory lock meanwhile are waiting for it."""
        lease = await lease_holder(self.conn)
        if lease is not None and self.ending is not None and lease.token == self.ending.token:
            lease = None  # this run's own, which it is about to end
        holder = lease or await lock_holder(self.conn)
        described = holder.describe() if holder else "a session this role cannot see"
        if time.monotonic() >= self.deadline:
            remedy = holder.remedy() if holder else _LOCK_REMEDY
            raise MigrationLockTimeout(
                f"gave up after {self.timeout:g}s waiting for the migration lock, held by "
                f"{described}; {remedy} (MIGRATION_LOCK_TIMEOUT_SECONDS sets the wait)"
            )
        key = holder.key if holder else None
        if key != self.told:
            self.on_wait(f"waiting for the migration lock, held by {described}")
            self.told = key
        await asyncio.sleep(_LOCK_POLL_S)


@contextlib.asynccontextmanager
async def locked_transaction(
    conn: asyncpg.Connection,
    timeout: float = DEFAULT_LOCK_TIMEOUT_S,  # noqa: ASYNC109 - a polling deadline
    on_wait: Callable[[str], None] = report_wait,
    *,
    ending: Lease | None = None,
) -> AsyncIterator[None]:
    """A transaction holding the migration lock, waiting at most `timeout` seconds for it
    (and for another run's live lease); `on_wait` hears who holds it, then
    MigrationLockTimeout names the holder. With `ending`, this run's own lease is deleted in
    the transaction (MigrationError if another run took it over)."""
    transaction = await _Wait(conn, timeout, on_wait).locked(ending)
    try:
        yield
    except BaseException:
        await transaction.rollback()
        raise
    await transaction.commit()


@contextlib.asynccontextmanager
async def leased(
    conn: asyncpg.Connection,
    migration: str,
    timeout: float = DEFAULT_LOCK_TIMEOUT_S,  # noqa: ASYNC109 - a polling deadline
    on_wait: Callable[[str], None] = report_wait,
) -> AsyncIterator[Lease]:
    """The migration lease, held while `migration` runs outside a transaction. The caller
    ends it with `locked_transaction(..., ending=lease)` where it records the migration; a
    run that stops before drops it, so the next run need not wait for it to expire."""
    wait = _Wait(conn, timeout, on_wait)
    lease = Lease(_new_token(), migration, LEASE_SECONDS)
    while True:
        transaction = await wait.locked()
        try:
            if not await conn.fetchval(query("table_exists"), LEASE_TABLE):
                raise MigrationError(
                    f"{migration} runs outside a transaction under the migration lease, a row "
                    f"of {LEASE_TABLE}, which 0030 creates: number it after 0030"
                )
            taken = await conn.fetchval(
                query("migration_take_lease"),
                LEASE_NAME,
                f"{lease.token} {migration}",
                lease.seconds,
            )
        except BaseException:
            await transaction.rollback()
            raise
        await transaction.commit()
        if taken is not None:
            break
        await wait.waited()  # its holder renewed it meanwhile
    try:
        yield lease
    finally:
        try:
            await conn.execute(query("migration_end_lease"), LEASE_NAME, lease.token)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning("migration_lease_kept", token=lease.token, error=str(exc))
