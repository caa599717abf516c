-- The host application's `users` table as the migrations find it (webhook_worker/host.py):
-- read-only catalog queries, so `verify` and `deploy_hotfix.py --dry-run` change nothing.

-- name: host_users_columns
-- Every column: its type, whether it refuses NULL and whether an INSERT fills it by itself.
SELECT a.attname::text AS name,
       format_type(a.atttypid, a.atttypmod) AS type,
       t.typname::text AS base_type,
       a.attnotnull AS not_null,
       (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '') AS fills_itself,
       pg_column_is_updatable(a.attrelid, a.attnum, false) AS updatable
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;

-- name: host_users_unique_keys
-- Unique indexes (primary key first) with their columns; an expression column is NULL.
SELECT i.indisprimary AS is_primary,
       i.indpred IS NOT NULL AS is_partial,
       array_agg(a.attname::text ORDER BY k.position) AS columns
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k (attnum, position)
LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = $1::regclass AND i.indisunique
  AND k.position <= i.indnkeyatts
GROUP BY i.indexrelid, i.indisprimary, i.indpred IS NOT NULL
ORDER BY i.indisprimary DESC, i.indexrelid;

-- name: host_recorded_shape
-- What the migrations recorded (0001, 0008); NULL columns before they ran.
SELECT to_jsonb(s) AS shape FROM users_host_shape s;

-- name: host_shape_recorded
SELECT to_regclass('users_host_shape') IS NOT NULL;

-- name: host_lock_keys_of_users
-- A sample of users' lock keys as the server computes them, to compare with ledger.lock_key.
SELECT id AS user_id, ledger_lock_key(id) AS key FROM {users} ORDER BY id LIMIT $1;

-- name: host_lock_key_of
SELECT ledger_lock_key($1);

-- name: host_set_tenant_column
-- For the migration of this transaction (0001, 0008 read it); '' when there is none.
-- Transaction-local (is_local = true): a session setting would not survive PgBouncer.
SELECT set_config('webhook_worker.users_tenant_column', $1, true);

-- name: host_users_relation
-- The relation USERS_TABLE names ($1, quoted), as this session's search_path resolves it.
-- updatable: pg_relation_is_updatable's bits (4 UPDATE, 8 INSERT), without triggers.
SELECT n.nspname::text AS schema, c.relname::text AS name, c.relkind::text AS kind,
       pg_relation_is_updatable(c.oid, false) AS updatable
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass($1);

-- name: host_users_elsewhere
-- Schemas holding a relation named $1 (the table USERS_TABLE would otherwise create).
SELECT n.nspname::text AS schema, c.relkind::text AS kind
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = $1 AND c.relkind IN ('r', 'p', 'v', 'f', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
ORDER BY n.nspname;

-- name: host_creation_schema
-- Where an unqualified CREATE TABLE would go ($1 NULL), or whether schema $1 exists.
SELECT CASE WHEN $1::text IS NULL THEN current_schema()
            ELSE (SELECT nspname::text FROM pg_namespace WHERE nspname = $1::text) END;

-- name: host_set_users_table
-- For the migration of this transaction: the users table's schema, name and kind (table,
-- view), and the version column ('' for none); 0001/0003/0004/0008/0035 read them.
-- Transaction-local: nothing to lose or leak through a transaction-pooling PgBouncer.
SELECT set_config('webhook_worker.users_schema', $1, true),
       set_config('webhook_worker.users_name', $2, true),
       set_config('webhook_worker.users_kind', $3, true),
       set_config('webhook_worker.users_version_column', $4, true);

-- name: host_record_functions
-- What the installed functions were built on (webhook_worker/db/functions.py).
UPDATE users_host_shape
SET users_table = $1, users_kind = $2, version_column = nullif($3, ''), recorded_at = now();

-- name: host_users_objects
-- Constraints and indexes on the users table ($1, quoted), wherever its schema is.
SELECT conname::text AS name FROM pg_constraint WHERE conrelid = $1::regclass
UNION ALL
SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = $1::regclass;

-- name: host_function_sources
-- The source text (pg_proc.prosrc) of each function named in $1, in the current schema.
SELECT p.proname::text AS name, p.prosrc AS source
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = current_schema() AND p.proname = ANY($1::text[]);
