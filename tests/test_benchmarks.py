"""The benchmark's own arithmetic: CPU per event by process role, and the CPU budget."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil

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
