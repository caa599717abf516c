"""What a benchmark runs against: Postgres and Redis (embedded, or BENCH_DATABASE_URL /
BENCH_REDIS_URL), a database per phase, and the service's own processes."""

from __future__ import annotations

import asyncio
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import psutil
from arq.connections import ArqRedis, RedisSettings, create_pool

from benchmarks.meters import Roles, process_tree
from webhook_worker.dev.embedded import EmbeddedPostgres, EmbeddedRedis
from webhook_worker.dev.servicekit import (
    create_migrated_database,
    drop_database,
    dsn_with_database,
)

SECRET = "whsec_benchmark_secret_0123456789"  # noqa: S105 - a benchmark-only secret
USERS = 10_000


@dataclass
class Servers:
    """The Postgres and Redis of one run; the embedded ones are destroyed at the end."""

    admin_dsn: str
    redis_url: str
    embedded: list[EmbeddedPostgres | EmbeddedRedis] = field(default_factory=list)

    @classmethod
    def start(cls, work: Path, postgres_settings: dict[str, str] | None = None) -> Servers:
        """`postgres_settings`: server settings of the embedded Postgres beyond the usual."""
        admin_dsn = os.environ.get("BENCH_DATABASE_URL")
        redis_url = os.environ.get("BENCH_REDIS_URL")
        embedded: list[EmbeddedPostgres | EmbeddedRedis] = []
        if not admin_dsn:
            pg = EmbeddedPostgres(work / "postgres", settings=dict(postgres_settings or {}))
            pg.start()
            embedded.append(pg)
            admin_dsn = pg.url
        if not redis_url:
            redis = EmbeddedRedis(work / "redis").start()
            embedded.append(redis)
            redis_url = redis.url
        return cls(admin_dsn, redis_url, embedded)

    def roles(self) -> Roles:
        """The embedded Postgres (postmaster and backends) and Redis; none for given URLs."""
        roles: Roles = {}
        for service in self.embedded:
            if isinstance(service, EmbeddedPostgres):
                pidfile = service.data_dir / "pgdata" / "postmaster.pid"
                roles["postgres"] = functools.partial(_postmaster_tree, pidfile)
            elif service.pid is not None:
                roles["redis"] = functools.partial(process_tree, service.pid)
        return roles

    def restart_postgres(self, settings: dict[str, str] | None = None) -> None:
        """Restart the embedded Postgres with `settings` beyond the usual (none: the usual
        ones); a given server is left alone."""
        for service in self.embedded:
            if isinstance(service, EmbeddedPostgres):
                service.settings = dict(settings or {})
                service.restart()

    def destroy(self) -> None:
        for service in self.embedded:
            service.destroy()


def _postmaster_tree(pidfile: Path) -> list[psutil.Process]:
    return process_tree(int(pidfile.read_text().split()[0]))


async def fresh_database(admin_dsn: str, name: str) -> str:
    """A migrated database with USERS users, replacing an older one of that name."""
    dsn = await create_migrated_database(admin_dsn, name)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO users (email) SELECT 'bench' || g || '@example.com' "
            "FROM generate_series(1, $1) g",
            USERS,
        )
    finally:
        await conn.close()
    return dsn


async def drop_phase_database(admin_dsn: str, name: str) -> None:
    """A finished phase's database goes, so that its autovacuum does not run under the next
    phase (each phase leaves tens of thousands of fresh 3 KB rows behind)."""
    await drop_database(admin_dsn, dsn_with_database(admin_dsn, name))


async def _settle(dsn: str, emptied: tuple[str, ...]) -> None:
    # No CHECKPOINT: after one, the first change to every page writes the whole page to the
    # WAL (full_page_writes), and the step that follows measured that aftermath: c=32 p99
    # 203 ms against 19 ms without it (a --quick run), half-load p99 400 ms against 81 ms.
    # No timed checkpoint fell inside a step in 208 measured steps (checkpoint_timeout 5 min).
    # Emptied: the ingest steps each start from an empty `stripe_events`, pgbench's and the
    # receiver's alike, instead of one that grows by ~50k rows of 3 KB a step (past
    # shared_buffers by the third repetition, so later steps also measured evictions).
    conn = await asyncpg.connect(dsn)
    try:
        for table in emptied:
            await conn.execute(f'TRUNCATE "{table}" CASCADE')
        await conn.execute("VACUUM (ANALYZE)")
    finally:
        await conn.close()


def settle(dsn: str, emptied: tuple[str, ...] = ()) -> None:
    """Before a measured step: empty the `emptied` tables, then vacuum and analyse the
    phase's tables (so no autovacuum is due). Both sides of a ratio get the same treatment."""
    asyncio.run(_settle(dsn, emptied))


async def _flush_redis(url: str) -> None:
    redis: ArqRedis = await create_pool(RedisSettings.from_dsn(url))
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()


def flush_redis(url: str) -> None:
    asyncio.run(_flush_redis(url))


def service_env(dsn: str, redis_url: str) -> dict[str, str]:
    """The service's production settings, on the bench's servers."""
    return {
        **os.environ,
        "APP_ENV": "production",
        # The load generator's events are test-mode events (livemode: false).
        "STRIPE_MODE": "test",
        "LOG_FORMAT": "json",
        # The default level: one line per request and per event is part of the cost (until
        # stop 26 the bench ran at `warning`, which left out 40 % of the workers' CPU).
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "info"),
        "DATABASE_URL": dsn,
        "REDIS_URL": redis_url,
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "DB_POOL_MAX": "20",
        "SWEEP_INTERVAL_SECONDS": "60",
    }
