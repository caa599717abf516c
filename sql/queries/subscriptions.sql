-- Recurring credits (webhook_worker/subscriptions.py). Runs inside one explicit transaction
-- that holds the user's lock (ledger_lock_user).

-- name: subscription_credit_apply
-- ledger_apply with the invoice: ON CONFLICT DO NOTHING covers the unique event_id and one
-- SUBSCRIPTION_CREDIT per invoice (migration 0016); a repeat inserts nothing, the UPDATE
-- touches no row and no row comes back. The UPDATE's own result is returned beside
-- balance_after so the caller can prove nobody moved the balance without the lock.
WITH inserted AS (
    INSERT INTO credit_transactions
        (user_id, amount, balance_after, transaction_type, event_id, invoice_id,
         payment_intent_id, description)
    SELECT u.id, $2::bigint, u.credits_balance + $2::bigint, 'SUBSCRIPTION_CREDIT', $3, $4,
           $5, $6
    FROM users u
    WHERE u.id = $1
    ON CONFLICT DO NOTHING
    RETURNING balance_after
), moved AS (
    UPDATE users
    SET credits_balance = credits_balance + $2::bigint, updated_at = now()
    WHERE id = $1 AND EXISTS (SELECT 1 FROM inserted)
    RETURNING credits_balance
)
SELECT inserted.balance_after, moved.credits_balance FROM inserted, moved;
