"""`webhook-worker console`: the ops pages and the /ops JSON API on their own listener.

Everything shares one asyncpg pool and one ArqRedis (the lifespan). Every response carries
the security headers below; pages are `no-store` so a shared machine's back button does not
show balances after logout. Uvicorn's access log is off: query strings can hold an email.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from webhook_worker import job_queue as queue
from webhook_worker.config import Settings
from webhook_worker.console import credits_views, present, views
from webhook_worker.console import session as sessions
from webhook_worker.console.auth import Forbidden, LoginThrottle, require_session
from webhook_worker.console.guard import ConsoleGuard
from webhook_worker.console.session import Signer
from webhook_worker.db import store
from webhook_worker.errors import ConfigError, TransientError
from webhook_worker.log import configure_logging
from webhook_worker.ops import http_api as ops_api

_HERE = Path(__file__).resolve().parent
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    # same-origin, not no-referrer: with no-referrer Chromium sends `Origin: null` on form
    # posts, and the Origin check (auth.py) refuses null (a sandboxed frame sends it too).
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeaders:
    """Adds the headers above to every response; `no-store` to all but /static."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cacheable = scope["path"].startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += SECURITY_HEADERS
                if not cacheable:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def _routes(settings: Settings, throttle: LoginThrottle) -> list[BaseRoute]:
    page = require_session
    return [
        Route("/login", views.login_page, methods=["GET"]),
        Route("/login", views.login, methods=["POST"]),
        Route("/logout", views.logout_expired, methods=["POST"]),
        Route("/", page(views.overview), methods=["GET"]),
        Route("/events", page(views.events), methods=["GET"]),
        Route("/events/{event_id}", page(views.event), methods=["GET"]),
        Route("/events/{event_id}/status", page(views.event_status), methods=["GET"]),
        Route("/events/{event_id}/replay", page(views.replay_event), methods=["POST"]),
        Route("/replay", page(views.bulk_form), methods=["GET"]),
        Route("/replay/preview", page(views.bulk_preview), methods=["POST"]),
        Route("/replay/run", page(views.bulk_run), methods=["POST"]),
        Route("/replay/{audit_id}", page(views.bulk_result), methods=["GET"]),
        Route("/replay/{audit_id}/progress", page(views.bulk_progress), methods=["GET"]),
        Route("/users", page(views.user_search), methods=["GET"]),
        Route("/users/{key}", page(views.user), methods=["GET"]),
        Route("/users/{key}/credits", page(credits_views.change_credits), methods=["POST"]),
        Route("/healthz", _healthz, methods=["GET"]),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
        *ops_api.ops_routes(settings, throttle),  # one throttle: guesses on both count
    ]


async def _healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _bad_input(request: Request, exc: Exception) -> Response:
    message = exc.message if isinstance(exc, ConfigError) else str(exc)
    if request.url.path.endswith(("/status", "/progress")):
        return JSONResponse({"error": message}, status_code=400)
    return views.error_page(request, 400, message)


async def _unavailable(request: Request, exc: Exception) -> Response:
    message = "The database or Redis is unavailable; try again in a moment."
    if request.url.path.endswith(("/status", "/progress")):
        return JSONResponse({"error": message}, status_code=503)
    return views.error_page(request, 503, message)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "\u2014"
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(_HERE / "templates"))
    filters = templates.env.filters
    filters["ts"] = present.timestamp
    filters["age"] = _age
    filters["money"] = present.money
    filters["signed"] = present.signed
    filters["meaning"] = present.reason_meaning
    filters["error_reason"] = present.error_reason
    filters["about"] = present.about
    filters["soft"] = present.soft_breaks
    filters["stripe_items"] = present.stripe_order
    filters["scalar"] = present.scalar
    templates.env.tests["stripe_id"] = present.is_stripe_id
    return templates


def create_app(settings: Settings) -> Starlette:
    """The console app; refuses to build without an operator (OPS_TOKEN / OPS_USERS)."""
    operators = settings.require_operators()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await store.create_pool(settings)
        redis = queue.connect_redis_lazily(settings)
        app.state.pool, app.state.redis = pool, redis
        # A removed operator's sessions end now (their cookies no longer verify anyway).
        with contextlib.suppress(TransientError):
            names = sorted({name for name, _ in operators})
            await sessions.end_stale(pool, names, settings.console_idle_minutes * 60)
        try:
            yield
        finally:
            await redis.aclose()
            await pool.close()

    handlers: dict[Any, Any] = {
        Forbidden: views.forbidden,
        ConfigError: _bad_input,
        TransientError: _unavailable,
    }
    throttle = LoginThrottle()
    app = Starlette(
        routes=_routes(settings, throttle), lifespan=lifespan, exception_handlers=handlers
    )
    app.state.settings = settings
    app.state.operators = operators
    app.state.signer = Signer(operators, settings.console_session_hours * 3600)
    app.state.login_throttle = throttle
    app.state.templates = _templates()
    app.state.guarded_logout = require_session(views.logout)
    app.add_middleware(ConsoleGuard)
    app.add_middleware(SecurityHeaders)
    return app


def create_app_from_env() -> Starlette:
    """The uvicorn factory behind `webhook-worker console`."""
    settings = Settings.from_env()
    settings.require_database()
    configure_logging(settings.log_format, settings.log_level, e2e_bypass=settings.e2e_test_mode)
    return create_app(settings)
