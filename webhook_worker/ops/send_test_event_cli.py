"""`webhook-worker send-test-event`: POST a signed test-mode event to a receiver, like
`stripe trigger`; with APP_ENV=production only the smoke-test type unless --allow-credit."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from webhook_worker.config import Settings
from webhook_worker.exit_codes import EXIT_OK, EXIT_PROBLEM
from webhook_worker.ops import command, event_sender, terminal, values


def _default_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.port}/webhooks/stripe"


def _dev_secret(settings: Settings) -> str | None:
    """The secret `webhook-worker dev` created and printed, when run from the same folder."""
    path = Path(settings.data_dir) / "dev_webhook_secret"
    if not path.is_file():
        return None
    return path.read_text().strip() or None


async def _send_test_event(args: argparse.Namespace, settings: Settings) -> int:
    secret = event_sender.pick_secret(
        settings, args.secret or (None if settings.webhook_secrets else _dev_secret(settings))
    )
    url = args.url or _default_url(settings)
    terminal.quiet_http_logs()
    if args.credits is not None and args.credits < 1:
        raise values.OpsInputError("--credits must be a positive integer")
    event_type = _allowed_test_type(args.type, settings, allow_credit=args.allow_credit)
    event = event_sender.build_test_event(
        event_type,
        email=args.email,
        user_id=args.user_id,
        user_uuid=args.user_uuid,
        credits=args.credits,
        payment_intent=args.payment_intent,
        customer=args.customer,
        invoice=args.invoice,
    )
    result = await event_sender.send_event(url, event, secret)
    if args.json:
        terminal.print_json(
            {
                "event_id": result.event_id,
                "type": result.event_type,
                "status_code": result.status_code,
                "body": result.body,
            }
        )
    else:
        print(f"sent {result.event_type} {result.event_id} to {url}")
        print(f"HTTP {result.status_code} {result.body}")
    return EXIT_OK if result.status_code == 200 else EXIT_PROBLEM


def _allowed_test_type(event_type: str, settings: Settings, *, allow_credit: bool) -> str:
    """With APP_ENV=production only the smoke-test type goes out (the worker ignores it), unless
    --allow-credit: one command must not mint credits in production by accident."""
    if settings.app_env != "production" or event_type == event_sender.SMOKE_EVENT_TYPE:
        return event_type
    if allow_credit:
        print(
            f"warning: APP_ENV=production and --allow-credit: sending {event_type}, which may "
            "credit a real user's balance",
            file=sys.stderr,
        )
        return event_type
    print(
        f"APP_ENV=production: sending {event_sender.SMOKE_EVENT_TYPE} instead of {event_type} (it "
        "credits nothing); pass --allow-credit to send credit-bearing types",
        file=sys.stderr,
    )
    return event_sender.SMOKE_EVENT_TYPE


def add_send_test_event(sub: terminal.Subparsers) -> None:
    p = sub.add_parser(
        "send-test-event",
        help="POST a signed test-mode Stripe event to a receiver (like `stripe trigger`)",
        description=(
            "Exit 0 on HTTP 200, 1 otherwise. The email and secret are never printed. With "
            f"APP_ENV=production only {event_sender.SMOKE_EVENT_TYPE} is sent (it credits nothing) "
            "unless --allow-credit is given."
        ),
    )
    p.add_argument(
        "--url",
        help="receiver endpoint (default: http://127.0.0.1:$PORT/webhooks/stripe, PORT 8000)",
    )
    p.add_argument(
        "--type",
        default="checkout.session.completed",
        help="event type (default: %(default)s); charge.refunded needs --payment-intent; "
        "invoice.paid is a monthly renewal crediting --credits to --user-id / --user-uuid or "
        "to the user linked to --customer; credit_note.created refunds --invoice in full",
    )
    who = p.add_mutually_exclusive_group()
    who.add_argument(
        "--email",
        help="buyer email (customer_email / customer_details.email; default: none)",
    )
    who.add_argument("--user-id", help="users.id, sent as client_reference_id (default: none)")
    who.add_argument("--user-uuid", help="users.uuid, sent as metadata.user_uuid (default: none)")
    p.add_argument("--credits", type=int, default=10, help="metadata.credits (default: 10)")
    p.add_argument(
        "--payment-intent",
        help="pi_… to use; refunds point at the purchase's (default: a new random id)",
    )
    p.add_argument(
        "--customer",
        help="cus_… the event names; invoice.paid: a linked customer (default: a new one)",
    )
    p.add_argument(
        "--invoice", help="in_… a credit note refunds, credit_note.created (default: a new one)"
    )
    p.add_argument(
        "--secret",
        help="sign with this whsec_… (default: the first STRIPE_WEBHOOK_SECRET, "
        "else the secret `webhook-worker dev` keeps in .data/)",
    )
    p.add_argument(
        "--allow-credit",
        action="store_true",
        help="with APP_ENV=production, really send --type (it may mint credits)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=command.sync(_send_test_event))
