"""The /ops HTTP API through the receiver app (`receiver.create_app`), real Postgres and Redis."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Callable

import asyncpg
import httpx
import pytest

from tests.conftest import wait_for
from tests.ops_support import (
    credit,
    event_row,
    insert_event,
    insert_user,
    queued_event_ids,
    queued_jobs,
)
from webhook_worker import entrypoints
from webhook_worker.config import Settings
from webhook_worker.ops import http_api
from webhook_worker.ops.throttle import LoginThrottle

TOKEN = "ops-token-0123456789abcdef0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = entrypoints.receiver_with_options(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ops.test") as client:
            yield client


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(make_settings(OPS_TOKEN=TOKEN, OPS_ON_RECEIVER="true")):
        yield c


@pytest.fixture
async def client_without_token(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(make_settings(OPS_ON_RECEIVER="true")):
        yield c


# --- access ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/ops/events"),
        ("GET", "/ops/events/evt_x"),
        ("POST", "/ops/events/evt_x/replay"),
        ("POST", "/ops/replay"),
    ],
)
async def test_ops_api_is_404_when_ops_token_is_unset(
    client_without_token: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client_without_token.request(method, path, headers=AUTH)
    assert response.status_code == 404


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789abcdef"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer "},
    ],
    ids=["missing", "wrong", "longer", "wrong-scheme", "empty"],
)
async def test_ops_api_is_401_without_the_right_token(
    client: httpx.AsyncClient, db: asyncpg.Connection, headers: dict[str, str]
) -> None:
    event_id = await insert_event(db, status="failed")
    for method, path in (
        ("GET", "/ops/events"),
        ("GET", f"/ops/events/{event_id}"),
        ("POST", f"/ops/events/{event_id}/replay"),
        ("POST", "/ops/replay"),
    ):
        response = await client.request(method, path, headers=headers, json={"status": "failed"})
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert TOKEN not in response.text
    assert (await event_row(db, event_id))["processing_status"] == "failed"


# --- list / show -----------------------------------------------------------------------------


async def test_list_events_with_filters(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    failed = await insert_event(db, status="failed", error="user_not_found")
    await insert_event(db, status="completed")
    await insert_event(db, status="failed", age_seconds=5 * 86400)
    response = await client.get(
        "/ops/events", params={"status": "failed", "since": "1d", "limit": "10"}, headers=AUTH
    )
    assert response.status_code == 200
    events = response.json()["events"]
    assert [e["event_id"] for e in events] == [failed]
    assert events[0]["error_message"] == "user_not_found"
    assert len((await client.get("/ops/events", headers=AUTH)).json()["events"]) == 3
    waiting = await insert_event(db, event_type="refund.failed", status="waiting")
    response = await client.get("/ops/events", params={"status": "waiting"}, headers=AUTH)
    assert [e["event_id"] for e in response.json()["events"]] == [waiting]


async def test_list_events_by_status_reason(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    mismatch = await insert_event(db, status="ignored")
    other = await insert_event(db, status="ignored")
    await db.execute(
        "UPDATE stripe_events SET status_reason = $2 WHERE event_id = $1",
        mismatch,
        "livemode_mismatch",
    )
    await db.execute(
        "UPDATE stripe_events SET status_reason = $2 WHERE event_id = $1", other, "unhandled_type"
    )
    response = await client.get(
        "/ops/events", params={"status": "ignored", "reason": "livemode_mismatch"}, headers=AUTH
    )
    assert response.status_code == 200
    events = response.json()["events"]
    assert [(e["event_id"], e["status_reason"]) for e in events] == [
        (mismatch, "livemode_mismatch")
    ]
    shown = await client.get(f"/ops/events/{other}", headers=AUTH)
    assert shown.json()["status_reason"] == "unhandled_type"


@pytest.mark.parametrize(
    "params", [{"status": "bogus"}, {"since": "yesterday-ish"}, {"limit": "many"}, {"limit": "0"}]
)
async def test_list_events_rejects_bad_filters_with_400(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await client.get("/ops/events", params=params, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]


async def test_show_event_with_ledger_and_raw(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = await insert_user(db)
    event_id = await insert_event(db, status="completed")
    await credit(db, user["id"], event_id, 12, "cs_test_api")
    response = await client.get(f"/ops/events/{event_id}", headers=AUTH)
    assert response.status_code == 200
    data = response.json()
    assert data["processing_status"] == "completed"
    assert [(r["amount"], r["user_uuid"]) for r in data["ledger"]] == [(12, user["uuid"])]
    assert "raw_data" not in data
    raw = (await client.get(f"/ops/events/{event_id}?raw=true", headers=AUTH)).json()
    assert raw["raw_data"]["id"] == event_id


async def test_show_unknown_event_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/ops/events/evt_nope", headers=AUTH)
    assert response.status_code == 404


# --- replay ----------------------------------------------------------------------------------


async def test_replay_one_event_resets_and_enqueues(
    client: httpx.AsyncClient, db: asyncpg.Connection, clean_redis_url: str
) -> None:
    event_id = await insert_event(db, status="failed", attempts=8, error="user_not_found")
    response = await client.post(f"/ops/events/{event_id}/replay", headers=AUTH)
    assert response.status_code == 200
    assert response.json()["replayed"] == [event_id]
    assert response.json()["enqueued"] == 1
    row = await event_row(db, event_id)
    assert (row["processing_status"], row["attempts"]) == ("received", 8)
    assert await queued_jobs(clean_redis_url) == [[event_id]]


async def test_replay_unknown_event_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/ops/events/evt_nope/replay", headers=AUTH)
    assert response.status_code == 404


async def test_replay_completed_event_needs_force(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = await insert_user(db)
    event_id = await insert_event(db, status="completed")
    await credit(db, user["id"], event_id, 10, "cs_test_force")
    refused = await client.post(f"/ops/events/{event_id}/replay", headers=AUTH)
    assert refused.status_code == 409
    assert (await event_row(db, event_id))["processing_status"] == "completed"
    forced = await client.post(f"/ops/events/{event_id}/replay", headers=AUTH, json={"force": True})
    assert forced.status_code == 200
    assert (await event_row(db, event_id))["processing_status"] == "received"
    assert await db.fetchval("SELECT credits_balance FROM users WHERE id = $1", user["id"]) == 10


async def test_bulk_replay_dry_run_then_for_real(
    client: httpx.AsyncClient, db: asyncpg.Connection, clean_redis_url: str
) -> None:
    ids = [await insert_event(db, status="failed", error="e") for _ in range(3)]
    other = await insert_event(db, event_type="charge.refunded", status="failed")
    body = {"status": "failed", "type": "checkout.session.completed"}

    dry = await client.post("/ops/replay", headers=AUTH, json={**body, "dry_run": True})
    assert dry.status_code == 200
    assert dry.json()["dry_run"] is True
    assert {e["event_id"] for e in dry.json()["selected"]} == set(ids)
    assert {(await event_row(db, i))["processing_status"] for i in ids} == {"failed"}
    assert await queued_jobs(clean_redis_url) == []

    done = await client.post("/ops/replay", headers=AUTH, json=body)
    assert done.status_code == 200
    assert set(done.json()["replayed"]) == set(ids)
    assert {(await event_row(db, i))["processing_status"] for i in ids} == {"received"}
    assert (await event_row(db, other))["processing_status"] == "failed"
    assert await queued_event_ids(clean_redis_url) == sorted(ids)


async def test_bulk_replay_by_ids(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    first = await insert_event(db, status="failed")
    second = await insert_event(db, status="failed")
    response = await client.post("/ops/replay", headers=AUTH, json={"event_ids": [first]})
    assert response.json()["replayed"] == [first]
    assert (await event_row(db, second))["processing_status"] == "failed"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b"{}",
        b'{"event_ids": "evt_1"}',
        b'{"status": "bogus"}',
        b'{"status": "failed", "event_ids": ["evt_1"]}',
        b'{"status": "failed", "since": "whenever"}',
        b'{"status": "failed", "since": "99999999999d"}',
        b'{"status": "failed", "since": "9999-12-31T23:59:59-14:00"}',
        b'{"status": "failed", "until": "0000-01-01"}',
        b'{"status": "failed", "since": "1d", "until": "2d"}',
        b'{"status": "failed", "until": 5}',
    ],
)
async def test_bulk_replay_rejects_bad_bodies_with_400(
    client: httpx.AsyncClient, body: bytes
) -> None:
    response = await client.post("/ops/replay", headers=AUTH, content=body)
    assert response.status_code == 400
    assert response.json()["error"]


async def test_list_events_with_an_out_of_range_since_is_400(client: httpx.AsyncClient) -> None:
    for since in ("99999999999d", "9999-12-31T23:59:59-14:00"):
        response = await client.get("/ops/events", headers=AUTH, params={"since": since})
        assert response.status_code == 400
        assert "since" in response.json()["error"]


# --- replay brakes ---------------------------------------------------------------------------


@pytest.fixture
async def capped_client(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(make_settings(OPS_TOKEN=TOKEN, OPS_REPLAY_MAX="3", OPS_ON_RECEIVER="1")):
        yield c


async def test_bulk_replay_takes_at_most_ops_replay_max_per_call(
    capped_client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    ids = [await insert_event(db, status="failed", age_seconds=60 - i) for i in range(5)]
    first = await capped_client.post("/ops/replay", headers=AUTH, json={"status": "failed"})
    assert first.status_code == 200
    assert first.json()["replayed"] == ids[:3]  # oldest first, keyset order
    assert (first.json()["more"], first.json()["count"], first.json()["limit"]) == (True, 3, 3)
    second = await capped_client.post("/ops/replay", headers=AUTH, json={"status": "failed"})
    assert second.json()["replayed"] == ids[3:]
    assert second.json()["more"] is False
    assert {(await event_row(db, i))["processing_status"] for i in ids} == {"received"}


async def test_bulk_replay_by_ids_refuses_more_than_the_cap(
    capped_client: httpx.AsyncClient,
) -> None:
    body = {"event_ids": [f"evt_{i}" for i in range(4)]}
    response = await capped_client.post("/ops/replay", headers=AUTH, json=body)
    assert response.status_code == 400
    assert "OPS_REPLAY_MAX=3" in response.json()["error"]


async def test_bulk_replay_until_bounds_the_selection(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    old = await insert_event(db, status="failed", age_seconds=3 * 86400)
    await insert_event(db, status="failed")
    body = {"status": "failed", "until": "1d", "dry_run": True}
    response = await client.post("/ops/replay", headers=AUTH, json=body)
    assert [e["event_id"] for e in response.json()["selected"]] == [old]


async def test_bulk_dry_run_answers_a_count_and_the_first_rows_only(
    client: httpx.AsyncClient, db: asyncpg.Connection, clean_redis_url: str
) -> None:
    for _ in range(25):
        await insert_event(db, status="failed")
    dry = await client.post("/ops/replay", headers=AUTH, json={"status": "failed", "dry_run": True})
    assert dry.status_code == 200
    assert dry.json()["count"] == 25
    assert len(dry.json()["selected"]) == 20
    assert dry.json()["replayed"] == []
    assert (
        await db.fetchval("SELECT count(*) FROM stripe_events WHERE processing_status = 'failed'")
        == 25
    )
    assert await queued_jobs(clean_redis_url) == []


async def test_every_replay_logs_who_when_and_which_events(
    client: httpx.AsyncClient, db: asyncpg.Connection, log_stream: io.StringIO
) -> None:
    event_id = await insert_event(db, status="failed")
    response = await client.post("/ops/replay", headers=AUTH, json={"event_ids": [event_id]})
    assert response.status_code == 200
    [line] = [
        json.loads(raw)
        for raw in log_stream.getvalue().splitlines()
        if json.loads(raw).get("event") == "ops_replayed"
    ]
    assert line["who"] == {"operator": "ops", "client": "127.0.0.1"}
    assert line["event_ids"] == [event_id]
    assert line["at"] and line["count"] == 1
    assert TOKEN not in log_stream.getvalue()


async def test_wrong_tokens_in_parallel_are_answered_one_turn_apart() -> None:
    """Globally: four failures at once, from four addresses, take three turns' time."""
    throttle = LoginThrottle(spacing=0.2, free=100)
    started = time.monotonic()
    await asyncio.gather(*(throttle.failed(f"10.0.0.{i}") for i in range(4)))
    assert time.monotonic() - started >= 0.6


async def test_one_address_waits_longer_after_its_free_failures() -> None:
    throttle = LoginThrottle(spacing=0, free=1, base=0.3)
    started = time.monotonic()
    await throttle.failed("10.0.0.1")  # free
    await throttle.failed("10.0.0.1")  # 0.3 s
    await throttle.failed("10.0.0.1")  # 0.6 s
    assert time.monotonic() - started >= 0.9
    throttle.succeeded("10.0.0.1")
    assert len(throttle) == 0


async def test_the_throttle_remembers_a_bounded_number_of_addresses() -> None:
    throttle = LoginThrottle(spacing=0, free=5, max_addresses=3)
    for i in range(10):
        await throttle.failed(f"10.0.0.{i}")
    assert len(throttle) == 3


async def test_a_right_token_is_answered_while_wrong_ones_wait_their_turn(
    make_settings: Callable[..., Settings],
) -> None:
    throttle = LoginThrottle(spacing=0.5)
    settings = make_settings(OPS_TOKEN=TOKEN, OPS_ON_RECEIVER="true")
    app = entrypoints.receiver_with_options(settings)
    app.router.routes = [
        *[r for r in app.router.routes if not getattr(r, "path", "").startswith("/ops")],
        *http_api.ops_routes(settings, throttle),
    ]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ops.test") as client:
            bad = {"Authorization": "Bearer wrong"}
            wrong = [asyncio.create_task(client.get("/ops/events", headers=bad)) for _ in range(8)]
            await wait_for(lambda: len(throttle) == 1)  # the guesses are waiting
            assert (await client.get("/ops/events", headers=AUTH)).status_code == 200
            assert not all(task.done() for task in wrong)  # answered before the guesses
            assert [r.status_code for r in await asyncio.gather(*wrong)] == [401] * 8


async def test_an_oversized_ops_body_is_refused(client: httpx.AsyncClient) -> None:
    body = b'{"event_ids": ["' + b"e" * (3 * 1024 * 1024) + b'"]}'
    response = await client.post("/ops/replay", headers=AUTH, content=body)
    assert response.status_code == 400
    assert "2 MiB" in response.json()["error"]
