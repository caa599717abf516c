"""What the console pages read: filters parsed and checked, keyset pages, searches, overview
figures, users. Plain data out; SQL in `sql/queries/console.sql`.

Everything stays fast at millions of events (issue 35): lists are keyset pages over the
indexes of migration 0046 (never OFFSET), counts of the large statuses are the planner's
estimates ("about 1.2 M"), and each read is planned with its own values
(`console_custom_plans`), so a filter left empty costs nothing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from webhook_worker.db.queries import query
from webhook_worker.db.store import EVENT_STATUSES, Connection, translate_errors
from webhook_worker.ops import values

PAGE_SIZE = 50
USER_ROWS = 200
_MAX_TEXT = 200
# A search first reads the newest rows the filters select (dense matches end there), then
# the indexes for older matches; the email index in a slice of time (at most this many times
# the first look's time span), then the rest.
SEARCH_WINDOW = 2000
# With filters the rows they select lie scattered over the table (a page read each), so the
# first look is shorter.
FILTERED_SEARCH_WINDOW = 400
_MAX_EMAIL_SLICE = 200
# An id prefix matching more events than this is too broad to page through (the page says so).
MAX_ID_HITS = 5000
_MIN_EMAIL = 3
_MIN_ID = 8
_ID_SEARCH = re.compile(r"^[a-z]{2,5}_[A-Za-z0-9_]*$")
# Statuses counted exactly on the overview (few rows, their own index range); the others
# are estimated.
EXACT_STATUSES = ("waiting", "failed", "received", "processing")
# Below this many rows (the planner's estimate) counting is cheap: counts are exact.
EXACT_BELOW = 100_000


@dataclass(frozen=True)
class EventFilters:
    """The Events and Bulk replay filters, as given (for links) and parsed (for SQL)."""

    status: str | None = None
    event_type: str | None = None
    since_text: str | None = None
    until_text: str | None = None
    q: str | None = None
    reason: str | None = None

    @property
    def since(self) -> datetime | None:
        return values.parse_since(self.since_text, name="from")

    @property
    def until(self) -> datetime | None:
        return values.parse_since(self.until_text, name="to")

    @property
    def empty(self) -> bool:
        return not self.as_params()

    def as_params(self) -> dict[str, str]:
        pairs = {
            "status": self.status,
            "type": self.event_type,
            "since": self.since_text,
            "until": self.until_text,
            "reason": self.reason,
            "q": self.q,
        }
        return {k: v for k, v in pairs.items() if v}


@dataclass(frozen=True)
class Search:
    """What a search text means: an id prefix (a LIKE pattern) or an email substring."""

    id_pattern: str | None = None
    email: str | None = None


def _text(params: Any, name: str) -> str | None:
    value = (params.get(name) or "").strip()
    return value[:_MAX_TEXT] or None


def _raw_filters(params: Any) -> EventFilters:
    return EventFilters(
        status=_text(params, "status"),
        event_type=_text(params, "type"),
        since_text=_text(params, "since"),
        until_text=_text(params, "until"),
        q=_text(params, "q"),
        reason=_text(params, "reason"),
    )


def parse_filters(params: Any) -> EventFilters:
    """From query or form parameters; bad values raise OpsInputError (a 400 page)."""
    for name in ("status", "type", "since", "until", "q", "reason"):
        if len((params.get(name) or "").strip()) > _MAX_TEXT:
            raise values.OpsInputError(f"{name} is longer than {_MAX_TEXT} characters")
    filters = _raw_filters(params)
    values.check_status(filters.status)
    since, until = filters.since, filters.until  # parsed now, so errors are 400s
    if since and until and since >= until:
        raise values.OpsInputError("from must be before to")
    if filters.q:
        parse_search(filters.q)
    return filters


def read_filters(params: Any) -> tuple[EventFilters, str | None]:
    """The Events page's filters and, when one is bad, its message: the page then shows the
    message beside the filters as typed (nothing is lost) instead of an error page."""
    try:
        return parse_filters(params), None
    except values.OpsInputError as exc:
        typed = _raw_filters(params)
        if typed.status not in (None, *EVENT_STATUSES):
            typed = replace(typed, status=None)
        return typed, exc.message


def _like_prefix(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def parse_search(text: str) -> Search:
    """`evt_…`, `cs_…`, `pi_…`, `ch_…`, `in_…`, `cus_…` (any Stripe id) search by prefix;
    anything else is part of an email, at least three characters."""
    text = text.strip()
    if _ID_SEARCH.match(text):
        if len(text) < _MIN_ID:
            raise values.OpsInputError(
                f"search {text!r} is too short: type at least {_MIN_ID} characters of an id"
            )
        return Search(id_pattern=_like_prefix(text))
    if len(text) < _MIN_EMAIL:
        raise values.OpsInputError(
            f"search {text!r} is too short: type at least {_MIN_EMAIL} characters of an "
            "email, or an id (evt_…, cs_…, pi_…, ch_…, in_…, cus_…)"
        )
    return Search(email=text.lower())


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


@asynccontextmanager
async def planned_with_values(conn: Connection) -> AsyncIterator[None]:
    """A read-only transaction whose statements are planned with their parameter values."""
    async with conn.transaction(readonly=True):
        await conn.execute(query("console_custom_plans"))
        yield


def _filter_args(filters: EventFilters) -> tuple[Any, ...]:
    return (filters.status, filters.event_type, filters.since, filters.until)


async def events_page(
    conn: Connection, filters: EventFilters, before: tuple[datetime | None, int | None]
) -> tuple[list[dict[str, Any]], str | None]:
    """One page newest first, and the cursor of the next page (None on the last)."""
    with translate_errors("listing events"):
        async with planned_with_values(conn):
            if filters.q:
                ids = await _search(conn, filters, parse_search(filters.q), before)
            else:
                found = await conn.fetch(
                    query("console_events_page"),
                    *_filter_args(filters),
                    *before,
                    PAGE_SIZE + 1,
                    filters.reason,
                )
                ids = [row["id"] for row in found]
            rows = await conn.fetch(query("console_events_rows"), ids[:PAGE_SIZE])
    events = [values.redact_row(dict(row)) for row in rows]
    cursor = None
    if len(ids) > PAGE_SIZE and events:
        last = events[-1]
        cursor = f"{last['received_at'].isoformat()},{last['id']}"
    return events, cursor


async def _search(
    conn: Connection,
    filters: EventFilters,
    search: Search,
    before: tuple[datetime | None, int | None],
) -> list[int]:
    """The ids of the next page's matches, newest first (one more than a page if more)."""
    want = PAGE_SIZE + 1
    narrowed = any((filters.status, filters.event_type, filters.since, filters.until))
    window = FILTERED_SEARCH_WINDOW if narrowed or filters.reason else SEARCH_WINDOW
    recent = await conn.fetch(
        query("console_search_recent"),
        *_filter_args(filters),
        *before,
        window,
        search.id_pattern,
        search.email,
        filters.reason,
    )
    ids = [row["id"] for row in recent if row["hit"]]
    if len(ids) >= want or len(recent) < window:
        return ids[:want]
    end = (recent[-1]["received_at"], recent[-1]["id"])
    if search.id_pattern is not None:
        hits = await conn.fetch(query("console_search_id_hits"), search.id_pattern, MAX_ID_HITS + 1)
        if len(hits) > MAX_ID_HITS:
            raise values.OpsInputError(
                f"more than {MAX_ID_HITS:,} events have an id starting {filters.q!r}; "
                "type more of the id"
            )
        found = [row["id"] for row in hits]
        more = await _older(conn, "console_search_ids", filters, found, end, None)
        return (ids + more)[:want]
    # Past the first look, through the email index: first a slice of time sized from the
    # hits so far to hold the rest of the page (most pages end there, reading only that
    # slice's matches), then everything older. No hit at all: a rare term, straight on.
    span = recent[0]["received_at"] - end[0]
    factor = 2 * (want - len(ids)) / max(len(ids), 0.5)
    upper: tuple[datetime, int] = end
    if factor <= _MAX_EMAIL_SLICE:
        lower = end[0] - span * factor
        ids += await _older(conn, "console_search_email", filters, search.email, upper, lower)
        upper = (lower, 0)
    if len(ids) < want:
        ids += await _older(conn, "console_search_email", filters, search.email, upper, None)
    return ids[:want]


async def _older(
    conn: Connection,
    name: str,
    filters: EventFilters,
    term: str | list[int] | None,
    before: tuple[datetime, int],
    lower: datetime | None,
) -> list[int]:
    rows = await conn.fetch(
        query(name), *_filter_args(filters), *before, PAGE_SIZE + 1, term, lower, filters.reason
    )
    return [row["id"] for row in rows]


async def estimated_total(conn: Connection, filters: EventFilters) -> tuple[int, bool] | None:
    """How many events the filters select, when that is cheap to know, and whether it is an
    estimate: all of them or one status; None for other filters."""
    if not (filters.empty or set(filters.as_params()) == {"status"}):
        return None
    with translate_errors("estimating events"):
        total = int(await conn.fetchval(query("console_estimated_rows")) or 0)
        by_status = await _status_counts(conn, total)
    if filters.status:
        count, estimated = by_status.get(filters.status, (0, False))
        return count, estimated
    return (sum(n for n, _ in by_status.values()), False) if total < EXACT_BELOW else (total, True)


async def _status_counts(
    conn: Connection, total: int, counts: Any = None
) -> dict[str, tuple[int, bool]]:
    """Per status: exact when the table is small or the status is one an operator acts on
    (few rows), else the planner's estimate."""
    if total < EXACT_BELOW:
        rows = await conn.fetch(query("ops_stats_by_status"))
        exact = {row["status"]: int(row["events"]) for row in rows}
        return {status: (exact.get(status, 0), False) for status in EVENT_STATUSES}
    estimates = await _status_estimates(conn)
    counts = counts or await conn.fetchrow(query("console_status_counts"))
    assert counts is not None
    return {
        status: (int(counts[status]), False)
        if status in EXACT_STATUSES
        else (estimates.get(status, 0), True)
        for status in EVENT_STATUSES
    }


async def _status_estimates(conn: Connection) -> dict[str, int]:
    rows = await conn.fetch(query("console_estimated_by_status"))
    return {row["status"]: int(row["estimate"]) for row in rows}


async def _stuck(conn: Connection, now: datetime) -> dict[str, Any]:
    async with planned_with_values(conn):
        counts = await conn.fetchrow(query("console_status_counts"))
        assert counts is not None
        total = int(await conn.fetchval(query("console_estimated_rows")) or 0)
        return {
            "counts": counts,
            "oldest": await conn.fetchrow(query("console_oldest_unprocessed")),
            "reasons": await conn.fetch(query("console_failures_by_reason"), now - timedelta(1)),
            "runs": await conn.fetch(query("reconcile_last_runs"), 5),
            "minutes": await conn.fetch(query("console_per_minute"), now - timedelta(hours=1)),
            "total": total,
            "all_time": await _status_counts(conn, total, counts),
        }


async def _flow(conn: Connection, now: datetime) -> dict[str, Any]:
    async with planned_with_values(conn):
        return {
            "hours": await conn.fetch(query("console_per_hour"), now - timedelta(hours=24)),
            "credits": await conn.fetchrow(query("console_credits_window"), now - timedelta(1)),
            "users": await conn.fetchrow(query("ops_stats_users")),
        }


async def overview(
    conn: Connection, other: Connection | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """The Overview page's figures: what is stuck first, then throughput and money. With a
    second connection (`other`) the two halves are read at the same time."""
    now = now or datetime.now(UTC)
    with translate_errors("reading the overview"):
        if other is None:
            stuck, flow = await _stuck(conn, now), await _flow(conn, now)
        else:
            stuck, flow = await asyncio.gather(_stuck(conn, now), _flow(other, now))
    counts, oldest, reasons = stuck["counts"], stuck["oldest"], stuck["reasons"]
    runs, minutes, total, all_time = (
        stuck["runs"],
        stuck["minutes"],
        stuck["total"],
        stuck["all_time"],
    )
    hours, credits_day, users = flow["hours"], flow["credits"], flow["users"]
    assert oldest is not None and users is not None and credits_day is not None

    def window(rows: list[Any]) -> dict[str, int]:
        found = {status: 0 for status in EVENT_STATUSES}
        for row in rows:
            found[row["status"]] = found.get(row["status"], 0) + int(row["events"])
        return found

    exact = {status: int(counts[status]) for status in EXACT_STATUSES}
    estimated = total >= EXACT_BELOW
    return {
        "failed": exact["failed"],
        "waiting": exact["waiting"],
        "backlog": exact["received"] + exact["processing"],
        "oldest_unprocessed_at": oldest["oldest"],
        "oldest_unprocessed_age": oldest["age"],
        "failures_by_reason": [dict(row) for row in reasons],
        "failures_last_day": sum(int(row["events"]) for row in reasons),
        "reconcile_runs": [dict(row) for row in runs],
        "last_hour": window(list(minutes)),
        "last_day": window(list(hours)),
        "all_time": all_time,
        "total_estimate": total if estimated else sum(n for n, _ in all_time.values()),
        "estimated": estimated,
        "per_minute": [dict(row) for row in minutes],
        "per_hour": [dict(row) for row in hours],
        "credits_day": dict(credits_day),
        "users_with_credits": int(users["users_with_credits"]),
        "credits_outstanding": int(users["credits_outstanding"]),
        "now": now,
    }


async def event_status(conn: Connection, event_id: str) -> dict[str, Any] | None:
    with translate_errors("reading an event"):
        row = await conn.fetchrow(query("console_event_status"), event_id)
        if row is None:
            return None
        ledger = await conn.fetch(query("ops_event_ledger"), event_id)
    return {**values.redact_row(dict(row)), "ledger": [dict(r) for r in ledger]}


async def event_ledger(conn: Connection, event_id: str) -> list[dict[str, Any]]:
    """The ledger rows an event wrote, with the user's email for the link."""
    with translate_errors("reading an event"):
        rows = await conn.fetch(query("console_event_ledger"), event_id)
    return [dict(row) for row in rows]


async def _user_key(conn: Connection, key: str) -> Any:
    """`key` as a value of users.id's type, or None when it cannot be one."""
    family = await conn.fetchval(query("console_user_key_family"))
    if family == "integer":
        return int(key) if key.isdigit() and len(key) < 19 else None
    if family == "uuid":
        return _as_uuid(key)
    return key


def _as_uuid(key: str) -> UUID | None:
    try:
        return UUID(key)
    except ValueError:
        return None


async def find_users(conn: Connection, key: str) -> list[dict[str, Any]]:
    """Users whose id, UUID, email (case-insensitively) or Stripe customer id is `key`; two
    at most. Each form is looked up through its own unique index."""
    key = key.strip()
    with translate_errors("finding a user"):
        native = await _user_key(conn, key)
        uuid = _as_uuid(key)
        customer = key if key.startswith("cus_") else None
        rows = await conn.fetch(query("console_find_user"), native, uuid, key, customer)
    return [dict(row) for row in rows]


async def user_history(conn: Connection, user_key: Any) -> dict[str, Any]:
    """`user_key`: the `key` column of a `find_users` row (the id in its own type)."""
    with translate_errors("reading a user's ledger"):
        ledger = await conn.fetch(query("console_user_ledger"), user_key, USER_ROWS)
        events = await conn.fetch(query("console_user_events"), user_key, USER_ROWS)
        owed = await conn.fetch(query("console_user_shortfall"), user_key)
    return {
        "ledger": [dict(r) for r in ledger],
        "events": [dict(r) for r in events],
        "shortfall": [dict(r) for r in owed],
        "shortfall_owed": sum(int(r["credits"]) for r in owed),
    }
