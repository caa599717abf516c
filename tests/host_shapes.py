"""Host `users` tables the service installs into (issue 13), and helpers to compare them.

Each shape is a table an application could already have, with how to insert one of its
users (the parameters: an email, and a tenant where the shape has one). `snapshot` is what
`migrate down` must give back exactly: columns, constraints, indexes and the seed rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from webhook_worker.db.host import UserId, user_key


@dataclass(frozen=True)
class Shape:
    name: str
    ddl: str
    insert: str  # $1 email (and $2 tenant when `tenant` is set); RETURNING id
    key_type: str  # format_type(users.id)
    ledger_type: str  # credit_transactions.user_id
    uuid_ref: str  # what a UUID reference names: "uuid column", "id" or "" (none)
    tenant: str | None = None
    tenant_env: str | None = None  # USERS_TENANT_COLUMN
    required: tuple[str, ...] = ()  # columns verify names: creating by email is impossible

    def __str__(self) -> str:
        return self.name


SHAPES = [
    Shape(
        "bigint_identity",
        "CREATE TABLE users (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email TEXT,"
        " name TEXT)",
        "INSERT INTO users (email) VALUES ($1) RETURNING id",
        "bigint",
        "bigint",
        "uuid column",
    ),
    Shape(
        "serial",
        "CREATE TABLE users (id SERIAL PRIMARY KEY, email VARCHAR(255))",
        "INSERT INTO users (email) VALUES ($1) RETURNING id",
        "integer",
        "bigint",
        "uuid column",
    ),
    Shape(
        "uuid_with_default",
        "CREATE TABLE users (id UUID PRIMARY KEY DEFAULT gen_random_uuid(), email TEXT)",
        "INSERT INTO users (email) VALUES ($1) RETURNING id",
        "uuid",
        "uuid",
        "id",
    ),
    Shape(
        "uuid_without_default",
        "CREATE TABLE users (id UUID PRIMARY KEY, email TEXT)",
        "INSERT INTO users (id, email) VALUES (gen_random_uuid(), $1) RETURNING id",
        "uuid",
        "uuid",
        "id",
        required=("id",),
    ),
    Shape(
        "varchar36_uuid_strings",
        "CREATE TABLE users (id VARCHAR(36) PRIMARY KEY, email VARCHAR(255))",
        "INSERT INTO users (id, email) VALUES (gen_random_uuid()::text, $1) RETURNING id",
        "character varying(36)",
        "character varying(36)",
        "id",
        required=("id",),
    ),
    Shape(
        "text_opaque_ids",
        "CREATE TABLE users (id TEXT PRIMARY KEY"
        " DEFAULT 'user_2' || replace(gen_random_uuid()::text, '-', ''), email TEXT)",
        "INSERT INTO users (email) VALUES ($1) RETURNING id",
        "text",
        "text",
        "",
    ),
    Shape(
        "multi_tenant_unique_tenant_email",
        "CREATE TABLE users (id BIGSERIAL PRIMARY KEY, tenant_id INT NOT NULL,"
        " email TEXT NOT NULL, CONSTRAINT users_tenant_email_key UNIQUE (tenant_id, email))",
        "INSERT INTO users (email, tenant_id) VALUES ($1, $2::text::int) RETURNING id",
        "bigint",
        "bigint",
        "uuid column",
        tenant="tenant_id",
    ),
    Shape(
        "tenant_named_by_variable",
        "CREATE TABLE users (id UUID PRIMARY KEY DEFAULT gen_random_uuid(), org_id TEXT,"
        " email TEXT)",
        "INSERT INTO users (email, org_id) VALUES ($1, $2) RETURNING id",
        "uuid",
        "uuid",
        "id",
        tenant="org_id",
        tenant_env="org_id",
    ),
    Shape(
        "email_not_null",
        "CREATE TABLE users (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL UNIQUE)",
        "INSERT INTO users (email) VALUES ($1) RETURNING id",
        "bigint",
        "bigint",
        "uuid column",
    ),
    Shape(
        "extra_not_null_with_defaults",
        "CREATE TABLE users (id BIGSERIAL PRIMARY KEY, email TEXT,"
        " display_name TEXT NOT NULL DEFAULT 'new user', plan TEXT NOT NULL DEFAULT 'free')",
        "INSERT INTO users (email) VALUES ($1) RETURNING id",
        "bigint",
        "bigint",
        "uuid column",
    ),
    Shape(
        "extra_not_null_without_default",
        "CREATE TABLE users (id BIGSERIAL PRIMARY KEY, email TEXT, display_name TEXT NOT NULL)",
        "INSERT INTO users (email, display_name) VALUES ($1, 'Ada') RETURNING id",
        "bigint",
        "bigint",
        "uuid column",
        required=("display_name",),
    ),
]


async def insert_user(
    conn: asyncpg.Connection, shape: Shape, email: str, tenant: str = "1"
) -> UserId:
    args = (email, tenant) if shape.tenant else (email,)
    return user_key(await conn.fetchval(shape.insert, *args))


async def uuid_reference(conn: asyncpg.Connection, shape: Shape, user: UserId) -> str | None:
    """The UUID a checkout would carry for `user`, when the shape has one."""
    if shape.uuid_ref == "uuid column":
        return str(await conn.fetchval("SELECT uuid FROM users WHERE id = $1", user))
    return str(user) if shape.uuid_ref == "id" else None


async def snapshot(conn: asyncpg.Connection, seed: list[UserId]) -> dict[str, Any]:
    """users' columns, constraints, indexes and the seed rows, as comparable values."""
    columns = await conn.fetch(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,"
        " pg_get_expr(d.adbin, d.adrelid) AS default_value, a.attidentity"
        " FROM pg_attribute a LEFT JOIN pg_attrdef d"
        " ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
        " WHERE a.attrelid = 'users'::regclass AND a.attnum > 0 AND NOT a.attisdropped"
        " ORDER BY a.attnum"
    )
    constraints = await conn.fetch(
        "SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint"
        " WHERE conrelid = 'users'::regclass ORDER BY conname"
    )
    indexes = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'users' ORDER BY indexname"
    )
    rows = await conn.fetch(
        "SELECT to_jsonb(u)::text AS row FROM users u WHERE u.id::text = ANY($1::text[])"
        " ORDER BY u.id::text",
        [str(s) for s in seed],
    )
    return {
        "columns": [tuple(r) for r in columns],
        "constraints": [tuple(r) for r in constraints],
        "indexes": [tuple(r) for r in indexes],
        "rows": [r["row"] for r in rows],
    }
