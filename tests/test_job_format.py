"""Jobs on the queue are data, not code: a pickle written to Redis never runs.

Anyone who can write to Redis could queue a job; with arq's default pickle serializer that
job was code run by every worker. Jobs are JSON now (`webhook_worker.job_format`): a value
that does not decode as one of ours is logged at warning with its key and dropped, and the
sweeper still finds the events it may have named.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import asyncpg
import orjson
from arq.constants import job_key_prefix
from arq.jobs import deserialize_job
from arq.utils import timestamp_ms

from tests.worker_support import drain, status_of, store_events, sweep
from webhook_worker import job_queue as queue
from webhook_worker.config import Settings
from webhook_worker.job_format import UNDECODABLE_JOB, dump_job, load_job
from webhook_worker.ops.sample_events import checkout_session_event


class _Exploit:
    """What an attacker with write access to Redis queues: unpickling it creates `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.path),))


def _job_lines(log_stream: io.StringIO, event: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines() if line.strip()]
    return [line for line in lines if line.get("event") == event]


async def test_a_queued_job_is_json_naming_its_event_ids(settings: Settings) -> None:
    redis = await queue.create_redis(settings)
    try:
        [job_id] = await queue.enqueue_event_jobs(redis, ["evt_json_1"])
        raw = await redis.get(job_key_prefix + job_id)
    finally:
        await redis.aclose()
    data = orjson.loads(raw)  # plain JSON, readable by anything
    assert data["f"] == queue.PROCESS_EVENTS_JOB and data["a"] == [["evt_json_1"]]


def test_anything_but_a_job_of_ours_decodes_to_the_drop_job() -> None:
    assert load_job(pickle.dumps({"f": "x", "a": [], "k": {}, "t": 1, "et": 0}))["f"] == (
        UNDECODABLE_JOB
    )
    for raw in (b"", b"[]", b'{"f": 1}', b'"text"', b"\x80\x04", b'{"f":"x","a":{},"k":{}}'):
        assert load_job(raw)["f"] == UNDECODABLE_JOB, raw
    job = deserialize_job(dump_job({"f": "f", "a": (["e"],), "k": {}, "t": None, "et": 5}),
                          deserializer=load_job)  # fmt: skip
    assert (job.function, job.args) == ("f", [["e"]])


async def test_a_malicious_pickle_on_the_queue_never_runs(
    db: asyncpg.Connection, settings: Settings, tmp_path: Path, log_stream: io.StringIO
) -> None:
    """An attacker with write access to Redis queues a pickle that would create a folder.
    The worker never unpickles it: the folder is not created, the job is dropped with a
    warning naming its key, and the event it stood for is enqueued again by the sweeper."""
    [event_id] = await store_events(db, [checkout_session_event(credits=3)])
    marker = tmp_path / "pwned"
    redis = await queue.create_redis(settings)
    try:
        await redis.set(job_key_prefix + "evil", pickle.dumps(_Exploit(marker)))
        await redis.zadd(settings.queue_name, {"evil": timestamp_ms()})

        worker = await drain(settings)

        assert not marker.exists()  # nothing ran
        assert worker.jobs_complete == 1
        assert await redis.exists(job_key_prefix + "evil") == 0  # dropped…
        assert await redis.zcard(settings.queue_name) == 0
        [dropped] = _job_lines(log_stream, "job_dropped")
        assert dropped["level"] == "warning" and dropped["job_key"] == "arq:job:evil"
        assert (await status_of(db, event_id))["processing_status"] == "received"

        # …and the stored event is not lost: the sweeper enqueues it once it is stale.
        await db.execute(
            "UPDATE stripe_events SET updated_at = now() - interval '1 hour' WHERE event_id = $1",
            event_id,
        )
        assert await sweep(settings) == 1
        await drain(settings)
        assert (await status_of(db, event_id))["processing_status"] != "received"
    finally:
        await redis.aclose()
