-- Money exactness II (issue 25).
-- 1. payment_disputes.amount is what a dispute keeps from the merchant at its furthest stage
--    (webhook_worker.money.takebacks.dispute_held: 0 once won, what its balance transactions
--    withdrew less what they reinstated), no longer the disputed amount read with the stage
--    and status in SQL. Rows written before keep their meaning: a dispute won, or with funds
--    reinstated, kept nothing.
-- 2. One payment credits once whichever object it surfaces as: a Checkout Session with a
--    post-payment invoice (`invoice_creation`) records that invoice on its PURCHASE row, and
--    an invoice is credited by at most one PURCHASE or SUBSCRIPTION_CREDIT row.
-- 3. refund_shortfalls holds what is owed now: a failed refund or a won dispute lowers it
--    (ledger_cancel_shortfall). The index serves that and the per-user figure.

-- migrate:up
UPDATE payment_disputes SET amount = 0
WHERE NOT (stage = 1 OR (stage = 2 AND status = 'lost')) AND amount <> 0;
CREATE UNIQUE INDEX IF NOT EXISTS credit_transactions_one_payment_per_invoice
    ON credit_transactions (invoice_id)
    WHERE transaction_type IN ('PURCHASE', 'SUBSCRIPTION_CREDIT') AND invoice_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS refund_shortfalls_user_idx ON refund_shortfalls (user_id);

-- migrate:down
DROP INDEX IF EXISTS refund_shortfalls_user_idx;
DROP INDEX IF EXISTS credit_transactions_one_payment_per_invoice;
