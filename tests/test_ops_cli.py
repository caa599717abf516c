"""The ops subcommands through `webhook_worker.cli.main`, on a real Postgres and Redis."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import TEST_SECRET, base_env, wait_for
from tests.ops_support import (
    CliResult,
    credit,
    event_row,
    insert_event,
    insert_user,
    queued_event_ids,
    queued_jobs,
    receiver_healthy,
    run_burst_worker,
    run_cli,
    running_receiver,
)

Cli = Callable[..., Awaitable[CliResult]]


@pytest.fixture
def env(database_url: str, clean_redis_url: str) -> dict[str, str]:
    return base_env(database_url, clean_redis_url)


@pytest.fixture
def cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> Cli:
    async def run(*args: str) -> CliResult:
        return await run_cli(capsys, monkeypatch, env, *args)

    return run


@pytest.mark.parametrize(
    "command",
    [
        ["events", "list"],
        ["events", "show"],
        ["replay"],
        ["stats"],
        ["verify"],
        ["send-test-event"],
        ["prune"],
    ],
)
async def test_every_ops_command_has_help(cli: Cli, command: list[str]) -> None:
    result = await cli(*command, "--help")
    assert result.code == 0
    assert "usage: webhook-worker" in result.out


# --- events list / show --------------------------------------------------------------------


async def test_events_list_filters_by_status_type_and_since(
    cli: Cli, db: asyncpg.Connection
) -> None:
    failed = await insert_event(db, status="failed", error="user_not_found")
    completed = await insert_event(db, status="completed")
    old_failed = await insert_event(db, status="failed", age_seconds=3 * 86400)
    refund = await insert_event(db, event_type="charge.refunded", status="failed")
    early = await insert_event(db, event_type="charge.dispute.created", status="waiting")

    result = await cli("events", "list", "--status", "failed", "--json")
    assert result.code == 0
    assert {e["event_id"] for e in result.json()} == {failed, old_failed, refund}
    waiting = await cli("events", "list", "--status", "waiting", "--json")
    assert [e["event_id"] for e in waiting.json()] == [early]

    result = await cli(
        "events", "list", "--status", "failed", "--type", "checkout.session.completed",
        "--since", "1d", "--json",
    )  # fmt: skip
    assert [e["event_id"] for e in result.json()] == [failed]
    assert result.json()[0]["error_message"] == "user_not_found"

    table = await cli("events", "list")
    assert table.code == 0
    for event_id in (failed, completed, old_failed, refund):
        assert event_id in table.out
    assert "user_not_found" in table.out


async def test_events_list_limit_and_newest_first(cli: Cli, db: asyncpg.Connection) -> None:
    oldest = await insert_event(db, age_seconds=30)
    newest = await insert_event(db, age_seconds=1)
    result = await cli("events", "list", "--limit", "1", "--json")
    assert [e["event_id"] for e in result.json()] == [newest]
    assert oldest not in result.out


async def test_events_list_rejects_a_bad_date_with_exit_2(cli: Cli) -> None:
    result = await cli("events", "list", "--since", "last tuesday")
    assert result.code == 2
    assert "--since" in result.err
    result = await cli("events", "list", "--since", "99999999999d")
    assert result.code == 2
    assert "out of range" in result.err


async def test_replay_dry_run_counts_and_shows_the_first_rows(
    cli: Cli, db: asyncpg.Connection
) -> None:
    for _ in range(25):
        await insert_event(db, status="failed")
    result = await cli("replay", "--status", "failed", "--dry-run", "--json")
    assert result.code == 0
    assert (result.json()["count"], len(result.json()["selected"])) == (25, 20)
    table = await cli("replay", "--status", "failed", "--dry-run")
    assert "would replay 25 event(s)" in table.out and "first 20 shown" in table.out


async def test_replay_stops_at_ops_replay_max_and_says_so(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    db: asyncpg.Connection,
) -> None:
    ids = [await insert_event(db, status="failed", age_seconds=60 - i) for i in range(3)]
    capped = {**env, "OPS_REPLAY_MAX": "2"}
    result = await run_cli(capsys, monkeypatch, capped, "replay", "--status", "failed")
    assert result.code == 0
    assert "OPS_REPLAY_MAX=2" in result.err
    assert "ops_replayed" in result.err and "cli_user" in result.err  # the audit line
    assert ids[0] in result.err
    statuses = [(await event_row(db, i))["processing_status"] for i in ids]
    assert statuses == ["received", "received", "failed"]


async def test_events_show_prints_status_error_and_ledger_rows(
    cli: Cli, db: asyncpg.Connection
) -> None:
    user = await insert_user(db)
    event_id = await insert_event(db, status="completed", attempts=2, error=None)
    await credit(db, user["id"], event_id, 10, "cs_test_show")

    result = await cli("events", "show", event_id)
    assert result.code == 0
    assert "completed" in result.out
    assert "ledger rows" in result.out and "PURCHASE" in result.out
    assert "cs_test_show" in result.out
    assert '"object": "event"' not in result.out  # no payload without --raw
    wide = await cli("events", "show", event_id, "--wide")
    assert user["uuid"] in wide.out

    data = (await cli("events", "show", event_id, "--json")).json()
    assert data["processing_status"] == "completed"
    assert data["attempts"] == 2
    assert [(r["amount"], r["balance_after"]) for r in data["ledger"]] == [(10, 10)]
    assert "raw_data" not in data


async def test_events_show_raw_prints_the_payload(cli: Cli, db: asyncpg.Connection) -> None:
    event_id = await insert_event(db, status="failed", error="boom")
    result = await cli("events", "show", event_id, "--raw")
    assert result.code == 0
    assert '"object": "event"' in result.out
    data = (await cli("events", "show", event_id, "--raw", "--json")).json()
    assert data["raw_data"]["id"] == event_id
    assert data["error_message"] == "boom"


async def test_events_show_unknown_event_exits_1(cli: Cli) -> None:
    result = await cli("events", "show", "evt_does_not_exist")
    assert result.code == 1
    assert "evt_does_not_exist not found" in result.err


# --- replay --------------------------------------------------------------------------------


async def test_replay_by_id_resets_a_failed_event_and_enqueues_a_fresh_job(
    cli: Cli, db: asyncpg.Connection, clean_redis_url: str
) -> None:
    event_id = await insert_event(db, status="failed", attempts=8, error="user_not_found")
    result = await cli("replay", event_id)
    assert result.code == 0, result.err
    assert "replayed 1 event(s)" in result.out
    row = await event_row(db, event_id)
    assert row["processing_status"] == "received"
    assert row["attempts"] == 8  # kept
    assert row["error_message"] == "user_not_found"  # kept until the worker's new outcome
    assert await queued_jobs(clean_redis_url) == [[event_id]]

    again = await cli("replay", event_id)  # received events replay again, another fresh job
    assert again.code == 0
    assert await queued_jobs(clean_redis_url) == [[event_id], [event_id]]
    audit = await db.fetch("SELECT who, via, event_ids FROM ops_audit ORDER BY id")
    assert [(r["via"], r["event_ids"]) for r in audit] == [("cli", [event_id])] * 2
    assert all(r["who"].startswith("cli:") for r in audit)


async def test_replay_by_status_with_type_and_since(
    cli: Cli, db: asyncpg.Connection, clean_redis_url: str
) -> None:
    recent = await insert_event(db, status="failed", error="x")
    old = await insert_event(db, status="failed", error="x", age_seconds=10 * 86400)
    other_type = await insert_event(db, event_type="charge.refunded", status="failed")
    completed = await insert_event(db, status="completed")

    result = await cli(
        "replay", "--status", "failed", "--type", "checkout.session.completed",
        "--since", "7d", "--json",
    )  # fmt: skip
    assert result.code == 0
    assert result.json()["replayed"] == [recent]
    assert (await event_row(db, recent))["processing_status"] == "received"
    for untouched, status in ((old, "failed"), (other_type, "failed"), (completed, "completed")):
        assert (await event_row(db, untouched))["processing_status"] == status
    assert await queued_event_ids(clean_redis_url) == [recent]


async def test_replay_dry_run_changes_nothing(
    cli: Cli, db: asyncpg.Connection, clean_redis_url: str
) -> None:
    ids = [await insert_event(db, status="failed", attempts=3, error="e") for _ in range(3)]
    result = await cli("replay", "--status", "failed", "--dry-run")
    assert result.code == 0
    assert "would replay 3 event(s)" in result.out
    for event_id in ids:
        assert event_id in result.out
        assert await event_row(db, event_id) == {
            "processing_status": "failed",
            "attempts": 3,
            "error_message": "e",
            "pruned": False,
        }
    assert await queued_jobs(clean_redis_url) == []
    by_id = await cli("replay", ids[0], "--dry-run", "--json")
    assert by_id.json()["dry_run"] is True
    assert [e["event_id"] for e in by_id.json()["selected"]] == [ids[0]]
    assert (await event_row(db, ids[0]))["processing_status"] == "failed"


async def test_replay_of_completed_event_needs_force_and_credits_nothing(
    cli: Cli, db: asyncpg.Connection
) -> None:
    user = await insert_user(db)
    event_id = await insert_event(db, status="completed")
    await credit(db, user["id"], event_id, 10, "cs_test_done")

    refused = await cli("replay", event_id)
    assert refused.code == 1
    assert "use --force" in refused.err
    assert (await event_row(db, event_id))["processing_status"] == "completed"

    forced = await cli("replay", event_id, "--force")
    assert forced.code == 0
    assert (await event_row(db, event_id))["processing_status"] == "received"
    assert await db.fetchval("SELECT credits_balance FROM users WHERE id = $1", user["id"]) == 10


async def test_replay_of_completed_status_filter_needs_force(cli: Cli) -> None:
    result = await cli("replay", "--status", "completed")
    assert result.code == 2
    assert "--force" in result.err


async def test_replay_unknown_id_exits_1(cli: Cli, db: asyncpg.Connection) -> None:
    known = await insert_event(db, status="failed")
    result = await cli("replay", known, "evt_missing_one")
    assert result.code == 1
    assert "not found: evt_missing_one" in result.err
    assert (await event_row(db, known))["processing_status"] == "received"


async def test_replay_needs_ids_or_a_status(cli: Cli, db: asyncpg.Connection) -> None:
    event_id = await insert_event(db, status="failed")
    assert (await cli("replay")).code == 2
    both = await cli("replay", event_id, "--status", "failed")
    assert both.code == 2
    assert (await event_row(db, event_id))["processing_status"] == "failed"


async def test_replay_of_many_events_shows_progress_and_enqueues_each(
    cli: Cli, db: asyncpg.Connection, clean_redis_url: str
) -> None:
    ids = [await insert_event(db, status="failed") for _ in range(260)]
    result = await cli("replay", "--status", "failed")
    assert result.code == 0
    assert "replaying" in result.out  # the progress bar
    assert "replayed 260 event(s)" in result.out
    assert "260 job(s) enqueued" in result.out
    assert await queued_event_ids(clean_redis_url) == sorted(ids)


async def test_replay_without_redis_leaves_events_received_for_the_sweeper(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    db: asyncpg.Connection,
) -> None:
    from webhook_worker.dev.embedded import free_port

    env = base_env(database_url, f"redis://127.0.0.1:{free_port()}/0")
    event_id = await insert_event(db, status="failed")
    result = await run_cli(capsys, monkeypatch, env, "replay", event_id)
    assert result.code == 1
    assert "sweeper" in result.err
    assert (await event_row(db, event_id))["processing_status"] == "received"


# --- stats ---------------------------------------------------------------------------------


async def test_stats_counts_events_credits_and_users(cli: Cli, db: asyncpg.Connection) -> None:
    user = await insert_user(db)
    await insert_user(db)  # no credits
    paid = await insert_event(db, status="completed")
    await credit(db, user["id"], paid, 30, "cs_test_stats")
    refund = await insert_event(db, event_type="charge.refunded", status="completed")
    await credit(db, user["id"], refund, -10, "cs_test_stats")
    await insert_event(db, status="failed", error="user_not_found")
    await insert_event(db, status="failed", error="old", age_seconds=3 * 86400)
    await insert_event(db, status="received", age_seconds=600)
    await insert_event(db, event_type="refund.failed", status="waiting", age_seconds=60)

    data = (await cli("stats", "--json")).json()
    assert data["events_by_status"] == {
        "received": 1,
        "processing": 0,
        "waiting": 1,
        "completed": 2,
        "failed": 2,
        "ignored": 0,
    }
    assert data["events_by_type"]["charge.refunded"] == {"completed": 1}
    assert data["events_by_type"]["checkout.session.completed"]["failed"] == 2
    assert data["failures_last_day"] == 1
    assert data["oldest_unprocessed_age_seconds"] >= 600
    assert data["credits_granted"] == 30
    assert data["credits_refunded"] == 10
    assert data["users_with_credits"] == 1
    assert data["credits_outstanding"] == 20
    assert data["waiting_events"] == 1 and data["oldest_waiting_at"] is not None

    table = await cli("stats")
    assert table.code == 0
    assert "events by status" in table.out and "charge.refunded" in table.out
    assert "users with credits" in table.out


# --- verify --------------------------------------------------------------------------------


async def test_verify_passes_on_a_migrated_database(cli: Cli, db: asyncpg.Connection) -> None:
    user = await insert_user(db)
    event_id = await insert_event(db, status="completed")
    await credit(db, user["id"], event_id, 5, "cs_test_ok")
    result = await cli("verify")
    assert result.code == 0, result.out
    assert "verify passed" in result.out
    assert "credit_transactions_one_purchase_per_session" in result.out
    assert (await cli("verify", "--json")).json()["ok"] is True


async def test_verify_prints_the_scope_it_runs_with_and_warns_on_risky_modes(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
) -> None:
    scoped = {**env, "STRIPE_CONNECT_ACCOUNTS": "acct_1Partner", "CREDIT_PRICES": "usd:100"}
    result = await run_cli(capsys, monkeypatch, scoped, "verify")
    assert result.code == 0, result.out
    assert "STRIPE_MODE=test; Connect accounts handled: acct_1Partner" in result.out
    assert "usd:100" in result.out
    assert "warn" not in result.out
    production = {**scoped, "APP_ENV": "production", "STRIPE_MODE": "test", "LOG_FORMAT": "json"}
    warned = await run_cli(capsys, monkeypatch, production, "verify", "--json")
    assert warned.code == 0  # a warning, not a failure
    warnings = [c for c in warned.json()["checks"] if c["warning"]]
    assert len(warnings) == 1
    assert "APP_ENV=production with STRIPE_MODE=test" in warnings[0]["detail"]


async def test_verify_fails_on_a_balance_that_differs_from_its_ledger(
    cli: Cli, db: asyncpg.Connection
) -> None:
    user = await insert_user(db)
    event_id = await insert_event(db, status="completed")
    await credit(db, user["id"], event_id, 5, "cs_test_drift")
    await db.execute("UPDATE users SET credits_balance = 7 WHERE id = $1", user["id"])
    result = await cli("verify")
    assert result.code == 1
    assert f"user {user['id']}: balance 7 != ledger 5" in result.out
    assert "verify FAILED: 1 problem(s)" in result.out


async def test_verify_fails_on_a_stuck_event(cli: Cli, db: asyncpg.Connection) -> None:
    stuck = await insert_event(db, status="processing", age_seconds=3600)
    await insert_event(db, status="received", age_seconds=1)  # fresh: not stuck
    data = (await cli("verify", "--json")).json()
    assert data["ok"] is False
    [problem] = [c for c in data["checks"] if not c["ok"]]
    assert problem["name"] == "stuck events"
    assert stuck in problem["detail"]


async def test_verify_names_a_missing_index_and_constraint(
    cli: Cli, db: asyncpg.Connection
) -> None:
    await db.execute("DROP INDEX credit_transactions_one_purchase_per_session")
    await db.execute("ALTER TABLE users DROP CONSTRAINT credits_balance_nonneg")
    result = await cli("verify")
    assert result.code == 1
    assert "- index credit_transactions_one_purchase_per_session: missing" in result.out
    assert "- constraint credits_balance_nonneg: missing" in result.out


async def test_verify_on_an_empty_database_lists_missing_tables(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    empty_database_url: str,
    clean_redis_url: str,
) -> None:
    env = base_env(empty_database_url, clean_redis_url)
    result = await run_cli(capsys, monkeypatch, env, "verify")
    assert result.code == 1
    for table in ("users", "stripe_events", "credit_transactions", "schema_migrations"):
        assert f"table {table} is missing" in result.out
    assert "not applied: 0001_users" in result.out


async def test_verify_without_database_url_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, clean_redis_url: str
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    env = base_env("postgresql://x@127.0.0.1:1/x", clean_redis_url)
    env.pop("DATABASE_URL")
    result = await run_cli(capsys, monkeypatch, env, "verify")
    assert result.code == 2
    assert "DATABASE_URL is not set" in result.err


# --- prune ---------------------------------------------------------------------------------


async def test_prune_dry_run_counts_and_prune_drops_old_payloads(
    cli: Cli, db: asyncpg.Connection
) -> None:
    old = await insert_event(db, status="completed", age_seconds=40 * 86400)
    old_failed = await insert_event(db, status="failed", age_seconds=40 * 86400)
    recent = await insert_event(db, status="completed", age_seconds=86400)

    dry = await cli("prune", "--older-than", "30", "--dry-run")
    assert dry.code == 0
    assert "would prune the raw payload of 1 event(s)" in dry.out
    assert (await event_row(db, old))["pruned"] is False

    done = await cli("prune", "--older-than", "30", "--json")
    assert done.json() == {"dry_run": False, "older_than_days": 30, "events": 1}
    assert (await event_row(db, old))["pruned"] is True
    assert (await event_row(db, old))["processing_status"] == "completed"
    assert (await event_row(db, old_failed))["pruned"] is False  # failed events keep payloads
    assert (await event_row(db, recent))["pruned"] is False


async def test_prune_rejects_zero_days(cli: Cli) -> None:
    result = await cli("prune", "--older-than", "0")
    assert result.code == 2


# --- replay with the real worker -------------------------------------------------------------


async def test_replayed_failed_event_completes_and_credits_once(
    cli: Cli, db: asyncpg.Connection, env: dict[str, str]
) -> None:
    user = await insert_user(db, email="late.signup@example.com")
    event_id = await insert_event(
        db, status="failed", attempts=1, error="user_not_found", email="late.signup@example.com"
    )
    result = await cli("replay", "--status", "failed")
    assert result.code == 0
    await run_burst_worker(env)

    row = await event_row(db, event_id)
    assert row["processing_status"] == "completed"
    assert row["attempts"] == 2
    assert await db.fetchval("SELECT credits_balance FROM users WHERE id = $1", user["id"]) == 10
    shown = (await cli("events", "show", event_id, "--json")).json()
    assert [(r["amount"], r["transaction_type"]) for r in shown["ledger"]] == [(10, "PURCHASE")]
    assert (await cli("verify")).code == 0


async def test_replayed_completed_event_credits_nothing(
    cli: Cli, db: asyncpg.Connection, env: dict[str, str]
) -> None:
    user = await insert_user(db, email="paid.once@example.com")
    event_id = await insert_event(db, email="paid.once@example.com", credits=25)
    assert (await cli("replay", event_id)).code == 0  # received: just enqueue it
    await run_burst_worker(env)
    assert (await event_row(db, event_id))["processing_status"] == "completed"
    assert await db.fetchval("SELECT credits_balance FROM users WHERE id = $1", user["id"]) == 25

    for _ in range(2):
        assert (await cli("replay", event_id, "--force")).code == 0
        await run_burst_worker(env)
        assert (await event_row(db, event_id))["processing_status"] == "completed"
    assert await db.fetchval("SELECT credits_balance FROM users WHERE id = $1", user["id"]) == 25
    assert await db.fetchval("SELECT count(*) FROM credit_transactions") == 1
    assert (await cli("verify")).code == 0


# --- send-test-event -------------------------------------------------------------------------


@pytest.fixture
def receiver_url(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    with running_receiver(env, tmp_path / "serve.log") as url:
        yield url


async def test_send_test_event_posts_a_signed_event_that_is_stored(
    cli: Cli, db: asyncpg.Connection, receiver_url: str
) -> None:
    await wait_for(lambda: receiver_healthy(receiver_url))
    url = f"{receiver_url}/webhooks/stripe"
    result = await cli(
        "send-test-event", "--url", url, "--email", "me@example.com", "--credits", "5"
    )
    assert result.code == 0, result.out + result.err
    assert "HTTP 200" in result.out and '"duplicate":false' in result.out.replace(" ", "")
    assert "me@example.com" not in result.out  # no raw email printed
    assert "whsec_" not in result.out
    [row] = await db.fetch("SELECT event_id, type, raw_data::text AS raw FROM stripe_events")
    assert row["event_id"] in result.out
    assert row["type"] == "checkout.session.completed"
    assert '"credits": "5"' in row["raw"] and "me@example.com" in row["raw"]

    data = (await cli("send-test-event", "--url", url, "--user-id", "7", "--json")).json()
    assert data["status_code"] == 200
    raw = await db.fetchval(
        "SELECT raw_data::text FROM stripe_events WHERE event_id = $1", data["event_id"]
    )
    assert '"client_reference_id": "7"' in raw


async def test_send_test_event_in_production_sends_only_the_smoke_test_type(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    db: asyncpg.Connection,
    receiver_url: str,
) -> None:
    await wait_for(lambda: receiver_healthy(receiver_url))
    url = f"{receiver_url}/webhooks/stripe"
    production = {**env, "APP_ENV": "production"}
    args = ("send-test-event", "--url", url, "--email", "me@example.com", "--credits", "5")
    result = await run_cli(capsys, monkeypatch, production, *args)
    assert result.code == 0, result.out + result.err
    assert "APP_ENV=production" in result.err and "--allow-credit" in result.err
    assert await db.fetchval("SELECT type FROM stripe_events") == "webhook_worker.smoke_test"

    result = await run_cli(capsys, monkeypatch, production, *args, "--allow-credit")
    assert result.code == 0, result.out + result.err
    assert "may credit" in result.err
    types = await db.fetch("SELECT type FROM stripe_events ORDER BY id")
    assert [r["type"] for r in types] == ["webhook_worker.smoke_test", "checkout.session.completed"]


async def test_send_test_event_exits_1_when_the_receiver_refuses(
    cli: Cli, db: asyncpg.Connection, receiver_url: str
) -> None:
    await wait_for(lambda: receiver_healthy(receiver_url))
    url = f"{receiver_url}/webhooks/stripe"
    result = await cli("send-test-event", "--url", url, "--secret", "whsec_not_the_right_one")
    assert result.code == 1
    assert "HTTP 400" in result.out
    assert await db.fetchval("SELECT count(*) FROM stripe_events") == 0


async def test_send_test_event_without_a_secret_exits_2(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET", raising=False)
    env = {k: v for k, v in env.items() if k != "STRIPE_WEBHOOK_SECRET"}
    env["DATA_DIR"] = str(tmp_path)  # no dev secret there either
    result = await run_cli(
        capsys, monkeypatch, env, "send-test-event", "--url", "http://127.0.0.1:9/x"
    )
    assert result.code == 2
    assert "STRIPE_WEBHOOK_SECRET" in result.err


async def test_send_test_event_falls_back_to_the_dev_secret(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    receiver_url: str,
    tmp_path: Path,
) -> None:
    await wait_for(lambda: receiver_healthy(receiver_url))
    (tmp_path / "dev_webhook_secret").write_text(TEST_SECRET + "\n")
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET", raising=False)
    env = {k: v for k, v in env.items() if k != "STRIPE_WEBHOOK_SECRET"}
    env["DATA_DIR"] = str(tmp_path)
    url = f"{receiver_url}/webhooks/stripe"
    result = await run_cli(capsys, monkeypatch, env, "send-test-event", "--url", url)
    assert result.code == 0, result.out + result.err
    assert "HTTP 200" in result.out


async def test_send_test_event_exits_1_when_nothing_listens(cli: Cli) -> None:
    from webhook_worker.dev.embedded import free_port

    result = await cli(
        "send-test-event", "--url", f"http://127.0.0.1:{free_port()}/webhooks/stripe"
    )
    assert result.code == 1
    assert "cannot POST" in result.err
