"""The console in a real headless Chromium (Debian's `chromium`, driven by Playwright's Python
API through `executable_path`): log in, find a failed event by its session id, replay it and
watch it complete with its ledger row, bulk dry-run then replay 50 failed events, CSRF and
login redirects. A console and a worker run as real processes on the test's Postgres and
Redis.

These tests FAIL, never skip, when the browser cannot start: `.ci/run` installs it
(`apt-get install -y chromium`). Screenshots of every page go to `artifacts/screenshots/`
(git-ignored, kept by CI); with `CONSOLE_SCREENSHOTS_DOCS=1` the README's are refreshed in
`docs/screenshots/` too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from tests.console_support import TOKEN
from tests.ops_support import credit, insert_event, insert_user
from tests.worker_support import spawn_worker, stop_worker, worker_env
from webhook_worker.dev.embedded import free_port
from webhook_worker.dev.servicekit import spawn_command, wait_http_ok

# Debian's package; the variable exists only so the test below can prove a missing browser
# fails the suite.
CHROMIUM = os.environ.get("CONSOLE_TEST_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "artifacts" / "screenshots"
DOCS_SHOTS = ROOT / "docs" / "screenshots"
WAIT_MS = 60_000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium`")
    async with async_playwright() as playwright:
        try:
            launched = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS
            )
        except Exception as exc:  # the test must fail, never skip, without a browser
            pytest.fail(f"Chromium did not start from {CHROMIUM}: {exc}")
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def services_env(database_url: str, clean_redis_url: str) -> dict[str, str]:
    return worker_env(database_url, clean_redis_url, OPS_TOKEN=TOKEN, LOG_FORMAT="console")


@pytest.fixture
def console_url(services_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """`webhook-worker console` as a real process on a free port."""
    port = free_port()
    log = tmp_path / "console.log"
    process = spawn_command(["console", "--port", str(port)], services_env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/healthz", process=process, log=log, interval=0.1)
        yield url
    finally:
        stop_worker(process)


@pytest.fixture
def worker(services_env: dict[str, str], tmp_path: Path) -> Iterator[None]:
    process = spawn_worker(services_env, tmp_path / "worker.log")
    try:
        yield
    finally:
        stop_worker(process)


@pytest.fixture
async def context(browser: Browser, console_url: str) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context(base_url=console_url, viewport={"width": 1360, "height": 900})
    try:
        yield ctx
    finally:
        await ctx.close()


async def _shot(page: Page, name: str, *, docs: bool = False) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    if docs and os.environ.get("CONSOLE_SCREENSHOTS_DOCS") == "1":
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)  # the README's: one screen each
        await page.screenshot(path=str(DOCS_SHOTS / f"{name}.png"))


async def _log_in(page: Page, token: str = TOKEN, *, go: bool = True) -> None:
    if go:
        await page.goto("/login")
    await page.get_by_label("Token").fill(token)
    await page.get_by_role("button", name="Log in").click()


async def _arrange(db: asyncpg.Connection) -> str:
    """A realistic hour: completed purchases with ledger rows, ignored events, 50 failed
    ones for the bulk replay and the one failed purchase the operator is looking for."""
    for i in range(12):
        user = await insert_user(db, email=f"buyer{i}@example.com")
        for j in range(2):
            session = f"cs_test_done_{i}_{j}"
            event_id = await insert_event(
                db, status="completed", email=f"buyer{i}@example.com", session_id=session,
                age_seconds=60 * (i * 4 + j * 2) + 5,
            )  # fmt: skip
            await credit(db, user["id"], event_id, 10 * (j + 1), session)
    for i in range(8):
        await insert_event(db, status="ignored", event_type="customer.created", age_seconds=400 * i)
    await db.execute(
        "UPDATE stripe_events SET status_reason = 'unhandled_type' "
        "WHERE processing_status = 'ignored'"
    )
    for i in range(50):
        await insert_event(
            db, status="failed", error="user_not_found: no user matched the session",
            email=f"bulk{i}@example.com", age_seconds=60 * (i % 55) + 30, attempts=8,
        )  # fmt: skip
    return await insert_event(
        db, status="failed", attempts=8, error="user_not_found: no user matched the session",
        email="late.signup@example.com", session_id="cs_test_browser_needle", credits=25,
        age_seconds=90,
    )  # fmt: skip


async def test_an_operator_finds_replays_and_bulk_replays_failed_events(
    context: BrowserContext, db: asyncpg.Connection, worker: None
) -> None:
    needle = await _arrange(db)
    page = await context.new_page()

    await page.goto("/events")
    await expect(page).to_have_url(re.compile(r"/login\?next="))
    await _shot(page, "login")
    await _log_in(page, go=False)  # the form carries ?next=/events
    await expect(page).to_have_url(re.compile(r"/events$"))

    # Overview
    await page.goto("/")
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    await expect(page.locator(".card.bad b")).to_have_text("51")
    await expect(page.locator("svg.chart rect").first).to_be_visible()
    await _shot(page, "overview", docs=True)

    # Events: find the failed purchase by its checkout session id
    await page.get_by_role("link", name="Events", exact=True).click()
    await page.get_by_label("Search").fill("cs_test_browser_needle")
    await page.get_by_role("button", name="Filter").click()
    rows = page.locator("table.events tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("failed")
    await expect(rows.first).to_contain_text("late.signup@example.com")
    await page.goto("/events?status=failed")
    await expect(rows).to_have_count(50)
    await expect(page.get_by_role("link", name="Older →")).to_be_visible()
    await _shot(page, "events", docs=True)
    await page.goto("/events?q=cs_test_browser_needle")
    await page.get_by_role("link", name=needle).click()

    # Event: replay it and watch it complete without a reload
    await expect(page.locator("#status")).to_have_text("failed")
    await expect(page.locator("#ledger")).to_contain_text("No ledger row")
    await page.get_by_role("button", name="Replay").click()
    await expect(page.locator("#status")).to_have_text("completed", timeout=WAIT_MS)
    ledger = page.locator("#ledger tbody tr")
    await expect(ledger).to_have_count(1)
    await expect(ledger.first).to_contain_text("PURCHASE")
    await expect(ledger.first).to_contain_text("25")
    await expect(page.locator("#replay-message")).to_have_text("Done.")
    await page.reload()  # the audit row is on the page for the next operator
    await expect(page.get_by_role("cell", name="console")).to_be_visible()
    await page.locator("details summary").click()
    await expect(page.locator("details pre")).to_contain_text("cs_test_browser_needle")
    await _shot(page, "event", docs=True)

    # User: balance and ledger with running sum
    await page.locator("#ledger tbody a").first.click()
    await expect(page.locator("#balance")).to_contain_text("25")
    await expect(page.get_by_text("late.signup@example.com")).to_be_visible()
    await _shot(page, "user")

    # Bulk replay: dry run first (nothing changes), then the confirmed replay with progress
    await page.get_by_role("link", name="Bulk replay").click()
    await expect(page.get_by_label("Status")).to_have_value("failed")
    await page.get_by_role("button", name="Preview (dry run)").click()
    await expect(page.locator("#preview-count")).to_have_text("50 events would be replayed")
    assert await _count(db, "failed") == 50
    await _shot(page, "bulk-preview")
    await page.get_by_role("button", name="Replay 50 events").click()
    await expect(page.locator("#replayed-count")).to_have_text("50")
    await expect(page.locator("#progress-text")).to_have_text("50 of 50 processed", timeout=WAIT_MS)
    await _shot(page, "bulk-result")
    assert await _count(db, "failed") == 0
    assert await db.fetchval("SELECT count(*) FROM ops_audit") == 2
    assert await db.fetchval("SELECT count FROM ops_audit ORDER BY id DESC LIMIT 1") == 50


async def _count(db: asyncpg.Connection, status: str) -> int:
    return int(
        await db.fetchval("SELECT count(*) FROM stripe_events WHERE processing_status = $1", status)
    )


async def test_a_bad_token_is_refused(context: BrowserContext) -> None:
    page = await context.new_page()
    await _log_in(page, "not-the-token-0123456789abcdef0123456789")
    await expect(page.get_by_role("alert")).to_have_text("That token is not valid.")
    await page.goto("/")
    await expect(page).to_have_url(re.compile(r"/login"))


async def test_a_post_without_the_csrf_token_is_refused(
    context: BrowserContext, db: asyncpg.Connection
) -> None:
    event_id = await insert_event(db, status="failed")
    page = await context.new_page()
    await _log_in(page)
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    response = await page.request.post(
        f"/events/{event_id}/replay",
        form={"force": "true"},
        headers={"Sec-Fetch-Site": "same-origin"},  # from our pages, but no CSRF token
    )
    assert response.status == 403
    assert (
        await db.fetchval(
            "SELECT processing_status FROM stripe_events WHERE event_id = $1", event_id
        )
        == "failed"
    )


async def test_a_page_without_the_cookie_redirects_to_login(
    browser: Browser, console_url: str
) -> None:
    ctx = await browser.new_context(base_url=console_url)
    try:
        page = await ctx.new_page()
        await page.goto("/replay")
        await expect(page).to_have_url(re.compile(r"/login\?next=/replay$"))
        await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    finally:
        await ctx.close()


def test_a_missing_browser_fails_the_suite_instead_of_skipping(tmp_path: Path) -> None:
    env = {**os.environ, "CONSOLE_TEST_CHROMIUM": str(tmp_path / "no-chromium")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(Path(__file__)), "-q", "-p", "no:cacheprovider",
         "-k", "page_without_the_cookie"],
        env=env, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode != 0, result.stdout
    assert "1 error" in result.stdout or "1 failed" in result.stdout, result.stdout
    assert "skipped" not in result.stdout
    assert "apt-get install -y chromium" in result.stdout
