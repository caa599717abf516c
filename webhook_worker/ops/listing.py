"""`events list` / `events show`: stored events, newest first, payloads redacted."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from webhook_worker.db.queries import query
from webhook_worker.db.store import Connection, translate_errors
from webhook_worker.ops.values import OpsInputError, check_status, event_row

DEFAULT_LIST_LIMIT = 50


MAX_LIST_LIMIT = 10_000


async def list_events(
    conn: Connection,
    *,
    status: str | None = None,
    event_type: str | None = None,
    since: datetime | None = None,
    reason: str | None = None,
    limit: int = DEFAULT_LIST_LIMIT,
) -> list[dict[str, Any]]:
    """Newest first, filtered by status, type, receipt time and status reason."""
    check_status(status)
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise OpsInputError(f"limit {limit} is out of range; use 1 to {MAX_LIST_LIMIT}")
    with translate_errors("listing events"):
        async with conn.transaction():
            # planned with its values: an unset filter costs nothing, each its own index
            await conn.execute(query("ops_custom_plans"))
            rows = await conn.fetch(
                query("ops_list_events"), status, event_type, since, limit, reason or None
            )
    return [event_row(row) for row in rows]


async def show_event(
    conn: Connection, event_id: str, *, raw: bool = False
) -> dict[str, Any] | None:
    """One event with the ledger rows it produced; the parsed payload when `raw`."""
    with translate_errors("reading an event"):
        record = await conn.fetchrow(query("get_event"), event_id)
        if record is None:
            return None
        ledger = await conn.fetch(query("ops_event_ledger"), event_id)
    event = event_row(record)
    payload = event.pop("raw_data")
    event["payload_pruned"] = payload is None
    if raw:
        event["raw_data"] = orjson.loads(payload) if isinstance(payload, str | bytes) else payload
    event["ledger"] = [dict(row) for row in ledger]
    return event
