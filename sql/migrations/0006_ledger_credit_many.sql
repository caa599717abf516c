-- Many purchases in one server-side call and one commit (the worker coalesces the credits
-- of concurrent jobs). Each purchase goes through ledger_credit, so the semantics are the
-- same one by one: a repeat inserts nothing and returns applied=false. Purchases are taken
-- in the order of their users' lock keys, so two batches never wait on each other's locks
-- in a cycle; a user's lock is taken once per transaction however many of its purchases
-- the batch holds (advisory locks are re-entrant), which is what makes a hot user fast.
-- A lock wait longer than p_lock_timeout_ms (a user's lock held elsewhere for long) fails
-- the call with lock_not_available rather than stall the whole batch behind one user.
-- Any error rolls the whole batch back; the worker then credits each purchase alone, so
-- one bad purchase or one busy user never holds up its neighbours.

-- migrate:up
CREATE OR REPLACE FUNCTION ledger_credit_many(
    p_user_ids BIGINT[],
    p_amounts BIGINT[],
    p_kinds TEXT[],
    p_event_ids TEXT[],
    p_checkout_session_ids TEXT[],
    p_payment_intent_ids TEXT[],
    p_descriptions TEXT[],
    p_lock_timeout_ms INT
)
    RETURNS TABLE (credited_event_id TEXT, applied BOOLEAN, balance BIGINT)
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    p RECORD;
BEGIN
    PERFORM set_config('lock_timeout', p_lock_timeout_ms::text || 'ms', true);
    FOR p IN
        SELECT *
        FROM unnest(p_user_ids, p_amounts, p_kinds, p_event_ids, p_checkout_session_ids,
                    p_payment_intent_ids, p_descriptions)
            AS t(user_id, amount, kind, event_id, checkout_session_id, payment_intent_id,
                 description)
        ORDER BY ledger_lock_key(t.user_id), t.user_id, t.event_id
    LOOP
        SELECT p.event_id, c.applied, c.balance
        INTO credited_event_id, applied, balance
        FROM ledger_credit(p.user_id, p.amount, p.kind, p.event_id, p.checkout_session_id,
                           p.payment_intent_id, p.description) AS c;
        RETURN NEXT;
    END LOOP;
END;
$$;

-- migrate:down
DROP FUNCTION IF EXISTS ledger_credit_many(
    BIGINT[], BIGINT[], TEXT[], TEXT[], TEXT[], TEXT[], TEXT[], INT
);
