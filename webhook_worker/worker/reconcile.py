"""Reconciliation: recover the events Stripe never delivered, from its List Events API.

Stripe retries a failed delivery for up to three days in live mode (three times over a few
hours in test mode), never re-sends what it created while an endpoint was disabled, and
disables an endpoint that keeps failing. Its List Events API keeps 30 days, so a run pages
through `GET /v1/events` (newest first, `created[gte]`/`created[lte]`, `types[]`, optionally
`delivery_success=false`) with the official `stripe` library's async client and feeds every
event not yet in `stripe_events` through the receiver's own store-and-enqueue path
(`insert_events` … `ON CONFLICT (event_id) DO NOTHING`, then an arq job per new id). A
delivery racing a reconcile of the same event stores one row and credits once.

Recovered rows are marked `source = 'reconcile'`; the worker applies the same scope rules
to them as to deliveries. 429, 5xx and connection faults are retried per page with
exponential backoff (tenacity; the library's own retries are off, as they skip 429); an
authentication or permission error stops the run with a message. The cron
(`run_reconcile_cron`, in the worker) covers the window from the newest successful cron
run's end (minus an overlap) to a few minutes ago, one worker of the fleet at a time under
a lease row with an expiry (`reconcile_lease`: no session lock, so it holds through
PgBouncer's transaction pooling), renewed while the run goes on, and moves its watermark
only when the whole window is done: a run cut off half-way is simply done again, so no
page is ever skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
import stripe
from arq.connections import ArqRedis
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from webhook_worker import job_queue as queue
from webhook_worker import metrics
from webhook_worker.config import STRIPE_EVENTS_HISTORY_SECONDS, Settings
from webhook_worker.db import store
from webhook_worker.db.queries import query
from webhook_worker.envelope import EnvelopeRow, parse_envelope
from webhook_worker.errors import PayloadError, TransientError, WebhookWorkerError
from webhook_worker.log import get_logger
from webhook_worker.worker import handlers

log = get_logger("webhook_worker.reconcile")

Trigger = Literal["cron", "manual"]

# The types the worker acts on (credits, debits, records): what a lost delivery costs.
RECONCILED_TYPES: tuple[str, ...] = tuple(sorted(handlers.HANDLERS))
PAGE_LIMIT = 100  # Stripe's maximum page size
# The cron leaves the newest minutes to live deliveries, and starts a little before the
# previous window's end, so an event created right at the edge is never missed.
UNTIL_LAG = timedelta(minutes=5)
OVERLAP = timedelta(minutes=15)
# The fleet lease: renewed every LEASE_SECONDS / 3 while a run goes on; a worker that died
# mid-run loses it after LEASE_SECONDS.
LEASE_NAME = "reconcile_cron"
LEASE_SECONDS = 60.0
PAGE_TRIES = 6
_SAMPLE = 50


class ReconcileError(WebhookWorkerError):
    """Reconciliation stopped: Stripe refused the request."""


@dataclass
class ReconcileResult:
    """What one run found in Stripe and did with it."""

    since: datetime
    until: datetime
    dry_run: bool
    pages: int = 0
    found: int = 0
    recovered: int = 0  # new in stripe_events (with dry_run: would be)
    already_stored: int = 0
    unreadable: list[str] = field(default_factory=list)  # ids the envelope parser refused
    recovered_ids: list[str] = field(default_factory=list)  # the first few
    enqueue_error: str | None = None


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, stripe.RateLimitError | stripe.APIConnectionError):
        return True
    status = getattr(exc, "http_status", None)
    return isinstance(exc, stripe.APIError) and isinstance(status, int) and status >= 500


class StripeEvents:
    """Pages of Stripe's List Events API, raw, through the official async client."""

    def __init__(self, settings: Settings, *, backoff_seconds: float = 0.5) -> None:
        self._http = stripe.HTTPXClient(timeout=30)
        self._client = stripe.StripeClient(
            settings.require_stripe_api(),
            base_addresses={"api": settings.stripe_api_base},
            http_client=self._http,
            max_network_retries=0,  # retried here, 429 included
        )
        self._backoff = backoff_seconds

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    async def _page(self, params: dict[str, Any]) -> dict[str, Any]:
        retrying = AsyncRetrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_attempt(PAGE_TRIES),
            wait=wait_random_exponential(multiplier=self._backoff, max=30),
            before_sleep=_log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    page = await self._client.v1.events.list_async(params)  # type: ignore[arg-type]
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            metrics.RECONCILE_ERRORS.labels("auth").inc()
            raise ReconcileError(
                f"Stripe refused STRIPE_API_KEY ({exc.http_status}): {exc.user_message or exc}; "
                "use a restricted key with Events: read for this account and mode"
            ) from None
        except stripe.StripeError as exc:
            metrics.RECONCILE_ERRORS.labels("stripe").inc()
            raise TransientError(
                f"Stripe List Events failed after {PAGE_TRIES} tries: "
                f"{type(exc).__name__} {exc.http_status}: {exc.user_message or exc}"
            ) from None
        response = page.last_response
        assert response is not None
        raw: dict[str, Any] = orjson.loads(response.body)
        return raw

    async def pages(
        self,
        *,
        since: datetime,
        until: datetime,
        types: Sequence[str],
        undelivered_only: bool = False,
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Newest first, each page's events as Stripe sent them, until `has_more` is false."""
        params: dict[str, Any] = {
            "limit": PAGE_LIMIT,
            "created": {"gte": int(since.timestamp()), "lte": int(until.timestamp())},
            "types": list(types),
        }
        if undelivered_only:
            params["delivery_success"] = False
        while True:
            page = await self._page(params)
            data = [item for item in page.get("data") or [] if isinstance(item, dict)]
            if data:
                yield data
            if not page.get("has_more") or not data:
                return
            params["starting_after"] = data[-1]["id"]


def _log_retry(state: Any) -> None:
    exc = state.outcome.exception() if state.outcome else None
    metrics.RECONCILE_ERRORS.labels("retried").inc()
    log.warning(
        "reconcile_page_retried",
        attempt=state.attempt_number,
        error=f"{type(exc).__name__}: {getattr(exc, 'http_status', '')}",
    )


def _rows(events: list[dict[str, Any]], result: ReconcileResult) -> list[EnvelopeRow]:
    """Each event as the receiver would store it; one it would refuse is reported, not stored."""
    rows = []
    for event in events:
        try:
            rows.append(parse_envelope(orjson.dumps(event)))
        except PayloadError as exc:
            result.unreadable.append(f"{str(event.get('id'))[:60]} ({exc.reason})")
    return rows


async def _store_page(
    pool: store.Pool, redis: ArqRedis | None, rows: list[EnvelopeRow], result: ReconcileResult
) -> None:
    async with store.acquire(pool, "storing reconciled events") as conn:
        if result.dry_run:
            known = await store.event_statuses(conn, [row.event_id for row in rows])
            new = [row.event_id for row in rows if row.event_id not in known]
        else:
            async with conn.transaction():
                inserted = await store.insert_events(conn, rows)
                new = [row.event_id for row in rows if row.event_id in inserted]
                with store.translate_errors("marking recovered events"):
                    await conn.execute(query("reconcile_mark_recovered"), new)
    result.recovered += len(new)
    result.already_stored += len(rows) - len(new)
    result.recovered_ids.extend(new[: max(0, _SAMPLE - len(result.recovered_ids))])
    if result.dry_run or not new:
        return
    metrics.RECONCILE_RECOVERED.inc(len(new))
    if redis is None:
        result.enqueue_error = "Redis not available; the sweeper will enqueue the events"
        return
    try:
        await queue.enqueue_events(redis, new)
    except TransientError as exc:
        # Stored `received`: the sweeper enqueues them, as after a receiver's failed enqueue.
        result.enqueue_error = f"{exc}; the events are stored and the sweeper will enqueue them"


async def _start_run(pool: store.Pool, trigger: Trigger, since: datetime, until: datetime) -> int:
    async with store.acquire(pool, "recording a reconcile run") as conn:
        with store.translate_errors("recording a reconcile run"):
            run_id = await conn.fetchval(query("reconcile_start_run"), trigger, since, until)
    return int(run_id)


async def _finish_run(
    pool: store.Pool, run_id: int, result: ReconcileResult, error: str | None
) -> None:
    async with store.acquire(pool, "recording a reconcile run") as conn:
        with store.translate_errors("recording a reconcile run"):
            await conn.execute(
                query("reconcile_finish_run"),
                run_id,
                "failed" if error else "succeeded",
                result.pages,
                result.found,
                result.recovered,
                error,
            )


async def reconcile(
    pool: store.Pool,
    redis: ArqRedis | None,
    source: StripeEvents,
    *,
    since: datetime,
    until: datetime,
    types: Sequence[str] = RECONCILED_TYPES,
    undelivered_only: bool = False,
    dry_run: bool = False,
    trigger: Trigger = "manual",
    on_page: Callable[[ReconcileResult], None] | None = None,
) -> ReconcileResult:
    """One run over [since, until]; recorded in `reconcile_runs` unless `dry_run`."""
    result = ReconcileResult(since=since, until=until, dry_run=dry_run)
    run_id = None if dry_run else await _start_run(pool, trigger, since, until)
    try:
        async for events in source.pages(
            since=since, until=until, types=types, undelivered_only=undelivered_only
        ):
            result.pages += 1
            result.found += len(events)
            rows = _rows(events, result)
            if rows:
                await _store_page(pool, redis, rows, result)
            if on_page is not None:
                on_page(result)
    except BaseException as exc:  # cancelled, refused, or a bug: the run row says so
        if run_id is not None:
            message = str(exc) or type(exc).__name__
            with contextlib.suppress(WebhookWorkerError):
                await asyncio.shield(_finish_run(pool, run_id, result, message))
        raise
    if run_id is not None:
        await _finish_run(pool, run_id, result, None)
        metrics.RECONCILE_LAST_SUCCESS.set(datetime.now(UTC).timestamp())
    log.info(
        "reconcile_finished",
        trigger=trigger,
        dry_run=dry_run,
        pages=result.pages,
        found=result.found,
        recovered=result.recovered,
        already_stored=result.already_stored,
        unreadable=len(result.unreadable),
    )
    return result


# --- the cron ------------------------------------------------------------------------------


async def cron_window(conn: store.Connection, settings: Settings) -> tuple[datetime, datetime]:
    """From the watermark (minus the overlap), or RECONCILE_LOOKBACK ago, to a few minutes ago;
    never further back than Stripe keeps events."""
    now = datetime.now(UTC)
    with store.translate_errors("reading the reconcile watermark"):
        watermark = await conn.fetchval(query("reconcile_watermark"))
    oldest = now - timedelta(seconds=STRIPE_EVENTS_HISTORY_SECONDS) + timedelta(minutes=5)
    since = (
        watermark - OVERLAP
        if watermark is not None
        else now - timedelta(seconds=settings.reconcile_lookback_seconds)
    )
    return max(since, oldest), now - UNTIL_LAG


def lease_holder_name() -> str:
    """This process, as the lease names it: host, pid and a random part (pids repeat)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def _lease(pool: store.Pool, name: str, holder: str, seconds: float, action: str) -> bool:
    """take / renew: True when `holder` holds the lease now; release: always True."""
    async with store.acquire(pool, f"{action} the reconcile lease") as conn:
        with store.translate_errors(f"{action} the reconcile lease"):
            if action == "release":
                await conn.execute(query("reconcile_release_lease"), name, holder)
                return True
            held = await conn.fetchval(query(f"reconcile_{action}_lease"), name, holder, seconds)
            return held is not None


async def _keep_lease(
    pool: store.Pool, holder: str, seconds: float, run: asyncio.Task[Any]
) -> bool:
    """Renew the lease until cancelled; if it was lost (expired and taken), cancel the run
    and return False."""
    while True:
        await asyncio.sleep(seconds / 3)
        try:
            kept = await _lease(pool, LEASE_NAME, holder, seconds, "renew")
        except WebhookWorkerError as exc:
            log.warning("reconcile_lease_renew_failed", error=str(exc))
            continue
        if not kept:
            log.warning("reconcile_lease_lost", holder=holder)
            run.cancel()
            return False


@contextlib.asynccontextmanager
async def fleet_lock(
    pool: store.Pool, *, holder: str | None = None, seconds: float = LEASE_SECONDS
) -> AsyncIterator[bool]:
    """True while this process holds the fleet's reconcile lease; False when another does.

    The lease is a row with an expiry, taken and renewed in single statements: nothing is
    held by a database session, so it behaves the same through PgBouncer. While held, it is
    renewed every `seconds / 3`; if it was lost meanwhile, the run is cancelled.
    """
    holder = holder or lease_holder_name()
    held = await _lease(pool, LEASE_NAME, holder, seconds, "take")
    if not held:
        yield False
        return
    current = asyncio.current_task()
    assert current is not None
    keeper = asyncio.create_task(_keep_lease(pool, holder, seconds, current))
    try:
        yield True
    except asyncio.CancelledError:
        if keeper.done() and not keeper.cancelled() and keeper.result() is False:
            current.uncancel()  # our own cancel: the lease was lost, not the worker stopping
            raise TransientError(
                "the reconcile lease expired and another worker took it; this run stopped "
                "(the next one starts from the last complete window)"
            ) from None
        raise
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
        with contextlib.suppress(WebhookWorkerError):
            await asyncio.shield(_lease(pool, LEASE_NAME, holder, seconds, "release"))


async def reconcile_from_watermark(
    pool: store.Pool, redis: ArqRedis | None, settings: Settings, *, backoff_seconds: float = 0.5
) -> ReconcileResult | None:
    """One cron run, if no other worker is running one; None when skipped."""
    async with fleet_lock(pool) as held:
        if not held:
            log.info("reconcile_skipped", reason="another worker holds the lease")
            return None
        async with store.acquire(pool, "reading the reconcile watermark") as conn:
            since, until = await cron_window(conn, settings)
        if since >= until:
            return None
        source = StripeEvents(settings, backoff_seconds=backoff_seconds)
        try:
            return await reconcile(pool, redis, source, since=since, until=until, trigger="cron")
        finally:
            await source.close()


async def run_reconcile_cron(
    settings: Settings, pool: store.Pool, redis: Callable[[], ArqRedis | None]
) -> None:
    """The worker's reconcile loop: every RECONCILE_INTERVAL_SECONDS, until cancelled.

    A background task of the worker process rather than an arq cron job: a run may page for
    minutes, and an arq function's timeout lengthens the in-progress key of every job.
    """
    while True:
        await asyncio.sleep(settings.reconcile_interval_seconds)
        try:
            await reconcile_from_watermark(pool, redis(), settings)
        except ReconcileError as exc:
            log.error("reconcile_failed", reason="auth", error=str(exc))
        except WebhookWorkerError as exc:
            metrics.RECONCILE_ERRORS.labels("failed").inc()
            log.warning("reconcile_failed", reason="transient", error=str(exc))
        except Exception:  # a bug must not end the loop: the next interval tries again
            metrics.RECONCILE_ERRORS.labels("crashed").inc()
            log.exception("reconcile_crashed")
