-- The ledger: users.credits_balance always equals the sum of a user's rows.
-- One row per event (unique event_id) and at most one PURCHASE per checkout session make
-- any number of duplicate deliveries, replays and crashes credit a purchase once.
-- user_id takes the host's key type (ledger_user_key_type, 0001): BIGINT for any integer key
-- (what this file always created), else the key's own type (uuid, text, varchar(n)).
-- user_id references the host's USERS_TABLE (ledger_users_table, 0001), or nothing when
-- that is a view (a view cannot be referenced; the ledger functions only write rows for
-- users they found).
-- Edited after release (see migrations.EARLIER_CHECKSUMS): the earlier text is accepted.

-- migrate:up
DO $$
BEGIN
    EXECUTE format($sql$
    CREATE TABLE credit_transactions (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id %s NOT NULL %s,
        amount BIGINT NOT NULL CONSTRAINT credit_transactions_amount_nonzero CHECK (amount <> 0),
        balance_after BIGINT NOT NULL CONSTRAINT credit_transactions_balance_after_nonneg
            CHECK (balance_after >= 0),
        transaction_type TEXT NOT NULL CONSTRAINT credit_transactions_type_check
            CHECK (transaction_type IN ('PURCHASE', 'USAGE', 'REFUND', 'BONUS', 'ADJUSTMENT')),
        event_id TEXT CONSTRAINT credit_transactions_event_id_key UNIQUE
            REFERENCES stripe_events (event_id),
        checkout_session_id TEXT,
        payment_intent_id TEXT,
        description TEXT,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    $sql$, ledger_user_key_type(),
       -- the host's users table (USERS_TABLE); a view takes no foreign key
       CASE WHEN current_setting('webhook_worker.users_kind', true) = 'view' THEN ''
            ELSE format('REFERENCES %s (id)', ledger_users_table()) END);
END
$$;

CREATE UNIQUE INDEX credit_transactions_one_purchase_per_session
    ON credit_transactions (checkout_session_id)
    WHERE transaction_type = 'PURCHASE';
CREATE INDEX credit_transactions_user_id_idx ON credit_transactions (user_id, created_at);
CREATE INDEX credit_transactions_payment_intent_idx
    ON credit_transactions (payment_intent_id)
    WHERE payment_intent_id IS NOT NULL;

-- migrate:down
DROP TABLE IF EXISTS credit_transactions;
