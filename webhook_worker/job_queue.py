"""The arq queue as the receiver, sweeper and ops see it: enqueue by job name, never import
the worker. Redis carries only wake-ups; Postgres holds the truth, so a lost enqueue is
recovered by the sweeper and enqueue failures are reported, not fatal.

One job, `process_stripe_events(event_ids)`, carries the ids one caller produced together
(a receiver group commit, a sweep, a replay chunk), at most `EVENTS_PER_JOB` per job, on the
deployment's queue (`Settings.queue_name`: the client's arq `default_queue_name`), written
as arq's `ArqRedis.enqueue_job` writes them, in one round trip. Every job gets a
fresh id: an id is never reused, so a replay is never swallowed by arq's `_job_id` dedup of
a finished job's kept result. Two jobs may therefore name the same event; the worker's claim
takes an event only when it is due and not held by a live job, so the second is a no-op.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.exceptions import RedisError

from webhook_worker.config import Settings
from webhook_worker.errors import TransientError
from webhook_worker.job_format import dump_job, load_job

PROCESS_EVENTS_JOB = "process_stripe_events"
# Large enough that arq's per-job cost (~4 round trips to start, 1 to finish) is spread
# over many events, small enough that one drain spreads over several worker processes.
EVENTS_PER_JOB = 100


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
        return await create_pool(
            rs,
            default_queue_name=settings.queue_name,
            job_serializer=dump_job,
            job_deserializer=load_job,
        )
    except (RedisError, OSError) as exc:
        raise TransientError(f"connecting to Redis: {type(exc).__name__}") from exc


def connect_redis_lazily(settings: Settings, *, timeout: float = 2.0) -> ArqRedis:
    """An ArqRedis that connects on first use, so a process can start while Redis is down.

    redis-py reconnects on each command, so it recovers by itself once Redis is back.
    """
    client = redis_from_url(
        settings.require_redis(), socket_connect_timeout=timeout, socket_timeout=timeout
    )
    client.default_queue_name = settings.queue_name  # QUEUE_NAME: this deployment's queue
    return client


def redis_from_url(url: str, **options: Any) -> ArqRedis:
    """`ArqRedis.from_url` reading and writing jobs as JSON (`job_format`), never pickle."""
    client: ArqRedis = ArqRedis.from_url(url, **options)
    client.job_serializer, client.job_deserializer = dump_job, load_job
    return client


def new_job_id() -> str:
    """A job id never used before (see the module doc)."""
    return f"events:{uuid.uuid4().hex}"


async def enqueue_events(
    redis: ArqRedis, event_ids: Sequence[str], *, defer_seconds: float = 0
) -> int:
    """Enqueue `event_ids` in jobs of at most `EVENTS_PER_JOB`; return how many events.

    Raises TransientError when Redis cannot be reached.
    """
    jobs = await enqueue_event_jobs(redis, event_ids, defer_seconds=defer_seconds)
    return sum(len(ids) for ids in jobs.values())


async def enqueue_event_jobs(
    redis: ArqRedis,
    event_ids: Sequence[str],
    *,
    defer_seconds: float = 0,
    job_try: int | None = None,
) -> dict[str, list[str]]:
    """Enqueue `process_stripe_events` jobs for `event_ids`, deferred by `defer_seconds`
    (arq's `_job_try` = `job_try` when given); return each queued job's id and its event
    ids. Raises TransientError when Redis cannot be reached.

    The one place that writes arq's job keys: exactly what `ArqRedis.enqueue_job` writes
    (arq's own `serialize_job` with the JSON `job_format`, the job key with its expiry, the
    ZADD), in ONE MULTI/EXEC
    for every job of the call. `enqueue_job` first WATCHes the job key and checks that no
    job or kept result holds its id — three round trips, on the receiver's request path —
    and these ids are new (`new_job_id`), so there is nothing to check.
    """
    chunks = [
        list(event_ids[start : start + EVENTS_PER_JOB])
        for start in range(0, len(event_ids), EVENTS_PER_JOB)
    ]
    if not chunks:
        return {}
    jobs = {new_job_id(): chunk for chunk in chunks}
    enqueue_time_ms = timestamp_ms()
    defer_ms = round(defer_seconds * 1000)
    score = enqueue_time_ms + defer_ms
    expires_ms = defer_ms + redis.expires_extra_ms  # as enqueue_job computes it
    try:
        async with redis.pipeline(transaction=True) as pipe:
            for job_id, chunk in jobs.items():
                job = serialize_job(
                    PROCESS_EVENTS_JOB,
                    (chunk,),
                    {},
                    job_try,
                    enqueue_time_ms,
                    serializer=dump_job,
                )
                pipe.psetex(job_key_prefix + job_id, expires_ms, job)
                pipe.zadd(redis.default_queue_name, {job_id: score})
            await pipe.execute()
    except (RedisError, OSError) as exc:
        raise TransientError(f"enqueueing to Redis: {type(exc).__name__}") from exc
    return jobs


async def queue_depth(redis: ArqRedis) -> int:
    try:
        return int(await redis.zcard(redis.default_queue_name))
    except (RedisError, OSError) as exc:
        raise TransientError(f"reading the queue depth: {type(exc).__name__}") from exc
