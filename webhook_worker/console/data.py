"""What the console pages read: filters parsed and checked, keyset pages, overview figures,
users. Plain data out; SQL in `sql/queries/console.sql`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from webhook_worker.db.queries import query
from webhook_worker.db.store import EVENT_STATUSES, Connection, translate_errors
from webhook_worker.ops import stats, values

PAGE_SIZE = 50
USER_ROWS = 200
_MAX_TEXT = 200


@dataclass(frozen=True)
class EventFilters:
    """The Events and Bulk replay filters, as given (for links) and parsed (for SQL)."""

    status: str | None = None
    event_type: str | None = None
    since_text: str | None = None
    until_text: str | None = None
    q: str | None = None

    @property
    def since(self) -> datetime | None:
        return values.parse_since(self.since_text, name="from")

    @property
    def until(self) -> datetime | None:
        return values.parse_since(self.until_text, name="to")

    def as_params(self) -> dict[str, str]:
        pairs = {
            "status": self.status,
            "type": self.event_type,
            "since": self.since_text,
            "until": self.until_text,
            "q": self.q,
        }
        return {k: v for k, v in pairs.items() if v}


def _text(params: Any, name: str) -> str | None:
    value = (params.get(name) or "").strip()
    if len(value) > _MAX_TEXT:
        raise values.OpsInputError(f"{name} is longer than {_MAX_TEXT} characters")
    return value or None


def parse_filters(params: Any) -> EventFilters:
    """From query or form parameters; bad values raise OpsInputError (a 400 page)."""
    filters = EventFilters(
        status=values.check_status(_text(params, "status")),
        event_type=_text(params, "type"),
        since_text=_text(params, "since"),
        until_text=_text(params, "until"),
        q=_text(params, "q"),
    )
    since, until = filters.since, filters.until  # parsed now, so errors are 400s
    if since and until and since >= until:
        raise values.OpsInputError("from must be before to")
    return filters


def parse_cursor(raw: str | None) -> tuple[datetime | None, int | None]:
    """`before=<ISO received_at>,<id>` of the last row of the previous page."""
    if not raw:
        return None, None
    stamp, _, row_id = raw.rpartition(",")
    try:
        at = datetime.fromisoformat(stamp)
        number = int(row_id)
    except ValueError:
        raise values.OpsInputError("the page cursor `before` is malformed; start again") from None
    if at.tzinfo is None:
        raise values.OpsInputError("the page cursor `before` has no time zone; start again")
    return at, number


async def events_page(
    conn: Connection, filters: EventFilters, before: tuple[datetime | None, int | None]
) -> tuple[list[dict[str, Any]], str | None]:
    """One page newest first, and the cursor of the next page (None on the last)."""
    with translate_errors("listing events"):
        rows = await conn.fetch(
            query("console_events_page"),
            filters.status,
            filters.event_type,
            filters.since,
            filters.until,
            filters.q,
            *before,
            PAGE_SIZE + 1,
        )
    events = [values.redact_row(dict(row)) for row in rows[:PAGE_SIZE]]
    cursor = None
    if len(rows) > PAGE_SIZE:
        last = rows[PAGE_SIZE - 1]
        cursor = f"{last['received_at'].isoformat()},{last['id']}"
    return events, cursor


async def overview(conn: Connection, now: datetime | None = None) -> dict[str, Any]:
    """The Overview page's figures: status windows, backlog, reasons, reconcile, chart rows."""
    now = now or datetime.now(UTC)
    figures = await stats.collect_stats(conn)
    with translate_errors("reading the overview"):
        hour = await conn.fetch(query("console_status_window"), now - timedelta(hours=1))
        day = await conn.fetch(query("console_status_window"), now - timedelta(days=1))
        minutes = await conn.fetch(query("console_per_minute"), now - timedelta(minutes=60))
        counts = await conn.fetchrow(query("console_waiting_count"))
        runs = await conn.fetch(query("reconcile_last_runs"), 5)
    assert counts is not None

    def window(rows: list[Any]) -> dict[str, int]:
        found = {row["status"]: int(row["events"]) for row in rows}
        return {status: found.get(status, 0) for status in EVENT_STATUSES}

    return {
        "stats": figures,
        "last_hour": window(hour),
        "last_day": window(day),
        "per_minute": [dict(row) for row in minutes],
        "backlog": int(counts["backlog"]),
        "failed": int(counts["failed"]),
        "waiting": int(counts["waiting"]),
        "reconcile_runs": [dict(row) for row in runs],
        "now": now,
    }


async def event_status(conn: Connection, event_id: str) -> dict[str, Any] | None:
    with translate_errors("reading an event"):
        row = await conn.fetchrow(query("console_event_status"), event_id)
        if row is None:
            return None
        ledger = await conn.fetch(query("ops_event_ledger"), event_id)
    return {**values.redact_row(dict(row)), "ledger": [dict(r) for r in ledger]}


async def find_users(conn: Connection, key: str) -> list[dict[str, Any]]:
    """Users whose id, UUID or email (case-insensitively) is `key`; two at most."""
    with translate_errors("finding a user"):
        rows = await conn.fetch(query("console_find_user"), key.strip())
    return [dict(row) for row in rows]


async def user_history(conn: Connection, user_id: str) -> dict[str, Any]:
    with translate_errors("reading a user's ledger"):
        ledger = await conn.fetch(query("console_user_ledger"), user_id, USER_ROWS)
        events = await conn.fetch(query("console_user_events"), user_id, USER_ROWS)
        owed = await conn.fetch(query("console_user_shortfall"), user_id)
    return {
        "ledger": [dict(r) for r in ledger],
        "events": [dict(r) for r in events],
        "shortfall": [dict(r) for r in owed],
        "shortfall_owed": sum(int(r["credits"]) for r in owed),
    }
