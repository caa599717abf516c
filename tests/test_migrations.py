"""Migrations against a real Postgres: up/down/up, an existing app `users`, races, edits."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path

import asyncpg
import pytest

from tests.migration_support import CONCURRENT_INDEX, lock_leftovers, with_extra_migration
from webhook_worker.db import migration_files, migrations, queries
from webhook_worker.errors import MigrationError, MigrationLockTimeout
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


def test_the_no_transaction_marker_is_read_and_statements_split(tmp_path: Path) -> None:
    copy = with_extra_migration(tmp_path, CONCURRENT_INDEX)
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
    with_extra_migration(tmp_path, CONCURRENT_INDEX, monkeypatch)
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
    with_extra_migration(
        tmp_path, CONCURRENT_INDEX.replace("-- migrate:no-transaction\n", ""), monkeypatch
    )
    conn = await asyncpg.connect(empty_database_url)
    try:
        with pytest.raises(MigrationError) as info:
            await migrations.migrate_up(conn)
        assert "9990_test_concurrent.sql failed and was rolled back" in info.value.message
        assert "transaction block" in info.value.message
    finally:
        await conn.close()


# --- the migration lease (a no-transaction file's lock, safe through a pooler) --------------

_DEAD_RUN = "deadhost:4242:0badf00d 0051_event_search_backfill crashed-deploy"


def test_every_no_transaction_migration_comes_after_the_lease_table() -> None:
    shipped = migrations.load_migrations()
    lease_table = next(m.version for m in shipped if "TABLE IF NOT EXISTS reconcile_lease" in m.up)
    assert [m.version for m in shipped if not m.transactional]
    assert all(m.version > lease_table for m in shipped if not m.transactional)


async def test_a_no_transaction_migration_before_the_lease_table_is_refused(
    empty_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_extra_migration(tmp_path, CONCURRENT_INDEX, monkeypatch, version=9)
    conn = await asyncpg.connect(empty_database_url)
    try:
        with pytest.raises(MigrationError) as info:
            await migrations.migrate_up(conn, to=9)
        assert "0009_test_concurrent runs outside a transaction" in info.value.message
        assert "number it after 0030" in info.value.message
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == 8
    finally:
        await conn.close()


async def test_a_no_transaction_migration_runs_under_the_lease_and_leaves_nothing_behind(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The migration's own statement records what it ran under.
    observing = CONCURRENT_INDEX.replace(
        "-- migrate:down",
        "CREATE TABLE lease_seen AS\n"
        "    SELECT holder, expires_at > now() AS live,\n"
        "           (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory') AS locks\n"
        "    FROM reconcile_lease WHERE name = 'migrate';\n\n"
        "-- migrate:down\nDROP TABLE IF EXISTS lease_seen;",
    )
    with_extra_migration(tmp_path, observing, monkeypatch)
    conn = await asyncpg.connect(database_url, server_settings={"application_name": "deploy-7"})
    try:
        assert [m.version for m in await migrations.migrate_up(conn)] == [9990]
        seen = await conn.fetch("SELECT holder, live, locks FROM lease_seen")
        assert len(seen) == 1
        token, migration, name = seen[0]["holder"].split(" ", 2)
        assert token.split(":")[1] == str(os.getpid())
        assert (migration, name, seen[0]["live"]) == ("9990_test_concurrent", "deploy-7", True)
        assert seen[0]["locks"] == 0  # no advisory lock, of any form, while it ran
        assert await lock_leftovers(database_url) == (0, 0)
        await migrations.migrate_down(conn, drop_data=True)
        assert await lock_leftovers(database_url) == (0, 0)
    finally:
        await conn.close()


async def _stopped_unrecorded(conn: asyncpg.Connection) -> str:
    """`migrate up` stops with a MigrationError before recording 9990; its message."""
    with pytest.raises(MigrationError) as info:
        await migrations.migrate_up(conn)
    recorded = "SELECT EXISTS (SELECT FROM schema_migrations WHERE version = 9990)"
    assert not await conn.fetchval(recorded)
    return info.value.message


async def _plant_lease(conn: asyncpg.Connection, expires: str) -> None:
    """The lease of a run that died, expiring at `expires` (an SQL expression)."""
    await conn.execute(
        "INSERT INTO reconcile_lease (name, holder, acquired_at, expires_at) "
        f"VALUES ('migrate', $1, now() - interval '1 hour', {expires})",
        _DEAD_RUN,
    )


async def test_a_no_transaction_migration_that_fails_part_way_drops_its_lease(
    db: asyncpg.Connection, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = CONCURRENT_INDEX.replace("-- migrate:down", "SELECT 1 / 0;\n\n-- migrate:down")
    with_extra_migration(tmp_path, failing, monkeypatch)
    message = await _stopped_unrecorded(db)
    assert "9990_test_concurrent.sql failed and stopped part-way" in message
    assert "division by zero" in message
    assert await lock_leftovers(database_url) == (0, 0)


_TAKE_OVER = (
    "UPDATE reconcile_lease SET holder = 'otherhost:7:cafe0000 9990_test_concurrent other-run', "
    "expires_at = now() + interval '1 hour' WHERE name = 'migrate';\n"
)


@pytest.mark.parametrize("when", ["before its next statement", "before its record"])
async def test_a_run_whose_lease_was_taken_over_stops_and_records_nothing(
    when: str,
    db: asyncpg.Connection,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another run took the lease over (as after an expiry): the run notices at its next
    renewal or when it would record the migration, and leaves the lease to the other."""
    up, down = CONCURRENT_INDEX.split("-- migrate:down")
    if when == "before its next statement":
        up = up.replace("CREATE INDEX CONCURRENTLY", _TAKE_OVER + "CREATE INDEX CONCURRENTLY")
    else:
        up += _TAKE_OVER
    with_extra_migration(tmp_path, up + "-- migrate:down" + down, monkeypatch)
    message = await _stopped_unrecorded(db)
    lost = "9990_test_concurrent stopped: its migration lease expired and another run took"
    assert lost in message
    assert "pid 7 on otherhost (other-run, lease for 9990_test_concurrent" in message
    built = await db.fetchval("SELECT to_regclass('stripe_events_test_concurrent_idx')")
    assert (built is None) == (when == "before its next statement")
    holder = await db.fetchval("SELECT holder FROM reconcile_lease WHERE name = 'migrate'")
    assert holder.startswith("otherhost:7:cafe0000 ")
    assert await lock_leftovers(database_url) == (0, 1)


async def test_an_expired_lease_of_a_dead_run_is_taken_over(
    db: asyncpg.Connection, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_extra_migration(tmp_path, CONCURRENT_INDEX, monkeypatch)
    await _plant_lease(db, "now() - interval '1 second'")
    told: list[str] = []
    applied = await migrations.migrate_up(db, lock_timeout=5, on_wait=told.append)
    assert [m.version for m in applied] == [9990]
    assert told == []  # never waited for it
    assert await lock_leftovers(database_url) == (0, 0)


async def test_a_live_lease_holds_back_every_run(db: asyncpg.Connection) -> None:
    await _plant_lease(db, "now() + interval '1 hour'")
    holder = "pid 4242 on deadhost (crashed-deploy, lease for 0051_event_search_backfill"
    for run in (migrations.migrate_up, migrations.migrate_down):
        told: list[str] = []
        with pytest.raises(MigrationLockTimeout) as info:
            await run(db, lock_timeout=0.5, on_wait=told.append)
        assert len(told) == 1  # named once, however many polls
        lock = "waiting for the migration lock"
        assert told[0].startswith(f"{lock}, held by {holder}, lease expires ")
        assert f"gave up after 0.5s {lock}, held by {holder}" in info.value.message
        assert "if it died, its lease lapses at" in info.value.message
    assert await db.fetchval("SELECT count(*) FROM schema_migrations") == len(ALL_VERSIONS)
