"""structlog set up once per process, with a redaction step no log line can bypass.

JSON to stdout in production, a console renderer in development; stdlib loggers (uvicorn,
arq, asyncpg) go through the same processors via `ProcessorFormatter`. The `redact`
processor runs last before rendering, on every event from every logger.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal

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
_configured = False


def redact_text(text: str) -> str:
    """Mask emails, Stripe secrets, signature hashes and DSN passwords inside free text."""
    text = _SECRET.sub(lambda m: f"{m.group(1)}_{REDACTED}", text)
    text = _SIGNATURE.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    text = _DSN_PASSWORD.sub(lambda m: f"{m.group(1)}***@", text)
    return _EMAIL.sub(REDACTED, text)


def _redact_value(key: str, value: Any) -> Any:
    if key.lower() in _SENSITIVE_KEYS and value is not None:
        return REDACTED
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
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
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
    handler = logging.StreamHandler(_CurrentStream(stream))
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
