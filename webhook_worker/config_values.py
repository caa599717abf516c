"""One parser per configuration value (secrets, prices, accounts, keys, DSNs, durations),
and the reader through which `Settings.from_env` sees the environment.

Each parser takes the raw text and the variable's name, and raises `ConfigError` naming the
variable and a good value; none echoes a secret. `config.py` re-exports them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit, urlunsplit

from webhook_worker.errors import ConfigError

_PG_SCHEMES = {
    "postgres": "postgresql",
    "postgresql": "postgresql",
    "postgresql+asyncpg": "postgresql",
    "postgresql+psycopg": "postgresql",
    "postgresql+psycopg2": "postgresql",
    "postgres+asyncpg": "postgresql",
}


_REDIS_SCHEMES = {"redis", "rediss", "unix"}


OPS_TOKEN_MIN_CHARS = 32


def parse_ops_users(raw: str) -> tuple[tuple[str, str], ...]:
    """`OPS_USERS=alice:<token>,bob:<token>`: named console/API tokens, so the audit says who."""
    users: list[tuple[str, str]] = []
    for item in raw.split(","):
        if not item.strip():
            continue
        name, sep, token = item.strip().partition(":")
        name, token = name.strip(), token.strip()
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name):
            raise ConfigError(
                "OPS_USERS entries are name:token (name of letters, digits, _ . @ -), "
                "e.g. OPS_USERS=alice:$(openssl rand -hex 32),bob:$(openssl rand -hex 32)"
            )
        if len(token) < OPS_TOKEN_MIN_CHARS:
            raise ConfigError(
                f"OPS_USERS: the token of {name} is too short; use at least "
                f"{OPS_TOKEN_MIN_CHARS} random characters, e.g. $(openssl rand -hex 32)"
            )
        if any(name == other for other, _ in users):
            raise ConfigError(f"OPS_USERS names {name} twice; give each operator one token")
        users.append((name, token))
    return tuple(users)


def parse_webhook_secrets(raw: str, name: str = "STRIPE_WEBHOOK_SECRET") -> tuple[str, ...]:
    """Split a comma-separated secret list; each must look like Stripe's `whsec_…`."""
    secrets = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not secrets:
        raise ConfigError(f"{name} is empty; set it to your endpoint's secret, e.g. whsec_abc123…")
    for index, secret in enumerate(secrets, start=1):
        if not secret.startswith("whsec_") or len(secret) < 12:
            # Never echo the value itself: it is a secret.
            raise ConfigError(
                f"{name}: secret #{index} does not look like a Stripe webhook secret; "
                "each comma-separated entry must start with whsec_ (e.g. whsec_abc123…)"
            )
    return secrets


_CURRENCY = re.compile(r"[a-z]{3}")


_ACCOUNT = re.compile(r"acct_[A-Za-z0-9]{1,250}")


def parse_credit_prices(raw: str, name: str = "CREDIT_PRICES") -> dict[str, int]:
    """`usd:100,eur:95,jpy:150`: the price of one credit in each currency's minor unit."""
    example = f"{name}=usd:100,eur:95,jpy:150"
    prices: dict[str, int] = {}
    for part in (item.strip() for item in raw.split(",")):
        if not part:
            continue
        currency, sep, amount = (text.strip() for text in part.partition(":"))
        currency = currency.lower()
        if not sep or not _CURRENCY.fullmatch(currency):
            raise ConfigError(
                f"{name}: {part!r} is not currency:price; use three-letter ISO currency codes "
                f"and prices in the currency's minor unit, e.g. {example}"
            )
        if not (amount.isascii() and amount.isdigit()) or int(amount) < 1:
            raise ConfigError(
                f"{name}: the price of {currency} ({amount!r}) is not a positive integer "
                f"number of minor units (cents, yen…); e.g. {example}"
            )
        if currency in prices:
            raise ConfigError(
                f"{name}: {currency} is priced twice; give each currency once, e.g. {example}"
            )
        prices[currency] = int(amount)
    return prices


_PRICE_ID = re.compile(r"price_[A-Za-z0-9_]{1,250}")


def parse_price_credits(raw: str, name: str = "PRICE_CREDITS") -> dict[str, int]:
    """`price_123:1000,price_456:5000`: the credits one unit of each Stripe price buys."""
    example = f"{name}=price_1Pq0AbC:1000,price_1Pq0XyZ:5000"
    credits: dict[str, int] = {}
    for part in (item.strip() for item in raw.split(",")):
        if not part:
            continue
        price, sep, amount = (text.strip() for text in part.partition(":"))
        if not sep or not _PRICE_ID.fullmatch(price):
            raise ConfigError(
                f"{name}: {part[:60]!r} is not price_id:credits; use Stripe price ids "
                f"(price_…) and the credits one unit buys, e.g. {example}"
            )
        if not (amount.isascii() and amount.isdigit()) or not 0 < int(amount) < 2**62:
            raise ConfigError(
                f"{name}: the credits of {price} ({amount[:20]!r}) are not a positive "
                f"integer; e.g. {example}"
            )
        if price in credits:
            raise ConfigError(
                f"{name}: {price} is given twice; give each price once, e.g. {example}"
            )
        credits[price] = int(amount)
    return credits


def parse_connect_accounts(raw: str, name: str = "STRIPE_CONNECT_ACCOUNTS") -> frozenset[str]:
    """A comma list of connected account ids (`acct_…`)."""
    accounts = [part.strip() for part in raw.split(",") if part.strip()]
    for account in accounts:
        if not _ACCOUNT.fullmatch(account):
            raise ConfigError(
                f"{name}: {account[:40]!r} is not a Stripe account id; "
                f"use a comma list such as {name}=acct_1Nv0FGQ9RKHgCVdK,acct_1Nv0FGQ9RKHgCVdL"
            )
    return frozenset(accounts)


SECONDS_PER_DAY = 86400


_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": SECONDS_PER_DAY}


def parse_duration(raw: str, name: str) -> int:
    """Seconds from `3d`, `72h`, `90m`, `45s` or a plain number of seconds."""
    match = _DURATION.match(raw)
    if not match:
        raise ConfigError(f"{name}={raw!r} is not a duration; use e.g. {name}=3d, 72h or 259200")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_stripe_api_key(raw: str, stripe_mode: str) -> str | None:
    """A restricted key (`rk_…`, Events: read is enough) or a test secret key; never a live
    secret key, and never a key of the other mode."""
    key = raw.strip()
    if not key:
        return None
    if key.startswith("sk_live_"):
        raise ConfigError(
            "STRIPE_API_KEY is a live secret key (sk_live_…), which can do anything on the "
            "account; reconciliation only reads events. Create a restricted key with "
            "Events: read (rk_live_…) and use it instead"
        )
    prefixes = ("rk_live_", "rk_test_", "sk_test_")
    if not key.startswith(prefixes) or len(key) < 16:
        raise ConfigError(
            "STRIPE_API_KEY does not look like a Stripe key; use a restricted key with "
            f"Events: read, e.g. STRIPE_API_KEY=rk_{stripe_mode}_… (STRIPE_MODE={stripe_mode}"
            + (", where sk_test_… works too)" if stripe_mode == "test" else ")")
        )
    key_mode = "live" if "_live_" in key[:8] else "test"
    if key_mode != stripe_mode:
        raise ConfigError(
            f"STRIPE_API_KEY is a {key_mode}-mode key but STRIPE_MODE={stripe_mode}: "
            f"reconciliation would only find events this deployment ignores; use a "
            f"{stripe_mode}-mode key"
        )
    return key


def normalise_database_url(raw: str, name: str = "DATABASE_URL") -> str:
    """Accept SQLAlchemy-style schemes from the old deployment and return a plain asyncpg DSN."""
    value = raw.strip()
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    scheme = parts.scheme.lower() if parts else ""
    if parts is None or scheme not in _PG_SCHEMES or not (parts.hostname or parts.path):
        raise ConfigError(
            f"{name} is not a Postgres DSN; use {name}=postgresql://user:password@host:5432/dbname "
            "(postgresql+asyncpg:// and postgresql+psycopg:// are accepted too)"
        )
    try:
        _ = parts.port
    except ValueError:
        raise ConfigError(
            f"{name} has an invalid port; use {name}=postgresql://user:password@host:5432/dbname"
        ) from None
    return urlunsplit(parts._replace(scheme=_PG_SCHEMES[scheme]))


def parse_redis_url(raw: str) -> str:
    value = raw.strip()
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in _REDIS_SCHEMES:
        raise ConfigError(
            "REDIS_URL is not a Redis URL; use REDIS_URL=redis://localhost:6379/0 "
            "(rediss:// for TLS)"
        )
    return value


def redact_url(url: str) -> str:
    """A DSN with its password replaced, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


class EnvReader(Mapping[str, str]):
    """The environment as `from_env` sees it, remembering every name it asked for: which
    variables were given, and (for the generated reference) which ones exist at all."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.read.add(name)
        return self._env[name]

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str):
            self.read.add(name)
        return name in self._env

    def __iter__(self) -> Iterator[str]:
        return iter(self._env)

    def __len__(self) -> int:
        return len(self._env)

    def given(self) -> frozenset[str]:
        """The names asked for that the environment sets to something other than blanks."""
        return frozenset(n for n in self.read if self._env.get(n, "").strip())
