"""The SQL functions of the service, from their one current-state source, `sql/functions/`.

Each file holds sections that start with `-- function: NAME` (optionally `when tenant` /
`when no tenant`), each one `CREATE OR REPLACE FUNCTION` with placeholders in braces. They
are rendered for what `migrate` found of the host (`FunctionShape`) and installed by every
migration that carries the line `-- migrate:functions` (every file) or `-- migrate:functions
ledger.sql users.sql` (those files), after its up part and inside its transaction. A change
of a function is an edit of its source plus a new migration with that line.

Every placeholder is filled from a fixed table (key types, lock key expressions, the
matches of each key family) or with an identifier quoted by `identifier.quote_ident`; no
configured name reaches SQL raw.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from webhook_worker.db.host import KeyFamily
from webhook_worker.db.queries import sql_dir
from webhook_worker.identifier import TableName, quote_ident

MARKER = re.compile(
    r"^--[ \t]*migrate:functions(?P<files>(?:[ \t]+[a-z0-9_]+\.sql)*)[ \t]*$", re.MULTILINE
)
_SECTION = re.compile(
    r"^-- function: ([a-z_][a-z0-9_]*)(?: when (tenant|no tenant))?\s*$", re.MULTILINE
)
_PLACEHOLDER = re.compile(r"\{[a-z_]+\}")
_BODY = re.compile(r"\bAS \$\$(.*?)\$\$", re.DOTALL)

LEDGER_KEY_TYPES: dict[KeyFamily, str] = {"integer": "bigint", "uuid": "uuid", "text": "text"}
LOCK_KEYS: dict[KeyFamily, str] = {
    "integer": "user_id::bit(32)::int",
    "uuid": "('x' || encode(substring(sha256(convert_to(user_id::text, 'UTF8')) FROM 1 FOR 4),"
    " 'hex'))::bit(32)::int",
    "text": "('x' || encode(substring(sha256(convert_to(user_id::text, 'UTF8')) FROM 1 FOR 4),"
    " 'hex'))::bit(32)::int",
}
# Each reference kind is matched only against a column of its own type: no cast of a
# reference can fail. UUID references on a text key match its lower- or upper-case text.
MATCHES: dict[KeyFamily, dict[str, str]] = {
    "integer": {"integer": "u.id = q.value", "uuid": "u.uuid = q.value", "text": "false"},
    "uuid": {"integer": "false", "uuid": "u.id = q.value", "text": "false"},
    "text": {
        "integer": "false",
        "uuid": "u.id IN (q.value::text, upper(q.value::text))",
        "text": "u.id = q.value",
    },
}
# format_type() spellings a tenant column may have that are safe to write after `::`.
_TYPE_NAME = re.compile(r"[a-z][a-z0-9_ ]*(\(\d+(,\d+)?\))?(\[\])?")


@dataclass(frozen=True)
class FunctionShape:
    """What the functions are rendered for: recorded in `users_host_shape` on install."""

    key_family: KeyFamily
    users: TableName  # schema-qualified
    version_column: str | None = None
    tenant_column: str | None = None
    tenant_type: str | None = None  # format_type() of the tenant column


@dataclass(frozen=True)
class Function:
    name: str
    source: str  # the file, e.g. "ledger.sql"
    sql: str  # the rendered CREATE statement

    @property
    def body(self) -> str:
        """What Postgres keeps as the function's source (pg_proc.prosrc)."""
        match = _BODY.search(self.sql)
        if match is None:
            raise ValueError(f"{self.name}: no AS $$ … $$ body in {self.source}")
        return match.group(1)


def _sections(text: str, source: str) -> list[tuple[str, str | None, str]]:
    matches = list(_SECTION.finditer(text))
    sections = []
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        sections.append((match.group(1), match.group(2), text[match.end() : end].strip()))
    if not sections:
        raise ValueError(f"sql/functions/{source} has no '-- function: NAME' section")
    return sections


def _values(shape: FunctionShape) -> dict[str, str]:
    matches = MATCHES[shape.key_family]
    tenant = shape.tenant_column
    tenant_type = shape.tenant_type or "text"
    if not _TYPE_NAME.fullmatch(tenant_type):
        raise ValueError(f"tenant column type {tenant_type!r} cannot be cast to by name")
    version = shape.version_column
    return {
        "{key}": LEDGER_KEY_TYPES[shape.key_family],
        "{users}": shape.users.sql,
        "{lock_key}": LOCK_KEYS[shape.key_family],
        "{version_bump}": (
            f", {quote_ident(version)} = u.{quote_ident(version)} + 1" if version else ""
        ),
        "{integer_match}": matches["integer"],
        "{uuid_match}": matches["uuid"],
        "{text_match}": matches["text"],
        "{tenant_match}": (
            f"AND (q.tenant IS NULL OR u.{quote_ident(tenant)}::text = q.tenant)" if tenant else ""
        ),
        **({"{tenant}": quote_ident(tenant), "{tenant_type}": tenant_type} if tenant else {}),
    }


def marked_files(migration_up: str) -> list[str] | None:
    """The files a migration's `-- migrate:functions` line installs: None for no such line,
    [] for every file."""
    match = MARKER.search(migration_up)
    if match is None:
        return None
    return match.group("files").split()


def render(shape: FunctionShape, files: list[str] | None = None) -> list[Function]:
    """The functions of sql/functions/ (of `files`, default all), rendered for `shape`."""
    values = _values(shape)
    wanted = "tenant" if shape.tenant_column else "no tenant"
    functions = []
    for path in sorted((sql_dir() / "functions").glob("*.sql")):
        if files and path.name not in files:
            continue
        for name, condition, text in _sections(path.read_text(), path.name):
            if condition is not None and condition != wanted:
                continue
            sql = _PLACEHOLDER.sub(lambda m: values.get(m.group(0), m.group(0)), text)
            left = _PLACEHOLDER.findall(sql)
            if left:
                raise ValueError(f"sql/functions/{path.name}: {name} has unknown {left[0]}")
            functions.append(Function(name, path.name, sql))
    return functions


async def install(
    conn: Any, shape: FunctionShape, files: list[str] | None = None
) -> list[Function]:
    """Create or replace the functions of `files` (default all) for `shape`."""
    functions = render(shape, files)
    for function in functions:
        await conn.execute(function.sql)
    return functions
