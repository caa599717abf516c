-- name: create_schema_migrations
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INT PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- name: schema_migrations_exists
SELECT to_regclass('schema_migrations') IS NOT NULL;

-- name: applied_migrations
SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version;

-- name: record_migration
INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3);

-- name: forget_migration
DELETE FROM schema_migrations WHERE version = $1;

-- name: migration_applied
SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1);

-- name: migration_try_lock
-- Transaction-scoped: released at COMMIT/ROLLBACK, so safe behind PgBouncer's transaction
-- pooling (a session lock would stay on whichever pooled backend ran it).
SELECT pg_try_advisory_xact_lock($1::bigint);

-- name: migration_lock_holder
-- Who holds the one-bigint advisory lock $1 (classid = high 32 bits, objid = low 32 bits,
-- objsubid 1), with when it took it: its transaction's start, else its session's (a session
-- lock of an earlier version). Other roles' sessions show NULL names unless the role may
-- read them (pg_read_all_stats).
SELECT a.pid, a.application_name, a.state,
       coalesce(a.xact_start, a.backend_start) AS since
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.classid::bigint = ($1::bigint >> 32) & 4294967295
  AND l.objid::bigint = $1::bigint & 4294967295
  AND l.pid <> pg_backend_pid()
LIMIT 1;

-- name: table_exists
SELECT to_regclass($1) IS NOT NULL;

-- name: table_quoted_name
-- The table $1 as Postgres quotes it (regclass), for the one statement built at run time:
-- a rollback's exact row count of a table its down part drops (`migrations.data_at_risk`).
SELECT $1::regclass::text;

-- name: migration_try_session_lock
-- The session form, only for a no-transaction migration (CREATE INDEX CONCURRENTLY), which
-- has no transaction to scope a lock; polled, released right after that file.
SELECT pg_try_advisory_lock($1::bigint);

-- name: migration_session_unlock
SELECT pg_advisory_unlock($1::bigint);
