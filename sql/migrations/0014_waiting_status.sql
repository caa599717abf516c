-- A new event status, `waiting` (issue 16): an event that cannot apply until another one
-- arrives (a refund, refund failure or dispute before its purchase). It spends no tries;
-- `waiting_for` names the payment intent it waits on. The sweeper wakes it once that
-- payment's PURCHASE is in the ledger, and after WAIT_MAX_DAYS it ends `ignored`
-- (`no_purchase_for_payment`). The sweeper reads the waiting set through the existing
-- (processing_status, received_at) index.

-- migrate:up
ALTER TABLE stripe_events ADD COLUMN IF NOT EXISTS waiting_for TEXT;
ALTER TABLE stripe_events DROP CONSTRAINT IF EXISTS stripe_events_status_check;
ALTER TABLE stripe_events ADD CONSTRAINT stripe_events_status_check
    CHECK (processing_status IN ('received', 'processing', 'waiting', 'completed', 'failed',
                                 'ignored'))
    NOT VALID;
ALTER TABLE stripe_events VALIDATE CONSTRAINT stripe_events_status_check;

-- migrate:down
-- Waiting events go back to `received`: the previous worker retries them as before.
UPDATE stripe_events SET processing_status = 'received', updated_at = now()
WHERE processing_status = 'waiting';
ALTER TABLE stripe_events DROP CONSTRAINT IF EXISTS stripe_events_status_check;
ALTER TABLE stripe_events ADD CONSTRAINT stripe_events_status_check
    CHECK (processing_status IN ('received', 'processing', 'completed', 'failed', 'ignored'));
ALTER TABLE stripe_events DROP COLUMN IF EXISTS waiting_for;
