"""The benchmark's own instruments: CPU per event by process role, the CPU budget, and the
load generator's open-loop latency."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys

import psutil

from benchmarks.loadgen import _drive, render_request
from benchmarks.run import CpuMeter, _budget
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
    budget = _budget({"receiver": 400.0, "postgres": 300.0, "redis": 50.0, "load": 250.0})
    cores = os.cpu_count() or 1
    assert budget == {"total_us": 1000.0, "rate_if_all_cores_busy": cores * 1000.0}


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
        result = await _drive("127.0.0.1", port, [request] * 5, 1, 30.0, 50.0)
    finally:
        server.close()
        await server.wait_closed()
    assert (result.sent, result.ok, result.errors) == (5, 5, 0)
    assert result.latencies_ms[0] >= STALL_S * 1000
    # Each waited at least the stall less how late in the schedule it was due.
    for position, latency in enumerate(result.latencies_ms[1:], start=1):
        assert latency >= STALL_S * 1000 - position * 20, (position, result.latencies_ms)
