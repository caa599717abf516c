"""`webhook-worker prune`: drop the raw payloads of old completed and ignored events (ids,
statuses and ledger rows stay)."""

from __future__ import annotations

import argparse

from webhook_worker.config import Settings
from webhook_worker.exit_codes import EXIT_OK
from webhook_worker.ops import command, prune, terminal


async def _prune(args: argparse.Namespace, settings: Settings) -> int:
    days = args.older_than if args.older_than is not None else settings.retention_days
    async with command.connection(settings) as conn:
        count = await prune.prune(conn, days, dry_run=args.dry_run)
    if args.json:
        terminal.print_json({"dry_run": args.dry_run, "older_than_days": days, "events": count})
    elif args.dry_run:
        print(f"dry run: would prune the raw payload of {count} event(s) older than {days} days")
    else:
        print(f"pruned the raw payload of {count} event(s) older than {days} days")
    return EXIT_OK


def add_prune(sub: terminal.Subparsers) -> None:
    p = sub.add_parser(
        "prune",
        help="drop raw payloads of old completed/ignored events (ids, status, ledger stay)",
    )
    p.add_argument(
        "--older-than", type=int, metavar="DAYS", help="age in days (default: RETENTION_DAYS, 90)"
    )
    p.add_argument("--dry-run", action="store_true", help="count only, change nothing")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=command.sync(_prune))
