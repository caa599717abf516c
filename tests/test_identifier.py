"""USERS_TABLE / USERS_VERSION_COLUMN parsing and the one quoting helper (issue 34)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import base_env
from webhook_worker.config import Settings
from webhook_worker.db.queries import all_queries, bind_users_table, query
from webhook_worker.errors import ConfigError
from webhook_worker.identifier import TableName, parse_table_name, quote_ident


@pytest.mark.parametrize(
    ("raw", "table", "sql"),
    [
        ("users", TableName("users"), '"users"'),
        ("user", TableName("user"), '"user"'),
        ("AppUsers", TableName("AppUsers"), '"AppUsers"'),
        ("app.users", TableName("users", "app"), '"app"."users"'),
        ('"my.schema"."User"', TableName("User", "my.schema"), '"my.schema"."User"'),
        ('"a""b"', TableName('a"b'), '"a""b"'),
        ("  user  ", TableName("user"), '"user"'),
    ],
)
def test_users_table_is_taken_exactly_as_written_and_quoted(
    raw: str, table: TableName, sql: str
) -> None:
    assert parse_table_name(raw, "USERS_TABLE") == table
    assert table.sql == sql


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("a.b.c", "has 3 parts"),
        ("app.", "an empty name"),
        ('"open', "an unclosed double quote"),
        ('a"b', "a double quote may only open a name part"),
        ("x" * 64, "longer than 63 bytes"),
    ],
)
def test_a_bad_users_table_stops_with_the_variable_and_a_good_value(
    raw: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**base_env("postgresql://h/db", "redis://h"), "USERS_TABLE": raw})
    message = info.value.message
    assert message.startswith("USERS_TABLE=")
    assert fragment in message
    assert "USERS_TABLE=user or USERS_TABLE=app.users" in message


def test_settings_defaults_and_version_column() -> None:
    env = base_env("postgresql://h/db", "redis://h")
    assert Settings.from_env(env).users_table == TableName("users")
    assert Settings.from_env(env).users_version_column is None
    assert Settings.from_env(
        {**env, "USERS_VERSION_COLUMN": "LockVersion"}
    ).users_version_column == ("LockVersion")
    with pytest.raises(ConfigError, match="USERS_VERSION_COLUMN="):
        Settings.from_env({**env, "USERS_VERSION_COLUMN": "v" * 70})


def test_messages_show_a_name_as_sql_would_read_it() -> None:
    assert str(TableName("users", "app")) == "app.users"
    assert str(TableName("user", "public")) == 'public."user"'
    assert str(TableName("AppUsers")) == '"AppUsers"'
    assert quote_ident('we"ird') == '"we""ird"'


_RAW_USERS = re.compile(r"\b(FROM|JOIN|UPDATE|INTO|TABLE)\s+users\b", re.IGNORECASE)


def test_no_named_statement_names_the_users_table_raw() -> None:
    """Every statement reaches the host's table through `{users}`, bound once per process."""
    raw = [name for name, body in all_queries().items() if _RAW_USERS.search(body)]
    assert raw == []
    with_placeholder = [name for name, body in all_queries().items() if "{users}" in body]
    assert "ops_balance_mismatches" in with_placeholder
    bind_users_table(TableName("user", "app"))
    assert 'FROM "app"."user" u' in query("ops_balance_mismatches")
    assert all("{users}" not in query(name) for name in all_queries())
