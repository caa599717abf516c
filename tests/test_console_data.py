"""What the console's pages read (webhook_worker/console/data.py), against a real Postgres:
search by id prefix and by part of an email, found in the newest rows and, past them,
through the indexes of migration 0046; keyset pages that neither skip nor repeat a row;
users by id, email or Stripe customer id; exact counts on a small table."""

from __future__ import annotations

import json

import asyncpg
import pytest

from tests.ops_support import insert_event, insert_user
from webhook_worker.console import data
from webhook_worker.ops import values

FILLER = data.SEARCH_WINDOW + 500  # more than a search's first look


async def _filler(db: asyncpg.Connection, count: int = FILLER) -> None:
    """`count` newer events that match no search below (no email, other ids)."""
    await db.execute(
        """
        INSERT INTO stripe_events (event_id, type, raw_data, processing_status, received_at)
        SELECT 'evt_filler_' || g, 'customer.updated',
               jsonb_build_object('id', 'evt_filler_' || g, 'object', 'event',
                                  'data', jsonb_build_object('object', jsonb_build_object(
                                      'id', 'cus_filler' || g, 'object', 'customer'))),
               'ignored', now() - make_interval(secs => g)
        FROM generate_series(1, $1) AS g
        """,
        count,
    )


async def _old_event(db: asyncpg.Connection, obj: dict[str, object], age: float) -> str:
    event_id = await insert_event(db, status="completed", age_seconds=age, email=None)
    await db.execute(
        "UPDATE stripe_events SET raw_data = jsonb_set(raw_data, '{data,object}', "
        "raw_data #> '{data,object}' || $2::jsonb) WHERE event_id = $1",
        event_id,
        json.dumps(obj),
    )
    return event_id


async def _page(db: asyncpg.Connection, **params: str) -> list[str]:
    rows, _cursor = await data.events_page(db, data.parse_filters(params), (None, None))
    return [row["event_id"] for row in rows]


async def test_ids_are_found_by_prefix_past_the_newest_rows(db: asyncpg.Connection) -> None:
    found = {
        "pi": await _old_event(db, {"payment_intent": "pi_3OldNeedle0001"}, 90_000),
        "ch": await _old_event(db, {"id": "ch_3OldNeedle0002", "object": "charge"}, 90_001),
        "in": await _old_event(db, {"id": "in_1OldNeedle0003", "object": "invoice"}, 90_002),
        "cus": await _old_event(db, {"customer": "cus_OldNeedle0004"}, 90_003),
        "cs": await _old_event(db, {"id": "cs_test_OldNeedle0005"}, 90_004),
    }
    await _filler(db)
    assert await _page(db, q="pi_3OldNeedle") == [found["pi"]]
    assert await _page(db, q="ch_3OldNeedle0002") == [found["ch"]]
    assert await _page(db, q="in_1OldNeedle") == [found["in"]]
    assert await _page(db, q="cus_OldNeedle") == [found["cus"]]
    assert await _page(db, q="cs_test_OldNeedle") == [found["cs"]]
    assert await _page(db, q=found["pi"][:16]) == [found["pi"]]  # the event id itself
    assert await _page(db, q="pi_3OldNeedle", status="failed") == []  # filters still apply
    # `_` and `%` are literal: `pi_3OldNeedle%` is not a pattern
    assert await _page(db, q="pi_3Old%eedle") == []


async def test_an_email_is_found_by_any_part_in_any_case(db: asyncpg.Connection) -> None:
    old = await insert_event(db, status="failed", email="Bob.Builder@Example.com", age_seconds=9e4)
    recent = await insert_event(db, status="completed", email="bob.b@mail.test", age_seconds=1)
    await _filler(db)
    assert await _page(db, q="bob") == [recent, old]
    assert await _page(db, q="BUILDER@EXAMPLE") == [old]
    assert await _page(db, q="example.com") == [old]
    assert await _page(db, q="bob", status="failed") == [old]
    for short in ("bo", "evt_1"):
        with pytest.raises(values.OpsInputError, match="too short"):
            data.parse_filters({"q": short})


async def test_search_pages_are_keyset_pages_without_gaps_or_repeats(
    db: asyncpg.Connection,
) -> None:
    """130 matches, some among the newest rows and the rest far behind them."""
    expected = []
    for i in range(130):
        age = i if i < 20 else 100_000 + i  # 20 recent, 110 behind the filler
        expected.append(await insert_event(db, email=f"pager{i}@example.com", age_seconds=age))
    await _filler(db)
    seen: list[str] = []
    before: tuple[object, int | None] = (None, None)
    filters = data.parse_filters({"q": "pager"})
    while True:
        rows, cursor = await data.events_page(db, filters, before)  # type: ignore[arg-type]
        seen += [row["event_id"] for row in rows]
        if cursor is None:
            break
        before = data.parse_cursor(cursor)
    assert seen == expected  # newest first, each once


async def test_list_rows_carry_amount_credits_and_the_user(db: asyncpg.Connection) -> None:
    user = await insert_user(db, email="payer@example.com")
    event_id = await insert_event(db, status="completed", email="payer@example.com")
    await db.execute(
        "INSERT INTO credit_transactions (user_id, amount, balance_after, transaction_type, "
        "event_id) VALUES ($1, 10, 10, 'PURCHASE', $2)",
        user["id"],
        event_id,
    )
    rows, _ = await data.events_page(db, data.parse_filters({}), (None, None))
    row = rows[0]
    assert (row["amount"], row["currency"], row["credits"]) == ("1000", "usd", 10)
    assert (row["user_id"], row["user_email"]) == (str(user["id"]), "payer@example.com")


async def test_users_are_found_by_id_email_uuid_or_stripe_customer(
    db: asyncpg.Connection,
) -> None:
    user = await insert_user(db, email="Carol@Example.com")
    await db.execute(
        "UPDATE users SET stripe_customer_id = 'cus_Carol01' WHERE id = $1", user["id"]
    )
    for key in (str(user["id"]), user["uuid"], "carol@example.com", "cus_Carol01"):
        found = await data.find_users(db, key)
        assert [row["id"] for row in found] == [str(user["id"])], key
    assert await data.find_users(db, "cus_nobody") == []
    assert await data.find_users(db, "99999999999999999999") == []


async def test_counts_on_a_small_table_are_exact(db: asyncpg.Connection) -> None:
    for status in ("failed", "failed", "completed"):
        await insert_event(db, status=status)
    assert await data.estimated_total(db, data.parse_filters({})) == (3, False)
    assert await data.estimated_total(db, data.parse_filters({"status": "failed"})) == (2, False)
    assert await data.estimated_total(db, data.parse_filters({"type": "x"})) is None
