-- The ledger (webhook_worker/ledger.py). Every statement here runs inside one explicit
-- transaction that holds pg_advisory_xact_lock(namespace, user) for the user concerned,
-- except ledger_credit, which is that whole transaction in one autocommit statement.

-- name: ledger_credit
-- Lock, ledger row, balance and the event's `completed` mark in one server-side call
-- (function ledger_credit, sql/migrations/0005_ledger_functions.sql): one round trip, and
-- the user's lock is held only inside the server. Returns (applied, balance).
SELECT applied, balance FROM ledger_credit($1, $2, $3, $4, $5, $6, $7);

-- name: ledger_credit_many
-- Many purchases, one call, one commit (function ledger_credit_many, migration 0006), each
-- with ledger_credit's semantics. One row per purchase: (credited_event_id, applied, balance).
-- $1 is left untyped: it takes the key type of the one ledger_credit_many the database has
-- (bigint[], uuid[] or text[], migration 0008).
SELECT credited_event_id, applied, balance
FROM ledger_credit_many($1, $2::bigint[], $3::text[], $4::text[], $5::text[],
                        $6::text[], $7::text[], $8::int);

-- name: ledger_credit_collect
-- SHORTFALL_POLICY=collect: ledger_credit, then the user's shortfall paid in the same
-- transaction (migration 0025).
SELECT applied, balance FROM ledger_credit_collect($1, $2, $3, $4, $5, $6, $7);

-- name: ledger_credit_many_collect
-- SHORTFALL_POLICY=collect: ledger_credit_many, then each credited user's shortfall paid in the
-- same call and commit (migration 0025).
SELECT credited_event_id, applied, balance
FROM ledger_credit_many_collect($1, $2::bigint[], $3::text[], $4::text[], $5::text[],
                                $6::text[], $7::text[], $8::int);

-- name: ledger_lock_user
-- The key computed by the server (ledger_lock_key of the host's key type, 0005/0008), the
-- same function ledger_credit locks with.
SELECT pg_advisory_xact_lock($1::int, ledger_lock_key($2));

-- name: ledger_apply
-- One round trip under the lock: the ledger row and the balance move together. Every row
-- written outside ledger_credit goes through here: refunds, disputes and their reversals,
-- an invoice's SUBSCRIPTION_CREDIT ($8 invoice, $9 subscription, $10 invoice created, $11
-- period start) and EXPIRY (no event of its own: $4 NULL).
-- ON CONFLICT DO NOTHING covers the unique event_id, one PURCHASE per session and one
-- SUBSCRIPTION_CREDIT / EXPIRY per invoice (0016): a repeat inserts nothing, the UPDATE then
-- touches no row, and no row comes back.
-- balance_after is computed from the balance read under the lock; the UPDATE's own result
-- is returned beside it so the caller can prove nobody moved the balance without the lock.
WITH inserted AS (
    INSERT INTO credit_transactions
        (user_id, amount, balance_after, transaction_type, event_id, checkout_session_id,
         payment_intent_id, description, invoice_id, subscription_id, invoice_created,
         period_start)
    SELECT u.id, $2::bigint, u.credits_balance + $2::bigint, $3, $4, $5, $6, $7, $8, $9,
           $10::timestamptz, $11::timestamptz
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

-- name: ledger_user_balance
SELECT credits_balance FROM users WHERE id = $1;

-- name: ledger_insert_shortfall
INSERT INTO refund_shortfalls (event_id, user_id, payment_intent_id, credits)
VALUES ($1, $2, $3, $4)
ON CONFLICT (event_id) DO NOTHING;
