-- The host's users table by name, and its optimistic-locking column (issue 34).
--
-- USERS_TABLE names the host's table (any identifier: `user`, `AppUsers`, `app.users`); the
-- runner resolves it, refuses to shadow a table of that name in another schema, and passes
-- it to the migrations of the session (ledger_users_table(), 0001). The host's version
-- column (an integer `version` or `lock_version`, or USERS_VERSION_COLUMN) is detected at
-- the same time. The line `-- migrate:functions` below re-installs every function of
-- sql/functions/ for that table and column: each change of credits_balance (worker credits,
-- refunds, disputes, expiries, and the spending functions) increments the version column in
-- the same UPDATE. users_host_shape records the table, its kind and the version column.
--
-- Installs made before this migration get the table-aware helpers of 0001/0008 here.
-- Down: the recorded columns stay (users_host_shape belongs to 0001, which drops it) and so
-- do the functions, which behave as those of 0005/0006/0008 on a `users` table without a
-- version column; 0005 and 0008 drop them.

-- migrate:up
ALTER TABLE users_host_shape ADD COLUMN IF NOT EXISTS users_table TEXT;
ALTER TABLE users_host_shape ADD COLUMN IF NOT EXISTS users_kind TEXT;
ALTER TABLE users_host_shape ADD COLUMN IF NOT EXISTS version_column TEXT;

CREATE OR REPLACE FUNCTION ledger_users_table() RETURNS TEXT
    LANGUAGE sql STABLE
    AS $$
SELECT CASE WHEN coalesce(current_setting('webhook_worker.users_schema', true), '') = ''
            THEN format('%I', coalesce(nullif(current_setting('webhook_worker.users_name', true),
                                              ''), 'users'))
            ELSE format('%I.%I', current_setting('webhook_worker.users_schema'),
                        current_setting('webhook_worker.users_name')) END
$$;

CREATE OR REPLACE FUNCTION ledger_user_key_type() RETURNS TEXT
    LANGUAGE sql STABLE
    AS $$
SELECT CASE WHEN a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype) THEN 'bigint'
            ELSE format_type(a.atttypid, a.atttypmod) END
FROM pg_attribute a
WHERE a.attrelid = ledger_users_table()::regclass AND a.attname = 'id' AND NOT a.attisdropped
$$;

CREATE OR REPLACE FUNCTION ledger_user_key_family() RETURNS TEXT
    LANGUAGE sql STABLE
    AS $$
SELECT CASE WHEN a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
                THEN 'integer'
            WHEN a.atttypid = 'uuid'::regtype THEN 'uuid'
            ELSE 'text' END
FROM pg_attribute a
WHERE a.attrelid = ledger_users_table()::regclass AND a.attname = 'id' AND NOT a.attisdropped
$$;

-- migrate:functions

-- migrate:down
UPDATE users_host_shape SET users_table = NULL, users_kind = NULL, version_column = NULL;
