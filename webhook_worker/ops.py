"""The ops service layer shared by the CLI (`ops_cli`) and the HTTP API (`ops_api`).

Every function takes a connection (and Redis where it enqueues) and returns plain data, so
both front ends have the same semantics. SQL lives in `sql/queries/ops.sql`.

Replay: an event goes back to `received` with its `attempts` and last `error_message` kept
(the worker overwrites the error with the new outcome) and is enqueued under a fresh arq
job id, because arq refuses an id whose job or kept result still exists. `failed`,
`received` and `processing` events replay freely; `completed` and `ignored` ones only with
`force` — harmless (the ledger's unique `event_id` and one-PURCHASE-per-session constraints
mean a completed purchase is never credited twice) but rarely what was meant.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import httpx
import orjson
from arq.connections import ArqRedis

from webhook_worker import host, migrations, queue, sample_events, scope
from webhook_worker.config import Settings
from webhook_worker.errors import ConfigError, MigrationError, TransientError
from webhook_worker.log import redact_text
from webhook_worker.queries import query
from webhook_worker.store import EVENT_STATUSES, Connection, prune_events, translate_errors

DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 10_000
REPLAY_BATCH = 200
DRY_RUN_ROWS = 20
FREE_REPLAY_STATUSES = ("failed", "received", "processing", "waiting")
FORCED_REPLAY_STATUSES = ("completed", "ignored")
SMOKE_EVENT_TYPE = "webhook_worker.smoke_test"

# What the contract (DESIGN.md) names, checked by `verify`; names as in sql/migrations/.
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
        "created_at",
    ),
    "schema_migrations": ("version", "name", "checksum", "applied_at"),
    "reconcile_runs": ("trigger", "window_start", "window_end", "status", "events_recovered"),
    "payment_states": ("payment_intent_id", "captured", "refunded", "refunded_as_of", "taken"),
    "payment_refund_failures": ("refund_id", "payment_intent_id", "amount", "failed_at"),
    "payment_disputes": ("dispute_id", "payment_intent_id", "amount", "stage", "status"),
}
# Values the status and type checks must accept (migrations 0013, 0014).
EXPECTED_CHECK_VALUES: dict[str, tuple[str, ...]] = {
    "stripe_events_status_check": ("waiting",),
    "credit_transactions_type_check": ("REFUND_REVERSAL", "DISPUTE", "DISPUTE_REVERSAL"),
}
EXPECTED_CONSTRAINTS: dict[str, str] = {
    "credits_balance_nonneg": "users.credits_balance >= 0",
    "stripe_events_event_id_key": "stripe_events.event_id unique",
    "stripe_events_status_check": "stripe_events.processing_status values",
    "credit_transactions_event_id_key": "credit_transactions.event_id unique",
    "credit_transactions_amount_nonzero": "credit_transactions.amount <> 0",
    "credit_transactions_type_check": "credit_transactions.transaction_type values",
    "credit_transactions_user_id_fkey": "credit_transactions.user_id -> users",
    "credit_transactions_event_id_fkey": "credit_transactions.event_id -> stripe_events",
}
EXPECTED_INDEXES: dict[str, str] = {
    "users_uuid_key": "users.uuid unique",
    "users_email_lower_key": "users.email unique case-insensitively",
    "users_stripe_customer_id_key": "users.stripe_customer_id unique",
    "stripe_events_status_received_at_idx": "stripe_events by status, oldest first",
    "credit_transactions_one_purchase_per_session": "one PURCHASE per checkout session",
    "credit_transactions_one_purchase_per_payment_intent": "one PURCHASE per payment intent",
    "credit_transactions_one_credit_per_invoice": "one SUBSCRIPTION_CREDIT per invoice",
    "credit_transactions_one_expiry_per_invoice": "one EXPIRY per invoice",
}
EXPECTED_FUNCTIONS: dict[str, str] = {
    "ledger_lock_key": "the user's int4 advisory-lock key",
    "ledger_credit": "one purchase credited under the user's lock",
    "ledger_credit_many": "a batch of purchases credited in one commit",
}
_SAMPLE = 50
_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class OpsInputError(ConfigError):
    """An ops request is invalid (bad status, date or combination of options)."""


# --- values ------------------------------------------------------------------------------


def parse_since(
    text: str | None, *, now: datetime | None = None, name: str = "--since"
) -> datetime | None:
    """`2024-06-01`, an ISO timestamp (UTC when naive), or relative: `30m`, `24h`, `7d`, `2w`.

    Values a datetime cannot hold (`99999999999d`, `9999-12-31T23:59:59-14:00`) are input
    errors naming the option, never a 500.
    """
    if text is None or not text.strip():
        return None
    hint = "use 2024-06-01, 2024-06-01T12:00:00Z or 24h/7d"
    relative = _RELATIVE.match(text)
    try:
        if relative:
            delta = timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
            return (now or datetime.now(UTC)) - delta
        return _absolute(text.strip(), name, hint)
    except OverflowError:
        raise OpsInputError(f"{name} {text[:40]!r} is out of range; {hint}") from None


def _absolute(text: str, name: str, hint: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise OpsInputError(f"{name} {text[:40]!r} is not a date; {hint}") from None
        parsed = datetime(day.year, day.month, day.day)
    if not parsed.tzinfo:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)  # OverflowError past year 9999 in UTC


def check_status(status: str | None) -> str | None:
    if status is not None and status not in EVENT_STATUSES:
        raise OpsInputError(
            f"status {status!r} is not one of {' | '.join(EVENT_STATUSES)}; e.g. --status failed"
        )
    return status


def jsonable(value: Any) -> Any:
    """Plain JSON types: datetimes as ISO 8601, UUIDs as text, Decimals as numbers."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _event_row(record: Any) -> dict[str, Any]:
    return redact_row(dict(record))


def redact_row(row: dict[str, Any]) -> dict[str, Any]:
    """An event row with its error message redacted (it may quote a payload)."""
    if row.get("error_message"):
        row["error_message"] = redact_text(row["error_message"])
    return row


# --- list / show -------------------------------------------------------------------------


async def list_events(
    conn: Connection,
    *,
    status: str | None = None,
    event_type: str | None = None,
    since: datetime | None = None,
    reason: str | None = None,
    limit: int = DEFAULT_LIST_LIMIT,
) -> list[dict[str, Any]]:
    """Newest first, filtered by status, type, receipt time and status reason."""
    check_status(status)
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise OpsInputError(f"limit {limit} is out of range; use 1 to {MAX_LIST_LIMIT}")
    with translate_errors("listing events"):
        rows = await conn.fetch(
            query("ops_list_events"), status, event_type, since, limit, reason or None
        )
    return [_event_row(row) for row in rows]


async def show_event(
    conn: Connection, event_id: str, *, raw: bool = False
) -> dict[str, Any] | None:
    """One event with the ledger rows it produced; the parsed payload when `raw`."""
    with translate_errors("reading an event"):
        record = await conn.fetchrow(query("get_event"), event_id)
        if record is None:
            return None
        ledger = await conn.fetch(query("ops_event_ledger"), event_id)
    event = _event_row(record)
    payload = event.pop("raw_data")
    event["payload_pruned"] = payload is None
    if raw:
        event["raw_data"] = orjson.loads(payload) if isinstance(payload, str | bytes) else payload
    event["ledger"] = [dict(row) for row in ledger]
    return event


# --- replay ------------------------------------------------------------------------------


@dataclass
class ReplayResult:
    """What a replay did (or, with `dry_run`, would do)."""

    dry_run: bool
    selected: list[dict[str, Any]] = field(default_factory=list)
    # Events the filters match, counted up to `limit` + 1; `more` when a call left some.
    count: int = 0
    limit: int = 0
    more: bool = False
    replayed: list[str] = field(default_factory=list)
    enqueued: int = 0
    not_found: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    enqueue_error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.not_found and not self.skipped and self.enqueue_error is None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


async def select_replay(
    conn: Connection,
    *,
    event_ids: Sequence[str] = (),
    status: str | None = None,
    event_type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    force: bool = False,
    limit: int = 10_000,
    preview: bool = False,
) -> ReplayResult:
    """Which events a replay would touch: named ids, or the events matching the filters.

    At most `limit` (OPS_REPLAY_MAX) per call, read in keyset pages; `more` says a further
    call is needed (replayed events leave the `failed` filter, so it continues where this one
    stopped). With `preview` (a dry run) the filters are only counted and the first
    `DRY_RUN_ROWS` rows returned: a dry run never loads every row.
    """
    result = ReplayResult(dry_run=True, limit=limit)
    filtered = status or event_type or since or until
    if event_ids and filtered:
        raise OpsInputError("give event ids or --status/--type/--since/--until filters, not both")
    if not event_ids and status is None:
        raise OpsInputError("give event ids to replay, or --status (e.g. --status failed)")
    if since and until and since >= until:
        raise OpsInputError("--since must be before --until")
    allowed = FREE_REPLAY_STATUSES + (FORCED_REPLAY_STATUSES if force else ())
    if event_ids:
        candidates = await _named_events(conn, event_ids, limit, result)
    else:
        check_status(status)
        if status in FORCED_REPLAY_STATUSES and not force:
            raise OpsInputError(
                f"replaying {status} events needs --force: it credits nothing twice but "
                "re-runs their handling"
            )
        filters = (status, event_type, since, until)
        with translate_errors("selecting events to replay"):
            matching = await conn.fetchval(query("ops_replay_count"), *filters, limit + 1)
        result.count, result.more = min(matching, limit), matching > limit
        wanted = min(DRY_RUN_ROWS, limit) if preview else limit
        candidates = await _matching_events(conn, filters, wanted)
    for event in candidates:
        if event["processing_status"] in allowed:
            result.selected.append(event)
        else:
            result.skipped.append(
                {
                    "event_id": event["event_id"],
                    "reason": f"already {event['processing_status']}; use --force to replay",
                }
            )
    return result


async def _named_events(
    conn: Connection, event_ids: Sequence[str], limit: int, result: ReplayResult
) -> list[dict[str, Any]]:
    unique_ids = list(dict.fromkeys(event_ids))
    if len(unique_ids) > limit:
        raise OpsInputError(
            f"{len(unique_ids)} event ids is more than OPS_REPLAY_MAX={limit} per call; "
            "split the list"
        )
    with translate_errors("selecting events to replay"):
        rows = await conn.fetch(query("ops_events_by_ids"), unique_ids)
    by_id = {row["event_id"]: _event_row(row) for row in rows}
    result.not_found = [event_id for event_id in unique_ids if event_id not in by_id]
    result.count = len(by_id)
    return [by_id[event_id] for event_id in unique_ids if event_id in by_id]


async def _matching_events(
    conn: Connection, filters: tuple[Any, ...], wanted: int
) -> list[dict[str, Any]]:
    """Up to `wanted` rows in (received_at, id) order, one keyset page at a time."""
    rows: list[dict[str, Any]] = []
    after: tuple[datetime | None, int | None] = (None, None)
    while len(rows) < wanted:
        page_size = min(REPLAY_BATCH, wanted - len(rows))
        with translate_errors("selecting events to replay"):
            page = await conn.fetch(query("ops_replay_candidates"), *filters, *after, page_size)
        rows += [_event_row(row) for row in page]
        if len(page) < page_size:
            break
        after = (page[-1]["received_at"], page[-1]["id"])
    for row in rows:
        row.pop("id", None)
    return rows


async def replay_events(
    conn: Connection,
    redis: ArqRedis | None,
    selection: ReplayResult,
    *,
    dry_run: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    """Reset the selected events to `received` and enqueue them (jobs under fresh ids).

    Rows are reset before the enqueue: if Redis fails half way, the events wait as
    `received` and the worker's stale-event sweeper enqueues them later.
    """
    selection.dry_run = dry_run
    if dry_run:
        return selection
    events = selection.selected
    for start in range(0, len(events), REPLAY_BATCH):
        batch = events[start : start + REPLAY_BATCH]
        ids = [event["event_id"] for event in batch]
        statuses = sorted({event["processing_status"] for event in batch})
        with translate_errors("resetting events for replay"):
            rows = await conn.fetch(query("ops_reset_for_replay"), ids, statuses)
        reset = {row["event_id"] for row in rows}
        replayed = [event_id for event_id in ids if event_id in reset]
        for event_id in ids:
            if event_id not in reset:
                selection.skipped.append(
                    {"event_id": event_id, "reason": "its status changed meanwhile; not replayed"}
                )
        selection.replayed.extend(replayed)
        if redis is not None and selection.enqueue_error is None and replayed:
            try:
                selection.enqueued += await queue.enqueue_events(redis, replayed)
            except TransientError as exc:
                selection.enqueue_error = (
                    f"{exc}; the events are `received` and the sweeper will enqueue them"
                )
        if on_progress is not None:
            on_progress(len(batch))
    if redis is None and selection.replayed:
        selection.enqueue_error = "Redis not available; the sweeper will enqueue the events"
    return selection


# --- stats -------------------------------------------------------------------------------


async def collect_stats(conn: Connection) -> dict[str, Any]:
    """Events by status and type, backlog age, recent failures, credit totals."""
    with translate_errors("collecting stats"):
        by_status = await conn.fetch(query("ops_stats_by_status"))
        by_type = await conn.fetch(query("ops_stats_by_type"))
        ignored = await conn.fetch(query("ops_stats_ignored_by_reason"))
        waiting = await conn.fetchrow(query("ops_stats_waiting"))
        oldest = await conn.fetchrow(query("ops_stats_oldest_unprocessed"))
        failures = await conn.fetchval(query("ops_stats_recent_failures"))
        credits = await conn.fetchrow(query("ops_stats_credits"))
        users = await conn.fetchrow(query("ops_stats_users"))
        last_reconcile = await conn.fetchrow(query("reconcile_last_runs"), 1)
    statuses = {status: 0 for status in EVENT_STATUSES}
    statuses.update({row["status"]: int(row["events"]) for row in by_status})
    types: dict[str, dict[str, int]] = {}
    for row in by_type:
        types.setdefault(row["type"], {})[row["status"]] = int(row["events"])
    assert oldest is not None and credits is not None and users is not None
    assert waiting is not None
    return {
        "events_by_status": statuses,
        "events_total": sum(statuses.values()),
        "events_by_type": types,
        "ignored_by_reason": {row["reason"]: int(row["events"]) for row in ignored},
        "oldest_unprocessed_at": oldest["oldest"],
        "oldest_unprocessed_age_seconds": oldest["age"],
        "failures_last_day": int(failures or 0),
        "credits_granted": int(credits["granted"]),
        "credits_refunded": int(credits["refunded"]),
        "credits_disputed": int(credits["disputed"]),
        "waiting_events": int(waiting["events"]),
        "oldest_waiting_at": waiting["oldest"],
        "credit_transactions": int(credits["transactions"]),
        "users_with_credits": int(users["users_with_credits"]),
        "credits_outstanding": int(users["credits_outstanding"]),
        "last_reconcile": dict(last_reconcile) if last_reconcile else None,
    }


# --- verify ------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False  # passes, but is usually a mistake: printed as `warn`


@dataclass
class VerifyReport:
    checks: list[Check] = field(default_factory=list)
    host_shape: list[str] = field(default_factory=list)  # what was found and chosen

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def problems(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]

    def add(self, name: str, ok: bool, detail: str, *, warning: bool = False) -> None:
        self.checks.append(Check(name, ok, detail, warning))

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "host_shape": self.host_shape,
            "checks": [asdict(check) for check in self.checks],
        }


async def _verify_schema(
    conn: Connection, report: VerifyReport, shape: host.HostShape, tenant: str | None
) -> set[str]:
    """Tables, columns, constraints and indexes; returns the tables that are complete."""
    rows = await conn.fetch(query("ops_schema_columns"), list(EXPECTED_COLUMNS))
    present: dict[str, set[str]] = {}
    for row in rows:
        present.setdefault(row["table_name"], set()).add(row["column_name"])
    complete: set[str] = set()
    for table, columns in EXPECTED_COLUMNS.items():
        if table not in present:
            report.add(f"table {table}", False, f"table {table} is missing")
            continue
        missing = [column for column in columns if column not in present[table]]
        if missing:
            report.add(f"table {table}", False, f"{table} lacks column(s): {', '.join(missing)}")
        else:
            report.add(f"table {table}", True, f"{len(columns)} columns present")
            complete.add(table)
    constraints = {row["name"] for row in await conn.fetch(query("ops_schema_constraints"))}
    for name, meaning in EXPECTED_CONSTRAINTS.items():
        found = name in constraints
        report.add(f"constraint {name}", found, meaning if found else f"missing ({meaning})")
    indexes = {row["name"] for row in await conn.fetch(query("ops_schema_indexes"))}
    for name, meaning in _expected_indexes(tenant).items():
        found = name in indexes
        report.add(f"index {name}", found, meaning if found else f"missing ({meaning})")
    if tenant is not None and "users_email_lower_key" in indexes:
        report.add(
            "index users_email_lower_key",
            False,
            f"a global unique email index on a users table whose emails are unique per "
            f"users.{tenant}: two tenants sharing an email cannot both exist; drop it (DROP "
            "INDEX users_email_lower_key; CREATE INDEX users_email_lower_idx ON users "
            "(lower(email)))",
        )
    if "users" in complete:
        _verify_users_insertable(shape, report)
    definitions = {
        row["name"]: row["definition"] for row in await conn.fetch(query("ops_schema_checks"))
    }
    for name, values in EXPECTED_CHECK_VALUES.items():
        lacking = [v for v in values if f"'{v}'" not in definitions.get(name, "")]
        report.add(
            f"values {name}",
            not lacking,
            f"accepts {', '.join(values)}"
            if not lacking
            else f"does not accept {', '.join(lacking)}: apply migrations 0013/0014",
        )
    functions = {row["name"] for row in await conn.fetch(query("ops_schema_functions"))}
    for name, meaning in EXPECTED_FUNCTIONS.items():
        found = name in functions
        report.add(f"function {name}", found, meaning if found else f"missing ({meaning})")
    return complete


def _expected_indexes(tenant: str | None) -> dict[str, str]:
    """A multi-tenant users gets a plain lower(email) index instead of the unique one."""
    if tenant is None:
        return EXPECTED_INDEXES
    expected = {k: v for k, v in EXPECTED_INDEXES.items() if k != "users_email_lower_key"}
    expected["users_email_lower_idx"] = f"users.email lookups (unique per users.{tenant})"
    return expected


def _verify_users_insertable(shape: host.HostShape, report: VerifyReport) -> None:
    """A host app's `users` may require columns we never fill: say so before a payment fails."""
    required = shape.required_columns
    if not required:
        how = "with its tenant" if shape.tenant_column else "alone"
        report.add("users by email", True, f"a user can be created from an email {how}")
        return
    columns = ", ".join(f"users.{name}" for name in required)
    report.add(
        "users by email",
        False,
        f"{columns} NOT NULL without a default: a payment whose email matches no user fails "
        "instead of creating one; give each a default (ALTER TABLE users ALTER COLUMN … SET "
        "DEFAULT …) or make it nullable",
    )


async def _verify_reconcile(conn: Connection, report: VerifyReport, settings: Settings) -> None:
    """The reconcile cron is on (STRIPE_API_KEY): warn when it has not succeeded lately."""
    last = await conn.fetchval(query("reconcile_last_success"))
    limit = 3 * settings.reconcile_interval_seconds
    if last is None:
        report.add("reconcile", True, "no reconcile run has succeeded yet", warning=True)
        return
    age = (datetime.now(UTC) - last).total_seconds()
    if age > limit:
        report.add(
            "reconcile",
            True,
            f"the last successful reconcile finished {int(age)}s ago, over three intervals "
            f"({limit}s): is a worker running, and does Stripe accept STRIPE_API_KEY?",
            warning=True,
        )
    else:
        report.add("reconcile", True, f"last succeeded {int(age)}s ago")


_LOCK_SAMPLES: dict[host.KeyFamily, tuple[host.UserId, ...]] = {
    "integer": (1, 2**31 - 1, 2**31, 2**40 + 7, 2**63 - 1),
    "uuid": ("0b7e2f0c-4d1a-4c55-9a3e-6f1d2c3b4a59", "ffffffff-ffff-7fff-bfff-ffffffffffff"),
    "text": ("user_2abcDEF123", "0b7e2f0c-4d1a-4c55-9a3e-6f1d2c3b4a59", "é-unicode-id"),
}


async def _verify_host(
    conn: Connection, report: VerifyReport, shape: host.HostShape
) -> dict[str, Any] | None:
    """The host shape found, what migrations recorded, and the lock key function."""
    recorded = await host.recorded_shape(conn)
    report.host_shape = shape.describe(recorded)
    problems = shape.problems()
    report.add(
        "host users",
        not problems,
        "; ".join(problems) if problems else f"users.id {shape.key_type} is supported",
    )
    family = shape.key_family
    if recorded is None or recorded.get("key_type") is None or family is None:
        report.add("host shape recorded", False, "not recorded: run `webhook-worker migrate`")
        return recorded
    if recorded["key_type"] != shape.key_type:
        report.add(
            "host shape recorded",
            False,
            f"users.id is {shape.key_type} but the ledger was built for {recorded['key_type']}; "
            "the ledger's user_id and lock key no longer fit: restore the key type",
        )
    elif recorded.get("tenant_column") != shape.tenant_column:
        report.add(
            "host shape recorded",
            False,
            f"emails are scoped by {_tenant_text(shape.tenant_column)} now, but the service "
            f"was installed with {_tenant_text(recorded.get('tenant_column'))}; set "
            "USERS_TENANT_COLUMN to match, or re-install the lookups (`webhook-worker migrate "
            "down --to 7`, then `migrate up`)",
        )
    else:
        report.add("host shape recorded", True, f"ledger user_id {recorded['ledger_key_type']}")
    await _verify_lock_key(conn, report, family, recorded)
    return recorded


def _tenant_text(column: str | None) -> str:
    return f"users.{column}" if column else "no tenant column"


async def _verify_lock_key(
    conn: Connection, report: VerifyReport, family: host.KeyFamily, recorded: dict[str, Any]
) -> None:
    """`ledger_lock_key` in the database must compute what `ledger.lock_key` does: the
    refund path and the credit path lock the same user with the same key."""
    expected = "low32" if family == "integer" else "sha256_first4"
    if recorded.get("lock_key_function") != expected:
        report.add(
            "lock key",
            False,
            f"recorded {recorded.get('lock_key_function')}, expected {expected} for a "
            f"{family} key; run `webhook-worker migrate`",
        )
        return
    pairs = [
        (value, await conn.fetchval(query("host_lock_key_of"), value))
        for value in _LOCK_SAMPLES[family]
    ]
    rows = await conn.fetch(query("host_lock_keys_of_users"), _SAMPLE)
    pairs += [(host.user_key(row["user_id"]), row["key"]) for row in rows]
    wrong = [str(value) for value, key in pairs if key != host.lock_key(value)]
    if wrong:
        report.add(
            "lock key",
            False,
            f"ledger_lock_key differs from webhook_worker.ledger.lock_key for {len(wrong)} "
            f"key(s), e.g. {wrong[0]}: re-apply migration 0008 (`webhook-worker migrate down "
            "--to 7` then `migrate up`)",
        )
    else:
        report.add(
            "lock key", True, f"{host.LOCK_KEY_FUNCTIONS[expected]}; {len(pairs)} keys agree"
        )


async def _verify_migrations(conn: Connection, report: VerifyReport) -> None:
    try:
        pending = await migrations.pending_migrations(conn)  # type: ignore[arg-type]
    except MigrationError as exc:
        report.add("migrations", False, str(exc))
        return
    if pending:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in pending)
        report.add("migrations", False, f"not applied: {names} (run `webhook-worker migrate`)")
    else:
        report.add("migrations", True, "every migration is applied")


async def _verify_data(
    conn: Connection, report: VerifyReport, complete: set[str], stale_after_seconds: int
) -> None:
    if {"users", "credit_transactions"} <= complete:
        rows = await conn.fetch(query("ops_balance_mismatches"), _SAMPLE)
        if rows:
            shown = "; ".join(
                f"user {r['user_id']}: balance {r['credits_balance']} != ledger {r['ledger_sum']}"
                for r in rows
            )
            more = f" (first {_SAMPLE})" if len(rows) == _SAMPLE else ""
            report.add("balances", False, f"{len(rows)} balance(s) differ{more}: {shown}")
        else:
            report.add("balances", True, "every balance equals its ledger sum")
    else:
        report.add("balances", False, "not checked: users/credit_transactions incomplete")
    if {"payment_states", "credit_transactions"} <= complete:
        rows = await conn.fetch(query("ops_payment_state_mismatches"), _SAMPLE)
        if rows:
            shown = "; ".join(
                f"{r['payment_intent_id']}: taken {r['taken']} != ledger {r['ledger_taken']} "
                f"+ shortfall {r['shortfall']}"
                for r in rows[:10]
            )
            report.add("payment states", False, f"{len(rows)} payment(s) differ: {shown}")
        else:
            report.add(
                "payment states", True, "credits taken back equal each payment's ledger rows"
            )
    if "stripe_events" in complete:
        rows = await conn.fetch(query("ops_stuck_events"), stale_after_seconds, _SAMPLE)
        if rows:
            shown = ", ".join(
                f"{r['event_id']} ({r['processing_status']} {int(r['age'])}s)" for r in rows[:10]
            )
            report.add(
                "stuck events",
                False,
                f"{len(rows)}{'+' if len(rows) == _SAMPLE else ''} event(s) received/processing "
                f"for over {stale_after_seconds}s: {shown} — is a worker running?",
            )
        else:
            report.add("stuck events", True, f"none older than {stale_after_seconds}s")
    else:
        report.add("stuck events", False, "not checked: stripe_events incomplete")


def check_scope(report: VerifyReport, settings: Settings) -> None:
    """What this deployment trusts (mode, Connect accounts, prices), and risky combinations."""
    report.add("scope", True, scope.describe(settings))
    for warning in scope.warnings(settings):
        report.add("scope", True, warning, warning=True)
    prices = ", ".join(f"{c}:{p}" for c, p in sorted(settings.credit_prices.items()))
    report.add(
        "credit prices",
        True,
        f"per currency (minor units per credit): {prices}"
        if prices
        else "none: only sessions with metadata.credits credit",
    )


async def verify(
    conn: Connection,
    *,
    stale_after_seconds: int,
    tenant_column: str | None = None,
    settings: Settings | None = None,
) -> VerifyReport:
    """The deployment check: the host's users supported and recorded, the lock key agreeing
    with Python, contract schema present, balances match ledgers, none stuck; with
    `settings`, also the scope it runs with and the reconcile cron's health."""
    report = VerifyReport()
    if settings is not None:
        check_scope(report, settings)
    with translate_errors("verifying the database"):
        shape = await host.inspect_host(conn, tenant_column)
        recorded = await _verify_host(conn, report, shape)
        tenant = recorded.get("tenant_column") if recorded else shape.tenant_column
        complete = await _verify_schema(conn, report, shape, tenant)
        if settings is not None and settings.stripe_api_key and "reconcile_runs" in complete:
            await _verify_reconcile(conn, report, settings)
        await _verify_migrations(conn, report)
        await _verify_data(conn, report, complete, stale_after_seconds)
    return report


# --- prune -------------------------------------------------------------------------------


async def prune(conn: Connection, older_than_days: int, *, dry_run: bool = False) -> int:
    if older_than_days < 1:
        raise OpsInputError("--older-than must be at least 1 day")
    return await prune_events(conn, older_than_days, dry_run=dry_run)


# --- send-test-event ---------------------------------------------------------------------


def build_test_event(
    event_type: str = "checkout.session.completed",
    *,
    email: str | None = None,
    user_id: str | None = None,
    user_uuid: str | None = None,
    credits: int | None = 10,
    payment_intent: str | None = None,
    customer: str | None = None,
) -> dict[str, Any]:
    """A realistic test-mode event: a checkout session, a refunded charge, a subscription
    renewal (`invoice.paid`), a payment without Checkout, or any other type."""
    if event_type == "invoice.paid":
        # A renewal (billing_reason subscription_cycle) of a monthly plan: the credits on the
        # subscription's metadata (copied onto the invoice and its line), the user reference
        # there too; the customer must be linked to a user unless a reference is given.
        reference = {"user_id": user_id} if user_id else {}
        if user_uuid:
            reference = {"user_uuid": user_uuid}
        plan_credits = {"credits": str(credits)} if credits is not None else {}
        now = int(time.time())
        subscription = sample_events.new_id("sub")
        line = sample_events.invoice_line(
            price=sample_events.new_id("price"),
            amount=100 * (credits or 10),
            subscription=subscription,
            metadata=plan_credits,
            period=(now, now + 30 * 86400),
        )
        return sample_events.invoice_paid_event(
            customer=customer or sample_events.new_id("cus"),
            lines=[line],
            subscription=subscription,
            subscription_metadata={**reference, **plan_credits},
            payment_intent=payment_intent,
            created=now,
        )
    if event_type == "payment_intent.succeeded":
        metadata = {"user_id": user_id} if user_id else {}
        if user_uuid:
            metadata = {"user_uuid": user_uuid}
        if email:
            metadata = {"email": email}
        return sample_events.payment_intent_succeeded_event(
            credits=credits,
            amount=100 * (credits or 10),
            metadata=metadata,
            customer=customer,
            payment_intent=payment_intent,
        )
    if event_type.startswith("checkout.session."):
        metadata = {"user_uuid": user_uuid} if user_uuid else {}
        return sample_events.checkout_session_event(
            event_type=event_type,
            credits=credits,
            amount_total=100 * (credits or 10),
            email=email,
            client_reference_id=user_id,
            metadata=metadata,
            payment_intent=payment_intent,
        )
    if event_type == "charge.refunded":
        if not payment_intent:
            raise OpsInputError(
                "charge.refunded needs --payment-intent pi_… of a credited purchase"
            )
        return sample_events.charge_refunded_event(payment_intent=payment_intent)
    kind = event_type.split(".", 1)[0]
    known = {"charge", "customer", "refund", "checkout.session"}
    data = sample_events.stripe_object(kind) if kind in known else {"object": kind}
    data["id"] = sample_events.new_id(kind[:3] or "obj")
    return sample_events.event_envelope(event_type, data)


@dataclass(frozen=True)
class DeliveryResult:
    event_id: str
    event_type: str
    status_code: int
    body: str


async def send_event(
    url: str, event: dict[str, Any], secret: str, *, within: float = 10.0
) -> DeliveryResult:
    """POST one event signed like Stripe does; any HTTP answer is returned, not raised."""
    payload = sample_events.encode_event(event)
    headers = {
        "Content-Type": "application/json",
        "Stripe-Signature": sample_events.sign_payload(payload, secret),
        "User-Agent": "webhook-worker send-test-event",
    }
    try:
        async with httpx.AsyncClient(timeout=within) as client:
            response = await client.post(url, content=payload, headers=headers)
    except httpx.HTTPError as exc:
        raise TransientError(f"cannot POST to {url}: {type(exc).__name__}: {exc}") from exc
    return DeliveryResult(event["id"], event["type"], response.status_code, response.text)


async def event_status(conn: Connection, event_id: str) -> str | None:
    with translate_errors("reading an event status"):
        status = await conn.fetchval(query("ops_event_stored"), event_id)
    return str(status) if status is not None else None


def pick_secret(settings: Settings, secret: str | None) -> str:
    if secret:
        return secret
    if settings.webhook_secrets:
        return settings.webhook_secrets[0]
    raise ConfigError(
        "no signing secret: set STRIPE_WEBHOOK_SECRET=whsec_… or pass --secret whsec_…"
    )
