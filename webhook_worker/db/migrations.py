"""Plain-SQL migrations from `sql/migrations/NNNN_name.sql`, each with an up and a down part.

Every migration runs in its own transaction; a session advisory lock serialises concurrent
runs (two deploys at once apply each migration once); a changed checksum of an applied file
is refused, because the database no longer matches what the file says.

A file whose first lines carry `-- migrate:no-transaction` runs outside a transaction, one
statement at a time (each ends with `;` at the end of a line; no dollar-quoted bodies): the
way to `CREATE INDEX CONCURRENTLY`, which Postgres refuses inside a transaction block, so a
deploy on a large table never locks out the receiver's inserts. Such a file must be safe to
run again after a crash part-way (`DROP INDEX CONCURRENTLY IF EXISTS` before each
`CREATE INDEX CONCURRENTLY`, which also clears an invalid index a failed build leaves); it is
recorded once all its statements succeeded.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from webhook_worker.db import functions, host
from webhook_worker.db.queries import query, sql_dir
from webhook_worker.errors import MigrationError
from webhook_worker.identifier import DEFAULT_USERS_TABLE, TableName

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
_LOCK_POLL_SECONDS = 0.2
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_UP = re.compile(r"^--\s*migrate:up\s*$", re.MULTILINE)
_DOWN = re.compile(r"^--\s*migrate:down\s*$", re.MULTILINE)
_NO_TRANSACTION = re.compile(r"^--\s*migrate:no-transaction\s*$", re.MULTILINE)
_STATEMENT_END = re.compile(r";[ \t]*$", re.MULTILINE)


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


async def _lock(conn: asyncpg.Connection) -> None:
    """Take the migration lock, polling with pg_try_advisory_lock rather than waiting inside
    pg_advisory_lock: a waiting statement holds a snapshot, and CREATE INDEX CONCURRENTLY in
    the run that holds the lock waits for every snapshot to end, a deadlock."""
    while not await conn.fetchval(query("migration_try_lock"), MIGRATION_LOCK_KEY):  # noqa: ASYNC110 - another process holds it; no event to wait on
        await asyncio.sleep(_LOCK_POLL_SECONDS)


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
    await _ensure_table(conn)
    applied = await _applied(conn)
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
    anything is changed; else hand the table, the tenant column (the recorded one once there
    is) and the version column to this session's migrations."""
    shape, problems = await host.inspect_configured(
        conn, users_table, tenant_column, version_column
    )
    if problems:
        raise MigrationError("nothing was changed: " + "; ".join(problems))
    recorded = await host.recorded_shape(conn)
    tenant = recorded["tenant_column"] if recorded else shape.tenant_column
    await conn.execute(query("host_set_tenant_column"), tenant or "")
    return shape


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
) -> list[Migration]:
    """Apply pending migrations up to `to` (all by default); return what was applied.

    `tenant_column` is USERS_TENANT_COLUMN; without it a tenant column is detected from a
    unique constraint on (tenant, email). `users_table` is USERS_TABLE, `version_column`
    USERS_VERSION_COLUMN (without it an integer `version` or `lock_version` is detected).
    """
    done: list[Migration] = []
    await _lock(conn)
    try:
        migrations = load_migrations()
        if await conn.fetchval(query("schema_migrations_exists")):
            applied = await _applied(conn)
            _check_checksums(migrations, applied)
        else:
            applied = {}
        shape = None
        if any(m.version not in applied for m in migrations):
            shape = await check_host(
                conn, tenant_column, users_table=users_table, version_column=version_column
            )
        await _ensure_table(conn)
        for migration in migrations:
            if migration.version in applied or (to is not None and migration.version > to):
                continue
            try:
                if not migration.transactional:
                    await _run_part(conn, migration, migration.up)
                async with conn.transaction():
                    if shape is not None:
                        await _set_users_table(conn, shape)
                    if migration.transactional:
                        await _run_part(conn, migration, migration.up)
                    files = functions.marked_files(migration.up)
                    if shape is not None and files is not None:
                        await install_functions(conn, shape, files)
                    await conn.execute(
                        query("record_migration"),
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
            except asyncpg.PostgresError as exc:
                outcome = "was rolled back" if migration.transactional else "stopped part-way"
                raise MigrationError(f"{migration.path.name} failed and {outcome}: {exc}") from exc
            done.append(migration)
        if to is None:
            await refresh_functions(conn, users_table, tenant_column, version_column)
    finally:
        await conn.execute(query("migration_unlock"), MIGRATION_LOCK_KEY)
    return done


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


async def migrate_down(
    conn: asyncpg.Connection,
    to: int | None = None,
    *,
    users_table: TableName = DEFAULT_USERS_TABLE,
) -> list[Migration]:
    """Roll back the newest migration, or every migration above version `to`."""
    done: list[Migration] = []
    await _lock(conn)
    try:
        shape = await host.inspect_host(conn, users_table=users_table)
        await _ensure_table(conn)
        applied = await _applied(conn)
        migrations = load_migrations()
        _check_checksums(migrations, applied)
        targets = [m for m in reversed(migrations) if m.version in applied]
        targets = targets[:1] if to is None else [m for m in targets if m.version > to]
        for migration in targets:
            if not migration.transactional:
                await _run_part(conn, migration, migration.down)
            async with conn.transaction():
                await _set_users_table(conn, shape)
                if migration.transactional:
                    await _run_part(conn, migration, migration.down)
                await conn.execute(query("forget_migration"), migration.version)
            done.append(migration)
    finally:
        await conn.execute(query("migration_unlock"), MIGRATION_LOCK_KEY)
    return done
