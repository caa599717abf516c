"""32 clients spend, hold, settle, release and retry the same keys on 5 users while the real
worker credits purchases and takes back refunds and disputes for those users (issue 27).

Each client call runs in its own transaction; when the answer is `insufficient`, the client
reads the user's newest ledger row in that same transaction, while the user's lock is still
held: that row is the ledger's state at the moment of the answer. At the end:
- no balance is negative, and each equals its ledger sum (and every balance_after is the
  running sum, in id order);
- no key was spent twice: one USAGE (or HOLD) row per user and key, one `spent` / `held`
  answer for it, and every `duplicate` answer names that same row;
- every hold went back at most once, and matches its rows (`verify` passes);
- every `insufficient` was right at its moment: the balance it reported is the newest
  ledger row's balance_after, and is below what was asked.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from tests.conftest import base_env
from tests.worker_support import deliver, drain, new_user
from webhook_worker import credits
from webhook_worker.config import Settings
from webhook_worker.ops import verify
from webhook_worker.ops.sample_events import (
    charge_refunded_event,
    checkout_session_event,
    dispute_event,
)

CLIENTS = 32
USERS = 5
CALLS_PER_CLIENT = 30
KEYS_PER_USER = 40
ROUNDS = 4


@dataclass(frozen=True)
class Answer:
    user: int
    op: str
    key: str
    amount: int
    status: str
    balance: int
    transaction_id: int | None
    last_row: tuple[int, int] | None = None  # (id, balance_after) seen with `insufficient`


def _amount(key: str) -> int:
    """The amount a key always asks for (a retry repeats the same call)."""
    return sum(key.encode()) % 7 + 1


async def _call(conn: asyncpg.Connection, user: int, op: str, key: str) -> Answer:
    amount = _amount(key)
    last: tuple[int, int] | None = None
    async with conn.transaction():
        try:
            if op == "spend":
                result = await credits.spend(conn, user, amount, idempotency_key=key)
            elif op == "hold":
                result = await credits.hold(
                    conn, user, amount, idempotency_key=key, expires_in=timedelta(hours=1)
                )
            elif op == "settle":
                result = await credits.settle(conn, user, idempotency_key=key, actual=amount // 2)
            else:
                result = await credits.release(conn, user, idempotency_key=key)
        except credits.InsufficientCredits as short:
            row = await conn.fetchrow(
                "SELECT id, balance_after FROM credit_transactions WHERE user_id = $1"
                " ORDER BY id DESC LIMIT 1",
                user,
            )
            last = (row["id"], row["balance_after"]) if row else (0, 0)
            return Answer(user, op, key, amount, "insufficient", short.balance, None, last)
        except credits.HoldClosed:
            return Answer(user, op, key, amount, "closed", -1, None)
    return Answer(user, op, key, amount, result.status, result.balance, result.transaction_id)


async def _client(pool: asyncpg.Pool, users: list[int], seed: int) -> list[Answer]:
    rng = random.Random(seed)
    answers = []
    for _ in range(CALLS_PER_CLIENT):
        user = rng.choice(users)
        op = rng.choice(("spend", "spend", "hold", "settle", "release"))
        prefix = "s" if op == "spend" else "h"
        key = f"{prefix}{rng.randrange(KEYS_PER_USER)}"
        async with pool.acquire() as conn:
            answers.append(await _call(conn, user, op, key))  # type: ignore[arg-type]
    return answers


async def _stripe(db: asyncpg.Connection, settings: Settings, users: list[int]) -> None:
    """Rounds of purchases (20 credits each), then refunds of half and disputes of the
    previous round's payments, each round processed by the real worker."""
    for round_ in range(ROUNDS):
        events = [
            checkout_session_event(
                credits=20, client_reference_id=str(u), payment_intent=f"pi_{u}_{round_}"
            )
            for u in users
        ]
        if round_:
            before = round_ - 1
            events += [
                charge_refunded_event(
                    payment_intent=f"pi_{users[0]}_{before}", amount_refunded=500
                ),
                charge_refunded_event(payment_intent=f"pi_{users[1]}_{before}"),
                dispute_event(payment_intent=f"pi_{users[2]}_{before}"),
            ]
        await deliver(db, settings, *events)
        await drain(settings)


async def test_32_clients_and_the_worker_on_5_users(
    db: asyncpg.Connection, database_url: str, clean_redis_url: str
) -> None:
    settings = Settings.from_env(base_env(database_url, clean_redis_url))
    users = [await new_user(db, f"busy{i}@example.com") for i in range(USERS)]
    for user in users:
        await credits.grant(db, user, 15, idempotency_key="seed", reason="seed")
    pool = await asyncpg.create_pool(database_url, min_size=CLIENTS, max_size=CLIENTS)
    assert pool is not None
    try:
        results = await asyncio.gather(
            _stripe(db, settings, users), *(_client(pool, users, seed) for seed in range(CLIENTS))
        )
    finally:
        await pool.close()
    answers = [a for batch in results[1:] for a in batch]  # type: ignore[union-attr]
    statuses = Counter(a.status for a in answers)
    # The load really exercised every outcome (else the test proves little).
    for status in ("spent", "held", "settled", "released", "duplicate", "insufficient"):
        assert statuses[status] > 0, statuses

    events = await db.fetch("SELECT processing_status, count(*) AS n FROM stripe_events GROUP BY 1")
    assert {r["processing_status"]: r["n"] for r in events} == {"completed": USERS * ROUNDS + 9}
    for user in users:
        rows = await db.fetch(
            "SELECT id, amount, balance_after FROM credit_transactions WHERE user_id = $1"
            " ORDER BY id",
            user,
        )
        running = 0
        for row in rows:
            running += row["amount"]
            assert row["balance_after"] == running >= 0
        assert await credits.balance(db, user) == running >= 0

    # No key spent (or held) twice, and every duplicate names the one row.
    first_rows = await db.fetch(
        "SELECT user_id, idempotency_key, transaction_type, id, amount FROM credit_transactions"
        " WHERE transaction_type IN ('USAGE', 'HOLD') AND idempotency_key IS NOT NULL"
    )
    by_key = defaultdict(list)
    for row in first_rows:
        by_key[(row["user_id"], row["idempotency_key"])].append(row)
    assert all(len(rows) == 1 for rows in by_key.values())
    for answer in answers:
        if answer.op in ("spend", "hold") and answer.status in ("spent", "held", "duplicate"):
            (row,) = by_key[(answer.user, answer.key)]
            assert row["id"] == answer.transaction_id
            assert row["amount"] == -answer.amount
    written = Counter((a.user, a.key) for a in answers if a.status in ("spent", "held"))
    assert set(written.values()) == {1}
    assert set(written) == {k for k in by_key if k[1] != "seed"}

    releases = await db.fetch(
        "SELECT user_id, idempotency_key, count(*) AS n FROM credit_transactions"
        " WHERE transaction_type = 'HOLD_RELEASE' GROUP BY 1, 2"
    )
    assert all(r["n"] == 1 for r in releases)

    # Every insufficient was right at its moment, against the ledger's order.
    for answer in answers:
        if answer.status == "insufficient":
            assert answer.last_row is not None
            assert answer.balance == answer.last_row[1] < answer.amount, answer

    report = await verify.verify(db, stale_after_seconds=3600)
    assert report.problems == []
