-- User resolution for the worker (webhook_worker/resolver.py). Emails match case-insensitively
-- through the users_email_lower_key index on lower(email).

-- name: user_by_email
SELECT id FROM users WHERE lower(email) = lower($1);

-- name: user_by_uuid
SELECT id FROM users WHERE uuid = $1::uuid;

-- name: user_by_id
SELECT id FROM users WHERE id = $1::bigint;

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
