"""The webhook receiver: read, verify, store, enqueue, answer — and never lose or double an event.

Per request: read the body under a size cap → verify `Stripe-Signature` → parse the envelope →
store the row (group commit) → enqueue the arq job by name → `200 {"received": true,
"duplicate": …}`. A 200 always means the row is committed; Redis only carries wake-ups, so a
failed enqueue is counted and logged while the worker's sweeper recovers the event.

Group commit: requests that reach the store in the same event-loop tick (or while earlier
batches are still in flight) share one multi-row `INSERT … ON CONFLICT DO NOTHING`, one commit
and one Redis round trip. Each request waits for its own batch and gets its own duplicate
flag; a failed batch answers every request in it with 503.

The receiver enqueues by job name and never imports the worker or the handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from arq.connections import ArqRedis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from webhook_worker import internal, metrics, ops_api, queue, runtime, store
from webhook_worker.coalesce import Coalescer
from webhook_worker.config import Settings
from webhook_worker.errors import (
    ConfigError,
    PayloadError,
    PermanentError,
    SignatureError,
    TransientError,
)
from webhook_worker.events import EnvelopeRow, parse_envelope
from webhook_worker.log import configure_logging, get_logger
from webhook_worker.signature import verify_signature

WEBHOOK_PATHS = (
    "/webhooks/stripe",
    "/webhooks/stripe/hotfix",
    "/api/stripe/webhook",
    "/api/stripe/webhook/hotfix",
)
AfterCommitHook = Callable[[Sequence[str]], Awaitable[None]]

_MAX_BATCH = 512
# Batches in flight at once. Postgres already groups the WAL flushes of concurrent commits,
# so more batches only make each one smaller: on the 2-core benchmark VM, 3 in flight gave
# ~40 % more events/s at 32 connections than 10, with a shorter tail (docs/scaling.md).
_MAX_INFLIGHT_BATCHES = 3
_DB_TIMEOUT_SECONDS = 10.0
_ENQUEUE_TIMEOUT_SECONDS = 2.0
_SAFE_ENVS = ("development", "test")
_JSON = b"application/json"
_RECEIVED_NEW = orjson.dumps({"received": True, "duplicate": False})
_RECEIVED_DUPLICATE = orjson.dumps({"received": True, "duplicate": True})

log = get_logger("webhook_worker.receiver")
_stdlib_log = logging.getLogger("webhook_worker.receiver")


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


# --- group commit --------------------------------------------------------------------------


@dataclass
class _BatchResult:
    """Per event id: the duplicate flag, or the error that kept the row out."""

    duplicate: dict[str, bool] = field(default_factory=dict)
    failed: dict[str, Exception] = field(default_factory=dict)
    to_enqueue: list[str] = field(default_factory=list)


class GroupCommitter:
    """Batches concurrent inserts into one statement and one commit, then one enqueue.

    The requests of one loop iteration share a batch (`coalesce.Coalescer`); at most
    `max_inflight` batches run at once (each holds one pooled connection), and while they
    are busy new rows queue up and form a larger next batch. Each request is answered only
    after its batch committed, with its own duplicate flag.
    """

    def __init__(
        self,
        pool: store.Pool,
        redis: ArqRedis,
        *,
        max_inflight: int,
        after_commit_hook: AfterCommitHook | None = None,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._hook = after_commit_hook
        self._batches: Coalescer[EnvelopeRow, bool] = Coalescer(
            self._commit,
            max_batch=_MAX_BATCH,
            max_inflight=max_inflight,
            interrupted=lambda: TransientError("storing events: interrupted"),
        )

    async def submit(self, row: EnvelopeRow) -> bool:
        """Store `row` durably and return whether its id was already stored.

        Raises TransientError/PermanentError when its batch could not be committed.
        """
        return await self._batches.submit(row)

    async def drain(self) -> None:
        """Wait for every queued and in-flight batch (on shutdown, before the pool closes)."""
        await self._batches.drain()

    async def _commit(self, rows: list[EnvelopeRow]) -> list[bool | Exception]:
        unique = _unique_rows(rows)
        metrics.INSERT_BATCH_SIZE.observe(len(unique))
        try:
            result = await self._store(unique)
            if self._hook is not None:
                await self._hook([r.event_id for r in unique if r.event_id not in result.failed])
            await self._enqueue(result.to_enqueue)
        except Exception as exc:  # every waiting request must get an answer, whatever failed
            error = _as_store_error(exc)
            if error is exc:
                raise
            raise error from exc
        return _answers(rows, result)

    async def _store(self, rows: list[EnvelopeRow]) -> _BatchResult:
        try:
            return await self._insert(rows)
        except PermanentError:
            if len(rows) == 1:
                raise
        # One unstorable row must not fail its neighbours: retry each alone.
        result = _BatchResult()
        for row in rows:
            try:
                single = await self._insert([row])
            except PermanentError as exc:
                result.failed[row.event_id] = exc
                continue
            result.duplicate.update(single.duplicate)
            result.to_enqueue += single.to_enqueue
        return result

    async def _insert(self, rows: list[EnvelopeRow]) -> _BatchResult:
        """One autocommitted INSERT: when it returns, the rows are durable."""
        result = _BatchResult()
        async with (
            asyncio.timeout(_DB_TIMEOUT_SECONDS),
            store.acquire(self._pool, "storing events") as conn,
        ):
            new_ids = await store.insert_events(conn, rows)
            duplicates = [r.event_id for r in rows if r.event_id not in new_ids]
            statuses = await store.event_statuses(conn, duplicates) if duplicates else {}
        for row in rows:
            result.duplicate[row.event_id] = row.event_id not in new_ids
        # A duplicate never processed yet is enqueued again; the worker's claim absorbs it.
        result.to_enqueue = [r.event_id for r in rows if r.event_id in new_ids] + [
            event_id for event_id in duplicates if statuses.get(event_id) == "received"
        ]
        return result

    async def _enqueue(self, event_ids: list[str]) -> None:
        if not event_ids:
            return
        try:
            async with asyncio.timeout(_ENQUEUE_TIMEOUT_SECONDS):
                await queue.enqueue_event_jobs(self._redis, event_ids)
        except (TransientError, TimeoutError) as exc:
            metrics.ENQUEUE_FAILURES.inc(len(event_ids))
            log.warning(
                "enqueue_failed",
                events=len(event_ids),
                error=type(exc).__name__,
                recovery="the sweeper enqueues stored events later",
            )


def _unique_rows(rows: list[EnvelopeRow]) -> list[EnvelopeRow]:
    """One row per event id, sorted so concurrent batches take index locks in one order."""
    unique: dict[str, EnvelopeRow] = {}
    for row in rows:
        unique.setdefault(row.event_id, row)
    return [unique[event_id] for event_id in sorted(unique)]


def _answers(rows: list[EnvelopeRow], result: _BatchResult) -> list[bool | Exception]:
    """Each request's answer; within a batch only the first copy of a new id is not a duplicate."""
    seen: set[str] = set()
    answers: list[bool | Exception] = []
    for row in rows:
        event_id = row.event_id
        if event_id in result.failed:
            answers.append(result.failed[event_id])
        else:
            answers.append(result.duplicate[event_id] or event_id in seen)
        seen.add(event_id)
    return answers


def _as_store_error(exc: Exception) -> Exception:
    """Project errors pass through; anything else (a bug, a failing hook) becomes a logged 503."""
    if isinstance(exc, TransientError | PermanentError):
        return exc
    log.error("batch_failed", error=type(exc).__name__, exc_info=exc)
    wrapped = TransientError(f"storing events: {type(exc).__name__}")
    wrapped.__cause__ = exc
    return wrapped


# --- request handling ----------------------------------------------------------------------


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


async def read_body(
    scope: Scope, receive: Receive, limit: int, budget: BodyBudget | None = None
) -> bytes:
    """The raw body, refused as soon as it (or its declared length) passes `limit` bytes, or
    when the process's `budget` of body bytes in flight is spent."""
    budget = budget or BodyBudget(limit)
    declared = _header(scope, b"content-length")
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


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


class WebhookEndpoint:
    """`POST /webhooks/stripe` and its aliases; also logs one canonical line per request.

    A plain ASGI app under Starlette's router (which still checks the method): the hot path
    reads the body and two headers straight from ASGI and sends a pre-rendered answer, without
    building a Request, a Response and their wrappers (a sizeable part of the receiver's CPU
    per event on the benchmark).
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._budget = BodyBudget(settings.max_body_bytes_in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        structlog.contextvars.clear_contextvars()
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
            row = self._accept(body, _header(scope, b"stripe-signature"))
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
        structlog.contextvars.bind_contextvars(stripe_event_id=row.event_id)
        committer: GroupCommitter = scope["app"].state.committer
        try:
            duplicate = await committer.submit(row)
        except (TransientError, PermanentError, TimeoutError) as exc:
            failed = _rejected(503, "store_failed", "event_store_failed", type(exc).__name__)
            failed.fields["event_type"] = row.type
            return failed
        return _Outcome(
            status=200,
            outcome="duplicate" if duplicate else "accepted",
            log_event="event_received",
            body=_RECEIVED_DUPLICATE if duplicate else _RECEIVED_NEW,
            fields={"event_type": row.type, "duplicate": duplicate, "livemode": row.livemode},
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
    metrics.REQUESTS.labels(outcome.outcome, outcome.reason).inc()
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


# --- health, readiness, metrics ------------------------------------------------------------


async def healthz(request: Request) -> Response:
    """The process is alive; says nothing about Postgres or Redis."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when Postgres and Redis both answer; a load balancer stops sending otherwise."""
    ready, checks = await internal.readiness(request.app.state.pool, request.app.state.redis)
    return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)


async def metrics_endpoint(request: Request) -> Response:
    return Response(metrics.render_latest(), media_type=metrics.CONTENT_TYPE)


# --- the application -----------------------------------------------------------------------


def refuse_unsafe(settings: Settings) -> None:
    """Refuse to build a receiver that would accept forged events in production."""
    if settings.e2e_test_mode and settings.app_env not in _SAFE_ENVS:
        raise ConfigError(
            f"E2E_TEST_MODE=true skips signature verification and is refused with "
            f"APP_ENV={settings.app_env}; set APP_ENV=development or APP_ENV=test, "
            "or E2E_TEST_MODE=false"
        )
    settings.require_receiver()


def _lifespan(
    settings: Settings, after_commit_hook: AfterCommitHook | None, freeze_heap: bool
) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await store.create_pool(settings)
        # Lazy: the receiver starts (and stores events) while Redis is down.
        redis = queue.connect_redis_lazily(settings)
        committer = GroupCommitter(
            pool,
            redis,
            max_inflight=max(1, min(_MAX_INFLIGHT_BATCHES, settings.db_pool_max // 2)),
            after_commit_hook=after_commit_hook,
        )
        app.state.pool, app.state.redis, app.state.committer = pool, redis, committer
        listener = await internal.start(
            settings, lambda: internal.readiness(pool, redis), "receiver"
        )
        frozen = runtime.freeze_startup_heap() if freeze_heap else 0
        log.info(
            "receiver_started",
            e2e_test_mode=settings.e2e_test_mode,
            env=settings.app_env,
            gc_frozen_objects=frozen,
        )
        try:
            yield
        finally:
            await internal.stop(listener)
            await committer.drain()
            await redis.aclose()
            await _close_pool(pool)
            log.info("receiver_stopped")

    return lifespan


async def _close_pool(pool: store.Pool) -> None:
    try:
        async with asyncio.timeout(10):
            await pool.close()
    except TimeoutError:
        pool.terminate()


def _routes(settings: Settings) -> list[BaseRoute]:
    endpoint = WebhookEndpoint(settings)
    routes: list[BaseRoute] = [Route(path, endpoint, methods=["POST"]) for path in WEBHOOK_PATHS]
    routes.append(Route("/healthz", healthz, methods=["GET"]))
    if settings.metrics_on_receiver:  # opt-in: internals on the public port (README)
        routes += [
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ]
    if settings.ops_on_receiver:  # opt-in: the admin API on the public port (README)
        routes += ops_api.ops_routes(settings)
    return routes


def create_app(
    settings: Settings,
    *,
    after_commit_hook: AfterCommitHook | None = None,
    freeze_heap: bool = False,
) -> Starlette:
    """The receiver app. `after_commit_hook(event_ids)` runs after each batch commits and
    before its enqueue (a test seam for "killed between insert and enqueue"); if it raises,
    the batch is answered 503 although its rows are stored, as after a crash.
    `freeze_heap` freezes the start-up heap (`runtime.freeze_startup_heap`): for a process
    of its own, not for an app built inside a test run.
    """
    refuse_unsafe(settings)
    lifespan = _lifespan(settings, after_commit_hook, freeze_heap)
    return Starlette(routes=_routes(settings), lifespan=lifespan)


def create_app_from_env() -> Starlette:
    """The uvicorn factory behind `webhook-worker serve`: settings from the environment."""
    settings = Settings.from_env()
    refuse_unsafe(settings)
    configure_logging(settings.log_format, settings.log_level, e2e_bypass=settings.e2e_test_mode)
    return create_app(settings, freeze_heap=True)
