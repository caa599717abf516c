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

from webhook_worker.db import host
from webhook_worker.db.queries import query, sql_dir
from webhook_worker.errors import MigrationError

# Fixed advisory-lock key for migrations ("wwmigrat" as bytes); the ledger uses another space.
MIGRATION_LOCK_KEY = 0x77776D6967726174
# Files edited after release, with the checksums of their earlier text, which deployments
# applied and which stay accepted (issue 13, host key types). On every host where the earlier
# text applied (an integer users.id) the edited text builds the same ledger: 0003 and 0004
# still create BIGINT user_id there and only take uuid/text on hosts where the earlier text
# failed; 0001 additionally records what it adds to a host's users (its down then removes
# exactly that) and skips the global email index on multi-tenant hosts. Installs made with
# the earlier 0001 have no such record: its down keeps their columns, as it always did.
EARLIER_CHECKSUMS: dict[int, frozenset[str]] = {
    1: frozenset({"073791c9a4158ca79a8a24aaf2d38368a3e41ab3b5bac90ae697667dbd6b2fd6"}),
    3: frozenset({"4c6cf8162a21d69b9c93b979d75f7f18988f5f896656754362928356c34e6376"}),
    4: frozenset({"dbfa172e71d15d05504f95520f8bb530fc6751c3961461ac2695da3c4118e3e2"}),
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


async def check_host(conn: asyncpg.Connection, tenant_column: str | None) -> host.HostShape:
    """Refuse a host `users` the service cannot support, before anything is changed; else
    hand the tenant column to this session's migrations (the recorded one once there is)."""
    shape = await host.inspect_host(conn, tenant_column)
    problems = shape.problems()
    if problems:
        raise MigrationError("nothing was changed: " + "; ".join(problems))
    recorded = await host.recorded_shape(conn)
    tenant = recorded["tenant_column"] if recorded else shape.tenant_column
    await conn.execute(query("host_set_tenant_column"), tenant or "")
    return shape


async def migrate_up(
    conn: asyncpg.Connection, to: int | None = None, *, tenant_column: str | None = None
) -> list[Migration]:
    """Apply pending migrations up to `to` (all by default); return what was applied.

    `tenant_column` is USERS_TENANT_COLUMN; without it a tenant column is detected from a
    unique constraint on (tenant, email).
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
        if any(m.version not in applied for m in migrations):
            await check_host(conn, tenant_column)
        await _ensure_table(conn)
        for migration in migrations:
            if migration.version in applied or (to is not None and migration.version > to):
                continue
            try:
                if not migration.transactional:
                    await _run_part(conn, migration, migration.up)
                async with conn.transaction():
                    if migration.transactional:
                        await _run_part(conn, migration, migration.up)
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
    finally:
        await conn.execute(query("migration_unlock"), MIGRATION_LOCK_KEY)
    return done


async def migrate_down(conn: asyncpg.Connection, to: int | None = None) -> list[Migration]:
    """Roll back the newest migration, or every migration above version `to`."""
    done: list[Migration] = []
    await _lock(conn)
    try:
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
                if migration.transactional:
                    await _run_part(conn, migration, migration.down)
                await conn.execute(query("forget_migration"), migration.version)
            done.append(migration)
    finally:
        await conn.execute(query("migration_unlock"), MIGRATION_LOCK_KEY)
    return done
