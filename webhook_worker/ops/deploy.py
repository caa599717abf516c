"""Roll the webhook-worker hotfix out: preflight, migrate, verify, smoke test, report.

    python deploy_hotfix.py [--yes] [--dry-run] [--skip-migration] [--smoke-url URL]
    python deploy_hotfix.py --rollback [--to VERSION] [--drop-data] [--yes]

1. preflight — settings parse (`Settings.from_env`), DATABASE_URL / REDIS_URL set, every
   STRIPE_WEBHOOK_SECRET entry looks like `whsec_…`, Postgres and Redis answer, and the
   migration role may change `users` when a migration is pending. Schema work uses
   DIRECT_DATABASE_URL (a connection past any pooler), else DATABASE_URL.
2. migrate   — `sql/migrations` up (each in its own transaction, under a transaction-scoped
   advisory lock, or a lease row for a no-transaction file; a run holding it is named, and
   after MIGRATION_LOCK_TIMEOUT_SECONDS the deploy gives up with exit 3);
   `--skip-migration` skips it; `--rollback [--to VERSION]`
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

This module plans, migrates and verifies; the checks before any change are in
`deploy_preflight`, the smoke test in `deploy_smoke`, the report in `deploy_report`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

import asyncpg

from webhook_worker import local_services
from webhook_worker.config import Settings
from webhook_worker.db import migrations
from webhook_worker.db.queries import bind_users_table
from webhook_worker.errors import (
    ConfigError,
    MigrationError,
    MigrationLockTimeout,
    WebhookWorkerError,
)
from webhook_worker.exit_codes import EXIT_LOCKED, EXIT_OK, EXIT_PROBLEM, EXIT_USAGE
from webhook_worker.log import configure_logging, log_deprecations
from webhook_worker.ops import terminal, verify
from webhook_worker.ops.deploy_preflight import checks_pass, preflight
from webhook_worker.ops.deploy_report import Report, deploy_console, print_report
from webhook_worker.ops.deploy_smoke import smoke
from webhook_worker.ops.verify_cli import print_verify_report

SMOKE_TIMEOUT_SECONDS = 30.0


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
    console = deploy_console()
    for risk in risks:
        console.print(f"plan: DROPS DATA: {risk.describe()}", markup=False)
    return risks


def _print_plan(plan: list[migrations.Migration], args: argparse.Namespace) -> None:
    console = deploy_console()
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


async def _migrate(
    conn: asyncpg.Connection, settings: Settings, args: argparse.Namespace, report: Report
) -> bool:
    try:
        if args.rollback:
            done = await migrations.down_with(
                conn, settings, args.to, drop_data=args.drop_data, on_wait=_say
            )
            names = ", ".join(f"{m.version:04d}_{m.name}" for m in done)
            report.add("rollback", "ok", f"rolled back {names}" if done else "nothing to roll back")
            return True
        done = await migrations.up_with(conn, settings, on_wait=_say)
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
    deploy_console().print(f"migrate: {message}", markup=False)


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


async def deploy(args: argparse.Namespace, settings: Settings, report: Report) -> None:
    conn = await preflight(settings, report)
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
        if not await checks_pass(conn, settings, args, report, plan, risks):
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
            await smoke(conn, settings, args.smoke_url, args.smoke_timeout, report)
    finally:
        await conn.close()


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
        print_report(report)
        return EXIT_USAGE
    except WebhookWorkerError as exc:
        report.add("deploy", "FAIL", f"{type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        return 130
    print_report(report)
    if report.lock_timed_out:
        return EXIT_LOCKED
    return EXIT_OK if report.ok else EXIT_PROBLEM


if __name__ == "__main__":
    sys.exit(main())
