"""`make bench`: the service against this machine's own Postgres ceilings, in one run.

1. Start Postgres and Redis (embedded, or BENCH_DATABASE_URL / BENCH_REDIS_URL).
2. Measure the ceilings with pgbench and the same statement shapes the service uses:
   single-row INSERT of a ~3 KB jsonb event at 1/8/32 clients, and advisory lock + ledger
   insert + balance update over 10,000 users and on one hot user.
3. Ingest: the receiver (uvicorn, N workers) driven with signed unique events at several
   concurrencies: events/s, p50/p95/p99, CPU per event, RSS; then an open-loop run at half
   the best rate for the p99 target.
4. End to end: stored events drained by worker processes, many users and one hot user.
5. Report a table, `benchmarks/results.json` and `benchmarks/throughput.png`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import psutil
from arq.connections import ArqRedis, RedisSettings, create_pool

from benchmarks.loadgen import LoadResult, render_request, run_load
from webhook_worker.db import migrations
from webhook_worker.dev.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from webhook_worker.job_queue import enqueue_events
from webhook_worker.ops.sample_events import checkout_session_event, encode_event, sign_payload

HERE = Path(__file__).parent
SECRET = "whsec_benchmark_secret_0123456789"  # noqa: S105 - a benchmark-only secret
USERS = 10_000


# --- services -----------------------------------------------------------------------------


def _with_db(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def _drop_database(admin_dsn: str, name: str) -> None:
    """A finished phase's database goes, so that its autovacuum does not run under the next
    phase (the ceiling step leaves ~50k fresh 3 KB rows behind, the ingest step as many)."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _fresh_database(admin_dsn: str, name: str) -> str:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = _with_db(admin_dsn, name)
    conn = await asyncpg.connect(dsn)
    try:
        await migrations.migrate_up(conn)
        await conn.execute(
            "INSERT INTO users (email) SELECT 'bench' || g || '@example.com' "
            "FROM generate_series(1, $1) g",
            USERS,
        )
    finally:
        await conn.close()
    return dsn


# --- ceilings (pgbench) --------------------------------------------------------------------


def _pgbench_bin() -> str:
    import importlib.util

    spec = importlib.util.find_spec("pgserver")
    if spec and spec.origin:
        candidate = Path(spec.origin).parent / "pginstall" / "bin" / "pgbench"
        if candidate.exists():
            return str(candidate)
    return "pgbench"


def _pgbench(dsn: str, script: str, clients: int, seconds: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as handle:
        handle.write(script)
    out = subprocess.run(
        [
            _pgbench_bin(), "-n", "-M", "prepared", "-c", str(clients),
            "-j", str(min(clients, 2)), "-T", str(seconds), "-f", handle.name, dsn,
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    os.unlink(handle.name)
    match = re.search(r"tps = ([\d.]+)", out.stdout)
    assert match, out.stdout + out.stderr
    return float(match.group(1))


def _insert_script() -> str:
    """One event per transaction, as a plain receiver would; the ~3 KB text is parsed to jsonb
    on every insert (it sits in `bench_payload` because pgbench reads `:word` as a variable)."""
    return (
        "\\set id random(1, 1000000000000)\n"
        "INSERT INTO stripe_events (event_id, type, livemode, raw_data) "
        "SELECT 'evt_bench_' || :id || '_' || :client_id, 'checkout.session.completed', "
        "false, payload::jsonb FROM bench_payload ON CONFLICT (event_id) DO NOTHING;\n"
    )


def _ledger_script(hot: bool) -> str:
    user = "\\set uid 1\n" if hot else f"\\set uid random(1, {USERS})\n"
    return (
        user + "BEGIN;\n"
        "SELECT pg_advisory_xact_lock(1, :uid);\n"
        "UPDATE users SET credits_balance = credits_balance + 5, updated_at = now() "
        "WHERE id = :uid RETURNING credits_balance AS bal \\gset\n"
        "INSERT INTO credit_transactions (user_id, amount, balance_after, transaction_type, "
        "description) VALUES (:uid, 5, :bal, 'BONUS', 'bench');\n"
        "COMMIT;\n"
    )


async def _store_payload(dsn: str, payload: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE bench_payload (payload text NOT NULL)")
        await conn.execute("INSERT INTO bench_payload VALUES ($1)", payload)
    finally:
        await conn.close()


def measure_ceilings(dsn: str, payload: str, seconds: int) -> dict[str, float]:
    asyncio.run(_store_payload(dsn, payload))
    ceilings = {}
    for clients in (1, 8, 32):
        ceilings[f"insert_c{clients}"] = _pgbench(dsn, _insert_script(), clients, seconds)
    ceilings["ledger_random"] = _pgbench(dsn, _ledger_script(False), 32, seconds)
    ceilings["ledger_hot"] = _pgbench(dsn, _ledger_script(True), 32, seconds)
    return ceilings


# --- processes -----------------------------------------------------------------------------


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "webhook_worker.cli", *args],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (uvicorn workers, Postgres backends…)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _rss_mb(procs: list[psutil.Process]) -> float:
    """Largest single-process RSS: each uvicorn/arq process is its own footprint."""
    sizes = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            sizes.append(p.memory_info().rss / 2**20)
    return max(sizes, default=0.0)


Roles = dict[str, Callable[[], list[psutil.Process]]]


def _this_process() -> list[psutil.Process]:
    return [psutil.Process()]


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


def _service_roles(services: list[EmbeddedPostgres | EmbeddedRedis]) -> Roles:
    """The embedded Postgres (postmaster and backends) and Redis; none for given URLs."""
    roles: Roles = {}
    for service in services:
        if isinstance(service, EmbeddedPostgres):
            pidfile = service.data_dir / "pgdata" / "postmaster.pid"
            roles["postgres"] = functools.partial(_postmaster_tree, pidfile)
        elif service.pid is not None:
            roles["redis"] = functools.partial(_tree, service.pid)
    return roles


def _postmaster_tree(pidfile: Path) -> list[psutil.Process]:
    return _tree(int(pidfile.read_text().split()[0]))


def _cpu_line(label: str, per_event: dict[str, float]) -> str:
    parts = ", ".join(f"{role} {us:.0f}" for role, us in per_event.items())
    return f"  CPU per event, {label} (µs): {parts}"


def _wait_ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


# --- ingest --------------------------------------------------------------------------------


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


def measure_ingest(
    env: dict[str, str],
    seconds: float,
    concurrencies: list[int],
    web_workers: int,
    logs: Path,
    service_roles: Roles,
) -> dict[str, Any]:
    port = free_port()
    receiver = _spawn(
        ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(web_workers)],
        env,
        logs / "receiver.log",
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port}/healthz")  # up once the lifespan (pool) started
        time.sleep(1.0)  # let every uvicorn worker finish its lifespan start-up
        procs = _tree(receiver.pid)
        points = []
        rss = _rss_mb(procs)
        for conc in concurrencies:
            budget = int(max(2000, 9000 * seconds))
            reqs = _requests(budget, port, f"c{conc}_{time.time_ns()}")
            meter = CpuMeter(
                {"receiver": lambda: procs, **service_roles, "load generator": _this_process}
            )
            meter.start()
            result = run_load("127.0.0.1", port, reqs, connections=conc, seconds=seconds)
            by_role = meter.per_event(result.ok)
            rss = max(rss, _rss_mb(procs))
            point = _point(conc, result, by_role["receiver"] if result.ok else None)
            points.append({**point, "cpu_us_per_event_by_role": by_role})
            last = points[-1]
            print(f"  ingest c={conc:<3} {last['rate']:>8.0f} ev/s  p99 {last['p99_ms']:.1f} ms")
            print(_cpu_line(f"c={conc}", by_role))
        best = max(points, key=lambda p: p["rate"])
        half_rate = best["rate"] / 2
        reqs = _requests(int(half_rate * seconds * 1.2) + 100, port, f"half_{time.time_ns()}")
        half = run_load(
            "127.0.0.1", port, reqs, connections=best["connections"], seconds=seconds,
            rate=half_rate,
        )  # fmt: skip
        rss = max(rss, _rss_mb(procs))
        return {
            "points": points,
            "best": best,
            "half_load": _point(best["connections"], half, None),
            "receiver_rss_mb": rss,
        }
    finally:
        receiver.terminate()
        receiver.wait(20)


def _rate_at(points: list[dict[str, Any]], connections: int) -> float:
    for point in points:
        if point["connections"] == connections:
            return float(point["rate"])
    return float(max(p["rate"] for p in points))


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


# --- end to end ----------------------------------------------------------------------------


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


async def _flush_redis(url: str) -> None:
    redis: ArqRedis = await create_pool(RedisSettings.from_dsn(url))
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()


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


async def _drain(dsn: str, redis_url: str, ids: list[str], timeout: float) -> float:
    redis: ArqRedis = await create_pool(RedisSettings.from_dsn(redis_url))
    conn = await asyncpg.connect(dsn)
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


def measure_credit(
    env: dict[str, str],
    dsn: str,
    count: int,
    worker_count: int,
    logs: Path,
    service_roles: Roles,
    cases: tuple[tuple[str, bool], ...] = (("random", False), ("hot", True)),
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    workers = [_spawn(["work"], env, logs / f"worker-{i}.log") for i in range(worker_count)]
    try:
        time.sleep(2.0)  # arq start-up (pools, cron registration) before the clock starts
        procs = [p for w in workers for p in _tree(w.pid)]
        rss = _rss_mb(procs)
        for label, hot in cases:
            ids = asyncio.run(_load_events(dsn, count, hot, f"{label}{time.time_ns()}"))
            meter = CpuMeter({"workers": lambda: procs, **service_roles, "bench": _this_process})
            meter.start()
            elapsed = asyncio.run(_drain(dsn, env["REDIS_URL"], ids, timeout=300))
            results[f"cpu_us_per_event_by_role_{label}"] = by_role = meter.per_event(count)
            rss = max(rss, _rss_mb(procs))
            results[label] = count / elapsed
            print(f"  credit {label:<6} {results[label]:>8.0f} events/s")
            print(_cpu_line(label, by_role))
        results["worker_rss_mb"] = rss
        return results
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(20)


# --- report --------------------------------------------------------------------------------


def _chart(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conc = [p["connections"] for p in points]
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.plot(conc, [p["rate"] for p in points], "o-", color="tab:blue", label="events/s")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("concurrent connections")
    ax1.set_ylabel("accepted events/s", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(conc, [p["p99_ms"] for p in points], "s--", color="tab:red", label="p99 ms")
    ax2.set_ylabel("p99 latency (ms)", color="tab:red")
    ax1.set_title("webhook-worker ingest: throughput and p99 vs concurrency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each load step")
    parser.add_argument(
        "--web-workers",
        type=int,
        default=1,
        help="uvicorn processes; on 2 cores shared with Postgres, Redis and the load generator "
        "one gives the same peak as two and a much shorter tail",
    )
    parser.add_argument("--worker-processes", type=int, default=2)
    parser.add_argument("--credit-events", type=int, default=10_000)
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--out", default=str(HERE / "results.json"))
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="ww-bench-"))
    work.chmod(0o755)
    (work / "logs").mkdir()
    services: list[EmbeddedPostgres | EmbeddedRedis] = []
    admin_dsn = os.environ.get("BENCH_DATABASE_URL")
    redis_url = os.environ.get("BENCH_REDIS_URL")
    if not admin_dsn:
        pg = EmbeddedPostgres(work / "postgres").start()
        services.append(pg)
        admin_dsn = pg.url
    if not redis_url:
        redis = EmbeddedRedis(work / "redis").start()
        services.append(redis)
        redis_url = redis.url
    try:
        machine = f"{os.cpu_count()} cores, Python {platform.python_version()}"
        print(f"benchmark on {platform.node()}: {machine}")
        sample = encode_event(checkout_session_event(client_reference_id="1", credits=5)).decode()
        ceiling_dsn = asyncio.run(_fresh_database(admin_dsn, "ww_bench_ceiling"))
        print("ceilings (pgbench):")
        ceilings = measure_ceilings(ceiling_dsn, sample, max(3, int(args.seconds)))
        for key, value in ceilings.items():
            print(f"  {key:<14} {value:>8.0f} /s")
        asyncio.run(_drop_database(admin_dsn, "ww_bench_ceiling"))
        dsn = asyncio.run(_fresh_database(admin_dsn, "ww_bench_main"))
        env = {
            **os.environ,
            "APP_ENV": "production",
            # The load generator's events are test-mode events (livemode: false).
            "STRIPE_MODE": "test",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "warning",
            "DATABASE_URL": dsn,
            "REDIS_URL": redis_url,
            "STRIPE_WEBHOOK_SECRET": SECRET,
            "DB_POOL_MAX": "20",
            "SWEEP_INTERVAL_SECONDS": "60",
        }
        print("ingest:")
        concurrencies = [int(c) for c in args.concurrency.split(",")]
        roles = _service_roles(services)
        ingest = measure_ingest(
            env, args.seconds, concurrencies, args.web_workers, work / "logs", roles
        )
        print("end to end:")
        # A fresh database and an empty queue: the ingest phase left its own jobs in Redis.
        asyncio.run(_flush_redis(redis_url))
        asyncio.run(_drop_database(admin_dsn, "ww_bench_main"))
        dsn = asyncio.run(_fresh_database(admin_dsn, "ww_bench_credit"))
        env["DATABASE_URL"] = dsn
        credit = measure_credit(
            env, dsn, args.credit_events, args.worker_processes, work / "logs", roles
        )
        print("worker scaling (many users):")
        scaling = {
            str(n): measure_credit(
                env, dsn, args.credit_events, n, work / "logs", roles, (("random", False),)
            )["random"]
            for n in (1, 2, 4)
        }
        results = {
            "machine": {
                "cores": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            },
            "ceilings": ceilings,
            "ingest": ingest,
            "credit": credit,
            "worker_scaling_events_per_s": scaling,
            "ingest_rate": ingest["best"]["rate"],
            # The target compares like with like: 32 client connections on both sides.
            "ingest_ratio": _rate_at(ingest["points"], 32) / ceilings["insert_c32"],
            "credit_ratio_random": credit["random"] / ceilings["ledger_random"],
            "credit_ratio_hot": credit["hot"] / ceilings["ledger_hot"],
            "p99_ms_half_load": ingest["half_load"]["p99_ms"],
            "cpu_budget": {
                "ingest_c32": _budget(_point_at(ingest["points"], 32)["cpu_us_per_event_by_role"]),
                "credit_random": _budget(credit["cpu_us_per_event_by_role_random"]),
            },
            "receiver_rss_mb": ingest["receiver_rss_mb"],
            "worker_rss_mb": credit["worker_rss_mb"],
        }
        Path(args.out).write_text(json.dumps(results, indent=2))
        _chart(ingest["points"], HERE / "throughput.png")
        _report(results)
        return 0
    finally:
        for service in services:
            service.destroy()


def _point_at(points: list[dict[str, Any]], connections: int) -> dict[str, Any]:
    return min(points, key=lambda p: abs(p["connections"] - connections))


def _budget(by_role: dict[str, float]) -> dict[str, float]:
    """CPU per event of every process on the machine, and the rate all cores could carry."""
    total = sum(by_role.values())
    cores = os.cpu_count() or 1
    return {"total_us": total, "rate_if_all_cores_busy": cores * 1e6 / total if total else 0.0}


def _report(r: dict[str, Any]) -> None:
    rows = [
        (
            "ingest events/s (best)",
            f"{r['ingest_rate']:.0f}",
            f"insert ceiling {r['ceilings']['insert_c32']:.0f}/s",
        ),
        ("ingest_ratio", f"{r['ingest_ratio']:.2f}", "target >= 0.5"),
        ("credit_ratio_random", f"{r['credit_ratio_random']:.2f}", "target >= 0.5"),
        ("credit_ratio_hot", f"{r['credit_ratio_hot']:.2f}", "target >= 0.8"),
        ("p99_ms_half_load", f"{r['p99_ms_half_load']:.1f}", "target < 25"),
        ("receiver_rss_mb", f"{r['receiver_rss_mb']:.0f}", "target < 150"),
        ("worker_rss_mb", f"{r['worker_rss_mb']:.0f}", "target < 150"),
    ]
    print("\n| metric | value | note |\n|---|---|---|")
    for name, value, note in rows:
        print(f"| {name} | {value} | {note} |")
    print("\nCPU budget (every process of the run, per event):")
    for step, budget in r["cpu_budget"].items():
        print(
            f"  {step:<14} {budget['total_us']:>6.0f} µs/event -> at most "
            f"{budget['rate_if_all_cores_busy']:.0f} events/s with every core busy"
        )


if __name__ == "__main__":
    sys.exit(main())
