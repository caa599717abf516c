"""What each Stripe event type does, through one registry keyed by event type.

Before any handler, `scope.out_of_scope_reason` ignores events of the other mode, of a
connected account that is not listed, and thin events: they never move money.

- `checkout.session.completed`: credits when `payment_status` is `paid` or
  `no_payment_required`; `unpaid` (delayed payment methods) is `ignored` and the credit
  waits for `checkout.session.async_payment_succeeded`.
- `checkout.session.async_payment_succeeded`: credits.
- `checkout.session.async_payment_failed`: recorded as `completed` with no ledger row (the
  event was handled; there is nothing to credit or take back).
- `charge.refunded`: debits the refunded share of that payment intent's credits.
- Every other type: `ignored` (`unhandled_type`).

What a session buys (`credits_for`): only a `mode: payment` session is a credits purchase.
`metadata.credits` (a positive integer) comes first; else, when any credit price is
configured (`CREDIT_PRICES`, or `CENTS_PER_CREDIT` for usd), `amount_total` divided by the
price of the session's currency, rounded down. A session with neither rule, another mode
or nothing paid is not a credits purchase (`ignored`, `not_a_credit_purchase`); a paid
session in a currency without a price fails, naming the currency and the variable, and so
does any amount above `MAX_CREDITS_PER_EVENT`.

Handlers that touch the ledger mark the event `completed` inside the ledger transaction
(`Outcome.recorded`); the worker writes every other outcome, with its reason. A handler
borrows a pooled connection only for its own statements and credits through
`HandlerContext.credit`, which the worker coalesces with the credits of concurrent jobs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson

from webhook_worker import ledger, resolver, scope, store
from webhook_worker.config import Settings
from webhook_worker.errors import PermanentError
from webhook_worker.host import UserId

Status = Literal["completed", "ignored"]
PAID_STATUSES = frozenset({"paid", "no_payment_required"})


@dataclass(frozen=True)
class StoredEvent:
    """A claimed `stripe_events` row with its payload parsed."""

    event_id: str
    type: str
    attempts: int
    received_at: datetime | None
    payload: dict[str, Any]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> StoredEvent:
        raw = row.get("raw_data")
        if raw is None:
            raise PermanentError("the event's payload was pruned; it cannot be processed again")
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise PermanentError(f"the stored payload is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise PermanentError("the stored payload is not a JSON object")
        return cls(
            event_id=str(row["event_id"]),
            type=str(row["type"]),
            attempts=int(row.get("attempts") or 0),
            received_at=row.get("received_at"),
            payload=payload,
        )

    @property
    def data_object(self) -> dict[str, Any]:
        data = self.payload.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        if not isinstance(obj, dict):
            raise PermanentError(f"{self.type} event has no data.object")
        return obj


@dataclass(frozen=True)
class Outcome:
    """A handler's result: final status, the canonical log event name and its fields."""

    status: Status
    action: str  # event_credited, event_debited, event_recorded, event_ignored
    recorded: bool = False  # the status was already written in the ledger transaction
    fields: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None  # why: stored in stripe_events.status_reason when not recorded


def ignored(reason: str, **fields: Any) -> Outcome:
    """The event is stored but moves no money; `reason` says why (see README, reasons)."""
    return Outcome("ignored", "event_ignored", fields=fields, reason=reason)


@dataclass(frozen=True)
class HandlerContext:
    """What a job works with: settings, the pool, and the event claim, the ledger's credit
    call and a user lookup, which the worker coalesces with those of concurrent jobs. Built
    once per worker process."""

    settings: Settings
    pool: store.Pool
    claim: Callable[[str], Awaitable[dict[str, Any] | None]]
    credit: Callable[[ledger.Purchase], Awaitable[ledger.CreditResult]]
    lookup: Callable[[resolver.Candidate], Awaitable[UserId | None]]


Handler = Callable[[HandlerContext, StoredEvent], Awaitable[Outcome]]


def _positive_int(raw: object) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw if raw > 0 else None
    if isinstance(raw, str):
        text = raw.strip()
        if text.isascii() and text.isdigit() and len(text) <= 18:
            value = int(text)
            return value if value > 0 else None
    return None


def _metadata_credits(session: Mapping[str, Any]) -> object | None:
    metadata = session.get("metadata")
    raw: object = metadata.get("credits") if isinstance(metadata, Mapping) else None
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    return raw


def _credits_by_amount(session: Mapping[str, Any], settings: Settings) -> int | None:
    amount_total = session.get("amount_total")
    if isinstance(amount_total, bool) or not isinstance(amount_total, int):
        raise PermanentError("no credits amount: amount_total is missing or not an integer")
    if amount_total == 0:
        return None  # nothing was paid (a free or fully discounted session, a trial)
    currency = session.get("currency")
    code = currency.lower() if isinstance(currency, str) else ""
    price = settings.credit_prices.get(code)
    if price is None:
        priced = ",".join(f"{c}:{p}" for c, p in sorted(settings.credit_prices.items()))
        raise PermanentError(
            f"no credit price for currency {str(currency)[:8]!r}: set its price in minor "
            f"units, e.g. CREDIT_PRICES={priced},{code or 'xxx'}:<minor units per credit>, "
            "or put metadata.credits on the Checkout Session; then replay"
        )
    credits = amount_total // price
    if credits <= 0:
        raise PermanentError(
            f"no credits amount: amount_total {amount_total} {code} is below the price of one "
            f"credit ({price} {code})"
        )
    return credits


def credits_for(session: Mapping[str, Any], settings: Settings) -> int | None:
    """The credits a checkout session buys; None when it is not a credits purchase.

    Raises PermanentError when it is one but the amount cannot be told (a bad
    `metadata.credits`, an unpriced currency) or is above `MAX_CREDITS_PER_EVENT`.
    """
    mode = session.get("mode")
    if mode is not None and mode != "payment":
        return None  # subscriptions and setup sessions are not one-off credits purchases
    raw = _metadata_credits(session)
    if raw is not None:
        credits = _positive_int(raw)
        if credits is None:
            raise PermanentError(
                f"metadata.credits={str(raw)[:40]!r} is not a positive integer; "
                "fix the Checkout Session metadata and replay"
            )
    elif settings.credit_prices:
        by_amount = _credits_by_amount(session, settings)
        if by_amount is None:
            return None
        credits = by_amount
    else:
        return None  # no credits rule applies: not a credits purchase
    if credits > settings.max_credits_per_event:
        raise PermanentError(
            f"the session would credit {credits} credits, above MAX_CREDITS_PER_EVENT="
            f"{settings.max_credits_per_event}; nothing was credited. Raise "
            "MAX_CREDITS_PER_EVENT if this purchase is genuine, then replay"
        )
    return credits


def _text(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if isinstance(value, Mapping):  # an expanded object
        value = value.get("id")
    return value.strip() if isinstance(value, str) and value.strip() else None


async def _resolve(ctx: HandlerContext, session: Mapping[str, Any]) -> resolver.Resolution:
    """The common case, the first candidate matches and there is no customer id to remember,
    takes one coalesced lookup; everything else goes through the full resolver."""
    first = resolver.first_candidate(session)
    if first is not None and resolver.customer_id(session) is None:
        source, candidate = first
        user_id = await ctx.lookup(candidate)
        if user_id is not None:
            return resolver.Resolution(user_id, source)
    async with store.acquire(ctx.pool, "resolving a user") as conn:
        return await resolver.resolve_user(conn, session)


async def _credit_session(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    session = event.data_object
    session_id = _text(session, "id")
    if session_id is None:
        raise PermanentError("checkout session has no id")
    credits = credits_for(session, ctx.settings)  # before resolving: a bad event makes no user
    if credits is None:
        return ignored("not_a_credit_purchase", mode=str(session.get("mode"))[:32])
    who = await _resolve(ctx, session)
    result = await ctx.credit(
        ledger.Purchase(
            user_id=who.user_id,
            credits=credits,
            event_id=event.event_id,
            checkout_session_id=session_id,
            payment_intent_id=_text(session, "payment_intent"),
            description=f"{event.type} {session_id}",
        ),
    )
    fields: dict[str, Any] = {
        "user_id": who.user_id,
        "resolved_by": who.source,
        "user_created": who.created,
        "credits": credits if result.applied else 0,
        "balance": result.balance,
        "checkout_session_id": session_id,
    }
    if result.applied:
        return Outcome("completed", "event_credited", recorded=True, fields=fields)
    return Outcome(
        "completed",
        "event_recorded",
        recorded=True,
        fields=fields,
        reason="already_credited",
    )


async def handle_checkout_completed(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    payment_status = event.data_object.get("payment_status")
    if payment_status not in PAID_STATUSES:
        # Delayed payment methods: the credit comes with async_payment_succeeded.
        return ignored("awaiting_payment", payment_status=str(payment_status)[:32])
    return await _credit_session(ctx, event)


async def handle_async_payment_succeeded(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    return await _credit_session(ctx, event)


async def handle_async_payment_failed(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    session_id = _text(event.data_object, "id")
    return Outcome(
        "completed",
        "event_recorded",
        fields={"checkout_session_id": session_id},
        reason="async_payment_failed",
    )


async def handle_charge_refunded(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    charge = event.data_object
    payment_intent = _text(charge, "payment_intent")
    if payment_intent is None:
        return ignored("no_payment_intent")
    captured = _positive_int(charge.get("amount_captured")) or _positive_int(charge.get("amount"))
    refunded = charge.get("amount_refunded")
    if captured is None or isinstance(refunded, bool) or not isinstance(refunded, int):
        raise PermanentError("charge.refunded without integer amount / amount_refunded")
    refund = ledger.Refund(
        event_id=event.event_id,
        payment_intent_id=payment_intent,
        charge_amount=captured,
        amount_refunded=refunded,
        description=f"charge.refunded {_text(charge, 'id') or ''}".strip(),
    )
    async with store.acquire(ctx.pool, "debiting a refund") as conn:
        result = await ledger.debit_refund(conn, refund)
    return Outcome(
        "completed",
        "event_debited",
        recorded=True,
        fields={
            "user_id": result.user_id,
            "debited": result.debited,
            "shortfall": result.shortfall,
            "balance": result.balance,
            "payment_intent_id": payment_intent,
        },
    )


HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": handle_checkout_completed,
    "checkout.session.async_payment_succeeded": handle_async_payment_succeeded,
    "checkout.session.async_payment_failed": handle_async_payment_failed,
    "charge.refunded": handle_charge_refunded,
}


async def handle_event(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    """Check the event's scope, then dispatch on its type; unknown types are `ignored`."""
    out_of_scope = scope.out_of_scope_reason(ctx.settings, event.payload)
    if out_of_scope is not None:
        return ignored(out_of_scope)
    handler = HANDLERS.get(event.type)
    if handler is None:
        return ignored("unhandled_type")
    return await handler(ctx, event)
