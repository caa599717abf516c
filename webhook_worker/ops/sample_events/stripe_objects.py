"""Stripe's own sample objects, fresh test ids, and the `event` envelope around an object.

`data/stripe_objects.json` is a copy of Stripe's OpenAPI fixtures (see ../shared); every
builder of this package starts from a deep copy of one of them. The API versions say which
shape a builder writes: basil moved several fields (see `is_basil`).
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from functools import cache
from pathlib import Path
from typing import Any

API_VERSION = "2024-06-20"

# The API versions the money-flow fixtures are built for: the shape of a released
# authorization changed with basil (see money.stripe_shapes.charge_snapshot).
PRE_BASIL = "2024-06-20"
BASIL = "2025-03-31.basil"


@cache
def _objects() -> dict[str, Any]:
    path = Path(__file__).parent / "data" / "stripe_objects.json"
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def stripe_object(kind: str) -> dict[str, Any]:
    """A fresh deep copy of one of Stripe's sample objects (`checkout.session`, `charge`, …)."""
    return copy.deepcopy(_objects()[kind])


def new_id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(12)}"


def event_envelope(
    event_type: str,
    data_object: dict[str, Any],
    *,
    event_id: str | None = None,
    created: int | None = None,
    livemode: bool = False,
    account: str | None = None,
    api_version: str = API_VERSION,
) -> dict[str, Any]:
    event = stripe_object("event")
    event.update(
        id=event_id or new_id("evt"),
        type=event_type,
        created=created if created is not None else int(time.time()),
        livemode=livemode,
        api_version=api_version,
        data={"object": data_object},
        pending_webhooks=1,
    )
    if account is not None:
        event["account"] = account
    return event


def is_basil(api_version: str) -> bool:
    """Whether `api_version` is basil (2025-03-31) or later: the shapes that moved with it."""
    return api_version[:10] >= BASIL[:10]
