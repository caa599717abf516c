-- The ledger functions, current state: the one source the migrations install (a migration
-- with the line `-- migrate:functions` installs every file of sql/functions/ after its up
-- part, in its transaction; see webhook_worker/db/functions.py). tests/test_functions.py
-- checks that the installed functions equal this text for each key type.
--
-- Placeholders, filled by webhook_worker/db/functions.py from what `migrate` found:
--   {key}           the ledger's key type: bigint (any integer users.id), uuid or text
--   {users}         the host's users table, schema-qualified and quoted (USERS_TABLE)
--   {lock_key}      the lock key expression of user_id (low 32 bits, or sha256's first 4)
--   {version_bump}  `, "version" = u."version" + 1` for the host's optimistic-locking
--                   column (USERS_VERSION_COLUMN or detected), else nothing
-- Every statement that moves credits_balance bumps the version column in the same UPDATE,
-- so an ORM that read the row before (SQLAlchemy's version_id_col, Rails' lock_version)
-- fails its stale write instead of overwriting the credit.

-- function: ledger_lock_key
-- The user's int4 key in the ledger's lock space (webhook_worker.db.host.lock_key computes
-- the same in Python; `verify` checks they agree).
CREATE OR REPLACE FUNCTION ledger_lock_key(user_id {key}) RETURNS INT
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT {lock_key} $$;

-- function: ledger_apply
-- One ledger row and the balance it moves, under the caller's lock: every row written
-- outside ledger_credit (refunds, disputes, reversals, SUBSCRIPTION_CREDIT, EXPIRY). A
-- repeat (unique event_id, one PURCHASE per session, one SUBSCRIPTION_CREDIT / EXPIRY per
-- invoice) inserts nothing and returns no row. balance_after is computed from the balance
-- read under the lock; the UPDATE's own result comes back beside it, so the caller can
-- prove nobody moved the balance without the lock.
CREATE OR REPLACE FUNCTION ledger_apply(
    p_user_id {key},
    p_amount BIGINT,
    p_kind TEXT,
    p_event_id TEXT,
    p_checkout_session_id TEXT,
    p_payment_intent_id TEXT,
    p_description TEXT,
    p_invoice_id TEXT DEFAULT NULL,
    p_subscription_id TEXT DEFAULT NULL,
    p_invoice_created TIMESTAMPTZ DEFAULT NULL,
    p_period_start TIMESTAMPTZ DEFAULT NULL
)
    RETURNS TABLE (balance_after BIGINT, credits_balance BIGINT)
    LANGUAGE plpgsql VOLATILE
    AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH inserted AS (
        INSERT INTO credit_transactions
            (user_id, amount, balance_after, transaction_type, event_id, checkout_session_id,
             payment_intent_id, description, invoice_id, subscription_id, invoice_created,
             period_start)
        SELECT u.id, p_amount, u.credits_balance + p_amount, p_kind, p_event_id,
               p_checkout_session_id, p_payment_intent_id, p_description, p_invoice_id,
               p_subscription_id, p_invoice_created, p_period_start
        FROM {users} u
        WHERE u.id = p_user_id
        ON CONFLICT DO NOTHING
        RETURNING credit_transactions.balance_after
    ), moved AS (
        UPDATE {users} AS u
        SET credits_balance = u.credits_balance + p_amount, updated_at = now(){version_bump}
        WHERE u.id = p_user_id AND EXISTS (SELECT 1 FROM inserted)
        RETURNING u.credits_balance
    )
    SELECT inserted.balance_after, moved.credits_balance FROM inserted, moved;
END;
$$;

-- function: ledger_credit
-- The credit path in one server-side call: the user's advisory lock, the ledger row, the
-- balance and the event's `completed` mark commit together in ONE autocommit statement, so
-- the lock is held only inside the server. A repeat inserts nothing and returns
-- applied=false with the current balance. PL/pgSQL functions are VOLATILE: under READ
-- COMMITTED every statement takes a fresh snapshot, so the balance is read after the lock
-- is granted. Self-contained (it does not call ledger_apply), so rolling the migrations
-- back leaves a working ledger_credit for the code of that version.
CREATE OR REPLACE FUNCTION ledger_credit(
    p_user_id {key},
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
    AS $$
DECLARE
    v_balance_after BIGINT;
BEGIN
    -- 0x57574C47 ("WWLG"): webhook_worker.worker.ledger.LOCK_NAMESPACE, the two-int form.
    PERFORM pg_advisory_xact_lock(1465338951, ledger_lock_key(p_user_id));

    -- ON CONFLICT DO NOTHING covers the unique event_id and one PURCHASE per session.
    WITH inserted AS (
        INSERT INTO credit_transactions
            (user_id, amount, balance_after, transaction_type, event_id, checkout_session_id,
             payment_intent_id, description)
        SELECT u.id, p_amount, u.credits_balance + p_amount, p_kind, p_event_id,
               p_checkout_session_id, p_payment_intent_id, p_description
        FROM {users} u
        WHERE u.id = p_user_id
        ON CONFLICT DO NOTHING
        RETURNING credit_transactions.balance_after
    ), moved AS (
        UPDATE {users} AS u
        SET credits_balance = u.credits_balance + p_amount, updated_at = now(){version_bump}
        WHERE u.id = p_user_id AND EXISTS (SELECT 1 FROM inserted)
        RETURNING u.credits_balance
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
        SELECT u.credits_balance INTO balance FROM {users} u WHERE u.id = p_user_id;
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
$$;

-- function: ledger_credit_many
-- Many purchases in one server-side call and one commit, with the semantics of
-- ledger_credit taken one by one in the order of their users' lock keys (so two batches
-- never wait on each other in a cycle; a user's lock is taken once per transaction however
-- many of its purchases the batch holds). A lock wait longer than p_lock_timeout_ms fails
-- the call with lock_not_available rather than stall the batch.
--
-- The usual batch (PURCHASE rows whose event, session and payment intent each appear once)
-- is written set-based: the locks, then one statement that inserts every ledger row the
-- ledger does not already hold, moves each user's balance once, and marks every event
-- completed (issue 30: a plpgsql call and four statements per purchase were a third of the
-- credit path's Postgres CPU). Any other batch runs ledger_credit row by row, the exact
-- sequential semantics for repeats inside one batch. A row the insert skipped although the
-- check under the locks found none (a writer that did not hold these users' locks) fails
-- the call with serialization_failure: the callers then credit each purchase alone.
CREATE OR REPLACE FUNCTION ledger_credit_many(
    p_user_ids {key}[],
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
    AS $$
DECLARE
    p RECORD;
    v_key INT;
    v_missing {key};
BEGIN
    PERFORM set_config('lock_timeout', p_lock_timeout_ms::text || 'ms', true);
    IF NOT (p_kinds <@ ARRAY['PURCHASE']
            AND (SELECT count(DISTINCT e) = count(*) FROM unnest(p_event_ids) e)
            AND (SELECT count(DISTINCT s) = count(s) FROM unnest(p_checkout_session_ids) s)
            AND (SELECT count(DISTINCT i) = count(i) FROM unnest(p_payment_intent_ids) i)) THEN
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
        RETURN;
    END IF;

    -- 0x57574C47 ("WWLG"): webhook_worker.worker.ledger.LOCK_NAMESPACE, the two-int form.
    FOR v_key IN SELECT DISTINCT ledger_lock_key(u) FROM unnest(p_user_ids) u ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(1465338951, v_key);
    END LOOP;
    SELECT t.u INTO v_missing
    FROM unnest(p_user_ids) t(u)
    WHERE NOT EXISTS (SELECT 1 FROM {users} x WHERE x.id = t.u)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'user % does not exist; nothing was credited', v_missing
            USING ERRCODE = 'WWL02';
    END IF;

    FOR p IN
        WITH batch AS (
            SELECT b.*,
                   u.credits_balance + sum(CASE WHEN b.fresh THEN b.amount ELSE 0 END)
                       OVER (PARTITION BY b.user_id ORDER BY b.event_id) AS balance_after
            FROM (
                SELECT t.*,
                       NOT EXISTS (SELECT 1 FROM credit_transactions c
                                   WHERE c.event_id = t.event_id)
                       AND NOT EXISTS (SELECT 1 FROM credit_transactions c
                                       WHERE c.transaction_type = 'PURCHASE'
                                         AND c.checkout_session_id = t.checkout_session_id)
                       AND NOT EXISTS (SELECT 1 FROM credit_transactions c
                                       WHERE c.transaction_type = 'PURCHASE'
                                         AND c.payment_intent_id = t.payment_intent_id)
                           AS fresh
                FROM unnest(p_user_ids, p_amounts, p_event_ids, p_checkout_session_ids,
                            p_payment_intent_ids, p_descriptions)
                    AS t(user_id, amount, event_id, checkout_session_id, payment_intent_id,
                         description)
            ) b
            JOIN {users} u ON u.id = b.user_id
        ), inserted AS (
            INSERT INTO credit_transactions
                (user_id, amount, balance_after, transaction_type, event_id,
                 checkout_session_id, payment_intent_id, description)
            SELECT b.user_id, b.amount, b.balance_after, 'PURCHASE', b.event_id,
                   b.checkout_session_id, b.payment_intent_id, b.description
            FROM batch b
            WHERE b.fresh
            ORDER BY ledger_lock_key(b.user_id), b.user_id, b.event_id
            ON CONFLICT DO NOTHING
            RETURNING 1
        ), moved AS (
            UPDATE {users} AS u
            SET credits_balance = u.credits_balance + g.total, updated_at = now(){version_bump}
            FROM (SELECT b.user_id, sum(b.amount) AS total,
                         (array_agg(b.balance_after ORDER BY b.event_id DESC))[1] AS last_after
                  FROM batch b WHERE b.fresh GROUP BY b.user_id) g
            WHERE u.id = g.user_id
            RETURNING u.credits_balance = g.last_after AS consistent
        ), completed AS (
            UPDATE stripe_events
            SET processing_status = 'completed', error_message = NULL, processed_at = now(),
                updated_at = now()
            WHERE event_id IN (SELECT b.event_id FROM batch b)
              AND processing_status NOT IN ('completed', 'ignored')
        )
        SELECT b.event_id, b.fresh, b.balance_after, b.user_id,
               (SELECT count(*) FROM inserted) AS written,
               (SELECT count(*) FROM batch f WHERE f.fresh) AS expected,
               (SELECT bool_and(m.consistent) FROM moved m) AS consistent
        FROM batch b
    LOOP
        IF p.written <> p.expected THEN
            RAISE EXCEPTION
                'a purchase of this batch was credited concurrently; credit each alone'
                USING ERRCODE = '40001';
        END IF;
        IF p.consistent IS FALSE THEN
            -- Someone changed a balance without the lock: roll the whole call back.
            RAISE EXCEPTION 'a balance of this batch moved outside the ledger lock; rolled back'
                USING ERRCODE = 'WWL01';
        END IF;
        credited_event_id := p.event_id;
        applied := p.fresh;
        balance := p.balance_after;
        RETURN NEXT;
    END LOOP;
END;
$$;
