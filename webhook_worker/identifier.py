"""SQL identifiers from configuration (`USERS_TABLE`, `USERS_VERSION_COLUMN`): parsed once,
and quoted by the one helper here whenever they reach a statement. Never interpolated raw.

A name is taken exactly as written: `user` is the table `"user"` (a reserved word, which
`SELECT * FROM user` would read as `current_user`), `AppUsers` is `"AppUsers"` (no folding to
lower case). `schema.table` names the schema; a part holding a dot is written in double
quotes (`"my.schema".users`), as in SQL.
"""

from __future__ import annotations

from dataclasses import dataclass

# Postgres truncates longer names silently (NAMEDATALEN - 1 bytes): refuse them instead.
MAX_IDENTIFIER_BYTES = 63


def quote_ident(name: str) -> str:
    """`name` as a quoted SQL identifier: `user` -> `"user"`, `a"b` -> `"a""b"`."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class TableName:
    """A table, optionally schema-qualified, exactly as configured."""

    name: str
    schema: str | None = None

    @property
    def sql(self) -> str:
        """Quoted for a statement: `"user"`, `"app"."users"`."""
        if self.schema is None:
            return quote_ident(self.name)
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    def __str__(self) -> str:
        """For messages: `user`, `app.users` (quoted only where a part needs it)."""
        parts = [p for p in (self.schema, self.name) if p is not None]
        return ".".join(p if _plain(p) else quote_ident(p) for p in parts)


DEFAULT_USERS_TABLE = TableName("users")


# Postgres's reserved key words: a table called one of them must be quoted (`"user"`).
_RESERVED = frozenset(
    [
        "all",
        "analyse",
        "analyze",
        "and",
        "any",
        "array",
        "as",
        "asc",
        "asymmetric",
        "both",
        "case",
        "cast",
        "check",
        "collate",
        "column",
        "constraint",
        "create",
        "current_catalog",
        "current_date",
        "current_role",
        "current_time",
        "current_timestamp",
        "current_user",
        "default",
        "deferrable",
        "desc",
        "distinct",
        "do",
        "else",
        "end",
        "except",
        "false",
        "fetch",
        "for",
        "foreign",
        "from",
        "grant",
        "group",
        "having",
        "in",
        "initially",
        "intersect",
        "into",
        "lateral",
        "leading",
        "limit",
        "localtime",
        "localtimestamp",
        "not",
        "null",
        "offset",
        "on",
        "only",
        "or",
        "order",
        "placing",
        "primary",
        "references",
        "returning",
        "select",
        "session_user",
        "some",
        "symmetric",
        "system_user",
        "table",
        "then",
        "to",
        "trailing",
        "true",
        "union",
        "unique",
        "user",
        "using",
        "variadic",
        "when",
        "where",
        "window",
        "with",
    ]
)


def _plain(part: str) -> bool:
    """Readable without quotes: lower case, ASCII letters, digits and _, not reserved."""
    return (
        part.replace("_", "a").isalnum()
        and part.isascii()
        and part == part.lower()
        and not part[0].isdigit()
        and part not in _RESERVED
    )


def check_identifier(part: str) -> str:
    """One name part, refused (ValueError) when Postgres could not hold it as written."""
    if not part:
        raise ValueError("an empty name")
    if "\x00" in part:
        raise ValueError("a name cannot hold a NUL character")
    if len(part.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        raise ValueError(
            f"{part[:20]!r}… is longer than {MAX_IDENTIFIER_BYTES} bytes, which Postgres "
            "would truncate"
        )
    return part


def _split(raw: str) -> list[str]:
    """`a.b`, `"a.b".c`, `"x""y"` -> parts, honouring SQL double quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    i = 0
    while i < len(raw):
        ch = raw[i]
        if quoted:
            if ch == '"' and raw[i + 1 : i + 2] == '"':
                current.append('"')
                i += 1
            elif ch == '"':
                quoted = False
            else:
                current.append(ch)
        elif ch == '"':
            if current:
                raise ValueError("a double quote may only open a name part")
            quoted = True
        elif ch == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    if quoted:
        raise ValueError("an unclosed double quote")
    parts.append("".join(current))
    return parts


def parse_table_name(raw: str, variable: str) -> TableName:
    """`users`, `user`, `AppUsers`, `app.users`, `"my.schema"."user"` -> TableName."""
    try:
        parts = [check_identifier(p) for p in _split(raw.strip())]
    except ValueError as exc:
        raise ValueError(f"{variable}={raw!r}: {exc}") from None
    if len(parts) == 1:
        return TableName(parts[0])
    if len(parts) == 2:
        return TableName(parts[1], parts[0])
    raise ValueError(f"{variable}={raw!r} has {len(parts)} parts; use table or schema.table")
