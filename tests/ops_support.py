"""Helpers shared by the ops tests: arrange rows with SQL, run the CLI, read the arq queue."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.worker_support import stop_worker as stop_process
from webhook_worker import cli
from webhook_worker.dev.embedded import free_port
from webhook_worker.job_queue import redis_from_url
from webhook_worker.ops import sample_events


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def run_cli(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    *args: str,
) -> CliResult:
    """`webhook-worker ARGS` through the entry point, in a thread (it runs its own loop)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    try:
        code = await asyncio.to_thread(cli.main, list(args))
    except SystemExit as exc:  # argparse: --help and usage errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


async def insert_user(
    db: asyncpg.Connection, *, email: str | None = None, balance: int = 0
) -> dict[str, Any]:
    row = await db.fetchrow(
        "INSERT INTO users (email, credits_balance) VALUES ($1, $2) RETURNING id, uuid",
        email,
        balance,
    )
    assert row is not None
    return {"id": row["id"], "uuid": str(row["uuid"])}


async def insert_event(
    db: asyncpg.Connection,
    *,
    event_id: str | None = None,
    event_type: str = "checkout.session.completed",
    status: str = "received",
    attempts: int = 0,
    error: str | None = None,
    age_seconds: float = 0,
    email: str | None = "buyer@example.com",
    credits: int = 10,
    session_id: str | None = None,
) -> str:
    """A stored event with a realistic payload, `age_seconds` old (received and updated)."""
    event = sample_events.checkout_session_event(
        event_type=event_type
        if event_type.startswith("checkout.")
        else "checkout.session.completed",
        event_id=event_id,
        email=email,
        credits=credits,
        session_id=session_id,
    )
    event["type"] = event_type
    await db.execute(
        """
        INSERT INTO stripe_events (event_id, type, livemode, api_version, raw_data,
                                   processing_status, attempts, error_message,
                                   received_at, updated_at)
        VALUES ($1, $2, false, $3, $4::jsonb, $5, $6, $7,
                now() - make_interval(secs => $8), now() - make_interval(secs => $8))
        """,
        event["id"],
        event_type,
        sample_events.API_VERSION,
        json.dumps(event),
        status,
        attempts,
        error,
        float(age_seconds),
    )
    return str(event["id"])


async def credit(
    db: asyncpg.Connection, user_id: int, event_id: str, amount: int, session_id: str
) -> None:
    """A ledger row plus the matching balance change, as the worker would commit them."""
    async with db.transaction():
        balance = await db.fetchval(
            "UPDATE users SET credits_balance = credits_balance + $2 WHERE id = $1 "
            "RETURNING credits_balance",
            user_id,
            amount,
        )
        await db.execute(
            "INSERT INTO credit_transactions (user_id, amount, balance_after, transaction_type, "
            "event_id, checkout_session_id) VALUES ($1, $2, $3, $4, $5, $6)",
            user_id,
            amount,
            balance,
            "PURCHASE" if amount > 0 else "REFUND",
            event_id,
            session_id,
        )


async def event_row(db: asyncpg.Connection, event_id: str) -> dict[str, Any]:
    row = await db.fetchrow(
        "SELECT processing_status, attempts, error_message, raw_data IS NULL AS pruned "
        "FROM stripe_events WHERE event_id = $1",
        event_id,
    )
    assert row is not None, event_id
    return dict(row)


async def queued_jobs(redis_url: str) -> list[list[str]]:
    """The event ids of each job waiting in the arq queues (arq's public `queued_jobs`): the
    test's Redis is flushed, so its only queue is the one its deployment derived."""
    client = redis_from_url(redis_url)
    try:
        jobs = []
        for name in await client.keys("arq:queue*"):
            jobs.extend(await client.queued_jobs(queue_name=name.decode()))
    finally:
        await client.aclose()
    return [list(job.args[0]) for job in sorted(jobs, key=lambda job: job.score or 0)]


async def queued_event_ids(redis_url: str) -> list[str]:
    """Every event id the queued jobs carry, sorted."""
    return sorted(event_id for job in await queued_jobs(redis_url) for event_id in job)


async def run_burst_worker(env: dict[str, str]) -> None:
    """`webhook-worker work --burst` as a child process: drain the queue, then exit."""
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "webhook_worker.cli", "work", "--burst"],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@contextlib.contextmanager
def running_receiver(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """`webhook-worker serve` on a free port as a child process; yields its base URL."""
    port = free_port()
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "webhook_worker.cli", "serve", "--port", str(port)],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_process(process)


async def receiver_healthy(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1) as client:
            return (await client.get(f"{url}/healthz")).status_code == 200
    except httpx.HTTPError:
        return False
