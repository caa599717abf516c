"""Through a real PgBouncer in transaction pooling mode (issue 28): migrations, the money path
(receiver and worker processes) and the migration lock, each against what Postgres itself
shows afterwards (pg_locks, schema_migrations, the ledger)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx

from tests.conftest import TEST_SECRET, sign, wait_for
from tests.integration.cluster import post_event
from tests.ops_support import running_receiver
from tests.pgbouncer import PgBouncer
from tests.worker_support import spawn_worker, stop_worker, worker_env
from webhook_worker.db import migration_lock, migrations
from webhook_worker.dev.embedded import free_port
from webhook_worker.exit_codes import EXIT_LOCKED, EXIT_OK
from webhook_worker.ops import sample_events

ALL_VERSIONS = [m.version for m in migrations.load_migrations()]
# The migrations before the first no-transaction file.
TRANSACTIONAL_PREFIX = [
    m.version
    for m in migrations.load_migrations()[
        : next(
            (i for i, m in enumerate(migrations.load_migrations()) if not m.transactional),
            None,
        )
    ]
]


def _cli_env(dsn: str, **overrides: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "APP_ENV": "test",
        "LOG_FORMAT": "console",
        "DATABASE_URL": dsn,
        "DB_STATEMENT_CACHE_SIZE": "0",
    }
    env.update(overrides)
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "webhook_worker.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def _finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    out, err = await asyncio.to_thread(proc.communicate, timeout=timeout)
    return proc.returncode, out + err


async def _advisory_locks(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        )
    finally:
        await conn.close()


async def test_two_migrate_runs_through_pgbouncer_apply_each_migration_once_and_leak_no_lock(
    pgbouncer: PgBouncer, empty_database_url: str
) -> None:
    # A multi-tenant host table: its tenant column reaches the migrations only through a
    # setting, which must survive the pooler (it was lost with a session set_config).
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(
            "CREATE TABLE users (id BIGSERIAL PRIMARY KEY, tenant_id INT NOT NULL, "
            "email TEXT, UNIQUE (tenant_id, email))"
        )
    finally:
        await conn.close()
    pooled = pgbouncer.through(empty_database_url)
    # Every transactional migration through the pooler; a no-transaction file (CREATE INDEX
    # CONCURRENTLY) has no transaction to scope its lock and must use a direct connection
    # (docs/deployment.md), so the run stops before the first one.
    last = TRANSACTIONAL_PREFIX[-1]
    runs = [_cli(_cli_env(pooled), "migrate", "up", "--to", str(last)) for _ in range(2)]
    results = [await _finish(run) for run in runs]
    assert [code for code, _ in results] == [EXIT_OK, EXIT_OK], results

    conn = await asyncpg.connect(empty_database_url)
    try:
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")]
        assert sorted(versions) == TRANSACTIONAL_PREFIX  # each once
        assert await conn.fetchval("SELECT tenant_column FROM users_host_shape") == "tenant_id"
    finally:
        await conn.close()
    assert await _advisory_locks(empty_database_url) == 0  # nothing stranded on a backend
    # A direct run right after does not wait, applies the rest, and then nothing is left.
    code, out = await _finish(_cli(_cli_env(empty_database_url), "migrate", "up"), timeout=120)
    assert code == EXIT_OK, out
    code, out = await _finish(_cli(_cli_env(empty_database_url), "migrate", "up"), timeout=30)
    assert "nothing to apply" in out
    # `migrate status` through the pooler reads only.
    code, out = await _finish(_cli(_cli_env(pooled), "migrate", "status"), timeout=30)
    assert code == EXIT_OK, out
    assert "pending" not in out


async def test_a_waiting_migration_names_the_holder_then_gives_up_with_exit_3(
    database_url: str,
) -> None:
    holder = await asyncpg.connect(
        database_url, server_settings={"application_name": "stuck-deploy-1"}
    )
    try:
        # An earlier version's session lock, left behind by a crashed run.
        await holder.execute("SELECT pg_advisory_lock($1)", migration_lock.MIGRATION_LOCK_KEY)
        pid = await holder.fetchval("SELECT pg_backend_pid()")
        env = _cli_env(database_url, MIGRATION_LOCK_TIMEOUT_SECONDS="2")
        code, out = await _finish(_cli(env, "migrate", "up"), timeout=60)
        assert code == EXIT_LOCKED, out
        assert f"pid {pid} (stuck-deploy-1" in out
        assert "waiting for the migration lock" in out
        assert "gave up after 2s" in out
        assert "pg_terminate_backend" in out
        # Released: the next run goes through.
        await holder.execute("SELECT pg_advisory_unlock($1)", migration_lock.MIGRATION_LOCK_KEY)
        code, out = await _finish(_cli(env, "migrate", "up"), timeout=60)
        assert code == EXIT_OK, out
    finally:
        await holder.close()


async def test_money_flows_through_pgbouncer_receiver_and_workers(
    pgbouncer: PgBouncer, database_url: str, clean_redis_url: str, tmp_path: Path
) -> None:
    """Purchases and a refund delivered to a receiver and two workers whose DATABASE_URL is
    PgBouncer in transaction mode: each credited once, the refund debited, verify clean."""
    conn = await asyncpg.connect(database_url)
    users = [
        await conn.fetchval("INSERT INTO users (email) VALUES ($1) RETURNING id", f"p{i}@ex.com")
        for i in range(3)
    ]
    await conn.close()
    pooled = pgbouncer.through(database_url)
    env = worker_env(
        pooled,
        clean_redis_url,
        STRIPE_WEBHOOK_SECRET=TEST_SECRET,
        DB_STATEMENT_CACHE_SIZE="0",
        DB_POOL_MAX="8",
    )
    # Written here, independently of the service: 3 users x 4 purchases of 5..8 credits.
    expected = {user: 0 for user in users}
    bodies = []
    for user in users:
        for credits in (5, 6, 7, 8):
            expected[user] += credits
            event = sample_events.checkout_session_event(
                client_reference_id=str(user), credits=credits
            )
            bodies.append(json.dumps(event).encode())
    refund_pi = "pi_pooled_refund"
    purchase = sample_events.checkout_session_event(
        client_reference_id=str(users[0]), credits=10, payment_intent=refund_pi, amount_total=1000
    )
    bodies.append(json.dumps(purchase).encode())
    expected[users[0]] += 10
    refund = sample_events.charge_refunded_event(
        payment_intent=refund_pi, amount=1000, amount_refunded=500
    )
    expected[users[0]] -= 5
    workers = [spawn_worker(env, tmp_path / f"worker-{i}.log") for i in range(2)]
    try:
        with running_receiver(env, tmp_path / "receiver.log") as url:
            await wait_for(lambda: _healthy(url), timeout=30)
            async with httpx.AsyncClient(timeout=5) as client:
                for body in bodies:
                    response = await post_event(client, f"{url}/webhooks/stripe", body, sign(body))
                    assert response.status_code == 200, response.text
                await _wait_completed(database_url, len(bodies))
                body = json.dumps(refund).encode()
                response = await post_event(client, f"{url}/webhooks/stripe", body, sign(body))
                assert response.status_code == 200, response.text
                await _wait_completed(database_url, len(bodies) + 1)
    finally:
        for worker in workers:
            stop_worker(worker)
    conn = await asyncpg.connect(database_url)
    try:
        balances = {
            r["id"]: r["credits_balance"]
            for r in await conn.fetch("SELECT id, credits_balance FROM users")
        }
        assert balances == expected, pgbouncer.log()[-3000:]
        sums = {
            r["user_id"]: r["total"]
            for r in await conn.fetch(
                "SELECT user_id, sum(amount) AS total FROM credit_transactions GROUP BY user_id"
            )
        }
        assert sums == expected
    finally:
        await conn.close()
    assert await _advisory_locks(database_url) == 0
    code, out = await _finish(_cli(_cli_env(pooled, REDIS_URL=clean_redis_url), "verify"))
    assert code == EXIT_OK, out


async def _healthy(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1) as client:
            return (await client.get(f"{url}/healthz")).status_code == 200
    except httpx.HTTPError:
        return False


async def _wait_completed(dsn: str, count: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:

        async def done() -> bool:
            finished = await conn.fetchval(
                "SELECT count(*) FROM stripe_events WHERE processing_status = 'completed'"
            )
            return int(finished) >= count

        await wait_for(done, timeout=60)
    finally:
        await conn.close()


async def test_migrate_uses_direct_database_url_when_database_url_is_a_pooler(
    empty_database_url: str,
) -> None:
    """DATABASE_URL points nowhere Postgres answers; DIRECT_DATABASE_URL is the server."""
    parts = empty_database_url.rsplit("@", 1)
    nowhere = f"{parts[0]}@127.0.0.1:{free_port()}/{parts[1].split('/', 1)[1]}"
    env = _cli_env(nowhere, DIRECT_DATABASE_URL=empty_database_url)
    code, out = await _finish(_cli(env, "migrate", "up"), timeout=120)
    assert code == EXIT_OK, out
    conn = await asyncpg.connect(empty_database_url)
    try:
        applied = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        assert applied == len(ALL_VERSIONS)
    finally:
        await conn.close()
