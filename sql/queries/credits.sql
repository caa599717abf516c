-- Spending (webhook_worker/credits.py): the application's side of the ledger, through the SQL
-- functions of migration 0025. $1 (the user) is left untyped: it takes the key type of the
-- one function of that name the database has (bigint, uuid or text).

-- name: credits_spend
SELECT status, balance, transaction_id FROM credits_spend($1, $2::bigint, $3::text, $4::text);

-- name: credits_grant
SELECT status, balance, transaction_id FROM credits_grant($1, $2::bigint, $3::text, $4::text);

-- name: credits_adjust
SELECT status, balance, transaction_id FROM credits_adjust($1, $2::bigint, $3::text, $4::text);

-- name: credits_hold
SELECT status, balance, transaction_id
FROM credits_hold($1, $2::bigint, $3::text, $4::interval);

-- name: credits_settle
SELECT status, balance, transaction_id FROM credits_settle($1, $2::text, $3::bigint);

-- name: credits_release
SELECT status, balance, transaction_id FROM credits_release($1, $2::text);

-- name: credits_balance
-- Through users_balance (sql/functions/users.sql): the application's process that calls
-- webhook_worker.credits names no users table; the function holds USERS_TABLE.
SELECT users_balance($1);

-- name: credits_history
-- Newest first; $3: rows older than this transaction id (keyset paging), NULL for the first page.
SELECT t.id, t.amount, t.balance_after, t.transaction_type, t.idempotency_key, t.event_id,
       t.payment_intent_id, t.description, t.created_at
FROM credit_transactions t
WHERE t.user_id = $1 AND ($3::bigint IS NULL OR t.id < $3::bigint)
ORDER BY t.id DESC
LIMIT $2;

-- name: credits_open_holds
SELECT h.idempotency_key, h.amount, h.expires_at, h.created_at, h.hold_transaction_id
FROM credit_holds h
WHERE h.user_id = $1 AND h.state = 'open'
ORDER BY h.expires_at, h.id;

-- name: credits_release_expired
-- The worker's cron (migration 0025): open holds past expires_at released once each.
SELECT credits_release_expired($1::int);

-- name: credits_set_policy
-- SHORTFALL_POLICY as the SQL functions read it (credits_grant); written by `migrate` and at
-- worker start, only when it changes.
INSERT INTO credits_settings (shortfall_policy) VALUES ($1)
ON CONFLICT (singleton) DO UPDATE
SET shortfall_policy = EXCLUDED.shortfall_policy, updated_at = now()
WHERE credits_settings.shortfall_policy <> EXCLUDED.shortfall_policy;

-- name: credits_recorded_policy
SELECT shortfall_policy FROM credits_settings;

-- name: credits_shortfall_outstanding
-- Credits refunds and disputes could not take back (spent), still owed (payment_states).
SELECT coalesce(sum(shortfall), 0)::bigint FROM payment_states;

-- name: credits_shortfall_collected
SELECT coalesce(-sum(amount), 0)::bigint FROM credit_transactions
WHERE transaction_type = 'SHORTFALL_COLLECTION';

-- name: credits_user_shortfall
-- What refunds and disputes of this user's payments could not take back, still owed.
SELECT coalesce(sum(s.shortfall), 0)::bigint
FROM payment_states s
WHERE s.shortfall > 0
  AND EXISTS (SELECT 1 FROM credit_transactions p
              WHERE p.payment_intent_id = s.payment_intent_id AND p.user_id = $1
                AND p.transaction_type IN ('PURCHASE', 'SUBSCRIPTION_CREDIT'));

-- name: credits_user_collected
SELECT coalesce(-sum(amount), 0)::bigint FROM credit_transactions
WHERE user_id = $1 AND transaction_type = 'SHORTFALL_COLLECTION';

-- name: credits_audit_insert
-- An operator's grant or adjustment, audited like a replay (migration 0026).
INSERT INTO ops_audit (who, client, via, action, forced, filters, event_ids, count)
VALUES ($1, $2, $3, $4, false, $5::jsonb, '{}', 1)
RETURNING id;

-- name: credits_audit_for_user
SELECT id, at, who, via, action, filters
FROM ops_audit
WHERE action IN ('credits_grant', 'credits_adjust') AND filters ->> 'user_id' = $1::text
ORDER BY at DESC
LIMIT 20;

-- name: credits_user_by_customer
SELECT id FROM {users} WHERE stripe_customer_id = $1;

-- name: credits_collect_shortfall
-- SHORTFALL_POLICY=collect after a subscription credit: the user's shortfall paid from the
-- balance in SHORTFALL_COLLECTION rows; the credits collected. Call with the lock held.
SELECT credits_collect_shortfall($1, $2::text);
