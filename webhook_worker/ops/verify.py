"""`verify` (and the deploy preflight): the schema, the host tables, the migrations and the
data agree with what the worker expects."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from webhook_worker.config import Settings
from webhook_worker.db import host, migrations, privileges
from webhook_worker.db.queries import query
from webhook_worker.db.store import Connection, translate_errors
from webhook_worker.errors import MigrationError
from webhook_worker.identifier import DEFAULT_USERS_TABLE, TableName
from webhook_worker.ops import expected_schema, host_checks, webhook_endpoints
from webhook_worker.worker import scope

# The schema contract `verify` checks: webhook_worker.ops.expected_schema.
EXPECTED_COLUMNS = expected_schema.EXPECTED_COLUMNS
EXPECTED_CHECK_VALUES = expected_schema.EXPECTED_CHECK_VALUES
EXPECTED_CONSTRAINTS = expected_schema.EXPECTED_CONSTRAINTS
EXPECTED_INDEXES = expected_schema.EXPECTED_INDEXES
EXPECTED_FUNCTIONS = expected_schema.EXPECTED_FUNCTIONS


_SAMPLE = 50


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False  # passes, but is usually a mistake: printed as `warn`


@dataclass
class VerifyReport:
    checks: list[Check] = field(default_factory=list)
    host_shape: list[str] = field(default_factory=list)  # what was found and chosen

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def problems(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]

    def add(self, name: str, ok: bool, detail: str, *, warning: bool = False) -> None:
        self.checks.append(Check(name, ok, detail, warning))

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "host_shape": self.host_shape,
            "checks": [asdict(check) for check in self.checks],
        }


async def _verify_schema(
    conn: Connection, report: VerifyReport, shape: host.HostShape, tenant: str | None
) -> set[str]:
    """Tables, columns, constraints and indexes; returns the tables that are complete."""
    rows = await conn.fetch(query("ops_schema_columns"), list(EXPECTED_COLUMNS))
    present: dict[str, set[str]] = {}
    for row in rows:
        present.setdefault(row["table_name"], set()).add(row["column_name"])
    # The host's table is found by USERS_TABLE, not by name in the current schema.
    present.pop("users", None)
    if shape.exists:
        present["users"] = {c.name for c in shape.columns}
    complete = _verify_columns(report, present)
    constraints = {row["name"] for row in await conn.fetch(query("ops_schema_constraints"))}
    indexes = {row["name"] for row in await conn.fetch(query("ops_schema_indexes"))}
    if shape.exists:
        on_users = {
            row["name"] for row in await conn.fetch(query("host_users_objects"), shape.table.sql)
        }
        constraints |= on_users
        indexes |= on_users
    view = shape.kind == "view"
    for name, meaning in {**EXPECTED_CONSTRAINTS, **host_checks.users_constraints(view)}.items():
        found = name in constraints
        report.add(f"constraint {name}", found, meaning if found else f"missing ({meaning})")
    for name, meaning in {**host_checks.users_indexes(tenant, view), **EXPECTED_INDEXES}.items():
        found = name in indexes
        report.add(f"index {name}", found, meaning if found else f"missing ({meaning})")
    if tenant is not None and "users_email_lower_key" in indexes:
        report.add(
            "index users_email_lower_key",
            False,
            f"a global unique email index on a users table whose emails are unique per "
            f"users.{tenant}: two tenants sharing an email cannot both exist; drop it (DROP "
            "INDEX users_email_lower_key; CREATE INDEX users_email_lower_idx ON users "
            "(lower(email)))",
        )
    if "users" in complete:
        _verify_users_insertable(shape, report)
    definitions = {
        row["name"]: row["definition"] for row in await conn.fetch(query("ops_schema_checks"))
    }
    for name, values in EXPECTED_CHECK_VALUES.items():
        lacking = [v for v in values if f"'{v}'" not in definitions.get(name, "")]
        report.add(
            f"values {name}",
            not lacking,
            f"accepts {', '.join(values)}"
            if not lacking
            else f"does not accept {', '.join(lacking)}: apply migrations 0013/0014",
        )
    functions = {row["name"] for row in await conn.fetch(query("ops_schema_functions"))}
    for name, meaning in EXPECTED_FUNCTIONS.items():
        found = name in functions
        report.add(f"function {name}", found, meaning if found else f"missing ({meaning})")
    return complete


def _verify_columns(report: VerifyReport, present: dict[str, set[str]]) -> set[str]:
    complete: set[str] = set()
    for table, columns in EXPECTED_COLUMNS.items():
        if table not in present:
            report.add(f"table {table}", False, f"table {table} is missing")
            continue
        missing = [column for column in columns if column not in present[table]]
        if missing:
            report.add(f"table {table}", False, f"{table} lacks column(s): {', '.join(missing)}")
        else:
            report.add(f"table {table}", True, f"{len(columns)} columns present")
            complete.add(table)
    return complete


def _verify_users_insertable(shape: host.HostShape, report: VerifyReport) -> None:
    """A host app's `users` may require columns we never fill: say so before a payment fails."""
    required = shape.required_columns
    if not required:
        how = "with its tenant" if shape.tenant_column else "alone"
        report.add("users by email", True, f"a user can be created from an email {how}")
        return
    columns = ", ".join(f"users.{name}" for name in required)
    report.add(
        "users by email",
        False,
        f"{columns} NOT NULL without a default: a payment whose email matches no user fails "
        "instead of creating one; give each a default (ALTER TABLE users ALTER COLUMN … SET "
        "DEFAULT …) or make it nullable",
    )


async def _verify_reconcile(conn: Connection, report: VerifyReport, settings: Settings) -> None:
    """The reconcile cron is on (STRIPE_API_KEY): warn when it has not succeeded lately."""
    last = await conn.fetchval(query("reconcile_last_success"))
    limit = 3 * settings.reconcile_interval_seconds
    if last is None:
        report.add("reconcile", True, "no reconcile run has succeeded yet", warning=True)
        return
    age = (datetime.now(UTC) - last).total_seconds()
    if age > limit:
        report.add(
            "reconcile",
            True,
            f"the last successful reconcile finished {int(age)}s ago, over three intervals "
            f"({limit}s): is a worker running, and does Stripe accept STRIPE_API_KEY?",
            warning=True,
        )
    else:
        report.add("reconcile", True, f"last succeeded {int(age)}s ago")


_LOCK_SAMPLES: dict[host.KeyFamily, tuple[host.UserId, ...]] = {
    "integer": (1, 2**31 - 1, 2**31, 2**40 + 7, 2**63 - 1),
    "uuid": ("0b7e2f0c-4d1a-4c55-9a3e-6f1d2c3b4a59", "ffffffff-ffff-7fff-bfff-ffffffffffff"),
    "text": ("user_2abcDEF123", "0b7e2f0c-4d1a-4c55-9a3e-6f1d2c3b4a59", "é-unicode-id"),
}


async def _verify_host(
    conn: Connection, report: VerifyReport, shape: host.HostShape, problems: list[str]
) -> dict[str, Any] | None:
    """The host shape found, what migrations recorded, and the lock key function."""
    recorded = await host.recorded_shape(conn)
    report.host_shape = shape.describe(recorded)
    report.add(
        "host users",
        not problems,
        "; ".join(problems) if problems else f"{shape.table}.id {shape.key_type} is supported",
    )
    family = shape.key_family
    if recorded is None or recorded.get("key_type") is None or family is None:
        report.add("host shape recorded", False, "not recorded: run `webhook-worker migrate`")
        return recorded
    if recorded["key_type"] != shape.key_type:
        report.add(
            "host shape recorded",
            False,
            f"users.id is {shape.key_type} but the ledger was built for {recorded['key_type']}; "
            "the ledger's user_id and lock key no longer fit: restore the key type",
        )
    elif recorded.get("tenant_column") != shape.tenant_column:
        report.add(
            "host shape recorded",
            False,
            f"emails are scoped by {_tenant_text(shape.tenant_column)} now, but the service "
            f"was installed with {_tenant_text(recorded.get('tenant_column'))}; set "
            "USERS_TENANT_COLUMN to match, or re-install the lookups (`webhook-worker migrate "
            "down --to 7`, then `migrate up`)",
        )
    else:
        report.add("host shape recorded", True, f"ledger user_id {recorded['ledger_key_type']}")
    await _verify_lock_key(conn, report, family, recorded)
    host_checks.check_users_table(report.add, shape, recorded)
    await host_checks.check_function_sources(conn, report.add, shape, family, recorded)
    return recorded


def _tenant_text(column: str | None) -> str:
    return f"users.{column}" if column else "no tenant column"


async def _verify_lock_key(
    conn: Connection, report: VerifyReport, family: host.KeyFamily, recorded: dict[str, Any]
) -> None:
    """`ledger_lock_key` in the database must compute what `ledger.lock_key` does: the
    refund path and the credit path lock the same user with the same key."""
    expected = "low32" if family == "integer" else "sha256_first4"
    if recorded.get("lock_key_function") != expected:
        report.add(
            "lock key",
            False,
            f"recorded {recorded.get('lock_key_function')}, expected {expected} for a "
            f"{family} key; run `webhook-worker migrate`",
        )
        return
    pairs = [
        (value, await conn.fetchval(query("host_lock_key_of"), value))
        for value in _LOCK_SAMPLES[family]
    ]
    rows = await conn.fetch(query("host_lock_keys_of_users"), _SAMPLE)
    pairs += [(host.user_key(row["user_id"]), row["key"]) for row in rows]
    wrong = [str(value) for value, key in pairs if key != host.lock_key(value)]
    if wrong:
        report.add(
            "lock key",
            False,
            f"ledger_lock_key differs from webhook_worker.worker.ledger.lock_key for {len(wrong)} "
            f"key(s), e.g. {wrong[0]}: re-apply migration 0008 (`webhook-worker migrate down "
            "--to 7` then `migrate up`)",
        )
    else:
        report.add(
            "lock key", True, f"{host.LOCK_KEY_FUNCTIONS[expected]}; {len(pairs)} keys agree"
        )


async def _verify_migrations(conn: Connection, report: VerifyReport) -> None:
    try:
        pending = await migrations.pending_migrations(conn)  # type: ignore[arg-type]
    except MigrationError as exc:
        report.add("migrations", False, str(exc))
        return
    if pending:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in pending)
        report.add("migrations", False, f"not applied: {names} (run `webhook-worker migrate`)")
        # The pending ones will need this role (when it is the migration role) to change users.
        for problem in await privileges.migration_role_problems(conn):
            report.add("migration role", False, problem)
    else:
        report.add("migrations", True, "every migration is applied")


async def _verify_data(
    conn: Connection, report: VerifyReport, complete: set[str], stale_after_seconds: int
) -> None:
    if {"users", "credit_transactions"} <= complete:
        rows = await conn.fetch(query("ops_balance_mismatches"), _SAMPLE)
        if rows:
            shown = "; ".join(
                f"user {r['user_id']}: balance {r['credits_balance']} != ledger {r['ledger_sum']}"
                for r in rows
            )
            more = f" (first {_SAMPLE})" if len(rows) == _SAMPLE else ""
            report.add("balances", False, f"{len(rows)} balance(s) differ{more}: {shown}")
        else:
            report.add("balances", True, "every balance equals its ledger sum")
    else:
        report.add("balances", False, "not checked: users/credit_transactions incomplete")
    if {"payment_states", "credit_transactions"} <= complete:
        rows = await conn.fetch(query("ops_payment_state_mismatches"), _SAMPLE)
        if rows:
            shown = "; ".join(
                f"{r['payment_intent_id']}: taken {r['taken']} != ledger {r['ledger_taken']} "
                f"+ shortfall {r['shortfall']}"
                for r in rows[:10]
            )
            report.add("payment states", False, f"{len(rows)} payment(s) differ: {shown}")
        else:
            report.add(
                "payment states", True, "credits taken back equal each payment's ledger rows"
            )
    if {"credit_holds", "credit_transactions"} <= complete:
        rows = await conn.fetch(query("ops_hold_mismatches"), _SAMPLE)
        if rows:
            shown = "; ".join(
                f"user {r['user_id']} hold {r['idempotency_key']!r} ({r['state']}): "
                f"held {r['held']}, back {r['back']}"
                for r in rows[:10]
            )
            report.add(
                "holds", False, f"{len(rows)} hold(s) differ from their ledger rows: {shown}"
            )
        else:
            report.add("holds", True, "every hold matches its HOLD and HOLD_RELEASE rows")
    if "stripe_events" in complete:
        rows = await conn.fetch(query("ops_stuck_events"), stale_after_seconds, _SAMPLE)
        if rows:
            shown = ", ".join(
                f"{r['event_id']} ({r['processing_status']} {int(r['age'])}s)" for r in rows[:10]
            )
            report.add(
                "stuck events",
                False,
                f"{len(rows)}{'+' if len(rows) == _SAMPLE else ''} event(s) received/processing "
                f"for over {stale_after_seconds}s: {shown} — is a worker running?",
            )
        else:
            report.add("stuck events", True, f"none older than {stale_after_seconds}s")
    else:
        report.add("stuck events", False, "not checked: stripe_events incomplete")


def check_scope(report: VerifyReport, settings: Settings) -> None:
    """What this deployment trusts (mode, Connect accounts, prices), and risky combinations."""
    report.add("scope", True, scope.describe(settings))
    for warning in scope.warnings(settings):
        report.add("scope", True, warning, warning=True)
    prices = ", ".join(f"{c}:{p}" for c, p in sorted(settings.credit_prices.items()))
    report.add(
        "credit prices",
        True,
        f"per currency (minor units per credit): {prices}"
        if prices
        else "none: only sessions with metadata.credits credit",
    )


async def verify(
    conn: Connection,
    *,
    stale_after_seconds: int,
    tenant_column: str | None = None,
    settings: Settings | None = None,
    users_table: TableName | None = None,
    version_column: str | None = None,
) -> VerifyReport:
    """The deployment check: the host's users supported and recorded, the lock key agreeing
    with Python, contract schema present, balances match ledgers, none stuck; with
    `settings`, also the scope it runs with and the reconcile cron's health."""
    report = VerifyReport()
    if settings is not None:
        check_scope(report, settings)
    with translate_errors("verifying the database"):
        if users_table is None:
            users_table = settings.users_table if settings is not None else DEFAULT_USERS_TABLE
        if version_column is None and settings is not None:
            version_column = settings.users_version_column
        shape, problems = await host.inspect_configured(
            conn, users_table, tenant_column, version_column
        )
        recorded = await _verify_host(conn, report, shape, problems)
        tenant = recorded.get("tenant_column") if recorded else shape.tenant_column
        complete = await _verify_schema(conn, report, shape, tenant)
        if settings is not None and settings.stripe_api_key and "reconcile_runs" in complete:
            await _verify_reconcile(conn, report, settings)
        await _verify_migrations(conn, report)
        await _verify_data(conn, report, complete, stale_after_seconds)
    if settings is not None and settings.stripe_api_key:
        warning = await webhook_endpoints.subscription_warning(settings)
        report.add(
            "webhook subscriptions",
            True,
            warning or "the webhook endpoints subscribe to every event the money rules need",
            warning=warning is not None,
        )
    return report
