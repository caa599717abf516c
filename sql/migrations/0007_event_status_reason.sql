-- Why an event is `ignored` (and, for other outcomes the worker writes, why it ended there):
-- `livemode_mismatch`, `connect_account_not_allowed`, `thin_event`, `not_a_credit_purchase`,
-- `unhandled_type`, `awaiting_payment`, … (README, "What each reason means"). Ops list,
-- show and count ignored events by it; a replay clears it.

-- migrate:up
ALTER TABLE stripe_events ADD COLUMN status_reason TEXT;

-- migrate:down
ALTER TABLE stripe_events DROP COLUMN IF EXISTS status_reason;
