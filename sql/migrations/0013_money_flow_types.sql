-- Stripe's other money flows get their own ledger row types (issue 16):
-- `REFUND_REVERSAL` (a failed or canceled refund given back), `DISPUTE` (credits taken back
-- when a chargeback withdraws the money) and `DISPUTE_REVERSAL` (a dispute won or its funds
-- reinstated). The check is replaced NOT VALID then validated, so the long scan of a large
-- ledger runs under SHARE UPDATE EXCLUSIVE and does not block the worker's inserts.

-- migrate:up
ALTER TABLE credit_transactions DROP CONSTRAINT IF EXISTS credit_transactions_type_check;
ALTER TABLE credit_transactions ADD CONSTRAINT credit_transactions_type_check
    CHECK (transaction_type IN ('PURCHASE', 'USAGE', 'REFUND', 'BONUS', 'ADJUSTMENT',
                                'REFUND_REVERSAL', 'DISPUTE', 'DISPUTE_REVERSAL'))
    NOT VALID;
ALTER TABLE credit_transactions VALIDATE CONSTRAINT credit_transactions_type_check;

-- migrate:down
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM credit_transactions
               WHERE transaction_type IN ('REFUND_REVERSAL', 'DISPUTE', 'DISPUTE_REVERSAL')) THEN
        RAISE EXCEPTION 'credit_transactions holds REFUND_REVERSAL / DISPUTE / DISPUTE_REVERSAL '
            'rows; rolling back 0013 would make them invalid. The ledger is append-only: keep '
            'this migration, or move those rows out by hand first';
    END IF;
END
$$;
ALTER TABLE credit_transactions DROP CONSTRAINT IF EXISTS credit_transactions_type_check;
ALTER TABLE credit_transactions ADD CONSTRAINT credit_transactions_type_check
    CHECK (transaction_type IN ('PURCHASE', 'USAGE', 'REFUND', 'BONUS', 'ADJUSTMENT'));
