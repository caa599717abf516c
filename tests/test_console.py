"""The console over HTTP: every route's auth, CSRF, headers, 400s and 404s, the audit, and
that the receiver no longer answers /ops/* by default. Real Postgres and Redis."""

from __future__ import annotations

import io
import json
import re
from collections.abc import AsyncIterator, Callable

import asyncpg
import httpx
import pytest

from tests.console_support import ALICE, TOKEN, console_client, csrf_of, log_in
from tests.ops_support import credit, event_row, insert_event, insert_user, queued_event_ids
from webhook_worker.config import Settings
from webhook_worker.console.session import COOKIE_NAME, Signer
from webhook_worker.errors import ConfigError
from webhook_worker.receiver import app as receiver

PAGES = [
    "/",
    "/events",
    "/events/evt_x",
    "/events/evt_x/status",
    "/replay",
    "/replay/1",
    "/replay/1/progress",
    "/users",
    "/users/1",
]
POSTS = ["/events/evt_x/replay", "/replay/preview", "/replay/run"]


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(OPS_TOKEN=TOKEN, OPS_USERS=f"alice:{ALICE}")
    async for c in console_client(settings):
        yield c


@pytest.fixture
async def logged_in(client: httpx.AsyncClient) -> httpx.AsyncClient:
    response = await log_in(client)
    assert response.status_code == 303
    return client


# --- auth ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
async def test_every_page_without_a_session_redirects_to_login(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=")


@pytest.mark.parametrize("path", POSTS)
async def test_every_post_without_a_session_is_refused(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.post(path, data={"csrf": "x"})
    assert response.status_code == 403


@pytest.mark.parametrize("path", POSTS)
async def test_every_post_without_the_csrf_token_is_refused(
    logged_in: httpx.AsyncClient, db: asyncpg.Connection, path: str
) -> None:
    event_id = await insert_event(db, event_id="evt_x", status="failed")
    for data in ({}, {"csrf": "forged"}):
        response = await logged_in.post(path, data={**data, "status": "failed"})
        assert response.status_code == 403, (path, data)
    assert (await event_row(db, event_id))["processing_status"] == "failed"


async def test_a_post_from_another_origin_is_refused(
    logged_in: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await insert_event(db, event_id="evt_x", status="failed")
    page = await logged_in.get("/events/evt_x")
    response = await logged_in.post(
        "/events/evt_x/replay",
        data={"csrf": csrf_of(page.text)},
        headers={"Origin": "https://evil.example"},
    )
    assert response.status_code == 403


async def test_a_bad_token_is_refused_and_sets_no_session(client: httpx.AsyncClient) -> None:
    response = await log_in(client, "wrong-token-0123456789abcdef0123456789")
    assert response.status_code == 401
    assert "That token is not valid" in response.text
    assert COOKIE_NAME not in client.cookies
    assert (await client.get("/")).status_code == 303


async def test_login_without_its_csrf_token_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/login", data={"token": TOKEN})
    assert response.status_code == 403


async def test_the_session_cookie_is_httponly_strict_and_expires(client: httpx.AsyncClient) -> None:
    response = await log_in(client)
    cookie = next(h for h in response.headers.get_list("set-cookie") if h.startswith(COOKIE_NAME))
    lowered = cookie.lower()
    assert "httponly" in lowered and "samesite=strict" in lowered and "max-age=28800" in lowered


async def test_login_redirects_only_to_local_paths(client: httpx.AsyncClient) -> None:
    page = await client.get("/login")
    response = await client.post(
        "/login", data={"csrf": csrf_of(page.text), "token": TOKEN, "next": "//evil.example/x"}
    )
    assert response.headers["location"] == "/"


def test_a_forged_tampered_or_expired_cookie_is_no_session() -> None:
    signer = Signer((("ops", TOKEN),), 60)
    cookie, _ = signer.issue("ops", now=1000)
    assert signer.read(cookie, now=1001) is not None
    assert signer.read(cookie, now=1061) is None  # expired
    body, _, mac = cookie.partition(".")
    assert signer.read(f"{body}x.{mac}", now=1001) is None
    assert Signer((("ops", TOKEN + "x"),), 60).read(cookie, now=1001) is None  # rotated token
    assert Signer((("bob", TOKEN),), 60).read(cookie, now=1001) is None  # operator removed


async def test_logout_needs_csrf_and_without_a_session_just_goes_to_login(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/logout")
    assert response.status_code == 303 and response.headers["location"] == "/login"
    await log_in(client)
    assert (await client.post("/logout", data={"csrf": "forged"})).status_code == 403
    assert (await client.get("/")).status_code == 200  # still logged in


async def test_logout_ends_the_session(logged_in: httpx.AsyncClient) -> None:
    page = await logged_in.get("/")
    response = await logged_in.post("/logout", data={"csrf": csrf_of(page.text)})
    assert response.status_code == 303
    assert (await logged_in.get("/")).status_code == 303


def test_the_console_refuses_to_start_without_an_operator(
    make_settings: Callable[..., Settings],
) -> None:
    from webhook_worker.console.app import create_app

    with pytest.raises(ConfigError, match="OPS_TOKEN or OPS_USERS"):
        create_app(make_settings())


async def test_security_headers_on_every_response(logged_in: httpx.AsyncClient) -> None:
    for path in ("/login", "/", "/events", "/static/console.js"):
        response = await logged_in.get(path)
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
    assert (await logged_in.get("/")).headers["cache-control"] == "no-store"


async def test_pages_carry_no_inline_script(
    logged_in: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await insert_event(db, event_id="evt_x", status="failed")
    for path in ("/login", "/", "/events", "/events/evt_x", "/replay", "/users"):
        html = (await logged_in.get(path)).text
        assert "<script>" not in html and " on" + "click=" not in html, path


# --- pages -------------------------------------------------------------------------------


async def test_pages_render_for_an_operator(
    logged_in: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = await insert_user(db, email="payer@example.com")
    event_id = await insert_event(
        db, status="completed", email="payer@example.com", session_id="cs_test_page"
    )
    await credit(db, user["id"], event_id, 10, "cs_test_page")
    for path in (
        "/",
        "/events",
        f"/events/{event_id}",
        "/replay",
        f"/users/{user['id']}",
        f"/users/{user['uuid']}",
        "/users?q=PAYER@example.com",
    ):
        response = await logged_in.get(path)
        assert response.status_code == 200, path
    user_page = (await logged_in.get("/users?q=payer@example.com")).text
    assert "payer@example.com" in user_page and event_id in user_page


@pytest.mark.parametrize(
    "query",
    [
        "status=bogus",
        "since=yesterdayish",
        "until=99999999999d",
        "since=2024-06-02&until=2024-06-01",
        "before=garbage",
        "before=2024-01-01T00:00:00,1",
        "q=" + "x" * 201,
        "q=ab",
        "q=evt_1",
    ],
)
async def test_bad_filters_are_400_naming_the_problem_inline(
    logged_in: httpx.AsyncClient, query: str
) -> None:
    response = await logged_in.get(f"/events?{query}&type=charge.refunded")
    assert response.status_code == 400
    alert = re.search(
        r'<p class="flash error" role="alert" id="filter-error">([^<]+)</p>', response.text
    )
    assert alert, "the problem is shown on the events page itself"
    assert "--" not in alert.group(1)  # console wording, not the CLI's options
    assert 'name="type" value="charge.refunded"' in response.text  # the filters are kept
    assert '<table class="events">' not in response.text


async def test_a_bad_date_keeps_what_was_typed(logged_in: httpx.AsyncClient) -> None:
    response = await logged_in.get("/events?since=bogus&status=failed&q=bob")
    assert response.status_code == 400
    assert "from &#39;bogus&#39; is not a date" in response.text
    assert 'name="since" value="bogus"' in response.text
    assert 'name="q" value="bob"' in response.text
    assert '<option value="failed" selected>' in response.text


@pytest.mark.parametrize(
    "path",
    [
        "/events/evt_nope",
        "/events/evt_nope/status",
        "/users/nobody@example.com",
        "/users/999999",
        "/replay/424242",
        "/replay/424242/progress",
        "/replay/notanid",
    ],
)
async def test_unknown_ids_are_404(logged_in: httpx.AsyncClient, path: str) -> None:
    assert (await logged_in.get(path)).status_code == 404


async def test_replaying_an_unknown_event_is_404(logged_in: httpx.AsyncClient) -> None:
    page = await logged_in.get("/")
    response = await logged_in.post("/events/evt_nope/replay", data={"csrf": csrf_of(page.text)})
    assert response.status_code == 404


async def test_events_search_finds_by_session_intent_email_and_id(
    logged_in: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    wanted = await insert_event(
        db, status="failed", email="Needle@Example.com", session_id="cs_test_needle"
    )
    other = await insert_event(db, status="failed", email="hay@example.com")
    raw = await event_row(db, wanted)
    assert raw["processing_status"] == "failed"
    for q in (wanted, "cs_test_needle", "needle@example.com"):
        html = (await logged_in.get("/events", params={"q": q})).text
        assert wanted in html and other not in html, q


async def test_events_pages_with_a_keyset_cursor(
    logged_in: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    ids = [await insert_event(db, status="failed", age_seconds=i) for i in range(60)]
    first = (await logged_in.get("/events", params={"status": "failed"})).text
    assert ids[0] in first and ids[49] in first and ids[50] not in first
    next_url = first.split('rel="next" href="')[1].split('"')[0].replace("&amp;", "&")
    second = (await logged_in.get(next_url)).text
    assert ids[50] in second and ids[59] in second and ids[49] not in second
    assert 'rel="next"' not in second


async def test_a_replay_from_the_event_page_is_audited_with_who(
    logged_in: httpx.AsyncClient, db: asyncpg.Connection, clean_redis_url: str
) -> None:
    event_id = await insert_event(db, status="failed", error="user_not_found")
    page = await logged_in.get(f"/events/{event_id}")
    response = await logged_in.post(
        f"/events/{event_id}/replay",
        data={"csrf": csrf_of(page.text)},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200 and response.json()["replayed"] == [event_id]
    assert (await event_row(db, event_id))["processing_status"] == "received"
    assert event_id in await queued_event_ids(clean_redis_url)
    audit = await db.fetchrow("SELECT who, via, count, event_ids FROM ops_audit")
    assert dict(audit) == {"who": "ops", "via": "console", "count": 1, "event_ids": [event_id]}
    html = (await logged_in.get(f"/events/{event_id}")).text
    assert "Never replayed" not in html and "console" in html


async def test_a_final_event_needs_force(
    logged_in: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    event_id = await insert_event(db, status="completed")
    page = await logged_in.get(f"/events/{event_id}")
    assert 'name="force"' in page.text
    headers = {"Accept": "application/json"}
    refused = await logged_in.post(
        f"/events/{event_id}/replay", data={"csrf": csrf_of(page.text)}, headers=headers
    )
    assert refused.status_code == 409
    forced = await logged_in.post(
        f"/events/{event_id}/replay",
        data={"csrf": csrf_of(page.text), "force": "true"},
        headers=headers,
    )
    assert forced.status_code == 200
    assert await db.fetchval("SELECT forced FROM ops_audit") is True


async def test_bulk_dry_run_changes_nothing_then_replay_is_audited(
    logged_in: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    ids = [await insert_event(db, status="failed", age_seconds=i) for i in range(25)]
    csrf = csrf_of((await logged_in.get("/replay")).text)
    preview = await logged_in.post("/replay/preview", data={"csrf": csrf, "status": "failed"})
    assert preview.status_code == 200 and "25 events would be replayed" in preview.text
    assert (
        await db.fetchval("SELECT count(*) FROM stripe_events WHERE processing_status = 'failed'")
        == 25
    )
    assert await db.fetchval("SELECT count(*) FROM ops_audit") == 0
    run = await logged_in.post("/replay/run", data={"csrf": csrf, "status": "failed"})
    assert run.status_code == 303
    audit_id = run.headers["location"].rsplit("/", 1)[1]
    progress = (await logged_in.get(f"/replay/{audit_id}/progress")).json()
    assert progress["count"] == 25 and progress["by_status"] == {"received": 25}
    assert sorted(await db.fetchval("SELECT event_ids FROM ops_audit")) == sorted(ids)


async def test_bulk_replay_without_a_status_is_400(logged_in: httpx.AsyncClient) -> None:
    csrf = csrf_of((await logged_in.get("/replay")).text)
    response = await logged_in.post("/replay/preview", data={"csrf": csrf, "status": ""})
    assert response.status_code == 400


async def test_named_operators_are_audited_by_name(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await log_in(client, ALICE)
    event_id = await insert_event(db, status="failed")
    page = await client.get(f"/events/{event_id}")
    assert "alice" in page.text
    await client.post(f"/events/{event_id}/replay", data={"csrf": csrf_of(page.text)})
    assert await db.fetchval("SELECT who FROM ops_audit") == "alice"


async def test_emails_never_reach_the_logs(
    logged_in: httpx.AsyncClient, db: asyncpg.Connection, log_stream: io.StringIO
) -> None:
    user = await insert_user(db, email="secret.person@example.com")
    event_id = await insert_event(db, status="failed", email="secret.person@example.com")
    assert (
        "secret.person"
        in (await logged_in.get("/users", params={"q": "secret.person@example.com"})).text
    )
    assert user["id"]
    assert (
        "secret.person"
        in (await logged_in.get("/events", params={"q": "secret.person@example.com"})).text
    )
    page = await logged_in.get(f"/events/{event_id}")
    await logged_in.post(f"/events/{event_id}/replay", data={"csrf": csrf_of(page.text)})
    # The test's own HTTP client (httpx) logs its URLs; the console's lines must not.
    lines = log_stream.getvalue().splitlines()
    ours = [line for line in lines if json.loads(line).get("logger") != "httpx"]
    assert ours and not [line for line in ours if "secret.person" in line]
    assert any("ops_replayed" in line for line in ours)


# --- the /ops API on the console, not on the receiver ---------------------------------------


async def test_the_console_serves_the_ops_api_with_named_tokens(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    event_id = await insert_event(db, status="failed")
    assert (await client.get("/ops/events")).status_code == 401
    listed = await client.get("/ops/events", headers={"Authorization": f"Bearer {ALICE}"})
    assert listed.status_code == 200 and listed.json()["events"][0]["event_id"] == event_id
    replayed = await client.post(
        f"/ops/events/{event_id}/replay", headers={"Authorization": f"Bearer {ALICE}"}
    )
    assert replayed.status_code == 200
    row = await db.fetchrow("SELECT who, via FROM ops_audit")
    assert dict(row) == {"who": "alice", "via": "api"}


@pytest.mark.parametrize("path", ["/ops/events", "/ops/events/evt_x", "/ops/replay"])
async def test_the_receiver_no_longer_answers_ops_by_default(
    make_settings: Callable[..., Settings], path: str
) -> None:
    app = receiver.create_app(make_settings(OPS_TOKEN=TOKEN))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://r.test") as c:
            for method in ("GET", "POST"):
                response = await c.request(
                    method, path, headers={"Authorization": f"Bearer {TOKEN}"}
                )
                assert response.status_code in (404, 405), (method, path)
                assert response.status_code != 200


async def test_status_json_shows_the_ledger(
    logged_in: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = await insert_user(db, email="j@example.com")
    event_id = await insert_event(db, status="completed", session_id="cs_test_json")
    await credit(db, user["id"], event_id, 7, "cs_test_json")
    body = (await logged_in.get(f"/events/{event_id}/status")).json()
    assert body["processing_status"] == "completed"
    assert [(t["amount"], t["transaction_type"]) for t in body["ledger"]] == [(7, "PURCHASE")]
    assert json.dumps(body)
