"""The configuration reference: what each variable `Settings.from_env` reads means.

`docs/configuration.md` is generated from this table and from `Settings` itself
(`webhook-worker config --markdown`): defaults are read off a `Settings` parsed from an
empty environment, and the set of variables is the set `from_env` asks for
(`config.EnvReader`), so `tests/test_config_reference.py` fails when a variable is added
without its line here, or the page differs from what the command prints.
`webhook-worker config` prints the values in effect, secrets redacted, and where each came
from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from webhook_worker.config import EnvReader, Settings, redact_url

REGENERATE = ".venv/bin/webhook-worker config --markdown > docs/configuration.md"
MAIN_TABLE_MAX = 30


@dataclass(frozen=True)
class Variable:
    name: str
    meaning: str
    used_by: str
    default: str | None = None  # shown instead of the parsed default (e.g. it depends on APP_ENV)
    advanced: str | None = None  # why it is not in the main table
    replacement: str | None = None  # deprecated: what to set instead (config_readers.DEPRECATED)
    value: Callable[[Settings], Any] | None = None  # the effective value; else the field
    secret: bool = False
    attribute: str | None = None  # the `Settings` field, when not the name in lower case

    @property
    def field(self) -> str:
        return self.attribute or self.name.lower()


def _seconds_as_duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _alias_dsn(settings: Settings, name: str) -> str | None:
    return settings.database_url if name in settings.given else None


_URLS = (
    "DATABASE_URL",
    "REDIS_URL",
    "DIRECT_DATABASE_URL",
    "ASYNC_DATABASE_URL",
    "SYNC_DATABASE_URL",
)
_LISTENER = "the public listener's abuse bounds (docs/reliability.md#abuse); the defaults held against every attack tested"
_TUNING = "throughput tuning measured by `make bench` (docs/performance.md); the defaults are the measured best"
_SWEEP = "lost wake-ups are rare (Redis lost a job); the defaults recover one within ~2.5 minutes"
_POOL = "size it against Postgres's `max_connections` (docs/scaling.md)"

V = Variable
VARIABLES: tuple[Variable, ...] = (
    # --- main: what a deployment sets or is likely to change ----------------------------------
    V("STRIPE_WEBHOOK_SECRET", "the endpoint's signing secret `whsec_…`; a comma-separated list is accepted (rotation, several endpoints)", "serve", default="— (required by `serve`)", value=lambda s: s.webhook_secrets, secret=True),
    V("DATABASE_URL", "Postgres DSN, e.g. `postgresql://user:password@host:5432/db` (`postgresql+asyncpg://` / `+psycopg://` are normalised)", "all", default="— (`make run`: embedded)"),
    V("REDIS_URL", "Redis for the arq queue, e.g. `redis://localhost:6379/0` (`rediss://` for TLS)", "all", default="— (`make run`: embedded)"),
    V("APP_ENV", "`production`, `development` or `test`; secure unless told otherwise. `make run` sets `development`", "all"),
    V("STRIPE_MODE", "`live` or `test`: the mode whose money mints credits; events of the other mode are stored and `ignored` (`livemode_mismatch`)", "work", default="`live` when `APP_ENV=production`, else `test`"),
    V("CREDIT_PRICES", "price of one credit per currency in its minor unit, e.g. `usd:100,eur:95,jpy:150`; a session without `metadata.credits` credits `amount_total // price`", "work", value=lambda s: s.credit_prices),
    V("PRICE_CREDITS", "credits one unit of a Stripe price buys on a paid invoice, e.g. `price_123:1000,price_456:5000` (times the line's quantity)", "work"),
    V("STRIPE_CONNECT_ACCOUNTS", "comma list of connected account ids (`acct_…`) whose events are handled; others are `ignored` (`connect_account_not_allowed`)", "work", value=lambda s: s.connect_accounts),
    V("MAX_CREDITS_PER_EVENT", "an event that would credit more fails (nothing credited), naming this variable", "work"),
    V("SUBSCRIPTION_CREDITS_EXPIRE", "`true`: crediting a subscription's next period expires the unspent credits of earlier periods (`EXPIRY` rows)", "work"),
    V("STRIPE_API_KEY", "a restricted key with Events: read (`rk_live_…`, `rk_test_…` in test mode) for `reconcile` and its hourly cron; `sk_live_…` and keys of the other mode are refused", "work, reconcile", default="unset (reconcile off)", secret=True),
    V("OPS_TOKEN", "token to log in to the console and bearer token of `/ops/*`, 32+ characters (`openssl rand -hex 32`); the audit names it `ops`", "console", default="unset (console and ops API off)", secret=True),
    V("OPS_USERS", "named operator tokens `alice:<token>,bob:<token>` (32+ characters each), so the audit says who replayed", "console", value=lambda s: s.ops_users, secret=True),
    V("LOG_FORMAT", "`json` or `console`", "all", default="`json` in production, else `console`"),
    V("LOG_LEVEL", "`debug`, `info`, `warning`, `error` or `critical`", "all"),
    V("HOST", "address `serve` binds (`0.0.0.0` behind a platform router)", "serve"),
    V("PORT", "port of `serve` (the webhook endpoint); `make run` and `send-test-event` use it too", "serve, dev"),
    V("WEB_CONCURRENCY", "receiver processes `serve` starts", "serve"),
    V("CONSOLE_PORT", "port of `webhook-worker console`; `make run` starts it there", "console, dev"),
    V("METRICS_PORT", "port of the internal listener serving `/metrics` and `/readyz` for the receiver and the worker", "serve, work", default="unset (no internal listener)"),
    V("RETENTION_DAYS", "raw payloads of `completed`/`ignored` events older than this are pruned (ids, status, ledger stay)", "work, prune"),
    V("MAX_TRIES", "tries of a transiently failing event before it is `failed`", "work"),
    V("WAIT_MAX_DAYS", "how long a `waiting` event (e.g. a refund before its purchase) waits before it is `ignored`", "work"),
    V("USERS_TENANT_COLUMN", "the `users` column that scopes emails (e.g. `tenant_id`) when no `UNIQUE (tenant, email)` says so", "migrate, verify, deploy", default="unset (detected)"),
    # Contract names (DESIGN) landing from parallel branches: rendered once Settings reads them.
    V("DIRECT_DATABASE_URL", "a connection that bypasses any pooler, for `migrate`, `deploy_hotfix.py` and the Procfile's `release:`", "migrate, deploy", default="`DATABASE_URL`"),
    V("USERS_TABLE", "the host's users table exactly as written in its DDL: any identifier (`user`, `AppUsers`), may be schema-qualified (`app.users`); always quoted; a `users` table in another schema is never shadowed ([users-table.md](users-table.md))", "all", default="`users`"),
    V("USERS_VERSION_COLUMN", "the host's optimistic-locking column on its users table; every balance change by the service increments it ([users-table.md](users-table.md))", "migrate, verify, deploy", default="detected (an integer `version` or `lock_version`)"),
    V("QUEUE_NAME", "the arq queue of this deployment, so two deployments can share a Redis", "serve, work", default="`arq:queue:<database name>`"),
    V("SHORTFALL_POLICY", "`forgive` or `collect`: credits taken back after they were spent are collected from the next purchase or grant", "work"),
    # --- advanced: the defaults are right for nearly everyone ---------------------------------
    V("STRIPE_WEBHOOK_TOLERANCE", "seconds of clock skew accepted on the signature timestamp, past or future", "serve", advanced="Stripe's own default; change only for a host with a skewed clock", attribute="webhook_tolerance"),
    V("E2E_TEST_MODE", "`true` skips signature checks; refused unless `APP_ENV` is `development`/`test`; `livemode: true` events are rejected and every log line says so", "serve", advanced="for test rigs only"),
    V("MAX_BODY_BYTES", "request body cap (413 above it)", "serve", advanced="Stripe's events are far below 1 MiB"),
    V("MAX_HEADER_BYTES", "request line + headers per request; more → 431 and the connection closed", "serve", advanced=_LISTENER),
    V("HEADER_TIMEOUT_SECONDS", "time to send the headers; then 408 and closed", "serve", advanced=_LISTENER),
    V("BODY_TIMEOUT_SECONDS", "time to send the body once the headers are in; then 408, nothing stored", "serve", advanced=_LISTENER),
    V("KEEPALIVE_TIMEOUT_SECONDS", "an idle keep-alive connection is closed after this", "serve", advanced=_LISTENER),
    V("MAX_CONNECTIONS", "open connections per receiver process; beyond it 503. `serve` raises the open-files limit to fit", "serve", advanced=_LISTENER),
    V("MAX_BODY_BYTES_IN_FLIGHT", "body bytes all requests of one process may hold at once; past it 503. At least `MAX_BODY_BYTES`", "serve", advanced=_LISTENER),
    V("METRICS_HOST", "address of the internal listener", "serve, work", advanced="`0.0.0.0` only on a private network your scraper reaches"),
    V("CONSOLE_HOST", "address `webhook-worker console` binds", "console", advanced="keep the console private: 127.0.0.1 and an ssh tunnel or VPN"),
    V("CONSOLE_SESSION_HOURS", "lifetime of a console login", "console", advanced="a working shift; rotating a token logs its sessions out anyway"),
    V("OPS_REPLAY_MAX", "most events one bulk replay (CLI, console or API) selects; run it again for the rest", "console, replay", advanced="bounds one command's work; repeat the command for more"),
    V("STRIPE_API_BASE", "the Stripe API base for `reconcile`", "work, reconcile", advanced="for an egress proxy or the tests' fake Stripe"),
    V("RECONCILE_INTERVAL_SECONDS", "how often one worker of the fleet reconciles (with `STRIPE_API_KEY`)", "work", advanced="hourly is well inside Stripe's 30 days of events"),
    V("RECONCILE_LOOKBACK", "how far back the first cron run looks (`3d`, `72h`, seconds; at most `30d`)", "work", value=lambda s: _seconds_as_duration(s.reconcile_lookback_seconds), advanced="only the first run's window; later runs continue from the last"),
    V("RETRY_BASE_SECONDS", "first retry delay of a transient failure; doubles each try (capped at 10 minutes)", "work", advanced="the backoff's shape; `MAX_TRIES` is the knob"),
    V("STALE_AFTER_SECONDS", "the sweeper re-enqueues events `received` (since due) or `processing` for longer", "work", advanced=_SWEEP),
    V("SWEEP_INTERVAL_SECONDS", "how often the sweeper runs (it also wakes `waiting` events whose purchase landed)", "work", advanced=_SWEEP),
    V("JOB_TIMEOUT_SECONDS", "arq job timeout; a killed worker's job runs again 10 s after it, its events' lease is this + 5 s", "work", advanced="a job of 100 events takes well under a second"),
    V("WORKER_MAX_JOBS", "arq jobs a worker process holds at once (each carries up to 100 events); arq re-checks every held job of the queue on each poll: 16 cost 1.2 Redis commands per credited event against 0.4 with 4 (make profile)", "work", advanced="raise it only when jobs are small (a few events each) and the queue still grows"),
    V("WORKER_MAX_EVENTS", "events a worker process processes at once, however many jobs carry them", "work", advanced=_TUNING),
    V("WORKER_POLL_DELAY_MS", "how often an idle worker polls Redis for jobs", "work", value=lambda s: round(s.worker_poll_delay * 1000), advanced=_TUNING),
    V("WORKER_BATCH_MAX", "most events whose claims and credits share one statement and commit; `1` gives each its own transaction", "work", advanced=_TUNING),
    V("DB_POOL_MIN", "asyncpg pool size per process, at least", "all", advanced=_POOL),
    V("DB_POOL_MAX", "asyncpg pool size per process, at most", "all", advanced=_POOL),
    V("DB_STATEMENT_CACHE_SIZE", "asyncpg's prepared-statement cache per connection", "all", advanced="`0` only behind PgBouncer in transaction mode"),
    V("DB_ECHO", "log every SQL statement at debug level", "all", advanced="debugging only"),
    V("MIGRATION_LOCK_TIMEOUT_SECONDS", "how long `migrate` / `deploy_hotfix.py` wait for another run's migration lock before exiting, naming its holder", "migrate, deploy", advanced="two deploys at once are rare; raise it only for a very long migration"),
    V("REDIS_STARTUP_TIMEOUT_SECONDS", "how long `serve` / `work` retry a Redis that answers but refuses (password, ACL, database) before exiting 2 with the cause and the fix; a Redis that is away does not stop a start", "serve, work", advanced="covers a Redis started alongside the service"),
    V("CONSOLE_IDLE_MINUTES", "a console login unused this long is logged out", "console", advanced="a short break; `CONSOLE_SESSION_HOURS` caps the whole login"),
    V("DATA_DIR", "`make run`'s folder: embedded Postgres and Redis, the development secret and token, `services.json`", "dev, CLI", advanced="one checkout, one folder"),
    # --- deprecated: still accepted, with a warning at start-up that names the replacement ---
    V("ASYNC_DATABASE_URL", "the old deployment's name for the DSN", "all", replacement="DATABASE_URL", value=lambda s: _alias_dsn(s, "ASYNC_DATABASE_URL")),
    V("SYNC_DATABASE_URL", "the old deployment's name for the DSN", "all", replacement="DATABASE_URL", value=lambda s: _alias_dsn(s, "SYNC_DATABASE_URL")),
    V("CENTS_PER_CREDIT", "the usd-only price form; both may be set when they agree", "work", replacement="CREDIT_PRICES=usd:<cents>", value=lambda s: s.cents_per_credit),
    V("METRICS_ON_RECEIVER", "`true` also serves `/metrics` and `/readyz` on the public port (anyone can read them)", "serve", replacement="METRICS_PORT"),
    V("OPS_ON_RECEIVER", "`true` keeps `/ops/*` on the public receiver", "serve", replacement="`webhook-worker console`"),
)  # fmt: skip

# Read by a library or by the tests and benchmarks, never by `Settings`.
NOT_SETTINGS: tuple[tuple[str, str], ...] = (
    ("PROMETHEUS_MULTIPROC_DIR", "prometheus-client's own; `serve --workers N` sets it so `/metrics` adds the processes up"),
    ("TEST_DATABASE_URL / TEST_REDIS_URL", "the test suite's servers (a role allowed to create databases); unset: embedded ones"),
    ("BENCH_DATABASE_URL / BENCH_REDIS_URL", "`make bench` against given servers instead of its own"),
    ("CONSOLE_SCREENSHOTS_DOCS", "`1`: the console's browser tests refresh `docs/screenshots/`"),
    ("HEALTHCHECK_URL", "the container image's `healthcheck.py` (docs/deployment.md), not the service"),
)  # fmt: skip


def names_read() -> frozenset[str]:
    """Every variable `Settings.from_env` asks for, over environments that take each branch."""
    names: set[str] = set()
    for env in ({}, {"APP_ENV": "development"}, {"DATABASE_URL": "postgresql://h/db"}):
        reader = EnvReader(env)
        Settings.from_env(reader)
        names |= reader.read
    return frozenset(names)


def documented(read: frozenset[str] | None = None) -> tuple[Variable, ...]:
    """The entries of the variables `Settings` reads (contract names not merged yet stay out)."""
    read = names_read() if read is None else read
    return tuple(v for v in VARIABLES if v.name in read)


def undocumented(read: frozenset[str] | None = None) -> list[str]:
    read = names_read() if read is None else read
    known = {v.name for v in VARIABLES}
    return sorted(read - known)


def _raw(var: Variable, settings: Settings) -> Any:
    if var.value is not None:
        return var.value(settings)
    return getattr(settings, var.field, None)


def show(value: Any) -> str:
    if value is None or value == "" or value == () or value == frozenset() or value == {}:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Mapping):
        return ",".join(f"{k}:{v}" for k, v in sorted(value.items()))
    if isinstance(value, frozenset):
        return ",".join(sorted(value))
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def _redacted(var: Variable, settings: Settings) -> str:
    value = _raw(var, settings)
    if var.name in _URLS and value:
        return redact_url(str(value))
    if not var.secret or not value:
        return show(value)
    if var.name == "OPS_USERS":
        return ", ".join(name for name, _ in value) + " (tokens hidden)"
    if var.name == "STRIPE_API_KEY":
        return f"{str(value)[:8]}… (hidden)"
    if var.name == "STRIPE_WEBHOOK_SECRET":
        return f"{len(value)} secret(s) (hidden)"
    return "set (hidden)"


_APP_ENV_DEFAULTS = ("STRIPE_MODE", "LOG_FORMAT")


def source(var: Variable, settings: Settings) -> str:
    """Where the value in effect came from."""
    if var.name in settings.origins:
        return settings.origins[var.name]
    if var.name in settings.given:
        return "environment" + (" (deprecated)" if var.replacement else "")
    aliases = {
        "DATABASE_URL": ("ASYNC_DATABASE_URL", "SYNC_DATABASE_URL"),
        "CREDIT_PRICES": ("CENTS_PER_CREDIT",),
    }
    for alias in aliases.get(var.name, ()):
        if alias in settings.given:
            return f"{alias} (deprecated)"
    if var.name in _APP_ENV_DEFAULTS:
        return f"default for APP_ENV={settings.app_env}"
    return "default"


def effective(settings: Settings) -> list[dict[str, str]]:
    """Every variable: its value in effect (secrets redacted) and where it came from."""
    rows = []
    for var in documented():
        section = "deprecated" if var.replacement else "advanced" if var.advanced else "main"
        rows.append(
            {
                "name": var.name,
                "value": _redacted(var, settings),
                "source": source(var, settings),
                "section": section,
            }
        )
    return rows


def _default(var: Variable, defaults: Settings) -> str:
    if var.default is not None:
        return var.default
    shown = show(_raw(var, defaults))
    return "unset" if shown == "unset" else f"`{shown}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


_INTRO = """\
# Configuration

<!-- Generated by `webhook-worker config --markdown` from `Settings` and
webhook_worker/config_reference.py: do not edit by hand. After adding a variable, give it
a line in config_reference.py and run: {regenerate} -->

Every variable is read once, at start-up, by `Settings.from_env` (`webhook_worker/config.py`);
nothing else reads the environment. A bad value stops the process with a message that names
the variable and shows a good one. `webhook-worker config` prints the values in effect,
secrets redacted, and where each came from (environment, default, or `make run`'s services).

"used by" names the commands that read it: `serve` (receiver), `work` (worker), `console`,
`migrate`, `deploy` (`deploy_hotfix.py`), `dev` (`make run`); `all` is every one of them.
"""


def render_markdown() -> str:
    """docs/configuration.md, from `Settings` parsed off an empty environment."""
    defaults = Settings.from_env({})
    entries = documented()
    main = [v for v in entries if not v.advanced and not v.replacement]
    advanced = [v for v in entries if v.advanced]
    deprecated = [v for v in entries if v.replacement]
    lines = [_INTRO.format(regenerate=REGENERATE)]
    lines += [
        "## Main settings",
        "",
        f"The {len(main)} variables a deployment sets or is likely to change.",
        "",
        "| variable | default | used by | meaning |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| `{v.name}` | {_cell(_default(v, defaults))} | {v.used_by} | {_cell(v.meaning)} |"
        for v in main
    ]
    lines += [
        "",
        "## Advanced",
        "",
        f"{len(advanced)} variables whose defaults are right for nearly every deployment; "
        "each line says why.",
        "",
        "| variable | default | used by | meaning | why advanced |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| `{v.name}` | {_cell(_default(v, defaults))} | {v.used_by} | {_cell(v.meaning)} "
        f"| {_cell(v.advanced or '')} |"
        for v in advanced
    ]
    lines += [
        "",
        "## Deprecated",
        "",
        "Still accepted; each logs `setting_deprecated` at start-up naming its replacement.",
        "",
        "| variable | use instead | meaning |",
        "|---|---|---|",
    ]
    lines += [f"| `{v.name}` | {v.replacement} | {_cell(v.meaning)} |" for v in deprecated]
    lines += [
        "",
        "## Not read by the service",
        "",
        "| variable | read by |",
        "|---|---|",
    ]
    lines += [f"| `{name}` | {_cell(what)} |" for name, what in NOT_SETTINGS]
    return "\n".join(lines) + "\n"
