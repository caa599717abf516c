"""`make bench`: the service against this machine's own Postgres ceilings, in paired repetitions.

1. Start Postgres and Redis (embedded, or BENCH_DATABASE_URL / BENCH_REDIS_URL).
2. Ingest, on a database of its own: each repetition measures the INSERT ceiling (pgbench,
   the service's statement shape, into the same table) and the receiver driven with signed
   unique events back to back, in alternating order, then an open-loop run at half the
   repetition's best rate for the tail target. The first repetition sweeps every
   concurrency and the ceilings at 1/8/32 clients, for the table and the chart.
3. End to end, on another database, after a warm-up drain of 2,000 purchases (pool
   connections, compiled functions): each repetition measures the ledger ceiling and the
   workers draining stored events, for many users and for one hot user, back to back.
4. Before every measured step the phase's database is vacuumed and checkpointed, and the
   checkpoints and autovacuum runs that still happened during the step are recorded.
4b. Spend, on a database of its own: each repetition measures the ledger ceiling and the
   application's `credits_spend` (benchmarks/spend.py) for many users and for one hot user,
   back to back, then the p99 of one spend at half the random rate.
5. Report each ratio's median and spread over the repetitions (a ratio divides two rates
   measured seconds apart, never minutes), `benchmarks/results.json` and
   `benchmarks/throughput.png`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil

from benchmarks import report
from benchmarks.ceilings import measure_insert, measure_ledger, prepare_insert
from benchmarks.credit import Workers, load_events
from benchmarks.ingest import Receiver, point_at, rate_at
from benchmarks.meters import OthersShare, Roles, ServerEvents, budget
from benchmarks.services import (
    Servers,
    drop_phase_database,
    flush_redis,
    fresh_database,
    service_env,
    settle,
)
from benchmarks.spend import WARM_UP_SECONDS, fund_users, measure_spend, p99_at_rate
from webhook_worker.ops.sample_events import checkout_session_event, encode_event

HERE = Path(__file__).parent
T = TypeVar("T")


@dataclass
class Steps:
    """Runs the measured steps of one repetition on one database: settled first (unless
    told not to), with what disturbed each: checkpoints, autovacuum runs, and the CPU
    taken by processes outside the benchmark."""

    dsn: str
    settle_first: bool
    roles: Roles
    emptied: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.server_events: dict[str, dict[str, Any]] = {}

    def run(self, label: str, measure: Callable[[], T]) -> T:
        if self.settle_first:
            settle(self.dsn, self.emptied)
        events, others = ServerEvents(self.dsn), OthersShare(self.roles)
        events.start()
        others.start()
        value = measure()
        share = others.since_start()
        self.server_events[label] = seen = {**events.since_start(), **share}
        if any(seen[key] for key in ("checkpoints", "autovacuums", "autovacuum_workers")):
            print(f"    during {label}: {seen}")
        if share["others"] + share["steal"] > 0.1:
            print(
                f"    during {label}: other processes took {share['others']:.0%} of the CPU, "
                f"the hypervisor {share['steal']:.0%}"
            )
        return value


def _alternate(index: int, ceiling: Callable[[], None], service: Callable[[], None]) -> None:
    """Back to back, the ceiling first in odd repetitions and second in even ones, so that a
    drift of the machine's speed does not favour one side."""
    for step in (ceiling, service) if index % 2 == 0 else (service, ceiling):
        step()


def _ingest_repetition(
    index: int, receiver: Receiver, steps: Steps, args: argparse.Namespace
) -> dict[str, Any]:
    sweep = [int(c) for c in args.concurrency.split(",")]
    concurrencies = sweep if index == 0 else [c for c in sweep if c >= 32] or sweep[-1:]
    ceilings: dict[str, float] = {}
    points: list[dict[str, Any]] = []

    def ceiling() -> None:
        for clients in (1, 8, 32) if index == 0 else (32,):
            measure = lambda c=clients: measure_insert(steps.dsn, c, args.seconds)  # noqa: E731
            ceilings[f"insert_c{clients}"] = rate = steps.run(f"insert_c{clients}", measure)
            print(f"  pgbench insert c={clients:<3} {rate:>6.0f} /s")

    def service() -> None:
        for conc in concurrencies:
            measure = lambda c=conc: receiver.closed_loop(c, args.seconds)  # noqa: E731
            points.append(steps.run(f"ingest_c{conc}", measure))

    _alternate(index, ceiling, service)
    best = max(points, key=lambda p: p["rate"])
    half = steps.run(
        "half_load",
        lambda: receiver.open_loop(best["connections"], args.seconds, best["rate"] / 2),
    )
    return {
        "ceilings": ceilings,
        "points": points,
        "best": best,
        "half_load": half,
        "insert_c32": ceilings["insert_c32"],
        "ingest_c32": rate_at(points, 32),
        "ingest_rate": best["rate"],
        # The target compares like with like: 32 client connections on both sides.
        "ingest_ratio": rate_at(points, 32) / ceilings["insert_c32"],
        "p99_ms_half_load": half["p99_ms"],
    }


def _credit_repetition(
    index: int, workers: Workers, steps: Steps, args: argparse.Namespace
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, hot in (("random", False), ("hot", True)):
        ids = load_events(steps.dsn, args.credit_events, hot)

        def ceiling(label: str = label, hot: bool = hot) -> None:
            measure = lambda: measure_ledger(steps.dsn, hot, args.seconds)  # noqa: E731
            out[f"ledger_{label}"] = rate = steps.run(f"ledger_{label}", measure)
            print(f"  pgbench ledger {label:<6} {rate:>6.0f} /s")

        def service(label: str = label, ids: list[str] = ids) -> None:
            drained = steps.run(f"credit_{label}", lambda: workers.drain(label, ids))
            out[f"credit_{label}"] = drained["rate"]
            out[f"cpu_us_per_event_by_role_{label}"] = drained["cpu_us_per_event_by_role"]
            if label == "random":
                path = report.credit_path_cpu(drained["cpu_us_per_event_by_role"])
                out["cpu_us_per_credited_event"] = path["all"]
                out["cpu_us_per_credited_event_workers"] = path.get("workers", 0.0)

        _alternate(index, ceiling, service)
        out[f"credit_ratio_{label}"] = out[f"credit_{label}"] / out[f"ledger_{label}"]
    return out


def _spend_repetition(index: int, steps: Steps, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, hot in (("random", False), ("hot", True)):

        def ceiling(label: str = label, hot: bool = hot) -> None:
            measure = lambda: measure_ledger(steps.dsn, hot, args.seconds)  # noqa: E731
            out[f"ledger_{label}"] = rate = steps.run(f"ledger_{label}", measure)
            print(f"  pgbench ledger {label:<6} {rate:>6.0f} /s")

        def service(label: str = label, hot: bool = hot) -> None:
            measure = lambda: measure_spend(steps.dsn, hot, args.seconds)  # noqa: E731
            out[f"spend_{label}"] = rate = steps.run(f"spend_{label}", measure)
            print(f"  credits_spend  {label:<6} {rate:>6.0f} /s")

        _alternate(index, ceiling, service)
        out[f"spend_ratio_{label}"] = out[f"spend_{label}"] / out[f"ledger_{label}"]
    half = out["spend_random"] / 2
    tail = steps.run("spend_half_load", lambda: p99_at_rate(steps.dsn, half, args.seconds))
    out["p99_ms_spend_half_load"] = tail["p99_ms"]
    out["p99_ms_spend_cold_connections"] = tail["cold_p99_ms"]
    print(
        f"  credits_spend p99 at {half:.0f}/s: {tail['p99_ms']:.1f} ms "
        f"(first {WARM_UP_SECONDS:g} s, fresh connections: {tail['cold_p99_ms']:.1f} ms)"
    )
    return out


def measure_spending(
    servers: Servers, args: argparse.Namespace, roles: Roles
) -> list[dict[str, Any]]:
    dsn = asyncio.run(fresh_database(servers.admin_dsn, "ww_bench_spend"))
    fund_users(dsn)
    reps = []
    for index in range(args.repetitions):
        print(f"spend, repetition {index + 1} of {args.repetitions}:")
        steps = Steps(dsn, args.settle, roles)
        reps.append(
            {**_spend_repetition(index, steps, args), "server_events_spend": steps.server_events}
        )
    asyncio.run(drop_phase_database(servers.admin_dsn, "ww_bench_spend"))
    return reps


SPEND_FIGURES = ("spend_ratio_random", "spend_ratio_hot", "p99_ms_spend_half_load",
                 "spend_random", "spend_hot", "p99_ms_spend_cold_connections")  # fmt: skip


def summarise_spend(spend_reps: list[dict[str, Any]]) -> dict[str, Any]:
    """The spend phase's keys of results.json: medians, spreads and each repetition."""
    spreads = {name: report.spread([rep[name] for rep in spend_reps]) for name in SPEND_FIGURES}
    return {
        "spend": {
            "random": spreads["spend_random"]["median"],
            "hot": spreads["spend_hot"]["median"],
            "ledger_random": report.spread([r["ledger_random"] for r in spend_reps])["median"],
            "ledger_hot": report.spread([r["ledger_hot"] for r in spend_reps])["median"],
            # The tail's first second, on fresh connections (benchmarks/spend.py): not a target.
            "p99_ms_cold_connections": spreads["p99_ms_spend_cold_connections"]["median"],
            "repetitions": [_compact(rep) for rep in spend_reps],
        },
        **{name: spreads[name]["median"] for name in SPEND_FIGURES[:3]},
        **{
            f"{name}_spread": [spreads[name]["min"], spreads[name]["max"]]
            for name in SPEND_FIGURES[:3]
        },
    }


def measure_ingest(
    servers: Servers, args: argparse.Namespace, logs: Path, roles: Roles
) -> tuple[list[dict[str, Any]], float]:
    dsn = asyncio.run(fresh_database(servers.admin_dsn, "ww_bench_ingest"))
    prepare_insert(dsn, encode_event(checkout_session_event(client_reference_id="1")).decode())
    env = service_env(dsn, servers.redis_url)
    reps = []
    with Receiver(env, args.web_workers, logs, roles, args.loadgen_cpus) as receiver:
        receiver.warm_up()
        for index in range(args.repetitions):
            print(f"ingest, repetition {index + 1} of {args.repetitions}:")
            steps = Steps(dsn, args.settle, roles, emptied=("stripe_events",))
            rep = _ingest_repetition(index, receiver, steps, args)
            reps.append({**rep, "server_events_ingest": steps.server_events})
    # A fresh database and an empty queue for the next phase: these jobs were never run.
    flush_redis(servers.redis_url)
    asyncio.run(drop_phase_database(servers.admin_dsn, "ww_bench_ingest"))
    return reps, receiver.rss_mb


def measure_credit(
    servers: Servers, args: argparse.Namespace, logs: Path, roles: Roles
) -> tuple[list[dict[str, Any]], float, dict[str, float]]:
    dsn = asyncio.run(fresh_database(servers.admin_dsn, "ww_bench_credit"))
    env = service_env(dsn, servers.redis_url)
    reps = []
    with Workers(env, args.worker_processes, logs, roles) as workers:
        workers.warm_up()
        for index in range(args.repetitions):
            print(f"end to end, repetition {index + 1} of {args.repetitions}:")
            steps = Steps(dsn, args.settle, roles)
            reps.append(_credit_repetition(index, workers, steps, args))
            reps[-1]["server_events_credit"] = steps.server_events
    rss = workers.rss_mb
    scaling: dict[str, float] = {}
    for count in args.scaling:
        print(f"worker scaling (many users), {count} process(es):")
        with Workers(env, count, logs, roles) as scaled:
            scaled.warm_up()
            ids = load_events(dsn, args.credit_events, False)
            settle(dsn)
            scaling[str(count)] = scaled.drain("random", ids)["rate"]
    asyncio.run(drop_phase_database(servers.admin_dsn, "ww_bench_credit"))
    return reps, rss, scaling


def summarise(
    ingest_reps: list[dict[str, Any]],
    credit_reps: list[dict[str, Any]],
    rss: dict[str, float],
    scaling: dict[str, float],
) -> dict[str, Any]:
    """results.json: the keys of earlier runs hold each figure's median over the repetitions,
    `*_spread` its [min, max], and `repetitions` every repetition's own figures."""
    reps = [{**i, **c} for i, c in zip(ingest_reps, credit_reps, strict=True)]
    figures = [
        "ingest_rate", "ingest_ratio", "p99_ms_half_load", "credit_ratio_random",
        "credit_ratio_hot", "insert_c32", "ledger_random", "ledger_hot", "credit_random",
        "credit_hot", "cpu_us_per_credited_event", "cpu_us_per_credited_event_workers",
    ]  # fmt: skip
    spreads = {name: report.spread([rep[name] for rep in reps]) for name in figures}
    median = {name: s["median"] for name, s in spreads.items()}
    sweep = ingest_reps[0]
    typical_ingest = ingest_reps[report.median_index([r["ingest_ratio"] for r in ingest_reps])]
    typical_credit = credit_reps[
        report.median_index([r["credit_ratio_random"] for r in credit_reps])
    ]
    c32 = point_at(typical_ingest["points"], 32)
    keep = [
        "credit_ratio_random", "credit_ratio_hot", "ingest_ratio", "p99_ms_half_load",
        "cpu_us_per_credited_event", "cpu_us_per_credited_event_workers",
    ]  # fmt: skip
    return {
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        },
        "ceilings": {
            "insert_c1": sweep["ceilings"]["insert_c1"],
            "insert_c8": sweep["ceilings"]["insert_c8"],
            "insert_c32": median["insert_c32"],
            "ledger_random": median["ledger_random"],
            "ledger_hot": median["ledger_hot"],
        },
        "ingest": {
            "points": sweep["points"],
            "best": sweep["best"],
            "half_load": typical_ingest["half_load"],
            "receiver_rss_mb": rss["receiver"],
        },
        "credit": {
            "random": median["credit_random"],
            "hot": median["credit_hot"],
            "cpu_us_per_event_by_role_random": typical_credit["cpu_us_per_event_by_role_random"],
            "cpu_us_per_event_by_role_hot": typical_credit["cpu_us_per_event_by_role_hot"],
            "worker_rss_mb": rss["worker"],
        },
        "worker_scaling_events_per_s": scaling,
        "ingest_rate": median["ingest_rate"],
        "ingest_ratio": median["ingest_ratio"],
        "credit_ratio_random": median["credit_ratio_random"],
        "credit_ratio_hot": median["credit_ratio_hot"],
        "p99_ms_half_load": median["p99_ms_half_load"],
        # The credit path's CPU per credited event (many users): workers, Postgres and Redis
        # summed, the workers' share, and each role in the median repetition.
        "cpu_us_per_credited_event": median["cpu_us_per_credited_event"],
        "cpu_us_per_credited_event_workers": median["cpu_us_per_credited_event_workers"],
        "cpu_us_per_credited_event_by_role": report.credit_path_cpu(
            typical_credit["cpu_us_per_event_by_role_random"]
        ),
        **{f"{name}_spread": [spreads[name]["min"], spreads[name]["max"]] for name in keep},
        "ingest_rate_spread": [spreads["ingest_rate"]["min"], spreads["ingest_rate"]["max"]],
        "cpu_budget": {
            "ingest_c32": budget(c32["cpu_us_per_event_by_role"]),
            "credit_random": budget(typical_credit["cpu_us_per_event_by_role_random"]),
        },
        "receiver_rss_mb": rss["receiver"],
        "worker_rss_mb": rss["worker"],
        "repetitions": [_compact(rep) for rep in reps],
    }


def _compact(rep: dict[str, Any]) -> dict[str, Any]:
    """One repetition's figures for results.json (the sweep's points are kept once, above)."""
    drop = {"points", "best", "half_load", "ceilings"}
    return {key: value for key, value in rep.items() if key not in drop and "by_role" not in key}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--phases",
        default="ingest,credit,spend",
        help="phases to run (ingest,credit,spend); a run without ingest and credit updates "
        "only the spend keys of --out",
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each load step")
    parser.add_argument(
        "--repetitions", type=int, default=3, help="paired ceiling/service measurements"
    )
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
    parser.add_argument(
        "--scaling", default="1,2,4", help="worker process counts to time (empty: none)"
    )
    parser.add_argument(
        "--no-settle",
        dest="settle",
        action="store_false",
        help="skip the VACUUM and CHECKPOINT before each measured step (to see their effect)",
    )
    parser.add_argument(
        "--loadgen-cpus", default="", help="pin the load generator to these cores, e.g. 1"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run for experiments: 3 s steps, 5,000 events, c=32,64, no scaling",
    )
    parser.add_argument("--out", default=str(HERE / "results.json"))
    return parser


def _options(argv: list[str] | None) -> argparse.Namespace:
    args = _parser().parse_args(argv)
    if args.quick:
        args.seconds, args.credit_events, args.concurrency, args.scaling = 3.0, 5000, "32,64", ""
    args.scaling = [int(n) for n in args.scaling.split(",") if n]
    args.loadgen_cpus = {int(c) for c in args.loadgen_cpus.split(",") if c} or None
    return args


def main(argv: list[str] | None = None) -> int:
    args = _options(argv)
    work = Path(tempfile.mkdtemp(prefix="ww-bench-"))
    work.chmod(0o755)
    logs = work / "logs"
    logs.mkdir()
    servers = Servers.start(work)
    try:
        machine = f"{os.cpu_count()} cores, Python {platform.python_version()}"
        print(f"benchmark on {platform.node()}: {machine}, {args.repetitions} repetitions")
        roles = servers.roles()
        phases = set(args.phases.split(","))
        spend = summarise_spend(measure_spending(servers, args, roles)) if "spend" in phases else {}
        if not {"ingest", "credit"} <= phases:
            # A spend-only run: its keys replace the spend keys of the last full run's file.
            out = Path(args.out)
            results = {**(report.read_json(out) if out.exists() else {}), **spend}
            report.write_json(results, out)
            report.print_spend(results)
            return 0
        ingest_reps, receiver_rss = measure_ingest(servers, args, logs, roles)
        credit_reps, worker_rss, scaling = measure_credit(servers, args, logs, roles)
        rss = {"receiver": receiver_rss, "worker": worker_rss}
        results = {
            **report.kept_from(Path(args.out)),
            **summarise(ingest_reps, credit_reps, rss, scaling),
            **spend,
        }
        report.write_json(results, Path(args.out))
        report.chart(results["ingest"]["points"], HERE / "throughput.png")
        report.print_report(results)
        if spend:
            report.print_spend(results)
        return 0
    finally:
        servers.destroy()


if __name__ == "__main__":
    sys.exit(main())
