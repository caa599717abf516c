"""`verify`'s checks of what the ledger functions were installed on: the users table
(USERS_TABLE), its version column, and their text against sql/functions/ (issue 26: one
current-state source; issue 34)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from webhook_worker.db import functions, host
from webhook_worker.db.queries import query
from webhook_worker.db.store import Connection

Add = Callable[[str, bool, str], None]  # VerifyReport.add: (name, ok, detail)

# On the host's users table (USERS_TABLE, wherever its schema): not on a view, which takes
# no constraint or index (the table under it carries them).
USERS_CONSTRAINTS: dict[str, str] = {
    "credits_balance_nonneg": "users.credits_balance >= 0",
    "credit_transactions_user_id_fkey": "credit_transactions.user_id -> users",
}
USERS_INDEXES: dict[str, str] = {
    "users_uuid_key": "users.uuid unique",
    "users_email_lower_key": "users.email unique case-insensitively",
    "users_stripe_customer_id_key": "users.stripe_customer_id unique",
}


def users_constraints(view: bool) -> dict[str, str]:
    return {} if view else USERS_CONSTRAINTS


def users_indexes(tenant: str | None, view: bool) -> dict[str, str]:
    """A multi-tenant users gets a plain lower(email) index instead of the unique one; a view
    none (the table under it carries the host's own)."""
    if view:
        return {}
    if tenant is None:
        return USERS_INDEXES
    expected = {k: v for k, v in USERS_INDEXES.items() if k != "users_email_lower_key"}
    expected["users_email_lower_idx"] = f"users.email lookups (unique per users.{tenant})"
    return expected


_REINSTALL = "run `webhook-worker migrate`: it re-installs the functions for the table as it is"


def check_users_table(add: Add, shape: host.HostShape, recorded: dict[str, Any]) -> None:
    """The table and version column the functions were installed for are the ones now."""
    installed_for = recorded.get("users_table")
    if installed_for is not None and installed_for != shape.table.sql:
        add(
            "users table",
            False,
            f"USERS_TABLE finds {shape.table.sql}, but the ledger functions and the ledger's "
            f"foreign key were installed for {installed_for}: set USERS_TABLE to that table",
        )
    else:
        add("users table", True, f"{shape.table} ({shape.kind})")
    version = shape.version_column
    installed = recorded.get("version_column")
    if installed_for is not None and installed != version:
        add(
            "version column",
            False,
            f"{shape.table} has version column {version or 'none'} now, but the functions "
            f"increment {installed or 'none'}; {_REINSTALL}",
        )
    else:
        add(
            "version column",
            True,
            f"{shape.table}.{version} is incremented by every balance change"
            if version
            else "none: the host has no integer version or lock_version column",
        )


async def check_function_sources(
    conn: Connection,
    add: Add,
    shape: host.HostShape,
    family: host.KeyFamily,
    recorded: dict[str, Any],
) -> None:
    """The installed functions are sql/functions/ rendered for this host (issue 26: one
    current-state source)."""
    tenant = recorded.get("tenant_column")
    expected = functions.render(
        functions.FunctionShape(
            key_family=family,
            users=shape.table,
            version_column=recorded.get("version_column"),
            tenant_column=tenant,
            tenant_type=next((c.type for c in shape.columns if c.name == tenant), None),
        )
    )
    rows = await conn.fetch(query("host_function_sources"), [f.name for f in expected])
    installed: dict[str, list[str]] = {}
    for row in rows:
        installed.setdefault(row["name"], []).append(row["source"])
    differ = [f.name for f in expected if f.body not in installed.get(f.name, [])]
    add(
        "sql/functions",
        not differ,
        f"differ from sql/functions/: {', '.join(differ)}; {_REINSTALL}"
        if differ
        else f"{len(expected)} functions equal sql/functions/",
    )
