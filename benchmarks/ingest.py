"""Ingest: the receiver (uvicorn, N workers) driven with signed unique events at several
concurrencies (events/s, p50/p95/p99, CPU per event by role, RSS), then an open-loop run at
half the best rate for the tail target."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks.loadgen import LoadResult, render_request, run_load
from benchmarks.meters import CpuMeter, Roles, cpu_line, process_tree, rss_mb, this_process
from benchmarks.services import SECRET, USERS
from webhook_worker.dev.embedded import free_port
from webhook_worker.dev.servicekit import spawn_command, stop_processes, wait_http_ok
from webhook_worker.ops.sample_events import checkout_session_event, encode_event, sign_payload

WARM_UP_SECONDS = 2.0


def _requests(count: int, port: int, prefix: str) -> list[bytes]:
    now = int(time.time())
    out = []
    for index in range(count):
        event = checkout_session_event(
            client_reference_id=str(index % USERS + 1),
            credits=5,
            event_id=f"evt_{prefix}_{index}",
        )
        body = encode_event(event)
        out.append(
            render_request(
                "127.0.0.1",
                port,
                "/webhooks/stripe",
                body,
                sign_payload(body, SECRET, timestamp=now),
            )
        )
    return out


def _point(connections: int, result: LoadResult, cpu_us: float | None) -> dict[str, Any]:
    """One load step; `cpu_us` is the receiver's CPU per accepted event (None: not measured)."""
    return {
        "connections": connections,
        "rate": result.rate,
        "ok": result.ok,
        "errors": result.errors,
        "p50_ms": result.percentile(50),
        "p95_ms": result.percentile(95),
        "p99_ms": result.percentile(99),
        "cpu_us_per_event": cpu_us,
    }


def rate_at(points: list[dict[str, Any]], connections: int) -> float:
    for point in points:
        if point["connections"] == connections:
            return float(point["rate"])
    return float(max(p["rate"] for p in points))


def point_at(points: list[dict[str, Any]], connections: int) -> dict[str, Any]:
    return min(points, key=lambda p: abs(p["connections"] - connections))


@dataclass
class Receiver:
    """`webhook-worker serve` on a free port, driven by the load generator."""

    env: dict[str, str]
    web_workers: int
    logs: Path
    service_roles: Roles
    loadgen_cpus: set[int] | None = None
    port: int = field(default_factory=free_port)
    procs: list[psutil.Process] = field(default_factory=list)
    rss_mb: float = 0.0
    _proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Receiver:
        args = ["serve", "--host", "127.0.0.1", "--port", str(self.port)]
        self._proc = spawn_command(
            [*args, "--workers", str(self.web_workers)], self.env, self.logs / "receiver.log"
        )
        # Up once the lifespan (pool) started; then every uvicorn worker finishes its own.
        url = f"http://127.0.0.1:{self.port}/healthz"
        wait_http_ok(url, process=self._proc, log=self.logs / "receiver.log")
        time.sleep(1.0)
        self.procs = process_tree(self._proc.pid)
        self.rss_mb = rss_mb(self.procs)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            stop_processes([self._proc], timeout=20)

    def _run(
        self, connections: int, seconds: float, rate: float, count: int, meter: CpuMeter | None
    ) -> LoadResult:
        reqs = _requests(count, self.port, f"c{connections}_{time.time_ns()}")
        if meter is not None:
            meter.start()
        result = run_load(
            "127.0.0.1", self.port, reqs, connections=connections, seconds=seconds, rate=rate,
            cpus=self.loadgen_cpus,
        )  # fmt: skip
        self.rss_mb = max(self.rss_mb, rss_mb(self.procs))
        return result

    def warm_up(self, connections: int = 32) -> None:
        """Pool connections opened, statements prepared, caches filled: not measured."""
        self._run(connections, WARM_UP_SECONDS, 0.0, int(9000 * WARM_UP_SECONDS), None)

    def closed_loop(self, connections: int, seconds: float) -> dict[str, Any]:
        """As fast as `connections` keep-alive clients can go: rate, latency, CPU by role."""
        roles = {"receiver": lambda: self.procs, **self.service_roles}
        meter = CpuMeter({**roles, "load generator": this_process})
        result = self._run(connections, seconds, 0.0, int(max(2000, 9000 * seconds)), meter)
        by_role = meter.per_event(result.ok)
        point = _point(connections, result, by_role["receiver"] if result.ok else None)
        rate, p99 = point["rate"], point["p99_ms"]
        print(f"  ingest c={connections:<3} {rate:>8.0f} ev/s  p99 {p99:.1f} ms")
        print(cpu_line(f"c={connections}", by_role))
        return {**point, "cpu_us_per_event_by_role": by_role}

    def open_loop(self, connections: int, seconds: float, rate: float) -> dict[str, Any]:
        """Arrivals paced at `rate`, latency timed from each request's due time."""
        result = self._run(connections, seconds, rate, int(rate * seconds * 1.2) + 100, None)
        point = _point(connections, result, None)
        print(f"  half load {rate:>6.0f} ev/s offered   p99 {point['p99_ms']:.1f} ms")
        return point
