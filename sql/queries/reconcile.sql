-- Reconciliation (webhook_worker/reconcile.py): run bookkeeping, the cron's watermark and
-- the mark on events a run recovered.

-- name: reconcile_mark_recovered
UPDATE stripe_events SET source = 'reconcile' WHERE event_id = ANY($1::text[]);

-- name: reconcile_start_run
INSERT INTO reconcile_runs (trigger, window_start, window_end)
VALUES ($1, $2, $3)
RETURNING id;

-- name: reconcile_finish_run
UPDATE reconcile_runs
SET status = $2, pages = $3, events_found = $4, events_recovered = $5, error_message = $6,
    finished_at = now()
WHERE id = $1;

-- name: reconcile_watermark
-- Where the next cron run starts: the end of the newest window a cron run covered whole.
SELECT max(window_end) FROM reconcile_runs WHERE trigger = 'cron' AND status = 'succeeded';

-- name: reconcile_last_runs
SELECT id, trigger, window_start, window_end, status, pages, events_found, events_recovered,
       error_message, started_at, finished_at
FROM reconcile_runs
ORDER BY started_at DESC, id DESC
LIMIT $1;

-- name: reconcile_last_success
SELECT max(finished_at) FROM reconcile_runs WHERE status = 'succeeded';

-- name: reconcile_try_lock
-- Session-level, on the run's own connection: one reconcile at a time across the fleet.
SELECT pg_try_advisory_lock($1::int, $2::int);

-- name: reconcile_unlock
SELECT pg_advisory_unlock($1::int, $2::int);
