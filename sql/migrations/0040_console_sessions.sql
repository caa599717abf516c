-- Console sessions held on the server, so that logging out, an expiry, an idle timeout or a
-- token rotation really ends a session: a cookie is honoured only while its row exists (and
-- its signature, which is keyed on the operators' tokens, still checks). Only a SHA-256 of
-- the session id is stored: read access to this table gives no usable cookie.

-- migrate:up
CREATE TABLE IF NOT EXISTS console_sessions (
    sid_hash BYTEA PRIMARY KEY,
    operator TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS console_sessions_expires_at_idx ON console_sessions (expires_at);

-- migrate:down
DROP TABLE IF EXISTS console_sessions;
