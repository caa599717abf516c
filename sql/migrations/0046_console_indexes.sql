-- migrate:no-transaction
-- The console and the ops API at 10^6 events and more (issue 35): every list is a keyset
-- page newest first, every search an index lookup. Each index is built CONCURRENTLY (so this
-- file runs outside a transaction, see webhook_worker/db/migrations.py): a plain CREATE
-- INDEX holds a SHARE lock for the whole build, minutes on a large table, and the receiver's
-- INSERTs would wait behind it while Stripe retries. Each build is preceded by DROP INDEX
-- CONCURRENTLY IF EXISTS, so a run that stopped part-way (or left an invalid index behind)
-- can simply run again. What each index costs per insert: docs/performance.md.
--
-- received_at_id: the unfiltered event list and its pages, date filters, the overview's
--   per-minute and per-hour charts by status, read from the index alone (INCLUDE)
--   (before: a sort of the whole table, 3 s).
-- status_type_received_at: a status and a type together (`failed` + `invoice.paid`) walk
--   their own rows newest first, whatever either alone holds.
-- event_id_pattern: prefix search on event ids (`evt_1Nx`); the unique index on event_id
--   uses the database's collation, which LIKE 'prefix%' cannot use unless it is C.
-- object_id / payment_intent / customer: prefix search on the ids an operator pastes from
--   the Stripe Dashboard (cs_, pi_, ch_, in_, cus_): the event's own object (a session, a
--   charge, an invoice, a customer…) and the payment and customer it points to; partial
--   where most rows lack the field. A refund's or dispute's `charge` and a payment's
--   `invoice` are not indexed (each index costs every insert): those events are found by
--   their payment intent.
-- email_trigrams: substring search on the payer's email (0045's functions), GIN.
-- failed_updated_at: the overview's "failures by reason in the last 24 h", only failed rows.
-- credit_transactions created_at: the overview's credits sold / taken back / spent per
--   window, read from the index alone (INCLUDE).

-- migrate:up
DROP INDEX CONCURRENTLY IF EXISTS stripe_events_received_at_id_idx;
CREATE INDEX CONCURRENTLY stripe_events_received_at_id_idx
    ON stripe_events (received_at, id) INCLUDE (processing_status);

DROP INDEX CONCURRENTLY IF EXISTS stripe_events_status_type_received_at_idx;
CREATE INDEX CONCURRENTLY stripe_events_status_type_received_at_idx
    ON stripe_events (processing_status, type, received_at, id);

DROP INDEX CONCURRENTLY IF EXISTS stripe_events_event_id_pattern_idx;
CREATE INDEX CONCURRENTLY stripe_events_event_id_pattern_idx
    ON stripe_events (event_id text_pattern_ops);

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

DROP INDEX CONCURRENTLY IF EXISTS stripe_events_failed_updated_at_idx;
CREATE INDEX CONCURRENTLY stripe_events_failed_updated_at_idx
    ON stripe_events (updated_at)
    WHERE processing_status = 'failed';

DROP INDEX CONCURRENTLY IF EXISTS credit_transactions_created_at_idx;
CREATE INDEX CONCURRENTLY credit_transactions_created_at_idx
    ON credit_transactions (created_at) INCLUDE (transaction_type, amount);

-- migrate:down
DROP INDEX CONCURRENTLY IF EXISTS credit_transactions_created_at_idx;
DROP INDEX CONCURRENTLY IF EXISTS stripe_events_failed_updated_at_idx;
DROP INDEX CONCURRENTLY IF EXISTS stripe_events_email_trigrams_idx;
DROP INDEX CONCURRENTLY IF EXISTS stripe_events_customer_idx;
DROP INDEX CONCURRENTLY IF EXISTS stripe_events_payment_intent_idx;
DROP INDEX CONCURRENTLY IF EXISTS stripe_events_object_id_idx;
DROP INDEX CONCURRENTLY IF EXISTS stripe_events_event_id_pattern_idx;
DROP INDEX CONCURRENTLY IF EXISTS stripe_events_status_type_received_at_idx;
DROP INDEX CONCURRENTLY IF EXISTS stripe_events_received_at_id_idx;
