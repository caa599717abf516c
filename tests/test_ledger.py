"""The ledger against a real Postgres: once per event and per session, the advisory lock
really serialises a user's balance changes, refunds in integers, never below zero."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import pytest

from tests.conftest import wait_for
from tests.worker_support import (
    assert_balance_after_is_running_sum,
    balance,
    ledger_sum,
    new_user,
    status_of,
    store_events,
)
from webhook_worker.errors import PermanentError
from webhook_worker.money import takebacks
from webhook_worker.ops.sample_events import charge_refunded_event, checkout_session_event, new_id
from webhook_worker.worker import ledger
from webhook_worker.worker import postgres_money_store as payments


async def _stored_purchase_event(db: asyncpg.Connection, session_id: str | None = None) -> str:
    [event_id] = await store_events(db, [checkout_session_event(session_id=session_id)])
    return event_id


def _purchase(
    user_id: int, event_id: str, credits: int, session_id: str, pi: str | None = None
) -> ledger.Purchase:
    return ledger.Purchase(
        user_id=user_id,
        credits=credits,
        event_id=event_id,
        checkout_session_id=session_id,
        payment_intent_id=pi,
        description="test purchase",
    )


def test_lock_key_is_the_id_and_stays_in_int4() -> None:
    assert ledger.lock_key(1) == 1
    assert ledger.lock_key(2**31 - 1) == 2**31 - 1
    for user_id in (2**31, 2**32 + 5, 2**63 - 1):
        assert -(2**31) <= ledger.lock_key(user_id) < 2**31
    assert 0 < ledger.LOCK_NAMESPACE < 2**31


@pytest.mark.parametrize(
    ("purchased", "amount", "refunded", "share"),
    [
        (100, 1000, 250, 25),
        (100, 1000, 1000, 100),
        (100, 1000, 333, 33),  # rounds down
        (7, 3, 2, 4),  # 14 // 3
        (100, 1000, 5000, 100),  # never more than purchased
        (100, 1000, -5, 0),
        (100, 0, 10, 0),
        (10**15, 10**9, 10**9 - 1, 10**15 - 10**6),  # integers, no float rounding
    ],
)
def test_refund_share_is_integer_arithmetic(
    purchased: int, amount: int, refunded: int, share: int
) -> None:
    assert takebacks.share(purchased, amount, refunded) == share


async def test_credit_once_per_event(db: asyncpg.Connection) -> None:
    user = await new_user(db, "once@example.com")
    event_id = await _stored_purchase_event(db)
    first = await ledger.credit_purchase(db, _purchase(user, event_id, 10, "cs_once"))
    again = await ledger.credit_purchase(db, _purchase(user, event_id, 10, "cs_once"))
    assert (first.applied, first.balance) == (True, 10)
    assert (again.applied, again.balance) == (False, 10)
    assert await db.fetchval("SELECT count(*) FROM credit_transactions") == 1
    assert (await status_of(db, event_id))["processing_status"] == "completed"


async def test_one_purchase_per_checkout_session(db: asyncpg.Connection) -> None:
    user = await new_user(db, "session@example.com")
    first_event = await _stored_purchase_event(db)
    second_event = await _stored_purchase_event(db)
    await ledger.credit_purchase(db, _purchase(user, first_event, 10, "cs_same"))
    result = await ledger.credit_purchase(db, _purchase(user, second_event, 10, "cs_same"))
    assert result.applied is False
    assert await balance(db, user) == 10
    assert (await status_of(db, second_event))["processing_status"] == "completed"


async def test_balance_after_follows_the_balance(db: asyncpg.Connection) -> None:
    user = await new_user(db, "after@example.com")
    for credits in (10, 20, 30):
        event_id = await _stored_purchase_event(db)
        await ledger.credit_purchase(db, _purchase(user, event_id, credits, new_id("cs")))
    rows = await db.fetch("SELECT balance_after FROM credit_transactions ORDER BY id")
    assert [row["balance_after"] for row in rows] == [10, 30, 60]
    assert await balance(db, user) == 60 == await ledger_sum(db, user)


async def test_credit_and_completed_mark_share_one_transaction(db: asyncpg.Connection) -> None:
    user = await new_user(db, "atomic@example.com")
    event_id = await _stored_purchase_event(db)
    outer = db.transaction()
    await outer.start()
    await ledger.credit_purchase(db, _purchase(user, event_id, 10, "cs_atomic"))
    await outer.rollback()  # the ledger's transaction was a savepoint inside this one
    assert await db.fetchval("SELECT count(*) FROM credit_transactions") == 0
    assert await balance(db, user) == 0
    assert (await status_of(db, event_id))["processing_status"] == "received"


async def test_a_second_connection_blocks_on_the_users_lock(database_url: str) -> None:
    holder, waiter, observer = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        user = await new_user(observer, "locked@example.com")
        event_id = await _stored_purchase_event(observer)
        held = holder.transaction()
        await held.start()
        await ledger.lock_user(holder, user)

        credit = asyncio.create_task(
            ledger.credit_purchase(waiter, _purchase(user, event_id, 10, "cs_locked"))
        )
        waiter_pid = waiter.get_server_pid()

        async def waiting_on_the_lock() -> bool:
            return bool(
                await observer.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND pid = $1 AND classid = $2 AND objid = $3 AND objsubid = 2",
                    waiter_pid,
                    ledger.LOCK_NAMESPACE,
                    ledger.lock_key(user),
                )
            )

        await wait_for(waiting_on_the_lock)
        assert not credit.done()
        assert await balance(observer, user) == 0

        await held.commit()  # releases the transaction-scoped lock
        result = await asyncio.wait_for(credit, 10)
        assert result.applied
        assert await balance(observer, user) == 10
    finally:
        for conn in (holder, waiter, observer):
            await conn.close()


async def test_sql_lock_key_matches_the_python_one(db: asyncpg.Connection) -> None:
    # The server-side credit (ledger_credit) computes the key itself: it must lock exactly
    # what ledger.lock_user locks, or purchases and refunds would not serialise.
    for user_id in (1, 42, 2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1, 2**32 + 5, 2**63 - 1):
        assert await db.fetchval("SELECT ledger_lock_key($1)", user_id) == ledger.lock_key(user_id)


async def test_credit_is_one_autocommit_statement(db: asyncpg.Connection) -> None:
    # No explicit transaction on the client: lock, row, balance and the completed mark
    # commit together as one statement, and a repeat is a no-op with the current balance.
    user = await new_user(db, "onecall@example.com")
    event_id = await _stored_purchase_event(db)
    sent: list[str] = []
    db.add_query_logger(lambda record: sent.append(record.query))
    first = await ledger.credit_purchase(db, _purchase(user, event_id, 12, "cs_onecall"))
    again = await ledger.credit_purchase(db, _purchase(user, event_id, 12, "cs_onecall"))
    await asyncio.sleep(0.01)  # asyncpg calls query loggers soon after, not within the call
    assert len(sent) == 2 and all("ledger_credit(" in text for text in sent)
    assert (first.applied, first.balance) == (True, 12)
    assert (again.applied, again.balance) == (False, 12)
    assert (await status_of(db, event_id))["processing_status"] == "completed"
    assert await ledger_sum(db, user) == 12


async def test_concurrent_credits_on_one_user_serialise(database_url: str) -> None:
    # Without the lock, balance_after would be computed from a stale balance and the
    # outside-the-lock check would roll credits back; with it every credit lands in order.
    conns = [await asyncpg.connect(database_url) for _ in range(8)]
    try:
        user = await new_user(conns[0], "hot@example.com")
        events = await store_events(conns[0], [checkout_session_event() for _ in range(40)])
        credits = list(range(1, 41))

        async def credit_all(conn: asyncpg.Connection, index: int) -> list[bool]:
            return [
                (
                    await ledger.credit_purchase(
                        conn, _purchase(user, events[i], credits[i], f"cs_hot_{i}")
                    )
                ).applied
                for i in range(index, 40, len(conns))
            ]

        applied = await asyncio.gather(*(credit_all(c, i) for i, c in enumerate(conns)))
        assert all(all(batch) for batch in applied)
        await assert_balance_after_is_running_sum(conns[0], user)
        assert await balance(conns[0], user) == sum(credits) == await ledger_sum(conns[0], user)
    finally:
        for conn in conns:
            await conn.close()


async def test_a_balance_moved_outside_the_lock_rolls_the_credit_back(
    db: asyncpg.Connection,
) -> None:
    user = await new_user(db, "moved@example.com")
    event_id = await _stored_purchase_event(db)
    # A stray writer: every balance update gains one credit the ledger never saw.
    await db.execute(
        "CREATE FUNCTION stray() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN NEW.credits_balance := NEW.credits_balance + 1; RETURN NEW; END $$"
    )
    await db.execute(
        "CREATE TRIGGER stray BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION stray()"
    )
    with pytest.raises(PermanentError, match="moved outside the ledger lock; rolled back"):
        await ledger.credit_purchase(db, _purchase(user, event_id, 10, "cs_moved"))
    assert await db.fetchval("SELECT count(*) FROM credit_transactions") == 0
    assert await balance(db, user) == 0
    assert (await status_of(db, event_id))["processing_status"] == "received"


async def test_credit_for_a_missing_user_fails_and_leaves_the_event_open(
    db: asyncpg.Connection,
) -> None:
    event_id = await _stored_purchase_event(db)
    with pytest.raises(PermanentError, match="does not exist; nothing was credited"):
        await ledger.credit_purchase(db, _purchase(987654, event_id, 10, "cs_nobody"))
    assert await db.fetchval("SELECT count(*) FROM credit_transactions") == 0
    assert (await status_of(db, event_id))["processing_status"] == "received"


def _snapshot(pi: str, refunded: int) -> takebacks.ChargeSnapshot:
    return takebacks.ChargeSnapshot(pi, 1000, refunded, datetime(2025, 5, 1, tzinfo=UTC))


async def test_refund_without_purchase_applies_nothing(db: asyncpg.Connection) -> None:
    pi = new_id("pi")
    [event_id] = await store_events(db, [charge_refunded_event(payment_intent=pi)])
    assert await payments.apply(db, event_id, "refund", _snapshot(pi, 500), "r") is None
    assert (
        await db.fetchval("SELECT count(*) FROM payment_states WHERE payment_intent_id = $1", pi)
        == 0
    )
    assert (await status_of(db, event_id))["processing_status"] == "received"


async def test_refund_is_a_noop_when_repeated(db: asyncpg.Connection) -> None:
    user = await new_user(db, "repeat@example.com")
    pi = new_id("pi")
    purchase_event = await _stored_purchase_event(db)
    await ledger.credit_purchase(db, _purchase(user, purchase_event, 100, "cs_rep", pi))
    [refund_event] = await store_events(db, [charge_refunded_event(payment_intent=pi)])
    first = await payments.apply(db, refund_event, "refund", _snapshot(pi, 400), "r")
    again = await payments.apply(db, refund_event, "refund", _snapshot(pi, 400), "r")
    assert first is not None and again is not None
    assert (first.advanced, first.amount, first.shortfall, first.balance) == (True, -40, 0, 60)
    assert (again.advanced, again.amount, again.shortfall, again.balance) == (False, 0, 0, 60)
    assert await ledger_sum(db, user) == 60
