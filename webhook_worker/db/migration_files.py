"""The migration files, `sql/migrations/NNNN_name.sql`: parsed into an up and a down part,
and checked against what a database recorded when it applied them.

A file is immutable once applied: its checksum is recorded, and a changed one is refused,
since the database no longer matches what the file says. A file whose first lines carry
`-- migrate:no-transaction` runs outside a transaction, one statement at a time (each ends
with `;` at the end of a line; no dollar-quoted bodies).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from webhook_worker.db.queries import sql_dir
from webhook_worker.errors import MigrationError

# Files edited after release, with the checksums of their earlier text, which deployments
# applied and which stay accepted (issue 13, host key types). On every host where the earlier
# text applied (an integer users.id) the edited text builds the same ledger: 0003 and 0004
# still create BIGINT user_id there and only take uuid/text on hosts where the earlier text
# failed; 0001 additionally records what it adds to a host's users (its down then removes
# exactly that) and skips the global email index on multi-tenant hosts. Installs made with
# the earlier 0001 have no such record: its down keeps their columns, as it always did.
# Issue 34 (USERS_TABLE) edited 0001, 0003, 0004 and 0008 again: on a table named `users`
# they build what their issue-13 text built (the table name now comes from the runner, and
# 0008 installs its functions from sql/functions/, the same bodies), so that text is
# accepted too.
EARLIER_CHECKSUMS: dict[int, frozenset[str]] = {
    1: frozenset(
        {
            "073791c9a4158ca79a8a24aaf2d38368a3e41ab3b5bac90ae697667dbd6b2fd6",
            "e037c5d06cc6861efde9b42e4d158e25f74856ded73677a9d19e38df463bee82",
        }
    ),
    3: frozenset(
        {
            "4c6cf8162a21d69b9c93b979d75f7f18988f5f896656754362928356c34e6376",
            "2dab4ef5f2a8f014692f5d79229d2541b2ee06cbb9f4c6761202a42a84ac9a19",
        }
    ),
    4: frozenset(
        {
            "dbfa172e71d15d05504f95520f8bb530fc6751c3961461ac2695da3c4118e3e2",
            "ed168f476a06222fd1cadf361648524265a77c5daaa9396e0177797f9e9bf718",
        }
    ),
    8: frozenset({"feafee1dc247a50402377d6f9e17b5a0c9abf22294bd78d03fe3e567569bc187"}),
    # 0025 as issue 27 landed it (a table named users only).
    25: frozenset({"9823a31ac5550651b1aa5557b2e2c54bf46992961e7a6d2e16d2cd3af3e67ec6"}),
}
_NO_TRANSACTION = re.compile(r"^--\s*migrate:no-transaction\s*$", re.MULTILINE)
_STATEMENT_END = re.compile(r";[ \t]*$", re.MULTILINE)
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_UP = re.compile(r"^--\s*migrate:up\s*$", re.MULTILINE)
_DOWN = re.compile(r"^--\s*migrate:down\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up: str
    down: str
    checksum: str
    path: Path
    transactional: bool = True

    @property
    def label(self) -> str:
        """`0051_event_search_backfill`, as messages name it."""
        return f"{self.version:04d}_{self.name}"


def load_migrations(folder: Path | None = None) -> list[Migration]:
    folder = folder or sql_dir() / "migrations"
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        text = path.read_text()
        up_match, down_match = _UP.search(text), _DOWN.search(text)
        if not up_match or not down_match or down_match.start() < up_match.end():
            raise MigrationError(f"{path.name}: needs '-- migrate:up' then '-- migrate:down'")
        migrations.append(
            Migration(
                version=int(match.group(1)),
                name=match.group(2),
                up=text[up_match.end() : down_match.start()].strip(),
                down=text[down_match.end() :].strip(),
                checksum=hashlib.sha256(text.encode()).hexdigest(),
                path=path,
                transactional=_NO_TRANSACTION.search(text[: up_match.start()]) is None,
            )
        )
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return migrations


def split_statements(sql: str) -> list[str]:
    """The statements of a no-transaction part: each ends with `;` at the end of a line."""
    parts = [part.strip() for part in _STATEMENT_END.split(sql)]
    return [part for part in parts if part and not _only_comments(part)]


def _only_comments(part: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in part.splitlines())


def check_checksums(migrations: list[Migration], applied: Mapping[int, asyncpg.Record]) -> None:
    """Refuse an applied migration whose file is gone or was edited since."""
    by_version = {m.version: m for m in migrations}
    for version, row in applied.items():
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(
                f"migration {version:04d}_{row['name']} is applied but its file is missing; "
                "restore the file before migrating"
            )
        accepted = {migration.checksum} | EARLIER_CHECKSUMS.get(version, frozenset())
        if row["checksum"] not in accepted:
            raise MigrationError(
                f"{migration.path.name} changed after it was applied (checksum mismatch); "
                "applied migrations are immutable: revert the edit and add a new migration"
            )
