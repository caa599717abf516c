"""The SQL functions have one current-state source, `sql/functions/` (issue 26): what the
migrations install equals that source rendered for the host, for each key type; and every
statement there that moves a balance also bumps the host's version column (issue 34)."""

from __future__ import annotations

import re

import asyncpg
import pytest

from tests.host_shapes import SHAPES, Shape
from webhook_worker.db import functions, migrations
from webhook_worker.identifier import TableName
from webhook_worker.ops import verify

_BY_NAME = {shape.name: shape for shape in SHAPES}
# One host per key family, and the per-tenant create-by-email.
_HOSTS = [
    _BY_NAME[name]
    for name in (
        "bigint_identity",
        "uuid_with_default",
        "text_opaque_ids",
        "tenant_named_by_variable",
    )
]


async def _installed(conn: asyncpg.Connection) -> dict[str, list[str]]:
    rows = await conn.fetch(
        "SELECT p.proname, p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'public'"
    )
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault(row["proname"], []).append(row["prosrc"])
    return found


@pytest.mark.parametrize("shape", _HOSTS, ids=str)
async def test_installed_functions_equal_the_source_for_each_key_type(
    shape: Shape, empty_database_url: str
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(shape.ddl)
        await migrations.migrate_up(conn, tenant_column=shape.tenant_env)
        family = {"bigint": "integer", "integer": "integer", "uuid": "uuid"}.get(
            shape.key_type, "text"
        )
        tenant_type = await conn.fetchval(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'users'::regclass AND attname = $1",
            shape.tenant or "",
        )
        expected = functions.render(
            functions.FunctionShape(
                key_family=family,  # type: ignore[arg-type]
                users=TableName("users", "public"),
                tenant_column=shape.tenant,
                tenant_type=tenant_type,
            )
        )
        names = {f.name for f in expected}
        assert names == {
            "ledger_lock_key",
            "ledger_apply",
            "ledger_credit",
            "ledger_credit_many",
            "users_match",
            "users_create_by_email",
            "users_remember_stripe_customer",
            "credits_locked_balance",
            "users_balance",
            "credits_write_row",
        }
        installed = await _installed(conn)
        for function in expected:
            # exactly one function of that name, and its text is the source's
            assert installed.get(function.name) == [function.body], function.name
        checks = {
            c.name: c
            for c in (
                await verify.verify(conn, stale_after_seconds=60, tenant_column=shape.tenant_env)
            ).checks
        }
        assert checks["sql/functions"].ok, checks["sql/functions"].detail
    finally:
        await conn.close()


async def test_verify_names_a_function_that_differs_from_its_source(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "CREATE OR REPLACE FUNCTION ledger_lock_key(user_id bigint) RETURNS int"
            " LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT 0 $$"
        )
        checks = {c.name: c for c in (await verify.verify(conn, stale_after_seconds=60)).checks}
        assert not checks["sql/functions"].ok
        assert checks["sql/functions"].detail.startswith(
            "differ from sql/functions/: ledger_lock_key;"
        )
    finally:
        await conn.close()


def test_every_balance_update_in_the_source_bumps_the_version_column() -> None:
    rendered = functions.render(
        functions.FunctionShape(
            key_family="integer", users=TableName("user", "public"), version_column="version"
        )
    )
    updates = 0
    for function in rendered:
        for statement in re.findall(r"UPDATE .*?(?:RETURNING|WHERE)", function.sql, re.DOTALL):
            if statement.startswith("UPDATE stripe_events"):
                continue
            updates += 1
            assert statement.startswith('UPDATE "public"."user" AS u'), statement
            assert '"version" = u."version" + 1' in statement, (function.name, statement)
    # ledger_apply, ledger_credit, ledger_credit_many (its set-based batch),
    # users_remember_stripe_customer, credits_write_row
    assert updates == 5
    unversioned = functions.render(
        functions.FunctionShape(key_family="uuid", users=TableName("users", "public"))
    )
    assert not any('"version"' in f.sql for f in unversioned)
