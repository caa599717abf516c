"""The integration tier of `tests/money_cases.PURCHASES`: the same cases as the unit tier
(tests/test_money_rules.py), delivered for real and drained by the worker into Postgres."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import pytest

from tests.money_cases import PURCHASES, PurchaseCase
from tests.worker_support import deliver, drain, new_user, status_of, sweep
from webhook_worker.config import Settings


@pytest.mark.parametrize("case", PURCHASES, ids=[case.name for case in PURCHASES])
async def test_purchase_in_postgres(
    db: asyncpg.Connection, make_settings: Callable[..., Settings], case: PurchaseCase
) -> None:
    settings = make_settings(**case.env)
    refs: dict[str, str] = {}
    for index, email in enumerate(case.users):
        user_id = await new_user(db, email)
        user_uuid = await db.fetchval("SELECT uuid::text FROM users WHERE id = $1", user_id)
        refs |= {f"u{index}": str(user_id), f"uuid{index}": user_uuid, f"email{index}": str(email)}
    event_ids = []
    for build in case.events:  # one at a time: the table's delivery order
        event_ids += await deliver(db, settings, build(refs))
        await drain(settings)
    while await sweep(settings):  # as the sweeper cron: waiting events whose wait is over
        await drain(settings)
    statuses = [await status_of(db, event_id) for event_id in event_ids]
    assert [
        (s["processing_status"], None if s["processing_status"] == "failed" else s["status_reason"])
        for s in statuses
    ] == case.statuses
    balances = {}
    for name in case.balances:
        if name in refs:
            found = await db.fetchval(
                "SELECT credits_balance FROM users WHERE id = $1", int(refs[name])
            )
        else:
            found = await db.fetchval(
                "SELECT credits_balance FROM users WHERE lower(email) = $1", name
            )
        balances[name] = found
    assert balances == case.balances
    total = await db.fetchval("SELECT coalesce(sum(credits_balance), 0) FROM users")
    assert total == sum(case.balances.values())
