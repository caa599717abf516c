-- Every replay an operator asks for (console or /ops API): who, when, what and how many.
-- `event_ids` holds the replayed ids (at most OPS_REPLAY_MAX per call), so the event page
-- can show each replay that touched it (GIN index) and a bulk replay its progress.

-- migrate:up
CREATE TABLE IF NOT EXISTS ops_audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL DEFAULT now(),
    who TEXT NOT NULL,
    client TEXT,
    via TEXT NOT NULL CONSTRAINT ops_audit_via_check CHECK (via IN ('console', 'api', 'cli')),
    action TEXT NOT NULL CONSTRAINT ops_audit_action_check CHECK (action IN ('replay')),
    forced BOOLEAN NOT NULL DEFAULT false,
    filters JSONB,
    event_ids TEXT[] NOT NULL DEFAULT '{}',
    count INT NOT NULL
);
CREATE INDEX IF NOT EXISTS ops_audit_event_ids_idx ON ops_audit USING gin (event_ids);
CREATE INDEX IF NOT EXISTS ops_audit_at_idx ON ops_audit (at DESC);

-- migrate:down
DROP TABLE IF EXISTS ops_audit;
