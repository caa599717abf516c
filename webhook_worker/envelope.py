"""The Stripe event envelope: the few fields the receiver stores, parsed without a StripeObject.

The receiver keeps the raw body as `raw_data` and needs only `id`, `type`, `created`,
`livemode`, `api_version` and `account` to index it. `stripe.Webhook.construct_event`
builds a full StripeObject (~450 µs for 3 KB); orjson reads the same body in ~5 µs.

Everything that would make Postgres refuse the row is refused here as a `PayloadError`,
because a group-commit batch is one INSERT: a single unstorable row would fail its
neighbours too. Postgres' JSONB refuses `\\u0000` in strings; orjson already refuses
invalid UTF-8, lone surrogates, numbers beyond a double's range and nesting past 1024.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from webhook_worker.errors import PayloadError, PermanentError

_EVENT_ID = re.compile(r"evt_[A-Za-z0-9_]{1,250}")
_MAX_FIELD = 255
_ESCAPED_NUL = b"\\u0000"


@dataclass(frozen=True)
class EnvelopeRow:
    """What the receiver stores for one event: the envelope fields and the raw JSON text."""

    event_id: str
    type: str
    livemode: bool
    api_version: str | None
    account: str | None
    stripe_created_at: datetime | None
    raw_json: str


def parse_envelope(body: bytes) -> EnvelopeRow:
    """Read the envelope of a Stripe event body; raise PayloadError(reason) for anything else.

    Reasons: not_json, not_an_object, bad_event_id, missing_type, bad_type, bad_created,
    bad_livemode, bad_api_version, bad_account, nul_character.
    """
    event = _load_object(body)
    row = EnvelopeRow(
        event_id=_event_id(event),
        type=_event_type(event),
        livemode=_livemode(event),
        api_version=_optional_text(event, "api_version"),
        account=_optional_text(event, "account"),
        stripe_created_at=_created(event),
        # orjson accepted the bytes, so they are valid UTF-8.
        raw_json=body.decode("utf-8"),
    )
    # Cheap substring test first: walking the whole document is only needed when an
    # escaped NUL might be there (`\\u0000` could also be an escaped backslash + "u0000").
    if _ESCAPED_NUL in body and _contains_nul(event):
        raise PayloadError("nul_character")
    return row


def _load_object(body: bytes) -> dict[str, Any]:
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise PayloadError("not_json") from None
    if not isinstance(event, dict):
        raise PayloadError("not_an_object")
    return event


def _event_id(event: dict[str, Any]) -> str:
    value = event.get("id")
    if not isinstance(value, str) or not _EVENT_ID.fullmatch(value):
        raise PayloadError("bad_event_id")
    return value


def _event_type(event: dict[str, Any]) -> str:
    value = event.get("type")
    if value is None or value == "":
        raise PayloadError("missing_type")
    if not isinstance(value, str) or len(value) > _MAX_FIELD or not value.isprintable():
        raise PayloadError("bad_type")
    return value


def _livemode(event: dict[str, Any]) -> bool:
    value = event.get("livemode", False)
    if not isinstance(value, bool):
        raise PayloadError("bad_livemode")
    return value


def _optional_text(event: dict[str, Any], key: str) -> str | None:
    value = event.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > _MAX_FIELD or not value.isprintable():
        raise PayloadError(f"bad_{key}")
    return value


def _created(event: dict[str, Any]) -> datetime | None:
    """`created` is Unix seconds in a snapshot event and an ISO 8601 time with its offset in
    a thin event (`2024-09-17T06:20:52.246Z`); a float, bool, out-of-range number or a time
    without an offset is refused."""
    value = event.get("created")
    if value is None:
        return None
    if isinstance(value, str):
        return _iso_created(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError("bad_created")
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise PayloadError("bad_created") from None


def _iso_created(value: str) -> datetime:
    if len(value) > 40:
        raise PayloadError("bad_created")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise PayloadError("bad_created") from None
    if parsed.tzinfo is None:
        raise PayloadError("bad_created")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise PayloadError("bad_created") from None


def _contains_nul(value: Any) -> bool:
    """True when any key or string in the document holds U+0000 (iterative: no recursion)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


@dataclass(frozen=True)
class StoredEvent:
    """A claimed `stripe_events` row with its payload parsed."""

    event_id: str
    type: str
    attempts: int
    received_at: datetime | None
    payload: dict[str, Any]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> StoredEvent:
        raw = row.get("raw_data")
        if raw is None:
            raise PermanentError("the event's payload was pruned; it cannot be processed again")
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise PermanentError(f"the stored payload is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise PermanentError("the stored payload is not a JSON object")
        return cls(
            event_id=str(row["event_id"]),
            type=str(row["type"]),
            attempts=int(row.get("attempts") or 0),
            received_at=row.get("received_at"),
            payload=payload,
        )

    @property
    def created(self) -> datetime:
        """The event's `created` (Stripe's clock, one-second resolution)."""
        created = self.payload.get("created")
        if isinstance(created, bool) or not isinstance(created, int):
            raise PermanentError(f"{self.type} event has no integer created")
        return datetime.fromtimestamp(created, UTC)

    @property
    def data_object(self) -> dict[str, Any]:
        data = self.payload.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        if not isinstance(obj, dict):
            raise PermanentError(f"{self.type} event has no data.object")
        return obj
