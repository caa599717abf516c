"""The money rules, pure: plain facts in (what Stripe said, what the ledger holds), decisions
out. No I/O here: an import-linter contract forbids asyncpg, arq, redis, `db` and every room
(pyproject.toml). The worker's handlers read Stripe's objects with these rules and the
money store applies the decisions; docs/stripe.md states the rules in words.

- `amounts`: integers as Stripe's payloads and metadata carry them.
- `checkout_pricing`: what a Checkout Session buys (credits by metadata or by amount, on
  what the merchant sold: no tax added on top, no shipping, the merchant's currency).
- `takebacks`: what a payment's refunds and disputes take back (shares, dispute holds,
  the captured amount in the currency the customer paid).
"""

from __future__ import annotations

UserId = int | str  # the host's user key: an integer key as int; uuid and text keys as text
