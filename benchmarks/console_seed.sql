-- The console benchmark's data (issue 35): 100,000 users and 1,000,000 stripe_events over
-- 90 days, 1-2 KB of raw JSON each, mixed types and outcomes, with the ledger rows the
-- completed purchases and refunds wrote and some spending. Plain generate_series, one
-- statement per table. Users: bob/alice/... names on four domains, so "bob" and
-- "example.com" are realistic substring searches (10 % and 25 % of the emails).
-- Event g (1 = oldest) belongs to user 1 + g % 99991 and has type bucket g % 20.

INSERT INTO users (email, stripe_customer_id, created_at)
SELECT (ARRAY['bob', 'alice', 'carol', 'dave', 'erin', 'frank', 'grace', 'heidi', 'ivan',
              'judy'])[1 + u / 10 % 10] || '.' || u || '@'
       || (ARRAY['example.com', 'mail.test', 'corp.example', 'shop.test'])[1 + u / 100 % 4],
       'cus_B' || lpad(u::text, 6, '0'),
       now() - interval '120 days'
FROM generate_series(1, 100000) AS u;

INSERT INTO stripe_events (event_id, type, livemode, api_version, stripe_created_at,
                           received_at, raw_data, processing_status, status_reason,
                           attempts, error_message, processed_at, updated_at)
SELECT e.event_id, e.type, false, '2024-06-20', e.at, e.at,
       jsonb_build_object(
           'id', e.event_id, 'object', 'event', 'api_version', '2024-06-20',
           'created', extract(epoch FROM e.at)::bigint, 'livemode', false,
           'pending_webhooks', 1, 'type', e.type,
           'request', jsonb_build_object('id', 'req_' || e.tag, 'idempotency_key', e.tag),
           'data', jsonb_build_object('object', e.object || jsonb_build_object(
               'created', extract(epoch FROM e.at)::bigint, 'livemode', false,
               'currency', e.currency, 'description', 'Credits pack ' || e.g % 7,
               'metadata', jsonb_build_object('order', 'ord_' || e.tag, 'plan', 'pack-' || e.g % 7,
                                              'note', repeat(e.tag, 1 + e.g % 24)),
               'shipping', NULL, 'statement_descriptor', 'CREDITS',
               'payment_method_types', jsonb_build_array('card', 'link'))))
       AS raw_data,
       e.status, e.reason, CASE WHEN e.status = 'failed' THEN 8 ELSE 1 END,
       CASE WHEN e.status = 'failed' THEN 'user_not_found: no user matched the session' END,
       CASE WHEN e.status IN ('completed', 'ignored', 'failed') THEN e.at + interval '40 ms' END,
       e.at + interval '40 ms'
FROM (
    SELECT g, b.*, s.*, now() - (1000000 - g) * interval '7.776 s' AS at,
           md5(g::text) AS tag,
           'evt_1B' || lpad(g::text, 7, '0') || substr(md5(g::text), 1, 10) AS event_id,
           'cus_B' || lpad((1 + g % 99991)::text, 6, '0') AS customer,
           (ARRAY['bob', 'alice', 'carol', 'dave', 'erin', 'frank', 'grace', 'heidi', 'ivan',
                  'judy'])[1 + (1 + g % 99991) / 10 % 10] || '.' || (1 + g % 99991) || '@'
           || (ARRAY['example.com', 'mail.test', 'corp.example', 'shop.test'])
              [1 + (1 + g % 99991) / 100 % 4] AS email,
           (ARRAY['usd', 'usd', 'usd', 'eur', 'gbp', 'jpy'])[1 + g % 6] AS currency
    FROM generate_series(1, 1000000) AS g
    CROSS JOIN LATERAL (SELECT g % 20 AS bucket) AS b
    CROSS JOIN LATERAL (
        SELECT CASE WHEN bucket < 8 THEN 'checkout.session.completed'
                    WHEN bucket < 11 THEN 'payment_intent.succeeded'
                    WHEN bucket < 13 THEN 'charge.succeeded'
                    WHEN bucket = 13 THEN 'charge.refunded'
                    WHEN bucket = 14 THEN 'invoice.paid'
                    WHEN bucket = 15 THEN 'charge.dispute.created'
                    WHEN bucket < 18 THEN 'customer.created'
                    ELSE 'payment_method.attached' END AS type,
               CASE WHEN g > 999800 THEN 'received'
                    WHEN bucket < 8 AND g % 100 = 0 THEN 'failed'
                    WHEN bucket = 15 AND g % 40 = 15 THEN 'waiting'
                    WHEN bucket < 8 OR bucket = 13 OR bucket = 14 OR bucket = 15
                        THEN 'completed'
                    ELSE 'ignored' END AS status
    ) AS s
) AS e0
CROSS JOIN LATERAL (
    SELECT e0.*, CASE
        WHEN e0.status = 'waiting' THEN 'awaiting_purchase'
        WHEN e0.status <> 'ignored' THEN NULL
        WHEN e0.bucket < 11 THEN 'invoice_payment'
        ELSE 'unhandled_type' END AS reason,
    CASE
        WHEN e0.bucket < 8 THEN jsonb_build_object(
            'id', 'cs_test_b' || lpad(e0.g::text, 7, '0') || substr(e0.tag, 1, 16),
            'object', 'checkout.session', 'mode', 'payment', 'payment_status', 'paid',
            'status', 'complete', 'amount_subtotal', 1000 + e0.g % 9000,
            'amount_total', 1000 + e0.g % 9000, 'customer', e0.customer,
            'customer_email', NULL, 'client_reference_id', NULL,
            'customer_details', jsonb_build_object('email', e0.email, 'name', 'Bench User',
                                                   'address', jsonb_build_object('country', 'DE')),
            'payment_intent', 'pi_3B' || lpad(e0.g::text, 7, '0') || substr(e0.tag, 17, 10),
            'success_url', 'https://shop.example/success?session_id={CHECKOUT_SESSION_ID}')
        WHEN e0.bucket < 11 THEN jsonb_build_object(
            'id', 'pi_3B' || lpad(e0.g::text, 7, '0') || substr(e0.tag, 17, 10),
            'object', 'payment_intent', 'amount', 1000 + e0.g % 9000,
            'amount_received', 1000 + e0.g % 9000, 'customer', e0.customer,
            'status', 'succeeded', 'receipt_email', NULL)
        WHEN e0.bucket < 14 THEN jsonb_build_object(
            'id', 'ch_3B' || lpad(e0.g::text, 7, '0') || substr(e0.tag, 17, 10),
            'object', 'charge', 'amount', 1000 + e0.g % 9000,
            'amount_captured', 1000 + e0.g % 9000,
            'amount_refunded', CASE WHEN e0.bucket = 13 THEN 500 ELSE 0 END,
            'refunded', e0.bucket = 13, 'customer', e0.customer,
            'payment_intent', 'pi_3B' || lpad((e0.g - 1)::text, 7, '0'),
            'billing_details', jsonb_build_object('email', e0.email, 'name', 'Bench User'))
        WHEN e0.bucket = 14 THEN jsonb_build_object(
            'id', 'in_1B' || lpad(e0.g::text, 7, '0') || substr(e0.tag, 1, 10),
            'object', 'invoice', 'amount_paid', 2000, 'customer', e0.customer,
            'customer_email', e0.email, 'billing_reason', 'subscription_cycle',
            'subscription', 'sub_1B' || lpad((1 + e0.g % 99991)::text, 6, '0'))
        WHEN e0.bucket = 15 THEN jsonb_build_object(
            'id', 'dp_1B' || lpad(e0.g::text, 7, '0') || substr(e0.tag, 1, 10),
            'object', 'dispute', 'amount', 1000 + e0.g % 9000, 'reason', 'fraudulent',
            'charge', 'ch_3B' || lpad((e0.g - 3)::text, 7, '0'),
            'payment_intent', 'pi_3B' || lpad((e0.g - 3)::text, 7, '0'))
        WHEN e0.bucket < 18 THEN jsonb_build_object(
            'id', e0.customer, 'object', 'customer', 'email', e0.email, 'name', 'Bench User')
        ELSE jsonb_build_object(
            'id', 'pm_1B' || lpad(e0.g::text, 7, '0') || substr(e0.tag, 1, 10),
            'object', 'payment_method', 'type', 'card', 'customer', e0.customer,
            'card', jsonb_build_object('brand', 'visa', 'last4', '4242', 'exp_year', 2030))
    END AS object
) AS e;

-- Ledger: a PURCHASE per completed session, a REFUND per completed refund, a DISPUTE per
-- completed dispute, and a USAGE (spending, no event) for every 10th event; balance_after
-- is the user's running sum (floored at zero: the benchmark reads, it does not audit).
INSERT INTO credit_transactions (user_id, amount, balance_after, transaction_type, event_id,
                                 checkout_session_id, payment_intent_id, description, created_at)
SELECT user_id, amount,
       greatest(sum(amount) OVER (PARTITION BY user_id ORDER BY created_at, event_id), 0),
       kind, event_id, session, intent, description, created_at
FROM (
    SELECT 1 + substr(e.event_id, 7, 7)::int % 99991 AS user_id,
           CASE WHEN e.type = 'checkout.session.completed' THEN 10
                WHEN e.type = 'charge.refunded' THEN -5 ELSE -3 END AS amount,
           CASE WHEN e.type = 'checkout.session.completed' THEN 'PURCHASE'
                WHEN e.type = 'charge.refunded' THEN 'REFUND' ELSE 'DISPUTE' END AS kind,
           e.event_id,
           CASE WHEN e.type = 'checkout.session.completed'
                THEN e.raw_data #>> '{data,object,id}' END AS session,
           e.raw_data #>> '{data,object,payment_intent}' AS intent,
           NULL AS description, e.processed_at AS created_at
    FROM stripe_events e
    WHERE e.processing_status = 'completed'
      AND e.type IN ('checkout.session.completed', 'charge.refunded', 'charge.dispute.created')
    UNION ALL
    SELECT 1 + g % 99991, -2, 'USAGE', NULL, NULL, NULL, 'bench usage',
           now() - (1000000 - g) * interval '7.776 s' + interval '1 s'
    FROM generate_series(5, 1000000, 10) AS g
) AS rows;

UPDATE users u SET credits_balance = l.balance
FROM (
    SELECT DISTINCT ON (user_id) user_id, balance_after AS balance
    FROM credit_transactions
    ORDER BY user_id, id DESC
) AS l
WHERE l.user_id = u.id;
