-- What the runtime role may do (webhook_worker/db/privileges.py; docs/deployment.md
-- "Database roles"): read-only catalog queries, run at start-up and by /readyz.

-- name: privileges_service_tables
-- The service's tables (those of stripe_events' schema and owner) and the users table, each
-- with the privileges this session's role lacks of SELECT, INSERT, UPDATE. Bookkeeping
-- tables the runtime only reads need SELECT alone.
WITH anchor AS (
    SELECT relnamespace, relowner FROM pg_class WHERE oid = to_regclass('stripe_events')
), tables AS (
    SELECT c.oid, c.relname::text AS name
    FROM pg_class c, anchor a
    WHERE c.relnamespace = a.relnamespace AND c.relowner = a.relowner
      AND c.relkind IN ('r', 'p')
    UNION
    SELECT to_regclass('users'), 'users' WHERE to_regclass('users') IS NOT NULL
), wanted AS (
    SELECT t.oid, t.name, p.privilege
    FROM tables t
    CROSS JOIN (VALUES ('SELECT'), ('INSERT'), ('UPDATE')) AS p (privilege)
    WHERE p.privilege = 'SELECT' OR t.name NOT IN ('schema_migrations', 'users_host_shape')
)
SELECT name, array_agg(privilege ORDER BY privilege DESC) AS missing
FROM wanted
WHERE NOT has_table_privilege(oid, privilege)
GROUP BY name
ORDER BY name;

-- name: privileges_service_functions
-- The service's functions (stripe_events' schema and owner) this role may not EXECUTE.
SELECT p.oid::regprocedure::text AS signature
FROM pg_proc p, (SELECT relnamespace, relowner FROM pg_class
                 WHERE oid = to_regclass('stripe_events')) a
WHERE p.pronamespace = a.relnamespace AND p.proowner = a.relowner
  AND NOT has_function_privilege(p.oid, 'EXECUTE')
ORDER BY 1;

-- name: privileges_schema_usage
SELECT has_schema_privilege(current_schema(), 'USAGE'), current_user::text, current_schema();

-- name: privileges_migration_role
-- May this role change the users table (own it, or be a member of its owner's role) and
-- create in the schema? NULL owner when there is no users table yet.
SELECT c.relowner::regrole::text AS users_owner,
       c.oid IS NULL OR pg_has_role(current_user, c.relowner, 'USAGE') AS may_alter_users,
       has_schema_privilege(current_schema(), 'CREATE') AS may_create,
       current_user::text AS role,
       current_schema() AS schema
FROM (SELECT 1) one
LEFT JOIN pg_class c ON c.oid = to_regclass('users');
