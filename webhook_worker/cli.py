"""`webhook-worker` command line: one argparse tree, `--help` on every command.

Exit codes: 0 success, 1 the command ran and found a problem (failed check, nothing to do
when something was required), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import ChainMap
from collections.abc import Callable, Sequence

import asyncpg

from webhook_worker import local_services
from webhook_worker.config import Settings
from webhook_worker.db.queries import bind_users_table
from webhook_worker.errors import (
    ConfigError,
    MigrationError,
    MigrationLockTimeout,
    WebhookWorkerError,
)
from webhook_worker.exit_codes import EXIT_LOCKED, EXIT_OK, EXIT_PROBLEM, EXIT_USAGE
from webhook_worker.log import configure_logging, get_logger, log_deprecations
from webhook_worker.ops.cli import OPS_REGISTRARS
from webhook_worker.ops.credits_cli import add_credits
from webhook_worker.ops.migrate_cli import add_migrate
from webhook_worker.ops.reconcile_cli import add_reconcile

Handler = Callable[[argparse.Namespace, Settings], int]


# --- serve / work / dev ------------------------------------------------------------------


def _check_services(settings: Settings, role: str) -> None:
    """Before a service starts: Redis fit for it (else, after REDIS_STARTUP_TIMEOUT_SECONDS,
    RedisMisconfigured: exit 2 with the cause and the fix)."""
    from webhook_worker.redis_check import check_redis

    log = get_logger("webhook_worker.startup")

    def retrying(cause: str) -> None:
        log.warning("redis_misconfigured", role=role, cause=cause, retrying=True)

    warning = asyncio.run(check_redis(settings, on_retry=retrying))
    if warning:
        log.warning("redis_unreachable_at_startup", role=role, detail=warning)
    missing = asyncio.run(_missing_grants(settings))
    if missing:
        for line in missing:
            log.error("runtime_grant_missing", role=role, detail=line)
        raise ConfigError(
            f"the DATABASE_URL role lacks {len(missing)} grant(s) the {role} needs: "
            + "; ".join(missing)
            + " (docs/deployment.md, Database roles)"
        )


async def _missing_grants(settings: Settings) -> list[str]:
    """What the runtime role lacks; [] when Postgres does not answer now (it may later)."""
    from webhook_worker.db import privileges

    try:
        conn = await asyncpg.connect(
            settings.require_database(),
            timeout=5,
            statement_cache_size=settings.db_statement_cache_size,
        )
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return []
    try:
        return await privileges.missing_runtime_grants(conn)
    finally:
        await conn.close()


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    settings.require_receiver()
    _check_services(settings, "receiver")
    workers = args.workers or settings.web_concurrency
    _prepare_multiprocess_metrics(settings, workers)
    _raise_open_files_limit(settings.max_connections)
    uvicorn.run(
        "webhook_worker.entrypoints:receiver_from_env",
        factory=True,
        host=args.host or settings.host,
        port=settings.port if args.port is None else args.port,
        workers=workers,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        # uvicorn's httptools protocol plus header-size and header/body-time bounds.
        http="webhook_worker.receiver.listener:BoundedHttpToolsProtocol",
        # Open connections and running requests per process; beyond them uvicorn answers 503.
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keepalive_timeout_seconds,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    return EXIT_OK


def _prepare_multiprocess_metrics(settings: Settings, workers: int) -> None:
    """Several uvicorn workers share one internal listener: make its /metrics add them up."""
    serves = settings.metrics_port or settings.metrics_on_receiver
    if workers > 1 and serves and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        import tempfile

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="webhook-worker-metrics-")


def _raise_open_files_limit(connections: int) -> None:
    """MAX_CONNECTIONS needs as many descriptors (plus pools and logs); raise the soft limit
    towards the hard one, and say so when even that is short."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < wanted:
            print(
                f"warning: open files limited to {target}; MAX_CONNECTIONS={connections} needs "
                f"{wanted} (raise `ulimit -n` or lower MAX_CONNECTIONS)",
                file=sys.stderr,
            )


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the webhook receiver (POST /webhooks/stripe, /healthz) under uvicorn",
        description="Needs STRIPE_WEBHOOK_SECRET, DATABASE_URL and REDIS_URL.",
    )
    p.add_argument(
        "--host", help="address to bind (default: $HOST, else 127.0.0.1; 0.0.0.0 on a platform)"
    )
    p.add_argument("--port", type=int, help="port to bind (default: $PORT, else 8000)")
    p.add_argument(
        "--workers", type=int, help="receiver processes (default: $WEB_CONCURRENCY, else 1)"
    )
    p.set_defaults(handler=_serve)


def _console(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    settings.require_database()
    settings.require_redis()
    settings.require_operators()
    host = args.host or settings.console_host
    port = settings.console_port if args.port is None else args.port
    login = "OPS_TOKEN" if settings.ops_token else "your token from OPS_USERS"
    print(f"ops console on http://{host}:{port}/ (log in with {login})", file=sys.stderr)
    uvicorn.run(
        "webhook_worker.console.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        log_config=None,
        access_log=False,  # query strings can hold an email (the events search)
        lifespan="on",
    )
    return EXIT_OK


def _add_console(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "console",
        help="run the ops console (pages + /ops API) on its own, private listener",
        description="Needs DATABASE_URL, REDIS_URL and OPS_TOKEN or OPS_USERS. Keep it private.",
    )
    p.add_argument("--host", help="address to bind (default: $CONSOLE_HOST, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (default: $CONSOLE_PORT, else 8081)")
    p.set_defaults(handler=_console)


def _work(args: argparse.Namespace, settings: Settings) -> int:
    from webhook_worker.worker.supervisor import run_worker

    settings.require_database()
    settings.require_redis()
    _check_services(settings, "worker")
    run_worker(settings, burst=args.burst)
    return EXIT_OK


def _add_work(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("work", help="run the arq worker that processes stored events")
    p.add_argument("--burst", action="store_true", help="drain the queue, then exit")
    p.set_defaults(handler=_work)


def _dev(args: argparse.Namespace, settings: Settings) -> int:
    from webhook_worker.dev.run import run_dev

    return run_dev(
        port=settings.port if args.port is None else args.port,
        data_dir=args.data_dir or settings.data_dir,
        console_port=settings.console_port if args.console_port is None else args.console_port,
    )


def _add_dev(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dev",
        help="`make run`: receiver, worker and ops console on this machine; embedded "
        "Postgres/Redis when DATABASE_URL/REDIS_URL are unset",
        description=(
            "Starts the receiver, one worker and the ops console as child processes "
            "(APP_ENV=development), after applying migrations; with DATABASE_URL / REDIS_URL "
            "unset, an embedded Postgres and Redis under --data-dir. Prints the endpoint, a "
            "development signing secret, the console's URL and token. Ctrl-C stops everything."
        ),
    )
    p.add_argument("--port", type=int, help="the receiver's port (default: $PORT, else 8000)")
    p.add_argument(
        "--data-dir", help="embedded services and dev secrets (default: $DATA_DIR, else .data)"
    )
    p.add_argument(
        "--console-port",
        type=int,
        help="the ops console's port, 0 for no console (default: $CONSOLE_PORT, else 8081)",
    )
    p.set_defaults(handler=_dev, development=True)


# --- config / env ------------------------------------------------------------------------


def _config(args: argparse.Namespace, settings: Settings) -> int:
    from webhook_worker.ops import config_cli

    return config_cli.print_config(settings, as_json=args.json)


def _add_config(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "config",
        help="print the effective configuration (secrets redacted) and where each value came from",
        description=(
            "Every variable of docs/configuration.md with the value in effect and its source: "
            "the environment, a default, or make run's services. --markdown prints "
            "docs/configuration.md itself (from the defaults, not this environment)."
        ),
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--markdown",
        action="store_true",
        help="print the configuration reference (docs/configuration.md) instead",
    )
    p.set_defaults(handler=_config)


def _env(args: argparse.Namespace, settings: Settings) -> int:
    from webhook_worker.ops import config_cli

    return config_cli.print_env(settings)


def _add_env(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "env",
        help="print `export DATABASE_URL=… REDIS_URL=…` for the services of a running make run",
        description=(
            'For tools outside this CLI: eval "$(webhook-worker env)"; then psql "$DATABASE_URL". '
            "Exit 1 when no make run is running in --data-dir."
        ),
    )
    p.set_defaults(handler=_env, development=True)


# --- entry point -------------------------------------------------------------------------

REGISTRARS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_serve,
    _add_work,
    _add_console,
    _add_dev,
    _add_config,
    _add_env,
    add_migrate,
    *OPS_REGISTRARS,
    add_reconcile,
    add_credits,
]


_SERVICES = ("serve", "work", "console", "dev")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="webhook-worker",
        description="Stripe webhook ingestion: receiver, worker and ops tools.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRARS:
        register(sub)
    return parser


def _load_settings(args: argparse.Namespace) -> Settings:
    """The one read of the environment: development defaults for `dev` and `env`, make run's
    services filled in for every other command (`local_services`)."""
    if getattr(args, "development", False):
        return Settings.from_env(ChainMap(dict(os.environ), {"APP_ENV": "development"}))
    settings, note = local_services.load_settings(os.environ)
    if note:
        print(note, file=sys.stderr)
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "markdown", False):  # the reference, independent of this environment
        from webhook_worker.config_reference import render_markdown

        print(render_markdown(), end="")
        return EXIT_OK
    try:
        settings = _load_settings(args)
        bind_users_table(settings.users_table)
        # Ops commands print their results (and --json) on stdout; their logs, such as the
        # replay audit line, go to stderr so the two never mix.
        configure_logging(
            settings.log_format,
            settings.log_level,
            e2e_bypass=settings.e2e_test_mode,
            stream="stdout" if args.command in _SERVICES else "stderr",
        )
        if args.command != "serve":  # serve's app factory warns in each of its processes
            log_deprecations(settings.deprecations)
        handler: Handler = args.handler
        return handler(args, settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MigrationLockTimeout as exc:
        print(f"migration error: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except MigrationError as exc:
        print(f"migration error: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    except WebhookWorkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"error: cannot reach a service: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
