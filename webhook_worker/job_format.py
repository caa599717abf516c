"""How arq jobs are written to Redis: JSON (orjson), never pickle.

arq's default serializer is `pickle`, so anyone who can write a key to Redis could run code
in every worker (a crafted `arq:job:<id>` plus its id in the queue). Jobs here are plain data
— a function name, a list of event ids, a try count — so they travel as JSON through arq's
public `job_serializer` / `job_deserializer` hooks, in the worker, the receiver's direct
enqueue and every client that reads the queue.

A job that does not decode as one of ours (a pickle left from before the upgrade, a value
someone else wrote) is not run: `load_job` hands arq a stand-in job for `UNDECODABLE_JOB`,
which only logs the job's key at warning and returns, so arq drops it. Its events are still
in Postgres, not completed, and the stale-event sweeper enqueues them again.
"""

from __future__ import annotations

from typing import Any

import orjson
from arq.utils import timestamp_ms

# The worker function the stand-in job names (registered in worker/jobs.py).
UNDECODABLE_JOB = "drop_undecodable_job"
_JOB_KEYS = ("f", "a", "k", "t", "et")


def _fallback(value: Any) -> str:
    """arq stores a failed job's exception in its result; keep its text, nothing else."""
    return f"{type(value).__name__}: {value}"


def dump_job(data: dict[str, Any]) -> bytes:
    """arq's job (or result) dict as JSON bytes."""
    return orjson.dumps(data, default=_fallback)


def load_job(raw: bytes) -> dict[str, Any]:
    """A job or result dict from JSON bytes; anything else becomes the `UNDECODABLE_JOB`
    stand-in (never an exception, never code run)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if (
        isinstance(data, dict)
        and all(key in data for key in _JOB_KEYS)
        and isinstance(data["f"], str)
        and isinstance(data["a"], list)
    ):
        return data
    return {"f": UNDECODABLE_JOB, "a": [], "k": {}, "t": None, "et": timestamp_ms()}
