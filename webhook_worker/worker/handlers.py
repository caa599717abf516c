"""What each Stripe event type does, through one registry keyed by event type.

Before any handler, `scope.out_of_scope_reason` ignores events of the other mode, of a
connected account that is not listed, and thin events: they never move money.

- `checkout.session.completed`: credits when `payment_status` is `paid` or
  `no_payment_required`; `unpaid` (delayed payment methods) is `ignored` and the credit
  waits for `checkout.session.async_payment_succeeded`.
- `checkout.session.async_payment_succeeded`: credits.
- `checkout.session.async_payment_failed`: recorded as `completed` with no ledger row (the
  event was handled; there is nothing to credit or take back).
- `charge.refunded`: takes back the refunded share of what was *captured* (both API shapes:
  before `2025-03-31.basil` a released authorization reads as a refund and takes nothing).
  `charge.captured` is the same snapshot: from basil on it is the only event that tells a
  partial capture's captured amount, which every share is computed on.
- `charge.refund.updated`, `refund.updated`, `refund.failed`: a refund `failed` or
  `canceled` gives back what it took (`REFUND_REVERSAL`); other statuses are recorded.
- `charge.dispute.created` / `.funds_withdrawn`: take the disputed share (`DISPUTE`);
  `.closed` won and `.funds_reinstated` give it back (`DISPUTE_REVERSAL`); lost keeps it.
  Inquiries (`warning_*`) move nothing. Rules and limits: webhook_worker.worker.payments.
- A refund, refund failure or dispute before its purchase is `waiting` (no try spent);
  the sweeper wakes it once the purchase is in the ledger.
- `invoice.paid`: one `SUBSCRIPTION_CREDIT` per invoice, credits per line (rules:
  webhook_worker.worker.subscriptions); an invoice whose customer no user holds yet is `waiting`
  (`awaiting_customer`) until a `mode: subscription` Checkout Session, which credits
  nothing, links the customer. `invoice_payment.paid` (basil) links the payment intent
  that paid an invoice to its credit, so the charge's refunds and disputes find it.
- `credit_note.created` with a refund: takes back the refunded share of its invoice's
  credits on the invoice payment's state, the same money as that charge's
  `charge.refunded` (counted once: the larger of the two, never their sum); it waits
  (`awaiting_invoice_payment`) until the invoice is credited and linked to its payment.
- `payment_intent.succeeded` with `metadata.credits`: a purchase without Checkout, one
  PURCHASE per payment intent (a Checkout Session of the same payment intent credits
  nothing more).
- Every other type: `ignored` (`unhandled_type`).

What a session buys (`credits_for`): only a `mode: payment` session is a credits purchase
(a `mode: subscription` session links its customer instead).
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
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from webhook_worker.config import Settings
from webhook_worker.errors import PermanentError
from webhook_worker.money.checkout_pricing import (
    PAID_STATUSES,
    checked_credits,
    credits_for,
    metadata_credit_count,
    metadata_credits,
)
from webhook_worker.money.takebacks import dispute_held
from webhook_worker.worker import payments, resolver, scope, subscriptions
from webhook_worker.worker.money_store import InvoiceCredit, MoneyStore, Purchase

Status = Literal["completed", "ignored", "waiting"]
__all__ = ["PAID_STATUSES", "credits_for"]  # the pricing rules, webhook_worker.money


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
    action: str  # event_credited, event_debited, event_recorded, event_ignored, event_stale,
    # event_waiting
    recorded: bool = False  # the status was already written in the ledger transaction
    fields: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None  # why: stored in stripe_events.status_reason when not recorded


def ignored(reason: str, **fields: Any) -> Outcome:
    """The event is stored but moves no money; `reason` says why (see README, reasons)."""
    return Outcome("ignored", "event_ignored", fields=fields, reason=reason)


def handled(reason: str, **fields: Any) -> Outcome:
    """The event was handled and there was nothing to move (`completed`, with why)."""
    return Outcome("completed", "event_recorded", fields=fields, reason=reason)


@dataclass(frozen=True)
class HandlerContext:
    """What a handler works with: the settings and the money store (`MoneyStore`: Postgres
    in the service, memory in the unit tier). Built once per worker process."""

    settings: Settings
    money: MoneyStore


Handler = Callable[[HandlerContext, StoredEvent], Awaitable[Outcome]]


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
        user_id = await ctx.money.find_user(candidate)
        if user_id is not None:
            return resolver.Resolution(user_id, source)
    return await ctx.money.resolve_user(session)


async def _credit_session(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    session = event.data_object
    session_id = _text(session, "id")
    if session_id is None:
        raise PermanentError("checkout session has no id")
    credits = credits_for(session, ctx.settings)  # before resolving: a bad event makes no user
    if credits is None:
        return ignored("not_a_credit_purchase", mode=str(session.get("mode"))[:32])
    who = await _resolve(ctx, session)
    return await _credit_purchase(
        ctx,
        event,
        who,
        credits,
        session_id=session_id,
        payment_intent_id=_text(session, "payment_intent"),
        invoice_id=_text(session, "invoice"),
    )


async def _credit_purchase(
    ctx: HandlerContext,
    event: StoredEvent,
    who: resolver.Resolution,
    credits: int,
    *,
    session_id: str | None,
    payment_intent_id: str | None,
    invoice_id: str | None = None,
) -> Outcome:
    """One PURCHASE through the coalesced credit call, and the outcome it leads to. A session
    with a post-payment invoice (`invoice_creation`) records that invoice: its `invoice.paid`
    is the same payment and credits nothing more, whichever comes first."""
    reference = session_id or payment_intent_id
    result = await ctx.money.credit_purchase(
        Purchase(
            user_id=who.user_id,
            credits=credits,
            event_id=event.event_id,
            checkout_session_id=session_id,
            payment_intent_id=payment_intent_id,
            description=f"{event.type} {reference}",
            invoice_id=invoice_id,
        ),
    )
    fields: dict[str, Any] = {
        "user_id": who.user_id,
        "resolved_by": who.source,
        "user_created": who.created,
        "credits": credits if result.applied else 0,
        "balance": result.balance,
    }
    if session_id is not None:
        fields["checkout_session_id"] = session_id
    else:
        fields["payment_intent_id"] = payment_intent_id
    if result.applied:
        return Outcome("completed", "event_credited", recorded=True, fields=fields)
    return Outcome(
        "completed", "event_recorded", recorded=True, fields=fields, reason="already_credited"
    )


async def _link_subscription(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    """A `mode: subscription` session credits nothing: its first invoice's `invoice.paid`
    does (one source for the first period). It links the Stripe customer to the user
    (`stripe_customer_id`), so that invoices resolve by customer; waiting invoices of that
    customer are woken by the sweeper."""
    session = event.data_object
    customer = resolver.customer_id(session)
    fields: dict[str, Any] = {
        "checkout_session_id": _text(session, "id"),
        "customer": customer,
        "subscription": _text(session, "subscription"),
    }
    if customer is None:
        return ignored("no_customer_to_link", **fields)
    try:
        who = await ctx.money.resolve_user(session)
    except resolver.UserNotFound:
        return ignored("no_user_to_link", **fields)
    fields.update(user_id=who.user_id, resolved_by=who.source, user_created=who.created)
    return handled("subscription_linked", **fields)


async def handle_checkout_completed(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    if event.data_object.get("mode") == "subscription":
        return await _link_subscription(ctx, event)
    payment_status = event.data_object.get("payment_status")
    if payment_status not in PAID_STATUSES:
        # Delayed payment methods: the credit comes with async_payment_succeeded.
        return ignored("awaiting_payment", payment_status=str(payment_status)[:32])
    return await _credit_session(ctx, event)


async def handle_async_payment_succeeded(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    return await _credit_session(ctx, event)


async def handle_async_payment_failed(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    session_id = _text(event.data_object, "id")
    return handled("async_payment_failed", checkout_session_id=session_id)


# --- invoices (webhook_worker.worker.subscriptions has the rules) ---------------------------------

_INVOICE_USER_KEYS = ("user_id", "user_uuid")


async def _invoice_user(
    ctx: HandlerContext, invoice: Mapping[str, Any], customer: str | None
) -> resolver.Resolution | None:
    """The invoice's user: `metadata.user_id` / `user_uuid` of the subscription (copied
    onto the invoice), else the customer linked by `users.stripe_customer_id`. An invoice
    never creates a user (its e-mail is the customer's, not a user reference). None: no
    user yet."""
    metadata = subscriptions.subscription_metadata(invoice)
    reference: dict[str, Any] = {
        "metadata": {k: metadata[k] for k in _INVOICE_USER_KEYS if k in metadata},
        "customer": customer,
    }
    try:
        return await ctx.money.resolve_user(reference)
    except resolver.UserNotFound:
        return None


def _invoice_created(invoice: Mapping[str, Any], event: StoredEvent) -> datetime:
    created = invoice.get("created")
    if isinstance(created, int) and not isinstance(created, bool):
        return datetime.fromtimestamp(created, UTC)
    return _created(event)


async def handle_invoice_paid(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    """`invoice.paid`: one SUBSCRIPTION_CREDIT row per invoice; waits for an unlinked
    customer (`awaiting_customer`) until its subscription's Checkout Session links it."""
    invoice = event.data_object
    invoice_id = _text(invoice, "id")
    if invoice_id is None:
        raise PermanentError("invoice.paid invoice has no id")
    found = subscriptions.invoice_credits(
        invoice, ctx.settings.price_credits, ctx.settings.max_credits_per_event
    )
    fields: dict[str, Any] = {
        "invoice_id": invoice_id,
        "billing_reason": str(invoice.get("billing_reason"))[:40],
        "subscription": subscriptions.subscription_id(invoice),
    }
    if found.reason is not None:
        return ignored(found.reason, **fields)
    if invoice.get("billing_reason") == "manual" and await ctx.money.invoice_credited(invoice_id):
        # A Checkout Session's post-payment invoice its session credited: the same payment.
        return handled("already_credited", **fields)
    customer = resolver.customer_id(invoice)
    who = await _invoice_user(ctx, invoice, customer)
    if who is None:
        if customer is None:
            raise resolver.UserNotFound(
                "user_not_found: the invoice has no customer and its subscription metadata "
                "no user_id / user_uuid; set metadata.user_id on the subscription and replay"
            )
        await ctx.money.park(event.event_id, customer, "awaiting_customer")
        fields["customer"] = customer
        return Outcome(
            "waiting", "event_waiting", recorded=True, fields=fields, reason="awaiting_customer"
        )
    result = await ctx.money.credit_invoice(
        InvoiceCredit(
            user_id=who.user_id,
            credits=found.credits,
            event_id=event.event_id,
            invoice_id=invoice_id,
            payment_intent_id=_text(invoice, "payment_intent"),  # before basil only
            description=f"{event.type} {invoice_id}",
            subscription=subscriptions.subscription_id(invoice),
            invoice_created=_invoice_created(invoice, event),
            starts_period=invoice.get("billing_reason") != "subscription_update",
            expire=ctx.settings.subscription_credits_expire,
        )
    )
    fields.update(
        user_id=who.user_id,
        resolved_by=who.source,
        credits=found.credits if result.applied else 0,
        expired=result.expired,
        balance=result.balance,
    )
    if result.applied:
        return Outcome("completed", "event_credited", recorded=True, fields=fields)
    return Outcome(
        "completed", "event_recorded", recorded=True, fields=fields, reason="already_credited"
    )


async def handle_invoice_payment_paid(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    """`invoice_payment.paid` (from basil on, invoices name no payment intent): links the
    payment intent to the invoice's SUBSCRIPTION_CREDIT row, so that `charge.refunded` and
    disputes of its charge take back the invoice's share. Waits (`awaiting_invoice`) for an
    invoice not credited yet."""
    payment = event.data_object
    invoice_id = _text(payment, "invoice")
    details = payment.get("payment")
    intent = _text(details, "payment_intent") if isinstance(details, Mapping) else None
    fields: dict[str, Any] = {"invoice_id": invoice_id, "payment_intent_id": intent}
    if invoice_id is None or intent is None:
        return ignored("no_payment_intent", **fields)
    linked = await ctx.money.link_invoice_payment(invoice_id, intent)
    if linked is None:
        await ctx.money.park(event.event_id, invoice_id, "awaiting_invoice")
        return Outcome(
            "waiting", "event_waiting", recorded=True, fields=fields, reason="awaiting_invoice"
        )
    if linked != intent:
        fields["linked_payment_intent_id"] = linked
        return handled("invoice_already_linked", **fields)
    return handled("invoice_payment_linked", **fields)


async def handle_credit_note_created(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    """`credit_note.created` with a refund takes back the refunded share of its invoice's
    credits, as `charge.refunded` does and on the same payment state: the credit note's
    refunds and the charge's are the same money, counted once (webhook_worker.worker.payments).
    A credit note without a refund (a credit to the customer's balance, outside Stripe or
    before payment) moves nothing. One whose invoice is not credited, or from basil on not
    yet linked to its payment intent, waits (`awaiting_invoice_payment`)."""
    note = event.data_object
    note_id = _text(note, "id")
    invoice_id = _text(note, "invoice")
    if note_id is None:
        raise PermanentError("credit_note.created credit note has no id")
    fields: dict[str, Any] = {"credit_note_id": note_id, "invoice_id": invoice_id}
    found = subscriptions.credit_note_refunds(note)
    if found.reason is not None:
        return ignored(found.reason, **fields)
    if invoice_id is None:
        return ignored("no_invoice", **fields)
    intent = await ctx.money.invoice_payment_intent(invoice_id)
    if intent is None:
        await ctx.money.park(event.event_id, invoice_id, "awaiting_invoice_payment")
        return Outcome(
            "waiting",
            "event_waiting",
            recorded=True,
            fields=fields,
            reason="awaiting_invoice_payment",
        )
    change = payments.CreditNoteRefunds(intent, note_id, invoice_id, found.refunds)
    return await _apply_change(ctx, event, "refund", change, f"{event.type} {note_id}")


# --- payments without Checkout --------------------------------------------------------------


async def handle_payment_intent_succeeded(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    """A Payment Element (or API) payment with `metadata.credits` and a user reference
    credits like a Checkout purchase: a PURCHASE keyed on the payment intent (one per
    payment intent, migration 0016), so the Checkout Session of the same payment intent,
    whichever comes first, never credits it twice."""
    intent = event.data_object
    intent_id = _text(intent, "id")
    if intent_id is None:
        raise PermanentError("payment_intent.succeeded payment intent has no id")
    if _text(intent, "invoice") is not None:
        return ignored("invoice_payment", payment_intent_id=intent_id)  # invoice.paid credits
    raw = metadata_credits(intent)
    if raw is None:
        return ignored("not_a_credit_purchase", payment_intent_id=intent_id)
    credits = checked_credits(metadata_credit_count(raw, "PaymentIntent"), "payment", ctx.settings)
    who = await _resolve(ctx, intent)
    return await _credit_purchase(
        ctx, event, who, credits, session_id=None, payment_intent_id=intent_id
    )


# --- refunds, refund failures, disputes (webhook_worker.worker.payments has the rules) -----------

BASIL = "2025-03-31"  # from this API version on, releasing an authorization is no refund
FAILED_REFUND_STATUSES = frozenset({"failed", "canceled"})


def _int(obj: Mapping[str, Any], key: str, what: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PermanentError(f"{what} without a non-negative integer {key}")
    return value


def _created(event: StoredEvent) -> datetime:
    created = event.payload.get("created")
    if isinstance(created, bool) or not isinstance(created, int):
        raise PermanentError(f"{event.type} event has no integer created")
    return datetime.fromtimestamp(created, UTC)


def is_basil_or_later(api_version: object) -> bool:
    """`2025-03-31.basil` and later: partial captures and cancelled authorizations no
    longer create a Refund nor raise `amount_refunded`. Unknown versions are read as
    earlier: the reading that never takes back credits for money that was not refunded."""
    return isinstance(api_version, str) and api_version[:10] >= BASIL


def charge_snapshot(charge: Mapping[str, Any], api_version: object) -> tuple[int, int]:
    """(captured, net refunded of the captured amount) from a charge object, both shapes.

    Before basil a partial capture or a cancelled authorization releases the uncaptured
    remainder as a refund: `amount_refunded` holds `amount - amount_captured` that was never
    paid, and `captured: false` with `refunded: true` is an authorization released whole.
    From basil on `amount_refunded` counts real refunds only.
    """
    amount = _int(charge, "amount", "charge")
    refunded = _int(charge, "amount_refunded", "charge")
    raw_captured = charge.get("amount_captured")
    if charge.get("captured") is False:
        captured = 0
    elif isinstance(raw_captured, int) and not isinstance(raw_captured, bool):
        captured = min(max(raw_captured, 0), amount)
    else:
        captured = amount  # API versions before amount_captured: a captured charge, in full
    if not is_basil_or_later(api_version):
        refunded -= amount - captured
    return captured, min(max(refunded, 0), captured)


def _applied_outcome(result: payments.Applied | None, pi: str) -> Outcome:
    if result is None:
        return Outcome(
            "waiting",
            "event_waiting",
            recorded=True,
            fields={"payment_intent_id": pi},
            reason="awaiting_purchase",
        )
    fields: dict[str, Any] = {
        "user_id": result.user_id,
        "transaction_type": result.transaction_type,
        "credits": result.amount,
        "shortfall": result.shortfall,
        "balance": result.balance,
        "payment_intent_id": pi,
    }
    if not result.advanced:
        # Stripe does not order deliveries: an older state never undoes a newer one.
        return Outcome(
            "completed", "event_stale", recorded=True, fields=fields, reason="stale_event"
        )
    if result.amount < 0:
        return Outcome("completed", "event_debited", recorded=True, fields=fields)
    if result.amount > 0:
        return Outcome("completed", "event_credited", recorded=True, fields=fields)
    return Outcome("completed", "event_recorded", recorded=True, fields=fields)


async def _apply_change(
    ctx: HandlerContext,
    event: StoredEvent,
    family: payments.Family,
    change: payments.Change,
    description: str,
) -> Outcome:
    pi = change.payment_intent_id
    result = await ctx.money.apply_payment_change(event.event_id, family, change, description)
    if result is None:
        await ctx.money.park(event.event_id, pi, "awaiting_purchase")
    return _applied_outcome(result, pi)


async def handle_charge_refunded(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    charge = event.data_object
    payment_intent = _text(charge, "payment_intent")
    if payment_intent is None:
        return ignored("no_payment_intent")
    created = _created(event)
    captured, refunded = charge_snapshot(charge, event.payload.get("api_version"))
    change = payments.ChargeSnapshot(payment_intent, captured, refunded, created)
    description = f"{event.type} {_text(charge, 'id') or ''}".strip()
    return await _apply_change(ctx, event, "refund", change, description)


def _payment_and_own_id(
    event: StoredEvent, obj: Mapping[str, Any], kind: str
) -> tuple[str, str] | None:
    """(payment intent, the object's own id) of a refund or dispute; None when it belongs to
    no payment intent (nothing of ours to move). An object without an id is malformed."""
    payment_intent = _text(obj, "payment_intent")
    if payment_intent is None:
        return None
    own_id = _text(obj, "id")
    if own_id is None:
        raise PermanentError(f"{event.type} {kind} has no id")
    return payment_intent, own_id


async def handle_refund_updated(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    """`charge.refund.updated`, `refund.updated`, `refund.failed`: only a refund that failed
    or was canceled moves money (it gives back what it took)."""
    refund = event.data_object
    status = refund.get("status")
    if status not in FAILED_REFUND_STATUSES:
        return handled("refund_not_failed", refund_status=str(status)[:32])
    ids = _payment_and_own_id(event, refund, "refund")
    if ids is None:
        return ignored("no_payment_intent")
    payment_intent, refund_id = ids
    amount = _int(refund, "amount", "refund")
    if amount == 0:
        return handled("refund_of_nothing")
    refund_created = refund.get("created")
    change = payments.RefundFailure(
        payment_intent_id=payment_intent,
        refund_id=refund_id,
        amount=amount,
        status=str(status),
        refund_created=(
            datetime.fromtimestamp(refund_created, UTC)
            if isinstance(refund_created, int) and not isinstance(refund_created, bool)
            else None
        ),
        failed_at=_created(event),
    )
    return await _apply_change(ctx, event, "refund", change, f"{event.type} {refund_id}")


def dispute_stage(event_type: str, status: str) -> int | None:
    """The stage an event puts its dispute at; None for inquiries, which move no money."""
    if event_type == "charge.dispute.funds_reinstated":
        return payments.STAGE_REINSTATED
    if event_type == "charge.dispute.closed":
        return payments.STAGE_CLOSED
    if status.startswith("warning_"):
        return None  # an inquiry: no funds are withdrawn unless it becomes a chargeback
    return payments.STAGE_OPEN


async def handle_dispute(ctx: HandlerContext, event: StoredEvent) -> Outcome:
    """`charge.dispute.created` / `.funds_withdrawn` take the disputed share, `.closed` won
    or `.funds_reinstated` give it back, `.closed` lost changes nothing more."""
    dispute = event.data_object
    status = str(dispute.get("status") or "")
    stage = dispute_stage(event.type, status)
    if stage is None:
        return handled("dispute_inquiry", dispute_status=status[:32])
    ids = _payment_and_own_id(event, dispute, "dispute")
    if ids is None:
        return ignored("no_payment_intent")
    payment_intent, dispute_id = ids
    change = payments.DisputeStage(
        payment_intent_id=payment_intent,
        dispute_id=dispute_id,
        amount=dispute_held(dispute, _int(dispute, "amount", "dispute")),
        stage=stage,
        status=status[:32],
    )
    return await _apply_change(ctx, event, "dispute", change, f"{event.type} {dispute_id}")


HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": handle_checkout_completed,
    "checkout.session.async_payment_succeeded": handle_async_payment_succeeded,
    "checkout.session.async_payment_failed": handle_async_payment_failed,
    "charge.refunded": handle_charge_refunded,
    "charge.captured": handle_charge_refunded,
    "charge.refund.updated": handle_refund_updated,
    "refund.updated": handle_refund_updated,
    "refund.failed": handle_refund_updated,
    "charge.dispute.created": handle_dispute,
    "charge.dispute.funds_withdrawn": handle_dispute,
    "charge.dispute.closed": handle_dispute,
    "charge.dispute.funds_reinstated": handle_dispute,
    "invoice.paid": handle_invoice_paid,
    "invoice_payment.paid": handle_invoice_payment_paid,
    "credit_note.created": handle_credit_note_created,
    "payment_intent.succeeded": handle_payment_intent_succeeded,
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
