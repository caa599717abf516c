"""The ops service layer (`webhook_worker/ops/`) and `sql/verification.sql`."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import asyncpg
import pytest

from tests.ops_support import event_row, insert_event, insert_user
from webhook_worker.errors import ConfigError
from webhook_worker.ops import event_sender, listing, replay, values, verify

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2024, 6, 10, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-06-01", datetime(2024, 6, 1, tzinfo=UTC)),
        ("2024-06-01T08:30:00", datetime(2024, 6, 1, 8, 30, tzinfo=UTC)),
        ("2024-06-01T08:30:00+02:00", datetime(2024, 6, 1, 6, 30, tzinfo=UTC)),
        ("2024-06-01T08:30:00Z", datetime(2024, 6, 1, 8, 30, tzinfo=UTC)),
        ("30m", NOW - timedelta(minutes=30)),
        ("24h", NOW - timedelta(hours=24)),
        ("7d", NOW - timedelta(days=7)),
        ("2w", NOW - timedelta(weeks=2)),
        (None, None),
        ("  ", None),
    ],
)
def test_parse_since(text: str | None, expected: datetime | None) -> None:
    assert values.parse_since(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "7 days ago", "2024-13-01", "-1d"])
def test_parse_since_rejects_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ConfigError, match="--since"):
        values.parse_since(text)


def test_check_status_names_the_valid_statuses() -> None:
    assert values.check_status("failed") == "failed"
    with pytest.raises(ConfigError, match=r"received \| processing"):
        values.check_status("done")


def test_jsonable_turns_database_values_into_json_types() -> None:
    value = {
        "at": NOW,
        "uuid": UUID(int=1),
        "n": Decimal("5"),
        "x": Decimal("1.5"),
        "rows": [(1, NOW)],
    }
    assert values.jsonable(value) == {
        "at": "2024-06-10T12:00:00+00:00",
        "uuid": "00000000-0000-0000-0000-000000000001",
        "n": 5,
        "x": 1.5,
        "rows": [[1, "2024-06-10T12:00:00+00:00"]],
    }


def test_build_test_event_for_a_checkout_targets_the_chosen_user() -> None:
    by_email = event_sender.build_test_event(email="a@example.com", credits=7)
    session = by_email["data"]["object"]
    assert by_email["type"] == "checkout.session.completed"
    assert by_email["id"].startswith("evt_") and by_email["livemode"] is False
    assert session["customer_details"]["email"] == "a@example.com"
    assert session["metadata"] == {"credits": "7"}
    assert session["payment_status"] == "paid"
    assert (
        event_sender.build_test_event(user_id="42")["data"]["object"]["client_reference_id"] == "42"
    )
    uuid = "7f1c8e9a-1d2b-4c3d-9e8f-0a1b2c3d4e5f"
    assert (
        event_sender.build_test_event(user_uuid=uuid)["data"]["object"]["metadata"]["user_uuid"]
        == uuid
    )


def test_build_test_event_for_refunds_and_other_types() -> None:
    refund = event_sender.build_test_event("charge.refunded", payment_intent="pi_test_1")
    assert refund["data"]["object"]["payment_intent"] == "pi_test_1"
    with pytest.raises(ConfigError, match="--payment-intent"):
        event_sender.build_test_event("charge.refunded")
    smoke = event_sender.build_test_event(event_sender.SMOKE_EVENT_TYPE)
    assert smoke["type"] == event_sender.SMOKE_EVENT_TYPE
    assert (
        event_sender.build_test_event("customer.created")["data"]["object"]["object"] == "customer"
    )


def test_build_test_event_for_a_credit_note_refunds_the_named_invoice() -> None:
    note = event_sender.build_test_event("credit_note.created", invoice="in_test_1", credits=5)
    obj = note["data"]["object"]
    assert (note["type"], obj["object"], obj["invoice"]) == (
        "credit_note.created",
        "credit_note",
        "in_test_1",
    )
    assert obj["amount"] == 500 and obj["type"] == "post_payment"
    with pytest.raises(ConfigError, match="--invoice"):
        event_sender.build_test_event("credit_note.created")


async def test_replay_leaves_an_event_that_changed_after_selection(db: asyncpg.Connection) -> None:
    moved = await insert_event(db, status="failed")
    stays = await insert_event(db, status="failed")
    selection = await replay.select_replay(db, status="failed")
    await db.execute(
        "UPDATE stripe_events SET processing_status = 'completed' WHERE event_id = $1", moved
    )
    result = await replay.replay_events(db, None, selection)
    assert result.replayed == [stays]
    assert result.skipped == [
        {"event_id": moved, "reason": "its status changed meanwhile; not replayed"}
    ]
    assert (await event_row(db, moved))["processing_status"] == "completed"


async def test_select_replay_refuses_ids_and_filters_together(db: asyncpg.Connection) -> None:
    with pytest.raises(ConfigError, match="not both"):
        await replay.select_replay(db, event_ids=["evt_1"], status="failed")
    with pytest.raises(ConfigError, match="--status"):
        await replay.select_replay(db)


async def test_list_events_redacts_emails_in_error_messages(db: asyncpg.Connection) -> None:
    await insert_event(db, status="failed", error="no user for someone@example.com")
    [event] = await listing.list_events(db, status="failed")
    assert "someone@example.com" not in event["error_message"]


async def test_verify_reports_every_check_by_name(db: asyncpg.Connection) -> None:
    report = await verify.verify(db, stale_after_seconds=120)
    names = {check.name for check in report.checks}
    assert report.ok
    assert {f"table {t}" for t in verify.EXPECTED_COLUMNS} <= names
    assert {f"constraint {c}" for c in verify.EXPECTED_CONSTRAINTS} <= names
    assert {f"index {i}" for i in verify.EXPECTED_INDEXES} <= names
    assert {f"function {f}" for f in verify.EXPECTED_FUNCTIONS} <= names
    assert {"migrations", "balances", "stuck events", "users by email"} <= names
    assert {f"values {name}" for name in verify.EXPECTED_CHECK_VALUES} <= names
    assert "payment states" in names


async def test_verify_names_a_status_check_without_waiting_and_a_drifted_payment(
    db: asyncpg.Connection,
) -> None:
    await db.execute("ALTER TABLE stripe_events DROP CONSTRAINT stripe_events_status_check")
    await db.execute(
        "ALTER TABLE stripe_events ADD CONSTRAINT stripe_events_status_check CHECK "
        "(processing_status IN ('received', 'processing', 'completed', 'failed', 'ignored'))"
    )
    await db.execute("INSERT INTO payment_states (payment_intent_id, taken) VALUES ('pi_x', 5)")
    report = await verify.verify(db, stale_after_seconds=120)
    problems = {c.name: c.detail for c in report.problems}
    assert problems["values stripe_events_status_check"].startswith("does not accept waiting")
    assert "pi_x: taken 5 != ledger 0" in problems["payment states"]


async def test_verify_names_a_missing_ledger_function(db: asyncpg.Connection) -> None:
    await db.execute("DROP FUNCTION ledger_credit_many")
    report = await verify.verify(db, stale_after_seconds=120)
    assert not report.ok
    assert [c.name for c in report.problems if c.name.startswith("function")] == [
        "function ledger_credit_many"
    ]


async def test_verify_names_a_missing_column(db: asyncpg.Connection) -> None:
    await db.execute("ALTER TABLE users DROP COLUMN stripe_customer_id")
    report = await verify.verify(db, stale_after_seconds=120)
    assert [c.detail for c in report.problems if c.name == "table users"] == [
        "users lacks column(s): stripe_customer_id"
    ]


async def test_verify_names_host_user_columns_that_block_creating_users_by_email(
    db: asyncpg.Connection,
) -> None:
    await db.execute("ALTER TABLE users ADD COLUMN display_name TEXT NOT NULL DEFAULT ''")
    await db.execute("ALTER TABLE users ALTER COLUMN display_name DROP DEFAULT")
    await db.execute("ALTER TABLE users ADD COLUMN nickname TEXT NOT NULL DEFAULT 'x'")
    report = await verify.verify(db, stale_after_seconds=120)
    [problem] = [c for c in report.problems if c.name == "users by email"]
    assert problem.detail.startswith("users.display_name NOT NULL without a default")
    assert "nickname" not in problem.detail  # it has a default
    await db.execute("ALTER TABLE users ALTER COLUMN display_name SET DEFAULT ''")
    assert (await verify.verify(db, stale_after_seconds=120)).ok


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
async def test_verification_sql_runs_by_hand_with_psql(
    database_url: str, db: asyncpg.Connection
) -> None:
    user = await insert_user(db, balance=3)  # no ledger rows: a drifted balance to report
    await insert_event(db, status="failed", error="user_not_found")
    result = subprocess.run(
        [
            "psql",
            database_url,
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            str(ROOT / "sql/verification.sql"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "credit_transactions_one_purchase_per_session" in result.stdout
    assert "user_not_found" in result.stdout
    drift = result.stdout.split("differ from their ledger sum")[1]
    assert f" {user['id']} |" in drift
