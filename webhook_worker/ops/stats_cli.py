"""`webhook-worker stats`: events by status and type, backlog age, failures and credit
totals, as tables (or one JSON document)."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from webhook_worker.config import Settings
from webhook_worker.db import store
from webhook_worker.exit_codes import EXIT_OK
from webhook_worker.ops import command, stats, terminal


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "none waiting"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h {seconds % 3600 // 60}m"


def _print_stats(stats: dict[str, Any], *, wide: bool) -> None:
    console = terminal.console()
    status_table = Table(title="events by status", title_justify="left")
    status_table.add_column("status")
    status_table.add_column("events", justify="right")
    for status, count in stats["events_by_status"].items():
        terminal.row(status_table, status, count)
    terminal.row(status_table, terminal.cell("total", "bold"), stats["events_total"])
    console.print(status_table)
    # Types whole; the statuses an operator acts on first when the width is short.
    urgency = ("failed", "waiting", "received", "processing", "ignored", "completed")
    columns = [terminal.Column("type", required=True)] + [
        terminal.Column(status, justify="right", priority=urgency.index(status) + 1)
        for status in store.EVENT_STATUSES
    ]
    rows = [
        (event_type, *(str(counts.get(s, 0)) for s in store.EVENT_STATUSES))
        for event_type, counts in stats["events_by_type"].items()
    ]
    terminal.print_table("events by type", columns, rows, wide=wide)
    if stats["ignored_by_reason"]:
        reasons = Table(title="ignored events by reason", title_justify="left")
        reasons.add_column("reason", no_wrap=True)
        reasons.add_column("events", justify="right")
        for reason, count in stats["ignored_by_reason"].items():
            terminal.row(reasons, reason, count)
        console.print(reasons)
    summary = Table(title="health and credits", title_justify="left", show_header=False)
    summary.add_column("what")
    summary.add_column("value", justify="right")
    summary.add_row("oldest unprocessed event", _age(stats["oldest_unprocessed_age_seconds"]))
    summary.add_row("failures in the last day", str(stats["failures_last_day"]))
    summary.add_row("credits granted", str(stats["credits_granted"]))
    summary.add_row("credits refunded (net)", str(stats["credits_refunded"]))
    summary.add_row("credits disputed (net)", str(stats["credits_disputed"]))
    summary.add_row("credits spent (usage, settled holds)", str(stats["credits_spent"]))
    summary.add_row("open holds", f"{stats['open_holds']} ({stats['credits_held']} credits)")
    summary.add_row(
        f"shortfall owed (policy {stats['shortfall_policy']})", str(stats["shortfall_outstanding"])
    )
    summary.add_row("shortfall collected", str(stats["shortfall_collected"]))
    summary.add_row(
        "waiting for their purchase",
        f"{stats['waiting_events']}"
        + (
            f" (oldest {terminal.when(stats['oldest_waiting_at'])} UTC)"
            if stats["waiting_events"]
            else ""
        ),
    )
    summary.add_row("credits outstanding", str(stats["credits_outstanding"]))
    summary.add_row("users with credits", str(stats["users_with_credits"]))
    last = stats["last_reconcile"]
    # Two short rows rather than one long value: the table keeps to 80 columns.
    summary.add_row(
        "last reconcile",
        f"{last['status']}, {last['events_recovered']} recovered" if last else "never",
    )
    if last:
        summary.add_row(
            "last reconcile at", f"{terminal.when(last['finished_at'] or last['started_at'])} UTC"
        )
    console.print(summary)


async def _stats(args: argparse.Namespace, settings: Settings) -> int:
    async with command.connection(settings) as conn:
        figures = await stats.collect_stats(conn)
    if args.json:
        terminal.print_json(figures)
    else:
        _print_stats(figures, wide=args.wide)
    return EXIT_OK


def add_stats(sub: terminal.Subparsers) -> None:
    p = sub.add_parser(
        "stats", help="events by status and type, backlog age, failures, credit totals"
    )
    p.add_argument("--wide", action="store_true", help="every status column, whole")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=command.sync(_stats))
