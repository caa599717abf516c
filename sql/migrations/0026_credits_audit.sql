-- Operators' grants and adjustments (`webhook-worker credits grant|adjust`, the console's
-- "Grant / adjust" form) are audited like replays: one ops_audit row each, written in the
-- transaction that moves the credits. `filters` holds the user, amount, reason, idempotency
-- key, status and ledger row; `count` is 1 and `event_ids` empty.

-- migrate:up
ALTER TABLE ops_audit DROP CONSTRAINT IF EXISTS ops_audit_action_check;
ALTER TABLE ops_audit ADD CONSTRAINT ops_audit_action_check
    CHECK (action IN ('replay', 'credits_grant', 'credits_adjust'));

-- migrate:down
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM ops_audit WHERE action IN ('credits_grant', 'credits_adjust')) THEN
        RAISE EXCEPTION 'ops_audit holds credits_grant / credits_adjust rows; rolling back 0026 '
            'would make them invalid. The audit is append-only: keep this migration, or move '
            'those rows out by hand first';
    END IF;
END
$$;
ALTER TABLE ops_audit DROP CONSTRAINT IF EXISTS ops_audit_action_check;
ALTER TABLE ops_audit ADD CONSTRAINT ops_audit_action_check CHECK (action IN ('replay'));
