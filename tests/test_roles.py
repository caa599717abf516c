"""Least privilege (docs/deployment.md, "Database roles"), against a real Postgres: the
documented grants, run as written, install the service with a migration role next to a
host-owned `users`, run it with a runtime role and read it with a read-only role; what is
missing is named with the GRANT that fixes it."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from tests.conftest import SERVICE_PASSWORD, TEST_SECRET, sign, wait_for
from tests.integration.cluster import post_event
from tests.ops_support import running_receiver
from tests.worker_support import spawn_worker, stop_worker, worker_env
from webhook_worker.config import Settings
from webhook_worker.dev.embedded import free_port
from webhook_worker.exit_codes import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE
from webhook_worker.ops import sample_events
from webhook_worker.receiver.app import create_app

ROOT = Path(__file__).resolve().parent.parent


def _as(dsn: str, role: str) -> str:
    parts = urlsplit(dsn)
    password = f":{parts.password}" if parts.password else ""
    return urlunsplit(parts._replace(netloc=f"{role}{password}@{parts.hostname}:{parts.port}"))


def _documented_grants(names: dict[str, str]) -> list[str]:
    """The SQL block of docs/deployment.md "Database roles", split into statements, with the
    example names replaced by this test's."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    section = text.split("## Database roles", 1)[1]
    block = re.search(r"```sql\n(.*?)```", section, re.DOTALL)
    assert block is not None
    sql = "\n".join(
        line for line in block.group(1).splitlines() if not line.strip().startswith("--")
    )
    for example, actual in names.items():
        sql = re.sub(rf"\b{example}\b", actual, sql)
    sql = sql.replace("PASSWORD '…'", f"PASSWORD '{SERVICE_PASSWORD}'")
    return [statement.strip() for statement in sql.split(";") if statement.strip()]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook_worker.cli", *args],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_install_as_the_migration_role_run_as_the_runtime_role_read_as_read_only(
    empty_database_url: str, clean_redis_url: str, tmp_path: Path, log_stream: io.StringIO
) -> None:
    tag = uuid.uuid4().hex[:6]
    names = {
        "webhook_migrator": f"ww_mig_{tag}",
        "webhook_runtime": f"ww_rt_{tag}",
        "webhook_readonly": f"ww_ro_{tag}",
        "app_owner": f"ww_app_{tag}",
        "app": urlsplit(empty_database_url).path.lstrip("/"),
    }
    statements = _documented_grants(names)
    owner_grant = f"GRANT {names['app_owner']} TO {names['webhook_migrator']}"
    assert owner_grant in statements
    admin = await asyncpg.connect(empty_database_url)
    try:
        # The host application's users, owned by its own role, with a customer in it.
        await admin.execute(f"CREATE ROLE {names['app_owner']}")
        await admin.execute(
            "CREATE TABLE users (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
            "email TEXT, name TEXT)"
        )
        customer = await admin.fetchval(
            "INSERT INTO users (email, name) VALUES ('host@example.com', 'Host') RETURNING id"
        )
        await admin.execute(f"ALTER TABLE users OWNER TO {names['app_owner']}")
        for statement in statements:
            if statement != owner_grant:  # first without membership of the users owner
                await admin.execute(statement)
    finally:
        await admin.close()

    migrator = _as(empty_database_url, names["webhook_migrator"])
    runtime = _as(empty_database_url, names["webhook_runtime"])
    readonly = _as(empty_database_url, names["webhook_readonly"])
    base = {"APP_ENV": "test", "REDIS_URL": clean_redis_url, "STRIPE_WEBHOOK_SECRET": TEST_SECRET}
    # The preflight fails (it used to pass, then `migrate up` failed on "must be owner").
    dry = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(ROOT / "deploy_hotfix.py"), "--dry-run"],
        env={"PATH": os.environ.get("PATH", ""), **base, "DATABASE_URL": migrator},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dry.returncode == EXIT_PROBLEM, dry.stdout
    assert f"cannot alter table users (owned by {names['app_owner']})" in dry.stdout
    assert f"GRANT {names['app_owner']} TO {names['webhook_migrator']}" in dry.stdout
    assert "deploy FAILED" in dry.stdout
    checked = await asyncio.to_thread(_cli, {**base, "DATABASE_URL": migrator}, "verify")
    assert checked.returncode == EXIT_PROBLEM
    assert "cannot alter table users" in checked.stdout + checked.stderr
    refused = await asyncio.to_thread(_cli, {**base, "DATABASE_URL": migrator}, "migrate", "up")
    assert refused.returncode == EXIT_PROBLEM
    assert "nothing was changed" in refused.stderr

    admin = await asyncpg.connect(empty_database_url)
    try:
        await admin.execute(owner_grant)
    finally:
        await admin.close()
    installed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(ROOT / "deploy_hotfix.py"), "--yes"],
        env={"PATH": os.environ.get("PATH", ""), **base, "DATABASE_URL": migrator},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert installed.returncode == EXIT_OK, installed.stdout
    assert "deploy PASSED" in installed.stdout

    # The service as the runtime role: a purchase for the host's customer is credited.
    env = worker_env(runtime, clean_redis_url, STRIPE_WEBHOOK_SECRET=TEST_SECRET)
    worker = spawn_worker(env, tmp_path / "worker.log")
    db = await asyncpg.connect(empty_database_url)
    try:
        with running_receiver(env, tmp_path / "receiver.log") as url:
            event = sample_events.checkout_session_event(
                client_reference_id=str(customer), credits=25
            )
            body = json.dumps(event).encode()
            async with httpx.AsyncClient(timeout=5) as client:
                response = await post_event(client, f"{url}/webhooks/stripe", body, sign(body))
            assert response.status_code == 200, response.text

            async def credited() -> bool:
                balance = await db.fetchval(
                    "SELECT credits_balance FROM users WHERE id = $1", customer
                )
                return bool(balance == 25)

            await wait_for(credited, timeout=60)
    finally:
        stop_worker(worker)
        await db.close()
    logs = (tmp_path / "worker.log").read_text() + (tmp_path / "receiver.log").read_text()
    assert "permission denied" not in logs, logs[-3000:]

    # Read-only commands with read-only grants.
    ro_env = {**base, "DATABASE_URL": readonly}
    for args in (("events", "list"), ("stats",), ("migrate", "status"), ("verify",)):
        result = await asyncio.to_thread(_cli, ro_env, *args)
        assert result.returncode == EXIT_OK, (args, result.stdout, result.stderr)

    # A grant taken away: start-up refuses naming it, /readyz names it, the store logs it.
    settings = Settings.from_env({**base, "DATABASE_URL": runtime, "METRICS_ON_RECEIVER": "true"})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        admin = await asyncpg.connect(empty_database_url)
        try:
            await admin.execute(f"REVOKE INSERT ON stripe_events FROM {names['webhook_runtime']}")
        finally:
            await admin.close()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
            ready = await client.get("/readyz")
            body = json.dumps(sample_events.checkout_session_event(credits=1)).encode()
            stored = await client.post(
                "/webhooks/stripe", content=body, headers={"Stripe-Signature": sign(body)}
            )
    assert stored.status_code == 503
    assert "permission denied for table stripe_events" in log_stream.getvalue()
    assert ready.status_code == 503
    expected = (
        f"permission denied for table stripe_events: GRANT INSERT ON stripe_events TO "
        f"{names['webhook_runtime']}"
    )
    assert ready.json()["grants"] == expected
    started = await asyncio.to_thread(
        _cli, {**base, "DATABASE_URL": runtime}, "serve", "--port", str(free_port())
    )
    assert started.returncode == EXIT_USAGE
    assert expected in started.stderr
