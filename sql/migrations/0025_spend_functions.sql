-- Spending: the application's side of the ledger (issue 27, docs/spending.md).
--
-- SQL functions the host application calls inside its own transaction, each under the same
-- per-user advisory lock as the worker (pg_advisory_xact_lock(namespace, ledger_lock_key)):
--   credits_spend   (user, amount, key, description) -> spent | insufficient | duplicate
--   credits_grant   (user, amount, key, reason)      -> granted | duplicate
--   credits_adjust  (user, ±amount, key, reason)     -> adjusted | insufficient | duplicate
--   credits_hold    (user, amount, key, expires_in)  -> held | insufficient | duplicate
--   credits_settle  (user, key, actual)              -> settled | duplicate | unknown_hold
--   credits_release (user, key)                      -> released | duplicate | unknown_hold
-- Each returns one row (status, balance, transaction_id). They are generated for the host's
-- key type (bigint for every integer key, uuid, text), like the ledger functions of 0008.
--
-- Idempotency keys are unique per user (a partial unique index over the rows a call writes
-- first: USAGE, BONUS, ADJUSTMENT, HOLD); spending rows carry no event_id. A key reused with
-- another amount or kind raises SQLSTATE WWS01 naming the key. No call makes a balance
-- negative: a debit larger than the balance answers `insufficient` and writes nothing.
-- A hold is a HOLD row (-amount) plus a credit_holds row; settling or releasing writes one
-- HOLD_RELEASE row (+what goes back), at most one per hold (unique index). The worker's cron
-- calls credits_release_expired: an open hold past expires_at is released once (state
-- `expired`), under the user's lock, re-checked after the lock is granted.
-- SHORTFALL_POLICY (credits_settings.shortfall_policy, written by `migrate` and the worker):
-- `collect` makes a grant (and, through ledger_credit_collect, a purchase) first pay what
-- refunds and disputes could not take back (payment_states.shortfall) in its own
-- SHORTFALL_COLLECTION row, which counts as taken from that payment.
--
-- The users table is named in ONE place below (v_users); everything that touches it is
-- generated from it. Edited (issue 34): v_users is the host's USERS_TABLE as the runner
-- resolved it (ledger_users_table(), defined here too for installs made before 0035), a
-- view takes no foreign key, and 0035 replaces credits_locked_balance / credits_write_row
-- with their current source, sql/functions/spending.sql (version column bumped).

-- migrate:up
CREATE OR REPLACE FUNCTION ledger_users_table() RETURNS TEXT
    LANGUAGE sql STABLE
    AS $$
SELECT CASE WHEN coalesce(current_setting('webhook_worker.users_schema', true), '') = ''
            THEN format('%I', coalesce(nullif(current_setting('webhook_worker.users_name', true),
                                              ''), 'users'))
            ELSE format('%I.%I', current_setting('webhook_worker.users_schema'),
                        current_setting('webhook_worker.users_name')) END
$$;

ALTER TABLE credit_transactions DROP CONSTRAINT IF EXISTS credit_transactions_type_check;
ALTER TABLE credit_transactions ADD CONSTRAINT credit_transactions_type_check
    CHECK (transaction_type IN ('PURCHASE', 'USAGE', 'REFUND', 'BONUS', 'ADJUSTMENT',
                                'REFUND_REVERSAL', 'DISPUTE', 'DISPUTE_REVERSAL',
                                'SUBSCRIPTION_CREDIT', 'EXPIRY', 'HOLD', 'HOLD_RELEASE',
                                'SHORTFALL_COLLECTION'))
    NOT VALID;
ALTER TABLE credit_transactions VALIDATE CONSTRAINT credit_transactions_type_check;

ALTER TABLE credit_transactions ADD COLUMN IF NOT EXISTS idempotency_key TEXT;
-- One call per (user, key): the row a call writes first.
CREATE UNIQUE INDEX IF NOT EXISTS credit_transactions_user_idempotency_key
    ON credit_transactions (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL
      AND transaction_type IN ('USAGE', 'BONUS', 'ADJUSTMENT', 'HOLD');
-- A hold goes back at most once (settle, release or expiry).
CREATE UNIQUE INDEX IF NOT EXISTS credit_transactions_one_release_per_hold
    ON credit_transactions (user_id, idempotency_key)
    WHERE transaction_type = 'HOLD_RELEASE';

CREATE TABLE IF NOT EXISTS credits_settings (
    singleton BOOLEAN PRIMARY KEY DEFAULT true CONSTRAINT credits_settings_one_row
        CHECK (singleton),
    shortfall_policy TEXT NOT NULL DEFAULT 'forgive'
        CONSTRAINT credits_settings_shortfall_policy_check
        CHECK (shortfall_policy IN ('forgive', 'collect')),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- `migrate up` and every worker start then write SHORTFALL_POLICY here (credits_set_policy).
INSERT INTO credits_settings (shortfall_policy) VALUES ('forgive') ON CONFLICT DO NOTHING;

DO $$
DECLARE
    v_users TEXT := ledger_users_table();  -- the ONE place: USERS_TABLE, quoted
    v_family TEXT := ledger_user_key_family();
    v_key TEXT := CASE ledger_user_key_family() WHEN 'integer' THEN 'bigint'
                  ELSE ledger_user_key_family() END;
    v_sql TEXT;
    v_part TEXT;
BEGIN
    v_sql := $tpl$
    CREATE TABLE IF NOT EXISTS credit_holds (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id {LEDGER_KEY} NOT NULL {USERS_REFERENCE},
        idempotency_key TEXT NOT NULL,
        amount BIGINT NOT NULL CONSTRAINT credit_holds_amount_positive CHECK (amount > 0),
        state TEXT NOT NULL DEFAULT 'open' CONSTRAINT credit_holds_state_check
            CHECK (state IN ('open', 'settled', 'released', 'expired')),
        actual BIGINT CONSTRAINT credit_holds_actual_range CHECK (actual >= 0 AND actual <= amount),
        hold_transaction_id BIGINT NOT NULL REFERENCES credit_transactions (id),
        release_transaction_id BIGINT REFERENCES credit_transactions (id),
        expires_at TIMESTAMPTZ NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        closed_at TIMESTAMPTZ,
        CONSTRAINT credit_holds_user_key UNIQUE (user_id, idempotency_key)
    );
    CREATE INDEX IF NOT EXISTS credit_holds_open_expiry_idx
        ON credit_holds (expires_at) WHERE state = 'open';

    -- The user's lock, then the balance read under it (raises WWL02 for no such user).
    CREATE OR REPLACE FUNCTION credits_locked_balance(p_user_id {KEY}) RETURNS BIGINT
        LANGUAGE plpgsql VOLATILE
        AS $f$
    DECLARE
        v_balance BIGINT;
    BEGIN
        IF p_user_id IS NULL THEN
            RAISE EXCEPTION 'user_id is required' USING ERRCODE = '22004';
        END IF;
        -- 0x57574C47 ("WWLG"): webhook_worker.worker.ledger.LOCK_NAMESPACE, as ledger_credit.
        PERFORM pg_advisory_xact_lock(1465338951, ledger_lock_key(p_user_id));
        SELECT u.credits_balance INTO v_balance FROM {USERS} u WHERE u.id = p_user_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'user % does not exist; nothing was written', p_user_id
                USING ERRCODE = 'WWL02';
        END IF;
        RETURN v_balance;
    END;
    $f$;

    -- One ledger row and the balance, together; call with the user's lock held.
    CREATE OR REPLACE FUNCTION credits_write_row(
        p_user_id {KEY}, p_amount BIGINT, p_kind TEXT, p_key TEXT, p_description TEXT,
        p_payment_intent_id TEXT DEFAULT NULL,
        OUT transaction_id BIGINT, OUT balance BIGINT
    )
        LANGUAGE plpgsql VOLATILE
        AS $f$
    DECLARE
        v_after BIGINT;
    BEGIN
        WITH inserted AS (
            INSERT INTO credit_transactions
                (user_id, amount, balance_after, transaction_type, idempotency_key,
                 description, payment_intent_id)
            SELECT u.id, p_amount, u.credits_balance + p_amount, p_kind, p_key, p_description,
                   p_payment_intent_id
            FROM {USERS} u
            WHERE u.id = p_user_id
            RETURNING credit_transactions.id, credit_transactions.balance_after
        ), moved AS (
            UPDATE {USERS} u
            SET credits_balance = u.credits_balance + p_amount, updated_at = now()
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
    $f$;
    $tpl$;
    v_sql := replace(v_sql, '{LEDGER_KEY}', ledger_user_key_type());
    v_sql := replace(v_sql, '{USERS_REFERENCE}',
                     CASE WHEN current_setting('webhook_worker.users_kind', true) = 'view'
                          THEN '' ELSE format('REFERENCES %s (id)', v_users) END);
    EXECUTE replace(replace(v_sql, '{USERS}', v_users), '{KEY}', v_key);

    -- Everything below names no table of the host: it goes through the two functions above.
    v_sql := $tpl$
    -- What an earlier call with this key wrote first (NULL row when the key is new).
    -- PL/pgSQL, not SQL: its plan is cached per session (a SQL function's is not).
    CREATE OR REPLACE FUNCTION credits_key_use(
        p_user_id {KEY}, p_key TEXT, OUT transaction_id BIGINT, OUT amount BIGINT,
        OUT kind TEXT
    )
        LANGUAGE plpgsql STABLE
        AS $f$
    BEGIN
        SELECT t.id, t.amount, t.transaction_type INTO transaction_id, amount, kind
        FROM credit_transactions t
        WHERE t.user_id = p_user_id AND t.idempotency_key = p_key
          AND t.transaction_type IN ('USAGE', 'BONUS', 'ADJUSTMENT', 'HOLD');
    END;
    $f$;

    -- Checks every call makes before it takes the lock.
    CREATE OR REPLACE FUNCTION credits_check_args(p_user_id {KEY}, p_key TEXT) RETURNS VOID
        LANGUAGE plpgsql IMMUTABLE
        AS $f$
    BEGIN
        IF p_user_id IS NULL THEN
            RAISE EXCEPTION 'user_id is required' USING ERRCODE = '22004';
        END IF;
        IF p_key IS NULL OR btrim(p_key) = '' THEN
            RAISE EXCEPTION 'an idempotency key is required (a non-blank text)'
                USING ERRCODE = '22023';
        END IF;
    END;
    $f$;

    -- The same key again: `duplicate` when it wrote this kind and amount, else WWS01.
    CREATE OR REPLACE FUNCTION credits_repeat(
        p_key TEXT, p_kind TEXT, p_amount BIGINT, p_used_id BIGINT, p_used_kind TEXT,
        p_used_amount BIGINT
    ) RETURNS BIGINT
        LANGUAGE plpgsql IMMUTABLE
        AS $f$
    BEGIN
        IF p_used_kind = p_kind AND p_used_amount = p_amount THEN
            RETURN p_used_id;
        END IF;
        RAISE EXCEPTION 'idempotency key "%" was already used for % % credits (transaction %); '
            'reuse a key only to repeat the same call', p_key, p_used_kind, p_used_amount,
            p_used_id
            USING ERRCODE = 'WWS01';
    END;
    $f$;

    -- SHORTFALL_POLICY=collect: pay the user's outstanding shortfalls (oldest payment first)
    -- from the balance, one SHORTFALL_COLLECTION row per payment, each counting as taken
    -- from that payment. Call with the user's lock held. Returns the credits collected.
    CREATE OR REPLACE FUNCTION credits_collect_shortfall(p_user_id {KEY}, p_description TEXT)
        RETURNS BIGINT
        LANGUAGE plpgsql VOLATILE
        AS $f$
    DECLARE
        v_balance BIGINT := credits_locked_balance(p_user_id);
        v_total BIGINT := 0;
        v_take BIGINT;
        v_row RECORD;
        v_written RECORD;
    BEGIN
        FOR v_row IN
            SELECT s.payment_intent_id, s.shortfall
            FROM payment_states s
            WHERE s.shortfall > 0
              AND EXISTS (SELECT 1 FROM credit_transactions p
                          WHERE p.payment_intent_id = s.payment_intent_id
                            AND p.user_id = p_user_id
                            AND p.transaction_type IN ('PURCHASE', 'SUBSCRIPTION_CREDIT'))
            ORDER BY s.updated_at, s.payment_intent_id
            FOR UPDATE OF s
        LOOP
            EXIT WHEN v_balance <= 0;
            v_take := least(v_row.shortfall, v_balance);
            SELECT * INTO v_written
            FROM credits_write_row(p_user_id, -v_take, 'SHORTFALL_COLLECTION', NULL,
                                   p_description, v_row.payment_intent_id);
            UPDATE payment_states
            SET shortfall = shortfall - v_take, updated_at = now()
            WHERE payment_intent_id = v_row.payment_intent_id;
            v_balance := v_written.balance;
            v_total := v_total + v_take;
        END LOOP;
        RETURN v_total;
    END;
    $f$;

    -- SHORTFALL_POLICY=collect, the worker's credit path: ledger_credit_many (0006/0008), then
    -- in the same transaction each user whose purchase was applied pays its shortfall. The
    -- users' locks are already held by the batch (advisory locks are re-entrant). The worker
    -- calls these instead of ledger_credit_many / ledger_credit only under `collect`.
    CREATE OR REPLACE FUNCTION ledger_credit_many_collect(
        p_user_ids {KEY}[], p_amounts BIGINT[], p_kinds TEXT[], p_event_ids TEXT[],
        p_checkout_session_ids TEXT[], p_payment_intent_ids TEXT[], p_descriptions TEXT[],
        p_lock_timeout_ms INT
    )
        RETURNS TABLE (credited_event_id TEXT, applied BOOLEAN, balance BIGINT)
        LANGUAGE plpgsql VOLATILE
        AS $f$
    DECLARE
        v_row RECORD;
        v_applied TEXT[] := '{}';
        v_user RECORD;
    BEGIN
        FOR v_row IN
            SELECT * FROM ledger_credit_many(p_user_ids, p_amounts, p_kinds, p_event_ids,
                                             p_checkout_session_ids, p_payment_intent_ids,
                                             p_descriptions, p_lock_timeout_ms)
        LOOP
            credited_event_id := v_row.credited_event_id;
            applied := v_row.applied;
            balance := v_row.balance;
            IF v_row.applied THEN
                v_applied := v_applied || v_row.credited_event_id;
            END IF;
            RETURN NEXT;
        END LOOP;
        FOR v_user IN
            SELECT t.user_id, min(t.event_id) AS event_id
            FROM unnest(p_user_ids, p_event_ids) AS t (user_id, event_id)
            WHERE t.event_id = ANY (v_applied)
            GROUP BY t.user_id
            ORDER BY ledger_lock_key(t.user_id), t.user_id
        LOOP
            PERFORM credits_collect_shortfall(
                v_user.user_id, 'shortfall collected from purchase ' || v_user.event_id);
        END LOOP;
    END;
    $f$;

    CREATE OR REPLACE FUNCTION ledger_credit_collect(
        p_user_id {KEY}, p_amount BIGINT, p_kind TEXT, p_event_id TEXT,
        p_checkout_session_id TEXT, p_payment_intent_id TEXT, p_description TEXT,
        OUT applied BOOLEAN, OUT balance BIGINT
    )
        LANGUAGE plpgsql VOLATILE
        AS $f$
    BEGIN
        SELECT c.applied, c.balance INTO applied, balance
        FROM ledger_credit(p_user_id, p_amount, p_kind, p_event_id, p_checkout_session_id,
                           p_payment_intent_id, p_description) c;
        IF applied THEN
            PERFORM credits_collect_shortfall(
                p_user_id, 'shortfall collected from purchase ' || p_event_id);
        END IF;
    END;
    $f$;

    CREATE OR REPLACE FUNCTION credits_spend(
        p_user_id {KEY}, p_amount BIGINT, p_idempotency_key TEXT,
        p_description TEXT DEFAULT NULL,
        OUT status TEXT, OUT balance BIGINT, OUT transaction_id BIGINT
    )
        LANGUAGE plpgsql VOLATILE
        AS $f$
    DECLARE
        v_used RECORD;
    BEGIN
        PERFORM credits_check_args(p_user_id, p_idempotency_key);
        IF p_amount IS NULL OR p_amount <= 0 THEN
            RAISE EXCEPTION 'amount must be a positive integer, got %', p_amount
                USING ERRCODE = '22023';
        END IF;
        balance := credits_locked_balance(p_user_id);
        SELECT * INTO v_used FROM credits_key_use(p_user_id, p_idempotency_key);
        IF v_used.transaction_id IS NOT NULL THEN
            status := 'duplicate';
            transaction_id := credits_repeat(p_idempotency_key, 'USAGE', -p_amount,
                                             v_used.transaction_id, v_used.kind, v_used.amount);
            RETURN;
        END IF;
        IF balance < p_amount THEN
            status := 'insufficient';
            RETURN;
        END IF;
        SELECT w.transaction_id, w.balance INTO transaction_id, balance
        FROM credits_write_row(p_user_id, -p_amount, 'USAGE', p_idempotency_key,
                               p_description) w;
        status := 'spent';
    END;
    $f$;

    CREATE OR REPLACE FUNCTION credits_grant(
        p_user_id {KEY}, p_amount BIGINT, p_idempotency_key TEXT, p_reason TEXT,
        OUT status TEXT, OUT balance BIGINT, OUT transaction_id BIGINT
    )
        LANGUAGE plpgsql VOLATILE
        AS $f$
    DECLARE
        v_used RECORD;
    BEGIN
        PERFORM credits_check_args(p_user_id, p_idempotency_key);
        IF p_amount IS NULL OR p_amount <= 0 THEN
            RAISE EXCEPTION 'amount must be a positive integer, got %', p_amount
                USING ERRCODE = '22023';
        END IF;
        IF p_reason IS NULL OR btrim(p_reason) = '' THEN
            RAISE EXCEPTION 'a reason is required' USING ERRCODE = '22023';
        END IF;
        balance := credits_locked_balance(p_user_id);
        SELECT * INTO v_used FROM credits_key_use(p_user_id, p_idempotency_key);
        IF v_used.transaction_id IS NOT NULL THEN
            status := 'duplicate';
            transaction_id := credits_repeat(p_idempotency_key, 'BONUS', p_amount,
                                             v_used.transaction_id, v_used.kind, v_used.amount);
            RETURN;
        END IF;
        SELECT w.transaction_id, w.balance INTO transaction_id, balance
        FROM credits_write_row(p_user_id, p_amount, 'BONUS', p_idempotency_key, p_reason) w;
        IF (SELECT c.shortfall_policy FROM credits_settings c) = 'collect' THEN
            PERFORM credits_collect_shortfall(
                p_user_id, 'shortfall collected from grant ' || p_idempotency_key);
            balance := credits_locked_balance(p_user_id);
        END IF;
        status := 'granted';
    END;
    $f$;

    CREATE OR REPLACE FUNCTION credits_adjust(
        p_user_id {KEY}, p_amount BIGINT, p_idempotency_key TEXT, p_reason TEXT,
        OUT status TEXT, OUT balance BIGINT, OUT transaction_id BIGINT
    )
        LANGUAGE plpgsql VOLATILE
        AS $f$
    DECLARE
        v_used RECORD;
    BEGIN
        PERFORM credits_check_args(p_user_id, p_idempotency_key);
        IF p_amount IS NULL OR p_amount = 0 THEN
            RAISE EXCEPTION 'amount must be a non-zero integer, got %', p_amount
                USING ERRCODE = '22023';
        END IF;
        IF p_reason IS NULL OR btrim(p_reason) = '' THEN
            RAISE EXCEPTION 'an adjustment requires a reason' USING ERRCODE = '22023';
        END IF;
        balance := credits_locked_balance(p_user_id);
        SELECT * INTO v_used FROM credits_key_use(p_user_id, p_idempotency_key);
        IF v_used.transaction_id IS NOT NULL THEN
            status := 'duplicate';
            transaction_id := credits_repeat(p_idempotency_key, 'ADJUSTMENT', p_amount,
                                             v_used.transaction_id, v_used.kind, v_used.amount);
            RETURN;
        END IF;
        IF balance + p_amount < 0 THEN
            status := 'insufficient';
            RETURN;
        END IF;
        SELECT w.transaction_id, w.balance INTO transaction_id, balance
        FROM credits_write_row(p_user_id, p_amount, 'ADJUSTMENT', p_idempotency_key,
                               p_reason) w;
        status := 'adjusted';
    END;
    $f$;

    CREATE OR REPLACE FUNCTION credits_hold(
        p_user_id {KEY}, p_amount BIGINT, p_idempotency_key TEXT, p_expires_in INTERVAL,
        OUT status TEXT, OUT balance BIGINT, OUT transaction_id BIGINT
    )
        LANGUAGE plpgsql VOLATILE
        AS $f$
    DECLARE
        v_used RECORD;
    BEGIN
        PERFORM credits_check_args(p_user_id, p_idempotency_key);
        IF p_amount IS NULL OR p_amount <= 0 THEN
            RAISE EXCEPTION 'amount must be a positive integer, got %', p_amount
                USING ERRCODE = '22023';
        END IF;
        IF p_expires_in IS NULL OR p_expires_in <= interval '0' THEN
            RAISE EXCEPTION 'expires_in must be a positive interval, got %', p_expires_in
                USING ERRCODE = '22023';
        END IF;
        balance := credits_locked_balance(p_user_id);
        SELECT * INTO v_used FROM credits_key_use(p_user_id, p_idempotency_key);
        IF v_used.transaction_id IS NOT NULL THEN
            status := 'duplicate';
            transaction_id := credits_repeat(p_idempotency_key, 'HOLD', -p_amount,
                                             v_used.transaction_id, v_used.kind, v_used.amount);
            RETURN;
        END IF;
        IF balance < p_amount THEN
            status := 'insufficient';
            RETURN;
        END IF;
        SELECT w.transaction_id, w.balance INTO transaction_id, balance
        FROM credits_write_row(p_user_id, -p_amount, 'HOLD', p_idempotency_key,
                               'hold ' || p_idempotency_key) w;
        INSERT INTO credit_holds
            (user_id, idempotency_key, amount, hold_transaction_id, expires_at)
        VALUES (p_user_id, p_idempotency_key, p_amount, transaction_id, now() + p_expires_in);
        status := 'held';
    END;
    $f$;

    -- Settle or release a hold: p_actual NULL releases it all. Statuses as the callers.
    CREATE OR REPLACE FUNCTION credits_close_hold(
        p_user_id {KEY}, p_idempotency_key TEXT, p_actual BIGINT,
        OUT status TEXT, OUT balance BIGINT, OUT transaction_id BIGINT
    )
        LANGUAGE plpgsql VOLATILE
        AS $f$
    DECLARE
        v_hold RECORD;
        v_state TEXT := CASE WHEN p_actual IS NULL THEN 'released' ELSE 'settled' END;
        v_back BIGINT;
    BEGIN
        PERFORM credits_check_args(p_user_id, p_idempotency_key);
        balance := credits_locked_balance(p_user_id);
        SELECT h.* INTO v_hold FROM credit_holds h
        WHERE h.user_id = p_user_id AND h.idempotency_key = p_idempotency_key
        FOR UPDATE;
        IF NOT FOUND THEN
            status := 'unknown_hold';
            RETURN;
        END IF;
        IF p_actual IS NOT NULL AND (p_actual < 0 OR p_actual > v_hold.amount) THEN
            RAISE EXCEPTION 'actual must be between 0 and the % credits held under "%", got %',
                v_hold.amount, p_idempotency_key, p_actual
                USING ERRCODE = '22023';
        END IF;
        IF v_hold.state <> 'open' THEN
            IF v_hold.state = v_state AND v_hold.actual IS NOT DISTINCT FROM p_actual
               OR v_state = 'released' AND v_hold.state = 'expired' THEN
                status := 'duplicate';
                transaction_id := v_hold.release_transaction_id;
                RETURN;
            END IF;
            RAISE EXCEPTION 'hold "%" is already % (actual %); it cannot be % now',
                p_idempotency_key, v_hold.state, coalesce(v_hold.actual::text, 'none'), v_state
                USING ERRCODE = 'WWS02';
        END IF;
        v_back := v_hold.amount - coalesce(p_actual, 0);
        IF v_back > 0 THEN
            SELECT w.transaction_id, w.balance INTO transaction_id, balance
            FROM credits_write_row(p_user_id, v_back, 'HOLD_RELEASE', p_idempotency_key,
                                   v_state || ' hold ' || p_idempotency_key) w;
        END IF;
        UPDATE credit_holds
        SET state = v_state, actual = p_actual, release_transaction_id = transaction_id,
            closed_at = now()
        WHERE id = v_hold.id;
        status := v_state;
    END;
    $f$;

    CREATE OR REPLACE FUNCTION credits_settle(
        p_user_id {KEY}, p_idempotency_key TEXT, p_actual BIGINT,
        OUT status TEXT, OUT balance BIGINT, OUT transaction_id BIGINT
    )
        LANGUAGE plpgsql VOLATILE
        AS $f$
    BEGIN
        SELECT c.status, c.balance, c.transaction_id INTO status, balance, transaction_id
        FROM credits_close_hold(p_user_id, p_idempotency_key, coalesce(p_actual, -1)) c;
    END;
    $f$;

    CREATE OR REPLACE FUNCTION credits_release(
        p_user_id {KEY}, p_idempotency_key TEXT,
        OUT status TEXT, OUT balance BIGINT, OUT transaction_id BIGINT
    )
        LANGUAGE plpgsql VOLATILE
        AS $f$
    BEGIN
        SELECT c.status, c.balance, c.transaction_id INTO status, balance, transaction_id
        FROM credits_close_hold(p_user_id, p_idempotency_key, NULL) c;
    END;
    $f$;
    $tpl$;
    EXECUTE replace(v_sql, '{KEY}', v_key);
END
$$;

-- The worker's cron: open holds past their expiry, released once each (state `expired`),
-- in lock-key order like the worker's batches. Returns how many it released.
CREATE OR REPLACE FUNCTION credits_release_expired(p_limit INT) RETURNS INT
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    v_due RECORD;
    v_hold RECORD;
    v_done INT := 0;
    v_written RECORD;
BEGIN
    FOR v_due IN
        SELECT h.id, h.user_id
        FROM credit_holds h
        WHERE h.state = 'open' AND h.expires_at <= now()
        ORDER BY ledger_lock_key(h.user_id), h.user_id, h.id
        LIMIT p_limit
    LOOP
        PERFORM credits_locked_balance(v_due.user_id);
        -- Re-read under the lock: a settle or release may have closed it meanwhile.
        SELECT h.id, h.user_id, h.amount, h.idempotency_key INTO v_hold
        FROM credit_holds h WHERE h.id = v_due.id AND h.state = 'open'
        FOR UPDATE;
        CONTINUE WHEN NOT FOUND;
        SELECT * INTO v_written
        FROM credits_write_row(v_hold.user_id, v_hold.amount, 'HOLD_RELEASE',
                               v_hold.idempotency_key, 'expired hold ' || v_hold.idempotency_key);
        UPDATE credit_holds
        SET state = 'expired', release_transaction_id = v_written.transaction_id,
            closed_at = now()
        WHERE id = v_hold.id;
        v_done := v_done + 1;
    END LOOP;
    RETURN v_done;
END;
$$;

-- migrate:down
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM credit_transactions
               WHERE transaction_type IN ('HOLD', 'HOLD_RELEASE', 'SHORTFALL_COLLECTION')
                  OR idempotency_key IS NOT NULL) THEN
        RAISE EXCEPTION 'credit_transactions holds spending rows (HOLD / HOLD_RELEASE / '
            'SHORTFALL_COLLECTION or rows with an idempotency key); rolling back 0025 would '
            'lose them. The ledger is append-only: keep this migration, or move those rows '
            'out by hand first';
    END IF;
END
$$;
DO $$
DECLARE
    v_key TEXT;
BEGIN
    FOREACH v_key IN ARRAY ARRAY['bigint', 'uuid', 'text'] LOOP
        EXECUTE replace($tpl$
            DROP FUNCTION IF EXISTS credits_release({KEY}, TEXT);
            DROP FUNCTION IF EXISTS credits_settle({KEY}, TEXT, BIGINT);
            DROP FUNCTION IF EXISTS credits_close_hold({KEY}, TEXT, BIGINT);
            DROP FUNCTION IF EXISTS credits_hold({KEY}, BIGINT, TEXT, INTERVAL);
            DROP FUNCTION IF EXISTS credits_adjust({KEY}, BIGINT, TEXT, TEXT);
            DROP FUNCTION IF EXISTS credits_grant({KEY}, BIGINT, TEXT, TEXT);
            DROP FUNCTION IF EXISTS credits_spend({KEY}, BIGINT, TEXT, TEXT);
            DROP FUNCTION IF EXISTS ledger_credit_collect({KEY}, BIGINT, TEXT, TEXT, TEXT, TEXT,
                                                          TEXT);
            DROP FUNCTION IF EXISTS ledger_credit_many_collect({KEY}[], BIGINT[], TEXT[], TEXT[],
                                                               TEXT[], TEXT[], TEXT[], INT);
            DROP FUNCTION IF EXISTS credits_collect_shortfall({KEY}, TEXT);
            DROP FUNCTION IF EXISTS credits_key_use({KEY}, TEXT);
            DROP FUNCTION IF EXISTS credits_check_args({KEY}, TEXT);
            DROP FUNCTION IF EXISTS credits_write_row({KEY}, BIGINT, TEXT, TEXT, TEXT, TEXT);
            DROP FUNCTION IF EXISTS credits_locked_balance({KEY});
        $tpl$, '{KEY}', v_key);
    END LOOP;
END
$$;
DROP FUNCTION IF EXISTS credits_repeat(TEXT, TEXT, BIGINT, BIGINT, TEXT, BIGINT);
DROP FUNCTION IF EXISTS credits_release_expired(INT);
DROP TABLE IF EXISTS credit_holds;
DROP TABLE IF EXISTS credits_settings;
DROP INDEX IF EXISTS credit_transactions_one_release_per_hold;
DROP INDEX IF EXISTS credit_transactions_user_idempotency_key;
ALTER TABLE credit_transactions DROP COLUMN IF EXISTS idempotency_key;
ALTER TABLE credit_transactions DROP CONSTRAINT IF EXISTS credit_transactions_type_check;
ALTER TABLE credit_transactions ADD CONSTRAINT credit_transactions_type_check
    CHECK (transaction_type IN ('PURCHASE', 'USAGE', 'REFUND', 'BONUS', 'ADJUSTMENT',
                                'REFUND_REVERSAL', 'DISPUTE', 'DISPUTE_REVERSAL',
                                'SUBSCRIPTION_CREDIT', 'EXPIRY'));
