"""Ops subcommands of `webhook-worker`: events, replay, stats, verify, send-test-event, prune.

Thin argparse front ends over the ops command modules (`listing`, `replay`, `stats`,
`verify`, `prune`, `test_events`); `cli.py` registers `OPS_REGISTRARS`.
Exit codes as in `cli.py`: 0 ok, 1 the command ran and found a problem (event not found,
failed check, non-200 answer), 2 bad usage or configuration. `--json` prints one JSON
document on stdout for scripts; otherwise `rich` tables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from arq.connections import ArqRedis
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from webhook_worker import job_queue as queue
from webhook_worker.config import Settings
from webhook_worker.db import store
from webhook_worker.errors import TransientError
from webhook_worker.exit_codes import EXIT_OK, EXIT_PROBLEM
from webhook_worker.log import get_logger
from webhook_worker.ops import (
    audit,
    listing,
    prune,
    replay,
    stats,
    terminal,
    test_events,
    values,
    verify,
)

_PROGRESS_FROM = 50
_log = get_logger("webhook_worker.ops.cli")

AsyncHandler = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]


def _sync(handler: AsyncHandler) -> Callable[[argparse.Namespace, Settings], int]:
    return lambda args, settings: asyncio.run(handler(args, settings))


@contextlib.asynccontextmanager
async def _connection(settings: Settings) -> AsyncIterator[store.Connection]:
    pool = await store.create_pool(settings, min_size=1, max_size=2)
    try:
        async with store.acquire(pool, "running an ops command") as conn:
            yield conn
    finally:
        await pool.close()


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


# --- events list / show ------------------------------------------------------------------


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


def _print_events(events: list[dict[str, Any]], title: str, *, wide: bool) -> None:
    """Ids and statuses whole at any width; the rest as room allows (`--wide`: all)."""
    rows = [
        (
            event["event_id"],
            event["processing_status"],
            event["type"],
            _when(event["received_at"]),
            str(event["attempts"]),
            _why(event),
        )
        for event in events
    ]
    terminal.print_table(title, _EVENT_COLUMNS, rows, wide=wide)


async def _events_list(args: argparse.Namespace, settings: Settings) -> int:
    since = values.parse_since(args.since)
    values.check_status(args.status)
    async with _connection(settings) as conn:
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
    _print_events(events, f"{len(events)} event(s), newest first", wide=args.wide)
    return EXIT_OK


async def _events_show(args: argparse.Namespace, settings: Settings) -> int:
    async with _connection(settings) as conn:
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


def _add_events(sub: terminal.Subparsers) -> None:
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
    lst.set_defaults(handler=_sync(_events_list))
    show = events.add_parser(
        "show", help="one event: status, attempts, error and the ledger rows it produced"
    )
    show.add_argument("event_id", metavar="EVENT_ID", help="the Stripe event id, evt_…")
    show.add_argument("--raw", action="store_true", help="include the raw Stripe payload")
    show.add_argument("--wide", action="store_true", help="every ledger column, whole")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_sync(_events_show))


# --- replay ------------------------------------------------------------------------------


async def _connect_redis(settings: Settings) -> ArqRedis | None:
    try:
        return await queue.create_redis(settings)
    except TransientError:
        return None


async def _replay_with_progress(
    conn: store.Connection, redis: ArqRedis | None, selection: replay.ReplayResult, show: bool
) -> replay.ReplayResult:
    if not show:
        return await replay.replay_events(conn, redis, selection)
    with Progress(
        TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), console=terminal.console()
    ) as progress:
        task = progress.add_task("replay", total=len(selection.selected))
        return await replay.replay_events(
            conn, redis, selection, on_progress=lambda n: progress.advance(task, n)
        )


def _print_replay(result: replay.ReplayResult, *, wide: bool) -> None:
    if result.dry_run:
        if result.selected:
            total = max(result.count, len(result.selected))
            more = f"more than {result.limit}" if result.more else str(total)
            title = f"dry run: would replay {more} event(s); nothing changed"
            if total > len(result.selected):
                title += f" (first {len(result.selected)} shown)"
            _print_events(result.selected, title, wide=wide)
        else:
            print("dry run: nothing to replay")
    elif result.replayed:
        print(
            f"replayed {len(result.replayed)} event(s): back to received, "
            f"{result.enqueued} job(s) enqueued"
        )
        for event_id in result.replayed[:20]:
            print(f"  {terminal.plain(event_id)}")
        if len(result.replayed) > 20:
            print(f"  … and {len(result.replayed) - 20} more")
    else:
        print("nothing to replay")
    if result.more and not result.dry_run:
        print(
            f"stopped at OPS_REPLAY_MAX={result.limit}: more events match; run the same "
            "command again to continue",
            file=sys.stderr,
        )
    for event_id in result.not_found:
        print(f"not found: {terminal.plain(event_id)}", file=sys.stderr)
    for skipped in result.skipped:
        print(
            f"skipped: {terminal.plain(skipped['event_id'])}: {terminal.plain(skipped['reason'])}",
            file=sys.stderr,
        )
    if result.enqueue_error:
        print(f"warning: {result.enqueue_error}", file=sys.stderr)


async def _replay(args: argparse.Namespace, settings: Settings) -> int:
    since = values.parse_since(args.since)
    until = values.parse_since(args.until, name="--until")
    async with _connection(settings) as conn:
        selection = await replay.select_replay(
            conn,
            event_ids=args.event_ids,
            status=args.status,
            event_type=args.type,
            since=since,
            until=until,
            force=args.force,
            limit=settings.ops_replay_max,
            preview=args.dry_run,
        )
        if args.dry_run or not selection.selected:
            result = await replay.replay_events(conn, None, selection, dry_run=args.dry_run)
        else:
            redis = await _connect_redis(settings)
            try:
                show = not args.json and len(selection.selected) >= _PROGRESS_FROM
                result = await _replay_with_progress(conn, redis, selection, show)
            finally:
                if redis is not None:
                    await redis.aclose()
            if result.replayed:
                filters = {"status": args.status, "type": args.type, "since": args.since,
                           "until": args.until}  # fmt: skip
                await audit.record_replay(
                    conn,
                    who=f"cli:{getpass.getuser()}",
                    client=None,
                    via="cli",
                    forced=args.force,
                    filters={k: v for k, v in filters.items() if v is not None} or None,
                    event_ids=result.replayed,
                )
    _log_replay(args, result)
    if args.json:
        terminal.print_json(result.as_dict())
    else:
        _print_replay(result, wide=args.wide)
    return EXIT_OK if result.ok else EXIT_PROBLEM


def _log_replay(args: argparse.Namespace, result: replay.ReplayResult) -> None:
    """Who (the OS user of the CLI), when, and which events: ids, or the filters and count.
    A dry run changed nothing: its line is debug only, so it never joins the human output."""
    filters = {"status": args.status, "type": args.type, "since": args.since, "until": args.until}
    ids = result.replayed if not result.dry_run else [e["event_id"] for e in result.selected]
    log = _log.debug if result.dry_run else _log.info
    log(
        "ops_replayed",
        who={"cli_user": getpass.getuser()},
        at=datetime.now(UTC).isoformat(),
        dry_run=result.dry_run,
        count=len(result.replayed),
        matching=result.count,
        filters={k: v for k, v in filters.items() if v is not None},
        event_ids=ids[:100],
    )


def _add_replay(sub: terminal.Subparsers) -> None:
    p = sub.add_parser(
        "replay",
        help="put events back to received and enqueue them again (fresh job id)",
        description=(
            "Replay named events, or events with --status (and optional --type/--since/--until), "
            "at most OPS_REPLAY_MAX per run (run again to continue). "
            "Attempts and the last error are kept until the worker records the new outcome. "
            "completed/ignored events need --force; a replayed completed purchase credits "
            "nothing twice. Exit 1 when an id is unknown or skipped, or Redis was unreachable "
            "(the events then wait as received for the sweeper)."
        ),
    )
    p.add_argument(
        "event_ids",
        nargs="*",
        metavar="EVENT_ID",
        help="events to replay (default: none, then --status selects)",
    )
    p.add_argument(
        "--status",
        choices=store.EVENT_STATUSES,
        help="replay every event in it (default: only the EVENT_IDs given)",
    )
    p.add_argument("--type", help="with --status: only this event type (default: all)")
    p.add_argument(
        "--since", help="with --status: received since (2024-06-01, 24h, 7d; default: ever)"
    )
    p.add_argument(
        "--until", help="only events received before this date (same forms; default: now)"
    )
    p.add_argument("--force", action="store_true", help="also replay completed/ignored events")
    p.add_argument(
        "--dry-run", action="store_true", help="count and list what would be replayed; no change"
    )
    p.add_argument("--wide", action="store_true", help="with --dry-run: every column, whole")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_sync(_replay))


# --- stats -------------------------------------------------------------------------------


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
        + (f" (oldest {_when(stats['oldest_waiting_at'])} UTC)" if stats["waiting_events"] else ""),
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
            "last reconcile at", f"{_when(last['finished_at'] or last['started_at'])} UTC"
        )
    console.print(summary)


async def _stats(args: argparse.Namespace, settings: Settings) -> int:
    async with _connection(settings) as conn:
        figures = await stats.collect_stats(conn)
    if args.json:
        terminal.print_json(figures)
    else:
        _print_stats(figures, wide=args.wide)
    return EXIT_OK


def _add_stats(sub: terminal.Subparsers) -> None:
    p = sub.add_parser(
        "stats", help="events by status and type, backlog age, failures, credit totals"
    )
    p.add_argument("--wide", action="store_true", help="every status column, whole")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_sync(_stats))


# --- verify ------------------------------------------------------------------------------


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
    async with _connection(settings) as conn:
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


def _add_verify(sub: terminal.Subparsers) -> None:
    p = sub.add_parser(
        "verify",
        help="deployment check: schema per contract, balances match ledgers, no stuck events",
        description="Exit 0 when every check passes, 1 with the list of problems otherwise.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_sync(_verify))


# --- send-test-event ---------------------------------------------------------------------


def _default_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.port}/webhooks/stripe"


def _dev_secret(settings: Settings) -> str | None:
    """The secret `webhook-worker dev` created and printed, when run from the same folder."""
    path = Path(settings.data_dir) / "dev_webhook_secret"
    if not path.is_file():
        return None
    return path.read_text().strip() or None


async def _send_test_event(args: argparse.Namespace, settings: Settings) -> int:
    secret = test_events.pick_secret(
        settings, args.secret or (None if settings.webhook_secrets else _dev_secret(settings))
    )
    url = args.url or _default_url(settings)
    terminal.quiet_http_logs()
    if args.credits is not None and args.credits < 1:
        raise values.OpsInputError("--credits must be a positive integer")
    event_type = _allowed_test_type(args.type, settings, allow_credit=args.allow_credit)
    event = test_events.build_test_event(
        event_type,
        email=args.email,
        user_id=args.user_id,
        user_uuid=args.user_uuid,
        credits=args.credits,
        payment_intent=args.payment_intent,
        customer=args.customer,
        invoice=args.invoice,
    )
    result = await test_events.send_event(url, event, secret)
    if args.json:
        terminal.print_json(
            {
                "event_id": result.event_id,
                "type": result.event_type,
                "status_code": result.status_code,
                "body": result.body,
            }
        )
    else:
        print(f"sent {result.event_type} {result.event_id} to {url}")
        print(f"HTTP {result.status_code} {result.body}")
    return EXIT_OK if result.status_code == 200 else EXIT_PROBLEM


def _allowed_test_type(event_type: str, settings: Settings, *, allow_credit: bool) -> str:
    """With APP_ENV=production only the smoke-test type goes out (the worker ignores it), unless
    --allow-credit: one command must not mint credits in production by accident."""
    if settings.app_env != "production" or event_type == test_events.SMOKE_EVENT_TYPE:
        return event_type
    if allow_credit:
        print(
            f"warning: APP_ENV=production and --allow-credit: sending {event_type}, which may "
            "credit a real user's balance",
            file=sys.stderr,
        )
        return event_type
    print(
        f"APP_ENV=production: sending {test_events.SMOKE_EVENT_TYPE} instead of {event_type} (it "
        "credits nothing); pass --allow-credit to send credit-bearing types",
        file=sys.stderr,
    )
    return test_events.SMOKE_EVENT_TYPE


def _add_send_test_event(sub: terminal.Subparsers) -> None:
    p = sub.add_parser(
        "send-test-event",
        help="POST a signed test-mode Stripe event to a receiver (like `stripe trigger`)",
        description=(
            "Exit 0 on HTTP 200, 1 otherwise. The email and secret are never printed. With "
            f"APP_ENV=production only {test_events.SMOKE_EVENT_TYPE} is sent (it credits nothing) "
            "unless --allow-credit is given."
        ),
    )
    p.add_argument(
        "--url",
        help="receiver endpoint (default: http://127.0.0.1:$PORT/webhooks/stripe, PORT 8000)",
    )
    p.add_argument(
        "--type",
        default="checkout.session.completed",
        help="event type (default: %(default)s); charge.refunded needs --payment-intent; "
        "invoice.paid is a monthly renewal crediting --credits to --user-id / --user-uuid or "
        "to the user linked to --customer; credit_note.created refunds --invoice in full",
    )
    who = p.add_mutually_exclusive_group()
    who.add_argument(
        "--email",
        help="buyer email (customer_email / customer_details.email; default: none)",
    )
    who.add_argument("--user-id", help="users.id, sent as client_reference_id (default: none)")
    who.add_argument("--user-uuid", help="users.uuid, sent as metadata.user_uuid (default: none)")
    p.add_argument("--credits", type=int, default=10, help="metadata.credits (default: 10)")
    p.add_argument(
        "--payment-intent",
        help="pi_… to use; refunds point at the purchase's (default: a new random id)",
    )
    p.add_argument(
        "--customer",
        help="cus_… the event names; invoice.paid: a linked customer (default: a new one)",
    )
    p.add_argument(
        "--invoice", help="in_… a credit note refunds, credit_note.created (default: a new one)"
    )
    p.add_argument(
        "--secret",
        help="sign with this whsec_… (default: the first STRIPE_WEBHOOK_SECRET, "
        "else the secret `webhook-worker dev` keeps in .data/)",
    )
    p.add_argument(
        "--allow-credit",
        action="store_true",
        help="with APP_ENV=production, really send --type (it may mint credits)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_sync(_send_test_event))


# --- prune -------------------------------------------------------------------------------


async def _prune(args: argparse.Namespace, settings: Settings) -> int:
    days = args.older_than if args.older_than is not None else settings.retention_days
    async with _connection(settings) as conn:
        count = await prune.prune(conn, days, dry_run=args.dry_run)
    if args.json:
        terminal.print_json({"dry_run": args.dry_run, "older_than_days": days, "events": count})
    elif args.dry_run:
        print(f"dry run: would prune the raw payload of {count} event(s) older than {days} days")
    else:
        print(f"pruned the raw payload of {count} event(s) older than {days} days")
    return EXIT_OK


def _add_prune(sub: terminal.Subparsers) -> None:
    p = sub.add_parser(
        "prune",
        help="drop raw payloads of old completed/ignored events (ids, status, ledger stay)",
    )
    p.add_argument(
        "--older-than", type=int, metavar="DAYS", help="age in days (default: RETENTION_DAYS, 90)"
    )
    p.add_argument("--dry-run", action="store_true", help="count only, change nothing")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_sync(_prune))


OPS_REGISTRARS: list[Callable[[terminal.Subparsers], None]] = [
    _add_events,
    _add_replay,
    _add_stats,
    _add_verify,
    _add_send_test_event,
    _add_prune,
]
