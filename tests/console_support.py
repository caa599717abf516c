"""Helpers shared by the console tests: an app client and a logged-in session."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx

from webhook_worker.config import Settings
from webhook_worker.console.app import create_app

TOKEN = "console-token-0123456789abcdef0123456789"
ALICE = "alice-token-0123456789abcdef0123456789abc"
BASE = "http://console.test"


async def console_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        # What a browser sends with every request from the console's own pages.
        headers = {"Sec-Fetch-Site": "same-origin"}
        async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=headers) as client:
            yield client


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


async def log_in(client: httpx.AsyncClient, token: str = TOKEN) -> httpx.Response:
    page = await client.get("/login")
    return await client.post("/login", data={"csrf": csrf_of(page.text), "token": token})
