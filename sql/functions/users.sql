-- The user lookups and writes of the worker, current state: installed with ledger.sql by a
-- migration carrying `-- migrate:functions` (webhook_worker/db/functions.py renders them
-- for the host's key type, users table, tenant column and version column).
--
-- Placeholders, besides {key}, {users} and {version_bump} (ledger.sql):
--   {integer_match} {uuid_match} {text_match}  how each reference kind matches users.id /
--                   users.uuid for the key type: no reference is cast to a type it may not
--                   hold, so no lookup can raise
--   {tenant_match}  `AND (q.tenant IS NULL OR u."tenant_id"::text = q.tenant)`, or nothing
--   {tenant} {tenant_type}  the tenant column (quoted) and its type (for the per-tenant
--                   users_create_by_email only)

-- function: users_match
-- Every reference kind in one statement: each pair of arrays is (values, their positions in
-- the caller's list), emails also with a tenant (NULL: any tenant).
CREATE OR REPLACE FUNCTION users_match(
    p_integers BIGINT[], p_integer_ords INT[],
    p_uuids UUID[], p_uuid_ords INT[],
    p_texts TEXT[], p_text_ords INT[],
    p_emails TEXT[], p_email_ords INT[], p_email_tenants TEXT[]
)
    RETURNS TABLE (ord INT, user_id {key})
    LANGUAGE sql STABLE
    AS $$
SELECT q.ord, u.id::{key}
FROM unnest(p_integers, p_integer_ords) AS q (value, ord)
JOIN {users} u ON {integer_match}
UNION ALL
SELECT q.ord, u.id::{key}
FROM unnest(p_uuids, p_uuid_ords) AS q (value, ord)
JOIN {users} u ON {uuid_match}
UNION ALL
SELECT q.ord, u.id::{key}
FROM unnest(p_texts, p_text_ords) AS q (value, ord)
JOIN {users} u ON {text_match}
UNION ALL
SELECT q.ord, u.id::{key}
FROM unnest(p_emails, p_email_ords, p_email_tenants) AS q (value, ord, tenant)
JOIN {users} u ON lower(u.email) = lower(q.value) {tenant_match}
$$;

-- function: users_create_by_email when no tenant
-- Race-safe: two workers inserting the same new email end with one row. Each statement of
-- a PL/pgSQL function takes a fresh snapshot, so after a conflict the SELECT sees the row
-- the other worker committed. No system column is read, so an auto-updatable view works.
CREATE OR REPLACE FUNCTION users_create_by_email(p_email TEXT, p_tenant TEXT)
    RETURNS TABLE (user_id {key}, created BOOLEAN)
    LANGUAGE plpgsql VOLATILE
    AS $$
#variable_conflict use_column
DECLARE
    v_id {key};
BEGIN
    -- No conflict target: Postgres infers none through a view, and any unique key that
    -- refuses the row (lower(email) above all) means the user exists or cannot be made.
    INSERT INTO {users} AS u (email) VALUES (p_email)
    ON CONFLICT DO NOTHING
    RETURNING u.id INTO v_id;
    IF FOUND THEN
        user_id := v_id;
        created := true;
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT u.id INTO v_id FROM {users} u WHERE lower(u.email) = lower(p_email);
    IF FOUND THEN
        user_id := v_id;
        created := false;
        RETURN NEXT;
    END IF;
END
$$;

-- function: users_create_by_email when tenant
-- Per tenant: a user is created only when the tenant is known; the (tenant, email) pair is
-- serialised by an advisory lock (namespace "WWUS"), so two workers never create it twice
-- even when the host has no unique (tenant, email) constraint. A tenant value its column
-- cannot hold creates nobody (and raises nothing).
CREATE OR REPLACE FUNCTION users_create_by_email(p_email TEXT, p_tenant TEXT)
    RETURNS TABLE (user_id {key}, created BOOLEAN)
    LANGUAGE plpgsql VOLATILE
    AS $$
#variable_conflict use_column
DECLARE
    v_id {key};
BEGIN
    IF p_tenant IS NULL THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(1465341267, ('x' || encode(substring(
        sha256(convert_to(p_tenant || '/' || lower(p_email), 'UTF8'))
        FROM 1 FOR 4), 'hex'))::bit(32)::int);
    SELECT u.id INTO v_id FROM {users} u
    WHERE u.{tenant}::text = p_tenant AND lower(u.email) = lower(p_email)
    ORDER BY u.id LIMIT 1;
    IF FOUND THEN
        user_id := v_id;
        created := false;
        RETURN NEXT;
        RETURN;
    END IF;
    BEGIN
        INSERT INTO {users} AS u (email, {tenant})
        VALUES (p_email, p_tenant::{tenant_type})
        RETURNING u.id INTO v_id;
    EXCEPTION
        WHEN invalid_text_representation OR numeric_value_out_of_range
            OR string_data_right_truncation OR invalid_datetime_format THEN
            RETURN;
    END;
    user_id := v_id;
    created := true;
    RETURN NEXT;
END
$$;

-- function: users_remember_stripe_customer
-- The user's Stripe customer id, only when the user has none and no other user already
-- holds it. A write to the host's row like any other: it bumps the version column.
CREATE OR REPLACE FUNCTION users_remember_stripe_customer(p_user_id {key}, p_customer TEXT)
    RETURNS TABLE (user_id {key})
    LANGUAGE sql VOLATILE
    AS $$
UPDATE {users} AS u
SET stripe_customer_id = p_customer, updated_at = now(){version_bump}
WHERE u.id = p_user_id
  AND u.stripe_customer_id IS NULL
  AND NOT EXISTS (SELECT 1 FROM {users} other WHERE other.stripe_customer_id = p_customer)
RETURNING u.id::{key}
$$;

-- function: users_balance
-- The user's balance (NULL for no such user), for the application's Python API
-- (webhook_worker.credits.balance), which runs in the host's process: the table is written
-- here, so that process needs no USERS_TABLE of its own.
CREATE OR REPLACE FUNCTION users_balance(p_user_id {key}) RETURNS BIGINT
    LANGUAGE sql STABLE
    AS $$
SELECT u.credits_balance FROM {users} u WHERE u.id = p_user_id
$$;
