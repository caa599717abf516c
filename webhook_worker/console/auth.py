"""Logging operators in and guarding every page and form.

- Pages without a live session redirect (303) to /login?next=…; POSTs without one are 403
  (a form cannot be replayed after a login). A session is live while its cookie's signature
  checks AND the server still holds it (`session.is_live`): see `console/guard.py`.
- Every POST needs the session's CSRF token in the `csrf` form field (or `X-CSRF-Token`).
- Every state-changing request must come from the console's own pages
  (`from_own_pages`): an `Origin` must be ours; with no `Origin` the browser's
  `Sec-Fetch-Site: same-origin` or a `Referer` of ours must be there. Else 403.
- Login compares the token against every operator's in constant time, at once: a correct
  token is never delayed. Wrong ones are answered through `LoginThrottle`, globally one at
  a time and per address with a growing delay, so guessing in parallel gets no more tries
  per second than guessing one after another.
- The login form has its own CSRF pair (a nonce cookie and the matching field).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, quote, urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from webhook_worker.console import session as sessions
from webhook_worker.console.session import COOKIE_NAME, Session, Signer
from webhook_worker.log import get_logger
from webhook_worker.ops.http_api import match_operator
from webhook_worker.ops.throttle import LOGIN_SPACING_SECONDS, LoginThrottle

__all__ = ["LOGIN_SPACING_SECONDS", "LoginThrottle"]  # the console's view of the throttle

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


def _own_origin(scheme: str, host: str) -> str:
    return f"{scheme}://{host}"


def from_own_pages(method: str, scheme: str, headers: Headers) -> bool:
    """Whether a request may change state: GET/HEAD/OPTIONS always; anything else only when
    the browser says it comes from this console (OWASP CSRF: verify the source origin).

    `Origin` when sent must be ours (`null` never is). Without it, `Sec-Fetch-Site` must be
    `same-origin`, or, from a browser that sends neither, the `Referer` must be ours."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return True
    own = _own_origin(scheme, headers.get("host", ""))
    origin = headers.get("origin")
    if origin is not None:
        return origin == own
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site == "same-origin"
    referer = urlsplit(headers.get("referer", ""))
    return bool(referer.netloc) and _own_origin(referer.scheme, referer.netloc) == own


def current_session(request: Request) -> Session | None:
    """The live session `guard.ConsoleGuard` found for this request, if any."""
    found: Session | None = getattr(request.state, "console_session", None)
    return found


async def live_session(request: Request) -> Session | None:
    """The cookie's session when its signature checks and the server still holds it."""
    signer: Signer = request.app.state.signer
    signed = signer.read(request.cookies.get(COOKIE_NAME))
    if signed is None:
        return None
    idle = request.app.state.settings.console_idle_minutes * 60
    return signed if await sessions.is_live(request.app.state.pool, signed, idle) else None


async def start_session(request: Request, operator: str) -> str:
    """A new session for `operator`, held on the server; its cookie value."""
    signer: Signer = request.app.state.signer
    cookie, session = signer.issue(operator)
    idle = request.app.state.settings.console_idle_minutes * 60
    await sessions.record(request.app.state.pool, session, signer.lifetime, idle)
    return cookie


async def end_session(request: Request) -> None:
    """Logout: the server forgets the session, so its cookie is worth nothing any more."""
    session = current_session(request)
    if session is not None:
        await sessions.end(request.app.state.pool, session)
        log.info("console_logged_out", operator=session.operator, client=client_of(request))


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
            if not from_own_pages(request.method, request.url.scheme, request.headers):
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
    """The operator the posted token belongs to, or None once this failure's turn has come
    (`LoginThrottle`)."""
    throttle: LoginThrottle = request.app.state.login_throttle
    client = client_of(request)
    nonce = request.cookies.get(LOGIN_NONCE_COOKIE, "")
    signer: Signer = request.app.state.signer
    if not nonce or not signer.check_csrf(Session("", f"login:{nonce}", 0), form.get("csrf")):
        raise Forbidden("the login form's CSRF token is missing or stale; reload the page")
    operator = match_operator(form.get("token", "").strip(), request.app.state.operators)
    if operator is None:
        log.warning("console_login_refused", client=client)
        await throttle.failed(client)
        return None
    throttle.succeeded(client)
    log.info("console_logged_in", operator=operator, client=client)
    return operator
