"""The embedded Postgres (`make run`, the test session, `make bench`) runs with the settings
its comments promise."""

from __future__ import annotations

import asyncpg

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
