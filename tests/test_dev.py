"""`webhook-worker dev` (what `make run` runs): embedded services, migrations, receiver and
worker in one command; a signed test event is credited; Ctrl-C stops everything cleanly.
The embedded services need the folder's passwords; a second `dev` on the folder refuses
before starting anything and leaves the first one running; a busy port is named."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError

from tests.conftest import wait_for
from webhook_worker.config import redact_url
from webhook_worker.dev.embedded import free_port


async def _only_with_the_password(data: Path, pg_dsn: str, redis_dsn: str) -> None:
    """No local user gets in without the folder's passwords (0600 files)."""
    for name in ("postgres.password", "redis.password", "services.json"):
        assert (data / name).stat().st_mode & 0o077 == 0, name
    hba = (data / "postgres" / "pgdata" / "pg_hba.conf").read_text()
    assert "scram-sha-256" in hba and "trust" not in hba
    no_password = pg_dsn.replace(f":{urlsplit(pg_dsn).password}@", "@")
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)):
        await asyncpg.connect(no_password, timeout=10)
    conn = await asyncpg.connect(pg_dsn, timeout=10)
    await conn.close()
    anonymous = aioredis.from_url(f"redis://127.0.0.1:{urlsplit(redis_dsn).port}/0")
    try:
        with pytest.raises(AuthenticationError):
            await anonymous.ping()
    finally:
        await anonymous.aclose()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def test_dev_runs_the_whole_service_and_stops_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port, console_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DATABASE_URL",
            "REDIS_URL",
            "STRIPE_WEBHOOK_SECRET",
            "APP_ENV",
            "OPS_TOKEN",
            "METRICS_PORT",
            "PROMETHEUS_MULTIPROC_DIR",
        }
    }
    log = tmp_path / "dev.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "webhook_worker.cli", "dev", "--port", str(port), "--data-dir",
         str(data), "--console-port", str(console_port)],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the test's Ctrl-C reaches it all
    )  # fmt: skip
    try:
        await wait_for(lambda: "Ctrl-C stops everything" in log.read_text(), timeout=60)
        output = log.read_text()
        assert f"http://127.0.0.1:{port}/webhooks/stripe" in output
        secret = re.search(r"secret:\s+(whsec_\w+)", output)
        assert secret is not None
        services = json.loads((data / "services.json").read_text())
        pg_dsn, redis_dsn = services["DATABASE_URL"], services["REDIS_URL"]
        pg_port, redis_port = urlsplit(pg_dsn).port, urlsplit(redis_dsn).port
        assert pg_port and redis_port
        await _only_with_the_password(data, pg_dsn, redis_dsn)
        await wait_for(lambda: _listening(port), timeout=30)

        sent = subprocess.run(
            [sys.executable, "-m", "webhook_worker.cli", "send-test-event", "--url",
             f"http://127.0.0.1:{port}/webhooks/stripe", "--email", "newcomer@example.com",
             "--credits", "7"],
            env={**env, "STRIPE_WEBHOOK_SECRET": secret.group(1), "APP_ENV": "development"},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stdout + sent.stderr

        async def credited() -> bool:
            conn = await asyncpg.connect(pg_dsn)
            try:
                balance = await conn.fetchval(
                    "SELECT credits_balance FROM users WHERE lower(email) = 'newcomer@example.com'"
                )
                return balance == 7
            finally:
                await conn.close()

        await wait_for(credited, timeout=60)

        # The banner names the console and the commands; the CLI finds the services itself.
        assert f"console:  http://127.0.0.1:{console_port}/" in output
        assert "webhook-worker events list" in output
        assert (data / "services.json").stat().st_mode & 0o077 == 0
        listed = subprocess.run(
            [sys.executable, "-m", "webhook_worker.cli", "events", "list", "--json"],
            env={**env, "DATA_DIR": str(data)}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        assert "using the services of the running `make run`" in listed.stderr
        assert redact_url(pg_dsn) in listed.stderr
        assert urlsplit(pg_dsn).password not in listed.stderr + output
        assert "checkout.session.completed" in listed.stdout
        await wait_for(lambda: _listening(console_port), timeout=30)
        async with httpx.AsyncClient() as client:
            login = await client.get(f"http://127.0.0.1:{console_port}/login")
        assert login.status_code == 200 and "Log in" in login.text

        # A second `make run` on the folder refuses at once and disturbs nothing.
        second = subprocess.run(
            [sys.executable, "-m", "webhook_worker.cli", "dev", "--port", str(free_port()),
             "--data-dir", str(data), "--console-port", str(free_port())],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 1
        assert f"already running (pid {proc.pid}): receiver :{port}, console :{console_port}" in (
            second.stderr
        )
        assert "embedded Postgres" not in second.stdout  # nothing was started
        assert (data / "services.json").exists()  # the first one's file is still there
        assert _listening(pg_port) and _listening(redis_port)
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        # How to log in: the printed token (none was set), not "OPS_TOKEN".
        token = re.search(
            r"token:\s+([0-9a-f]{64})\s+\(paste it on the console's login page\)", output
        )
        assert token is not None, output
        assert (data / "dev_ops_token").read_text().strip() == token.group(1)
        # The internal metrics listener serves both processes' samples.
        metrics = re.search(r"metrics:\s+(http://127\.0\.0\.1:\d+/metrics)", output)
        assert metrics is not None, output

        async def both_in_metrics() -> bool:
            async with httpx.AsyncClient() as client:
                try:
                    body = (await client.get(metrics.group(1))).text
                except httpx.HTTPError:
                    return False
            return "webhook_requests_total{" in body and "worker_events_total{" in body

        await wait_for(both_in_metrics, timeout=30)
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal: the whole group
        code = await asyncio.to_thread(proc.wait, 60)
    text = log.read_text()
    assert code == 0, text[-3000:]
    for noise in ("Traceback", "KeyboardInterrupt", "CancelledError"):
        assert noise not in text, text[-3000:]
    assert not _listening(port)
    assert not _listening(pg_port)
    assert not _listening(redis_port)
    assert not _listening(console_port)
    assert not (data / "services.json").exists()


def test_the_cli_ignores_a_services_file_in_production_or_of_a_dead_dev(tmp_path: Path) -> None:
    from webhook_worker.local_services import load_settings

    (tmp_path / "services.json").write_text(
        json.dumps(
            {"pid": os.getpid(), "DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x"}
        )
    )
    settings, note = load_settings({"DATA_DIR": str(tmp_path), "APP_ENV": "production"})
    assert note is None and settings.database_url is None
    settings, note = load_settings(
        {"DATA_DIR": str(tmp_path), "DATABASE_URL": "postgresql://mine/db"}
    )
    assert note and "REDIS_URL=redis://x" in note
    assert settings.database_url == "postgresql://mine/db" and settings.redis_url == "redis://x"
    assert settings.app_env == "development" and "REDIS_URL" in settings.origins
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "services.json").write_text(
        json.dumps({"pid": dead.pid, "DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x"})
    )
    settings, note = load_settings({"DATA_DIR": str(tmp_path)})
    assert note is None and settings.database_url is None


def test_a_busy_port_is_named_before_anything_starts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "webhook_worker.cli", "dev", "--port", str(free_port()),
             "--data-dir", str(data), "--console-port", str(busy)],
            env={k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"port {busy} (console) is busy" in result.stderr
    assert not (data / "postgres").exists()  # nothing was started
    assert not (data / "services.json").exists()


def test_services_json_is_removed_only_by_the_process_that_wrote_it(tmp_path: Path) -> None:
    from webhook_worker import local_services

    env = {"DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x"}
    theirs = tmp_path / "services.json"
    theirs.write_text(json.dumps({"pid": os.getppid(), **env}))  # another `dev`'s file
    local_services.remove(tmp_path)
    assert theirs.exists()
    local_services.write(tmp_path, env, None)
    local_services.remove(tmp_path)
    assert not theirs.exists()
