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
-- $2: the lease in seconds (the job timeout and a margin). A `received` event is claimed once
-- it is due (a released event waits for its backoff, within a second of clock skew); a
-- `processing` one only when its lease ran out (its worker died). Final events never.
UPDATE stripe_events
SET processing_status = 'processing', attempts = attempts + 1, next_attempt_at = NULL,
    updated_at = now()
WHERE event_id = $1
  AND ((processing_status = 'received'
        AND (next_attempt_at IS NULL OR next_attempt_at <= now() + interval '1 second'))
       OR (processing_status = 'processing' AND updated_at < now() - make_interval(secs => $2)))
RETURNING event_id, type, livemode, account, raw_data, attempts, received_at;

-- name: claim_events
-- claim_event for many events in one statement (one job's batch, and the claims of the
-- jobs that run at once); rows are locked in event id order so two concurrent batches
-- cannot deadlock, and re-checked after the lock so two jobs never both claim one event.
WITH claimable AS (
    SELECT event_id
    FROM stripe_events
    WHERE event_id = ANY($1::text[])
      AND ((processing_status = 'received'
            AND (next_attempt_at IS NULL OR next_attempt_at <= now() + interval '1 second'))
           OR (processing_status = 'processing'
               AND updated_at < now() - make_interval(secs => $2)))
    ORDER BY event_id
    FOR UPDATE
)
UPDATE stripe_events AS e
SET processing_status = 'processing', attempts = e.attempts + 1, next_attempt_at = NULL,
    updated_at = now()
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
-- Back to `received` after a transient fault, due again in $3 seconds (its backoff).
UPDATE stripe_events
SET processing_status = 'received', error_message = $2,
    next_attempt_at = now() + make_interval(secs => $3), updated_at = now()
WHERE event_id = $1 AND processing_status = 'processing';

-- name: take_stale_events
-- Events to enqueue again: `received` for longer than $1 seconds since it was due (Redis
-- lost its job), or `processing` untouched for longer than $1 and than the lease $2 (its
-- worker died and no job ran it again). An event whose deferred retry is not yet due is left
-- to its job. Each is set `received`, due now, and touched, so the next sweeps leave it to
-- the job enqueued now for another $1 seconds rather than enqueue it again and again.
WITH stale AS (
    SELECT id
    FROM stripe_events
    WHERE processing_status IN ('received', 'processing')
      AND updated_at < now() - make_interval(secs => $1)
      AND (processing_status = 'received'
           OR updated_at < now() - make_interval(secs => $2))
      AND (next_attempt_at IS NULL OR next_attempt_at < now() - make_interval(secs => $1))
    ORDER BY processing_status, received_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE stripe_events AS e
SET processing_status = 'received', next_attempt_at = NULL, updated_at = now()
FROM stale
WHERE e.id = stale.id
RETURNING e.event_id;

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

-- name: take_unfinished_events
-- Recovery after Redis lost or could not take jobs (webhook_worker/db/recovery.py): every
-- event not yet processed — `received` and due, or `processing` past its lease $2 — from id
-- $1 on, at most $3, set `received`, due now and touched; ids ascending for the next cursor.
WITH due AS (
    SELECT id
    FROM stripe_events
    WHERE id > $1
      AND ((processing_status = 'received'
            AND (next_attempt_at IS NULL OR next_attempt_at <= now()))
           OR (processing_status = 'processing'
               AND updated_at < now() - make_interval(secs => $2)))
    ORDER BY id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE stripe_events AS e
SET processing_status = 'received', next_attempt_at = NULL, updated_at = now()
FROM due
WHERE e.id = due.id
RETURNING e.id, e.event_id;

-- name: events_known
SELECT event_id FROM stripe_events WHERE event_id = ANY($1::text[]);
