"""`webhook-worker migrate up|down|status`: the schema migrations of sql/migrations/, through
DIRECT_DATABASE_URL when set (past any pooler), else DATABASE_URL.

`cli.main` turns a lock timeout into exit 3 and any other migration error into exit 1.
"""

from __future__ import annotations

import argparse
import sys

from webhook_worker.config import Settings
from webhook_worker.exit_codes import EXIT_OK
from webhook_worker.ops import command, terminal


async def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from webhook_worker.db import migrations

    conn = await migrations.connect_direct(settings)
    try:
        if args.action == "status":
            for row in await migrations.migration_status(conn):
                state = f"applied {row.applied_at}" if row.applied else "pending"
                print(f"{row.version:04d}  {row.name:<28} {state}")
            return EXIT_OK
        if args.action == "up":
            applied = await migrations.up_with(conn, settings, args.to, on_wait=_say)
            for m in applied:
                print(f"applied {m.version:04d}_{m.name}")
            if not applied:
                print("nothing to apply: the schema is up to date")
            return EXIT_OK
        rolled = await migrations.down_with(
            conn, settings, args.to, drop_data=args.drop_data, on_wait=_say
        )
        for m in rolled:
            print(f"rolled back {m.version:04d}_{m.name}")
        if not rolled:
            print("nothing to roll back")
        return EXIT_OK
    finally:
        await conn.close()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def add_migrate(sub: terminal.Subparsers) -> None:
    p = sub.add_parser(
        "migrate",
        help="apply, roll back or list schema migrations (sql/migrations/)",
        description=(
            "up: apply every pending migration, each in its own transaction (default). "
            "down: roll back the newest one, or with --to every one above that version; it "
            "refuses when that would drop ledger, event or audit rows, unless --drop-data. "
            "status: list applied and pending migrations (read-only). Runs are serialised by "
            "a transaction-scoped advisory lock, and a no-transaction file by a lease row "
            "(MIGRATION_LOCK_TIMEOUT_SECONDS, then exit 3); "
            "an applied file whose checksum changed is refused. Uses DIRECT_DATABASE_URL when "
            "set, else DATABASE_URL."
        ),
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=("up", "down", "status"),
        default="up",
        help="up (apply pending), down (roll back) or status (list); default: %(default)s",
    )
    p.add_argument(
        "--to",
        type=int,
        default=None,
        metavar="VERSION",
        help="up: apply at most up to VERSION; down: keep VERSION and roll back every later "
        "one (default: up applies all, down rolls back only the newest)",
    )
    p.add_argument(
        "--drop-data",
        action="store_true",
        help="down: proceed even when it drops ledger, event or audit rows (default: refuse)",
    )
    p.set_defaults(handler=command.sync(_migrate))
