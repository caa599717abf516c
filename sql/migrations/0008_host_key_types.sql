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
-- The ledger functions of 0005/0006 take BIGINT; for uuid and text keys they are replaced
-- by the same bodies typed for the key. `users_match` (every reference kind in one
-- statement) and `users_create_by_email` are generated for the key type and the tenant
-- column, so the worker's SQL never casts a reference to a type it may not hold.

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
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The ledger's user_id type and key family, read from users.id: every integer key is held
-- as BIGINT (wider, what earlier installs have), uuid as uuid, text and varchar(n) as is.
CREATE OR REPLACE FUNCTION ledger_user_key_type() RETURNS TEXT
    LANGUAGE sql STABLE
    AS $$
SELECT CASE WHEN a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype) THEN 'bigint'
            ELSE format_type(a.atttypid, a.atttypmod) END
FROM pg_attribute a
WHERE a.attrelid = 'users'::regclass AND a.attname = 'id' AND NOT a.attisdropped
$$;

CREATE OR REPLACE FUNCTION ledger_user_key_family() RETURNS TEXT
    LANGUAGE sql STABLE
    AS $$
SELECT CASE WHEN a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
                THEN 'integer'
            WHEN a.atttypid = 'uuid'::regtype THEN 'uuid'
            ELSE 'text' END
FROM pg_attribute a
WHERE a.attrelid = 'users'::regclass AND a.attname = 'id' AND NOT a.attisdropped
$$;

INSERT INTO users_host_shape (recorded_by, tenant_column)
VALUES (8, nullif(current_setting('webhook_worker.users_tenant_column', true), ''))
ON CONFLICT DO NOTHING;

UPDATE users_host_shape
SET key_type = (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                WHERE a.attrelid = 'users'::regclass AND a.attname = 'id'
                  AND NOT a.attisdropped),
    ledger_key_type = (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                       WHERE a.attrelid = 'credit_transactions'::regclass
                         AND a.attname = 'user_id' AND NOT a.attisdropped),
    lock_key_function = CASE ledger_user_key_family()
        WHEN 'integer' THEN 'low32'
        ELSE 'sha256_first4' END,
    recorded_at = now();

DO $$
DECLARE
    v_family TEXT := ledger_user_key_family();
BEGIN
    IF v_family = 'integer' THEN
        RETURN;  -- 0005/0006 already take BIGINT
    END IF;
    DROP FUNCTION IF EXISTS ledger_credit_many(
        BIGINT[], BIGINT[], TEXT[], TEXT[], TEXT[], TEXT[], TEXT[], INT
    );
    DROP FUNCTION IF EXISTS ledger_credit(BIGINT, BIGINT, TEXT, TEXT, TEXT, TEXT, TEXT);
    DROP FUNCTION IF EXISTS ledger_lock_key(BIGINT);
    EXECUTE replace($tpl$
        CREATE OR REPLACE FUNCTION ledger_lock_key(user_id {KEY}) RETURNS INT
            LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
            AS $f$
        SELECT ('x' || encode(substring(sha256(convert_to(user_id::text, 'UTF8')) FROM 1 FOR 4),
                              'hex'))::bit(32)::int
        $f$
    $tpl$, '{KEY}', v_family);
    EXECUTE replace($tpl$
        CREATE OR REPLACE FUNCTION ledger_credit(
            p_user_id {KEY},
            p_amount BIGINT,
            p_kind TEXT,
            p_event_id TEXT,
            p_checkout_session_id TEXT,
            p_payment_intent_id TEXT,
            p_description TEXT,
            OUT applied BOOLEAN,
            OUT balance BIGINT
        )
            LANGUAGE plpgsql VOLATILE
            AS $f$
        DECLARE
            v_balance_after BIGINT;
        BEGIN
            -- 0x57574C47 ("WWLG"): webhook_worker.ledger.LOCK_NAMESPACE, the two-int form.
            PERFORM pg_advisory_xact_lock(1465338951, ledger_lock_key(p_user_id));

            -- ON CONFLICT DO NOTHING covers the unique event_id and one PURCHASE per session.
            WITH inserted AS (
                INSERT INTO credit_transactions
                    (user_id, amount, balance_after, transaction_type, event_id, checkout_session_id,
                     payment_intent_id, description)
                SELECT u.id, p_amount, u.credits_balance + p_amount, p_kind, p_event_id,
                       p_checkout_session_id, p_payment_intent_id, p_description
                FROM users u
                WHERE u.id = p_user_id
                ON CONFLICT DO NOTHING
                RETURNING credit_transactions.balance_after
            ), moved AS (
                UPDATE users
                SET credits_balance = credits_balance + p_amount, updated_at = now()
                WHERE id = p_user_id AND EXISTS (SELECT 1 FROM inserted)
                RETURNING credits_balance
            )
            SELECT inserted.balance_after, moved.credits_balance
            INTO v_balance_after, balance
            FROM inserted, moved;
            applied := FOUND;

            IF applied THEN
                IF balance IS DISTINCT FROM v_balance_after THEN
                    -- Someone changed the balance without the lock: roll the whole statement back.
                    RAISE EXCEPTION 'balance of user % moved outside the ledger lock; rolled back',
                        p_user_id
                        USING ERRCODE = 'WWL01';
                END IF;
            ELSE
                SELECT u.credits_balance INTO balance FROM users u WHERE u.id = p_user_id;
                IF NOT FOUND THEN
                    -- Nothing to credit: roll back rather than mark the event completed.
                    RAISE EXCEPTION 'user % does not exist; nothing was credited', p_user_id
                        USING ERRCODE = 'WWL02';
                END IF;
            END IF;

            UPDATE stripe_events
            SET processing_status = 'completed', error_message = NULL, processed_at = now(),
                updated_at = now()
            WHERE event_id = p_event_id AND processing_status NOT IN ('completed', 'ignored');
        END;
        $f$
    $tpl$, '{KEY}', v_family);
    EXECUTE replace($tpl$
        CREATE OR REPLACE FUNCTION ledger_credit_many(
            p_user_ids {KEY}[],
            p_amounts BIGINT[],
            p_kinds TEXT[],
            p_event_ids TEXT[],
            p_checkout_session_ids TEXT[],
            p_payment_intent_ids TEXT[],
            p_descriptions TEXT[],
            p_lock_timeout_ms INT
        )
            RETURNS TABLE (credited_event_id TEXT, applied BOOLEAN, balance BIGINT)
            LANGUAGE plpgsql VOLATILE
            AS $f$
        DECLARE
            p RECORD;
        BEGIN
            PERFORM set_config('lock_timeout', p_lock_timeout_ms::text || 'ms', true);
            FOR p IN
                SELECT *
                FROM unnest(p_user_ids, p_amounts, p_kinds, p_event_ids, p_checkout_session_ids,
                            p_payment_intent_ids, p_descriptions)
                    AS t(user_id, amount, kind, event_id, checkout_session_id, payment_intent_id,
                         description)
                ORDER BY ledger_lock_key(t.user_id), t.user_id, t.event_id
            LOOP
                SELECT p.event_id, c.applied, c.balance
                INTO credited_event_id, applied, balance
                FROM ledger_credit(p.user_id, p.amount, p.kind, p.event_id, p.checkout_session_id,
                                   p.payment_intent_id, p.description) AS c;
                RETURN NEXT;
            END LOOP;
        END;
        $f$
    $tpl$, '{KEY}', v_family);
END
$$;

DO $$
DECLARE
    v_family TEXT := ledger_user_key_family();
    v_key TEXT := CASE ledger_user_key_family() WHEN 'integer' THEN 'bigint'
                  ELSE ledger_user_key_family() END;
    v_tenant TEXT := (SELECT tenant_column FROM users_host_shape);
    v_tenant_type TEXT;
    v_uuid_match TEXT;
    v_sql TEXT;
BEGIN
    -- Each reference kind is matched only against a column of its own type: no cast of a
    -- reference can fail. UUID references on a text key match its lower- or upper-case text.
    v_uuid_match := CASE v_family
        WHEN 'integer' THEN 'u.uuid = q.value'
        WHEN 'uuid' THEN 'u.id = q.value'
        ELSE 'u.id IN (q.value::text, upper(q.value::text))' END;
    v_sql := $tpl$
        CREATE OR REPLACE FUNCTION users_match(
            p_integers BIGINT[], p_integer_ords INT[],
            p_uuids UUID[], p_uuid_ords INT[],
            p_texts TEXT[], p_text_ords INT[],
            p_emails TEXT[], p_email_ords INT[], p_email_tenants TEXT[]
        )
            RETURNS TABLE (ord INT, user_id {KEY})
            LANGUAGE sql STABLE
            AS $f$
        SELECT q.ord, u.id::{KEY}
        FROM unnest(p_integers, p_integer_ords) AS q (value, ord)
        JOIN users u ON {INTEGER_MATCH}
        UNION ALL
        SELECT q.ord, u.id::{KEY}
        FROM unnest(p_uuids, p_uuid_ords) AS q (value, ord)
        JOIN users u ON {UUID_MATCH}
        UNION ALL
        SELECT q.ord, u.id::{KEY}
        FROM unnest(p_texts, p_text_ords) AS q (value, ord)
        JOIN users u ON {TEXT_MATCH}
        UNION ALL
        SELECT q.ord, u.id::{KEY}
        FROM unnest(p_emails, p_email_ords, p_email_tenants) AS q (value, ord, tenant)
        JOIN users u ON lower(u.email) = lower(q.value) {TENANT_MATCH}
        $f$
    $tpl$;
    v_sql := replace(v_sql, '{INTEGER_MATCH}',
                     CASE v_family WHEN 'integer' THEN 'u.id = q.value' ELSE 'false' END);
    v_sql := replace(v_sql, '{UUID_MATCH}', v_uuid_match);
    v_sql := replace(v_sql, '{TEXT_MATCH}',
                     CASE v_family WHEN 'text' THEN 'u.id = q.value' ELSE 'false' END);
    v_sql := replace(v_sql, '{TENANT_MATCH}',
                     CASE WHEN v_tenant IS NULL THEN ''
                          ELSE format('AND (q.tenant IS NULL OR u.%I::text = q.tenant)',
                                      v_tenant) END);
    EXECUTE replace(v_sql, '{KEY}', v_key);

    IF v_tenant IS NULL THEN
        v_sql := $tpl$
            CREATE OR REPLACE FUNCTION users_create_by_email(p_email TEXT, p_tenant TEXT)
                RETURNS TABLE (user_id {KEY}, created BOOLEAN)
                LANGUAGE sql VOLATILE
                AS $f$
            -- Race-safe: two workers inserting the same new email end with one row; the
            -- no-op update makes RETURNING give the existing id.
            INSERT INTO users (email) VALUES (p_email)
            ON CONFLICT ((lower(email))) DO UPDATE SET email = users.email
            RETURNING users.id::{KEY}, (users.xmax = 0)
            $f$
        $tpl$;
    ELSE
        SELECT format_type(a.atttypid, a.atttypmod) INTO v_tenant_type
        FROM pg_attribute a
        WHERE a.attrelid = 'users'::regclass AND a.attname = v_tenant AND NOT a.attisdropped;
        -- Per tenant: a user is created only when the tenant is known; the (tenant, email)
        -- pair is serialised by an advisory lock (namespace "WWUS"), so two workers never
        -- create it twice even when the host has no unique (tenant, email) constraint. A
        -- tenant value its column cannot hold creates nobody (and raises nothing).
        v_sql := $tpl$
            CREATE OR REPLACE FUNCTION users_create_by_email(p_email TEXT, p_tenant TEXT)
                RETURNS TABLE (user_id {KEY}, created BOOLEAN)
                LANGUAGE plpgsql VOLATILE
                AS $f$
            #variable_conflict use_column
            DECLARE
                v_id {KEY};
            BEGIN
                IF p_tenant IS NULL THEN
                    RETURN;
                END IF;
                PERFORM pg_advisory_xact_lock(1465341267, ('x' || encode(substring(
                    sha256(convert_to(p_tenant || '/' || lower(p_email), 'UTF8'))
                    FROM 1 FOR 4), 'hex'))::bit(32)::int);
                SELECT u.id INTO v_id FROM users u
                WHERE u.{TENANT}::text = p_tenant AND lower(u.email) = lower(p_email)
                ORDER BY u.id LIMIT 1;
                IF FOUND THEN
                    user_id := v_id;
                    created := false;
                    RETURN NEXT;
                    RETURN;
                END IF;
                BEGIN
                    INSERT INTO users (email, {TENANT})
                    VALUES (p_email, p_tenant::{TENANT_TYPE})
                    RETURNING users.id INTO v_id;
                EXCEPTION
                    WHEN invalid_text_representation OR numeric_value_out_of_range
                        OR string_data_right_truncation OR invalid_datetime_format THEN
                        RETURN;
                END;
                user_id := v_id;
                created := true;
                RETURN NEXT;
            END
            $f$
        $tpl$;
        v_sql := replace(v_sql, '{TENANT}', format('%I', v_tenant));
        v_sql := replace(v_sql, '{TENANT_TYPE}', v_tenant_type);
    END IF;
    EXECUTE replace(v_sql, '{KEY}', v_key);
END
$$;

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
