"""`stripe_event_search` (migrations 0050/0051): what the console searches an event by, kept
in a table written once per stored event, so the worker's status updates no longer
re-compute index expressions over the payload (issue 30)."""

from __future__ import annotations

import asyncpg

from tests.worker_support import store_events
from webhook_worker.db import migrations, store
from webhook_worker.ops.sample_events import checkout_session_event

_SEARCH_ROW = (
    "SELECT object_id, payment_intent, customer, email, s.received_at = e.received_at AS same "
    "FROM stripe_event_search s JOIN stripe_events e ON e.id = s.event_row_id "
    "WHERE e.event_id = $1"
)


def _session(index: int) -> dict[str, object]:
    return checkout_session_event(
        event_id=f"evt_search_{index}",
        session_id=f"cs_test_search_{index}",
        payment_intent=f"pi_search_{index}",
        customer=f"cus_search_{index}",
        email=f"Payer.{index}@Example.COM",
    )


async def test_every_stored_event_gets_its_search_row_as_the_receiver_stores_it(
    db: asyncpg.Connection,
) -> None:
    ids = await store_events(db, [_session(i) for i in range(3)])
    await store_events(db, [_session(0)])  # a duplicate delivery adds nothing
    for index, event_id in enumerate(ids):
        row = await db.fetchrow(_SEARCH_ROW, event_id)
        assert dict(row) == {
            "object_id": f"cs_test_search_{index}",
            "payment_intent": f"pi_search_{index}",
            "customer": f"cus_search_{index}",
            "email": f"payer.{index}@example.com",
            "same": True,
        }
    assert await db.fetchval("SELECT count(*) FROM stripe_event_search") == 3


async def test_the_workers_status_updates_leave_it_alone_and_edits_of_the_payload_follow(
    db: asyncpg.Connection,
) -> None:
    [event_id] = await store_events(db, [_session(7)])
    before = await db.fetchval("SELECT xmin::text FROM stripe_event_search")
    await store.claim_event(db, event_id)
    await store.finish_event(db, event_id, "completed")
    assert await db.fetchval("SELECT xmin::text FROM stripe_event_search") == before
    await db.execute(
        "UPDATE stripe_events SET raw_data = NULL, received_at = received_at - interval '1 day' "
        "WHERE event_id = $1",
        event_id,
    )  # as the pruner does (the payload), and a hand edit (the time)
    row = await db.fetchrow(_SEARCH_ROW, event_id)
    assert (row["object_id"], row["email"], row["same"]) == (None, None, True)


async def test_deletes_and_truncates_of_the_events_empty_it(db: asyncpg.Connection) -> None:
    ids = await store_events(db, [_session(i) for i in range(4)])
    await db.execute("DELETE FROM stripe_events WHERE event_id = ANY($1::text[])", [ids[0], ids[1]])
    assert await db.fetchval("SELECT count(*) FROM stripe_event_search") == 2
    await db.execute("TRUNCATE stripe_events CASCADE")
    assert await db.fetchval("SELECT count(*) FROM stripe_event_search") == 0
    await db.execute("ALTER SEQUENCE stripe_events_id_seq RESTART")
    await store_events(db, [_session(9)])  # ids start again: nothing stale is in the way
    assert await db.fetchval("SELECT count(*) FROM stripe_event_search") == 1


async def test_no_index_of_stripe_events_reads_the_payload(db: asyncpg.Connection) -> None:
    """The point of 0050/0051: a status update inserts into every index of stripe_events, and
    one over `raw_data` decompresses and parses the payload each time."""
    definitions = await db.fetch(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'stripe_events' "
        "AND indexdef LIKE '%raw_data%'"
    )
    assert definitions == []


async def test_events_stored_before_the_migration_are_backfilled(empty_database_url: str) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrations.migrate_up(conn, to=46)
        ids = await store_events(conn, [_session(i) for i in range(5)])
        await migrations.migrate_up(conn)
        for index, event_id in enumerate(ids):
            row = await conn.fetchrow(_SEARCH_ROW, event_id)
            assert (row["payment_intent"], row["email"]) == (
                f"pi_search_{index}",
                f"payer.{index}@example.com",
            )
        assert await conn.fetchval("SELECT count(*) FROM stripe_event_search") == 5
        await migrations.migrate_down(conn, to=46)
        assert await conn.fetchval("SELECT to_regclass('stripe_event_search')") is None
        names = {r["indexname"] for r in await conn.fetch("SELECT indexname FROM pg_indexes")}
        assert "stripe_events_email_trigrams_idx" in names
    finally:
        await conn.close()
