-- Credit notes (issue 18): the refunds a `credit_note.created` names, one row per credit note
-- and refund (a refund may be split across credit notes: `amount` is the part of it that
-- applies to this one). They are refunds of the payment intent that paid the invoice, the
-- same money `charge.refunded` reports for that charge, so they never add to the charge's
-- refunded amount: the credits follow the larger of the two (webhook_worker.payments).
-- A refund that fails (payment_refund_failures, by refund id) no longer counts. No user id
-- is held here (the invoice's SUBSCRIPTION_CREDIT row has it).

-- migrate:up
CREATE TABLE IF NOT EXISTS credit_note_refunds (
    credit_note_id TEXT NOT NULL,
    refund_id TEXT NOT NULL,
    payment_intent_id TEXT NOT NULL,
    invoice_id TEXT NOT NULL,
    amount BIGINT NOT NULL CONSTRAINT credit_note_refunds_amount_positive CHECK (amount > 0),
    event_id TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT credit_note_refunds_pkey PRIMARY KEY (credit_note_id, refund_id)
);
CREATE INDEX IF NOT EXISTS credit_note_refunds_payment_intent_idx
    ON credit_note_refunds (payment_intent_id);

-- migrate:down
DROP TABLE IF EXISTS credit_note_refunds;
