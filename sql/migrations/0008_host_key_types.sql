-- The host's key type, recorded, and the functions that depend on it (issue 13).
--
-- `users_host_shape` (created by 0001 on new installs, here on installs made before it) gets
-- what the ledger was built on: users.id's type, credit_transactions.user_id's type and the
-- advisory-lock key function. `webhook-worker verify` compares it with the live schema.
--
-- Lock key (`ledger_lock_key`, the second int of pg_advisory_xact_lock(namespace, key)):
-- - integer keys: the low 32 bits of the id (0005, unchanged; ids below 2**31 are their
--   own key, so running workers and this function always agree);
-- - uuid and text keys: the first 4 bytes of sha256 of the key's text (uuid: its canonical
--   lower-case form), as a signed int4. Not `hashtext`: that is an internal, undocumented
--   hash whose values may change between Postgres versions, and it cannot be recomputed
--   outside the server. sha256 is documented, stable forever, allowed under FIPS (md5 is
--   not) and the same in Python (webhook_worker.ledger.lock_key); UUIDv7 and sequential
--   text ids spread evenly, where taking the key's own leading bytes would not.
--
-- The ledger functions of 0005/0006 take BIGINT; for uuid and text keys they are dropped,
-- and the line `-- migrate:functions …` below installs the functions of sql/functions/ (their
-- one current-state source) typed for the key: `ledger_*`, `users_match` (every reference
-- kind in one statement) and `users_create_by_email`, generated for the key type and the
-- tenant column, so the worker's SQL never casts a reference to a type it may not hold.
-- Edited after release (issue 34; see migrations.EARLIER_CHECKSUMS): the earlier text built
-- the same functions from templates written here, on a table named `users` only.

-- migrate:up
CREATE TABLE IF NOT EXISTS users_host_shape (
    singleton BOOLEAN PRIMARY KEY DEFAULT true CONSTRAINT users_host_shape_one_row
        CHECK (singleton),
    recorded_by INT NOT NULL,
    created_users BOOLEAN,
    added_columns TEXT[],
    added_objects TEXT[],
    tenant_column TEXT,
    key_type TEXT,
    ledger_key_type TEXT,
    lock_key_function TEXT,
    users_table TEXT,
    users_kind TEXT,
    version_column TEXT,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The host's users table as the runner resolved it for this session (0001 has the same).
CREATE OR REPLACE FUNCTION ledger_users_table() RETURNS TEXT
    LANGUAGE sql STABLE
    AS $$
SELECT CASE WHEN coalesce(current_setting('webhook_worker.users_schema', true), '') = ''
            THEN format('%I', coalesce(nullif(current_setting('webhook_worker.users_name', true),
                                              ''), 'users'))
            ELSE format('%I.%I', current_setting('webhook_worker.users_schema'),
                        current_setting('webhook_worker.users_name')) END
$$;

-- The ledger's user_id type and key family, read from users.id: every integer key is held
-- as BIGINT (wider, what earlier installs have), uuid as uuid, text and varchar(n) as is.
CREATE OR REPLACE FUNCTION ledger_user_key_type() RETURNS TEXT
    LANGUAGE sql STABLE
    AS $$
SELECT CASE WHEN a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype) THEN 'bigint'
            ELSE format_type(a.atttypid, a.atttypmod) END
FROM pg_attribute a
WHERE a.attrelid = ledger_users_table()::regclass AND a.attname = 'id' AND NOT a.attisdropped
$$;

CREATE OR REPLACE FUNCTION ledger_user_key_family() RETURNS TEXT
    LANGUAGE sql STABLE
    AS $$
SELECT CASE WHEN a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
                THEN 'integer'
            WHEN a.atttypid = 'uuid'::regtype THEN 'uuid'
            ELSE 'text' END
FROM pg_attribute a
WHERE a.attrelid = ledger_users_table()::regclass AND a.attname = 'id' AND NOT a.attisdropped
$$;

INSERT INTO users_host_shape (recorded_by, tenant_column)
VALUES (8, nullif(current_setting('webhook_worker.users_tenant_column', true), ''))
ON CONFLICT DO NOTHING;

UPDATE users_host_shape
SET key_type = (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                WHERE a.attrelid = ledger_users_table()::regclass AND a.attname = 'id'
                  AND NOT a.attisdropped),
    ledger_key_type = (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                       WHERE a.attrelid = 'credit_transactions'::regclass
                         AND a.attname = 'user_id' AND NOT a.attisdropped),
    lock_key_function = CASE ledger_user_key_family()
        WHEN 'integer' THEN 'low32'
        ELSE 'sha256_first4' END,
    recorded_at = now();

DO $$
BEGIN
    IF ledger_user_key_family() <> 'integer' THEN
        -- 0005/0006 took BIGINT: the functions below are typed for the key instead.
        DROP FUNCTION IF EXISTS ledger_credit_many(
            BIGINT[], BIGINT[], TEXT[], TEXT[], TEXT[], TEXT[], TEXT[], INT
        );
        DROP FUNCTION IF EXISTS ledger_credit(BIGINT, BIGINT, TEXT, TEXT, TEXT, TEXT, TEXT);
        DROP FUNCTION IF EXISTS ledger_lock_key(BIGINT);
    END IF;
END
$$;

-- migrate:functions ledger.sql users.sql

-- migrate:down
DROP FUNCTION IF EXISTS users_create_by_email(TEXT, TEXT);
DROP FUNCTION IF EXISTS users_match(
    BIGINT[], INT[], UUID[], INT[], TEXT[], INT[], TEXT[], INT[], TEXT[]
);
DROP FUNCTION IF EXISTS ledger_credit_many(
    UUID[], BIGINT[], TEXT[], TEXT[], TEXT[], TEXT[], TEXT[], INT
);
DROP FUNCTION IF EXISTS ledger_credit_many(
    TEXT[], BIGINT[], TEXT[], TEXT[], TEXT[], TEXT[], TEXT[], INT
);
DROP FUNCTION IF EXISTS ledger_credit(UUID, BIGINT, TEXT, TEXT, TEXT, TEXT, TEXT);
DROP FUNCTION IF EXISTS ledger_credit(TEXT, BIGINT, TEXT, TEXT, TEXT, TEXT, TEXT);
DROP FUNCTION IF EXISTS ledger_lock_key(UUID);
DROP FUNCTION IF EXISTS ledger_lock_key(TEXT);
-- Installed from sql/functions/ by the edited text (and by 0035 on earlier installs).
DROP FUNCTION IF EXISTS users_balance(BIGINT);
DROP FUNCTION IF EXISTS users_balance(UUID);
DROP FUNCTION IF EXISTS users_balance(TEXT);
DROP FUNCTION IF EXISTS users_remember_stripe_customer(BIGINT, TEXT);
DROP FUNCTION IF EXISTS users_remember_stripe_customer(UUID, TEXT);
DROP FUNCTION IF EXISTS users_remember_stripe_customer(TEXT, TEXT);
DROP FUNCTION IF EXISTS ledger_apply(
    BIGINT, BIGINT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TIMESTAMPTZ, TIMESTAMPTZ
);
DROP FUNCTION IF EXISTS ledger_apply(
    UUID, BIGINT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TIMESTAMPTZ, TIMESTAMPTZ
);
DROP FUNCTION IF EXISTS ledger_apply(
    TEXT, BIGINT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TIMESTAMPTZ, TIMESTAMPTZ
);
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM users_host_shape WHERE recorded_by = 8) THEN
        DROP TABLE users_host_shape;  -- created here, for an install made before 0001 kept it
    ELSE
        UPDATE users_host_shape
        SET key_type = NULL, ledger_key_type = NULL, lock_key_function = NULL;
    END IF;
END
$$;
