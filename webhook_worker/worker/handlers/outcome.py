"""What a handler is: the context it works with and the outcome it returns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from webhook_worker.config import Settings
from webhook_worker.envelope import StoredEvent
from webhook_worker.worker.money_store import MoneyStore

Status = Literal["completed", "ignored", "waiting"]


@dataclass(frozen=True)
class Outcome:
    """A handler's result: final status, the canonical log event name and its fields."""

    status: Status
    action: str  # event_credited, event_debited, event_recorded, event_ignored, event_stale,
    # event_waiting
    recorded: bool = False  # the status was already written in the ledger transaction
    fields: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None  # why: stored in stripe_events.status_reason when not recorded


def ignored(reason: str, **fields: Any) -> Outcome:
    """The event is stored but moves no money; `reason` says why (see README, reasons)."""
    return Outcome("ignored", "event_ignored", fields=fields, reason=reason)


def handled(reason: str, **fields: Any) -> Outcome:
    """The event was handled and there was nothing to move (`completed`, with why)."""
    return Outcome("completed", "event_recorded", fields=fields, reason=reason)


@dataclass(frozen=True)
class HandlerContext:
    """What a handler works with: the settings and the money store (`MoneyStore`: Postgres
    in the service, memory in the unit tier). Built once per worker process."""

    settings: Settings
    money: MoneyStore


Handler = Callable[[HandlerContext, StoredEvent], Awaitable[Outcome]]


def waiting(reason: str, **fields: Any) -> Outcome:
    """The event waits (written by the store with the wait: `recorded`)."""
    return Outcome("waiting", "event_waiting", recorded=True, fields=fields, reason=reason)
