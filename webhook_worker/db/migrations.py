"""Plain-SQL migrations from `sql/migrations/NNNN_name.sql`, each with an up and a down part.

Every migration runs in its own transaction, which first takes a transaction-scoped
advisory lock (`pg_try_advisory_xact_lock`) and re-reads what is applied: two deploys at
once apply each migration once, and nothing outlives a transaction, so the runner is safe
through PgBouncer's transaction pooling (no session lock to strand on a pooled backend, no
session setting to lose between statements). A run that finds the lock taken says who holds
it (pid, application_name, since when) and gives up after `lock_timeout` seconds
(`MigrationLockTimeout`). A changed checksum of an applied file is refused, because the
database no longer matches what the file says. A rollback that would drop or empty a table
holding rows refuses, naming the tables and their row counts (`DataLossRefused`), unless
`drop_data` is given.

A file whose first lines carry `-- migrate:no-transaction` runs outside a transaction, one
statement at a time (each ends with `;` at the end of a line; no dollar-quoted bodies): the
way to `CREATE INDEX CONCURRENTLY`, which Postgres refuses inside a transaction block, so a
deploy on a large table never locks out the receiver's inserts. Such a file must be safe to
run again after a crash part-way (`DROP INDEX CONCURRENTLY IF EXISTS` before each
`CREATE INDEX CONCURRENTLY`); it is recorded once all its statements succeeded. With no
transaction to scope a lock, such a file runs under the session form of the same lock
(polled, never waited for inside a statement: a waiting statement holds a snapshot that
CREATE INDEX CONCURRENTLY would wait for), released right after it: run those through a
direct connection (`DIRECT_DATABASE_URL`), not a transaction-mode pooler.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from webhook_worker.config import Settings
from webhook_worker.db import functions, host, privileges
from webhook_worker.db.queries import query, sql_dir
from webhook_worker.errors import DataLossRefused, MigrationError, MigrationLockTimeout
from webhook_worker.identifier import DEFAULT_USERS_TABLE, TableName
from webhook_worker.log import get_logger

log = get_logger("webhook_worker.migrations")

# Fixed advisory-lock key for migrations ("wwmigrat" as bytes); the ledger uses another space.
MIGRATION_LOCK_KEY = 0x77776D6967726174
# Files edited after release, with the checksums of their earlier text, which deployments
# applied and which stay accepted (issue 13, host key types). On every host where the earlier
# text applied (an integer users.id) the edited text builds the same ledger: 0003 and 0004
# still create BIGINT user_id there and only take uuid/text on hosts where the earlier text
# failed; 0001 additionally records what it adds to a host's users (its down then removes
# exactly that) and skips the global email index on multi-tenant hosts. Installs made with
# the earlier 0001 have no such record: its down keeps their columns, as it always did.
# Issue 34 (USERS_TABLE) edited 0001, 0003, 0004 and 0008 again: on a table named `users`
# they build what their issue-13 text built (the table name now comes from the runner, and
# 0008 installs its functions from sql/functions/, the same bodies), so that text is
# accepted too.
EARLIER_CHECKSUMS: dict[int, frozenset[str]] = {
    1: frozenset(
        {
            "073791c9a4158ca79a8a24aaf2d38368a3e41ab3b5bac90ae697667dbd6b2fd6",
            "e037c5d06cc6861efde9b42e4d158e25f74856ded73677a9d19e38df463bee82",
        }
    ),
    3: frozenset(
        {
            "4c6cf8162a21d69b9c93b979d75f7f18988f5f896656754362928356c34e6376",
            "2dab4ef5f2a8f014692f5d79229d2541b2ee06cbb9f4c6761202a42a84ac9a19",
        }
    ),
    4: frozenset(
        {
            "dbfa172e71d15d05504f95520f8bb530fc6751c3961461ac2695da3c4118e3e2",
            "ed168f476a06222fd1cadf361648524265a77c5daaa9396e0177797f9e9bf718",
        }
    ),
    8: frozenset({"feafee1dc247a50402377d6f9e17b5a0c9abf22294bd78d03fe3e567569bc187"}),
    # 0025 as issue 27 landed it (a table named users only).
    25: frozenset({"9823a31ac5550651b1aa5557b2e2c54bf46992961e7a6d2e16d2cd3af3e67ec6"}),
}
DEFAULT_LOCK_TIMEOUT_S = 60.0
_LOCK_POLL_S = 0.25
# Bookkeeping tables a rollback may drop with their rows: nothing of value is in them.
# Bookkeeping, or derived from other tables (stripe_event_search: 0051 rebuilds it from
# stripe_events): dropping their rows loses nothing.
_DISPOSABLE_TABLES = frozenset(
    {
        "users_host_shape",
        "schema_migrations",
        "reconcile_lease",
        "credits_settings",
        "stripe_event_search",
    }
)
_DROPS_ROWS = re.compile(
    r"\b(?:DROP\s+TABLE(?:\s+IF\s+EXISTS)?|TRUNCATE(?:\s+TABLE)?|DELETE\s+FROM)\s+"
    r"((?:ONLY\s+)?[A-Za-z_][A-Za-z0-9_.]*(?:\s*,\s*[A-Za-z_][A-Za-z0-9_.]*)*)",
    re.IGNORECASE,
)
_NO_TRANSACTION = re.compile(r"^--\s*migrate:no-transaction\s*$", re.MULTILINE)
_STATEMENT_END = re.compile(r";[ \t]*$", re.MULTILINE)
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_UP = re.compile(r"^--\s*migrate:up\s*$", re.MULTILINE)
_DOWN = re.compile(r"^--\s*migrate:down\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up: str
    down: str
    checksum: str
    path: Path
    transactional: bool = True


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


@dataclass(frozen=True)
class TableAtRisk:
    table: str
    rows: int
    migration: str

    def describe(self) -> str:
        return f"{self.table} ({self.rows} rows, dropped by {self.migration} down)"


@dataclass(frozen=True)
class MigrationStatus:
    version: int
    name: str
    applied: bool
    applied_at: str | None


def load_migrations(folder: Path | None = None) -> list[Migration]:
    folder = folder or sql_dir() / "migrations"
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        text = path.read_text()
        up_match, down_match = _UP.search(text), _DOWN.search(text)
        if not up_match or not down_match or down_match.start() < up_match.end():
            raise MigrationError(f"{path.name}: needs '-- migrate:up' then '-- migrate:down'")
        migrations.append(
            Migration(
                version=int(match.group(1)),
                name=match.group(2),
                up=text[up_match.end() : down_match.start()].strip(),
                down=text[down_match.end() :].strip(),
                checksum=hashlib.sha256(text.encode()).hexdigest(),
                path=path,
                transactional=_NO_TRANSACTION.search(text[: up_match.start()]) is None,
            )
        )
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return migrations


def split_statements(sql: str) -> list[str]:
    """The statements of a no-transaction part: each ends with `;` at the end of a line."""
    parts = [part.strip() for part in _STATEMENT_END.split(sql)]
    return [part for part in parts if part and not _only_comments(part)]


def _only_comments(part: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in part.splitlines())


async def _run_part(conn: asyncpg.Connection, migration: Migration, sql: str) -> None:
    """One part (up or down): in the caller's transaction, or statement by statement."""
    if migration.transactional:
        await conn.execute(sql)
        return
    for statement in split_statements(sql):
        await conn.execute(statement)


async def connect_direct(settings: Settings) -> asyncpg.Connection:
    """The migration connection: DIRECT_DATABASE_URL (else DATABASE_URL), with the
    DB_STATEMENT_CACHE_SIZE of the services (0 behind a pooler that cannot keep them)."""
    return await asyncpg.connect(
        settings.require_direct_database(),
        timeout=10,
        statement_cache_size=settings.db_statement_cache_size,
        server_settings={"application_name": "webhook-worker migrate"},
    )


async def _ensure_table(conn: asyncpg.Connection) -> None:
    await conn.execute(query("create_schema_migrations"))


async def _applied(conn: asyncpg.Connection) -> dict[int, asyncpg.Record]:
    return {row["version"]: row for row in await conn.fetch(query("applied_migrations"))}


def _check_checksums(migrations: list[Migration], applied: dict[int, asyncpg.Record]) -> None:
    by_version = {m.version: m for m in migrations}
    for version, row in applied.items():
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(
                f"migration {version:04d}_{row['name']} is applied but its file is missing; "
                "restore the file before migrating"
            )
        accepted = {migration.checksum} | EARLIER_CHECKSUMS.get(version, frozenset())
        if row["checksum"] not in accepted:
            raise MigrationError(
                f"{migration.path.name} changed after it was applied (checksum mismatch); "
                "applied migrations are immutable: revert the edit and add a new migration"
            )


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
    exists = await conn.fetchval(query("schema_migrations_exists"))
    applied = await _applied(conn) if exists else {}
    migrations = load_migrations()
    _check_checksums(migrations, applied)
    return [m for m in migrations if m.version not in applied]


async def check_host(
    conn: asyncpg.Connection,
    tenant_column: str | None,
    *,
    users_table: TableName = DEFAULT_USERS_TABLE,
    version_column: str | None = None,
) -> host.HostShape:
    """Refuse a host users table the service cannot support (or would shadow), before
    anything is changed."""
    shape, problems = await host.inspect_configured(
        conn, users_table, tenant_column, version_column
    )
    if problems:
        raise MigrationError("nothing was changed: " + "; ".join(problems))
    return shape


async def _tenant_setting(conn: asyncpg.Connection, shape: host.HostShape) -> str:
    """The tenant column the migrations read (the recorded one once there is); '' for none."""
    recorded = await host.recorded_shape(conn)
    tenant = recorded["tenant_column"] if recorded else shape.tenant_column
    return str(tenant or "")


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


def _report_wait(message: str) -> None:
    log.warning("migration_lock_waiting", holder=message)


@contextlib.asynccontextmanager
async def locked_transaction(
    conn: asyncpg.Connection,
    timeout: float = DEFAULT_LOCK_TIMEOUT_S,  # noqa: ASYNC109 - a polling deadline
    on_wait: Callable[[str], None] = _report_wait,
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


async def _take_session_lock(
    conn: asyncpg.Connection,
    timeout: float,  # noqa: ASYNC109 - a polling deadline
    on_wait: Callable[[str], None],
) -> None:
    """Outside a transaction (a no-transaction migration): the session form of the lock."""
    await _poll_lock(conn, "migration_try_session_lock", timeout, on_wait)


async def _poll_lock(
    conn: asyncpg.Connection,
    statement: str,
    timeout: float,  # noqa: ASYNC109 - a polling deadline
    on_wait: Callable[[str], None],
) -> None:
    deadline = time.monotonic() + timeout
    told: list[LockHolder | None] = [None]
    while not await conn.fetchval(query(statement), MIGRATION_LOCK_KEY):
        await _waited(conn, deadline, timeout, on_wait, told)


async def _applied_now(conn: asyncpg.Connection) -> dict[int, asyncpg.Record]:
    if not await conn.fetchval(query("schema_migrations_exists")):
        return {}
    return await _applied(conn)


async def _set_users_table(conn: asyncpg.Connection, shape: host.HostShape) -> None:
    """Name the users table for the migration of the current transaction."""
    kind = "view" if shape.kind == "view" else "table"
    await conn.execute(
        query("host_set_users_table"),
        shape.table.schema or "",
        shape.table.name,
        kind,
        shape.version_column or "",
    )


async def install_functions(
    conn: asyncpg.Connection, shape: host.HostShape, files: list[str] | None = None
) -> list[functions.Function]:
    """Render sql/functions/ for the host as it is now (inside the migration's transaction,
    after its up part) and record what they were built on."""
    now = await host.inspect_host(
        conn,
        shape.tenant_override,
        users_table=shape.table,
        version_override=shape.version_override,
    )
    recorded = await host.recorded_shape(conn) or {}
    tenant = recorded.get("tenant_column") or now.tenant_column
    family = now.key_family
    if family is None:
        raise MigrationError(f"{now.table}.id has a key type the ledger functions cannot take")
    tenant_type = next((c.type for c in now.columns if c.name == tenant), None)
    installed = await functions.install(
        conn,
        functions.FunctionShape(
            key_family=family,
            users=now.table,
            version_column=now.version_column,
            tenant_column=tenant,
            tenant_type=tenant_type,
        ),
        files,
    )
    await conn.execute(
        query("host_record_functions"),
        now.table.sql,
        "view" if now.kind == "view" else "table",
        now.version_column or "",
    )
    return installed


async def migrate_up(
    conn: asyncpg.Connection,
    to: int | None = None,
    *,
    tenant_column: str | None = None,
    users_table: TableName = DEFAULT_USERS_TABLE,
    version_column: str | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
    on_wait: Callable[[str], None] = _report_wait,
) -> list[Migration]:
    """Apply pending migrations up to `to` (all by default); return what was applied.

    `tenant_column` is USERS_TENANT_COLUMN; without it a tenant column is detected from a
    unique constraint on (tenant, email). `users_table` is USERS_TABLE, `version_column`
    USERS_VERSION_COLUMN (without it an integer `version` or `lock_version` is detected).
    A no-transaction file runs under the session form of the lock (run it through a direct
    connection).
    """
    migrations = load_migrations()
    async with locked_transaction(conn, lock_timeout, on_wait):
        applied = await _applied_now(conn)
        _check_checksums(migrations, applied)
        shape: host.HostShape | None = None
        tenant = ""
        if any(m.version not in applied for m in migrations):
            shape = await check_host(
                conn, tenant_column, users_table=users_table, version_column=version_column
            )
            tenant = await _tenant_setting(conn, shape)
            problems = await privileges.migration_role_problems(conn)
            if problems:
                raise MigrationError("nothing was changed: " + "; ".join(problems))
        await _ensure_table(conn)
    done: list[Migration] = []
    for migration in migrations:
        if migration.version in applied or (to is not None and migration.version > to):
            continue
        try:
            if migration.transactional:
                applied_now = await _apply_in_transaction(
                    conn, migration, tenant, shape, lock_timeout, on_wait
                )
            else:
                applied_now = await _apply_outside_transaction(
                    conn, migration, tenant, shape, lock_timeout, on_wait
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


async def _prepare(conn: asyncpg.Connection, tenant: str, shape: host.HostShape | None) -> None:
    """Transaction-local settings the migration of this transaction reads (0001, 0008 the
    tenant column; 0001/0003/0004/0008/0035 the users table): nothing outlives it."""
    await conn.execute(query("host_set_tenant_column"), tenant)
    if shape is not None:
        await _set_users_table(conn, shape)


async def _finish(
    conn: asyncpg.Connection, migration: Migration, shape: host.HostShape | None
) -> None:
    """In the migration's transaction: its `-- migrate:functions` files, then its record."""
    files = functions.marked_files(migration.up)
    if shape is not None and files is not None:
        await install_functions(conn, shape, files)
    await conn.execute(
        query("record_migration"), migration.version, migration.name, migration.checksum
    )


async def _apply_in_transaction(
    conn: asyncpg.Connection,
    migration: Migration,
    tenant: str,
    shape: host.HostShape | None,
    lock_timeout: float,
    on_wait: Callable[[str], None],
) -> bool:
    async with locked_transaction(conn, lock_timeout, on_wait):
        if await conn.fetchval(query("migration_applied"), migration.version):
            return False  # another run applied it while this one waited
        await _prepare(conn, tenant, shape)
        await _run_part(conn, migration, migration.up)
        await _finish(conn, migration, shape)
    return True


async def _apply_outside_transaction(
    conn: asyncpg.Connection,
    migration: Migration,
    tenant: str,
    shape: host.HostShape | None,
    lock_timeout: float,
    on_wait: Callable[[str], None],
) -> bool:
    await _take_session_lock(conn, lock_timeout, on_wait)
    try:
        if await conn.fetchval(query("migration_applied"), migration.version):
            return False  # another run applied it while this one waited
        await _run_part(conn, migration, migration.up)
        async with conn.transaction():
            await _prepare(conn, tenant, shape)
            await _finish(conn, migration, shape)
        return True
    finally:
        await conn.execute(query("migration_session_unlock"), MIGRATION_LOCK_KEY)


async def refresh_functions(
    conn: asyncpg.Connection,
    users_table: TableName,
    tenant_column: str | None,
    version_column: str | None,
) -> bool:
    """Re-install sql/functions/ when the installed ones no longer fit the host as it is now
    (a version column added or renamed since, a function edited by hand), like a repeatable
    migration; True when it did. Never re-points them to another table: `verify` reports
    that, since the ledger's foreign key names the table it was installed on."""
    recorded = await host.recorded_shape(conn)
    if not recorded or recorded.get("users_table") is None:
        return False  # 0035 not applied: its own marker installs them
    shape, problems = await host.inspect_configured(
        conn, users_table, tenant_column, version_column
    )
    family = shape.key_family
    if problems or family is None or shape.table.sql != recorded["users_table"]:
        return False
    tenant = recorded.get("tenant_column")
    expected = functions.render(
        functions.FunctionShape(
            key_family=family,
            users=shape.table,
            version_column=shape.version_column,
            tenant_column=tenant,
            tenant_type=next((c.type for c in shape.columns if c.name == tenant), None),
        )
    )
    rows = await conn.fetch(query("host_function_sources"), [f.name for f in expected])
    installed = {(r["name"], r["source"]) for r in rows}
    if recorded.get("version_column") == shape.version_column and all(
        (f.name, f.body) in installed for f in expected
    ):
        return False
    async with conn.transaction():
        await _set_users_table(conn, shape)
        await install_functions(conn, shape)
    return True


def dropped_tables(migration: Migration) -> list[str]:
    """The tables `migration`'s down part drops, truncates or deletes from."""
    names: list[str] = []
    for match in _DROPS_ROWS.finditer(migration.down):
        for name in match.group(1).split(","):
            table = re.sub(r"^ONLY\s+", "", name.strip(), flags=re.IGNORECASE).lower()
            if table not in names:
                names.append(table)
    return names


async def data_at_risk(conn: asyncpg.Connection, targets: list[Migration]) -> list[TableAtRisk]:
    """Each table the down parts of `targets` would drop or empty that holds rows now."""
    risks: list[TableAtRisk] = []
    for migration in targets:
        for table in dropped_tables(migration):
            if table.split(".")[-1] in _DISPOSABLE_TABLES:
                continue
            if not await conn.fetchval(query("table_exists"), table):
                continue
            # A table name cannot be a parameter: Postgres resolves and quotes it (regclass).
            quoted = await conn.fetchval(query("table_quoted_name"), table)
            rows = int(await conn.fetchval(f"SELECT count(*) FROM {quoted}"))
            if rows:
                name = f"{migration.version:04d}_{migration.name}"
                risks.append(TableAtRisk(table, rows, name))
    return risks


def refusal(risks: list[TableAtRisk]) -> str:
    tables = "; ".join(risk.describe() for risk in risks)
    return (
        f"nothing was rolled back: the rollback would drop rows of {tables}. These are ledger, "
        "event or audit rows: back the database up first, then run it again with --drop-data "
        "if they are truly to go"
    )


def rollback_targets(
    migrations: list[Migration], applied: dict[int, asyncpg.Record], to: int | None
) -> list[Migration]:
    targets = [m for m in reversed(migrations) if m.version in applied]
    return targets[:1] if to is None else [m for m in targets if m.version > to]


async def migrate_down(
    conn: asyncpg.Connection,
    to: int | None = None,
    *,
    users_table: TableName = DEFAULT_USERS_TABLE,
    drop_data: bool = False,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
    on_wait: Callable[[str], None] = _report_wait,
) -> list[Migration]:
    """Roll back the newest migration, or every migration above version `to`.

    Refuses (DataLossRefused, nothing changed) when a down part would drop or empty a table
    holding rows, unless `drop_data`.
    """
    migrations = load_migrations()
    async with locked_transaction(conn, lock_timeout, on_wait):
        shape = await host.inspect_host(conn, users_table=users_table)
        await _ensure_table(conn)
        applied = await _applied(conn)
        _check_checksums(migrations, applied)
        targets = rollback_targets(migrations, applied, to)
        risks = await data_at_risk(conn, targets)
    if risks and not drop_data:
        raise DataLossRefused(refusal(risks))
    if risks:
        log.warning("rollback_dropping_data", tables=[r.describe() for r in risks])
    done: list[Migration] = []
    for migration in targets:
        if not migration.transactional:
            await _take_session_lock(conn, lock_timeout, on_wait)
            try:
                if await conn.fetchval(query("migration_applied"), migration.version):
                    await _run_part(conn, migration, migration.down)
                    async with conn.transaction():
                        await _set_users_table(conn, shape)
                        await conn.execute(query("forget_migration"), migration.version)
                    done.append(migration)
            finally:
                await conn.execute(query("migration_session_unlock"), MIGRATION_LOCK_KEY)
            continue
        async with locked_transaction(conn, lock_timeout, on_wait):
            if not await conn.fetchval(query("migration_applied"), migration.version):
                continue  # another run rolled it back meanwhile
            await _set_users_table(conn, shape)
            await _run_part(conn, migration, migration.down)
            await conn.execute(query("forget_migration"), migration.version)
        done.append(migration)
    return done
