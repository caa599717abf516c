"""Settings: read once from the environment, cast, and refused loudly when wrong.

Only entry points (cli, deploy script, app factories called by them) build a `Settings`;
everything else receives one. Tests build them from plain dicts. How each variable is read
is in `config_readers`, how each value's text is parsed in `config_values`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import urlsplit

from webhook_worker.config_readers import (
    DEFAULT_STRIPE_API_BASE,
    STRIPE_EVENTS_HISTORY_SECONDS,
    read_bool,
    read_choice,
    read_column_name,
    read_credit_prices,
    read_deprecations,
    read_direct_database_url,
    read_identifier,
    read_int,
    read_listener_limits,
    read_lookback,
    read_port,
    read_queue_name,
    read_required_int,
    read_stripe_api_base,
    read_users_table,
)
from webhook_worker.config_values import (
    OPS_TOKEN_MIN_CHARS,
    SECONDS_PER_DAY,
    EnvReader,
    normalise_database_url,
    parse_connect_accounts,
    parse_credit_prices,
    parse_duration,
    parse_ops_users,
    parse_price_credits,
    parse_redis_url,
    parse_stripe_api_key,
    parse_webhook_secrets,
    redact_url,
)
from webhook_worker.errors import ConfigError
from webhook_worker.identifier import DEFAULT_USERS_TABLE, TableName

__all__ = [
    "OPS_TOKEN_MIN_CHARS",
    "STRIPE_EVENTS_HISTORY_SECONDS",
    "EnvReader",
    "Settings",
    "normalise_database_url",
    "parse_connect_accounts",
    "parse_credit_prices",
    "parse_duration",
    "parse_ops_users",
    "parse_price_credits",
    "parse_stripe_api_key",
    "parse_webhook_secrets",
    "redact_url",
]

AppEnv = Literal["production", "development", "test"]
LogFormat = Literal["json", "console"]
StripeMode = Literal["live", "test"]
ShortfallPolicy = Literal["forgive", "collect"]

DEFAULT_MAX_CREDITS_PER_EVENT = 1_000_000


def refuse_e2e_outside_development(app_env: str, e2e_test_mode: bool) -> None:
    """The one E2E guard: signature checks may be skipped only in development and tests."""
    if e2e_test_mode and app_env not in ("development", "test"):
        raise ConfigError(
            f"E2E_TEST_MODE=true skips signature verification and is refused with "
            f"APP_ENV={app_env}; set APP_ENV=development or APP_ENV=test, "
            "or E2E_TEST_MODE=false"
        )


@dataclass(frozen=True)
class Settings:
    """Every setting of docs/configuration.md, typed. `from_env` is the only parser."""

    webhook_secrets: tuple[str, ...] = ()
    webhook_tolerance: int = 300
    database_url: str | None = None
    redis_url: str | None = None
    e2e_test_mode: bool = False
    app_env: AppEnv = "production"
    db_echo: bool = False
    ops_token: str | None = field(default=None, repr=False)
    log_format: LogFormat = "json"
    log_level: str = "info"
    max_body_bytes: int = 1024 * 1024
    stripe_mode: StripeMode = "live"
    connect_accounts: frozenset[str] = frozenset()
    # Price of one credit in each currency's minor unit; CENTS_PER_CREDIT is the usd entry.
    credit_prices: Mapping[str, int] = field(default_factory=dict, hash=False)
    max_credits_per_event: int = DEFAULT_MAX_CREDITS_PER_EVENT
    # Credits per unit of a Stripe price (invoice lines); see webhook_worker.worker.subscriptions.
    price_credits: Mapping[str, int] = field(default_factory=dict, hash=False)
    subscription_credits_expire: bool = False
    stripe_api_key: str | None = field(default=None, repr=False)
    stripe_api_base: str = DEFAULT_STRIPE_API_BASE
    reconcile_interval_seconds: int = 3600
    reconcile_lookback_seconds: int = 3 * SECONDS_PER_DAY
    retention_days: int = 90
    max_tries: int = 8
    retry_base_seconds: int = 2
    stale_after_seconds: int = 120
    sweep_interval_seconds: int = 30
    wait_max_days: int = 7
    job_timeout_seconds: int = 30
    worker_max_jobs: int = 4
    worker_max_events: int = 100
    worker_batch_max: int = 256
    worker_poll_delay: float = 0.05
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    metrics_on_receiver: bool = False
    # Where the processes listen and keep local data (the CLI's defaults for --host/--port…).
    host: str = "127.0.0.1"
    port: int = 8000
    web_concurrency: int = 1
    console_host: str = "127.0.0.1"
    console_port: int = 8081
    data_dir: str = ".data"
    # Which variables the environment set, which came from elsewhere (make run's services
    # file), and the deprecated names in use with their replacements: `webhook-worker config`.
    given: frozenset[str] = frozenset()
    origins: Mapping[str, str] = field(default_factory=dict, hash=False)
    deprecations: tuple[tuple[str, str], ...] = ()
    max_header_bytes: int = 16 * 1024
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 10.0
    keepalive_timeout_seconds: int = 5
    max_connections: int = 2048
    max_body_bytes_in_flight: int = 32 * 1024 * 1024
    ops_replay_max: int = 10_000
    # Named operator tokens (OPS_USERS); OPS_TOKEN, when set, is the operator "ops".
    ops_users: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    ops_on_receiver: bool = False
    console_session_hours: int = 8
    console_idle_minutes: int = 30
    db_pool_min: int = 2
    db_pool_max: int = 20
    db_statement_cache_size: int = 100
    users_tenant_column: str | None = None
    # A connection that bypasses any pooler, for migrate and deploy_hotfix.py (None: DATABASE_URL).
    direct_database_url: str | None = None
    migration_lock_timeout_seconds: int = 60
    # The arq queue of this deployment; None derives it from the database (`queue_name`).
    queue_name_override: str | None = None
    redis_startup_timeout_seconds: int = 30
    users_table: TableName = DEFAULT_USERS_TABLE
    # The host's optimistic-locking column (USERS_VERSION_COLUMN); None: detected at migrate.
    users_version_column: str | None = None
    # What refunds and disputes could not take back (spent): forgiven, or collected from the
    # user's next purchase or grant (docs/spending.md "Shortfalls").
    shortfall_policy: ShortfallPolicy = "forgive"

    def __repr__(self) -> str:  # never print secrets or DSN passwords
        return (
            f"Settings(app_env={self.app_env!r}, secrets={len(self.webhook_secrets)}, "
            f"database_url={redact_url(self.database_url or '')!r}, "
            f"redis_url={redact_url(self.redis_url or '')!r}, e2e_test_mode={self.e2e_test_mode}, "
            f"stripe_mode={self.stripe_mode!r})"
        )

    @property
    def cents_per_credit(self) -> int | None:
        """The usd price of one credit (CENTS_PER_CREDIT), if any."""
        return self.credit_prices.get("usd")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Parse and validate; raise ConfigError naming the variable and a good value.
        Records which variables the environment gave and the deprecated ones in use."""
        reader = EnvReader(os.environ if env is None else env)
        settings = cls._parse(reader)
        given = reader.given()
        return replace(settings, given=given, deprecations=read_deprecations(reader, given))

    @classmethod
    def _parse(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Every variable, read once through `env` (an `EnvReader` from `from_env`)."""
        env = os.environ if env is None else env
        app_env = read_choice(env, "APP_ENV", "production", ("production", "development", "test"))
        e2e = read_bool(env, "E2E_TEST_MODE", False)
        refuse_e2e_outside_development(app_env, e2e)
        default_mode = "live" if app_env == "production" else "test"
        stripe_mode = read_choice(env, "STRIPE_MODE", default_mode, ("live", "test"))
        if e2e and stripe_mode == "live":
            raise ConfigError(
                "E2E_TEST_MODE=true accepts only test-mode events, so STRIPE_MODE=live would "
                "ignore every one of them; set STRIPE_MODE=test or E2E_TEST_MODE=false"
            )
        raw_secret = env.get("STRIPE_WEBHOOK_SECRET", "")
        secrets = parse_webhook_secrets(raw_secret) if raw_secret.strip() else ()

        db_name, db_raw = next(
            (
                (name, env[name])
                for name in ("DATABASE_URL", "ASYNC_DATABASE_URL", "SYNC_DATABASE_URL")
                if env.get(name, "").strip()
            ),
            ("DATABASE_URL", ""),
        )
        database_url = normalise_database_url(db_raw, db_name) if db_raw else None
        redis_raw = env.get("REDIS_URL", "").strip()
        default_format = "json" if app_env == "production" else "console"
        ops_token = env.get("OPS_TOKEN", "").strip() or None
        if ops_token is not None and len(ops_token) < OPS_TOKEN_MIN_CHARS:
            raise ConfigError(
                f"OPS_TOKEN is too short to guard the ops API; use at least "
                f"{OPS_TOKEN_MIN_CHARS} random characters, e.g. OPS_TOKEN=$(openssl rand -hex 32)"
            )
        return cls(
            webhook_secrets=secrets,
            webhook_tolerance=read_required_int(env, "STRIPE_WEBHOOK_TOLERANCE", 300, minimum=1),
            database_url=database_url,
            redis_url=parse_redis_url(redis_raw) if redis_raw else None,
            e2e_test_mode=e2e,
            app_env=app_env,  # type: ignore[arg-type]
            db_echo=read_bool(env, "DB_ECHO", False),
            ops_token=ops_token,
            log_format=read_choice(env, "LOG_FORMAT", default_format, ("json", "console")),  # type: ignore[arg-type]
            log_level=read_choice(
                env, "LOG_LEVEL", "info", ("debug", "info", "warning", "error", "critical")
            ),
            max_body_bytes=read_required_int(env, "MAX_BODY_BYTES", 1024 * 1024, minimum=1024),
            stripe_mode=stripe_mode,  # type: ignore[arg-type]
            connect_accounts=parse_connect_accounts(env.get("STRIPE_CONNECT_ACCOUNTS", "")),
            credit_prices=read_credit_prices(env),
            max_credits_per_event=read_required_int(
                env, "MAX_CREDITS_PER_EVENT", DEFAULT_MAX_CREDITS_PER_EVENT, minimum=1
            ),
            price_credits=parse_price_credits(env.get("PRICE_CREDITS", "")),
            subscription_credits_expire=read_bool(env, "SUBSCRIPTION_CREDITS_EXPIRE", False),
            stripe_api_key=parse_stripe_api_key(env.get("STRIPE_API_KEY", ""), stripe_mode),
            stripe_api_base=read_stripe_api_base(env),
            reconcile_interval_seconds=read_required_int(
                env, "RECONCILE_INTERVAL_SECONDS", 3600, minimum=1
            ),
            reconcile_lookback_seconds=read_lookback(env),
            retention_days=read_required_int(env, "RETENTION_DAYS", 90, minimum=1),
            max_tries=read_required_int(env, "MAX_TRIES", 8, minimum=1),
            retry_base_seconds=read_required_int(env, "RETRY_BASE_SECONDS", 2, minimum=0),
            stale_after_seconds=read_required_int(env, "STALE_AFTER_SECONDS", 120, minimum=1),
            sweep_interval_seconds=read_required_int(env, "SWEEP_INTERVAL_SECONDS", 30, minimum=1),
            wait_max_days=read_required_int(env, "WAIT_MAX_DAYS", 7, minimum=1),
            job_timeout_seconds=read_required_int(env, "JOB_TIMEOUT_SECONDS", 30, minimum=1),
            worker_max_jobs=read_required_int(env, "WORKER_MAX_JOBS", 4, minimum=1),
            worker_max_events=read_required_int(env, "WORKER_MAX_EVENTS", 100, minimum=1),
            worker_poll_delay=read_required_int(env, "WORKER_POLL_DELAY_MS", 50, minimum=1) / 1000,
            worker_batch_max=read_required_int(env, "WORKER_BATCH_MAX", 256, minimum=1),
            metrics_port=read_int(env, "METRICS_PORT", None, minimum=1),
            metrics_host=env.get("METRICS_HOST", "").strip() or "127.0.0.1",
            metrics_on_receiver=read_bool(env, "METRICS_ON_RECEIVER", False),
            host=env.get("HOST", "").strip() or "127.0.0.1",
            port=read_port(env, "PORT", 8000),
            web_concurrency=read_required_int(env, "WEB_CONCURRENCY", 1, minimum=1),
            console_host=env.get("CONSOLE_HOST", "").strip() or "127.0.0.1",
            console_port=read_port(env, "CONSOLE_PORT", 8081),
            data_dir=env.get("DATA_DIR", "").strip() or ".data",
            **read_listener_limits(env),
            ops_replay_max=read_required_int(env, "OPS_REPLAY_MAX", 10_000, minimum=1),
            ops_users=parse_ops_users(env.get("OPS_USERS", "")),
            ops_on_receiver=read_bool(env, "OPS_ON_RECEIVER", False),
            console_session_hours=read_required_int(env, "CONSOLE_SESSION_HOURS", 8, minimum=1),
            console_idle_minutes=read_required_int(env, "CONSOLE_IDLE_MINUTES", 30, minimum=1),
            db_pool_min=read_required_int(env, "DB_POOL_MIN", 2, minimum=0),
            db_pool_max=read_required_int(env, "DB_POOL_MAX", 20, minimum=1),
            db_statement_cache_size=read_required_int(
                env, "DB_STATEMENT_CACHE_SIZE", 100, minimum=0
            ),
            users_tenant_column=read_column_name(env, "USERS_TENANT_COLUMN"),
            direct_database_url=read_direct_database_url(env),
            migration_lock_timeout_seconds=read_required_int(
                env, "MIGRATION_LOCK_TIMEOUT_SECONDS", 60, minimum=1
            ),
            queue_name_override=read_queue_name(env),
            redis_startup_timeout_seconds=read_required_int(
                env, "REDIS_STARTUP_TIMEOUT_SECONDS", 30, minimum=0
            ),
            users_table=read_users_table(env),
            users_version_column=read_identifier(env, "USERS_VERSION_COLUMN", "lock_version"),
            shortfall_policy=read_choice(  # type: ignore[arg-type]
                env, "SHORTFALL_POLICY", "forgive", ("forgive", "collect")
            ),
        )

    def __post_init__(self) -> None:
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise ConfigError(
                f"MAX_BODY_BYTES_IN_FLIGHT={self.max_body_bytes_in_flight} is below "
                f"MAX_BODY_BYTES={self.max_body_bytes}: no full-size body could be read; use "
                f"MAX_BODY_BYTES_IN_FLIGHT={32 * self.max_body_bytes} or more"
            )

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def operators(self) -> tuple[tuple[str, str], ...]:
        """(name, token) of everyone allowed in the console and the /ops API."""
        named = self.ops_users
        return ((("ops", self.ops_token),) if self.ops_token else ()) + named

    def require_operators(self) -> tuple[tuple[str, str], ...]:
        if not self.operators:
            raise ConfigError(
                "the console needs OPS_TOKEN or OPS_USERS to log operators in; "
                "set OPS_TOKEN=$(openssl rand -hex 32) or OPS_USERS=alice:<token>,bob:<token>"
            )
        return self.operators

    def require_database(self) -> str:
        if not self.database_url:
            raise ConfigError(
                "DATABASE_URL is not set; use DATABASE_URL=postgresql://user:password@host:5432/db "
                "(or run `webhook-worker dev` for embedded services)"
            )
        return self.database_url

    def require_direct_database(self) -> str:
        """The DSN for schema changes: DIRECT_DATABASE_URL, else DATABASE_URL."""
        return self.direct_database_url or self.require_database()

    @property
    def queue_name(self) -> str:
        """QUEUE_NAME, else `arq:queue:<database name>`, so deployments sharing a Redis
        database never take each other's jobs (the `arq:` prefix keeps it in arq's keys)."""
        if self.queue_name_override:
            return self.queue_name_override
        database = urlsplit(self.database_url or "").path.lstrip("/") or "default"
        return f"arq:queue:{database}"

    def require_redis(self) -> str:
        if not self.redis_url:
            raise ConfigError(
                "REDIS_URL is not set; use REDIS_URL=redis://localhost:6379/0 "
                "(or run `webhook-worker dev` for embedded services)"
            )
        return self.redis_url

    def require_stripe_api(self) -> str:
        if not self.stripe_api_key:
            raise ConfigError(
                "STRIPE_API_KEY is not set; reconciliation reads Stripe's List Events API: "
                "create a restricted key with Events: read and set "
                f"STRIPE_API_KEY=rk_{self.stripe_mode}_… (STRIPE_MODE={self.stripe_mode})"
            )
        return self.stripe_api_key

    def require_receiver(self) -> None:
        """What the receiver needs before it may accept a single request."""
        refuse_e2e_outside_development(self.app_env, self.e2e_test_mode)
        self.require_database()
        self.require_redis()
        if not self.webhook_secrets and not self.e2e_test_mode:
            raise ConfigError(
                "STRIPE_WEBHOOK_SECRET is not set; use the endpoint's signing secret, "
                "e.g. STRIPE_WEBHOOK_SECRET=whsec_abc123… (comma-separate several to rotate)"
            )
