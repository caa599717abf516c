"""The receiver through HTTP (ASGI, lifespan run), against the test's own Postgres and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncpg
import httpx
import pytest
from arq.connections import ArqRedis
from prometheus_client import REGISTRY

from tests.conftest import SECOND_SECRET, TEST_SECRET, sign
from tests.worker_support import queued_event_ids
from webhook_worker import job_queue as queue
from webhook_worker.cli import main as cli_main
from webhook_worker.config import Settings
from webhook_worker.dev.embedded import free_port
from webhook_worker.entrypoints import receiver_from_env
from webhook_worker.errors import ConfigError
from webhook_worker.ops.sample_events import checkout_session_event, encode_event
from webhook_worker.receiver.app import create_app
from webhook_worker.receiver.body import SMALL_BODY, BodyBudget, Overloaded, read_body
from webhook_worker.receiver.endpoint import WEBHOOK_PATHS
from webhook_worker.receiver.group_commit import AfterCommitHook

URL = "/webhooks/stripe"
MakeSettings = Callable[..., Settings]


@contextlib.asynccontextmanager
async def serve(
    settings: Settings, *, after_commit_hook: AfterCommitHook | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, and a client that talks to it in-process."""
    app = create_app(settings, after_commit_hook=after_commit_hook)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
            yield client


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(settings) as c:
        yield c


@pytest.fixture
async def redis_client(clean_redis_url: str, settings: Settings) -> AsyncIterator[ArqRedis]:
    r = queue.redis_from_url(clean_redis_url)
    r.default_queue_name = settings.queue_name
    yield r
    await r.aclose()


def _body(**kwargs: Any) -> tuple[str, bytes]:
    event = checkout_session_event(**kwargs)
    return event["id"], encode_event(event)


async def post_signed(
    client: httpx.AsyncClient, body: bytes, *, url: str = URL, secret: str = TEST_SECRET
) -> httpx.Response:
    return await client.post(
        url, content=body, headers={"Stripe-Signature": sign(body, secret), **_json()}
    )


def _json() -> dict[str, str]:
    return {"Content-Type": "application/json"}


async def count_rows(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM stripe_events"))


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- the bad-input matrix: status and nothing stored ----------------------------------------

NOW = int(time.time())
EVENT_ID, BODY = _body()
V1 = sign(BODY).split("v1=")[1]


def _header_cases() -> dict[str, tuple[bytes, dict[str, str]]]:
    """name → (body, headers); each must be answered 400 with nothing stored."""
    ts = int(time.time())
    changed = BODY.replace(b'"livemode":false', b'"livemode":fals ', 1)
    non_utf8 = BODY.replace(b"checkout.session.completed", b"checkout.session.\xffompleted")
    no_event_id = encode_event({"object": "event", "type": "checkout.session.completed"})
    no_type = encode_event({"id": "evt_test_notype", "object": "event"})
    return {
        "missing_header": (BODY, {}),
        "empty_header": (BODY, {"Stripe-Signature": ""}),
        "header_without_v1": (BODY, {"Stripe-Signature": f"t={ts}"}),
        "only_v0": (BODY, {"Stripe-Signature": sign(BODY, scheme="v0")}),
        "garbage_header": (BODY, {"Stripe-Signature": "this is not a signature"}),
        "t_abc": (BODY, {"Stripe-Signature": f"t=abc,v1={V1}"}),
        "wrong_secret": (BODY, {"Stripe-Signature": sign(BODY, "whsec_not_the_right_one_123")}),
        "body_changed_by_one_byte": (changed, {"Stripe-Signature": sign(BODY)}),
        "timestamp_400s_past": (BODY, {"Stripe-Signature": sign(BODY, timestamp=ts - 400)}),
        "timestamp_400s_future": (BODY, {"Stripe-Signature": sign(BODY, timestamp=ts + 400)}),
        "non_utf8_body": (non_utf8, {"Stripe-Signature": sign(non_utf8)}),
        "signed_non_json": (b"hello, world", {"Stripe-Signature": sign(b"hello, world")}),
        "signed_json_without_evt_id": (no_event_id, {"Stripe-Signature": sign(no_event_id)}),
        "signed_json_without_type": (no_type, {"Stripe-Signature": sign(no_type)}),
    }


EXPECTED_REASONS = {
    "missing_header": "missing_header",
    "empty_header": "missing_header",
    "header_without_v1": "no_v1_signature",
    "only_v0": "no_v1_signature",
    "garbage_header": "malformed_header",
    "t_abc": "malformed_header",
    "wrong_secret": "signature_mismatch",
    "body_changed_by_one_byte": "signature_mismatch",
    "timestamp_400s_past": "timestamp_too_old",
    "timestamp_400s_future": "timestamp_in_future",
    "non_utf8_body": "non_utf8_body",
    "signed_non_json": "not_json",
    "signed_json_without_evt_id": "bad_event_id",
    "signed_json_without_type": "missing_type",
}


@pytest.mark.parametrize("case", sorted(EXPECTED_REASONS))
async def test_bad_input_is_rejected_with_400_and_nothing_stored(
    case: str, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    body, headers = _header_cases()[case]
    response = await client.post(URL, content=body, headers={**headers, **_json()})
    assert response.status_code == 400
    assert response.json()["reason"] == EXPECTED_REASONS[case]
    assert await count_rows(db) == 0


async def test_non_ascii_v1_is_rejected_with_400(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    # httpx refuses to encode non-ASCII header text, so send the raw UTF-8 bytes.
    header = f"t={int(time.time())},v1=".encode() + "é".encode() * 32
    response = await client.post(URL, content=BODY, headers={b"Stripe-Signature": header})
    assert response.status_code == 400
    assert response.json()["reason"] == "non_ascii_header"
    assert await count_rows(db) == 0


async def test_signature_failures_are_counted_by_reason(client: httpx.AsyncClient) -> None:
    before = metric("webhook_signature_failures_total", reason="signature_mismatch")
    await post_signed(client, BODY, secret="whsec_not_the_right_one_123")
    assert metric("webhook_signature_failures_total", reason="signature_mismatch") == before + 1


async def test_body_over_the_cap_declared_by_content_length_gets_413(
    make_settings: MakeSettings, db: asyncpg.Connection
) -> None:
    before = metric("webhook_requests_total", outcome="too_large", reason="body_too_large")
    body = b'{"id":"evt_big","type":"x","pad":"' + b"a" * 5000 + b'"}'
    async with serve(make_settings(MAX_BODY_BYTES="4096")) as client:
        response = await post_signed(client, body)
    assert response.status_code == 413
    assert await count_rows(db) == 0
    assert metric("webhook_requests_total", outcome="too_large", reason="body_too_large") == (
        before + 1
    )


async def test_streamed_body_over_the_cap_without_content_length_gets_413(
    make_settings: MakeSettings, db: asyncpg.Connection
) -> None:
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while sent < 10 * 1024 * 1024:
            sent += 1024
            yield b"a" * 1024

    async with serve(make_settings(MAX_BODY_BYTES="4096")) as client:
        response = await client.post(URL, content=endless(), headers={"Stripe-Signature": "x"})
    assert response.status_code == 413
    assert await count_rows(db) == 0


async def test_get_on_the_webhook_route_is_405(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        response = await client.request(method, URL)
        assert response.status_code == 405, method
    assert await count_rows(db) == 0


async def test_escaped_nul_in_a_string_is_400_not_500(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    event = checkout_session_event(metadata={"note": "bad\x00byte"})
    body = encode_event(event)
    assert b"\\u0000" in body
    response = await post_signed(client, body)
    assert response.status_code == 400
    assert response.json()["reason"] == "nul_character"
    assert await count_rows(db) == 0


async def test_huge_integer_in_the_data_is_stored_with_its_digits(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    event_id, body = _body()
    digits = "123456789012345678901234567890123456789"
    body = body.replace(b'"amount_total":1000', f'"amount_total":{digits}'.encode())
    assert digits.encode() in body
    response = await post_signed(client, body)
    assert response.status_code == 200
    raw = await db.fetchval(
        "SELECT raw_data->'data'->'object'->>'amount_total' FROM stripe_events WHERE event_id = $1",
        event_id,
    )
    assert raw == digits


async def test_huge_integer_as_created_is_400(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    body = b'{"id":"evt_test_huge","type":"x","created":123456789012345678901234567890}'
    response = await post_signed(client, body)
    assert response.status_code == 400
    assert await count_rows(db) == 0


async def test_deeply_nested_json_is_400_not_500(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    body = b'{"id":"evt_test_deep","type":"x","data":' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = await post_signed(client, body)
    assert response.status_code == 400
    assert await count_rows(db) == 0


async def test_nesting_just_under_the_parser_limit_is_stored(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    body = b'{"id":"evt_test_deep_ok","type":"x","data":' + b"[" * 1000 + b"]" * 1000 + b"}"
    response = await post_signed(client, body)
    assert response.status_code == 200
    assert await count_rows(db) == 1


# --- accepted ----------------------------------------------------------------------------------


async def test_a_new_event_is_stored_received_and_answered_not_duplicate(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    event_id, body = _body()
    response = await post_signed(client, body)
    assert response.status_code == 200
    assert response.json() == {"received": True, "duplicate": False}
    row = await db.fetchrow(
        "SELECT type, livemode, processing_status, raw_data::text AS raw FROM stripe_events"
        " WHERE event_id = $1",
        event_id,
    )
    assert row is not None
    assert (row["type"], row["livemode"], row["processing_status"]) == (
        "checkout.session.completed",
        False,
        "received",
    )
    assert json.loads(row["raw"]) == json.loads(body)


async def test_the_answer_is_json_with_its_length(client: httpx.AsyncClient) -> None:
    _, body = _body()
    response = await post_signed(client, body)
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)


async def test_a_client_gone_mid_body_stores_nothing(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """The body never fully arrived: no row, and a 400 that nobody reads but the log counts."""
    _, body = _body()
    app = create_app(settings)
    messages = [
        {"type": "http.request", "body": body[:100], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"stripe-signature", sign(body, TEST_SECRET).encode())]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": URL, "raw_path": URL.encode(), "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 1), "server": None,
    }  # fmt: skip
    async with app.router.lifespan_context(app):
        await app(scope, receive, send)
    assert sent[0]["status"] == 400
    assert await count_rows(db) == 0


async def test_one_valid_v1_beside_a_bad_one_is_accepted(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    _, body = _body()
    header = sign(body).replace(",v1=", f",v1={'0' * 64},v1=")
    response = await client.post(URL, content=body, headers={"Stripe-Signature": header})
    assert response.status_code == 200
    assert await count_rows(db) == 1


async def test_a_body_signed_with_the_second_secret_is_accepted(
    make_settings: MakeSettings, db: asyncpg.Connection
) -> None:
    settings = make_settings(STRIPE_WEBHOOK_SECRET=f"{TEST_SECRET},{SECOND_SECRET}")
    _, body = _body()
    async with serve(settings) as client:
        response = await post_signed(client, body, secret=SECOND_SECRET)
    assert response.status_code == 200
    assert await count_rows(db) == 1


async def test_a_connect_event_is_stored_with_its_account(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    event_id, body = _body(account="acct_1Connected")
    assert (await post_signed(client, body)).status_code == 200
    account = await db.fetchval("SELECT account FROM stripe_events WHERE event_id = $1", event_id)
    assert account == "acct_1Connected"


@pytest.mark.parametrize("path", WEBHOOK_PATHS)
async def test_each_alias_route_accepts_events(
    path: str, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    event_id, body = _body()
    response = await post_signed(client, body, url=path)
    assert response.status_code == 200
    assert await db.fetchval("SELECT 1 FROM stripe_events WHERE event_id = $1", event_id) == 1


async def test_an_accepted_event_has_its_arq_job_in_redis(
    client: httpx.AsyncClient, redis_client: ArqRedis, settings: Settings
) -> None:
    event_id, body = _body()
    assert (await post_signed(client, body)).status_code == 200
    [job] = await redis_client.queued_jobs(queue_name=settings.queue_name)
    assert (job.function, job.args, job.kwargs) == ("process_stripe_events", [[event_id]], {})


async def test_a_duplicate_is_answered_duplicate_and_changes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    event_id, body = _body()
    await post_signed(client, body)
    before = await db.fetchrow("SELECT * FROM stripe_events WHERE event_id = $1", event_id)
    response = await post_signed(client, body)
    assert response.json() == {"received": True, "duplicate": True}
    after = await db.fetchrow("SELECT * FROM stripe_events WHERE event_id = $1", event_id)
    assert dict(before or {}) == dict(after or {})
    assert await count_rows(db) == 1


async def test_a_duplicate_of_an_event_still_received_is_enqueued_again(
    client: httpx.AsyncClient, redis_client: ArqRedis
) -> None:
    event_id, body = _body()
    await post_signed(client, body)
    await redis_client.flushdb()  # the job was lost (Redis restarted empty)
    assert (await post_signed(client, body)).json()["duplicate"] is True
    assert await queued_event_ids(redis_client) == [event_id]


async def test_a_duplicate_of_a_completed_event_is_not_enqueued(
    client: httpx.AsyncClient, db: asyncpg.Connection, redis_client: ArqRedis
) -> None:
    event_id, body = _body()
    await post_signed(client, body)
    await db.execute(
        "UPDATE stripe_events SET processing_status = 'completed' WHERE event_id = $1", event_id
    )
    await redis_client.flushdb()
    assert (await post_signed(client, body)).json()["duplicate"] is True
    assert await queued_event_ids(redis_client) == []


async def test_a_duplicate_still_received_gets_a_second_job_the_claim_absorbs(
    client: httpx.AsyncClient, redis_client: ArqRedis
) -> None:
    """Job ids are fresh, so nothing dedups in Redis: the worker's claim takes the event
    once (tests/test_worker.py, two jobs per event)."""
    event_id, body = _body()
    await post_signed(client, body)
    await post_signed(client, body)
    assert await queued_event_ids(redis_client) == [event_id, event_id]


# --- group commit ------------------------------------------------------------------------------


async def test_fifty_concurrent_posts_of_one_event_store_one_row_and_one_non_duplicate(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    _, body = _body()
    responses = await asyncio.gather(*(post_signed(client, body) for _ in range(50)))
    assert all(r.status_code == 200 for r in responses)
    assert sum(not r.json()["duplicate"] for r in responses) == 1
    assert await count_rows(db) == 1


async def test_concurrent_distinct_events_share_batches_and_get_their_own_flags(
    settings: Settings, db: asyncpg.Connection
) -> None:
    batches: list[list[str]] = []

    async def record(event_ids: Sequence[str]) -> None:
        batches.append(list(event_ids))

    _, known_body = _body()
    new = [_body() for _ in range(40)]
    async with serve(settings, after_commit_hook=record) as client:
        await post_signed(client, known_body)
        requests = [post_signed(client, b) for _, b in new] + [post_signed(client, known_body)]
        responses = await asyncio.gather(*requests)
    assert [r.status_code for r in responses] == [200] * 41
    assert [r.json()["duplicate"] for r in responses] == [False] * 40 + [True]
    assert await count_rows(db) == 41
    assert max(len(batch) for batch in batches) > 1
    assert sum(len(batch) for batch in batches[1:]) == 41


async def test_no_request_is_answered_before_its_batch_is_committed(
    settings: Settings, database_url: str, db: asyncpg.Connection
) -> None:
    answered: list[str] = []
    visible_before_answer: list[bool] = []
    observer = await asyncpg.connect(database_url)

    async def check(event_ids: Sequence[str]) -> None:
        # Another connection sees the rows, and none of their requests was answered yet.
        found = await observer.fetchval(
            "SELECT count(*) FROM stripe_events WHERE event_id = ANY($1::text[])", list(event_ids)
        )
        visible_before_answer.append(found == len(event_ids) and not set(event_ids) & set(answered))

    async def post_and_note(event_id: str, body: bytes) -> int:
        response = await post_signed(client, body)
        answered.append(event_id)
        return response.status_code

    events = [_body() for _ in range(20)]
    try:
        async with serve(settings, after_commit_hook=check) as client:
            statuses = await asyncio.gather(*(post_and_note(i, b) for i, b in events))
    finally:
        await observer.close()
    assert statuses == [200] * 20
    assert visible_before_answer and all(visible_before_answer)


async def test_a_failed_batch_answers_every_request_in_it_with_503(
    settings: Settings, db: asyncpg.Connection
) -> None:
    # A constraint no new row can meet makes the INSERT itself fail inside Postgres.
    await db.execute("ALTER TABLE stripe_events ADD CONSTRAINT refuse_all CHECK (false) NOT VALID")
    async with serve(settings) as client:
        responses = await asyncio.gather(*(post_signed(client, _body()[1]) for _ in range(10)))
    assert [r.status_code for r in responses] == [503] * 10
    assert await count_rows(db) == 0


async def test_a_batch_failing_after_commit_is_503_and_a_retry_is_a_duplicate_and_enqueued(
    settings: Settings, db: asyncpg.Connection, redis_client: ArqRedis
) -> None:
    """Simulates "killed after the insert, before the enqueue": Stripe retries."""
    crash = True

    async def crash_once(event_ids: Sequence[str]) -> None:
        if crash:
            raise RuntimeError("simulated crash after commit")

    event_id, body = _body()
    async with serve(settings, after_commit_hook=crash_once) as client:
        assert (await post_signed(client, body)).status_code == 503
        assert await queued_event_ids(redis_client) == []
        crash = False
        retry = await post_signed(client, body)
    assert retry.json() == {"received": True, "duplicate": True}
    assert await count_rows(db) == 1
    assert await queued_event_ids(redis_client) == [event_id]


# --- body bytes in flight ----------------------------------------------------------------------


def _chunks(*parts: bytes) -> Callable[[], Any]:
    messages = [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    return receive


async def test_a_body_past_the_in_flight_budget_is_refused_and_its_bytes_given_back() -> None:
    budget = BodyBudget(10_000)
    budget.used = 9_000  # other requests hold 9 kB
    scope: dict[str, Any] = {"headers": []}
    with pytest.raises(Overloaded):
        await read_body(scope, _chunks(b"a" * 600, b"b" * 600), 4096, budget)
    assert budget.used == 9_000
    assert await read_body(scope, _chunks(b"a" * 600, b"b" * 300), 4096, budget) == (
        b"a" * 600 + b"b" * 300
    )
    assert budget.used == 9_000


async def test_large_bodies_cannot_take_the_room_small_ones_need() -> None:
    budget = BodyBudget(4 * SMALL_BODY)
    budget.used = 3 * SMALL_BODY  # large held-open bodies took their 3/4 share
    large = SMALL_BODY + 1
    with pytest.raises(Overloaded):
        await read_body({"headers": []}, _chunks(b"a" * large), 2 * SMALL_BODY, budget)
    small = b"{" + b" " * 3000 + b"}"  # a Stripe event still fits in the last quarter
    assert await read_body({"headers": []}, _chunks(small), 2 * SMALL_BODY, budget) == small
    assert budget.used == 3 * SMALL_BODY


async def test_a_declared_length_past_the_budget_is_refused_before_reading() -> None:
    budget = BodyBudget(10_000)
    budget.used = 9_000

    async def receive() -> dict[str, Any]:
        raise AssertionError("nothing may be read")

    with pytest.raises(Overloaded):
        await read_body({"headers": [(b"content-length", b"1001")]}, receive, 4096, budget)
    assert budget.used == 9_000


async def test_an_overloaded_receiver_answers_503_and_closes_the_connection(
    settings: Settings,
) -> None:
    _, body = _body()
    app = create_app(settings)
    endpoint = app.routes[0].endpoint  # type: ignore[attr-defined]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
            endpoint._budget.used = endpoint._budget.limit  # as if 32 MiB were being read
            refused = await post_signed(client, body)
            endpoint._budget.used = 0
            accepted = await post_signed(client, body)
    assert refused.status_code == 503
    assert refused.headers["connection"] == "close"
    assert refused.json()["reason"] == "body_bytes_in_flight"
    assert accepted.status_code == 200


# --- Redis down, E2E mode, readiness, metrics, logs --------------------------------------------


def _redis_down(make_settings: MakeSettings, **overrides: str) -> Settings:
    return make_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", **overrides)


async def test_redis_down_from_boot_still_answers_200_and_stores_the_row(
    make_settings: MakeSettings, db: asyncpg.Connection
) -> None:
    before = metric("webhook_enqueue_failures_total")
    event_id, body = _body()
    async with serve(_redis_down(make_settings)) as client:
        response = await post_signed(client, body)
    assert response.json() == {"received": True, "duplicate": False}
    assert (
        await db.fetchval(
            "SELECT processing_status FROM stripe_events WHERE event_id = $1", event_id
        )
        == "received"
    )
    assert metric("webhook_enqueue_failures_total") == before + 1


async def test_e2e_mode_accepts_an_unsigned_event(
    make_settings: MakeSettings, db: asyncpg.Connection
) -> None:
    _, body = _body()
    async with serve(make_settings(E2E_TEST_MODE="true", STRIPE_WEBHOOK_SECRET="")) as client:
        response = await client.post(URL, content=body)
    assert response.status_code == 200
    assert await count_rows(db) == 1


async def test_e2e_mode_rejects_livemode_events(
    make_settings: MakeSettings, db: asyncpg.Connection
) -> None:
    _, body = _body(livemode=True)
    async with serve(make_settings(E2E_TEST_MODE="true")) as client:
        response = await client.post(URL, content=body)
    assert response.status_code == 400
    assert response.json()["reason"] == "livemode_in_test_mode"
    assert await count_rows(db) == 0


def test_e2e_mode_in_production_is_refused_by_settings() -> None:
    with pytest.raises(ConfigError, match=r"E2E_TEST_MODE=true .* refused with APP_ENV=production"):
        Settings.from_env({"E2E_TEST_MODE": "true", "APP_ENV": "production"})


def test_e2e_mode_in_production_is_refused_by_the_app_factory(settings: Settings) -> None:
    unsafe = settings.with_overrides(e2e_test_mode=True, app_env="production")
    with pytest.raises(ConfigError, match="E2E_TEST_MODE"):
        create_app(unsafe)


def test_e2e_mode_in_production_is_refused_by_the_uvicorn_factory(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("E2E_TEST_MODE", "true")
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("DATABASE_URL", settings.database_url or "")
    monkeypatch.setenv("REDIS_URL", settings.redis_url or "")
    with pytest.raises(ConfigError, match="set APP_ENV=development or APP_ENV=test"):
        receiver_from_env()


def test_e2e_mode_in_production_makes_serve_exit_2(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("E2E_TEST_MODE", "true")
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("DATABASE_URL", settings.database_url or "")
    monkeypatch.setenv("REDIS_URL", settings.redis_url or "")
    assert cli_main(["serve"]) == 2
    assert "E2E_TEST_MODE" in capsys.readouterr().err


async def test_healthz_is_200(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200


async def test_metrics_and_readyz_are_not_on_the_public_port_by_default(
    client: httpx.AsyncClient,
) -> None:
    for path in ("/metrics", "/readyz"):
        assert (await client.get(path)).status_code == 404
    assert (await client.get("/healthz")).status_code == 200


async def test_readyz_is_200_when_postgres_and_redis_answer(make_settings: MakeSettings) -> None:
    async with serve(make_settings(METRICS_ON_RECEIVER="true")) as client:
        response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"ready": True, "postgres": "ok", "redis": "ok", "grants": "ok"}


async def test_readyz_is_503_when_redis_is_down(make_settings: MakeSettings) -> None:
    async with serve(_redis_down(make_settings, METRICS_ON_RECEIVER="true")) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["redis"] == "unavailable"


async def test_metrics_show_the_receiver_counters(make_settings: MakeSettings) -> None:
    _, body = _body()
    async with serve(make_settings(METRICS_ON_RECEIVER="true")) as client:
        await post_signed(client, body)
        await post_signed(client, body)
        text = (await client.get("/metrics")).text
    for name in (
        'webhook_requests_total{outcome="accepted",reason=""}',
        "webhook_duplicates_total",
        "webhook_insert_batch_size_count",
        "webhook_request_seconds_count",
    ):
        assert name in text


async def test_at_log_level_warning_only_rejections_are_logged(
    settings: Settings, log_stream: io.StringIO
) -> None:
    """The receiver builds no line for an accepted event below its level, and still logs the
    rejected one at warning."""
    logging.getLogger().setLevel(logging.WARNING)
    _, body = _body()
    async with serve(settings) as client:
        assert (await post_signed(client, body)).status_code == 200
        await client.post(URL, content=body, headers={"Stripe-Signature": "t=1,v1=00"})
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    handled = [line for line in lines if line.get("path") == URL]
    assert [(line["event"], line["level"]) for line in handled] == [
        ("signature_rejected", "warning")
    ]


async def test_one_canonical_log_line_per_request_without_secrets(
    settings: Settings, log_stream: io.StringIO
) -> None:
    event_id, body = _body(email="jane.doe@example.com")
    header = sign(body)
    async with serve(settings) as client:
        await client.post(URL, content=body, headers={"Stripe-Signature": header})
        await client.post(URL, content=body, headers={"Stripe-Signature": "t=1,v1=00"})
    text = log_stream.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    handled = [line for line in lines if line.get("path") == URL]
    assert [line["event"] for line in handled] == ["event_received", "signature_rejected"]
    accepted, rejected = handled
    assert accepted["stripe_event_id"] == event_id
    assert accepted["event_type"] == "checkout.session.completed"
    assert accepted["outcome"] == "accepted" and "duration_ms" in accepted
    assert rejected["reason"] == "signature_mismatch" and "stripe_event_id" not in rejected
    for secret in (header.split("v1=")[1], TEST_SECRET, "jane.doe", body.decode()[:40]):
        assert secret not in text
