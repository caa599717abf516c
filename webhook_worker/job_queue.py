"""The arq queue as the receiver, sweeper and ops see it: enqueue by job name, never import
the worker. Redis carries only wake-ups; Postgres holds the truth, so a lost enqueue is
recovered by the sweeper and enqueue failures are reported, not fatal.

Jobs are written exactly as arq's `ArqRedis.enqueue_job` writes them (`serialize_job`, the
job key `arq:job:<id>` with a PSETEX expiry, a ZADD to the queue, skipped while the job key
or its kept result exists), but a whole batch goes in one Lua script: one round trip and
atomic, where `enqueue_job` costs a WATCH/MULTI round trip per job.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import default_queue_name, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.exceptions import RedisError

from webhook_worker.config import Settings
from webhook_worker.errors import TransientError

PROCESS_EVENT_JOB = "process_stripe_event"
QUEUE_NAME: str = default_queue_name

# KEYS: queue, then (job key, result key) per job; ARGV: expiry ms, score, then
# (job id, serialized job) per job. Returns the ids that were queued.
_ENQUEUE_SCRIPT = """
local queued = {}
for i = 1, (#KEYS - 1) / 2 do
  local job_key, result_key = KEYS[2 * i], KEYS[2 * i + 1]
  if redis.call('EXISTS', job_key, result_key) == 0 then
    redis.call('PSETEX', job_key, ARGV[1], ARGV[2 + 2 * i])
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1 + 2 * i])
    queued[#queued + 1] = ARGV[1 + 2 * i]
  end
end
return queued
"""


def redis_settings(settings: Settings) -> RedisSettings:
    """arq settings from REDIS_URL, with short timeouts: the receiver must not hang on Redis."""
    rs = RedisSettings.from_dsn(settings.require_redis())
    rs.conn_timeout = 2
    rs.conn_retries = 2
    rs.conn_retry_delay = 0
    return rs


async def create_redis(settings: Settings, *, retries: int | None = None) -> ArqRedis:
    rs = redis_settings(settings)
    if retries is not None:
        rs.conn_retries = retries
    try:
        return await create_pool(rs)
    except (RedisError, OSError) as exc:
        raise TransientError(f"connecting to Redis: {type(exc).__name__}") from exc


def connect_redis_lazily(settings: Settings, *, timeout: float = 2.0) -> ArqRedis:
    """An ArqRedis that connects on first use, so a process can start while Redis is down.

    redis-py reconnects on each command, so it recovers by itself once Redis is back.
    """
    client: ArqRedis = ArqRedis.from_url(
        settings.require_redis(), socket_connect_timeout=timeout, socket_timeout=timeout
    )
    return client


def job_id_for(event_id: str, *, fresh: bool = False) -> str:
    """One job per event while it waits in the queue; replays take a fresh id."""
    return f"{event_id}:{uuid.uuid4().hex[:12]}" if fresh else event_id


async def enqueue_events(
    redis: ArqRedis, event_ids: Sequence[str], *, fresh: bool = False, defer_seconds: float = 0
) -> int:
    """Enqueue `process_stripe_event` for each id; return how many new jobs were queued.

    Raises TransientError when Redis cannot be reached.
    """
    return len(await enqueue_event_jobs(redis, event_ids, fresh=fresh, defer_seconds=defer_seconds))


async def enqueue_event_jobs(
    redis: ArqRedis, event_ids: Sequence[str], *, fresh: bool = False, defer_seconds: float = 0
) -> list[str]:
    """Enqueue a batch in one round trip; return the job ids actually queued.

    A job whose id is still queued, running or has a kept result is skipped, as arq's own
    `_job_id` dedup does. Raises TransientError when Redis cannot be reached.
    """
    if not event_ids:
        return []
    now_ms = timestamp_ms()
    defer_ms = round(defer_seconds * 1000)
    keys: list[str] = [QUEUE_NAME]
    args: list[str | bytes | int] = [defer_ms + redis.expires_extra_ms, now_ms + defer_ms]
    for event_id in event_ids:
        job_id = job_id_for(event_id, fresh=fresh)
        keys += [job_key_prefix + job_id, result_key_prefix + job_id]
        job = serialize_job(
            PROCESS_EVENT_JOB, (event_id,), {}, None, now_ms, serializer=redis.job_serializer
        )
        args += [job_id, job]
    try:
        # redis-py types EVAL arguments as str; it sends bytes and ints as they are.
        run_script = cast(Callable[..., Awaitable[list[bytes]]], redis.eval)
        queued = await run_script(_ENQUEUE_SCRIPT, len(keys), *keys, *args)
    except (RedisError, OSError) as exc:
        raise TransientError(f"enqueueing to Redis: {type(exc).__name__}") from exc
    return [item.decode() if isinstance(item, bytes) else str(item) for item in queued]


async def queue_depth(redis: ArqRedis) -> int:
    try:
        return int(await redis.zcard(QUEUE_NAME))
    except (RedisError, OSError) as exc:
        raise TransientError(f"reading the queue depth: {type(exc).__name__}") from exc
