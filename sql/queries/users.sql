-- User resolution for the worker (webhook_worker/resolver.py). The matching itself lives in
-- functions generated for the host's key type and tenant column (migration 0008), so no
-- statement here casts a reference to a type it may not hold.

-- name: users_match
-- Every reference kind in one statement: each pair of arrays is (values, their positions in
-- the caller's list), emails also with a tenant (NULL: any tenant). One (ord, user_id) row
-- per match; an email may match several users on a multi-tenant host.
SELECT ord, user_id
FROM users_match($1::bigint[], $2::int[], $3::uuid[], $4::int[], $5::text[], $6::int[],
                 $7::text[], $8::int[], $9::text[]);

-- name: user_by_stripe_customer
SELECT id FROM {users} WHERE stripe_customer_id = $1;

-- name: user_create_by_email
-- Race-safe (users_create_by_email, 0008): one row per email, or per (tenant, email) on a
-- multi-tenant host, where nothing is created without a tenant. `created` is true only for
-- the inserting call.
SELECT user_id, created FROM users_create_by_email($1, $2);

-- name: user_remember_stripe_customer
-- Only when the user has none and no other user already holds that customer id; bumps the
-- host's version column like every write of the service (sql/functions/users.sql).
SELECT user_id AS id FROM users_remember_stripe_customer($1, $2);
