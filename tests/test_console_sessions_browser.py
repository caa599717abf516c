# ruff: noqa: F811 - the browser fixtures are imported from tests/test_console_browser.py
"""Console sessions end on the server, logins resist guessing, and cross-site requests are
refused — in a real headless Chromium against `webhook-worker console` processes (see
tests/test_console_browser.py for the browser set-up; these tests fail, never skip, without
it).

- Logout, expiry, the idle limit and a token rotation end a session: the cookie saved
  before then, replayed, gets the login page.
- Wrong tokens sent in parallel are answered no faster than one after another, and a right
  token meanwhile is not held up by them.
- A state-changing request without `Origin` needs `Sec-Fetch-Site: same-origin` or a
  same-origin `Referer`; else 403.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from playwright.async_api import APIRequestContext, Browser, BrowserContext, Page, expect

from tests.console_support import ALICE, TOKEN
from tests.test_console_browser import browser, console_url, context, services_env  # noqa: F401
from tests.worker_support import stop_worker
from webhook_worker.console.auth import LOGIN_SPACING_SECONDS
from webhook_worker.dev.embedded import free_port
from webhook_worker.dev.servicekit import spawn_command, wait_http_ok

WRONG = "wrong-token-0123456789abcdef0123456789abc"


async def _log_in(page: Page, token: str = TOKEN) -> None:
    await page.goto("/login")
    await page.get_by_label("Token").fill(token)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()


async def _replay_cookie(context: BrowserContext, saved: list[Any]) -> Page:
    """A thief's browser: the saved cookie put back, then the events page asked for."""
    await context.clear_cookies()
    await context.add_cookies(saved)
    page = await context.new_page()
    await page.goto("/events")
    return page


async def _expect_login_page(page: Page) -> None:
    await expect(page).to_have_url(re.compile(r"/login\?next=/events$"))
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()


async def test_a_cookie_saved_before_logout_gets_the_login_page(context: BrowserContext) -> None:
    page = await context.new_page()
    await _log_in(page)
    saved = await context.cookies()
    await page.get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(re.compile(r"/login"))

    await _expect_login_page(await _replay_cookie(context, saved))


@pytest.mark.parametrize(
    "ended",
    [
        "expires_at = now() - interval '1 second'",  # CONSOLE_SESSION_HOURS reached
        "last_seen_at = now() - interval '31 minutes'",  # CONSOLE_IDLE_MINUTES (30) reached
    ],
)
async def test_an_expired_or_idle_session_gets_the_login_page(
    context: BrowserContext, db: asyncpg.Connection, ended: str
) -> None:
    page = await context.new_page()
    await _log_in(page)
    saved = await context.cookies()
    assert await db.fetchval("SELECT count(*) FROM console_sessions") == 1
    await db.execute(f"UPDATE console_sessions SET {ended}")  # the clock moved on

    await _expect_login_page(await _replay_cookie(context, saved))


def _spawn_console(env: dict[str, str], port: int, log: Path) -> Any:
    process = spawn_command(["console", "--port", str(port)], env, log)
    wait_http_ok(f"http://127.0.0.1:{port}/healthz", process=process, log=log, interval=0.1)
    return process


async def test_removing_an_operators_token_ends_their_sessions(
    browser: Browser,
    services_env: dict[str, str],
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {k: v for k, v in services_env.items() if k != "OPS_TOKEN"}
    both = {**env, "OPS_USERS": f"alice:{ALICE},ops:{TOKEN}"}
    process = await asyncio.to_thread(_spawn_console, both, port, tmp_path / "console.log")
    ctx = await browser.new_context(base_url=f"http://127.0.0.1:{port}")
    try:
        page = await ctx.new_page()
        await _log_in(page, ALICE)
        saved = await ctx.cookies()
        await asyncio.to_thread(stop_worker, process)
        # alice's token is rotated out: only ops remains.
        only_ops = {**env, "OPS_USERS": f"ops:{TOKEN}"}
        process = await asyncio.to_thread(_spawn_console, only_ops, port, tmp_path / "c2.log")
        assert await db.fetchval(
            "SELECT count(*) FROM console_sessions WHERE operator = 'alice'"
        ) == 0  # fmt: skip
        await _expect_login_page(await _replay_cookie(ctx, saved))
    finally:
        await ctx.close()
        await asyncio.to_thread(stop_worker, process)


async def _login_form(request: APIRequestContext) -> str:
    """The login form's CSRF token (its nonce cookie lands in the browser's cookie jar)."""
    html = await (await request.get("/login")).text()
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


async def test_parallel_guesses_are_answered_serially_and_a_right_token_is_not_held_up(
    browser: Browser,
    console_url: str,
) -> None:
    guesser = await browser.new_context(base_url=console_url)
    operator = await browser.new_context(base_url=console_url)
    try:
        csrf = await _login_form(guesser.request)
        headers = {"Sec-Fetch-Site": "same-origin"}

        async def guess() -> int:
            response = await guesser.request.post(
                "/login", form={"csrf": csrf, "token": WRONG}, headers=headers, max_redirects=0
            )
            return response.status

        page = await operator.new_page()
        await page.goto("/login")
        await page.get_by_label("Token").fill(TOKEN)
        count = 6
        started = time.monotonic()
        guesses = [asyncio.create_task(guess()) for _ in range(count)]
        # Meanwhile the operator (same address: everyone is 127.0.0.1 behind `ssh -L`)
        # logs in with the right token and gets in while the guesses are still waiting.
        await page.get_by_role("button", name="Log in").click()
        await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        assert not all(task.done() for task in guesses)
        assert await asyncio.gather(*guesses) == [401] * count
        elapsed = time.monotonic() - started
        # One wrong answer per LOGIN_SPACING_SECONDS, however many are sent at once.
        assert elapsed >= (count - 1) * LOGIN_SPACING_SECONDS
    finally:
        await guesser.close()
        await operator.close()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 403),  # no Origin, no Sec-Fetch-Site, no Referer
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({"Referer": "https://evil.example/page"}, 403),
        ({"Origin": "null"}, 403),
        ({"Sec-Fetch-Site": "same-origin"}, 303),
        ({"Referer": "{console}/events"}, 303),
    ],
)
async def test_a_post_without_origin_needs_sec_fetch_site_or_a_referer_of_ours(
    context: BrowserContext,
    console_url: str,
    headers: dict[str, str],
    status: int,
) -> None:
    """The logged-in browser's own cookie and CSRF token, posted to /logout without an
    Origin header (as some clients and old browsers do): only proof of our own pages
    gets through; a refused one leaves the session alive."""
    page = await context.new_page()
    await _log_in(page)
    csrf = await page.locator('input[name="csrf"]').first.get_attribute("value")
    sent = {name: value.format(console=console_url) for name, value in headers.items()}
    response = await page.request.post(
        "/logout", form={"csrf": csrf or ""}, headers=sent, max_redirects=0
    )
    assert response.status == status
    await page.goto("/events")
    if status == 403:
        await expect(page.get_by_role("heading", name="Events")).to_be_visible()
    else:
        await expect(page).to_have_url(re.compile(r"/login"))
