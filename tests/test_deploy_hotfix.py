"""`python deploy_hotfix.py` as a child process against a real Postgres and Redis."""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import base_env, wait_for
from tests.host_shapes import SHAPES, Shape, insert_user, snapshot
from tests.ops_support import receiver_healthy, running_receiver
from tests.worker_support import spawn_worker, stop_worker, worker_env
from webhook_worker.db import migrations
from webhook_worker.dev.embedded import free_port
from webhook_worker.ops import event_sender

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "deploy_hotfix.py"
ALL = [f"{m.version:04d}_{m.name}" for m in migrations.load_migrations()]


@dataclass
class Run:
    code: int
    out: str


def _env(database_url: str, redis_url: str, **overrides: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **base_env(database_url, redis_url)}
    env.update(overrides)
    return env


async def deploy(env: dict[str, str], *args: str) -> Run:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(SCRIPT), *args],
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )
    return Run(result.returncode, result.stdout)


async def _tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        return {row["table_name"] for row in rows}
    finally:
        await conn.close()


async def _migration_rows(dsn: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT version, applied_at::text FROM schema_migrations")
        return sorted((row["version"], row["applied_at"]) for row in rows)
    finally:
        await conn.close()


async def test_preflight_prints_the_scope_and_warns_on_production_in_test_mode(
    empty_database_url: str, clean_redis_url: str
) -> None:
    env = _env(empty_database_url, clean_redis_url, STRIPE_CONNECT_ACCOUNTS="acct_1Partner")
    plain = await deploy(env, "--dry-run")
    assert "preflight: scope: STRIPE_MODE=test; Connect accounts handled: acct_1Partner" in (
        plain.out
    )
    assert "warn" not in plain.out
    risky = await deploy({**env, "APP_ENV": "production", "STRIPE_MODE": "test"}, "--dry-run")
    assert "warn  preflight: scope: APP_ENV=production with STRIPE_MODE=test" in risky.out


async def test_dry_run_on_an_empty_database_prints_the_plan_and_changes_nothing(
    empty_database_url: str, clean_redis_url: str
) -> None:
    run = await deploy(_env(empty_database_url, clean_redis_url), "--dry-run")
    assert run.code == 0, run.out
    for name in ALL:
        assert f"plan: apply {name}" in run.out
    assert "CREATE TABLE stripe_events" in run.out  # the SQL it would apply
    assert "nothing changed" in run.out
    assert await _tables(empty_database_url) == set()


async def test_next_to_make_run_it_finds_its_services_like_the_other_commands(
    empty_database_url: str, clean_redis_url: str, tmp_path: Path
) -> None:
    from webhook_worker import local_services

    bare = {
        name: value
        for name, value in _env(empty_database_url, clean_redis_url).items()
        if name not in ("DATABASE_URL", "REDIS_URL", "APP_ENV")
    }
    alone = await deploy({**bare, "DATA_DIR": str(tmp_path)}, "--dry-run")
    assert alone.code == 2 and "DATABASE_URL is not set" in alone.out
    # This test process plays the running `make run` that wrote the file.
    urls = {"DATABASE_URL": empty_database_url, "REDIS_URL": clean_redis_url}
    local_services.write(tmp_path, urls, None)
    run = await deploy({**bare, "DATA_DIR": str(tmp_path)}, "--dry-run")
    assert run.code == 0, run.out
    assert "using the services of the running `make run`" in run.out
    assert f"plan: apply {ALL[0]}" in run.out


async def test_real_run_migrates_verifies_and_a_second_run_is_a_no_op(
    empty_database_url: str, clean_redis_url: str
) -> None:
    env = _env(empty_database_url, clean_redis_url)
    first = await deploy(env, "--yes")
    assert first.code == 0, first.out
    assert f"applied {', '.join(ALL)}" in first.out
    assert "verify passed" in first.out
    assert "deploy PASSED" in first.out
    assert {"users", "stripe_events", "credit_transactions", "schema_migrations"} <= (
        await _tables(empty_database_url)
    )
    applied = await _migration_rows(empty_database_url)

    second = await deploy(env, "--yes")
    assert second.code == 0, second.out
    assert "nothing to apply; up to date" in second.out
    assert "deploy PASSED" in second.out
    assert await _migration_rows(empty_database_url) == applied

    dry = await deploy(env, "--dry-run")
    assert dry.code == 0
    assert "plan: nothing to apply" in dry.out


async def test_rollback_then_skip_migration_fails_verify_with_a_clear_message(
    database_url: str, clean_redis_url: str
) -> None:
    env = _env(database_url, clean_redis_url)
    rolled = await deploy(env, "--rollback", "--to", "2", "--yes")
    assert rolled.code == 0, rolled.out
    assert "rolled back " + ", ".join(reversed(ALL[2:])) in rolled.out
    assert "credit_transactions" not in await _tables(database_url)

    checked = await deploy(env, "--skip-migration", "--yes")
    assert checked.code == 1, checked.out
    assert "table credit_transactions is missing" in checked.out
    assert f"not applied: {', '.join(ALL[2:])}" in checked.out
    assert "deploy FAILED" in checked.out

    redeployed = await deploy(env, "--yes")
    assert redeployed.code == 0, redeployed.out


async def _ledger_rows(dsn: str, purchases: int) -> None:
    """A user, `purchases` stored events and their ledger rows (as the worker writes them)."""
    conn = await asyncpg.connect(dsn)
    try:
        user = await conn.fetchval(
            "INSERT INTO users (email) VALUES ('r@example.com') RETURNING id"
        )
        for i in range(purchases):
            await conn.execute(
                "INSERT INTO stripe_events (event_id, type, processing_status) "
                "VALUES ($1, 'checkout.session.completed', 'completed')",
                f"evt_rb_{i}",
            )
            await conn.execute(
                "INSERT INTO credit_transactions (user_id, amount, balance_after, "
                "transaction_type, event_id) VALUES ($1, 1, $2, 'PURCHASE', $3)",
                user,
                i + 1,
                f"evt_rb_{i}",
            )
        await conn.execute("UPDATE users SET credits_balance = $2 WHERE id = $1", user, purchases)
    finally:
        await conn.close()


async def test_a_rollback_that_would_drop_ledger_rows_refuses_and_the_report_says_failed(
    database_url: str, clean_redis_url: str
) -> None:
    await _ledger_rows(database_url, 20)
    env = _env(database_url, clean_redis_url)
    dry = await deploy(env, "--rollback", "--to", "2", "--dry-run")
    assert "DROPS DATA: credit_transactions (20 rows" in dry.out, dry.out
    assert "stripe_events" not in dry.out.split("DROPS DATA")[-1].split("\n")[0]
    refused = await deploy(env, "--rollback", "--to", "2", "--yes")
    assert refused.code == 1, refused.out
    assert "credit_transactions (20 rows, dropped by 0003_credit_transactions down)" in refused.out
    assert "--drop-data" in refused.out
    assert "deploy FAILED" in refused.out and "deploy PASSED" not in refused.out
    assert "credit_transactions" in await _tables(database_url)
    assert len(await _migration_rows(database_url)) == len(ALL)  # nothing rolled back
    cli_refused = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "webhook_worker.cli", "migrate", "down", "--to", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli_refused.returncode == 1
    assert "credit_transactions (20 rows" in cli_refused.stderr
    assert len(await _migration_rows(database_url)) == len(ALL)

    dropped = await deploy(env, "--rollback", "--to", "2", "--yes", "--drop-data")
    assert dropped.code == 0, dropped.out
    assert "credit_transactions" not in await _tables(database_url)


def _deploy_on_a_terminal(env: dict[str, str], answer: str, *args: str) -> Run:
    """deploy_hotfix.py with a pseudo-terminal as stdin (so it asks), answering `answer`."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), *args],
            env=env,
            cwd=ROOT,
            stdin=follower,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        os.write(leader, f"{answer}\n".encode())
        out, _ = proc.communicate(timeout=120)
    finally:
        os.close(leader)
        os.close(follower)
    return Run(proc.returncode, out)


async def test_dropping_data_must_be_confirmed_by_typing_drop_data(
    database_url: str, clean_redis_url: str
) -> None:
    await _ledger_rows(database_url, 3)
    env = _env(database_url, clean_redis_url)
    args = ("--rollback", "--to", "2", "--drop-data")
    said_yes = await asyncio.to_thread(_deploy_on_a_terminal, env, "y", *args)
    assert said_yes.code == 1, said_yes.out
    assert "DELETING credit_transactions (3 rows)" in said_yes.out
    assert "Type --drop-data to confirm" in said_yes.out
    assert "not confirmed; nothing changed" in said_yes.out
    assert "credit_transactions" in await _tables(database_url)
    typed = await asyncio.to_thread(_deploy_on_a_terminal, env, "--drop-data", *args)
    assert typed.code == 0, typed.out
    assert "credit_transactions" not in await _tables(database_url)


async def test_rollback_dry_run_prints_the_down_sql_and_changes_nothing(
    database_url: str, clean_redis_url: str
) -> None:
    env = _env(database_url, clean_redis_url)
    run = await deploy(env, "--rollback", "--dry-run")
    assert run.code == 0, run.out
    assert f"plan: roll back {ALL[-1]}" in run.out
    assert migrations.load_migrations()[-1].down in run.out
    # Down to 0003: the plan includes 0004's down part, which drops a table.
    deeper = await deploy(env, "--rollback", "--to", "3", "--dry-run")
    assert deeper.code == 0, deeper.out
    assert "DROP TABLE" in deeper.out
    assert len(await _migration_rows(database_url)) == len(ALL)


async def test_preflight_fails_when_redis_is_unreachable(
    empty_database_url: str, clean_redis_url: str
) -> None:
    env = _env(empty_database_url, clean_redis_url, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    run = await deploy(env, "--yes")
    assert run.code == 1
    assert "preflight: redis" in run.out and "FAIL" in run.out
    assert await _tables(empty_database_url) == set()


async def test_preflight_refuses_a_malformed_secret_without_printing_it(
    empty_database_url: str, clean_redis_url: str
) -> None:
    env = _env(empty_database_url, clean_redis_url, STRIPE_WEBHOOK_SECRET="sk_live_oops_123456")
    run = await deploy(env, "--yes")
    assert run.code == 2
    assert "does not look like a Stripe webhook secret" in run.out
    assert "sk_live_oops_123456" not in run.out
    assert await _tables(empty_database_url) == set()


async def test_preflight_fails_without_a_webhook_secret(
    empty_database_url: str, clean_redis_url: str
) -> None:
    env = _env(empty_database_url, clean_redis_url)
    del env["STRIPE_WEBHOOK_SECRET"]
    run = await deploy(env, "--yes")
    assert run.code == 1
    assert "STRIPE_WEBHOOK_SECRET is not set" in run.out


# --- smoke test against a running receiver ---------------------------------------------------


@pytest.fixture
def receiver_url(database_url: str, clean_redis_url: str, tmp_path: Path) -> Iterator[str]:
    with running_receiver(base_env(database_url, clean_redis_url), tmp_path / "serve.log") as url:
        yield url


async def test_smoke_test_waits_for_a_worker_to_process_the_event(
    receiver_url: str,
    database_url: str,
    clean_redis_url: str,
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    await wait_for(lambda: receiver_healthy(receiver_url))
    worker = spawn_worker(worker_env(database_url, clean_redis_url), tmp_path / "worker.log")
    try:
        env = _env(database_url, clean_redis_url)
        run = await deploy(env, "--yes", "--smoke-url", f"{receiver_url}/webhooks/stripe")
    finally:
        stop_worker(worker)
    assert run.code == 0, run.out
    assert "processed by a worker (ignored, unhandled_type)" in run.out
    assert "deploy PASSED" in run.out
    stored = await db.fetch(
        "SELECT event_id, livemode, processing_status, status_reason FROM stripe_events "
        "WHERE type = $1",
        event_sender.SMOKE_EVENT_TYPE,
    )
    assert len(stored) == 1
    assert stored[0]["event_id"] in run.out
    assert stored[0]["livemode"] is False
    assert (stored[0]["processing_status"], stored[0]["status_reason"]) == (
        "ignored",
        "unhandled_type",
    )


async def test_smoke_test_fails_saying_no_worker_processed_the_event(
    receiver_url: str, database_url: str, clean_redis_url: str, db: asyncpg.Connection
) -> None:
    await wait_for(lambda: receiver_healthy(receiver_url))
    env = _env(database_url, clean_redis_url)
    run = await deploy(
        env, "--yes", "--smoke-url", f"{receiver_url}/webhooks/stripe", "--smoke-timeout", "2"
    )
    assert run.code == 1, run.out
    assert "was stored but no worker processed it within 2s (still received)" in run.out
    assert "deploy FAILED" in run.out and "deploy PASSED" not in run.out
    assert await db.fetchval("SELECT count(*) FROM stripe_events") == 1


async def test_smoke_test_fails_when_the_receiver_rejects_the_signature(
    receiver_url: str, database_url: str, clean_redis_url: str, db: asyncpg.Connection
) -> None:
    await wait_for(lambda: receiver_healthy(receiver_url))
    env = _env(database_url, clean_redis_url, STRIPE_WEBHOOK_SECRET="whsec_other_secret_0000")
    run = await deploy(env, "--yes", "--smoke-url", f"{receiver_url}/webhooks/stripe")
    assert run.code == 1, run.out
    assert "answered HTTP 400" in run.out
    assert await db.fetchval("SELECT count(*) FROM stripe_events") == 0


async def test_smoke_test_fails_when_nothing_listens(
    database_url: str, clean_redis_url: str
) -> None:
    url = f"http://127.0.0.1:{free_port()}/webhooks/stripe"
    run = await deploy(_env(database_url, clean_redis_url), "--yes", "--smoke-url", url)
    assert run.code == 1
    assert "cannot POST" in run.out


@pytest.mark.parametrize("shape", SHAPES, ids=str)
async def test_each_host_shape_dry_run_changes_nothing_and_a_real_run_is_idempotent(
    shape: Shape, empty_database_url: str, clean_redis_url: str
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(shape.ddl)
        seed = [await insert_user(conn, shape, "seed@example.com")]
        before = await snapshot(conn, seed)
    finally:
        await conn.close()
    env = _env(empty_database_url, clean_redis_url)
    if shape.tenant_env:
        env["USERS_TENANT_COLUMN"] = shape.tenant_env

    dry = await deploy(env, "--dry-run")
    assert dry.code == 0, dry.out
    assert f"host: key: users.id {shape.key_type}; ledger user_id" in dry.out
    assert "host: lock key: ledger_lock_key = " in dry.out
    if shape.tenant:
        assert f"unique per tenant, users.{shape.tenant}" in dry.out
    for column in shape.required:
        assert f"users.{column}" in dry.out  # "required columns without a default: …"
    assert await _tables(empty_database_url) == {"users"}
    conn = await asyncpg.connect(empty_database_url)
    try:
        assert await snapshot(conn, seed) == before
    finally:
        await conn.close()

    first = await deploy(env, "--yes")
    assert f"applied {', '.join(ALL)}" in first.out, first.out
    applied = await _migration_rows(empty_database_url)
    second = await deploy(env, "--yes")
    assert "nothing to apply; up to date" in second.out
    assert await _migration_rows(empty_database_url) == applied
    for run in (first, second):
        if shape.required:  # verify names what blocks creating users by email
            assert run.code != 0 and "users by email" in run.out, run.out
        else:
            assert run.code == 0 and "deploy PASSED" in run.out, run.out


async def test_dry_run_on_a_composite_key_prints_the_refusal_and_changes_nothing(
    empty_database_url: str, clean_redis_url: str
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(
            "CREATE TABLE users (tenant_id INT, id BIGINT, email TEXT, PRIMARY KEY (tenant_id, id))"
        )
    finally:
        await conn.close()
    env = _env(empty_database_url, clean_redis_url)
    for args in (("--dry-run",), ("--yes",)):
        run = await deploy(env, *args)
        assert run.code != 0
        assert "composite primary key (tenant_id, id)" in run.out
        assert await _tables(empty_database_url) == {"users"}


async def test_a_users_table_in_another_schema_fails_the_dry_run_then_deploys_when_named(
    empty_database_url: str, clean_redis_url: str
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(
            "CREATE SCHEMA app; CREATE TABLE app.users (id BIGSERIAL PRIMARY KEY, email TEXT)"
        )
    finally:
        await conn.close()
    run = await deploy(_env(empty_database_url, clean_redis_url), "--dry-run")
    assert run.code != 0
    assert "app.users exists in another schema" in run.out
    assert "USERS_TABLE=app.users" in run.out
    assert await _tables(empty_database_url) == set()  # nothing in public, not even users

    run = await deploy(_env(empty_database_url, clean_redis_url, USERS_TABLE="app.users"), "--yes")
    assert run.code == 0, run.out
    assert "deploy PASSED" in run.out
    assert "users" not in await _tables(empty_database_url)
