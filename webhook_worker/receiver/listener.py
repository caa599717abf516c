"""The public listener's bounds that uvicorn does not have: header bytes and receive time.

uvicorn (httptools) bounds open connections (`limit_concurrency` → 503) and idle keep-alive
(`timeout_keep_alive`), but not the size of a header block (llhttp has no limit and httptools
accumulates each header value in memory until it ends) nor the time a client may take to
send its headers or its body: a fresh connection that sends nothing, or one byte a second,
stays open for ever. `BoundedHttpToolsProtocol` adds those three bounds at the connection,
where they cost a counter and a deadline per phase (one sweep per process, no timer per
connection) — not an ASGI middleware on every request:

- header bytes: counted as they arrive, before httptools buffers them; more than
  `MAX_HEADER_BYTES` → 431 and the connection closed;
- header time: from the connection's start (or the end of the previous response) to the end
  of the headers, `HEADER_TIMEOUT_SECONDS` → 408 and closed;
- body time: from the end of the headers to the end of the body, `BODY_TIMEOUT_SECONDS` →
  408 and closed; the application sees a disconnect and stores nothing.

The bytes of bodies held in memory at once are bounded in the app (`receiver.BodyBudget`).
The protocol also writes each answer once: uvicorn writes a response's status line and
headers, then its body, and the connection's transport (`_OneWritePerIteration`) joins
what one event-loop iteration writes into one system call (and the client reads one
packet, not two).
This subclasses uvicorn's protocol and relies on its per-connection attributes (`cycle`,
`transport`, `parser`): the one deliberate private coupling of the receiver. pyproject.toml
pins the uvicorn it was written against, `tests/test_uvicorn_contract.py` fails on a uvicorn
that renames or reshapes what it overrides or reads, and
`tests/integration/test_hostile_clients.py` exercises every bound against a real server.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from webhook_worker import metrics
from webhook_worker.config import Settings

_HEAD_END = b"\r\n\r\n"
_LINGER_SECONDS = 1.0


@dataclass(frozen=True)
class ListenerLimits:
    max_header_bytes: int
    header_timeout: float
    body_timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ListenerLimits:
        return cls(
            settings.max_header_bytes,
            settings.header_timeout_seconds,
            settings.body_timeout_seconds,
        )


_limits: ListenerLimits | None = None


class _OneWritePerIteration:
    """The connection's transport as uvicorn sees it: what it writes during one event-loop
    iteration (a response's status line and headers, then its body: two ASGI messages, two
    `write`s in uvicorn) goes out in one system call once the iteration's callbacks have
    run. Closing, half-closing and aborting write (or drop) what is held first; everything
    else is the real transport's."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def configure(settings: Settings) -> None:
    """Set this process's bounds from the one `Settings` its app factory parsed
    (`entrypoints.receiver_from_env`; uvicorn loads the app before it accepts a connection,
    in every worker process), so the environment is never parsed a second time."""
    global _limits
    _limits = ListenerLimits.from_settings(settings)


def _current_limits() -> ListenerLimits:
    if _limits is None:
        raise RuntimeError(
            "BoundedHttpToolsProtocol has no limits: serve it with the app factory "
            "webhook_worker.entrypoints:receiver_from_env, which calls listener.configure()"
        )
    return _limits


def _answer(status: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: 0\r\nconnection: close\r\n\r\n"
    )


_TOO_LARGE = _answer(b"431 Request Header Fields Too Large")
_TIMEOUT = _answer(b"408 Request Timeout")


_SWEEP_SECONDS = 0.5


class _DeadlineSweep:
    """One timer per process and event loop that expires the connections past their phase's
    deadline: a timeout fires at most `_SWEEP_SECONDS` late, and a request costs no timer."""

    _by_loop: ClassVar[dict[asyncio.AbstractEventLoop, _DeadlineSweep]] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._connections: set[BoundedHttpToolsProtocol] = set()
        self._handle: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _DeadlineSweep:
        sweep = cls._by_loop.get(loop)
        if sweep is None:
            sweep = cls._by_loop[loop] = cls(loop)
        return sweep

    def watch(self, connection: BoundedHttpToolsProtocol) -> None:
        self._connections.add(connection)
        if self._handle is None:
            self._handle = self._loop.call_later(_SWEEP_SECONDS, self._sweep)

    def forget(self, connection: BoundedHttpToolsProtocol) -> None:
        self._connections.discard(connection)

    def _sweep(self) -> None:
        now = self._loop.time()
        for connection in list(self._connections):
            connection.expire_if_due(now)
        if self._connections:
            self._handle = self._loop.call_later(_SWEEP_SECONDS, self._sweep)
        else:
            self._handle = None  # idle: the next connection starts it again
            self._by_loop.pop(self._loop, None)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus header-size, header-time and body-time bounds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = _current_limits()
        self._in_head = True
        self._head_bytes = 0
        # No timer per connection: a phase change only sets `_due`, and one sweep per process
        # (`_DeadlineSweep`, every `_SWEEP_SECONDS`) refuses the connections past theirs. A
        # timer per connection, even a lazy one, cost the open-loop p99 an order of magnitude
        # in `make bench` (15 ms without, 220-430 ms with).
        self._due = 0.0  # loop time the current phase must end by; 0 when none runs
        self._reason = ""
        self._draining = False
        self._linger: asyncio.TimerHandle | None = None

    # --- timers -----------------------------------------------------------------------

    def _arm(self, seconds: float, reason: str) -> None:
        self._due = self.loop.time() + seconds
        self._reason = reason

    def _disarm(self) -> None:
        self._due = 0.0

    def expire_if_due(self, now: float) -> None:
        """Called by the sweep: refuse the connection once its phase's deadline has passed."""
        if self._due and self._due <= now:
            self._due = 0.0
            self._refuse(_TIMEOUT, self._reason)

    def _refuse(self, answer: bytes, reason: str) -> None:
        """Answer (unless a response is already on the wire) and close the connection.

        Closing a socket that still has unread bytes sends a reset, which makes the client
        drop the answer it had not read yet; so, like nginx's lingering close, the write side
        is shut after the answer and whatever the client still sends is discarded unparsed
        for at most `_LINGER_SECONDS` before the close.
        """
        if self.transport.is_closing() or self._draining:
            return
        metrics.LISTENER_REFUSED.labels(reason).inc()
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            self.transport.close()  # mid-response: nothing sensible to add
            return
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's own answer, if any, is dropped
            cycle.message_event.set()
        self.transport.write(answer)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._draining = True
        self._due = 0.0
        self._linger = self.loop.call_later(_LINGER_SECONDS, self.transport.close)

    # --- uvicorn protocol hooks -------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        buffered = _OneWritePerIteration(transport, self.loop)
        super().connection_made(buffered)  # type: ignore[arg-type]
        self._arm(self._limits.header_timeout, "header_timeout")
        _DeadlineSweep.of(self.loop).watch(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        _DeadlineSweep.of(self.loop).forget(self)
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return  # refused: read and dropped until the lingering close
        if self._in_head:
            size = self._head_bytes + len(data)
            if size > self._limits.max_header_bytes and self._head_too_large(data):
                self._refuse(_TOO_LARGE, "header_too_large")
                return
            self._head_bytes = size
        super().data_received(data)

    def _head_too_large(self, data: bytes) -> bool:
        """Whether the header block, not a body that follows it in `data`, passes the cap.

        Only runs when this chunk takes the running count past the cap (a large first chunk
        carrying headers and body together, or an oversized header): a bounded search.
        """
        room = self._limits.max_header_bytes - self._head_bytes
        end = data.find(_HEAD_END, 0, max(room, 0) + len(_HEAD_END))
        return end < 0 or end + len(_HEAD_END) > room

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm(self._limits.body_timeout, "body_timeout")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()  # the app's turn: its own timeouts bound it
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._in_head = True
            self._head_bytes = 0
            self._arm(self._limits.header_timeout, "header_timeout")
