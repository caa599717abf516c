"""The money invariants, checked after every reliability scenario by one shared checker.

1. Every user's credits_balance equals the sum of its credit_transactions.amount.
2. At most one ledger row per event, and one PURCHASE per checkout session.
3. No balance below zero.
4. Every accepted event ends completed, ignored or failed.
5. Total credits granted equals the credits of the accepted, paid, resolvable events sent.
6. (money flows) Each payment's credits taken back, net of reversals and counting what
   could not be taken, equal what Stripe's final state of that payment says.
"""

from __future__ import annotations

from collections.abc import Mapping

import asyncpg

_BALANCE_MISMATCHES = """
SELECT u.id, u.credits_balance, COALESCE(sum(t.amount), 0) AS ledger
FROM users u LEFT JOIN credit_transactions t ON t.user_id = u.id
GROUP BY u.id, u.credits_balance
HAVING u.credits_balance <> COALESCE(sum(t.amount), 0)
"""
_DOUBLE_EVENTS = """
SELECT event_id FROM credit_transactions WHERE event_id IS NOT NULL
GROUP BY event_id HAVING count(*) > 1
"""
_DOUBLE_PURCHASES = """
SELECT checkout_session_id FROM credit_transactions
WHERE transaction_type = 'PURCHASE' AND checkout_session_id IS NOT NULL
GROUP BY checkout_session_id HAVING count(*) > 1
"""
_NEGATIVE = "SELECT id FROM users WHERE credits_balance < 0"
_UNFINISHED = """
SELECT event_id, processing_status FROM stripe_events
WHERE processing_status NOT IN ('completed', 'ignored', 'failed')
"""
_PURCHASED_BY_SESSION = """
SELECT checkout_session_id, amount FROM credit_transactions WHERE transaction_type = 'PURCHASE'
"""


_TAKEN_BY_PAYMENT = """
SELECT t.payment_intent_id, -sum(t.amount) + COALESCE(max(s.shortfall), 0) AS taken
FROM credit_transactions t
LEFT JOIN payment_states s ON s.payment_intent_id = t.payment_intent_id
WHERE t.transaction_type IN ('REFUND', 'REFUND_REVERSAL', 'DISPUTE', 'DISPUTE_REVERSAL')
GROUP BY t.payment_intent_id
"""


async def check_payment_targets(conn: asyncpg.Connection, targets: Mapping[str, int]) -> None:
    """Invariant 6: `targets` maps payment intent -> credits Stripe's final state takes back
    (refunded share + disputes not won); payments not in it must have taken nothing."""
    taken = {
        row["payment_intent_id"]: int(row["taken"]) for row in await conn.fetch(_TAKEN_BY_PAYMENT)
    }
    wrong = {
        pi: (taken.get(pi, 0), want) for pi, want in targets.items() if taken.get(pi, 0) != want
    }
    wrong.update({pi: (got, 0) for pi, got in taken.items() if pi not in targets and got})
    assert not wrong, (
        f"invariant 6: {len(wrong)} payments took back other than Stripe's final state says "
        f"(taken, expected): {list(wrong.items())[:5]}"
    )


async def unfinished_events(conn: asyncpg.Connection) -> list[str]:
    return [row["event_id"] for row in await conn.fetch(_UNFINISHED)]


async def check_invariants(
    conn: asyncpg.Connection,
    *,
    expected_purchases: Mapping[str, int] | None = None,
    require_final: bool = True,
) -> None:
    """Raise AssertionError naming the first broken invariant.

    `expected_purchases` maps checkout session id → credits for every accepted, paid,
    resolvable purchase sent; the ledger's PURCHASE rows must match it exactly.
    """
    mismatched = await conn.fetch(_BALANCE_MISMATCHES)
    assert not mismatched, f"invariant 1: balances differ from ledger sums: {mismatched[:5]}"
    doubled = await conn.fetch(_DOUBLE_EVENTS)
    assert not doubled, f"invariant 2: events with several ledger rows: {doubled[:5]}"
    double_purchases = await conn.fetch(_DOUBLE_PURCHASES)
    assert not double_purchases, f"invariant 2: sessions credited twice: {double_purchases[:5]}"
    negative = await conn.fetch(_NEGATIVE)
    assert not negative, f"invariant 3: negative balances: {negative[:5]}"
    if require_final:
        unfinished = await conn.fetch(_UNFINISHED)
        assert not unfinished, f"invariant 4: events not final: {unfinished[:5]}"
    if expected_purchases is not None:
        purchased = {
            row["checkout_session_id"]: row["amount"]
            for row in await conn.fetch(_PURCHASED_BY_SESSION)
        }
        missing = {k: v for k, v in expected_purchases.items() if purchased.get(k) != v}
        extra = set(purchased) - set(expected_purchases)
        assert not missing and not extra, (
            f"invariant 5: {len(missing)} purchases missing or wrong, {len(extra)} unexpected; "
            f"granted {sum(purchased.values())}, expected {sum(expected_purchases.values())}"
        )
