-- One row per Stripe event id with the raw event kept. Postgres is the source of truth;
-- Redis only carries wake-ups, so the sweeper scans this table by status, oldest first.

-- migrate:up
CREATE TABLE stripe_events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id TEXT NOT NULL CONSTRAINT stripe_events_event_id_key UNIQUE,
    type TEXT NOT NULL,
    livemode BOOLEAN NOT NULL DEFAULT false,
    api_version TEXT,
    account TEXT,
    stripe_created_at TIMESTAMPTZ,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    raw_data JSONB,
    processing_status TEXT NOT NULL DEFAULT 'received'
        CONSTRAINT stripe_events_status_check
        CHECK (processing_status IN ('received', 'processing', 'completed', 'failed', 'ignored')),
    attempts INT NOT NULL DEFAULT 0,
    error_message TEXT,
    processed_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- "events by status, oldest first": the sweeper, ops lists and stats all read this way.
CREATE INDEX stripe_events_status_received_at_idx
    ON stripe_events (processing_status, received_at);
CREATE INDEX stripe_events_type_received_at_idx ON stripe_events (type, received_at);

-- migrate:down
DROP TABLE IF EXISTS stripe_events;
