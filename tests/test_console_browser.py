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
STAMP = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"


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
        docs_name = name.removesuffix("-1400")
        await page.screenshot(path=str(DOCS_SHOTS / f"{docs_name}.png"))


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
    await expect(page.locator("#failed b")).to_have_text("51")
    await expect(page.locator("svg.chart rect").first).to_be_visible()
    await _shot(page, "overview-1360")

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
    await _shot(page, "events-failed-1360")
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
    # the new state in the page's own formats, and the replay listed, without a reload
    await expect(page.locator("#processed")).to_have_text(re.compile(STAMP))
    await expect(page.locator("#moved")).to_contain_text("+25 PURCHASE")
    await expect(
        page.locator("#replays-section").get_by_role("cell", name="console")
    ).to_be_visible()
    await expect(ledger.first).to_contain_text(re.compile(STAMP[1:-1]))
    await page.reload()  # the audit row is on the page for the next operator
    await expect(page.get_by_role("cell", name="console")).to_be_visible()
    await page.locator("#payload > summary").click()
    await expect(page.locator("#payload .tree")).to_contain_text("cs_test_browser_needle")
    await _shot(page, "event-after-replay-1360")

    # User: balance and ledger with running sum
    await page.locator("#ledger tbody a").first.click()
    await expect(page.locator("#balance")).to_contain_text("25")
    await expect(page.get_by_text("late.signup@example.com")).to_be_visible()
    await _shot(page, "user-1360")

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


# --- issue 31: what an operator sees at a glance, at 800 px and at 1400 px --------------------

NEEDLE_CUSTOMER = "cus_BrowserNeedle01"
CONNECT_ACCOUNT = "acct_1BrowserConnect"
# Chromium's computed colours of the status badges (console.css)
RED, GREY = "rgb(198, 40, 40)", "rgb(158, 158, 158)"


async def _arrange_glance(db: asyncpg.Connection) -> dict[str, str]:
    needle = await _arrange(db)
    user = await insert_user(db, email="late.signup@example.com")
    await db.execute(
        "UPDATE users SET stripe_customer_id = $2 WHERE id = $1", user["id"], NEEDLE_CUSTOMER
    )
    await db.execute(
        "UPDATE stripe_events SET raw_data = jsonb_set(jsonb_set(raw_data, "
        "'{data,object,customer}', to_jsonb($2::text)), '{data,object,metadata,note}', "
        "'\"<b>25 credits</b> & more\"') WHERE event_id = $1",
        needle,
        NEEDLE_CUSTOMER,
    )
    connect = await insert_event(db, status="ignored", email="platform@example.com", age_seconds=7)
    await db.execute(
        "UPDATE stripe_events SET account = $2, status_reason = 'connect_account_not_allowed', "
        "raw_data = jsonb_set(raw_data, '{account}', to_jsonb($2::text)) WHERE event_id = $1",
        connect,
        CONNECT_ACCOUNT,
    )
    purchase = await db.fetchval(
        "SELECT event_id FROM credit_transactions WHERE checkout_session_id = 'cs_test_done_0_0'"
    )
    return {"needle": needle, "connect": connect, "purchase": purchase}


async def _no_horizontal_scroll(page: Page) -> None:
    widths = await page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], f"the page scrolls sideways: {widths}"


async def _ids_whole(page: Page) -> None:
    """Every id on the page is on screen in full: not clipped, not cut, not hidden."""
    clipped = await page.evaluate(
        """() => [...document.querySelectorAll("code.id")].filter((el) => {
             const box = el.getBoundingClientRect();
             if (!el.offsetParent || !el.textContent) return false;
             const holder = el.parentElement
               .closest("td, dd, .card, h1, li, p, div").getBoundingClientRect();
             return el.scrollWidth > el.clientWidth + 1 || box.right > innerWidth || box.left < 0
               || box.right > holder.right + 1 || el.getClientRects().length > 1;
           }).map((el) => el.textContent)"""
    )
    assert clipped == [], f"ids cut or off screen: {clipped}"


@pytest.mark.parametrize("width", [800, 1400])
async def test_an_operator_answers_who_paid_what_moved_and_is_anything_stuck(
    browser: Browser, console_url: str, db: asyncpg.Connection, width: int
) -> None:
    ids = await _arrange_glance(db)
    ctx = await browser.new_context(base_url=console_url, viewport={"width": width, "height": 900})
    await ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=console_url)
    docs = width == 1400
    try:
        page = await ctx.new_page()
        await _log_in(page)

        # Overview: "is anything stuck?" above the fold, counts linked to their lists
        await expect(page.get_by_role("heading", name="Is anything stuck?")).to_be_visible()
        stuck = await page.locator("#stuck").bounding_box()
        assert stuck is not None and stuck["y"] + stuck["height"] <= 900, stuck
        await expect(page.locator("#failed b")).to_have_text("51")
        assert await page.locator("#failed").get_attribute("href") == "/events?status=failed"
        assert await page.locator("#waiting").get_attribute("href") == "/events?status=waiting"
        await expect(page.locator("#oldest")).to_contain_text("oldest unprocessed")
        await expect(page.locator("#failures-day")).to_contain_text("user_not_found 51")
        await expect(page.locator("#failure-reasons")).to_contain_text("user_not_found")
        await expect(page.locator("#reconcile")).to_contain_text("last reconcile")
        await expect(page.locator("svg.chart")).to_have_count(2)
        await expect(page.locator("#credits")).to_contain_text("+360")  # 12 users x (10 + 20) sold
        await _no_horizontal_scroll(page)
        await _shot(page, f"overview-{width}", docs=docs)

        # Event list: amount, signed credits, the user linked; failures red, ignored grey
        await page.goto("/events")
        purchase = page.locator("tr", has=page.locator(f"text={ids['purchase']}"))
        await expect(purchase).to_contain_text("10.00 USD")
        await expect(purchase.locator("td.credits")).to_have_text("+10")
        user_link = purchase.locator("td.user a")
        await expect(user_link).to_have_text("buyer0@example.com")
        assert re.fullmatch(r"/users/\d+", await user_link.get_attribute("href") or "")
        failed = page.locator("tr.row-failed .badge").first
        assert await failed.evaluate("el => getComputedStyle(el).backgroundColor") == RED
        ignored = page.locator("tr", has=page.locator(f"text={ids['connect']}")).locator(".badge")
        assert await ignored.evaluate("el => getComputedStyle(el).backgroundColor") == GREY
        assert "connected account" in (await ignored.get_attribute("title") or "")
        await _no_horizontal_scroll(page)
        await _ids_whole(page)
        await _shot(page, f"events-{width}", docs=docs)

        # Search: id prefixes, part of an email (any case), and a bad filter kept inline
        rows = page.locator("table.events tbody tr")
        for term in (ids["needle"][:14], "cs_test_browser", NEEDLE_CUSTOMER[:12], "LATE.SIGN"):
            await page.goto("/events?q=" + term)
            await expect(rows).to_have_count(1)
            await expect(rows.first).to_contain_text(ids["needle"])
        await page.goto("/events?q=buyer1")  # buyer1, buyer10, buyer11
        await expect(rows).to_have_count(6)
        await page.goto("/events?status=failed&since=bogus&q=example.com")
        await expect(page.get_by_role("alert")).to_contain_text("'bogus' is not a date")
        await expect(page.get_by_label("Status")).to_have_value("failed")
        await expect(page.get_by_label("Search")).to_have_value("example.com")
        await expect(page.get_by_label("From")).to_have_value("bogus")
        await _no_horizontal_scroll(page)
        await _shot(page, f"events-bad-filter-{width}")

        # Event page: the summary card, Dashboard links, the payload as Stripe sent it
        await page.goto(f"/events/{ids['purchase']}")
        summary = page.locator("#summary")
        await expect(summary).to_contain_text("buyer0@example.com")
        await expect(summary).to_contain_text("10.00 USD")
        await expect(summary).to_contain_text("+10 PURCHASE")
        stripe = page.get_by_role("link", name="Event in Stripe ↗")
        assert await stripe.get_attribute("href") == (
            f"https://dashboard.stripe.com/test/events/{ids['purchase']}"
        )
        payment = await page.get_by_role("link", name="Payment in Stripe ↗").get_attribute("href")
        assert re.fullmatch(r"https://dashboard\.stripe\.com/test/payments/pi_\w+", payment or "")
        await page.locator("#payload > summary").click()
        keys = page.locator("#payload .tree > details > .kids > * .k")
        assert (await keys.nth(0).text_content(), await keys.nth(1).text_content()) == (
            '"id"',
            '"object"',
        )
        await _no_horizontal_scroll(page)
        await _ids_whole(page)
        await _shot(page, f"event-{width}", docs=docs)
        await page.locator("h1 button.copy").click()
        assert await page.evaluate("navigator.clipboard.readText()") == ids["purchase"]
        await expect(page.locator("h1 button.copy")).to_have_text("copied")

        await page.goto(f"/events/{ids['needle']}")
        await page.locator("#payload > summary").click()
        tree = page.locator("#payload .tree")
        await expect(tree).to_contain_text('"<b>25 credits</b> & more"')  # unescaped
        data = page.locator(
            "#payload details.j", has=page.locator("> summary .k", has_text='"data"')
        )
        await expect(data.locator("> .kids").first).to_be_visible()
        await data.locator("> summary").first.click()  # collapsible
        await expect(data.locator("> .kids").first).to_be_hidden()
        await page.goto(f"/events/{ids['connect']}")
        connect = await page.get_by_role("link", name="Event in Stripe ↗").get_attribute("href")
        assert connect == (
            f"https://dashboard.stripe.com/{CONNECT_ACCOUNT}/test/events/{ids['connect']}"
        )
        await expect(page.locator("#why")).to_contain_text("STRIPE_CONNECT_ACCOUNTS")

        # User page, by the Stripe customer id an operator pastes
        await page.goto(f"/users/{NEEDLE_CUSTOMER}")
        await expect(page.get_by_text("late.signup@example.com")).to_be_visible()
        await page.goto("/users/buyer0@example.com")
        await expect(page.locator("#balance")).to_contain_text("30")
        await _no_horizontal_scroll(page)
        await _shot(page, f"user-{width}", docs=docs)
    finally:
        await ctx.close()


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
