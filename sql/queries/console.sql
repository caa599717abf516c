-- Statements of the ops console (webhook_worker/console/). Optional filters are NULL; every
-- value is a parameter. Text search matches exactly (ids) or case-insensitively (emails), so
-- it never needs a pattern built from input.

-- name: console_events_page
-- One keyset page, newest first: rows strictly before ($6 received_at, $7 id), at most $8.
-- $5 searches the event id, the object's id (checkout session), its payment intent and
-- the customer's email.
SELECT id, event_id, type, processing_status, status_reason, attempts, error_message,
       received_at, processed_at,
       coalesce(raw_data #>> '{data,object,customer_details,email}',
                raw_data #>> '{data,object,customer_email}') AS email
FROM stripe_events
WHERE ($1::text IS NULL OR processing_status = $1::text)
  AND ($2::text IS NULL OR type = $2::text)
  AND ($3::timestamptz IS NULL OR received_at >= $3::timestamptz)
  AND ($4::timestamptz IS NULL OR received_at < $4::timestamptz)
  AND ($5::text IS NULL
       OR event_id = $5::text
       OR raw_data #>> '{data,object,id}' = $5::text
       OR raw_data #>> '{data,object,payment_intent}' = $5::text
       OR lower(raw_data #>> '{data,object,customer_details,email}') = lower($5::text)
       OR lower(raw_data #>> '{data,object,customer_email}') = lower($5::text))
  AND ($6::timestamptz IS NULL OR (received_at, id) < ($6::timestamptz, $7::bigint))
ORDER BY received_at DESC, id DESC
LIMIT $8;

-- name: console_status_window
-- Events by status received since $1 (the overview's last hour / last day).
SELECT processing_status AS status, count(*) AS events
FROM stripe_events
WHERE received_at >= $1::timestamptz
GROUP BY processing_status
ORDER BY processing_status;

-- name: console_per_minute
-- Events per minute by outcome since $1, for the overview's chart.
SELECT date_trunc('minute', received_at) AS minute, processing_status AS status,
       count(*) AS events
FROM stripe_events
WHERE received_at >= $1::timestamptz
GROUP BY 1, 2
ORDER BY 1, 2;

-- name: console_waiting_count
SELECT count(*) FILTER (WHERE processing_status = 'waiting') AS waiting,
       count(*) FILTER (WHERE processing_status = 'failed') AS failed,
       count(*) FILTER (WHERE processing_status IN ('received', 'processing')) AS backlog
FROM stripe_events;


-- name: console_event_status
SELECT processing_status, status_reason, attempts, error_message, processed_at
FROM stripe_events
WHERE event_id = $1;

-- name: console_find_user
-- A user by id, UUID or email (case-insensitively); text comparisons so any host key type
-- works.
SELECT id::text AS id, uuid::text AS uuid, email, stripe_customer_id, credits_balance,
       created_at
FROM {users}
WHERE id::text = $1 OR uuid::text = $1 OR lower(email) = lower($1)
ORDER BY id
LIMIT 2;

-- name: console_user_ledger
-- The user's ledger, newest first, with the running sum of amounts (which must equal
-- balance_after row by row).
SELECT id, amount, balance_after, transaction_type, event_id, checkout_session_id,
       payment_intent_id, description, created_at, running_balance
FROM (
    SELECT t.*, sum(t.amount) OVER (ORDER BY t.id) AS running_balance
    FROM credit_transactions t
    WHERE t.user_id::text = $1
) ledger
ORDER BY id DESC
LIMIT $2;

-- name: console_user_events
-- Events that touched the user: the ones that wrote a ledger row for them.
SELECT e.event_id, e.type, e.processing_status, e.received_at
FROM stripe_events e
JOIN credit_transactions t ON t.event_id = e.event_id
WHERE t.user_id::text = $1
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
