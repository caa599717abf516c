-- What the console's search reads from an event (issue 31/35), as immutable functions so the
-- indexes of 0046 and the queries in sql/queries/console.sql use the very same expressions:
-- `stripe_event_email` the payer's email, lower-cased (a Checkout Session's
-- customer_details.email or customer_email, a charge's receipt or billing email, a
-- customer's own email); `text_trigrams` the distinct three-character pieces of a text, which
-- a GIN index over arrays turns into an indexed substring search ("bob", "example.com")
-- without the pg_trgm extension (not every Postgres has it: pgserver's has not). A search
-- shorter than three characters has no trigram and is refused by the console.

-- migrate:up
CREATE OR REPLACE FUNCTION stripe_event_email(p_raw JSONB) RETURNS TEXT
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
SELECT lower(coalesce(p_raw #>> '{data,object,customer_details,email}',
                      p_raw #>> '{data,object,customer_email}',
                      p_raw #>> '{data,object,receipt_email}',
                      p_raw #>> '{data,object,billing_details,email}',
                      CASE WHEN p_raw #>> '{data,object,object}' = 'customer'
                           THEN p_raw #>> '{data,object,email}' END))
$$;

CREATE OR REPLACE FUNCTION text_trigrams(p_text TEXT) RETURNS TEXT[]
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
DECLARE
    v_grams TEXT[] := '{}';
BEGIN
    -- a loop, not generate_series + array_agg: half the CPU per inserted row (22 against
    -- 48 µs here); repeated pieces are harmless to @>
    FOR i IN 1 .. length(p_text) - 2 LOOP
        v_grams := v_grams || substr(p_text, i, 3);
    END LOOP;
    RETURN v_grams;
END
$$;

-- migrate:down
DROP FUNCTION IF EXISTS text_trigrams(TEXT);
DROP FUNCTION IF EXISTS stripe_event_email(JSONB);
