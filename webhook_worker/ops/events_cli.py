"""`webhook-worker events list|show`: stored Stripe events, newest first, and one event
with its attempts, error and the ledger rows it produced."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson
from rich.text import Text

from webhook_worker.config import Settings
from webhook_worker.db import store
from webhook_worker.exit_codes import EXIT_OK, EXIT_PROBLEM
from webhook_worker.ops import command, listing, terminal, values

# Shown in this order; kept, as the width allows, by priority: why (the reason, else the
# error's first line), then type, when, tries.
_EVENT_COLUMNS = (
    terminal.Column("event id", required=True),
    terminal.Column("status", required=True),
    terminal.Column("type", wrap="fold", priority=2),
    terminal.Column("received (UTC)", priority=3),
    terminal.Column("tries", justify="right", priority=4),
    terminal.Column("reason / error", wrap="cut", priority=1),
)


def _why(event: dict[str, Any]) -> str:
    reason = event.get("status_reason") or ""
    error = terminal.one_line(event.get("error_message"))
    return ": ".join(part for part in (reason, error) if part) or "-"


_LEDGER_COLUMNS = (
    terminal.Column("id", required=True),
    terminal.Column("type", required=True),
    terminal.Column("amount", required=True, justify="right"),
    terminal.Column("balance after", justify="right", priority=1),
    terminal.Column("user", priority=2),
    terminal.Column("user uuid", priority=4),
    terminal.Column("session", priority=3),
)


def print_events(events: list[dict[str, Any]], title: str, *, wide: bool) -> None:
    """Ids and statuses whole at any width; the rest as room allows (`--wide`: all)."""
    rows = [
        (
            event["event_id"],
            event["processing_status"],
            event["type"],
            terminal.when(event["received_at"]),
            str(event["attempts"]),
            _why(event),
        )
        for event in events
    ]
    terminal.print_table(title, _EVENT_COLUMNS, rows, wide=wide)


async def _events_list(args: argparse.Namespace, settings: Settings) -> int:
    since = values.parse_since(args.since)
    values.check_status(args.status)
    async with command.connection(settings) as conn:
        events = await listing.list_events(
            conn,
            status=args.status,
            event_type=args.type,
            since=since,
            reason=args.reason,
            limit=args.limit,
        )
    if args.json:
        terminal.print_json(events)
        return EXIT_OK
    if not events:
        print("no events match")
        return EXIT_OK
    print_events(events, f"{len(events)} event(s), newest first", wide=args.wide)
    return EXIT_OK


async def _events_show(args: argparse.Namespace, settings: Settings) -> int:
    async with command.connection(settings) as conn:
        event = await listing.show_event(conn, args.event_id, raw=args.raw)
    if event is None:
        print(f"event {terminal.plain(args.event_id)} not found", file=sys.stderr)
        return EXIT_PROBLEM
    if args.json:
        terminal.print_json(event)
        return EXIT_OK
    console = terminal.console()
    fields = (
        "event_id",
        "type",
        "processing_status",
        "status_reason",
        "attempts",
        "error_message",
        "livemode",
        "account",
        "api_version",
        "stripe_created_at",
        "received_at",
        "processed_at",
        "updated_at",
        "payload_pruned",
        "source",
    )
    for name in fields:  # whole values: the error in full, wrapped, never cut
        value = event.get(name)
        console.print(Text.assemble((f"{name:<18}", "bold"), " ", terminal.cell(value)))
    ledger = event["ledger"]
    if ledger:
        rows = [
            (
                str(row["id"]),
                row["transaction_type"],
                str(row["amount"]),
                str(row["balance_after"]),
                str(row["user_id"]),
                str(row["user_uuid"]),
                row["checkout_session_id"] or "-",
            )
            for row in ledger
        ]
        terminal.print_table("ledger rows", _LEDGER_COLUMNS, rows, wide=args.wide)
    else:
        console.print("[bold]ledger            [/bold] no ledger rows")
    if args.raw:
        payload = event.get("raw_data")
        if payload is None:
            print("raw payload: pruned")
        else:
            text = orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode()
            print(terminal.plain(text, block=True))
    return EXIT_OK


def add_events(sub: terminal.Subparsers) -> None:
    p = sub.add_parser("events", help="list and inspect stored Stripe events")
    events = p.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    lst = events.add_parser("list", help="list events, newest first")
    lst.add_argument(
        "--status", choices=store.EVENT_STATUSES, help="only this status (default: every status)"
    )
    lst.add_argument(
        "--type", help="only this event type, e.g. checkout.session.completed (default: all)"
    )
    lst.add_argument(
        "--since", help="received since: 2024-06-01, an ISO time, or 24h / 7d (default: ever)"
    )
    lst.add_argument(
        "--reason",
        help="only this status reason, e.g. livemode_mismatch (docs/stripe.md; default: any)",
    )
    lst.add_argument(
        "--limit",
        type=int,
        default=listing.DEFAULT_LIST_LIMIT,
        help="at most N rows (default: %(default)s)",
    )
    lst.add_argument(
        "--wide", action="store_true", help="every column, whole, however wide the terminal"
    )
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    lst.set_defaults(handler=command.sync(_events_list))
    show = events.add_parser(
        "show", help="one event: status, attempts, error and the ledger rows it produced"
    )
    show.add_argument("event_id", metavar="EVENT_ID", help="the Stripe event id, evt_…")
    show.add_argument("--raw", action="store_true", help="include the raw Stripe payload")
    show.add_argument("--wide", action="store_true", help="every ledger column, whole")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=command.sync(_events_show))
