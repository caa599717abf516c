-- Recurring credits (webhook_worker/subscriptions.py). Runs inside one explicit transaction
-- that holds the user's lock (ledger_lock_user); the ledger rows themselves (SUBSCRIPTION_CREDIT,
-- EXPIRY) are written by ledger_apply (sql/queries/ledger.sql).

-- name: subscription_periods_to_expire
-- SUBSCRIPTION_CREDITS_EXPIRE: the user's credits of this subscription from invoices older
-- than the start of its newest credited period (an upgrade's proration invoice starts no
-- period: its credits expire with the period it belongs to), not expired yet, oldest first.
SELECT t.id, t.invoice_id, t.amount, t.balance_after
FROM credit_transactions t
WHERE t.user_id = $1 AND t.subscription_id = $2 AND t.transaction_type = 'SUBSCRIPTION_CREDIT'
  AND t.invoice_created < (SELECT max(n.period_start) FROM credit_transactions n
                           WHERE n.user_id = $1 AND n.subscription_id = $2
                             AND n.transaction_type = 'SUBSCRIPTION_CREDIT')
  AND NOT EXISTS (SELECT 1 FROM credit_transactions x
                  WHERE x.transaction_type = 'EXPIRY' AND x.invoice_id = t.invoice_id)
ORDER BY t.invoice_created, t.id;

-- name: subscription_moves_since
-- What came in after a period's credit (positive rows) and what expired since (EXPIRY
-- rows, negative): the rest of the balance's fall since then was spent.
SELECT COALESCE(sum(amount) FILTER (WHERE amount > 0), 0)::bigint AS added,
       COALESCE(sum(amount) FILTER (WHERE transaction_type = 'EXPIRY'), 0)::bigint AS expired
FROM credit_transactions
WHERE user_id = $1 AND id > $2;

-- name: subscription_link_payment
-- invoice_payment.paid (basil: invoices name no payment intent): the invoice's credit row
-- takes the payment intent that paid it, so that the charge's refunds and disputes find
-- it (payment_purchase). Returns the row's payment intent: another one means the invoice
-- was already linked to an earlier payment; no row, that it is not credited (yet).
WITH linked AS (
    UPDATE credit_transactions
    SET payment_intent_id = $2
    WHERE invoice_id = $1 AND transaction_type = 'SUBSCRIPTION_CREDIT'
      AND payment_intent_id IS NULL
    RETURNING payment_intent_id
)
SELECT payment_intent_id FROM linked
UNION ALL
SELECT payment_intent_id FROM credit_transactions
WHERE invoice_id = $1 AND transaction_type IN ('PURCHASE', 'SUBSCRIPTION_CREDIT')
  AND NOT EXISTS (SELECT 1 FROM linked)
LIMIT 1;

-- name: subscription_invoice_credited
-- Whether an invoice is credited already: by its own SUBSCRIPTION_CREDIT, or by the PURCHASE
-- of the Checkout Session that created it (a post-payment invoice).
SELECT EXISTS (SELECT 1 FROM credit_transactions
               WHERE invoice_id = $1 AND transaction_type IN ('PURCHASE', 'SUBSCRIPTION_CREDIT'));

-- name: subscription_invoice_payment_intent
-- The payment intent that paid a credited invoice (before basil from the invoice, from basil
-- on linked by invoice_payment.paid); no row: not credited (yet), NULL: not linked (yet).
-- A Checkout Session's post-payment invoice is credited by the session's PURCHASE row.
SELECT payment_intent_id FROM credit_transactions
WHERE invoice_id = $1 AND transaction_type IN ('PURCHASE', 'SUBSCRIPTION_CREDIT');
