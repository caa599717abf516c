"""`webhook-worker reconcile`: a one-off run over Stripe's List Events API (see `reconcile`).

Exit 0 when the window was read whole, 1 when Stripe refused the key or kept failing (the
message says which), 2 on bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from webhook_worker.config import STRIPE_EVENTS_HISTORY_SECONDS, Settings
from webhook_worker.db import store
from webhook_worker.exit_codes import EXIT_OK
from webhook_worker.job_queue import connect_redis_lazily
from webhook_worker.ops import terminal, values
from webhook_worker.worker import reconcile


def _window(args: argparse.Namespace) -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    since = values.parse_since(args.since, now=now) or now - timedelta(days=3)
    until = values.parse_since(args.until, now=now) or now
    oldest = now - timedelta(seconds=STRIPE_EVENTS_HISTORY_SECONDS)
    if since < oldest:
        raise values.OpsInputError(
            f"--since {args.since} is more than 30 days ago; Stripe's List Events API keeps 30 "
            "days of events (use e.g. --since 30d)"
        )
    if since >= until:
        raise values.OpsInputError(f"--since {args.since} is not before --until {args.until}")
    return since, until


def _types(args: argparse.Namespace) -> list[str]:
    types = list(dict.fromkeys(args.type or reconcile.RECONCILED_TYPES))
    if len(types) > 20:
        raise values.OpsInputError("Stripe filters at most 20 event types per request")
    return types


def _summary(result: reconcile.ReconcileResult) -> dict[str, Any]:
    return {
        "dry_run": result.dry_run,
        "since": result.since,
        "until": result.until,
        "pages": result.pages,
        "found": result.found,
        "recovered": result.recovered,
        "already_stored": result.already_stored,
        "unreadable": result.unreadable,
        "recovered_ids": result.recovered_ids,
        "enqueue_error": result.enqueue_error,
    }


async def _reconcile(args: argparse.Namespace, settings: Settings) -> int:
    since, until = _window(args)
    types = _types(args)
    settings.require_stripe_api()
    # The command prints its own report; the run's log lines (and httpx's per request) would
    # only repeat it on stdout, and break --json. Retries still show as warnings.
    terminal.quiet_http_logs()
    logging.getLogger("webhook_worker.reconcile").setLevel(
        logging.ERROR if args.json else logging.WARNING
    )
    pool = await store.create_pool(settings, min_size=1, max_size=2)
    redis = None if args.dry_run else connect_redis_lazily(settings)
    source = reconcile.StripeEvents(settings)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=terminal.console(),
        transient=True,
        disable=args.json or not sys.stdout.isatty(),
    )
    task = progress.add_task("reading Stripe events", total=None)

    def on_page(result: reconcile.ReconcileResult) -> None:
        progress.update(
            task,
            description=f"page {result.pages}: {result.found} found, {result.recovered} new",
        )

    try:
        with progress:
            result = await reconcile.reconcile(
                pool,
                redis,
                source,
                since=since,
                until=until,
                types=types,
                undelivered_only=args.undelivered_only,
                dry_run=args.dry_run,
                on_page=on_page,
            )
    finally:
        await source.close()
        if redis is not None:
            await redis.aclose()
        await pool.close()
    if args.json:
        terminal.print_json(_summary(result))
        return EXIT_OK
    verb = "would store" if result.dry_run else "stored"
    print(
        f"{'dry run: ' if result.dry_run else ''}{result.found} event(s) in Stripe from "
        f"{since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC ({result.pages} page(s)); "
        f"{verb} {result.recovered} missing, skipped {result.already_stored} already stored"
    )
    for event_id in result.recovered_ids:
        print(f"  {'missing' if result.dry_run else 'recovered'} {event_id}")
    for unreadable in result.unreadable:
        print(f"  unreadable {unreadable}")
    if result.enqueue_error:
        print(f"note: {result.enqueue_error}")
    return EXIT_OK


def add_reconcile(sub: terminal.Subparsers) -> None:
    p = sub.add_parser(
        "reconcile",
        help="recover events Stripe never delivered, from its List Events API (30 days)",
        description="Pages through Stripe's events and stores (and enqueues) every one that "
        "is not in stripe_events yet. Needs STRIPE_API_KEY (a restricted key with Events: "
        "read is enough).",
    )
    p.add_argument(
        "--since", default="3d", help="2024-06-01, an ISO time, or 24h / 7d (default: %(default)s)"
    )
    p.add_argument("--until", help="same forms; default: now")
    p.add_argument(
        "--type",
        action="append",
        metavar="TYPE",
        help="only this type (repeatable); default: every type the worker handles",
    )
    p.add_argument(
        "--undelivered-only",
        action="store_true",
        help="only events Stripe failed to deliver to some endpoint (delivery_success=false)",
    )
    p.add_argument("--dry-run", action="store_true", help="count what is missing, store nothing")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=lambda args, settings: asyncio.run(_reconcile(args, settings)))
