-- Refunds debit the refunded share of a payment's credits, never below zero. Credits that
-- could not be taken back (already spent) are recorded here, one row per refund event, so
-- ops can see them and a later refund of the same payment does not ask for them again.
-- user_id takes the host's key type, as credit_transactions.user_id (0003).
-- user_id references the host's USERS_TABLE (ledger_users_table, 0001), or nothing when
-- that is a view (a view cannot be referenced; the ledger functions only write rows for
-- users they found).
-- Edited after release (see migrations.EARLIER_CHECKSUMS): the earlier text is accepted.

-- migrate:up
DO $$
BEGIN
    EXECUTE format($sql$
    CREATE TABLE IF NOT EXISTS refund_shortfalls (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        event_id TEXT NOT NULL CONSTRAINT refund_shortfalls_event_id_key UNIQUE
            REFERENCES stripe_events (event_id),
        user_id %s NOT NULL %s,
        payment_intent_id TEXT NOT NULL,
        credits BIGINT NOT NULL CONSTRAINT refund_shortfalls_credits_positive CHECK (credits > 0),
        created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    $sql$, ledger_user_key_type(),
       -- the host's users table (USERS_TABLE); a view takes no foreign key
       CASE WHEN current_setting('webhook_worker.users_kind', true) = 'view' THEN ''
            ELSE format('REFERENCES %s (id)', ledger_users_table()) END);
END
$$;
CREATE INDEX IF NOT EXISTS refund_shortfalls_payment_intent_idx
    ON refund_shortfalls (payment_intent_id);

-- migrate:down
DROP TABLE IF EXISTS refund_shortfalls;
