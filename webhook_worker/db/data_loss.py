"""What a rollback would destroy: the tables the down parts drop, truncate or delete from
that hold rows now. `migrate down` and `deploy_hotfix.py --rollback` refuse with these,
naming each table and its row count, unless told `--drop-data` (issue 28: a rollback once
dropped 20 ledger rows and reported PASSED).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg

from webhook_worker.db.migration_files import Migration
from webhook_worker.db.queries import query

# Bookkeeping, or derived from other tables (stripe_event_search: 0051 rebuilds it from
# stripe_events): a rollback may drop them with their rows, nothing of value is in them.
_DISPOSABLE_TABLES = frozenset(
    {
        "users_host_shape",
        "schema_migrations",
        "reconcile_lease",
        "credits_settings",
        "stripe_event_search",
    }
)
_DROPS_ROWS = re.compile(
    r"\b(?:DROP\s+TABLE(?:\s+IF\s+EXISTS)?|TRUNCATE(?:\s+TABLE)?|DELETE\s+FROM)\s+"
    r"((?:ONLY\s+)?[A-Za-z_][A-Za-z0-9_.]*(?:\s*,\s*[A-Za-z_][A-Za-z0-9_.]*)*)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class TableAtRisk:
    table: str
    rows: int
    migration: str

    def describe(self) -> str:
        return f"{self.table} ({self.rows} rows, dropped by {self.migration} down)"


def rollback_targets(
    migrations: list[Migration], applied: Mapping[int, asyncpg.Record], to: int | None
) -> list[Migration]:
    """Newest first: the newest applied migration, or every applied one above `to`."""
    targets = [m for m in reversed(migrations) if m.version in applied]
    return targets[:1] if to is None else [m for m in targets if m.version > to]


def dropped_tables(migration: Migration) -> list[str]:
    """The tables `migration`'s down part drops, truncates or deletes from."""
    names: list[str] = []
    for match in _DROPS_ROWS.finditer(migration.down):
        for name in match.group(1).split(","):
            table = re.sub(r"^ONLY\s+", "", name.strip(), flags=re.IGNORECASE).lower()
            if table not in names:
                names.append(table)
    return names


async def data_at_risk(conn: asyncpg.Connection, targets: list[Migration]) -> list[TableAtRisk]:
    """Each table the down parts of `targets` would drop or empty that holds rows now."""
    risks: list[TableAtRisk] = []
    for migration in targets:
        for table in dropped_tables(migration):
            if table.split(".")[-1] in _DISPOSABLE_TABLES:
                continue
            if not await conn.fetchval(query("table_exists"), table):
                continue
            # A table name cannot be a parameter: Postgres resolves and quotes it (regclass).
            quoted = await conn.fetchval(query("table_quoted_name"), table)
            rows = int(await conn.fetchval(f"SELECT count(*) FROM {quoted}"))
            if rows:
                risks.append(TableAtRisk(table, rows, migration.label))
    return risks


def refusal(risks: list[TableAtRisk]) -> str:
    tables = "; ".join(risk.describe() for risk in risks)
    return (
        f"nothing was rolled back: the rollback would drop rows of {tables}. These are ledger, "
        "event or audit rows: back the database up first, then run it again with --drop-data "
        "if they are truly to go"
    )
