-- The credit path in one server-side call: the user's advisory lock, the ledger row, the
-- balance and the event's `completed` mark commit together in the transaction of ONE
-- autocommit statement (`SELECT … FROM ledger_credit(…)`), so the lock is held only inside
-- the server and no BEGIN/COMMIT round trips are needed. Same semantics as the statements
-- it replaces (sql/queries/ledger.sql): a repeat inserts nothing and returns applied=false
-- with the current balance. PL/pgSQL functions are VOLATILE: under READ COMMITTED every
-- statement below takes a fresh snapshot, so the balance is read after the lock is granted.

-- migrate:up
-- The user's int4 key in the ledger's lock space: the low 32 bits of the id as a signed int4,
-- identical to webhook_worker.ledger.lock_key (the id itself below 2**31, wrapped above).
CREATE OR REPLACE FUNCTION ledger_lock_key(user_id BIGINT) RETURNS INT
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT user_id::bit(32)::int $$;

CREATE OR REPLACE FUNCTION ledger_credit(
    p_user_id BIGINT,
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
$$;

-- migrate:down
DROP FUNCTION IF EXISTS ledger_credit(BIGINT, BIGINT, TEXT, TEXT, TEXT, TEXT, TEXT);
DROP FUNCTION IF EXISTS ledger_lock_key(BIGINT);
