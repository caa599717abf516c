"""Prometheus metrics shared by the receiver and the worker.

With `PROMETHEUS_MULTIPROC_DIR` set (several uvicorn workers), every process writes its
samples there and `/metrics` aggregates them; otherwise each process serves its own
registry. Receiver and worker serve them on the internal listener (`internal.py`,
`METRICS_HOST:METRICS_PORT`), never on the public port unless `METRICS_ON_RECEIVER=true`.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


Metric = TypeVar("Metric", Counter, Histogram, Gauge)
_children: dict[tuple[Any, tuple[str, ...]], Any] = {}


def labelled(metric: Metric, *values: str) -> Metric:
    """`metric.labels(*values)`, looked up once per label set: `labels()` takes a lock and
    builds its key at every call, and the worker counts each event (label sets are few)."""
    key = (metric, values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


# receiver
REQUESTS = Counter(
    "webhook_requests_total", "Webhook requests by outcome and reason", ["outcome", "reason"]
)
DUPLICATES = Counter("webhook_duplicates_total", "Deliveries of an event id already stored")
SIGNATURE_FAILURES = Counter(
    "webhook_signature_failures_total", "Rejected signatures by reason", ["reason"]
)
INSERT_BATCH_SIZE = Histogram(
    "webhook_insert_batch_size",
    "Events per group-commit INSERT",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
ENQUEUE_FAILURES = Counter(
    "webhook_enqueue_failures_total", "Stored events whose enqueue failed (the sweeper recovers)"
)
REQUEST_SECONDS = Histogram(
    "webhook_request_seconds",
    "Time from request to response",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)

# worker
EVENTS_PROCESSED = Counter(
    "worker_events_total", "Events processed by outcome and type", ["outcome", "type"]
)
EVENTS_IGNORED = Counter(
    "worker_events_ignored_total",
    "Events marked ignored, by reason (a burst of livemode_mismatch or "
    "connect_account_not_allowed means a mis-wired endpoint)",
    ["reason"],
)
RETRIES = Counter("worker_retries_total", "Event retries after a transient fault", ["reason"])
INGEST_TO_COMPLETED = Histogram(
    "worker_ingest_to_completed_seconds",
    "Lag from receipt to a final status",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
REDIS_OUTAGE_RETRIES = Counter(
    "worker_redis_outage_retries_total", "Worker poll iterations lost to a Redis outage"
)
WORKER_BATCH_SIZE = Histogram(
    "worker_batch_size",
    "Jobs per coalesced worker statement (claim, lookup, credit)",
    ["statement"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
RECONCILE_RECOVERED = Counter(
    "reconcile_events_recovered_total",
    "Events found in Stripe's List Events API that were never stored, now stored",
)
RECONCILE_LAST_SUCCESS = Gauge(
    "reconcile_last_success_timestamp_seconds",
    "When a reconcile run last finished its whole window",
    multiprocess_mode="max",
)
RECONCILE_ERRORS = Counter(
    "reconcile_errors_total",
    "Reconcile faults: retried (429/5xx/connection, per retry), stripe (gave up), auth, "
    "failed, crashed",
    ["reason"],
)
SWEPT = Counter("worker_swept_events_total", "Events re-enqueued by the sweeper")
WOKEN = Counter(
    "worker_woken_events_total", "Waiting events woken by the sweeper once their purchase landed"
)
WAIT_EXPIRED = Counter(
    "worker_wait_expired_events_total",
    "Waiting events ignored after WAIT_MAX_DAYS (no_purchase_for_payment)",
)
HOLDS_EXPIRED = Counter(
    "worker_holds_expired_total", "Spending holds past their expiry released by the worker's cron"
)
SHORTFALL_COLLECTED = Gauge(
    "shortfall_collected_credits",
    "Credits of refund/dispute shortfalls collected so far (SHORTFALL_POLICY=collect)",
    multiprocess_mode="max",
)
SHORTFALL_OUTSTANDING = Gauge(
    "shortfall_outstanding_credits",
    "Credits refunds and disputes could not take back and not yet collected",
    multiprocess_mode="max",
)
QUEUE_DEPTH = Gauge("worker_queue_depth", "Jobs waiting in the arq queue", multiprocess_mode="max")
EVENTS_BY_STATUS = Gauge(
    "stripe_events_by_status",
    "Rows in stripe_events by status",
    ["status"],
    multiprocess_mode="max",
)


def render_latest() -> bytes:
    """The exposition text for this process, or all processes in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(DEFAULT_REGISTRY)


# public listener bounds (listener.py, receiver.BodyBudget)
LISTENER_REFUSED = Counter(
    "webhook_listener_refused_total",
    "Connections answered 431/408 and closed, or bodies refused 503, by a listener bound",
    ["reason"],
)
