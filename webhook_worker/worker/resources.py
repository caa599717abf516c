"""The worker's resources: what the jobs share for the process lifetime, typed and frozen,
built once by `jobs.open_resources` and kept in arq's ctx under one key (`resources`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from webhook_worker.config import Settings
from webhook_worker.db import store
from webhook_worker.worker import handlers
from webhook_worker.worker.batching import WorkerBatches
from webhook_worker.worker.event_slots import EventSlots
from webhook_worker.worker.postgres_money_store import PostgresMoneyStore


def lease_seconds(settings: Settings) -> float:
    """How long a claimed event belongs to its job (see `store.LEASE_MARGIN_S`)."""
    return settings.job_timeout_seconds + store.LEASE_MARGIN_S


@dataclass(frozen=True)
class WorkerResources:
    """What the jobs share for the process lifetime, built once (`open_resources`) and kept
    in arq's ctx under one key, `resources` (arq adds `redis` and `job_try` itself)."""

    settings: Settings
    pool: store.Pool
    batches: WorkerBatches  # the coalesced claim / lookup / credit statements
    # WORKER_MAX_EVENTS events in flight per process, however many jobs carry them: a deep
    # backlog of 100-event jobs must not hold thousands of parsed payloads at once.
    event_slots: EventSlots
    handler_context: handlers.HandlerContext

    @classmethod
    def build(cls, settings: Settings, pool: store.Pool) -> WorkerResources:
        collect = settings.shortfall_policy == "collect"  # SHORTFALL_POLICY
        batches = WorkerBatches(
            pool,
            max_batch=settings.worker_batch_max,
            max_events=settings.worker_max_events,
            lease_seconds=lease_seconds(settings),
            collect_shortfall=collect,
        )
        return cls(
            settings,
            pool,
            batches,
            EventSlots(settings.worker_max_events),
            handlers.HandlerContext(
                settings, PostgresMoneyStore(pool, batches, collect_shortfall=collect)
            ),
        )


def resources(ctx: dict[str, Any]) -> WorkerResources:
    """The worker's resources from an arq ctx."""
    shared = ctx["resources"]
    assert isinstance(shared, WorkerResources), "open_resources has not run"
    return shared
