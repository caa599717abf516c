-- Server-side console sessions (webhook_worker/console/session.py). $1 is always the
-- SHA-256 of a session id, never the id itself.

-- name: console_session_start
INSERT INTO console_sessions (sid_hash, operator, expires_at)
VALUES ($1, $2, now() + make_interval(secs => $3));

-- name: console_session_touch
-- The session is live: not ended, not expired ($1's row), used within the idle limit ($3
-- seconds) and of this operator ($2). Marks it used now.
UPDATE console_sessions
SET last_seen_at = now()
WHERE sid_hash = $1
  AND operator = $2
  AND expires_at > now()
  AND last_seen_at > now() - make_interval(secs => $3)
RETURNING sid_hash;

-- name: console_session_end
DELETE FROM console_sessions WHERE sid_hash = $1;

-- name: console_sessions_end_others
-- At start-up: sessions of operators no longer configured (a token removed) end.
DELETE FROM console_sessions WHERE NOT (operator = ANY($1::text[]));

-- name: console_sessions_prune
DELETE FROM console_sessions
WHERE expires_at <= now() OR last_seen_at <= now() - make_interval(secs => $1);
