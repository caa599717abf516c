"""The embedded Postgres (`make run`, the test session, `make bench`) runs with the settings
its comments promise."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import pytest

from webhook_worker.dev.embedded import EmbeddedPostgres


async def test_embedded_postgres_creates_wal_segments_sparse_and_still_fsyncs(
    own_postgres: EmbeddedPostgres,
) -> None:
    """New WAL segments are not zero-filled under the WAL lock (a commit stall every 16 MB
    on a young cluster); durability is untouched."""
    conn = await asyncpg.connect(own_postgres.url)
    try:
        settings = {
            name: await conn.fetchval("SELECT current_setting($1)", name)
            for name in ("wal_init_zero", "fsync", "synchronous_commit")
        }
    finally:
        await conn.close()
    assert settings == {"wal_init_zero": "off", "fsync": "on", "synchronous_commit": "on"}


async def test_a_trust_cluster_from_before_passwords_is_switched_to_scram(
    services_dir: Path,
) -> None:
    """An old `.data/postgres` (made with `trust`) keeps its data and needs the password."""
    folder = services_dir / f"pg-old-{uuid.uuid4().hex[:8]}"
    old = EmbeddedPostgres(folder).start()
    try:
        conn = await asyncpg.connect(old.url)
        await conn.execute("CREATE TABLE kept (id int); INSERT INTO kept VALUES (7)")
        await conn.close()
    finally:
        old.stop()
    new = EmbeddedPostgres(folder, old.port, password="new-password-0123456789").start()
    try:
        assert "trust" not in (folder / "pgdata" / "pg_hba.conf").read_text()
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)):
            await asyncpg.connect(old.url, timeout=10)  # no password
        conn = await asyncpg.connect(new.url)
        assert await conn.fetchval("SELECT id FROM kept") == 7
        await conn.close()
    finally:
        new.destroy()


async def test_a_process_never_stops_a_postgres_it_did_not_start(
    own_postgres: EmbeddedPostgres,
) -> None:
    other = EmbeddedPostgres(own_postgres.data_dir, own_postgres.port, own_postgres.password)
    other.start()  # already running: used, not taken over
    assert not other.started
    other.stop()
    other.stop(mode="immediate")
    assert own_postgres.is_running()
    conn = await asyncpg.connect(own_postgres.url)
    await conn.close()
