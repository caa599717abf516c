"""`stats`: counts by status, type and reason, the backlog and the last reconcile run."""

from __future__ import annotations

from typing import Any

from webhook_worker.db.queries import query
from webhook_worker.db.store import EVENT_STATUSES, Connection, translate_errors


async def collect_stats(conn: Connection) -> dict[str, Any]:
    """Events by status and type, backlog age, recent failures, credit totals."""
    with translate_errors("collecting stats"):
        by_status = await conn.fetch(query("ops_stats_by_status"))
        by_type = await conn.fetch(query("ops_stats_by_type"))
        ignored = await conn.fetch(query("ops_stats_ignored_by_reason"))
        waiting = await conn.fetchrow(query("ops_stats_waiting"))
        oldest = await conn.fetchrow(query("ops_stats_oldest_unprocessed"))
        failures = await conn.fetchval(query("ops_stats_recent_failures"))
        credits = await conn.fetchrow(query("ops_stats_credits"))
        users = await conn.fetchrow(query("ops_stats_users"))
        spending = await conn.fetchrow(query("ops_stats_spending"))
        last_reconcile = await conn.fetchrow(query("reconcile_last_runs"), 1)
    statuses = {status: 0 for status in EVENT_STATUSES}
    statuses.update({row["status"]: int(row["events"]) for row in by_status})
    types: dict[str, dict[str, int]] = {}
    for row in by_type:
        types.setdefault(row["type"], {})[row["status"]] = int(row["events"])
    assert oldest is not None and credits is not None and users is not None
    assert waiting is not None and spending is not None
    return {
        "events_by_status": statuses,
        "events_total": sum(statuses.values()),
        "events_by_type": types,
        "ignored_by_reason": {row["reason"]: int(row["events"]) for row in ignored},
        "oldest_unprocessed_at": oldest["oldest"],
        "oldest_unprocessed_age_seconds": oldest["age"],
        "failures_last_day": int(failures or 0),
        "credits_granted": int(credits["granted"]),
        "credits_refunded": int(credits["refunded"]),
        "credits_disputed": int(credits["disputed"]),
        "credits_spent": int(credits["spent"]),
        "open_holds": int(spending["open_holds"]),
        "credits_held": int(spending["credits_held"]),
        "shortfall_outstanding": int(spending["shortfall_outstanding"]),
        "shortfall_collected": int(credits["shortfall_collected"]),
        "shortfall_policy": spending["shortfall_policy"],
        "waiting_events": int(waiting["events"]),
        "oldest_waiting_at": waiting["oldest"],
        "credit_transactions": int(credits["transactions"]),
        "users_with_credits": int(users["users_with_credits"]),
        "credits_outstanding": int(users["credits_outstanding"]),
        "last_reconcile": dict(last_reconcile) if last_reconcile else None,
    }
