-- When an event released after a transient fault is due again (issue 15). The worker puts
-- such an event back to `received` with `next_attempt_at` = now + its backoff and enqueues a
-- job deferred by the same delay; a claim takes a `received` event only once it is due, and
-- the sweeper re-enqueues it only once it has been due for STALE_AFTER_SECONDS. Jobs carry
-- batches of event ids under fresh job ids, so two jobs may name the same event: this column
-- keeps a duplicate job (a second delivery, a sweep, a replay) from running it early.
-- NULL: due now (every row written before this migration, and every new event).

-- migrate:up
ALTER TABLE stripe_events ADD COLUMN IF NOT EXISTS next_attempt_at TIMESTAMPTZ;

-- migrate:down
ALTER TABLE stripe_events DROP COLUMN IF EXISTS next_attempt_at;
