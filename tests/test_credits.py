"""Spending (issue 27): the SQL functions of migration 0025 and `webhook_worker.credits`.

The expected balances below are written out by hand from the calls made, not computed by
the code under test.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from tests.host_shapes import SHAPES, Shape, insert_user
from tests.worker_support import assert_balance_after_is_running_sum, ledger_sum, new_user
from webhook_worker import credits
from webhook_worker.db import migrations
from webhook_worker.db.host import UserId
from webhook_worker.errors import DataLossRefused
from webhook_worker.ops import verify

KEY_SHAPES = [
    s
    for s in SHAPES
    if s.name in ("bigint_identity", "serial", "uuid_with_default", "text_opaque_ids")
]
SPEND_FUNCTIONS = (
    "credits_spend",
    "credits_grant",
    "credits_adjust",
    "credits_hold",
    "credits_settle",
    "credits_release",
    "credits_release_expired",
)


async def _call(conn: asyncpg.Connection, sql: str, *args: Any) -> tuple[str, int, int | None]:
    row = await conn.fetchrow(f"SELECT status, balance, transaction_id FROM {sql}", *args)
    assert row is not None
    return row["status"], row["balance"], row["transaction_id"]


async def _raises(conn: asyncpg.Connection, sqlstate: str, sql: str, *args: Any) -> str:
    with pytest.raises(asyncpg.PostgresError) as caught:
        await conn.fetchrow(f"SELECT * FROM {sql}", *args)
    assert caught.value.sqlstate == sqlstate
    return str(caught.value)


async def _rows(conn: asyncpg.Connection, user: UserId) -> list[tuple[str, int]]:
    rows = await conn.fetch(
        "SELECT transaction_type, amount, event_id FROM credit_transactions"
        " WHERE user_id = $1 ORDER BY id",
        user,
    )
    assert all(row["event_id"] is None for row in rows)  # spending rows carry no event_id
    return [(row["transaction_type"], row["amount"]) for row in rows]


async def _script(conn: asyncpg.Connection, user: UserId, other: UserId) -> None:
    """The same calls for every key type, with the answers written out by hand."""
    spend = "credits_spend($1, $2, $3, $4)"
    status, bal, granted_id = await _call(
        conn, "credits_grant($1, $2, $3, $4)", user, 100, "g1", "welcome"
    )
    assert (status, bal) == ("granted", 100)
    assert await _call(conn, "credits_grant($1, $2, $3, $4)", user, 100, "g1", "welcome") == (
        "duplicate",
        100,
        granted_id,
    )
    status, bal, spent_id = await _call(conn, spend, user, 30, "s1", "render")
    assert (status, bal) == ("spent", 70)
    assert await _call(conn, spend, user, 30, "s1", "render") == ("duplicate", 70, spent_id)
    message = await _raises(conn, "WWS01", spend, user, 31, "s1", "render")
    assert '"s1"' in message
    assert '"s1"' in await _raises(
        conn, "WWS01", "credits_grant($1, $2, $3, $4)", user, 30, "s1", "bonus"
    )
    assert await _call(conn, spend, user, 71, "s2", None) == ("insufficient", 70, None)
    assert await _call(conn, spend, other, 1, "s1", None) == ("insufficient", 0, None)
    await _raises(conn, "22023", spend, user, 0, "s3", None)
    await _raises(conn, "22023", spend, user, 5, " ", None)
    await _raises(conn, "22023", "credits_adjust($1, $2, $3, $4)", user, -5, "a0", "")

    adjust = "credits_adjust($1, $2, $3, $4)"
    assert (await _call(conn, adjust, user, -70, "a1", "goodwill reversed"))[:2] == ("adjusted", 0)
    assert (await _call(conn, adjust, user, 10, "a2", "support ticket 7"))[:2] == ("adjusted", 10)
    assert await _call(conn, adjust, user, -11, "a3", "too much") == ("insufficient", 10, None)

    hold = "credits_hold($1, $2, $3, $4)"
    hour = timedelta(hours=1)
    status, bal, hold_id = await _call(conn, hold, user, 8, "h1", hour)
    assert (status, bal) == ("held", 2)
    assert await _call(conn, hold, user, 8, "h1", hour) == ("duplicate", 2, hold_id)
    assert await _call(conn, hold, user, 3, "h2", hour) == ("insufficient", 2, None)
    settle = "credits_settle($1, $2, $3)"
    await _raises(conn, "22023", settle, user, "h1", 9)
    status, bal, back_id = await _call(conn, settle, user, "h1", 5)
    assert (status, bal) == ("settled", 5)
    assert await _call(conn, settle, user, "h1", 5) == ("duplicate", 5, back_id)
    assert '"h1"' in await _raises(conn, "WWS02", settle, user, "h1", 4)
    await _raises(conn, "WWS02", "credits_release($1, $2)", user, "h1")
    assert await _call(conn, settle, user, "nope", 1) == ("unknown_hold", 5, None)
    assert await _call(conn, "credits_release($1, $2)", user, "nope") == ("unknown_hold", 5, None)

    assert (await _call(conn, hold, user, 5, "h3", hour))[:2] == ("held", 0)
    status, bal, release_id = await _call(conn, "credits_release($1, $2)", user, "h3")
    assert (status, bal) == ("released", 5)
    assert await _call(conn, "credits_release($1, $2)", user, "h3") == ("duplicate", 5, release_id)
    assert (await _call(conn, hold, user, 4, "h4", hour))[:2] == ("held", 1)
    assert await _call(conn, settle, user, "h4", 4) == ("settled", 1, None)  # nothing back

    assert (await _call(conn, hold, user, 1, "h5", timedelta(microseconds=1)))[:2] == ("held", 0)
    await asyncio.sleep(0.001)  # h5 expires 1 µs after it was taken: make sure that passed
    assert await conn.fetchval("SELECT credits_release_expired(100)") == 1
    assert await conn.fetchval("SELECT credits_release_expired(100)") == 0
    assert (await _call(conn, "credits_release($1, $2)", user, "h5"))[:2] == ("duplicate", 1)

    assert await _rows(conn, user) == [
        ("BONUS", 100),
        ("USAGE", -30),
        ("ADJUSTMENT", -70),
        ("ADJUSTMENT", 10),
        ("HOLD", -8),
        ("HOLD_RELEASE", 3),
        ("HOLD", -5),
        ("HOLD_RELEASE", 5),
        ("HOLD", -4),
        ("HOLD", -1),
        ("HOLD_RELEASE", 1),
    ]
    assert await ledger_sum(conn, user) == 1  # type: ignore[arg-type]
    await assert_balance_after_is_running_sum(conn, user)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", KEY_SHAPES, ids=str)
async def test_functions_behave_the_same_for_every_host_key_type(
    shape: Shape, empty_database_url: str
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(shape.ddl)
        await migrations.migrate_up(conn)
        user = await insert_user(conn, shape, "spender@example.com")
        other = await insert_user(conn, shape, "other@example.com")
        await _script(conn, user, other)
        report = await verify.verify(conn, stale_after_seconds=3600)
        assert report.problems == []
        functions = {c.name for c in report.checks if c.name.startswith("function credits_")}
        assert functions == {f"function {name}" for name in SPEND_FUNCTIONS}

        # Spending rows: refused before anything runs (issue 28's rollback guard names the
        # table and its rows; 0025's own down refuses too, see the next test), kept.
        with pytest.raises(DataLossRefused, match=r"credit_holds \(\d+ rows"):
            await migrations.migrate_down(conn, to=24)
        assert await conn.fetchval("SELECT to_regproc('credits_spend') IS NOT NULL")
    finally:
        await conn.close()


@pytest.mark.parametrize("shape", KEY_SHAPES[:1] + KEY_SHAPES[2:], ids=str)
async def test_migrate_down_removes_the_functions(shape: Shape, empty_database_url: str) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(shape.ddl)
        await migrations.migrate_up(conn)
        await migrations.migrate_down(conn, to=24)
        left = await conn.fetch(
            "SELECT proname FROM pg_proc WHERE proname LIKE 'credits\\_%'"
            " AND pronamespace = current_schema()::regnamespace"
        )
        assert left == []
        assert await conn.fetchval("SELECT to_regclass('credit_holds')") is None
        await migrations.migrate_up(conn)
        assert await conn.fetchval("SELECT to_regproc('credits_spend') IS NOT NULL")
    finally:
        await conn.close()


async def test_python_api(database_url: str) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        async with pool.acquire() as conn:
            user = await new_user(conn, "api@example.com")  # type: ignore[arg-type]
        granted = await credits.grant(pool, user, 10, idempotency_key="g", reason="trial")
        assert (granted.status, granted.balance) == ("granted", 10)
        spent = await credits.spend(pool, user, 4, idempotency_key="s", description="export")
        assert (spent.status, spent.balance) == ("spent", 6)
        again = await credits.spend(pool, user, 4, idempotency_key="s")
        assert again == credits.Result("duplicate", 6, spent.transaction_id)
        with pytest.raises(credits.InsufficientCredits) as short:
            await credits.spend(pool, user, 7, idempotency_key="s2")
        assert short.value.balance == 6
        with pytest.raises(credits.IdempotencyKeyReused, match='"s"'):
            await credits.spend(pool, user, 5, idempotency_key="s")
        with pytest.raises(credits.InvalidArgument):
            await credits.adjust(pool, user, 3, idempotency_key="a", reason=" ")
        with pytest.raises(credits.InsufficientCredits):
            await credits.adjust(pool, user, -7, idempotency_key="a", reason="fix")
        with pytest.raises(credits.UnknownUser):
            await credits.spend(pool, 987654321, 1, idempotency_key="x")
        held = await credits.hold(pool, user, 5, idempotency_key="h", expires_in=timedelta(hours=1))
        assert (held.status, held.balance) == ("held", 1)
        holds = await credits.open_holds(pool, user)
        assert [(h.idempotency_key, h.amount) for h in holds] == [("h", 5)]
        settled = await credits.settle(pool, user, idempotency_key="h", actual=2)
        assert (settled.status, settled.balance) == ("settled", 4)
        with pytest.raises(credits.HoldClosed):
            await credits.release(pool, user, idempotency_key="h")
        assert await credits.open_holds(pool, user) == []
        assert await credits.balance(pool, user) == 4
        rows = await credits.history(pool, user)
        assert [(r.transaction_type, r.amount, r.idempotency_key) for r in rows] == [
            ("HOLD_RELEASE", 3, "h"),
            ("HOLD", -5, "h"),
            ("USAGE", -4, "s"),
            ("BONUS", 10, "g"),
        ]
        page = await credits.history(pool, user, limit=2, before=rows[1].id)
        assert [r.transaction_type for r in page] == ["USAGE", "BONUS"]

        # Inside the application's own transaction: rolled back with it.
        async with pool.acquire() as conn, conn.transaction():
            await credits.spend(conn, user, 1, idempotency_key="in-tx")
            assert await credits.balance(conn, user) == 3
            await conn.execute("SELECT 1")
        async with pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            await credits.spend(conn, user, 1, idempotency_key="rolled-back")
            await tx.rollback()
        assert await credits.balance(pool, user) == 3
        assert [r.idempotency_key for r in await credits.history(pool, user, limit=1)] == ["in-tx"]
    finally:
        await pool.close()


async def test_expired_holds_are_released_exactly_once(database_url: str) -> None:
    """Several crons and the application's own release race on the same expired holds."""
    pool = await asyncpg.create_pool(database_url, min_size=4, max_size=8)
    assert pool is not None
    try:
        async with pool.acquire() as conn:
            users = [await new_user(conn, f"exp{i}@example.com") for i in range(3)]  # type: ignore[arg-type]
        for user in users:
            await credits.grant(pool, user, 20, idempotency_key="seed", reason="seed")
            for n in range(10):
                await credits.hold(
                    pool, user, 2, idempotency_key=f"h{n}", expires_in=timedelta(microseconds=1)
                )
        async with pool.acquire() as conn:
            assert (
                await conn.fetchval("SELECT count(*) FROM credit_holds WHERE expires_at > now()")
                == 0
            )

        async def cron() -> int:
            async with pool.acquire() as conn:
                return int(await conn.fetchval("SELECT credits_release_expired(7)"))

        async def app_release(user: int, n: int) -> str:
            return (await credits.release(pool, user, idempotency_key=f"h{n}")).status

        results = await asyncio.gather(
            *(cron() for _ in range(6)), *(app_release(u, 0) for u in users)
        )
        _crons, app = results[:6], results[6:]
        async with pool.acquire() as conn:
            while await conn.fetchval("SELECT credits_release_expired(100)"):
                pass
            released_by_app = app.count("released")
            assert set(app) <= {"released", "duplicate"}  # duplicate: a cron came first
            per_hold = await conn.fetch(
                "SELECT user_id, idempotency_key, count(*) AS n FROM credit_transactions"
                " WHERE transaction_type = 'HOLD_RELEASE' GROUP BY 1, 2"
            )
            assert len(per_hold) == 30 and all(row["n"] == 1 for row in per_hold)
            states = await conn.fetch("SELECT state, count(*) AS n FROM credit_holds GROUP BY 1")
            assert {r["state"]: r["n"] for r in states} == {
                "expired": 30 - released_by_app,
                **({"released": released_by_app} if released_by_app else {}),
            }
            for user in users:
                assert await credits.balance(conn, user) == 20
                assert await ledger_sum(conn, user) == 20  # type: ignore[arg-type]
    finally:
        await pool.close()


async def test_verify_names_a_hold_that_disagrees_with_its_rows(db: asyncpg.Connection) -> None:
    user = await new_user(db, "tampered@example.com")
    await credits.grant(db, user, 9, idempotency_key="g", reason="seed")
    await credits.hold(db, user, 4, idempotency_key="h", expires_in=timedelta(hours=1))
    assert (await verify.verify(db, stale_after_seconds=3600)).problems == []
    await db.execute("UPDATE credit_holds SET state = 'released' WHERE idempotency_key = 'h'")
    problems = {
        c.name: c.detail for c in (await verify.verify(db, stale_after_seconds=3600)).problems
    }
    assert set(problems) == {"holds"}
    assert "hold 'h' (released): held 4, back 0" in problems["holds"]
