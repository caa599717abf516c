"""`make profile`: where the credit path's CPU goes, in the workers and in Postgres.

The bench's random-user credit load (stored purchases for 10,000 users, drained by
`webhook-worker work` processes) with two instruments on it:

- the workers' Python, sampled by `py-spy record` (no pause of the process, idle time not
  counted): the functions that hold the most samples on their own (self) and with what they
  call (total);
- Postgres, through `pg_stat_statements` (`track=all`, so the statements inside the ledger
  functions show too): calls, rows and time of the statements that took the most.

Postgres here is Debian's (it ships pg_stat_statements; the embedded build does not), in a
private cluster like the bench's. The text report goes to stdout and to `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import asyncpg
from redis.asyncio import Redis

from benchmarks.credit import Workers, load_events
from benchmarks.meters import cpu_line
from benchmarks.services import Servers, fresh_database, service_env, settle
from webhook_worker.dev.embedded import EmbeddedPostgres, EmbeddedRedis

HERE = Path(__file__).parent
DEBIAN_POSTGRES = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))

_TOP_STATEMENTS = """
SELECT toplevel, calls, rows, total_exec_time, left(regexp_replace(query, '\\s+', ' ', 'g'), 110)
  AS query
FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1)
ORDER BY total_exec_time DESC LIMIT $2
"""


def _postgres() -> EmbeddedPostgres:
    if not DEBIAN_POSTGRES:
        sys.exit(
            "make profile needs Debian's Postgres for pg_stat_statements: "
            "apt-get install postgresql"
        )
    return EmbeddedPostgres(
        Path(tempfile.mkdtemp(prefix="ww-profile-pg-")),
        bin_dir=DEBIAN_POSTGRES[-1].parent,
        settings={
            "shared_preload_libraries": "pg_stat_statements",
            "pg_stat_statements.track": "all",
        },
    )


def _py_spy(pid: int, out: Path, rate: int, native: bool) -> subprocess.Popen[bytes]:
    command = [
        str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
        "--rate", str(rate), "--format", "raw", "--output", str(out),
    ]  # fmt: skip
    # --native (C and Cython frames too: uvloop, asyncpg's protocol, orjson) pauses the
    # process for each sample; without it py-spy reads the frames while the process runs.
    command.append("--native" if native else "--nonblocking")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _frame(frame: str) -> str:
    """`name (path/to/module.py:123)` -> `name (module.py)`: a function, not a line."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    return f"{name} ({'/'.join(Path(path).parts[-2:])})"


def read_collapsed(paths: list[Path]) -> tuple[Counter[str], Counter[str], int]:
    """Self and total sample counts per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            frames = [_frame(f) for f in stack.split(";") if not f.startswith("process ")]
            if not frames:
                continue
            samples += count
            own[frames[-1]] += count
            for name in set(frames):
                total[name] += count
    return own, total, samples


def _table(counts: Counter[str], samples: int, top: int) -> list[str]:
    return [f"  {100 * count / samples:5.1f}%  {name}" for name, count in counts.most_common(top)]


async def _statements(dsn: str, database: str, top: int) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(_TOP_STATEMENTS, database, top)
    finally:
        await conn.close()
    lines = [f"  {'calls':>7} {'rows':>7} {'ms':>8}  statement (* = top level)"]
    for row in rows:
        mark = "*" if row["toplevel"] else " "
        lines.append(
            f"  {row['calls']:>7} {row['rows']:>7} {row['total_exec_time']:>8.0f} "
            f"{mark}{row['query']}"
        )
    return lines


async def _reset_statements(dsn: str, drop_indexes: list[str]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for name in drop_indexes:  # an experiment: what the credit path pays for an index
            await conn.execute(f'DROP INDEX "{name}"')
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.execute("SELECT pg_stat_statements_reset()")
    finally:
        await conn.close()


async def _redis_calls(url: str) -> Counter[str]:
    """Redis commands served so far, by command (INFO commandstats)."""
    client = Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})


def _redis_table(calls: Counter[str], events: int) -> list[str]:
    lines = [f"Redis commands per credited event ({calls.total() / events:.2f} in all):"]
    for name, count in calls.most_common(8):
        lines.append(f"  {count / events:6.2f}  {name}")
    return lines


def profile(args: argparse.Namespace) -> list[str]:
    work = Path(tempfile.mkdtemp(prefix="ww-profile-"))
    work.chmod(0o755)
    (work / "logs").mkdir()
    postgres, redis = _postgres().start(), EmbeddedRedis(work / "redis").start()
    try:
        dsn = asyncio.run(fresh_database(postgres.url, "ww_profile"))
        env = service_env(dsn, redis.url)
        roles = Servers(postgres.url, redis.url, [postgres, redis]).roles()
        with Workers(env, args.worker_processes, work / "logs", roles) as workers:
            workers.warm_up()
            ids = load_events(dsn, args.events, hot=False)
            settle(dsn)
            asyncio.run(_reset_statements(dsn, args.drop_indexes))
            outputs = [work / f"py-spy-{p.pid}.txt" for p in workers.procs]
            spies = [
                _py_spy(p.pid, out, args.rate, args.native)
                for p, out in zip(workers.procs, outputs, strict=True)
            ]
            time.sleep(1.0)  # py-spy attaches (the workers are idle meanwhile)
            before = asyncio.run(_redis_calls(redis.url))
            drained = workers.drain("random", ids)
            redis_calls = asyncio.run(_redis_calls(redis.url)) - before
            for spy in spies:
                spy.send_signal(signal.SIGINT)
            for spy in spies:
                spy.wait(timeout=30)
            statements = asyncio.run(_statements(dsn, "ww_profile", args.top))
    finally:
        redis.destroy()
        postgres.destroy()
    own, total, samples = read_collapsed([p for p in outputs if p.exists()])
    rate = drained["rate"]
    return [
        f"credit path profile: {args.events} events for 10,000 users, "
        f"{args.worker_processes} workers, {rate:.0f} events/s",
        cpu_line("random", drained["cpu_us_per_event_by_role"]).strip(),
        f"workers' Python ({samples} samples at {args.rate}/s, idle excluded), self:",
        *_table(own, samples, args.top),
        "total (with callees):",
        *_table(total, samples, args.top),
        *_redis_table(redis_calls, args.events),
        "Postgres (pg_stat_statements, track=all):",
        *statements,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--worker-processes", type=int, default=2)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument(
        "--native", action="store_true", help="sample C and Cython frames too (py-spy --native)"
    )
    parser.add_argument(
        "--drop-index",
        dest="drop_indexes",
        action="append",
        default=[],
        help="drop this index before the measured drain (to see what it costs); repeatable",
    )
    parser.add_argument("--out", default=str(HERE / "profiles" / "credit.txt"))
    args = parser.parse_args(argv)
    if os.geteuid() != 0 and Path("/proc/sys/kernel/yama/ptrace_scope").exists():
        print("note: py-spy attaches with ptrace; as non-root it may need ptrace_scope 0")
    lines = profile(args)
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
