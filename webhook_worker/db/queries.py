"""Named SQL statements loaded from `sql/queries/*.sql`.

Each statement starts with a `-- name: some_name` line; everything up to the next such line
is its text. Statements are parameterised with asyncpg's `$1`, `$2`, … and never formatted
with Python strings. Names are unique across all files.

One identifier is not a parameter: the host's users table (`USERS_TABLE`), written `{users}`
in a statement. Each process names it once at start (`bind_users_table`, from Settings); it
is filled in quoted (`identifier.quote_ident`), and `query()` then costs a dict lookup.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from webhook_worker.identifier import DEFAULT_USERS_TABLE, TableName

USERS_PLACEHOLDER = "{users}"
_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def sql_dir() -> Path:
    """`sql/` beside the package in a checkout, or inside it in an installed wheel."""
    package = Path(__file__).resolve().parent.parent  # webhook_worker/
    for candidate in (package / "sql", package.parent / "sql"):
        if (candidate / "migrations").is_dir():
            return candidate
    raise FileNotFoundError(f"no sql/ folder found in or beside {package}")


def parse_queries(text: str, source: str = "<string>") -> dict[str, str]:
    """Split one file into {name: statement}."""
    matches = list(_NAME.finditer(text))
    queries: dict[str, str] = {}
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip().rstrip(";").strip()
        name = match.group(1)
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice in {source}")
        queries[name] = body
    return queries


@cache
def all_queries() -> dict[str, str]:
    queries: dict[str, str] = {}
    for path in sorted((sql_dir() / "queries").glob("*.sql")):
        for name, body in parse_queries(path.read_text(), str(path)).items():
            if name in queries:
                raise ValueError(f"query {name!r} is defined in more than one file ({path})")
            queries[name] = body
    return queries


_bound: dict[str, str] = {}  # the statements rendered for the bound users table
_users_table: list[TableName] = [DEFAULT_USERS_TABLE]


def bind_users_table(table: TableName) -> None:
    """Name the host's users table in every statement (once per process, at start)."""
    if table != _users_table[0] or not _bound:
        _users_table[0] = table
        _bound.clear()
        for name, body in all_queries().items():
            _bound[name] = body.replace(USERS_PLACEHOLDER, table.sql)


def users_table() -> TableName:
    """The users table the statements name (`bind_users_table`)."""
    return _users_table[0]


def query(name: str) -> str:
    """The text of one named statement; a KeyError names the missing query."""
    if not _bound:
        bind_users_table(_users_table[0])
    try:
        return _bound[name]
    except KeyError:
        raise KeyError(f"no SQL statement named {name!r} in sql/queries/") from None
