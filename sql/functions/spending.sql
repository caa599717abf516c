-- The spending functions' two statements on the host's users table, current state: every
-- spending function (credits_spend, _grant, _adjust, _hold, _settle, _release, the expiry
-- cron and the shortfall collection, migration 0025) reads and moves the balance only
-- through these, so the users table (USERS_TABLE) and the version bump live here once.
-- Installed with ledger.sql and users.sql (webhook_worker/db/functions.py); 0025 installs
-- its own first, and 0035 replaces them with this text.

-- function: credits_locked_balance
-- The user's lock, then the balance read under it (raises WWL02 for no such user).
CREATE OR REPLACE FUNCTION credits_locked_balance(p_user_id {key}) RETURNS BIGINT
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    v_balance BIGINT;
BEGIN
    IF p_user_id IS NULL THEN
        RAISE EXCEPTION 'user_id is required' USING ERRCODE = '22004';
    END IF;
    -- 0x57574C47 ("WWLG"): webhook_worker.worker.ledger.LOCK_NAMESPACE, as ledger_credit.
    PERFORM pg_advisory_xact_lock(1465338951, ledger_lock_key(p_user_id));
    SELECT u.credits_balance INTO v_balance FROM {users} u WHERE u.id = p_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % does not exist; nothing was written', p_user_id
            USING ERRCODE = 'WWL02';
    END IF;
    RETURN v_balance;
END;
$$;

-- function: credits_write_row
-- One ledger row and the balance (and the host's version column), together; call with the
-- user's lock held.
CREATE OR REPLACE FUNCTION credits_write_row(
    p_user_id {key}, p_amount BIGINT, p_kind TEXT, p_key TEXT, p_description TEXT,
    p_payment_intent_id TEXT DEFAULT NULL,
    OUT transaction_id BIGINT, OUT balance BIGINT
)
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    v_after BIGINT;
BEGIN
    WITH inserted AS (
        INSERT INTO credit_transactions
            (user_id, amount, balance_after, transaction_type, idempotency_key,
             description, payment_intent_id)
        SELECT u.id, p_amount, u.credits_balance + p_amount, p_kind, p_key, p_description,
               p_payment_intent_id
        FROM {users} u
        WHERE u.id = p_user_id
        RETURNING credit_transactions.id, credit_transactions.balance_after
    ), moved AS (
        UPDATE {users} AS u
        SET credits_balance = u.credits_balance + p_amount, updated_at = now(){version_bump}
        WHERE u.id = p_user_id AND EXISTS (SELECT 1 FROM inserted)
        RETURNING u.credits_balance
    )
    SELECT inserted.id, inserted.balance_after, moved.credits_balance
    INTO transaction_id, v_after, balance
    FROM inserted, moved;
    IF balance IS DISTINCT FROM v_after THEN
        RAISE EXCEPTION 'balance of user % moved outside the ledger lock; rolled back',
            p_user_id USING ERRCODE = 'WWL01';
    END IF;
END;
$$;
