"""What a Checkout Session (or a payment intent) buys, in credits.

Only a `mode: payment` session is a credits purchase (a `mode: subscription` session links
its customer; its invoices credit). `metadata.credits` (a positive integer) comes first;
else, when a credit price is configured (`CREDIT_PRICES`, or `CENTS_PER_CREDIT` for usd),
what the merchant sold divided by the price of one credit in the merchant's currency,
rounded down:

- what the merchant sold is `amount_total` less the tax added on top of the prices and
  less shipping (`total_details`). A tax included in the prices stays in (the price of a
  credit is then tax-inclusive too). The tax added on top is what `amount_total` holds
  beyond `amount_subtotal - amount_discount + amount_shipping`, at most `amount_tax`;
  without `amount_subtotal` all of `amount_tax` is taken as added on top (fewer credits,
  never more).
- the merchant's currency: from `2025-03-31.basil` on a session's `currency` and amounts
  are the merchant's, and Adaptive Pricing puts what the customer paid in
  `presentment_details`. Before basil `currency` is the customer's and
  `currency_conversion` holds the merchant's `source_currency` and `amount_total`: the
  amount sold is converted by that ratio, rounded down.

A session with neither rule, another mode or nothing paid is not a credits purchase (None);
a paid session in a currency without a price, or above `MAX_CREDITS_PER_EVENT`, raises
`PermanentError` naming the variable to set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from webhook_worker.errors import PermanentError
from webhook_worker.money.amounts import positive_int

PAID_STATUSES = frozenset({"paid", "no_payment_required"})


class Pricing(Protocol):
    """The settings the rule reads (`config.Settings` has them)."""

    @property
    def credit_prices(self) -> Mapping[str, int]: ...

    @property
    def max_credits_per_event(self) -> int: ...


def metadata_credits(obj: Mapping[str, Any]) -> object | None:
    """The raw `metadata.credits` of a session or payment intent; None when absent/blank."""
    metadata = obj.get("metadata")
    raw: object = metadata.get("credits") if isinstance(metadata, Mapping) else None
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    return raw


def _minor(obj: Mapping[str, Any] | None, key: str) -> int:
    value = obj.get(key) if obj is not None else None
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return value


def sold_amount(session: Mapping[str, Any], amount_total: int) -> int:
    """`amount_total` less the tax added on top and shipping (see the module doc)."""
    raw = session.get("total_details")
    details = raw if isinstance(raw, Mapping) else None
    tax, shipping = _minor(details, "amount_tax"), _minor(details, "amount_shipping")
    subtotal = session.get("amount_subtotal")
    if isinstance(subtotal, int) and not isinstance(subtotal, bool):
        expected = subtotal - _minor(details, "amount_discount") + shipping
        on_top = min(max(amount_total - expected, 0), tax)
    else:
        on_top = tax
    return amount_total - on_top - shipping


def _merchant_amount(session: Mapping[str, Any], sold: int) -> tuple[int, object]:
    """(amount sold, currency) in the merchant's currency (pre-basil `currency_conversion`)."""
    conversion = session.get("currency_conversion")
    if isinstance(conversion, Mapping):
        source_total = conversion.get("amount_total")
        total = session.get("amount_total")
        if (
            isinstance(source_total, int)
            and not isinstance(source_total, bool)
            and isinstance(total, int)
            and total > 0
        ):
            return sold * source_total // total, conversion.get("source_currency")
    return sold, session.get("currency")


def _credits_by_amount(session: Mapping[str, Any], pricing: Pricing) -> int | None:
    amount_total = session.get("amount_total")
    if isinstance(amount_total, bool) or not isinstance(amount_total, int):
        raise PermanentError("no credits amount: amount_total is missing or not an integer")
    if amount_total == 0:
        return None  # nothing was paid (a free or fully discounted session, a trial)
    sold, currency = _merchant_amount(session, sold_amount(session, amount_total))
    code = currency.lower() if isinstance(currency, str) else ""
    price = pricing.credit_prices.get(code)
    if price is None:
        priced = ",".join(f"{c}:{p}" for c, p in sorted(pricing.credit_prices.items()))
        raise PermanentError(
            f"no credit price for currency {str(currency)[:8]!r}: set its price in minor "
            f"units, e.g. CREDIT_PRICES={priced},{code or 'xxx'}:<minor units per credit>, "
            "or put metadata.credits on the Checkout Session; then replay"
        )
    credits = max(sold, 0) // price
    if credits <= 0:
        raise PermanentError(
            f"no credits amount: {sold} {code} sold (amount_total {amount_total} less tax "
            f"added on top and shipping) is below the price of one credit ({price} {code})"
        )
    return credits


def checked_credits(credits: int, what: str, pricing: Pricing) -> int:
    """`credits`, or PermanentError above `MAX_CREDITS_PER_EVENT`."""
    if credits > pricing.max_credits_per_event:
        raise PermanentError(
            f"the {what} would credit {credits} credits, above MAX_CREDITS_PER_EVENT="
            f"{pricing.max_credits_per_event}; nothing was credited. Raise "
            "MAX_CREDITS_PER_EVENT if this purchase is genuine, then replay"
        )
    return credits


def metadata_credit_count(raw: object, what: str) -> int:
    """A `metadata.credits` value as a positive integer, or PermanentError naming it."""
    credits = positive_int(raw)
    if credits is None:
        raise PermanentError(
            f"metadata.credits={str(raw)[:40]!r} is not a positive integer; "
            f"fix the {what} metadata and replay"
        )
    return credits


def credits_for(session: Mapping[str, Any], pricing: Pricing) -> int | None:
    """The credits a checkout session buys; None when it is not a credits purchase.

    Raises PermanentError when it is one but the amount cannot be told (a bad
    `metadata.credits`, an unpriced currency) or is above `MAX_CREDITS_PER_EVENT`.
    """
    mode = session.get("mode")
    if mode is not None and mode != "payment":
        return None  # subscriptions and setup sessions are not one-off credits purchases
    raw = metadata_credits(session)
    if raw is not None:
        credits = metadata_credit_count(raw, "Checkout Session")
    elif pricing.credit_prices:
        by_amount = _credits_by_amount(session, pricing)
        if by_amount is None:
            return None
        credits = by_amount
    else:
        return None  # no credits rule applies: not a credits purchase
    return checked_credits(credits, "session", pricing)
