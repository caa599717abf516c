"""Helpers shared by the migration tests: an extra migration file beside the shipped ones,
and what Postgres shows of the migration lock afterwards."""

from __future__ import annotations

import shutil
from pathlib import Path

import asyncpg
import pytest

from webhook_worker.db import migration_files, queries

CONCURRENT_INDEX = """-- migrate:no-transaction
-- An index on a large table, built without locking out the receiver's inserts.

-- migrate:up
DROP INDEX CONCURRENTLY IF EXISTS stripe_events_test_concurrent_idx;
CREATE INDEX CONCURRENTLY stripe_events_test_concurrent_idx
    ON stripe_events (attempts);

-- migrate:down
DROP INDEX CONCURRENTLY IF EXISTS stripe_events_test_concurrent_idx;
"""


def with_extra_migration(
    tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch | None = None, *, version: int = 9990
) -> Path:
    """A copy of sql/ with `text` as migration `version` (test_concurrent); with
    `monkeypatch`, the runner reads that copy."""
    copy = tmp_path / "sql"
    shutil.copytree(queries.sql_dir(), copy)
    (copy / "migrations" / f"{version:04d}_test_concurrent.sql").write_text(text)
    if monkeypatch is not None:
        monkeypatch.setattr(migration_files, "sql_dir", lambda: copy)
    return copy


async def lock_leftovers(dsn: str) -> tuple[int, int]:
    """(advisory locks held in the database, rows of the migration lease)."""
    conn = await asyncpg.connect(dsn)
    try:
        locks = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        leases = 0
        if await conn.fetchval("SELECT to_regclass('reconcile_lease') IS NOT NULL"):
            leases = await conn.fetchval(
                "SELECT count(*) FROM reconcile_lease WHERE name = 'migrate'"
            )
        return int(locks), int(leases)
    finally:
        await conn.close()
