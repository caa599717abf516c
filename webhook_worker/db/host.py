"""The host application's users table: what shape it has and what the service does with it.

The worker credits the host's own table (`USERS_TABLE`, default `users`), so before a
migration touches it the runner finds it (`locate_users_table`: never a new `users` beside
the host's in another schema) and reads its shape from the catalog (`inspect_host`). It
refuses what it cannot support (a composite or missing key, a key type outside the
supported ones, a `USERS_TENANT_COLUMN` that does not exist, a view Postgres cannot update),
naming the column and what would work. `verify` and `deploy_hotfix.py --dry-run` print the
same shape and the choices made (`describe`), so an installer sees them before a payment
depends on them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from webhook_worker.db.queries import query
from webhook_worker.identifier import DEFAULT_USERS_TABLE, TableName
from webhook_worker.money import UserId as UserId  # re-exported: the host key type

KeyFamily = Literal["integer", "uuid", "text"]
TableKind = Literal["table", "view", "absent", "other"]

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


INTEGER_TYPES = frozenset({"int2", "int4", "int8"})
# Detected optimistic-locking columns (SQLAlchemy's version_id_col, Rails' lock_version).
VERSION_COLUMNS = ("version", "lock_version")
# What a view must let the service write (UPDATE bit 4 and INSERT bit 8 of
# pg_relation_is_updatable) and the columns it must show.
VIEW_UPDATE, VIEW_INSERT = 4, 8
VIEW_WRITES = ("credits_balance", "stripe_customer_id", "updated_at", "email")
VIEW_COLUMNS = ("id", "email", "stripe_customer_id", "credits_balance", "updated_at")
_KINDS: dict[str, TableKind] = {"r": "table", "p": "table", "v": "view"}


@dataclass(frozen=True)
class UsersTable:
    """Where USERS_TABLE is: an existing table or view, or where the migrations create it."""

    configured: TableName
    table: TableName  # schema-qualified; the schema is None only when none can be found
    kind: TableKind
    updatable: int = 0  # pg_relation_is_updatable bits, for a view
    elsewhere: tuple[str, ...] = ()  # schemas with a relation of that name, when absent

    def problems(self) -> list[str]:
        name = self.configured.name
        if self.kind == "other":
            return [
                f"USERS_TABLE={self.configured} is neither a table nor a view: point "
                "USERS_TABLE at the host's users table"
            ]
        if self.kind == "absent" and self.table.schema is None:
            return [
                f"USERS_TABLE={self.configured}: no schema to create it in (the search_path "
                "names none that exists); set USERS_TABLE=schema.table"
            ]
        if self.kind == "absent" and self.configured.schema is None and self.elsewhere:
            found = ", ".join(f"{TableName(name, s)}" for s in self.elsewhere)
            return [
                f"USERS_TABLE={self.configured} is not on the search_path, so a new, empty "
                f"{self.table} would be created, but {found} exists in another schema: set "
                f"USERS_TABLE={TableName(name, self.elsewhere[0])} to use the host's table"
            ]
        if self.kind == "view" and self.updatable & (VIEW_UPDATE | VIEW_INSERT) != (
            VIEW_UPDATE | VIEW_INSERT
        ):
            return [
                f"USERS_TABLE={self.configured} is a view Postgres cannot update and insert "
                "into by itself (it joins, groups, or computes its columns): set USERS_TABLE "
                "to the table under it, or make the view a plain SELECT of one table"
            ]
        return []


async def locate_users_table(conn: Any, configured: TableName = DEFAULT_USERS_TABLE) -> UsersTable:
    """Resolve USERS_TABLE as the session's search_path does; changes nothing."""
    row = await conn.fetchrow(query("host_users_relation"), configured.sql)
    if row is not None:
        return UsersTable(
            configured,
            TableName(row["name"], row["schema"]),
            _KINDS.get(row["kind"], "other"),
            int(row["updatable"]),
        )
    schema = await conn.fetchval(query("host_creation_schema"), configured.schema)
    elsewhere = tuple(
        r["schema"]
        for r in await conn.fetch(query("host_users_elsewhere"), configured.name)
        if r["schema"] != schema
    )
    return UsersTable(configured, TableName(configured.name, schema), "absent", 0, elsewhere)


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
    updatable: bool = True  # through a view: pg_column_is_updatable


@dataclass(frozen=True)
class HostShape:
    """The users table as found: columns, unique keys, the tenant and version columns and
    where they came from."""

    exists: bool
    columns: tuple[Column, ...] = ()
    primary_key: tuple[str | None, ...] = ()
    unique_keys: tuple[tuple[str | None, ...], ...] = ()
    tenant_column: str | None = None
    tenant_source: str | None = None
    tenant_override: str | None = None
    table: TableName = DEFAULT_USERS_TABLE  # schema-qualified when found
    kind: TableKind = "table"
    version_override: str | None = None

    @property
    def version_column(self) -> str | None:
        """The optimistic-locking column every balance change increments, if any."""
        if self.version_override:
            return self.version_override
        found = self._version_candidates()
        return found[0] if len(found) == 1 else None

    def _version_candidates(self) -> list[str]:
        return [
            c.name
            for c in self.columns
            if c.name in VERSION_COLUMNS and c.base_type in INTEGER_TYPES
        ]

    @property
    def version_source(self) -> str:
        if self.version_override:
            return "USERS_VERSION_COLUMN"
        return "detected: an integer column named version or lock_version"

    @property
    def label(self) -> str:
        """The table's name for messages (`users`, `user`): its columns read `users.id`."""
        return str(TableName(self.table.name))

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
        t = self.label
        found: list[str] = []
        id_column = self.column("id")
        if id_column is None:
            found.append(
                f"{t} has no column id: the ledger references {t}.id; add a single-column "
                "key named id (bigint, integer, uuid or text) or point USERS_TABLE at a view "
                "that shows the key as id"
            )
        elif self.kind == "table" and ("id",) not in self.unique_keys:
            if len(self.primary_key) > 1:
                key = ", ".join(str(c) for c in self.primary_key)
                found.append(
                    f"{t} has a composite primary key ({key}): the ledger references one "
                    f"column, {t}.id; add UNIQUE (id) (ALTER TABLE {self.table.sql} ADD "
                    f"UNIQUE (id)) or make {t}.id alone the primary key"
                )
            else:
                found.append(
                    f"{t}.id is neither the primary key nor unique: the ledger references "
                    f"it; make it the primary key (ALTER TABLE {self.table.sql} ADD PRIMARY "
                    "KEY (id))"
                )
        if id_column is not None and self.key_family is None:
            found.append(
                f"{t}.id is {id_column.type}: supported key types are bigint, integer, "
                "smallint, uuid, text and varchar"
            )
        uuid_column = self.column("uuid")
        if uuid_column is not None and uuid_column.base_type != "uuid":
            found.append(
                f"{t}.uuid is {uuid_column.type}: the service keeps each user's UUID in a "
                "uuid column of that name; rename the host's column or change its type to uuid"
            )
        if self.tenant_override and self.column(self.tenant_override) is None:
            found.append(
                f"USERS_TENANT_COLUMN={self.tenant_override}: {t} has no such column; name "
                "the column that scopes emails (e.g. tenant_id) or unset the variable"
            )
        found.extend(self._version_problems())
        if self.kind == "view":
            found.extend(self._view_problems())
        return found

    def _version_problems(self) -> list[str]:
        t = self.label
        if self.version_override:
            column = self.column(self.version_override)
            if column is None or column.base_type not in INTEGER_TYPES:
                what = "has no such column" if column is None else f"is {column.type}"
                return [
                    f"USERS_VERSION_COLUMN={self.version_override}: {t} {what}; name the "
                    "integer column the host's ORM uses for optimistic locking, or unset it"
                ]
            return []
        if len(self._version_candidates()) > 1:
            return [
                f"{t} has both version and lock_version: set USERS_VERSION_COLUMN to the one "
                "the host's ORM checks on update"
            ]
        return []

    def _view_problems(self) -> list[str]:
        t = self.label
        family = self.key_family
        needed = VIEW_COLUMNS + (("uuid",) if family == "integer" else ())
        missing = [n for n in needed if self.column(n) is None]
        if missing:
            return [
                f"{t} is a view without {', '.join(missing)}: the migrations cannot add "
                "columns to a view; add them to the table under it and to the view, or set "
                "USERS_TABLE to that table"
            ]
        writes = VIEW_WRITES + ((self.version_column,) if self.version_column else ())
        fixed = [n for n in writes if not getattr(self.column(n), "updatable", False)]
        if fixed:
            return [
                f"the view {t} cannot write {', '.join(fixed)} (computed or constant "
                "columns): show them as plain columns of the table under it"
            ]
        return []

    def describe(self, recorded: dict[str, Any] | None = None) -> list[str]:
        """One line per fact and choice, for `verify` and `deploy_hotfix.py --dry-run`."""
        family = self.key_family
        t = self.label
        found = f"found ({self.kind}), {len(self.columns)} columns"
        lines = [
            f"users table: {self.table}, "
            + (found if self.exists else "absent; created with id BIGINT identity"),
            f"key: {t}.id {self.key_type}"
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
        version = self.version_column
        lines.append(
            f"version column: {t}.{version} ({self.version_source}), incremented by every "
            "balance change"
            if version
            else "version column: none (no integer version or lock_version; USERS_VERSION_COLUMN"
            " names another)"
        )
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
            lines.append(
                f"recorded: table {recorded.get('users_table') or 'users'}, "
                f"version column {recorded.get('version_column') or 'none'}"
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


async def inspect_host(
    conn: Any,
    tenant_override: str | None = None,
    *,
    users_table: TableName | UsersTable = DEFAULT_USERS_TABLE,
    version_override: str | None = None,
) -> HostShape:
    """Read the users table from the catalog; changes nothing."""
    where = (
        users_table
        if isinstance(users_table, UsersTable)
        else await locate_users_table(conn, users_table)
    )
    if where.kind in ("absent", "other"):
        return HostShape(
            exists=False,
            tenant_override=tenant_override,
            table=where.table,
            kind=where.kind,
            version_override=version_override,
        )
    rows = await conn.fetch(query("host_users_columns"), where.table.sql)
    columns = tuple(
        Column(
            name=r["name"],
            type=r["type"],
            base_type=r["base_type"],
            not_null=bool(r["not_null"]),
            fills_itself=bool(r["fills_itself"]),
            updatable=bool(r["updatable"]),
        )
        for r in rows
    )
    keys = await conn.fetch(query("host_users_unique_keys"), where.table.sql)
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
        table=where.table,
        kind=where.kind,
        version_override=version_override,
    )


async def inspect_configured(
    conn: Any,
    users_table: TableName = DEFAULT_USERS_TABLE,
    tenant_override: str | None = None,
    version_override: str | None = None,
) -> tuple[HostShape, list[str]]:
    """Find USERS_TABLE and read its shape; with every reason the service cannot use it."""
    where = await locate_users_table(conn, users_table)
    shape = await inspect_host(
        conn, tenant_override, users_table=where, version_override=version_override
    )
    return shape, where.problems() + shape.problems()


async def recorded_shape(conn: Any) -> dict[str, Any] | None:
    """What the migrations recorded in `users_host_shape`, or None before they ran."""
    if not await conn.fetchval(query("host_shape_recorded")):
        return None
    raw = await conn.fetchval(query("host_recorded_shape"))
    if raw is None:
        return None
    shape: dict[str, Any] = json.loads(raw) if isinstance(raw, str) else dict(raw)
    return shape
