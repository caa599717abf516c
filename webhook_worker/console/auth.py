"""Logging operators in and guarding every page and form.

- Pages without a valid session cookie redirect (303) to /login?next=…; POSTs without one
  are 403 (a form cannot be replayed after a login).
- Every POST needs the session's CSRF token in the `csrf` form field (or `X-CSRF-Token`),
  and an `Origin`, when sent, must be this console's own: else 403.
- Login compares the token against every operator's in constant time; failures from one
  address are slowed down (`AuthThrottle`, shared with the /ops API's logic).
- The login form has its own CSRF pair (a nonce cookie and the matching field).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from webhook_worker.console.session import COOKIE_NAME, Session, Signer
from webhook_worker.log import get_logger
from webhook_worker.ops.http_api import AuthThrottle, match_operator

log = get_logger("webhook_worker.console")
Page = Callable[[Request], Awaitable[Response]]
LOGIN_NONCE_COOKIE = "ww_login"
_MAX_FORM_BYTES = 64 * 1024


class Forbidden(Exception):
    """A POST without a session, a CSRF token or from another origin."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form, size-capped (no multipart: the console never uploads files)."""
    if hasattr(request.state, "form"):
        return dict(request.state.form)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            raise Forbidden("the form is too large")
    form = dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
    request.state.form = form
    return form


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return origin == f"{request.url.scheme}://{request.headers.get('host', '')}"


def current_session(request: Request) -> Session | None:
    signer: Signer = request.app.state.signer
    return signer.read(request.cookies.get(COOKIE_NAME))


def safe_next(target: str | None) -> str:
    """Only a path on this console: never `//host` or a full URL (open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def require_session(handler: Page) -> Page:
    """GET: redirect to login without a session. POST: session + CSRF + same origin."""

    async def guarded(request: Request) -> Response:
        session = current_session(request)
        if request.method == "GET":
            if session is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
        else:
            if session is None:
                raise Forbidden("your session has expired; log in again")
            if not _same_origin(request):
                raise Forbidden("this form was posted from another site")
            form = await read_form(request)
            given = form.get("csrf") or request.headers.get("x-csrf-token")
            if not request.app.state.signer.check_csrf(session, given):
                raise Forbidden("the form's CSRF token is missing or stale; reload the page")
        request.state.session = session
        return await handler(request)

    return guarded


def login_nonce(request: Request) -> tuple[str, str]:
    """The login form's nonce (kept in a cookie) and its CSRF token."""
    nonce = request.cookies.get(LOGIN_NONCE_COOKIE) or secrets.token_urlsafe(16)
    signer: Signer = request.app.state.signer
    return nonce, signer.csrf_token(Session("", f"login:{nonce}", 0))


async def check_login(request: Request, form: dict[str, str]) -> str | None:
    """The operator the posted token belongs to, or None (throttled per address)."""
    throttle: AuthThrottle = request.app.state.login_throttle
    client = client_of(request)
    delay = throttle.delay(client)
    if delay:
        await asyncio.sleep(delay)
    nonce = request.cookies.get(LOGIN_NONCE_COOKIE, "")
    signer: Signer = request.app.state.signer
    if not nonce or not signer.check_csrf(Session("", f"login:{nonce}", 0), form.get("csrf")):
        raise Forbidden("the login form's CSRF token is missing or stale; reload the page")
    operator = match_operator(form.get("token", "").strip(), request.app.state.operators)
    if operator is None:
        throttle.failed(client)
        log.warning("console_login_refused", client=client)
        return None
    throttle.succeeded(client)
    log.info("console_logged_in", operator=operator, client=client)
    return operator
