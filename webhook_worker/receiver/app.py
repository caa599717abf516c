"""The receiver application: webhook routes, `/healthz`, the lifespan that owns the pools.

`endpoint.py` answers a webhook, `group_commit.py` stores and enqueues it, `body.py` reads
it under its caps. The receiver enqueues by job name and never imports the worker, the
handlers or the ops commands (import-linter keeps it so).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from webhook_worker import internal_listener, job_queue, metrics, runtime
from webhook_worker.config import Settings
from webhook_worker.db import store
from webhook_worker.log import get_logger
from webhook_worker.log import lines_per_iteration as log_lines_per_iteration
from webhook_worker.receiver.endpoint import WEBHOOK_PATHS, WebhookEndpoint
from webhook_worker.receiver.group_commit import AfterCommitHook, GroupCommitter

# Batches in flight at once. Postgres already groups the WAL flushes of concurrent commits,
# so more batches only make each one smaller: on the 2-core benchmark VM, 3 in flight gave
# ~40 % more events/s at 32 connections than 10, with a shorter tail (docs/scaling.md).
_MAX_INFLIGHT_BATCHES = 3

log = get_logger("webhook_worker.receiver")


# --- health, readiness, metrics ------------------------------------------------------------


async def healthz(request: Request) -> Response:
    """The process is alive; says nothing about Postgres or Redis."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when Postgres and Redis both answer; a load balancer stops sending otherwise."""
    ready, checks = await internal_listener.readiness(
        request.app.state.pool, request.app.state.redis
    )
    return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)


async def metrics_endpoint(request: Request) -> Response:
    return Response(metrics.render_latest(), media_type=metrics.CONTENT_TYPE)


# --- the application -----------------------------------------------------------------------


def _lifespan(
    settings: Settings, after_commit_hook: AfterCommitHook | None, freeze_heap: bool
) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await store.create_pool(settings)
        # Lazy: the receiver starts (and stores events) while Redis is down.
        redis = job_queue.connect_redis_lazily(settings)
        committer = GroupCommitter(
            pool,
            redis,
            max_inflight=max(1, min(_MAX_INFLIGHT_BATCHES, settings.db_pool_max // 2)),
            after_commit_hook=after_commit_hook,
            lease_seconds=settings.job_timeout_seconds + store.LEASE_MARGIN_S,
        )
        app.state.pool, app.state.redis, app.state.committer = pool, redis, committer
        listener = await internal_listener.start(
            settings, lambda: internal_listener.readiness(pool, redis), "receiver"
        )
        frozen = runtime.freeze_startup_heap() if freeze_heap else 0
        log.info(
            "receiver_started",
            e2e_test_mode=settings.e2e_test_mode,
            env=settings.app_env,
            gc_frozen_objects=frozen,
        )
        # The service's process: one log write per loop iteration, not per webhook.
        lines = log_lines_per_iteration() if freeze_heap else contextlib.nullcontext()
        try:
            with lines:
                yield
        finally:
            await internal_listener.stop(listener)
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


def _routes(
    settings: Settings, endpoint: WebhookEndpoint, extra_routes: Sequence[BaseRoute]
) -> list[BaseRoute]:
    routes: list[BaseRoute] = [Route(path, endpoint, methods=["POST"]) for path in WEBHOOK_PATHS]
    routes.append(Route("/healthz", healthz, methods=["GET"]))
    if settings.metrics_on_receiver:  # opt-in: internals on the public port (README)
        routes += [
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ]
    return [*routes, *extra_routes]


class ReceiverApp(Starlette):
    """The receiver's Starlette app, with one fast lane: a POST to a webhook path goes straight
    to its endpoint, past the router and the error and exception middleware (the endpoint
    answers every outcome itself, and uvicorn answers 500 for a bug). Everything else —
    `/healthz`, the ops routes, 405s and 404s, the lifespan — takes Starlette's way. The lane
    saves ~30 µs of the receiver's CPU per webhook (README, Performance)."""

    def __init__(self, webhook: WebhookEndpoint, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._webhook = webhook

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in _LANE:
            scope["app"] = self
            await self._webhook(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


_LANE = frozenset(WEBHOOK_PATHS)


def create_app(
    settings: Settings,
    *,
    extra_routes: Sequence[BaseRoute] = (),
    after_commit_hook: AfterCommitHook | None = None,
    freeze_heap: bool = False,
) -> ReceiverApp:
    """The receiver app. `after_commit_hook(event_ids)` runs after each batch commits and
    before its enqueue (a test seam for "killed between insert and enqueue"); if it raises,
    the batch is answered 503 although its rows are stored, as after a crash.
    `freeze_heap` freezes the start-up heap (`runtime.freeze_startup_heap`): for a process
    of its own, not for an app built inside a test run. `extra_routes` are mounted beside
    the webhook routes (the ops API with OPS_ON_RECEIVER, composed by the entry point).
    """
    settings.require_receiver()
    lifespan = _lifespan(settings, after_commit_hook, freeze_heap)
    endpoint = WebhookEndpoint(settings)
    routes = _routes(settings, endpoint, extra_routes)
    return ReceiverApp(endpoint, routes=routes, lifespan=lifespan)
