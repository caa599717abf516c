"""Reconciliation against a fake Stripe API (tests/fake_stripe.py), real Postgres and Redis,
real arq workers: events Stripe never delivered are recovered and credited exactly once."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY

from tests.conftest import base_env, sign, wait_for
from tests.fake_stripe import API_KEY, FakeStripe, serve_fake_stripe
from tests.ops_support import run_cli
from tests.pgbouncer import PgBouncer
from tests.worker_support import (
    balance,
    drain,
    new_user,
    spawn_worker,
    stop_worker,
    sweep,
    worker_env,
)
from webhook_worker import job_queue as queue
from webhook_worker.config import Settings
from webhook_worker.db import store
from webhook_worker.errors import WebhookWorkerError
from webhook_worker.ops.sample_events import (
    charge_refunded_event,
    checkout_session_event,
    encode_event,
)
from webhook_worker.receiver.app import create_app
from webhook_worker.worker import reconcile

HOUR = 3600


@pytest.fixture
async def fake() -> AsyncIterator[FakeStripe]:
    async with serve_fake_stripe() as running:
        yield running


@pytest.fixture
def reconcile_env(database_url: str, clean_redis_url: str, fake: FakeStripe) -> dict[str, str]:
    return {
        **base_env(database_url, clean_redis_url),
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": fake.url,
        "RETRY_BASE_SECONDS": "1",
        "MAX_TRIES": "12",
    }


@pytest.fixture
def settings(reconcile_env: dict[str, str]) -> Settings:
    return Settings.from_env(reconcile_env)


def _ago(seconds: int) -> int:
    return int(time.time()) - seconds


def purchase(user: int, credits: int, created: int) -> dict[str, Any]:
    event = checkout_session_event(client_reference_id=str(user), credits=credits)
    event["created"] = created
    return event


def refund_of(event: dict[str, Any], refunded: int, created: int) -> dict[str, Any]:
    refund = charge_refunded_event(
        payment_intent=event["data"]["object"]["payment_intent"],
        amount=1000,
        amount_refunded=refunded,
    )
    refund["created"] = created
    return refund


async def ledger_rows(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM credit_transactions"))


async def stored(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM stripe_events"))


async def reconcile_once(settings: Settings, **options: Any) -> reconcile.ReconcileResult:
    """One run over the last day, as `webhook-worker reconcile --since 1d` does."""
    pool = await store.create_pool(settings)
    redis = await queue.create_redis(settings)
    source = reconcile.StripeEvents(settings, backoff_seconds=0.01)
    now = datetime.now(UTC)
    try:
        return await reconcile.reconcile(
            pool, redis, source, since=now - timedelta(days=1), until=now, **options
        )
    finally:
        await source.close()
        await redis.aclose()
        await pool.close()


# --- the endpoint was down for the whole retry window ---------------------------------------


async def test_one_run_recovers_and_credits_every_missed_event_once(
    db: asyncpg.Connection,
    fake: FakeStripe,
    reconcile_env: dict[str, str],
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    users = [await new_user(db, f"r{i}@example.com") for i in range(50)]
    expected = dict.fromkeys(users, 0)
    purchases = []
    for i in range(300):
        user = users[i % 50]
        event = purchase(user, 10, _ago(6 * HOUR) + i)
        fake.add(event, delivered=False)
        purchases.append((user, event))
        expected[user] += 10
    for i, (user, event) in enumerate(purchases[:30]):
        refunded = 1000 if i % 2 else 500
        fake.add(refund_of(event, refunded, _ago(2 * HOUR) + i), delivered=False)
        expected[user] -= 10 * refunded // 1000
    before = REGISTRY.get_sample_value("reconcile_events_recovered_total") or 0.0

    first = await run_cli(
        capsys, monkeypatch, reconcile_env, "reconcile", "--since", "1d", "--json"
    )
    assert first.code == 0, first.err
    report = first.json()
    assert (report["found"], report["recovered"], report["already_stored"]) == (330, 330, 0)
    assert report["pages"] == 4  # 100 a page
    assert REGISTRY.get_sample_value("reconcile_events_recovered_total") == before + 330
    await drain(settings)
    # Refunds claimed before their purchase committed wait; the sweeper wakes them.
    await sweep(settings)
    await drain(settings)

    statuses = await db.fetch(
        "SELECT processing_status, source, count(*) FROM stripe_events GROUP BY 1, 2"
    )
    assert [tuple(row) for row in statuses] == [("completed", "reconcile", 330)]
    assert await ledger_rows(db) == 330  # 300 purchases + 30 refunds, one row each
    for user, credits in expected.items():
        assert await balance(db, user) == credits
    mismatched = await db.fetchval(
        "SELECT count(*) FROM users u WHERE credits_balance <> "
        "(SELECT coalesce(sum(amount), 0) FROM credit_transactions t WHERE t.user_id = u.id)"
    )
    assert mismatched == 0

    second = await run_cli(
        capsys, monkeypatch, reconcile_env, "reconcile", "--since", "1d", "--json"
    )
    assert (second.json()["found"], second.json()["recovered"]) == (330, 0)
    assert await stored(db) == 330
    runs = await db.fetch(
        "SELECT trigger, status, events_recovered FROM reconcile_runs ORDER BY id"
    )
    assert [tuple(r) for r in runs] == [("manual", "succeeded", 330), ("manual", "succeeded", 0)]


async def test_only_the_types_the_worker_handles_are_asked_for(
    fake: FakeStripe, settings: Settings
) -> None:
    fake.add(purchase(1, 10, _ago(HOUR)))
    customer = {**checkout_session_event(), "type": "customer.created", "created": _ago(HOUR)}
    fake.add(customer)
    result = await reconcile_once(settings)
    assert result.found == 1
    assert sorted(fake.calls[0]["types"]) == sorted(reconcile.RECONCILED_TYPES)
    assert len(reconcile.RECONCILED_TYPES) <= 20  # Stripe's limit per request


def test_the_reconciled_types_are_the_handled_types() -> None:
    from webhook_worker.worker.handlers import HANDLERS

    assert set(reconcile.RECONCILED_TYPES) == set(HANDLERS)


# --- a delivery and a reconcile of the same event race ---------------------------------------


async def test_a_delivery_racing_a_reconcile_stores_one_row_and_credits_once(
    db: asyncpg.Connection, fake: FakeStripe, settings: Settings
) -> None:
    user = await new_user(db, "race@example.com")
    events = [purchase(user, 1, _ago(HOUR) + i) for i in range(40)]
    for event in events:
        fake.add(event)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:

            async def deliver(event: dict[str, Any]) -> int:
                body = encode_event(event)
                response = await client.post(
                    "/webhooks/stripe", content=body, headers={"Stripe-Signature": sign(body)}
                )
                return response.status_code

            results = await asyncio.gather(
                reconcile_once(settings), *(deliver(event) for event in events)
            )
    assert set(results[1:]) == {200}
    race: reconcile.ReconcileResult = results[0]  # type: ignore[assignment]
    assert race.recovered + race.already_stored == 40
    await drain(settings)
    assert await stored(db) == 40
    assert await ledger_rows(db) == 40
    assert await balance(db, user) == 40


# --- paging, rate limits and faults -----------------------------------------------------------


async def test_eleven_pages_with_a_429_and_a_500_recover_every_event_once(
    db: asyncpg.Connection, fake: FakeStripe, settings: Settings
) -> None:
    user = await new_user(db, "pages@example.com")
    for i in range(1050):
        fake.add(purchase(user, 1, _ago(10 * HOUR) + i))
    fake.fail_calls = {3: 429, 7: 500}
    result = await reconcile_once(settings)
    assert (result.pages, result.found, result.recovered) == (11, 1050, 1050)
    assert len(fake.calls) == 13  # 11 pages, two of them asked twice
    after = [c.get("starting_after") for c in fake.calls]
    assert after[2] == after[3] and after[6] == after[7]  # the same page, asked again
    assert len(set(after)) == 11  # every page exactly once otherwise
    assert await stored(db) == 1050
    await drain(settings)
    assert await ledger_rows(db) == 1050
    assert await balance(db, user) == 1050


async def test_a_page_that_keeps_failing_stops_the_run_and_it_resumes(
    db: asyncpg.Connection, fake: FakeStripe, settings: Settings
) -> None:
    for i in range(250):
        fake.add(purchase(1, 1, _ago(HOUR) + i))
    fake.fail_calls = {n: 500 for n in range(2, 2 + reconcile.PAGE_TRIES)}
    with pytest.raises(reconcile.TransientError, match="failed after 6 tries"):
        await reconcile_once(settings)
    assert await stored(db) == 100  # the first page
    run = await db.fetchrow("SELECT status, events_recovered, error_message FROM reconcile_runs")
    assert (run["status"], run["events_recovered"]) == ("failed", 100)
    assert "APIError 500" in run["error_message"]
    fake.fail_calls = {}
    again = await reconcile_once(settings)
    assert (again.recovered, again.already_stored) == (150, 100)
    assert await stored(db) == 250


async def test_undelivered_only_asks_stripe_for_failed_deliveries(
    db: asyncpg.Connection, fake: FakeStripe, settings: Settings
) -> None:
    fake.add(purchase(1, 1, _ago(HOUR)), delivered=False)
    fake.add(purchase(1, 1, _ago(HOUR)))
    result = await reconcile_once(settings, undelivered_only=True)
    assert (result.found, result.recovered) == (1, 1)
    assert fake.calls[0]["delivery_success"] is False


# --- dry run and a refused key ----------------------------------------------------------------


async def test_dry_run_counts_what_is_missing_and_writes_nothing(
    db: asyncpg.Connection,
    fake: FakeStripe,
    reconcile_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for i in range(5):
        fake.add(purchase(1, 1, _ago(HOUR) + i))
    result = await run_cli(capsys, monkeypatch, reconcile_env, "reconcile", "--dry-run")
    assert result.code == 0, result.err
    assert "dry run: 5 event(s) in Stripe" in result.out
    assert "would store 5 missing" in result.out
    assert await stored(db) == 0
    assert await db.fetchval("SELECT count(*) FROM reconcile_runs") == 0


async def test_a_refused_key_exits_1_with_the_reason(
    db: asyncpg.Connection,
    reconcile_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {**reconcile_env, "STRIPE_API_KEY": "rk_test_wrong_key_00000000"}
    result = await run_cli(capsys, monkeypatch, env, "reconcile", "--since", "1h")
    assert result.code == 1
    assert "Stripe refused STRIPE_API_KEY (401)" in result.err
    assert "Events: read" in result.err
    assert "rk_test_wrong" not in result.err + result.out
    run = await db.fetchrow("SELECT status, error_message FROM reconcile_runs")
    assert run["status"] == "failed"


async def test_reconcile_without_a_key_is_a_configuration_error(
    database_url: str,
    clean_redis_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    env = base_env(database_url, clean_redis_url)
    result = await run_cli(capsys, monkeypatch, env, "reconcile")
    assert result.code == 2
    assert "STRIPE_API_KEY is not set" in result.err


@pytest.mark.parametrize("since", ["31d", "2020-01-01"])
async def test_a_window_beyond_stripes_thirty_days_is_refused(
    reconcile_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    since: str,
) -> None:
    result = await run_cli(capsys, monkeypatch, reconcile_env, "reconcile", "--since", since)
    assert result.code == 2
    assert "keeps 30 days" in result.err


# --- ops see it -----------------------------------------------------------------------------


async def test_stats_show_the_last_run_and_events_show_the_source(
    db: asyncpg.Connection,
    fake: FakeStripe,
    reconcile_env: dict[str, str],
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    event = purchase(1, 1, _ago(HOUR))
    fake.add(event)
    await reconcile_once(settings)
    stats = await run_cli(capsys, monkeypatch, reconcile_env, "stats", "--json")
    last = stats.json()["last_reconcile"]
    assert (last["trigger"], last["status"], last["events_recovered"]) == ("manual", "succeeded", 1)
    table = await run_cli(capsys, monkeypatch, reconcile_env, "stats")
    assert "last reconcile" in table.out and "1 recovered" in table.out
    shown = await run_cli(capsys, monkeypatch, reconcile_env, "events", "show", event["id"])
    assert "reconcile" in shown.out


async def test_verify_warns_when_the_last_success_is_older_than_three_intervals(
    db: asyncpg.Connection,
    reconcile_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {**reconcile_env, "RECONCILE_INTERVAL_SECONDS": "60"}
    never = await run_cli(capsys, monkeypatch, env, "verify", "--json")
    [check] = [c for c in never.json()["checks"] if c["name"] == "reconcile"]
    assert check["warning"] and "no reconcile run has succeeded" in check["detail"]
    await db.execute(
        "INSERT INTO reconcile_runs (trigger, window_start, window_end, status, finished_at) "
        "VALUES ('cron', now() - interval '1 day', now() - interval '1 hour', 'succeeded', "
        "now() - interval '181 seconds')"
    )
    stale = await run_cli(capsys, monkeypatch, env, "verify", "--json")
    assert stale.code == 0  # a warning
    [check] = [c for c in stale.json()["checks"] if c["name"] == "reconcile"]
    assert check["warning"] and "over three intervals (180s)" in check["detail"]
    await db.execute("UPDATE reconcile_runs SET finished_at = now()")
    fresh = await run_cli(capsys, monkeypatch, env, "verify", "--json")
    [check] = [c for c in fresh.json()["checks"] if c["name"] == "reconcile"]
    assert not check["warning"]


# --- the cron -------------------------------------------------------------------------------


async def test_the_cron_window_starts_at_the_watermark_minus_the_overlap(
    db: asyncpg.Connection, settings: Settings
) -> None:
    async with store.acquire(await store.create_pool(settings), "test") as conn:
        since, until = await reconcile.cron_window(conn, settings)
        now = datetime.now(UTC)
        assert abs((now - since) - timedelta(days=3)).total_seconds() < 5  # RECONCILE_LOOKBACK
        assert abs((now - until) - reconcile.UNTIL_LAG).total_seconds() < 5
        end = now - timedelta(hours=2)
        await db.execute(
            "INSERT INTO reconcile_runs (trigger, window_start, window_end, status) "
            "VALUES ('cron', $1, $2, 'succeeded'), ('manual', $1, $3, 'succeeded'), "
            "('cron', $1, $3, 'failed')",
            end - timedelta(days=1),
            end,
            now,
        )
        since, _ = await reconcile.cron_window(conn, settings)
        assert since == end - reconcile.OVERLAP  # manual and failed runs do not move it


@pytest.mark.parametrize("pooled", [False, True], ids=["direct", "pgbouncer"])
async def test_two_worker_processes_reconcile_in_turn_and_credit_once(
    db: asyncpg.Connection,
    fake: FakeStripe,
    database_url: str,
    clean_redis_url: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    pooled: bool,
) -> None:
    """The receiver is down: events exist only in Stripe. Within an interval the cron of
    one of the two workers recovers them; the fleet lease keeps their runs apart, also when
    the workers reach Postgres through PgBouncer in transaction mode (a session lock there
    was stranded on a pooled backend and runs overlapped)."""
    user = await new_user(db, "cron@example.com")
    for i in range(300):
        fake.add(purchase(user, 1, _ago(HOUR) + i), delivered=False)
    fake.page_delay = 0.2  # runs last long enough to overlap if nothing kept them apart
    dsn = database_url
    if pooled:
        bouncer: PgBouncer = request.getfixturevalue("pgbouncer")
        dsn = bouncer.through(database_url)
    env = worker_env(
        dsn,
        clean_redis_url,
        STRIPE_API_KEY=API_KEY,
        STRIPE_API_BASE=fake.url,
        RECONCILE_INTERVAL_SECONDS="1",
        DB_STATEMENT_CACHE_SIZE="0" if pooled else "100",
    )
    workers = [spawn_worker(env, tmp_path / f"worker-{i}.log") for i in range(2)]
    try:

        async def all_credited() -> bool:
            return await balance(db, user) == 300

        await wait_for(all_credited, timeout=60)
        await wait_for(
            lambda: db.fetchval(
                "SELECT count(*) >= 3 FROM reconcile_runs WHERE status <> 'running'"
            ),
            timeout=60,
        )
    finally:
        for worker in workers:
            stop_worker(worker)
    logs = "".join((tmp_path / f"worker-{i}.log").read_text() for i in range(2))
    assert await ledger_rows(db) == 300
    runs = await db.fetch(
        "SELECT started_at, finished_at FROM reconcile_runs WHERE trigger = 'cron' "
        "AND finished_at IS NOT NULL ORDER BY started_at"
    )
    for earlier, later in itertools.pairwise(runs):
        assert earlier["finished_at"] <= later["started_at"], logs  # never two at once
    assert (await db.fetchval("SELECT sum(events_recovered) FROM reconcile_runs")) == 300
    # Nothing of the fleet lock is left in a session once the workers are gone.
    assert (
        await db.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        == 0
    )


async def test_the_fleet_lease_is_held_once_renewed_and_taken_over_after_expiry(
    settings: Settings, db: asyncpg.Connection
) -> None:
    pool = await store.create_pool(settings)
    try:
        async with reconcile.fleet_lock(pool, holder="a", seconds=60) as held_a:
            assert held_a
            async with reconcile.fleet_lock(pool, holder="b", seconds=60) as held_b:
                assert not held_b  # a holds it
        # Released at the end of a's block: b takes it at once.
        async with reconcile.fleet_lock(pool, holder="b", seconds=60) as held_b:
            assert held_b
            # b died without releasing (its lease simply runs out): c waits for the expiry.
            await db.execute("UPDATE reconcile_lease SET expires_at = now() - interval '1s'")
            async with reconcile.fleet_lock(pool, holder="c", seconds=60) as held_c:
                assert held_c
                assert await db.fetchval("SELECT holder FROM reconcile_lease") == "c"
        # b's release, after c took the lease, leaves c's lease alone.
        assert await db.fetchval("SELECT holder FROM reconcile_lease") == "c"
    finally:
        await pool.close()


async def test_a_run_whose_lease_was_taken_over_stops_with_a_transient_error(
    settings: Settings, db: asyncpg.Connection
) -> None:
    pool = await store.create_pool(settings)
    stopped = asyncio.Event()
    try:
        with pytest.raises(WebhookWorkerError, match="lease expired and another worker took it"):
            async with reconcile.fleet_lock(pool, holder="a", seconds=0.3) as held:
                assert held
                await db.execute(
                    "UPDATE reconcile_lease SET holder = 'b', expires_at = now() + interval '1h'"
                )
                try:
                    await asyncio.sleep(30)  # the run: cancelled by the renewal that finds b
                finally:
                    stopped.set()
        assert stopped.is_set()
    finally:
        await pool.close()


async def test_a_burst_worker_runs_no_reconcile_loop(fake: FakeStripe, settings: Settings) -> None:
    fake.add(purchase(1, 1, _ago(HOUR)))
    await drain(settings)
    assert fake.calls == []


async def test_recovered_events_pass_the_same_scope_rules_as_deliveries(
    db: asyncpg.Connection, fake: FakeStripe, settings: Settings
) -> None:
    user = await new_user(db, "scope@example.com")
    live = purchase(user, 10, _ago(HOUR))
    live["livemode"] = True  # a test deployment (STRIPE_MODE=test): live money is not ours
    connected = purchase(user, 10, _ago(HOUR) + 1)
    connected["account"] = "acct_1NotListed"
    fake.add(live)
    fake.add(connected)
    result = await reconcile_once(settings)
    assert result.recovered == 2
    await drain(settings)
    reasons = await db.fetch(
        "SELECT event_id, processing_status, status_reason FROM stripe_events ORDER BY event_id"
    )
    assert {(r["event_id"], r["processing_status"], r["status_reason"]) for r in reasons} == {
        (live["id"], "ignored", "livemode_mismatch"),
        (connected["id"], "ignored", "connect_account_not_allowed"),
    }
    assert await balance(db, user) == 0
