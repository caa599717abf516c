-- User resolution for the worker (webhook_worker/resolver.py). Emails match case-insensitively
-- through the users_email_lower_key index on lower(email).

-- name: user_by_email
SELECT id FROM users WHERE lower(email) = lower($1);

-- name: user_by_uuid
SELECT id FROM users WHERE uuid = $1::uuid;

-- name: user_by_id
SELECT id FROM users WHERE id = $1::bigint;

-- name: users_lookup_many
-- user_by_id, user_by_uuid and user_by_email for many values in one statement: each pair of
-- arrays is (values, their positions in the caller's list); one (ord, id) row per match.
SELECT q.ord, u.id
FROM unnest($1::bigint[], $2::int[]) AS q (value, ord)
JOIN users u ON u.id = q.value
UNION ALL
SELECT q.ord, u.id
FROM unnest($3::uuid[], $4::int[]) AS q (value, ord)
JOIN users u ON u.uuid = q.value
UNION ALL
SELECT q.ord, u.id
FROM unnest($5::text[], $6::int[]) AS q (value, ord)
JOIN users u ON lower(u.email) = lower(q.value);

-- name: user_by_stripe_customer
SELECT id FROM users WHERE stripe_customer_id = $1;

-- name: user_upsert_by_email
-- Race-safe: two workers inserting the same new email end with one row; the no-op update
-- makes RETURNING give the existing id. `created` is true only for the inserting call.
INSERT INTO users (email) VALUES ($1)
ON CONFLICT ((lower(email))) DO UPDATE SET email = users.email
RETURNING id, (xmax = 0) AS created;

-- name: user_remember_stripe_customer
-- Only when the user has none and no other user already holds that customer id.
UPDATE users
SET stripe_customer_id = $2, updated_at = now()
WHERE id = $1
  AND stripe_customer_id IS NULL
  AND NOT EXISTS (SELECT 1 FROM users other WHERE other.stripe_customer_id = $2)
RETURNING id;
