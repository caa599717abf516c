"""`webhook-worker credits show|grant|adjust USER`: an operator's view and hand of one user's
credits (webhook_worker.ops.credits_admin). USER is an email, id, UUID or `cus_…`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from webhook_worker import credits
from webhook_worker.config import Settings
from webhook_worker.db import store
from webhook_worker.exit_codes import EXIT_OK, EXIT_PROBLEM
from webhook_worker.ops import credits_admin, terminal


def _print_show(view: credits_admin.UserCredits) -> None:
    console = Console()
    console.print(f"user {view.user_id}: balance {view.balance} credits")
    if view.shortfall_owed or view.shortfall_collected:
        console.print(
            f"shortfall owed {view.shortfall_owed}, collected so far {view.shortfall_collected}"
        )
    if view.holds:
        holds = Table(title="open holds", title_justify="left")
        for column in ("key", "credits", "expires"):
            holds.add_column(column)
        for h in view.holds:
            holds.add_row(h.idempotency_key, str(h.amount), f"{h.expires_at:%Y-%m-%d %H:%M:%S}")
        console.print(holds)
    rows = Table(title="ledger, newest first", title_justify="left")
    for column in ("id", "when", "type", "amount", "balance", "key / event", "description"):
        rows.add_column(column)
    for t in view.history:
        rows.add_row(
            str(t.id),
            f"{t.created_at:%Y-%m-%d %H:%M:%S}",
            t.transaction_type,
            f"{t.amount:+d}",
            str(t.balance_after),
            t.idempotency_key or t.event_id or "",
            (t.description or "")[:60],
        )
    console.print(rows)


async def _credits(args: argparse.Namespace, settings: Settings) -> int:
    pool = await store.create_pool(settings, min_size=1, max_size=2)
    try:
        async with store.acquire(pool, "running a credits command") as conn:
            try:
                user_id = await credits_admin.find_user(conn, args.user)
                if args.action == "show":
                    view = await credits_admin.show(conn, user_id, limit=args.limit)
                    if args.json:
                        terminal.print_json(view.as_dict())
                    else:
                        _print_show(view)
                    return EXIT_OK
                result = await credits_admin.change(
                    conn,
                    kind=args.action,
                    user_id=user_id,
                    amount=args.amount,
                    reason=args.reason,
                    who=f"cli:{getpass.getuser()}",
                    via="cli",
                    idempotency_key=args.key,
                )
            except credits.CreditsError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_PROBLEM
    finally:
        await pool.close()
    summary: dict[str, Any] = {
        "user_id": str(user_id),
        "status": result.status,
        "balance": result.balance,
        "transaction_id": result.transaction_id,
    }
    if args.json:
        terminal.print_json(summary)
    else:
        print(
            f"{result.status}: user {user_id} now has {result.balance} credits"
            + (f" (ledger row {result.transaction_id})" if result.transaction_id else "")
        )
    return EXIT_OK


_USER_HELP = "an email, id, UUID or Stripe customer id (cus_…)"


def add_credits(sub: terminal.Subparsers) -> None:
    p = sub.add_parser(
        "credits",
        help="show, grant or adjust one user's credits (audited)",
        description="USER is an email, id, UUID or Stripe customer id (cus_…). grant writes a "
        "BONUS row, adjust an ADJUSTMENT row of either sign (never below zero); both need "
        "--reason and are audited (ops_audit) like a replay.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="balance, open holds and the ledger, newest first")
    show.add_argument("user", metavar="USER", help=_USER_HELP)
    show.add_argument("--limit", type=int, default=50, help="ledger rows shown (default: 50)")
    show.add_argument("--json", action="store_true", help="print JSON")
    for name, helptext in (
        ("grant", "give credits (a BONUS row)"),
        ("adjust", "move the balance either way (an ADJUSTMENT row; -5 takes 5)"),
    ):
        change = actions.add_parser(name, help=helptext)
        change.add_argument("user", metavar="USER", help=_USER_HELP)
        change.add_argument("amount", type=int, help="credits (adjust: negative takes)")
        change.add_argument(
            "--reason",
            required=True,
            help="why (kept in the ledger and audit; required, no default)",
        )
        change.add_argument(
            "--key", help="idempotency key: the same key again changes nothing (default: new)"
        )
        change.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=lambda args, settings: asyncio.run(_credits(args, settings)))
