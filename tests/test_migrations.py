"""Migrations against a real Postgres: up/down/up, an existing app `users`, races, edits."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path

import asyncpg
import pytest

from webhook_worker.db import migration_files, migrations, queries
from webhook_worker.errors import MigrationError
from webhook_worker.ops import verify

ALL_VERSIONS = [m.version for m in migrations.load_migrations()]


async def _tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    )
    return {row["table_name"] for row in rows}


async def _constraints(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT conname FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
        "WHERE n.nspname = 'public'"
    )
    indexes = await conn.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")
    return {row["conname"] for row in rows} | {row["indexname"] for row in indexes}


async def test_up_down_up_on_an_empty_database(empty_database_url: str) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        applied = await migrations.migrate_up(conn)
        assert [m.version for m in applied] == ALL_VERSIONS
        assert {"users", "stripe_events", "credit_transactions", "schema_migrations"} <= (
            await _tables(conn)
        )
        names = await _constraints(conn)
        for expected in (
            "credits_balance_nonneg",
            "stripe_events_event_id_key",
            "credit_transactions_event_id_key",
            "credit_transactions_one_purchase_per_session",
            "stripe_events_status_received_at_idx",
            "users_email_lower_key",
        ):
            assert expected in names

        assert await migrations.migrate_up(conn) == []  # idempotent

        rolled = await migrations.migrate_down(conn, to=0)
        assert [m.version for m in rolled] == list(reversed(ALL_VERSIONS))
        assert {"stripe_events", "credit_transactions"}.isdisjoint(await _tables(conn))
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 0

        again = await migrations.migrate_up(conn)
        assert [m.version for m in again] == ALL_VERSIONS
        status = await migrations.migration_status(conn)
        assert all(row.applied for row in status)
    finally:
        await conn.close()


async def test_down_without_target_rolls_back_one(empty_database_url: str) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrations.migrate_up(conn)
        rolled = await migrations.migrate_down(conn)
        assert [m.version for m in rolled] == [ALL_VERSIONS[-1]]
        pending = await migrations.pending_migrations(conn)
        assert [m.version for m in pending] == [ALL_VERSIONS[-1]]
    finally:
        await conn.close()


async def test_existing_app_users_table_keeps_its_data(empty_database_url: str) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(
            """
            CREATE TABLE users (
                id serial PRIMARY KEY,
                email varchar(255),
                display_name text NOT NULL,
                is_admin boolean DEFAULT false
            );
            INSERT INTO users (email, display_name, is_admin)
            VALUES ('ada@example.com', 'Ada', true), ('bob@example.com', 'Bob', false);
            """
        )
        await migrations.migrate_up(conn)
        rows = await conn.fetch(
            "SELECT id, email, display_name, is_admin, credits_balance, uuid FROM users ORDER BY id"
        )
        assert [(r["email"], r["display_name"], r["is_admin"]) for r in rows] == [
            ("ada@example.com", "Ada", True),
            ("bob@example.com", "Bob", False),
        ]
        assert all(r["credits_balance"] == 0 and r["uuid"] is not None for r in rows)
        assert rows[0]["uuid"] != rows[1]["uuid"]
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE users SET credits_balance = -1 WHERE id = $1", rows[0]["id"])
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO users (email, display_name) VALUES ('ADA@example.com', 'Impostor')"
            )
        # The ledger references the app's integer id.
        await conn.execute(
            "INSERT INTO stripe_events (event_id, type) "
            "VALUES ('evt_1', 'checkout.session.completed')"
        )
        await conn.execute(
            "INSERT INTO credit_transactions (user_id, amount, balance_after, transaction_type,"
            " event_id) VALUES ($1, 5, 5, 'PURCHASE', 'evt_1')",
            rows[0]["id"],
        )
        # Rolling everything back never drops the app's table or its data (the service's
        # own ledger and events go only with drop_data).
        await migrations.migrate_down(conn, to=0, drop_data=True)
        assert await conn.fetchval("SELECT count(*) FROM users") == 2
        assert await conn.fetchval("SELECT display_name FROM users WHERE id = 1") == "Ada"
    finally:
        await conn.close()


async def test_concurrent_up_applies_each_migration_once(empty_database_url: str) -> None:
    async def run() -> list[int]:
        conn = await asyncpg.connect(empty_database_url)
        try:
            return [m.version for m in await migrations.migrate_up(conn)]
        finally:
            await conn.close()

    results = await asyncio.gather(*(run() for _ in range(4)))
    assert sorted(v for result in results for v in result) == ALL_VERSIONS
    conn = await asyncpg.connect(empty_database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(ALL_VERSIONS)
    finally:
        await conn.close()


async def test_concurrent_up_from_two_processes(empty_database_url: str) -> None:
    import os
    import sys

    env = {**os.environ, "DATABASE_URL": empty_database_url, "APP_ENV": "test"}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "webhook_worker.cli",
            "migrate",
            "up",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [await proc.communicate() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    applied_lines = [
        line
        for out, _ in outputs
        for line in out.decode().splitlines()
        if line.startswith("applied")
    ]
    assert len(applied_lines) == len(ALL_VERSIONS)
    conn = await asyncpg.connect(empty_database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(ALL_VERSIONS)
    finally:
        await conn.close()


async def test_edited_applied_migration_is_refused(
    empty_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "sql"
    shutil.copytree(queries.sql_dir(), copy)
    monkeypatch.setattr(migration_files, "sql_dir", lambda: copy)
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrations.migrate_up(conn)
        first = sorted((copy / "migrations").glob("0001_*.sql"))[0]
        first.write_text(first.read_text() + "\n-- an innocent-looking edit\n")
        with pytest.raises(MigrationError) as info:
            await migrations.migrate_up(conn)
        assert first.name in info.value.message
        assert "checksum" in info.value.message
        with pytest.raises(MigrationError):
            await migrations.pending_migrations(conn)
    finally:
        await conn.close()


def test_every_migration_has_up_and_down() -> None:
    for migration in migrations.load_migrations():
        assert migration.up.strip()
        assert migration.down.strip()


def test_cli_migrate_status_lists_versions(database_url: str) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "webhook_worker.cli", "migrate", "status"],
        env={"DATABASE_URL": database_url, "APP_ENV": "test", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    for migration in migrations.load_migrations():
        assert f"{migration.version:04d}" in out.stdout
    assert "pending" not in out.stdout


RELEASED = Path(__file__).resolve().parent / "data" / "released_migrations"


def test_released_texts_of_edited_files_are_the_accepted_earlier_checksums() -> None:
    released = sorted(RELEASED.glob("*.sql"))
    assert [p.name[:4] for p in released] == ["0001", "0003", "0004"]
    for path in released:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest in migration_files.EARLIER_CHECKSUMS[int(path.name[:4])]


async def test_an_install_made_with_the_released_files_migrates_up_cleanly(
    empty_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deployments applied 0001-0006 as released; the edited files must not refuse them."""
    released = tmp_path / "sql"
    shutil.copytree(queries.sql_dir(), released)
    for path in (released / "migrations").glob("*.sql"):
        if int(path.name[:4]) > 6:
            path.unlink()
    for path in RELEASED.glob("*.sql"):
        shutil.copy(path, released / "migrations" / path.name)
    current = migration_files.sql_dir
    monkeypatch.setattr(migration_files, "sql_dir", lambda: released)
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute("CREATE TABLE users (id serial PRIMARY KEY, email text)")
        await migrations.migrate_up(conn)
        user = await conn.fetchval(
            "INSERT INTO users (email) VALUES ('old@example.com') RETURNING id"
        )
        await conn.execute("INSERT INTO stripe_events (event_id, type) VALUES ('evt_old', 't')")
        await conn.fetchrow(
            "SELECT * FROM ledger_credit($1, 3, 'PURCHASE', 'evt_old', 'cs_old', NULL, 'old')", user
        )

        monkeypatch.setattr(migration_files, "sql_dir", current)
        applied = await migrations.migrate_up(conn)
        assert [m.version for m in applied] == [v for v in ALL_VERSIONS if v > 6]
        report = await verify.verify(conn, stale_after_seconds=3600)
        assert report.ok, [(c.name, c.detail) for c in report.problems]
        assert "recorded: key integer, ledger bigint, lock low32, tenant none" in report.host_shape
        await conn.execute("INSERT INTO stripe_events (event_id, type) VALUES ('evt_new', 't')")
        row = await conn.fetchrow(
            "SELECT * FROM ledger_credit($1, 4, 'PURCHASE', 'evt_new', 'cs_new', NULL, 'new')", user
        )
        assert (row["applied"], row["balance"]) == (True, 7)

        # Down from an install of the released 0001 keeps the columns it added (nothing was
        # recorded), as it always did; the app's rows stay.
        await migrations.migrate_down(conn, to=0, drop_data=True)
        assert await conn.fetchval("SELECT credits_balance FROM users WHERE id = $1", user) == 7
    finally:
        await conn.close()


# --- migrations outside a transaction (CREATE INDEX CONCURRENTLY) ----------------------------

_CONCURRENT = """-- migrate:no-transaction
-- An index on a large table, built without locking out the receiver's inserts.

-- migrate:up
DROP INDEX CONCURRENTLY IF EXISTS stripe_events_test_concurrent_idx;
CREATE INDEX CONCURRENTLY stripe_events_test_concurrent_idx
    ON stripe_events (attempts);

-- migrate:down
DROP INDEX CONCURRENTLY IF EXISTS stripe_events_test_concurrent_idx;
"""


def _with_extra_migration(tmp_path: Path, text: str) -> Path:
    copy = tmp_path / "sql"
    shutil.copytree(queries.sql_dir(), copy)
    (copy / "migrations" / "9990_test_concurrent.sql").write_text(text)
    return copy


def test_the_no_transaction_marker_is_read_and_statements_split(tmp_path: Path) -> None:
    copy = _with_extra_migration(tmp_path, _CONCURRENT)
    loaded = {m.version: m for m in migrations.load_migrations(copy / "migrations")}
    assert loaded[9990].transactional is False
    assert loaded[1].transactional is True
    assert migration_files.split_statements(loaded[9990].up) == [
        "DROP INDEX CONCURRENTLY IF EXISTS stripe_events_test_concurrent_idx",
        "CREATE INDEX CONCURRENTLY stripe_events_test_concurrent_idx\n"
        "    ON stripe_events (attempts)",
    ]
    shipped = {m.name: m for m in migrations.load_migrations()}
    assert shipped["console_indexes"].transactional is False


async def test_a_no_transaction_migration_builds_its_index_concurrently(
    empty_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = _with_extra_migration(tmp_path, _CONCURRENT)
    monkeypatch.setattr(migration_files, "sql_dir", lambda: copy)
    conn = await asyncpg.connect(empty_database_url)
    try:
        applied = await migrations.migrate_up(conn)
        assert applied[-1].version == 9990
        valid = await conn.fetchval(
            "SELECT i.indisvalid FROM pg_index i "
            "WHERE i.indexrelid = 'stripe_events_test_concurrent_idx'::regclass"
        )
        assert valid is True
        # a crash part-way leaves the migration unrecorded: running it again succeeds
        await conn.execute("DELETE FROM schema_migrations WHERE version = 9990")
        assert [m.version for m in await migrations.migrate_up(conn)] == [9990]
        assert [m.version for m in await migrations.migrate_down(conn)] == [9990]
        assert (
            await conn.fetchval("SELECT to_regclass('stripe_events_test_concurrent_idx')") is None
        )
    finally:
        await conn.close()


async def test_the_same_file_without_the_marker_is_refused_by_postgres(
    empty_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = _with_extra_migration(tmp_path, _CONCURRENT.replace("-- migrate:no-transaction\n", ""))
    monkeypatch.setattr(migration_files, "sql_dir", lambda: copy)
    conn = await asyncpg.connect(empty_database_url)
    try:
        with pytest.raises(MigrationError) as info:
            await migrations.migrate_up(conn)
        assert "9990_test_concurrent.sql failed and was rolled back" in info.value.message
        assert "transaction block" in info.value.message
    finally:
        await conn.close()
