"""The benchmark's own instruments (CPU per event by process role, the CPU budget, the load
generator's open-loop latency) and how a run turns its repetitions into figures."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from typing import Any

import psutil
import pytest

from benchmarks import report
from benchmarks.loadgen import drive, render_request, split_response
from benchmarks.meters import CpuMeter, budget
from benchmarks.run import _alternate, summarise
from tests.conftest import wait_for

SPIN = "import time\nend = time.process_time() + 5\nwhile time.process_time() < end: pass\n"


async def test_cpu_meter_charges_a_role_with_the_cpu_its_processes_spent() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        proc = psutil.Process(spinner.pid)
        meter = CpuMeter({"spinner": lambda: [proc], "idle": lambda: []})
        meter.start()
        start = sum(proc.cpu_times()[:2])
        await wait_for(lambda: sum(proc.cpu_times()[:2]) - start >= 0.4, timeout=20)
        per_event = meter.per_event(4)
    finally:
        spinner.kill()
        spinner.wait()
    assert per_event["spinner"] >= 0.4 / 4 * 1e6
    assert per_event["idle"] == 0.0


def test_the_budget_is_every_role_summed_and_the_rate_all_cores_could_carry() -> None:
    by_role_budget = budget({"receiver": 400.0, "postgres": 300.0, "redis": 50.0, "load": 250.0})
    cores = os.cpu_count() or 1
    assert by_role_budget == {"total_us": 1000.0, "rate_if_all_cores_busy": cores * 1000.0}


STALL_S = 0.3
OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def _stall_first_then_answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A keep-alive HTTP server that holds its first answer for STALL_S, then answers."""
    first = True
    with contextlib.suppress(asyncio.IncompleteReadError):  # the client hung up
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            if first:
                await asyncio.sleep(STALL_S)  # the server's stall, the thing being measured
                first = False
            writer.write(OK_RESPONSE)
            await writer.drain()
    writer.close()


async def test_open_loop_latency_counts_a_stall_against_the_requests_scheduled_behind_it() -> None:
    """No coordinated omission: at a set rate, a request that could not be sent on time
    because the one before it stalled is timed from when it was due, so the stall shows in
    its latency instead of vanishing from the percentiles."""
    server = await asyncio.start_server(_stall_first_then_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    request = render_request("127.0.0.1", port, "/webhook", b"{}", "t=1,v1=x")
    try:
        # One connection at 50/s: due every 20 ms, so the 2nd to 5th are due within 80 ms
        # of the start and all wait behind the first one's 300 ms stall.
        result = await drive("127.0.0.1", port, [request] * 5, 1, 30.0, 50.0)
    finally:
        server.close()
        await server.wait_closed()
    assert (result.sent, result.ok, result.errors) == (5, 5, 0)
    assert result.latencies_ms[0] >= STALL_S * 1000
    # Each waited at least the stall less how late in the schedule it was due.
    for position, latency in enumerate(result.latencies_ms[1:], start=1):
        assert latency >= STALL_S * 1000 - position * 20, (position, result.latencies_ms)


def test_the_load_generator_reads_an_answer_only_once_all_of_it_arrived() -> None:
    answer = (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: x\r\nContent-Length: 5\r\n\r\nbusy!"
    )
    assert split_response(answer[:20]) is None  # the head is not complete
    assert split_response(answer[:-1]) is None  # the body is one byte short
    assert split_response(answer + b"HTTP/1.1 200") == (503, len(answer))
    no_body = b"HTTP/1.1 204 No Content\r\n\r\n"
    assert split_response(no_body) == (204, len(no_body))


def test_a_repetition_alternates_which_side_of_a_ratio_is_measured_first() -> None:
    order: list[str] = []
    for index in range(3):
        _alternate(index, lambda: order.append("ceiling"), lambda: order.append("service"))
    assert order == ["ceiling", "service", "service", "ceiling", "ceiling", "service"]


def _ingest_rep(ratio: float, p99: float) -> dict[str, Any]:
    point = {"connections": 32, "rate": ratio * 1000, "p99_ms": p99,
             "cpu_us_per_event_by_role": {"receiver": 300.0}}  # fmt: skip
    return {
        "ceilings": {"insert_c1": 900.0, "insert_c8": 950.0, "insert_c32": 1000.0},
        "points": [point], "best": point, "half_load": {"p99_ms": p99},
        "insert_c32": 1000.0, "ingest_c32": ratio * 1000, "ingest_rate": ratio * 1000,
        "ingest_ratio": ratio, "p99_ms_half_load": p99, "server_events_ingest": {},
    }  # fmt: skip


def _credit_rep(ratio: float) -> dict[str, Any]:
    by_role = {"workers": 200.0, "postgres": 100.0, "redis": 10.0, "bench": 4.0}
    return {
        "cpu_us_per_credited_event": 310.0, "cpu_us_per_credited_event_workers": 200.0,
        "ledger_random": 1000.0, "credit_random": ratio * 1000, "credit_ratio_random": ratio,
        "ledger_hot": 500.0, "credit_hot": ratio * 1500, "credit_ratio_hot": ratio * 3,
        "cpu_us_per_event_by_role_random": by_role, "cpu_us_per_event_by_role_hot": by_role,
        "server_events_credit": {"credit_random": {"checkpoints": 1, "autovacuums": 0,
                                                   "autovacuum_workers": 0}},
    }  # fmt: skip


def test_results_keep_their_keys_with_the_median_and_add_each_spread() -> None:
    results = summarise(
        [_ingest_rep(0.7, 12.0), _ingest_rep(0.5, 30.0), _ingest_rep(0.6, 9.0)],
        [_credit_rep(0.9), _credit_rep(0.6), _credit_rep(0.8)],
        {"receiver": 58.0, "worker": 57.0},
        {"1": 2400.0},
    )
    assert results["ingest_ratio"] == 0.6
    assert results["ingest_ratio_spread"] == [0.5, 0.7]
    assert results["p99_ms_half_load"] == 12.0
    assert results["p99_ms_half_load_spread"] == [9.0, 30.0]
    assert results["credit_ratio_random"] == 0.8
    assert results["credit_ratio_hot"] == pytest.approx(2.4)
    assert results["ceilings"]["insert_c32"] == 1000.0
    # The typical repetition's CPU (the median ratio's) goes into the budget.
    assert results["cpu_budget"]["ingest_c32"]["total_us"] == 300.0
    # The credit path's own CPU: workers, Postgres and Redis, never the bench's poll.
    assert results["cpu_us_per_credited_event"] == 310.0
    assert results["cpu_us_per_credited_event_by_role"] == {
        "workers": 200.0, "postgres": 100.0, "redis": 10.0, "all": 310.0
    }  # fmt: skip
    assert [rep["ingest_ratio"] for rep in results["repetitions"]] == [0.7, 0.5, 0.6]
    assert "points" not in results["repetitions"][0]
    report.print_report(results)  # every figure it prints is there


def test_a_target_holds_in_a_repetition_only_on_its_side_of_the_bound() -> None:
    assert report.meets("ingest_ratio", 0.6) and not report.meets("ingest_ratio", 0.59)
    assert report.meets("cpu_us_per_credited_event", 350)
    assert not report.meets("cpu_us_per_credited_event", 350.1)
    assert report.meets("p99_ms_half_load", 24.9) and not report.meets("p99_ms_half_load", 25)
    assert report.spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert report.median_index([3.0, 1.0, 2.0]) == 2


def test_the_spend_phase_reports_its_medians_spreads_and_targets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from benchmarks.run import summarise_spend

    def rep(ratio: float, p99: float) -> dict[str, Any]:
        return {
            "ledger_random": 2000.0, "spend_random": 2000.0 * ratio, "spend_ratio_random": ratio,
            "ledger_hot": 1000.0, "spend_hot": 900.0, "spend_ratio_hot": 0.9,
            "p99_ms_spend_half_load": p99, "server_events_spend": {},
            "p99_ms_spend_cold_connections": 120.0,
        }  # fmt: skip

    results = summarise_spend([rep(0.4, 30.0), rep(0.7, 10.0), rep(0.6, 12.0)])
    assert results["spend_ratio_random"] == 0.6
    assert results["spend_ratio_random_spread"] == [0.4, 0.7]
    assert results["p99_ms_spend_half_load"] == 12.0
    assert results["spend"]["random"] == 1200.0 and results["spend"]["ledger_hot"] == 1000.0
    report.print_spend(results)
    out = capsys.readouterr().out
    assert "| spend_ratio_random | 0.60 | 0.40 to 0.70 | >= 0.5 | 2/3 |" in out
    assert "| p99_ms_spend_half_load | 12.0 | 10.0 to 30.0 | < 25 | 2/3 |" in out
    assert report.meets("spend_ratio_hot", 0.8) and not report.meets("spend_ratio_hot", 0.79)


async def test_the_credit_phase_enqueues_on_the_workers_own_queue(
    database_url: str, clean_redis_url: str, tmp_path: Any
) -> None:
    """`make bench`'s drain must reach the workers (their queue is one per database since
    QUEUE_NAME): every stored purchase ends credited, within the drain's own timeout."""
    import asyncpg

    from benchmarks.credit import Workers, load_events
    from benchmarks.services import service_env

    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO users (id, email) SELECT g, 'b' || g || '@example.com' "
            "FROM generate_series(1, 10000) g"
        )
    finally:
        await conn.close()
    env = {**service_env(database_url, clean_redis_url), "SWEEP_INTERVAL_SECONDS": "3600"}
    with Workers(env, 1, tmp_path, {}) as workers:
        # Stored after the worker started: its start-up sweep does not see them, only a job.
        ids = await asyncio.to_thread(load_events, database_url, 20, False)
        drained = await asyncio.to_thread(workers.drain, "random", ids, 60)
    assert drained["rate"] > 0
    conn = await asyncpg.connect(database_url)
    try:
        credited = await conn.fetchval(
            "SELECT count(*) FROM credit_transactions WHERE event_id = ANY($1::text[])", ids
        )
    finally:
        await conn.close()
    assert credited == len(ids)


def test_the_spend_tail_reports_the_connections_warm_up_apart() -> None:
    """Fresh pgbench connections compile the spending functions on their first call: those
    spends are reported as `cold_p99_ms`, never hidden in or mixed into the steady p99."""
    from benchmarks.spend import tail_figures

    steady = [(10.0 + i / 1000, 2.0 + (i % 100) / 10) for i in range(2000)]
    first_calls = [(9.0 + i / 100, 120.0) for i in range(32)]
    figures = tail_figures(first_calls + steady, warm_up=1.0)
    assert figures["cold_p99_ms"] == 120.0
    assert 11.0 < figures["p99_ms"] < 12.0
    # A stall after the warm-up counts in full.
    stalled = steady + [(11.0 + i / 1000, 150.0) for i in range(100)]
    assert tail_figures(first_calls + stalled, warm_up=1.0)["p99_ms"] == 150.0


def test_the_console_seed_has_the_two_sections_the_bench_runs() -> None:
    """benchmarks/console.py runs `event_rows` (one SELECT) once per half of the events,
    g = $1 .. $2, and `users_and_ledger` (the users, the ledger, the balances) beside it."""
    from benchmarks.console import SEED, _sections

    sections = _sections(SEED.read_text())
    assert set(sections) == {"event_rows", "users_and_ledger"}
    rows = sections["event_rows"].strip()
    assert "generate_series($1::int, $2::int)" in rows
    assert ";" not in rows
    statements = [s for s in sections["users_and_ledger"].split(";\n") if s.strip()]
    code = [
        [line for line in s.splitlines() if line and not line.startswith("--")] for s in statements
    ]
    assert [lines[0].split()[:3] for lines in code] == [
        ["INSERT", "INTO", "users"],
        ["INSERT", "INTO", "credit_transactions"],
        ["UPDATE", "users", "u"],
    ]


def test_a_full_run_keeps_what_the_console_bench_wrote_into_the_results(tmp_path: Any) -> None:
    """`make bench` rewrites results.json; `make bench-console`'s keys stay, nothing else."""
    out = tmp_path / "results.json"
    assert report.kept_from(out) == {}
    earlier = {"console": {"console_p95_ms": 83.0}, "console_p95_ms": 83.0, "ingest_ratio": 0.7}
    report.write_json(earlier, out)
    assert report.kept_from(out) == {"console": {"console_p95_ms": 83.0}, "console_p95_ms": 83.0}
