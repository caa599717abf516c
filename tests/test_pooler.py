"""Through a real PgBouncer in transaction pooling mode (issue 28): migrations, the money path
(receiver and worker processes) and the migration lock and lease, each against what Postgres
itself shows afterwards (pg_locks, the lease row, schema_migrations, the ledger)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import TEST_SECRET, sign, wait_for
from tests.integration.cluster import post_event
from tests.migration_support import CONCURRENT_INDEX, lock_leftovers, with_extra_migration
from tests.ops_support import running_receiver
from tests.pgbouncer import PgBouncer
from tests.worker_support import spawn_worker, stop_worker, worker_env
from webhook_worker.db import migration_lock, migrations
from webhook_worker.dev.embedded import free_port
from webhook_worker.errors import MigrationLockTimeout
from webhook_worker.exit_codes import EXIT_LOCKED, EXIT_OK
from webhook_worker.ops import sample_events

ALL_VERSIONS = [m.version for m in migrations.load_migrations()]


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
    # Every migration through the pooler, the no-transaction ones (CREATE INDEX CONCURRENTLY)
    # too: they run under the lease, which the other run waits for.
    runs = [_cli(_cli_env(pooled), "migrate", "up") for _ in range(2)]
    results = [await _finish(run) for run in runs]
    assert [code for code, _ in results] == [EXIT_OK, EXIT_OK], results

    conn = await asyncpg.connect(empty_database_url)
    try:
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")]
        assert sorted(versions) == ALL_VERSIONS  # each once
        assert await conn.fetchval("SELECT tenant_column FROM users_host_shape") == "tenant_id"
    finally:
        await conn.close()
    # Nothing stranded on a backend, no lease left.
    assert await lock_leftovers(empty_database_url) == (0, 0)
    # A direct run right after does not wait.
    code, out = await _finish(_cli(_cli_env(empty_database_url), "migrate", "up"), timeout=30)
    assert code == EXIT_OK, out
    assert "nothing to apply" in out
    assert "waiting" not in out
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


async def test_a_no_transaction_migration_through_pgbouncer_holds_a_lease_other_runs_wait_for(
    pgbouncer: PgBouncer, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CREATE INDEX CONCURRENTLY held up by an open writer: its run holds the lease and no
    advisory lock; the lease stays live past its own expiry while the build runs. A second
    run through the pooler waits naming it, a third gives up naming it; once the build ends
    the migration is applied once, the second run goes on, and nothing is left behind."""
    with_extra_migration(tmp_path, CONCURRENT_INDEX, monkeypatch)
    monkeypatch.setattr(migration_lock, "LEASE_SECONDS", 1.0)
    pooled = pgbouncer.through(database_url)
    observer = await asyncpg.connect(database_url)
    writer = await asyncpg.connect(database_url)
    runs = [
        await asyncpg.connect(
            pooled, statement_cache_size=0, server_settings={"application_name": f"deploy-{n}"}
        )
        for n in (1, 2, 3)
    ]
    tasks: list[asyncio.Task[list[migrations.Migration]]] = []
    try:
        writing = writer.transaction()
        await writing.start()
        await writer.execute("INSERT INTO stripe_events (event_id, type) VALUES ('evt_w', 't')")
        writer_pid = await writer.fetchval("SELECT pg_backend_pid()")
        tasks.append(asyncio.create_task(migrations.migrate_up(runs[0])))

        async def build_waiting_for_the_writer() -> int | None:
            return await observer.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE starts_with(query, '/* migration lease ')"
                " AND query LIKE '%CREATE INDEX CONCURRENTLY%' AND $1 = ANY(pg_blocking_pids(pid))",
                writer_pid,
            )

        build_pid = await wait_for(build_waiting_for_the_writer)

        async def lease_past_its_expiry() -> bool:
            return bool(
                await observer.fetchval(
                    "SELECT expires_at < now() FROM reconcile_lease WHERE name = 'migrate'"
                )
            )

        await wait_for(lease_past_its_expiry)
        assert await lock_leftovers(database_url) == (0, 1)  # a lease, no advisory lock

        told: list[str] = []
        tasks.append(asyncio.create_task(migrations.migrate_up(runs[1], on_wait=told.append)))
        await wait_for(lambda: told)
        holder = f"held by pid {os.getpid()} on "
        assert told[0].startswith(f"waiting for the migration lock, {holder}"), told
        assert (
            f"(deploy-1, lease for 9990_test_concurrent, statement running on backend pid "
            f"{build_pid} since " in told[0]
        )
        with pytest.raises(MigrationLockTimeout) as info:
            await migrations.migrate_up(runs[2], lock_timeout=0.5, on_wait=lambda _: None)
        assert holder in info.value.message
        assert f"SELECT pg_cancel_backend({build_pid})" in info.value.message
        assert not any(task.done() for task in tasks)

        await writing.commit()
        assert [m.version for m in await asyncio.wait_for(tasks[0], 60)] == [9990]
        assert await asyncio.wait_for(tasks[1], 60) == []
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in (observer, writer, *runs):
            await conn.close()
    assert await lock_leftovers(database_url) == (0, 0)
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations WHERE version = 9990")
        assert await conn.fetchval(
            "SELECT indisvalid FROM pg_index "
            "WHERE indexrelid = 'stripe_events_test_concurrent_idx'::regclass"
        )
    finally:
        await conn.close()


async def test_a_live_lease_holds_back_a_migration_through_pgbouncer_until_it_lapses(
    pgbouncer: PgBouncer, database_url: str
) -> None:
    """A no-transaction run that died holding the lease: every run through the pooler names
    it and gives up with exit 3 while it is live, and goes through once it expired."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO reconcile_lease (name, holder, acquired_at, expires_at) VALUES "
            "('migrate', 'release-host:4242:0badf00d 0051_event_search_backfill stuck-deploy-2', "
            "now(), now() + interval '1 hour')"
        )
        env = _cli_env(pgbouncer.through(database_url), MIGRATION_LOCK_TIMEOUT_SECONDS="2")
        code, out = await _finish(_cli(env, "migrate", "up"), timeout=60)
        assert code == EXIT_LOCKED, out
        assert (
            "waiting for the migration lock, held by pid 4242 on release-host (stuck-deploy-2, "
            "lease for 0051_event_search_backfill, lease expires " in out
        )
        assert "gave up after 2s" in out
        assert "if it died, its lease lapses at" in out
        await conn.execute(
            "UPDATE reconcile_lease SET expires_at = now() - interval '1 second' "
            "WHERE name = 'migrate'"
        )
        code, out = await _finish(_cli(env, "migrate", "up"), timeout=60)
        assert code == EXIT_OK, out
        assert "waiting" not in out
    finally:
        await conn.close()


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
    assert await lock_leftovers(database_url) == (0, 0)
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
