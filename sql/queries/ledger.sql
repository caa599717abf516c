-- The ledger (webhook_worker/ledger.py). Every statement here runs inside one explicit
-- transaction that holds pg_advisory_xact_lock(namespace, user) for the user concerned,
-- except ledger_credit, which is that whole transaction in one autocommit statement.

-- name: ledger_credit
-- Lock, ledger row, balance and the event's `completed` mark in one server-side call
-- (function ledger_credit, sql/functions/ledger.sql): one round trip, and
-- the user's lock is held only inside the server. Returns (applied, balance).
SELECT applied, balance FROM ledger_credit($1, $2, $3, $4, $5, $6, $7);

-- name: ledger_credit_many
-- Many purchases, one call, one commit (function ledger_credit_many, sql/functions/ledger.sql), each
-- with ledger_credit's semantics. One row per purchase: (credited_event_id, applied, balance).
-- $1 is left untyped: it takes the key type of the one ledger_credit_many the database has
-- (bigint[], uuid[] or text[]).
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
-- The key computed by the server (ledger_lock_key of the host's key type), the
-- same function ledger_credit locks with.
SELECT pg_advisory_xact_lock($1::int, ledger_lock_key($2));

-- name: ledger_apply
-- One round trip under the lock: the ledger row and the balance move together (function
-- ledger_apply, sql/functions/ledger.sql, the one place the balance moves). Every row
-- written outside ledger_credit goes through here: refunds, disputes and their reversals,
-- an invoice's SUBSCRIPTION_CREDIT ($8 invoice, $9 subscription, $10 invoice created, $11
-- period start) and EXPIRY (no event of its own: $4 NULL).
-- A repeat (unique event_id, one PURCHASE per session, one SUBSCRIPTION_CREDIT / EXPIRY per
-- invoice) inserts nothing and no row comes back. balance_after is computed from the
-- balance read under the lock; the UPDATE's own result is returned beside it so the caller
-- can prove nobody moved the balance without the lock. $1 is left untyped: it takes the
-- key type of the one ledger_apply the database has.
SELECT balance_after, credits_balance
FROM ledger_apply($1, $2::bigint, $3::text, $4::text, $5::text, $6::text, $7::text, $8::text,
                  $9::text, $10::timestamptz, $11::timestamptz);

-- name: ledger_user_balance
SELECT credits_balance FROM {users} WHERE id = $1;

-- name: ledger_insert_shortfall
INSERT INTO refund_shortfalls (event_id, user_id, payment_intent_id, credits)
VALUES ($1, $2, $3, $4)
ON CONFLICT (event_id) DO NOTHING;

-- name: ledger_cancel_shortfall
-- A failed refund or a won dispute gives back credits that could not be taken (spent):
-- the payment's owed shortfall falls by $2, newest rows first; a row cancelled whole goes.
-- refund_shortfalls holds what is owed now (stats, the console, the metric). Runs under the
-- user's lock, with the payment's state row locked (payment_state_get ... FOR UPDATE).
WITH ordered AS (
    SELECT id, credits,
           sum(credits) OVER (ORDER BY id DESC) - credits AS newer
    FROM refund_shortfalls
    WHERE payment_intent_id = $1
), cut AS (
    SELECT id, credits, LEAST(credits, GREATEST($2::bigint - newer, 0)) AS cancel
    FROM ordered
), gone AS (
    DELETE FROM refund_shortfalls s USING cut
    WHERE s.id = cut.id AND cut.cancel = cut.credits
    RETURNING s.id
)
UPDATE refund_shortfalls s
SET credits = s.credits - cut.cancel
FROM cut
WHERE s.id = cut.id AND cut.cancel > 0 AND cut.cancel < cut.credits;
