"""The console's "Grant / adjust" form on the user page, in a real headless Chromium (the
fixtures of tests/test_console_browser.py: Debian's chromium, a real console process on the
test's Postgres). Spending rows and open holds are shown; a grant moves the balance once,
however often the same form is sent; an adjustment below zero is refused and changes
nothing; every change is audited; a post without the CSRF token is refused."""

from __future__ import annotations

import re
from datetime import timedelta

import asyncpg
from playwright.async_api import BrowserContext, expect

from tests.test_console_browser import (  # noqa: F401 (fixtures)
    _log_in,
    _shot,
    browser,
    console_url,
    context,
    services_env,
)
from tests.worker_support import new_user
from webhook_worker import credits


async def test_an_operator_grants_and_adjusts_credits_on_the_user_page(
    context: BrowserContext,  # noqa: F811
    db: asyncpg.Connection,
) -> None:
    user = await new_user(db, "spender@example.com")
    await credits.grant(db, user, 10, idempotency_key="seed", reason="welcome")
    await credits.spend(db, user, 3, idempotency_key="render-1", description="4K render")
    await credits.hold(db, user, 2, idempotency_key="llm-7", expires_in=timedelta(hours=1))

    page = await context.new_page()
    await _log_in(page)
    await page.goto(f"/users/{user}")
    await expect(page.locator("#balance")).to_contain_text("5")
    await expect(page.locator("#open-holds")).to_have_text("1 (2 credits)")
    await expect(page.locator("#holds")).to_contain_text("llm-7")
    await expect(page.get_by_role("cell", name="4K render")).to_be_visible()
    await expect(page.get_by_role("cell", name="HOLD", exact=True)).to_be_visible()

    form = page.locator("#credits-form")
    key = await form.locator("input[name=key]").input_value()
    csrf = await form.locator("input[name=csrf]").input_value()
    await form.get_by_label("Action").select_option("grant")
    await form.get_by_label("Credits").fill("7")
    await form.get_by_label("Reason").fill("outage credit")
    await form.get_by_role("button", name="Apply").click()
    await expect(page).to_have_url(re.compile(rf"/users/{user}$"))
    await expect(page.locator("#balance")).to_contain_text("12")
    await expect(page.locator("#credits-audit")).to_contain_text("outage credit")
    await _shot(page, "user-credits")

    # The same form sent again (same idempotency key): nothing more moves or is audited.
    again = await page.request.post(
        f"/users/{user}/credits",
        form={"csrf": csrf, "key": key, "kind": "grant", "amount": "7", "reason": "outage credit"},
        headers={"Sec-Fetch-Site": "same-origin"},  # as the browser sends it from the page
    )
    assert again.ok
    assert await credits.balance(db, user) == 12

    await form.get_by_label("Action").select_option("adjust")
    await form.get_by_label("Credits").fill("-20")
    await form.get_by_label("Reason").fill("claw back")
    await form.get_by_role("button", name="Apply").click()
    await expect(page.get_by_text("has 12 credits, fewer than the 20 asked")).to_be_visible()
    assert await credits.balance(db, user) == 12

    refused = await page.request.post(
        f"/users/{user}/credits",
        form={"kind": "grant", "amount": "1000", "reason": "x"},
        headers={"Sec-Fetch-Site": "same-origin"},  # from our page, but no CSRF token
    )
    assert refused.status == 403
    assert await credits.balance(db, user) == 12

    audit = await db.fetch("SELECT who, via, action, filters FROM ops_audit ORDER BY id")
    assert [(r["who"], r["via"], r["action"]) for r in audit] == [
        ("ops", "console", "credits_grant")
    ]
