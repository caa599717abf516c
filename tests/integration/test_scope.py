"""Trust scope through real HTTP and real workers: only this account's money, in the
configured mode, mints credits (docs/stripe.md, "Wiring Stripe").

Each deployment is a real `webhook-worker serve` process and a real `webhook-worker work`
process on a database of its own; events are signed and POSTed the way Stripe sends them.
Every rule asserts the stored row, its status and reason, the ledger and the balance.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import TEST_SECRET, create_database, drop_database, sign, wait_for
from tests.ops_support import receiver_healthy, running_receiver
from tests.stripe_currencies import ZERO_DECIMAL
from tests.worker_support import spawn_worker, stop_worker, worker_env
from webhook_worker.ops.sample_events import checkout_session_event, encode_event

ALLOWED_ACCOUNT = "acct_1AllowedPartner01"
PRICES = "usd:100,eur:95,jpy:150,krw:1300"
FINAL = ("completed", "failed", "ignored")


@dataclass(frozen=True)
class Deployment:
    url: str
    dsn: str
    mode: str


@contextlib.contextmanager
def deployment(
    mode: str, postgres_admin_dsn: str, redis_url: str, template: str, logs: Path
) -> Iterator[Deployment]:
    """A receiver and a worker process with this STRIPE_MODE, on a database of their own and
    a Redis database of their own (two workers on one queue would take each other's jobs)."""
    dsn = asyncio.run(create_database(postgres_admin_dsn, template))
    redis = redis_url.rsplit("/", 1)[0] + ("/3" if mode == "live" else "/2")
    env = worker_env(
        dsn,
        redis,
        STRIPE_WEBHOOK_SECRET=TEST_SECRET,
        STRIPE_MODE=mode,
        STRIPE_CONNECT_ACCOUNTS=ALLOWED_ACCOUNT,
        CREDIT_PRICES=PRICES,
        MAX_CREDITS_PER_EVENT="100000",
        WORKER_POLL_DELAY_MS="5",
    )
    try:
        with running_receiver(env, logs / f"receiver-{mode}.log") as url:
            worker = spawn_worker(env, logs / f"worker-{mode}.log")
            try:
                asyncio.run(wait_for(lambda: receiver_healthy(url), timeout=30))
                yield Deployment(url, dsn, mode)
            finally:
                stop_worker(worker)
    finally:
        asyncio.run(drop_database(postgres_admin_dsn, dsn))


@pytest.fixture(scope="module")
def test_mode(
    postgres_admin_dsn: str, redis_url: str, template_database: str, tmp_path_factory: Any
) -> Iterator[Deployment]:
    logs = Path(tmp_path_factory.mktemp("scope-test"))
    with deployment("test", postgres_admin_dsn, redis_url, template_database, logs) as running:
        yield running


@pytest.fixture(scope="module")
def live_mode(
    postgres_admin_dsn: str, redis_url: str, template_database: str, tmp_path_factory: Any
) -> Iterator[Deployment]:
    logs = Path(tmp_path_factory.mktemp("scope-live"))
    with deployment("live", postgres_admin_dsn, redis_url, template_database, logs) as running:
        yield running


@contextlib.asynccontextmanager
async def connect(deployment: Deployment) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(deployment.dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def post(deployment: Deployment, event: dict[str, Any]) -> httpx.Response:
    body = encode_event(event)
    async with httpx.AsyncClient(base_url=deployment.url, timeout=10) as client:
        return await client.post(
            "/webhooks/stripe",
            content=body,
            headers={"Stripe-Signature": sign(body), "Content-Type": "application/json"},
        )


async def outcome(conn: asyncpg.Connection, event_id: str) -> asyncpg.Record:
    """The event's final row, once the worker has finished it."""

    async def final() -> asyncpg.Record | None:
        row = await conn.fetchrow(
            "SELECT processing_status, status_reason, error_message, stripe_created_at, "
            "(SELECT count(*) FROM credit_transactions t WHERE t.event_id = e.event_id) "
            "AS ledger_rows FROM stripe_events e WHERE event_id = $1",
            event_id,
        )
        return row if row is not None and row["processing_status"] in FINAL else None

    row: asyncpg.Record = await wait_for(final, timeout=30)
    return row


async def new_user(conn: asyncpg.Connection) -> int:
    email = f"{uuid.uuid4().hex}@example.com"
    return int(await conn.fetchval("INSERT INTO users (email) VALUES ($1) RETURNING id", email))


async def balance(conn: asyncpg.Connection, user_id: int) -> int:
    return int(await conn.fetchval("SELECT credits_balance FROM users WHERE id = $1", user_id))


async def deliver(deployment: Deployment, event: dict[str, Any]) -> asyncpg.Record:
    response = await post(deployment, event)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": True, "duplicate": False}
    async with connect(deployment) as conn:
        return await outcome(conn, event["id"])


def assert_ignored(row: asyncpg.Record, reason: str) -> None:
    assert (row["processing_status"], row["status_reason"]) == ("ignored", reason)
    assert row["error_message"] is None
    assert row["ledger_rows"] == 0


# --- mode ----------------------------------------------------------------------------------


async def test_a_live_event_in_a_test_deployment_is_stored_and_ignored(
    test_mode: Deployment,
) -> None:
    async with connect(test_mode) as conn:
        user = await new_user(conn)
    row = await deliver(
        test_mode, checkout_session_event(client_reference_id=str(user), livemode=True)
    )
    assert_ignored(row, "livemode_mismatch")
    async with connect(test_mode) as conn:
        assert await balance(conn, user) == 0


async def test_a_test_event_in_a_live_deployment_is_stored_and_ignored(
    live_mode: Deployment,
) -> None:
    live = live_mode
    async with connect(live) as conn:
        user = await new_user(conn)
    row = await deliver(live, checkout_session_event(client_reference_id=str(user)))
    assert_ignored(row, "livemode_mismatch")
    credited = await deliver(
        live, checkout_session_event(client_reference_id=str(user), credits=7, livemode=True)
    )
    assert (credited["processing_status"], credited["ledger_rows"]) == ("completed", 1)
    async with connect(live) as conn:
        assert await balance(conn, user) == 7  # only the live purchase


async def test_a_test_event_in_a_test_deployment_credits(test_mode: Deployment) -> None:
    async with connect(test_mode) as conn:
        user = await new_user(conn)
    row = await deliver(
        test_mode, checkout_session_event(client_reference_id=str(user), credits=12)
    )
    assert (row["processing_status"], row["status_reason"], row["ledger_rows"]) == (
        "completed",
        None,
        1,
    )
    async with connect(test_mode) as conn:
        assert await balance(conn, user) == 12


# --- Connect -------------------------------------------------------------------------------


async def test_an_event_from_an_unlisted_connected_account_is_ignored(
    test_mode: Deployment,
) -> None:
    async with connect(test_mode) as conn:
        user = await new_user(conn)
    event = checkout_session_event(client_reference_id=str(user), account="acct_123")
    assert_ignored(await deliver(test_mode, event), "connect_account_not_allowed")
    async with connect(test_mode) as conn:
        assert await balance(conn, user) == 0


async def test_a_listed_connected_account_resolves_against_the_platform_users(
    test_mode: Deployment,
) -> None:
    """docs/stripe.md: a listed account's references (id, UUID, email) name platform users."""
    async with connect(test_mode) as conn:
        user = await new_user(conn)
        user_uuid = str(await conn.fetchval("SELECT uuid FROM users WHERE id = $1", user))
    by_id = checkout_session_event(
        client_reference_id=str(user), credits=3, account=ALLOWED_ACCOUNT
    )
    by_uuid = checkout_session_event(
        client_reference_id=user_uuid, credits=4, account=ALLOWED_ACCOUNT
    )
    for event in (by_id, by_uuid):
        row = await deliver(test_mode, event)
        assert (row["processing_status"], row["ledger_rows"]) == ("completed", 1)
    async with connect(test_mode) as conn:
        assert await balance(conn, user) == 7


# --- thin events ---------------------------------------------------------------------------


def thin_event(**overrides: Any) -> dict[str, Any]:
    """An event destination's thin event, shaped as docs.stripe.com/api/v2/core/events."""
    event = {
        "id": f"evt_test_65R9{uuid.uuid4().hex}",
        "object": "v2.core.event",
        "type": "v1.billing.meter.error_report_triggered",
        "livemode": False,
        "created": "2024-09-17T06:20:52.246Z",
        "context": None,
        "related_object": {
            "id": "mtr_test_61R9IeFRRvrcLbS6xA41IH0ROESxB1VH",
            "type": "billing.meter",
            "url": "/v1/billing/meters/mtr_test_61R9IeFRRvrcLbS6xA41IH0ROESxB1VH",
        },
    }
    event.update(overrides)
    return event


async def test_a_thin_event_is_stored_with_its_time_and_ignored(test_mode: Deployment) -> None:
    row = await deliver(test_mode, thin_event())
    assert_ignored(row, "thin_event")
    assert row["stripe_created_at"].isoformat() == "2024-09-17T06:20:52.246000+00:00"


async def test_a_thin_event_is_verified_as_strictly_as_any_other(test_mode: Deployment) -> None:
    event = thin_event()
    body = encode_event(event)
    async with httpx.AsyncClient(base_url=test_mode.url, timeout=10) as client:
        response = await client.post(
            "/webhooks/stripe",
            content=body,
            headers={"Stripe-Signature": sign(body, "whsec_other_secret_0000000000")},
        )
        naive = encode_event(thin_event(created="2024-09-17T06:20:52"))
        unparsable = await client.post(
            "/webhooks/stripe", content=naive, headers={"Stripe-Signature": sign(naive)}
        )
    assert response.status_code == 400
    assert unparsable.status_code == 400
    assert unparsable.json()["reason"] == "bad_created"
    async with connect(test_mode) as conn:
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM stripe_events WHERE event_id = $1", event["id"]
            )
            == 0
        )


# --- currency ------------------------------------------------------------------------------


def priced_session(user: int, currency: str, amount: int, **overrides: Any) -> dict[str, Any]:
    event = checkout_session_event(credits=None, amount_total=amount, client_reference_id=str(user))
    event["data"]["object"].update(currency=currency, **overrides)
    return event


async def test_amounts_credit_by_the_price_of_their_own_currency(test_mode: Deployment) -> None:
    async with connect(test_mode) as conn:
        user = await new_user(conn)
    for currency, amount in (("usd", 1000), ("eur", 1900), ("jpy", 1000)):
        row = await deliver(test_mode, priced_session(user, currency, amount))
        assert (row["processing_status"], row["ledger_rows"]) == ("completed", 1)
    async with connect(test_mode) as conn:
        assert await balance(conn, user) == 10 + 20 + 6  # 1000//100, 1900//95, 1000//150


async def test_zero_decimal_currencies_never_credit_by_a_usd_price(test_mode: Deployment) -> None:
    async with connect(test_mode) as conn:
        users = {currency: await new_user(conn) for currency in ZERO_DECIMAL}
    events = {c: priced_session(users[c], c, 1000) for c in ZERO_DECIMAL}
    responses = await asyncio.gather(*(post(test_mode, event) for event in events.values()))
    assert [r.status_code for r in responses] == [200] * len(ZERO_DECIMAL)
    async with connect(test_mode) as conn:
        for currency, event in events.items():
            row = await outcome(conn, event["id"])
            if currency == "jpy":
                assert row["processing_status"] == "completed"
                assert await balance(conn, users[currency]) == 6  # 1000 // 150, not 1000 // 100
            elif currency == "krw":
                assert row["processing_status"] == "failed"  # 1000 won < 1300 won a credit
                assert "below the price of one credit (1300 krw)" in row["error_message"]
                assert await balance(conn, users[currency]) == 0
            else:
                assert row["processing_status"] == "failed"
                assert f"no credit price for currency '{currency}'" in row["error_message"]
                assert "CREDIT_PRICES=" in row["error_message"]
                assert row["ledger_rows"] == 0
                assert await balance(conn, users[currency]) == 0


# --- what counts as a credits purchase -----------------------------------------------------


@pytest.mark.parametrize(
    "session",
    [
        {"mode": "setup", "amount_total": None, "payment_status": "no_payment_required"},
        {"mode": "payment", "amount_total": 0, "payment_status": "no_payment_required"},
    ],
    ids=["setup", "zero-amount"],
)
async def test_sessions_that_are_not_credits_purchases_are_ignored(
    test_mode: Deployment, session: dict[str, Any]
) -> None:
    async with connect(test_mode) as conn:
        user = await new_user(conn)
    event = priced_session(user, "usd", 0, **session)
    assert_ignored(await deliver(test_mode, event), "not_a_credit_purchase")
    async with connect(test_mode) as conn:
        assert await balance(conn, user) == 0


async def test_a_subscription_session_links_its_customer_and_credits_nothing(
    test_mode: Deployment,
) -> None:
    """Its first invoice's invoice.paid credits the first period (issue 18)."""
    async with connect(test_mode) as conn:
        user = await new_user(conn)
    event = priced_session(
        user, "usd", 2000, mode="subscription", customer=f"cus_Scope{user}", payment_intent=None
    )
    event["data"]["object"]["metadata"]["credits"] = "100"
    row = await deliver(test_mode, event)
    assert (row["processing_status"], row["status_reason"]) == ("completed", "subscription_linked")
    assert row["ledger_rows"] == 0
    async with connect(test_mode) as conn:
        assert await balance(conn, user) == 0
        linked = await conn.fetchval("SELECT stripe_customer_id FROM users WHERE id = $1", user)
        assert linked == f"cus_Scope{user}"


async def test_a_bad_metadata_credits_still_fails_loudly(test_mode: Deployment) -> None:
    async with connect(test_mode) as conn:
        user = await new_user(conn)
    event = checkout_session_event(credits=None, client_reference_id=str(user))
    event["data"]["object"]["metadata"]["credits"] = "-3"
    row = await deliver(test_mode, event)
    assert row["processing_status"] == "failed"
    assert "metadata.credits='-3' is not a positive integer" in row["error_message"]
    assert row["ledger_rows"] == 0


async def test_credits_above_the_ceiling_fail_and_credit_nothing(test_mode: Deployment) -> None:
    async with connect(test_mode) as conn:
        user = await new_user(conn)
    row = await deliver(
        test_mode, checkout_session_event(client_reference_id=str(user), credits=100001)
    )
    assert row["processing_status"] == "failed"
    assert "MAX_CREDITS_PER_EVENT=100000" in row["error_message"]
    assert row["ledger_rows"] == 0
    async with connect(test_mode) as conn:
        assert await balance(conn, user) == 0


# --- property: out of scope never writes the ledger ----------------------------------------

HANDLED = [
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "charge.refunded",
]
SCOPE = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
out_of_scope = st.one_of(
    # the other mode, from the platform or any account
    st.tuples(st.just(True), st.sampled_from([None, ALLOWED_ACCOUNT, "acct_1Other"])),
    # the configured mode, from an account that is not listed
    st.tuples(st.just(False), st.sampled_from(["acct_1Other", "acct_123", "acct_" + "9" * 16])),
)


@SCOPE
@given(
    scope=out_of_scope,
    event_type=st.sampled_from([*HANDLED, "payment_intent.succeeded", "invoice.paid"]),
    credits=st.one_of(st.none(), st.integers(1, 10**6).map(str)),
    currency=st.sampled_from(["usd", "eur", "jpy", "gbp"]),
    amount=st.integers(0, 10**7),
    mode=st.sampled_from(["payment", "subscription", "setup"]),
    by_uuid=st.booleans(),
)
async def test_out_of_scope_events_never_write_the_ledger(
    test_mode: Deployment,
    scope: tuple[bool, str | None],
    event_type: str,
    credits: str | None,
    currency: str,
    amount: int,
    mode: str,
    by_uuid: bool,
) -> None:
    livemode, account = scope
    async with connect(test_mode) as conn:
        user = await new_user(conn)
        reference = str(await conn.fetchval("SELECT uuid FROM users WHERE id = $1", user))
    event = checkout_session_event(
        event_type=event_type,
        credits=None,
        amount_total=amount,
        client_reference_id=reference if by_uuid else str(user),
        account=account,
        livemode=livemode,
    )
    session = event["data"]["object"]
    session.update(currency=currency, mode=mode)
    if credits is not None:
        session["metadata"]["credits"] = credits
    if event_type == "charge.refunded":
        session.update(
            object="charge", amount=amount, amount_captured=amount, amount_refunded=amount
        )
    row = await deliver(test_mode, event)
    expected = "livemode_mismatch" if livemode else "connect_account_not_allowed"
    assert_ignored(row, expected)
    async with connect(test_mode) as conn:
        assert await balance(conn, user) == 0
        assert (
            await conn.fetchval("SELECT count(*) FROM credit_transactions WHERE user_id = $1", user)
            == 0
        )


# --- ops see the reasons -------------------------------------------------------------------


async def test_ops_list_show_and_count_ignored_events_by_reason(
    test_mode: Deployment,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.ops_support import run_cli

    event = checkout_session_event(client_reference_id="1", livemode=True)
    await deliver(test_mode, event)
    env = {"DATABASE_URL": test_mode.dsn, "APP_ENV": "test", "LOG_FORMAT": "console"}
    listed = await run_cli(
        capsys,
        monkeypatch,
        env,
        "events",
        "list",
        "--status",
        "ignored",
        "--reason",
        "livemode_mismatch",
        "--json",
    )
    assert listed.code == 0, listed.err
    rows = listed.json()
    assert event["id"] in {row["event_id"] for row in rows}
    assert {row["status_reason"] for row in rows} == {"livemode_mismatch"}
    shown = await run_cli(capsys, monkeypatch, env, "events", "show", event["id"])
    assert "livemode_mismatch" in shown.out
    stats = await run_cli(capsys, monkeypatch, env, "stats", "--json")
    assert stats.json()["ignored_by_reason"]["livemode_mismatch"] >= 1
    table = await run_cli(capsys, monkeypatch, env, "stats")
    assert "ignored events by reason" in table.out
