-- Reconciliation (webhook-worker reconcile and the worker's reconcile cron): each run over
-- Stripe's List Events API is a row; the cron resumes from the newest successful cron run's
-- window_end (minus an overlap). Events a run stored are marked `source = 'reconcile'`.

-- migrate:up
ALTER TABLE stripe_events ADD COLUMN source TEXT NOT NULL DEFAULT 'webhook'
    CONSTRAINT stripe_events_source_check CHECK (source IN ('webhook', 'reconcile'));

CREATE TABLE reconcile_runs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    trigger TEXT NOT NULL CONSTRAINT reconcile_runs_trigger_check
        CHECK (trigger IN ('cron', 'manual')),
    window_start TIMESTAMPTZ NOT NULL,
    window_end TIMESTAMPTZ NOT NULL,
    status TEXT NOT NULL DEFAULT 'running' CONSTRAINT reconcile_runs_status_check
        CHECK (status IN ('running', 'succeeded', 'failed')),
    pages INT NOT NULL DEFAULT 0,
    events_found INT NOT NULL DEFAULT 0,
    events_recovered INT NOT NULL DEFAULT 0,
    error_message TEXT,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ
);
CREATE INDEX reconcile_runs_watermark_idx ON reconcile_runs (trigger, status, window_end);

-- migrate:down
DROP TABLE IF EXISTS reconcile_runs;
ALTER TABLE stripe_events DROP COLUMN IF EXISTS source;
