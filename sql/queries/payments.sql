-- Refunds, refund failures and disputes (webhook_worker/worker/postgres_money_store.py): the facts of
-- each payment's state, read and written; the rules over them are Python
-- (webhook_worker.money.takebacks), never SQL. The state statements
-- run inside one explicit transaction that holds the purchase's user lock
-- (pg_advisory_xact_lock, ledger_lock_user), so one payment's state moves serially.

-- name: payment_purchase
-- The payment's purchase: its user, session, credits and, for the captured amount when no
-- charge event has said it, the object of the stored purchase event (NULL once pruned;
-- webhook_worker.money.takebacks.charged_amount reads it). A paid invoice's
-- SUBSCRIPTION_CREDIT is the purchase of the payment intent the invoice names (before
-- basil), so its charge's refunds and disputes take back its share.
SELECT t.user_id, t.checkout_session_id, totals.purchased,
       e.raw_data #> '{data,object}' AS purchase_object
FROM credit_transactions t
CROSS JOIN LATERAL (
    SELECT COALESCE(sum(p.amount), 0)::bigint AS purchased
    FROM credit_transactions p
    WHERE p.payment_intent_id = $1
      AND p.transaction_type IN ('PURCHASE', 'SUBSCRIPTION_CREDIT')
) AS totals
LEFT JOIN stripe_events e ON e.event_id = t.event_id
WHERE t.payment_intent_id = $1 AND t.transaction_type IN ('PURCHASE', 'SUBSCRIPTION_CREDIT')
ORDER BY t.id
LIMIT 1;

-- name: payment_state_create
-- The payment's state row, created the first time one of its events applies.
INSERT INTO payment_states (payment_intent_id) VALUES ($1)
ON CONFLICT (payment_intent_id) DO NOTHING;

-- name: payment_state_get
SELECT captured, refunded, refunded_as_of, taken, shortfall, legacy_taken
FROM payment_states
WHERE payment_intent_id = $1
FOR UPDATE;

-- name: payment_state_captured
-- A charge event always tells the captured amount (the newest charge says it best, and any
-- charge says it better than the purchase).
UPDATE payment_states SET captured = $2, updated_at = now() WHERE payment_intent_id = $1;

-- name: payment_state_snapshot
-- A charge snapshot newer than the one held (webhook_worker.money.takebacks.snapshot_is_newer).
UPDATE payment_states
SET captured = $2, refunded = $3, refunded_as_of = $4, updated_at = now()
WHERE payment_intent_id = $1;

-- name: payment_refund_failed
-- One row per failed or canceled refund; a second event for the same refund inserts nothing.
INSERT INTO payment_refund_failures
    (refund_id, payment_intent_id, amount, status, refund_created, failed_at, event_id)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (refund_id) DO NOTHING
RETURNING refund_id;

-- name: payment_dispute_get
SELECT stage FROM payment_disputes WHERE dispute_id = $1 FOR UPDATE;

-- name: payment_dispute_stage
-- A dispute at a later stage than the one held (webhook_worker.money.takebacks.stage_moves).
INSERT INTO payment_disputes (dispute_id, payment_intent_id, amount, stage, status, event_id)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (dispute_id) DO UPDATE
SET amount = EXCLUDED.amount, stage = EXCLUDED.stage, status = EXCLUDED.status,
    event_id = EXCLUDED.event_id, updated_at = now();

-- name: payment_credit_note_refunds
-- The refunds one credit note names ($4, $5: parallel arrays of refund ids and amounts); a
-- second event for the same credit note inserts nothing. Returns the rows inserted.
INSERT INTO credit_note_refunds
    (credit_note_id, refund_id, payment_intent_id, invoice_id, amount, event_id)
SELECT $1, r.refund_id, $2, $3, r.amount, $6
FROM unnest($4::text[], $5::bigint[]) AS r (refund_id, amount)
ON CONFLICT (credit_note_id, refund_id) DO NOTHING
RETURNING refund_id;

-- name: payment_failures
-- The payment's failed or canceled refunds, raw (the rule: takebacks.net_refunded).
SELECT refund_id, amount, refund_created, failed_at
FROM payment_refund_failures WHERE payment_intent_id = $1;

-- name: payment_dispute_amounts
-- What each of the payment's disputes keeps at its furthest stage (takebacks.dispute_held).
SELECT amount FROM payment_disputes WHERE payment_intent_id = $1;

-- name: payment_noted
-- The refunds the payment's credit notes name, raw (takebacks.noted_refunds).
SELECT refund_id, amount FROM credit_note_refunds WHERE payment_intent_id = $1;

-- name: payment_state_taken
UPDATE payment_states
SET taken = $2, shortfall = $3, updated_at = now()
WHERE payment_intent_id = $1;

-- name: payment_wait_event
-- The event cannot apply before its purchase: `waiting`, and the try it just took is given
-- back (a wait spends no tries).
UPDATE stripe_events
SET processing_status = 'waiting', waiting_for = $2, status_reason = $3,
    attempts = GREATEST(attempts - 1, 0), error_message = NULL, updated_at = now()
WHERE event_id = $1 AND processing_status = 'processing';

-- name: payment_wake_waiting
-- Waiting events whose purchase is now in the ledger go back to `received` (the sweeper
-- enqueues the ids returned). The waiting set is small; each looks its payment up through
-- credit_transactions_payment_intent_idx.
UPDATE stripe_events AS e
SET processing_status = 'received', status_reason = NULL, updated_at = now()
FROM (
    SELECT w.id
    FROM stripe_events w
    WHERE w.processing_status = 'waiting'
      AND CASE WHEN w.status_reason = 'awaiting_customer'
               -- an invoice: its customer is now linked to a user (users_stripe_customer_id_key)
               THEN EXISTS (SELECT 1 FROM {users} u WHERE u.stripe_customer_id = w.waiting_for)
               WHEN w.status_reason = 'awaiting_invoice'
               -- an invoice payment: its invoice is now credited
               THEN EXISTS (SELECT 1 FROM credit_transactions t
                            WHERE t.invoice_id = w.waiting_for
                              AND t.transaction_type IN ('PURCHASE', 'SUBSCRIPTION_CREDIT'))
               WHEN w.status_reason = 'awaiting_invoice_payment'
               -- a credit note: its invoice is credited and names the payment intent that
               -- paid it (before basil the invoice does; from basil on invoice_payment.paid)
               THEN EXISTS (SELECT 1 FROM credit_transactions t
                            WHERE t.invoice_id = w.waiting_for
                              AND t.transaction_type IN ('PURCHASE', 'SUBSCRIPTION_CREDIT')
                              AND t.payment_intent_id IS NOT NULL)
               ELSE EXISTS (SELECT 1 FROM credit_transactions t
                            WHERE t.payment_intent_id = w.waiting_for
                              AND t.transaction_type IN ('PURCHASE', 'SUBSCRIPTION_CREDIT'))
          END
    ORDER BY w.received_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
) AS woken
WHERE e.id = woken.id AND e.processing_status = 'waiting'
RETURNING e.event_id;

-- name: payment_expire_waiting
-- Waiting longer than WAIT_MAX_DAYS with no purchase: a payment that was never a credits
-- purchase here (or whose purchase never came). Final, `ignored`, and said why. A paid
-- invoice whose customer was never linked is money owed: `failed`, with what to do, so
-- that it shows in the failed list and can be replayed.
UPDATE stripe_events AS e
SET processing_status = CASE WHEN e.status_reason = 'awaiting_customer'
                             THEN 'failed' ELSE 'ignored' END,
    error_message = CASE WHEN e.status_reason = 'awaiting_customer'
        THEN 'user_not_found: no user is linked to Stripe customer ' || e.waiting_for
             || ' (no subscription Checkout Session linked it); set users.stripe_customer_id '
             || 'or metadata.user_id on the subscription and replay'
        END,
    status_reason = CASE WHEN e.status_reason = 'awaiting_customer'
                         THEN 'no_user_for_customer' ELSE 'no_purchase_for_payment' END,
    processed_at = now(), updated_at = now()
FROM (
    SELECT w.id
    FROM stripe_events w
    WHERE w.processing_status = 'waiting'
      AND w.received_at < now() - make_interval(days => $1)
    ORDER BY w.received_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
) AS expired
WHERE e.id = expired.id AND e.processing_status = 'waiting'
RETURNING e.event_id;
