"""Console sessions and CSRF tokens: a signed cookie AND a row on the server.

Cookie value: `base64url(json{"u": operator, "sid": random, "exp": unix time}).base64url(mac)`.
The key is derived from every operator token, so rotating or removing a token logs every
session out; a session whose operator is no longer configured is refused too. The cookie is
HttpOnly, SameSite=Strict, Path=/, Secure on https, and expires (CONSOLE_SESSION_HOURS).

A signature alone cannot be taken back, so each session also has a row in
`console_sessions` (keyed by the SHA-256 of its id: the table holds no usable cookie).
A cookie is a session only while its row lives: logout deletes it, and it dies at its
expiry, after CONSOLE_IDLE_MINUTES unused, or at start-up once its operator is no longer in
OPS_USERS / OPS_TOKEN. A replayed cookie then gets the login page (OWASP: server-side
invalidation on logout, idle and absolute timeouts).

CSRF: each form carries `csrf = HMAC(key, "csrf:" + sid)`: bound to the session, so a token
from another session or none is refused (403), on top of SameSite=Strict.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import orjson

from webhook_worker.db import store
from webhook_worker.db.queries import query

COOKIE_NAME = "ww_console"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    operator: str
    sid: str
    expires: int


class Signer:
    """Issues and checks session cookies and CSRF tokens for a fixed set of operators."""

    def __init__(self, operators: tuple[tuple[str, str], ...], lifetime_seconds: int) -> None:
        material = b"\0".join(f"{name}:{token}".encode() for name, token in sorted(operators))
        self._key = hashlib.sha256(b"webhook-worker console session v1\0" + material).digest()
        self._names = {name for name, _ in operators}
        self.lifetime = lifetime_seconds

    def _mac(self, message: bytes) -> bytes:
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def issue(self, operator: str, now: float | None = None) -> tuple[str, Session]:
        session = Session(
            operator=operator,
            sid=secrets.token_urlsafe(16),
            expires=int((now or time.time()) + self.lifetime),
        )
        body = _b64(
            orjson.dumps({"u": session.operator, "sid": session.sid, "exp": session.expires})
        )
        return f"{body}.{_b64(self._mac(body.encode()))}", session

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie carries, or None when absent, forged, expired or revoked."""
        if not cookie or "." not in cookie or len(cookie) > 1024:
            return None
        body, _, mac = cookie.partition(".")
        try:
            given = _unb64(mac)
            data = orjson.loads(_unb64(body))
        except (ValueError, orjson.JSONDecodeError):
            return None
        if not hmac.compare_digest(given, self._mac(body.encode())):
            return None
        if not isinstance(data, dict):
            return None
        operator, sid, expires = data.get("u"), data.get("sid"), data.get("exp")
        if (
            not isinstance(operator, str)
            or not isinstance(sid, str)
            or not isinstance(expires, int)
        ):
            return None
        if expires <= (now or time.time()) or operator not in self._names:
            return None
        return Session(operator=operator, sid=sid, expires=expires)

    def csrf_token(self, session: Session) -> str:
        return _b64(self._mac(f"csrf:{session.sid}".encode()))

    def check_csrf(self, session: Session, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(
            str(given).encode(), self.csrf_token(session).encode()
        )


# --- the server side ---------------------------------------------------------------------


def _sid_hash(sid: str) -> bytes:
    return hashlib.sha256(sid.encode()).digest()


async def record(
    pool: store.Pool, session: Session, lifetime_seconds: int, idle_seconds: int
) -> None:
    """Store a new session (and drop the expired and idle ones while at it)."""
    async with store.acquire(pool, "starting a console session") as conn:
        await conn.execute(query("console_sessions_prune"), float(idle_seconds))
        await conn.execute(
            query("console_session_start"),
            _sid_hash(session.sid),
            session.operator,
            float(lifetime_seconds),
        )


async def is_live(pool: store.Pool, session: Session, idle_seconds: int) -> bool:
    """Whether the server still holds `session` (and mark it used now)."""
    async with store.acquire(pool, "checking a console session") as conn:
        row = await conn.fetchval(
            query("console_session_touch"),
            _sid_hash(session.sid),
            session.operator,
            float(idle_seconds),
        )
    return row is not None


async def end(pool: store.Pool, session: Session) -> None:
    async with store.acquire(pool, "ending a console session") as conn:
        await conn.execute(query("console_session_end"), _sid_hash(session.sid))


async def end_stale(pool: store.Pool, operators: list[str], idle_seconds: int) -> None:
    """At start-up: end the sessions of removed operators and the expired or idle ones."""
    async with store.acquire(pool, "ending stale console sessions") as conn:
        await conn.execute(query("console_sessions_end_others"), operators)
        await conn.execute(query("console_sessions_prune"), float(idle_seconds))
