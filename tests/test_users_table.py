"""The host's users table by name (issue 34, issue 28 item 4): the seed application's
`"user"` table with optimistic locking, a `users` table in another schema, and views.

Each test installs next to a real host schema in a fresh database, runs purchases through a
real worker (Postgres and Redis), and compares with values written here, not computed by
`webhook_worker`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.orm.exc import StaleDataError

from tests.conftest import base_env
from tests.worker_support import deliver, drain, status_of
from webhook_worker.config import Settings
from webhook_worker.db import migrations
from webhook_worker.db.queries import bind_users_table
from webhook_worker.errors import MigrationError
from webhook_worker.identifier import TableName
from webhook_worker.ops import verify
from webhook_worker.ops.sample_events import charge_refunded_event, checkout_session_event
from webhook_worker.worker import ledger

# The seed application: 20 tables in production; these four are the ones around its users.
# Every critical model has id BIGINT, created_at, updated_at and version INTEGER.
SEED_HOST = """
CREATE TYPE user_status AS ENUM ('active', 'suspended', 'deleted');
CREATE TYPE user_role AS ENUM ('member', 'admin');
CREATE TABLE "user" (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email VARCHAR(320) NOT NULL UNIQUE,
    status user_status NOT NULL DEFAULT 'active',
    role user_role NOT NULL DEFAULT 'member',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    version INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE user_details (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id BIGINT NOT NULL UNIQUE REFERENCES "user" (id) ON DELETE CASCADE,
    display_name TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    version INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE subscription (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES "user" (id),
    plan TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    version INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE user_invoice (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES "user" (id),
    amount_cents BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    version INTEGER NOT NULL DEFAULT 1
);
"""
SEED_TABLES = ("user", "user_details", "subscription", "user_invoice")
VERIFICATION_SQL = Path(__file__).resolve().parent.parent / "sql" / "verification.sql"


async def _seed_user(conn: asyncpg.Connection, email: str) -> int:
    user = int(await conn.fetchval('INSERT INTO "user" (email) VALUES ($1) RETURNING id', email))
    await conn.execute(
        "INSERT INTO user_details (user_id, display_name) VALUES ($1, $2)", user, email
    )
    await conn.execute("INSERT INTO subscription (user_id, plan) VALUES ($1, 'pro')", user)
    await conn.execute("INSERT INTO user_invoice (user_id, amount_cents) VALUES ($1, 1900)", user)
    return user


async def _catalog(conn: asyncpg.Connection, tables: tuple[str, ...]) -> dict[str, Any]:
    """Columns, constraints, indexes and triggers of each table, and its rows."""
    out: dict[str, Any] = {}
    for table in tables:
        rel = TableName(table, "public").sql
        out[table] = {
            "columns": [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,"
                    " pg_get_expr(d.adbin, d.adrelid), a.attidentity FROM pg_attribute a"
                    " LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
                    " WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped"
                    " ORDER BY a.attnum",
                    rel,
                )
            ],
            "constraints": [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
                    " WHERE conrelid = $1::regclass ORDER BY conname",
                    rel,
                )
            ],
            "indexes": [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT indexname, indexdef FROM pg_indexes"
                    " WHERE schemaname = 'public' AND tablename = $1 ORDER BY indexname",
                    table,
                )
            ],
            "triggers": [
                r[0]
                for r in await conn.fetch(
                    "SELECT tgname FROM pg_trigger WHERE tgrelid = $1::regclass ORDER BY tgname",
                    rel,
                )
            ],
            "rows": [
                r[0]
                for r in await conn.fetch(f"SELECT to_jsonb(t)::text FROM {rel} t ORDER BY t.id")
            ],
        }
    out["types"] = [
        tuple(r)
        for r in await conn.fetch(
            "SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)::text"
            " FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY t.typname"
            " ORDER BY t.typname"
        )
    ]
    return out


def _verification_sql_reads(database_url: str, table: str) -> None:
    """sql/verification.sql, by hand with psql, finds the recorded table."""
    result = subprocess.run(
        ["psql", database_url, "-X", "-v", "ON_ERROR_STOP=1", "-f", str(VERIFICATION_SQL)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f" {table} " in result.stdout
    assert "differ from their ledger sum" in result.stdout


def _settings(database_url: str, redis_url: str, **env: str) -> Settings:
    """Settings, with the process's statements naming their USERS_TABLE (as `webhook-worker`
    does at start; the conftest names `users` again after the test)."""
    settings = Settings.from_env({**base_env(database_url, redis_url), **env})
    bind_users_table(settings.users_table)
    return settings


async def _row(conn: asyncpg.Connection, user: int) -> tuple[int, int]:
    row = await conn.fetchrow('SELECT credits_balance, version FROM "user" WHERE id = $1', user)
    assert row is not None
    return int(row["credits_balance"]), int(row["version"])


async def test_seed_host_user_table_install_purchase_refund_and_uninstall(
    empty_database_url: str, clean_redis_url: str
) -> None:
    settings = _settings(empty_database_url, clean_redis_url, USERS_TABLE="user")
    assert settings.users_table == TableName("user")
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(SEED_HOST)
        seed = await _seed_user(conn, "seed@example.com")
        before = await _catalog(conn, SEED_TABLES)

        await migrations.migrate_up(conn, users_table=settings.users_table)
        assert await conn.fetchval("SELECT to_regclass('users')") is None  # nothing shadowed
        recorded = await conn.fetchrow(
            "SELECT users_table, users_kind, version_column FROM users_host_shape"
        )
        assert tuple(recorded) == ('"public"."user"', "table", "version")
        report = await verify.verify(conn, stale_after_seconds=3600, settings=settings)
        assert report.ok, [(c.name, c.detail) for c in report.problems]
        _verification_sql_reads(empty_database_url, '"public"."user"')
        checks = {c.name: c.detail for c in report.checks}
        assert checks["version column"] == (
            'public."user".version is incremented by every balance change'
        )
        assert checks["sql/functions"].endswith("functions equal sql/functions/")

        buyer = await _seed_user(conn, "buyer@example.com")
        other = await _seed_user(conn, "other@example.com")
        assert await _row(conn, buyer) == (0, 1)
        bought = await deliver(
            conn,
            settings,
            checkout_session_event(
                credits=25, client_reference_id=str(buyer), payment_intent="pi_seed"
            ),
        )
        await drain(settings)
        assert (await status_of(conn, bought[0]))["processing_status"] == "completed"
        assert await _row(conn, buyer) == (25, 2)  # credited, version bumped once
        assert await _row(conn, other) == (0, 1)  # the neighbour untouched

        # A debit by the service (a refund of 40% of the payment) bumps it again.
        refund = await deliver(
            conn, settings, charge_refunded_event(payment_intent="pi_seed", amount_refunded=400)
        )
        await drain(settings)
        assert (await status_of(conn, refund[0]))["processing_status"] == "completed"
        assert await _row(conn, buyer) == (15, 3)

        # A purchase by an email nobody has creates the user in "user" (status and role take
        # their defaults), never in a `users` table.
        by_email = await deliver(
            conn, settings, checkout_session_event(credits=3, email="New@Example.com")
        )
        await drain(settings)
        assert (await status_of(conn, by_email[0]))["processing_status"] == "completed"
        created = await conn.fetchrow(
            'SELECT status::text, role::text, credits_balance, version FROM "user"'
            " WHERE email = 'New@Example.com'"
        )
        assert tuple(created) == ("active", "member", 3, 2)

        await migrations.migrate_down(conn, to=0, users_table=settings.users_table, drop_data=True)
        after = await _catalog(conn, SEED_TABLES)
        # The host's rows that the service never wrote are as they were; so is every table.
        for table in SEED_TABLES:
            for part in ("columns", "constraints", "indexes", "triggers"):
                assert after[table][part] == before[table][part], (table, part)
        assert after["types"] == before["types"]
        assert [r for r in after["user"]["rows"] if f'"id": {seed},' in r] == [
            r for r in before["user"]["rows"] if f'"id": {seed},' in r
        ]
        assert after["user_invoice"]["rows"][0] == before["user_invoice"]["rows"][0]
    finally:
        await conn.close()


class _Base(DeclarativeBase):
    pass


class _User(_Base):
    """The seed application's model: SQLAlchemy checks `version` on every UPDATE."""

    __tablename__ = "user"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    email: Mapped[str] = mapped_column(String)
    credits_balance: Mapped[int] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012


async def test_an_orm_write_from_before_a_credit_fails_stale_and_the_credit_stays(
    empty_database_url: str, clean_redis_url: str
) -> None:
    settings = _settings(empty_database_url, clean_redis_url, USERS_TABLE="user")
    conn = await asyncpg.connect(empty_database_url)
    engine = create_async_engine(
        empty_database_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    )
    try:
        await conn.execute(SEED_HOST)
        await migrations.migrate_up(conn, users_table=settings.users_table)
        user = await _seed_user(conn, "orm@example.com")
        await conn.execute("INSERT INTO stripe_events (event_id, type) VALUES ('evt_a', 't')")
        await conn.execute("INSERT INTO stripe_events (event_id, type) VALUES ('evt_b', 't')")
        purchase = ledger.Purchase(user, 10, "evt_a", "cs_a", None, "first")
        assert (await ledger.credit_purchase(conn, purchase)).balance == 10
        assert await _row(conn, user) == (10, 2)

        sessions = async_sessionmaker(engine, expire_on_commit=False)
        async with sessions() as session:
            model = await session.get(_User, user)
            assert model is not None
            assert (model.credits_balance, model.version) == (10, 2)  # read before the credit

            purchase = ledger.Purchase(user, 7, "evt_b", "cs_b", None, "second")
            assert (await ledger.credit_purchase(conn, purchase)).balance == 17

            model.credits_balance -= 5  # the application's stale write: 10 - 5
            with pytest.raises(StaleDataError):
                await session.commit()
            await session.rollback()

        assert await _row(conn, user) == (17, 3)  # the credit stays
        # A spend by the application (credits_spend, docs/spending.md) bumps it too.
        spent = await conn.fetchrow(
            "SELECT status, balance FROM credits_spend($1, 4, 'report-1', 'a report')", user
        )
        assert tuple(spent) == ("spent", 13)
        assert await _row(conn, user) == (13, 4)
        # A grant (ops adjustments go through the same credits_write_row) bumps it again.
        granted = await conn.fetchrow(
            "SELECT status, balance FROM credits_grant($1, 2, 'goodwill-1', 'support')", user
        )
        assert tuple(granted) == ("granted", 15)
        assert await _row(conn, user) == (15, 5)
        ledger_total = await conn.fetchval(
            "SELECT sum(amount) FROM credit_transactions WHERE user_id = $1", user
        )
        assert ledger_total == 15  # balance = ledger sum
    finally:
        await engine.dispose()
        await conn.close()


APP_USERS = """
CREATE SCHEMA app;
CREATE TABLE app.users (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    lock_version INTEGER NOT NULL DEFAULT 0
);
INSERT INTO app.users (email) VALUES ('customer@example.com');
"""


async def test_a_users_table_in_another_schema_is_never_shadowed(
    empty_database_url: str, clean_redis_url: str
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(APP_USERS)
        with pytest.raises(MigrationError) as refused:
            await migrations.migrate_up(conn)  # USERS_TABLE unset: `users`, search_path public
        message = refused.value.message
        assert "nothing was changed" in message
        assert "app.users exists in another schema" in message
        assert "set USERS_TABLE=app.users" in message
        assert await conn.fetchval("SELECT to_regclass('public.users')") is None
        assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None

        settings = _settings(empty_database_url, clean_redis_url, USERS_TABLE="app.users")
        await migrations.migrate_up(conn, users_table=settings.users_table)
        assert await conn.fetchval("SELECT to_regclass('public.users')") is None
        report = await verify.verify(conn, stale_after_seconds=3600, settings=settings)
        assert report.ok, [(c.name, c.detail) for c in report.problems]
        assert {c.name: c.detail for c in report.checks}["version column"] == (
            "app.users.lock_version is incremented by every balance change"
        )

        ids = await deliver(
            conn, settings, checkout_session_event(credits=9, email="customer@example.com")
        )
        await drain(settings)
        assert (await status_of(conn, ids[0]))["processing_status"] == "completed"
        row = await conn.fetchrow(
            "SELECT id, credits_balance, lock_version FROM app.users"
            " WHERE email = 'customer@example.com'"
        )
        assert tuple(row) == (1, 9, 1)  # the existing customer, not a new user
        assert await conn.fetchval("SELECT count(*) FROM app.users") == 1

        await migrations.migrate_down(conn, to=0, users_table=settings.users_table, drop_data=True)
        columns = await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'app.users'::regclass"
            " AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        )
        assert [r[0] for r in columns] == ["id", "email", "lock_version"]
    finally:
        await conn.close()


ACCOUNTS = """
CREATE TABLE accounts (
    account_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uuid UUID NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    email TEXT UNIQUE,
    stripe_customer_id TEXT UNIQUE,
    credits_balance BIGINT NOT NULL DEFAULT 0 CHECK (credits_balance >= 0),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    version INTEGER NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX accounts_email_lower ON accounts (lower(email));
"""


async def test_an_auto_updatable_view_is_supported(
    empty_database_url: str, clean_redis_url: str
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(ACCOUNTS)
        await conn.execute(
            'CREATE VIEW "Members" AS SELECT account_id AS id, uuid, email, stripe_customer_id,'
            " credits_balance, created_at, updated_at, version FROM accounts"
        )
        account = await conn.fetchval(
            "INSERT INTO accounts (email) VALUES ('a@example.com') RETURNING account_id"
        )
        settings = _settings(empty_database_url, clean_redis_url, USERS_TABLE="Members")
        await migrations.migrate_up(conn, users_table=settings.users_table)
        report = await verify.verify(conn, stale_after_seconds=3600, settings=settings)
        assert report.ok, [(c.name, c.detail) for c in report.problems]
        assert 'users table: public."Members", found (view)' in report.host_shape[0]

        ids = await deliver(
            conn,
            settings,
            checkout_session_event(credits=4, client_reference_id=str(account)),
            checkout_session_event(credits=6, email="b@example.com"),
        )
        await drain(settings)
        for event_id in ids:
            assert (await status_of(conn, event_id))["processing_status"] == "completed"
        rows = await conn.fetch(
            "SELECT email, credits_balance, version FROM accounts ORDER BY account_id"
        )
        assert [tuple(r) for r in rows] == [("a@example.com", 4, 2), ("b@example.com", 6, 2)]

        await migrations.migrate_down(conn, to=0, users_table=settings.users_table, drop_data=True)
        assert await conn.fetchval("SELECT count(*) FROM accounts") == 2
    finally:
        await conn.close()


async def test_a_view_postgres_cannot_update_is_refused_with_the_fix(
    empty_database_url: str,
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(ACCOUNTS)
        await conn.execute("CREATE TABLE plans (account_id BIGINT PRIMARY KEY, plan TEXT)")
        await conn.execute(
            "CREATE VIEW users AS SELECT a.account_id AS id, a.uuid, a.email,"
            " a.stripe_customer_id, a.credits_balance, a.created_at, a.updated_at, p.plan"
            " FROM accounts a LEFT JOIN plans p USING (account_id)"
        )
        with pytest.raises(MigrationError) as refused:
            await migrations.migrate_up(conn)
        message = refused.value.message
        assert "USERS_TABLE=users is a view Postgres cannot update" in message
        assert "set USERS_TABLE to the table under it" in message
        assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None
    finally:
        await conn.close()


async def test_a_version_column_added_later_is_reported_then_bumped_after_reinstall(
    db: asyncpg.Connection,
) -> None:
    """The documented fix: verify names the new column; `migrate up`, with nothing to apply,
    re-installs the functions, which then increment it."""
    await db.execute("ALTER TABLE users ADD COLUMN lock_version INTEGER NOT NULL DEFAULT 0")
    checks = {c.name: c for c in (await verify.verify(db, stale_after_seconds=60)).checks}
    assert not checks["version column"].ok
    assert "has version column lock_version now, but the functions increment none" in (
        checks["version column"].detail
    )
    assert "run `webhook-worker migrate`" in checks["version column"].detail

    assert await migrations.migrate_up(db) == []
    report = await verify.verify(db, stale_after_seconds=60)
    assert report.ok, [(c.name, c.detail) for c in report.problems]

    user = await db.fetchval("INSERT INTO users (email) VALUES ('v@example.com') RETURNING id")
    await db.execute("INSERT INTO stripe_events (event_id, type) VALUES ('evt_v', 't')")
    purchase = ledger.Purchase(user, 2, "evt_v", "cs_v", None, "v")
    assert (await ledger.credit_purchase(db, purchase)).balance == 2
    assert await db.fetchval("SELECT lock_version FROM users WHERE id = $1", user) == 1
