"""A fake Stripe API for reconciliation tests: `GET /v1/events` in Stripe's list format
(and `GET /v1/webhook_endpoints`, for `verify`'s subscription check).

A small Starlette app served by uvicorn on loopback, reached through `STRIPE_API_BASE`, so
the official `stripe` library does the real HTTP (no mock of the library). It speaks what
the List Events API documents: `object: list`, `data` newest first, `has_more`, `url`;
`limit` (default 10, at most 100), `starting_after`, `ending_before`, `created[gte|gt|lte|lt]`,
`types[]` (the library sends `types[0]=…`), `delivery_success`. It answers 401 to a wrong
key and, on demand, 429/500 for chosen calls, and can be slowed per page.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from webhook_worker.dev.embedded import free_port

API_KEY = "rk_test_fake_reconcile_key_0001"
_INDEXED = re.compile(r"^types\[\d*\]$")
_ERRORS = {
    401: ("invalid_request_error", "Invalid API Key provided: rk_test_****0001"),
    429: ("rate_limit_error", "Too many requests hit the API too quickly."),
    500: ("api_error", "Something went wrong on Stripe's end."),
}


@dataclass
class FakeStripe:
    """The events the fake account has, and what the tests make it do."""

    events: list[dict[str, Any]] = field(default_factory=list)
    undelivered: set[str] = field(default_factory=set)
    fail_calls: dict[int, int] = field(default_factory=dict)  # call number (1-based) → status
    page_delay: float = 0.0
    calls: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    webhook_endpoints: list[dict[str, Any]] = field(default_factory=list)

    async def list_webhook_endpoints(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return _error(401)
        return JSONResponse(
            {
                "object": "list",
                "data": self.webhook_endpoints,
                "has_more": False,
                "url": "/v1/webhook_endpoints",
            }
        )

    def add(self, event: dict[str, Any], *, delivered: bool = True) -> None:
        self.events.append(event)
        if not delivered:
            self.undelivered.add(event["id"])

    def _matching(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        created = params["created"]
        types = params["types"]
        delivery = params.get("delivery_success")
        ordered = sorted(self.events, key=lambda e: (e["created"], e["id"]), reverse=True)
        return [
            e
            for e in ordered
            if all(_compare(e["created"], op, value) for op, value in created.items())
            and (not types or e["type"] in types)
            and (delivery is None or (e["id"] not in self.undelivered) == delivery)
        ]

    async def list_events(self, request: Request) -> JSONResponse:
        params = _params(request)
        self.calls.append(params)
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return _error(401)
        status = self.fail_calls.get(len(self.calls))
        if status is not None:
            return _error(status)
        if self.page_delay:
            await asyncio.sleep(self.page_delay)
        matching = self._matching(params)
        ids = [e["id"] for e in matching]
        limit = min(int(params.get("limit", 10)), 100)
        if "starting_after" in params:
            start = ids.index(params["starting_after"]) + 1
            page = matching[start : start + limit]
            has_more = start + limit < len(matching)
        elif "ending_before" in params:
            end = ids.index(params["ending_before"])
            page = matching[max(0, end - limit) : end]
            has_more = end - limit > 0
        else:
            page = matching[:limit]
            has_more = limit < len(matching)
        return JSONResponse(
            {"object": "list", "data": page, "has_more": has_more, "url": "/v1/events"}
        )


def _compare(created: int, op: str, value: int) -> bool:
    return {
        "gte": created >= value,
        "gt": created > value,
        "lte": created <= value,
        "lt": created < value,
    }[op]


def _params(request: Request) -> dict[str, Any]:
    """Stripe's form encoding back to a dict: `created[gte]`, `types[0]`, `types[]`."""
    params: dict[str, Any] = {"created": {}, "types": []}
    for key, value in request.query_params.multi_items():
        if key.startswith("created[") and key.endswith("]"):
            params["created"][key[8:-1]] = int(value)
        elif _INDEXED.match(key):
            params["types"].append(value)
        elif key == "delivery_success":
            params[key] = value == "true"
        else:
            params[key] = value
    return params


def _error(status: int) -> JSONResponse:
    kind, message = _ERRORS[status]
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


@contextlib.asynccontextmanager
async def serve_fake_stripe() -> AsyncIterator[FakeStripe]:
    """The fake on a free loopback port, in this event loop, for the duration of the block."""
    fake = FakeStripe()
    app = Starlette(
        routes=[
            Route("/v1/events", fake.list_events, methods=["GET"]),
            Route("/v1/webhook_endpoints", fake.list_webhook_endpoints, methods=["GET"]),
        ]
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + 10
    while not server.started:
        if task.done():
            task.result()
        assert asyncio.get_running_loop().time() < deadline, "the fake Stripe API did not start"
        await asyncio.sleep(0.01)
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        server.should_exit = True
        await task
