-- The console benchmark's data (issue 35): 100,000 users and 1,000,000 stripe_events over
-- 90 days, 1-2 KB of raw JSON each, mixed types and outcomes, with the ledger rows the
-- completed purchases and refunds wrote and some spending. Plain generate_series.
-- Users: bob/alice/... names on four domains, so "bob" and "example.com" are realistic
-- substring searches (10 % and 25 % of the emails). Event g (1 = oldest) has id g, belongs
-- to user 1 + g % 99991 and has type bucket g % 20.
--
-- benchmarks/console.py runs the two sections below (each from its `-- @name` line) on two
-- connections at once, after setting the tables' foreign keys and secondary indexes aside:
-- `event_rows` twice, for each half of the events into a staging table of its own (their
-- JSON is most of the work), then copies both into stripe_events in order while the other
-- connection runs `users_and_ledger`. Their one clock is the setting bench.seeded_at (the
-- seed's start, set on both connections), where a single transaction had now().

-- @event_rows
-- The events g = $1 .. $2: id and the columns console.EVENT_COLUMNS names, in that order.
-- The raw JSON is written as text by format() and parsed once (::jsonb): the same jsonb as
-- nested jsonb_build_object calls (jsonb orders keys itself), at half the CPU (each nested
-- object was built, then copied into its parent). OFFSET 0 keeps each subquery from being
-- flattened into the next, so md5(), the timestamp and the CASEs are computed once a row
-- instead of at every reference.
SELECT e.g, e.event_id, e.type, false, '2024-06-20', e.at, e.at,
       format('{"id": "%s", "object": "event", "api_version": "2024-06-20", "created": %s, '
              '"livemode": false, "pending_webhooks": 1, "type": "%s", '
              '"request": {"id": "req_%s", "idempotency_key": "%s"}, "data": {"object": {%s, '
              '"created": %s, "livemode": false, "currency": "%s", '
              '"description": "Credits pack %s", '
              '"metadata": {"order": "ord_%s", "plan": "pack-%s", "note": "%s"}, '
              '"shipping": null, "statement_descriptor": "CREDITS", '
              '"payment_method_types": ["card", "link"]}}}',
              e.event_id, e.epoch, e.type, e.tag, e.tag, e.object, e.epoch, e.currency, e.pack,
              e.tag, e.pack, repeat(e.tag, 1 + e.g % 24))::jsonb
       AS raw_data,
       e.status, e.reason, CASE WHEN e.status = 'failed' THEN 8 ELSE 1 END,
       CASE WHEN e.status = 'failed' THEN 'user_not_found: no user matched the session' END,
       CASE WHEN e.status IN ('completed', 'ignored', 'failed') THEN e.at + interval '40 ms' END,
       e.at + interval '40 ms'
FROM (
    SELECT g, g % 20 AS bucket, g % 7 AS pack,
           (SELECT current_setting('bench.seeded_at')::timestamptz)
           - (1000000 - g) * interval '7.776 s' AS at,
           md5(g::text) AS tag, lpad(g::text, 7, '0') AS n7, 1 + g % 99991 AS u,
           (ARRAY['usd', 'usd', 'usd', 'eur', 'gbp', 'jpy'])[1 + g % 6] AS currency
    FROM generate_series($1::int, $2::int) AS g
    OFFSET 0
) AS e0
CROSS JOIN LATERAL (
    SELECT e0.*, extract(epoch FROM e0.at)::bigint AS epoch,
           'evt_1B' || e0.n7 || substr(e0.tag, 1, 10) AS event_id,
           'cus_B' || lpad(e0.u::text, 6, '0') AS customer,
           (ARRAY['bob', 'alice', 'carol', 'dave', 'erin', 'frank', 'grace', 'heidi', 'ivan',
                  'judy'])[1 + e0.u / 10 % 10] || '.' || e0.u || '@'
           || (ARRAY['example.com', 'mail.test', 'corp.example', 'shop.test'])[1 + e0.u / 100 % 4]
           AS email,
           CASE WHEN e0.bucket < 8 THEN 'checkout.session.completed'
                WHEN e0.bucket < 11 THEN 'payment_intent.succeeded'
                WHEN e0.bucket < 13 THEN 'charge.succeeded'
                WHEN e0.bucket = 13 THEN 'charge.refunded'
                WHEN e0.bucket = 14 THEN 'invoice.paid'
                WHEN e0.bucket = 15 THEN 'charge.dispute.created'
                WHEN e0.bucket < 18 THEN 'customer.created'
                ELSE 'payment_method.attached' END AS type,
           CASE WHEN e0.g > 999800 THEN 'received'
                WHEN e0.bucket < 8 AND e0.g % 100 = 0 THEN 'failed'
                WHEN e0.bucket = 15 AND e0.g % 40 = 15 THEN 'waiting'
                WHEN e0.bucket < 8 OR e0.bucket = 13 OR e0.bucket = 14 OR e0.bucket = 15
                    THEN 'completed'
                ELSE 'ignored' END AS status
    OFFSET 0
) AS e1
CROSS JOIN LATERAL (
    SELECT e1.*, CASE
        WHEN e1.status = 'waiting' THEN 'awaiting_purchase'
        WHEN e1.status <> 'ignored' THEN NULL
        WHEN e1.bucket < 11 THEN 'invoice_payment'
        ELSE 'unhandled_type' END AS reason,
    CASE
        WHEN e1.bucket < 8 THEN format(
            '"id": "cs_test_b%s%s", "object": "checkout.session", "mode": "payment", '
            '"payment_status": "paid", "status": "complete", "amount_subtotal": %s, '
            '"amount_total": %s, "customer": "%s", "customer_email": null, '
            '"client_reference_id": null, "customer_details": {"email": "%s", '
            '"name": "Bench User", "address": {"country": "DE"}}, '
            '"payment_intent": "pi_3B%s%s", '
            '"success_url": "https://shop.example/success?session_id={CHECKOUT_SESSION_ID}"',
            e1.n7, substr(e1.tag, 1, 16), 1000 + e1.g % 9000, 1000 + e1.g % 9000,
            e1.customer, e1.email, e1.n7, substr(e1.tag, 17, 10))
        WHEN e1.bucket < 11 THEN format(
            '"id": "pi_3B%s%s", "object": "payment_intent", "amount": %s, '
            '"amount_received": %s, "customer": "%s", "status": "succeeded", '
            '"receipt_email": null',
            e1.n7, substr(e1.tag, 17, 10), 1000 + e1.g % 9000, 1000 + e1.g % 9000, e1.customer)
        WHEN e1.bucket < 14 THEN format(
            '"id": "ch_3B%s%s", "object": "charge", "amount": %s, "amount_captured": %s, '
            '"amount_refunded": %s, "refunded": %s, "customer": "%s", '
            '"payment_intent": "pi_3B%s", '
            '"billing_details": {"email": "%s", "name": "Bench User"}',
            e1.n7, substr(e1.tag, 17, 10), 1000 + e1.g % 9000, 1000 + e1.g % 9000,
            CASE WHEN e1.bucket = 13 THEN 500 ELSE 0 END,
            CASE WHEN e1.bucket = 13 THEN 'true' ELSE 'false' END, e1.customer,
            lpad((e1.g - 1)::text, 7, '0'), e1.email)
        WHEN e1.bucket = 14 THEN format(
            '"id": "in_1B%s%s", "object": "invoice", "amount_paid": 2000, "customer": "%s", '
            '"customer_email": "%s", "billing_reason": "subscription_cycle", '
            '"subscription": "sub_1B%s"',
            e1.n7, substr(e1.tag, 1, 10), e1.customer, e1.email, lpad(e1.u::text, 6, '0'))
        WHEN e1.bucket = 15 THEN format(
            '"id": "dp_1B%s%s", "object": "dispute", "amount": %s, "reason": "fraudulent", '
            '"charge": "ch_3B%s", "payment_intent": "pi_3B%s"',
            e1.n7, substr(e1.tag, 1, 10), 1000 + e1.g % 9000, lpad((e1.g - 3)::text, 7, '0'),
            lpad((e1.g - 3)::text, 7, '0'))
        WHEN e1.bucket < 18 THEN format(
            '"id": "%s", "object": "customer", "email": "%s", "name": "Bench User"',
            e1.customer, e1.email)
        ELSE format(
            '"id": "pm_1B%s%s", "object": "payment_method", "type": "card", "customer": "%s", '
            '"card": {"brand": "visa", "last4": "4242", "exp_year": 2030}',
            e1.n7, substr(e1.tag, 1, 10), e1.customer)
    END AS object
) AS e

-- @users_and_ledger
INSERT INTO users (email, stripe_customer_id, created_at)
SELECT (ARRAY['bob', 'alice', 'carol', 'dave', 'erin', 'frank', 'grace', 'heidi', 'ivan',
              'judy'])[1 + u / 10 % 10] || '.' || u || '@'
       || (ARRAY['example.com', 'mail.test', 'corp.example', 'shop.test'])[1 + u / 100 % 4],
       'cus_B' || lpad(u::text, 6, '0'),
       (SELECT current_setting('bench.seeded_at')::timestamptz) - interval '120 days'
FROM generate_series(1, 100000) AS u;

-- Ledger: a PURCHASE per completed session, a REFUND per completed refund, a DISPUTE per
-- completed dispute, and a USAGE (spending, no event) for every 10th event; balance_after
-- is the user's running sum (floored at zero: the benchmark reads, it does not audit).
-- Computed from g like the events above (the same ids as their raw data, the same
-- `completed` rule: buckets 0-7 but every 100th event, 13, and 15 but those waiting; none
-- of the received backlog past 999,800), not read back from them; inserted in time order,
-- as the service writes them.
INSERT INTO credit_transactions (user_id, amount, balance_after, transaction_type, event_id,
                                 checkout_session_id, payment_intent_id, description, created_at)
SELECT user_id, amount,
       greatest(sum(amount) OVER (PARTITION BY user_id ORDER BY created_at, event_id), 0),
       kind, event_id, session, intent, description, created_at
FROM (
    SELECT 1 + g % 99991 AS user_id,
           CASE WHEN bucket < 8 THEN 10 WHEN bucket = 13 THEN -5 ELSE -3 END AS amount,
           CASE WHEN bucket < 8 THEN 'PURCHASE' WHEN bucket = 13 THEN 'REFUND'
                ELSE 'DISPUTE' END AS kind,
           'evt_1B' || n7 || substr(tag, 1, 10) AS event_id,
           CASE WHEN bucket < 8 THEN 'cs_test_b' || n7 || substr(tag, 1, 16) END AS session,
           CASE WHEN bucket < 8 THEN 'pi_3B' || n7 || substr(tag, 17, 10)
                WHEN bucket = 13 THEN 'pi_3B' || lpad((g - 1)::text, 7, '0')
                ELSE 'pi_3B' || lpad((g - 3)::text, 7, '0') END AS intent,
           NULL AS description,
           (SELECT current_setting('bench.seeded_at')::timestamptz)
           - (1000000 - g) * interval '7.776 s' + interval '40 ms' AS created_at
    FROM (
        SELECT g, g % 20 AS bucket, md5(g::text) AS tag, lpad(g::text, 7, '0') AS n7
        FROM generate_series(1, 999800) AS g
        WHERE (g % 20 < 8 AND g % 100 <> 0) OR g % 20 = 13 OR (g % 20 = 15 AND g % 40 <> 15)
        OFFSET 0
    ) AS c
    UNION ALL
    SELECT 1 + g % 99991, -2, 'USAGE', NULL, NULL, NULL, 'bench usage',
           (SELECT current_setting('bench.seeded_at')::timestamptz)
           - (1000000 - g) * interval '7.776 s' + interval '1 s'
    FROM generate_series(5, 1000000, 10) AS g
) AS rows
ORDER BY created_at;

UPDATE users u SET credits_balance = l.balance
FROM (
    SELECT DISTINCT ON (user_id) user_id, balance_after AS balance
    FROM credit_transactions
    ORDER BY user_id, id DESC
) AS l
WHERE l.user_id = u.id;
