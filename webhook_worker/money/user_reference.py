"""Who paid: the user references a Stripe object carries, classified, and the order they are
tried in (the contract's). Pure: the lookups go through a `UserDirectory` (the Postgres
money store's, or the test store's), so the order is written once."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from webhook_worker.errors import PermanentError
from webhook_worker.money import UserId

Kind = Literal["email", "uuid", "integer", "opaque", "placeholder"]


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


# Opaque ids (Clerk `user_2abc…`, cuid, nanoid, prefixed ids): word characters with at least
# one digit, so that words such as `null`, `undefined` or `email` stay placeholders.
_OPAQUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_:.-]{3,127}")


_DIGIT = re.compile(r"[0-9]")


_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_:.-]{0,127}")


_WORDS = frozenset({"null", "none", "undefined", "nil", "nan", "true", "false"})


class UserNotFound(PermanentError):
    """user_not_found: no client_reference_id, metadata, email or customer id matched a user"""


def not_found(session: Mapping[str, Any]) -> UserNotFound:
    """user_not_found naming what was tried (`client_reference_id=999999, email=<given>,
    customer=cus_…`): ids and customer ids as given, emails never (`<given>`), so the stored
    error and the log line hold no personal data."""
    tried = []
    for source, candidate in candidates(session):
        if candidate.kind == "email":
            tried.append(f"{source}=<given>")
        elif candidate.kind != "placeholder":
            tried.append(f"{source}={candidate.value[:64]}")
    customer = customer_id(session)
    if customer is not None:
        tried.append(f"customer={customer}")
    what = ", ".join(tried) if tried else "nothing usable (no reference, or placeholders only)"
    return UserNotFound(
        f"user_not_found: tried {what}; no user matched. Set client_reference_id or "
        "metadata.user_id to an existing user's id (or create the user) and replay"
    )


class AmbiguousUser(PermanentError):
    """ambiguous_user: the email matches users of several tenants; set client_reference_id or metadata.user_id to the user's id, or metadata.tenant_id with the email, and replay"""  # noqa: E501


_NO_TENANT = (
    "user_not_found: no user matched and emails are unique per tenant, so none is created "
    "from an email alone; set metadata.tenant_id (or client_reference_id / metadata.user_id "
    "to an existing user's id) and replay"
)


@dataclass(frozen=True)
class Candidate:
    """One classified value: `value` is normalised (trimmed, lower-cased UUID, int text)."""

    kind: Kind
    value: str
    tenant: str | None = None  # emails only: metadata.tenant_id, when given


@dataclass(frozen=True)
class Resolution:
    user_id: UserId
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
    if _OPAQUE.fullmatch(value) and _DIGIT.search(value) and value.lower() not in _WORDS:
        return Candidate("opaque", value)
    return _PLACEHOLDER


def tenant_of(session: Mapping[str, Any]) -> str | None:
    """`metadata.tenant_id` as text when it looks like an id; placeholders give None."""
    metadata = session.get("metadata")
    raw = metadata.get("tenant_id") if isinstance(metadata, Mapping) else None
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str):
        return None
    value = raw.strip()
    if _TENANT.fullmatch(value) and value.lower() not in _WORDS:
        return value
    return None


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
    tenant = tenant_of(session)
    for path in SOURCES:
        node: Any = session
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        candidate = classify(node)
        if candidate.kind == "email" and tenant is not None:
            candidate = Candidate("email", candidate.value, tenant)
        yield ".".join(path), candidate


LOOKUP_KINDS = frozenset({"email", "uuid", "integer", "opaque"})


def first_candidate(session: Mapping[str, Any]) -> tuple[str, Candidate] | None:
    """The source and value `resolve_user` looks up first: in the common case the only one."""
    for source, candidate in candidates(session):
        if candidate.kind in LOOKUP_KINDS:
            return source, candidate
    return None


class UserDirectory(Protocol):
    """The four user statements the resolution rule needs (Postgres: `PostgresUsers`;
    the unit tier: `webhook_worker.testing.InMemoryMoneyStore`)."""

    async def match(self, candidate: Candidate) -> UserId | None: ...

    async def by_customer(self, customer: str) -> UserId | None: ...

    async def create_by_email(self, email: str, tenant: str | None) -> tuple[UserId, bool] | None:
        """(user id, created) — None when a multi-tenant host has no tenant for it."""
        ...

    async def remember_customer(self, user_id: UserId, customer: str) -> None: ...


async def resolve(users: UserDirectory, session: Mapping[str, Any]) -> Resolution:
    """The user a checkout session (or invoice reference) belongs to, by the contract's
    order; raises UserNotFound when there is none. The one place the order is written."""
    customer = customer_id(session)
    first_email: Candidate | None = None
    resolution: Resolution | None = None
    for source, candidate in candidates(session):
        if candidate.kind == "placeholder":
            continue
        user_id = await users.match(candidate)
        if user_id is not None:
            resolution = Resolution(user_id, source)
            break
        if candidate.kind == "email" and first_email is None:
            first_email = candidate
    if resolution is None and customer is not None:
        found = await users.by_customer(customer)
        if found is not None:
            return Resolution(found, CUSTOMER_SOURCE)
    if resolution is None and first_email is not None:
        created = await users.create_by_email(first_email.value, first_email.tenant)
        if created is None:  # a multi-tenant host and no (usable) tenant: nobody is created
            raise UserNotFound(_NO_TENANT)
        resolution = Resolution(created[0], UPSERT_SOURCE, created=created[1])
    if resolution is None:
        raise not_found(session)
    if customer is not None:
        await users.remember_customer(resolution.user_id, customer)
    return resolution
