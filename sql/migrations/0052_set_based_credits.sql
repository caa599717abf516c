-- ledger_credit_many writes the usual batch set-based (issue 30; sql/functions/ledger.sql):
-- the functions of ledger.sql are installed again in their current text. Down keeps them:
-- the new text needs nothing a rollback to 0051 removes.

-- migrate:up
SELECT 1;  -- nothing but the functions below

-- migrate:functions ledger.sql

-- migrate:down
SELECT 1;
