"""Console sessions and CSRF tokens, signed with HMAC-SHA256 (no server-side store).

Cookie value: `base64url(json{"u": operator, "sid": random, "exp": unix time}).base64url(mac)`.
The key is derived from every operator token, so rotating or removing a token logs every
session out; a session whose operator is no longer configured is refused too. The cookie is
HttpOnly, SameSite=Strict, Path=/, Secure on https, and expires (CONSOLE_SESSION_HOURS).

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
