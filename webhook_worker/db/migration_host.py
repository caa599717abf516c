"""The host's users table as the migrations see it: refused before anything changes when the
service cannot support it, named to each migration through transaction-local settings (a
session setting would not survive a transaction-mode pooler), and the ledger functions of
`sql/functions/` installed, and kept fitting, for it.
"""

from __future__ import annotations

import asyncpg

from webhook_worker.db import functions, host
from webhook_worker.db.queries import query
from webhook_worker.errors import MigrationError
from webhook_worker.identifier import DEFAULT_USERS_TABLE, TableName


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


async def tenant_setting(conn: asyncpg.Connection, shape: host.HostShape) -> str:
    """The tenant column the migrations read (the recorded one once there is); '' for none."""
    recorded = await host.recorded_shape(conn)
    tenant = recorded["tenant_column"] if recorded else shape.tenant_column
    return str(tenant or "")


async def set_users_table(conn: asyncpg.Connection, shape: host.HostShape) -> None:
    """Name the users table for the migration of the current transaction."""
    kind = "view" if shape.kind == "view" else "table"
    await conn.execute(
        query("host_set_users_table"),
        shape.table.schema or "",
        shape.table.name,
        kind,
        shape.version_column or "",
    )


async def prepare(conn: asyncpg.Connection, tenant: str, shape: host.HostShape | None) -> None:
    """Transaction-local settings the migration of this transaction reads (0001, 0008 the
    tenant column; 0001/0003/0004/0008/0035 the users table): nothing outlives it."""
    await conn.execute(query("host_set_tenant_column"), tenant)
    if shape is not None:
        await set_users_table(conn, shape)


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
        await set_users_table(conn, shape)
        await install_functions(conn, shape)
    return True
