-- Recurring credits (issue 18). Two new ledger row types: `SUBSCRIPTION_CREDIT` (the credits
-- of one paid invoice) and `EXPIRY` (unspent credits of a period that does not roll over,
-- SUBSCRIPTION_CREDITS_EXPIRE). `invoice_id` names the invoice a row belongs to, and one
-- SUBSCRIPTION_CREDIT per invoice is unique, so a renewal is credited once however often it
-- is delivered, replayed or reconciled; one EXPIRY per invoice likewise. `subscription_id`
-- and `invoice_created` order a subscription's credits for expiry; `period_start` is set
-- for the invoices that start a period (not for an upgrade's proration invoice). A payment made without Checkout
-- (`payment_intent.succeeded`) is a PURCHASE with no session: one PURCHASE per payment
-- intent is unique too, so a Checkout session and its payment intent never credit twice.
-- The type check keeps 0013's REFUND_REVERSAL / DISPUTE / DISPUTE_REVERSAL.

-- migrate:up
ALTER TABLE credit_transactions DROP CONSTRAINT IF EXISTS credit_transactions_type_check;
ALTER TABLE credit_transactions ADD CONSTRAINT credit_transactions_type_check
    CHECK (transaction_type IN ('PURCHASE', 'USAGE', 'REFUND', 'BONUS', 'ADJUSTMENT',
                                'REFUND_REVERSAL', 'DISPUTE', 'DISPUTE_REVERSAL',
                                'SUBSCRIPTION_CREDIT', 'EXPIRY'))
    NOT VALID;
ALTER TABLE credit_transactions VALIDATE CONSTRAINT credit_transactions_type_check;

ALTER TABLE credit_transactions ADD COLUMN IF NOT EXISTS invoice_id TEXT;
ALTER TABLE credit_transactions ADD COLUMN IF NOT EXISTS subscription_id TEXT;
ALTER TABLE credit_transactions ADD COLUMN IF NOT EXISTS invoice_created TIMESTAMPTZ;
ALTER TABLE credit_transactions ADD COLUMN IF NOT EXISTS period_start TIMESTAMPTZ;
CREATE UNIQUE INDEX IF NOT EXISTS credit_transactions_one_credit_per_invoice
    ON credit_transactions (invoice_id)
    WHERE transaction_type = 'SUBSCRIPTION_CREDIT';
-- An invoice's credits expire at most once (EXPIRY rows name the invoice they expire).
CREATE UNIQUE INDEX IF NOT EXISTS credit_transactions_one_expiry_per_invoice
    ON credit_transactions (invoice_id)
    WHERE transaction_type = 'EXPIRY';
CREATE INDEX IF NOT EXISTS credit_transactions_subscription_idx
    ON credit_transactions (user_id, subscription_id, invoice_created)
    WHERE subscription_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS credit_transactions_one_purchase_per_payment_intent
    ON credit_transactions (payment_intent_id)
    WHERE transaction_type = 'PURCHASE' AND payment_intent_id IS NOT NULL;

-- migrate:down
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM credit_transactions
               WHERE transaction_type IN ('SUBSCRIPTION_CREDIT', 'EXPIRY')) THEN
        RAISE EXCEPTION 'credit_transactions holds SUBSCRIPTION_CREDIT / EXPIRY rows; rolling '
            'back 0016 would make them invalid. The ledger is append-only: keep this '
            'migration, or move those rows out by hand first';
    END IF;
END
$$;
DROP INDEX IF EXISTS credit_transactions_one_purchase_per_payment_intent;
DROP INDEX IF EXISTS credit_transactions_subscription_idx;
DROP INDEX IF EXISTS credit_transactions_one_expiry_per_invoice;
DROP INDEX IF EXISTS credit_transactions_one_credit_per_invoice;
ALTER TABLE credit_transactions DROP COLUMN IF EXISTS period_start;
ALTER TABLE credit_transactions DROP COLUMN IF EXISTS invoice_created;
ALTER TABLE credit_transactions DROP COLUMN IF EXISTS subscription_id;
ALTER TABLE credit_transactions DROP COLUMN IF EXISTS invoice_id;
ALTER TABLE credit_transactions DROP CONSTRAINT IF EXISTS credit_transactions_type_check;
ALTER TABLE credit_transactions ADD CONSTRAINT credit_transactions_type_check
    CHECK (transaction_type IN ('PURCHASE', 'USAGE', 'REFUND', 'BONUS', 'ADJUSTMENT',
                                'REFUND_REVERSAL', 'DISPUTE', 'DISPUTE_REVERSAL'));
