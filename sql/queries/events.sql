-- Statements on stripe_events used by the receiver, the worker and ops.

-- name: insert_events
INSERT INTO stripe_events
    (event_id, type, livemode, api_version, account, stripe_created_at, raw_data)
SELECT event_id, type, livemode, api_version, account, stripe_created_at, raw_json::jsonb
FROM unnest($1::text[], $2::text[], $3::boolean[], $4::text[], $5::text[],
            $6::timestamptz[], $7::text[])
    AS incoming (event_id, type, livemode, api_version, account, stripe_created_at, raw_json)
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id;

-- name: event_statuses
SELECT event_id, processing_status FROM stripe_events WHERE event_id = ANY($1::text[]);

-- name: get_event
SELECT event_id, type, livemode, api_version, account, stripe_created_at, received_at,
       raw_data, processing_status, status_reason, attempts, error_message, processed_at,
       updated_at, source
FROM stripe_events
WHERE event_id = $1;

-- name: claim_event
UPDATE stripe_events
SET processing_status = 'processing', attempts = attempts + 1, updated_at = now()
WHERE event_id = $1 AND processing_status IN ('received', 'processing')
RETURNING event_id, type, livemode, account, raw_data, attempts, received_at;

-- name: claim_events
-- claim_event for many events in one statement (the worker coalesces concurrent claims);
-- rows are locked in event id order so two concurrent batches cannot deadlock.
WITH claimable AS (
    SELECT event_id
    FROM stripe_events
    WHERE event_id = ANY($1::text[]) AND processing_status IN ('received', 'processing')
    ORDER BY event_id
    FOR UPDATE
)
UPDATE stripe_events AS e
SET processing_status = 'processing', attempts = e.attempts + 1, updated_at = now()
FROM claimable
WHERE e.event_id = claimable.event_id
RETURNING e.event_id, e.type, e.livemode, e.account, e.raw_data, e.attempts, e.received_at;

-- name: finish_event
UPDATE stripe_events
SET processing_status = $2, error_message = $3, status_reason = $4, processed_at = now(),
    updated_at = now()
WHERE event_id = $1 AND processing_status NOT IN ('completed', 'ignored');

-- name: note_event_reason
UPDATE stripe_events
SET status_reason = $2
WHERE event_id = $1 AND processing_status = 'completed' AND status_reason IS NULL;

-- name: release_event
UPDATE stripe_events
SET processing_status = 'received', error_message = $2, updated_at = now()
WHERE event_id = $1 AND processing_status = 'processing';

-- name: events_to_sweep
SELECT event_id
FROM stripe_events
WHERE processing_status IN ('received', 'processing')
  AND updated_at < now() - make_interval(secs => $1)
ORDER BY processing_status, received_at
LIMIT $2;

-- name: prune_events
-- One chunk, oldest first from $2 (a received_at cursor), at most $3 rows, each chunk its own
-- short transaction: the pruner never holds locks or writes WAL for the whole table at once.
-- Returns the rows pruned and the cursor for the next chunk.
WITH chunk AS (
    SELECT id, received_at
    FROM stripe_events
    WHERE processing_status IN ('completed', 'ignored')
      AND raw_data IS NOT NULL
      AND received_at < now() - make_interval(days => $1)
      AND received_at >= $2
    ORDER BY received_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), pruned AS (
    UPDATE stripe_events AS e
    SET raw_data = NULL, updated_at = now()
    FROM chunk
    WHERE e.id = chunk.id
    RETURNING chunk.received_at
)
SELECT count(*) AS pruned, max(received_at) AS last_received_at FROM pruned;

-- name: count_prunable_events
SELECT count(*)
FROM stripe_events
WHERE processing_status IN ('completed', 'ignored')
  AND raw_data IS NOT NULL
  AND received_at < now() - make_interval(days => $1);

-- name: event_backlog_counts
-- Only the small, unfinished statuses: cheap through the (status, received_at) index even
-- when millions of completed events sit in the table.
SELECT s.status, (SELECT count(*) FROM stripe_events e WHERE e.processing_status = s.status)
    AS events
FROM unnest(ARRAY['received', 'processing', 'waiting', 'failed']) AS s (status);
