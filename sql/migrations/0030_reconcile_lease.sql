-- The reconcile cron's fleet lock as a lease row with an expiry (issue 28): one worker of the
-- fleet runs the cron at a time, and the lease lives in a row, not in a database session, so
-- it is safe behind PgBouncer's transaction pooling (a session advisory lock stays on
-- whichever pooled backend took it). A holder renews it while it runs; a holder that died
-- loses it when it expires.

-- migrate:up
CREATE TABLE IF NOT EXISTS reconcile_lease (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
);

-- migrate:down
DROP TABLE IF EXISTS reconcile_lease;
