"""Settings: every bad value fails with a message naming the variable and a good value."""

from __future__ import annotations

import pytest

from webhook_worker.config import Settings, redact_url
from webhook_worker.errors import ConfigError

GOOD = {"STRIPE_WEBHOOK_SECRET": "whsec_abcdefghijkl", "APP_ENV": "test"}


def settings_from(**env: str) -> Settings:
    return Settings.from_env({**GOOD, **env})


def test_defaults_are_secure() -> None:
    settings = Settings.from_env({})
    assert settings.app_env == "production"
    assert settings.e2e_test_mode is False
    assert settings.log_format == "json"
    assert settings.webhook_tolerance == 300
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.ops_token is None
    assert settings.retention_days == 90


def test_secret_list_is_split_and_trimmed() -> None:
    settings = settings_from(STRIPE_WEBHOOK_SECRET=" whsec_aaaaaaaaaa , whsec_bbbbbbbbbb ")
    assert settings.webhook_secrets == ("whsec_aaaaaaaaaa", "whsec_bbbbbbbbbb")


@pytest.mark.parametrize("value", ["sk_test_123456789", "whsec_", "nonsense", "whsec_ok12345,nope"])
def test_secret_without_whsec_prefix_is_refused(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from(STRIPE_WEBHOOK_SECRET=value)
    assert "STRIPE_WEBHOOK_SECRET" in info.value.message
    assert "whsec_" in info.value.message
    assert value not in info.value.message or value == "whsec_"


def test_unknown_app_env_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from(APP_ENV="staging")
    assert "APP_ENV" in info.value.message
    assert "production" in info.value.message


@pytest.mark.parametrize("app_env", ["production", "PRODUCTION"])
def test_e2e_mode_outside_development_is_refused(app_env: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from(APP_ENV=app_env, E2E_TEST_MODE="true")
    assert "E2E_TEST_MODE" in info.value.message
    assert "APP_ENV=development" in info.value.message


def test_e2e_mode_defaults_to_production_refusal() -> None:
    with pytest.raises(ConfigError, match="E2E_TEST_MODE"):
        Settings.from_env({"E2E_TEST_MODE": "1"})


@pytest.mark.parametrize("app_env", ["development", "test"])
def test_e2e_mode_allowed_in_development_and_test(app_env: str) -> None:
    assert settings_from(APP_ENV=app_env, E2E_TEST_MODE="true").e2e_test_mode is True


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://root@localhost/db"),
        ("DATABASE_URL", "not a url"),
        ("DATABASE_URL", "postgresql://u@host:notaport/db"),
        ("ASYNC_DATABASE_URL", "sqlite:///x.db"),
    ],
)
def test_unparsable_dsn_is_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from(**{name: value})
    assert name in info.value.message
    assert "postgresql://" in info.value.message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "postgresql+asyncpg://u:p@db:5432/app"),
        ("ASYNC_DATABASE_URL", "postgresql+asyncpg://u:p@db:5432/app"),
        ("SYNC_DATABASE_URL", "postgresql+psycopg://u:p@db:5432/app"),
        ("DATABASE_URL", "postgres://u:p@db:5432/app"),
    ],
)
def test_sqlalchemy_schemes_are_normalised(name: str, value: str) -> None:
    assert settings_from(**{name: value}).database_url == "postgresql://u:p@db:5432/app"


def test_database_url_wins_over_legacy_names() -> None:
    settings = settings_from(
        DATABASE_URL="postgresql://a@h/one", ASYNC_DATABASE_URL="postgresql://a@h/two"
    )
    assert settings.database_url == "postgresql://a@h/one"


def test_bad_redis_url_is_refused() -> None:
    with pytest.raises(ConfigError, match="REDIS_URL"):
        settings_from(REDIS_URL="http://localhost:6379")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STRIPE_WEBHOOK_TOLERANCE", "five"),
        ("STRIPE_WEBHOOK_TOLERANCE", "0"),
        ("MAX_BODY_BYTES", "1.5"),
        ("CENTS_PER_CREDIT", "0"),
        ("RETENTION_DAYS", "-1"),
        ("DB_ECHO", "maybe"),
        ("LOG_FORMAT", "xml"),
        ("WORKER_POLL_DELAY_MS", "0"),
        ("WORKER_BATCH_MAX", "0"),
        ("DB_STATEMENT_CACHE_SIZE", "-1"),
    ],
)
def test_bad_numbers_and_choices_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from(**{name: value})
    assert name in info.value.message


def test_short_ops_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="OPS_TOKEN"):
        settings_from(OPS_TOKEN="short")
    with pytest.raises(ConfigError, match="at least 32"):
        settings_from(OPS_TOKEN="x" * 31)
    assert settings_from(OPS_TOKEN="x" * 32).ops_token == "x" * 32


def test_listener_bounds_have_safe_defaults() -> None:
    settings = settings_from()
    assert settings.max_header_bytes == 16 * 1024
    assert (settings.header_timeout_seconds, settings.body_timeout_seconds) == (10, 10)
    assert settings.keepalive_timeout_seconds == 5
    assert settings.max_connections == 2048
    assert settings.max_body_bytes_in_flight == 32 * 1024 * 1024
    assert (settings.metrics_host, settings.metrics_on_receiver) == ("127.0.0.1", False)
    assert settings.ops_replay_max == 10_000


def test_body_bytes_in_flight_below_one_body_is_refused() -> None:
    with pytest.raises(ConfigError, match="MAX_BODY_BYTES_IN_FLIGHT") as info:
        settings_from(MAX_BODY_BYTES="2097152", MAX_BODY_BYTES_IN_FLIGHT="1048576")
    assert "MAX_BODY_BYTES_IN_FLIGHT=67108864" in info.value.message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_HEADER_BYTES", "100"),
        ("HEADER_TIMEOUT_SECONDS", "0"),
        ("BODY_TIMEOUT_SECONDS", "soon"),
        ("MAX_CONNECTIONS", "1"),
        ("OPS_REPLAY_MAX", "0"),
        ("METRICS_ON_RECEIVER", "maybe"),
    ],
)
def test_bad_listener_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        settings_from(**{name: value})


def test_receiver_requires_a_secret_unless_bypassed() -> None:
    settings = Settings.from_env(
        {"APP_ENV": "test", "DATABASE_URL": "postgresql://h/db", "REDIS_URL": "redis://h:6379"}
    )
    with pytest.raises(ConfigError, match="STRIPE_WEBHOOK_SECRET"):
        settings.require_receiver()
    settings.with_overrides(e2e_test_mode=True).require_receiver()


def test_missing_urls_say_what_to_set() -> None:
    settings = Settings.from_env({})
    with pytest.raises(ConfigError, match="DATABASE_URL=postgresql://"):
        settings.require_database()
    with pytest.raises(ConfigError, match="REDIS_URL=redis://"):
        settings.require_redis()


def test_repr_hides_secrets_and_passwords() -> None:
    settings = settings_from(
        DATABASE_URL="postgresql://u:hunter2@h/db", OPS_TOKEN="token-token-token-token-token-token"
    )
    text = repr(settings)
    assert "hunter2" not in text
    assert "whsec_abcdefghijkl" not in text
    assert "token-token" not in text
    assert redact_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"


def test_worker_poll_delay_is_read_in_milliseconds() -> None:
    assert settings_from(WORKER_POLL_DELAY_MS="10").worker_poll_delay == 0.01
    assert settings_from().worker_poll_delay == 0.05


# --- trust scope: mode, Connect accounts, credit prices --------------------------------------


@pytest.mark.parametrize(("app_env", "mode"), [("production", "live"), ("development", "test")])
def test_stripe_mode_defaults_to_live_only_in_production(app_env: str, mode: str) -> None:
    assert settings_from(APP_ENV=app_env).stripe_mode == mode


def test_a_bad_stripe_mode_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from(STRIPE_MODE="production")
    assert "STRIPE_MODE='production'" in info.value.message
    assert "live | test" in info.value.message


def test_e2e_mode_with_live_stripe_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match="STRIPE_MODE=test"):
        settings_from(APP_ENV="test", E2E_TEST_MODE="true", STRIPE_MODE="live")


def test_connect_accounts_are_a_comma_list_of_account_ids() -> None:
    settings = settings_from(STRIPE_CONNECT_ACCOUNTS=" acct_1ABC , acct_2DEF,")
    assert settings.connect_accounts == frozenset({"acct_1ABC", "acct_2DEF"})
    assert settings_from().connect_accounts == frozenset()
    with pytest.raises(ConfigError, match=r"STRIPE_CONNECT_ACCOUNTS.*acct_"):
        settings_from(STRIPE_CONNECT_ACCOUNTS="acct_1ABC,cus_123")


def test_credit_prices_are_minor_units_per_currency() -> None:
    settings = settings_from(CREDIT_PRICES="USD:100, eur:95,jpy:150")
    assert settings.credit_prices == {"usd": 100, "eur": 95, "jpy": 150}
    assert settings.cents_per_credit == 100


def test_cents_per_credit_is_the_usd_price() -> None:
    assert settings_from(CENTS_PER_CREDIT="25").credit_prices == {"usd": 25}
    both = settings_from(CENTS_PER_CREDIT="25", CREDIT_PRICES="eur:20,usd:25")
    assert both.credit_prices == {"eur": 20, "usd": 25}
    with pytest.raises(ConfigError, match="disagree"):
        settings_from(CENTS_PER_CREDIT="25", CREDIT_PRICES="usd:30")


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("usd=100", "not currency:price"),
        ("dollars:100", "not currency:price"),
        ("usd:1.5", "not a positive integer"),
        ("usd:0", "not a positive integer"),
        ("usd:-1", "not a positive integer"),
        ("usd:100,USD:90", "priced twice"),
    ],
)
def test_bad_credit_prices_are_refused_with_an_example(raw: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from(CREDIT_PRICES=raw)
    assert says in info.value.message
    assert "CREDIT_PRICES=usd:100,eur:95,jpy:150" in info.value.message


def test_max_credits_per_event_defaults_to_a_million() -> None:
    assert settings_from().max_credits_per_event == 1_000_000
    assert settings_from(MAX_CREDITS_PER_EVENT="500").max_credits_per_event == 500
    with pytest.raises(ConfigError, match="MAX_CREDITS_PER_EVENT"):
        settings_from(MAX_CREDITS_PER_EVENT="0")


# --- reconciliation ------------------------------------------------------------------------


def test_a_restricted_key_or_a_test_secret_key_is_accepted() -> None:
    assert settings_from(STRIPE_API_KEY="rk_test_abcdefghijklmnop").stripe_api_key is not None
    assert settings_from(STRIPE_API_KEY="sk_test_abcdefghijklmnop").stripe_api_key is not None
    live = settings_from(APP_ENV="production", STRIPE_API_KEY="rk_live_abcdefghijklmnop")
    assert live.stripe_api_key == "rk_live_abcdefghijklmnop"
    assert "rk_live_abcdefghijklmnop" not in repr(live)


def test_a_live_secret_key_is_refused_in_favour_of_a_restricted_key() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from(APP_ENV="production", STRIPE_API_KEY="sk_live_abcdefghijklmnop")
    assert "restricted key with Events: read (rk_live_…)" in info.value.message
    assert "abcdefghijklmnop" not in info.value.message


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"STRIPE_API_KEY": "pk_test_abcdefghijklmnop"}, "does not look like a Stripe key"),
        ({"STRIPE_API_KEY": "rk_live_abcdefghijklmnop"}, "live-mode key but STRIPE_MODE=test"),
        ({"STRIPE_API_BASE": "ftp://stripe.example"}, "STRIPE_API_BASE"),
        ({"RECONCILE_LOOKBACK": "31d"}, "Stripe keeps 30 days"),
        ({"RECONCILE_LOOKBACK": "three days"}, "is not a duration"),
        ({"RECONCILE_INTERVAL_SECONDS": "0"}, "RECONCILE_INTERVAL_SECONDS"),
    ],
)
def test_bad_reconcile_settings_are_refused(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        settings_from(**env)


def test_reconcile_defaults_and_durations() -> None:
    settings = settings_from()
    assert settings.stripe_api_key is None
    assert settings.stripe_api_base == "https://api.stripe.com"
    assert settings.reconcile_interval_seconds == 3600
    assert settings.reconcile_lookback_seconds == 3 * 86400
    assert settings_from(RECONCILE_LOOKBACK="72h").reconcile_lookback_seconds == 3 * 86400
    assert settings_from(RECONCILE_LOOKBACK="90m").reconcile_lookback_seconds == 5400


def test_queue_name_is_derived_per_database_unless_set() -> None:
    one = Settings.from_env({"DATABASE_URL": "postgresql://u@db:5432/shop_prod"})
    two = Settings.from_env({"DATABASE_URL": "postgresql://u@db:5432/shop_staging"})
    assert one.queue_name == "arq:queue:shop_prod"
    assert two.queue_name == "arq:queue:shop_staging"
    named = Settings.from_env(
        {"DATABASE_URL": "postgresql://u@db/shop_prod", "QUEUE_NAME": "arq:queue:blue"}
    )
    assert named.queue_name == "arq:queue:blue"


def test_a_bad_queue_name_names_the_variable_and_a_good_value() -> None:
    with pytest.raises(ConfigError, match="QUEUE_NAME=arq:queue:shop-production"):
        Settings.from_env({"QUEUE_NAME": "my queue!"})


def test_direct_database_url_defaults_to_database_url() -> None:
    plain = Settings.from_env({"DATABASE_URL": "postgresql://u@pgbouncer:6432/app"})
    assert plain.require_direct_database() == "postgresql://u@pgbouncer:6432/app"
    direct = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://u@pgbouncer:6432/app",
            "DIRECT_DATABASE_URL": "postgresql+asyncpg://u@db:5432/app",
        }
    )
    assert direct.require_direct_database() == "postgresql://u@db:5432/app"
    with pytest.raises(ConfigError, match="DIRECT_DATABASE_URL"):
        Settings.from_env({"DIRECT_DATABASE_URL": "mysql://x"})


@pytest.mark.parametrize(
    ("env", "replaced"),
    [
        ({"ASYNC_DATABASE_URL": "postgresql+asyncpg://u:p@h/db"}, "ASYNC_DATABASE_URL"),
        ({"SYNC_DATABASE_URL": "postgresql+psycopg://u:p@h/db"}, "SYNC_DATABASE_URL"),
        ({"CENTS_PER_CREDIT": "100"}, "CENTS_PER_CREDIT"),
        ({"METRICS_ON_RECEIVER": "true"}, "METRICS_ON_RECEIVER"),
        ({"OPS_ON_RECEIVER": "true"}, "OPS_ON_RECEIVER"),
    ],
)
def test_each_deprecated_name_still_works_and_names_its_replacement(
    env: dict[str, str], replaced: str
) -> None:
    settings = Settings.from_env(env)
    assert [name for name, _ in settings.deprecations] == [replaced]
    replacement = dict(settings.deprecations)[replaced]
    assert replacement.split()[0].strip("`") in {
        "DATABASE_URL",
        "CREDIT_PRICES=usd:<cents>",
        "METRICS_PORT",
        "webhook-worker",
    }


def test_a_toggle_left_off_and_the_current_names_are_not_deprecated() -> None:
    settings = settings_from(
        METRICS_ON_RECEIVER="false",
        OPS_ON_RECEIVER="false",
        DATABASE_URL="postgresql://h/db",
        CREDIT_PRICES="usd:100",
    )
    assert settings.deprecations == ()
    assert {"DATABASE_URL", "CREDIT_PRICES"} <= settings.given


def test_listen_addresses_and_the_data_folder_are_settings() -> None:
    settings = settings_from(
        HOST="0.0.0.0",
        PORT="5000",
        WEB_CONCURRENCY="3",
        CONSOLE_PORT="9000",
        DATA_DIR="var/dev-data",
    )
    assert (settings.host, settings.port, settings.web_concurrency) == ("0.0.0.0", 5000, 3)
    assert (settings.console_host, settings.console_port, settings.data_dir) == (
        "127.0.0.1",
        9000,
        "var/dev-data",
    )
    for name, value in (("PORT", "http"), ("PORT", "70000"), ("WEB_CONCURRENCY", "0")):
        with pytest.raises(ConfigError, match=name):
            settings_from(**{name: value})


# Reads of the environment outside `Settings`, each with its reason; anything else fails.
_ALLOWED_ENV_READS = {
    "webhook_worker/config.py",  # Settings.from_env itself
    "webhook_worker/cli.py",  # passes os.environ to Settings; PROMETHEUS_MULTIPROC_DIR
    "webhook_worker/ops/deploy.py",  # passes os.environ to Settings (local_services)
    "webhook_worker/metrics.py",  # PROMETHEUS_MULTIPROC_DIR, prometheus-client's own variable
    "webhook_worker/dev/run.py",  # copies the environment for its child processes
}


def test_every_environment_read_goes_through_settings() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    readers = {
        str(path.relative_to(root))
        for path in (root / "webhook_worker").rglob("*.py")
        if "os.environ" in path.read_text() or "getenv" in path.read_text()
    }
    assert readers <= _ALLOWED_ENV_READS, (
        f"{sorted(readers - _ALLOWED_ENV_READS)} read the environment: add the variable to "
        "Settings.from_env (webhook_worker/config.py) and pass Settings instead"
    )
