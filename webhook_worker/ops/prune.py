"""`prune`: null the raw payload of old completed/ignored events (ids and the ledger stay)."""

from __future__ import annotations

from webhook_worker.db.store import Connection, prune_events
from webhook_worker.ops.values import OpsInputError


async def prune(conn: Connection, older_than_days: int, *, dry_run: bool = False) -> int:
    if older_than_days < 1:
        raise OpsInputError("--older-than must be at least 1 day")
    return await prune_events(conn, older_than_days, dry_run=dry_run)
