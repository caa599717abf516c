"""`webhook-worker replay`: put events back to received and enqueue them again, with a
progress bar for large runs, an audit row and an `ops_replayed` log line."""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import UTC, datetime

from arq.connections import ArqRedis
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from webhook_worker import job_queue as queue
from webhook_worker.config import Settings
from webhook_worker.db import store
from webhook_worker.errors import TransientError
from webhook_worker.exit_codes import EXIT_OK, EXIT_PROBLEM
from webhook_worker.log import get_logger
from webhook_worker.ops import audit, command, replay, terminal, values
from webhook_worker.ops.events_cli import print_events

_PROGRESS_FROM = 50
# The name the ops commands logged under before the split: log queries that select it still work.
_log = get_logger("webhook_worker.ops.cli")


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
            print_events(result.selected, title, wide=wide)
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
    async with command.connection(settings) as conn:
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


def add_replay(sub: terminal.Subparsers) -> None:
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
    p.set_defaults(handler=command.sync(_replay))
