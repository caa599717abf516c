"""Applying and rolling back the migrations of `sql/migrations/` (`webhook-worker migrate`,
`deploy_hotfix.py`), one at a time and each once, whatever else runs at the same time.

Every migration runs in its own transaction under the migration lock (`migration_lock`), and
re-reads what is applied once it holds it: two deploys at once apply each migration once,
and nothing outlives a transaction, so the runner is safe through PgBouncer's transaction
pooling (no session setting to lose between statements either: `migration_host`). The files
are parsed and checked by `migration_files`; a rollback that would drop or empty a table
holding rows refuses, naming the tables and their row counts (`DataLossRefused`,
`data_loss`), unless `drop_data` is given.

A file marked `-- migrate:no-transaction` runs outside a transaction, one statement at a
time: the way to `CREATE INDEX CONCURRENTLY`, which Postgres refuses inside a transaction
block, so a deploy on a large table never locks out the receiver's inserts. Such a file must
be safe to run again after a crash part-way (`DROP INDEX CONCURRENTLY IF EXISTS` before each
`CREATE INDEX CONCURRENTLY`); it is recorded once all its statements succeeded. With no
transaction to scope the advisory lock, its run holds the migration lease instead (a row
with an expiry, `migration_lock`), which every other run respects: such a file, too, is safe
through a transaction-mode pooler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import asyncpg

from webhook_worker.config import Settings
from webhook_worker.db import functions, host, privileges, store

# Re-exported (`X as X`): the CLI, deploy_hotfix.py and verify use the migration API from here.
from webhook_worker.db.data_loss import TableAtRisk as TableAtRisk
from webhook_worker.db.data_loss import data_at_risk as data_at_risk
from webhook_worker.db.data_loss import refusal as refusal
from webhook_worker.db.data_loss import rollback_targets
from webhook_worker.db.migration_files import Migration as Migration
from webhook_worker.db.migration_files import check_checksums, split_statements
from webhook_worker.db.migration_files import load_migrations as load_migrations
from webhook_worker.db.migration_host import (
    check_host,
    install_functions,
    prepare,
    refresh_functions,
    set_users_table,
    tenant_setting,
)
from webhook_worker.db.migration_lock import (
    DEFAULT_LOCK_TIMEOUT_S,
    leased,
    locked_transaction,
    report_wait,
)
from webhook_worker.db.queries import query
from webhook_worker.errors import DataLossRefused, MigrationError
from webhook_worker.identifier import DEFAULT_USERS_TABLE, TableName
from webhook_worker.log import get_logger

log = get_logger("webhook_worker.migrations")


@dataclass(frozen=True)
class MigrationStatus:
    version: int
    name: str
    applied: bool
    applied_at: str | None


async def connect_direct(settings: Settings) -> asyncpg.Connection:
    """The migration connection: DIRECT_DATABASE_URL (else DATABASE_URL), with the
    DB_STATEMENT_CACHE_SIZE of the services (0 behind a pooler that cannot keep them)."""
    return await asyncpg.connect(
        settings.require_direct_database(),
        timeout=10,
        statement_cache_size=settings.db_statement_cache_size,
        server_settings={"application_name": "webhook-worker migrate"},
    )


async def _applied(conn: asyncpg.Connection) -> dict[int, asyncpg.Record]:
    return {row["version"]: row for row in await conn.fetch(query("applied_migrations"))}


async def _applied_now(conn: asyncpg.Connection) -> dict[int, asyncpg.Record]:
    if not await conn.fetchval(query("schema_migrations_exists")):
        return {}
    return await _applied(conn)


async def migration_status(conn: asyncpg.Connection) -> list[MigrationStatus]:
    """Read-only (works with the runtime role's grants): before any migration, all pending."""
    applied = await _applied_now(conn)
    return [
        MigrationStatus(
            version=m.version,
            name=m.name,
            applied=m.version in applied,
            applied_at=str(applied[m.version]["applied_at"]) if m.version in applied else None,
        )
        for m in load_migrations()
    ]


async def pending_migrations(conn: asyncpg.Connection) -> list[Migration]:
    """What `migrate up` would apply; reads only (no table is created)."""
    applied = await _applied_now(conn)
    migrations = load_migrations()
    check_checksums(migrations, applied)
    return [m for m in migrations if m.version not in applied]


async def migrate_up(
    conn: asyncpg.Connection,
    to: int | None = None,
    *,
    tenant_column: str | None = None,
    users_table: TableName = DEFAULT_USERS_TABLE,
    version_column: str | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
    on_wait: Callable[[str], None] = report_wait,
) -> list[Migration]:
    """Apply pending migrations up to `to` (all by default); return what was applied.

    `tenant_column` is USERS_TENANT_COLUMN; without it a tenant column is detected from a
    unique constraint on (tenant, email). `users_table` is USERS_TABLE, `version_column`
    USERS_VERSION_COLUMN (without it an integer `version` or `lock_version` is detected).
    A no-transaction file runs under the migration lease.
    """
    migrations = load_migrations()
    async with locked_transaction(conn, lock_timeout, on_wait):
        applied = await _applied_now(conn)
        check_checksums(migrations, applied)
        shape: host.HostShape | None = None
        tenant = ""
        if any(m.version not in applied for m in migrations):
            shape = await check_host(
                conn, tenant_column, users_table=users_table, version_column=version_column
            )
            tenant = await tenant_setting(conn, shape)
            problems = await privileges.migration_role_problems(conn)
            if problems:
                raise MigrationError("nothing was changed: " + "; ".join(problems))
        await conn.execute(query("create_schema_migrations"))
    done: list[Migration] = []
    for migration in migrations:
        if migration.version in applied or (to is not None and migration.version > to):
            continue
        try:
            applied_now = await _run_part(
                conn,
                migration,
                down=False,
                setup=partial(prepare, conn, tenant, shape),
                record=partial(_record, conn, migration, shape),
                lock_timeout=lock_timeout,
                on_wait=on_wait,
            )
        except asyncpg.PostgresError as exc:
            outcome = "was rolled back" if migration.transactional else "stopped part-way"
            raise MigrationError(f"{migration.path.name} failed and {outcome}: {exc}") from exc
        if applied_now:
            done.append(migration)
    if to is None:
        async with locked_transaction(conn, lock_timeout, on_wait):
            await refresh_functions(conn, users_table, tenant_column, version_column)
    return done


async def _record(
    conn: asyncpg.Connection, migration: Migration, shape: host.HostShape | None
) -> None:
    """In the migration's transaction: its `-- migrate:functions` files, then its record."""
    files = functions.marked_files(migration.up)
    if shape is not None and files is not None:
        await install_functions(conn, shape, files)
    await conn.execute(
        query("record_migration"), migration.version, migration.name, migration.checksum
    )


async def _run_part(
    conn: asyncpg.Connection,
    migration: Migration,
    *,
    down: bool,
    setup: Callable[[], Awaitable[object]],
    record: Callable[[], Awaitable[object]],
    lock_timeout: float,
    on_wait: Callable[[str], None],
) -> bool:
    """One migration's up (or down) part, once; False when another run did it while this
    one waited. `setup` (the transaction-local settings) and `record` run in the part's
    transaction; a no-transaction part runs statement by statement under the migration
    lease, and they run in the transaction that ends it."""
    part = migration.down if down else migration.up
    if migration.transactional:
        async with locked_transaction(conn, lock_timeout, on_wait):
            if await conn.fetchval(query("migration_applied"), migration.version) != down:
                return False
            await setup()
            await conn.execute(part)
            await record()
        return True
    async with leased(conn, migration.label, lock_timeout, on_wait) as lease:
        if await conn.fetchval(query("migration_applied"), migration.version) != down:
            return False
        for statement in split_statements(part):
            await lease.run(conn, statement)
        async with locked_transaction(conn, lock_timeout, on_wait, ending=lease):
            await setup()
            await record()
    return True


async def up_with(
    conn: asyncpg.Connection,
    settings: Settings,
    to: int | None = None,
    *,
    on_wait: Callable[[str], None] = report_wait,
) -> list[Migration]:
    """`migrate_up` as configured (the host's users table, tenant and version columns, the
    lock wait), then SHORTFALL_POLICY recorded: what `migrate up` and the deploy both run."""
    applied = await migrate_up(
        conn,
        to,
        tenant_column=settings.users_tenant_column,
        users_table=settings.users_table,
        version_column=settings.users_version_column,
        lock_timeout=settings.migration_lock_timeout_seconds,
        on_wait=on_wait,
    )
    await store.record_shortfall_policy(conn, settings.shortfall_policy)
    return applied


async def down_with(
    conn: asyncpg.Connection,
    settings: Settings,
    to: int | None = None,
    *,
    drop_data: bool = False,
    on_wait: Callable[[str], None] = report_wait,
) -> list[Migration]:
    """`migrate_down` as configured: what `migrate down` and the deploy's rollback run."""
    return await migrate_down(
        conn,
        to,
        users_table=settings.users_table,
        drop_data=drop_data,
        lock_timeout=settings.migration_lock_timeout_seconds,
        on_wait=on_wait,
    )


async def migrate_down(
    conn: asyncpg.Connection,
    to: int | None = None,
    *,
    users_table: TableName = DEFAULT_USERS_TABLE,
    drop_data: bool = False,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
    on_wait: Callable[[str], None] = report_wait,
) -> list[Migration]:
    """Roll back the newest migration, or every migration above version `to`.

    Refuses (DataLossRefused, nothing changed) when a down part would drop or empty a table
    holding rows, unless `drop_data`.
    """
    migrations = load_migrations()
    async with locked_transaction(conn, lock_timeout, on_wait):
        shape = await host.inspect_host(conn, users_table=users_table)
        await conn.execute(query("create_schema_migrations"))
        applied = await _applied(conn)
        check_checksums(migrations, applied)
        targets = rollback_targets(migrations, applied, to)
        risks = await data_at_risk(conn, targets)
    if risks and not drop_data:
        raise DataLossRefused(refusal(risks))
    if risks:
        log.warning("rollback_dropping_data", tables=[r.describe() for r in risks])
    done: list[Migration] = []
    for migration in targets:
        if await _run_part(
            conn,
            migration,
            down=True,
            setup=partial(set_users_table, conn, shape),
            record=partial(conn.execute, query("forget_migration"), migration.version),
            lock_timeout=lock_timeout,
            on_wait=on_wait,
        ):
            done.append(migration)
    return done
