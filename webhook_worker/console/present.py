"""How the console shows what it read: amounts in major units, reasons in words, links to
the Stripe Dashboard, the payload in Stripe's key order, the facts of an event's summary.
Pure functions over plain data (Jinja filters and view helpers); no I/O."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup, escape

# Stripe's currencies without minor units, and with three decimals (their docs, "Zero-decimal
# currencies" / "Three-decimal currencies").
ZERO_DECIMAL = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)
THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])
DASHBOARD = "https://dashboard.stripe.com"
_STRIPE_ID = re.compile(r"^[a-z]{2,8}_[A-Za-z0-9_]{6,}$")

# What each status reason means (README, "What each reason means"), shown on hover.
REASONS = {
    "livemode_mismatch": "The event's mode (live/test) is not STRIPE_MODE.",
    "connect_account_not_allowed": "From a connected account not in STRIPE_CONNECT_ACCOUNTS.",
    "thin_event": "A thin event from an event destination: no money fields to act on.",
    "not_a_credit_purchase": "A Checkout Session of another mode, with nothing paid, or "
    "with no credits rule.",
    "awaiting_payment": "Session completed unpaid: the credit comes with async_payment_succeeded.",
    "unhandled_type": "A type this service does not handle; nothing to do.",
    "no_payment_intent": "A refund or dispute without a payment intent: nothing to take back.",
    "no_credits_rule": "An invoice none of whose lines has a credits rule.",
    "nothing_charged": "An invoice whose credited lines charge nothing (a trial, a downgrade).",
    "subscription_linked": "A subscription session linked its customer to the user.",
    "no_user_to_link": "A subscription session found no user to link its customer to.",
    "invoice_payment": "A payment that pays an invoice: invoice.paid credits it.",
    "invoice_payment_linked": "Linked the payment intent to the invoice's credit.",
    "invoice_already_linked": "The invoice was already linked to another payment.",
    "awaiting_invoice": "The invoice is not credited yet; the sweeper wakes this event.",
    "no_refund": "A credit note that refunds nothing.",
    "refund_amount_unknown": "A credit note whose refund amount is unknown; charge.refunded "
    "takes the share back.",
    "awaiting_invoice_payment": "The credit note's invoice is not credited or linked yet.",
    "awaiting_customer": "No user holds the invoice's customer yet.",
    "no_user_for_customer": "No user holds the invoice's customer: link it, then replay.",
    "no_purchase_for_payment": "No purchase of this payment came within WAIT_MAX_DAYS.",
    "stale_event": "Older than what its payment already applied: the newer state counts.",
    "refund_not_failed": "A refund update that is not a failure.",
    "dispute_inquiry": "A dispute inquiry: no funds were withdrawn.",
    "awaiting_purchase": "The payment's purchase is not in the ledger yet; the sweeper wakes "
    "this event when it lands.",
    "already_credited": "This payment was credited already (by another event): nothing twice.",
    "user_not_found": "No user matched the session's user id, email or customer.",
    "ambiguous_user": "The email matches users in several tenants.",
}


def reason_meaning(reason: str | None) -> str:
    if not reason:
        return ""
    return REASONS.get(reason, reason.replace("_", " "))


def error_reason(error: str | None) -> str | None:
    """`user_not_found: no user …` → `user_not_found`."""
    if not error:
        return None
    head = error.split(":", 1)[0].strip()
    return head if re.fullmatch(r"[a-z_]{3,60}", head) else None


def money(amount: Any, currency: str | None) -> str:
    """Minor units as Stripe sends them → `12.34 USD`, `1,500 JPY`; '' when unknown."""
    try:
        minor = int(amount)
    except (TypeError, ValueError):
        return ""
    code = (currency or "").lower()
    digits = 0 if code in ZERO_DECIMAL else 3 if code in THREE_DECIMAL else 2
    sign = "-" if minor < 0 else ""
    whole, part = divmod(abs(minor), 10**digits)
    text = f"{sign}{whole:,}" + (f".{part:0{digits}d}" if digits else "")
    return f"{text} {code.upper()}".strip()


def signed(credits: Any) -> str:
    """+25 / \u22125 (a real minus sign), '' for none."""
    if credits is None:
        return ""
    value = int(credits)
    if value == 0:
        return "0"
    return f"+{value:,}" if value > 0 else f"\u2212{-value:,}"


def timestamp(value: datetime | str | None) -> str:
    """One format everywhere (pages and the replay's refreshed parts)."""
    if value is None or value == "":
        return "\u2014"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def stripe_order(value: dict[str, Any]) -> list[tuple[str, Any]]:
    """Stripe's own key order: `id`, `object`, then the rest alphabetically (as its API
    returns them; Postgres's jsonb keeps none)."""
    head = [key for key in ("id", "object") if key in value]
    rest = sorted(key for key in value if key not in ("id", "object"))
    return [(key, value[key]) for key in head + rest]


def _ordered(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _ordered(item) for key, item in stripe_order(value)}
    if isinstance(value, list):
        return [_ordered(item) for item in value]
    return value


def payload_text(payload: Any) -> str:
    """The payload as Stripe shows it: its key order, two-space indent, nothing escaped."""
    return json.dumps(_ordered(payload), indent=2, ensure_ascii=False)


def scalar(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def is_stripe_id(value: Any) -> bool:
    return isinstance(value, str) and bool(_STRIPE_ID.match(value))


def dashboard_url(path: str, *, livemode: bool, account: str | None) -> str:
    """A Dashboard page: `/test/…` for test mode, `/acct_…/…` for a connected account."""
    prefix = f"/{account}" if account else ""
    mode = "" if livemode else "/test"
    return f"{DASHBOARD}{prefix}{mode}/{path}"


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def summary(event: dict[str, Any], payload: Any) -> dict[str, Any]:
    """Who, what Stripe said and where to look, from the stored event and its payload."""
    obj = payload.get("data", {}).get("object", {}) if isinstance(payload, dict) else {}
    obj = obj if isinstance(obj, dict) else {}
    kind = obj.get("object")
    own = _text(obj.get("id"))

    def ref(name: str, own_kind: str) -> str | None:
        found = _text(obj.get(name))
        return own if kind == own_kind else found

    details = _mapping(obj.get("customer_details"))
    billing = _mapping(obj.get("billing_details"))
    email = (
        _text(details.get("email"))
        or _text(obj.get("customer_email"))
        or _text(obj.get("receipt_email"))
        or _text(billing.get("email"))
        or (_text(obj.get("email")) if kind == "customer" else None)
    )
    if event["type"] == "charge.refunded":
        amount = obj.get("amount_refunded")
    elif str(event["type"]).startswith("invoice."):
        amount = obj.get("amount_paid")
    else:
        amount = next(
            (obj[k] for k in ("amount_total", "amount", "total") if obj.get(k) is not None), None
        )
    facts = {
        "object": own,
        "object_kind": kind,
        "email": email,
        "customer": ref("customer", "customer"),
        "payment_intent": ref("payment_intent", "payment_intent"),
        "charge": ref("charge", "charge") or _text(obj.get("latest_charge")),
        "invoice": ref("invoice", "invoice"),
        "session": own if kind == "checkout.session" else None,
        "amount": money(amount, _text(obj.get("currency"))),
        "payment_status": _text(obj.get("payment_status")) or _text(obj.get("status")),
    }
    facts["links"] = _links(event, facts)
    return facts


def _links(event: dict[str, Any], facts: dict[str, Any]) -> list[tuple[str, str]]:
    livemode, account = bool(event.get("livemode")), _text(event.get("account"))
    pages = [("Event", f"events/{event['event_id']}")]
    payment = facts["payment_intent"] or facts["charge"]
    if payment:
        pages.append(("Payment", f"payments/{payment}"))
    if facts["customer"]:
        pages.append(("Customer", f"customers/{facts['customer']}"))
    if facts["invoice"]:
        pages.append(("Invoice", f"invoices/{facts['invoice']}"))
    return [
        (label, dashboard_url(path, livemode=livemode, account=account)) for label, path in pages
    ]


def soft_breaks(text: str | None) -> Markup:
    """An email or a reason that may wrap after `@`, `.` or `_` rather than mid-word."""
    if not text:
        return Markup("")
    pieces = re.split(r"(?<=[@._])", text)
    return Markup("<wbr>").join(escape(piece) for piece in pieces)


def about(count: int) -> str:
    """An estimate in words: `about 1.2 M`, `about 35 k`, `about 800`."""
    if count >= 1_000_000:
        return f"about {count / 1_000_000:.1f} M"
    if count >= 10_000:
        return f"about {round(count / 1000):,} k"
    if count >= 1000:
        return f"about {count / 1000:.1f} k"
    return f"about {count:,}"
