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

-- name: migration_lock
SELECT pg_advisory_lock($1);

-- name: migration_try_lock
SELECT pg_try_advisory_lock($1);

-- name: migration_unlock
SELECT pg_advisory_unlock($1);
