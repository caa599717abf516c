"""The host application's `users` table: what shape it has and what the service does with it.

The worker credits the host's own `users`, so before a migration touches it the runner reads
its shape from the catalog (`inspect_host`) and refuses what it cannot support (a composite
or missing key, a key type outside the supported ones, a `USERS_TENANT_COLUMN` that does not
exist), naming the column and what would work. `verify` and `deploy_hotfix.py --dry-run`
print the same shape and the choices made (`describe`), so an installer sees them before a
payment depends on them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

from webhook_worker.db.queries import query
from webhook_worker.money import UserId as UserId  # re-exported: the host key type

KeyFamily = Literal["integer", "uuid", "text"]

FAMILIES: dict[str, KeyFamily] = {
    "int2": "integer",
    "int4": "integer",
    "int8": "integer",
    "uuid": "uuid",
    "text": "text",
    "varchar": "text",
}
LEDGER_TYPES: dict[KeyFamily, str] = {"integer": "bigint", "uuid": "uuid", "text": "text"}
LOCK_KEY_FUNCTIONS = {
    "low32": "the id's low 32 bits as a signed int4 (id::bit(32)::int)",
    "sha256_first4": "the first 4 bytes of sha256 of the key's text, as a signed int4",
}
RESOLVER_MATCHES: dict[KeyFamily, str] = {
    "integer": "integer reference -> users.id; UUID -> users.uuid; opaque text id -> nothing",
    "uuid": "UUID -> users.id; integer and opaque text id -> nothing",
    "text": "UUID -> users.id as text (lower or upper case); opaque text id -> users.id "
    "exactly; integer -> nothing",
}


_INT4 = 2**32
_INT4_HALF = 2**31


def lock_key(user_id: UserId) -> int:
    """The user's int4 ledger lock key, as the server's `ledger_lock_key` computes it.

    Integer keys: the id itself below 2**31, wrapped above (a shared lock only). uuid and
    text keys (their text; a uuid in canonical lower case): the first 4 bytes of sha256 as a
    signed int4 — documented, stable across Postgres versions and FIPS-safe, unlike
    `hashtext` (migration 0008 says more). `webhook-worker verify` checks the two agree.
    """
    if isinstance(user_id, int):
        return (user_id + _INT4_HALF) % _INT4 - _INT4_HALF
    digest = hashlib.sha256(user_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big", signed=True)


def user_key(value: Any) -> UserId:
    """A users.id as the service carries it: int for integer keys, text otherwise."""
    return value if isinstance(value, int) else str(value)


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    base_type: str
    not_null: bool
    fills_itself: bool  # a default, an identity or a generated column


@dataclass(frozen=True)
class HostShape:
    """`users` as found: columns, unique keys, the tenant column and where it came from."""

    exists: bool
    columns: tuple[Column, ...] = ()
    primary_key: tuple[str | None, ...] = ()
    unique_keys: tuple[tuple[str | None, ...], ...] = ()
    tenant_column: str | None = None
    tenant_source: str | None = None
    tenant_override: str | None = None

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    @property
    def key_type(self) -> str:
        if not self.exists:
            return "bigint"
        column = self.column("id")
        return column.type if column else "none"

    @property
    def key_family(self) -> KeyFamily | None:
        if not self.exists:
            return "integer"
        column = self.column("id")
        return FAMILIES.get(column.base_type) if column else None

    @property
    def required_columns(self) -> tuple[str, ...]:
        """NOT NULL columns an INSERT of an email (and the tenant) would leave NULL."""
        skip = {"email", self.tenant_column}
        return tuple(
            c.name for c in self.columns if c.not_null and not c.fills_itself and c.name not in skip
        )

    def problems(self) -> list[str]:
        """Why the service cannot install into this table; empty when it can."""
        if not self.exists:
            return []
        found: list[str] = []
        id_column = self.column("id")
        if id_column is None:
            found.append(
                "users has no column id: the ledger references users.id; add a single-column "
                "key named id (bigint, integer, uuid or text) or expose the table as a view"
            )
        elif ("id",) not in self.unique_keys:
            if len(self.primary_key) > 1:
                key = ", ".join(str(c) for c in self.primary_key)
                found.append(
                    f"users has a composite primary key ({key}): the ledger references one "
                    "column, users.id; add UNIQUE (id) (ALTER TABLE users ADD CONSTRAINT "
                    "users_id_key UNIQUE (id)) or make users.id alone the primary key"
                )
            else:
                found.append(
                    "users.id is neither the primary key nor unique: the ledger references "
                    "it; make it the primary key (ALTER TABLE users ADD PRIMARY KEY (id))"
                )
        if id_column is not None and self.key_family is None:
            found.append(
                f"users.id is {id_column.type}: supported key types are bigint, integer, "
                "smallint, uuid, text and varchar"
            )
        uuid_column = self.column("uuid")
        if uuid_column is not None and uuid_column.base_type != "uuid":
            found.append(
                f"users.uuid is {uuid_column.type}: the service keeps each user's UUID in a "
                "uuid column of that name; rename the host's column or change its type to uuid"
            )
        if self.tenant_override and self.column(self.tenant_override) is None:
            found.append(
                f"USERS_TENANT_COLUMN={self.tenant_override}: users has no such column; name "
                "the column that scopes emails (e.g. tenant_id) or unset the variable"
            )
        return found

    def describe(self, recorded: dict[str, Any] | None = None) -> list[str]:
        """One line per fact and choice, for `verify` and `deploy_hotfix.py --dry-run`."""
        family = self.key_family
        lines = [
            f"users table: {'found, ' + str(len(self.columns)) + ' columns' if self.exists else 'absent; created with id BIGINT identity'}",  # noqa: E501
            f"key: users.id {self.key_type}"
            + (f"; ledger user_id {LEDGER_TYPES[family]}" if family else "; unsupported"),
        ]
        if family:
            lock = "low32" if family == "integer" else "sha256_first4"
            lines.append(f"lock key: ledger_lock_key = {LOCK_KEY_FUNCTIONS[lock]}")
            lines.append(f"resolver: {RESOLVER_MATCHES[family]}; email -> users.email")
        if self.tenant_column:
            lines.append(
                f"emails: unique per tenant, users.{self.tenant_column} ({self.tenant_source}); "
                "no global email index; an email matching several tenants fails ambiguous_user"
            )
        else:
            lines.append("emails: unique case-insensitively (users_email_lower_key)")
        required = self.required_columns
        lines.append(
            "required columns without a default: "
            + (", ".join(f"users.{n}" for n in required) if required else "none")
        )
        if recorded is not None:
            lines.append(
                "recorded: key "
                f"{recorded.get('key_type')}, ledger {recorded.get('ledger_key_type')}, "
                f"lock {recorded.get('lock_key_function')}, "
                f"tenant {recorded.get('tenant_column') or 'none'}"
            )
        return lines


def _tenant(
    columns: tuple[Column, ...], unique_keys: tuple[tuple[str | None, ...], ...]
) -> str | None:
    """The other column of a unique key that holds email: (tenant_id, email) -> tenant_id."""
    names = {c.name for c in columns}
    for key in unique_keys:
        if "email" in key and len(key) > 1:
            others = [c for c in key if c is not None and c != "email" and c in names]
            if others:
                return others[0]
    return None


async def inspect_host(conn: Any, tenant_override: str | None = None) -> HostShape:
    """Read `users` from the catalog; changes nothing."""
    rows = await conn.fetch(query("host_users_columns"))
    if not rows:
        return HostShape(exists=False, tenant_override=tenant_override)
    columns = tuple(
        Column(
            name=r["name"],
            type=r["type"],
            base_type=r["base_type"],
            not_null=bool(r["not_null"]),
            fills_itself=bool(r["fills_itself"]),
        )
        for r in rows
    )
    keys = await conn.fetch(query("host_users_unique_keys"))
    primary = next((tuple(k["columns"]) for k in keys if k["is_primary"]), ())
    unique = tuple(tuple(k["columns"]) for k in keys if not k["is_partial"])
    tenant: str | None = tenant_override
    source: str | None = "USERS_TENANT_COLUMN"
    if not tenant_override:
        tenant = _tenant(columns, unique)
        source = f"UNIQUE ({tenant}, email)" if tenant else None
    return HostShape(
        exists=True,
        columns=columns,
        primary_key=primary,
        unique_keys=unique,
        tenant_column=tenant,
        tenant_source=source,
        tenant_override=tenant_override,
    )


async def recorded_shape(conn: Any) -> dict[str, Any] | None:
    """What the migrations recorded in `users_host_shape`, or None before they ran."""
    if not await conn.fetchval(query("host_shape_recorded")):
        return None
    row = await conn.fetchrow(query("host_recorded_shape"))
    return dict(row) if row is not None else None
