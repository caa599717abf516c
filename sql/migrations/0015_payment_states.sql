-- Per-payment high-water marks (issue 16): what Stripe last said about a payment, so that
-- the credits taken back follow the newest state whatever order the events come in.
--
-- payment_states: one row per payment intent with a refund, refund failure or dispute.
--   `refunded` is the net refunded amount of what was captured (minor units), as the charge
--   event created at `refunded_as_of` said it; a charge event replaces it only when it is
--   newer (created, then the larger amount at the same second). `taken` is the credits
--   taken back so far, net of reversals, counting what could not be taken (`shortfall`,
--   already spent). `legacy_taken`: what the earlier refund code took before this table
--   existed; it stands in for the refund target until a charge event says more.
-- payment_refund_failures: one row per failed or canceled refund (its id, so the three
--   events Stripe may send for one failure count once).
-- payment_disputes: one row per dispute, at its furthest stage (1 open, 2 closed won/lost,
--   3 funds reinstated); stages only move forward.
-- No user id is held here (the purchase's ledger row has it), so the host key type does
-- not matter to these tables.

-- migrate:up
CREATE TABLE IF NOT EXISTS payment_states (
    payment_intent_id TEXT PRIMARY KEY,
    captured BIGINT CONSTRAINT payment_states_captured_nonneg CHECK (captured >= 0),
    refunded BIGINT CONSTRAINT payment_states_refunded_nonneg CHECK (refunded >= 0),
    refunded_as_of TIMESTAMPTZ,
    taken BIGINT NOT NULL DEFAULT 0 CONSTRAINT payment_states_taken_nonneg CHECK (taken >= 0),
    shortfall BIGINT NOT NULL DEFAULT 0
        CONSTRAINT payment_states_shortfall_range CHECK (shortfall >= 0 AND shortfall <= taken),
    legacy_taken BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS payment_refund_failures (
    refund_id TEXT PRIMARY KEY,
    payment_intent_id TEXT NOT NULL,
    amount BIGINT NOT NULL CONSTRAINT payment_refund_failures_amount_positive CHECK (amount > 0),
    status TEXT NOT NULL,
    refund_created TIMESTAMPTZ,
    failed_at TIMESTAMPTZ NOT NULL,
    event_id TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS payment_refund_failures_payment_intent_idx
    ON payment_refund_failures (payment_intent_id);

CREATE TABLE IF NOT EXISTS payment_disputes (
    dispute_id TEXT PRIMARY KEY,
    payment_intent_id TEXT NOT NULL,
    amount BIGINT NOT NULL CONSTRAINT payment_disputes_amount_nonneg CHECK (amount >= 0),
    stage SMALLINT NOT NULL CONSTRAINT payment_disputes_stage_check CHECK (stage BETWEEN 1 AND 3),
    status TEXT NOT NULL,
    event_id TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS payment_disputes_payment_intent_idx
    ON payment_disputes (payment_intent_id);

-- What the earlier refund code already took back (debits and shortfalls) per payment.
INSERT INTO payment_states (payment_intent_id, taken, shortfall, legacy_taken)
SELECT t.payment_intent_id, t.debited + t.shortfall, t.shortfall, t.debited + t.shortfall
FROM (
    SELECT pi AS payment_intent_id, sum(debited)::bigint AS debited,
           sum(shortfall)::bigint AS shortfall
    FROM (
        SELECT payment_intent_id AS pi, -amount AS debited, 0 AS shortfall
        FROM credit_transactions
        WHERE transaction_type = 'REFUND' AND payment_intent_id IS NOT NULL
        UNION ALL
        SELECT payment_intent_id, 0, credits FROM refund_shortfalls
    ) AS parts
    GROUP BY pi
) AS t
ON CONFLICT (payment_intent_id) DO NOTHING;

-- migrate:down
DROP TABLE IF EXISTS payment_disputes;
DROP TABLE IF EXISTS payment_refund_failures;
DROP TABLE IF EXISTS payment_states;
