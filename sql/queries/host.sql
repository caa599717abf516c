-- The host application's `users` table as the migrations find it (webhook_worker/host.py):
-- read-only catalog queries, so `verify` and `deploy_hotfix.py --dry-run` change nothing.

-- name: host_users_columns
-- Every column: its type, whether it refuses NULL and whether an INSERT fills it by itself.
SELECT a.attname::text AS name,
       format_type(a.atttypid, a.atttypmod) AS type,
       t.typname::text AS base_type,
       a.attnotnull AS not_null,
       (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '') AS fills_itself
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = to_regclass('users') AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;

-- name: host_users_unique_keys
-- Unique indexes (primary key first) with their columns; an expression column is NULL.
SELECT i.indisprimary AS is_primary,
       i.indpred IS NOT NULL AS is_partial,
       array_agg(a.attname::text ORDER BY k.position) AS columns
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k (attnum, position)
LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = to_regclass('users') AND i.indisunique
  AND k.position <= i.indnkeyatts
GROUP BY i.indexrelid, i.indisprimary, i.indpred IS NOT NULL
ORDER BY i.indisprimary DESC, i.indexrelid;

-- name: host_recorded_shape
-- What the migrations recorded (0001, 0008); NULL columns before they ran.
SELECT tenant_column, key_type, ledger_key_type, lock_key_function, recorded_by
FROM users_host_shape;

-- name: host_shape_recorded
SELECT to_regclass('users_host_shape') IS NOT NULL;

-- name: host_lock_keys_of_users
-- A sample of users' lock keys as the server computes them, to compare with ledger.lock_key.
SELECT id AS user_id, ledger_lock_key(id) AS key FROM users ORDER BY id LIMIT $1;

-- name: host_lock_key_of
SELECT ledger_lock_key($1);

-- name: host_set_tenant_column
-- For the migration of this transaction (0001, 0008 read it); '' when there is none.
-- Transaction-local (is_local = true): a session setting would not survive PgBouncer.
SELECT set_config('webhook_worker.users_tenant_column', $1, true);
