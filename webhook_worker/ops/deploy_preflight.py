"""The deploy's checks before it changes anything: the settings, Postgres and Redis answer
(`preflight`), then the host's `users` table, the migration role's rights and what a
rollback would drop (`checks_pass`). Each adds its steps to the report."""

from __future__ import annotations

import argparse

import asyncpg

from webhook_worker import redis_check
from webhook_worker.config import Settings, redact_url
from webhook_worker.db import host, migrations, privileges
from webhook_worker.errors import WebhookWorkerError
from webhook_worker.ops import terminal
from webhook_worker.ops.deploy_report import Report, deploy_console
from webhook_worker.worker import scope


async def preflight(settings: Settings, report: Report) -> asyncpg.Connection | None:
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
    console = deploy_console()
    for line in shape.describe(recorded):
        console.print(terminal.cell(f"host: {line}"))
    if problems and not args.rollback:
        report.add("host users", "FAIL", "; ".join(problems))
        return False
    report.add("host users", "ok", f"{shape.table}.id {shape.key_type}")
    return True


async def checks_pass(
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
