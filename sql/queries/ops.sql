-- Statements of the ops tools (CLI and /ops API): list, show, replay, stats, verify.
-- Optional filters are passed as NULL; every value is a parameter.

-- name: ops_list_events
SELECT event_id, type, processing_status, status_reason, attempts, error_message, livemode,
       account, received_at, processed_at, updated_at
FROM stripe_events
WHERE ($1::text IS NULL OR processing_status = $1::text)
  AND ($2::text IS NULL OR type = $2::text)
  AND ($3::timestamptz IS NULL OR received_at >= $3::timestamptz)
  AND ($5::text IS NULL OR status_reason = $5::text)
ORDER BY received_at DESC, id DESC
LIMIT $4;

-- name: ops_custom_plans
-- A list is planned with its own values (`$1 IS NULL OR …` folds away), not a generic plan
-- that would read the whole table for an unset filter (migration 0046's indexes).
SELECT set_config('plan_cache_mode', 'force_custom_plan', true);

-- name: ops_event_ledger
SELECT t.id, t.user_id, u.uuid::text AS user_uuid, t.amount, t.balance_after,
       t.transaction_type, t.checkout_session_id, t.payment_intent_id, t.description,
       t.created_at
FROM credit_transactions t
JOIN {users} u ON u.id = t.user_id
WHERE t.event_id = $1
ORDER BY t.id;

-- name: ops_events_by_ids
SELECT event_id, type, processing_status, attempts, error_message, received_at
FROM stripe_events
WHERE event_id = ANY($1::text[]);

-- name: ops_replay_candidates
-- One keyset page of a bulk replay's selection: rows after ($5, $6) in (received_at, id)
-- order, at most $7. A call reads at most OPS_REPLAY_MAX rows, page by page.
SELECT id, event_id, type, processing_status, attempts, error_message, received_at
FROM stripe_events
WHERE processing_status = $1::text
  AND ($2::text IS NULL OR type = $2::text)
  AND ($3::timestamptz IS NULL OR received_at >= $3::timestamptz)
  AND ($4::timestamptz IS NULL OR received_at < $4::timestamptz)
  AND ($5::timestamptz IS NULL OR (received_at, id) > ($5::timestamptz, $6::bigint))
ORDER BY received_at, id
LIMIT $7;

-- name: ops_replay_count
-- How many events a bulk replay's filters match, counted up to $5 (OPS_REPLAY_MAX + 1) so
-- the dry run costs no more than the replay it previews.
SELECT count(*)
FROM (
    SELECT 1
    FROM stripe_events
    WHERE processing_status = $1::text
      AND ($2::text IS NULL OR type = $2::text)
      AND ($3::timestamptz IS NULL OR received_at >= $3::timestamptz)
      AND ($4::timestamptz IS NULL OR received_at < $4::timestamptz)
    LIMIT $5
) matching;

-- name: ops_reset_for_replay
-- Back to `received` so the worker claims it again; attempts and the last error are kept
-- (the worker overwrites the error with the new outcome); due at once (a pending retry's
-- backoff is dropped). Guarded by the statuses that were selected, so an event that moved
-- meanwhile is left alone.
UPDATE stripe_events
SET processing_status = 'received', status_reason = NULL, next_attempt_at = NULL,
    updated_at = now()
WHERE event_id = ANY($1::text[]) AND processing_status = ANY($2::text[])
RETURNING event_id;

-- name: ops_stats_by_status
SELECT processing_status AS status, count(*) AS events
FROM stripe_events
GROUP BY processing_status
ORDER BY processing_status;

-- name: ops_stats_by_type
SELECT type, processing_status AS status, count(*) AS events
FROM stripe_events
GROUP BY type, processing_status
ORDER BY type, processing_status;

-- name: ops_stats_ignored_by_reason
SELECT coalesce(status_reason, 'unrecorded') AS reason, count(*) AS events
FROM stripe_events
WHERE processing_status = 'ignored'
GROUP BY 1
ORDER BY 2 DESC, 1;

-- name: ops_stats_oldest_unprocessed
SELECT min(received_at) AS oldest, extract(epoch FROM now() - min(received_at))::float8 AS age
FROM stripe_events
WHERE processing_status IN ('received', 'processing');

-- name: ops_stats_recent_failures
SELECT count(*)
FROM stripe_events
WHERE processing_status = 'failed' AND updated_at >= now() - interval '1 day';

-- name: ops_stats_credits
-- refunded and disputed are net of their reversals; granted counts no reversal and no hold
-- given back; spent is USAGE plus holds net of what went back (0025).
SELECT coalesce(sum(amount) FILTER (WHERE amount > 0 AND transaction_type NOT IN
                                    ('REFUND_REVERSAL', 'DISPUTE_REVERSAL', 'HOLD_RELEASE')),
                0)::bigint
           AS granted,
       coalesce(-sum(amount) FILTER (WHERE transaction_type IN ('USAGE', 'HOLD', 'HOLD_RELEASE')),
                0)::bigint AS spent,
       coalesce(-sum(amount) FILTER (WHERE transaction_type = 'SHORTFALL_COLLECTION'), 0)::bigint
           AS shortfall_collected,
       coalesce(-sum(amount) FILTER (WHERE transaction_type IN ('REFUND', 'REFUND_REVERSAL')),
                0)::bigint AS refunded,
       coalesce(-sum(amount) FILTER (WHERE transaction_type IN ('DISPUTE', 'DISPUTE_REVERSAL')),
                0)::bigint AS disputed,
       count(*) AS transactions
FROM credit_transactions;

-- name: ops_stats_users
SELECT count(*) FILTER (WHERE credits_balance > 0) AS users_with_credits,
       coalesce(sum(credits_balance), 0)::bigint AS credits_outstanding
FROM {users};

-- name: ops_schema_columns
SELECT table_name::text AS table_name, column_name::text AS column_name
FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = ANY($1::text[]);

-- name: ops_schema_constraints
SELECT c.conname::text AS name
FROM pg_constraint c
JOIN pg_namespace n ON n.oid = c.connamespace
WHERE n.nspname = current_schema();

-- name: ops_schema_indexes
-- Valid indexes only: a CREATE INDEX CONCURRENTLY that failed leaves an invalid one behind,
-- which serves no query (migrating again rebuilds it).
SELECT c.relname::text AS name
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND i.indisvalid;

-- name: ops_schema_checks
SELECT c.conname::text AS name, pg_get_constraintdef(c.oid) AS definition
FROM pg_constraint c
JOIN pg_namespace n ON n.oid = c.connamespace
WHERE n.nspname = current_schema() AND c.contype = 'c';

-- name: ops_stats_waiting
-- The waiting set: events that cannot apply until their purchase arrives.
SELECT count(*) AS events, min(received_at) AS oldest
FROM stripe_events
WHERE processing_status = 'waiting';

-- name: ops_payment_state_mismatches
-- Each payment's credits taken back (payment_states.taken) must equal its REFUND, DISPUTE
-- and reversal rows, the shortfall collected later (SHORTFALL_COLLECTION, 0025) and what
-- could not be taken (shortfall).
SELECT s.payment_intent_id, s.taken, s.shortfall, coalesce(l.taken, 0)::bigint AS ledger_taken
FROM payment_states s
LEFT JOIN (
    SELECT payment_intent_id, -sum(amount) AS taken
    FROM credit_transactions
    WHERE transaction_type IN ('REFUND', 'REFUND_REVERSAL', 'DISPUTE', 'DISPUTE_REVERSAL',
                               'SHORTFALL_COLLECTION')
      AND payment_intent_id IS NOT NULL
    GROUP BY payment_intent_id
) l ON l.payment_intent_id = s.payment_intent_id
WHERE s.taken <> coalesce(l.taken, 0) + s.shortfall
ORDER BY s.payment_intent_id
LIMIT $1;

-- name: ops_schema_functions
SELECT p.proname::text AS name
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = current_schema();

-- name: ops_balance_mismatches
SELECT u.id AS user_id, u.credits_balance, coalesce(l.total, 0)::bigint AS ledger_sum
FROM {users} u
LEFT JOIN (
    SELECT user_id, sum(amount) AS total FROM credit_transactions GROUP BY user_id
) l ON l.user_id = u.id
WHERE u.credits_balance <> coalesce(l.total, 0)
ORDER BY u.id
LIMIT $1;

-- name: ops_stuck_events
-- A retry waiting for its backoff (next_attempt_at ahead) is not stuck until it is overdue.
SELECT event_id, processing_status, updated_at,
       extract(epoch FROM now() - updated_at)::float8 AS age
FROM stripe_events
WHERE processing_status IN ('received', 'processing')
  AND updated_at < now() - make_interval(secs => $1)
  AND (next_attempt_at IS NULL OR next_attempt_at < now() - make_interval(secs => $1))
ORDER BY updated_at
LIMIT $2;

-- name: ops_event_stored
SELECT processing_status FROM stripe_events WHERE event_id = $1;

-- name: ops_event_outcome
SELECT processing_status, status_reason, error_message FROM stripe_events WHERE event_id = $1;

-- name: ops_hold_mismatches
-- Each hold (migration 0025) must match its ledger rows: one HOLD of -amount, and once it is
-- closed, HOLD_RELEASE rows giving back amount - actual (all of it when released or expired).
SELECT h.user_id, h.idempotency_key, h.state, coalesce(-ht.amount, 0)::bigint AS held,
       coalesce(r.back, 0)::bigint AS back
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
ORDER BY h.id
LIMIT $1;

-- name: ops_stats_spending
-- Open holds, the shortfall still owed (refunds and disputes that found the credits spent)
-- and the policy the SQL functions follow (migration 0025).
SELECT (SELECT count(*) FROM credit_holds WHERE state = 'open') AS open_holds,
       (SELECT coalesce(sum(amount), 0) FROM credit_holds WHERE state = 'open')::bigint
           AS credits_held,
       (SELECT coalesce(sum(shortfall), 0) FROM payment_states)::bigint AS shortfall_outstanding,
       (SELECT shortfall_policy FROM credits_settings) AS shortfall_policy;
