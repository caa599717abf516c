"""The matrix of issue 13: the service installed into host `users` tables of every supported
shape — migrate up, verify, purchases resolved by id, UUID and email through a real worker, a
refund, 100 concurrent credits to one user, and migrate down giving the table back exactly.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from tests.conftest import base_env
from tests.host_shapes import SHAPES, Shape, insert_user, snapshot, uuid_reference
from tests.worker_support import (
    assert_balance_after_is_running_sum,
    balance,
    deliver,
    drain,
    ledger_sum,
    status_of,
    store_events,
)
from webhook_worker.config import Settings
from webhook_worker.db import migrations
from webhook_worker.db.host import UserId, lock_key
from webhook_worker.errors import MigrationError
from webhook_worker.ops import verify
from webhook_worker.ops.sample_events import charge_refunded_event, checkout_session_event
from webhook_worker.worker import ledger, resolver

CONCURRENT = 100


def _settings(database_url: str, redis_url: str, shape: Shape) -> Settings:
    env = base_env(database_url, redis_url)
    if shape.tenant_env:
        env["USERS_TENANT_COLUMN"] = shape.tenant_env
    return Settings.from_env(env)


async def _verify_as_expected(conn: asyncpg.Connection, shape: Shape) -> None:
    report = await verify.verify(conn, stale_after_seconds=3600, tenant_column=shape.tenant_env)
    problems = {check.name: check.detail for check in report.problems}
    if shape.required:
        assert set(problems) == {"users by email"}, problems
        for column in shape.required:
            assert f"users.{column} NOT NULL without a default" in problems["users by email"]
    else:
        assert problems == {}
    assert f"key: users.id {shape.key_type}; ledger user_id" in "\n".join(report.host_shape)
    if shape.tenant:
        assert any(f"unique per tenant, users.{shape.tenant}" in line for line in report.host_shape)
    checks = {check.name: check for check in report.checks}
    assert checks["lock key"].ok and "keys agree" in checks["lock key"].detail


async def _concurrent_credits(database_url: str, user: UserId) -> None:
    """CONCURRENT credits of 1 to one user from 10 connections: the lock serialises them."""
    pool = await asyncpg.create_pool(database_url, min_size=10, max_size=10)
    assert pool is not None
    try:
        async with pool.acquire() as conn:
            start = await balance(conn, user)  # type: ignore[arg-type]
            events = [checkout_session_event(credits=1) for _ in range(CONCURRENT)]
            event_ids = await store_events(conn, events)

        async def credit(index: int) -> ledger.CreditResult:
            async with pool.acquire() as conn:
                return await ledger.credit_purchase(
                    conn,
                    ledger.Purchase(
                        user_id=user,
                        credits=1,
                        event_id=event_ids[index],
                        checkout_session_id=f"cs_hot_{index}",
                        payment_intent_id=None,
                        description="concurrent",
                    ),
                )

        results = await asyncio.gather(*(credit(i) for i in range(CONCURRENT)))
        assert all(result.applied for result in results)
        async with pool.acquire() as conn:
            assert await balance(conn, user) == start + CONCURRENT  # type: ignore[arg-type]
            assert await ledger_sum(conn, user) == start + CONCURRENT  # type: ignore[arg-type]
            await assert_balance_after_is_running_sum(conn, user)  # type: ignore[arg-type]
    finally:
        await pool.close()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
async def test_install_credit_refund_and_uninstall(
    shape: Shape, empty_database_url: str, clean_redis_url: str
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(shape.ddl)
        seed = [
            await insert_user(conn, shape, "seed-one@example.com"),
            await insert_user(conn, shape, "seed-two@example.com", "2"),
        ]
        before = await snapshot(conn, seed)

        await migrations.migrate_up(conn, tenant_column=shape.tenant_env)
        ledger_type = await conn.fetchval(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'credit_transactions'::regclass AND attname = 'user_id'"
        )
        assert ledger_type == shape.ledger_type
        await _verify_as_expected(conn, shape)

        buyer = await insert_user(conn, shape, "buyer@example.com")
        tenant = {"tenant_id": "1"} if shape.tenant else {}
        by_uuid = await uuid_reference(conn, shape, buyer)
        events = [
            checkout_session_event(
                credits=5, client_reference_id=str(buyer), payment_intent="pi_by_id"
            ),
            checkout_session_event(credits=11, email="Buyer@Example.com", metadata=tenant),
        ]
        if by_uuid is not None:
            events.append(checkout_session_event(credits=7, metadata={"user_uuid": by_uuid}))
        settings = _settings(empty_database_url, clean_redis_url, shape)
        ids = await deliver(conn, settings, *events)
        await drain(settings)
        for event_id in ids:
            assert (await status_of(conn, event_id))["processing_status"] == "completed"
        bought = 5 + 11 + (7 if by_uuid is not None else 0)
        assert await balance(conn, buyer) == bought  # type: ignore[arg-type]

        refund = await deliver(
            conn, settings, charge_refunded_event(payment_intent="pi_by_id", amount_refunded=1000)
        )
        await drain(settings)
        assert (await status_of(conn, refund[0]))["processing_status"] == "completed"
        assert await balance(conn, buyer) == bought - 5  # type: ignore[arg-type]
        assert await ledger_sum(conn, buyer) == bought - 5  # type: ignore[arg-type]

        await _concurrent_credits(empty_database_url, buyer)
        await _verify_as_expected(conn, shape)

        await migrations.migrate_down(conn, to=0, drop_data=True)
        assert await snapshot(conn, seed) == before
    finally:
        await conn.close()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
async def test_references_of_another_kind_never_match_and_never_raise(
    shape: Shape, empty_database_url: str
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(shape.ddl)
        await migrations.migrate_up(conn, tenant_column=shape.tenant_env)
        user = await insert_user(conn, shape, "known@example.com")
        wanted = [
            resolver.classify("12345"),
            resolver.classify(str(2**63 - 1)),
            resolver.classify(str(uuid.uuid4())),
            resolver.classify("user_2abcDEF123"),
            resolver.classify("nobody@example.com"),
            resolver.classify(str(user)),
        ]
        found = await resolver.lookup_users(conn, wanted)
        assert found[:5] == [None] * 5
        assert found[5] == user  # the user's own id, whatever its type
        alone = [await resolver.lookup_user(conn, candidate) for candidate in wanted]
        assert alone == found
    finally:
        await conn.close()


async def test_multi_tenant_email_is_ambiguous_unless_the_tenant_is_given(
    empty_database_url: str, clean_redis_url: str
) -> None:
    shape = next(s for s in SHAPES if s.name == "multi_tenant_unique_tenant_email")
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(shape.ddl)
        first = await insert_user(conn, shape, "shared@example.com", "1")
        second = await insert_user(conn, shape, "shared@example.com", "2")
        await migrations.migrate_up(conn)
        assert await conn.fetchval("SELECT to_regclass('users_email_lower_key')") is None
        settings = _settings(empty_database_url, clean_redis_url, shape)
        ambiguous, scoped, no_tenant, new_in_tenant = await deliver(
            conn,
            settings,
            checkout_session_event(credits=3, email="shared@example.com"),
            checkout_session_event(
                credits=4, email="SHARED@example.com", metadata={"tenant_id": "2"}
            ),
            checkout_session_event(credits=5, email="newer@example.com"),
            checkout_session_event(credits=6, email="new@example.com", metadata={"tenant_id": "3"}),
        )
        await drain(settings)

        row = await status_of(conn, ambiguous)
        assert row["processing_status"] == "failed"
        assert row["error_message"].startswith("ambiguous_user")
        for way in ("client_reference_id", "metadata.user_id", "metadata.tenant_id"):
            assert way in row["error_message"]
        assert "shared@example.com" not in row["error_message"]  # no raw email

        assert (await status_of(conn, scoped))["processing_status"] == "completed"
        assert await balance(conn, second) == 4  # type: ignore[arg-type]
        assert await balance(conn, first) == 0  # type: ignore[arg-type]

        row = await status_of(conn, no_tenant)
        assert row["processing_status"] == "failed"
        assert row["error_message"].startswith("user_not_found")
        assert "metadata.tenant_id" in row["error_message"]
        assert not await conn.fetchval("SELECT count(*) FROM users WHERE email LIKE 'newer@%'")

        assert (await status_of(conn, new_in_tenant))["processing_status"] == "completed"
        created = await conn.fetch(
            "SELECT tenant_id, credits_balance FROM users WHERE email = 'new@example.com'"
        )
        assert [(r["tenant_id"], r["credits_balance"]) for r in created] == [(3, 6)]
    finally:
        await conn.close()


async def test_a_composite_primary_key_is_refused_before_anything_changes(
    empty_database_url: str,
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(
            "CREATE TABLE users (tenant_id INT, id BIGINT, email TEXT,"
            " PRIMARY KEY (tenant_id, id));"
            "INSERT INTO users VALUES (1, 1, 'a@example.com')"
        )
        before = await snapshot(conn, [1])
        with pytest.raises(MigrationError) as info:
            await migrations.migrate_up(conn)
        message = info.value.message
        assert "nothing was changed" in message
        assert "composite primary key (tenant_id, id)" in message
        assert "UNIQUE (id)" in message  # what would work
        assert await snapshot(conn, [1]) == before
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert [r["table_name"] for r in tables] == ["users"]

        # What the message proposes works.
        await conn.execute("ALTER TABLE users ADD CONSTRAINT users_id_key UNIQUE (id)")
        assert await migrations.migrate_up(conn)
    finally:
        await conn.close()


async def test_unsupported_key_type_and_unknown_tenant_variable_are_refused(
    empty_database_url: str,
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute("CREATE TABLE users (id NUMERIC PRIMARY KEY, email TEXT)")
        with pytest.raises(MigrationError) as info:
            await migrations.migrate_up(conn)
        assert "users.id is numeric" in info.value.message
        await conn.execute("ALTER TABLE users ALTER COLUMN id TYPE BIGINT")
        with pytest.raises(MigrationError) as info:
            await migrations.migrate_up(conn, tenant_column="org_id")
        assert "USERS_TENANT_COLUMN=org_id: users has no such column" in info.value.message
        assert not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    finally:
        await conn.close()


def test_lock_key_of_uuid_and_text_keys_is_sha256_based() -> None:
    # Stable values: a change here changes which users share a lock in running deployments.
    assert lock_key("0b7e2f0c-4d1a-4c55-9a3e-6f1d2c3b4a59") == lock_key(
        str(uuid.UUID("0B7E2F0C-4D1A-4C55-9A3E-6F1D2C3B4A59"))
    )
    import hashlib

    digest = hashlib.sha256(b"user_2abc").digest()
    assert lock_key("user_2abc") == int.from_bytes(digest[:4], "big", signed=True)
    assert -(2**31) <= lock_key("x" * 300) < 2**31


async def test_verify_reports_a_tenant_column_that_differs_from_the_install(
    empty_database_url: str,
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute("CREATE TABLE users (id BIGSERIAL PRIMARY KEY, org_id TEXT, email TEXT)")
        await migrations.migrate_up(conn)
        assert (await verify.verify(conn, stale_after_seconds=3600)).ok
        report = await verify.verify(conn, stale_after_seconds=3600, tenant_column="org_id")
        problems = {check.name: check.detail for check in report.problems}
        assert "emails are scoped by users.org_id now" in problems["host shape recorded"]
        assert "installed with no tenant column" in problems["host shape recorded"]
    finally:
        await conn.close()


async def test_a_host_uuid_column_of_another_type_is_refused(empty_database_url: str) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute("CREATE TABLE users (id BIGSERIAL PRIMARY KEY, uuid TEXT, email TEXT)")
        with pytest.raises(MigrationError) as info:
            await migrations.migrate_up(conn)
        assert "users.uuid is text" in info.value.message
    finally:
        await conn.close()
