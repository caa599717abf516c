"""The deploy's smoke test: POST a signed `webhook_worker.smoke_test` event to the
receiver and wait until a worker has processed it (ignored, no balance touched); a failure
says whether the event was not stored, or stored but not processed in time."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from webhook_worker.config import Settings
from webhook_worker.errors import WebhookWorkerError
from webhook_worker.ops import event_sender
from webhook_worker.ops.deploy_report import Report

_NOT_PROCESSED = frozenset({"received", "processing"})


async def smoke(
    conn: asyncpg.Connection,
    settings: Settings,
    url: str,
    timeout: float,  # noqa: ASYNC109 - a polling deadline, not a cancellation scope
    report: Report,
) -> bool:
    secret = event_sender.pick_secret(settings, None)
    event = event_sender.build_test_event(event_sender.SMOKE_EVENT_TYPE)
    try:
        result = await event_sender.send_event(url, event, secret)
    except WebhookWorkerError as exc:
        report.add("smoke test", "FAIL", str(exc))
        return False
    if result.status_code != 200:
        report.add(
            "smoke test", "FAIL", f"{url} answered HTTP {result.status_code}: {result.body[:200]}"
        )
        return False
    deadline = time.monotonic() + timeout
    outcome = await event_sender.event_outcome(conn, result.event_id)
    while (outcome is None or outcome[0] in _NOT_PROCESSED) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        outcome = await event_sender.event_outcome(conn, result.event_id)
    if outcome is None:
        report.add(
            "smoke test",
            "FAIL",
            f"{url} answered 200 but {result.event_id} is not in stripe_events of this "
            f"DATABASE_URL after {timeout:g}s (is the receiver on another database?)",
        )
        return False
    status, reason = outcome
    if status in _NOT_PROCESSED:
        report.add(
            "smoke test",
            "FAIL",
            f"{result.event_id} was stored but no worker processed it within {timeout:g}s "
            f"(still {status}): is `webhook-worker work` running, on the same REDIS_URL and "
            "QUEUE_NAME as the receiver?",
        )
        return False
    if status != "ignored":
        report.add(
            "smoke test",
            "FAIL",
            f"{result.event_id} ended {status} ({reason}); a smoke event should be ignored",
        )
        return False
    report.add(
        "smoke test",
        "ok",
        f"{result.event_id} stored and processed by a worker ({status}, {reason})",
    )
    return True
