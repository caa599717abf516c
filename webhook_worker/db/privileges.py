"""What the connected role may do, against what the service needs (docs/deployment.md,
"Database roles").

`missing_runtime_grants` lists, as the statement that fixes each, what the runtime role
lacks: SELECT, INSERT, UPDATE on the service's tables and the users table, EXECUTE on its
functions, USAGE on the schema. `serve` and `work` refuse to start while anything is
missing, and `/readyz` answers 503 naming it (a grant revoked later). `migration_role_problems`
says what stops the migration role from applying migrations (`deploy_hotfix.py --dry-run`,
`verify`). All are read-only catalog queries.
"""

from __future__ import annotations

from webhook_worker.db.queries import query
from webhook_worker.db.store import Connection


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"' if not name.isidentifier() else name


async def missing_runtime_grants(conn: Connection) -> list[str]:
    """One line per table, function or schema this role cannot use as the service needs:
    "permission denied for table stripe_events: GRANT INSERT, UPDATE ON stripe_events TO me"."""
    found = await conn.fetchrow(query("privileges_schema_usage"))
    assert found is not None
    usage, role, schema = found
    grantee = _quote(role)
    problems: list[str] = []
    if not usage:
        problems.append(
            f"permission denied for schema {schema}: GRANT USAGE ON SCHEMA {_quote(schema)} "
            f"TO {grantee}"
        )
        return problems
    for row in await conn.fetch(query("privileges_service_tables")):
        missing = ", ".join(row["missing"])
        problems.append(
            f"permission denied for table {row['name']}: GRANT {missing} ON "
            f"{_quote(row['name'])} TO {grantee}"
        )
    for row in await conn.fetch(query("privileges_service_functions")):
        problems.append(
            f"permission denied for function {row['signature']}: GRANT EXECUTE ON FUNCTION "
            f"{row['signature']} TO {grantee}"
        )
    return problems


async def migration_role_problems(conn: Connection) -> list[str]:
    """What stops this role from applying the migrations; empty when nothing does."""
    row = await conn.fetchrow(query("privileges_migration_role"))
    assert row is not None
    problems: list[str] = []
    role = _quote(row["role"])
    if not row["may_alter_users"]:
        owner = row["users_owner"]
        problems.append(
            f"role {row['role']} cannot alter table users (owned by {owner}), which the "
            f"migrations extend: GRANT {owner} TO {role} (or run migrations as {owner})"
        )
    if not row["may_create"]:
        problems.append(
            f"role {row['role']} cannot create tables in schema {row['schema']}: GRANT "
            f"CREATE, USAGE ON SCHEMA {_quote(row['schema'])} TO {role}"
        )
    return problems
