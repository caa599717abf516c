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
-- a rollback's exact row count of a table its down part drops (`data_loss.data_at_risk`).
SELECT $1::regclass::text;

-- name: migration_lease_holder
-- The migration lease (webhook_worker/db/migration_lock.py) is the row $1 ('migrate') of
-- reconcile_lease, 0030's table of named leases, held by a run while it runs a no-transaction
-- migration. `holder` is "<token> <migration> <application_name>", and each statement the
-- holder runs starts with the comment `/* migration lease <token> */`. The live lease, if
-- any: unexpired, or its holder's statement still running (a long CREATE INDEX
-- CONCURRENTLY is its own heartbeat, seen in pg_stat_activity).
SELECT l.holder, l.acquired_at, l.expires_at, a.pid AS backend_pid, a.query_start
FROM reconcile_lease l
LEFT JOIN LATERAL (
    SELECT s.pid, s.query_start FROM pg_stat_activity s
    WHERE s.state = 'active' AND s.pid <> pg_backend_pid()
      AND starts_with(s.query, '/* migration lease ' || split_part(l.holder, ' ', 1) || ' */')
    ORDER BY s.query_start
    LIMIT 1
) a ON true
WHERE l.name = $1 AND (l.expires_at >= now() OR a.pid IS NOT NULL);

-- name: migration_take_lease
-- Under the migration lock, once migration_lease_holder found no live lease: a free or
-- expired row becomes $2's for $3 seconds (a holder that renewed meanwhile keeps it). $2 is
-- "<token> <migration>"; the session's application_name is added.
INSERT INTO reconcile_lease AS l (name, holder, acquired_at, expires_at)
VALUES ($1, $2 || ' ' || current_setting('application_name'), now(),
        now() + make_interval(secs => $3))
ON CONFLICT (name) DO UPDATE
SET holder = EXCLUDED.holder, acquired_at = now(), expires_at = EXCLUDED.expires_at
WHERE l.expires_at < now()
RETURNING l.holder;

-- name: migration_renew_lease
-- Before each statement of the holder ($2, its token): NULL once another run took it over.
UPDATE reconcile_lease SET expires_at = now() + make_interval(secs => $3)
WHERE name = $1 AND split_part(holder, ' ', 1) = $2
RETURNING holder;

-- name: migration_end_lease
-- The holder's lease deleted: with the record of its migration (NULL: it was taken over),
-- or when it stops.
DELETE FROM reconcile_lease WHERE name = $1 AND split_part(holder, ' ', 1) = $2
RETURNING holder;
