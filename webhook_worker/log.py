"""structlog set up once per process, with a redaction step no log line can bypass.

JSON to stdout in production, a console renderer in development; stdlib loggers (uvicorn,
arq, asyncpg) go through the same processors via `ProcessorFormatter`. The `redact`
processor runs last before rendering, on every event from every logger.

The service's own lines skip the stdlib machinery (a `LogRecord`, twice, the caller's frame,
the formatter): they are rendered by structlog and written to the root handler's stream,
under its lock, flushed like its lines. A worker writes one line per event, and that path
took ~60 µs of the ~90 µs a line cost; now a line costs ~15 µs (tests/test_log.py).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any, Literal

import orjson
import structlog

_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
_SECRET = re.compile(r"\b(whsec|sk_live|sk_test|rk_live|rk_test)_[A-Za-z0-9]+")
_SIGNATURE = re.compile(r"\b(v0|v1)=[0-9a-fA-F]{16,}")
_DSN_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")
_SENSITIVE_KEYS = {
    "authorization",
    "body",
    "email",
    "ops_token",
    "password",
    "raw_body",
    "secret",
    "signature",
    "stripe-signature",
    "stripe_signature",
    "token",
    "webhook_secret",
}
REDACTED = "[redacted]"
# Values that hold no text: nothing in them to mask.
_PLAIN: frozenset[type] = frozenset({int, float, bool})
_SENSITIVE_SEEN: dict[str, bool] = {}
_configured = False
_handler: logging.StreamHandler[Any] | None = None  # where every line goes (configure_logging)
_renderer: Any = structlog.processors.JSONRenderer()  # how (configure_logging)


def _may_hold_secret(text: str) -> bool:
    """Whether `text` holds what every pattern above needs: `@` (an email, a DSN password),
    `sk_`, `rk_`, `whsec_`, `v0=` or `v1=`. Most log values hold none, and six substring
    tests cost a tenth of the four regex passes they spare (a worker writes one line per
    event)."""
    return (
        "@" in text
        or "sk_" in text
        or "rk_" in text
        or "whsec_" in text
        or "v0=" in text
        or "v1=" in text
    )


def redact_text(text: str) -> str:
    """Mask emails, Stripe secrets, signature hashes and DSN passwords inside free text."""
    if not _may_hold_secret(text):
        return text
    text = _SECRET.sub(lambda m: f"{m.group(1)}_{REDACTED}", text)
    text = _SIGNATURE.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    text = _DSN_PASSWORD.sub(lambda m: f"{m.group(1)}***@", text)
    return _EMAIL.sub(REDACTED, text)


def _sensitive(key: str) -> bool:
    known = _SENSITIVE_SEEN.get(key)
    if known is None:
        known = key.lower() in _SENSITIVE_KEYS
        if len(_SENSITIVE_SEEN) < 4096:  # field names, a few dozen; payload keys stay out
            _SENSITIVE_SEEN[key] = known
    return known


def _redact_value(key: str, value: Any) -> Any:
    if value is None:
        return value
    if _sensitive(key):
        return REDACTED
    if value.__class__ in _PLAIN:
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes):
        return REDACTED
    if isinstance(value, Mapping):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(key, v) for v in value]
    return value


def redact(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: no secret, signature or email leaves the process."""
    for key, value in list(event_dict.items()):
        event_dict[key] = _redact_value(key, value)
    return event_dict


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]


def configure_logging(
    log_format: str = "json",
    level: str = "info",
    *,
    e2e_bypass: bool = False,
    stream: Literal["stdout", "stderr"] = "stdout",
) -> None:
    """Route structlog and stdlib logging through one redacting pipeline, written to
    `stream` (services log to stdout; ops commands keep stdout for their results)."""
    global _configured
    shared = _shared_processors()
    if e2e_bypass:
        shared.append(_mark_bypass)
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json_line)
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    global _renderer
    _renderer = renderer
    structlog.configure(
        processors=[*shared, redact, _render],
        logger_factory=_LineWriter,
        wrapper_class=_BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact,
            renderer,
        ],
    )
    global _handler
    flush_lines()  # held-back lines go to the stream they were written for
    handler = _handler = _OrderedHandler(_CurrentStream(stream))
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "arq", "asyncpg"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # One canonical line per request comes from the receiver; uvicorn's access log repeats it.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # The stripe library logs every API request at info; reconcile logs one line per run.
    logging.getLogger("stripe").setLevel(logging.WARNING)
    _configured = True


def _render(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """The renderer of the latest `configure_logging`: loggers cached on first use keep their
    processors, and this one looks the renderer up at each line."""
    return _renderer(logger, method, event_dict)


def _json_line(event_dict: Any, **kwargs: Any) -> str:
    """A JSON line by orjson (a tenth of `json.dumps`' time), or by `json.dumps` with the
    renderer's fallback for what orjson refuses (an int beyond 64 bits, say)."""
    try:
        return orjson.dumps(event_dict, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(event_dict, **kwargs)


class _LineWriter:
    """structlog's logger: writes each rendered line to the root handler's stream (the one
    `configure_logging` set up), under the handler's lock, flushed as its own lines are."""

    def __init__(self, name: str | None = None, *_args: Any) -> None:
        self.name = name or "root"
        self.stdlib = logging.getLogger(name)  # its level decides, as stdlib's would

    def write(self, line: str) -> None:
        handler = _handler
        if handler is None:  # not configured: as structlog's own default would
            print(line, file=sys.stdout, flush=True)
            return
        batch = _batch
        if batch is not None and batch.thread == threading.get_ident():
            batch.add(line + handler.terminator)
            return
        _write(handler, line + handler.terminator)

    debug = info = warning = error = critical = msg = write


def _write(handler: logging.StreamHandler[Any], text: str) -> None:
    handler.acquire()
    try:
        handler.stream.write(text)
        handler.flush()
    finally:
        handler.release()


class _IterationLines:
    """The service's own lines of one event-loop iteration, written (and flushed) together
    when the iteration's callbacks have run: one system call where a worker made one per
    event (a hundred per job) and the receiver one per webhook."""

    MAX_LINES = 256  # a bound on what one iteration holds back

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread = threading.get_ident()  # the loop's; other threads write at once
        self.lines: list[str] = []

    def add(self, text: str) -> None:
        lines = self.lines
        lines.append(text)
        if len(lines) == 1:
            try:
                self.loop.call_soon(self.flush)
            except RuntimeError:  # the loop is closed: nothing would run the flush
                self.flush()
        elif len(lines) >= self.MAX_LINES:
            self.flush()

    def flush(self) -> None:
        if self.lines and _handler is not None:
            text, self.lines = "".join(self.lines), []
            _write(_handler, text)


_batch: _IterationLines | None = None


def flush_lines() -> None:
    """Write what the current iteration holds back (before anything else writes directly)."""
    batch = _batch
    if batch is not None and batch.thread == threading.get_ident():
        batch.flush()


@contextmanager
def lines_per_iteration() -> Iterator[None]:
    """In a service's event loop: its own lines are written once per loop iteration, in
    order (a stdlib line, from uvicorn or arq, writes what is held back first). On exit,
    and at interpreter exit, what is held back is written. A process killed with SIGKILL
    loses the lines of the iteration it was in, a few milliseconds' worth."""
    global _batch
    _batch = _IterationLines(asyncio.get_running_loop())
    try:
        yield
    finally:
        flush_lines()
        _batch = None


atexit.register(flush_lines)


class _OrderedHandler(logging.StreamHandler[Any]):
    """The root handler: a stdlib record first writes the service's held-back lines."""

    def emit(self, record: logging.LogRecord) -> None:
        flush_lines()
        super().emit(record)


class _BoundLogger(structlog.BoundLoggerBase):
    """`log.info(event, **fields)` and its siblings, `%`-style args, `log.exception`, and
    `log.log(level, …)`, as structlog's stdlib logger has them; a line below the stdlib
    logger's level costs one `isEnabledFor` (checked at each call, so the level follows
    `configure_logging`)."""

    _logger: _LineWriter

    def _emit(self, level: int, event: str | None, args: tuple[Any, ...], kw: Any) -> Any:
        if not self._logger.stdlib.isEnabledFor(level):
            return None
        if args:
            event = (event or "") % args
        return self._proxy_to_logger(logging.getLevelName(level).lower(), event, **kw)

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._emit(logging.DEBUG, event, args, kw)

    def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._emit(logging.INFO, event, args, kw)

    def warning(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._emit(logging.WARNING, event, args, kw)

    def error(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._emit(logging.ERROR, event, args, kw)

    def critical(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._emit(logging.CRITICAL, event, args, kw)

    def exception(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        kw.setdefault("exc_info", True)
        return self._emit(logging.ERROR, event, args, kw)

    def log(self, level: int, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._emit(level, event, args, kw)


class _CurrentStream:
    """Writes to whatever `sys.stdout` (or `sys.stderr`) is at the time of each line, not at
    configure time, so a stream swapped and closed later (a test's captured output) never
    breaks logging."""

    def __init__(self, name: Literal["stdout", "stderr"]) -> None:
        self._name = name

    def write(self, text: str) -> int:
        written: int = getattr(sys, self._name).write(text)
        return written

    def flush(self) -> None:
        getattr(sys, self._name).flush()


def _mark_bypass(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event_dict["signature_bypass"] = "E2E_TEST_MODE is on: signatures are NOT verified"
    return event_dict


def get_logger(name: str) -> Any:
    return structlog.stdlib.get_logger(name)


def log_deprecations(deprecations: tuple[tuple[str, str], ...]) -> None:
    """One warning per deprecated variable in use, naming what replaces it."""
    logger = get_logger("webhook_worker.config")
    for variable, replacement in deprecations:
        logger.warning("setting_deprecated", variable=variable, replacement=replacement)
