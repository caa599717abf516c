"""The deploy's report: one line per step as it happens, then the table of every step.

A step is `ok`, `warn`, `FAIL`, `skipped` or `planned`; the deploy passed when none failed.
Lines are as wide as the terminal, else 160 columns (a release log keeps whole lines).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from webhook_worker.ops import terminal


@dataclass
class Step:
    name: str
    status: str  # "ok", "warn", "FAIL", "skipped", "planned"
    detail: str


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)
    lock_timed_out: bool = False

    def add(self, name: str, status: str, detail: str) -> Step:
        step = Step(name, status, detail)
        self.steps.append(step)
        console = deploy_console()
        colour = {"ok": "green", "FAIL": "red"}.get(status, "yellow")
        console.print(f"[{colour}]{status:>7}[/{colour}]  {name}: ", end="")
        console.print(detail, markup=False, highlight=False, soft_wrap=True)
        return step

    @property
    def ok(self) -> bool:
        return all(step.status != "FAIL" for step in self.steps)


def deploy_console() -> Console:
    """stdout as wide as the terminal; 160 columns in a release log, where none is."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def print_report(report: Report) -> None:
    table = Table(title="deploy report", title_justify="left")
    table.add_column("step", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("detail")
    for step in report.steps:
        terminal.row(table, step.name, step.status, step.detail)
    console = deploy_console()
    console.print(table)
    console.print("deploy PASSED" if report.ok else "deploy FAILED")
