"""Each variable read out of the environment: the casts (boolean, integer, choice, port)
and the variables that need more (names, prices, URLs, durations, deprecated names).

`Settings._parse` calls one reader a variable. A reader falls back to its default when the
variable is unset, and raises `ConfigError` naming the variable and a good value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from webhook_worker.config_values import (
    SECONDS_PER_DAY,
    normalise_database_url,
    parse_credit_prices,
    parse_duration,
)
from webhook_worker.errors import ConfigError
from webhook_worker.identifier import (
    DEFAULT_USERS_TABLE,
    TableName,
    check_identifier,
    parse_table_name,
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def read_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use {name}=true or {name}=false")


def read_int(
    env: Mapping[str, str], name: str, default: int | None, *, minimum: int = 0
) -> int | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not an integer; use a whole number such as {name}={default or 1}"
        ) from None
    if value < minimum:
        raise ConfigError(f"{name}={value} is below {minimum}; use a value of at least {minimum}")
    return value


_COLUMN = re.compile(r"[a-z_][a-z0-9_]{0,62}")


_QUEUE_NAME = re.compile(r"[A-Za-z0-9:._-]{1,200}")


def read_queue_name(env: Mapping[str, str]) -> str | None:
    raw = env.get("QUEUE_NAME", "").strip()
    if not raw:
        return None
    if not _QUEUE_NAME.fullmatch(raw):
        raise ConfigError(
            f"QUEUE_NAME={raw!r} is not a plain Redis key; use letters, digits and :._- "
            "only, e.g. QUEUE_NAME=arq:queue:shop-production"
        )
    return raw


def read_direct_database_url(env: Mapping[str, str]) -> str | None:
    raw = env.get("DIRECT_DATABASE_URL", "").strip()
    return normalise_database_url(raw, "DIRECT_DATABASE_URL") if raw else None


def read_column_name(env: Mapping[str, str], name: str) -> str | None:
    """A plain lower-case column name (it reaches SQL only quoted, but a typo should fail here)."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not _COLUMN.fullmatch(raw):
        raise ConfigError(f"{name}={raw!r} is not a plain column name; use e.g. {name}=tenant_id")
    return raw


def read_users_table(env: Mapping[str, str]) -> TableName:
    """USERS_TABLE: any identifier, exactly as written (reserved words, mixed case), or
    schema.table; it reaches SQL only through identifier.quote_ident."""
    raw = env.get("USERS_TABLE", "").strip()
    if not raw:
        return DEFAULT_USERS_TABLE
    try:
        return parse_table_name(raw, "USERS_TABLE")
    except ValueError as exc:
        raise ConfigError(
            f"{exc}; name the host's users table as written in its DDL, e.g. USERS_TABLE=user "
            "or USERS_TABLE=app.users"
        ) from None


def read_identifier(env: Mapping[str, str], name: str, example: str) -> str | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return check_identifier(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r}: {exc}; use e.g. {name}={example}") from None


def read_required_int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    value = read_int(env, name, default, minimum=minimum)
    assert value is not None
    return value


def read_choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value not in choices:
        options = " | ".join(choices)
        raise ConfigError(f"{name}={raw!r} is not one of {options}; for example {name}={default}")
    return value


def read_listener_limits(env: Mapping[str, str]) -> dict[str, Any]:
    """The public listener's bounds (docs/reliability.md "abuse"); see `listener.py`."""
    return {
        "max_header_bytes": read_required_int(env, "MAX_HEADER_BYTES", 16 * 1024, minimum=1024),
        "header_timeout_seconds": read_required_int(env, "HEADER_TIMEOUT_SECONDS", 10, minimum=1),
        "body_timeout_seconds": read_required_int(env, "BODY_TIMEOUT_SECONDS", 10, minimum=1),
        "keepalive_timeout_seconds": read_required_int(
            env, "KEEPALIVE_TIMEOUT_SECONDS", 5, minimum=1
        ),
        "max_connections": read_required_int(env, "MAX_CONNECTIONS", 2048, minimum=16),
        "max_body_bytes_in_flight": read_required_int(
            env, "MAX_BODY_BYTES_IN_FLIGHT", 32 * 1024 * 1024, minimum=1024 * 1024
        ),
    }


def read_credit_prices(env: Mapping[str, str]) -> dict[str, int]:
    """CREDIT_PRICES, with CENTS_PER_CREDIT as the price in usd (the older, usd-only form)."""
    prices = parse_credit_prices(env.get("CREDIT_PRICES", ""))
    cents = read_int(env, "CENTS_PER_CREDIT", None, minimum=1)
    if cents is not None:
        if "usd" in prices and prices["usd"] != cents:
            raise ConfigError(
                f"CENTS_PER_CREDIT={cents} and CREDIT_PRICES usd:{prices['usd']} disagree; "
                "set the usd price in one of them only"
            )
        prices["usd"] = cents
    return prices


DEFAULT_STRIPE_API_BASE = "https://api.stripe.com"
STRIPE_EVENTS_HISTORY_SECONDS = 30 * SECONDS_PER_DAY  # what the List Events API keeps


def read_stripe_api_base(env: Mapping[str, str]) -> str:
    raw = env.get("STRIPE_API_BASE", "").strip() or DEFAULT_STRIPE_API_BASE
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"STRIPE_API_BASE={raw!r} is not an http(s) URL; use "
            f"STRIPE_API_BASE={DEFAULT_STRIPE_API_BASE} (the default) or your proxy's URL"
        )
    return raw.rstrip("/")


def read_lookback(env: Mapping[str, str]) -> int:
    raw = env.get("RECONCILE_LOOKBACK", "").strip()
    seconds = parse_duration(raw, "RECONCILE_LOOKBACK") if raw else 3 * SECONDS_PER_DAY
    if not 0 < seconds <= STRIPE_EVENTS_HISTORY_SECONDS:
        raise ConfigError(
            f"RECONCILE_LOOKBACK={raw!r} is outside 1s..30d (Stripe keeps 30 days of events); "
            "e.g. RECONCILE_LOOKBACK=3d"
        )
    return seconds


# Each kept alias or "as before" toggle, and what replaces it (a warning at start-up).
DEPRECATED: dict[str, str] = {
    "ASYNC_DATABASE_URL": "DATABASE_URL (any postgresql:// DSN; +asyncpg/+psycopg are accepted)",
    "SYNC_DATABASE_URL": "DATABASE_URL (any postgresql:// DSN; +asyncpg/+psycopg are accepted)",
    "CENTS_PER_CREDIT": "CREDIT_PRICES=usd:<cents> (prices every currency the same way)",
    "METRICS_ON_RECEIVER": "METRICS_PORT (the internal listener; keep /metrics off the internet)",
    "OPS_ON_RECEIVER": "`webhook-worker console` (the ops API on its own private listener)",
}


def read_deprecations(env: Mapping[str, str], given: frozenset[str]) -> tuple[tuple[str, str], ...]:
    used = [name for name in DEPRECATED if name in given]
    toggles = ("METRICS_ON_RECEIVER", "OPS_ON_RECEIVER")
    used = [n for n in used if n not in toggles or read_bool(env, n, False)]
    return tuple((name, DEPRECATED[name]) for name in used)


def read_port(env: Mapping[str, str], name: str, default: int) -> int:
    value = read_required_int(env, name, default, minimum=0)
    if value > 65535:
        raise ConfigError(f"{name}={value} is not a TCP port; use 1-65535, e.g. {name}={default}")
    return value
