"""Console sessions held on the server (`webhook_worker.console.session`), without a
browser: a replayed cookie after logout is no session, the table holds no usable cookie,
and ended sessions are pruned. The browser-level tests are in
tests/test_console_sessions_browser.py."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Callable

import asyncpg
import httpx
import pytest

from tests.console_support import TOKEN, console_client, csrf_of, log_in
from webhook_worker.config import Settings
from webhook_worker.console.session import COOKIE_NAME


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    async for c in console_client(make_settings(OPS_TOKEN=TOKEN)):
        yield c


def _sid(cookie: str) -> str:
    body = cookie.partition(".")[0]
    sid: str = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["sid"]
    return sid


async def test_a_cookie_replayed_after_logout_is_sent_to_login(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    assert (await log_in(client)).status_code == 303
    cookie = client.cookies[COOKIE_NAME]
    page = await client.get("/events")
    assert page.status_code == 200
    assert (await client.post("/logout", data={"csrf": csrf_of(page.text)})).status_code == 303
    assert await db.fetchval("SELECT count(*) FROM console_sessions") == 0

    client.cookies.set(COOKIE_NAME, cookie)  # the thief's copy
    replayed = await client.get("/events")
    assert replayed.status_code == 303
    assert replayed.headers["location"].startswith("/login")


async def test_the_table_holds_a_hash_of_the_session_id_not_the_id(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await log_in(client)
    sid = _sid(client.cookies[COOKIE_NAME])
    stored = await db.fetchval("SELECT sid_hash FROM console_sessions")
    assert stored == hashlib.sha256(sid.encode()).digest()
    assert sid.encode() not in stored


async def test_a_login_prunes_expired_and_idle_sessions(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await db.execute(
        "INSERT INTO console_sessions (sid_hash, operator, expires_at, last_seen_at) VALUES "
        "('\\x01', 'ops', now() - interval '1 s', now()), "
        "('\\x02', 'ops', now() + interval '1 h', now() - interval '2 h')"
    )
    await log_in(client)
    assert await db.fetchval("SELECT count(*) FROM console_sessions") == 1  # the new one
