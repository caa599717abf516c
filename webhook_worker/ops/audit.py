"""The `ops_audit` table: every replay an operator asks for, with who, when, what, how many.

Written by the console and the /ops API after a replay (not for dry runs), read by the
console's event page and bulk-replay progress. The structured log line `ops_replayed` stays
as well; the table is what an operator can see without log access.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson

from webhook_worker.db.queries import query
from webhook_worker.db.store import Connection, translate_errors

Via = Literal["console", "api", "cli"]


async def record_replay(
    conn: Connection,
    *,
    who: str,
    client: str | None,
    via: Via,
    forced: bool,
    filters: dict[str, Any] | None,
    event_ids: list[str],
) -> int:
    """One audit row for a replay that reset `event_ids`; returns its id."""
    with translate_errors("writing the ops audit"):
        row = await conn.fetchrow(
            query("ops_audit_insert"),
            who,
            client,
            via,
            forced,
            orjson.dumps(filters).decode() if filters else None,
            event_ids,
            len(event_ids),
        )
    assert row is not None
    return int(row["id"])


async def for_event(conn: Connection, event_id: str) -> list[dict[str, Any]]:
    """The replays that touched one event, newest first."""
    with translate_errors("reading the ops audit"):
        rows = await conn.fetch(query("ops_audit_for_event"), event_id)
    return [dict(row) for row in rows]


async def progress(conn: Connection, audit_id: int) -> dict[str, Any] | None:
    """Where the events of one audited replay are now: counts by status."""
    with translate_errors("reading the ops audit"):
        row = await conn.fetchrow(query("ops_audit_get"), audit_id)
        if row is None:
            return None
        counts = await conn.fetch(query("ops_audit_progress"), row["event_ids"])
    by_status = {r["status"]: int(r["events"]) for r in counts}
    pending = sum(by_status.get(s, 0) for s in ("received", "processing"))
    return {
        "id": row["id"],
        "at": row["at"],
        "who": row["who"],
        "count": row["count"],
        "by_status": by_status,
        "pending": pending,
        "done": row["count"] - pending,
    }
