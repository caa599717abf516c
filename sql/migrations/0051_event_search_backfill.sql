-- migrate:no-transaction
-- The events stored before 0050 into `stripe_event_search`, then 0046's expression indexes
-- on stripe_events dropped (issue 30: each status change re-computed them). Outside a
-- transaction, like 0046: the backfill is one statement that holds no lock receivers wait
-- for (rows the trigger already wrote are skipped), and each DROP INDEX is CONCURRENTLY.
-- Down rebuilds the indexes CONCURRENTLY; the rows stay until 0050's down drops the table.

-- migrate:up
INSERT INTO stripe_event_search
    (event_row_id, received_at, object_id, payment_intent, customer, email)
SELECT e.id, e.received_at, e.raw_data #>> '{data,object,id}',
       e.raw_data #>> '{data,object,payment_intent}',
       e.raw_data #>> '{data,object,customer}', stripe_event_email(e.raw_data)
FROM stripe_events e
ON CONFLICT (event_row_id) DO NOTHING;

ANALYZE stripe_event_search;

DROP INDEX CONCURRENTLY IF EXISTS stripe_events_email_trigrams_idx;
DROP INDEX CONCURRENTLY IF EXISTS stripe_events_customer_idx;
DROP INDEX CONCURRENTLY IF EXISTS stripe_events_payment_intent_idx;
DROP INDEX CONCURRENTLY IF EXISTS stripe_events_object_id_idx;

-- migrate:down
DROP INDEX CONCURRENTLY IF EXISTS stripe_events_object_id_idx;
CREATE INDEX CONCURRENTLY stripe_events_object_id_idx
    ON stripe_events ((raw_data #>> '{data,object,id}') text_pattern_ops);

DROP INDEX CONCURRENTLY IF EXISTS stripe_events_payment_intent_idx;
CREATE INDEX CONCURRENTLY stripe_events_payment_intent_idx
    ON stripe_events ((raw_data #>> '{data,object,payment_intent}') text_pattern_ops)
    WHERE (raw_data #>> '{data,object,payment_intent}') IS NOT NULL;

DROP INDEX CONCURRENTLY IF EXISTS stripe_events_customer_idx;
CREATE INDEX CONCURRENTLY stripe_events_customer_idx
    ON stripe_events ((raw_data #>> '{data,object,customer}') text_pattern_ops)
    WHERE (raw_data #>> '{data,object,customer}') IS NOT NULL;

DROP INDEX CONCURRENTLY IF EXISTS stripe_events_email_trigrams_idx;
CREATE INDEX CONCURRENTLY stripe_events_email_trigrams_idx
    ON stripe_events USING gin (text_trigrams(stripe_event_email(raw_data)))
    WHERE stripe_event_email(raw_data) IS NOT NULL;
