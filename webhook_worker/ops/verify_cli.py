"""`webhook-worker verify`: the deployment check as a checklist, then the problems again;
exit 1 when any check failed. `deploy_hotfix.py` prints its verify step the same way."""

from __future__ import annotations

import argparse

from rich.text import Text

from webhook_worker.config import Settings
from webhook_worker.exit_codes import EXIT_OK, EXIT_PROBLEM
from webhook_worker.ops import command, terminal, verify


def print_verify_report(report: verify.VerifyReport) -> None:
    """A checklist, then the problems again as a list (also used by deploy_hotfix.py)."""
    console = terminal.console()
    for line in report.host_shape:
        console.print(terminal.cell(f"host: {line}"))
    for check in report.checks:
        mark = "[green]ok[/green]  " if check.ok else "[red]FAIL[/red]"
        if check.ok and check.warning:
            mark = "[yellow]warn[/yellow]"
        detail = terminal.cell(f"{check.name}: {check.detail}")
        console.print(Text.from_markup(mark) + Text(" ") + detail)
    if report.ok:
        console.print(f"verify passed: {len(report.checks)} checks")
    else:
        console.print(f"verify FAILED: {len(report.problems)} problem(s)")
        for check in report.problems:
            console.print(terminal.cell(f"  - {check.name}: {check.detail}"))


async def _verify(args: argparse.Namespace, settings: Settings) -> int:
    async with command.connection(settings) as conn:
        report = await verify.verify(
            conn,
            stale_after_seconds=settings.stale_after_seconds,
            tenant_column=settings.users_tenant_column,
            settings=settings,
        )
    if args.json:
        terminal.print_json(report.as_dict())
    else:
        print_verify_report(report)
    return EXIT_OK if report.ok else EXIT_PROBLEM


def add_verify(sub: terminal.Subparsers) -> None:
    p = sub.add_parser(
        "verify",
        help="deployment check: schema per contract, balances match ledgers, no stuck events",
        description="Exit 0 when every check passes, 1 with the list of problems otherwise.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=command.sync(_verify))
