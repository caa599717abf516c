"""The internal listener: `/metrics` and `/readyz` on `METRICS_HOST:METRICS_PORT`, off the
public port.

`/metrics` shows sales volume, every rejection reason, RSS and open files, and `/readyz`
costs a Postgres and a Redis round trip: neither belongs on the internet-facing port. The
receiver (in its lifespan) and the worker (in `on_startup`) each start one on their own event
loop when `METRICS_PORT` is set; the default host is 127.0.0.1.

Multiprocess-safe: with several uvicorn workers (or a receiver and a worker on one host
sharing `METRICS_PORT`) the first process to bind serves and the others log that a sibling
does; `webhook-worker serve --workers N` sets `PROMETHEUS_MULTIPROC_DIR`, so whichever process
answers aggregates every process's samples.

A deliberately small HTTP/1.0 server (GET, one request per connection, head ≤ 8 KiB read
within 5 s, 32 connections at once): scrapers and probes need no more, and it has no
dependency on the public listener's stack.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable

import asyncpg
import orjson
from arq.connections import ArqRedis
from redis.exceptions import RedisError

from webhook_worker import metrics
from webhook_worker.config import Settings
from webhook_worker.db import privileges, store
from webhook_worker.errors import ConfigError, PermanentError, TransientError
from webhook_worker.log import get_logger

ReadyCheck = Callable[[], Awaitable[tuple[bool, dict[str, str]]]]

_HEAD_LIMIT = 8 * 1024
_HEAD_TIMEOUT_SECONDS = 5.0
_MAX_CONNECTIONS = 32
_PING_TIMEOUT_SECONDS = 2.0

log = get_logger("webhook_worker.internal_listener")


def _response(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _json(status: str, data: object) -> bytes:
    return _response(status, "application/json", orjson.dumps(data))


async def readiness(pool: store.Pool, redis: ArqRedis) -> tuple[bool, dict[str, str]]:
    """Whether Postgres and Redis both answer, with a word for each, and whether the role
    has every grant the service needs ("grants": ok, or what is missing and its GRANT)."""
    postgres_ok, redis_ok = await asyncio.gather(
        store.ping(pool, within=_PING_TIMEOUT_SECONDS), _ping_redis(redis)
    )
    checks = {"postgres": _word(postgres_ok), "redis": _word(redis_ok)}
    grants_ok = True
    if postgres_ok:
        missing = await _missing_grants(pool)
        grants_ok = not missing
        checks["grants"] = "; ".join(missing) if missing else "ok"
    return postgres_ok and redis_ok and grants_ok, checks


async def _missing_grants(pool: store.Pool) -> list[str]:
    try:
        async with asyncio.timeout(_PING_TIMEOUT_SECONDS), store.acquire(pool, "grants") as conn:
            return await privileges.missing_runtime_grants(conn)
    except (TransientError, PermanentError, TimeoutError, asyncpg.PostgresError):
        return []  # not answering: the postgres check says so


async def _ping_redis(redis: ArqRedis) -> bool:
    try:
        async with asyncio.timeout(_PING_TIMEOUT_SECONDS):
            await redis.ping()
        return True
    except (RedisError, OSError, TimeoutError):
        return False


def _word(ok: bool) -> str:
    return "ok" if ok else "unavailable"


class InternalListener:
    """Serves GET /metrics, /readyz and /healthz; everything else is 404/405."""

    def __init__(self, ready: ReadyCheck) -> None:
        self._ready = ready
        self._slots = asyncio.Semaphore(_MAX_CONNECTIONS)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._slots.locked():
            writer.close()
            return
        async with self._slots:
            try:
                async with asyncio.timeout(_HEAD_TIMEOUT_SECONDS):
                    head = await reader.readuntil(b"\r\n\r\n")
                writer.write(await self._answer(head))
                await writer.drain()
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                pass
            except ConnectionError:
                pass
            finally:
                writer.close()

    async def _answer(self, head: bytes) -> bytes:
        method, _, rest = head.partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0]
        if path not in (b"/metrics", b"/readyz", b"/healthz"):
            return _json("404 Not Found", {"error": "not found"})
        if method != b"GET":
            return _json("405 Method Not Allowed", {"error": "use GET"})
        if path == b"/metrics":
            return _response("200 OK", metrics.CONTENT_TYPE, metrics.render_latest())
        if path == b"/healthz":
            return _json("200 OK", {"status": "ok"})
        ready, checks = await self._ready()
        status = "200 OK" if ready else "503 Service Unavailable"
        return _json(status, {"ready": ready, **checks})


async def start(settings: Settings, ready: ReadyCheck, role: str) -> asyncio.Server | None:
    """Bind METRICS_HOST:METRICS_PORT if set and free; None when off or a sibling serves."""
    if not settings.metrics_port:
        return None
    listener = InternalListener(ready)
    try:
        server = await asyncio.start_server(
            listener.handle, settings.metrics_host, settings.metrics_port, limit=_HEAD_LIMIT
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            log.info(
                "internal_listener_shared",
                role=role,
                address=f"{settings.metrics_host}:{settings.metrics_port}",
                detail="another process serves /metrics and /readyz on this port",
            )
            return None
        raise ConfigError(
            f"METRICS_HOST={settings.metrics_host} METRICS_PORT={settings.metrics_port} cannot "
            f"be bound ({exc.strerror}); use an address of this host, e.g. METRICS_HOST=127.0.0.1"
        ) from exc
    log.info(
        "internal_listener_serving",
        role=role,
        address=f"{settings.metrics_host}:{settings.metrics_port}",
        paths="/metrics /readyz /healthz",
    )
    return server


async def stop(server: asyncio.Server | None) -> None:
    if server is None:
        return
    server.close()
    try:
        async with asyncio.timeout(5):
            await server.wait_closed()
    except TimeoutError:
        pass
