"""Reading a webhook body from ASGI under two caps: its own size, and the body bytes the
process holds in flight."""

from __future__ import annotations

from starlette.types import Receive, Scope


class BodyTooLarge(Exception):
    """The request body is larger than MAX_BODY_BYTES."""


class ClientGone(Exception):
    """The client disconnected before its whole body arrived: nothing was stored."""


class Overloaded(Exception):
    """Reading this body would pass MAX_BODY_BYTES_IN_FLIGHT for the process: 503."""


class BodyBudget:
    """Body bytes held by all requests of this process at once, capped.

    300 clients each sending a body just under MAX_BODY_BYTES and holding it open would
    otherwise hold 300 MiB; past the cap a request is answered 503 (Stripe retries) and its
    connection closed. Bodies over `SMALL_BODY` may fill only `large_limit` (3/4 of it), so
    large held-open bodies can never starve the small ones real Stripe events are. Costs two
    integer updates and a compare per body chunk.
    """

    __slots__ = ("large_limit", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.large_limit = limit * 3 // 4
        self.used = 0

    def exceeded(self, size: int, coming: int = 0) -> bool:
        """Whether the bytes in flight (plus `coming`) pass the cap for a `size`-byte body."""
        return self.used + coming > (self.limit if size <= SMALL_BODY else self.large_limit)


SMALL_BODY = 64 * 1024


async def read_body(
    scope: Scope, receive: Receive, limit: int, budget: BodyBudget | None = None
) -> bytes:
    """The raw body, refused as soon as it (or its declared length) passes `limit` bytes, or
    when the process's `budget` of body bytes in flight is spent."""
    budget = budget or BodyBudget(limit)
    declared = header(scope, b"content-length")
    if declared is not None and declared.strip().isdigit():
        length = int(declared)
        if length > limit:
            raise BodyTooLarge
        if budget.exceeded(length, coming=length):  # refuse before reading a byte of it
            raise Overloaded
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            budget.used += len(chunk)
            if size > limit:
                raise BodyTooLarge
            if budget.exceeded(size):
                raise Overloaded
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
    finally:
        budget.used -= size


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
