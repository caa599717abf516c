"""Values the ops commands accept and return: `since`/`until` parsing, status checks and
JSON-safe, redacted rows."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from webhook_worker.db.store import EVENT_STATUSES
from webhook_worker.errors import ConfigError
from webhook_worker.log import redact_text

_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")


_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class OpsInputError(ConfigError):
    """An ops request is invalid (bad status, date or combination of options)."""


def parse_since(
    text: str | None, *, now: datetime | None = None, name: str = "--since"
) -> datetime | None:
    """`2024-06-01`, an ISO timestamp (UTC when naive), or relative: `30m`, `24h`, `7d`, `2w`.

    Values a datetime cannot hold (`99999999999d`, `9999-12-31T23:59:59-14:00`) are input
    errors naming the option, never a 500.
    """
    if text is None or not text.strip():
        return None
    hint = "use 2024-06-01, 2024-06-01T12:00:00Z or 24h/7d"
    relative = _RELATIVE.match(text)
    try:
        if relative:
            delta = timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
            return (now or datetime.now(UTC)) - delta
        return _absolute(text.strip(), name, hint)
    except OverflowError:
        raise OpsInputError(f"{name} {text[:40]!r} is out of range; {hint}") from None


def _absolute(text: str, name: str, hint: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise OpsInputError(f"{name} {text[:40]!r} is not a date; {hint}") from None
        parsed = datetime(day.year, day.month, day.day)
    if not parsed.tzinfo:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)  # OverflowError past year 9999 in UTC


def check_status(status: str | None) -> str | None:
    if status is not None and status not in EVENT_STATUSES:
        raise OpsInputError(
            f"status {status!r} is not one of {' | '.join(EVENT_STATUSES)}; e.g. --status failed"
        )
    return status


def jsonable(value: Any) -> Any:
    """Plain JSON types: datetimes as ISO 8601, UUIDs as text, Decimals as numbers."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def event_row(record: Any) -> dict[str, Any]:
    return redact_row(dict(record))


def redact_row(row: dict[str, Any]) -> dict[str, Any]:
    """An event row with its error message redacted (it may quote a payload)."""
    if row.get("error_message"):
        row["error_message"] = redact_text(row["error_message"])
    return row
