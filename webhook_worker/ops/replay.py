"""`events replay`: selected events back to `received` and enqueued under fresh job ids.

An event goes back to `received` with its `attempts` and last `error_message` kept (the
worker overwrites the error with the new outcome) and is enqueued under a fresh arq job
id, because arq refuses an id whose job or kept result still exists. `failed`, `received`
and `processing` events replay freely; `completed` and `ignored` ones only with `force` —
harmless (the ledger's unique `event_id` and one-PURCHASE-per-session constraints mean a
completed purchase is never credited twice) but rarely what was meant."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from arq.connections import ArqRedis

from webhook_worker import job_queue as queue
from webhook_worker.db.queries import query
from webhook_worker.db.store import Connection, translate_errors
from webhook_worker.errors import TransientError
from webhook_worker.ops.values import OpsInputError, check_status, event_row

REPLAY_BATCH = 200


DRY_RUN_ROWS = 20


FREE_REPLAY_STATUSES = ("failed", "received", "processing", "waiting")


FORCED_REPLAY_STATUSES = ("completed", "ignored")


@dataclass
class ReplayResult:
    """What a replay did (or, with `dry_run`, would do)."""

    dry_run: bool
    selected: list[dict[str, Any]] = field(default_factory=list)
    # Events the filters match, counted up to `limit` + 1; `more` when a call left some.
    count: int = 0
    limit: int = 0
    more: bool = False
    replayed: list[str] = field(default_factory=list)
    enqueued: int = 0
    not_found: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    enqueue_error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.not_found and not self.skipped and self.enqueue_error is None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


async def select_replay(
    conn: Connection,
    *,
    event_ids: Sequence[str] = (),
    status: str | None = None,
    event_type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    force: bool = False,
    limit: int = 10_000,
    preview: bool = False,
) -> ReplayResult:
    """Which events a replay would touch: named ids, or the events matching the filters.

    At most `limit` (OPS_REPLAY_MAX) per call, read in keyset pages; `more` says a further
    call is needed (replayed events leave the `failed` filter, so it continues where this one
    stopped). With `preview` (a dry run) the filters are only counted and the first
    `DRY_RUN_ROWS` rows returned: a dry run never loads every row.
    """
    result = ReplayResult(dry_run=True, limit=limit)
    filtered = status or event_type or since or until
    if event_ids and filtered:
        raise OpsInputError("give event ids or --status/--type/--since/--until filters, not both")
    if not event_ids and status is None:
        raise OpsInputError("give event ids to replay, or --status (e.g. --status failed)")
    if since and until and since >= until:
        raise OpsInputError("--since must be before --until")
    allowed = FREE_REPLAY_STATUSES + (FORCED_REPLAY_STATUSES if force else ())
    if event_ids:
        candidates = await _named_events(conn, event_ids, limit, result)
    else:
        check_status(status)
        if status in FORCED_REPLAY_STATUSES and not force:
            raise OpsInputError(
                f"replaying {status} events needs --force: it credits nothing twice but "
                "re-runs their handling"
            )
        filters = (status, event_type, since, until)
        with translate_errors("selecting events to replay"):
            matching = await conn.fetchval(query("ops_replay_count"), *filters, limit + 1)
        result.count, result.more = min(matching, limit), matching > limit
        wanted = min(DRY_RUN_ROWS, limit) if preview else limit
        candidates = await _matching_events(conn, filters, wanted)
    for event in candidates:
        if event["processing_status"] in allowed:
            result.selected.append(event)
        else:
            result.skipped.append(
                {
                    "event_id": event["event_id"],
                    "reason": f"already {event['processing_status']}; use --force to replay",
                }
            )
    return result


async def _named_events(
    conn: Connection, event_ids: Sequence[str], limit: int, result: ReplayResult
) -> list[dict[str, Any]]:
    unique_ids = list(dict.fromkeys(event_ids))
    if len(unique_ids) > limit:
        raise OpsInputError(
            f"{len(unique_ids)} event ids is more than OPS_REPLAY_MAX={limit} per call; "
            "split the list"
        )
    with translate_errors("selecting events to replay"):
        rows = await conn.fetch(query("ops_events_by_ids"), unique_ids)
    by_id = {row["event_id"]: event_row(row) for row in rows}
    result.not_found = [event_id for event_id in unique_ids if event_id not in by_id]
    result.count = len(by_id)
    return [by_id[event_id] for event_id in unique_ids if event_id in by_id]


async def _matching_events(
    conn: Connection, filters: tuple[Any, ...], wanted: int
) -> list[dict[str, Any]]:
    """Up to `wanted` rows in (received_at, id) order, one keyset page at a time."""
    rows: list[dict[str, Any]] = []
    after: tuple[datetime | None, int | None] = (None, None)
    while len(rows) < wanted:
        page_size = min(REPLAY_BATCH, wanted - len(rows))
        with translate_errors("selecting events to replay"):
            page = await conn.fetch(query("ops_replay_candidates"), *filters, *after, page_size)
        rows += [event_row(row) for row in page]
        if len(page) < page_size:
            break
        after = (page[-1]["received_at"], page[-1]["id"])
    for row in rows:
        row.pop("id", None)
    return rows


async def replay_events(
    conn: Connection,
    redis: ArqRedis | None,
    selection: ReplayResult,
    *,
    dry_run: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    """Reset the selected events to `received` and enqueue them (jobs under fresh ids).

    Rows are reset before the enqueue: if Redis fails half way, the events wait as
    `received` and the worker's stale-event sweeper enqueues them later.
    """
    selection.dry_run = dry_run
    if dry_run:
        return selection
    events = selection.selected
    for start in range(0, len(events), REPLAY_BATCH):
        batch = events[start : start + REPLAY_BATCH]
        ids = [event["event_id"] for event in batch]
        statuses = sorted({event["processing_status"] for event in batch})
        with translate_errors("resetting events for replay"):
            rows = await conn.fetch(query("ops_reset_for_replay"), ids, statuses)
        reset = {row["event_id"] for row in rows}
        replayed = [event_id for event_id in ids if event_id in reset]
        for event_id in ids:
            if event_id not in reset:
                selection.skipped.append(
                    {"event_id": event_id, "reason": "its status changed meanwhile; not replayed"}
                )
        selection.replayed.extend(replayed)
        if redis is not None and selection.enqueue_error is None and replayed:
            try:
                selection.enqueued += await queue.enqueue_events(redis, replayed)
            except TransientError as exc:
                selection.enqueue_error = (
                    f"{exc}; the events are `received` and the sweeper will enqueue them"
                )
        if on_progress is not None:
            on_progress(len(batch))
    if redis is None and selection.replayed:
        selection.enqueue_error = "Redis not available; the sweeper will enqueue the events"
    return selection
