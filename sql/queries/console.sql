-- Statements of the ops console (webhook_worker/console/). Optional filters are NULL; every
-- value is a parameter. Text search matches exactly (ids) or case-insensitively (emails), so
-- it never needs a pattern built from input.

-- name: console_events_page
-- One keyset page, newest first: rows strictly before ($5 received_at, $6 id), at most $7.
-- Filters are NULL when unset; the console plans each call with its values
-- (plan_cache_mode = force_custom_plan, console_custom_plans), so an unset filter costs
-- nothing and each combination uses its index (0046). Search is console_search_*.
SELECT e.id, e.received_at
FROM stripe_events e
WHERE ($1::text IS NULL OR e.processing_status = $1::text)
  AND ($2::text IS NULL OR e.type = $2::text)
  AND ($3::timestamptz IS NULL OR e.received_at >= $3::timestamptz)
  AND ($4::timestamptz IS NULL OR e.received_at < $4::timestamptz)
  AND ($5::timestamptz IS NULL OR (e.received_at, e.id) < ($5::timestamptz, $6::bigint))
  AND ($8::text IS NULL OR e.status_reason = $8::text)
ORDER BY e.received_at DESC, e.id DESC
LIMIT $7;

-- name: console_search_recent
-- A search's first look: the newest $7 rows the filters select (before the cursor), each
-- with whether it matches: $8 a LIKE pattern on the ids (prefix), $9 a lower-case email
-- substring. Dense matches ("example.com") are all found here, without an index.
SELECT e.id, e.received_at,
       ($8::text IS NOT NULL
        AND (e.event_id LIKE $8::text
             OR (e.raw_data #>> '{data,object,id}') LIKE $8::text
             OR (e.raw_data #>> '{data,object,payment_intent}') LIKE $8::text
             OR (e.raw_data #>> '{data,object,customer}') LIKE $8::text))
       OR ($9::text IS NOT NULL AND strpos(stripe_event_email(e.raw_data), $9::text) > 0)
           AS hit
FROM stripe_events e
WHERE ($1::text IS NULL OR e.processing_status = $1::text)
  AND ($2::text IS NULL OR e.type = $2::text)
  AND ($3::timestamptz IS NULL OR e.received_at >= $3::timestamptz)
  AND ($4::timestamptz IS NULL OR e.received_at < $4::timestamptz)
  AND ($5::timestamptz IS NULL OR (e.received_at, e.id) < ($5::timestamptz, $6::bigint))
  AND ($10::text IS NULL OR e.status_reason = $10::text)
ORDER BY e.received_at DESC, e.id DESC
LIMIT $7;

-- name: console_search_id_hits
-- The events whose ids start with $1 (a LIKE pattern), through the prefix indexes: the
-- event's id (0046), its object's id, its payment intent and customer (stripe_event_search,
-- 0050). At most $2.
SELECT id FROM stripe_events WHERE event_id LIKE $1::text
UNION
SELECT event_row_id FROM stripe_event_search WHERE object_id LIKE $1::text
UNION
SELECT event_row_id FROM stripe_event_search
WHERE payment_intent LIKE $1::text AND payment_intent IS NOT NULL
UNION
SELECT event_row_id FROM stripe_event_search
WHERE customer LIKE $1::text AND customer IS NOT NULL
LIMIT $2;

-- name: console_search_ids
-- Older matches of an id prefix: the hits ($8, ids from console_search_id_hits) the
-- filters keep, newest first, before the cursor.
SELECT e.id, e.received_at
FROM stripe_events e
WHERE e.id = ANY($8::bigint[])
  AND ($1::text IS NULL OR e.processing_status = $1::text)
  AND ($2::text IS NULL OR e.type = $2::text)
  AND ($3::timestamptz IS NULL OR e.received_at >= $3::timestamptz)
  AND ($4::timestamptz IS NULL OR e.received_at < $4::timestamptz)
  AND ($5::timestamptz IS NULL OR (e.received_at, e.id) < ($5::timestamptz, $6::bigint))
  AND ($9::timestamptz IS NULL OR e.received_at >= $9::timestamptz)
  AND ($10::text IS NULL OR e.status_reason = $10::text)
ORDER BY e.received_at DESC, e.id DESC
LIMIT $7;

-- name: console_search_email
-- Older matches of an email substring ($8, lower case, three characters or more) through
-- the trigram index of stripe_event_search (0045/0050), received at or after $9 (a slice,
-- so the index's matches are combined with that table's received_at index and only that
-- slice's rows are read).
SELECT e.id, e.received_at
FROM stripe_event_search s
JOIN stripe_events e ON e.id = s.event_row_id
WHERE text_trigrams(s.email) @> text_trigrams($8::text)
  AND s.email IS NOT NULL
  AND strpos(s.email, $8::text) > 0
  AND ($9::timestamptz IS NULL OR s.received_at >= $9::timestamptz)
  AND ($1::text IS NULL OR e.processing_status = $1::text)
  AND ($2::text IS NULL OR e.type = $2::text)
  AND ($3::timestamptz IS NULL OR e.received_at >= $3::timestamptz)
  AND ($4::timestamptz IS NULL OR e.received_at < $4::timestamptz)
  AND ($5::timestamptz IS NULL OR (e.received_at, e.id) < ($5::timestamptz, $6::bigint))
  AND ($10::text IS NULL OR e.status_reason = $10::text)
ORDER BY e.received_at DESC, e.id DESC
LIMIT $7;

-- name: console_events_rows
-- The rows of one page ($1: their ids), with what the list shows: the payer's email, the
-- amount and currency Stripe sent, the credits the event moved and the user they moved for.
SELECT e.id, e.event_id, e.type, e.processing_status, e.status_reason, e.attempts,
       e.error_message, e.received_at, e.processed_at, e.livemode, e.account,
       stripe_event_email(e.raw_data) AS email,
       e.raw_data #>> '{data,object,currency}' AS currency,
       CASE WHEN e.type = 'charge.refunded' THEN e.raw_data #>> '{data,object,amount_refunded}'
            WHEN e.type LIKE 'invoice.%' THEN e.raw_data #>> '{data,object,amount_paid}'
            ELSE coalesce(e.raw_data #>> '{data,object,amount_total}',
                          e.raw_data #>> '{data,object,amount}',
                          e.raw_data #>> '{data,object,total}') END AS amount,
       t.amount AS credits, t.user_id::text AS user_id, u.email AS user_email
FROM stripe_events e
LEFT JOIN credit_transactions t ON t.event_id = e.event_id
LEFT JOIN {users} u ON u.id = t.user_id
WHERE e.id = ANY($1::bigint[])
ORDER BY e.received_at DESC, e.id DESC;

-- name: console_custom_plans
-- The console's reads are planned with their values (see console_events_page), and a
-- search's bitmap of matches stays exact (no lossy pages to recheck) up to a few 100k rows.
SELECT set_config('plan_cache_mode', 'force_custom_plan', true),
       set_config('work_mem', '32MB', true);

-- name: console_estimated_rows
-- Rows of stripe_events as the planner knows them (pg_class.reltuples after the last
-- ANALYZE or VACUUM): "about 1.2 M", never a count(*) over the whole table.
SELECT greatest(c.reltuples, 0)::bigint AS estimate
FROM pg_class c
WHERE c.oid = 'stripe_events'::regclass;

-- name: console_estimated_by_status
-- Events per status estimated from the planner's statistics (most common values and their
-- frequencies in pg_stats) times the estimated rows.
SELECT s.value AS status, round(s.freq * greatest(c.reltuples, 0))::bigint AS estimate
FROM pg_class c
CROSS JOIN LATERAL (
    SELECT unnest(st.most_common_vals::text::text[]) AS value,
           unnest(st.most_common_freqs) AS freq
    FROM pg_stats st
    WHERE st.schemaname = current_schema() AND st.tablename = 'stripe_events'
      AND st.attname = 'processing_status'
) AS s
WHERE c.oid = 'stripe_events'::regclass;

-- name: console_status_counts
-- Exact counts of the statuses an operator acts on, each from the status index; the large
-- ones (completed, ignored) are estimated instead (console_estimated_by_status).
SELECT count(*) FILTER (WHERE processing_status = 'waiting') AS waiting,
       count(*) FILTER (WHERE processing_status = 'failed') AS failed,
       count(*) FILTER (WHERE processing_status = 'received') AS received,
       count(*) FILTER (WHERE processing_status = 'processing') AS processing
FROM stripe_events
WHERE processing_status IN ('waiting', 'failed', 'received', 'processing');

-- name: console_oldest_unprocessed
SELECT min(received_at) AS oldest,
       extract(epoch FROM now() - min(received_at))::float8 AS age
FROM stripe_events
WHERE processing_status IN ('received', 'processing');

-- name: console_failures_by_reason
-- Failures in the last $1 by reason: the status reason, else the error's first word
-- (`user_not_found: …`), from the failed-rows index.
SELECT coalesce(status_reason, nullif(split_part(error_message, ':', 1), ''), 'unrecorded')
           AS reason,
       count(*) AS events
FROM stripe_events
WHERE processing_status = 'failed' AND updated_at >= $1::timestamptz
GROUP BY 1
ORDER BY 2 DESC, 1
LIMIT 20;

-- name: console_credits_window
-- Credits moved since $1 from the ledger's created_at index alone: sold (purchases,
-- subscription credits), taken back (refunds and disputes net of their reversals), spent
-- (usage), granted (bonuses, positive adjustments).
SELECT coalesce(sum(amount) FILTER (WHERE transaction_type IN ('PURCHASE',
                                                               'SUBSCRIPTION_CREDIT')), 0)::bigint
           AS sold,
       coalesce(-sum(amount) FILTER (WHERE transaction_type IN ('REFUND', 'REFUND_REVERSAL',
                                                                'DISPUTE', 'DISPUTE_REVERSAL')),
                0)::bigint AS taken_back,
       coalesce(-sum(amount) FILTER (WHERE transaction_type = 'USAGE'), 0)::bigint AS spent
FROM credit_transactions
WHERE created_at >= $1::timestamptz;

-- name: console_per_hour
-- Events per hour by outcome since $1 (the overview's 24-hour throughput chart).
SELECT date_trunc('hour', received_at) AS hour, processing_status AS status,
       count(*) AS events
FROM stripe_events
WHERE received_at >= $1::timestamptz
GROUP BY 1, 2
ORDER BY 1, 2;

-- name: console_event_status
SELECT processing_status, status_reason, attempts, error_message, processed_at
FROM stripe_events
WHERE event_id = $1;

-- name: console_event_ledger
-- The ledger rows of one event, with their user's email (the event page links the user).
SELECT t.id, t.user_id::text AS user_id, u.email AS user_email, t.amount, t.balance_after,
       t.transaction_type, t.checkout_session_id, t.payment_intent_id, t.description,
       t.created_at
FROM credit_transactions t
JOIN {users} u ON u.id = t.user_id
WHERE t.event_id = $1
ORDER BY t.id;

-- name: console_find_user
-- A user by id ($1, already of the key's type, or NULL), UUID ($2), email
-- (case-insensitively, $3) or Stripe customer id ($4), each through its unique index.
SELECT id::text AS id, id AS key, uuid::text AS uuid, email, stripe_customer_id,
       credits_balance, created_at
FROM {users}
WHERE id = $1 OR uuid = $2::uuid OR lower(email) = lower($3::text)
   OR stripe_customer_id = $4::text
ORDER BY id
LIMIT 2;

-- name: console_user_shortfall
-- The credits the user still owes, per payment: taken back by refunds or disputes after they
-- were spent, not given back nor collected since (payment_states.shortfall).
SELECT s.payment_intent_id, s.shortfall AS credits
FROM payment_states s
WHERE s.shortfall > 0
  AND EXISTS (SELECT 1 FROM credit_transactions p
              WHERE p.payment_intent_id = s.payment_intent_id AND p.user_id = $1
                AND p.transaction_type IN ('PURCHASE', 'SUBSCRIPTION_CREDIT'))
ORDER BY s.payment_intent_id;

-- name: console_user_key_family
SELECT ledger_user_key_family();

-- name: console_user_ledger
-- The user's ledger ($1, the key itself), newest first, with the running sum of amounts
-- (which must equal balance_after row by row), from the (user_id, created_at) index.
SELECT id, amount, balance_after, transaction_type, event_id, checkout_session_id,
       payment_intent_id, description, created_at, running_balance
FROM (
    SELECT t.*, sum(t.amount) OVER (ORDER BY t.id) AS running_balance
    FROM credit_transactions t
    WHERE t.user_id = $1
) ledger
ORDER BY id DESC
LIMIT $2;

-- name: console_user_events
-- Events that touched the user: the ones that wrote a ledger row for them.
SELECT e.event_id, e.type, e.processing_status, e.status_reason, e.received_at
FROM credit_transactions t
JOIN stripe_events e ON e.event_id = t.event_id
WHERE t.user_id = $1
ORDER BY e.received_at DESC
LIMIT $2;

-- name: ops_audit_insert
INSERT INTO ops_audit (who, client, via, action, forced, filters, event_ids, count)
VALUES ($1, $2, $3, 'replay', $4, $5::jsonb, $6::text[], $7)
RETURNING id, at;

-- name: ops_audit_for_event
SELECT id, at, who, via, forced, count
FROM ops_audit
WHERE event_ids @> ARRAY[$1::text]
ORDER BY at DESC
LIMIT 50;

-- name: ops_audit_get
SELECT id, at, who, via, forced, filters, count, event_ids
FROM ops_audit
WHERE id = $1;

-- name: ops_audit_progress
-- Where a bulk replay's events are now.
SELECT processing_status AS status, count(*) AS events
FROM stripe_events
WHERE event_id = ANY($1::text[])
GROUP BY processing_status;

-- name: console_per_minute
-- Events per minute by outcome since $1, for the overview's chart.
SELECT date_trunc('minute', received_at) AS minute, processing_status AS status,
       count(*) AS events
FROM stripe_events
WHERE received_at >= $1::timestamptz
GROUP BY 1, 2
ORDER BY 1, 2;
