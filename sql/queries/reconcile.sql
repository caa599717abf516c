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

-- name: reconcile_take_lease
-- The fleet's reconcile lease ($1 name) for holder $2 during $3 seconds: taken when nobody
-- holds it or its holder let it expire. Returns a row only when $2 holds it now.
INSERT INTO reconcile_lease AS l (name, holder, acquired_at, expires_at)
VALUES ($1, $2, now(), now() + make_interval(secs => $3))
ON CONFLICT (name) DO UPDATE
SET holder = EXCLUDED.holder, acquired_at = now(), expires_at = EXCLUDED.expires_at
WHERE l.expires_at < now() OR l.holder = EXCLUDED.holder
RETURNING l.holder;

-- name: reconcile_renew_lease
UPDATE reconcile_lease SET expires_at = now() + make_interval(secs => $3)
WHERE name = $1 AND holder = $2 AND expires_at >= now()
RETURNING holder;

-- name: reconcile_release_lease
-- An UPDATE, not a DELETE: the runtime role needs no DELETE on any table.
UPDATE reconcile_lease SET expires_at = now() - interval '1 second'
WHERE name = $1 AND holder = $2;

-- name: reconcile_lease_holder
SELECT holder, acquired_at, expires_at FROM reconcile_lease
WHERE name = $1 AND expires_at >= now();
