"""The console's front door, one ASGI middleware before every page and form.

1. A state-changing request that does not come from the console's own pages
   (`auth.from_own_pages`: Origin, else Sec-Fetch-Site, else Referer) is refused (403)
   before any route or body is read.
2. The session cookie is checked, its signature and then the server's row
   (`auth.live_session`); the live session, or None, is what `auth.current_session` gives
   every route. Postgres unavailable: 503, never a session taken on trust.

Exempt: /static, /healthz and the /ops JSON API (bearer tokens, which a browser never sends
by itself, so no cross-site request can carry one).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from webhook_worker.console import views
from webhook_worker.console.auth import Forbidden, from_own_pages, live_session
from webhook_worker.errors import TransientError

_EXEMPT = ("/static/", "/ops/")


def _exempt(path: str) -> bool:
    return path == "/healthz" or path.startswith(_EXEMPT)


class ConsoleGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        request = Request(scope)  # headers and cookies only: the body is left to the route
        request.state.console_session = None
        response: Response | None = None
        if not from_own_pages(request.method, request.url.scheme, request.headers):
            refused = Forbidden("this request did not come from the console's own pages")
            response = await views.forbidden(request, refused)
        else:
            try:
                request.state.console_session = await live_session(request)
            except TransientError:
                message = "The database is unavailable; try again in a moment."
                response = views.error_page(request, 503, message)
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
