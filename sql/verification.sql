-- Hand checks for a webhook-worker database:  psql "$DATABASE_URL" -f sql/verification.sql
-- Read-only. `webhook-worker verify` runs the same checks (exit 1 and a list on a problem);
-- this file is for a human at a psql prompt.
-- The host's users table is the one the migrations recorded (USERS_TABLE, e.g. "user" or
-- app.users), already quoted by them; `users` before they ran.
SELECT coalesce((SELECT to_jsonb(s) ->> 'users_table' FROM users_host_shape s), 'users')
       AS users_table \gset

\echo '== tables and columns of the contract (expect 11 tables) =='
SELECT table_name, string_agg(column_name, ', ' ORDER BY ordinal_position) AS columns
FROM information_schema.columns
WHERE table_schema = current_schema()
  AND table_name IN ('users', 'stripe_events', 'credit_transactions', 'schema_migrations',
                     'payment_states', 'payment_refund_failures', 'payment_disputes',
                     'reconcile_runs', 'credit_note_refunds', 'credit_holds',
                     'reconcile_lease')
GROUP BY table_name
ORDER BY table_name;

\echo '== constraints and indexes of the contract (present = t for every row) =='
SELECT expected.name,
       EXISTS (SELECT 1 FROM pg_constraint c
               JOIN pg_namespace n ON n.oid = c.connamespace
               WHERE n.nspname = current_schema() AND c.conname = expected.name)
       OR EXISTS (SELECT 1 FROM pg_indexes i
                  WHERE i.schemaname = current_schema() AND i.indexname = expected.name)
       -- the users table's own, in its schema (none on a view: the table under it has them)
       OR EXISTS (SELECT 1 FROM pg_constraint c
                  WHERE c.conrelid = :'users_table'::regclass AND c.conname = expected.name)
       OR EXISTS (SELECT 1 FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid
                  WHERE i.indrelid = :'users_table'::regclass AND x.relname = expected.name)
       AS present
FROM (VALUES
    ('credits_balance_nonneg'),
    ('users_uuid_key'),
    ('users_email_lower_key'),
    ('users_stripe_customer_id_key'),
    ('stripe_events_event_id_key'),
    ('stripe_events_status_check'),
    ('stripe_events_status_received_at_idx'),
    ('credit_transactions_event_id_key'),
    ('credit_transactions_amount_nonzero'),
    ('credit_transactions_type_check'),
    ('credit_transactions_user_id_fkey'),
    ('credit_transactions_event_id_fkey'),
    ('credit_transactions_one_purchase_per_session')
) AS expected (name)
ORDER BY present, expected.name;

\echo '== status and type checks accept the money flows (every row t: migrations 0013, 0014, 0025) =='
SELECT expected.name, expected.value,
       position(quote_literal(expected.value) IN coalesce((
           SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c
           JOIN pg_namespace n ON n.oid = c.connamespace
           WHERE n.nspname = current_schema() AND c.conname = expected.name), '')) > 0
       AS accepted
FROM (VALUES
    ('stripe_events_status_check', 'waiting'),
    ('credit_transactions_type_check', 'REFUND_REVERSAL'),
    ('credit_transactions_type_check', 'DISPUTE'),
    ('credit_transactions_type_check', 'DISPUTE_REVERSAL'),
    ('credit_transactions_type_check', 'HOLD'),
    ('credit_transactions_type_check', 'HOLD_RELEASE'),
    ('credit_transactions_type_check', 'SHORTFALL_COLLECTION')
) AS expected (name, value)
ORDER BY accepted, expected.name;

\echo '== ledger and spending functions (present = t for every row; 0025: docs/spending.md) =='
SELECT expected.name,
       EXISTS (SELECT 1 FROM pg_proc p
               JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname = current_schema() AND p.proname = expected.name) AS present
FROM (VALUES ('ledger_lock_key'), ('ledger_apply'), ('ledger_credit'), ('ledger_credit_many'),
             ('users_match'), ('users_create_by_email'), ('users_remember_stripe_customer'),
             ('credits_spend'), ('credits_grant'), ('credits_adjust'), ('credits_hold'),
             ('credits_settle'), ('credits_release'), ('credits_release_expired'))
     AS expected (name)
ORDER BY present, expected.name;

\echo '== host users shape the ledger was built on (key_type must match users.id below) =='
\echo '   (users_table and version_column: the table and optimistic-locking column the'
\echo '    functions write; every balance change increments the version column)'
SELECT * FROM users_host_shape;
SELECT :'users_table' AS users_table,
       format_type(atttypid, atttypmod) AS users_id_type_now
FROM pg_attribute WHERE attrelid = :'users_table'::regclass AND attname = 'id';

\echo '== applied migrations =='
SELECT version, name, applied_at FROM schema_migrations ORDER BY version;

\echo '== events by status =='
SELECT processing_status, count(*) AS events, min(received_at) AS oldest
FROM stripe_events
GROUP BY processing_status
ORDER BY processing_status;

\echo '== waiting for their purchase (woken by the sweeper; ignored after WAIT_MAX_DAYS) =='
SELECT count(*) AS waiting, min(received_at) AS oldest,
       count(DISTINCT waiting_for) AS payments
FROM stripe_events
WHERE processing_status = 'waiting';

\echo '== payments whose credits taken back differ from their ledger rows (expect none) =='
SELECT s.payment_intent_id, s.taken, s.shortfall, coalesce(l.taken, 0) AS ledger_taken
FROM payment_states s
LEFT JOIN (
    SELECT payment_intent_id, -sum(amount) AS taken
    FROM credit_transactions
    WHERE transaction_type IN ('REFUND', 'REFUND_REVERSAL', 'DISPUTE', 'DISPUTE_REVERSAL',
                               'SHORTFALL_COLLECTION')
    GROUP BY payment_intent_id
) l ON l.payment_intent_id = s.payment_intent_id
WHERE s.taken <> coalesce(l.taken, 0) + s.shortfall
LIMIT 20;

\echo '== holds whose HOLD / HOLD_RELEASE rows differ from credit_holds (expect none) =='
SELECT h.user_id, h.idempotency_key, h.state, h.amount, h.actual,
       -ht.amount AS held, coalesce(r.back, 0) AS back
FROM credit_holds h
LEFT JOIN credit_transactions ht ON ht.id = h.hold_transaction_id
LEFT JOIN (
    SELECT user_id, idempotency_key, sum(amount) AS back
    FROM credit_transactions
    WHERE transaction_type = 'HOLD_RELEASE'
    GROUP BY user_id, idempotency_key
) r ON r.user_id = h.user_id AND r.idempotency_key = h.idempotency_key
WHERE ht.transaction_type IS DISTINCT FROM 'HOLD'
   OR -ht.amount <> h.amount
   OR coalesce(r.back, 0) <> CASE h.state WHEN 'open' THEN 0
                                          WHEN 'settled' THEN h.amount - h.actual
                                          ELSE h.amount END
LIMIT 20;

\echo '== open holds, expired holds not yet released (the worker cron releases them), shortfall =='
SELECT count(*) FILTER (WHERE state = 'open') AS open_holds,
       count(*) FILTER (WHERE state = 'open' AND expires_at < now() - interval '2 minutes')
           AS overdue,
       (SELECT coalesce(sum(shortfall), 0) FROM payment_states) AS shortfall_owed,
       (SELECT shortfall_policy FROM credits_settings) AS shortfall_policy
FROM credit_holds;

\echo '== stuck: received/processing for over 2 minutes (expect none while a worker runs) =='
SELECT event_id, type, processing_status, attempts, updated_at
FROM stripe_events
WHERE processing_status IN ('received', 'processing')
  AND updated_at < now() - interval '2 minutes'
ORDER BY updated_at
LIMIT 20;

\echo '== failures in the last day (replay with: webhook-worker replay --status failed) =='
SELECT event_id, type, attempts, left(error_message, 80) AS error, updated_at
FROM stripe_events
WHERE processing_status = 'failed' AND updated_at >= now() - interval '1 day'
ORDER BY updated_at DESC
LIMIT 20;

\echo '== users columns that block creating a user by email (expect none) =='
SELECT a.attname AS required_column_without_default
FROM pg_attribute a
WHERE a.attrelid = :'users_table'::regclass AND a.attnum > 0 AND NOT a.attisdropped
  AND a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = ''
  AND a.attname <> 'email'
ORDER BY a.attnum;

\echo '== credit totals =='
SELECT transaction_type, count(*) AS rows, sum(amount) AS credits
FROM credit_transactions
GROUP BY transaction_type
ORDER BY transaction_type;

\echo '== balances that differ from their ledger sum (expect none) =='
SELECT u.id AS user_id, u.credits_balance, coalesce(sum(t.amount), 0) AS ledger_sum
FROM :users_table u
LEFT JOIN credit_transactions t ON t.user_id = u.id
GROUP BY u.id, u.credits_balance
HAVING u.credits_balance <> coalesce(sum(t.amount), 0)
ORDER BY u.id
LIMIT 20;
