"""What a paid invoice credits, line by line, and what a credit note refunds (both API
shapes). Pure.

`invoice.paid` credits the sum of its lines' credits. Each line takes the first rule that
applies:

1. `PRICE_CREDITS` (Stripe price id → credits per unit) for the line's price: before
   `2025-03-31.basil` the line embeds `price` (an object, or an id); from basil on the line
   names it only as `pricing.price_details.price` (with `pricing.type: price_details`).
   Per unit: times the line's `quantity`.
2. The line's own `metadata.credits` (Stripe copies a subscription's metadata onto its
   lines): the credits of the whole line, NOT multiplied by the quantity (subscription
   metadata describes the subscription, whatever its quantity).
3. The embedded `price.metadata.credits` (versions before basil; basil lines carry no price
   object). Per unit: times `quantity`.

A line with `amount` 0 or below (a trial period, a free line) credits nothing. Proration
lines (`proration: true` before basil, `parent.subscription_item_details.proration` from
basil on; an upgrade's invoice, `billing_reason: subscription_update`) credit their rule's
credits times the share of the full period's price they charge, `amount / (unit amount x
quantity)`: the unused time of the old plan counts negative, the remaining time of the new
plan positive, and the invoice credits the net difference, computed exactly and rounded
down once. A net of zero or below (a downgrade, whose unused time Stripe keeps as customer
balance) credits nothing and takes nothing back. An invoice whose lines have no rule is
`ignored` (`no_credits_rule`), one whose ruled lines charge nothing `ignored`
(`nothing_charged`). The total is capped by `MAX_CREDITS_PER_EVENT` like a purchase.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from webhook_worker.errors import PermanentError
from webhook_worker.money.amounts import positive_int


def _get(obj: object, *path: str) -> object:
    node = obj
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def _id(raw: object) -> str | None:
    if isinstance(raw, Mapping):  # an expanded object
        raw = raw.get("id")
    return raw.strip() if isinstance(raw, str) and raw.strip() else None


def lines(invoice: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The invoice's line items as delivered (`lines.data`)."""
    data = _get(invoice, "lines", "data")
    if not isinstance(data, list):
        raise PermanentError("invoice has no lines.data list")
    if _get(invoice, "lines", "has_more") is True:
        # A webhook carries the first lines only; crediting part of an invoice is wrong.
        raise PermanentError(
            "invoice has more lines than the event carries (lines.has_more); "
            "nothing was credited. Credit it by hand with an ADJUSTMENT row"
        )
    return [line for line in data if isinstance(line, Mapping)]


def line_price_id(line: Mapping[str, Any]) -> str | None:
    """The line's price id in both shapes: `price` before basil, `pricing` from basil on."""
    basil = _get(line, "pricing", "price_details", "price")
    return _id(basil) or _id(line.get("price"))


def is_proration(line: Mapping[str, Any]) -> bool:
    return (
        line.get("proration") is True
        or _get(line, "parent", "subscription_item_details", "proration") is True
        or _get(line, "parent", "invoice_item_details", "proration") is True
    )


def _quantity(line: Mapping[str, Any]) -> int:
    quantity = line.get("quantity")
    if quantity is None:
        return 1
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
        raise PermanentError(f"invoice line {_id(line.get('id'))} has no integer quantity")
    return quantity


def _metadata_credits(node: object, where: str) -> int | None:
    raw = _get(node, "metadata", "credits")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    credits = positive_int(raw)
    if credits is None:
        raise PermanentError(
            f"{where} metadata.credits={str(raw)[:40]!r} is not a positive integer; fix the "
            "metadata (or map the price in PRICE_CREDITS) and replay"
        )
    return credits


@dataclass(frozen=True)
class LineCredit:
    line_id: str | None
    rule: str  # price_credits | line_metadata | price_metadata
    credits: int
    prorated: bool = False


def line_credits(line: Mapping[str, Any], price_credits: Mapping[str, int]) -> LineCredit | None:
    """The credits one line buys by the first rule that applies; None when none does."""
    line_id = _id(line.get("id"))
    price_id = line_price_id(line)
    per_unit = price_credits.get(price_id) if price_id else None
    if per_unit is not None:
        return LineCredit(line_id, "price_credits", per_unit * _quantity(line))
    own = _metadata_credits(line, f"invoice line {line_id}")
    if own is not None:
        return LineCredit(line_id, "line_metadata", own)
    price = line.get("price")
    if isinstance(price, Mapping):
        per_unit = _metadata_credits(price, f"price {price_id}")
        if per_unit is not None:
            return LineCredit(line_id, "price_metadata", per_unit * _quantity(line))
    return None


def _amount(line: Mapping[str, Any]) -> int:
    amount = line.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise PermanentError(f"invoice line {_id(line.get('id'))} has no integer amount")
    return amount


def unit_amount(line: Mapping[str, Any]) -> Fraction | None:
    """The price's unit amount in minor units: `price.unit_amount(_decimal)` before basil,
    `pricing.unit_amount_decimal` from basil on."""
    for raw in (
        _get(line, "pricing", "unit_amount_decimal"),
        _get(line, "price", "unit_amount_decimal"),
        _get(line, "price", "unit_amount"),
    ):
        if isinstance(raw, int) and not isinstance(raw, bool):
            return Fraction(raw)
        if isinstance(raw, str):
            try:
                return Fraction(Decimal(raw.strip()))
            except (InvalidOperation, ValueError):
                continue
    return None


def _prorated(line: Mapping[str, Any], credit: LineCredit) -> Fraction:
    """A proration line's share of its rule's credits: the share of the full period's price
    it charges (negative for unused time given back)."""
    unit = unit_amount(line)
    full = unit * _quantity(line) if unit is not None else None
    if full is None or full <= 0:
        raise PermanentError(
            f"proration line {credit.line_id} has no unit amount to prorate its credits by; "
            "nothing was credited. Credit the upgrade by hand with an ADJUSTMENT row"
        )
    return Fraction(credit.credits * _amount(line)) / full


@dataclass(frozen=True)
class InvoiceCredits:
    credits: int  # 0: nothing to credit, `reason` says why
    reason: str | None
    lines: tuple[LineCredit, ...]


def invoice_credits(
    invoice: Mapping[str, Any], price_credits: Mapping[str, int], max_credits: int
) -> InvoiceCredits:
    """The credits a paid invoice buys, line by line (see the module docstring)."""
    ruled: list[LineCredit] = []
    exact = Fraction(0)
    any_rule = False
    for line in lines(invoice):
        credit = line_credits(line, price_credits)
        if credit is None:
            continue
        any_rule = True
        if is_proration(line):
            share = _prorated(line, credit)
            credit = LineCredit(credit.line_id, credit.rule, math.trunc(share), prorated=True)
        elif _amount(line) > 0:
            share = Fraction(credit.credits)
        else:
            continue  # a trial or free line: nothing charged, nothing credited
        exact += share
        ruled.append(credit)
    if not any_rule:
        return InvoiceCredits(0, "no_credits_rule", ())
    total = math.floor(exact)  # an upgrade's lines net out; rounded down once, at the end
    if total <= 0:
        return InvoiceCredits(0, "nothing_charged", tuple(ruled))
    if total > max_credits:
        raise PermanentError(
            f"the invoice would credit {total} credits, above MAX_CREDITS_PER_EVENT="
            f"{max_credits}; nothing was credited. Raise MAX_CREDITS_PER_EVENT if this "
            "invoice is genuine, then replay"
        )
    return InvoiceCredits(total, None, tuple(ruled))


def subscription_metadata(invoice: Mapping[str, Any]) -> Mapping[str, Any]:
    """The subscription's metadata copied onto the invoice: `subscription_details` before
    basil, `parent.subscription_details` from basil on."""
    for path in (("parent", "subscription_details"), ("subscription_details",)):
        metadata = _get(invoice, *path, "metadata")
        if isinstance(metadata, Mapping):
            return metadata
    return {}


def subscription_id(invoice: Mapping[str, Any]) -> str | None:
    return _id(_get(invoice, "parent", "subscription_details", "subscription")) or _id(
        invoice.get("subscription")
    )


def unspent(amount: int, balance_after: int, added: int, expired: int, balance: int) -> int:
    """What is left of a period's `amount` credits, credited at `balance_after`: since then
    `added` credits came in, `expired` (<= 0) expired and the balance is `balance`; the rest
    of the fall was spent, and spending counts against the period's credits first. Never
    more than the balance."""
    spent = max(0, balance_after + added + expired - balance)
    return max(0, min(amount - spent, balance))


@dataclass(frozen=True)
class NoteRefunds:
    refunds: tuple[tuple[str, int], ...]  # (refund id, the part of it this note refunds)
    reason: str | None  # no refunds: why (`no_refund`, `refund_amount_unknown`)


def credit_note_refunds(note: Mapping[str, Any]) -> NoteRefunds:
    """The Stripe refunds a credit note makes, in both shapes.

    From `2025-03-31.basil` on, `refunds` lists `{refund, amount_refunded}` (a refund may be
    split across credit notes; entries of `type: payment_record_refund` refund a payment
    recorded outside Stripe, have no Stripe refund and are not counted). Before basil,
    `refund` names one refund and no amount: it is the note's `amount` less
    `out_of_band_amount` when nothing went to the customer's balance
    (`customer_balance_transaction` null) and the note is all `post_payment`; otherwise it
    cannot be told (`refund_amount_unknown`) and the refund's own `charge.refunded`, which
    before basil always finds the invoice by its payment intent, takes the share back.
    """
    refunds: dict[str, int] = {}
    listed = note.get("refunds")
    if isinstance(listed, list):
        for entry in listed:
            refund_id = _id(_get(entry, "refund"))
            if refund_id is None or _get(entry, "type") == "payment_record_refund":
                continue
            amount = _get(entry, "amount_refunded")
            if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
                raise PermanentError(f"credit note refund {refund_id} has no integer amount")
            if amount:
                refunds[refund_id] = refunds.get(refund_id, 0) + amount
        reason = None if refunds else "no_refund"
        return NoteRefunds(tuple(refunds.items()), reason)
    refund_id = _id(note.get("refund"))
    if refund_id is None:
        return NoteRefunds((), "no_refund")
    amount = note.get("amount")
    out_of_band = note.get("out_of_band_amount") or 0
    if (
        note.get("customer_balance_transaction") is not None
        or note.get("type") not in (None, "post_payment")
        or isinstance(amount, bool)
        or not isinstance(amount, int)
        or isinstance(out_of_band, bool)
        or not isinstance(out_of_band, int)
        or amount - out_of_band <= 0
    ):
        return NoteRefunds((), "refund_amount_unknown")
    return NoteRefunds(((refund_id, amount - out_of_band),), None)
