"""The benchmark's instruments: CPU per event by process role, the CPU budget, the largest
RSS, and what the database server did in the background during a step (checkpoints,
autovacuum) so that a disturbed step shows as one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import psutil

Roles = dict[str, Callable[[], list[psutil.Process]]]


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (uvicorn workers, Postgres backends…)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def this_process() -> list[psutil.Process]:
    return [psutil.Process()]


def rss_mb(procs: list[psutil.Process]) -> float:
    """Largest single-process RSS: each uvicorn/arq process is its own footprint."""
    sizes = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            sizes.append(p.memory_info().rss / 2**20)
    return max(sizes, default=0.0)


def _own_cpu(proc: psutil.Process) -> float:
    """CPU seconds of a process; for this one, with the waited-for children (load generator)."""
    times = proc.cpu_times()
    total = times.user + times.system
    if proc.pid == os.getpid():
        total += times.children_user + times.children_system
    return total


class CpuMeter:
    """CPU seconds spent by each process role over one step, to report CPU per event by role.

    A process that exits during the step loses its share (pool connections stay for the
    whole step, so that is rare); one that starts during it counts from zero.
    """

    def __init__(self, roles: Roles) -> None:
        self._roles = roles
        self._start: dict[str, dict[int, float]] = {}

    def _read(self) -> dict[str, dict[int, float]]:
        readings: dict[str, dict[int, float]] = {}
        for role, procs in self._roles.items():
            readings[role] = {}
            for proc in procs():
                with contextlib.suppress(psutil.NoSuchProcess):
                    readings[role][proc.pid] = _own_cpu(proc)
        return readings

    def start(self) -> None:
        self._start = self._read()

    def per_event(self, events: int) -> dict[str, float]:
        """Microseconds of CPU per event by role since `start`."""
        end = self._read()
        out = {}
        for role, readings in end.items():
            before = self._start.get(role, {})
            seconds = sum(cpu - before.get(pid, 0.0) for pid, cpu in readings.items())
            out[role] = seconds / events * 1e6 if events else 0.0
        return out


class OthersShare:
    """The share of the machine's CPU taken during a step by processes outside the benchmark
    (other jobs on a shared machine): busy CPU minus this process and its children (load
    generator, pgbench, receiver, workers, Redis) and the `extra` roles (Postgres)."""

    def __init__(self, extra: Roles) -> None:
        self._extra = extra
        self._start = (0.0, 0.0, 0.0, 0.0)

    def _read(self) -> tuple[float, float, float, float]:
        times = psutil.cpu_times()
        busy = times.user + times.nice + times.system  # interrupts: the loopback's, ours too
        me = psutil.Process()
        procs = {p.pid: p for p in [*me.children(recursive=True)]}
        for role in self._extra.values():
            procs.update((p.pid, p) for p in role())
        ours = 0.0
        for proc in [me, *procs.values()]:
            with contextlib.suppress(psutil.NoSuchProcess):
                # With the children it has reaped: pgbench's and the drain's Postgres
                # backends end within the step and only show in the postmaster's times.
                ours += sum(proc.cpu_times()[:4])
        return time.monotonic(), busy, ours, getattr(times, "steal", 0.0)

    def start(self) -> None:
        self._start = self._read()

    def since_start(self) -> dict[str, float]:
        """`others`: their share of all cores' time; `steal`: the hypervisor's (a VM's
        neighbours)."""
        wall, busy, ours, steal = self._read()
        capacity = (wall - self._start[0]) * (os.cpu_count() or 1) or 1.0
        others = (busy - self._start[1]) - (ours - self._start[2])
        return {
            "others": max(0.0, others / capacity),
            "steal": (steal - self._start[3]) / capacity,
        }


def cpu_line(label: str, per_event: dict[str, float]) -> str:
    parts = ", ".join(f"{role} {us:.0f}" for role, us in per_event.items())
    return f"  CPU per event, {label} (µs): {parts}"


def budget(by_role: dict[str, float]) -> dict[str, float]:
    """CPU per event of every process on the machine, and the rate all cores could carry."""
    total = sum(by_role.values())
    cores = os.cpu_count() or 1
    return {"total_us": total, "rate_if_all_cores_busy": cores * 1e6 / total if total else 0.0}


_CHECKPOINTS = "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
_AUTOVACUUMS = """
SELECT relname, autovacuum_count + autoanalyze_count AS runs FROM pg_stat_all_tables
 WHERE autovacuum_count + autoanalyze_count > 0
"""
_AUTOVACUUM_WORKERS = """
SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'
"""


@dataclass
class _Counters:
    checkpoints: int
    autovacuums: dict[str, int]  # table -> autovacuum and autoanalyze runs so far
    autovacuum_workers: int


async def _server_counters(dsn: str) -> _Counters:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(_AUTOVACUUMS)
        return _Counters(
            int(await conn.fetchval(_CHECKPOINTS)),
            {row["relname"]: int(row["runs"]) for row in rows},
            int(await conn.fetchval(_AUTOVACUUM_WORKERS)),
        )
    finally:
        await conn.close()


class ServerEvents:
    """Checkpoints (the whole server) and autovacuum/autoanalyze runs (this database) that
    happened during a step: the background work that moves a step's rate and tail."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._start = _Counters(0, {}, 0)

    def start(self) -> None:
        self._start = asyncio.run(_server_counters(self._dsn))

    def since_start(self) -> dict[str, Any]:
        """Checkpoints and autovacuum runs finished since `start` (counted when they end),
        the tables those ran on, and the autovacuum workers running now (one still under
        way)."""
        end = asyncio.run(_server_counters(self._dsn))
        tables = sorted(
            name
            for name, runs in end.autovacuums.items()
            if runs > self._start.autovacuums.get(name, 0)
        )
        return {
            "checkpoints": end.checkpoints - self._start.checkpoints,
            "autovacuums": sum(end.autovacuums.values()) - sum(self._start.autovacuums.values()),
            "autovacuum_workers": end.autovacuum_workers,
            "autovacuumed": tables,
        }
