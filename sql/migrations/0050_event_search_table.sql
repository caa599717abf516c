-- What the console searches an event by, in a table of its own (issue 30). 0046 indexed
-- expressions over `stripe_events.raw_data` (the object's id, payment intent and customer,
-- the payer's email as trigrams). Every status change of an event is a new row version
-- that no index can skip (`processing_status` is indexed), so the worker's claim and its
-- `completed` re-computed every one of those expressions, decompressing the payload each
-- time: 150 µs of Postgres CPU per credited event of the ~400 it cost (`make profile
-- --drop-index …`). Written once when the event is stored and never updated, this table
-- carries those indexes instead; `received_at` is copied so an email search still combines
-- its index with a time slice.
--
-- A statement trigger fills it with the statement's new rows (one INSERT per receiver group
-- commit, whatever wrote the events: the receiver, reconcile, a replay, a test); an UPDATE
-- that sets `raw_data` or `received_at` (the pruner, a hand edit) re-reads that row (a row
-- trigger on those columns only: the worker's status updates never fire it); deletes and
-- TRUNCATE of stripe_events follow. 0051 fills it for the events stored before, and moves
-- the indexes (CONCURRENTLY).

-- migrate:up
CREATE TABLE IF NOT EXISTS stripe_event_search (
    event_row_id BIGINT PRIMARY KEY,  -- stripe_events.id
    received_at TIMESTAMPTZ NOT NULL,
    object_id TEXT,
    payment_intent TEXT,
    customer TEXT,
    email TEXT  -- stripe_event_email(raw_data), lower case
);
CREATE INDEX IF NOT EXISTS stripe_event_search_object_id_idx
    ON stripe_event_search (object_id text_pattern_ops);
CREATE INDEX IF NOT EXISTS stripe_event_search_payment_intent_idx
    ON stripe_event_search (payment_intent text_pattern_ops) WHERE payment_intent IS NOT NULL;
CREATE INDEX IF NOT EXISTS stripe_event_search_customer_idx
    ON stripe_event_search (customer text_pattern_ops) WHERE customer IS NOT NULL;
CREATE INDEX IF NOT EXISTS stripe_event_search_email_trigrams_idx
    ON stripe_event_search USING gin (text_trigrams(email)) WHERE email IS NOT NULL;
CREATE INDEX IF NOT EXISTS stripe_event_search_received_at_idx
    ON stripe_event_search (received_at);

CREATE OR REPLACE FUNCTION stripe_event_search_insert() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    -- ON CONFLICT: a row left by a TRUNCATE … RESTART IDENTITY made outside the trigger's
    -- sight is replaced, never a reason to refuse an event.
    INSERT INTO stripe_event_search
        (event_row_id, received_at, object_id, payment_intent, customer, email)
    SELECT n.id, n.received_at, n.raw_data #>> '{data,object,id}',
           n.raw_data #>> '{data,object,payment_intent}',
           n.raw_data #>> '{data,object,customer}', stripe_event_email(n.raw_data)
    FROM new_events n
    ON CONFLICT (event_row_id) DO UPDATE
        SET received_at = EXCLUDED.received_at, object_id = EXCLUDED.object_id,
            payment_intent = EXCLUDED.payment_intent, customer = EXCLUDED.customer,
            email = EXCLUDED.email;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION stripe_event_search_update() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stripe_event_search
        (event_row_id, received_at, object_id, payment_intent, customer, email)
    VALUES (NEW.id, NEW.received_at, NEW.raw_data #>> '{data,object,id}',
            NEW.raw_data #>> '{data,object,payment_intent}',
            NEW.raw_data #>> '{data,object,customer}', stripe_event_email(NEW.raw_data))
    ON CONFLICT (event_row_id) DO UPDATE
        SET received_at = EXCLUDED.received_at, object_id = EXCLUDED.object_id,
            payment_intent = EXCLUDED.payment_intent, customer = EXCLUDED.customer,
            email = EXCLUDED.email;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION stripe_event_search_delete() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM stripe_event_search s USING old_events o WHERE s.event_row_id = o.id;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION stripe_event_search_truncate() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE stripe_event_search;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS stripe_event_search_insert ON stripe_events;
CREATE TRIGGER stripe_event_search_insert AFTER INSERT ON stripe_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION stripe_event_search_insert();
DROP TRIGGER IF EXISTS stripe_event_search_update ON stripe_events;
CREATE TRIGGER stripe_event_search_update AFTER UPDATE OF raw_data, received_at ON stripe_events
    FOR EACH ROW
    WHEN (OLD.raw_data IS DISTINCT FROM NEW.raw_data
          OR OLD.received_at IS DISTINCT FROM NEW.received_at)
    EXECUTE FUNCTION stripe_event_search_update();
DROP TRIGGER IF EXISTS stripe_event_search_delete ON stripe_events;
CREATE TRIGGER stripe_event_search_delete AFTER DELETE ON stripe_events
    REFERENCING OLD TABLE AS old_events
    FOR EACH STATEMENT EXECUTE FUNCTION stripe_event_search_delete();
DROP TRIGGER IF EXISTS stripe_event_search_truncate ON stripe_events;
CREATE TRIGGER stripe_event_search_truncate AFTER TRUNCATE ON stripe_events
    FOR EACH STATEMENT EXECUTE FUNCTION stripe_event_search_truncate();

-- migrate:down
DROP TRIGGER IF EXISTS stripe_event_search_truncate ON stripe_events;
DROP TRIGGER IF EXISTS stripe_event_search_delete ON stripe_events;
DROP TRIGGER IF EXISTS stripe_event_search_update ON stripe_events;
DROP TRIGGER IF EXISTS stripe_event_search_insert ON stripe_events;
DROP FUNCTION IF EXISTS stripe_event_search_truncate();
DROP FUNCTION IF EXISTS stripe_event_search_delete();
DROP FUNCTION IF EXISTS stripe_event_search_update();
DROP FUNCTION IF EXISTS stripe_event_search_insert();
DROP TABLE IF EXISTS stripe_event_search;
