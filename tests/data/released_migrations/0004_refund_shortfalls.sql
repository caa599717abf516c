-- Refunds debit the refunded share of a payment's credits, never below zero. Credits that
-- could not be taken back (already spent) are recorded here, one row per refund event, so
-- ops can see them and a later refund of the same payment does not ask for them again.

-- migrate:up
CREATE TABLE IF NOT EXISTS refund_shortfalls (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id TEXT NOT NULL CONSTRAINT refund_shortfalls_event_id_key UNIQUE
        REFERENCES stripe_events (event_id),
    user_id BIGINT NOT NULL REFERENCES users (id),
    payment_intent_id TEXT NOT NULL,
    credits BIGINT NOT NULL CONSTRAINT refund_shortfalls_credits_positive CHECK (credits > 0),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS refund_shortfalls_payment_intent_idx
    ON refund_shortfalls (payment_intent_id);

-- migrate:down
DROP TABLE IF EXISTS refund_shortfalls;
