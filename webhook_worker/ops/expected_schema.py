"""What the schema contract names (docs/design.md, schema and migrations), as in
sql/migrations/: the tables and columns, check values, constraints, indexes and functions
`verify` and the deploy preflight look for."""

from __future__ import annotations

# What the schema contract names (README "Schema and migrations"), checked by `verify`; as in
# sql/migrations/
EXPECTED_COLUMNS: dict[str, tuple[str, ...]] = {
    "users": (
        "id",
        "uuid",
        "email",
        "stripe_customer_id",
        "credits_balance",
        "created_at",
        "updated_at",
    ),
    "stripe_events": (
        "event_id",
        "type",
        "livemode",
        "api_version",
        "account",
        "stripe_created_at",
        "received_at",
        "raw_data",
        "processing_status",
        "status_reason",
        "source",
        "waiting_for",
        "attempts",
        "next_attempt_at",
        "error_message",
        "processed_at",
        "updated_at",
    ),
    "credit_transactions": (
        "user_id",
        "amount",
        "balance_after",
        "transaction_type",
        "event_id",
        "checkout_session_id",
        "payment_intent_id",
        "description",
        "idempotency_key",
        "created_at",
    ),
    "credit_holds": (
        "user_id",
        "idempotency_key",
        "amount",
        "state",
        "actual",
        "hold_transaction_id",
        "release_transaction_id",
        "expires_at",
    ),
    "stripe_event_search": (
        "event_row_id",
        "received_at",
        "object_id",
        "payment_intent",
        "customer",
        "email",
    ),
    "schema_migrations": ("version", "name", "checksum", "applied_at"),
    "reconcile_runs": ("trigger", "window_start", "window_end", "status", "events_recovered"),
    "reconcile_lease": ("name", "holder", "expires_at"),
    "payment_states": ("payment_intent_id", "captured", "refunded", "refunded_as_of", "taken"),
    "payment_refund_failures": ("refund_id", "payment_intent_id", "amount", "failed_at"),
    "payment_disputes": ("dispute_id", "payment_intent_id", "amount", "stage", "status"),
    "credit_note_refunds": (
        "credit_note_id",
        "refund_id",
        "payment_intent_id",
        "invoice_id",
        "amount",
        "event_id",
    ),
}


# Values the status and type checks must accept (migrations 0013, 0014, 0025).
EXPECTED_CHECK_VALUES: dict[str, tuple[str, ...]] = {
    "stripe_events_status_check": ("waiting",),
    "credit_transactions_type_check": (
        "REFUND_REVERSAL",
        "DISPUTE",
        "DISPUTE_REVERSAL",
        "HOLD",
        "HOLD_RELEASE",
        "SHORTFALL_COLLECTION",
    ),
}


EXPECTED_CONSTRAINTS: dict[str, str] = {
    "stripe_events_event_id_key": "stripe_events.event_id unique",
    "stripe_events_status_check": "stripe_events.processing_status values",
    "credit_transactions_event_id_key": "credit_transactions.event_id unique",
    "credit_transactions_amount_nonzero": "credit_transactions.amount <> 0",
    "credit_transactions_type_check": "credit_transactions.transaction_type values",
    "credit_transactions_event_id_fkey": "credit_transactions.event_id -> stripe_events",
}


EXPECTED_INDEXES: dict[str, str] = {
    "stripe_events_status_received_at_idx": "stripe_events by status, oldest first",
    "credit_transactions_one_purchase_per_session": "one PURCHASE per checkout session",
    "credit_transactions_one_purchase_per_payment_intent": "one PURCHASE per payment intent",
    "credit_transactions_one_credit_per_invoice": "one SUBSCRIPTION_CREDIT per invoice",
    "credit_transactions_one_expiry_per_invoice": "one EXPIRY per invoice",
    "stripe_events_received_at_id_idx": "the console's event list, newest first (0046; an "
    "invalid index from a failed concurrent build counts as missing: migrate again)",
    "stripe_event_search_email_trigrams_idx": "the console's email search (0050)",
    "credit_transactions_one_payment_per_invoice": (
        "one PURCHASE or SUBSCRIPTION_CREDIT per invoice (a session's post-payment invoice)"
    ),
    "credit_transactions_user_idempotency_key": "one spending call per user and idempotency key",
    "credit_transactions_one_release_per_hold": "a hold goes back at most once",
}


EXPECTED_FUNCTIONS: dict[str, str] = {
    "ledger_lock_key": "the user's int4 advisory-lock key",
    "ledger_credit": "one purchase credited under the user's lock",
    "ledger_credit_many": "a batch of purchases credited in one commit",
    "ledger_apply": "one ledger row and its balance move (refunds, disputes, expiries)",
    "users_match": "every reference kind matched in one statement",
    "stripe_event_search_insert": "the console's search columns of each stored event (0050)",
    "users_create_by_email": "a user created from an email, race-safe",
    "users_remember_stripe_customer": "a user's Stripe customer id, remembered once",
    "credits_spend": "spending: a USAGE row under the user's lock (docs/spending.md)",
    "credits_grant": "spending: a BONUS row",
    "credits_adjust": "spending: an ADJUSTMENT row with its reason",
    "credits_hold": "spending: a HOLD row",
    "credits_settle": "spending: a hold kept in part, the rest back",
    "credits_release": "spending: a hold given back",
    "credits_release_expired": "the worker's cron: expired holds released once",
}
