"""End to end: stored events drained by `webhook-worker work` processes, for many users and
for one hot user, until every event is credited."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from benchmarks.meters import CpuMeter, Roles, cpu_line, process_tree, rss_mb, this_process
from benchmarks.services import USERS
from webhook_worker.config import Settings
from webhook_worker.dev.servicekit import spawn_command, stop_processes
from webhook_worker.job_queue import create_redis, enqueue_events
from webhook_worker.ops.sample_events import checkout_session_event

START_UP_SECONDS = 2.0  # arq start-up (pools, cron registration) before the clock starts
WARM_UP_EVENTS = 2000


async def _load_events(dsn: str, count: int, hot: bool, tag: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = []
        for index in range(count):
            user = 1 if hot else index % USERS + 1
            event = checkout_session_event(
                client_reference_id=str(user), credits=5, event_id=f"evt_e2e_{tag}_{index}"
            )
            rows.append((event["id"], event["type"], json.dumps(event)))
        await conn.executemany(
            "INSERT INTO stripe_events (event_id, type, raw_data) VALUES ($1, $2, $3::jsonb)", rows
        )
        return [row[0] for row in rows]
    finally:
        await conn.close()


def load_events(dsn: str, count: int, hot: bool) -> list[str]:
    """`count` stored, unenqueued purchases: for USERS users, or all for user 1 (`hot`)."""
    tag = f"{'hot' if hot else 'random'}{time.time_ns()}"
    return asyncio.run(_load_events(dsn, count, hot, tag))


async def _check_credited(conn: asyncpg.Connection, ids: list[str]) -> None:
    """A credit benchmark measures credits: every event completed with its ledger row (an
    event ignored or failed, e.g. out of scope, would make the rate meaningless)."""
    uncredited = await conn.fetchval(
        "SELECT count(*) FROM stripe_events e WHERE e.event_id = ANY($1::text[]) AND NOT EXISTS "
        "(SELECT 1 FROM credit_transactions t WHERE t.event_id = e.event_id)",
        ids,
    )
    if uncredited:
        raise RuntimeError(f"{uncredited} of {len(ids)} events were not credited")


async def _drain(env: dict[str, str], ids: list[str], timeout: float) -> float:
    # The workers' own queue (QUEUE_NAME, else one per database) and job format.
    redis = await create_redis(Settings.from_env(env))
    conn = await asyncpg.connect(env["DATABASE_URL"])
    try:
        start = time.perf_counter()
        for offset in range(0, len(ids), 1000):
            await enqueue_events(redis, ids[offset : offset + 1000])
        while time.perf_counter() - start < timeout:
            # Cheap on purpose (the status index, only the unfinished rows): a poll that looked
            # up every id took a noticeable share of the CPU the workers were measured on.
            # Every earlier event in this database is final, so "none unfinished" means these.
            left = await conn.fetchval(
                "SELECT count(*) FROM stripe_events "
                "WHERE processing_status IN ('received', 'processing')"
            )
            if left == 0:
                elapsed = time.perf_counter() - start
                await _check_credited(conn, ids)
                return elapsed
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{left} events still unprocessed after {timeout}s")
    finally:
        await conn.close()
        await redis.aclose()


@dataclass
class Workers:
    """`count` worker processes on the phase's database and Redis."""

    env: dict[str, str]
    count: int
    logs: Path
    service_roles: Roles
    rss_mb: float = 0.0
    procs: list[psutil.Process] = field(default_factory=list)
    _children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __enter__(self) -> Workers:
        self._children = [
            spawn_command(["work"], self.env, self.logs / f"worker-{i}.log")
            for i in range(self.count)
        ]
        time.sleep(START_UP_SECONDS)
        self.procs = [p for w in self._children for p in process_tree(w.pid)]
        self.rss_mb = rss_mb(self.procs)
        return self

    def __exit__(self, *exc: object) -> None:
        stop_processes(self._children, timeout=20)

    def warm_up(self, events: int = WARM_UP_EVENTS) -> None:
        """Not measured: the workers' pool connections opened and their functions compiled,
        as in a worker that has been running. Without it the first repetition's Postgres
        CPU per credited event was 209 µs against 125-138 in the next two (each backend
        of the 2 x 20 connections compiles the ledger's PL/pgSQL on its first call)."""
        self.drain("warm-up", load_events(self.env["DATABASE_URL"], events, hot=False))

    def drain(self, label: str, ids: list[str], timeout: float = 300) -> dict[str, Any]:
        """Enqueue `ids` and time them until all are credited: events/s and CPU by role."""
        meter = CpuMeter(
            {"workers": lambda: self.procs, **self.service_roles, "bench": this_process}
        )
        meter.start()
        elapsed = asyncio.run(_drain(self.env, ids, timeout))
        by_role = meter.per_event(len(ids))
        self.rss_mb = max(self.rss_mb, rss_mb(self.procs))
        rate = len(ids) / elapsed
        print(f"  credit {label:<6} {rate:>8.0f} events/s")
        print(cpu_line(label, by_role))
        return {"rate": rate, "cpu_us_per_event_by_role": by_role}
