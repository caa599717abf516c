"""The SQLAlchemy example of docs/spending.md, run as it is written there, on real Postgres
through SQLAlchemy's asyncpg dialect."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from tests.worker_support import new_user

DOC = Path(__file__).resolve().parent.parent / "docs" / "spending.md"


def _example(name: str) -> dict[str, Any]:
    text = DOC.read_text()
    match = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", text, re.DOTALL)
    assert match, f"docs/spending.md has no `{name}` example"
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), f"{DOC}:{name}", "exec"), namespace)  # noqa: S102
    return namespace


async def test_the_sqlalchemy_example_spends_inside_the_apps_transaction(
    db: asyncpg.Connection, database_url: str
) -> None:
    example = _example("sqlalchemy")
    await db.execute(
        "CREATE TABLE exports (job_id TEXT PRIMARY KEY, user_id BIGINT NOT NULL, pages INT)"
    )
    user = await new_user(db, "writer@example.com")
    await db.fetchrow("SELECT * FROM credits_grant($1, 10, 'seed', 'seed')", user)
    engine = create_async_engine(database_url.replace("postgresql://", "postgresql+asyncpg://"))
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    try:
        async with sessions() as session:
            assert await example["export_pages"](session, user, "job-1", 4) == 6
        async with sessions() as session:  # the retry of the same request
            assert await example["export_pages"](session, user, "job-1", 4) == 6
        async with sessions() as session:
            with pytest.raises(example["OutOfCredits"]) as short:
                await example["export_pages"](session, user, "job-2", 7)
            assert short.value.balance == 6
    finally:
        await engine.dispose()
    exports = await db.fetch("SELECT job_id, pages FROM exports ORDER BY job_id")
    assert [tuple(r) for r in exports] == [("job-1", 4)]
    rows = await db.fetch(
        "SELECT transaction_type, amount, idempotency_key FROM credit_transactions"
        " WHERE user_id = $1 ORDER BY id",
        user,
    )
    assert [tuple(r) for r in rows] == [("BONUS", 10, "seed"), ("USAGE", -4, "export:job-1")]
    assert await db.fetchval("SELECT credits_balance FROM users WHERE id = $1", user) == 6
