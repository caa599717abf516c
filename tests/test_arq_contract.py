"""The public arq behaviours the worker's design relies on, against a real Redis.

The version pinned in pyproject.toml is the one these ran on; a new arq must pass them
before the pin moves (see docs/design.md, "Worker"). Only arq's public API is used here too.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq import Worker, create_pool, func
from arq.connections import ArqRedis, RedisSettings
from arq.constants import job_key_prefix
from arq.jobs import Job, JobStatus
from arq.utils import timestamp_ms

from tests.conftest import wait_for
from webhook_worker import job_queue
from webhook_worker.job_format import dump_job, load_job
from webhook_worker.worker.supervisor import REDIS_FAULTS

QUEUE = "test:arq-contract"


@pytest.fixture
async def redis(clean_redis_url: str) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(
        RedisSettings.from_dsn(clean_redis_url),
        default_queue_name=QUEUE,
        job_serializer=dump_job,
        job_deserializer=load_job,
    )
    yield pool
    await pool.aclose()


def _worker(redis_url: str, *functions: Any, **overrides: Any) -> Worker:
    options: dict[str, Any] = {
        "functions": [func(f, name=f.__name__) for f in functions],
        "redis_settings": RedisSettings.from_dsn(redis_url),
        "queue_name": QUEUE,
        "burst": True,
        "poll_delay": 0,
        "handle_signals": False,
        "keep_result": 0,
        "job_serializer": dump_job,
        "job_deserializer": load_job,
    }
    options.update(overrides)
    return Worker(**options)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def test_main_raises_when_redis_cannot_be_reached() -> None:
    """The supervisor catches it; arq itself would end the process."""
    settings = RedisSettings(host="127.0.0.1", port=_free_port(), conn_retries=0, conn_timeout=1)
    worker = _worker("redis://unused", noop, redis_settings=settings, burst=False)
    with pytest.raises(REDIS_FAULTS):
        await asyncio.wait_for(worker.main(), timeout=20)
    await worker.close()


async def test_main_raises_on_a_redis_error_reply_mid_poll(
    clean_redis_url: str, redis: ArqRedis
) -> None:
    await redis.set(QUEUE, "not a sorted set")  # the poll's ZRANGEBYSCORE answers WRONGTYPE
    worker = _worker(clean_redis_url, noop, burst=False)
    try:
        with pytest.raises(REDIS_FAULTS):
            await asyncio.wait_for(worker.main(), timeout=20)
    finally:
        await worker.close()


async def test_burst_main_returns_once_the_queue_is_empty(
    clean_redis_url: str, redis: ArqRedis
) -> None:
    await redis.enqueue_job("noop", _job_id="only")
    worker = _worker(clean_redis_url, noop)
    try:
        await asyncio.wait_for(worker.main(), timeout=20)
        assert worker.jobs_complete == 1
    finally:
        await worker.close()


async def test_close_with_handle_signals_off_ends_main_and_closes_the_pool(
    clean_redis_url: str,
) -> None:
    worker = _worker(clean_redis_url, noop, burst=False)
    main = asyncio.create_task(worker.main())
    await wait_for(lambda: worker.pool is not None)
    main.cancel()  # what the supervisor does on a signal, before close()
    await asyncio.wait({main})
    await worker.close()
    assert worker.pool is None


async def test_job_id_dedup_returns_none_while_the_job_or_its_result_exists(
    clean_redis_url: str, redis: ArqRedis
) -> None:
    """Why every batch job takes a fresh id: a reused id would be swallowed."""
    assert await redis.enqueue_job("noop", _job_id="same") is not None
    assert await redis.enqueue_job("noop", _job_id="same") is None  # queued
    worker = _worker(clean_redis_url, noop, keep_result=60)
    try:
        await worker.main()
    finally:
        await worker.close()
    assert await redis.enqueue_job("noop", _job_id="same") is None  # its result is kept


async def test_defer_by_delays_the_job(clean_redis_url: str, redis: ArqRedis) -> None:
    runs: list[str] = []

    async def record(ctx: dict[str, Any], name: str) -> None:
        runs.append(name)

    later = await redis.enqueue_job("record", "later", _job_id="later", _defer_by=3600)
    assert later is not None
    info = await later.info()
    assert info is not None
    assert info.score - info.enqueue_time.timestamp() * 1000 == pytest.approx(3_600_000, abs=1000)
    await redis.enqueue_job("record", "now", _job_id="now")
    worker = _worker(clean_redis_url, record, max_burst_jobs=1)  # returns after one job
    try:
        await asyncio.wait_for(worker.main(), timeout=20)
    finally:
        await worker.close()
    assert runs == ["now"]  # the deferred one is not due
    assert await later.status() == JobStatus.deferred


async def test_ctx_job_try_is_one_or_the_enqueued_try(
    clean_redis_url: str, redis: ArqRedis
) -> None:
    tries: dict[str, int] = {}

    async def record(ctx: dict[str, Any], name: str) -> None:
        tries[name] = ctx["job_try"]

    await redis.enqueue_job("record", "first", _job_id="first")
    await redis.enqueue_job("record", "carried", _job_id="carried", _job_try=3)
    worker = _worker(clean_redis_url, record)
    try:
        await worker.main()
    finally:
        await worker.close()
    assert tries == {"first": 1, "carried": 3}


async def test_a_job_cancelled_by_close_runs_again_with_the_next_try(
    clean_redis_url: str, redis: ArqRedis
) -> None:
    started = asyncio.Event()
    runs: list[int] = []

    async def slow(ctx: dict[str, Any]) -> None:
        runs.append(ctx["job_try"])
        if ctx["job_try"] == 1:
            started.set()
            await asyncio.Event().wait()  # until cancelled

    await redis.enqueue_job("slow", _job_id="slow")
    first = _worker(clean_redis_url, slow, burst=False)
    main = asyncio.create_task(first.main())
    await asyncio.wait_for(started.wait(), timeout=20)
    main.cancel()
    await asyncio.wait({main})
    closing = asyncio.create_task(first.close())
    await asyncio.wait({closing})  # may end cancelled: the job's CancelledError, not ours
    second = _worker(clean_redis_url, slow)
    try:
        await asyncio.wait_for(second.main(), timeout=20)
    finally:
        await second.close()
    assert runs == [1, 2]


async def test_job_queue_writes_exactly_what_enqueue_job_writes(redis: ArqRedis) -> None:
    """`job_queue.enqueue_event_jobs` skips enqueue_job's WATCH/EXISTS (its ids are new) but
    must leave the same job behind: same job data, queue score and key expiry."""
    ids = ["evt_a", "evt_b"]
    ours = await job_queue.enqueue_event_jobs(redis, ids, defer_seconds=5, job_try=2)
    [our_id] = ours
    theirs = await redis.enqueue_job(
        job_queue.PROCESS_EVENTS_JOB,
        ids,
        _job_id="theirs",
        _queue_name=redis.default_queue_name,
        _defer_by=5,
        _job_try=2,
    )
    assert theirs is not None
    our_job = Job(our_id, redis, _queue_name=redis.default_queue_name, _deserializer=load_job)
    ours_info = await our_job.info()
    theirs_info = await theirs.info()
    assert ours_info is not None and theirs_info is not None
    for field in ("function", "args", "kwargs", "job_try"):
        assert getattr(ours_info, field) == getattr(theirs_info, field), field
    assert ours_info.args == [ids] and ours_info.job_try == 2  # JSON: a list, not a tuple
    assert ours_info.score is not None and theirs_info.score is not None
    assert abs(ours_info.score - theirs_info.score) < 1000  # both "now + 5 s", in ms
    ttls = [await redis.pttl(job_key_prefix + job_id) for job_id in (our_id, "theirs")]
    assert abs(ttls[0] - ttls[1]) < 1000 and ttls[0] > 86_400_000


async def test_the_worker_runs_what_job_deserializer_returns_and_never_unpickles(
    clean_redis_url: str, redis: ArqRedis
) -> None:
    """`job_format` relies on it: arq's worker decodes a job only through `job_deserializer`
    (no pickle fallback) and runs the function the returned dict names."""
    runs: list[str] = []

    async def drop_undecodable_job(ctx: dict[str, Any]) -> None:
        runs.append(ctx["job_id"])

    await redis.set(job_key_prefix + "raw", b"\x80\x04K\x01.")  # pickle of 1
    await redis.zadd(QUEUE, {"raw": timestamp_ms()})
    worker = _worker(clean_redis_url, drop_undecodable_job)
    try:
        await asyncio.wait_for(worker.main(), timeout=20)
    finally:
        await worker.close()
    assert runs == ["raw"]
    assert await redis.exists(job_key_prefix + "raw") == 0
