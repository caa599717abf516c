"""`POST /webhooks/stripe`: read the body, verify `Stripe-Signature`, parse, store, answer.

Per request: read the body under a size cap → verify the signature → parse the envelope →
store the row (group commit, which also enqueues) → `200 {"received": true, "duplicate": …}`.
A 200 always means the row is committed. One canonical log line per request.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from webhook_worker import metrics
from webhook_worker.config import Settings
from webhook_worker.envelope import EnvelopeRow, parse_envelope
from webhook_worker.errors import PayloadError, PermanentError, SignatureError, TransientError
from webhook_worker.log import get_logger, redact_text
from webhook_worker.receiver.body import (
    BodyBudget,
    BodyTooLarge,
    ClientGone,
    Overloaded,
    header,
    read_body,
)
from webhook_worker.receiver.group_commit import GroupCommitter
from webhook_worker.receiver.signature import verify_signature

WEBHOOK_PATHS = (
    "/webhooks/stripe",
    "/webhooks/stripe/hotfix",
    "/api/stripe/webhook",
    "/api/stripe/webhook/hotfix",
)
_JSON = b"application/json"
_RECEIVED_NEW = orjson.dumps({"received": True, "duplicate": False})
_RECEIVED_DUPLICATE = orjson.dumps({"received": True, "duplicate": True})

log = get_logger("webhook_worker.receiver")
_stdlib_log = logging.getLogger("webhook_worker.receiver")


@dataclass
class _Outcome:
    """How one webhook request ended: the status, its labels for metrics and its log event."""

    status: int
    outcome: str
    log_event: str
    reason: str = ""
    body: bytes = b""
    fields: dict[str, Any] = field(default_factory=dict)
    close: bool = False


class WebhookEndpoint:
    """`POST /webhooks/stripe` and its aliases; also logs one canonical line per request.

    A plain ASGI app, reached by the app's fast lane for POSTs (`ReceiverApp`); Starlette's
    router answers 405 to other methods. The hot path reads the body and two headers straight
    from ASGI and sends a pre-rendered answer, without building a Request, a Response and
    their wrappers (a sizeable part of the receiver's CPU per event on the benchmark).
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._budget = BodyBudget(settings.max_body_bytes_in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        outcome = await self._handle(scope, receive)
        duration = time.perf_counter() - started
        _record(outcome, duration, scope["path"])
        headers = [(b"content-type", _JSON), (b"content-length", str(len(outcome.body)).encode())]
        if outcome.close:  # the body was not read to its end: do not keep the connection
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": outcome.status, "headers": headers})
        await send({"type": "http.response.body", "body": outcome.body})

    async def _handle(self, scope: Scope, receive: Receive) -> _Outcome:
        try:
            body = await read_body(scope, receive, self._settings.max_body_bytes, self._budget)
            row = self._accept(body, header(scope, b"stripe-signature"))
        except ClientGone:
            return _rejected(400, "client_gone", "request_abandoned", "client_disconnected")
        except BodyTooLarge:
            return _rejected(413, "too_large", "body_rejected", "body_too_large", close=True)
        except Overloaded:
            metrics.LISTENER_REFUSED.labels("body_bytes_in_flight").inc()
            return _rejected(503, "overloaded", "body_rejected", "body_bytes_in_flight", close=True)
        except SignatureError as exc:
            return _rejected(400, "bad_signature", "signature_rejected", exc.reason)
        except PayloadError as exc:
            return _rejected(400, "bad_payload", "payload_rejected", exc.reason)
        committer: GroupCommitter = scope["app"].state.committer
        try:
            duplicate = await committer.submit(row)
        except (TransientError, PermanentError, TimeoutError) as exc:
            failed = _rejected(503, "store_failed", "event_store_failed", type(exc).__name__)
            # The driver's message (e.g. "permission denied for table stripe_events"), so the
            # log says why; redacted like every logged error.
            error = redact_text(str(exc) or type(exc).__name__)[:300]
            failed.fields.update(stripe_event_id=row.event_id, event_type=row.type, error=error)
            return failed
        return _Outcome(
            status=200,
            outcome="duplicate" if duplicate else "accepted",
            log_event="event_received",
            body=_RECEIVED_DUPLICATE if duplicate else _RECEIVED_NEW,
            fields={
                "stripe_event_id": row.event_id,
                "event_type": row.type,
                "duplicate": duplicate,
                "livemode": row.livemode,
            },
        )

    def _accept(self, body: bytes, header: str | None) -> EnvelopeRow:
        """Verify (unless E2E_TEST_MODE bypasses it), then parse the envelope."""
        settings = self._settings
        if not settings.e2e_test_mode:
            verify_signature(body, header, settings.webhook_secrets, settings.webhook_tolerance)
        row = parse_envelope(body)
        if settings.e2e_test_mode and row.livemode:
            raise PayloadError("livemode_in_test_mode")
        return row


def _rejected(
    status: int, outcome: str, log_event: str, reason: str, *, close: bool = False
) -> _Outcome:
    body = orjson.dumps({"received": False, "error": outcome, "reason": reason})
    return _Outcome(status, outcome, log_event, reason=reason, body=body, close=close)


def _record(outcome: _Outcome, duration: float, path: str) -> None:
    """Metrics and the one canonical log line for a webhook request."""
    metrics.labelled(metrics.REQUESTS, outcome.outcome, outcome.reason).inc()
    metrics.REQUEST_SECONDS.observe(duration)
    if outcome.outcome == "duplicate":
        metrics.DUPLICATES.inc()
    if outcome.outcome == "bad_signature":
        metrics.SIGNATURE_FAILURES.labels(outcome.reason).inc()
    level = _log_level(outcome.status)
    if not _stdlib_log.isEnabledFor(level):  # at LOG_LEVEL=warning, accepted events log nothing
        return
    fields: dict[str, Any] = {
        "outcome": outcome.outcome,
        "status": outcome.status,
        "path": path,
        "duration_ms": round(duration * 1000, 3),
        **outcome.fields,
    }
    if outcome.reason:
        fields["reason"] = outcome.reason
    log.log(level, outcome.log_event, **fields)


def _log_level(status: int) -> int:
    if status >= 500:
        return logging.ERROR
    return logging.WARNING if status >= 400 else logging.INFO
