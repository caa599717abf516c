"""Recovery in seconds: enqueue every event not yet processed, at once.

The stale-event sweeper re-enqueues an event only once it has waited STALE_AFTER_SECONDS
(120 s by default), so that it never races a job in flight. Some moments say for certain
that jobs were lost or never written, and then waiting is pointless: a receiver whose
enqueue failed sees Redis answer again, a worker starts, reconnects after an outage, or
finds that Redis lost its data (its marker key is gone). Each calls `enqueue_unfinished`:
every `received` event that is due and every `processing` event past its lease gets a job
now. An event that also still has a job is claimed by one of them; the other skips it.
"""

from __future__ import annotations

from arq.connections import ArqRedis

from webhook_worker import job_queue
from webhook_worker.db import store
from webhook_worker.db.queries import query

BATCH = 1000
MAX_BATCHES = 100  # 100k events per call; the sweeper takes whatever is left


async def enqueue_unfinished(pool: store.Pool, redis: ArqRedis, *, lease_seconds: float) -> int:
    """Enqueue every unprocessed event (see the module doc); return how many.

    Raises TransientError when Postgres or Redis fails; what was taken before is enqueued.
    """
    cursor = 0
    total = 0
    for _ in range(MAX_BATCHES):
        async with store.acquire(pool, "recovering unfinished events") as conn:
            with store.translate_errors("recovering unfinished events"):
                rows = await conn.fetch(
                    query("take_unfinished_events"), cursor, lease_seconds, BATCH
                )
        if not rows:
            break
        cursor = max(int(row["id"]) for row in rows)
        total += await job_queue.enqueue_events(redis, [str(row["event_id"]) for row in rows])
        if len(rows) < BATCH:
            break
    return total


async def unknown_events(conn: store.Connection, event_ids: list[str]) -> list[str]:
    """The ids this database has never stored (another deployment's jobs)."""
    with store.translate_errors("looking events up"):
        rows = await conn.fetch(query("events_known"), event_ids)
    known = {row["event_id"] for row in rows}
    return [event_id for event_id in event_ids if event_id not in known]
