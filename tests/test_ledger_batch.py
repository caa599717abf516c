"""`ledger_credit_many`'s set-based batch (issue 30): the same answers, balances and ledger
rows as crediting each purchase alone in lock-key order, checked against a table written by
hand and against `ledger_credit` row by row; and a purchase credited concurrently by a
writer outside the batch's locks sends the batch back to credit each purchase alone."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import asyncpg

from tests.conftest import wait_for
from tests.worker_support import balance, ledger_sum, new_user, status_of, store_events
from webhook_worker.db.queries import query
from webhook_worker.errors import TransientError
from webhook_worker.ops.sample_events import checkout_session_event
from webhook_worker.worker import ledger
from webhook_worker.worker.ledger import Purchase


def _purchase(user: int, event_id: str, credits: int, session: str, pi: str | None = None) -> Any:
    return Purchase(
        user_id=user,
        credits=credits,
        event_id=event_id,
        checkout_session_id=session,
        payment_intent_id=pi,
        description="batch test",
    )


async def _events(db: asyncpg.Connection, names: list[str]) -> list[str]:
    return await store_events(db, [checkout_session_event(event_id=n) for n in names])


async def test_a_batch_matches_a_table_written_by_hand(db: asyncpg.Connection) -> None:
    alice = await new_user(db, "alice@example.com")
    bob = await new_user(db, "bob@example.com")
    await db.execute("UPDATE users SET credits_balance = 7 WHERE id = $1", bob)
    await db.execute(
        "INSERT INTO credit_transactions (user_id, amount, balance_after, transaction_type, "
        "description) VALUES ($1, 7, 7, 'BONUS', 'opening balance')",
        bob,
    )
    await _events(db, ["evt_b0", "evt_b1", "evt_b2", "evt_b3", "evt_b4", "evt_b5"])
    # Already in the ledger: evt_b0 itself, and a purchase of session cs_paid.
    [done] = await ledger.credit_purchases(db, [_purchase(alice, "evt_b0", 4, "cs_paid")])
    assert (done.applied, done.balance) == (True, 4)

    batch = [
        _purchase(alice, "evt_b2", 3, "cs_two"),
        _purchase(bob, "evt_b3", 10, "cs_three", "pi_three"),
        _purchase(alice, "evt_b1", 5, "cs_one"),
        _purchase(alice, "evt_b4", 9, "cs_paid"),  # the session was paid already
        _purchase(alice, "evt_b0", 4, "cs_zero"),  # the event was credited already
        _purchase(bob, "evt_b5", 2, "cs_five"),
    ]
    results = await ledger.credit_purchases(db, batch)
    # Each user's purchases in event id order, from the balance before the batch (alice 4).
    expected = {
        "evt_b0": (False, 4),
        "evt_b1": (True, 9),
        "evt_b2": (True, 12),
        "evt_b4": (False, 12),
        "evt_b3": (True, 17),
        "evt_b5": (True, 19),
    }
    got = {p.event_id: (r.applied, r.balance) for p, r in zip(batch, results, strict=True)}
    assert got == expected
    assert (await balance(db, alice), await balance(db, bob)) == (12, 19)
    assert await ledger_sum(db, alice) == 12 and await ledger_sum(db, bob) == 19
    rows = await db.fetch(
        "SELECT event_id, balance_after FROM credit_transactions "
        "WHERE event_id IS NOT NULL ORDER BY event_id"
    )
    assert [(r["event_id"], r["balance_after"]) for r in rows] == [
        ("evt_b0", 4), ("evt_b1", 9), ("evt_b2", 12), ("evt_b3", 17), ("evt_b5", 19)
    ]  # fmt: skip
    for event_id in expected:
        assert (await status_of(db, event_id))["processing_status"] == "completed"


async def _run(db: asyncpg.Connection, purchases: list[Any], set_based: bool) -> Any:
    """Credit `purchases` in a transaction that is rolled back; the answers and what the
    ledger, the balances and the events held before the rollback."""
    tx = db.transaction()
    await tx.start()
    try:
        if set_based:
            results = await ledger.credit_purchases(db, purchases)
            answers = [(r.applied, r.balance) for r in results]
        else:  # the oracle: ledger_credit alone, in the batch's documented order
            lock_keys = dict(await db.fetch("SELECT id, ledger_lock_key(id) FROM users"))
            order = sorted(
                purchases,
                key=lambda p: (lock_keys[p.user_id], p.user_id, p.event_id),
            )
            alone = {}
            for p in order:
                row = await db.fetchrow(query("ledger_credit"), *_columns(p))
                alone[p.event_id] = (bool(row["applied"]), int(row["balance"]))
            answers = [alone[p.event_id] for p in purchases]
        ledger_rows = await db.fetch(
            "SELECT user_id, amount, balance_after, event_id, checkout_session_id "
            "FROM credit_transactions ORDER BY event_id NULLS FIRST, id"
        )
        balances = await db.fetch("SELECT id, credits_balance FROM users ORDER BY id")
        statuses = await db.fetch(
            "SELECT event_id, processing_status FROM stripe_events ORDER BY event_id"
        )
        return answers, [tuple(r) for r in ledger_rows], balances, statuses
    finally:
        await tx.rollback()


def _columns(p: Any) -> tuple[Any, ...]:
    return (
        p.user_id, p.credits, "PURCHASE", p.event_id, p.checkout_session_id,
        p.payment_intent_id, p.description,
    )  # fmt: skip


async def test_random_batches_answer_as_crediting_each_alone_would(db: asyncpg.Connection) -> None:
    users = [await new_user(db, f"r{i}@example.com") for i in range(6)]
    names = [f"evt_r{i:03d}" for i in range(60)]
    await _events(db, names)
    # Some of them, and some sessions, are in the ledger already.
    earlier = [_purchase(users[i % 6], names[i], 1 + i % 4, f"cs_r{i}") for i in range(0, 60, 7)]
    await ledger.credit_purchases(db, earlier)
    rng = random.Random(30)
    for _ in range(25):
        picked = rng.sample(range(60), rng.randint(1, 20))
        batch = [
            _purchase(
                rng.choice(users),
                names[i],
                rng.randint(1, 50),
                f"cs_r{i}" if rng.random() < 0.7 else f"cs_other{i}",
                f"pi_r{i}" if rng.random() < 0.5 else None,
            )
            for i in picked
        ]
        assert await _run(db, batch, True) == await _run(db, batch, False), batch


async def test_a_purchase_credited_concurrently_sends_the_batch_back_to_credit_alone(
    db: asyncpg.Connection, database_url: str
) -> None:
    """Another writer (not holding this batch's user locks) inserts the PURCHASE of a session
    the batch also credits, and commits while the batch waits on it: the batch's insert
    skips that row, so the call fails as a transient fault and nothing of it is written."""
    ours = await new_user(db, "ours@example.com")
    other = await new_user(db, "other@example.com")
    await _events(db, ["evt_c1", "evt_c2", "evt_c3"])
    writer = await asyncpg.connect(database_url)
    tx = writer.transaction()
    await tx.start()
    try:
        await writer.fetchrow(query("ledger_credit"), other, 5, "PURCHASE", "evt_c3", "cs_c2",
                              None, "the other writer")  # fmt: skip
        batch = [_purchase(ours, "evt_c1", 3, "cs_c1"), _purchase(ours, "evt_c2", 4, "cs_c2")]
        crediting = asyncio.create_task(ledger.credit_purchases(db, batch))

        async def batch_waits_on_the_writer() -> bool:
            waiting = await writer.fetchval(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'"
            )
            return bool(waiting)

        await wait_for(batch_waits_on_the_writer, timeout=10, interval=0.01)
        await tx.commit()
        try:
            await crediting
            raise AssertionError("the batch should have been refused")
        except TransientError as exc:
            assert "credited concurrently" in str(exc)
    finally:
        await writer.close()
    assert await balance(db, ours) == 0
    assert (
        await db.fetchval("SELECT count(*) FROM credit_transactions WHERE user_id = $1", ours) == 0
    )
    # Alone, each purchase gets the answer the ledger now implies.
    alone = [await ledger.credit_purchase(db, p) for p in batch]
    assert [(r.applied, r.balance) for r in alone] == [(True, 3), (False, 3)]
