"""`webhook-worker dev` (what `make run` runs): embedded services, migrations, receiver and
worker in one command; a signed test event is credited; SIGTERM stops everything."""

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

import asyncpg
import httpx

from tests.conftest import wait_for
from webhook_worker.dev.embedded import free_port


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
    )  # fmt: skip
    try:
        await wait_for(lambda: "Ctrl-C stops everything" in log.read_text(), timeout=60)
        output = log.read_text()
        assert f"http://127.0.0.1:{port}/webhooks/stripe" in output
        secret = re.search(r"secret:\s+(whsec_\w+)", output)
        assert secret is not None
        pg_url = re.search(r"embedded Postgres: (\S+)", output)
        redis_url = re.search(r"embedded Redis:\s+(\S+)", output)
        assert pg_url and redis_url
        pg_port = int(pg_url.group(1).rsplit(":", 1)[1].split("/")[0])
        redis_port = int(redis_url.group(1).rsplit(":", 1)[1].split("/")[0])
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
            conn = await asyncpg.connect(pg_url.group(1))
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
        assert pg_url.group(1) in listed.stderr
        assert "checkout.session.completed" in listed.stdout
        await wait_for(lambda: _listening(console_port), timeout=30)
        async with httpx.AsyncClient() as client:
            login = await client.get(f"http://127.0.0.1:{console_port}/login")
        assert login.status_code == 200 and "Log in" in login.text

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
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
    assert code == 0, log.read_text()[-3000:]
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
