"""What a run prints and writes: each figure's median and spread over the repetitions, the
table with the targets, the CPU budget, `results.json` and the throughput chart."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

# name in results.json -> (comparison, bound): the targets every repetition must meet
# (issue 30's: the credit path's ratios and its CPU per credited event, all processes of the
# path — workers, Postgres, Redis — and the workers' share)
TARGETS: dict[str, tuple[str, float]] = {
    "ingest_ratio": (">=", 0.6),
    "credit_ratio_random": (">=", 0.8),
    "credit_ratio_hot": (">=", 1.2),
    "p99_ms_half_load": ("<", 25.0),
    "cpu_us_per_credited_event": ("<=", 350.0),
    "cpu_us_per_credited_event_workers": ("<=", 150.0),
    "receiver_rss_mb": ("<", 150.0),
    "worker_rss_mb": ("<", 150.0),
}
# The processes of the credit path (the bench's own poll is not one of them).
CREDIT_PATH_ROLES = ("workers", "postgres", "redis")
# The spend phase's (benchmarks/spend.py), reported apart: a run may measure it alone.
SPEND_TARGETS: dict[str, tuple[str, float]] = {
    "spend_ratio_random": (">=", 0.5),
    "spend_ratio_hot": (">=", 0.8),
    "p99_ms_spend_half_load": ("<", 25.0),
}


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of one figure over the repetitions."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def median_index(values: list[float]) -> int:
    """The repetition whose value is the median (the lower middle one for an even count)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    return order[(len(values) - 1) // 2]


def meets(name: str, value: float) -> bool:
    comparison, bound = {**TARGETS, **SPEND_TARGETS}[name]
    if comparison == ">=":
        return value >= bound
    return value <= bound if comparison == "<=" else value < bound


def credit_path_cpu(by_role: dict[str, float]) -> dict[str, float]:
    """CPU per credited event of the credit path's processes, by role and in all."""
    roles = {role: by_role[role] for role in CREDIT_PATH_ROLES if role in by_role}
    return {**roles, "all": sum(roles.values())}


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=2))


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# Written into the same file by `make bench-console` (benchmarks/console.py).
OTHER_BENCHES = ("console", "console_p95_ms")


def kept_from(path: Path) -> dict[str, Any]:
    """The keys other benchmarks wrote into `path`, which a full run keeps while it writes
    all of its own anew."""
    earlier = read_json(path) if path.exists() else {}
    return {key: earlier[key] for key in OTHER_BENCHES if key in earlier}


def print_spend(r: dict[str, Any]) -> None:
    """The spend phase's targets, each held in how many repetitions."""
    reps = r["spend"]["repetitions"]
    lines = [
        f"\n| spend metric | median | min to max ({len(reps)} repetitions) | target | held in |",
        "|---|---|---|---|---|",
    ]
    for name, (comparison, bound) in SPEND_TARGETS.items():
        low, high = r[f"{name}_spread"]
        held = sum(meets(name, rep[name]) for rep in reps)
        lines.append(
            f"| {name} | {_fmt(name, r[name])} | {_fmt(name, low)} to {_fmt(name, high)} "
            f"| {comparison} {bound:g} | {held}/{len(reps)} |"
        )
    lines.append(
        f"\nspends/s: random {r['spend']['random']:.0f} (ledger ceiling "
        f"{r['spend']['ledger_random']:.0f}), hot {r['spend']['hot']:.0f} (ledger ceiling "
        f"{r['spend']['ledger_hot']:.0f})"
    )
    print("\n".join(lines))


def chart(points: list[dict[str, Any]], path: Path) -> None:
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


def _fmt(name: str, value: float) -> str:
    return f"{value:.1f}" if name.endswith(("_ms", "_half_load")) else f"{value:.2f}"


def _repetition_rows(reps: list[dict[str, Any]]) -> list[str]:
    lines = [
        "\n| rep | insert c32 | ingest c32 | ingest_ratio | ledger random | credit random "
        "| ratio | ledger hot | credit hot | ratio | p99 half load | checkpoints / autovacuums "
        "in measured steps | CPU taken by others (most in a step) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for number, rep in enumerate(reps, start=1):
        events = [*rep["server_events_ingest"].values(), *rep["server_events_credit"].values()]
        checkpoints = sum(e["checkpoints"] for e in events)
        autovacuums = sum(e["autovacuums"] + e["autovacuum_workers"] for e in events)
        others = max((e.get("others", 0.0) + e.get("steal", 0.0) for e in events), default=0.0)
        lines.append(
            f"| {number} | {rep['insert_c32']:.0f} | {rep['ingest_c32']:.0f} "
            f"| {rep['ingest_ratio']:.2f} | {rep['ledger_random']:.0f} "
            f"| {rep['credit_random']:.0f} | {rep['credit_ratio_random']:.2f} "
            f"| {rep['ledger_hot']:.0f} | {rep['credit_hot']:.0f} | {rep['credit_ratio_hot']:.2f} "
            f"| {rep['p99_ms_half_load']:.1f} | {checkpoints} / {autovacuums} | {others:.0%} |"
        )
    return lines


def print_report(r: dict[str, Any]) -> None:
    reps = r["repetitions"]
    n = len(reps)
    ingest = r["ingest_rate_spread"]
    lines = [
        f"\n| metric | median | min to max ({n} repetitions) | target | held in |",
        "|---|---|---|---|---|",
        f"| ingest events/s (best) | {r['ingest_rate']:.0f} | {ingest[0]:.0f} to {ingest[1]:.0f} "
        f"| insert ceiling c=32 {r['ceilings']['insert_c32']:.0f}/s | |",
    ]
    for name, (comparison, bound) in TARGETS.items():
        low, high = r.get(f"{name}_spread", (r[name], r[name]))
        per_rep = [rep[name] for rep in reps if name in rep] or [r[name]]
        held = sum(meets(name, value) for value in per_rep)
        lines.append(
            f"| {name} | {_fmt(name, r[name])} | {_fmt(name, low)} to {_fmt(name, high)} "
            f"| {comparison} {bound:g} | {held}/{len(per_rep)} |"
        )
    lines += _repetition_rows(reps)
    print("\n".join(lines))
    print("\nCPU budget (every process of the run, per event):")
    for step, budget in r["cpu_budget"].items():
        print(
            f"  {step:<14} {budget['total_us']:>6.0f} µs/event -> at most "
            f"{budget['rate_if_all_cores_busy']:.0f} events/s with every core busy"
        )
