"""`webhook-worker work`: stock `arq.Worker`s, one generation after another, around the
process's own resources.

arq's `Worker.main()` lets a Redis error escape its poll loop (a restart, an error reply
mid-poll), which would end the process. The supervisor owns what must outlive that — the
Postgres pool, the coalesced statements, the handlers' context, the internal listener and
the reconcile loop (`jobs.open_resources`) — and runs a fresh `arq.Worker` per
generation (`handle_signals=False`; arq's on_startup/on_shutdown are not used). When a
Redis error escapes `main()`, it logs `redis_unavailable`, closes that generation, waits
(0.25 s doubling to 5 s) and starts the next one; `redis_recovered` once one runs again.
The jobs the closed generation was running were cancelled: each released its claimed events
(due at once), and arq runs the job again when Redis is back.

Recovery in seconds: when the first generation starts, when one starts again after Redis
errors, and when the marker key `<QUEUE_NAME>:alive` has vanished (checked every second:
Redis restarted or was flushed, losing its queue), it enqueues every event not yet processed
(`db.recovery.enqueue_unfinished`) instead of leaving them to the stale-event sweeper.

It handles SIGINT/SIGTERM itself: the current generation is closed, then the resources, and
the process exits 0, even with Redis away. In burst mode it returns when `main()` does.

Only arq's public API is used: the constructor, `main()`, `close()`, the job counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from arq import Worker
from arq.connections import ArqRedis
from redis.exceptions import RedisError

from webhook_worker import job_queue, metrics, redis_check
from webhook_worker.config import Settings
from webhook_worker.db import recovery
from webhook_worker.errors import PermanentError, TransientError
from webhook_worker.log import get_logger, lines_per_iteration, redact_text
from webhook_worker.worker import jobs
from webhook_worker.worker.resources import lease_seconds, resources

log = get_logger("webhook_worker.worker")

# Any Redis error, not only a refused connection: a server going down mid-command can also
# answer with an error reply or a protocol error.
REDIS_FAULTS = (RedisError, OSError)
FIRST_BACKOFF_S = 0.25
MAX_BACKOFF_S = 5.0
# A generation still polling after this long has recovered from an outage.
RUNNING_AFTER_S = 1.0
# How often the marker key is checked (one SET NX): a vanished marker means lost jobs.
MARKER_CHECK_S = 1.0


def _fault_text(exc: BaseException) -> str:
    return redact_text(f"{type(exc).__name__}: {exc}")


class WorkerSupervisor:
    """Runs arq Workers for `settings` until stopped (or, in burst mode, the queue is empty).

    `arq_overrides` go to every `arq.Worker` (burst, poll_delay, max_jobs…). Tests:
    `WorkerSupervisor(settings, burst=True, poll_delay=0, with_cron=False)`, then
    `await supervisor.async_run()`; `await supervisor.close()` stops one that runs in a task.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        with_cron: bool = True,
        freeze_heap: bool = False,
        **arq_overrides: Any,
    ) -> None:
        self.settings = settings
        self.options = jobs.worker_options(settings, with_cron=with_cron)
        self.options.update(arq_overrides)
        self.burst = bool(self.options.get("burst"))
        # Shared by every generation. Each generation's arq ctx is a copy of it (arq sets its
        # own `redis` there); `redis` here is a lazy client for the listener's readiness.
        self.ctx: dict[str, Any] = {
            "settings": settings,
            "reconcile_cron": with_cron,
            "freeze_heap": freeze_heap,
        }
        self.worker: Worker | None = None  # the current generation
        self.jobs_complete = 0  # of the finished generations and the current one
        self.jobs_failed = 0
        self.redis_failures = 0  # consecutive generations that ended on a Redis error
        self._stop = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False
        self._sweep_due = True  # at start, and after every Redis fault
        self._first = True
        self._marker = f"{settings.queue_name}:alive"
        # A Redis that refuses (password, ACL, database) rather than being away: since when,
        # and the error that ends the process once it lasts REDIS_STARTUP_TIMEOUT_SECONDS.
        self._refused_since: float | None = None
        self._fatal: redis_check.RedisMisconfigured | None = None

    # --- control ------------------------------------------------------------------------

    def stop(self) -> None:
        """Close the current generation and return from `async_run` (safe in a signal handler)."""
        self._stop.set()

    async def close(self) -> None:
        """Stop and wait until `async_run` has closed everything (no-op when not running)."""
        self.stop()
        if self._running:
            await self._stopped.wait()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: int) -> None:
        log.info("worker_stopping", signal=signal.Signals(signum).name)
        self.stop()

    # --- running ------------------------------------------------------------------------

    async def async_run(self) -> None:
        """Open the resources, run generations until stopped (or burst done), close all."""
        self._running = True
        self._stopped.clear()
        redis = job_queue.connect_redis_lazily(self.settings)
        self.ctx["redis"] = redis
        watcher: asyncio.Task[None] | None = None
        try:
            await jobs.open_resources(self.ctx)
            if not self.burst:
                watcher = asyncio.create_task(self._watch_marker(redis))
            await self._run_generations(redis)
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            try:
                await jobs.close_resources(self.ctx)
            finally:
                with contextlib.suppress(*REDIS_FAULTS):
                    await redis.aclose()
                self._running = False
                self._stopped.set()
        if self._fatal is not None:
            raise self._fatal

    async def _run_generations(self, redis: ArqRedis) -> None:
        while not self._stop.is_set():
            try:
                # Cheaper than letting arq's create_pool retry through an outage.
                await redis.ping()
            except REDIS_FAULTS as exc:
                self._redis_failed(exc)
                await self._back_off()
                continue
            if self._sweep_due and not self.burst:
                await self._recover(redis, "worker_started" if self._first else "redis_reconnected")
            generation = Worker(**self.options, ctx=dict(self.ctx))
            self.worker = generation
            try:
                ended = await self._run_one(generation)
            finally:
                await self._close_generation(generation)
                self.jobs_complete += generation.jobs_complete
                self.jobs_failed += generation.jobs_failed
                self.worker = None
            if ended:
                return
            await self._back_off()

    async def _run_one(self, generation: Worker) -> bool:
        """Await arq's `main()`; True when the generation ended for good (burst done or
        stopped), False when a Redis error ended it."""
        main = asyncio.create_task(generation.main())
        stop = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait(
                {main, stop}, timeout=RUNNING_AFTER_S, return_when=asyncio.FIRST_COMPLETED
            )
            if not done and self.redis_failures:  # polling again for a while: back
                log.info("redis_recovered", after_failures=self.redis_failures)
                self.redis_failures = 0
            await asyncio.wait({main, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not main.done():  # stopped: end the poll loop before arq's close()
                main.cancel()
                await asyncio.wait({main})
        if main.cancelled():
            return True
        exc = main.exception()
        if exc is None:
            return True  # burst: the queue is empty
        if not isinstance(exc, REDIS_FAULTS):
            raise exc
        self._redis_failed(exc)
        return False

    async def _recover(self, redis: ArqRedis, trigger: str) -> None:
        """Enqueue every unprocessed event now; on failure, try again at the next chance."""
        try:
            await redis.set(self._marker, b"1")
            enqueued = await recovery.enqueue_unfinished(
                resources(self.ctx).pool, redis, lease_seconds=lease_seconds(self.settings)
            )
        except (*REDIS_FAULTS, TransientError, PermanentError) as exc:
            log.warning("unfinished_events_not_enqueued", trigger=trigger, error=_fault_text(exc))
            return
        self._sweep_due = False
        self._first = False
        log.info("unfinished_events_enqueued", trigger=trigger, events=enqueued)

    async def _watch_marker(self, redis: ArqRedis) -> None:
        """Every MARKER_CHECK_S: if the marker is gone, Redis lost its data (and its queue)."""
        while True:
            await asyncio.sleep(MARKER_CHECK_S)
            if self._sweep_due:
                continue  # a generation start sweeps anyway
            try:
                lost = await redis.set(self._marker, b"1", nx=True)
            except REDIS_FAULTS:
                continue
            if lost:
                log.warning("redis_data_lost", marker=self._marker)
                await self._recover(redis, "redis_data_lost")

    def _redis_failed(self, exc: BaseException) -> None:
        self._sweep_due = True
        self.redis_failures += 1
        self._note_refusal(exc)
        metrics.REDIS_OUTAGE_RETRIES.inc()
        log.warning(
            "redis_unavailable",
            error=_fault_text(exc),
            consecutive_failures=self.redis_failures,
            retry_in_s=self._backoff(),
        )

    def _note_refusal(self, exc: BaseException) -> None:
        """A password changed or an ACL tightened while running: retried like an outage for
        REDIS_STARTUP_TIMEOUT_SECONDS, then the process stops (exit 2) naming the fix."""
        cause = redis_check.diagnose(exc, self.settings)
        if cause is None:
            self._refused_since = None
            return
        now = asyncio.get_running_loop().time()
        if self._refused_since is None:
            self._refused_since = now
        log.error("redis_misconfigured", cause=cause)
        if now - self._refused_since >= self.settings.redis_startup_timeout_seconds:
            self._fatal = redis_check.RedisMisconfigured(cause)
            self.stop()

    def _backoff(self) -> float:
        exponent = min(max(self.redis_failures - 1, 0), 10)
        return float(min(FIRST_BACKOFF_S * 2**exponent, MAX_BACKOFF_S))

    async def _back_off(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._backoff()):
                await self._stop.wait()

    async def _close_generation(self, generation: Worker) -> None:
        """arq's close(), tolerant: in its own task, so the CancelledError of a job it
        cancelled is not taken for ours; with Redis away its clean-up fails (the
        health-check key expires by itself)."""
        closing = asyncio.create_task(generation.close())
        await asyncio.wait({closing})
        if closing.cancelled():
            log.warning("worker_generation_close_interrupted")
        elif (exc := closing.exception()) is not None:
            if not isinstance(exc, REDIS_FAULTS):
                raise exc
            log.warning("redis_unavailable_at_shutdown", error=_fault_text(exc))
        if generation.pool is not None:  # close() did not get as far as closing it
            with contextlib.suppress(*REDIS_FAULTS):
                await generation.pool.aclose(close_connection_pool=True)


def run_worker(settings: Settings, *, burst: bool = False) -> None:
    """`webhook-worker work`: run until SIGINT/SIGTERM (or until the queue is empty)."""
    # One canonical line per event is ours; arq's own per-job start/finish lines repeat it.
    logging.getLogger("arq.worker").setLevel(logging.WARNING)
    loop = _new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        # A burst run drains the queue and exits: cron jobs would keep it waiting.
        supervisor = WorkerSupervisor(settings, burst=burst, with_cron=not burst, freeze_heap=True)

        async def run() -> None:
            supervisor.install_signal_handlers()
            with lines_per_iteration():  # one write per loop iteration, not per event
                await supervisor.async_run()

        loop.run_until_complete(run())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop
