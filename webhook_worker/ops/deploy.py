"""Roll the webhook-worker hotfix out: preflight, migrate, verify, smoke test, report.

    python deploy_hotfix.py [--yes] [--dry-run] [--skip-migration] [--smoke-url URL]
    python deploy_hotfix.py --rollback [--to VERSION] [--drop-data] [--yes]

1. preflight — settings parse (`Settings.from_env`), DATABASE_URL / REDIS_URL set, every
   STRIPE_WEBHOOK_SECRET entry looks like `whsec_…`, Postgres and Redis answer, and the
   migration role may change `users` when a migration is pending. Schema work uses
   DIRECT_DATABASE_URL (a connection past any pooler), else DATABASE_URL.
2. migrate   — `sql/migrations` up (each in its own transaction, under a transaction-scoped
   advisory lock; a run holding it is named, and after MIGRATION_LOCK_TIMEOUT_SECONDS the
   deploy gives up with exit 3); `--skip-migration` skips it; `--rollback [--to VERSION]`
   runs down parts instead (the newest migration, or every one above VERSION) and skips
   verify. A rollback that would drop ledger, event or audit rows refuses, naming the
   tables and row counts, unless `--drop-data` is given (and typed again at the prompt).
3. verify    — the same checks as `webhook-worker verify`.
4. smoke     — with `--smoke-url`: POST a signed test-mode event of type
   `webhook_worker.smoke_test` and wait until a worker has processed it (`ignored`,
   `unhandled_type`; no balance is touched); the step fails saying whether the event was
   not stored, or stored but not processed within the timeout.
5. report    — one line per step. Exit 0 only when every step passed, 1 when one failed,
   2 on bad configuration or usage.

`--dry-run` connects, prints the plan and the SQL it would run, and changes nothing.
Without `--yes`, on a terminal, it asks before changing the schema. A second run finds
nothing to apply and changes nothing (a smoke test stores one more test event).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg
from rich.console import Console
from rich.table import Table

from webhook_worker import local_services, redis_check
from webhook_worker.config import Settings, redact_url
from webhook_worker.db import host, migrations, privileges, store
from webhook_worker.db.queries import bind_users_table
from webhook_worker.errors import (
    ConfigError,
    MigrationError,
    MigrationLockTimeout,
    WebhookWorkerError,
)
from webhook_worker.exit_codes import EXIT_LOCKED, EXIT_OK, EXIT_PROBLEM, EXIT_USAGE
from webhook_worker.log import configure_logging, log_deprecations
from webhook_worker.ops import terminal, test_events, verify
from webhook_worker.ops.verify_cli import print_verify_report
from webhook_worker.worker import scope

SMOKE_TIMEOUT_SECONDS = 30.0


@dataclass
class Step:
    name: str
    status: str  # "ok", "warn", "FAIL", "skipped", "planned"
    detail: str


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)
    lock_timed_out: bool = False

    def add(self, name: str, status: str, detail: str) -> Step:
        step = Step(name, status, detail)
        self.steps.append(step)
        console = _console()
        colour = {"ok": "green", "FAIL": "red"}.get(status, "yellow")
        console.print(f"[{colour}]{status:>7}[/{colour}]  {name}: ", end="")
        console.print(detail, markup=False, highlight=False, soft_wrap=True)
        return step

    @property
    def ok(self) -> bool:
        return all(step.status != "FAIL" for step in self.steps)


def _console() -> Console:
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deploy_hotfix.py",
        description="Preflight, migrate, verify and smoke-test a webhook-worker deployment.",
        epilog="Exit 0 only when every step passed; 1 when a step failed; 2 on bad config; "
        "3 when a migration gave up waiting for the lock another run holds.",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan and SQL only")
    parser.add_argument("--skip-migration", action="store_true", help="do not migrate")
    parser.add_argument("--rollback", action="store_true", help="run down migrations instead")
    parser.add_argument(
        "--to",
        type=int,
        metavar="VERSION",
        help="with --rollback: keep VERSION and below (default: undo only the newest)",
    )
    parser.add_argument(
        "--smoke-url", metavar="URL", help="POST a signed test event here (default: no smoke test)"
    )
    parser.add_argument(
        "--smoke-timeout",
        type=float,
        default=SMOKE_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="how long a worker may take to process the smoke event (default: %(default)s)",
    )
    parser.add_argument(
        "--drop-data",
        action="store_true",
        help="with --rollback: proceed even when it drops ledger, event or audit rows "
        "(default: refuse)",
    )
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask; for CI/release")
    return parser


# --- steps ---------------------------------------------------------------------------------


async def _preflight(settings: Settings, report: Report) -> asyncpg.Connection | None:
    settings.require_database()
    settings.require_redis()
    if settings.webhook_secrets:
        report.add(
            "preflight: settings",
            "ok",
            f"APP_ENV={settings.app_env}, {len(settings.webhook_secrets)} webhook secret(s) "
            "in whsec_ format",
        )
    elif settings.e2e_test_mode:
        report.add("preflight: settings", "ok", "E2E_TEST_MODE: signatures are not checked")
    else:
        report.add(
            "preflight: settings",
            "FAIL",
            "STRIPE_WEBHOOK_SECRET is not set; use the endpoint's whsec_… secret",
        )
        return None
    report.add("preflight: scope", "ok", scope.describe(settings))
    for warning in scope.warnings(settings):
        report.add("preflight: scope", "warn", warning)
    dsn = settings.require_direct_database()
    try:
        conn = await migrations.connect_direct(settings)
        version = await conn.fetchval("SHOW server_version")
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        report.add(
            "preflight: postgres",
            "FAIL",
            f"cannot reach {redact_url(dsn)}: {type(exc).__name__}: {exc}",
        )
        return None
    report.add("preflight: postgres", "ok", f"{redact_url(dsn)} answers (server {version})")
    try:
        # Each command the service needs, on probe keys: a wrong password, an ACL without a
        # command or a missing database fails here, naming the fix (no retry in a deploy).
        unreachable = await redis_check.check_redis(
            settings.with_overrides(redis_startup_timeout_seconds=0)
        )
    except WebhookWorkerError as exc:
        unreachable = str(exc)
    if unreachable:
        report.add(
            "preflight: redis", "FAIL", f"{redact_url(settings.redis_url or '')}: {unreachable}"
        )
        await conn.close()
        return None
    report.add("preflight: redis", "ok", f"{redact_url(settings.redis_url or '')} answers")
    return conn


async def _plan(conn: asyncpg.Connection, args: argparse.Namespace) -> list[migrations.Migration]:
    """What would change: pending migrations, or the ones a rollback would undo."""
    pending = await migrations.pending_migrations(conn)
    if not args.rollback:
        return pending
    pending_versions = {m.version for m in pending}
    applied = [m for m in migrations.load_migrations() if m.version not in pending_versions]
    targets = list(reversed(applied))
    return targets[:1] if args.to is None else [m for m in targets if m.version > args.to]


async def _risks(
    conn: asyncpg.Connection, plan: list[migrations.Migration], args: argparse.Namespace
) -> list[migrations.TableAtRisk]:
    """With --rollback: the tables holding rows that the plan's down parts would drop."""
    if not args.rollback or not plan:
        return []
    risks = await migrations.data_at_risk(conn, plan)
    console = _console()
    for risk in risks:
        console.print(f"plan: DROPS DATA: {risk.describe()}", markup=False)
    return risks


def _print_plan(plan: list[migrations.Migration], args: argparse.Namespace) -> None:
    console = _console()
    verb = "roll back" if args.rollback else "apply"
    if args.skip_migration and not args.rollback:
        console.print("plan: migrations skipped (--skip-migration)")
    elif not plan:
        console.print(f"plan: nothing to {verb}; the schema is up to date")
    else:
        for migration in plan:
            console.print(f"plan: {verb} {migration.version:04d}_{migration.name}", markup=False)
            sql = migration.down if args.rollback else migration.up
            print(f"-- {verb} {migration.path.name}\n{sql}\n", flush=True)
    if not args.rollback:
        console.print("plan: then verify the schema, balances and event backlog")
        if args.smoke_url:
            console.print(f"plan: then POST a signed test event to {args.smoke_url}", markup=False)


def _confirm(
    plan: list[migrations.Migration],
    args: argparse.Namespace,
    risks: list[migrations.TableAtRisk],
) -> bool:
    if args.yes or not plan or not sys.stdin.isatty():
        return True
    verb = "Roll back" if args.rollback else "Apply"
    if risks:
        tables = ", ".join(f"{r.table} ({r.rows} rows)" for r in risks)
        answer = input(
            f"{verb} {len(plan)} migration(s) listed above, DELETING {tables}? "
            "Type --drop-data to confirm: "
        )
        return answer.strip() == "--drop-data"
    answer = input(f"{verb} {len(plan)} migration(s) listed above? [y/N] ")
    return answer.strip().lower() in {"y", "yes"}


async def _host(
    conn: asyncpg.Connection, settings: Settings, args: argparse.Namespace, report: Report
) -> bool:
    """Print the host `users` shape and the choices made; refuse an unsupported one."""
    shape, problems = await host.inspect_configured(
        conn,
        settings.users_table,
        settings.users_tenant_column,
        settings.users_version_column,
    )
    recorded = await host.recorded_shape(conn)
    console = _console()
    for line in shape.describe(recorded):
        console.print(terminal.cell(f"host: {line}"))
    if problems and not args.rollback:
        report.add("host users", "FAIL", "; ".join(problems))
        return False
    report.add("host users", "ok", f"{shape.table}.id {shape.key_type}")
    return True


async def _migrate(
    conn: asyncpg.Connection, settings: Settings, args: argparse.Namespace, report: Report
) -> bool:
    try:
        if args.rollback:
            done = await migrations.migrate_down(
                conn,
                to=args.to,
                drop_data=args.drop_data,
                users_table=settings.users_table,
                lock_timeout=settings.migration_lock_timeout_seconds,
                on_wait=_say,
            )
            names = ", ".join(f"{m.version:04d}_{m.name}" for m in done)
            report.add("rollback", "ok", f"rolled back {names}" if done else "nothing to roll back")
            return True
        done = await migrations.migrate_up(
            conn,
            tenant_column=settings.users_tenant_column,
            users_table=settings.users_table,
            version_column=settings.users_version_column,
            lock_timeout=settings.migration_lock_timeout_seconds,
            on_wait=_say,
        )
        await store.record_shortfall_policy(conn, settings.shortfall_policy)
    except MigrationLockTimeout as exc:
        report.lock_timed_out = True
        report.add("rollback" if args.rollback else "migrate", "FAIL", str(exc))
        return False
    except (MigrationError, asyncpg.PostgresError) as exc:
        report.add("rollback" if args.rollback else "migrate", "FAIL", str(exc))
        return False
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in done)
    report.add("migrate", "ok", f"applied {names}" if done else "nothing to apply; up to date")
    return True


def _say(message: str) -> None:
    _console().print(f"migrate: {message}", markup=False)


async def _verify(conn: asyncpg.Connection, settings: Settings, report: Report) -> bool:
    result = await verify.verify(
        conn,
        stale_after_seconds=settings.stale_after_seconds,
        tenant_column=settings.users_tenant_column,
        users_table=settings.users_table,
        version_column=settings.users_version_column,
    )
    print_verify_report(result)
    if result.ok:
        report.add("verify", "ok", f"{len(result.checks)} checks passed")
        return True
    problems = "; ".join(f"{c.name}: {c.detail}" for c in result.problems)
    report.add("verify", "FAIL", f"{len(result.problems)} problem(s): {problems}")
    return False


_NOT_PROCESSED = frozenset({"received", "processing"})


async def _smoke(
    conn: asyncpg.Connection,
    settings: Settings,
    url: str,
    timeout: float,  # noqa: ASYNC109 - a polling deadline, not a cancellation scope
    report: Report,
) -> bool:
    secret = test_events.pick_secret(settings, None)
    event = test_events.build_test_event(test_events.SMOKE_EVENT_TYPE)
    try:
        result = await test_events.send_event(url, event, secret)
    except WebhookWorkerError as exc:
        report.add("smoke test", "FAIL", str(exc))
        return False
    if result.status_code != 200:
        report.add(
            "smoke test", "FAIL", f"{url} answered HTTP {result.status_code}: {result.body[:200]}"
        )
        return False
    deadline = time.monotonic() + timeout
    outcome = await test_events.event_outcome(conn, result.event_id)
    while (outcome is None or outcome[0] in _NOT_PROCESSED) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        outcome = await test_events.event_outcome(conn, result.event_id)
    if outcome is None:
        report.add(
            "smoke test",
            "FAIL",
            f"{url} answered 200 but {result.event_id} is not in stripe_events of this "
            f"DATABASE_URL after {timeout:g}s (is the receiver on another database?)",
        )
        return False
    status, reason = outcome
    if status in _NOT_PROCESSED:
        report.add(
            "smoke test",
            "FAIL",
            f"{result.event_id} was stored but no worker processed it within {timeout:g}s "
            f"(still {status}): is `webhook-worker work` running, on the same REDIS_URL and "
            "QUEUE_NAME as the receiver?",
        )
        return False
    if status != "ignored":
        report.add(
            "smoke test",
            "FAIL",
            f"{result.event_id} ended {status} ({reason}); a smoke event should be ignored",
        )
        return False
    report.add(
        "smoke test",
        "ok",
        f"{result.event_id} stored and processed by a worker ({status}, {reason})",
    )
    return True


async def _checks_pass(
    conn: asyncpg.Connection,
    settings: Settings,
    args: argparse.Namespace,
    report: Report,
    plan: list[migrations.Migration],
    risks: list[migrations.TableAtRisk],
) -> bool:
    """The host's users, the migration role's rights, a rollback's data: True to go on."""
    if not await _host(conn, settings, args, report):
        return False
    if plan and not args.rollback:
        problems = await privileges.migration_role_problems(conn)
        for problem in problems:
            report.add("preflight: privileges", "FAIL", problem)
        if problems:
            return False
    if risks and not args.drop_data:
        report.add("rollback", "FAIL", migrations.refusal(risks))
        return False
    return True


async def deploy(args: argparse.Namespace, settings: Settings, report: Report) -> None:
    conn = await _preflight(settings, report)
    if conn is None:
        return
    try:
        try:
            plan = await _plan(conn, args)
        except MigrationError as exc:
            report.add("plan", "FAIL", str(exc))
            return
        _print_plan(plan, args)
        risks = await _risks(conn, plan, args)
        if not await _checks_pass(conn, settings, args, report, plan, risks):
            return
        if args.dry_run:
            dropping = f"; would drop {len(risks)} table(s) with rows" if risks else ""
            report.add(
                "dry run", "ok", f"{len(plan)} migration(s) planned{dropping}; nothing changed"
            )
            return
        if not _confirm(plan, args, risks):
            report.add("confirm", "FAIL", "not confirmed; nothing changed")
            return
        if args.skip_migration and not args.rollback:
            report.add("migrate", "skipped", "--skip-migration")
        elif not await _migrate(conn, settings, args, report):
            return
        if args.rollback:
            report.add(
                "verify",
                "skipped",
                "after a rollback the schema is below the contract until the next deploy",
            )
            return
        if await _verify(conn, settings, report) and args.smoke_url:
            await _smoke(conn, settings, args.smoke_url, args.smoke_timeout, report)
    finally:
        await conn.close()


def _print_report(report: Report) -> None:
    table = Table(title="deploy report", title_justify="left")
    table.add_column("step", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("detail")
    for step in report.steps:
        terminal.row(table, step.name, step.status, step.detail)
    console = _console()
    console.print(table)
    console.print("deploy PASSED" if report.ok else "deploy FAILED")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.to is not None and not args.rollback:
        print("--to goes with --rollback", file=sys.stderr)
        return EXIT_USAGE
    if args.drop_data and not args.rollback:
        print("--drop-data goes with --rollback", file=sys.stderr)
        return EXIT_USAGE
    if args.rollback and (args.skip_migration or args.smoke_url):
        print("--rollback cannot be combined with --skip-migration or --smoke-url", file=sys.stderr)
        return EXIT_USAGE
    report = Report()
    try:
        # Like every command: next to a running `make run`, its services (development only).
        settings, note = local_services.load_settings(os.environ)
        if note:
            print(note, file=sys.stderr)
        bind_users_table(settings.users_table)
        configure_logging(settings.log_format, settings.log_level)
        log_deprecations(settings.deprecations)
        terminal.quiet_http_logs()
        asyncio.run(deploy(args, settings, report))
    except ConfigError as exc:
        report.add("preflight: settings", "FAIL", str(exc))
        _print_report(report)
        return EXIT_USAGE
    except WebhookWorkerError as exc:
        report.add("deploy", "FAIL", f"{type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        return 130
    _print_report(report)
    if report.lock_timed_out:
        return EXIT_LOCKED
    return EXIT_OK if report.ok else EXIT_PROBLEM


if __name__ == "__main__":
    sys.exit(main())
