"""Real processes for the reliability tests: uvicorn receivers and arq workers as children,
on a test-owned Postgres and Redis that the test may stop, restart or kill.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from webhook_worker.dev.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from webhook_worker.dev.servicekit import spawn_command, stop_process, wait_http_ok


@dataclass
class Cluster:
    postgres: EmbeddedPostgres
    redis: EmbeddedRedis
    log_dir: Path
    secrets: str
    extra_env: dict[str, str] = field(default_factory=dict)
    receivers: list[tuple[int, subprocess.Popen[bytes]]] = field(default_factory=list)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "APP_ENV": "test",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "warning",
            "DATABASE_URL": self.postgres.url,
            "REDIS_URL": self.redis.url,
            "STRIPE_WEBHOOK_SECRET": self.secrets,
            "RETRY_BASE_SECONDS": "0",
            "JOB_TIMEOUT_SECONDS": "5",
            "STALE_AFTER_SECONDS": "5",
            "SWEEP_INTERVAL_SECONDS": "1",
            "MAX_TRIES": "20",
            "DB_POOL_MAX": "10",
        }
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def _spawn(self, args: list[str], name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        return spawn_command(args, env, self.log_dir / f"{name}.log")

    def start_receiver(self, **env: str) -> str:
        port = free_port()
        proc = self._spawn(
            ["serve", "--host", "127.0.0.1", "--port", str(port)],
            f"receiver-{port}",
            self.env(**env),
        )
        self.receivers.append((port, proc))
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", process=proc)
        return f"http://127.0.0.1:{port}/webhooks/stripe"

    def restart_receiver(self, index: int, **env: str) -> str:
        port, proc = self.receivers[index]
        stop_process(proc)
        new = self._spawn(
            ["serve", "--host", "127.0.0.1", "--port", str(port)],
            f"receiver-{port}",
            self.env(**env),
        )
        self.receivers[index] = (port, new)
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", process=new)
        return f"http://127.0.0.1:{port}/webhooks/stripe"

    def start_worker(self, **env: str) -> subprocess.Popen[bytes]:
        proc = self._spawn(["work"], f"worker-{len(self.workers)}", self.env(**env))
        self.workers.append(proc)
        return proc

    def kill_worker(self, index: int) -> None:
        """SIGKILL: no shutdown hook runs, in-flight jobs are abandoned mid-transaction."""
        proc = self.workers[index]
        proc.kill()
        proc.wait(10)

    def stop(self) -> None:
        for _, proc in self.receivers:
            stop_process(proc)
        for proc in self.workers:
            stop_process(proc)

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.log_dir.glob("*.log"))
        )


async def post_event(
    client: httpx.AsyncClient, url: str, body: bytes, header: str, *, attempts: int = 60
) -> httpx.Response:
    """Deliver like Stripe does: retry on 5xx and connection errors until a 2xx/4xx answer."""
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            response = await client.post(
                url,
                content=body,
                headers={"Stripe-Signature": header, "Content-Type": "application/json"},
            )
            if response.status_code < 500:
                return response
        except httpx.HTTPError as exc:
            last = exc
        await asyncio.sleep(min(0.05 * 2**attempt, 1.0))  # Stripe's own backoff, shortened
    raise AssertionError(f"delivery never accepted after {attempts} attempts: {last!r}")
