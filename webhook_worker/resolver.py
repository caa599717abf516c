"""Who bought it: the user resolution of the worker contract.

Sources are tried in the contract's order, first hit wins: `client_reference_id`,
`metadata.user_id`, `metadata.user_uuid`, `metadata.email`, `customer_details.email`,
`customer_email`, then the Stripe `customer` id against `users.stripe_customer_id`. Every
value is classified first (`classify`, pure, never raises): emails match case-insensitively,
UUIDs match `users.uuid`, positive integers match `users.id`, and placeholders that
checkout integrations leave behind (`<email>`, `null`, `{CHECKOUT_SESSION_ID}`, `{{…}}`,
blank, …) are skipped. With no match and an email at hand the user is upserted by email
(race-safe on `users_email_lower_key`). The customer id is remembered on the user when no
other user holds it. Nothing found: `UserNotFound` (the event fails with `user_not_found`).
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

from webhook_worker.errors import PermanentError
from webhook_worker.queries import query
from webhook_worker.store import Connection, translate_errors

Kind = Literal["email", "uuid", "integer", "placeholder"]

SOURCES: tuple[tuple[str, ...], ...] = (
    ("client_reference_id",),
    ("metadata", "user_id"),
    ("metadata", "user_uuid"),
    ("metadata", "email"),
    ("customer_details", "email"),
    ("customer_email",),
)
CUSTOMER_SOURCE = "customer"
UPSERT_SOURCE = "upsert"

_MAX_BIGINT = 2**63 - 1
_MAX_EMAIL = 254
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# Conservative on purpose: braces, angle brackets, spaces and quotes mark templates.
_EMAIL = re.compile(rf"[A-Za-z0-9.!#$%&'*+/=?^_`|~-]{{1,64}}@(?:{_LABEL}\.)+[A-Za-z]{{2,63}}")
_UUID = re.compile(
    r"\{?([0-9a-fA-F]{8})-?([0-9a-fA-F]{4})-?([0-9a-fA-F]{4})-?"
    r"([0-9a-fA-F]{4})-?([0-9a-fA-F]{12})\}?"
)
_INTEGER = re.compile(r"[0-9]{1,19}")
_CUSTOMER = re.compile(r"cus_[A-Za-z0-9]{1,250}")


class UserNotFound(PermanentError):
    """user_not_found: no client_reference_id, metadata, email or customer id matched a user"""


@dataclass(frozen=True)
class Candidate:
    """One classified value: `value` is normalised (trimmed, lower-cased UUID, int text)."""

    kind: Kind
    value: str


@dataclass(frozen=True)
class Resolution:
    user_id: int
    source: str  # which source matched: "client_reference_id", "metadata.email", "upsert", …
    created: bool = False


_PLACEHOLDER = Candidate("placeholder", "")


def classify(raw: object) -> Candidate:
    """Email, UUID, positive integer or placeholder. Pure; never raises on any input."""
    if isinstance(raw, bool) or raw is None:
        return _PLACEHOLDER
    if isinstance(raw, int):
        return Candidate("integer", str(raw)) if 0 < raw <= _MAX_BIGINT else _PLACEHOLDER
    if not isinstance(raw, str):
        return _PLACEHOLDER
    value = raw.strip()
    if not value or len(value) > _MAX_EMAIL or not value.isascii():
        return _PLACEHOLDER
    if _INTEGER.fullmatch(value):
        number = int(value)
        return Candidate("integer", str(number)) if 0 < number <= _MAX_BIGINT else _PLACEHOLDER
    match = _UUID.fullmatch(value)
    if match:
        parsed = uuid.UUID("".join(match.groups()))
        return _PLACEHOLDER if parsed.int == 0 else Candidate("uuid", str(parsed))
    if _EMAIL.fullmatch(value):
        return Candidate("email", value)
    return _PLACEHOLDER


def customer_id(session: Mapping[str, Any]) -> str | None:
    """The session's Stripe customer id when it looks like one (`cus_…`)."""
    raw = session.get("customer")
    if isinstance(raw, Mapping):  # an expanded customer object
        raw = raw.get("id")
    if isinstance(raw, str) and _CUSTOMER.fullmatch(raw.strip()):
        return raw.strip()
    return None


def candidates(session: Mapping[str, Any]) -> Iterator[tuple[str, Candidate]]:
    """(source name, classified value) for every source, in the contract's order."""
    for path in SOURCES:
        node: Any = session
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        yield ".".join(path), classify(node)


_LOOKUP = {"email": "user_by_email", "uuid": "user_by_uuid", "integer": "user_by_id"}


def first_candidate(session: Mapping[str, Any]) -> tuple[str, Candidate] | None:
    """The source and value `resolve_user` looks up first: in the common case the only one."""
    for source, candidate in candidates(session):
        if candidate.kind in _LOOKUP:
            return source, candidate
    return None


async def lookup_users(conn: Connection, wanted: Sequence[Candidate]) -> list[int | None]:
    """The user id each candidate matches (as `resolve_user` would), in one statement."""
    arrays: dict[str, tuple[list[Any], list[int]]] = {kind: ([], []) for kind in _LOOKUP}
    for index, candidate in enumerate(wanted):
        if candidate.kind in arrays:
            values, indexes = arrays[candidate.kind]
            values.append(int(candidate.value) if candidate.kind == "integer" else candidate.value)
            indexes.append(index)
    with translate_errors("looking up users"):
        rows = await conn.fetch(
            query("users_lookup_many"),
            *arrays["integer"],
            *arrays["uuid"],
            *arrays["email"],
        )
    found: list[int | None] = [None] * len(wanted)
    for row in rows:
        found[row["ord"]] = int(row["id"])
    return found


async def lookup_user(conn: Connection, candidate: Candidate) -> int | None:
    """The user id one candidate matches."""
    statement = _LOOKUP.get(candidate.kind)
    if statement is None:
        return None
    value: str | int = int(candidate.value) if candidate.kind == "integer" else candidate.value
    with translate_errors("looking up a user"):
        found = await conn.fetchval(query(statement), value)
    return int(found) if found is not None else None


async def _upsert_by_email(conn: Connection, email: str) -> asyncpg.Record | None:
    try:
        with translate_errors("creating a user"):
            return await conn.fetchrow(query("user_upsert_by_email"), email)
    except PermanentError as exc:
        cause = exc.__cause__
        if isinstance(cause, asyncpg.NotNullViolationError):
            # The host app's users table requires a column we never fill: say which, and how
            # to fix it (`webhook-worker verify` reports the same before any payment fails).
            raise PermanentError(
                f"creating a user: users.{cause.column_name} is NOT NULL without a default; "
                "give it a default or create the user before the payment"
            ) from cause
        raise


async def _remember_customer(conn: Connection, user_id: int, customer: str) -> None:
    """Best effort: a customer id held by another user is never taken from it."""
    # UniqueViolation: another user got it concurrently; it stays theirs.
    with (
        translate_errors("remembering a Stripe customer id"),
        contextlib.suppress(asyncpg.UniqueViolationError),
    ):
        await conn.fetchval(query("user_remember_stripe_customer"), user_id, customer)


async def resolve_user(conn: Connection, session: Mapping[str, Any]) -> Resolution:
    """The user a checkout session belongs to; raises UserNotFound when there is none."""
    customer = customer_id(session)
    first_email: str | None = None
    resolution: Resolution | None = None
    for source, candidate in candidates(session):
        if candidate.kind == "placeholder":
            continue
        user_id = await lookup_user(conn, candidate)
        if user_id is not None:
            resolution = Resolution(user_id, source)
            break
        if candidate.kind == "email" and first_email is None:
            first_email = candidate.value
    if resolution is None and customer is not None:
        with translate_errors("looking up a user"):
            found = await conn.fetchval(query("user_by_stripe_customer"), customer)
        if found is not None:
            return Resolution(int(found), CUSTOMER_SOURCE)
    if resolution is None and first_email is not None:
        row = await _upsert_by_email(conn, first_email)
        assert row is not None
        resolution = Resolution(int(row["id"]), UPSERT_SOURCE, created=bool(row["created"]))
    if resolution is None:
        raise UserNotFound()
    if customer is not None:
        await _remember_customer(conn, resolution.user_id, customer)
    return resolution
